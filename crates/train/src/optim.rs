//! AdamW with decoupled weight decay, learning-rate schedules and global-norm clipping. Written
//! here (not candle-nn's) because a resumable run must save and restore the moments.

use anyhow::{Context, Result};
use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    /// linear warmup, cosine decay to min_lr
    Cosine,
    /// warmup, stable, then linear decay to min_lr over the last `decay_frac` of the steps
    Wsd,
    Constant,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LrSchedule {
    pub lr: f64,
    pub min_lr: f64,
    pub warmup: usize,
    pub steps: usize,
    pub schedule: Schedule,
    pub decay_frac: f64,
}

impl LrSchedule {
    pub fn at(&self, step: usize) -> f64 {
        if step < self.warmup {
            return self.lr * (step + 1) as f64 / self.warmup as f64;
        }
        let span = self.steps.saturating_sub(self.warmup).max(1) as f64;
        let t = ((step - self.warmup) as f64 / span).min(1.0);
        match self.schedule {
            Schedule::Constant => self.lr,
            Schedule::Cosine => {
                self.min_lr
                    + 0.5 * (self.lr - self.min_lr) * (1.0 + (std::f64::consts::PI * t).cos())
            }
            Schedule::Wsd => {
                let start = 1.0 - self.decay_frac;
                if t < start {
                    self.lr
                } else {
                    self.lr + (self.min_lr - self.lr) * (t - start) / self.decay_frac.max(1e-9)
                }
            }
        }
    }
}

pub struct AdamW {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    pub t: usize,
    m: BTreeMap<String, Tensor>,
    v: BTreeMap<String, Tensor>,
}

impl AdamW {
    pub fn new(weight_decay: f64) -> Self {
        AdamW {
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay,
            t: 0,
            m: BTreeMap::new(),
            v: BTreeMap::new(),
        }
    }

    /// One update of every (name, var) with a gradient; norms and 1-D tensors get no decay.
    pub fn step<'a>(
        &mut self,
        params: impl Iterator<Item = (&'a String, &'a Var)>,
        grads: &GradStore,
        lr: f64,
    ) -> Result<()> {
        self.t += 1;
        let (b1, b2) = (self.beta1, self.beta2);
        let c1 = 1.0 - b1.powi(self.t as i32);
        let c2 = 1.0 - b2.powi(self.t as i32);
        for (name, var) in params {
            let Some(g) = grads.get(var) else { continue };
            let m = match self.m.get(name) {
                Some(m) => ((m * b1)? + (g * (1.0 - b1))?)?,
                None => (g * (1.0 - b1))?,
            };
            let v = match self.v.get(name) {
                Some(v) => ((v * b2)? + (g.sqr()? * (1.0 - b2))?)?,
                None => (g.sqr()? * (1.0 - b2))?,
            };
            let update = ((&m / c1)? / ((&v / c2)?.sqrt()? + self.eps)?)?;
            let mut w = var.as_tensor().clone();
            if self.weight_decay > 0.0 && var.rank() > 1 {
                w = (w * (1.0 - lr * self.weight_decay))?;
            }
            var.set(&(w - (update * lr)?)?)?;
            self.m.insert(name.clone(), m);
            self.v.insert(name.clone(), v);
        }
        Ok(())
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        let mut out: HashMap<String, Tensor> = HashMap::new();
        for (n, t) in &self.m {
            out.insert(format!("m.{n}"), t.clone());
        }
        for (n, t) in &self.v {
            out.insert(format!("v.{n}"), t.clone());
        }
        out.insert("t".into(), Tensor::new(&[self.t as u32], &Device::Cpu)?);
        candle_core::safetensors::save(&out, path)
            .with_context(|| format!("cannot write {}", path.display()))
    }

    pub fn load(&mut self, path: &Path, dtype: DType) -> Result<()> {
        let all = candle_core::safetensors::load(path, &Device::Cpu)
            .with_context(|| format!("cannot read optimizer state {}", path.display()))?;
        for (k, t) in all {
            if let Some(n) = k.strip_prefix("m.") {
                self.m.insert(n.to_string(), t.to_dtype(dtype)?);
            } else if let Some(n) = k.strip_prefix("v.") {
                self.v.insert(n.to_string(), t.to_dtype(dtype)?);
            } else if k == "t" {
                self.t = t.to_vec1::<u32>()?[0] as usize;
            }
        }
        Ok(())
    }
}

/// Scales the gradients so their global L2 norm is at most `max_norm`; returns the norm before.
pub fn clip_grad_norm<'a>(
    params: impl Iterator<Item = &'a Var> + Clone,
    grads: &mut GradStore,
    max_norm: f64,
) -> Result<f64> {
    let mut sq = 0f64;
    for v in params.clone() {
        if let Some(g) = grads.get(v) {
            sq += g
                .sqr()?
                .sum_all()?
                .to_dtype(DType::F64)?
                .to_scalar::<f64>()?;
        }
    }
    let norm = sq.sqrt();
    if max_norm > 0.0 && norm > max_norm {
        let s = max_norm / (norm + 1e-6);
        for v in params {
            if let Some(g) = grads.remove(v) {
                grads.insert(v, (g * s)?);
            }
        }
    }
    Ok(norm)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_warm_up_then_decay_to_the_floor() {
        let mut s = LrSchedule {
            lr: 1.0,
            min_lr: 0.1,
            warmup: 10,
            steps: 110,
            schedule: Schedule::Cosine,
            decay_frac: 0.2,
        };
        assert!((s.at(0) - 0.1).abs() < 1e-12 && (s.at(9) - 1.0).abs() < 1e-12);
        assert!((s.at(60) - 0.55).abs() < 1e-9 && (s.at(110) - 0.1).abs() < 1e-9);
        s.schedule = Schedule::Wsd;
        assert_eq!(s.at(50), 1.0);
        assert!((s.at(110) - 0.1).abs() < 1e-9 && s.at(100) > 0.1 && s.at(100) < 1.0);
    }

    #[test]
    fn adamw_minimises_a_quadratic_and_clipping_caps_the_norm() -> Result<()> {
        let x = Var::from_vec(vec![3.0f32, -2.0], 2, &Device::Cpu)?;
        let name = "x".to_string();
        let mut opt = AdamW::new(0.0);
        for _ in 0..300 {
            let mut g = x.as_tensor().sqr()?.sum_all()?.backward()?;
            let n = clip_grad_norm(std::iter::once(&x), &mut g, 1.0)?;
            assert!(n >= 0.0);
            let clipped: f32 = g.get(&x).unwrap().sqr()?.sum_all()?.sqrt()?.to_scalar()?;
            assert!(clipped <= 1.0 + 1e-4);
            opt.step(std::iter::once((&name, &x)), &g, 0.05)?;
        }
        let v: Vec<f32> = x.as_tensor().to_vec1()?;
        assert!(v.iter().all(|a| a.abs() < 0.05), "{v:?}");
        Ok(())
    }
}
