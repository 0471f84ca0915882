//! The decoder (spec §3.5): embedding, pre-norm layers of attention + feed-forward, final norm,
//! head. DeepSeek V2/V3 layers are MLA + (dense MLP or MoE); the R1 distills' are grouped-query
//! attention + MLP. MTP modules stored after the main layers are loaded beside the main model
//! and never run as main layers.

use anyhow::{bail, Result};
use whale_kernels::matrix::matmul;
use whale_kernels::ops::rms_norm;
use whale_kernels::Matrix;

use crate::cache::{KvStore, LatentCache};
use crate::checkpoint::Checkpoint;
use crate::config::{ModelConfig, V4Attention};
use crate::csa::V4Attn;
use crate::gqa::Gqa;
use crate::hc::{HyperConnection, HyperHead};
use crate::mla::{AttentionForm, Mla, Segment};
use crate::moe::{Mlp, Moe};
use crate::rope::{softmax_scale, Rope};

// One per layer: the size difference of the variants does not matter.
#[allow(clippy::large_enum_variant)]
pub enum Ffn {
    Dense(Mlp),
    Moe(Moe),
}

impl Ffn {
    fn forward(&self, x: &[f32], n: usize, ids: &[u32]) -> Vec<f32> {
        match self {
            Ffn::Dense(m) => m.forward(x, n),
            Ffn::Moe(m) => m.forward(x, n, ids),
        }
    }
}

// One per layer, as `Ffn`.
#[allow(clippy::large_enum_variant)]
pub enum Attention {
    Mla(Mla),
    Gqa(Gqa),
    /// DeepSeek-V4's sliding / compressed attention
    V4(V4Attn),
}

impl Attention {
    pub fn matrices(&self) -> Vec<&Matrix> {
        match self {
            Attention::Mla(a) => a.matrices(),
            Attention::Gqa(a) => a.matrices(),
            Attention::V4(a) => a.matrices(),
        }
    }

    /// The output projection (every attention has one).
    pub fn o_proj(&self) -> &Matrix {
        match self {
            Attention::Mla(a) => &a.o_proj,
            Attention::Gqa(a) => &a.o_proj.weight,
            Attention::V4(a) => &a.wo_b,
        }
    }

    fn stored_bytes(&self, decode: bool) -> f64 {
        match self {
            Attention::Mla(a) => a.stored_bytes(decode),
            Attention::Gqa(a) => a.stored_bytes(),
            Attention::V4(a) => a.matrices().iter().map(|m| m.stored_bytes()).sum::<usize>() as f64,
        }
    }
}

pub struct DecoderLayer {
    pub input_layernorm: Vec<f32>,
    pub self_attn: Attention,
    pub post_attention_layernorm: Vec<f32>,
    pub mlp: Ffn,
    /// V4's hyper-connections around the attention and the feed-forward block
    pub hc: Option<[HyperConnection; 2]>,
}

impl DecoderLayer {
    fn load(ck: &Checkpoint, i: usize, moe: bool, scale: f32) -> Result<Self> {
        let cfg = &ck.config;
        let p = format!("model.layers.{i}.");
        let d = cfg.hidden_size;
        let mlp = match (&cfg.moe, moe) {
            (Some(m), true) => Ffn::Moe(Moe::load(ck, &format!("{p}mlp."), d, m)?),
            _ => Ffn::Dense(Mlp::load(
                ck,
                &format!("{p}mlp."),
                d,
                cfg.intermediate_size,
            )?),
        };
        Ok(DecoderLayer {
            input_layernorm: ck.vector(&format!("{p}input_layernorm.weight"), d)?,
            self_attn: match &cfg.gqa {
                None => Attention::Mla(Mla::load(ck, &format!("{p}self_attn."), cfg, scale)?),
                Some(g) => Attention::Gqa(Gqa::load(ck, &format!("{p}self_attn."), cfg, g)?),
            },
            post_attention_layernorm: ck
                .vector(&format!("{p}post_attention_layernorm.weight"), d)?,
            mlp,
            hc: None,
        })
    }

    /// A V4 decoder layer under the released names (`layers.{i}.attn.*`, `.ffn.*`, `.hc_*`).
    /// A V4 block under `p` (`layers.{i}.`, or an MTP module's `mtp.{k}.`).
    fn load_v4(ck: &Checkpoint, p: &str, kind: V4Attention, hash: bool) -> Result<Self> {
        let cfg = &ck.config;
        let v = cfg.v4.as_ref().expect("a V4 config");
        let d = cfg.hidden_size;
        let eps = cfg.rms_norm_eps;
        Ok(DecoderLayer {
            input_layernorm: ck.vector(&format!("{p}attn_norm.weight"), d)?,
            self_attn: Attention::V4(V4Attn::load(ck, &format!("{p}attn."), cfg, v, kind)?),
            post_attention_layernorm: ck.vector(&format!("{p}ffn_norm.weight"), d)?,
            mlp: Ffn::Moe(Moe::load_v4(
                ck,
                &format!("{p}ffn."),
                cfg,
                hash,
                v.swiglu_limit,
            )?),
            hc: Some([
                HyperConnection::load(ck, &format!("{p}hc_attn"), d, v, eps)?,
                HyperConnection::load(ck, &format!("{p}hc_ffn"), d, v, eps)?,
            ]),
        })
    }

    /// h <- h + MLA(norm(h)); h <- h + FFN(norm(h))
    #[allow(clippy::too_many_arguments)]
    /// `ids`: the batch's token ids (hash routing reads them). Under hyper-connections `h`
    /// holds every token's `hc_mult` streams.
    #[allow(clippy::too_many_arguments)]
    fn forward(
        &self,
        h: &mut [f32],
        ids: &[u32],
        segs: &[Segment],
        eps: f32,
        layer: usize,
        kv: &mut dyn KvStore,
        rope: &Rope,
        form: AttentionForm,
    ) {
        let d = self.input_layernorm.len();
        let n = ids.len();
        let attend = |x: &[f32], kv: &mut dyn KvStore| match &self.self_attn {
            Attention::Mla(m) => m.forward(x, segs, layer, kv, rope, form),
            Attention::Gqa(g) => g.forward(x, segs, layer, kv, rope),
            Attention::V4(a) => a.forward(x, segs, layer, kv),
        };
        if let Some([attn_hc, ffn_hc]) = &self.hc {
            let (c, mix) = attn_hc.collapse(h, n);
            let mut x = vec![0f32; n * d];
            rms_norm(&c, &self.input_layernorm, eps, &mut x);
            let a = attend(&x, kv);
            attn_hc.expand(h, &a, &mix);
            let (c, mix) = ffn_hc.collapse(h, n);
            rms_norm(&c, &self.post_attention_layernorm, eps, &mut x);
            let f = self.mlp.forward(&x, n, ids);
            ffn_hc.expand(h, &f, &mix);
            return;
        }
        let mut x = vec![0f32; h.len()];
        rms_norm(h, &self.input_layernorm, eps, &mut x);
        let a = attend(&x, kv);
        h.iter_mut().zip(&a).for_each(|(h, a)| *h += a);
        rms_norm(h, &self.post_attention_layernorm, eps, &mut x);
        let f = self.mlp.forward(&x, n, ids);
        h.iter_mut().zip(&f).for_each(|(h, f)| *h += f);
    }
}

/// One multi-token-prediction module (`model.layers.{num_hidden_layers + k}.*`; V4:
/// `mtp.{k}.*`).
pub struct MtpLayer {
    pub enorm: Vec<f32>,
    pub hnorm: Vec<f32>,
    pub proj: MtpProj,
    pub layer: DecoderLayer,
    pub shared_head_norm: Vec<f32>,
    /// `shared_head.head`; a copy of `lm_head` in released checkpoints, used when present
    pub shared_head: Option<Matrix>,
    /// V4: the module's own collapse of its output streams (`mtp.{k}.hc_head_*`)
    pub hc_head: Option<HyperHead>,
}

/// How an MTP module joins the embedding of the next token with the main model's state.
pub enum MtpProj {
    /// V3: eh_proj([enorm(embedding); hnorm(final-normed hidden)]) [hidden, 2 hidden]
    Concat(Matrix),
    /// V4: h_proj(hnorm(stream)) + e_proj(enorm(embedding)), for each of the main model's
    /// hyper-connection streams before its `hc_head`
    Split { e_proj: Matrix, h_proj: Matrix },
}

pub struct Model {
    pub config: ModelConfig,
    pub embed_tokens: Matrix,
    pub layers: Vec<DecoderLayer>,
    pub norm: Vec<f32>,
    pub lm_head: Matrix,
    pub mtp: Vec<MtpLayer>,
    /// V4's final collapse of the hyper-connection streams
    pub hc_head: Option<HyperHead>,
    rope: Rope,
}

/// Which positions' logits a forward pass returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Logits {
    All,
    Last,
}

impl Model {
    pub fn load(ck: &Checkpoint) -> Result<Self> {
        if ck.config.v4.is_some() {
            return Self::load_v4(ck);
        }
        let cfg = ck.config.clone();
        let (v, d) = (cfg.vocab_size, cfg.hidden_size);
        let scale = softmax_scale(&cfg);
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| DecoderLayer::load(ck, i, cfg.is_moe_layer(i), scale))
            .collect::<Result<Vec<_>>>()?;
        let lm_head = if cfg.tie_word_embeddings && !ck.has("lm_head.weight") {
            ck.matrix("model.embed_tokens.weight", v, d)?
        } else {
            ck.linear("lm_head.weight", v, d)?
        };
        let mut mtp = Vec::new();
        for k in 0..cfg.num_nextn_predict_layers {
            let i = cfg.num_hidden_layers + k;
            let p = format!("model.layers.{i}.");
            if !ck.has(&format!("{p}eh_proj.weight")) {
                // Many re-published checkpoints drop the MTP module; the main model does not need it.
                break;
            }
            let head_name = format!("{p}shared_head.head.weight");
            mtp.push(MtpLayer {
                enorm: ck.vector(&format!("{p}enorm.weight"), d)?,
                hnorm: ck.vector(&format!("{p}hnorm.weight"), d)?,
                proj: MtpProj::Concat(ck.linear(&format!("{p}eh_proj.weight"), d, 2 * d)?),
                layer: DecoderLayer::load(ck, i, cfg.moe.is_some(), scale)?,
                shared_head_norm: ck.vector(&format!("{p}shared_head.norm.weight"), d)?,
                shared_head: if ck.has(&head_name) {
                    Some(ck.linear(&head_name, v, d)?)
                } else {
                    None
                },
                hc_head: None,
            });
        }
        Ok(Model {
            embed_tokens: ck.matrix("model.embed_tokens.weight", v, d)?,
            layers,
            norm: ck.vector("model.norm.weight", d)?,
            lm_head,
            mtp,
            hc_head: None,
            rope: Rope::new(&cfg),
            config: cfg,
        })
    }

    /// DeepSeek-V4 under the released names (`embed.weight`, `layers.*`, `norm.weight`,
    /// `head.weight`, `hc_head_*`, MTP modules `mtp.{k}.*`).
    fn load_v4(ck: &Checkpoint) -> Result<Self> {
        let cfg = ck.config.clone();
        let v4 = cfg.v4.as_ref().expect("a V4 config");
        let (v, d) = (cfg.vocab_size, cfg.hidden_size);
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| {
                let p = format!("layers.{i}.");
                DecoderLayer::load_v4(ck, &p, v4.layer_types[i], v4.hash_layers[i])
            })
            .collect::<Result<Vec<_>>>()?;
        let mut mtp = Vec::new();
        for k in 0..cfg.num_nextn_predict_layers {
            let p = format!("mtp.{k}.");
            if !ck.has(&format!("{p}e_proj.weight")) {
                break; // a checkpoint without its MTP modules
            }
            let head_name = format!("{p}head.weight");
            mtp.push(MtpLayer {
                enorm: ck.vector(&format!("{p}enorm.weight"), d)?,
                hnorm: ck.vector(&format!("{p}hnorm.weight"), d)?,
                proj: MtpProj::Split {
                    e_proj: ck.linear(&format!("{p}e_proj.weight"), d, d)?,
                    h_proj: ck.linear(&format!("{p}h_proj.weight"), d, d)?,
                },
                // the module is routed by score, not by hash
                layer: DecoderLayer::load_v4(ck, &p, v4.mtp_layer_type(k), false)?,
                shared_head_norm: ck.vector(&format!("{p}norm.weight"), d)?,
                shared_head: if ck.has(&head_name) {
                    Some(ck.linear(&head_name, v, d)?)
                } else {
                    None
                },
                hc_head: Some(HyperHead::load(ck, &p, d, v4, cfg.rms_norm_eps)?),
            });
        }
        Ok(Model {
            embed_tokens: ck.matrix("embed.weight", v, d)?,
            layers,
            norm: ck.vector("norm.weight", d)?,
            lm_head: ck.linear("head.weight", v, d)?,
            mtp,
            hc_head: Some(HyperHead::load(ck, "", d, v4, cfg.rms_norm_eps)?),
            rope: Rope::new(&cfg),
            config: cfg,
        })
    }

    pub fn new_cache(&self, capacity: usize) -> LatentCache {
        LatentCache::new(&self.config, capacity)
    }

    /// Checks one sequence's step before it runs: every failure here is the caller's input,
    /// not a bug.
    fn check_tokens(&self, tokens: &[u32], past: usize) -> Result<()> {
        let cfg = &self.config;
        if tokens.is_empty() {
            bail!("no tokens to process");
        }
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= cfg.vocab_size) {
            bail!(
                "token id {bad} is outside the vocabulary (vocab_size {})",
                cfg.vocab_size
            );
        }
        let total = past + tokens.len();
        if total > cfg.max_position_embeddings {
            bail!(
                "sequence of {total} tokens is longer than max_position_embeddings ({})",
                cfg.max_position_embeddings
            );
        }
        Ok(())
    }

    /// One step for a batch: `tokens[i]` are the new tokens of sequence `i` of `kv`, at
    /// positions `kv.seq_len(i)..`. Every sequence's tokens go through each weight matrix in one
    /// product (weights are read once per step); attention reads each sequence's own rows.
    /// Returns the final hidden states [all tokens, hidden] before the final norm, sequence by
    /// sequence.
    pub fn forward_batch(
        &self,
        tokens: &[&[u32]],
        kv: &mut dyn KvStore,
        form: AttentionForm,
    ) -> Result<Vec<f32>> {
        if kv.shape() != (self.config.cache_width(), self.layers.len()) {
            bail!("the cache was made for a different model");
        }
        let mut segs = Vec::with_capacity(tokens.len());
        let mut start = 0;
        for (seq, t) in tokens.iter().enumerate() {
            self.check_tokens(t, kv.seq_len(seq))?;
            segs.push(Segment {
                seq,
                start,
                len: t.len(),
            });
            start += t.len();
        }
        let d = self.config.hidden_size;
        // V4: every hyper-connection stream starts as the embedding
        let streams = self.config.v4.as_ref().map_or(1, |v| v.hc_mult);
        let ids: Vec<u32> = tokens.iter().flat_map(|t| t.iter().copied()).collect();
        let mut h = vec![0f32; start * streams * d];
        let mut buf = vec![0f32; d];
        for (i, &id) in ids.iter().enumerate() {
            let e = self.embed_tokens.row(id as usize, &mut buf);
            for s in 0..streams {
                h[(i * streams + s) * d..(i * streams + s + 1) * d].copy_from_slice(e);
            }
        }
        let eps = self.config.rms_norm_eps as f32;
        for (l, layer) in self.layers.iter().enumerate() {
            layer.forward(&mut h, &ids, &segs, eps, l, kv, &self.rope, form);
        }
        for s in &segs {
            kv.commit(s.seq, s.len);
        }
        Ok(h)
    }

    /// Values per token of the hidden rows `forward_batch` returns: the hidden size, or V4's
    /// `hc_mult` streams of it (the state before `hc_head`, which MTP reads).
    pub fn hidden_width(&self) -> usize {
        self.config.hidden_size * self.config.v4.as_ref().map_or(1, |v| v.hc_mult)
    }

    /// Runs `tokens` (positions `cache.len()..`) through the model, appending to the cache.
    /// Returns the final hidden states [n, hidden_width] before the final norm.
    pub fn forward_hidden(
        &self,
        tokens: &[u32],
        cache: &mut LatentCache,
        form: AttentionForm,
    ) -> Result<Vec<f32>> {
        self.forward_batch(&[tokens], cache, form)
    }

    /// Logits [rows, vocab] for hidden states [rows, hidden_width].
    pub fn logits(&self, hidden: &[f32]) -> Vec<f32> {
        let n = hidden.len() / self.hidden_width();
        if n == 0 {
            return Vec::new();
        }
        let collapsed;
        let hidden = match &self.hc_head {
            Some(head) => {
                collapsed = head.collapse(hidden, n);
                &collapsed
            }
            None => hidden,
        };
        let mut x = vec![0f32; hidden.len()];
        rms_norm(hidden, &self.norm, self.config.rms_norm_eps as f32, &mut x);
        let mut out = vec![0f32; n * self.config.vocab_size];
        matmul(&x, n, &self.lm_head, &mut out);
        out
    }

    /// The MTP module's own latent cache (one layer), when the checkpoint has one.
    pub fn new_mtp_cache(&self, capacity: usize) -> Option<LatentCache> {
        (!self.mtp.is_empty()).then(|| LatentCache::with_layers(&self.config, 1, capacity))
    }

    /// Multi-token prediction with the first MTP module (spec §4.3): row i combines the main
    /// model's state at some position p_i with the embedding of the token at p_i + 1, runs the
    /// module's decoder layer at MTP positions `cache.len()..`, and returns logits [n, vocab] for
    /// the token at p_i + 2. `hidden` holds rows as `forward_batch` returns them. V3 joins
    /// eh_proj([enorm(embedding); hnorm(final-normed hidden)]); V4 adds e_proj(enorm(embedding))
    /// to h_proj(hnorm(stream)) for each hyper-connection stream, and collapses the module's
    /// output streams with its own `hc_head` before its norm and the head.
    pub fn mtp_logits(
        &self,
        hidden: &[f32],
        next_tokens: &[u32],
        cache: &mut LatentCache,
    ) -> Result<Vec<f32>> {
        let Some(m) = self.mtp.first() else {
            bail!("this checkpoint has no MTP module (num_nextn_predict_layers is 0 or its tensors are absent)");
        };
        let (d, w) = (self.config.hidden_size, self.hidden_width());
        let n = next_tokens.len();
        if hidden.len() != n * w {
            bail!(
                "mtp_logits: {} hidden rows for {n} tokens",
                hidden.len() / w
            );
        }
        self.check_tokens(next_tokens, cache.len())?;
        let eps = self.config.rms_norm_eps as f32;
        let mut e = vec![0f32; n * d];
        let mut buf = vec![0f32; d];
        for (i, &t) in next_tokens.iter().enumerate() {
            let row = self.embed_tokens.row(t as usize, &mut buf);
            rms_norm(row, &m.enorm, eps, &mut e[i * d..(i + 1) * d]);
        }
        let mut h = match &m.proj {
            MtpProj::Concat(eh_proj) => {
                let mut normed = vec![0f32; n * d];
                rms_norm(hidden, &self.norm, eps, &mut normed);
                let mut x = vec![0f32; n * 2 * d];
                for i in 0..n {
                    x[i * 2 * d..i * 2 * d + d].copy_from_slice(&e[i * d..(i + 1) * d]);
                    rms_norm(
                        &normed[i * d..(i + 1) * d],
                        &m.hnorm,
                        eps,
                        &mut x[i * 2 * d + d..(i + 1) * 2 * d],
                    );
                }
                let mut h = vec![0f32; n * d];
                matmul(&x, n, eh_proj, &mut h);
                h
            }
            MtpProj::Split { e_proj, h_proj } => {
                let streams = w / d;
                let mut normed = vec![0f32; n * w];
                rms_norm(hidden, &m.hnorm, eps, &mut normed);
                let mut h = vec![0f32; n * w];
                matmul(&normed, n * streams, h_proj, &mut h);
                let mut pe = vec![0f32; n * d];
                matmul(&e, n, e_proj, &mut pe);
                for (row, p) in h.chunks_exact_mut(w).zip(pe.chunks_exact(d)) {
                    for s in row.chunks_exact_mut(d) {
                        s.iter_mut().zip(p).for_each(|(a, b)| *a += b);
                    }
                }
                h
            }
        };
        let seg = [Segment {
            seq: 0,
            start: 0,
            len: n,
        }];
        m.layer.forward(
            &mut h,
            next_tokens,
            &seg,
            eps,
            0,
            cache,
            &self.rope,
            AttentionForm::Absorbed,
        );
        cache.commit(n);
        if let Some(head) = &m.hc_head {
            h = head.collapse(&h, n);
        }
        let mut y = vec![0f32; n * d];
        rms_norm(&h, &m.shared_head_norm, eps, &mut y);
        let head = m.shared_head.as_ref().unwrap_or(&self.lm_head);
        let mut out = vec![0f32; n * self.config.vocab_size];
        matmul(&y, n, head, &mut out);
        Ok(out)
    }

    /// Forward pass returning logits of every position ([n, vocab]) or of the last one ([vocab]).
    pub fn forward(
        &self,
        tokens: &[u32],
        cache: &mut LatentCache,
        form: AttentionForm,
        which: Logits,
    ) -> Result<Vec<f32>> {
        let h = self.forward_hidden(tokens, cache, form)?;
        let d = self.hidden_width();
        Ok(match which {
            Logits::All => self.logits(&h),
            Logits::Last => self.logits(&h[h.len() - d..]),
        })
    }

    /// Weight bytes one decoded token reads: attention, dense and shared FFNs, routers, the
    /// top-K share of the routed experts, the head, and one embedding row (the decode
    /// roofline's numerator).
    pub fn active_weight_bytes_per_token(&self) -> usize {
        self.weight_bytes_per_step(1)
    }

    /// Expected weight bytes one decode step of `batch` sequences reads: every weight outside the
    /// routed experts once, each routed expert if any of the batch's tokens picks it (uniform
    /// routing: probability 1 - (1 - K/E)^batch), and one embedding row per token.
    pub fn weight_bytes_per_step(&self, batch: usize) -> usize {
        let embed_row = self.embed_tokens.stored_bytes() / self.embed_tokens.rows;
        let layers: f64 = self
            .layers
            .iter()
            .map(|l| l.stored_bytes(Some(batch)))
            .sum();
        self.lm_head.stored_bytes() + batch * embed_row + layers as usize
    }

    /// The stored bytes of the matrices a decode step reads whole (all but the embedding, of
    /// which it reads a row; scales aside), largest first: memory a bandwidth probe can read in
    /// place of a buffer of its own (see `whale bench`), and at the cost the weights are read at
    /// (the embedding may sit in the file's pages while the rest is copied to huge pages).
    pub fn weight_regions(&self) -> Vec<&[u8]> {
        let mut all: Vec<&[u8]> = std::iter::once(&self.lm_head)
            .chain(self.layers.iter().flat_map(|l| l.matrices()))
            .map(|m| m.data_bytes())
            .collect();
        all.sort_by_key(|b| std::cmp::Reverse(b.len()));
        all
    }

    /// Bytes of every weight loaded (layers, embedding, head, and the MTP modules the
    /// checkpoint has, which stay resident for `--speculative mtp`), as stored.
    pub fn weight_bytes(&self) -> usize {
        let layers: f64 = self.layers.iter().map(|l| l.stored_bytes(None)).sum();
        let mtp: f64 = self
            .mtp
            .iter()
            .map(|m| {
                let head = m.shared_head.as_ref().map_or(0, |h| h.stored_bytes());
                let proj = match &m.proj {
                    MtpProj::Concat(eh) => eh.stored_bytes(),
                    MtpProj::Split { e_proj, h_proj } => {
                        e_proj.stored_bytes() + h_proj.stored_bytes()
                    }
                };
                m.layer.stored_bytes(None) + (proj + head) as f64
            })
            .sum();
        self.embed_tokens.stored_bytes() + self.lm_head.stored_bytes() + (layers + mtp) as usize
    }
}

impl DecoderLayer {
    fn matrices(&self) -> Vec<&Matrix> {
        let mut all = self.self_attn.matrices();
        match &self.mlp {
            Ffn::Dense(m) => all.extend(m.matrices()),
            Ffn::Moe(m) => {
                all.push(&m.gate);
                for e in m.shared_experts.iter().chain(&m.experts) {
                    all.extend(e.matrices());
                }
            }
        }
        all
    }

    /// Stored bytes of this layer's matrices; with `Some(batch)`, routed experts count by the
    /// chance that one of `batch` uniformly routed tokens picks them.
    fn stored_bytes(&self, batch: Option<usize>) -> f64 {
        let sum = |ms: &[&Matrix]| ms.iter().map(|m| m.stored_bytes()).sum::<usize>() as f64;
        let ffn = match &self.mlp {
            Ffn::Dense(m) => sum(&m.matrices()),
            Ffn::Moe(m) => {
                let shared: f64 = m.shared_experts.iter().map(|e| sum(&e.matrices())).sum();
                let routed: f64 = m.experts.iter().map(|e| sum(&e.matrices())).sum();
                let share = match batch {
                    None => 1.0,
                    Some(b) => {
                        1.0 - (1.0 - m.cfg.num_experts_per_tok as f64 / m.experts.len() as f64)
                            .powi(b as i32)
                    }
                };
                shared + routed * share + m.gate.stored_bytes() as f64
            }
        };
        self.self_attn.stored_bytes(batch.is_some()) + ffn
    }
}
