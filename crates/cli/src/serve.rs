//! `whale serve`.

use anyhow::{bail, Context, Result};
use clap::Args;
use std::path::PathBuf;

#[derive(Args)]
pub struct ServeArgs {
    /// checkpoint directory (default: the bundled model)
    #[arg(long)]
    model: Option<PathBuf>,
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// most sequences decoded together in one step
    #[arg(long, default_value_t = 16)]
    max_batch: usize,
    /// memory for the paged latent cache, e.g. 512MiB, 4GiB
    #[arg(long, default_value = "1GiB")]
    cache_mem: String,
    /// longest prompt + completion in tokens (default: the model's max_position_embeddings)
    #[arg(long)]
    max_model_len: Option<usize>,
    /// require `Authorization: Bearer KEY`
    #[arg(long)]
    api_key: Option<String>,
    /// weight format: auto (as stored), f32, bf16, bf16-fast (bf16 products, not exact), f16, int8, int4
    #[arg(long, default_value = "auto")]
    dtype: String,
    /// tokens per cache block
    #[arg(long, default_value_t = 16)]
    block_size: usize,
    /// keep cached prefixes in this directory across restarts (written at shutdown)
    #[arg(long)]
    context_cache_dir: Option<PathBuf>,
}

/// "4GiB", "512MiB", "100MB", "1e9", "123456" -> bytes
pub fn parse_size(s: &str) -> Result<usize> {
    let t = s.trim();
    let split = t.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let v: f64 = num
        .trim()
        .parse()
        .with_context(|| format!("--cache-mem: `{s}` is not a size"))?;
    let mul = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "kib" => 1024.0,
        "m" | "mb" => 1e6,
        "mib" => 1024.0 * 1024.0,
        "g" | "gb" => 1e9,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        other => bail!("--cache-mem: unknown unit `{other}` (B, KB, KiB, MB, MiB, GB, GiB)"),
    };
    if v.is_nan() || v <= 0.0 {
        bail!("--cache-mem must be positive");
    }
    Ok((v * mul) as usize)
}

pub fn serve(a: ServeArgs) -> Result<()> {
    if a.block_size == 0 || a.max_batch == 0 {
        bail!("--block-size and --max-batch must be positive");
    }
    let opts = whale_server::Options {
        model: a.model.unwrap_or_else(crate::default_model),
        host: a.host,
        port: a.port,
        max_batch: a.max_batch,
        cache_mem: parse_size(&a.cache_mem)?,
        max_model_len: a.max_model_len,
        api_key: a.api_key,
        dtype: whale_model::parse_dtype(&a.dtype)?,
        block_size: a.block_size,
        body_limit: 4 << 20,
        context_cache_dir: a.context_cache_dir,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(whale_server::serve(opts))
}
