//! `whale train`, `whale rl`, `whale distill`, `whale eval`, `whale recipe`: the training side.

use anyhow::Result;
use clap::Args;
use std::path::PathBuf;
use whale_train::config::TrainConfig;

#[derive(Args)]
pub struct TrainArgs {
    /// training config (TOML: [model], [train], [[data.tasks]])
    #[arg(long)]
    config: PathBuf,
    /// output checkpoint directory (hub layout) with metrics.jsonl and plots
    #[arg(long)]
    out: PathBuf,
    /// continue the run saved in --out
    #[arg(long)]
    resume: bool,
}

pub fn train(a: TrainArgs) -> Result<()> {
    let tc = TrainConfig::from_file(&a.config)?;
    let s = whale_train::pretrain::run(&tc, &a.out, a.resume, true)?;
    println!("{}", serde_json::to_string_pretty(&s)?);
    Ok(())
}

#[derive(Args)]
pub struct EvalArgs {
    /// checkpoint directory
    #[arg(long)]
    model: PathBuf,
    /// task(s), comma-separated: add3, sub3, mul3, countdown3, ... (a held-out set each)
    #[arg(long)]
    task: Option<String>,
    /// JSONL file of {"question": "...", "answer": "..."} to evaluate instead of a task
    #[arg(long)]
    problems: Option<PathBuf>,
    /// problems per task
    #[arg(long, default_value_t = 500)]
    n: usize,
    /// samples per problem for pass@1 at --temperature, maj@K and pass@K (0: greedy only)
    #[arg(long, default_value_t = 0)]
    samples: usize,
    #[arg(long, default_value_t = 0.6)]
    temperature: f32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, default_value_t = 256)]
    max_tokens: usize,
    /// print JSON instead of a table
    #[arg(long)]
    json: bool,
}

pub fn eval(a: EvalArgs) -> Result<()> {
    use whale_train::eval::{evaluate, held_out_set, EvalReport, EvalSpec};
    if a.n == 0 {
        anyhow::bail!("--n must be at least 1");
    }
    if !(a.temperature > 0.0 && a.temperature.is_finite()) && a.samples > 0 {
        anyhow::bail!("--temperature must be > 0 when --samples is given");
    }
    let mut sets = vec![];
    match (&a.task, &a.problems) {
        (Some(_), Some(_)) | (None, None) => {
            anyhow::bail!("give exactly one of --task and --problems")
        }
        (Some(t), None) => {
            for name in t.split(',') {
                let task = whale_tasks::Task::parse(name.trim())?;
                sets.push((task.name(), held_out_set(&a.model, task, a.n)?));
            }
        }
        (None, Some(f)) => sets.push((f.display().to_string(), whale_tasks::load_jsonl(f)?)),
    }
    let engine = whale_engine::Engine::load(&a.model, true)?;
    let spec = EvalSpec {
        samples: a.samples,
        temperature: a.temperature,
        seed: a.seed,
        max_tokens: a.max_tokens,
    };
    let mut reports = vec![];
    for (name, problems) in &sets {
        reports.push(evaluate(&engine, name, problems, &spec)?);
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    } else {
        print!("{}", EvalReport::table(&reports));
    }
    Ok(())
}

#[derive(Args)]
pub struct RlArgs {
    /// the starting checkpoint (usually an SFT one); also the frozen KL reference
    #[arg(long)]
    model: PathBuf,
    #[arg(long)]
    out: PathBuf,
    /// task(s) whose problems are the RL prompts, comma-separated
    #[arg(long, default_value = "add4")]
    task: String,
    #[arg(long, default_value_t = 60)]
    steps: usize,
    /// prompts per step
    #[arg(long, default_value_t = 16)]
    prompts: usize,
    /// samples per prompt (the group)
    #[arg(long, default_value_t = 8)]
    group: usize,
    #[arg(long, default_value_t = 2e-4)]
    lr: f64,
    /// KL weight to the reference
    #[arg(long, default_value_t = 0.04)]
    beta: f64,
    /// ratio clip epsilon
    #[arg(long, default_value_t = 0.2)]
    clip: f64,
    #[arg(long, default_value_t = 1.0)]
    temperature: f32,
    #[arg(long, default_value_t = 200)]
    max_tokens: usize,
    /// policy updates per batch of samples
    #[arg(long, default_value_t = 1)]
    inner: usize,
    #[arg(long, default_value_t = 7)]
    seed: u64,
}

pub fn rl(a: RlArgs) -> Result<()> {
    let c = whale_train::grpo::GrpoConfig {
        tasks: a.task.split(',').map(|s| s.trim().to_string()).collect(),
        steps: a.steps,
        prompts: a.prompts,
        group: a.group,
        lr: a.lr,
        beta: a.beta,
        clip: a.clip,
        temperature: a.temperature,
        max_tokens: a.max_tokens,
        inner: a.inner,
        seed: a.seed,
        ..Default::default()
    };
    let s = whale_train::grpo::run(&a.model, &a.out, &c, true)?;
    println!("{}", serde_json::to_string_pretty(&s)?);
    Ok(())
}

#[derive(Args)]
pub struct DistillArgs {
    /// the teacher checkpoint
    #[arg(long)]
    teacher: PathBuf,
    /// the student's training config ([model] and [train]; its data is the teacher's traces)
    #[arg(long)]
    config: PathBuf,
    #[arg(long)]
    out: PathBuf,
    /// tasks the teacher answers, comma-separated
    #[arg(long, default_value = "add3")]
    task: String,
    /// problems per task the teacher answers
    #[arg(long, default_value_t = 2000)]
    n: usize,
    /// teacher sampling temperature (0: greedy)
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
}

pub fn distill(a: DistillArgs) -> Result<()> {
    let tc = TrainConfig::from_file(&a.config)?;
    let tasks: Vec<String> = a.task.split(',').map(|s| s.trim().to_string()).collect();
    let s = whale_train::distill::run(&a.teacher, &tc, &tasks, a.n, a.temperature, &a.out, true)?;
    println!("{}", serde_json::to_string_pretty(&s)?);
    Ok(())
}

#[derive(Args)]
pub struct RecipeArgs {
    /// the recipe: tiny-r1 (SFT -> GRPO, report card), or side-runs (the pretraining
    /// comparisons, bias balancing on/off and FP8 vs f32, over several seeds; resumable)
    name: String,
    /// where the output goes: the shipped checkpoint and its report card (tiny-r1, default
    /// models/tiny-r1), or the side runs' report (default side-runs-report)
    #[arg(long)]
    out: Option<PathBuf>,
    /// scratch directory for intermediate checkpoints (default: in the system temp directory)
    #[arg(long)]
    work: Option<PathBuf>,
    /// side-runs: how many seeds (three runs each)
    #[arg(long, default_value_t = 3)]
    seeds: usize,
}

/// A recipe's entry point: its options and the number of seeds (side-runs only).
type Recipe = fn(&whale_train::recipe::RecipeOptions, usize) -> Result<()>;

pub fn recipe(a: RecipeArgs) -> Result<()> {
    let (default_out, run): (&str, Recipe) = match a.name.as_str() {
        "tiny-r1" => ("models/tiny-r1", |o, _| whale_train::recipe::tiny_r1(o)),
        "side-runs" => (
            "side-runs-report",
            whale_train::recipe::side_runs_over_seeds,
        ),
        other => anyhow::bail!("unknown recipe `{other}` (known: tiny-r1, side-runs)"),
    };
    let work = a
        .work
        .unwrap_or_else(|| std::env::temp_dir().join(format!("whale-recipe-{}", a.name)));
    let o = whale_train::recipe::RecipeOptions {
        out: a.out.unwrap_or_else(|| default_out.into()),
        work,
        progress: true,
    };
    run(&o, a.seeds)
}
