//! `config.json` of a DeepSeek V2/V3-family checkpoint or of one of R1's dense distills
//! (`qwen2`, `llama`, `qwen3`), in the hub form (`rope_scaling`, `rope_theta`) or the
//! transformers-5 form (`rope_parameters`). Field names mirror the hub.

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Map, Value};
use std::path::Path;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelType {
    DeepseekV2,
    DeepseekV3,
    /// DeepSeek-V3.2: V3 plus DeepSeek Sparse Attention (a lightning indexer per layer)
    DeepseekV32,
    /// DeepSeek-V4 (Flash, Pro): compressed attention, hyper-connections, hash routing
    DeepseekV4,
    /// R1-Distill-Qwen-1.5B/7B/14B/32B
    Qwen2,
    /// R1-Distill-Llama-8B/70B
    Llama,
    /// R1-0528-Qwen3-8B
    Qwen3,
}

impl ModelType {
    pub fn as_str(self) -> &'static str {
        match self {
            ModelType::DeepseekV2 => "deepseek_v2",
            ModelType::DeepseekV3 => "deepseek_v3",
            ModelType::DeepseekV32 => "deepseek_v32",
            ModelType::DeepseekV4 => "deepseek_v4",
            ModelType::Qwen2 => "qwen2",
            ModelType::Llama => "llama",
            ModelType::Qwen3 => "qwen3",
        }
    }

    /// The dense grouped-query-attention decoders (R1's distills), as opposed to MLA + MoE.
    pub fn is_dense_gqa(self) -> bool {
        matches!(self, ModelType::Qwen2 | ModelType::Llama | ModelType::Qwen3)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TopkMethod {
    /// plain top-K of the scores (V2-Lite)
    Greedy,
    /// groups ranked by their max score, top-K inside the kept groups (V2-236B)
    GroupLimitedGreedy,
    /// groups ranked by the sum of their top-2 biased scores, bias for selection only (V3)
    NoauxTc,
}

impl TopkMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            TopkMethod::Greedy => "greedy",
            TopkMethod::GroupLimitedGreedy => "group_limited_greedy",
            TopkMethod::NoauxTc => "noaux_tc",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScoringFunc {
    Softmax,
    Sigmoid,
    /// sqrt(softplus(x)) (V4)
    SqrtSoftplus,
}

impl ScoringFunc {
    pub fn as_str(self) -> &'static str {
        match self {
            ScoringFunc::Softmax => "softmax",
            ScoringFunc::Sigmoid => "sigmoid",
            ScoringFunc::SqrtSoftplus => "sqrtsoftplus",
        }
    }
}

/// YaRN rope scaling parameters (`rope_scaling` / `rope_parameters` with type `yarn`).
#[derive(Clone, Debug, PartialEq)]
pub struct Yarn {
    pub factor: f64,
    pub original_max_position_embeddings: usize,
    pub beta_fast: f64,
    pub beta_slow: f64,
    /// whether the correction range is floored and ceiled (transformers' `truncate`, default true)
    pub truncate: bool,
    pub mscale: Option<f64>,
    pub mscale_all_dim: Option<f64>,
    pub attention_factor: Option<f64>,
}

/// Llama 3.1's rope scaling (`rope_type: llama3`): long wavelengths divided by `factor`, short
/// ones kept, the band between blended.
#[derive(Clone, Debug, PartialEq)]
pub struct Llama3Rope {
    pub factor: f64,
    pub low_freq_factor: f64,
    pub high_freq_factor: f64,
    pub original_max_position_embeddings: usize,
}

/// Grouped-query attention of the dense decoders: `num_attention_heads` query heads share
/// `num_key_value_heads` key/value heads, every head `head_dim` wide and fully rotated.
#[derive(Clone, Debug, PartialEq)]
pub struct GqaConfig {
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    /// biases on q_proj, k_proj and v_proj (qwen2 always; `attention_bias` for llama, qwen3)
    pub qkv_bias: bool,
    /// a bias on o_proj (`attention_bias` of llama and qwen3; never in qwen2)
    pub o_bias: bool,
    /// per-head RMSNorm of queries and keys before rope (qwen3's q_norm / k_norm)
    pub qk_norm: bool,
}

/// DeepSeek Sparse Attention's lightning indexer (V3.2): per query, `index_n_heads` heads of
/// `index_head_dim` score every earlier token against one cached key per token, and the
/// attention reads only the `index_topk` best.
#[derive(Clone, Debug, PartialEq)]
pub struct IndexerConfig {
    pub index_n_heads: usize,
    pub index_head_dim: usize,
    pub index_topk: usize,
}

/// Mixture-of-experts settings; absent for a dense model.
#[derive(Clone, Debug, PartialEq)]
pub struct MoeConfig {
    pub n_routed_experts: usize,
    pub n_shared_experts: usize,
    pub num_experts_per_tok: usize,
    pub moe_intermediate_size: usize,
    pub n_group: usize,
    pub topk_group: usize,
    pub topk_method: TopkMethod,
    pub scoring_func: ScoringFunc,
    pub norm_topk_prob: bool,
    pub routed_scaling_factor: f64,
    pub first_k_dense_replace: usize,
    pub moe_layer_freq: usize,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    pub model_type: ModelType,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub q_lora_rank: Option<usize>,
    pub kv_lora_rank: usize,
    pub qk_nope_head_dim: usize,
    pub qk_rope_head_dim: usize,
    pub v_head_dim: usize,
    pub moe: Option<MoeConfig>,
    pub rope_theta: f64,
    pub yarn: Option<Yarn>,
    pub llama3: Option<Llama3Rope>,
    /// set for the dense distills; the MLA fields above are then zero
    pub gqa: Option<GqaConfig>,
    pub max_position_embeddings: usize,
    pub rms_norm_eps: f64,
    pub num_nextn_predict_layers: usize,
    /// `quantization_config.weight_block_size` of an FP8 checkpoint.
    pub fp8_block: Option<[usize; 2]>,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    pub tie_word_embeddings: bool,
    /// rope dims stored as adjacent pairs (the released weights; transformers' default true)
    /// or, when false, as two halves (NeoX layout, after an offline permutation)
    pub rope_interleave: bool,
    /// set for V3.2 (every layer is indexed attention)
    pub indexer: Option<IndexerConfig>,
    /// set for V4; the MLA fields are then kv_lora_rank 0, qk_nope / qk_rope the two parts of
    /// `head_dim`, v_head_dim = head_dim
    pub v4: Option<V4Config>,
}

/// V4's three attention kinds (`layer_types`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum V4Attention {
    /// only the sliding window
    Sliding,
    /// the window plus compressed entries (overlapping windows of `compress_rate_csa`) of which
    /// the lightning indexer picks `index_topk` per query
    Csa,
    /// the window plus every heavily compressed entry (`compress_rate_hca`, no overlap)
    Hca,
}

impl V4Attention {
    pub fn as_str(self) -> &'static str {
        match self {
            V4Attention::Sliding => "sliding_attention",
            V4Attention::Csa => "compressed_sparse_attention",
            V4Attention::Hca => "heavily_compressed_attention",
        }
    }
}

/// What DeepSeek-V4 adds (transformers' DeepseekV4Config; its defaults are V4-Flash's).
#[derive(Clone, Debug, PartialEq)]
pub struct V4Config {
    pub head_dim: usize,
    pub qk_rope_head_dim: usize,
    pub layer_types: Vec<V4Attention>,
    /// each MTP module's attention: the entries of `compress_ratios` / `layer_types` after the
    /// main layers' (sliding where the config names none)
    pub mtp_layer_types: Vec<V4Attention>,
    pub compress_rate_csa: usize,
    pub compress_rate_hca: usize,
    /// per layer: routed by `tid2eid` (hash_moe) rather than by score (moe)
    pub hash_layers: Vec<bool>,
    pub sliding_window: usize,
    pub o_groups: usize,
    pub o_lora_rank: usize,
    pub index_n_heads: usize,
    pub index_head_dim: usize,
    pub index_topk: usize,
    pub hc_mult: usize,
    pub hc_sinkhorn_iters: usize,
    pub hc_eps: f64,
    pub swiglu_limit: f64,
    /// the rope of sliding layers is plain at `rope_theta`; compressed layers' at this theta,
    /// with YaRN when configured (attention_factor 1 unless given)
    pub compress_rope_theta: f64,
    pub compress_yarn: Option<Yarn>,
    /// the released FP8 weights (`quantization_config`), and MXFP4 routed experts
    /// (`expert_dtype: fp4`): what `whale inspect` and `cost` count their bytes as (the loader
    /// reads each tensor's format from its dtype)
    pub quantized: bool,
    pub expert_fp4: bool,
}

/// The FP8 block shape of `quantization_config` (quant_method fp8; 128x128 where unsaid), or None
/// for a checkpoint without one.
fn fp8_block(o: &Map<String, Value>) -> Result<Option<[usize; 2]>> {
    let Some(q) = field(o, "quantization_config") else {
        return Ok(None);
    };
    let q = q
        .as_object()
        .ok_or_else(|| anyhow!("config.json: `quantization_config` must be an object"))?;
    match opt_str(q, "quant_method")? {
        Some("fp8") => {}
        Some(other) => bail!(
            "config.json: unsupported quantization_config.quant_method `{other}` (supported: fp8)"
        ),
        None => bail!("config.json: quantization_config.quant_method is missing"),
    }
    if let Some(f) = opt_str(q, "fmt")?.filter(|f| *f != "e4m3") {
        bail!("config.json: unsupported quantization_config.fmt `{f}` (supported: e4m3)");
    }
    if let Some(a) = opt_str(q, "activation_scheme")?.filter(|a| *a != "dynamic") {
        bail!("config.json: unsupported quantization_config.activation_scheme `{a}` (supported: dynamic)");
    }
    Ok(Some(match field(q, "weight_block_size") {
        None => [128, 128],
        Some(Value::Array(a))
            if a.len() == 2 && a.iter().all(|x| x.as_u64().is_some_and(|n| n > 0)) =>
        {
            [a[0].as_u64().unwrap() as usize, a[1].as_u64().unwrap() as usize]
        }
        Some(v) => bail!(
            "config.json: quantization_config.weight_block_size must be two positive integers, got {v}"
        ),
    }))
}

fn field<'a>(o: &'a Map<String, Value>, k: &str) -> Option<&'a Value> {
    o.get(k).filter(|v| !v.is_null())
}

fn req_usize(o: &Map<String, Value>, k: &str) -> Result<usize> {
    opt_usize(o, k)?.ok_or_else(|| anyhow!("config.json: required field `{k}` is missing"))
}

fn opt_usize(o: &Map<String, Value>, k: &str) -> Result<Option<usize>> {
    match field(o, k) {
        None => Ok(None),
        Some(v) => v.as_u64().map(|x| Some(x as usize)).ok_or_else(|| {
            anyhow!("config.json: field `{k}` must be a non-negative integer, got {v}")
        }),
    }
}

fn opt_f64(o: &Map<String, Value>, k: &str) -> Result<Option<f64>> {
    match field(o, k) {
        None => Ok(None),
        Some(v) => v
            .as_f64()
            .map(Some)
            .ok_or_else(|| anyhow!("config.json: field `{k}` must be a number, got {v}")),
    }
}

fn opt_bool(o: &Map<String, Value>, k: &str) -> Result<Option<bool>> {
    match field(o, k) {
        None => Ok(None),
        Some(v) => v
            .as_bool()
            .map(Some)
            .ok_or_else(|| anyhow!("config.json: field `{k}` must be true or false, got {v}")),
    }
}

fn opt_str<'a>(o: &'a Map<String, Value>, k: &str) -> Result<Option<&'a str>> {
    match field(o, k) {
        None => Ok(None),
        Some(v) => v
            .as_str()
            .map(Some)
            .ok_or_else(|| anyhow!("config.json: field `{k}` must be a string, got {v}")),
    }
}

fn token_ids(o: &Map<String, Value>, k: &str) -> Result<Vec<u32>> {
    match field(o, k) {
        None => Ok(vec![]),
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| v.as_u64().map(|x| x as u32))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| anyhow!("config.json: field `{k}` must hold token ids")),
        Some(v) => Ok(vec![v
            .as_u64()
            .ok_or_else(|| anyhow!("config.json: field `{k}` must be a token id, got {v}"))?
            as u32]),
    }
}

impl V4Config {
    fn validate(&self, c: &ModelConfig) -> Result<()> {
        let heads = c.num_attention_heads;
        positive_at_most(&[
            ("head_dim", self.head_dim, 1 << 14),
            ("sliding_window", self.sliding_window, 1 << 24),
            ("o_groups", self.o_groups, 1 << 12),
            ("o_lora_rank", self.o_lora_rank, 1 << 16),
            ("index_n_heads", self.index_n_heads, 1 << 12),
            ("index_head_dim", self.index_head_dim, 1 << 14),
            ("index_topk", self.index_topk, 1 << 26),
            ("hc_mult", self.hc_mult, 64),
            ("hc_sinkhorn_iters", self.hc_sinkhorn_iters, 1 << 10),
            (
                "compress_rates.compressed_sparse_attention",
                self.compress_rate_csa,
                1 << 16,
            ),
            (
                "compress_rates.heavily_compressed_attention",
                self.compress_rate_hca,
                1 << 16,
            ),
        ])?;
        let r = self.qk_rope_head_dim;
        if r == 0 || r > self.head_dim || !r.is_multiple_of(2) || r > self.index_head_dim {
            bail!(
                "config.json: the rotated dims of a head ({r}: head_dim x partial_rotary_factor / qk_rope_head_dim) must be even, positive and at most head_dim ({}) and index_head_dim ({})",
                self.head_dim,
                self.index_head_dim
            );
        }
        if !heads.is_multiple_of(self.o_groups) {
            bail!(
                "config.json: `o_groups` ({}) must divide num_attention_heads ({heads})",
                self.o_groups
            );
        }
        if c.q_lora_rank.is_none_or(|q| q == 0) {
            bail!("config.json: field `q_lora_rank` must be positive");
        }
        if self.hc_eps.is_nan() || self.swiglu_limit.is_nan() || self.swiglu_limit <= 0.0 {
            bail!(
                "config.json: `hc_eps` and `swiglu_limit` must be numbers (swiglu_limit positive)"
            );
        }
        Ok(())
    }

    /// Values cached per token per layer (the widest layer's, every layer the same): the
    /// window's key (= value); for a compressed layer, the token's raw compressor inputs and, at
    /// the last token of each window, the compressed entry; for CSA the same for its indexer.
    pub fn cache_width(&self) -> usize {
        self.layer_types
            .iter()
            .chain(&self.mtp_layer_types)
            .map(|&k| self.row_layout(k).width)
            .max()
            .unwrap_or(self.head_dim)
    }

    /// The attention of MTP module `k`.
    pub fn mtp_layer_type(&self, k: usize) -> V4Attention {
        self.mtp_layer_types
            .get(k)
            .copied()
            .unwrap_or(V4Attention::Sliding)
    }

    pub fn row_layout(&self, kind: V4Attention) -> V4Row {
        let d = self.head_dim;
        let (raw, index) = match kind {
            V4Attention::Sliding => (0, 0),
            V4Attention::Hca => (d, 0),
            V4Attention::Csa => (2 * d, 2 * self.index_head_dim),
        };
        let entry = d + 2 * raw;
        let index_raw = entry + if raw > 0 { d } else { 0 };
        let index_entry = index_raw + 2 * index;
        V4Row {
            raw,
            entry,
            index_raw,
            index_entry,
            width: index_entry + if index > 0 { self.index_head_dim } else { 0 },
        }
    }

    pub fn compress_rate(&self, kind: V4Attention) -> usize {
        match kind {
            V4Attention::Csa => self.compress_rate_csa,
            V4Attention::Hca => self.compress_rate_hca,
            V4Attention::Sliding => 0,
        }
    }
}

/// Where a V4 cache row keeps each part (offsets in values): [0, head_dim) the window's key;
/// the compressor's raw kv at head_dim.., its raw gate after it (`raw` values each), the
/// compressed entry at `entry`; the indexer's raw kv and gate at `index_raw` (`2 *
/// index_head_dim` each) and its entry at `index_entry`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct V4Row {
    pub raw: usize,
    pub entry: usize,
    pub index_raw: usize,
    pub index_entry: usize,
    pub width: usize,
}

/// V3.2's indexer fields, transformers' defaults (V3.2-Exp's values) where absent.
fn indexer(o: &Map<String, Value>) -> Result<IndexerConfig> {
    let i = IndexerConfig {
        index_n_heads: opt_usize(o, "index_n_heads")?.unwrap_or(64),
        index_head_dim: opt_usize(o, "index_head_dim")?.unwrap_or(128),
        index_topk: opt_usize(o, "index_topk")?.unwrap_or(2048),
    };
    positive_at_most(&[
        ("index_n_heads", i.index_n_heads, 1 << 12),
        ("index_head_dim", i.index_head_dim, 1 << 14),
        ("index_topk", i.index_topk, 1 << 26),
    ])?;
    Ok(i)
}

/// Each (field, value, bound): positive and at most the bound whale allows.
fn positive_at_most(fields: &[(&str, usize, usize)]) -> Result<()> {
    for &(name, v, most) in fields {
        if v == 0 {
            bail!("config.json: field `{name}` must be positive");
        }
        if v > most {
            bail!("config.json: field `{name}` is {v}, more than the {most} whale allows");
        }
    }
    Ok(())
}

/// What transformers' deepseek_v32 fixes that a V3 config may vary: refused when it differs,
/// since it would be ignored.
fn v32_checks(o: &Map<String, Value>, cfg: &ModelConfig) -> Result<()> {
    let ix = cfg.indexer.as_ref().expect("a V3.2 config has an indexer");
    if cfg.q_lora_rank.is_none() {
        bail!("config.json: deepseek_v32 needs `q_lora_rank` (the indexer reads the query latent)");
    }
    if ix.index_head_dim < cfg.qk_rope_head_dim {
        bail!(
            "config.json: `index_head_dim` ({}) must be at least `qk_rope_head_dim` ({}): the indexer rotates that many of its dims",
            ix.index_head_dim,
            cfg.qk_rope_head_dim
        );
    }
    if !cfg.rope_interleave {
        bail!("config.json: `rope_interleave: false` is not supported for deepseek_v32 (its attention always takes the released interleaved layout)");
    }
    if let Some(m) = &cfg.moe {
        if m.topk_method != TopkMethod::NoauxTc || m.scoring_func != ScoringFunc::Sigmoid {
            bail!("config.json: deepseek_v32 routes by noaux_tc over sigmoid scores; `topk_method`/`scoring_func` say otherwise");
        }
        if m.moe_layer_freq != 1 {
            bail!("config.json: `moe_layer_freq` other than 1 is not supported for deepseek_v32 (it uses first_k_dense_replace / mlp_layer_types)");
        }
    }
    if let Some(v) = field(o, "mlp_layer_types") {
        let want: Vec<&str> = (0..cfg.num_hidden_layers)
            .map(|i| {
                if cfg.is_moe_layer(i) {
                    "sparse"
                } else {
                    "dense"
                }
            })
            .collect();
        let got: Option<Vec<&str>> = v
            .as_array()
            .and_then(|a| a.iter().map(|x| x.as_str()).collect());
        if got.as_deref() != Some(&want[..]) {
            bail!("config.json: `mlp_layer_types` must be first_k_dense_replace \"dense\" then \"sparse\" layers (the only pattern whale runs), got {v}");
        }
    }
    if let Some(v) = field(o, "layer_types") {
        let ok = v.as_array().is_some_and(|a| {
            a.len() == cfg.num_hidden_layers && a.iter().all(|x| x == "indexed_attention")
        });
        if !ok {
            bail!("config.json: `layer_types` of deepseek_v32 must be \"indexed_attention\" for every layer, got {v}");
        }
    }
    Ok(())
}

/// `rope_theta` and the scaling, from the hub form (`rope_theta` at the top, the scaling in
/// `rope_scaling`) or transformers 5's (both in `rope_parameters`).
fn rope(o: &Map<String, Value>) -> Result<(f64, Option<Yarn>, Option<Llama3Rope>)> {
    let rope_obj = match (field(o, "rope_parameters"), field(o, "rope_scaling")) {
        (Some(p), _) => Some(p),
        (None, Some(s)) => Some(s),
        (None, None) => None,
    };
    let mut rope_theta = opt_f64(o, "rope_theta")?;
    let mut yarn = None;
    let mut llama3 = None;
    if let Some(r) = rope_obj {
        let r = r.as_object().ok_or_else(|| {
            anyhow!("config.json: `rope_scaling`/`rope_parameters` must be an object")
        })?;
        if let Some(t) = opt_f64(r, "rope_theta")? {
            rope_theta = Some(t);
        }
        let kind = opt_str(r, "rope_type")?
            .or(opt_str(r, "type")?)
            .unwrap_or("default");
        match kind {
            "default" => {}
            "yarn" => {
                let original = match opt_usize(r, "original_max_position_embeddings")? {
                    Some(x) => x,
                    None => req_usize(o, "original_max_position_embeddings").context(
                        "config.json: yarn needs `original_max_position_embeddings`",
                    )?,
                };
                // transformers: a missing factor is max_position_embeddings / original
                let factor = match opt_f64(r, "factor")? {
                    Some(f) => f,
                    None => req_usize(o, "max_position_embeddings")? as f64 / original as f64,
                };
                yarn = Some(Yarn {
                    factor,
                    original_max_position_embeddings: original,
                    beta_fast: opt_f64(r, "beta_fast")?.unwrap_or(32.0),
                    beta_slow: opt_f64(r, "beta_slow")?.unwrap_or(1.0),
                    truncate: opt_bool(r, "truncate")?.unwrap_or(true),
                    mscale: opt_f64(r, "mscale")?,
                    mscale_all_dim: opt_f64(r, "mscale_all_dim")?,
                    attention_factor: opt_f64(r, "attention_factor")?,
                });
            }
            "llama3" => {
                let num = |k: &str| {
                    opt_f64(r, k)?.ok_or_else(|| anyhow!("config.json: llama3 rope scaling needs `{k}`"))
                };
                let l = Llama3Rope {
                    factor: num("factor")?,
                    low_freq_factor: num("low_freq_factor")?,
                    high_freq_factor: num("high_freq_factor")?,
                    original_max_position_embeddings: match opt_usize(r, "original_max_position_embeddings")? {
                        Some(x) => x,
                        None => req_usize(o, "max_position_embeddings")?,
                    },
                };
                if !(l.factor > 0.0 && l.high_freq_factor > l.low_freq_factor && l.low_freq_factor > 0.0) {
                    bail!("config.json: llama3 rope scaling needs factor > 0 and high_freq_factor > low_freq_factor > 0");
                }
                llama3 = Some(l);
            }
            other => bail!(
                "config.json: unsupported rope type `{other}` in rope_scaling (supported: default, yarn, llama3)"
            ),
        }
        if opt_f64(r, "partial_rotary_factor")?.is_some_and(|f| f != 1.0) {
            bail!("config.json: `partial_rotary_factor` other than 1 is not supported");
        }
    }
    if opt_f64(o, "partial_rotary_factor")?.is_some_and(|f| f != 1.0) {
        bail!("config.json: `partial_rotary_factor` other than 1 is not supported");
    }
    Ok((rope_theta.unwrap_or(10000.0), yarn, llama3))
}

impl ModelConfig {
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let v: Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not valid JSON", path.display()))?;
        Self::from_json(&v).with_context(|| format!("in {}", path.display()))
    }

    pub fn from_json(v: &Value) -> Result<Self> {
        let o = v
            .as_object()
            .ok_or_else(|| anyhow!("config.json: not a JSON object"))?;
        let model_type = match opt_str(o, "model_type")? {
            Some("deepseek_v2") => ModelType::DeepseekV2,
            Some("deepseek_v3") | Some("kimi_k2") => ModelType::DeepseekV3,
            Some("deepseek_v32") => ModelType::DeepseekV32,
            Some("deepseek_v4") => ModelType::DeepseekV4,
            Some("qwen2") => ModelType::Qwen2,
            Some("llama") => ModelType::Llama,
            Some("qwen3") => ModelType::Qwen3,
            Some(other) => bail!(
                "config.json: unsupported model_type `{other}` (supported: deepseek_v2, deepseek_v3, deepseek_v32, deepseek_v4, kimi_k2, qwen2, llama, qwen3)"
            ),
            None => bail!("config.json: required field `model_type` is missing"),
        };
        if let Some(act) = opt_str(o, "hidden_act")? {
            if act != "silu" {
                bail!("config.json: unsupported hidden_act `{act}` (supported: silu)");
            }
        }
        if model_type.is_dense_gqa() {
            return Self::dense_from_json(o, model_type);
        }
        if model_type == ModelType::DeepseekV4 {
            return Self::v4_from_json(o);
        }
        let v32 = model_type == ModelType::DeepseekV32;
        let v3 = model_type == ModelType::DeepseekV3 || v32;
        // transformers' DeepseekV32Config fills absent routing fields with V3.2's own values
        // (its V3 and V2 configs are only ever read with them present)
        let v32_default = |other: usize, v32_value: usize| if v32 { v32_value } else { other };

        let moe = match opt_usize(o, "n_routed_experts")? {
            None | Some(0) => None,
            Some(n_routed_experts) => {
                let topk_method = match opt_str(o, "topk_method")? {
                    None => {
                        if v3 {
                            TopkMethod::NoauxTc
                        } else {
                            TopkMethod::Greedy
                        }
                    }
                    Some("greedy") | Some("gready") => TopkMethod::Greedy,
                    Some("group_limited_greedy") => TopkMethod::GroupLimitedGreedy,
                    Some("noaux_tc") => TopkMethod::NoauxTc,
                    Some(other) => bail!(
                        "config.json: unsupported topk_method `{other}` (supported: greedy, group_limited_greedy, noaux_tc)"
                    ),
                };
                let scoring_func = match opt_str(o, "scoring_func")? {
                    None => {
                        if v3 {
                            ScoringFunc::Sigmoid
                        } else {
                            ScoringFunc::Softmax
                        }
                    }
                    Some("softmax") => ScoringFunc::Softmax,
                    Some("sigmoid") => ScoringFunc::Sigmoid,
                    Some(other) => bail!(
                        "config.json: unsupported scoring_func `{other}` (supported: softmax, sigmoid)"
                    ),
                };
                Some(MoeConfig {
                    n_routed_experts,
                    n_shared_experts: opt_usize(o, "n_shared_experts")?
                        .unwrap_or(v32_default(0, 1)),
                    num_experts_per_tok: req_usize(o, "num_experts_per_tok")?,
                    moe_intermediate_size: req_usize(o, "moe_intermediate_size")?,
                    n_group: opt_usize(o, "n_group")?.unwrap_or(v32_default(1, 8)),
                    topk_group: opt_usize(o, "topk_group")?.unwrap_or(v32_default(1, 4)),
                    topk_method,
                    scoring_func,
                    // transformers' deepseek_v2 router never renormalises (every released V2
                    // config says false anyway); parity with it decides.
                    norm_topk_prob: v3 && opt_bool(o, "norm_topk_prob")?.unwrap_or(v32),
                    routed_scaling_factor: opt_f64(o, "routed_scaling_factor")?.unwrap_or(if v32 {
                        2.5
                    } else {
                        1.0
                    }),
                    first_k_dense_replace: opt_usize(o, "first_k_dense_replace")?
                        .unwrap_or(v32_default(0, 3)),
                    moe_layer_freq: opt_usize(o, "moe_layer_freq")?.unwrap_or(1),
                })
            }
        };

        let (rope_theta, yarn, llama3) = rope(o)?;

        let fp8_block = fp8_block(o)?;

        let q_lora_rank = match opt_usize(o, "q_lora_rank")? {
            Some(0) | None => None,
            x => x,
        };
        let cfg = ModelConfig {
            model_type,
            vocab_size: req_usize(o, "vocab_size")?,
            hidden_size: req_usize(o, "hidden_size")?,
            intermediate_size: req_usize(o, "intermediate_size")?,
            num_hidden_layers: req_usize(o, "num_hidden_layers")?,
            num_attention_heads: req_usize(o, "num_attention_heads")?,
            q_lora_rank,
            kv_lora_rank: req_usize(o, "kv_lora_rank")?,
            qk_nope_head_dim: req_usize(o, "qk_nope_head_dim")?,
            qk_rope_head_dim: req_usize(o, "qk_rope_head_dim")?,
            v_head_dim: req_usize(o, "v_head_dim")?,
            moe,
            rope_theta,
            yarn,
            llama3,
            gqa: None,
            max_position_embeddings: req_usize(o, "max_position_embeddings")?,
            rms_norm_eps: opt_f64(o, "rms_norm_eps")?.unwrap_or(1e-6),
            num_nextn_predict_layers: opt_usize(o, "num_nextn_predict_layers")?.unwrap_or(0),
            fp8_block,
            bos_token_id: token_ids(o, "bos_token_id")?.first().copied(),
            eos_token_ids: token_ids(o, "eos_token_id")?,
            tie_word_embeddings: opt_bool(o, "tie_word_embeddings")?.unwrap_or(false),
            rope_interleave: opt_bool(o, "rope_interleave")?.unwrap_or(true),
            indexer: if v32 { Some(indexer(o)?) } else { None },
            v4: None,
        };
        if v32 {
            v32_checks(o, &cfg)?;
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// DeepSeek-V4's config as transformers 5.23 reads it (V4-Flash's values where a field is
    /// absent), in the released form (`compress_ratios` per layer, `num_hash_layers`,
    /// `qk_rope_head_dim`, `rope_scaling`) or transformers' own (`layer_types`, `compress_rates`,
    /// `mlp_layer_types`, `partial_rotary_factor`, nested `rope_parameters`).
    fn v4_from_json(o: &Map<String, Value>) -> Result<Self> {
        let get = |k: &str, d: usize| -> Result<usize> { Ok(opt_usize(o, k)?.unwrap_or(d)) };
        let n = get("num_hidden_layers", 43)?;
        let head_dim = get("head_dim", 512)?;
        let rope_dim = match (
            opt_f64(o, "partial_rotary_factor")?,
            opt_usize(o, "qk_rope_head_dim")?,
        ) {
            (Some(f), _) => (head_dim as f64 * f) as usize,
            (None, Some(r)) => r,
            (None, None) => head_dim / 8,
        };
        let heads = get("num_attention_heads", 64)?;
        if opt_usize(o, "num_key_value_heads")?.is_some_and(|k| k != 1) {
            bail!("config.json: deepseek_v4 shares one key/value head; `num_key_value_heads` must be 1");
        }
        let mut rates = (4usize, 128usize);
        if let Some(v) = field(o, "compress_rates") {
            let m = v
                .as_object()
                .ok_or_else(|| anyhow!("config.json: `compress_rates` must be an object"))?;
            for (k, r) in m {
                let r = r.as_u64().filter(|&r| r > 0).ok_or_else(|| {
                    anyhow!("config.json: `compress_rates.{k}` must be a positive integer, got {r}")
                })? as usize;
                match k.as_str() {
                    "compressed_sparse_attention" => rates.0 = r,
                    "heavily_compressed_attention" => rates.1 = r,
                    other => bail!("config.json: `compress_rates` names an unknown layer type `{other}` (known: compressed_sparse_attention, heavily_compressed_attention)"),
                }
            }
        }
        for (k, slot) in [
            ("compress_rate_csa", &mut rates.0),
            ("compress_rate_hca", &mut rates.1),
        ] {
            if let Some(r) = opt_usize(o, k)? {
                if r == 0 {
                    bail!("config.json: field `{k}` must be positive");
                }
                *slot = r;
            }
        }
        let layer_types: Vec<V4Attention> = match (
            field(o, "layer_types"),
            field(o, "compress_ratios"),
        ) {
            (Some(v), _) => {
                let a = v
                    .as_array()
                    .ok_or_else(|| anyhow!("config.json: `layer_types` must be a list"))?;
                a.iter()
                    .map(|t| match t.as_str() {
                        Some("sliding_attention") => Ok(V4Attention::Sliding),
                        Some("compressed_sparse_attention") => Ok(V4Attention::Csa),
                        Some("heavily_compressed_attention") => Ok(V4Attention::Hca),
                        _ => Err(anyhow!("config.json: `layer_types` holds {t}; deepseek_v4 layers are sliding_attention, compressed_sparse_attention or heavily_compressed_attention")),
                    })
                    .collect::<Result<_>>()?
            }
            (None, Some(v)) => {
                let a = v
                    .as_array()
                    .ok_or_else(|| anyhow!("config.json: `compress_ratios` must be a list"))?;
                a.iter()
                    .map(|r| match r.as_u64() {
                        Some(0) => Ok(V4Attention::Sliding),
                        Some(4) => Ok(V4Attention::Csa),
                        Some(128) => Ok(V4Attention::Hca),
                        _ => Err(anyhow!("config.json: `compress_ratios` holds {r}; a released V4 layer compresses by 0 (sliding only), 4 (CSA) or 128 (HCA)")),
                    })
                    .collect::<Result<_>>()?
            }
            (None, None) => (0..n)
                .map(|i| match i {
                    0 | 1 => V4Attention::Hca,
                    i if i % 2 == 1 => V4Attention::Csa,
                    _ => V4Attention::Hca,
                })
                .collect(),
        };
        if layer_types.len() < n {
            bail!(
                "config.json: `layer_types` names {} layers, `num_hidden_layers` is {n}",
                layer_types.len()
            );
        }
        let mtp_layer_types = layer_types[n..].to_vec();
        let layer_types = layer_types[..n].to_vec();
        let hash_layers: Vec<bool> = match field(o, "mlp_layer_types") {
            Some(v) => {
                let a = v
                    .as_array()
                    .ok_or_else(|| anyhow!("config.json: `mlp_layer_types` must be a list"))?;
                if a.len() < n {
                    bail!("config.json: `mlp_layer_types` names {} layers, `num_hidden_layers` is {n}", a.len());
                }
                a[..n]
                    .iter()
                    .map(|t| match t.as_str() {
                        Some("hash_moe") => Ok(true),
                        Some("moe") => Ok(false),
                        _ => Err(anyhow!("config.json: `mlp_layer_types` holds {t}; deepseek_v4 layers are hash_moe or moe")),
                    })
                    .collect::<Result<_>>()?
            }
            None => {
                let h = get("num_hash_layers", 3)?;
                (0..n).map(|i| i < h).collect()
            }
        };
        // two ropes: plain for sliding layers, the compressed branches' (YaRN) for the others
        let (main_theta, compress_theta, compress_yarn) = match field(o, "rope_parameters")
            .and_then(|r| r.as_object())
            .filter(|r| r.contains_key("main") || r.contains_key("compress"))
        {
            Some(r) => {
                let sub = |k: &str| -> Result<(f64, Option<Yarn>)> {
                    let mut m = Map::new();
                    m.insert(
                        "rope_parameters".into(),
                        r.get(k).cloned().unwrap_or(Value::Null),
                    );
                    if let Some(x) = o.get("max_position_embeddings") {
                        m.insert("max_position_embeddings".into(), x.clone());
                    }
                    let (theta, yarn, llama3) =
                        rope(&m).with_context(|| format!("in rope_parameters.{k}"))?;
                    if llama3.is_some() {
                        bail!("config.json: llama3 rope scaling is not a deepseek_v4 rope");
                    }
                    Ok((theta, yarn))
                };
                let (mt, my) = sub("main")?;
                if my.is_some() {
                    bail!("config.json: `rope_parameters.main` must be the plain rope (YaRN applies to the compressed branches only)");
                }
                let (ct, cy) = sub("compress")?;
                (mt, ct, cy)
            }
            None => {
                let (theta, yarn, llama3) = rope(o)?;
                if llama3.is_some() {
                    bail!("config.json: llama3 rope scaling is not a deepseek_v4 rope");
                }
                (
                    theta,
                    opt_f64(o, "compress_rope_theta")?.unwrap_or(160000.0),
                    yarn,
                )
            }
        };
        // the reference does not scale cos/sin of the compressed branches by YaRN's mscale
        let compress_yarn = compress_yarn.map(|mut y| {
            y.attention_factor.get_or_insert(1.0);
            y
        });
        let scoring_func = match opt_str(o, "scoring_func")?.unwrap_or("sqrtsoftplus") {
            "sqrtsoftplus" => ScoringFunc::SqrtSoftplus,
            "sigmoid" => ScoringFunc::Sigmoid,
            other => bail!("config.json: unsupported scoring_func `{other}` for deepseek_v4 (supported: sqrtsoftplus, sigmoid)"),
        };
        if opt_str(o, "topk_method")?.is_some_and(|m| m != "noaux_tc") {
            bail!("config.json: deepseek_v4 routes by the biased scores (noaux_tc); `topk_method` says otherwise");
        }
        // the release: FP8 (E4M3, 128x128 blocks, E8M0 scales) and MXFP4 routed experts
        let fp8_block = fp8_block(o)?;
        let expert_fp4 = match opt_str(o, "expert_dtype")?.or(field(o, "quantization_config")
            .and_then(|q| q.get("expert_dtype"))
            .and_then(|e| e.as_str()))
        {
            None | Some("fp8") | Some("bf16") => false,
            Some("fp4") => true,
            Some(other) => bail!("config.json: unsupported `expert_dtype` `{other}` (fp4 or fp8)"),
        };
        if opt_bool(o, "norm_topk_prob")? == Some(false) {
            bail!("config.json: `norm_topk_prob: false` is not supported for deepseek_v4 (its router always renormalises)");
        }
        if opt_usize(o, "n_shared_experts")?.is_some_and(|k| k != 1) {
            bail!("config.json: deepseek_v4 has exactly one shared expert; `n_shared_experts` must be 1");
        }
        for refused in ["attention_bias", "mlp_bias", "tie_word_embeddings"] {
            if opt_bool(o, refused)? == Some(true) {
                bail!("config.json: `{refused}: true` is not supported for deepseek_v4");
            }
        }
        let moe_inter = get("moe_intermediate_size", 2048)?;
        let v4 = V4Config {
            head_dim,
            qk_rope_head_dim: rope_dim,
            layer_types,
            mtp_layer_types,
            compress_rate_csa: rates.0,
            compress_rate_hca: rates.1,
            hash_layers,
            sliding_window: get("sliding_window", 128)?,
            o_groups: get("o_groups", 8)?,
            o_lora_rank: get("o_lora_rank", 1024)?,
            index_n_heads: get("index_n_heads", 64)?,
            index_head_dim: get("index_head_dim", 128)?,
            index_topk: get("index_topk", 512)?,
            hc_mult: get("hc_mult", 4)?,
            hc_sinkhorn_iters: get("hc_sinkhorn_iters", 20)?,
            hc_eps: opt_f64(o, "hc_eps")?.unwrap_or(1e-6),
            swiglu_limit: opt_f64(o, "swiglu_limit")?.unwrap_or(10.0),
            compress_rope_theta: compress_theta,
            compress_yarn,
            quantized: fp8_block.is_some(),
            expert_fp4,
        };
        let cfg = ModelConfig {
            model_type: ModelType::DeepseekV4,
            vocab_size: get("vocab_size", 129280)?,
            hidden_size: get("hidden_size", 4096)?,
            intermediate_size: moe_inter,
            num_hidden_layers: n,
            num_attention_heads: heads,
            q_lora_rank: Some(get("q_lora_rank", 1024)?),
            kv_lora_rank: 0,
            qk_nope_head_dim: head_dim.saturating_sub(rope_dim),
            qk_rope_head_dim: rope_dim,
            v_head_dim: head_dim,
            moe: Some(MoeConfig {
                n_routed_experts: get("n_routed_experts", 256)?,
                n_shared_experts: 1,
                num_experts_per_tok: get("num_experts_per_tok", 6)?,
                moe_intermediate_size: moe_inter,
                n_group: 1,
                topk_group: 1,
                topk_method: TopkMethod::NoauxTc,
                scoring_func,
                norm_topk_prob: true,
                routed_scaling_factor: opt_f64(o, "routed_scaling_factor")?.unwrap_or(1.5),
                first_k_dense_replace: 0,
                moe_layer_freq: 1,
            }),
            rope_theta: main_theta,
            yarn: None,
            llama3: None,
            gqa: None,
            max_position_embeddings: get("max_position_embeddings", 1 << 20)?,
            rms_norm_eps: opt_f64(o, "rms_norm_eps")?.unwrap_or(1e-6),
            num_nextn_predict_layers: get("num_nextn_predict_layers", 1)?,
            fp8_block,
            bos_token_id: token_ids(o, "bos_token_id")?.first().copied(),
            eos_token_ids: token_ids(o, "eos_token_id")?,
            tie_word_embeddings: false,
            rope_interleave: true,
            indexer: None,
            v4: Some(v4),
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// The dense distills' config: qwen2, llama or qwen3 as transformers 5.23 reads them (its
    /// defaults where a field is absent).
    fn dense_from_json(o: &Map<String, Value>, model_type: ModelType) -> Result<Self> {
        let heads = req_usize(o, "num_attention_heads")?;
        let hidden = req_usize(o, "hidden_size")?;
        if heads == 0 {
            bail!("config.json: field `num_attention_heads` must be positive");
        }
        let kv_heads = opt_usize(o, "num_key_value_heads")?.unwrap_or(heads);
        if kv_heads == 0 || !heads.is_multiple_of(kv_heads) {
            bail!(
                "config.json: `num_attention_heads` ({heads}) must be a multiple of `num_key_value_heads` ({kv_heads})"
            );
        }
        // qwen3's config class defaults head_dim to 128; the others derive it
        let head_dim = match (opt_usize(o, "head_dim")?, model_type) {
            (Some(d), _) => d,
            (None, ModelType::Qwen3) => 128,
            (None, _) => hidden / heads,
        };
        let attention_bias = opt_bool(o, "attention_bias")?.unwrap_or(false);
        for refused in ["use_sliding_window", "mlp_bias"] {
            if opt_bool(o, refused)? == Some(true) {
                bail!("config.json: `{refused}: true` is not supported (no R1 distill uses it)");
            }
        }
        if let Some(Value::Array(kinds)) = field(o, "layer_types") {
            if let Some(k) = kinds.iter().find(|k| k.as_str() != Some("full_attention")) {
                bail!("config.json: layer_types holds {k}; only full_attention is supported");
            }
        }
        let (rope_theta, yarn, llama3) = rope(o)?;
        let cfg = ModelConfig {
            model_type,
            vocab_size: req_usize(o, "vocab_size")?,
            hidden_size: hidden,
            intermediate_size: req_usize(o, "intermediate_size")?,
            num_hidden_layers: req_usize(o, "num_hidden_layers")?,
            num_attention_heads: heads,
            q_lora_rank: None,
            kv_lora_rank: 0,
            qk_nope_head_dim: 0,
            qk_rope_head_dim: 0,
            v_head_dim: 0,
            moe: None,
            rope_theta,
            yarn,
            llama3,
            gqa: Some(GqaConfig {
                num_key_value_heads: kv_heads,
                head_dim,
                qkv_bias: model_type == ModelType::Qwen2 || attention_bias,
                o_bias: model_type != ModelType::Qwen2 && attention_bias,
                qk_norm: model_type == ModelType::Qwen3,
            }),
            max_position_embeddings: req_usize(o, "max_position_embeddings")?,
            rms_norm_eps: opt_f64(o, "rms_norm_eps")?.unwrap_or(1e-6),
            num_nextn_predict_layers: 0,
            fp8_block: match field(o, "quantization_config") {
                None => None,
                Some(_) => bail!(
                    "config.json: quantization_config is not supported for {}",
                    model_type.as_str()
                ),
            },
            bos_token_id: token_ids(o, "bos_token_id")?.first().copied(),
            eos_token_ids: token_ids(o, "eos_token_id")?,
            tie_word_embeddings: opt_bool(o, "tie_word_embeddings")?.unwrap_or(false),
            rope_interleave: false,
            indexer: None,
            v4: None,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<()> {
        let mut nonzero = vec![
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("max_position_embeddings", self.max_position_embeddings),
        ];
        if let Some(v) = &self.v4 {
            v.validate(self)?;
        }
        match &self.gqa {
            None if self.v4.is_some() => {}
            None => nonzero.extend([
                ("kv_lora_rank", self.kv_lora_rank),
                ("qk_rope_head_dim", self.qk_rope_head_dim),
                ("v_head_dim", self.v_head_dim),
            ]),
            Some(g) => {
                nonzero.push(("head_dim", g.head_dim));
                if g.head_dim > 1 << 14 {
                    bail!(
                        "config.json: field `head_dim` is {}, more than the 16384 whale allows",
                        g.head_dim
                    );
                }
                if !g.head_dim.is_multiple_of(2) {
                    bail!(
                        "config.json: `head_dim` must be even (rope rotates pairs), got {}",
                        g.head_dim
                    );
                }
            }
        }
        for (name, v) in nonzero {
            if v == 0 {
                bail!("config.json: field `{name}` must be positive");
            }
        }
        // far past any released model, and small enough that no product of them overflows
        // or asks for memory no machine has before the tensors are checked against them
        let bounded = [
            ("vocab_size", self.vocab_size, 1 << 24),
            ("hidden_size", self.hidden_size, 1 << 20),
            ("intermediate_size", self.intermediate_size, 1 << 22),
            ("num_hidden_layers", self.num_hidden_layers, 1 << 12),
            (
                "num_nextn_predict_layers",
                self.num_nextn_predict_layers,
                1 << 6,
            ),
            ("num_attention_heads", self.num_attention_heads, 1 << 12),
            ("kv_lora_rank", self.kv_lora_rank, 1 << 16),
            ("qk_nope_head_dim", self.qk_nope_head_dim, 1 << 14),
            ("qk_rope_head_dim", self.qk_rope_head_dim, 1 << 14),
            ("v_head_dim", self.v_head_dim, 1 << 14),
            (
                "max_position_embeddings",
                self.max_position_embeddings,
                1 << 26,
            ),
        ];
        for (name, v, most) in bounded {
            if v > most {
                bail!("config.json: field `{name}` is {v}, more than the {most} whale allows");
            }
        }
        if !self.qk_rope_head_dim.is_multiple_of(2) {
            bail!(
                "config.json: `qk_rope_head_dim` must be even (rope rotates pairs), got {}",
                self.qk_rope_head_dim
            );
        }
        if self.q_lora_rank.is_some_and(|r| r > 1 << 16) {
            bail!("config.json: field `q_lora_rank` is more than the 65536 whale allows");
        }
        if let Some(m) = &self.moe {
            for (name, v, most) in [
                ("n_routed_experts", m.n_routed_experts, 1 << 16),
                ("moe_intermediate_size", m.moe_intermediate_size, 1 << 22),
            ] {
                if v > most {
                    bail!("config.json: field `{name}` is {v}, more than the {most} whale allows");
                }
            }
            if m.n_group == 0 || m.n_routed_experts % m.n_group != 0 {
                bail!(
                    "config.json: `n_routed_experts` ({}) must be a multiple of `n_group` ({})",
                    m.n_routed_experts,
                    m.n_group
                );
            }
            if m.topk_group == 0 || m.topk_group > m.n_group {
                bail!(
                    "config.json: `topk_group` ({}) must be in 1..=n_group ({})",
                    m.topk_group,
                    m.n_group
                );
            }
            let reachable = if m.topk_method == TopkMethod::Greedy {
                m.n_routed_experts
            } else {
                m.topk_group * m.n_routed_experts / m.n_group
            };
            if m.num_experts_per_tok == 0 || m.num_experts_per_tok > reachable {
                bail!(
                    "config.json: `num_experts_per_tok` ({}) must be in 1..={reachable} (experts in the kept groups)",
                    m.num_experts_per_tok
                );
            }
            if m.moe_layer_freq == 0 {
                bail!("config.json: `moe_layer_freq` must be positive");
            }
        }
        if let Some(y) = &self.yarn {
            if y.factor.is_nan() || y.factor <= 0.0 || y.original_max_position_embeddings == 0 {
                bail!("config.json: yarn needs a positive `factor` and `original_max_position_embeddings`");
            }
        }
        Ok(())
    }

    pub fn qk_head_dim(&self) -> usize {
        self.qk_nope_head_dim + self.qk_rope_head_dim
    }

    /// Values cached per token per layer: under MLA the normed latent and the rotated rope key;
    /// under GQA every key/value head's key, then every one's value.
    /// V3.2 adds the indexer's key after them.
    pub fn cache_width(&self) -> usize {
        if let Some(v) = &self.v4 {
            return v.cache_width();
        }
        match &self.gqa {
            None => self.mla_width() + self.indexer.as_ref().map_or(0, |i| i.index_head_dim),
            Some(g) => 2 * g.num_key_value_heads * g.head_dim,
        }
    }

    /// Values of an MLA cache row that attention reads: the latent and the rope key.
    pub fn mla_width(&self) -> usize {
        self.kv_lora_rank + self.qk_rope_head_dim
    }

    /// Dims of each head that rope rotates.
    pub fn rope_dim(&self) -> usize {
        match &self.gqa {
            None => self.qk_rope_head_dim,
            Some(g) => g.head_dim,
        }
    }

    /// Whether decoder layer `i` uses the MoE feed-forward (remote code's rule).
    pub fn is_moe_layer(&self, i: usize) -> bool {
        match &self.moe {
            Some(m) => i >= m.first_k_dense_replace && i.is_multiple_of(m.moe_layer_freq),
            None => false,
        }
    }

    /// The hub form of this config, as `config.json` is written for released checkpoints.
    pub fn to_hub_json(&self) -> Value {
        if let Some(g) = &self.gqa {
            return self.dense_hub_json(g);
        }
        if let Some(v) = &self.v4 {
            return self.v4_hub_json(v);
        }
        let arch = match self.model_type {
            ModelType::DeepseekV2 => "DeepseekV2ForCausalLM",
            ModelType::DeepseekV32 => "DeepseekV32ForCausalLM",
            _ => "DeepseekV3ForCausalLM",
        };
        let mut v = json!({
            "architectures": [arch],
            "model_type": self.model_type.as_str(),
            "attention_bias": false,
            "attention_dropout": 0.0,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_ids.first(),
            "hidden_act": "silu",
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "kv_lora_rank": self.kv_lora_rank,
            "q_lora_rank": self.q_lora_rank,
            "qk_nope_head_dim": self.qk_nope_head_dim,
            "qk_rope_head_dim": self.qk_rope_head_dim,
            "v_head_dim": self.v_head_dim,
            "max_position_embeddings": self.max_position_embeddings,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_attention_heads,
            "num_hidden_layers": self.num_hidden_layers,
            "num_nextn_predict_layers": self.num_nextn_predict_layers,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_scaling": self.rope_scaling_json(),
            "tie_word_embeddings": self.tie_word_embeddings,
            "torch_dtype": "bfloat16",
            "use_cache": true,
            "vocab_size": self.vocab_size,
        });
        let o = v.as_object_mut().unwrap();
        if !self.rope_interleave {
            o.insert("rope_interleave".into(), json!(false));
        }
        if let Some(m) = &self.moe {
            for (k, x) in [
                ("n_routed_experts", json!(m.n_routed_experts)),
                ("n_shared_experts", json!(m.n_shared_experts)),
                ("num_experts_per_tok", json!(m.num_experts_per_tok)),
                ("moe_intermediate_size", json!(m.moe_intermediate_size)),
                ("n_group", json!(m.n_group)),
                ("topk_group", json!(m.topk_group)),
                ("topk_method", json!(m.topk_method.as_str())),
                ("scoring_func", json!(m.scoring_func.as_str())),
                ("norm_topk_prob", json!(m.norm_topk_prob)),
                ("routed_scaling_factor", json!(m.routed_scaling_factor)),
                ("first_k_dense_replace", json!(m.first_k_dense_replace)),
                ("moe_layer_freq", json!(m.moe_layer_freq)),
            ] {
                o.insert(k.into(), x);
            }
        }
        if let Some(i) = &self.indexer {
            o.insert("index_n_heads".into(), json!(i.index_n_heads));
            o.insert("index_head_dim".into(), json!(i.index_head_dim));
            o.insert("index_topk".into(), json!(i.index_topk));
        }
        if let Some([r, c]) = self.fp8_block {
            o.insert(
                "quantization_config".into(),
                json!({"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8", "weight_block_size": [r, c]}),
            );
        }
        v
    }

    /// `rope_scaling` in the hub form (null without scaling).
    fn rope_scaling_json(&self) -> Value {
        if let Some(l) = &self.llama3 {
            return json!({
                "rope_type": "llama3",
                "factor": l.factor,
                "low_freq_factor": l.low_freq_factor,
                "high_freq_factor": l.high_freq_factor,
                "original_max_position_embeddings": l.original_max_position_embeddings,
            });
        }
        match &self.yarn {
            Some(y) => yarn_json(y),
            None => Value::Null,
        }
    }

    /// DeepSeek-V4's config.json in the form transformers writes (`layer_types`,
    /// `compress_rates`, `mlp_layer_types`) with the released names elsewhere.
    fn v4_hub_json(&self, v: &V4Config) -> Value {
        let m = self.moe.as_ref().expect("a V4 config has experts");
        let mut j = json!({
            "architectures": ["DeepseekV4ForCausalLM"],
            "model_type": "deepseek_v4",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": 1,
            "head_dim": v.head_dim,
            "qk_rope_head_dim": v.qk_rope_head_dim,
            "q_lora_rank": self.q_lora_rank,
            "o_groups": v.o_groups,
            "o_lora_rank": v.o_lora_rank,
            "sliding_window": v.sliding_window,
            "layer_types": v.layer_types.iter().map(|k| k.as_str()).collect::<Vec<_>>(),
            "compress_rates": {
                "compressed_sparse_attention": v.compress_rate_csa,
                "heavily_compressed_attention": v.compress_rate_hca,
            },
            "mlp_layer_types": v.hash_layers.iter().map(|&h| if h { "hash_moe" } else { "moe" }).collect::<Vec<_>>(),
            "n_routed_experts": m.n_routed_experts,
            "n_shared_experts": 1,
            "num_experts_per_tok": m.num_experts_per_tok,
            "moe_intermediate_size": m.moe_intermediate_size,
            "scoring_func": m.scoring_func.as_str(),
            "norm_topk_prob": true,
            "routed_scaling_factor": m.routed_scaling_factor,
            "swiglu_limit": v.swiglu_limit,
            "rope_theta": self.rope_theta,
            "compress_rope_theta": v.compress_rope_theta,
            "rope_scaling": v.compress_yarn.as_ref().map_or(Value::Null, yarn_json),
            "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": self.rms_norm_eps,
            "num_nextn_predict_layers": self.num_nextn_predict_layers,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_ids.first(),
            "hidden_act": "silu",
            "tie_word_embeddings": self.tie_word_embeddings,
            "torch_dtype": "bfloat16",
            "use_cache": true,
        });
        let o = j.as_object_mut().expect("an object");
        for (k, x) in [
            ("index_n_heads", json!(v.index_n_heads)),
            ("index_head_dim", json!(v.index_head_dim)),
            ("index_topk", json!(v.index_topk)),
            ("hc_mult", json!(v.hc_mult)),
            ("hc_sinkhorn_iters", json!(v.hc_sinkhorn_iters)),
            ("hc_eps", json!(v.hc_eps)),
        ] {
            o.insert(k.into(), x);
        }
        j
    }
}

/// `rope_scaling` of a YaRN rope in the hub form.
fn yarn_json(y: &Yarn) -> Value {
    let mut r = json!({
        "type": "yarn",
        "factor": y.factor,
        "original_max_position_embeddings": y.original_max_position_embeddings,
        "beta_fast": y.beta_fast,
        "beta_slow": y.beta_slow,
        "mscale": y.mscale,
        "mscale_all_dim": y.mscale_all_dim,
    });
    let o = r.as_object_mut().unwrap();
    if let Some(a) = y.attention_factor {
        o.insert("attention_factor".into(), json!(a));
    }
    if !y.truncate {
        o.insert("truncate".into(), json!(false));
    }
    r
}

impl ModelConfig {
    /// A distill's config.json as the hub has it for qwen2, llama and qwen3.
    fn dense_hub_json(&self, g: &GqaConfig) -> Value {
        let arch = match self.model_type {
            ModelType::Qwen2 => "Qwen2ForCausalLM",
            ModelType::Llama => "LlamaForCausalLM",
            _ => "Qwen3ForCausalLM",
        };
        let mut v = json!({
            "architectures": [arch],
            "model_type": self.model_type.as_str(),
            "attention_dropout": 0.0,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_ids.first(),
            "hidden_act": "silu",
            "hidden_size": self.hidden_size,
            "head_dim": g.head_dim,
            "intermediate_size": self.intermediate_size,
            "max_position_embeddings": self.max_position_embeddings,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": g.num_key_value_heads,
            "num_hidden_layers": self.num_hidden_layers,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_scaling": self.rope_scaling_json(),
            "tie_word_embeddings": self.tie_word_embeddings,
            "torch_dtype": "bfloat16",
            "use_cache": true,
            "vocab_size": self.vocab_size,
        });
        let o = v.as_object_mut().unwrap();
        if self.model_type == ModelType::Qwen2 {
            o.insert("use_sliding_window".into(), json!(false));
        } else {
            o.insert("attention_bias".into(), json!(g.o_bias));
        }
        if self.model_type == ModelType::Llama {
            o.insert("mlp_bias".into(), json!(false));
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Value {
        json!({
            "model_type": "deepseek_v3", "vocab_size": 100, "hidden_size": 16, "intermediate_size": 32,
            "num_hidden_layers": 2, "num_attention_heads": 2, "q_lora_rank": 8, "kv_lora_rank": 8,
            "qk_nope_head_dim": 4, "qk_rope_head_dim": 2, "v_head_dim": 4, "max_position_embeddings": 64,
            "n_routed_experts": 8, "num_experts_per_tok": 2, "moe_intermediate_size": 8, "n_group": 2,
            "topk_group": 1, "first_k_dense_replace": 1, "eos_token_id": 1, "bos_token_id": 0
        })
    }

    #[test]
    fn hub_and_transformers5_rope_forms_agree() {
        let mut hub = base();
        hub["rope_theta"] = json!(50000.0);
        hub["rope_scaling"] = json!({"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16,
            "beta_fast": 32, "beta_slow": 1, "mscale": 0.707, "mscale_all_dim": 0.707});
        let mut tf5 = base();
        tf5["rope_parameters"] = json!({"rope_type": "yarn", "rope_theta": 50000.0, "factor": 4.0,
            "original_max_position_embeddings": 16, "beta_fast": 32.0, "beta_slow": 1.0, "mscale": 0.707,
            "mscale_all_dim": 0.707});
        let a = ModelConfig::from_json(&hub).unwrap();
        let b = ModelConfig::from_json(&tf5).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.rope_theta, 50000.0);
        assert_eq!(
            a.yarn.as_ref().unwrap().original_max_position_embeddings,
            16
        );
        // v3 defaults
        let m = a.moe.as_ref().unwrap();
        assert_eq!(
            (m.topk_method, m.scoring_func),
            (TopkMethod::NoauxTc, ScoringFunc::Sigmoid)
        );
        // round trip through the hub form
        assert_eq!(ModelConfig::from_json(&a.to_hub_json()).unwrap(), a);
    }

    #[test]
    fn bad_fields_are_named() {
        let mut c = base();
        c["model_type"] = json!("mistral");
        assert!(ModelConfig::from_json(&c)
            .unwrap_err()
            .to_string()
            .contains("model_type"));
        let mut c = base();
        c["topk_method"] = json!("random");
        assert!(ModelConfig::from_json(&c)
            .unwrap_err()
            .to_string()
            .contains("topk_method"));
        let mut c = base();
        c["hidden_size"] = json!("big");
        assert!(ModelConfig::from_json(&c)
            .unwrap_err()
            .to_string()
            .contains("hidden_size"));
        let mut c = base();
        c.as_object_mut().unwrap().remove("kv_lora_rank");
        assert!(ModelConfig::from_json(&c)
            .unwrap_err()
            .to_string()
            .contains("kv_lora_rank"));
        let mut c = base();
        c["n_group"] = json!(3);
        assert!(ModelConfig::from_json(&c)
            .unwrap_err()
            .to_string()
            .contains("n_group"));
    }

    #[test]
    fn moe_layer_rule() {
        let c = ModelConfig::from_json(&base()).unwrap();
        assert!(!c.is_moe_layer(0));
        assert!(c.is_moe_layer(1));
    }
}
