//! Manifold-constrained hyper-connections (DeepSeek-V4): the residual is `hc_mult` streams of
//! the hidden size per token. Before a block, a one-layer perceptron over the RMS-normed streams
//! gives `pre` (how the streams collapse into the block's input), `post` (how the block's output
//! spreads back over them) and `comb` (how the streams mix into each other, projected onto the
//! doubly-stochastic matrices by Sinkhorn-Knopp iterations). As transformers'
//! `DeepseekV4HyperConnection` / `DeepseekV4HyperHead` compute it, in f32.

use anyhow::Result;
use whale_kernels::matrix::matmul;
use whale_kernels::ops::sigmoid;
use whale_kernels::Matrix;

use crate::checkpoint::Checkpoint;

/// The mixing of one decoder block's input and output streams (`hc_attn_*` / `hc_ffn_*`).
pub struct HyperConnection {
    /// [(2 + hc) * hc, hc * hidden], f32
    pub fn_: Matrix,
    pub base: Vec<f32>,
    pub scale: Vec<f32>,
    hc: usize,
    iters: usize,
    eps: f32,
    norm_eps: f32,
}

/// One token's weights from a `HyperConnection`.
pub struct Mix {
    pub post: Vec<f32>,
    /// comb[j * hc + k]: the share of input stream j in output stream k
    pub comb: Vec<f32>,
}

impl HyperConnection {
    pub fn load(
        ck: &Checkpoint,
        p: &str,
        hidden: usize,
        v: &crate::config::V4Config,
        norm_eps: f64,
    ) -> Result<Self> {
        let hc = v.hc_mult;
        let mix = (2 + hc) * hc;
        let f = ck.matrix(&format!("{p}_fn"), mix, hc * hidden)?;
        Ok(HyperConnection {
            fn_: Matrix::from_f32(mix, hc * hidden, f.to_f32()),
            base: ck.vector(&format!("{p}_base"), mix)?,
            scale: ck.vector(&format!("{p}_scale"), 3)?,
            hc,
            iters: v.hc_sinkhorn_iters,
            eps: v.hc_eps as f32,
            norm_eps: norm_eps as f32,
        })
    }

    /// For `n` tokens' streams [n, hc, hidden]: each token's block input (the streams
    /// collapsed by `pre`) [n, hidden], and its `post` / `comb`.
    pub fn collapse(&self, streams: &[f32], n: usize) -> (Vec<f32>, Vec<Mix>) {
        let hc = self.hc;
        let mixes = project(&self.fn_, streams, n, self.norm_eps);
        let width = streams.len() / n;
        let d = width / hc;
        let mut x = vec![0f32; n * d];
        let mut out = Vec::with_capacity(n);
        for (t, m) in mixes.chunks_exact((2 + hc) * hc).enumerate() {
            let (s0, s1, s2) = (self.scale[0], self.scale[1], self.scale[2]);
            let pre: Vec<f32> = (0..hc)
                .map(|i| sigmoid(m[i] * s0 + self.base[i]) + self.eps)
                .collect();
            let post: Vec<f32> = (0..hc)
                .map(|i| 2.0 * sigmoid(m[hc + i] * s1 + self.base[hc + i]))
                .collect();
            let mut comb: Vec<f32> = (0..hc * hc)
                .map(|i| m[2 * hc + i] * s2 + self.base[2 * hc + i])
                .collect();
            for row in comb.chunks_exact_mut(hc) {
                softmax_in_place(row);
                row.iter_mut().for_each(|v| *v += self.eps);
            }
            normalise_columns(&mut comb, hc, self.eps);
            for _ in 1..self.iters {
                for row in comb.chunks_exact_mut(hc) {
                    let s: f32 = row.iter().sum::<f32>() + self.eps;
                    row.iter_mut().for_each(|v| *v /= s);
                }
                normalise_columns(&mut comb, hc, self.eps);
            }
            collapse_into(
                &streams[t * width..(t + 1) * width],
                &pre,
                &mut x[t * d..(t + 1) * d],
            );
            out.push(Mix { post, comb });
        }
        (x, out)
    }

    /// The streams after a block: stream k = post_k * y + sum_j comb[j, k] * stream_j.
    pub fn expand(&self, streams: &mut [f32], y: &[f32], mixes: &[Mix]) {
        let hc = self.hc;
        let d = y.len() / mixes.len();
        let mut next = vec![0f32; hc * d];
        for ((s, yt), m) in streams
            .chunks_exact_mut(hc * d)
            .zip(y.chunks_exact(d))
            .zip(mixes)
        {
            for k in 0..hc {
                let o = &mut next[k * d..(k + 1) * d];
                for (i, v) in o.iter_mut().enumerate() {
                    let mut acc = m.post[k] * yt[i];
                    let mut mixed = 0f32;
                    for j in 0..hc {
                        mixed += m.comb[j * hc + k] * s[j * d + i];
                    }
                    acc += mixed;
                    *v = acc;
                }
            }
            s.copy_from_slice(&next);
        }
    }
}

/// The final collapse of the streams before the model's norm (`hc_head_*`).
pub struct HyperHead {
    pub hc_fn: Matrix,
    pub hc_base: Vec<f32>,
    pub hc_scale: f32,
    eps: f32,
    norm_eps: f32,
}

impl HyperHead {
    /// `{p}hc_head_*`: the model's (`p` empty) or an MTP module's (`mtp.{k}.`).
    pub fn load(
        ck: &Checkpoint,
        p: &str,
        hidden: usize,
        v: &crate::config::V4Config,
        norm_eps: f64,
    ) -> Result<Self> {
        let hc = v.hc_mult;
        let f = ck.matrix(&format!("{p}hc_head_fn"), hc, hc * hidden)?;
        Ok(HyperHead {
            hc_fn: Matrix::from_f32(hc, hc * hidden, f.to_f32()),
            hc_base: ck.vector(&format!("{p}hc_head_base"), hc)?,
            hc_scale: ck.vector(&format!("{p}hc_head_scale"), 1)?[0],
            eps: v.hc_eps as f32,
            norm_eps: norm_eps as f32,
        })
    }

    /// [n, hc, hidden] streams -> [n, hidden].
    pub fn collapse(&self, streams: &[f32], n: usize) -> Vec<f32> {
        let hc = self.hc_base.len();
        let mixes = project(&self.hc_fn, streams, n, self.norm_eps);
        let width = streams.len() / n;
        let d = width / hc;
        let mut x = vec![0f32; n * d];
        for (t, m) in mixes.chunks_exact(hc).enumerate() {
            let pre: Vec<f32> = (0..hc)
                .map(|i| sigmoid(m[i] * self.hc_scale + self.hc_base[i]) + self.eps)
                .collect();
            collapse_into(
                &streams[t * width..(t + 1) * width],
                &pre,
                &mut x[t * d..(t + 1) * d],
            );
        }
        x
    }
}

/// Each token's streams flattened, RMS-normed without a weight, times `w`.
fn project(w: &Matrix, streams: &[f32], n: usize, eps: f32) -> Vec<f32> {
    let width = streams.len() / n;
    let mut normed = streams.to_vec();
    for row in normed.chunks_exact_mut(width) {
        let ms = row.iter().map(|v| v * v).sum::<f32>() / width as f32;
        let inv = 1.0 / (ms + eps).sqrt();
        row.iter_mut().for_each(|v| *v *= inv);
    }
    let mut out = vec![0f32; n * w.rows];
    matmul(&normed, n, w, &mut out);
    out
}

/// x = sum_i pre_i * stream_i
fn collapse_into(streams: &[f32], pre: &[f32], x: &mut [f32]) {
    let d = x.len();
    for (i, v) in x.iter_mut().enumerate() {
        let mut acc = 0f32;
        for (j, p) in pre.iter().enumerate() {
            acc += p * streams[j * d + i];
        }
        *v = acc;
    }
}

fn softmax_in_place(row: &mut [f32]) {
    let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut z = 0f32;
    for v in row.iter_mut() {
        *v = (*v - m).exp();
        z += *v;
    }
    row.iter_mut().for_each(|v| *v /= z);
}

/// Each column of the hc x hc matrix divided by its sum (+ eps).
fn normalise_columns(comb: &mut [f32], hc: usize, eps: f32) {
    for k in 0..hc {
        let s: f32 = (0..hc).map(|j| comb[j * hc + k]).sum::<f32>() + eps;
        for j in 0..hc {
            comb[j * hc + k] /= s;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sinkhorn-Knopp ends on a column normalisation (columns sum to one) and brings the rows
    /// towards one with every iteration.
    #[test]
    fn sinkhorn_converges_towards_doubly_stochastic() {
        let hc = 4;
        let mut comb: Vec<f32> = (0..16).map(|i| ((i * 7 % 5) as f32 - 2.0).exp()).collect();
        for row in comb.chunks_exact_mut(hc) {
            softmax_in_place(row);
        }
        normalise_columns(&mut comb, hc, 1e-6);
        let row_error = |c: &[f32]| {
            c.chunks_exact(hc)
                .map(|r| (r.iter().sum::<f32>() - 1.0).abs())
                .fold(0f32, f32::max)
        };
        let first = row_error(&comb);
        for _ in 1..20 {
            for row in comb.chunks_exact_mut(hc) {
                let s: f32 = row.iter().sum::<f32>() + 1e-6;
                row.iter_mut().for_each(|v| *v /= s);
            }
            normalise_columns(&mut comb, hc, 1e-6);
        }
        for k in 0..hc {
            let col: f32 = (0..hc).map(|j| comb[j * hc + k]).sum();
            assert!((col - 1.0).abs() < 1e-5, "column {k} sums to {col}");
        }
        let last = row_error(&comb);
        assert!(last < first / 10.0, "rows off by {first} then {last}");
    }
}
