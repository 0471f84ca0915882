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
