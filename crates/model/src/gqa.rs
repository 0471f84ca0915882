//! Grouped-query attention of R1's dense distills (qwen2, llama, qwen3): `heads` query heads
//! share `kv_heads` key/value heads, every head rotated whole in the rotate-half layout. Qwen2
//! adds biases to q/k/v, Qwen3 RMS-normalises each query and key head before rope, llama's
//! `attention_bias` biases all four projections. The cache holds per token the rotated keys
//! then the values of every key/value head (`2 * kv_heads * head_dim` values per layer).

use anyhow::Result;
use whale_kernels::attention::{cached_grouped, Causal};
use whale_kernels::matrix::{matmul, matmul_batch, Product};
use whale_kernels::ops::rms_norm;
use whale_kernels::Matrix;

use crate::cache::KvStore;
use crate::checkpoint::Checkpoint;
use crate::config::{GqaConfig, ModelConfig};
use crate::mla::Segment;
use crate::rope::Rope;

/// One projection: its weight and, where the model type has one, its bias.
pub struct Linear {
    pub weight: Matrix,
    pub bias: Option<Vec<f32>>,
}

impl Linear {
    fn load(ck: &Checkpoint, p: &str, rows: usize, cols: usize, bias: bool) -> Result<Self> {
        Ok(Linear {
            weight: ck.linear(&format!("{p}.weight"), rows, cols)?,
            bias: if bias {
                Some(ck.vector(&format!("{p}.bias"), rows)?)
            } else {
                None
            },
        })
    }

    fn add_bias(&self, out: &mut [f32]) {
        if let Some(b) = &self.bias {
            for row in out.chunks_exact_mut(b.len()) {
                row.iter_mut().zip(b).for_each(|(o, b)| *o += b);
            }
        }
    }
}

pub struct Gqa {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub o_proj: Linear,
    /// Qwen3's per-head norms of queries and keys
    pub q_norm: Option<Vec<f32>>,
    pub k_norm: Option<Vec<f32>>,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    eps: f32,
}

impl Gqa {
    pub fn load(ck: &Checkpoint, p: &str, cfg: &ModelConfig, g: &GqaConfig) -> Result<Self> {
        let d = cfg.hidden_size;
        let (q, kv) = (
            cfg.num_attention_heads * g.head_dim,
            g.num_key_value_heads * g.head_dim,
        );
        let norm = |name: &str| -> Result<Option<Vec<f32>>> {
            g.qk_norm
                .then(|| ck.vector(&format!("{p}{name}.weight"), g.head_dim))
                .transpose()
        };
        Ok(Gqa {
            q_proj: Linear::load(ck, &format!("{p}q_proj"), q, d, g.qkv_bias)?,
            k_proj: Linear::load(ck, &format!("{p}k_proj"), kv, d, g.qkv_bias)?,
            v_proj: Linear::load(ck, &format!("{p}v_proj"), kv, d, g.qkv_bias)?,
            o_proj: Linear::load(ck, &format!("{p}o_proj"), d, q, g.o_bias)?,
            q_norm: norm("q_norm")?,
            k_norm: norm("k_norm")?,
            heads: cfg.num_attention_heads,
            kv_heads: g.num_key_value_heads,
            head_dim: g.head_dim,
            eps: cfg.rms_norm_eps as f32,
        })
    }

    pub fn matrices(&self) -> Vec<&Matrix> {
        [&self.q_proj, &self.k_proj, &self.v_proj, &self.o_proj]
            .map(|l| &l.weight)
            .to_vec()
    }

    /// Stored bytes of the projections (a decode step reads them all).
    pub fn stored_bytes(&self) -> f64 {
        self.matrices()
            .iter()
            .map(|m| m.stored_bytes())
            .sum::<usize>() as f64
    }

    /// Attention for the tokens of a batch, as `Mla::forward`: `x` holds the normed hidden rows
    /// of every segment; appends each token's keys and values to `kv`; returns [tokens, hidden].
    pub fn forward(
        &self,
        x: &[f32],
        segs: &[Segment],
        layer: usize,
        kv: &mut dyn KvStore,
        rope: &Rope,
    ) -> Vec<f32> {
        let (h_n, kv_n, dh) = (self.heads, self.kv_heads, self.head_dim);
        let n: usize = segs.iter().map(|s| s.len).sum();
        let (mut q, mut k, mut v) = (
            vec![0f32; n * h_n * dh],
            vec![0f32; n * kv_n * dh],
            vec![0f32; n * kv_n * dh],
        );
        matmul_batch(vec![
            Product::new(x, n, &self.q_proj.weight, &mut q),
            Product::new(x, n, &self.k_proj.weight, &mut k),
            Product::new(x, n, &self.v_proj.weight, &mut v),
        ]);
        self.q_proj.add_bias(&mut q);
        self.k_proj.add_bias(&mut k);
        self.v_proj.add_bias(&mut v);
        for (t, w) in [(&mut q, &self.q_norm), (&mut k, &self.k_norm)] {
            if let Some(w) = w {
                let raw = t.clone();
                rms_norm(&raw, w, self.eps, t);
            }
        }

        let scale = (dh as f32).powf(-0.5);
        let mut o = vec![0f32; n * h_n * dh];
        let mut rows = vec![0f32; 2 * kv_n * dh];
        for seg in segs {
            let pos0 = kv.seq_len(seg.seq);
            let span = seg.start..seg.start + seg.len;
            let qs = &mut q[span.start * h_n * dh..span.end * h_n * dh];
            for (i, head) in qs.chunks_exact_mut(dh).enumerate() {
                rope.apply(head, pos0 + i / h_n);
            }
            let mut new_rows = Vec::with_capacity(seg.len * rows.len());
            for t in span.clone() {
                let (kr, vr) = rows.split_at_mut(kv_n * dh);
                kr.copy_from_slice(&k[t * kv_n * dh..][..kv_n * dh]);
                vr.copy_from_slice(&v[t * kv_n * dh..][..kv_n * dh]);
                for head in kr.chunks_exact_mut(dh) {
                    rope.apply(head, pos0 + t - seg.start);
                }
                new_rows.extend_from_slice(&rows);
            }
            kv.append(seg.seq, layer, &new_rows);
            let causal = Causal {
                n_q: seg.len,
                heads: h_n,
                q_offset: pos0,
                scale,
            };
            let os = &mut o[span.start * h_n * dh..span.end * h_n * dh];
            cached_grouped(causal, kv_n, dh, qs, &kv.chunks(seg.seq, layer), os);
        }
        let d = self.o_proj.weight.rows;
        let mut out = vec![0f32; n * d];
        matmul(&o, n, &self.o_proj.weight, &mut out);
        self.o_proj.add_bias(&mut out);
        out
    }
}
