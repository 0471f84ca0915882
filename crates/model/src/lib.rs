//! The DeepSeek V2/V3 model family as whale runs it: config and checkpoint loading, the
//! model (MLA + DeepSeekMoE), its latent cache, parameter accounting, and synthetic checkpoints.
//! The math follows docs in `../shared/docs/deepseek-spec.md`; kernels live in `whale-kernels`.

pub mod cache;
pub mod checkpoint;
pub mod config;
pub mod mla;
pub mod model;
pub mod moe;
pub mod rope;

pub use cache::LatentCache;
pub use checkpoint::Checkpoint;
pub use config::ModelConfig;
pub use mla::AttentionForm;
pub use model::{Logits, Model};
pub mod params;
pub mod synth;
