//! The DeepSeek-V3 network for training, written next to spec §2-§4: MLA with q and kv
//! compression (the plain, non-absorbed form), routed + shared experts with sigmoid group-limited
//! routing, a dense first layer, the depth-1 MTP module. Same tensor names and math as the
//! engine (whale-model); the engine's router picks the experts so both route identically.

use crate::ops::{fake_fp8, rms_norm, sigmoid, softmax_last};
use crate::store::Store;
use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};
use whale_model::config::ScoringFunc;
use whale_model::ModelConfig;

#[derive(Clone, Copy, Debug, Default)]
pub struct Options {
    /// linear layers through simulated FP8 (E4M3, 1x128 activation tiles, 128x128 weight blocks)
    pub fp8: bool,
    /// weight of the sequence-wise balance loss (0: none)
    pub balance_alpha: f64,
    /// also run the MTP module
    pub mtp: bool,
}

pub struct Output {
    /// [B, S, vocab]
    pub logits: Tensor,
    /// [B, S-1, vocab]: row i predicts token i+2 (MTP depth 1)
    pub mtp_logits: Option<Tensor>,
    /// tokens routed to each expert, per MoE layer (main layers, then MTP), real tokens only
    pub loads: Vec<Vec<f32>>,
    /// alpha * sum of the per-layer sequence-wise balance losses (a scalar; 0 when alpha is 0)
    pub balance_loss: Tensor,
}

pub struct TrainModel {
    pub cfg: ModelConfig,
    pub store: Store,
}

struct Ctx<'a> {
    opts: Options,
    /// real length of each sequence (the rest is right padding)
    lens: &'a [usize],
    seq: usize,
    cos: Tensor,
    sin: Tensor,
    mask: Tensor,
}

impl TrainModel {
    pub fn new(cfg: ModelConfig, store: Store) -> Result<Self> {
        if cfg
            .moe
            .as_ref()
            .is_some_and(|m| m.scoring_func != ScoringFunc::Sigmoid)
        {
            bail!("training supports the V3 sigmoid router (scoring_func = sigmoid)");
        }
        Ok(TrainModel { cfg, store })
    }

    fn w(&self, name: &str) -> Result<&Tensor> {
        self.store.get(name)
    }

    /// Forward pass over right-padded sequences `ids` ([B][S], all of length S) whose real
    /// lengths are `lens`.
    pub fn forward(&self, ids: &[Vec<u32>], lens: &[usize], opts: Options) -> Result<Output> {
        let b = ids.len();
        let s = ids.first().map_or(0, |r| r.len());
        if b == 0 || s == 0 || ids.iter().any(|r| r.len() != s) || lens.len() != b {
            bail!("forward: a batch needs B >= 1 rows of one length S >= 1");
        }
        if let Some(&t) = ids
            .iter()
            .flatten()
            .find(|&&t| t as usize >= self.cfg.vocab_size)
        {
            bail!(
                "token id {t} is outside the vocabulary ({})",
                self.cfg.vocab_size
            );
        }
        let dev = Device::Cpu;
        let dt = self.store.dtype;
        let (cos, sin) = self.rope_tables(s, dt)?;
        let mask = causal_mask(s, dt)?;
        let ctx = Ctx {
            opts,
            lens,
            seq: s,
            cos,
            sin,
            mask,
        };
        let flat: Vec<u32> = ids.iter().flatten().copied().collect();
        let flat = Tensor::from_vec(flat, b * s, &dev)?;
        let d = self.cfg.hidden_size;
        let mut h = self
            .w("model.embed_tokens.weight")?
            .index_select(&flat, 0)?;
        let mut loads = vec![];
        let mut balance = Tensor::zeros((), dt, &dev)?;
        for i in 0..self.cfg.num_hidden_layers {
            h = self.layer(
                &h,
                i,
                self.cfg.is_moe_layer(i),
                &ctx,
                &mut loads,
                &mut balance,
            )?;
        }
        let eps = self.cfg.rms_norm_eps;
        let normed = rms_norm(&h, self.w("model.norm.weight")?, eps)?;
        let head = self.w("lm_head.weight")?;
        let logits = normed.matmul(&head.t()?)?.reshape((b, s, ()))?;
        let mtp_logits = if opts.mtp && self.cfg.num_nextn_predict_layers > 0 && s > 1 {
            let l = self.cfg.num_hidden_layers;
            let p = format!("model.layers.{l}.");
            let next = flat.reshape((b, s))?.narrow(1, 1, s - 1)?.flatten_all()?;
            let e = self
                .w("model.embed_tokens.weight")?
                .index_select(&next, 0)?;
            let e = rms_norm(&e, self.w(&format!("{p}enorm.weight"))?, eps)?;
            let hn = normed
                .reshape((b, s, d))?
                .narrow(1, 0, s - 1)?
                .reshape((b * (s - 1), d))?;
            let hn = rms_norm(&hn, self.w(&format!("{p}hnorm.weight"))?, eps)?;
            let x = Tensor::cat(&[&e, &hn], 1)?;
            let x = x.matmul(&self.w(&format!("{p}eh_proj.weight"))?.t()?)?;
            let lens1: Vec<usize> = lens.iter().map(|&n| n.saturating_sub(1)).collect();
            let (cos, sin) = self.rope_tables(s - 1, dt)?;
            let ctx1 = Ctx {
                opts,
                lens: &lens1,
                seq: s - 1,
                cos,
                sin,
                mask: causal_mask(s - 1, dt)?,
            };
            let y = self.layer(
                &x,
                l,
                self.cfg.moe.is_some(),
                &ctx1,
                &mut loads,
                &mut balance,
            )?;
            let y = rms_norm(&y, self.w(&format!("{p}shared_head.norm.weight"))?, eps)?;
            Some(y.matmul(&head.t()?)?.reshape((b, s - 1, ()))?)
        } else {
            None
        };
        Ok(Output {
            logits,
            mtp_logits,
            loads,
            balance_loss: balance,
        })
    }

    /// cos/sin [S, rope/2] for positions 0..S.
    fn rope_tables(&self, s: usize, dt: DType) -> Result<(Tensor, Tensor)> {
        let rope = whale_model::rope::Rope::new(&self.cfg);
        let inv = rope.inv_freq();
        let af = rope.attention_factor();
        let half = inv.len();
        let mut cos = Vec::with_capacity(s * half);
        let mut sin = Vec::with_capacity(s * half);
        for p in 0..s {
            for &f in inv {
                let a = p as f32 * f;
                cos.push(a.cos() * af);
                sin.push(a.sin() * af);
            }
        }
        let dev = Device::Cpu;
        Ok((
            Tensor::from_vec(cos, (s, half), &dev)?.to_dtype(dt)?,
            Tensor::from_vec(sin, (s, half), &dev)?.to_dtype(dt)?,
        ))
    }

    fn linear(&self, x: &Tensor, name: &str, ctx: &Ctx) -> Result<Tensor> {
        let w = self.w(name)?;
        if ctx.opts.fp8 {
            Ok(fake_fp8(x, (1, 128))?.matmul(&fake_fp8(w, (128, 128))?.t()?)?)
        } else {
            Ok(x.matmul(&w.t()?)?)
        }
    }

    /// h + MLA(norm(h)), then + FFN(norm(h)); h is [B*S, d].
    fn layer(
        &self,
        h: &Tensor,
        i: usize,
        moe: bool,
        ctx: &Ctx,
        loads: &mut Vec<Vec<f32>>,
        balance: &mut Tensor,
    ) -> Result<Tensor> {
        let p = format!("model.layers.{i}.");
        let eps = self.cfg.rms_norm_eps;
        let x = rms_norm(h, self.w(&format!("{p}input_layernorm.weight"))?, eps)?;
        let h = (h + self.attention(&x, &format!("{p}self_attn."), ctx)?)?;
        let x = rms_norm(
            &h,
            self.w(&format!("{p}post_attention_layernorm.weight"))?,
            eps,
        )?;
        let f = if moe {
            self.moe(&x, &format!("{p}mlp."), ctx, loads, balance)?
        } else {
            self.mlp(&x, &format!("{p}mlp."), ctx)?
        };
        Ok((h + f)?)
    }

    /// Multi-head Latent Attention, plain form (spec §2): per-head keys and values are expanded
    /// from the latent; causal; rope on the decoupled dims.
    fn attention(&self, x: &Tensor, p: &str, ctx: &Ctx) -> Result<Tensor> {
        let c = &self.cfg;
        let (n, _) = x.dims2()?;
        let (b, s) = (n / ctx.seq, ctx.seq);
        let h = c.num_attention_heads;
        let (dn, dr, dv) = (c.qk_nope_head_dim, c.qk_rope_head_dim, c.v_head_dim);
        let eps = c.rms_norm_eps;
        let q = match c.q_lora_rank {
            Some(_) => {
                let qa = self.linear(x, &format!("{p}q_a_proj.weight"), ctx)?;
                let qa = rms_norm(&qa, self.w(&format!("{p}q_a_layernorm.weight"))?, eps)?;
                self.linear(&qa, &format!("{p}q_b_proj.weight"), ctx)?
            }
            None => self.linear(x, &format!("{p}q_proj.weight"), ctx)?,
        };
        let q = q.reshape((b, s, h, dn + dr))?.transpose(1, 2)?; // [B,H,S,dq]
        let q_nope = q.narrow(3, 0, dn)?;
        let q_pe = self.rope(&q.narrow(3, dn, dr)?.contiguous()?, ctx)?;
        let kv_a = self.linear(x, &format!("{p}kv_a_proj_with_mqa.weight"), ctx)?;
        let latent = kv_a.narrow(1, 0, c.kv_lora_rank)?;
        let k_pe = kv_a
            .narrow(1, c.kv_lora_rank, dr)?
            .reshape((b, s, 1, dr))?
            .transpose(1, 2)?;
        let k_pe = self.rope(&k_pe.contiguous()?, ctx)?; // [B,1,S,dr]
        let latent = rms_norm(&latent, self.w(&format!("{p}kv_a_layernorm.weight"))?, eps)?;
        let kv = self.linear(&latent, &format!("{p}kv_b_proj.weight"), ctx)?;
        let kv = kv.reshape((b, s, h, dn + dv))?.transpose(1, 2)?; // [B,H,S,dn+dv]
        let k_nope = kv.narrow(3, 0, dn)?;
        let v = kv.narrow(3, dn, dv)?.contiguous()?;
        let k = Tensor::cat(&[&k_nope, &k_pe.broadcast_as((b, h, s, dr))?], 3)?;
        let q = Tensor::cat(&[&q_nope, &q_pe], 3)?;
        let scale = whale_model::rope::softmax_scale(c) as f64;
        let scores = (q.contiguous()?.matmul(&k.transpose(2, 3)?.contiguous()?)? * scale)?
            .broadcast_add(&ctx.mask)?;
        let o = softmax_last(&scores)?.matmul(&v)?; // [B,H,S,dv]
        let o = o.transpose(1, 2)?.reshape((n, h * dv))?;
        self.linear(&o, &format!("{p}o_proj.weight"), ctx)
    }

    /// Rotary embedding on [B, heads, S, dr]: adjacent pairs (the released layout) or halves.
    fn rope(&self, x: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        let (b, h, s, dr) = x.dims4()?;
        let half = dr / 2;
        let (x0, x1) = if self.cfg.rope_interleave {
            let x = x.reshape((b, h, s, half, 2))?;
            (
                x.narrow(4, 0, 1)?.squeeze(4)?,
                x.narrow(4, 1, 1)?.squeeze(4)?,
            )
        } else {
            (x.narrow(3, 0, half)?, x.narrow(3, half, half)?)
        };
        let (cos, sin) = (&ctx.cos, &ctx.sin);
        let r0 = (x0.broadcast_mul(cos)? - x1.broadcast_mul(sin)?)?;
        let r1 = (x0.broadcast_mul(sin)? + x1.broadcast_mul(cos)?)?;
        if self.cfg.rope_interleave {
            Ok(Tensor::stack(&[&r0, &r1], 4)?.reshape((b, h, s, dr))?)
        } else {
            Ok(Tensor::cat(&[&r0, &r1], 3)?)
        }
    }

    /// down(silu(gate(x)) * up(x))
    fn mlp(&self, x: &Tensor, p: &str, ctx: &Ctx) -> Result<Tensor> {
        let g = self
            .linear(x, &format!("{p}gate_proj.weight"), ctx)?
            .silu()?;
        let u = self.linear(x, &format!("{p}up_proj.weight"), ctx)?;
        self.linear(&(g * u)?, &format!("{p}down_proj.weight"), ctx)
    }

    /// Shared expert + routed experts (spec §3.3): sigmoid scores, the biased scores pick the
    /// experts (the engine's router), the unbiased ones weight them.
    fn moe(
        &self,
        x: &Tensor,
        p: &str,
        ctx: &Ctx,
        loads: &mut Vec<Vec<f32>>,
        balance: &mut Tensor,
    ) -> Result<Tensor> {
        let m = self.cfg.moe.as_ref().expect("moe layer without moe config");
        let (n, _) = x.dims2()?;
        let (e_n, k) = (m.n_routed_experts, m.num_experts_per_tok);
        let logits = x.matmul(&self.w(&format!("{p}gate.weight"))?.t()?)?; // router kept in full precision
        let scores = sigmoid(&logits)?;
        let bias_name = format!("{p}gate.e_score_correction_bias");
        let bias: Option<Vec<f32>> = match self.store.vars.get(&bias_name) {
            Some(v) => Some(v.as_tensor().to_dtype(DType::F32)?.to_vec1()?),
            None => None,
        };
        let lv: Vec<f32> = logits.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        let real = real_rows(ctx);
        let mut picked = Vec::with_capacity(n * k);
        let mut load = vec![0f32; e_n];
        for t in 0..n {
            let r = whale_model::moe::route(&lv[t * e_n..(t + 1) * e_n], bias.as_deref(), m);
            for &(e, _) in &r {
                picked.push(e as u32);
                if real[t] {
                    load[e] += 1.0;
                }
            }
        }
        let idx = Tensor::from_vec(picked.clone(), (n, k), x.device())?;
        let mut w = scores.gather(&idx, 1)?;
        if m.norm_topk_prob {
            w = w.broadcast_div(&(w.sum_keepdim(1)? + 1e-20)?)?;
        }
        let w = (w * m.routed_scaling_factor)?.flatten_all()?;
        let mut y = if m.n_shared_experts > 0 {
            self.mlp(x, &format!("{p}shared_experts."), ctx)?
        } else {
            x.zeros_like()?
        };
        y = (y + self.routed_experts(x, p, &picked, &w, e_n, k, ctx)?)?;
        if ctx.opts.balance_alpha > 0.0 {
            *balance = (&*balance
                + sequence_balance_loss(&scores, &picked, ctx, e_n, k)? * ctx.opts.balance_alpha)?;
        }
        loads.push(load);
        Ok(y)
    }
}

impl TrainModel {
    /// All routed experts in three batched matmuls: each expert's tokens gathered into one
    /// [experts, capacity, d] block (capacity = the busiest expert's count, the rest zero rows),
    /// so the op count does not grow with the number of experts.
    #[allow(clippy::too_many_arguments)]
    fn routed_experts(
        &self,
        x: &Tensor,
        p: &str,
        picked: &[u32],
        w: &Tensor,
        e_n: usize,
        k: usize,
        ctx: &Ctx,
    ) -> Result<Tensor> {
        let (n, d) = x.dims2()?;
        let dev = x.device();
        let mut by_expert: Vec<Vec<u32>> = vec![vec![]; e_n];
        for (slot, &e) in picked.iter().enumerate() {
            by_expert[e as usize].push(slot as u32);
        }
        let cap = by_expert.iter().map(|v| v.len()).max().unwrap_or(0).max(1);
        let mut gather = vec![n as u32; e_n * cap]; // row n is the zero row
        let (mut rows, mut slots, mut toks) = (vec![], vec![], vec![]);
        for (e, list) in by_expert.iter().enumerate() {
            for (r, &slot) in list.iter().enumerate() {
                gather[e * cap + r] = slot / k as u32;
                rows.push((e * cap + r) as u32);
                slots.push(slot);
                toks.push(slot / k as u32);
            }
        }
        let m = rows.len();
        let xz = Tensor::cat(&[x, &Tensor::zeros((1, d), x.dtype(), dev)?], 0)?;
        let xe = xz
            .index_select(&Tensor::from_vec(gather, e_n * cap, dev)?, 0)?
            .reshape((e_n, cap, d))?;
        let stack = |proj: &str| -> Result<Tensor> {
            let ws = (0..e_n)
                .map(|e| {
                    let w = self.w(&format!("{p}experts.{e}.{proj}.weight"))?;
                    Ok(if ctx.opts.fp8 {
                        fake_fp8(w, (128, 128))?
                    } else {
                        w.clone()
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            Ok(Tensor::stack(&ws, 0)?.transpose(1, 2)?)
        };
        let xe = if ctx.opts.fp8 {
            fake_fp8(&xe.reshape((e_n * cap, d))?, (1, 128))?.reshape((e_n, cap, d))?
        } else {
            xe
        };
        let g = xe.matmul(&stack("gate_proj")?)?.silu()?;
        let u = xe.matmul(&stack("up_proj")?)?;
        let hmid = (g * u)?;
        let hmid = if ctx.opts.fp8 {
            let (_, _, i) = hmid.dims3()?;
            fake_fp8(&hmid.reshape((e_n * cap, i))?, (1, 128))?.reshape((e_n, cap, i))?
        } else {
            hmid
        };
        let out = hmid.matmul(&stack("down_proj")?)?.reshape((e_n * cap, d))?;
        let out = out.index_select(&Tensor::from_vec(rows, m, dev)?, 0)?;
        let ws = w.index_select(&Tensor::from_vec(slots, m, dev)?, 0)?;
        let toks = Tensor::from_vec(toks, m, dev)?;
        Ok(Tensor::zeros((n, d), x.dtype(), dev)?.index_add(
            &toks,
            &out.broadcast_mul(&ws.unsqueeze(1)?)?,
            0,
        )?)
    }
}

/// Which of the B*S rows are real tokens (not right padding).
fn real_rows(ctx: &Ctx) -> Vec<bool> {
    ctx.lens
        .iter()
        .flat_map(|&l| (0..ctx.seq).map(move |t| t < l))
        .collect()
}

/// Spec §4.2: sum_i f_i P_i per sequence, averaged over the batch.
fn sequence_balance_loss(
    scores: &Tensor,
    picked: &[u32],
    ctx: &Ctx,
    e_n: usize,
    k: usize,
) -> Result<Tensor> {
    let (b, s) = (ctx.lens.len(), ctx.seq);
    let norm = scores.broadcast_div(&scores.sum_keepdim(1)?)?; // s'
    let mut avg = vec![0f32; b * b * s]; // [B, B*S]: 1/T on row b's real positions
    let mut f = vec![0f32; b * e_n];
    for (row, &len) in ctx.lens.iter().enumerate() {
        let len = len.min(s).max(1);
        for t in 0..len.min(s) {
            avg[row * b * s + row * s + t] = 1.0 / len as f32;
            for j in 0..k {
                let e = picked[(row * s + t) * k + j] as usize;
                f[row * e_n + e] += e_n as f32 / (k * len) as f32;
            }
        }
    }
    let dev = scores.device();
    let dt = scores.dtype();
    let avg = Tensor::from_vec(avg, (b, b * s), dev)?.to_dtype(dt)?;
    let f = Tensor::from_vec(f, (b, e_n), dev)?.to_dtype(dt)?;
    let p_i = avg.matmul(&norm)?; // [B, E]
    Ok(((p_i * f)?.sum_all()? / b as f64)?)
}

fn causal_mask(s: usize, dt: DType) -> Result<Tensor> {
    let v: Vec<f32> = (0..s * s)
        .map(|i| {
            if i % s > i / s {
                f32::NEG_INFINITY
            } else {
                0.0
            }
        })
        .collect();
    Ok(Tensor::from_vec(v, (s, s), &Device::Cpu)?.to_dtype(dt)?)
}

/// Mean cross-entropy of `logits` [B, S, V] against `targets` [B][S] where `weights` [B][S] > 0
/// (the weights sum the loss; 0 drops a position). Returns (loss, number of weighted tokens).
pub fn masked_cross_entropy(
    logits: &Tensor,
    targets: &[Vec<u32>],
    weights: &[Vec<f32>],
) -> Result<(Tensor, f32)> {
    let (b, s, v) = logits.dims3()?;
    let t: Vec<u32> = targets.iter().flatten().copied().collect();
    let w: Vec<f32> = weights.iter().flatten().copied().collect();
    if t.len() != b * s || w.len() != b * s {
        bail!("targets/weights do not match the logits' [B, S]");
    }
    let total: f32 = w.iter().sum();
    let dev = logits.device();
    let lp = crate::ops::token_logprobs(
        &logits.reshape((b * s, v))?,
        &Tensor::from_vec(t, b * s, dev)?,
    )?;
    let w = Tensor::from_vec(w, b * s, dev)?.to_dtype(logits.dtype())?;
    let loss = ((lp * w)?.sum_all()?.neg()? / total.max(1.0) as f64)?;
    Ok((loss, total))
}
