//! One answer of `whale cost`: every figure for one model, chip count, batch and context, as a
//! JSON-able struct and as text.

use crate::{roofline::Step, Dtype, Figures, Setup};
use anyhow::{bail, Result};
use serde::Serialize;
use std::fmt::Write;
use whale_model::params::ParamCount;

/// What the user asks about.
#[derive(Clone, Debug)]
pub struct Request {
    pub batch: u64,
    /// context length at which decode and the KV sizes are taken
    pub context: u64,
    /// prompt and output lengths of one request (for prefill speed and the per-request price)
    pub prompt: u64,
    pub output: u64,
    pub price_per_hour: f64,
}

#[derive(Debug, Serialize)]
pub struct Kv {
    pub dtype: Dtype,
    pub per_token: KvTriple,
    pub per_sequence: KvTriple,
    pub max_batch: KvTriple,
}

/// As stored (MLA's latent, or a distill's GQA keys and values), MLA's (for a GQA model: a cache
/// of V3's latent width), and the same heads as standard multi-head attention and as GQA-8.
#[derive(Debug, Serialize)]
pub struct KvTriple {
    pub cached: f64,
    pub mla: f64,
    pub mha: f64,
    pub gqa8: f64,
}

#[derive(Debug, Serialize)]
pub struct Flops {
    pub linear_per_token: f64,
    pub prefill_per_token: f64,
    pub decode_per_token: f64,
    /// attention of one decoded token: weight-absorbed over the latent cache
    pub attention_absorbed_per_token: f64,
    /// plain form over per-head keys and values kept expanded (an MHA-size cache)
    pub attention_plain_expanded_per_token: f64,
    /// plain form re-expanding the latent cache through kv_b_proj at every step
    pub attention_plain_reexpand_per_token: f64,
}

#[derive(Debug, Serialize)]
pub struct Decode {
    pub step: Step,
    pub tokens_per_s: f64,
    pub tokens_per_s_per_sequence: f64,
    /// decode tokens/s at the same batch if the cache were MHA or GQA-8 (None: does not fit)
    pub tokens_per_s_mha: Option<f64>,
    pub tokens_per_s_gqa8: Option<f64>,
    pub compute_bound_from_batch: Option<u64>,
}

#[derive(Debug, Serialize)]
pub struct Dollars {
    pub per_hour: f64,
    pub per_million_input: f64,
    pub per_million_output: f64,
    pub output_over_input: f64,
    pub per_request: f64,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub model: String,
    /// the model caches grouped-query keys and values (a distill), not MLA latents
    pub gqa: bool,
    /// DeepSeek-V4: a sliding window and compressed entries instead of a latent per token
    pub v4: bool,
    /// V3.2: (index_topk, the indexer's FLOPs per decoded token at `context`)
    pub sparse: Option<(usize, f64)>,
    pub hardware: String,
    pub hardware_description: String,
    pub gpus: usize,
    pub dtype: Dtype,
    pub batch: u64,
    pub context: u64,
    pub prompt: u64,
    pub output: u64,
    /// parameters by part (`mtp`: MTP modules stored on disk, not part of the main model)
    pub params: ParamCount,
    pub params_total: u64,
    pub params_active: u64,
    pub flops: Flops,
    pub weight_bytes_total: f64,
    pub weight_bytes_per_decode_step_batch1: f64,
    pub weight_bytes_per_decode_step: f64,
    pub kv: Kv,
    pub prefill: Step,
    pub prefill_tokens_per_s: f64,
    pub decode: Decode,
    pub dollars: Dollars,
}

impl Report {
    pub fn new(model: &str, f: &Figures, s: &Setup, r: &Request) -> Result<Report> {
        if r.batch == 0 || r.context == 0 || r.prompt == 0 || r.output == 0 {
            bail!("--batch, --context, --prompt and --output must be positive");
        }
        if !(r.price_per_hour.is_finite() && r.price_per_hour >= 0.0) {
            bail!("--price-per-hour must be a non-negative number");
        }
        s.validate()?;
        let max_ctx = f.config.max_position_embeddings as u64;
        if r.context > max_ctx {
            bail!(
                "--context {} exceeds the model's max_position_embeddings ({max_ctx})",
                r.context
            );
        }
        let ctx = r.context as f64;
        let weights = f.weight_bytes_total(s.dtype);
        let budget = s.kv_budget(f);
        if budget <= 0.0 {
            let need = crate::Setup::chips_needed(&s.chip, f, s.dtype, 0.0)
                .map(|g| format!("; it needs --gpus {g}"))
                .unwrap_or_default();
            bail!(
                "the weights ({:.1} GB in {}) do not fit in {} x {} ({:.0} GB, {:.0}% usable){need}",
                weights / 1e9,
                s.dtype.name(),
                s.gpus,
                s.chip.name,
                s.gpus as f64 * s.chip.memory_gb,
                crate::roofline::USABLE_MEMORY * 100.0
            );
        }
        let kv = f.kv_per_token(s.kv_dtype);
        let fit = |per: u64| s.max_batch(f, ctx, per as f64);
        let max_batch = KvTriple {
            cached: fit(kv.cached) as f64,
            mla: fit(kv.mla) as f64,
            mha: fit(kv.mha) as f64,
            gqa8: fit(kv.gqa8) as f64,
        };
        if (r.batch as f64) > max_batch.cached {
            bail!(
                "batch {} at context {} needs {:.1} GB of KV cache, but {:.1} GB is left beside the weights: at most {} sequences fit",
                r.batch,
                r.context,
                r.batch as f64 * ctx * kv.cached as f64 / 1e9,
                budget / 1e9,
                max_batch.cached
            );
        }
        let b = r.batch as f64;
        let p = &f.params;
        let decode = s.decode(f, b, ctx);
        let tokens_per_s = b / decode.seconds;
        let other = |per: u64, max: f64| {
            (b <= max).then(|| b / s.decode_with_kv(f, b, ctx, per as f64).seconds)
        };
        let prefill = s.prefill(f, r.prompt as f64);
        let prefill_tokens_per_s = r.prompt as f64 / prefill.seconds;
        let per_hour = r.price_per_hour * s.gpus as f64;
        let per_token_in = per_hour / 3600.0 / prefill_tokens_per_s;
        let per_token_out = per_hour / 3600.0 / tokens_per_s;
        Ok(Report {
            gqa: f.config.gqa.is_some(),
            v4: f.config.v4.is_some(),
            sparse: f
                .config
                .indexer
                .as_ref()
                .map(|i| (i.index_topk, f.indexer_flops(r.context as f64))),
            model: model.to_string(),
            hardware: s.chip.name.clone(),
            hardware_description: s.chip.description.clone(),
            gpus: s.gpus,
            dtype: s.dtype,
            batch: r.batch,
            context: r.context,
            prompt: r.prompt,
            output: r.output,
            params: p.clone(),
            params_total: p.total(),
            params_active: p.active(),
            flops: Flops {
                linear_per_token: f.linear_flops(),
                prefill_per_token: f.prefill_flops(r.prompt as f64) / r.prompt as f64,
                decode_per_token: f.decode_flops(ctx),
                attention_absorbed_per_token: f.attn_flops_absorbed(ctx),
                attention_plain_expanded_per_token: f.attn_flops_plain(ctx),
                attention_plain_reexpand_per_token: f.attn_flops_plain_decode(ctx),
            },
            weight_bytes_total: weights,
            weight_bytes_per_decode_step_batch1: f.weight_bytes_read(1.0, s.dtype),
            weight_bytes_per_decode_step: f.weight_bytes_read(b, s.dtype),
            kv: Kv {
                dtype: s.kv_dtype,
                per_token: KvTriple {
                    cached: kv.cached as f64,
                    mla: kv.mla as f64,
                    mha: kv.mha as f64,
                    gqa8: kv.gqa8 as f64,
                },
                per_sequence: KvTriple {
                    cached: kv.cached as f64 * ctx,
                    mla: kv.mla as f64 * ctx,
                    mha: kv.mha as f64 * ctx,
                    gqa8: kv.gqa8 as f64 * ctx,
                },
                max_batch,
            },
            decode: Decode {
                tokens_per_s_per_sequence: 1.0 / decode.seconds,
                tokens_per_s,
                tokens_per_s_mha: other(kv.mha, fit(kv.mha) as f64),
                tokens_per_s_gqa8: other(kv.gqa8, fit(kv.gqa8) as f64),
                compute_bound_from_batch: s.compute_bound_batch(f, ctx),
                step: decode,
            },
            prefill,
            prefill_tokens_per_s,
            dollars: Dollars {
                per_hour,
                per_million_input: per_token_in * 1e6,
                per_million_output: per_token_out * 1e6,
                output_over_input: per_token_out / per_token_in,
                per_request: per_token_in * r.prompt as f64 + per_token_out * r.output as f64,
            },
        })
    }

    pub fn text(&self) -> String {
        let mut o = String::new();
        let g = |x: f64| x / 1e9;
        let p = &self.params;
        let _ = writeln!(
            o,
            "model {} | {} x {} ({}) | weights {}",
            self.model,
            self.gpus,
            self.hardware,
            self.hardware_description,
            self.dtype.name()
        );
        let _ = writeln!(
            o,
            "\nparameters: {:.2}B total, {:.2}B active per token",
            g(self.params_total as f64),
            g(self.params_active as f64)
        );
        let _ = writeln!(
            o,
            "  embedding {:.3}B, head {:.3}B, attention {:.3}B, dense FFN {:.3}B, shared experts {:.3}B, routed experts {:.3}B ({:.3}B active), routers {:.4}B, norms {:.5}B{}",
            g(p.embedding as f64), g(p.lm_head as f64), g(p.attention as f64), g(p.dense_ffn as f64),
            g(p.shared_experts as f64), g(p.routed_experts as f64), g(p.routed_active as f64),
            g(p.router as f64), g(p.norms as f64),
            if p.mtp > 0 { format!(", MTP on disk {:.2}B", g(p.mtp as f64)) } else { String::new() }
        );
        let fl = &self.flops;
        let _ = writeln!(o, "\nFLOPs per token: {:.1} GFLOP of weight products; prefill of {} tokens {:.1} GFLOP/token; decode at context {} {:.1} GFLOP/token", g(fl.linear_per_token), self.prompt, g(fl.prefill_per_token), self.context, g(fl.decode_per_token));
        if self.v4 {
            let _ = writeln!(
                o,
                "  attention per decoded token at context {}: {:.2} GFLOP (V4: each head reads its sliding window and the compressed entries; CSA's indexer scans every CSA entry)",
                self.context, g(fl.attention_absorbed_per_token)
            );
        } else if self.gqa {
            let _ = writeln!(
                o,
                "  attention per decoded token at context {}: {:.2} GFLOP (grouped-query attention has one form)",
                self.context, g(fl.attention_absorbed_per_token)
            );
        } else {
            let _ = writeln!(
                o,
                "  attention per decoded token at context {}: absorbed over the latent cache {:.2} GFLOP; plain over an expanded (MHA-size) cache {:.2} GFLOP; plain re-expanding the latent cache each step {:.2} GFLOP",
                self.context, g(fl.attention_absorbed_per_token), g(fl.attention_plain_expanded_per_token), g(fl.attention_plain_reexpand_per_token)
            );
        }
        if let Some((topk, indexer)) = self.sparse {
            let _ = writeln!(
                o,
                "  sparse attention: a query reads at most {topk} latent rows; the lightning indexer that picks them scans all {} keys ({:.2} GFLOP of it)",
                self.context, g(indexer)
            );
        }
        let _ = writeln!(
            o,
            "weights: {:.2} GB held; a decode step reads {:.2} GB at batch 1, {:.2} GB at batch {}",
            g(self.weight_bytes_total),
            g(self.weight_bytes_per_decode_step_batch1),
            g(self.weight_bytes_per_decode_step),
            self.batch
        );
        let kv = &self.kv;
        // a distill caches GQA keys and values: its own cache first, then MLA's beside it
        let gqa = self.gqa || self.v4;
        let (first, second) = if self.v4 {
            ("V4 (stored)", "MLA (V3 width)")
        } else if gqa {
            ("GQA (stored)", "MLA (V3 width)")
        } else {
            ("MLA (stored)", "GQA-8")
        };
        let pick = |t: &KvTriple| {
            if gqa {
                (t.cached, t.mla)
            } else {
                (t.cached, t.gqa8)
            }
        };
        let _ = writeln!(
            o,
            "\nKV cache ({}):       {:>14} {:>14} {:>14}",
            kv.dtype.name(),
            first,
            "MHA",
            second
        );
        let (a, b) = pick(&kv.per_token);
        let _ = writeln!(
            o,
            "  bytes per token      {:>14} {:>14} {:>14}",
            a, kv.per_token.mha, b
        );
        let (a, b) = pick(&kv.per_sequence);
        let _ = writeln!(
            o,
            "  GB per sequence@{:<6}{:>13.2} {:>14.2} {:>14.2}",
            self.context,
            g(a),
            g(kv.per_sequence.mha),
            g(b)
        );
        let (a, b) = pick(&kv.max_batch);
        let _ = writeln!(
            o,
            "  max batch @{:<10}{:>13} {:>14} {:>14}",
            self.context, a, kv.max_batch.mha, b
        );
        if gqa {
            let _ = writeln!(
                o,
                "  {} keeps {:.1}x less than MHA; an MLA cache of V3's width would be {:.2}x this cache{}",
                if self.v4 { "V4" } else { "GQA" },
                kv.per_token.mha / kv.per_token.cached,
                kv.per_token.mla / kv.per_token.cached,
                if self.v4 { " (V4: per token past the fixed window and block state)" } else { "" }
            );
        } else {
            let _ = writeln!(
                o,
                "  MLA keeps {:.1}x less than MHA, {:.1}x less than GQA-8",
                kv.per_token.mha / kv.per_token.cached,
                kv.per_token.gqa8 / kv.per_token.cached
            );
        }
        let step = |name: &str, s: &Step| {
            format!(
                "{name}: compute {:.3} ms, memory {:.3} ms, interconnect {:.3} ms -> {:.3} ms per step, {}-bound",
                s.compute_s * 1e3, s.memory_s * 1e3, s.comm_s * 1e3, s.seconds * 1e3, s.bound
            )
        };
        let _ = writeln!(o, "\nroofline");
        let _ = writeln!(
            o,
            "  {}",
            step(&format!("prefill of {} tokens", self.prompt), &self.prefill)
        );
        let _ = writeln!(o, "    -> {:.0} prompt tokens/s", self.prefill_tokens_per_s);
        let d = &self.decode;
        let _ = writeln!(
            o,
            "  {}",
            step(
                &format!("decode, batch {} at context {}", self.batch, self.context),
                &d.step
            )
        );
        let _ = writeln!(
            o,
            "    -> {:.1} tokens/s in all, {:.1} tokens/s per sequence",
            d.tokens_per_s, d.tokens_per_s_per_sequence
        );
        let opt =
            |v: Option<f64>| v.map_or("does not fit".to_string(), |v| format!("{v:.1} tokens/s"));
        let _ = writeln!(
            o,
            "    same batch with an MHA cache: {}; with GQA-8: {}",
            opt(d.tokens_per_s_mha),
            opt(d.tokens_per_s_gqa8)
        );
        let _ = writeln!(
            o,
            "  decode turns compute-bound at context {} from batch {}",
            self.context,
            d.compute_bound_from_batch.map_or(
                "never (KV reads grow as fast as FLOPs)".to_string(),
                |b| {
                    if (b as f64) > kv.max_batch.cached {
                        format!("{b} (more than fits in memory: {})", kv.max_batch.cached)
                    } else {
                        b.to_string()
                    }
                }
            )
        );
        let c = &self.dollars;
        let _ = writeln!(
            o,
            "\ndollars at ${:.2}/hour for {} chip(s)",
            c.per_hour, self.gpus
        );
        let _ = writeln!(o, "  ${:.4} per million input tokens, ${:.4} per million output tokens (output costs {:.1}x input)", c.per_million_input, c.per_million_output, c.output_over_input);
        let _ = writeln!(
            o,
            "  one request of {} prompt + {} output tokens: ${:.6}",
            self.prompt, self.output, c.per_request
        );
        o
    }
}
