//! DeepSeek Sparse Attention (V3.2): a lightning indexer beside MLA that, for each query,
//! scores every earlier token and keeps the `index_topk` best; attention then reads only those
//! latent rows. As transformers' `DeepseekV32Indexer` computes it:
//! - q = wq_b(q_latent) as `index_n_heads` heads of `index_head_dim`, k = LayerNorm(wk(x)) one
//!   per token (cached after the MLA row), both rope-rotated on their first qk_rope_head_dim
//!   dims in the rotate-half layout;
//! - score(t, j) = sum_h w[t,h] relu(q[t,h] . k[j] / sqrt(index_head_dim)), with
//!   w = weights_proj(x) / sqrt(index_n_heads);
//! - the top index_topk positions among 0..=t (all of them when there are no more).
//!
//! The reference applies a Hadamard rotation and FP8 to q and k before scoring; the rotation
//! keeps every dot product and transformers leaves both out, so whale does too.

use anyhow::Result;
use rayon::prelude::*;
use whale_kernels::matrix::matmul;
use whale_kernels::Matrix;

use crate::checkpoint::Checkpoint;
use crate::config::{IndexerConfig, ModelConfig};
use crate::rope::Rope;

/// nn.LayerNorm's eps in the indexer (fixed, not a config field).
const K_NORM_EPS: f32 = 1e-6;

pub struct Indexer {
    pub wq_b: Matrix,
    pub wk: Matrix,
    pub k_norm_weight: Vec<f32>,
    pub k_norm_bias: Vec<f32>,
    pub weights_proj: Matrix,
    heads: usize,
    dim: usize,
    rope_dim: usize,
    pub topk: usize,
}

/// One segment's indexer queries: per token, its heads' rotated queries and their weights.
pub struct Queries {
    q: Vec<f32>,
    w: Vec<f32>,
}

impl Indexer {
    pub fn load(ck: &Checkpoint, p: &str, cfg: &ModelConfig, ix: &IndexerConfig) -> Result<Self> {
        let (d, r) = (cfg.hidden_size, cfg.q_lora_rank.unwrap_or(0));
        let (n, di) = (ix.index_n_heads, ix.index_head_dim);
        Ok(Indexer {
            wq_b: ck.linear(&format!("{p}wq_b.weight"), n * di, r)?,
            wk: ck.linear(&format!("{p}wk.weight"), di, d)?,
            k_norm_weight: ck.vector(&format!("{p}k_norm.weight"), di)?,
            k_norm_bias: ck.vector(&format!("{p}k_norm.bias"), di)?,
            // kept as stored (transformers keeps it in f32): it weighs heads, not worth rounding
            weights_proj: ck.matrix(&format!("{p}weights_proj.weight"), n, d)?,
            heads: n,
            dim: di,
            rope_dim: cfg.qk_rope_head_dim,
            topk: ix.index_topk,
        })
    }

    pub fn matrices(&self) -> Vec<&Matrix> {
        vec![&self.wq_b, &self.wk, &self.weights_proj]
    }

    /// The indexer keys of `n` new tokens at positions `pos[t]`: [n, index_head_dim].
    pub fn keys(&self, x: &[f32], pos: &[usize], rope: &Rope) -> Vec<f32> {
        let n = pos.len();
        let mut k = vec![0f32; n * self.dim];
        matmul(x, n, &self.wk, &mut k);
        for (row, &p) in k.chunks_exact_mut(self.dim).zip(pos) {
            layer_norm(row, &self.k_norm_weight, &self.k_norm_bias);
            rope.apply_half(&mut row[..self.rope_dim], p);
        }
        k
    }

    /// The rotated queries and head weights of `n` tokens from their query latents `c_q` and
    /// normed hidden rows `x`.
    pub fn queries(&self, c_q: &[f32], x: &[f32], pos: &[usize], rope: &Rope) -> Queries {
        let n = pos.len();
        let mut q = vec![0f32; n * self.heads * self.dim];
        matmul(c_q, n, &self.wq_b, &mut q);
        for (t, token) in q.chunks_exact_mut(self.heads * self.dim).enumerate() {
            for head in token.chunks_exact_mut(self.dim) {
                rope.apply_half(&mut head[..self.rope_dim], pos[t]);
            }
        }
        let mut w = vec![0f32; n * self.heads];
        matmul(x, n, &self.weights_proj, &mut w);
        let s = (self.heads as f32).powf(-0.5);
        w.iter_mut().for_each(|v| *v *= s);
        Queries { q, w }
    }

    /// The rows that token `t` of `qs` (at position `pos`) attends to, in position order: None
    /// when it sees no more than `index_topk` tokens (then all of them). `keys(j)` is the
    /// cached indexer key of position j.
    pub fn pick<'a>(
        &self,
        qs: &Queries,
        t: usize,
        pos: usize,
        keys: impl Fn(usize) -> &'a [f32] + Sync,
    ) -> Option<Vec<u32>> {
        let ctx = pos + 1;
        if ctx <= self.topk {
            return None;
        }
        let (hd, dim) = (self.heads * self.dim, self.dim);
        let q = &qs.q[t * hd..][..hd];
        let w = &qs.w[t * self.heads..][..self.heads];
        let keys: Vec<&[f32]> = (0..ctx).map(keys).collect();
        let scores = index_scores(q, w, &keys, dim, (dim as f32).powf(-0.5));
        Some(top_positions(&scores, self.topk))
    }
}

/// The lightning indexer's score of every key j: sum_h w[h] relu(scale q[h] . k_j) (V3.2's and
/// V4's). The heads' dot products are one matrix product of the query's heads by the keys
/// (gathered into a matrix: the scan over every key is the indexer's whole cost, and the
/// product kernels run it at their rate); the heads are summed in order, so a score depends on
/// nothing but its query and key set.
pub fn index_scores(q: &[f32], w: &[f32], keys: &[&[f32]], dim: usize, scale: f32) -> Vec<f32> {
    let (heads, n) = (w.len(), keys.len());
    // the gathered keys and the dots are tens of MB at long contexts: their storage is kept
    // per thread between steps (freed and mapped afresh, zeroing its pages cost more than the
    // scan); taken, not borrowed, so a nested call on the same thread just allocates
    let (mut k, mut dots) = SCRATCH.with(|s| std::mem::take(&mut *s.borrow_mut()));
    k.clear();
    for key in keys {
        k.extend_from_slice(&key[..dim]);
    }
    dots.clear();
    dots.resize(heads * n, 0.0);
    let km = Matrix::from_f32(n, dim, k);
    matmul(q, heads, &km, &mut dots);
    // the heads summed in order for each key, a block of keys at a time (the dots are head-major:
    // reading them by head keeps the reads sequential)
    let mut scores = vec![0f32; n];
    const BLOCK: usize = 4096;
    scores
        .par_chunks_mut(BLOCK)
        .enumerate()
        .for_each(|(b, out)| {
            for (h, &wh) in w.iter().enumerate() {
                let d = &dots[h * n + b * BLOCK..][..out.len()];
                for (o, &x) in out.iter_mut().zip(d) {
                    *o += wh * (x * scale).max(0.0);
                }
            }
        });
    let k = km.into_f32_vec().unwrap_or_default();
    SCRATCH.with(|s| *s.borrow_mut() = (k, dots));
    scores
}

thread_local! {
    static SCRATCH: std::cell::RefCell<(Vec<f32>, Vec<f32>)> = const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}

/// The `k` positions of the highest scores (ties to the earlier position), ascending.
pub fn top_positions(scores: &[f32], k: usize) -> Vec<u32> {
    let mut idx: Vec<u32> = (0..scores.len() as u32).collect();
    let by_score = |a: &u32, b: &u32| {
        scores[*b as usize]
            .total_cmp(&scores[*a as usize])
            .then(a.cmp(b))
    };
    if k < idx.len() {
        idx.select_nth_unstable_by(k, by_score);
        idx.truncate(k);
    }
    idx.sort_unstable();
    idx
}

/// nn.LayerNorm over one row in place: (x - mean) / sqrt(var + eps) * w + b, var biased.
fn layer_norm(x: &mut [f32], w: &[f32], b: &[f32]) {
    let n = x.len() as f32;
    let mean = x.iter().sum::<f32>() / n;
    let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
    let inv = 1.0 / (var + K_NORM_EPS).sqrt();
    for ((v, &g), &c) in x.iter_mut().zip(w).zip(b) {
        *v = (*v - mean) * inv * g + c;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_positions_keeps_the_best_in_position_order_and_breaks_ties_early() {
        let s = [0.5, 3.0, -1.0, 3.0, 2.0, 0.0];
        assert_eq!(top_positions(&s, 3), vec![1, 3, 4]);
        assert_eq!(top_positions(&s, 1), vec![1]);
        assert_eq!(top_positions(&[1.0, 1.0, 1.0], 2), vec![0, 1]);
        assert_eq!(top_positions(&s, 9), vec![0, 1, 2, 3, 4, 5]);
    }

    #[test]
    fn layer_norm_matches_its_definition() {
        let mut x = [1.0f32, 2.0, 4.0, 9.0];
        layer_norm(&mut x, &[1.0, 2.0, 1.0, 1.0], &[0.0, 0.0, 1.0, 0.0]);
        let (mean, var) = (4.0f32, (9.0 + 4.0 + 0.0 + 25.0) / 4.0);
        let want = [
            (1.0 - mean) / (var + 1e-6f32).sqrt(),
            2.0 * (2.0 - mean) / (var + 1e-6f32).sqrt(),
            1.0,
            (9.0 - mean) / (var + 1e-6f32).sqrt(),
        ];
        for (a, b) in x.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        }
    }
}
