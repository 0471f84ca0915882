//! Parameter and cache accounting from a config alone (spec §1.2, §2.6): what `whale inspect`
//! prints and what the cost model builds on.

use crate::config::ModelConfig;

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ParamCount {
    pub embedding: u64,
    pub lm_head: u64,
    /// attention of all main layers, with its norms (and V3.2's indexer)
    pub attention: u64,
    /// of `attention`: V3.2's lightning indexers (V4: CSA's indexers)
    pub indexer: u64,
    /// of `attention`: V4's compressors (CSA and HCA, not counting CSA's indexers)
    pub compressor: u64,
    /// V4's hyper-connections (every layer's two and the final head)
    pub hyper_connections: u64,
    /// dense FFN layers
    pub dense_ffn: u64,
    /// routers (gate weight and bias)
    pub router: u64,
    pub shared_experts: u64,
    /// all routed experts of all MoE layers
    pub routed_experts: u64,
    /// routed expert parameters that one token activates (top-K of every MoE layer)
    pub routed_active: u64,
    /// decoder layer norms and the final norm
    pub norms: u64,
    /// MTP modules stored after the main layers (not part of the main model)
    pub mtp: u64,
}

impl ParamCount {
    pub fn total(&self) -> u64 {
        self.embedding
            + self.lm_head
            + self.attention
            + self.dense_ffn
            + self.router
            + self.shared_experts
            + self.routed_experts
            + self.norms
            + self.hyper_connections
    }

    /// Parameters activated per token, counting the embedding and head whole (the convention of
    /// the V3 report's 37B).
    pub fn active(&self) -> u64 {
        self.total() - self.routed_experts + self.routed_active
    }
}

pub fn attention_params(c: &ModelConfig) -> u64 {
    let (d, h) = (c.hidden_size as u64, c.num_attention_heads as u64);
    if let Some(v) = &c.v4 {
        return v4_attention_core(c, v);
    }
    if let Some(g) = &c.gqa {
        let (q, kv) = (
            h * g.head_dim as u64,
            (g.num_key_value_heads * g.head_dim) as u64,
        );
        let bias = if g.qkv_bias { q + 2 * kv } else { 0 } + if g.o_bias { d } else { 0 };
        let norms = if g.qk_norm { 2 * g.head_dim as u64 } else { 0 };
        return d * (q + 2 * kv) + q * d + bias + norms;
    }
    let dqk = c.qk_head_dim() as u64;
    let (dc, dr, dv, nope) = (
        c.kv_lora_rank as u64,
        c.qk_rope_head_dim as u64,
        c.v_head_dim as u64,
        c.qk_nope_head_dim as u64,
    );
    let q = match c.q_lora_rank {
        Some(r) => d * r as u64 + r as u64 + r as u64 * h * dqk,
        None => d * h * dqk,
    };
    q + d * (dc + dr) + dc + dc * h * (nope + dv) + h * dv * d + indexer_params(c)
}

/// V4 attention of one layer without its compressor: wq_a, q_norm, wq_b, wkv, kv_norm, the
/// grouped wo_a, wo_b, the sinks.
fn v4_attention_core(c: &ModelConfig, v: &crate::config::V4Config) -> u64 {
    let (d, h, hd) = (
        c.hidden_size as u64,
        c.num_attention_heads as u64,
        v.head_dim as u64,
    );
    let q = c.q_lora_rank.unwrap_or(0) as u64;
    let (g, ol) = (v.o_groups as u64, v.o_lora_rank as u64);
    d * q + q + q * h * hd + d * hd + hd + g * ol * (h * hd / g) + d * g * ol + h
}

/// A V4 compressor over `dim` with `raw` projected values per token: wkv, wgate, ape, norm.
fn compressor_params(d: u64, dim: u64, raw: u64, rate: u64) -> u64 {
    2 * d * raw + rate * raw + dim
}

/// V4 layer `i`'s compressor and indexer parameters.
fn v4_compression(c: &ModelConfig, v: &crate::config::V4Config, i: usize) -> (u64, u64) {
    use crate::config::V4Attention;
    let (d, hd) = (c.hidden_size as u64, v.head_dim as u64);
    let kind = v.layer_types[i];
    let rate = v.compress_rate(kind) as u64;
    match kind {
        V4Attention::Sliding => (0, 0),
        V4Attention::Hca => (compressor_params(d, hd, hd, rate), 0),
        V4Attention::Csa => {
            let (n, di) = (v.index_n_heads as u64, v.index_head_dim as u64);
            let q = c.q_lora_rank.unwrap_or(0) as u64;
            (
                compressor_params(d, hd, 2 * hd, rate),
                compressor_params(d, di, 2 * di, rate) + q * n * di + d * n,
            )
        }
    }
}

/// V3.2's lightning indexer of one layer: wq_b, wk, k_norm (weight and bias), weights_proj.
pub fn indexer_params(c: &ModelConfig) -> u64 {
    let (Some(ix), Some(r)) = (&c.indexer, c.q_lora_rank) else {
        return 0;
    };
    let (n, di, d) = (
        ix.index_n_heads as u64,
        ix.index_head_dim as u64,
        c.hidden_size as u64,
    );
    n * di * r as u64 + di * d + 2 * di + n * d
}

fn mlp(d: u64, inter: u64) -> u64 {
    3 * d * inter
}

pub fn count(c: &ModelConfig) -> ParamCount {
    let d = c.hidden_size as u64;
    let v = c.vocab_size as u64;
    let layers = c.num_hidden_layers;
    let mut p = ParamCount {
        embedding: v * d,
        lm_head: if c.tie_word_embeddings { 0 } else { v * d },
        attention: attention_params(c) * layers as u64,
        indexer: indexer_params(c) * layers as u64,
        compressor: 0,
        hyper_connections: 0,
        dense_ffn: 0,
        router: 0,
        shared_experts: 0,
        routed_experts: 0,
        routed_active: 0,
        norms: (2 * layers as u64 + 1) * d,
        mtp: 0,
    };
    let moe_layer = |p: &mut ParamCount, m: &crate::config::MoeConfig| {
        let im = m.moe_intermediate_size as u64;
        let e = m.n_routed_experts as u64;
        let bias = if m.topk_method == crate::config::TopkMethod::NoauxTc {
            e
        } else {
            0
        };
        p.router += e * d + bias;
        p.shared_experts += mlp(d, m.n_shared_experts as u64 * im);
        p.routed_experts += e * mlp(d, im);
        p.routed_active += m.num_experts_per_tok as u64 * mlp(d, im);
    };
    if let (Some(v), Some(m)) = (&c.v4, &c.moe) {
        // every layer MoE (hash-routed ones without the router bias), two hyper-connections
        // per layer and one at the head; MTP modules are not counted (not run)
        let hc = v.hc_mult as u64;
        let mix = (2 + hc) * hc;
        for i in 0..layers {
            let (comp, ix) = v4_compression(c, v, i);
            p.compressor += comp;
            p.indexer += ix;
            p.attention += comp + ix;
            moe_layer(&mut p, m);
            if v.hash_layers[i] {
                p.router -= m.n_routed_experts as u64;
            }
            p.hyper_connections += 2 * (mix * hc * d + mix + 3);
        }
        p.hyper_connections += hc * hc * d + hc + 1;
        return p;
    }
    for i in 0..layers {
        match &c.moe {
            Some(m) if c.is_moe_layer(i) => moe_layer(&mut p, m),
            _ => p.dense_ffn += mlp(d, c.intermediate_size as u64),
        }
    }
    // MTP module: embedding copy, enorm, hnorm, eh_proj, a full MoE decoder layer, head norm, head copy.
    if c.num_nextn_predict_layers > 0 {
        let mut one = ParamCount {
            mtp: 0,
            ..p.clone()
        };
        one.router = 0;
        one.shared_experts = 0;
        one.routed_experts = 0;
        if let Some(m) = &c.moe {
            moe_layer(&mut one, m);
        }
        let layer =
            attention_params(c) + 2 * d + one.router + one.shared_experts + one.routed_experts;
        p.mtp = c.num_nextn_predict_layers as u64 * (2 * v * d + 3 * d + 2 * d * d + layer);
    }
    p
}

/// Values MLA caches per token per layer in V3 / R1 (kv_lora_rank 512 + qk_rope_head_dim 64):
/// the yardstick a GQA model's cache is set against.
pub const V3_LATENT_WIDTH: u64 = 512 + 64;

/// KV-cache bytes per token (all layers) for an element size of `bytes` bytes.
#[derive(Clone, Debug, PartialEq)]
pub struct KvBytes {
    /// what this model caches: MLA's latent and rope key, or GQA's keys and values
    pub cached: u64,
    /// MLA: its latent and rope key (= `cached` but for V3.2's indexer keys); for a GQA model, an MLA cache of V3's width over its layers
    pub mla: u64,
    /// standard multi-head attention with the same heads: H * (qk_head_dim + v_head_dim) per layer
    pub mha: u64,
    /// grouped-query attention with 8 KV heads of the same dims
    pub gqa8: u64,
}

/// What DeepSeek-V4 keeps per sequence, by layer kind, in elements of `bytes` bytes: per token of
/// context (the compressed entries, and CSA's indexer keys), and a fixed part (the sliding
/// window's keys, the raw inputs of the block being compressed and the overlap state).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct V4Cache {
    /// (layer kind, layers of that kind, bytes per token of context, fixed bytes per sequence)
    pub kinds: Vec<(&'static str, u64, f64, u64)>,
}

impl V4Cache {
    /// Bytes one sequence of `ctx` tokens holds.
    pub fn per_sequence(&self, ctx: u64) -> f64 {
        self.kinds
            .iter()
            .map(|&(_, l, per, fixed)| l as f64 * (per * ctx as f64 + fixed as f64))
            .sum()
    }

    /// Bytes per token of context past the fixed part (all layers).
    pub fn per_token(&self) -> f64 {
        self.kinds
            .iter()
            .map(|&(_, l, per, _)| l as f64 * per)
            .sum()
    }
}

pub fn v4_cache(c: &ModelConfig, bytes: u64) -> Option<V4Cache> {
    use crate::config::V4Attention;
    let v = c.v4.as_ref()?;
    let (hd, di, win) = (
        v.head_dim as u64,
        v.index_head_dim as u64,
        v.sliding_window as u64,
    );
    let kinds = [V4Attention::Sliding, V4Attention::Csa, V4Attention::Hca]
        .into_iter()
        .filter_map(|k| {
            let layers = v.layer_types.iter().filter(|&&x| x == k).count() as u64;
            (layers > 0).then(|| {
                let m = v.compress_rate(k) as u64;
                let window = win * hd;
                let (per, state) = match k {
                    V4Attention::Sliding => (0.0, 0),
                    // an entry of hd and an indexer key of di per m tokens; the open block's raw
                    // kv and gate (2 x 2hd, 2 x 2di per token) and the previous block's halves
                    V4Attention::Csa => (
                        (hd + di) as f64 / m as f64,
                        (m - 1) * 2 * (2 * hd + 2 * di) + m * 2 * (hd + di),
                    ),
                    V4Attention::Hca => (hd as f64 / m as f64, (m - 1) * 2 * hd),
                };
                (
                    k.as_str(),
                    layers,
                    per * bytes as f64,
                    (window + state) * bytes,
                )
            })
        })
        .collect();
    Some(V4Cache { kinds })
}

pub fn kv_bytes_per_token(c: &ModelConfig, bytes: u64) -> KvBytes {
    let l = c.num_hidden_layers as u64;
    if let Some(v) = &c.v4 {
        // per token of context past the fixed window and block state; an MHA baseline of the
        // same heads keeps a key and a value of head_dim per head
        let cached = v4_cache(c, bytes).map_or(0.0, |k| k.per_token()).round() as u64;
        let per_head = 2 * v.head_dim as u64;
        return KvBytes {
            cached,
            mla: l * V3_LATENT_WIDTH * bytes,
            mha: l * c.num_attention_heads as u64 * per_head * bytes,
            gqa8: l * 8 * per_head * bytes,
        };
    }
    let cached = l * c.cache_width() as u64 * bytes;
    let (per_head, mla) = match &c.gqa {
        None => (
            (c.qk_head_dim() + c.v_head_dim) as u64,
            l * c.mla_width() as u64 * bytes,
        ),
        Some(g) => (2 * g.head_dim as u64, l * V3_LATENT_WIDTH * bytes),
    };
    KvBytes {
        cached,
        mla,
        mha: l * c.num_attention_heads as u64 * per_head * bytes,
        gqa8: l * 8 * per_head * bytes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::Preset;

    #[test]
    fn deepseek_v3_counts_match_the_report() {
        let c = Preset::V3.config();
        let p = count(&c);
        let total = p.total() as f64 / 1e9;
        assert!((total - 671.0).abs() / 671.0 < 0.01, "total {total}B");
        let active = p.active() as f64 / 1e9;
        assert!((active - 37.5).abs() < 1.0, "active {active}B");
        let mtp = p.mtp as f64 / 1e9;
        assert!((mtp - 14.0).abs() < 1.0, "MTP on disk {mtp}B (685B - 671B)");
        let kv = kv_bytes_per_token(&c, 2);
        assert_eq!(kv.mla, 70_272);
        assert_eq!(kv.mha, 4_997_120);
        assert_eq!((kv.mha as f64 / kv.mla as f64 * 10.0).round(), 711.0);
    }

    /// V3.2 is V3 plus one indexer per layer (64 heads of 128 over the 1536 query latent, a
    /// 128-wide key from the hidden state, 64 head weights): 61 x 13.96M = 0.85B more, and 128
    /// more cached values per token per layer.
    #[test]
    fn deepseek_v32_adds_the_indexer_to_v3() {
        let (v3, v32) = (count(&Preset::V3.config()), count(&Preset::V32.config()));
        let one = 64 * 128 * 1536 + 128 * 7168 + 2 * 128 + 64 * 7168;
        assert_eq!(one, 13_959_424);
        assert_eq!(v32.indexer, 61 * one);
        assert_eq!(v32.total() - v3.total(), 61 * one);
        assert_eq!(v32.active() - v3.active(), 61 * one);
        assert_eq!(v32.mtp - v3.mtp, one);
        let kv = kv_bytes_per_token(&Preset::V32.config(), 2);
        assert_eq!(kv.cached, 61 * (512 + 64 + 128) * 2);
    }

    /// V4-Flash by hand (the README's count): 43 layers = 2 sliding + 21 CSA + 20 HCA, every
    /// layer MoE (3 hash-routed, without the router bias), two hyper-connections per layer.
    /// DeepSeek states 284B total / 13B activated (the activated count without the input
    /// embedding); V4-Pro 1.6T / 49B.
    #[test]
    fn deepseek_v4_counts_match_a_hand_count_and_the_model_cards() {
        let c = Preset::V4Flash.config();
        let p = count(&c);
        let (d, v) = (4096u64, 129280u64);
        let core =
            d * 1024 + 1024 + 1024 * 64 * 512 + d * 512 + 512 + 8 * 1024 * 4096 + d * 8 * 1024 + 64;
        let csa = 2 * d * 1024 + 4 * 1024 + 512;
        let index = 2 * d * 256 + 4 * 256 + 128 + 1024 * 64 * 128 + d * 64;
        let hca = 2 * d * 512 + 128 * 512 + 512;
        assert_eq!(p.attention, 43 * core + 21 * (csa + index) + 20 * hca);
        assert_eq!(p.indexer, 21 * index);
        assert_eq!(p.compressor, 21 * csa + 20 * hca);
        let expert = 3 * d * 2048;
        assert_eq!(p.routed_experts, 43 * 256 * expert);
        assert_eq!(p.routed_active, 43 * 6 * expert);
        assert_eq!(p.shared_experts, 43 * expert);
        assert_eq!(p.router, 43 * 256 * d + 40 * 256);
        assert_eq!(
            p.hyper_connections,
            43 * 2 * (24 * 4 * d + 24 + 3) + 16 * d + 4 + 1
        );
        assert_eq!(p.norms, (2 * 43 + 1) * d);
        assert_eq!(p.embedding + p.lm_head, 2 * v * d);
        let b = |x: u64| x as f64 / 1e9;
        assert!((b(p.total()) - 284.0).abs() < 1.0, "{}", b(p.total()));
        assert!((b(p.active() - p.embedding) - 13.3).abs() < 0.1);
        let pro = count(&Preset::V4Pro.config());
        assert!((b(pro.total()) - 1573.0).abs() < 1.0, "{}", b(pro.total()));
        assert!((b(pro.active() - pro.embedding) - 48.9).abs() < 0.1);
        // the cache: per token 21 CSA layers x (512 + 128) / 4 and 20 HCA x 512 / 128 values
        let k = v4_cache(&c, 2).unwrap();
        assert_eq!(k.per_token(), (21.0 * 640.0 / 4.0 + 20.0 * 4.0) * 2.0);
    }

    #[test]
    fn deepseek_v2_lite_counts_match_the_report() {
        let c = Preset::V2Lite.config();
        let p = count(&c);
        let total = p.total() as f64 / 1e9;
        assert!((total - 15.7).abs() / 15.7 < 0.01, "total {total}B");
        let active_no_embed = (p.active() - p.embedding) as f64 / 1e9;
        // the report's 2.4B excludes the input embedding (spec §1.2: 2.45B)
        assert!(
            (active_no_embed - 2.45).abs() < 0.1,
            "active {active_no_embed}B"
        );
        assert_eq!(kv_bytes_per_token(&c, 2).mla, 31_104);
    }

    /// The distills' released shapes: parameter counts as their model cards give them, and the
    /// KV cache GQA keeps next to MLA's.
    #[test]
    fn distill_counts_match_their_model_cards() {
        for (preset, billions, kv_heads_bytes) in [
            (Preset::DistillQwen1_5B, 1.78, 28 * 2 * 2 * 128 * 2),
            (Preset::DistillQwen7B, 7.62, 28 * 2 * 4 * 128 * 2),
            (Preset::DistillLlama8B, 8.03, 32 * 2 * 8 * 128 * 2),
            (Preset::Qwen3_8B0528, 8.19, 36 * 2 * 8 * 128 * 2),
        ] {
            let c = preset.config();
            let total = count(&c).total() as f64 / 1e9;
            assert!(
                (total - billions).abs() / billions < 0.01,
                "{preset:?}: {total}B"
            );
            let kv = kv_bytes_per_token(&c, 2);
            assert_eq!(kv.cached, kv_heads_bytes, "{preset:?}");
            assert_eq!(kv.mla, c.num_hidden_layers as u64 * 576 * 2);
        }
    }
}
