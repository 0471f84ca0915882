//! `whale`: the command line of the DeepSeek-V3/R1 engine.

mod bench;
mod bundled;
mod chat;
mod cost;
mod inspect;
mod serve;
mod tokens;
mod train;

use anyhow::Result;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// The model `whale run`, `whale chat` and `whale serve` use when no --model is given:
/// $WHALE_MODEL, else the bundled tiny-r1 (made by `whale recipe tiny-r1`), which is inside the
/// binary.
pub fn default_model() -> Result<PathBuf> {
    match std::env::var_os("WHALE_MODEL").filter(|p| !p.is_empty()) {
        Some(p) => Ok(PathBuf::from(p)),
        None => bundled::path(),
    }
}

#[derive(Parser)]
#[command(
    name = "whale",
    version = concat!(env!("CARGO_PKG_VERSION"), " (", env!("WHALE_COMMIT"), ")"),
    about = "DeepSeek-V3/R1 inference, serving, training and economics"
)]
struct Cli {
    /// worker threads (default: all cores)
    #[arg(long, global = true, env = "WHALE_THREADS")]
    threads: Option<usize>,
    /// how log lines are written to stderr: text, or json (one object per line); what is
    /// logged follows RUST_LOG (default: info for `whale serve`, warnings otherwise)
    #[arg(long, global = true, default_value = "text", value_parser = ["text", "json"], env = "WHALE_LOG_FORMAT")]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Answer one prompt, streaming the reasoning (marked) and then the answer
    Run(chat::RunArgs),
    /// Interactive chat with history
    Chat(chat::ChatArgs),
    /// Write float32 logits at every position of a prompt of token ids to a safetensors file
    Logits(tokens::LogitsArgs),
    /// Generate token ids from token ids with the KV cache; prints {"ids": [...]}
    Generate(tokens::GenerateArgs),
    /// Architecture, parameters and KV-cache size of a checkpoint
    Inspect(inspect::InspectArgs),
    /// Write a random-weight checkpoint of a real model's shape in the hub layout
    Synth(inspect::SynthArgs),
    /// Save a checkpoint with its linear layers quantised (int8 or int4), to load without converting
    Quantize(inspect::QuantizeArgs),
    /// Measure prefill and decode speed
    Bench(bench::BenchArgs),
    /// OpenAI/DeepSeek-compatible HTTP server with continuous batching
    Serve(serve::ServeArgs),
    /// Serving economics from first principles: FLOPs, bytes, KV, rooflines and $/token on a chip
    Cost(cost::CostArgs),
    /// Pretrain / SFT the V3 architecture from a config file (bias balancing, MTP, simulated FP8)
    Train(train::TrainArgs),
    /// Accuracy on held-out task problems or a JSONL file: pass@1 greedy and sampled, maj@K, pass@K
    Eval(train::EvalArgs),
    /// GRPO (R1-Zero): rule rewards, group-normalised advantages, clipped ratio, KL to a reference
    Rl(train::RlArgs),
    /// Teacher traces filtered for correctness train a smaller student
    Distill(train::DistillArgs),
    /// Run a whole training recipe (tiny-r1: the bundled model and its report card)
    Recipe(train::RecipeArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish or powershell)
    Completions { shell: clap_complete::Shell },
}

/// `whale serve --config FILE`: the file's keys are serve's flags (`port = 8080`,
/// `served-model-name = ["a", "b"]`, `public-metrics = true`), put before the command line's own
/// arguments, so a flag given on the command line wins, and an unknown key is refused as an
/// unknown flag. Environment variables (`WHALE_PORT`, ...) come after both.
fn with_config(mut args: Vec<std::ffi::OsString>) -> Result<Vec<std::ffi::OsString>> {
    // the subcommand: the first argument that is neither a global flag nor its value
    let mut i = 1;
    while i < args.len() {
        match args[i].to_str() {
            Some("--threads" | "--log-format") => i += 2,
            Some(a) if a.starts_with('-') => i += 1,
            _ => break,
        }
    }
    // other commands have a --config of their own (`whale train --config FILE`)
    if args.get(i).and_then(|a| a.to_str()) != Some("serve") {
        return Ok(args);
    }
    let serve = i;
    let Some(at) = args
        .iter()
        .skip(serve)
        .position(|a| a == "--config")
        .map(|p| p + serve)
    else {
        return Ok(args);
    };
    let Some(path) = args.get(at + 1).cloned() else {
        anyhow::bail!("--config needs a file");
    };
    let text = std::fs::read_to_string(&path)
        .map_err(|e| anyhow::anyhow!("cannot read --config {}: {e}", path.to_string_lossy()))?;
    let table: toml::Table = text
        .parse()
        .map_err(|e| anyhow::anyhow!("--config {} is not TOML: {e}", path.to_string_lossy()))?;
    let mut from_file: Vec<std::ffi::OsString> = Vec::new();
    for (k, v) in table {
        let flag = format!("--{}", k.replace('_', "-"));
        let scalar = |v: &toml::Value| match v {
            toml::Value::String(s) => Ok(s.clone()),
            toml::Value::Integer(i) => Ok(i.to_string()),
            toml::Value::Float(f) => Ok(f.to_string()),
            other => Err(anyhow::anyhow!(
                "--config key `{k}`: {other} is not a flag value"
            )),
        };
        match &v {
            toml::Value::Boolean(true) => from_file.push(flag.into()),
            toml::Value::Boolean(false) => {}
            toml::Value::Array(a) => {
                for x in a {
                    from_file.push(flag.clone().into());
                    from_file.push(scalar(x)?.into());
                }
            }
            v => {
                from_file.push(flag.into());
                from_file.push(scalar(v)?.into());
            }
        }
    }
    args.drain(at..at + 2);
    args.splice(serve + 1..serve + 1, from_file);
    Ok(args)
}

fn main() {
    keep_freed_memory();
    let args = match with_config(std::env::args_os().collect()) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(2);
        }
    };
    let cli = Cli::parse_from(args);
    if let Err(e) = run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// glibc hands large freed blocks straight back to the kernel, so a training step or a prefill
/// that allocates its buffers afresh pays page faults and page clearing on every one (a third of
/// a training step; 5% of a bf16-fast prefill, measured). Keeping freed memory in the process
/// removes that. 32 MiB is the largest mmap threshold glibc accepts (a larger value is refused
/// and leaves the default, 128 KiB, in place).
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only tunes allocator thresholds; called before any other thread exists.
    unsafe {
        let mmap = libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        let trim = libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
        debug_assert!(mmap == 1 && trim == 1, "mallopt refused a threshold");
    }
}

/// Runs `f` on a worker of the global thread pool: the kernels' fork-joins from a worker are
/// work-stealing joins, while from another thread each is a job injected into the pool that the
/// caller sleeps on (a futex wait and wake per product batch, ~30 of them per decoded token).
fn on_worker<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    rayon::scope(|_| f())
}

/// Logs through `tracing` to stderr, filtered by RUST_LOG.
fn init_logging(format: &str, serving: bool) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(if serving { "info" } else { "warn" }));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
}

fn run(cli: Cli) -> Result<()> {
    init_logging(&cli.log_format, matches!(cli.command, Command::Serve(_)));
    if let Some(n) = cli.threads {
        if n == 0 {
            anyhow::bail!("--threads must be at least 1");
        }
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()?;
    }
    match cli.command {
        Command::Run(a) => on_worker(|| chat::run(a)),
        Command::Chat(a) => on_worker(|| chat::chat(a)),
        Command::Logits(a) => on_worker(|| tokens::logits(a)),
        Command::Generate(a) => on_worker(|| tokens::generate(a)),
        Command::Inspect(a) => inspect::inspect(a),
        Command::Synth(a) => inspect::synth(a),
        Command::Bench(a) => on_worker(|| bench::bench(a)),
        Command::Quantize(a) => inspect::quantize(a),
        Command::Serve(a) => serve::serve(a),
        Command::Cost(a) => cost::cost(a),
        Command::Train(a) => train::train(a),
        Command::Eval(a) => train::eval(a),
        Command::Rl(a) => train::rl(a),
        Command::Distill(a) => train::distill(a),
        Command::Recipe(a) => train::recipe(a),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(shell, &mut Cli::command(), "whale", &mut std::io::stdout());
            Ok(())
        }
    }
}
