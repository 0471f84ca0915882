//! DeepSeek-V4's attention (transformers' `DeepseekV4Attention`): shared-KV multi-query
//! attention with `head_dim`-wide heads over
//! - a sliding window: the last `sliding_window` tokens' keys (key = value), and, by layer kind,
//! - compressed entries: one per `compress_rate` tokens, a softmax-gated sum of the tokens'
//!   projections (CSA: overlapping windows of twice the rate, entries chosen per query by a
//!   lightning indexer; HCA: every entry of non-overlapping windows),
//!
//! with a learned sink logit per head, the rope taken back out of the output, and a grouped
//! low-rank output projection. Rope is interleaved pairs on each head's trailing dims: plain
//! (`rope_theta`) in sliding layers, the compressed branches' (`compress_rope_theta`, YaRN) in
//! the others.
//!
//! The cache row of a token (`V4Row`) holds its window key, its raw compressor inputs, and at
//! the last token of each window the compressed entry, so it is a pure function of the prefix
//! and pages, prefix-caches and chunks like MLA's latent rows.

use anyhow::Result;
use rayon::prelude::*;
use whale_kernels::attention::sink_heads;
use whale_kernels::matrix::{matmul, matmul_batch, Product};
use whale_kernels::ops::{dot, rms_norm};
use whale_kernels::Matrix;

use crate::cache::KvStore;
use crate::checkpoint::Checkpoint;
use crate::config::{ModelConfig, V4Attention, V4Config, V4Row};
use crate::dsa::{index_scores, top_positions};
use crate::mla::{banded_products, positions, Segment};
use crate::rope::Rope;

/// A compressor's projections (`compressor.*` or `indexer.compressor.*`): per token a raw kv and
/// gate of `2 * dim` (overlapping windows: the first half feeds the next window's entry, the
/// second half its own) or `dim` values.
pub struct Compressor {
    pub wkv: Matrix,
    pub wgate: Matrix,
    /// [rate, raw]
    pub ape: Vec<f32>,
    pub norm: Vec<f32>,
    rate: usize,
    dim: usize,
    overlap: bool,
}

impl Compressor {
    fn load(
        ck: &Checkpoint,
        p: &str,
        d: usize,
        dim: usize,
        rate: usize,
        overlap: bool,
    ) -> Result<Self> {
        let raw = if overlap { 2 * dim } else { dim };
        Ok(Compressor {
            wkv: ck.linear(&format!("{p}wkv.weight"), raw, d)?,
            wgate: ck.linear(&format!("{p}wgate.weight"), raw, d)?,
            ape: ck.array(&format!("{p}ape"), &[rate, raw])?,
            norm: ck.vector(&format!("{p}norm.weight"), dim)?,
            rate,
            dim,
            overlap,
        })
    }

    fn raw(&self) -> usize {
        if self.overlap {
            2 * self.dim
        } else {
            self.dim
        }
    }

    /// The entry of window `w` (tokens w*rate..(w+1)*rate, and for overlapping windows the
    /// previous window's too), from the tokens' raw kv and gate (`raw(j)` for position j).
    fn entry<'a>(
        &self,
        w: usize,
        raw: impl Fn(usize) -> (&'a [f32], &'a [f32]),
        rope: &Rope,
        rope_dim: usize,
        eps: f32,
    ) -> Vec<f32> {
        let (m, dim) = (self.rate, self.dim);
        let rw = self.raw();
        // (position, offset of its half in the raw rows, position in its window)
        let mut slots: Vec<(usize, usize, usize)> = Vec::with_capacity(2 * m);
        if self.overlap && w > 0 {
            slots.extend((0..m).map(|i| ((w - 1) * m + i, 0, i)));
        }
        let own = if self.overlap { dim } else { 0 };
        slots.extend((0..m).map(|i| (w * m + i, own, i)));
        let mut out = vec![0f32; dim];
        let mut g = vec![0f32; slots.len()];
        for (c, o) in out.iter_mut().enumerate() {
            for (gv, &(j, half, i)) in g.iter_mut().zip(&slots) {
                *gv = raw(j).1[half + c] + self.ape[i * rw + half + c];
            }
            let mx = g.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut z = 0f32;
            for gv in g.iter_mut() {
                *gv = (*gv - mx).exp();
                z += *gv;
            }
            let mut acc = 0f32;
            for (&gv, &(j, half, _)) in g.iter().zip(&slots) {
                acc += raw(j).0[half + c] * (gv / z);
            }
            *o = acc;
        }
        let mut normed = vec![0f32; dim];
        rms_norm(&out, &self.norm, eps, &mut normed);
        rope.apply(&mut normed[dim - rope_dim..], w * m);
        normed
    }
}

/// CSA's lightning indexer: its own overlapping compressor at `index_head_dim`, queries from
/// the query latent, per-head weights from the hidden state.
pub struct Indexer {
    pub compressor: Compressor,
    pub wq_b: Matrix,
    pub weights_proj: Matrix,
    heads: usize,
    dim: usize,
    topk: usize,
}

pub struct V4Attn {
    pub kind: V4Attention,
    pub wq_a: Matrix,
    pub q_norm: Vec<f32>,
    pub wq_b: Matrix,
    pub wkv: Matrix,
    pub kv_norm: Vec<f32>,
    pub wo_a: Matrix,
    pub wo_b: Matrix,
    pub attn_sink: Vec<f32>,
    pub compressor: Option<Compressor>,
    pub indexer: Option<Indexer>,
    /// the rope of this layer's attention (plain for sliding layers, else the compressed one)
    rope: Rope,
    /// the compressed branches' rope (entries and indexer queries)
    compress_rope: Rope,
    row: V4Row,
    heads: usize,
    head_dim: usize,
    rope_dim: usize,
    window: usize,
    o_groups: usize,
    o_lora: usize,
    eps: f32,
}

impl V4Attn {
    pub fn load(
        ck: &Checkpoint,
        p: &str,
        cfg: &ModelConfig,
        v: &V4Config,
        kind: V4Attention,
    ) -> Result<Self> {
        let (d, h, hd) = (cfg.hidden_size, cfg.num_attention_heads, v.head_dim);
        let q = cfg.q_lora_rank.expect("V4 configs have q_lora_rank");
        let rate = v.compress_rate(kind);
        let compressor = match kind {
            V4Attention::Sliding => None,
            _ => Some(Compressor::load(
                ck,
                &format!("{p}compressor."),
                d,
                hd,
                rate,
                kind == V4Attention::Csa,
            )?),
        };
        let indexer = match kind {
            V4Attention::Csa => Some(Indexer {
                compressor: Compressor::load(
                    ck,
                    &format!("{p}indexer.compressor."),
                    d,
                    v.index_head_dim,
                    rate,
                    true,
                )?,
                wq_b: ck.linear(
                    &format!("{p}indexer.wq_b.weight"),
                    v.index_n_heads * v.index_head_dim,
                    q,
                )?,
                weights_proj: ck.matrix(
                    &format!("{p}indexer.weights_proj.weight"),
                    v.index_n_heads,
                    d,
                )?,
                heads: v.index_n_heads,
                dim: v.index_head_dim,
                topk: v.index_topk,
            }),
            _ => None,
        };
        let plain = Rope::build(v.qk_rope_head_dim, cfg.rope_theta, None, None, true);
        let compress_rope = Rope::build(
            v.qk_rope_head_dim,
            v.compress_rope_theta,
            v.compress_yarn.as_ref(),
            None,
            true,
        );
        Ok(V4Attn {
            kind,
            wq_a: ck.linear(&format!("{p}wq_a.weight"), q, d)?,
            q_norm: ck.vector(&format!("{p}q_norm.weight"), q)?,
            wq_b: ck.linear(&format!("{p}wq_b.weight"), h * hd, q)?,
            wkv: ck.linear(&format!("{p}wkv.weight"), hd, d)?,
            kv_norm: ck.vector(&format!("{p}kv_norm.weight"), hd)?,
            wo_a: ck.linear(
                &format!("{p}wo_a.weight"),
                v.o_groups * v.o_lora_rank,
                h * hd / v.o_groups,
            )?,
            wo_b: ck.linear(&format!("{p}wo_b.weight"), d, v.o_groups * v.o_lora_rank)?,
            attn_sink: ck.vector(&format!("{p}attn_sink"), h)?,
            compressor,
            indexer,
            rope: if kind == V4Attention::Sliding {
                plain
            } else {
                compress_rope.clone()
            },
            compress_rope,
            row: v.row_layout(kind),
            heads: h,
            head_dim: hd,
            rope_dim: v.qk_rope_head_dim,
            window: v.sliding_window,
            o_groups: v.o_groups,
            o_lora: v.o_lora_rank,
            eps: cfg.rms_norm_eps as f32,
        })
    }

    pub fn matrices(&self) -> Vec<&Matrix> {
        let mut m = vec![&self.wq_a, &self.wq_b, &self.wkv, &self.wo_a, &self.wo_b];
        if let Some(c) = &self.compressor {
            m.extend([&c.wkv, &c.wgate]);
        }
        if let Some(i) = &self.indexer {
            m.extend([
                &i.compressor.wkv,
                &i.compressor.wgate,
                &i.wq_b,
                &i.weights_proj,
            ]);
        }
        m
    }

    /// Attention for the tokens of a batch (`x`: their normed hidden rows, segment by segment);
    /// appends each token's cache row to `kv` and returns [tokens, hidden].
    pub fn forward(
        &self,
        x: &[f32],
        segs: &[Segment],
        layer: usize,
        kv: &mut dyn KvStore,
    ) -> Vec<f32> {
        let (h_n, hd, dr) = (self.heads, self.head_dim, self.rope_dim);
        let n: usize = segs.iter().map(|s| s.len).sum();
        let width = kv.shape().0;
        let pos = positions(segs, kv);

        // every product that reads x, in one pass
        let q_lora = self.wq_a.rows;
        let mut q_a = vec![0f32; n * q_lora];
        let mut keys = vec![0f32; n * hd];
        let raw_of = |c: &Option<&Compressor>| c.map_or(0, |c| c.raw());
        let comp = self.compressor.as_ref();
        let icomp = self.indexer.as_ref().map(|i| &i.compressor);
        let (rw, irw) = (raw_of(&comp), raw_of(&icomp));
        let (mut ckv, mut cg) = (vec![0f32; n * rw], vec![0f32; n * rw]);
        let (mut ikv, mut ig) = (vec![0f32; n * irw], vec![0f32; n * irw]);
        let mut iw = vec![0f32; n * self.indexer.as_ref().map_or(0, |i| i.heads)];
        {
            let mut products = vec![
                Product::new(x, n, &self.wq_a, &mut q_a),
                Product::new(x, n, &self.wkv, &mut keys),
            ];
            if let Some(c) = comp {
                products.push(Product::new(x, n, &c.wkv, &mut ckv));
                products.push(Product::new(x, n, &c.wgate, &mut cg));
            }
            if let Some(i) = &self.indexer {
                products.push(Product::new(x, n, &i.compressor.wkv, &mut ikv));
                products.push(Product::new(x, n, &i.compressor.wgate, &mut ig));
                products.push(Product::new(x, n, &i.weights_proj, &mut iw));
            }
            matmul_batch(products);
        }
        let mut q_res = vec![0f32; q_a.len()];
        rms_norm(&q_a, &self.q_norm, self.eps, &mut q_res);
        let mut q = vec![0f32; n * h_n * hd];
        matmul(&q_res, n, &self.wq_b, &mut q);
        for (t, token) in q.chunks_exact_mut(h_n * hd).enumerate() {
            for head in token.chunks_exact_mut(hd) {
                unweighted_rms(head, self.eps);
                self.rope.apply(&mut head[hd - dr..], pos[t]);
            }
        }
        let mut k_normed = vec![0f32; keys.len()];
        rms_norm(&keys, &self.kv_norm, self.eps, &mut k_normed);
        for (t, k) in k_normed.chunks_exact_mut(hd).enumerate() {
            self.rope.apply(&mut k[hd - dr..], pos[t]);
        }
        // the indexer's queries (rope of the compressed branch at the query's position) and
        // head weights
        let iq = self.indexer.as_ref().map(|i| {
            let mut iq = vec![0f32; n * i.heads * i.dim];
            matmul(&q_res, n, &i.wq_b, &mut iq);
            for (t, token) in iq.chunks_exact_mut(i.heads * i.dim).enumerate() {
                for head in token.chunks_exact_mut(i.dim) {
                    self.compress_rope.apply(&mut head[i.dim - dr..], pos[t]);
                }
            }
            let s = (i.heads as f32).powf(-0.5);
            iw.iter_mut().for_each(|v| *v *= s);
            iq
        });

        let mut o = vec![0f32; n * h_n * hd];
        for seg in segs {
            let p0 = kv.seq_len(seg.seq);
            let r = self.row;
            // the new rows: key, raw compressor inputs (entries below)
            let mut rows = vec![0f32; seg.len * width];
            for (t, row) in rows.chunks_exact_mut(width).enumerate() {
                let i = seg.start + t;
                row[..hd].copy_from_slice(&k_normed[i * hd..(i + 1) * hd]);
                if rw > 0 {
                    row[hd..hd + rw].copy_from_slice(&ckv[i * rw..(i + 1) * rw]);
                    row[hd + rw..hd + 2 * rw].copy_from_slice(&cg[i * rw..(i + 1) * rw]);
                }
                if irw > 0 {
                    let b = r.index_raw;
                    row[b..b + irw].copy_from_slice(&ikv[i * irw..(i + 1) * irw]);
                    row[b + irw..b + 2 * irw].copy_from_slice(&ig[i * irw..(i + 1) * irw]);
                }
            }
            // the entries of the windows these tokens close
            // the sequence's rows before this step, read once: by the entries that need earlier
            // tokens, then (with the new rows) by attention; the new rows go in after
            let chunks = kv.chunks(seg.seq, layer);
            let old: Vec<&[f32]> = chunks.iter().flat_map(|c| c.chunks_exact(width)).collect();
            let entries = {
                let row_at = |j: usize| -> &[f32] {
                    if j < p0 {
                        old[j]
                    } else {
                        &rows[(j - p0) * width..(j - p0 + 1) * width]
                    }
                };
                let mut entries: Vec<(usize, Vec<f32>, Option<Vec<f32>>)> = Vec::new();
                if let Some(c) = comp {
                    for t in 0..seg.len {
                        let p = p0 + t;
                        if (p + 1) % c.rate != 0 {
                            continue;
                        }
                        let w = (p + 1) / c.rate - 1;
                        let e = c.entry(
                            w,
                            |j| {
                                let row = row_at(j);
                                (&row[hd..hd + rw], &row[hd + rw..hd + 2 * rw])
                            },
                            &self.compress_rope,
                            dr,
                            self.eps,
                        );
                        let ie = self.indexer.as_ref().map(|ix| {
                            let b = r.index_raw;
                            ix.compressor.entry(
                                w,
                                |j| {
                                    let row = row_at(j);
                                    (&row[b..b + irw], &row[b + irw..b + 2 * irw])
                                },
                                &self.compress_rope,
                                dr,
                                self.eps,
                            )
                        });
                        entries.push((t, e, ie));
                    }
                }
                entries
            };
            for (t, e, ie) in entries {
                let row = &mut rows[t * width..(t + 1) * width];
                row[r.entry..r.entry + hd].copy_from_slice(&e);
                if let Some(ie) = ie {
                    row[r.index_entry..r.index_entry + ie.len()].copy_from_slice(&ie);
                }
            }
            // attention of each new token
            let all: Vec<&[f32]> = old
                .iter()
                .copied()
                .chain(rows.chunks_exact(width))
                .collect();
            let scale = (hd as f32).powf(-0.5);
            o[seg.start * h_n * hd..(seg.start + seg.len) * h_n * hd]
                .par_chunks_mut(h_n * hd)
                .enumerate()
                .for_each(|(t, ot)| {
                    let i = seg.start + t;
                    let p = p0 + t;
                    let mut seen: Vec<&[f32]> =
                        all[(p + 1).saturating_sub(self.window)..=p].to_vec();
                    if let Some(c) = comp {
                        let ready = (p + 1) / c.rate;
                        let entry = |w: usize| &all[(w + 1) * c.rate - 1][r.entry..r.entry + hd];
                        match (&self.indexer, &iq) {
                            (Some(ix), Some(iq)) if ready > ix.topk => {
                                let qi = &iq[i * ix.heads * ix.dim..(i + 1) * ix.heads * ix.dim];
                                let wi = &iw[i * ix.heads..(i + 1) * ix.heads];
                                let keys: Vec<&[f32]> = (0..ready)
                                    .map(|w| {
                                        &all[(w + 1) * c.rate - 1]
                                            [r.index_entry..r.index_entry + ix.dim]
                                    })
                                    .collect();
                                let scores =
                                    index_scores(qi, wi, &keys, ix.dim, (ix.dim as f32).powf(-0.5));
                                seen.extend(
                                    top_positions(&scores, ix.topk)
                                        .into_iter()
                                        .map(|w| entry(w as usize)),
                                );
                            }
                            _ => seen.extend((0..ready).map(entry)),
                        }
                    }
                    sink_heads(
                        scale,
                        &q[i * h_n * hd..(i + 1) * h_n * hd],
                        &seen,
                        &self.attn_sink,
                        ot,
                    );
                    for head in ot.chunks_exact_mut(hd) {
                        self.rope.apply_inverse(&mut head[hd - dr..], p);
                    }
                });
            kv.append(seg.seq, layer, &rows);
        }

        // grouped output projection: group g's heads through its band of wo_a, then wo_b
        let (g_n, ol) = (self.o_groups, self.o_lora);
        let gw = h_n * hd / g_n;
        let groups: Vec<f32> = (0..g_n)
            .flat_map(|g| {
                o.chunks_exact(h_n * hd)
                    .flat_map(move |t| &t[g * gw..(g + 1) * gw])
            })
            .copied()
            .collect();
        let cat = banded_products(&groups, n, &self.wo_a, ol);
        let mut out = vec![0f32; n * self.wo_b.rows];
        matmul(&cat, n, &self.wo_b, &mut out);
        out
    }
}

/// x / sqrt(mean(x^2) + eps) (V4's `q_b_norm`, per head).
fn unweighted_rms(x: &mut [f32], eps: f32) {
    let ms = dot(x, x) / x.len() as f32;
    let inv = 1.0 / (ms + eps).sqrt();
    x.iter_mut().for_each(|v| *v *= inv);
}
