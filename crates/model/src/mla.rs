//! Multi-head Latent Attention (spec §2). The cache holds, per token, the normed latent c^KV
//! and the rotated shared rope key k^R. Two equivalent forms read it:
//! - `Plain` decompresses every cached latent into per-head keys and values through
//!   `kv_b_proj` (the prefill form, as transformers computes it);
//! - `Absorbed` folds W^UK into the query and W^UV into the output, attending over the
//!   latent rows directly (the decode form; reads only the cache).
//!
//! V3.2 adds an indexer (`dsa.rs`): its key rides after each cached row, and a query that has
//! more earlier tokens than `index_topk` attends, in either form, only to the rows it picks.

use anyhow::Result;
use rayon::prelude::*;
use whale_kernels::attention::{multi_head, shared_latent_picked, Causal};
use whale_kernels::matrix::{matmul, matmul_batch, Product};
use whale_kernels::ops::rms_norm;
use whale_kernels::Matrix;

use crate::cache::KvStore;
use crate::checkpoint::Checkpoint;
use crate::config::ModelConfig;
use crate::dsa::Indexer;
use crate::rope::Rope;

/// The latent norms use eps 1e-6 whatever `rms_norm_eps` says (HF and the reference both).
const LATENT_NORM_EPS: f32 = 1e-6;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttentionForm {
    Plain,
    Absorbed,
    /// plain for segments of several tokens (prefill), absorbed for single tokens (decode)
    Auto,
}

/// A run of consecutive new tokens of one sequence inside a batch: rows `start..start + len`
/// of the batch's activations belong to sequence `seq`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub seq: usize,
    pub start: usize,
    pub len: usize,
}

/// Every token's position in its sequence, for the tokens of `segs` in batch order.
pub fn positions(segs: &[Segment], kv: &dyn KvStore) -> Vec<usize> {
    segs.iter()
        .flat_map(|seg| {
            let p0 = kv.seq_len(seg.seq);
            p0..p0 + seg.len
        })
        .collect()
}

pub enum QueryProj {
    /// q_lora_rank set (V3): q = q_b_proj(RMSNorm(q_a_proj(x)))
    LowRank {
        q_a_proj: Matrix,
        q_a_layernorm: Vec<f32>,
        q_b_proj: Matrix,
    },
    /// no query compression (V2-Lite, Moonlight)
    Full { q_proj: Matrix },
}

pub struct Mla {
    pub q: QueryProj,
    pub kv_a_proj_with_mqa: Matrix,
    pub kv_a_layernorm: Vec<f32>,
    pub kv_b_proj: Matrix,
    /// W^UK of every head transposed, [heads * kv_lora_rank, qk_nope_head_dim], made once at
    /// load in kv_b_proj's format: the absorbed form's query fold, q_lat = W^UK^T q_nope, is
    /// then an ordinary product in the weights' own kernels instead of a pass that dequantises
    /// kv_b's rows for every token.
    pub kv_b_k_t: Matrix,
    pub o_proj: Matrix,
    /// V3.2's lightning indexer
    pub indexer: Option<Indexer>,
    heads: usize,
    nope: usize,
    rope_dim: usize,
    v_dim: usize,
    kv_lora: usize,
    /// values per cached row (the latent, the rope key, then the indexer's key if any)
    row_width: usize,
    scale: f32,
}

/// Per query of a segment, the rows it attends to (None: its whole causal prefix).
type Picks = Vec<Option<Vec<u32>>>;

impl Mla {
    pub fn load(ck: &Checkpoint, p: &str, cfg: &ModelConfig, scale: f32) -> Result<Self> {
        let (d, h) = (cfg.hidden_size, cfg.num_attention_heads);
        let dqk = cfg.qk_head_dim();
        let q = match cfg.q_lora_rank {
            Some(r) => QueryProj::LowRank {
                q_a_proj: ck.linear(&format!("{p}q_a_proj.weight"), r, d)?,
                q_a_layernorm: ck.vector(&format!("{p}q_a_layernorm.weight"), r)?,
                q_b_proj: ck.linear(&format!("{p}q_b_proj.weight"), h * dqk, r)?,
            },
            None => QueryProj::Full {
                q_proj: ck.linear(&format!("{p}q_proj.weight"), h * dqk, d)?,
            },
        };
        let kv_b_proj = ck.linear(
            &format!("{p}kv_b_proj.weight"),
            h * (cfg.qk_nope_head_dim + cfg.v_head_dim),
            cfg.kv_lora_rank,
        )?;
        let kv_b_k_t = ck.packed(transpose_keys(
            &kv_b_proj,
            h,
            cfg.qk_nope_head_dim,
            cfg.v_head_dim,
        ));
        Ok(Mla {
            q,
            kv_a_proj_with_mqa: ck.linear(
                &format!("{p}kv_a_proj_with_mqa.weight"),
                cfg.kv_lora_rank + cfg.qk_rope_head_dim,
                d,
            )?,
            kv_a_layernorm: ck.vector(&format!("{p}kv_a_layernorm.weight"), cfg.kv_lora_rank)?,
            kv_b_proj,
            kv_b_k_t,
            o_proj: ck.linear(&format!("{p}o_proj.weight"), d, h * cfg.v_head_dim)?,
            indexer: match &cfg.indexer {
                Some(ix) => Some(Indexer::load(ck, &format!("{p}indexer."), cfg, ix)?),
                None => None,
            },
            heads: h,
            nope: cfg.qk_nope_head_dim,
            rope_dim: cfg.qk_rope_head_dim,
            v_dim: cfg.v_head_dim,
            kv_lora: cfg.kv_lora_rank,
            row_width: cfg.cache_width(),
            scale,
        })
    }

    pub fn matrices(&self) -> Vec<&Matrix> {
        let mut m = match &self.q {
            QueryProj::LowRank {
                q_a_proj, q_b_proj, ..
            } => vec![q_a_proj, q_b_proj],
            QueryProj::Full { q_proj } => vec![q_proj],
        };
        m.extend([&self.kv_a_proj_with_mqa, &self.kv_b_proj, &self.o_proj]);
        if let Some(ix) = &self.indexer {
            m.extend(ix.matrices());
        }
        m
    }

    /// Stored bytes of the attention weights: all of them (with the load-time W^UK^T), or with
    /// `decode` what a decode step reads (W^UK^T in place of kv_b's key rows).
    pub fn stored_bytes(&self, decode: bool) -> f64 {
        let all: usize = self.matrices().iter().map(|m| m.stored_bytes()).sum();
        let keys = self.kv_b_proj.stored_bytes() as f64 * self.nope as f64
            / (self.nope + self.v_dim) as f64;
        all as f64 + self.kv_b_k_t.stored_bytes() as f64 - if decode { keys } else { 0.0 }
    }

    /// Attention for the tokens of a batch: `x` holds the normed hidden rows of every segment
    /// back to back; each segment's tokens sit at positions `kv.seq_len(seg.seq)..` of its
    /// sequence. Appends the new latent rows to `kv` and returns [tokens, hidden].
    pub fn forward(
        &self,
        x: &[f32],
        segs: &[Segment],
        layer: usize,
        kv: &mut dyn KvStore,
        rope: &Rope,
        form: AttentionForm,
    ) -> Vec<f32> {
        let (h_n, nope, dr, dv, dc) = (
            self.heads,
            self.nope,
            self.rope_dim,
            self.v_dim,
            self.kv_lora,
        );
        let dqk = nope + dr;
        let (width, row_w) = (dc + dr, self.row_width);
        let n: usize = segs.iter().map(|s| s.len).sum();

        // Projections for every token of the batch at once (weights read once per step); the
        // two that read x share one parallel pass.
        let mut rows = vec![0f32; n * width];
        let first = match &self.q {
            QueryProj::LowRank { q_a_proj, .. } => q_a_proj,
            QueryProj::Full { q_proj } => q_proj,
        };
        let mut first_out = vec![0f32; n * first.rows];
        matmul_batch(vec![
            Product::new(x, n, first, &mut first_out),
            Product::new(x, n, &self.kv_a_proj_with_mqa, &mut rows),
        ]);
        // the query latent (V3.2's indexer reads it too)
        let mut c_q = Vec::new();
        let mut q = match &self.q {
            QueryProj::LowRank {
                q_a_layernorm,
                q_b_proj,
                ..
            } => {
                c_q = vec![0f32; first_out.len()];
                rms_norm(&first_out, q_a_layernorm, LATENT_NORM_EPS, &mut c_q);
                let mut q = vec![0f32; n * h_n * dqk];
                matmul(&c_q, n, q_b_proj, &mut q);
                q
            }
            QueryProj::Full { .. } => first_out,
        };
        let pos = positions(segs, kv);
        let index = self
            .indexer
            .as_ref()
            .map(|ix| (ix.keys(x, &pos, rope), ix.queries(&c_q, x, &pos, rope), ix));

        let mut o = vec![0f32; n * h_n * dv];
        // (segment, its first position) of the segments that take the absorbed form
        let mut absorbed: Vec<(Segment, usize)> = Vec::new();
        let mut absorbed_picks: Vec<Picks> = Vec::new();
        for seg in segs {
            let pos0 = kv.seq_len(seg.seq);
            let qs = &mut q[seg.start * h_n * dqk..(seg.start + seg.len) * h_n * dqk];
            for (i, head) in qs.chunks_exact_mut(dqk).enumerate() {
                rope.apply(&mut head[nope..], pos0 + i / h_n);
            }
            // New cache rows: [RMSNorm(latent) ; RoPE(k_rope)] (; the indexer's key).
            let new_rows = &mut rows[seg.start * width..(seg.start + seg.len) * width];
            for (t, row) in new_rows.chunks_exact_mut(width).enumerate() {
                let latent = row[..dc].to_vec();
                rms_norm(
                    &latent,
                    &self.kv_a_layernorm,
                    LATENT_NORM_EPS,
                    &mut row[..dc],
                );
                rope.apply(&mut row[dc..], pos0 + t);
            }
            let picks: Picks = match &index {
                None => {
                    kv.append(seg.seq, layer, new_rows);
                    vec![None; seg.len]
                }
                Some((keys, queries, ix)) => {
                    let di = row_w - width;
                    let full: Vec<f32> = new_rows
                        .chunks_exact(width)
                        .zip(keys[seg.start * di..].chunks_exact(di))
                        .flat_map(|(r, k)| r.iter().chain(k))
                        .copied()
                        .collect();
                    kv.append(seg.seq, layer, &full);
                    let chunks = kv.chunks(seg.seq, layer);
                    let all: Vec<&[f32]> =
                        chunks.iter().flat_map(|c| c.chunks_exact(row_w)).collect();
                    (0..seg.len)
                        .map(|t| ix.pick(queries, seg.start + t, pos0 + t, |j| &all[j][width..]))
                        .collect()
                }
            };
            let plain = match form {
                AttentionForm::Plain => true,
                AttentionForm::Absorbed => false,
                AttentionForm::Auto => seg.len > 1,
            };
            if plain {
                let causal = Causal {
                    n_q: seg.len,
                    heads: h_n,
                    q_offset: pos0,
                    scale: self.scale,
                };
                let os = &mut o[seg.start * h_n * dv..(seg.start + seg.len) * h_n * dv];
                self.attend_plain(causal, qs, &kv.chunks(seg.seq, layer), &picks, os);
            } else {
                absorbed.push((*seg, pos0));
                absorbed_picks.push(picks);
            }
        }
        if !absorbed.is_empty() {
            self.attend_absorbed(&q, &absorbed, &absorbed_picks, layer, kv, &mut o);
        }
        let mut out = vec![0f32; n * self.o_proj.rows];
        matmul(&o, n, &self.o_proj, &mut out);
        out
    }

    /// Decompress every cached latent into per-head keys and values, then plain attention:
    /// causal for the queries that take their whole prefix (the first ones of the segment),
    /// over the picked rows for each of the others.
    fn attend_plain(
        &self,
        causal: Causal,
        q: &[f32],
        chunks: &[&[f32]],
        picks: &[Option<Vec<u32>>],
        o: &mut [f32],
    ) {
        let (h_n, nope, dr, dv, dc) = (
            self.heads,
            self.nope,
            self.rope_dim,
            self.v_dim,
            self.kv_lora,
        );
        let (dqk, width, kv_w) = (nope + dr, dc + dr, nope + dv);
        let all: Vec<&[f32]> = chunks
            .iter()
            .flat_map(|c| c.chunks_exact(self.row_width))
            .collect();
        let s = all.len();
        let latents: Vec<f32> = all.iter().flat_map(|r| &r[..dc]).copied().collect();
        let mut kv = vec![0f32; s * h_n * kv_w];
        matmul(&latents, s, &self.kv_b_proj, &mut kv);
        let mut k = vec![0f32; s * h_n * dqk];
        let mut v = vec![0f32; s * h_n * dv];
        for (j, row) in all.iter().enumerate() {
            for h in 0..h_n {
                let src = &kv[(j * h_n + h) * kv_w..][..kv_w];
                let kd = &mut k[(j * h_n + h) * dqk..][..dqk];
                kd[..nope].copy_from_slice(&src[..nope]);
                kd[nope..].copy_from_slice(&row[dc..width]);
                v[(j * h_n + h) * dv..][..dv].copy_from_slice(&src[nope..]);
            }
        }
        let whole = picks.iter().take_while(|p| p.is_none()).count();
        debug_assert!(picks[whole..].iter().all(|p| p.is_some()));
        let (o_whole, o_picked) = o.split_at_mut(whole * h_n * dv);
        multi_head(
            Causal {
                n_q: whole,
                ..causal
            },
            &q[..whole * h_n * dqk],
            &k,
            &v,
            dqk,
            dv,
            o_whole,
        );
        o_picked
            .par_chunks_mut(h_n * dv)
            .zip(q[whole * h_n * dqk..].par_chunks(h_n * dqk))
            .zip(&picks[whole..])
            .for_each(|((ot, qt), p)| {
                let p = p.as_ref().expect("picked queries follow the whole ones");
                let gather = |src: &[f32], w: usize| -> Vec<f32> {
                    p.iter()
                        .flat_map(|&j| &src[j as usize * h_n * w..][..h_n * w])
                        .copied()
                        .collect()
                };
                let one = Causal {
                    n_q: 1,
                    heads: h_n,
                    q_offset: p.len() - 1,
                    scale: self.scale,
                };
                multi_head(one, qt, &gather(&k, dqk), &gather(&v, dv), dqk, dv, ot);
            });
    }

    /// Fold W^UK into the query and W^UV into the output; attend over the latent rows in place.
    /// The two folds are per-token products, so they run once over the tokens of every absorbed
    /// segment together; only the attention itself is per sequence.
    fn attend_absorbed(
        &self,
        q: &[f32],
        segs: &[(Segment, usize)],
        picks: &[Picks],
        layer: usize,
        kv: &dyn KvStore,
        o: &mut [f32],
    ) {
        let (h_n, nope, dr, dv, dc) = (
            self.heads,
            self.nope,
            self.rope_dim,
            self.v_dim,
            self.kv_lora,
        );
        let dqk = nope + dr;
        let m: usize = segs.iter().map(|(s, _)| s.len).sum();
        // q_lat[t,h] = W^UK_h^T q_nope[t,h]
        // q_nope gathered head-major ([head, token, nope]: each head's rows are one product's
        // input), q_pos token-major as the attention reads it
        let mut q_h = vec![0f32; h_n * m * nope];
        let mut q_pos = Vec::with_capacity(m * h_n * dr);
        let mut t = 0;
        for (seg, _) in segs {
            let qs = &q[seg.start * h_n * dqk..(seg.start + seg.len) * h_n * dqk];
            for token in qs.chunks_exact(h_n * dqk) {
                for (h, qh) in token.chunks_exact(dqk).enumerate() {
                    q_h[(h * m + t) * nope..][..nope].copy_from_slice(&qh[..nope]);
                    q_pos.extend_from_slice(&qh[nope..]);
                }
                t += 1;
            }
        }
        // per head: its tokens' q_nope rows times its band of W^UK^T, all heads in one pass
        let q_lat = banded_products(&q_h, m, &self.kv_b_k_t, dc);
        let mut lat_out = vec![0f32; m * h_n * dc];
        let mut at = 0;
        for ((seg, pos0), picks) in segs.iter().zip(picks) {
            let causal = Causal {
                n_q: seg.len,
                heads: h_n,
                q_offset: *pos0,
                scale: self.scale,
            };
            let span = at * h_n..(at + seg.len) * h_n;
            let chunks = kv.chunks(seg.seq, layer);
            let rows: Vec<&[f32]> = chunks
                .iter()
                .flat_map(|c| c.chunks_exact(self.row_width))
                .collect();
            shared_latent_picked(
                causal,
                &q_lat[span.start * dc..span.end * dc],
                &q_pos[span.start * dr..span.end * dr],
                &rows,
                picks,
                dc,
                dr,
                &mut lat_out[span.start * dc..span.end * dc],
            );
            at += seg.len;
        }
        // o[t,h] = W^UV_h lat_out[t,h], all heads' products in one parallel pass
        let mut lat_h = vec![0f32; h_n * m * dc];
        for (h, lh) in lat_h.chunks_exact_mut(m * dc).enumerate() {
            for t in 0..m {
                lh[t * dc..][..dc].copy_from_slice(&lat_out[(t * h_n + h) * dc..][..dc]);
            }
        }
        let mut o_h = vec![0f32; h_n * m * dv];
        matmul_batch(
            lat_h
                .chunks_exact(m * dc)
                .zip(o_h.chunks_exact_mut(m * dv))
                .enumerate()
                .map(|(h, (x, out))| {
                    let band = h * (nope + dv) + nope;
                    Product {
                        x,
                        n_tok: m,
                        w: &self.kv_b_proj,
                        rows: band..band + dv,
                        out,
                    }
                })
                .collect(),
        );
        for (h, oh) in o_h.chunks_exact(m * dv).enumerate() {
            let mut t = 0;
            for (seg, _) in segs {
                for j in 0..seg.len {
                    o[((seg.start + j) * h_n + h) * dv..][..dv]
                        .copy_from_slice(&oh[t * dv..][..dv]);
                    t += 1;
                }
            }
        }
    }
}

/// Group g's rows times band g of `w` (rows g * band..(g + 1) * band), every group in one
/// parallel pass: `x` holds the groups' inputs one after another ([groups, n, w.cols]); the
/// result is token-major, [n, groups, band].
pub(crate) fn banded_products(x: &[f32], n: usize, w: &Matrix, band: usize) -> Vec<f32> {
    if n == 0 || w.cols == 0 {
        return Vec::new();
    }
    let groups = x.len() / (n * w.cols);
    let mut by_group = vec![0f32; groups * n * band];
    matmul_batch(
        x.chunks_exact(n * w.cols)
            .zip(by_group.chunks_exact_mut(n * band))
            .enumerate()
            .map(|(g, (x, out))| Product {
                x,
                n_tok: n,
                w,
                rows: g * band..(g + 1) * band,
                out,
            })
            .collect(),
    );
    let mut out = vec![0f32; n * groups * band];
    for (g, gb) in by_group.chunks_exact(n * band).enumerate() {
        for t in 0..n {
            out[(t * groups + g) * band..][..band].copy_from_slice(&gb[t * band..][..band]);
        }
    }
    out
}

/// W^UK_h^T of every head stacked: row h * kv_lora + c is column c of head h's key rows of
/// kv_b_proj ([heads * (nope + v), kv_lora]). Kept in kv_b's format where that format can hold
/// rows of `nope` values (FP8 blocks are load-only: f32 then).
fn transpose_keys(kv_b: &Matrix, heads: usize, nope: usize, dv: usize) -> Matrix {
    let dc = kv_b.cols;
    let mut t = vec![0f32; heads * dc * nope];
    let mut buf = vec![0f32; dc];
    for h in 0..heads {
        for r in 0..nope {
            let row = kv_b.row(h * (nope + dv) + r, &mut buf);
            for (c, &v) in row.iter().enumerate() {
                t[(h * dc + c) * nope + r] = v;
            }
        }
    }
    let t = Matrix::from_f32(heads * dc, nope, t);
    match kv_b.format() {
        Some(f) => t.convert(f).unwrap_or(t),
        None => t,
    }
}
