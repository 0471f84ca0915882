//! Rooflines per phase: a step costs its FLOPs at the chip's peak or its bytes at the chip's
//! bandwidth (the larger where the chip overlaps them, the sum where it does not), and the
//! interconnect traffic of splitting the model over several chips.
//!
//! The split is DeepSeek's deployment shape: inside a node the always-on weights (attention,
//! dense and shared FFNs, head) are tensor-parallel over its chips; across nodes they are
//! replicated and each node serves its share of the sequences; the routed experts are
//! expert-parallel over every chip.

use crate::{figures::Figures, hardware::Chip, Dtype};
use anyhow::{bail, Result};
use serde::Serialize;

/// Memory left for the KV cache is this share of the chips' memory less the weights; the rest
/// holds activations, the runtime and fragmentation.
pub const USABLE_MEMORY: f64 = 0.9;

#[derive(Clone, Debug)]
pub struct Setup {
    pub chip: Chip,
    pub gpus: usize,
    pub dtype: Dtype,
    pub kv_dtype: Dtype,
}

/// One forward step as one chip sees it.
#[derive(Clone, Debug, Serialize)]
pub struct Step {
    /// tokens of the whole step (all chips)
    pub tokens: f64,
    pub flops_per_chip: f64,
    pub weight_bytes_per_chip: f64,
    pub kv_bytes_per_chip: f64,
    pub link_bytes_per_chip: f64,
    pub network_bytes_per_chip: f64,
    pub compute_s: f64,
    pub memory_s: f64,
    pub comm_s: f64,
    pub seconds: f64,
    pub bound: &'static str,
}

impl Setup {
    /// Chips of one tensor-parallel group (one node at most).
    pub fn tp(&self) -> usize {
        self.gpus.min(self.chip.chips_per_node).max(1)
    }

    pub fn nodes(&self) -> usize {
        self.gpus.div_ceil(self.tp())
    }

    pub fn validate(&self) -> Result<()> {
        if self.gpus == 0 {
            bail!("--gpus must be at least 1");
        }
        let node = self.chip.chips_per_node;
        let linked =
            self.chip.link_gb_s > 0.0 && (self.gpus <= node || self.chip.network_gb_s > 0.0);
        if self.gpus > 1 && !linked {
            bail!(
                "--gpus {}: the `{}` profile has no interconnect figures, so it models one chip",
                self.gpus,
                self.chip.name
            );
        }
        if self.gpus > node && !self.gpus.is_multiple_of(node) {
            bail!(
                "--gpus {}: past one node ({node} x {}) the count must be whole nodes",
                self.gpus,
                self.chip.name
            );
        }
        Ok(())
    }

    /// Bytes of weights each chip holds.
    pub fn weight_bytes_per_chip(&self, f: &Figures) -> f64 {
        let routed = f.routed_bytes_total(self.dtype);
        (f.weight_bytes_total(self.dtype) - routed) / self.tp() as f64 + routed / self.gpus as f64
    }

    /// Bytes each chip sends per step over `tokens` tokens, (inside its node, across nodes):
    /// one ring all-reduce of the hidden state per tensor-parallel block, and the all-to-all
    /// dispatch and combine of every token to its K experts.
    pub fn comm_bytes(&self, f: &Figures, tokens: f64) -> (f64, f64) {
        let (g, tp, nodes) = (self.gpus as f64, self.tp() as f64, self.nodes() as f64);
        if g <= 1.0 {
            return (0.0, 0.0);
        }
        let c = &f.config;
        let d = c.hidden_size as f64;
        let act = 2.0; // bf16 activations
                       // each node's tensor-parallel group reduces the hidden states of its own tokens
        let all_reduce = 2.0 * (tp - 1.0) / tp * tokens / nodes * d * act;
        let (mut link, mut net) = (0.0, 0.0);
        for i in 0..c.num_hidden_layers {
            link += all_reduce; // attention output
            match &c.moe {
                Some(m) if c.is_moe_layer(i) => {
                    // V3 dispatches in FP8 when the weights are FP8, combines in BF16
                    let dispatch = if self.dtype == Dtype::Fp8 { 1.0 } else { act };
                    let per_token = m.num_experts_per_tok as f64 * d * (dispatch + act);
                    // a chip sends its share of the tokens to experts spread evenly on all chips
                    link += tokens / g * per_token * (tp - 1.0) / g;
                    net += tokens / g * per_token * (g - tp) / g;
                    if m.n_shared_experts > 0 {
                        link += all_reduce;
                    }
                }
                _ => link += all_reduce,
            }
        }
        (link, net)
    }

    /// `linear` FLOPs run at the rate of the weights' format; `attention` FLOPs (activations
    /// against the cache) at the BF16 rate whatever the weights are. Byte and FLOP counts are of
    /// the whole step, except `dense_bytes`: what one node reads of its always-on weights, split over
    /// its tensor-parallel chips; routed bytes are split over every chip.
    #[allow(clippy::too_many_arguments)]
    fn step(
        &self,
        tokens: f64,
        linear: f64,
        attention: f64,
        dense_bytes: f64,
        routed_bytes: f64,
        kv_bytes: f64,
        comm: (f64, f64),
    ) -> Step {
        let (g, tp) = (self.gpus as f64, self.tp() as f64);
        let compute_s =
            (linear / self.chip.flops(self.dtype) + attention / self.chip.flops(Dtype::Bf16)) / g;
        let weight_bytes = dense_bytes / tp + routed_bytes / g;
        let kv = kv_bytes / g;
        let memory_s =
            weight_bytes / self.chip.weight_bandwidth(self.dtype) + kv / self.chip.bandwidth();
        let (link, net) = comm;
        let comm_s = f64::max(
            if link > 0.0 {
                link / (self.chip.link_gb_s * 1e9)
            } else {
                0.0
            },
            if net > 0.0 {
                net / (self.chip.network_gb_s * 1e9)
            } else {
                0.0
            },
        );
        // a chip that overlaps also hides communication behind work (two micro-batches in
        // flight, as DeepSeek's deployment does); a CPU does one thing after another
        let seconds = if self.chip.overlap {
            compute_s.max(memory_s).max(comm_s)
        } else {
            compute_s + memory_s + comm_s
        };
        let bound = if comm_s > compute_s.max(memory_s) {
            "interconnect"
        } else if compute_s >= memory_s {
            "compute"
        } else {
            "memory bandwidth"
        };
        Step {
            tokens,
            flops_per_chip: (linear + attention) / g,
            weight_bytes_per_chip: weight_bytes,
            kv_bytes_per_chip: kv,
            link_bytes_per_chip: link,
            network_bytes_per_chip: net,
            compute_s,
            memory_s,
            comm_s,
            seconds,
            bound,
        }
    }

    /// One decode step of `batch` sequences at context `ctx`: the weights are read once for the
    /// batch, each sequence's KV cache is read whole.
    pub fn decode(&self, f: &Figures, batch: f64, ctx: f64) -> Step {
        // (V3.2 reads its attended rows and every indexer key: per position of context, that
        // much on average)
        self.decode_with_kv(f, batch, ctx, f.kv_bytes_read(ctx, self.kv_dtype) / ctx)
    }

    /// [`Setup::decode`] with another attention's cache size (MHA or GQA of the same heads).
    pub fn decode_with_kv(&self, f: &Figures, batch: f64, ctx: f64, kv_per_token: f64) -> Step {
        let nodes = self.nodes() as f64;
        self.step(
            batch,
            batch * f.linear_flops(),
            batch * f.attn_flops_absorbed(ctx),
            // every node reads its always-on weights for its own share of the sequences
            f.dense_bytes_read(batch / nodes, self.dtype),
            f.routed_bytes_read(batch, self.dtype),
            batch * ctx * kv_per_token,
            self.comm_bytes(f, batch),
        )
    }

    /// Prefill of one `p`-token prompt in one pass (on one node's worth of attention).
    pub fn prefill(&self, f: &Figures, p: f64) -> Step {
        let nodes = self.nodes() as f64;
        self.step(
            p,
            f.prefill_linear_flops(p),
            f.prefill_flops(p) - f.prefill_linear_flops(p),
            f.dense_bytes_read(p / nodes, self.dtype),
            f.routed_bytes_read(p, self.dtype),
            p * f.kv_per_token(self.kv_dtype).cached as f64,
            self.comm_bytes(f, p),
        )
    }

    /// Bytes free for the KV cache on all chips together (negative: the weights do not fit).
    pub fn kv_budget(&self, f: &Figures) -> f64 {
        self.gpus as f64
            * (self.chip.memory_gb * 1e9 * USABLE_MEMORY - self.weight_bytes_per_chip(f))
    }

    /// The most sequences of `ctx` tokens whose KV (`kv_per_token` bytes) fits beside the weights.
    pub fn max_batch(&self, f: &Figures, ctx: f64, kv_per_token: f64) -> u64 {
        let budget = self.kv_budget(f);
        if budget <= 0.0 {
            return 0;
        }
        (budget / (ctx * kv_per_token)).floor() as u64
    }

    /// The smallest batch at which decode at `ctx` stops being bound by memory, if any: KV
    /// reads grow with the batch as compute does, so at long contexts it never happens.
    pub fn compute_bound_batch(&self, f: &Figures, ctx: f64) -> Option<u64> {
        let bound = |b: f64| {
            let s = self.decode(f, b, ctx);
            s.compute_s >= s.memory_s
        };
        let mut hi = 1u64;
        while !bound(hi as f64) {
            hi *= 2;
            if hi > 1 << 24 {
                return None;
            }
        }
        let mut lo = hi / 2; // not bound at lo (or lo == 0)
        while hi - lo > 1 {
            let mid = (lo + hi) / 2;
            if bound(mid as f64) {
                hi = mid;
            } else {
                lo = mid;
            }
        }
        Some(hi)
    }

    /// The fewest chips (1, 2, 4, ... then whole nodes) whose memory holds the weights with room
    /// for `min_kv` bytes of cache.
    pub fn chips_needed(chip: &Chip, f: &Figures, dtype: Dtype, min_kv: f64) -> Result<usize> {
        let mut gpus = 1;
        while gpus <= 1024 {
            let s = Setup {
                chip: chip.clone(),
                gpus,
                dtype,
                kv_dtype: Dtype::Bf16,
            };
            if s.kv_budget(f) >= min_kv {
                return Ok(gpus);
            }
            gpus = if gpus < chip.chips_per_node {
                (gpus * 2).min(chip.chips_per_node)
            } else {
                gpus + chip.chips_per_node
            };
        }
        bail!("the model does not fit on 1024 {}", chip.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hardware::find;
    use whale_model::synth::Preset;

    fn setup(chip: &str, gpus: usize) -> Setup {
        Setup {
            chip: find(chip).unwrap(),
            gpus,
            dtype: Dtype::Fp8,
            kv_dtype: Dtype::Bf16,
        }
    }

    #[test]
    fn decode_is_bandwidth_bound_until_the_batch_is_large() {
        let f = Figures::new(Preset::V3.config());
        let s = setup("h100", 16);
        let one = s.decode(&f, 1.0, 1024.0);
        assert_eq!(one.bound, "memory bandwidth");
        // batch 1: about 37 GB read once on 16 chips of 3.35 TB/s
        // batch 1 on two nodes: one node holds the sequence and reads its always-on weights
        // over its 8 chips; the routed experts it touches are spread over all 16
        let expect = f.dense_bytes_read(0.5, Dtype::Fp8) / 8.0 / 3.35e12
            + f.routed_bytes_read(1.0, Dtype::Fp8) / 16.0 / 3.35e12;
        assert!((one.memory_s / expect - 1.0).abs() < 0.01);
        let b = s.compute_bound_batch(&f, 256.0).unwrap();
        assert!(b > 64, "compute-bound from batch {b}");
        let (at, below) = (
            s.decode(&f, b as f64, 256.0),
            s.decode(&f, (b - 1) as f64, 256.0),
        );
        assert!(at.compute_s >= at.memory_s && below.compute_s < below.memory_s);
        // absorbed MLA does ~240 FLOPs per cache byte, below the H100's BF16 ridge (~295): at
        // long contexts the KV reads grow as fast as the FLOPs and decode never turns
        assert_eq!(s.compute_bound_batch(&f, 32768.0), None);
    }

    #[test]
    fn the_h800_pays_for_its_cut_nvlink() {
        let f = Figures::new(Preset::V3.config());
        let (h100, h800) = (setup("h100", 8), setup("h800", 8));
        let (a, b) = (h100.decode(&f, 64.0, 4096.0), h800.decode(&f, 64.0, 4096.0));
        assert_eq!(a.link_bytes_per_chip, b.link_bytes_per_chip);
        assert!(b.comm_s > 2.0 * a.comm_s);
        // at batch 64 the all-to-all hides behind reading the weights on both
        assert_eq!(a.seconds, b.seconds);
        // at a large batch it does not on the H800
        let (a, b) = (
            h100.decode(&f, 2048.0, 128.0),
            h800.decode(&f, 2048.0, 128.0),
        );
        assert_eq!(b.bound, "interconnect");
        assert!(
            b.seconds > 1.3 * a.seconds,
            "{} vs {}",
            b.seconds,
            a.seconds
        );
        // across nodes the network carries part of the all-to-all
        let two = setup("h100", 16).decode(&f, 64.0, 4096.0);
        assert!(two.network_bytes_per_chip > 0.0 && a.network_bytes_per_chip == 0.0);
    }

    #[test]
    fn memory_bounds_the_batch() {
        let f = Figures::new(Preset::V3.config());
        // 671B in FP8 does not fit on 8 H100s (640 GB), fits on 8 H200s
        assert_eq!(
            Setup::chips_needed(&find("h100").unwrap(), &f, Dtype::Fp8, 1e9).unwrap(),
            16
        );
        let h200 = setup("h200", 8);
        let kv = f.kv_per_token(Dtype::Bf16);
        let mla = h200.max_batch(&f, 32768.0, kv.mla as f64);
        let mha = h200.max_batch(&f, 32768.0, kv.mha as f64);
        assert!(mla > 100 && mha <= 2, "MLA {mla} sequences, MHA {mha}");
        assert_eq!(setup("h100", 8).max_batch(&f, 1024.0, kv.mla as f64), 0);
    }
}
