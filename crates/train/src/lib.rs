//! Training at small scale, on the same model definition as the engine (tensor names, router,
//! rope layout): `whale train` (pretraining / SFT), `whale rl` (GRPO), `whale distill`,
//! `whale eval`, and the `tiny-r1` recipe that makes the bundled model.

pub mod config;
pub mod data;
pub mod distill;
pub mod eval;
pub mod grpo;
pub mod metrics;
pub mod model;
pub mod ops;
pub mod optim;
pub mod pretrain;
pub mod recipe;
pub mod rollout;
pub mod store;
pub mod tokenizer;

pub use model::{Options, Output, TrainModel};
pub use store::Store;
