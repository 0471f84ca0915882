//! Rotary embedding: MLA's decoupled `qk_rope_head_dim` dims in the released complex-pair
//! layout (dims (2i, 2i+1) rotated by position * inv_freq[i]), or a GQA head's whole width in
//! the rotate-half layout (dims (i, i + dim/2)). Scaling by YaRN or llama3 follows transformers'
//! `_compute_yarn_parameters` / `_compute_llama3_parameters` step by step (f32 where it is f32).

use crate::config::ModelConfig;

/// YaRN's magnitude correction m(s, k) = 0.1 k ln s + 1 (1 when s <= 1).
pub fn yarn_get_mscale(scale: f64, mscale: f64) -> f64 {
    if scale <= 1.0 {
        1.0
    } else {
        0.1 * mscale * scale.ln() + 1.0
    }
}

#[derive(Clone, Debug)]
pub struct Rope {
    inv_freq: Vec<f32>,
    /// pairs (2i, 2i+1) when true; (i, i + dim/2) when false
    interleave: bool,
    /// multiplies cos and sin (YaRN's `attention_factor`)
    attention_factor: f32,
}

impl Rope {
    pub fn new(cfg: &ModelConfig) -> Self {
        Self::build(
            cfg.rope_dim(),
            cfg.rope_theta,
            cfg.yarn.as_ref(),
            cfg.llama3.as_ref(),
            cfg.rope_interleave,
        )
    }

    /// A rope over `dim` dims at base `theta`, scaled by YaRN or llama3 where given.
    pub fn build(
        dim: usize,
        theta: f64,
        yarn: Option<&crate::config::Yarn>,
        llama3: Option<&crate::config::Llama3Rope>,
        interleave: bool,
    ) -> Self {
        let base = theta as f32;
        let half = dim / 2;
        let pos_freqs: Vec<f32> = (0..half)
            .map(|i| base.powf((2 * i) as f32 / dim as f32))
            .collect();
        if let Some(l) = llama3 {
            return Rope {
                inv_freq: llama3_freqs(pos_freqs.iter().map(|p| 1.0 / p), l),
                interleave,
                attention_factor: 1.0,
            };
        }
        let Some(y) = yarn else {
            return Rope {
                inv_freq: pos_freqs.iter().map(|p| 1.0 / p).collect(),
                interleave,
                attention_factor: 1.0,
            };
        };
        let factor = y.factor as f32;
        let correction_dim = |rotations: f64| {
            (dim as f64
                * (y.original_max_position_embeddings as f64
                    / (rotations * 2.0 * std::f64::consts::PI))
                    .ln())
                / (2.0 * theta.ln())
        };
        let (mut low, mut high) = (correction_dim(y.beta_fast), correction_dim(y.beta_slow));
        if y.truncate {
            (low, high) = (low.floor(), high.ceil());
        }
        let low = low.max(0.0);
        let mut high = high.min(dim as f64 - 1.0);
        if low == high {
            high += 0.001;
        }
        let inv_freq = (0..half)
            .map(|i| {
                let ramp = ((i as f32 - low as f32) / (high as f32 - low as f32)).clamp(0.0, 1.0);
                let extrapolation_factor = 1.0 - ramp;
                let extrapolation = 1.0 / pos_freqs[i];
                let interpolation = 1.0 / (factor * pos_freqs[i]);
                interpolation * (1.0 - extrapolation_factor) + extrapolation * extrapolation_factor
            })
            .collect();
        let attention_factor = match (y.attention_factor, y.mscale, y.mscale_all_dim) {
            (Some(a), _, _) => a,
            (None, Some(m), Some(ma)) if m != 0.0 && ma != 0.0 => {
                yarn_get_mscale(y.factor, m) / yarn_get_mscale(y.factor, ma)
            }
            _ => yarn_get_mscale(y.factor, 1.0),
        } as f32;
        Rope {
            inv_freq,
            interleave,
            attention_factor,
        }
    }

    pub fn inv_freq(&self) -> &[f32] {
        &self.inv_freq
    }

    /// YaRN's factor on cos and sin (1 without YaRN).
    pub fn attention_factor(&self) -> f32 {
        self.attention_factor
    }

    /// Rotate `x` (one head's rope dims) in place for absolute position `pos`.
    pub fn apply(&self, x: &mut [f32], pos: usize) {
        self.rotate(x, pos, self.interleave)
    }

    /// As `apply`, in the rotate-half layout whatever the model's (V3.2's indexer rotates its
    /// keys and queries so while its attention takes the interleaved pairs).
    pub fn apply_half(&self, x: &mut [f32], pos: usize) {
        self.rotate(x, pos, false)
    }

    /// The inverse rotation of `apply` (V4 takes the rope back out of its attention output).
    pub fn apply_inverse(&self, x: &mut [f32], pos: usize) {
        self.turn(x, pos, self.interleave, -1.0)
    }

    fn rotate(&self, x: &mut [f32], pos: usize, interleave: bool) {
        self.turn(x, pos, interleave, 1.0)
    }

    /// `sign` -1 negates the sine (cos(-a) = cos a, sin(-a) = -sin a, as transformers' `-sin`).
    fn turn(&self, x: &mut [f32], pos: usize, interleave: bool, sign: f32) {
        let p = pos as f32;
        let half = x.len() / 2;
        for i in 0..half {
            let angle = p * self.inv_freq[i];
            let (cos, sin) = (
                angle.cos() * self.attention_factor,
                sign * (angle.sin() * self.attention_factor),
            );
            let (ia, ib) = if interleave {
                (2 * i, 2 * i + 1)
            } else {
                (i, i + half)
            };
            let (a, b) = (x[ia], x[ib]);
            x[ia] = a * cos - b * sin;
            x[ib] = a * sin + b * cos;
        }
    }
}

/// Llama 3.1's frequencies: wavelengths past the original context's / low_freq_factor slowed
/// by `factor`, those under its / high_freq_factor kept, the band between blended smoothly.
fn llama3_freqs(inv_freq: impl Iterator<Item = f32>, l: &crate::config::Llama3Rope) -> Vec<f32> {
    let old = l.original_max_position_embeddings as f32;
    let (factor, lo, hi) = (
        l.factor as f32,
        l.low_freq_factor as f32,
        l.high_freq_factor as f32,
    );
    let (low_wavelen, high_wavelen) = (old / lo, old / hi);
    inv_freq
        .map(|f| {
            let wavelen = 2.0 * std::f32::consts::PI / f;
            let scaled = if wavelen > low_wavelen { f / factor } else { f };
            if wavelen < high_wavelen || wavelen > low_wavelen {
                return scaled;
            }
            let smooth = (old / wavelen - lo) / (hi - lo);
            (1.0 - smooth) * scaled / factor + smooth * scaled
        })
        .collect()
}

/// Softmax scale of MLA: (qk_nope + qk_rope)^-1/2, times m(factor, mscale_all_dim)^2 under YaRN.
pub fn softmax_scale(cfg: &ModelConfig) -> f32 {
    let mut s = (cfg.qk_head_dim() as f64).powf(-0.5);
    if let Some(y) = &cfg.yarn {
        if let Some(ma) = y.mscale_all_dim.filter(|&m| m != 0.0) {
            let m = yarn_get_mscale(y.factor, ma);
            s *= m * m;
        }
    }
    s as f32
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn v3_like(dim: usize) -> ModelConfig {
        ModelConfig::from_json(&json!({
            "model_type": "deepseek_v3", "vocab_size": 10, "hidden_size": 8, "intermediate_size": 8,
            "num_hidden_layers": 1, "num_attention_heads": 1, "kv_lora_rank": 4, "qk_nope_head_dim": 128,
            "qk_rope_head_dim": dim, "v_head_dim": 4, "max_position_embeddings": 163840,
            "rope_scaling": {"type": "yarn", "factor": 40, "original_max_position_embeddings": 4096,
              "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0}
        }))
        .unwrap()
    }

    #[test]
    fn v3_yarn_frequencies_and_scale_match_the_spec() {
        let c = v3_like(64);
        let r = Rope::new(&c);
        let want_head = [
            1.0, 0.7499, 0.5623, 0.4217, 0.3162, 0.2371, 0.1778, 0.1334, 0.1, 0.07499, 0.05623,
            0.03901,
        ];
        for (a, b) in r.inv_freq().iter().zip(want_head) {
            assert!((a - b).abs() / b < 1e-3, "{a} vs {b}");
        }
        let tail = &r.inv_freq()[29..];
        for (a, b) in tail.iter().zip([5.928e-6, 4.446e-6, 3.334e-6]) {
            assert!((a - b).abs() / b < 1e-3, "{a} vs {b}");
        }
        assert!((softmax_scale(&c) - 0.1352338).abs() < 1e-6);
        assert!((r.attention_factor - 1.0).abs() < 1e-7);
    }

    #[test]
    fn rotation_is_complex_multiplication_of_adjacent_pairs() {
        let c = v3_like(4);
        let r = Rope::new(&c);
        let mut x = [1.0f32, 2.0, 3.0, 4.0];
        r.apply(&mut x, 3);
        let a0 = 3.0 * r.inv_freq()[0];
        assert!((x[0] - (a0.cos() - 2.0 * a0.sin())).abs() < 1e-6);
        assert!((x[1] - (a0.sin() + 2.0 * a0.cos())).abs() < 1e-6);
        // norms of pairs are kept
        let n1 = (x[2] * x[2] + x[3] * x[3]).sqrt();
        assert!((n1 - 5.0).abs() < 1e-5);
    }
}
