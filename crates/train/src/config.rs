//! A training run's config file (TOML): `[model]` holds config.json fields in hub naming,
//! `[train]` the optimisation, `[[data.tasks]]` the task mix.

use crate::data::TaskSpec;
use crate::optim::Schedule;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;
use whale_model::ModelConfig;

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSettings {
    pub steps: usize,
    pub batch_size: usize,
    pub lr: f64,
    #[serde(default)]
    pub min_lr: f64,
    #[serde(default)]
    pub warmup: usize,
    #[serde(default = "cosine")]
    pub schedule: Schedule,
    /// WSD: fraction of the steps spent decaying
    #[serde(default = "decay_frac")]
    pub decay_frac: f64,
    #[serde(default)]
    pub weight_decay: f64,
    /// global gradient-norm clip (0: none)
    #[serde(default)]
    pub grad_clip: f64,
    #[serde(default)]
    pub seed: u64,
    /// auxiliary-loss-free balancing: bias update speed gamma (0: off)
    #[serde(default)]
    pub bias_update_speed: f64,
    /// sequence-wise balance loss weight alpha (0: off)
    #[serde(default)]
    pub balance_alpha: f64,
    /// MTP loss weight lambda (0: the MTP module is not trained)
    #[serde(default)]
    pub mtp_lambda: f64,
    /// simulated FP8 linear layers
    #[serde(default)]
    pub fp8: bool,
    #[serde(default = "save_every")]
    pub save_every: usize,
    /// stop early at this step (the schedule still spans `steps`); a later --resume continues
    #[serde(default)]
    pub stop_at: Option<usize>,
    /// fraction of examples that follow one or two earlier turns of a conversation (question +
    /// final answer), so a chat's later questions are answered as well as its first
    #[serde(default)]
    pub multi_turn: f64,
    /// loss on the response only (SFT) or on every token (pretraining)
    #[serde(default = "yes")]
    pub response_only: bool,
}

fn cosine() -> Schedule {
    Schedule::Cosine
}
fn decay_frac() -> f64 {
    0.2
}
fn save_every() -> usize {
    500
}
fn yes() -> bool {
    true
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSettings {
    pub tasks: Vec<TaskSpec>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    pub model: toml::Table,
    pub train: TrainSettings,
    pub data: DataSettings,
}

impl TrainConfig {
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("in {}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Self> {
        let c: TrainConfig = toml::from_str(text).context("not a valid training config")?;
        let model = c.model_config()?;
        if model.model_type.is_dense_gqa() {
            bail!(
                "[model] model_type {} is a dense distill; training builds DeepSeek's MLA/MoE models (deepseek_v2, deepseek_v3)",
                model.model_type.as_str()
            );
        }
        let t = &c.train;
        if t.steps == 0 || t.batch_size == 0 {
            bail!("train.steps and train.batch_size must be positive");
        }
        if !positive(t.lr) || t.min_lr < 0.0 || t.min_lr > t.lr {
            bail!("train.lr must be positive and train.min_lr in [0, lr]");
        }
        if t.warmup > t.steps || !(0.0..=1.0).contains(&t.decay_frac) {
            bail!("train.warmup must be <= steps and decay_frac in [0, 1]");
        }
        if !(0.0..=1.0).contains(&t.multi_turn) {
            bail!("train.multi_turn is a fraction of the examples: in [0, 1]");
        }
        Ok(c)
    }

    /// The same run stopped after `steps` (the schedule still spans `train.steps`).
    pub fn with_steps_cut(mut self, steps: usize) -> Self {
        self.train.stop_at = Some(steps);
        self
    }

    pub fn model_config(&self) -> Result<ModelConfig> {
        let v = serde_json::to_value(&self.model)?;
        ModelConfig::from_json(&v).context("[model]")
    }
}

/// A finite number above zero (false for NaN).
pub fn positive(x: f64) -> bool {
    x.is_finite() && x > 0.0
}
