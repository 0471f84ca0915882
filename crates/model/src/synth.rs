//! Random-weight checkpoints with the exact shapes and hub layout of real models
//! (config.json, sharded safetensors + index, tokenizer), so that benchmarks and tests can run
//! where a real checkpoint would be used. No hub is reachable from here.

use anyhow::{bail, Context, Result};
use half::bf16;
use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;
use serde_json::json;
use std::io::Write;
use std::path::Path;
use whale_kernels::fp8::f32_to_e4m3;

use crate::config::{
    GqaConfig, Llama3Rope, ModelConfig, ModelType, MoeConfig, ScoringFunc, TopkMethod, Yarn,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Preset {
    V2Lite,
    V3,
    V3Fp8,
    /// DeepSeek-V3.2 (V3 plus the sparse attention's indexer)
    V32,
    V32Fp8,
    /// DeepSeek-V4-Flash and DeepSeek-V4-Pro (bf16 layout)
    V4Flash,
    V4Pro,
    /// DeepSeek-R1-Distill-Qwen-1.5B
    DistillQwen1_5B,
    /// DeepSeek-R1-Distill-Qwen-7B
    DistillQwen7B,
    /// DeepSeek-R1-Distill-Llama-8B
    DistillLlama8B,
    /// DeepSeek-R1-0528-Qwen3-8B
    Qwen3_8B0528,
}

/// `--like` names, in the order `whale synth --help` lists them.
pub const PRESETS: &str = "v2-lite, v3, v3-fp8, v3.2, v3.2-fp8, v4-flash, v4-pro, r1-distill-qwen-1.5b, r1-distill-qwen-7b, r1-distill-llama-8b, r1-0528-qwen3-8b";

impl Preset {
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "v2-lite" => Preset::V2Lite,
            "v3" => Preset::V3,
            "v3-fp8" => Preset::V3Fp8,
            "v3.2" => Preset::V32,
            "v3.2-fp8" => Preset::V32Fp8,
            "v4-flash" => Preset::V4Flash,
            "v4-pro" => Preset::V4Pro,
            "r1-distill-qwen-1.5b" => Preset::DistillQwen1_5B,
            "r1-distill-qwen-7b" => Preset::DistillQwen7B,
            "r1-distill-llama-8b" => Preset::DistillLlama8B,
            "r1-0528-qwen3-8b" => Preset::Qwen3_8B0528,
            other => bail!("unknown model shape `{other}` (known: {PRESETS})"),
        })
    }

    /// The released model's config (spec §1.2).
    pub fn config(self) -> ModelConfig {
        match self {
            Preset::V4Flash | Preset::V4Pro => {
                let mut v: serde_json::Value =
                    serde_json::from_str(V4_FLASH).expect("a JSON preset");
                if self == Preset::V4Pro {
                    let changes: serde_json::Value =
                        serde_json::from_str(V4_PRO_CHANGES).expect("a JSON preset");
                    for (k, x) in changes.as_object().expect("an object") {
                        v[k] = x.clone();
                    }
                }
                ModelConfig::from_json(&v).expect("a valid preset")
            }
            Preset::V2Lite => ModelConfig {
                model_type: ModelType::DeepseekV2,
                vocab_size: 102400,
                hidden_size: 2048,
                intermediate_size: 10944,
                num_hidden_layers: 27,
                num_attention_heads: 16,
                q_lora_rank: None,
                kv_lora_rank: 512,
                qk_nope_head_dim: 128,
                qk_rope_head_dim: 64,
                v_head_dim: 128,
                moe: Some(MoeConfig {
                    n_routed_experts: 64,
                    n_shared_experts: 2,
                    num_experts_per_tok: 6,
                    moe_intermediate_size: 1408,
                    n_group: 1,
                    topk_group: 1,
                    topk_method: TopkMethod::Greedy,
                    scoring_func: ScoringFunc::Softmax,
                    norm_topk_prob: false,
                    routed_scaling_factor: 1.0,
                    first_k_dense_replace: 1,
                    moe_layer_freq: 1,
                }),
                rope_theta: 10000.0,
                yarn: Some(Yarn {
                    factor: 40.0,
                    original_max_position_embeddings: 4096,
                    beta_fast: 32.0,
                    beta_slow: 1.0,
                    truncate: true,
                    mscale: Some(0.707),
                    mscale_all_dim: Some(0.707),
                    attention_factor: None,
                }),
                llama3: None,
                gqa: None,
                max_position_embeddings: 163840,
                rms_norm_eps: 1e-6,
                num_nextn_predict_layers: 0,
                fp8_block: None,
                bos_token_id: Some(0),
                eos_token_ids: vec![1],
                tie_word_embeddings: false,
                rope_interleave: true,
                indexer: None,
                v4: None,
            },
            Preset::V3 | Preset::V3Fp8 | Preset::V32 | Preset::V32Fp8 => ModelConfig {
                model_type: if matches!(self, Preset::V32 | Preset::V32Fp8) {
                    ModelType::DeepseekV32
                } else {
                    ModelType::DeepseekV3
                },
                vocab_size: 129280,
                hidden_size: 7168,
                intermediate_size: 18432,
                num_hidden_layers: 61,
                num_attention_heads: 128,
                q_lora_rank: Some(1536),
                kv_lora_rank: 512,
                qk_nope_head_dim: 128,
                qk_rope_head_dim: 64,
                v_head_dim: 128,
                moe: Some(MoeConfig {
                    n_routed_experts: 256,
                    n_shared_experts: 1,
                    num_experts_per_tok: 8,
                    moe_intermediate_size: 2048,
                    n_group: 8,
                    topk_group: 4,
                    topk_method: TopkMethod::NoauxTc,
                    scoring_func: ScoringFunc::Sigmoid,
                    norm_topk_prob: true,
                    routed_scaling_factor: 2.5,
                    first_k_dense_replace: 3,
                    moe_layer_freq: 1,
                }),
                rope_theta: 10000.0,
                yarn: Some(Yarn {
                    factor: 40.0,
                    original_max_position_embeddings: 4096,
                    beta_fast: 32.0,
                    beta_slow: 1.0,
                    truncate: true,
                    mscale: Some(1.0),
                    mscale_all_dim: Some(1.0),
                    attention_factor: None,
                }),
                llama3: None,
                gqa: None,
                max_position_embeddings: 163840,
                rms_norm_eps: 1e-6,
                num_nextn_predict_layers: 1,
                fp8_block: if matches!(self, Preset::V3Fp8 | Preset::V32Fp8) {
                    Some([128, 128])
                } else {
                    None
                },
                bos_token_id: Some(0),
                eos_token_ids: vec![1],
                tie_word_embeddings: false,
                rope_interleave: true,
                // DeepSeek-V3.2-Exp's config.json
                indexer: matches!(self, Preset::V32 | Preset::V32Fp8).then_some(
                    crate::config::IndexerConfig {
                        index_n_heads: 64,
                        index_head_dim: 128,
                        index_topk: 2048,
                    },
                ),
                v4: None,
            },
            Preset::DistillQwen1_5B => dense(ModelType::Qwen2, 151936, 1536, 8960, 28, 12, 2, 128),
            Preset::DistillQwen7B => dense(ModelType::Qwen2, 152064, 3584, 18944, 28, 28, 4, 128),
            Preset::DistillLlama8B => ModelConfig {
                rope_theta: 500000.0,
                llama3: Some(Llama3Rope {
                    factor: 8.0,
                    low_freq_factor: 1.0,
                    high_freq_factor: 4.0,
                    original_max_position_embeddings: 8192,
                }),
                rms_norm_eps: 1e-5,
                ..dense(ModelType::Llama, 128256, 4096, 14336, 32, 32, 8, 128)
            },
            Preset::Qwen3_8B0528 => ModelConfig {
                rope_theta: 1000000.0,
                yarn: Some(Yarn {
                    factor: 4.0,
                    original_max_position_embeddings: 32768,
                    beta_fast: 32.0,
                    beta_slow: 1.0,
                    truncate: true,
                    mscale: None,
                    mscale_all_dim: None,
                    attention_factor: None,
                }),
                ..dense(ModelType::Qwen3, 151936, 4096, 12288, 36, 32, 8, 128)
            },
        }
    }
}

/// A distill's config as released: GQA with the model type's biases and norms, 128K context.
#[allow(clippy::too_many_arguments)]
fn dense(
    model_type: ModelType,
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: usize,
    head_dim: usize,
) -> ModelConfig {
    ModelConfig {
        model_type,
        vocab_size,
        hidden_size,
        intermediate_size,
        num_hidden_layers,
        num_attention_heads,
        q_lora_rank: None,
        kv_lora_rank: 0,
        qk_nope_head_dim: 0,
        qk_rope_head_dim: 0,
        v_head_dim: 0,
        moe: None,
        rope_theta: 10000.0,
        yarn: None,
        llama3: None,
        gqa: Some(GqaConfig {
            num_key_value_heads,
            head_dim,
            qkv_bias: model_type == ModelType::Qwen2,
            o_bias: false,
            qk_norm: model_type == ModelType::Qwen3,
        }),
        max_position_embeddings: 131072,
        rms_norm_eps: 1e-6,
        num_nextn_predict_layers: 0,
        fp8_block: None,
        bos_token_id: Some(0),
        eos_token_ids: vec![1],
        tie_word_embeddings: false,
        rope_interleave: false,
        indexer: None,
        v4: None,
    }
}

/// DeepSeek-V4-Flash's config.json (its released values; the weights' FP8/FP4 quantisation left
/// out: synth writes bf16).
/// DeepSeek-V4-Flash's config.json as released (revision 60d8d70, `expert_dtype` and the FP8
/// `quantization_config` left out: synth writes bf16). `compress_ratios` has an entry more than
/// the layers: the MTP module's.
const V4_FLASH: &str = r#"{
  "architectures": ["DeepseekV4ForCausalLM"], "model_type": "deepseek_v4",
  "vocab_size": 129280, "hidden_size": 4096, "num_hidden_layers": 43,
  "num_attention_heads": 64, "num_key_value_heads": 1, "head_dim": 512,
  "qk_rope_head_dim": 64, "q_lora_rank": 1024, "o_groups": 8, "o_lora_rank": 1024,
  "n_routed_experts": 256, "n_shared_experts": 1, "num_experts_per_tok": 6,
  "moe_intermediate_size": 2048, "num_hash_layers": 3, "scoring_func": "sqrtsoftplus",
  "topk_method": "noaux_tc", "norm_topk_prob": true, "routed_scaling_factor": 1.5,
  "swiglu_limit": 10.0, "sliding_window": 128, "index_n_heads": 64, "index_head_dim": 128,
  "index_topk": 512, "hc_mult": 4, "hc_sinkhorn_iters": 20, "hc_eps": 1e-6,
  "rope_theta": 10000, "compress_rope_theta": 160000,
  "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 16,
                   "original_max_position_embeddings": 65536, "type": "yarn"},
  "max_position_embeddings": 1048576, "rms_norm_eps": 1e-6, "num_nextn_predict_layers": 1,
  "bos_token_id": 0, "eos_token_id": 1, "tie_word_embeddings": false,
  "compress_ratios": [0, 0, 4, 128, 4, 128, 4, 128, 4, 128, 4, 128, 4, 128, 4, 128, 4, 128, 4, 128, 4, 128, 4, 128, 4, 128, 4, 128, 4, 128, 4, 128, 4, 128, 4, 128, 4, 128, 4, 128, 4, 128, 4, 0]
}"#;

/// What DeepSeek-V4-Pro's config.json as released (revision b5968e9) changes in V4_FLASH.
const V4_PRO_CHANGES: &str = r#"{
  "hidden_size": 7168, "num_hidden_layers": 61, "num_attention_heads": 128, "q_lora_rank": 1536,
  "o_groups": 16, "n_routed_experts": 384, "moe_intermediate_size": 3072,
  "routed_scaling_factor": 2.5, "index_topk": 1024,
  "compress_ratios": [128, 128, 4, 128, 4, 128, 4, 128, 4, 128, 4, 128, 4, 128, 4, 128, 4, 128, 4, 128, 4, 128, 4, 128, 4, 128, 4, 128, 4, 128, 4, 128, 4, 128, 4, 128, 4, 128, 4, 128, 4, 128, 4, 128, 4, 128, 4, 128, 4, 128, 4, 128, 4, 128, 4, 128, 4, 128, 4, 128, 4, 0]
}"#;

/// Changes to a preset's shape, to make it small enough to run here.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub layers: Option<usize>,
    pub experts: Option<usize>,
    pub vocab: Option<usize>,
    pub hidden: Option<usize>,
    pub mtp: Option<usize>,
}

pub fn shaped_config(preset: Preset, o: &Overrides) -> Result<ModelConfig> {
    let mut c = preset.config();
    if let Some(l) = o.layers {
        if l == 0 {
            bail!("--layers must be at least 1");
        }
        c.num_hidden_layers = l;
        if let Some(v) = &mut c.v4 {
            // the first `l` layers' kinds; at least one of each compressed kind when 3 or more
            // layers are asked for, so a bench model covers every attention
            v.layer_types.truncate(l);
            v.hash_layers.truncate(l);
            use crate::config::V4Attention::*;
            if l >= 3 {
                v.layer_types = (0..l).map(|i| [Sliding, Csa, Hca][i % 3]).collect();
            }
        }
        if let Some(m) = &mut c.moe {
            // keep at least one MoE layer
            m.first_k_dense_replace = m.first_k_dense_replace.min(l - 1);
        }
    }
    if let Some(v) = o.vocab {
        if v < 384 {
            bail!("--vocab must be at least 384 (the bundled tokenizer's size)");
        }
        c.vocab_size = v;
    }
    if let Some(h) = o.hidden {
        if h == 0 {
            bail!("--hidden must be positive");
        }
        c.hidden_size = h;
    }
    if let Some(k) = o.mtp {
        c.num_nextn_predict_layers = k;
    }
    if let (Some(e), Some(m)) = (o.experts, &mut c.moe) {
        if e == 0 {
            bail!("--experts must be positive");
        }
        // keep the group structure where it divides; otherwise collapse to one group
        if e % m.n_group != 0 {
            m.n_group = 1;
            m.topk_group = 1;
        }
        let reachable = m.topk_group * e / m.n_group;
        m.num_experts_per_tok = m.num_experts_per_tok.min(reachable);
        m.n_routed_experts = e;
    }
    // re-check through the parser so a synthetic config is always one whale itself accepts
    ModelConfig::from_json(&c.to_hub_json()).context("the requested shape is not a valid config")
}

#[derive(Clone, Copy, Debug)]
enum Init {
    /// uniform with this standard deviation
    Uniform(f32),
    /// 1 + small noise (norm weights)
    NearOne,
    /// V4's `tid2eid` [vocab, k]: k distinct experts of `experts` per token, stored as I32
    Experts(usize),
}

struct Spec {
    name: String,
    shape: Vec<usize>,
    init: Init,
    fp8: bool,
}

/// A norm weight of `n` values (near one) pushed to `v`.
fn norm(v: &mut Vec<Spec>, name: String, n: usize) {
    v.push(Spec {
        name,
        shape: vec![n],
        init: Init::NearOne,
        fp8: false,
    })
}

/// Name and shape of every tensor of a checkpoint of `cfg` in hub naming (no FP8 scales), in
/// the order synth writes them: what a trainer creates and saves.
pub fn tensor_shapes(cfg: &ModelConfig) -> Vec<(String, Vec<usize>)> {
    tensor_specs(cfg)
        .into_iter()
        .map(|s| (s.name, s.shape))
        .collect()
}

/// Every tensor of the checkpoint in hub naming.
fn tensor_specs(c: &ModelConfig) -> Vec<Spec> {
    if let Some(v4) = &c.v4 {
        return v4_specs(c, v4);
    }
    let mut v = Vec::new();
    let d = c.hidden_size;
    let h = c.num_attention_heads;
    let fp8 = c.fp8_block.is_some();
    let lin = |v: &mut Vec<Spec>, name: String, rows: usize, cols: usize, quant: bool| {
        v.push(Spec {
            name,
            shape: vec![rows, cols],
            init: Init::Uniform(1.0 / (cols as f32).sqrt()),
            fp8: quant && fp8,
        })
    };
    let bias = |v: &mut Vec<Spec>, name: String, n: usize| {
        v.push(Spec {
            name,
            shape: vec![n],
            init: Init::Uniform(0.1),
            fp8: false,
        })
    };
    let mlp = |v: &mut Vec<Spec>, p: &str, inter: usize| {
        lin(v, format!("{p}gate_proj.weight"), inter, d, true);
        lin(v, format!("{p}up_proj.weight"), inter, d, true);
        lin(v, format!("{p}down_proj.weight"), d, inter, true);
    };
    let layer = |v: &mut Vec<Spec>, i: usize, moe: bool| {
        let p = format!("model.layers.{i}.");
        norm(v, format!("{p}input_layernorm.weight"), d);
        norm(v, format!("{p}post_attention_layernorm.weight"), d);
        let a = format!("{p}self_attn.");
        if let Some(g) = &c.gqa {
            let (q, kv) = (h * g.head_dim, g.num_key_value_heads * g.head_dim);
            for (proj, rows) in [("q_proj", q), ("k_proj", kv), ("v_proj", kv)] {
                lin(v, format!("{a}{proj}.weight"), rows, d, true);
                if g.qkv_bias {
                    bias(v, format!("{a}{proj}.bias"), rows);
                }
            }
            lin(v, format!("{a}o_proj.weight"), d, q, true);
            if g.o_bias {
                bias(v, format!("{a}o_proj.bias"), d);
            }
            if g.qk_norm {
                norm(v, format!("{a}q_norm.weight"), g.head_dim);
                norm(v, format!("{a}k_norm.weight"), g.head_dim);
            }
            mlp(v, &format!("{p}mlp."), c.intermediate_size);
            return;
        }
        let dqk = c.qk_head_dim();
        match c.q_lora_rank {
            Some(r) => {
                lin(v, format!("{a}q_a_proj.weight"), r, d, true);
                norm(v, format!("{a}q_a_layernorm.weight"), r);
                lin(v, format!("{a}q_b_proj.weight"), h * dqk, r, true);
            }
            None => lin(v, format!("{a}q_proj.weight"), h * dqk, d, true),
        }
        lin(
            v,
            format!("{a}kv_a_proj_with_mqa.weight"),
            c.kv_lora_rank + c.qk_rope_head_dim,
            d,
            true,
        );
        norm(v, format!("{a}kv_a_layernorm.weight"), c.kv_lora_rank);
        lin(
            v,
            format!("{a}kv_b_proj.weight"),
            h * (c.qk_nope_head_dim + c.v_head_dim),
            c.kv_lora_rank,
            true,
        );
        lin(v, format!("{a}o_proj.weight"), d, h * c.v_head_dim, true);
        if let (Some(ix), Some(r)) = (&c.indexer, c.q_lora_rank) {
            let (n, di) = (ix.index_n_heads, ix.index_head_dim);
            let x = format!("{a}indexer.");
            lin(v, format!("{x}wq_b.weight"), n * di, r, true);
            lin(v, format!("{x}wk.weight"), di, d, true);
            norm(v, format!("{x}k_norm.weight"), di);
            bias(v, format!("{x}k_norm.bias"), di);
            // bf16 in the FP8 release, as the router is
            lin(v, format!("{x}weights_proj.weight"), n, d, false);
        }
        match (&c.moe, moe) {
            (Some(m), true) => {
                lin(
                    v,
                    format!("{p}mlp.gate.weight"),
                    m.n_routed_experts,
                    d,
                    false,
                );
                if m.topk_method == TopkMethod::NoauxTc {
                    v.push(Spec {
                        name: format!("{p}mlp.gate.e_score_correction_bias"),
                        shape: vec![m.n_routed_experts],
                        init: Init::Uniform(0.01),
                        fp8: false,
                    });
                }
                for e in 0..m.n_routed_experts {
                    mlp(v, &format!("{p}mlp.experts.{e}."), m.moe_intermediate_size);
                }
                if m.n_shared_experts > 0 {
                    mlp(
                        v,
                        &format!("{p}mlp.shared_experts."),
                        m.n_shared_experts * m.moe_intermediate_size,
                    );
                }
            }
            _ => mlp(v, &format!("{p}mlp."), c.intermediate_size),
        }
    };
    v.push(Spec {
        name: "model.embed_tokens.weight".into(),
        shape: vec![c.vocab_size, d],
        init: Init::Uniform(1.0),
        fp8: false,
    });
    for i in 0..c.num_hidden_layers {
        layer(&mut v, i, c.is_moe_layer(i));
    }
    norm(&mut v, "model.norm.weight".into(), d);
    if !c.tie_word_embeddings {
        lin(&mut v, "lm_head.weight".into(), c.vocab_size, d, false);
    }
    for k in 0..c.num_nextn_predict_layers {
        let i = c.num_hidden_layers + k;
        layer(&mut v, i, c.moe.is_some());
        let p = format!("model.layers.{i}.");
        v.push(Spec {
            name: format!("{p}embed_tokens.weight"),
            shape: vec![c.vocab_size, d],
            init: Init::Uniform(1.0),
            fp8: false,
        });
        norm(&mut v, format!("{p}enorm.weight"), d);
        norm(&mut v, format!("{p}hnorm.weight"), d);
        lin(&mut v, format!("{p}eh_proj.weight"), d, 2 * d, false);
        norm(&mut v, format!("{p}shared_head.norm.weight"), d);
        lin(
            &mut v,
            format!("{p}shared_head.head.weight"),
            c.vocab_size,
            d,
            false,
        );
    }
    v
}

/// DeepSeek-V4's tensors under the released names (`embed.weight`, `layers.{i}.attn.*`,
/// `.ffn.*`, `.hc_*`, `hc_head_*`, `head.weight`, MTP modules `mtp.{k}.*`).
fn v4_specs(c: &ModelConfig, v4: &crate::config::V4Config) -> Vec<Spec> {
    use crate::config::V4Attention;
    let mut v = Vec::new();
    let d = c.hidden_size;
    let (h, hd, q) = (
        c.num_attention_heads,
        v4.head_dim,
        c.q_lora_rank.unwrap_or(0),
    );
    let hc = v4.hc_mult;
    let m = c.moe.as_ref().expect("a V4 config has experts");
    let lin = |v: &mut Vec<Spec>, name: String, rows: usize, cols: usize| {
        v.push(Spec {
            name,
            shape: vec![rows, cols],
            init: Init::Uniform(1.0 / (cols as f32).sqrt()),
            fp8: false,
        })
    };
    let small = |v: &mut Vec<Spec>, name: String, shape: Vec<usize>, std: f32| {
        v.push(Spec {
            name,
            shape,
            init: Init::Uniform(std),
            fp8: false,
        })
    };
    let mlp = |v: &mut Vec<Spec>, p: &str| {
        lin(v, format!("{p}w1.weight"), m.moe_intermediate_size, d);
        lin(v, format!("{p}w3.weight"), m.moe_intermediate_size, d);
        lin(v, format!("{p}w2.weight"), d, m.moe_intermediate_size);
    };
    let mix = (2 + hc) * hc;
    small(&mut v, "embed.weight".into(), vec![c.vocab_size, d], 1.0);
    // one block under `p`: a main layer's or an MTP module's
    let block = |v: &mut Vec<Spec>, p: &str, kind: V4Attention, hash: bool| {
        norm(v, format!("{p}attn_norm.weight"), d);
        norm(v, format!("{p}ffn_norm.weight"), d);
        for hcn in ["hc_attn", "hc_ffn"] {
            small(v, format!("{p}{hcn}_fn"), vec![mix, hc * d], 0.02);
            small(v, format!("{p}{hcn}_base"), vec![mix], 0.1);
            norm(v, format!("{p}{hcn}_scale"), 3);
        }
        let a = format!("{p}attn.");
        lin(v, format!("{a}wq_a.weight"), q, d);
        norm(v, format!("{a}q_norm.weight"), q);
        lin(v, format!("{a}wq_b.weight"), h * hd, q);
        lin(v, format!("{a}wkv.weight"), hd, d);
        norm(v, format!("{a}kv_norm.weight"), hd);
        lin(
            v,
            format!("{a}wo_a.weight"),
            v4.o_groups * v4.o_lora_rank,
            h * hd / v4.o_groups,
        );
        lin(
            v,
            format!("{a}wo_b.weight"),
            d,
            v4.o_groups * v4.o_lora_rank,
        );
        small(v, format!("{a}attn_sink"), vec![h], 0.5);
        let rate = v4.compress_rate(kind);
        let compressor = |v: &mut Vec<Spec>, p: String, dim: usize, raw: usize| {
            lin(v, format!("{p}wkv.weight"), raw, d);
            lin(v, format!("{p}wgate.weight"), raw, d);
            small(v, format!("{p}ape"), vec![rate, raw], 0.1);
            norm(v, format!("{p}norm.weight"), dim);
        };
        match kind {
            V4Attention::Sliding => {}
            V4Attention::Hca => compressor(v, format!("{a}compressor."), hd, hd),
            V4Attention::Csa => {
                compressor(v, format!("{a}compressor."), hd, 2 * hd);
                let di = v4.index_head_dim;
                compressor(v, format!("{a}indexer.compressor."), di, 2 * di);
                lin(
                    v,
                    format!("{a}indexer.wq_b.weight"),
                    v4.index_n_heads * di,
                    q,
                );
                lin(
                    v,
                    format!("{a}indexer.weights_proj.weight"),
                    v4.index_n_heads,
                    d,
                );
            }
        }
        let f = format!("{p}ffn.");
        lin(v, format!("{f}gate.weight"), m.n_routed_experts, d);
        if hash {
            v.push(Spec {
                name: format!("{f}gate.tid2eid"),
                shape: vec![c.vocab_size, m.num_experts_per_tok],
                init: Init::Experts(m.n_routed_experts),
                fp8: false,
            });
        } else {
            small(v, format!("{f}gate.bias"), vec![m.n_routed_experts], 0.01);
        }
        for e in 0..m.n_routed_experts {
            mlp(v, &format!("{f}experts.{e}."));
        }
        mlp(v, &format!("{f}shared_experts."));
    };
    for i in 0..c.num_hidden_layers {
        block(
            &mut v,
            &format!("layers.{i}."),
            v4.layer_types[i],
            v4.hash_layers[i],
        );
    }
    let hc_head = |v: &mut Vec<Spec>, p: &str| {
        small(v, format!("{p}hc_head_fn"), vec![hc, hc * d], 0.02);
        small(v, format!("{p}hc_head_base"), vec![hc], 0.1);
        norm(v, format!("{p}hc_head_scale"), 1);
    };
    norm(&mut v, "norm.weight".into(), d);
    hc_head(&mut v, "");
    lin(&mut v, "head.weight".into(), c.vocab_size, d);
    // the MTP modules: a score-routed block joined to the main streams by e_proj / h_proj,
    // with their own hc_head and norm (the main model's head serves them)
    for k in 0..c.num_nextn_predict_layers {
        let p = format!("mtp.{k}.");
        block(&mut v, &p, v4.mtp_layer_type(k), false);
        norm(&mut v, format!("{p}enorm.weight"), d);
        norm(&mut v, format!("{p}hnorm.weight"), d);
        lin(&mut v, format!("{p}e_proj.weight"), d, d);
        lin(&mut v, format!("{p}h_proj.weight"), d, d);
        norm(&mut v, format!("{p}norm.weight"), d);
        hc_head(&mut v, &p);
    }
    v
}

/// splitmix64: a tiny, fast, seedable generator; quality is ample for random weights.
fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E3779B97F4A7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
    z ^ (z >> 31)
}

fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    })
}

/// Values of one tensor, uniform with the requested standard deviation (or near one).
fn values(spec: &Spec, seed: u64, n: usize) -> Vec<f32> {
    let base = fnv(&spec.name) ^ splitmix(seed);
    let mut out = vec![0f32; n];
    out.par_chunks_mut(1 << 16)
        .enumerate()
        .for_each(|(ci, chunk)| {
            let mut s = splitmix(base ^ (ci as u64).wrapping_mul(0x2545F4914F6CDD1D));
            for v in chunk.iter_mut() {
                s = s.wrapping_add(0x9E3779B97F4A7C15);
                let u = (splitmix(s) >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0; // [-1, 1)
                *v = match spec.init {
                    Init::Uniform(std) => u * std * 3f32.sqrt(),
                    Init::NearOne => 1.0 + 0.1 * u,
                    Init::Experts(_) => unreachable!("expert tables are not floats"),
                };
            }
        });
    out
}

/// (dtype, bytes) of each stored tensor of a spec: the tensor itself and, for FP8, its scales.
fn encoded(
    spec: &Spec,
    seed: u64,
    block: [usize; 2],
) -> Vec<(String, &'static str, Vec<usize>, Vec<u8>)> {
    let n: usize = spec.shape.iter().product();
    if let Init::Experts(e) = spec.init {
        let k = spec.shape[1];
        let bytes: Vec<u8> = (0..n)
            .flat_map(|i| {
                let (t, j) = (i / k, i % k);
                (((t + j * (e / k)) % e) as i32).to_le_bytes()
            })
            .collect();
        return vec![(spec.name.clone(), "I32", spec.shape.clone(), bytes)];
    }
    let w = values(spec, seed, n);
    if !spec.fp8 {
        let bytes: Vec<u8> = w
            .iter()
            .flat_map(|v| bf16::from_f32(*v).to_le_bytes())
            .collect();
        return vec![(spec.name.clone(), "BF16", spec.shape.clone(), bytes)];
    }
    let (rows, cols) = (spec.shape[0], spec.shape[1]);
    let (br, bc) = (block[0], block[1]);
    let (nbr, nbc) = (rows.div_ceil(br), cols.div_ceil(bc));
    let mut scales = vec![0f32; nbr * nbc];
    for (i, s) in scales.iter_mut().enumerate() {
        let (rb, cb) = (i / nbc, i % nbc);
        let mut amax = 0f32;
        for r in rb * br..((rb + 1) * br).min(rows) {
            for c in cb * bc..((cb + 1) * bc).min(cols) {
                amax = amax.max(w[r * cols + c].abs());
            }
        }
        *s = amax.max(1e-12) / 448.0;
    }
    let codes: Vec<u8> = w
        .par_iter()
        .enumerate()
        .map(|(i, v)| f32_to_e4m3(v / scales[(i / cols / br) * nbc + (i % cols) / bc]))
        .collect();
    let scale_bytes: Vec<u8> = scales.iter().flat_map(|s| s.to_le_bytes()).collect();
    vec![
        (spec.name.clone(), "F8_E4M3", spec.shape.clone(), codes),
        (
            spec.name.replace(".weight", ".weight_scale_inv"),
            "F32",
            vec![nbr, nbc],
            scale_bytes,
        ),
    ]
}

fn stored_bytes(spec: &Spec, block: [usize; 2]) -> usize {
    let n: usize = spec.shape.iter().product();
    if let Init::Experts(_) = spec.init {
        return 4 * n;
    }
    if spec.fp8 {
        n + 4 * spec.shape[0].div_ceil(block[0]) * spec.shape[1].div_ceil(block[1])
    } else {
        2 * n
    }
}

const TOKENIZER_JSON: &str = include_str!("../../../testdata/fixtures/tiny-v3/tokenizer.json");
const TOKENIZER_CONFIG: &str =
    include_str!("../../../testdata/fixtures/tiny-v3/tokenizer_config.json");

/// Writes a checkpoint of `cfg`'s shape with random weights into `out`.
pub fn write_checkpoint(
    cfg: &ModelConfig,
    out: &Path,
    seed: u64,
    shard_bytes: usize,
    progress: bool,
) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let block = cfg.fp8_block.unwrap_or([128, 128]);
    let specs = tensor_specs(cfg);
    // plan shards by size
    let mut shards: Vec<Vec<&Spec>> = vec![vec![]];
    let mut size = 0usize;
    for s in &specs {
        let b = stored_bytes(s, block);
        if size > 0 && size + b > shard_bytes {
            shards.push(vec![]);
            size = 0;
        }
        size += b;
        shards.last_mut().unwrap().push(s);
    }
    let total: usize = specs.iter().map(|s| stored_bytes(s, block)).sum();
    let bar = if progress {
        let b = ProgressBar::new(total as u64);
        b.set_style(
            ProgressStyle::with_template("{msg} [{bar:40}] {bytes}/{total_bytes} ({eta})")
                .unwrap()
                .progress_chars("=> "),
        );
        b.set_message("synth");
        b
    } else {
        ProgressBar::hidden()
    };
    let n = shards.len();
    let mut weight_map = serde_json::Map::new();
    for (k, shard) in shards.iter().enumerate() {
        let name = format!("model-{:05}-of-{:05}.safetensors", k + 1, n);
        // header first: it needs every tensor's dtype, shape and byte range
        let mut header = serde_json::Map::new();
        header.insert("__metadata__".into(), json!({"format": "pt"}));
        let mut offset = 0usize;
        let mut entries = vec![];
        for s in shard {
            let n = s.shape.iter().product::<usize>();
            let (dtype, nbytes) = match (s.init, s.fp8) {
                (Init::Experts(_), _) => ("I32", 4 * n),
                (_, true) => ("F8_E4M3", n),
                _ => ("BF16", 2 * n),
            };
            entries.push((s.name.clone(), dtype, s.shape.clone(), nbytes));
            if s.fp8 {
                let sh = vec![s.shape[0].div_ceil(block[0]), s.shape[1].div_ceil(block[1])];
                let nb = 4 * sh[0] * sh[1];
                entries.push((
                    s.name.replace(".weight", ".weight_scale_inv"),
                    "F32",
                    sh,
                    nb,
                ));
            }
        }
        for (tname, dtype, shape, nbytes) in &entries {
            header.insert(
                tname.clone(),
                json!({"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + nbytes]}),
            );
            weight_map.insert(tname.clone(), json!(name));
            offset += nbytes;
        }
        let mut h = serde_json::to_vec(&header)?;
        while h.len() % 8 != 0 {
            h.push(b' ');
        }
        let path = out.join(&name);
        let f = std::fs::File::create(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        let mut w = std::io::BufWriter::with_capacity(1 << 22, f);
        w.write_all(&(h.len() as u64).to_le_bytes())?;
        w.write_all(&h)?;
        for s in shard {
            for (_, _, _, bytes) in encoded(s, seed, block) {
                w.write_all(&bytes)?;
                bar.inc(bytes.len() as u64);
            }
        }
        w.flush()
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    bar.finish_and_clear();
    let index = json!({"metadata": {"total_size": total}, "weight_map": weight_map});
    std::fs::write(
        out.join("model.safetensors.index.json"),
        serde_json::to_string_pretty(&index)?,
    )?;
    std::fs::write(
        out.join("config.json"),
        serde_json::to_string_pretty(&cfg.to_hub_json())?,
    )?;
    std::fs::write(
        out.join("generation_config.json"),
        serde_json::to_string_pretty(
            &json!({"bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_ids.first(), "do_sample": true, "temperature": 0.6, "top_p": 0.95}),
        )?,
    )?;
    std::fs::write(out.join("tokenizer.json"), TOKENIZER_JSON)?;
    std::fs::write(out.join("tokenizer_config.json"), TOKENIZER_CONFIG)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{params, AttentionForm, Checkpoint, Logits, Model};

    fn tiny(preset: Preset) -> ModelConfig {
        shaped_config(
            preset,
            &Overrides {
                layers: Some(2),
                experts: Some(8),
                vocab: Some(512),
                hidden: Some(256),
                mtp: None,
            },
        )
        .unwrap()
    }

    #[test]
    fn synthetic_checkpoints_load_and_run_in_every_preset() {
        for preset in [
            Preset::V2Lite,
            Preset::V3,
            Preset::V3Fp8,
            Preset::DistillQwen1_5B,
            Preset::DistillQwen7B,
            Preset::DistillLlama8B,
            Preset::Qwen3_8B0528,
        ] {
            let tmp = tempfile::tempdir().unwrap();
            let dir = tmp.path().join("ck");
            let cfg = tiny(preset);
            write_checkpoint(&cfg, &dir, 7, 4 << 20, false).unwrap();
            let ck = Checkpoint::open(&dir).unwrap();
            assert_eq!(ck.config, cfg);
            // every stored main-model parameter is accounted for by the parameter count
            let p = params::count(&cfg);
            let mtp_prefix = format!("model.layers.{}.", cfg.num_hidden_layers);
            let stored: u64 = ck
                .tensor_names()
                .filter(|n| !n.ends_with("_scale_inv") && !n.starts_with(&mtp_prefix))
                .map(|n| ck.entry(n).unwrap().shape.iter().product::<usize>() as u64)
                .sum();
            assert_eq!(stored, p.total(), "{preset:?}");
            let model = Model::load(&ck).unwrap();
            assert_eq!(model.mtp.len(), cfg.num_nextn_predict_layers);
            let mut cache = model.new_cache(4);
            let logits = model
                .forward(&[0, 5, 7], &mut cache, AttentionForm::Plain, Logits::All)
                .unwrap();
            assert!(logits.iter().all(|v| v.is_finite()));
            assert!(logits.iter().any(|&v| v != 0.0));
        }
    }
}
