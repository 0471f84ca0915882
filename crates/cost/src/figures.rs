//! What one token costs a model, from its config alone: parameters it activates, FLOPs of its
//! products and of attention at a given context, bytes of weights a step reads, KV bytes it keeps.

use crate::Dtype;
use whale_model::params::{self, KvBytes, ParamCount};
use whale_model::ModelConfig;

#[derive(Clone, Debug)]
pub struct Figures {
    pub config: ModelConfig,
    pub params: ParamCount,
}

impl Figures {
    pub fn new(config: ModelConfig) -> Self {
        let params = params::count(&config);
        Figures { config, params }
    }

    /// Parameters that multiply every token's activations: everything but the embedding table
    /// (a lookup) and the routed experts not chosen; the head counts even when tied.
    pub fn active_matmul_params(&self) -> u64 {
        let p = &self.params;
        let head = if self.config.tie_word_embeddings {
            p.embedding
        } else {
            0
        };
        p.active() - p.embedding + head
    }

    /// Multiply-adds of the weight products, as FLOPs, per token.
    pub fn linear_flops(&self) -> f64 {
        2.0 * self.active_matmul_params() as f64
    }

    fn attn_dims(&self) -> (f64, f64, f64, f64, f64, f64) {
        let c = &self.config;
        (
            c.num_hidden_layers as f64,
            c.num_attention_heads as f64,
            c.kv_lora_rank as f64,
            c.qk_rope_head_dim as f64,
            c.qk_nope_head_dim as f64,
            c.v_head_dim as f64,
        )
    }

    /// Grouped-query attention has one form: every head scores `ctx` keys and sums as many
    /// values, `head_dim` wide each (None under MLA).
    fn gqa_attn_flops(&self, ctx: f64) -> Option<f64> {
        let c = &self.config;
        let g = c.gqa.as_ref()?;
        let (l, h) = (c.num_hidden_layers as f64, c.num_attention_heads as f64);
        Some(l * 2.0 * h * ctx * 2.0 * g.head_dim as f64)
    }

    /// DeepSeek-V4's attention of one query at context `ctx`, all layers: (FLOPs, cached values
    /// read). Each head scores and sums its window (at most `sliding_window` keys) and the
    /// compressed entries it reads (CSA: the indexer's top `index_topk` of ctx / rate, whose
    /// keys the indexer scans; HCA: all ctx / rate), `head_dim` wide.
    fn v4_attention(&self, ctx: f64) -> Option<(f64, f64)> {
        use whale_model::config::V4Attention;
        let c = &self.config;
        let v = c.v4.as_ref()?;
        let (h, hd) = (c.num_attention_heads as f64, v.head_dim as f64);
        let (ni, di) = (v.index_n_heads as f64, v.index_head_dim as f64);
        let win = ctx.min(v.sliding_window as f64);
        let (mut flops, mut read) = (0.0, 0.0);
        for &k in &v.layer_types {
            let m = v.compress_rate(k) as f64;
            let (entries, scanned) = match k {
                V4Attention::Sliding => (0.0, 0.0),
                V4Attention::Hca => ((ctx / m).floor(), 0.0),
                V4Attention::Csa => {
                    let all = (ctx / m).floor();
                    (all.min(v.index_topk as f64), all)
                }
            };
            flops += 2.0 * h * (win + entries) * 2.0 * hd + 2.0 * ni * scanned * (di + 1.0);
            read += (win + entries) * hd + scanned * di;
        }
        Some((flops, read))
    }

    /// Positions a query at context `ctx` attends to: all of them, or under V3.2's sparse
    /// attention the indexer's top `index_topk`.
    pub fn attended(&self, ctx: f64) -> f64 {
        match &self.config.indexer {
            Some(i) => ctx.min(i.index_topk as f64),
            None => ctx,
        }
    }

    /// V3.2's indexer for one query over `ctx` keys: every head's dot with every key and the
    /// weighted sum of the heads (0 without an indexer).
    pub fn indexer_flops(&self, ctx: f64) -> f64 {
        match &self.config.indexer {
            Some(i) => {
                let (l, n) = (self.config.num_hidden_layers as f64, i.index_n_heads as f64);
                l * 2.0 * n * ctx * (i.index_head_dim as f64 + 1.0)
            }
            None => 0.0,
        }
    }

    /// Attention FLOPs of one token attending at context `ctx` in the weight-absorbed form:
    /// every head scores the latent and rope key (dc + dr) of each attended position and sums
    /// latents (dc); V3.2's indexer scans all `ctx` first.
    pub fn attn_flops_absorbed(&self, ctx: f64) -> f64 {
        if let Some(f) = self.gqa_attn_flops(ctx) {
            return f;
        }
        if let Some((f, _)) = self.v4_attention(ctx) {
            return f;
        }
        let (l, h, dc, dr, _, _) = self.attn_dims();
        l * 2.0 * h * self.attended(ctx) * (2.0 * dc + dr) + self.indexer_flops(ctx)
    }

    /// The same in the plain form with per-head keys and values already expanded (prefill).
    pub fn attn_flops_plain(&self, ctx: f64) -> f64 {
        if let Some(f) = self.gqa_attn_flops(ctx) {
            return f;
        }
        if let Some((f, _)) = self.v4_attention(ctx) {
            return f;
        }
        let (l, h, _, dr, nope, dv) = self.attn_dims();
        l * 2.0 * h * self.attended(ctx) * (nope + dr + dv) + self.indexer_flops(ctx)
    }

    /// Decoding in the plain form from a latent cache: the cache is expanded through kv_b_proj
    /// again at every step before the plain attention.
    pub fn attn_flops_plain_decode(&self, ctx: f64) -> f64 {
        if let Some(f) = self.gqa_attn_flops(ctx) {
            return f;
        }
        if let Some((f, _)) = self.v4_attention(ctx) {
            return f;
        }
        let (l, h, dc, _, nope, dv) = self.attn_dims();
        self.attn_flops_plain(ctx) + l * 2.0 * self.attended(ctx) * dc * h * (nope + dv)
    }

    /// KV-cache bytes one decode step of one sequence at context `ctx` reads: the whole cache,
    /// or under V3.2 the attended latent rows and every indexer key.
    pub fn kv_bytes_read(&self, ctx: f64, kv: Dtype) -> f64 {
        if let Some((_, read)) = self.v4_attention(ctx) {
            return read * kv.bytes_per_weight().round().max(1.0);
        }
        let b = self.kv_per_token(kv);
        match &self.config.indexer {
            Some(_) => b.mla as f64 * self.attended(ctx) + (b.cached - b.mla) as f64 * ctx,
            None => b.cached as f64 * ctx,
        }
    }

    /// Multiply-adds of the output head, as FLOPs, for one token's logits.
    pub fn head_flops(&self) -> f64 {
        let p = &self.params;
        let head = if self.config.tie_word_embeddings {
            p.embedding
        } else {
            p.lm_head
        };
        2.0 * head as f64
    }

    /// FLOPs of the weight products of prefilling a `p`-token prompt: every token through the
    /// layers, the head once (only the last position's logits pick the next token).
    pub fn prefill_linear_flops(&self, p: f64) -> f64 {
        p * (self.linear_flops() - self.head_flops()) + self.head_flops()
    }

    /// FLOPs of prefilling a `p`-token prompt (causal: token t attends to t positions, under
    /// V3.2 to at most index_topk of them while its indexer scans all t).
    pub fn prefill_flops(&self, p: f64) -> f64 {
        if self.config.v4.is_some() {
            // token t attends at context t: summed in steps (exact below 4096 tokens, then
            // every 64th token standing for its neighbours)
            let n = p as u64;
            let step = if n <= 4096 { 1 } else { 64 };
            let mut attn = 0.0;
            let mut t = 1;
            while t <= n {
                let w = step.min(n - t + 1) as f64;
                attn += w * self.attn_flops_plain(t as f64);
                t += step;
            }
            return self.prefill_linear_flops(p) + attn;
        }
        let all = p * (p + 1.0) / 2.0;
        let Some(i) = &self.config.indexer else {
            return self.prefill_linear_flops(p) + self.attn_flops_plain(all);
        };
        let k = (i.index_topk as f64).min(p);
        let attended = k * (k + 1.0) / 2.0 + (p - k) * k;
        let (l, h, _, dr, nope, dv) = self.attn_dims();
        self.prefill_linear_flops(p)
            + l * 2.0 * h * attended * (nope + dr + dv)
            + self.indexer_flops(all)
    }

    /// FLOPs of decoding one token at context `ctx`.
    pub fn decode_flops(&self, ctx: f64) -> f64 {
        self.linear_flops() + self.attn_flops_absorbed(ctx)
    }

    /// Share of routed experts that `tokens` uniformly routed tokens touch in one step.
    pub fn expert_share(&self, tokens: f64) -> f64 {
        match &self.config.moe {
            Some(m) => {
                let miss = 1.0 - m.num_experts_per_tok as f64 / m.n_routed_experts as f64;
                1.0 - miss.powf(tokens)
            }
            None => 0.0,
        }
    }

    /// Bytes of weights one forward step over `tokens` tokens reads: every always-on weight once,
    /// the routed experts its tokens touch, and one embedding row per token.
    pub fn weight_bytes_read(&self, tokens: f64, dtype: Dtype) -> f64 {
        self.dense_bytes_read(tokens, dtype) + self.routed_bytes_read(tokens, dtype)
    }

    /// The always-on part of [`Figures::weight_bytes_read`]: attention, dense and shared FFNs,
    /// routers, norms, the head, and the embedding rows of the step's tokens.
    pub fn dense_bytes_read(&self, tokens: f64, dtype: Dtype) -> f64 {
        let p = &self.params;
        let always = p.total() - p.embedding - p.routed_experts;
        let head = if self.config.tie_word_embeddings {
            p.embedding
        } else {
            0
        };
        ((always + head) as f64 + tokens * self.config.hidden_size as f64)
            * dtype.bytes_per_weight()
    }

    /// The routed experts that `tokens` uniformly routed tokens touch.
    pub fn routed_bytes_read(&self, tokens: f64, dtype: Dtype) -> f64 {
        self.params.routed_experts as f64 * self.expert_share(tokens) * dtype.bytes_per_weight()
    }

    /// Bytes of the routed experts, all of them.
    pub fn routed_bytes_total(&self, dtype: Dtype) -> f64 {
        self.params.routed_experts as f64 * dtype.bytes_per_weight()
    }

    /// Bytes of all weights of the main model held in memory (MTP layers are not loaded).
    pub fn weight_bytes_total(&self, dtype: Dtype) -> f64 {
        self.params.total() as f64 * dtype.bytes_per_weight()
    }

    /// KV-cache bytes per token: as stored, MLA's, and the same heads as MHA and as GQA-8.
    pub fn kv_per_token(&self, kv: Dtype) -> KvBytes {
        // bytes_per_weight is fractional for int4; the cache element sizes used here are whole
        params::kv_bytes_per_token(&self.config, kv.bytes_per_weight().round().max(1.0) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use whale_model::synth::Preset;

    /// V3.2 at long contexts: attention proper stays at index_topk positions, the indexer's scan
    /// and key reads grow with the context; below index_topk it costs V3's plus the indexer.
    #[test]
    fn v32_attention_stops_growing_at_index_topk() {
        let (v3, v32) = (
            Figures::new(Preset::V3.config()),
            Figures::new(Preset::V32.config()),
        );
        let (l, h) = (61.0, 128.0);
        for ctx in [1024.0, 2048.0, 131072.0] {
            let attended = f64::min(ctx, 2048.0);
            let indexer = l * 2.0 * 64.0 * ctx * 129.0;
            let want = l * 2.0 * h * attended * (2.0 * 512.0 + 64.0) + indexer;
            assert_eq!(v32.attn_flops_absorbed(ctx), want);
            let kv = v32.kv_bytes_read(ctx, Dtype::Bf16);
            assert_eq!(kv, l * 576.0 * 2.0 * attended + l * 128.0 * 2.0 * ctx);
        }
        assert!(v32.attn_flops_absorbed(131072.0) < v3.attn_flops_absorbed(131072.0) / 10.0);
        // prefill: the first 2048 tokens attend causally, the rest to 2048 each
        let p = 4096.0;
        let attended = 2048.0 * 2049.0 / 2.0 + 2048.0 * 2048.0;
        let want = v32.prefill_linear_flops(p)
            + l * 2.0 * h * attended * (128.0 + 64.0 + 128.0)
            + l * 2.0 * 64.0 * (p * (p + 1.0) / 2.0) * 129.0;
        assert!((v32.prefill_flops(p) - want).abs() / want < 1e-12);
    }

    #[test]
    fn v3_reads_its_active_weights_per_token() {
        let f = Figures::new(Preset::V3.config());
        // one token reads about the 37B active parameters less the embedding table (0.9B)
        let gb = f.weight_bytes_read(1.0, Dtype::Fp8) / 1e9;
        assert!((gb - 36.6).abs() < 1.0, "{gb} GB");
        // a big batch touches every expert: the whole model minus the embedding table
        let all = f.weight_bytes_read(1e6, Dtype::Bf16);
        let total = f.weight_bytes_total(Dtype::Bf16);
        let embed = f.params.embedding as f64 * 2.0;
        assert!(((all - 2e6 * 7168.0) - (total - embed)).abs() / total < 1e-9);
        // decode FLOPs: 2 per active matmul parameter, plus attention that grows with context
        let lin = f.linear_flops();
        assert!((lin / 2e9 - 36.6).abs() < 1.0, "{lin}");
        assert!(f.decode_flops(32768.0) > f.decode_flops(1024.0));
    }

    #[test]
    fn absorbed_attention_beats_re_expanding_the_cache() {
        let f = Figures::new(Preset::V3.config());
        let ctx = 4096.0;
        // V3: 61 layers x 128 heads x 2 x (2*512 + 64) FLOPs per position
        assert_eq!(f.attn_flops_absorbed(1.0), 61.0 * 128.0 * 2.0 * 1088.0);
        assert!(f.attn_flops_plain_decode(ctx) > 3.0 * f.attn_flops_absorbed(ctx));
        // prefill of p tokens sums the causal contexts 1..p; the head runs for the last only
        let p = 100.0;
        let head = 2.0 * (f.config.vocab_size * f.config.hidden_size) as f64;
        let by_hand: f64 = (1..=100)
            .map(|t| f.linear_flops() - head + f.attn_flops_plain(t as f64))
            .sum::<f64>()
            + head;
        assert!((f.prefill_flops(p) - by_hand).abs() / by_hand < 1e-12);
    }

    #[test]
    fn expert_share_follows_uniform_routing() {
        let f = Figures::new(Preset::V2Lite.config());
        // 64 experts, top-6: one token touches 6/64 of them
        assert!((f.expert_share(1.0) - 6.0 / 64.0).abs() < 1e-12);
        assert!(f.expert_share(8.0) > 0.5 && f.expert_share(8.0) < 0.6);
    }
}
