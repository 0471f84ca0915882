//! `whale serve`.

use anyhow::{bail, Context, Result};
use clap::Args;
use std::path::PathBuf;

#[derive(Args)]
pub struct ServeArgs {
    /// checkpoint directory (default: the bundled model)
    #[arg(long, env = "WHALE_MODEL")]
    model: Option<PathBuf>,
    #[arg(long, env = "WHALE_HOST", default_value = "127.0.0.1")]
    host: String,
    #[arg(long, env = "WHALE_PORT", default_value_t = 8000)]
    port: u16,
    /// most sequences decoded together in one step
    #[arg(long, env = "WHALE_MAX_BATCH", default_value_t = 16)]
    max_batch: usize,
    /// memory for the paged latent cache, e.g. 512MiB, 4GiB
    #[arg(long, env = "WHALE_CACHE_MEM", default_value = "1GiB")]
    cache_mem: String,
    /// longest prompt + completion in tokens (default: the model's max_position_embeddings)
    #[arg(long, env = "WHALE_MAX_MODEL_LEN")]
    max_model_len: Option<usize>,
    /// require `Authorization: Bearer KEY`
    #[arg(long, env = "WHALE_API_KEY")]
    api_key: Option<String>,
    /// a file of API keys, one per line (blank lines and `#` comments skipped); each key is a
    /// tenant of its own in the prefix cache
    #[arg(long, env = "WHALE_API_KEYS_FILE")]
    api_keys_file: Option<PathBuf>,
    /// serve /metrics without a key even when keys are set
    #[arg(long, env = "WHALE_PUBLIC_METRICS")]
    public_metrics: bool,
    /// weight format: auto (as stored), f32, bf16, bf16-fast (bf16 products, not exact), f16, int8, int4
    #[arg(long, env = "WHALE_DTYPE", default_value = "auto")]
    dtype: String,
    /// tokens per cache block
    #[arg(long, env = "WHALE_BLOCK_SIZE", default_value_t = 16)]
    block_size: usize,
    /// keep cached prefixes in this directory across restarts
    #[arg(long, env = "WHALE_CONTEXT_CACHE_DIR")]
    context_cache_dir: Option<PathBuf>,
    /// with --context-cache-dir: write the cache this often while serving, when it changed
    /// (default 60; 0: only at shutdown)
    #[arg(long, env = "WHALE_CONTEXT_CACHE_FLUSH_SECS")]
    context_cache_flush_secs: Option<u64>,
    /// sequences that may wait for a place in the batch; past it requests get 429 with
    /// Retry-After
    #[arg(long, env = "WHALE_MAX_QUEUED", default_value_t = 256)]
    max_queued: usize,
    /// seconds a client has to send a request's head, and its body, and that an idle
    /// keep-alive connection stays open
    #[arg(long, env = "WHALE_READ_TIMEOUT", default_value_t = 30.0)]
    read_timeout: f64,
    /// seconds running requests may go on after SIGTERM/SIGINT; then they get an error and
    /// the server exits
    #[arg(long, env = "WHALE_SHUTDOWN_TIMEOUT", default_value_t = 30.0)]
    shutdown_timeout: f64,
    /// open connections at once; more are closed as they arrive
    #[arg(long, env = "WHALE_MAX_CONNECTIONS", default_value_t = 1024)]
    max_connections: usize,
    /// an origin (`https://app.example`) whose web pages may call the API; repeatable. Without
    /// an API key, a loopback server answers only pages of localhost and these origins
    #[arg(long, env = "WHALE_CORS_ORIGIN", value_delimiter = ',')]
    cors_origin: Vec<String>,
    /// a name requests may give as `model` (e.g. deepseek-reasoner); repeatable, the first is
    /// the one answers carry (default: the model directory's name)
    #[arg(long, env = "WHALE_SERVED_MODEL_NAME", value_delimiter = ',')]
    served_model_name: Vec<String>,
    /// a Jinja file that replaces the checkpoint's chat template (for example one that renders
    /// the tool definitions, which DeepSeek's own templates leave out)
    #[arg(long, env = "WHALE_CHAT_TEMPLATE")]
    chat_template: Option<PathBuf>,
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
    let mut api_keys: Vec<String> = a.api_key.into_iter().collect();
    if let Some(f) = &a.api_keys_file {
        let text = std::fs::read_to_string(f)
            .with_context(|| format!("--api-keys-file: cannot read {}", f.display()))?;
        for (i, line) in text.lines().enumerate() {
            let key = line.trim();
            if key.is_empty() || key.starts_with('#') {
                continue;
            }
            if key.chars().any(|c| c.is_whitespace() || c.is_control()) {
                bail!(
                    "--api-keys-file {}: line {} holds a key with whitespace or control characters",
                    f.display(),
                    i + 1
                );
            }
            api_keys.push(key.to_string());
        }
        if api_keys.is_empty() {
            bail!("--api-keys-file {} holds no key", f.display());
        }
    }
    if a.public_metrics && api_keys.is_empty() {
        bail!("--public-metrics only matters with --api-key or --api-keys-file");
    }
    if a.context_cache_dir.is_none() && a.context_cache_flush_secs.is_some() {
        bail!("--context-cache-flush-secs needs --context-cache-dir");
    }
    let flush_secs = a.context_cache_flush_secs.unwrap_or(60);
    let secs = |name: &str, v: f64| {
        if v.is_finite() && v > 0.0 && v < 1e6 {
            Ok(std::time::Duration::from_secs_f64(v))
        } else {
            Err(anyhow::anyhow!(
                "--{name} must be a positive number of seconds"
            ))
        }
    };
    // an Origin header is `scheme://host[:port]`: anything else would never match
    if let Some(o) = a.cors_origin.iter().find(|o| {
        let rest = o
            .strip_prefix("https://")
            .or_else(|| o.strip_prefix("http://"));
        rest.is_none_or(|r| r.is_empty() || r.contains('/'))
    }) {
        bail!("--cors-origin `{o}` is not an origin like https://app.example or http://localhost:3000 (no path, no trailing /)");
    }
    if a.max_connections == 0 {
        bail!("--max-connections must be positive");
    }
    let opts = whale_server::Options {
        max_queued: a.max_queued,
        read_timeout: secs("read-timeout", a.read_timeout)?,
        shutdown_timeout: secs("shutdown-timeout", a.shutdown_timeout)?,
        max_connections: a.max_connections,
        cors_origins: a.cors_origin,
        served_model_names: a.served_model_name,
        chat_template: a.chat_template,
        model: match a.model {
            Some(m) => m,
            None => crate::default_model()?,
        },
        host: a.host,
        port: a.port,
        max_batch: a.max_batch,
        cache_mem: parse_size(&a.cache_mem)?,
        max_model_len: a.max_model_len,
        api_keys,
        public_metrics: a.public_metrics,
        dtype: whale_model::parse_dtype(&a.dtype)?,
        block_size: a.block_size,
        body_limit: 4 << 20,
        context_cache_dir: a.context_cache_dir,
        context_cache_flush: (flush_secs > 0).then(|| std::time::Duration::from_secs(flush_secs)),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let r = rt.block_on(whale_server::serve(opts));
    // a blocking tokenisation of a client that went away must not hold the exit
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    r
}
