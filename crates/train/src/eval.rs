//! `whale eval`: pass@1 (greedy and sampled), maj@K, pass@K, format rate and mean length on a
//! held-out set (never a problem the checkpoint was trained on) or on a JSONL problem file.

use crate::data::{prompt_ids, read_sources, trained_questions};
use crate::rollout::generate;
use anyhow::{bail, Result};
use serde::Serialize;
use std::collections::HashMap;
use std::path::Path;
use whale_engine::Engine;
use whale_tasks::{answer_part, check, Problem, Task};

#[derive(Clone, Debug)]
pub struct EvalSpec {
    pub samples: usize,
    pub temperature: f32,
    pub seed: u64,
    pub max_tokens: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct EvalReport {
    pub set: String,
    pub problems: usize,
    pub greedy_pass1: f64,
    pub greedy_format: f64,
    pub greedy_mean_tokens: f64,
    pub samples: usize,
    pub temperature: f32,
    /// mean correctness of the samples (pass@1 at the temperature)
    pub sampled_pass1: Option<f64>,
    pub sampled_format: Option<f64>,
    pub maj_at_k: Option<f64>,
    pub pass_at_k: Option<f64>,
    pub seconds: f64,
}

/// The held-out set of `task` for a checkpoint: `n` problems none of which any training stage
/// recorded in `training_data.json` used.
pub fn held_out_set(dir: &Path, task: Task, n: usize) -> Result<Vec<Problem>> {
    let exclude = trained_questions(&read_sources(dir)?, task)?;
    let set = whale_tasks::held_out(task, n, &exclude);
    if set.len() < n {
        bail!(
            "{}: only {} problems are left outside the training data (asked for {n})",
            task.name(),
            set.len()
        );
    }
    Ok(set)
}

pub fn evaluate(
    engine: &Engine,
    set_name: &str,
    problems: &[Problem],
    spec: &EvalSpec,
) -> Result<EvalReport> {
    if problems.is_empty() {
        bail!("no problems to evaluate");
    }
    let t0 = std::time::Instant::now();
    let tok = engine.tokenizer()?;
    let prompts = problems
        .iter()
        .map(|p| prompt_ids(tok, &p.question))
        .collect::<Result<Vec<_>>>()?;
    let greedy = generate(engine, &prompts, 1, 0.0, spec.seed, spec.max_tokens)?;
    let n = problems.len() as f64;
    let (mut correct, mut format, mut tokens) = (0usize, 0usize, 0usize);
    for (p, r) in problems.iter().zip(&greedy) {
        let o = check(p, &r[0].text);
        correct += o.correct as usize;
        format += o.format as usize;
        tokens += r[0].ids.len();
    }
    let mut report = EvalReport {
        set: set_name.to_string(),
        problems: problems.len(),
        greedy_pass1: correct as f64 / n,
        greedy_format: format as f64 / n,
        greedy_mean_tokens: tokens as f64 / n,
        samples: spec.samples,
        temperature: spec.temperature,
        sampled_pass1: None,
        sampled_format: None,
        maj_at_k: None,
        pass_at_k: None,
        seconds: 0.0,
    };
    if spec.samples > 0 {
        let sampled = generate(
            engine,
            &prompts,
            spec.samples,
            spec.temperature,
            spec.seed,
            spec.max_tokens,
        )?;
        let (mut c, mut f, mut maj, mut any) = (0usize, 0usize, 0usize, 0usize);
        for (p, rs) in problems.iter().zip(&sampled) {
            let outcomes: Vec<_> = rs.iter().map(|r| check(p, &r.text)).collect();
            c += outcomes.iter().filter(|o| o.correct).count();
            f += outcomes.iter().filter(|o| o.format).count();
            any += outcomes.iter().any(|o| o.correct) as usize;
            maj += majority_correct(p, rs.iter().map(|r| r.text.as_str())) as usize;
        }
        let total = n * spec.samples as f64;
        report.sampled_pass1 = Some(c as f64 / total);
        report.sampled_format = Some(f as f64 / total);
        report.maj_at_k = Some(maj as f64 / n);
        report.pass_at_k = Some(any as f64 / n);
    }
    report.seconds = t0.elapsed().as_secs_f64();
    Ok(report)
}

/// Self-consistency: the most common final answer (ties: the first seen) is checked.
fn majority_correct<'a>(p: &Problem, responses: impl Iterator<Item = &'a str>) -> bool {
    let mut counts: HashMap<String, (usize, usize, &'a str)> = HashMap::new();
    for (i, r) in responses.enumerate() {
        let Some(ans) = answer_part(r) else { continue };
        let key: String = ans.split_whitespace().collect::<Vec<_>>().join(" ");
        let e = counts.entry(key).or_insert((0, i, r));
        e.0 += 1;
    }
    counts
        .values()
        .max_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)))
        .is_some_and(|(_, _, r)| check(p, r).correct)
}

impl EvalReport {
    pub fn table(reports: &[EvalReport]) -> String {
        let pct = |x: Option<f64>| x.map_or("-".to_string(), |v| format!("{:.1}%", 100.0 * v));
        let mut s = String::from("| set | n | pass@1 greedy | format | mean tokens | pass@1 T | maj@K | pass@K |\n|---|---|---|---|---|---|---|---|\n");
        for r in reports {
            s += &format!(
                "| {} | {} | {:.1}% | {:.1}% | {:.1} | {} | {} | {} |\n",
                r.set,
                r.problems,
                100.0 * r.greedy_pass1,
                100.0 * r.greedy_format,
                r.greedy_mean_tokens,
                pct(r.sampled_pass1),
                pct(r.maj_at_k),
                pct(r.pass_at_k)
            );
        }
        s
    }
}
