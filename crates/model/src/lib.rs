//! The DeepSeek V2/V3 model family and R1's dense distills as whale runs them: config and
//! checkpoint loading, the model (MLA + DeepSeekMoE, or grouped-query attention + MLP), its
//! cache, parameter accounting, and synthetic checkpoints.
//! The math follows the DeepSeek spec (shared/docs/deepseek-spec.md, next to the repository);
//! kernels live in `whale-kernels`.

pub mod cache;
pub mod checkpoint;
pub mod config;
pub mod csa;
pub mod dsa;
pub mod gguf;
pub mod gqa;
pub mod hc;
pub mod mla;
pub mod model;
pub mod moe;
pub mod rope;

pub use cache::{Caches, KvStore, LatentCache};
pub use checkpoint::Checkpoint;
pub use config::ModelConfig;
pub use mla::{AttentionForm, Segment};
pub use model::{Logits, Model};
pub use whale_kernels::Format;

/// `--dtype` values: the stored format, or one to convert linear layers to at load.
pub fn parse_dtype(s: &str) -> anyhow::Result<Option<Format>> {
    if s == "auto" {
        return Ok(None);
    }
    let f = Format::parse(s).ok_or_else(|| {
        anyhow::anyhow!(
            "--dtype: unknown format `{s}` (auto, f32, bf16, bf16-fast, f16, int8/q8_0, int4/q4_0)"
        )
    })?;
    if f == Format::Bf16Fast && !whale_kernels::bdot::available() {
        // both sides are widened to f32 there: the rounding costs accuracy and buys nothing
        eprintln!(
            "warning: --dtype bf16-fast: this CPU has no AVX512-BF16, so its products run slower than --dtype bf16 (and round activations); prefer bf16"
        );
    }
    Ok(Some(f))
}
pub mod paged;
pub mod params;
pub mod quantize;
pub mod synth;
