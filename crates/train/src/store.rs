//! The trainable tensors of a checkpoint, by hub name, and their safetensors form.

use anyhow::{anyhow, bail, Context, Result};
use candle_core::{DType, Device, Tensor, Var};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::path::Path;
use whale_model::ModelConfig;

pub struct Store {
    pub vars: BTreeMap<String, Var>,
    pub dtype: DType,
}

/// Tensors a trainer does not own: the MTP module's copies of the embedding and the head are
/// tied to the main ones during training and written out as copies.
pub fn is_tied_copy(name: &str) -> bool {
    name.ends_with(".embed_tokens.weight") && name != "model.embed_tokens.weight"
        || name.ends_with("shared_head.head.weight")
}

/// Buffers moved by rules, not by gradients.
pub fn is_buffer(name: &str) -> bool {
    name.ends_with("e_score_correction_bias")
}

impl Store {
    /// Fresh weights: norms 1, biases 0, linear layers N(0, (0.5 / sqrt(fan_in))^2), output
    /// projections of each residual branch scaled down by sqrt(2 * layers) (GPT-2's rule).
    pub fn init(cfg: &ModelConfig, seed: u64, dtype: DType) -> Result<Self> {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut vars = BTreeMap::new();
        let depth = (2 * (cfg.num_hidden_layers + cfg.num_nextn_predict_layers)) as f32;
        for (name, shape) in whale_model::synth::tensor_shapes(cfg) {
            if is_tied_copy(&name) {
                continue;
            }
            let n: usize = shape.iter().product();
            let values: Vec<f32> =
                if name.ends_with("norm.weight") || name.ends_with("layernorm.weight") {
                    vec![1.0; n]
                } else if is_buffer(&name) {
                    vec![0.0; n]
                } else {
                    let fan_in = *shape.last().unwrap() as f32;
                    let mut std = if name.contains("embed_tokens") {
                        0.5
                    } else {
                        0.5 / fan_in.sqrt()
                    };
                    if name.ends_with("o_proj.weight") || name.ends_with("down_proj.weight") {
                        std /= depth.sqrt();
                    }
                    (0..n).map(|_| std * normal(&mut rng)).collect()
                };
            let t = Tensor::from_vec(values, shape, &Device::Cpu)?.to_dtype(dtype)?;
            vars.insert(name, Var::from_tensor(&t)?);
        }
        Ok(Store { vars, dtype })
    }

    pub fn get(&self, name: &str) -> Result<&Tensor> {
        self.vars
            .get(name)
            .map(|v| v.as_tensor())
            .ok_or_else(|| anyhow!("the model has no tensor `{name}`"))
    }

    /// Parameters the optimiser updates (everything but the balancing biases).
    pub fn trainable(&self) -> impl Iterator<Item = (&String, &Var)> + Clone {
        self.vars.iter().filter(|(n, _)| !is_buffer(n))
    }

    pub fn num_params(&self) -> usize {
        self.trainable().map(|(_, v)| v.elem_count()).sum()
    }

    /// Loads every tensor `cfg` has from `*.safetensors` files in `dir` (any float dtype).
    pub fn load(dir: &Path, cfg: &ModelConfig, dtype: DType) -> Result<Self> {
        let mut found: BTreeMap<String, Tensor> = BTreeMap::new();
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .with_context(|| format!("cannot read {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
            .filter(|p| {
                !p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("optimizer"))
            })
            .collect();
        files.sort();
        for f in &files {
            for (name, t) in candle_core::safetensors::load(f, &Device::Cpu)? {
                found.insert(name, t);
            }
        }
        let mut vars = BTreeMap::new();
        for (name, shape) in whale_model::synth::tensor_shapes(cfg) {
            if is_tied_copy(&name) {
                continue;
            }
            let t = found
                .remove(&name)
                .ok_or_else(|| anyhow!("{}: tensor `{name}` is missing", dir.display()))?;
            if t.dims() != shape.as_slice() {
                bail!(
                    "{}: `{name}` has shape {:?}, the config says {shape:?}",
                    dir.display(),
                    t.dims()
                );
            }
            vars.insert(name, Var::from_tensor(&t.to_dtype(dtype)?)?);
        }
        Ok(Store { vars, dtype })
    }

    /// Writes `model.safetensors` in hub naming: linear weights and norms in `dtype`, the
    /// balancing biases in f32, and the MTP module's copies of the embedding and head.
    pub fn save(&self, cfg: &ModelConfig, dir: &Path, dtype: DType) -> Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let mut out: std::collections::HashMap<String, Tensor> = Default::default();
        for (name, _) in whale_model::synth::tensor_shapes(cfg) {
            let source = if is_tied_copy(&name) {
                if name.ends_with("embed_tokens.weight") {
                    "model.embed_tokens.weight".to_string()
                } else {
                    "lm_head.weight".to_string()
                }
            } else {
                name.clone()
            };
            let t = self.get(&source)?;
            let dt = if is_buffer(&name) { DType::F32 } else { dtype };
            out.insert(name, t.to_dtype(dt)?);
        }
        let path = dir.join("model.safetensors");
        candle_core::safetensors::save(&out, &path)
            .with_context(|| format!("cannot write {}", path.display()))?;
        Ok(())
    }

    /// A frozen copy (for the GRPO reference policy or an EMA).
    pub fn snapshot(&self) -> Result<Store> {
        let mut vars = BTreeMap::new();
        for (n, v) in &self.vars {
            vars.insert(n.clone(), Var::from_tensor(&v.as_tensor().copy()?)?);
        }
        Ok(Store {
            vars,
            dtype: self.dtype,
        })
    }
}

/// Standard normal by Box-Muller (rand 0.8 has no Normal without rand_distr).
pub fn normal(rng: &mut impl Rng) -> f32 {
    let u1: f64 = rng.gen_range(f64::MIN_POSITIVE..1.0);
    let u2: f64 = rng.gen();
    ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
}
