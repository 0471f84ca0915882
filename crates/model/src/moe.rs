//! Feed-forward blocks: the SwiGLU MLP, and DeepSeekMoE (shared experts + routed experts
//! chosen by one of the three routers of spec §3). Router math is f32.

use anyhow::{bail, Result};
use std::borrow::Cow;
use whale_kernels::matrix::{matmul, matmul_batch, Product};
use whale_kernels::ops::{axpy, sigmoid, softmax, swiglu};
use whale_kernels::Matrix;

use crate::checkpoint::Checkpoint;
use crate::config::{MoeConfig, ScoringFunc, TopkMethod};

pub struct Mlp {
    pub gate_proj: Matrix,
    pub up_proj: Matrix,
    pub down_proj: Matrix,
}

impl Mlp {
    pub fn load(ck: &Checkpoint, p: &str, hidden: usize, inter: usize) -> Result<Self> {
        Ok(Mlp {
            gate_proj: ck.linear(&format!("{p}gate_proj.weight"), inter, hidden)?,
            up_proj: ck.linear(&format!("{p}up_proj.weight"), inter, hidden)?,
            down_proj: ck.linear(&format!("{p}down_proj.weight"), hidden, inter)?,
        })
    }

    /// An MLP stored under the reference code's names (V4: w1 gate, w3 up, w2 down).
    pub fn load_w123(ck: &Checkpoint, p: &str, hidden: usize, inter: usize) -> Result<Self> {
        Ok(Mlp {
            gate_proj: ck.linear(&format!("{p}w1.weight"), inter, hidden)?,
            up_proj: ck.linear(&format!("{p}w3.weight"), inter, hidden)?,
            down_proj: ck.linear(&format!("{p}w2.weight"), hidden, inter)?,
        })
    }

    /// down(silu(gate(x)) * up(x)) for `n` rows of x.
    pub fn forward(&self, x: &[f32], n: usize) -> Vec<f32> {
        forward_many(&[(self, x, n)], None)
            .pop()
            .expect("one MLP in, one out")
    }

    pub fn matrices(&self) -> [&Matrix; 3] {
        [&self.gate_proj, &self.up_proj, &self.down_proj]
    }
}

/// `Mlp::forward` of several MLPs on their own rows in two parallel passes (gate and up of all,
/// then down of all), so the active experts of a MoE layer share the threads' fork-joins. Each
/// product is computed exactly as alone. With `limit` (V4's `swiglu_limit`) the gate is clamped
/// to at most `limit` and the up projection to [-limit, limit] before the product.
pub fn forward_many(jobs: &[(&Mlp, &[f32], usize)], limit: Option<f32>) -> Vec<Vec<f32>> {
    let mut gs: Vec<Vec<f32>> = jobs
        .iter()
        .map(|(m, _, n)| vec![0f32; n * m.gate_proj.rows])
        .collect();
    let mut us = gs.clone();
    let mut products = Vec::with_capacity(2 * jobs.len());
    for ((&(m, x, n), g), u) in jobs.iter().zip(&mut gs).zip(&mut us) {
        products.push(Product::new(x, n, &m.gate_proj, g));
        products.push(Product::new(x, n, &m.up_proj, u));
    }
    matmul_batch(products);
    if let Some(l) = limit {
        gs.iter_mut().flatten().for_each(|g| *g = g.min(l));
        us.iter_mut().flatten().for_each(|u| *u = u.clamp(-l, l));
    }
    for (g, u) in gs.iter_mut().zip(&us) {
        swiglu(g, u);
    }
    let mut ys: Vec<Vec<f32>> = jobs
        .iter()
        .map(|(m, _, n)| vec![0f32; n * m.down_proj.rows])
        .collect();
    matmul_batch(
        jobs.iter()
            .zip(&gs)
            .zip(&mut ys)
            .map(|((&(m, _, n), g), y)| Product::new(g, n, &m.down_proj, y))
            .collect(),
    );
    ys
}

/// sqrt(softplus(x)), softplus as torch computes it (x itself past its threshold of 20).
pub fn sqrt_softplus(x: f32) -> f32 {
    let sp = if x > 20.0 { x } else { x.exp().ln_1p() };
    sp.sqrt()
}

/// Weights of the experts a hash-routed token is sent to (V4's `tid2eid`): their scores,
/// renormalised and scaled as the scored router's are.
pub fn route_hash(logits: &[f32], experts: &[u32], m: &MoeConfig) -> Vec<(usize, f32)> {
    let score = |l: f32| match m.scoring_func {
        ScoringFunc::SqrtSoftplus => sqrt_softplus(l),
        ScoringFunc::Sigmoid => sigmoid(l),
        ScoringFunc::Softmax => unreachable!("V4 configs refuse softmax scoring"),
    };
    let w: Vec<f32> = experts.iter().map(|&e| score(logits[e as usize])).collect();
    let s: f32 = w.iter().sum::<f32>() + 1e-20;
    let scale = m.routed_scaling_factor as f32;
    experts
        .iter()
        .zip(w)
        .map(|(&e, w)| (e as usize, w / s * scale))
        .collect()
}

/// Indices of the `k` largest values, largest first (ties: lower index first).
fn top_k(v: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&a, &b| v[b].total_cmp(&v[a]).then(a.cmp(&b)));
    idx.truncate(k);
    idx
}

/// Experts and weights for one token from its router logits (spec §3.3, §3.4).
/// The bias (`e_score_correction_bias`) only steers selection; weights come from unbiased scores.
/// Experts of discarded groups are masked with -inf, never 0.
pub fn route(logits: &[f32], bias: Option<&[f32]>, m: &MoeConfig) -> Vec<(usize, f32)> {
    let e_n = logits.len();
    let mut scores = logits.to_vec();
    match m.scoring_func {
        ScoringFunc::Softmax => softmax(&mut scores),
        ScoringFunc::Sigmoid => scores.iter_mut().for_each(|s| *s = sigmoid(*s)),
        ScoringFunc::SqrtSoftplus => scores.iter_mut().for_each(|s| *s = sqrt_softplus(*s)),
    }
    let choice: Vec<f32> = match (m.topk_method, bias) {
        (TopkMethod::NoauxTc, Some(b)) => scores.iter().zip(b).map(|(s, b)| s + b).collect(),
        _ => scores.clone(),
    };
    let picked = match m.topk_method {
        TopkMethod::Greedy => top_k(&choice, m.num_experts_per_tok),
        TopkMethod::GroupLimitedGreedy | TopkMethod::NoauxTc => {
            let gs = e_n / m.n_group;
            let group_scores: Vec<f32> = choice
                .chunks_exact(gs)
                .map(|g| {
                    if m.topk_method == TopkMethod::NoauxTc {
                        top_k(g, 2).iter().map(|&i| g[i]).sum()
                    } else {
                        g.iter().copied().fold(f32::NEG_INFINITY, f32::max)
                    }
                })
                .collect();
            let mut masked = vec![f32::NEG_INFINITY; e_n];
            for g in top_k(&group_scores, m.topk_group) {
                masked[g * gs..(g + 1) * gs].copy_from_slice(&choice[g * gs..(g + 1) * gs]);
            }
            top_k(&masked, m.num_experts_per_tok)
        }
    };
    let mut w: Vec<f32> = picked.iter().map(|&i| scores[i]).collect();
    if m.norm_topk_prob {
        let s: f32 = w.iter().sum::<f32>() + 1e-20;
        w.iter_mut().for_each(|x| *x /= s);
    }
    let scale = m.routed_scaling_factor as f32;
    picked
        .into_iter()
        .zip(w)
        .map(|(i, w)| (i, w * scale))
        .collect()
}

pub struct Moe {
    /// router weight [n_routed_experts, hidden], widened to f32 at load
    pub gate: Matrix,
    pub e_score_correction_bias: Option<Vec<f32>>,
    pub experts: Vec<Mlp>,
    pub shared_experts: Option<Mlp>,
    pub cfg: MoeConfig,
    /// V4's hash routing: the experts of every token id, [vocab, num_experts_per_tok]
    pub tid2eid: Option<Vec<u32>>,
    /// V4's clamp of the SwiGLU inputs (routed and shared experts)
    pub swiglu_limit: Option<f32>,
}

impl Moe {
    pub fn load(ck: &Checkpoint, p: &str, hidden: usize, m: &MoeConfig) -> Result<Self> {
        let e_n = m.n_routed_experts;
        let g = ck.matrix(&format!("{p}gate.weight"), e_n, hidden)?;
        let gate = Matrix::from_f32(e_n, hidden, g.to_f32());
        let bias_name = format!("{p}gate.e_score_correction_bias");
        let e_score_correction_bias = match m.topk_method {
            TopkMethod::NoauxTc => {
                if !ck.has(&bias_name) {
                    bail!("tensor {bias_name} is missing: topk_method noaux_tc needs it");
                }
                Some(ck.vector(&bias_name, e_n)?)
            }
            _ => None,
        };
        let experts = (0..e_n)
            .map(|e| {
                Mlp::load(
                    ck,
                    &format!("{p}experts.{e}."),
                    hidden,
                    m.moe_intermediate_size,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let shared_experts = if m.n_shared_experts > 0 {
            Some(Mlp::load(
                ck,
                &format!("{p}shared_experts."),
                hidden,
                m.n_shared_experts * m.moe_intermediate_size,
            )?)
        } else {
            None
        };
        Ok(Moe {
            gate,
            e_score_correction_bias,
            experts,
            shared_experts,
            cfg: m.clone(),
            tid2eid: None,
            swiglu_limit: None,
        })
    }

    /// A V4 MoE block under the released names (`ffn.gate.weight` with `gate.bias` or, hash
    /// routed, `gate.tid2eid`; experts and the shared expert as w1/w2/w3).
    pub fn load_v4(
        ck: &Checkpoint,
        p: &str,
        cfg: &crate::config::ModelConfig,
        hash: bool,
        limit: f64,
    ) -> Result<Self> {
        let m = cfg.moe.as_ref().expect("a V4 config has experts");
        let (d, e_n, k) = (cfg.hidden_size, m.n_routed_experts, m.num_experts_per_tok);
        let g = ck.matrix(&format!("{p}gate.weight"), e_n, d)?;
        let gate = Matrix::from_f32(e_n, d, g.to_f32());
        let (bias, tid2eid) = if hash {
            let t = ck.indices(&format!("{p}gate.tid2eid"), cfg.vocab_size, k, e_n)?;
            (None, Some(t))
        } else {
            (Some(ck.vector(&format!("{p}gate.bias"), e_n)?), None)
        };
        let experts = (0..e_n)
            .map(|e| Mlp::load_w123(ck, &format!("{p}experts.{e}."), d, m.moe_intermediate_size))
            .collect::<Result<Vec<_>>>()?;
        Ok(Moe {
            gate,
            e_score_correction_bias: bias,
            experts,
            shared_experts: Some(Mlp::load_w123(
                ck,
                &format!("{p}shared_experts."),
                d,
                m.moe_intermediate_size,
            )?),
            cfg: m.clone(),
            tid2eid,
            swiglu_limit: Some(limit as f32),
        })
    }

    /// Routed experts of each of `n` tokens (`ids`: their token ids, which hash routing reads).
    pub fn routes(&self, x: &[f32], n: usize, ids: &[u32]) -> Vec<Vec<(usize, f32)>> {
        let e_n = self.gate.rows;
        let mut logits = vec![0f32; n * e_n];
        matmul(x, n, &self.gate, &mut logits);
        let k = self.cfg.num_experts_per_tok;
        logits
            .chunks_exact(e_n)
            .enumerate()
            .map(|(t, l)| match &self.tid2eid {
                Some(table) => {
                    let id = ids[t] as usize;
                    route_hash(l, &table[id * k..(id + 1) * k], &self.cfg)
                }
                None => route(l, self.e_score_correction_bias.as_deref(), &self.cfg),
            })
            .collect()
    }

    /// Tokens are bucketed by expert so each active expert runs once over its rows; expert
    /// outputs are accumulated in f32 in expert order, then the shared experts are added.
    pub fn forward(&self, x: &[f32], n: usize, ids: &[u32]) -> Vec<f32> {
        let d = self.gate.cols;
        let routes = self.routes(x, n, ids);
        let mut buckets: Vec<Vec<(usize, f32)>> = vec![Vec::new(); self.experts.len()];
        for (t, r) in routes.iter().enumerate() {
            for &(e, w) in r {
                buckets[e].push((t, w));
            }
        }
        // An expert that every token picked (all of them, in decode's one-token steps) reads x
        // itself: the products then share one conversion of it instead of one per copy.
        let active: Vec<(usize, Cow<[f32]>)> = buckets
            .iter()
            .enumerate()
            .filter(|(_, b)| !b.is_empty())
            .map(|(e, bucket)| {
                let all = bucket.len() == n && bucket.iter().enumerate().all(|(i, b)| b.0 == i);
                let xe = if all {
                    Cow::Borrowed(x)
                } else {
                    Cow::Owned(
                        bucket
                            .iter()
                            .flat_map(|&(t, _)| &x[t * d..(t + 1) * d])
                            .copied()
                            .collect(),
                    )
                };
                (e, xe)
            })
            .collect();
        // routed experts and the shared experts in the same passes
        let mut jobs: Vec<(&Mlp, &[f32], usize)> = active
            .iter()
            .map(|(e, xe)| (&self.experts[*e], &xe[..], buckets[*e].len()))
            .collect();
        if let Some(s) = &self.shared_experts {
            jobs.push((s, x, n));
        }
        let mut ys = forward_many(&jobs, self.swiglu_limit);
        let shared = self.shared_experts.as_ref().and_then(|_| ys.pop());
        let mut out = vec![0f32; n * d];
        for ((e, _), ye) in active.iter().zip(&ys) {
            for (i, &(t, w)) in buckets[*e].iter().enumerate() {
                axpy(w, &ye[i * d..(i + 1) * d], &mut out[t * d..(t + 1) * d]);
            }
        }
        if let Some(ys) = shared {
            out.iter_mut().zip(&ys).for_each(|(o, y)| *o += y);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(
        method: TopkMethod,
        scoring: ScoringFunc,
        e: usize,
        k: usize,
        groups: usize,
        keep: usize,
    ) -> MoeConfig {
        MoeConfig {
            n_routed_experts: e,
            n_shared_experts: 1,
            num_experts_per_tok: k,
            moe_intermediate_size: 4,
            n_group: groups,
            topk_group: keep,
            topk_method: method,
            scoring_func: scoring,
            norm_topk_prob: method == TopkMethod::NoauxTc,
            routed_scaling_factor: 2.5,
            first_k_dense_replace: 0,
            moe_layer_freq: 1,
        }
    }

    #[test]
    fn noaux_bias_selects_but_does_not_weight() {
        let m = cfg(TopkMethod::NoauxTc, ScoringFunc::Sigmoid, 4, 2, 1, 1);
        let logits = [2.0f32, 1.0, 0.0, -1.0];
        // a large bias on expert 3 makes it chosen although its score is the lowest
        let bias = [0.0f32, 0.0, 0.0, 10.0];
        let r = route(&logits, Some(&bias), &m);
        let ids: Vec<usize> = r.iter().map(|x| x.0).collect();
        assert_eq!(ids, vec![3, 0]);
        let (s3, s0) = (sigmoid(-1.0), sigmoid(2.0));
        assert!((r[0].1 - 2.5 * s3 / (s3 + s0)).abs() < 1e-6);
        assert!((r[1].1 - 2.5 * s0 / (s3 + s0)).abs() < 1e-6);
    }

    #[test]
    fn discarded_groups_are_masked_with_minus_infinity() {
        // 2 groups of 4, keep 1 group, pick 4. Kept group has all-negative biased scores; with a
        // 0.0 mask an expert of the dropped group would sneak in.
        let m = cfg(TopkMethod::NoauxTc, ScoringFunc::Sigmoid, 8, 4, 2, 1);
        let logits = [0.0f32; 8];
        let bias = [-2.0f32, -2.0, -2.0, -2.0, -3.0, -3.0, -3.0, -3.0];
        let r = route(&logits, Some(&bias), &m);
        let mut ids: Vec<usize> = r.iter().map(|x| x.0).collect();
        ids.sort();
        assert_eq!(ids, vec![0, 1, 2, 3]);
    }

    #[test]
    fn group_limited_greedy_uses_group_max() {
        let mut m = cfg(
            TopkMethod::GroupLimitedGreedy,
            ScoringFunc::Softmax,
            4,
            2,
            2,
            1,
        );
        m.routed_scaling_factor = 16.0;
        // group 0 = {0,1} has the single best expert, group 1 has the better sum
        let logits = [3.0f32, -5.0, 2.5, 2.5];
        let r = route(&logits, None, &m);
        assert_eq!(r[0].0, 0);
        assert_eq!(r[1].0, 1);
        let mut p = logits.to_vec();
        softmax(&mut p);
        assert!((r[0].1 - 16.0 * p[0]).abs() < 1e-5);
    }

    #[test]
    fn greedy_softmax_without_renormalisation() {
        let mut m = cfg(TopkMethod::Greedy, ScoringFunc::Softmax, 3, 2, 1, 1);
        m.routed_scaling_factor = 1.0;
        let logits = [1.0f32, 3.0, 2.0];
        let r = route(&logits, None, &m);
        let mut p = logits.to_vec();
        softmax(&mut p);
        assert_eq!((r[0].0, r[1].0), (1, 2));
        assert!((r[0].1 - p[1]).abs() < 1e-7 && (r[1].1 - p[2]).abs() < 1e-7);
    }
}
