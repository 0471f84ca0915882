//! `whale inspect` and `whale synth`.

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::PathBuf;
use whale_model::params::{count, kv_bytes_per_token};
use whale_model::rope::softmax_scale;
use whale_model::synth::{shaped_config, write_checkpoint, Overrides, Preset};
use whale_model::{Checkpoint, ModelConfig};

#[derive(Args)]
pub struct InspectArgs {
    /// checkpoint directory, or a GGUF file
    dir: PathBuf,
    /// print JSON instead of a table
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct SynthArgs {
    /// the real model whose shape to copy: v2-lite, v3, v3-fp8, v3.2, v3.2-fp8, r1-distill-qwen-1.5b,
    /// r1-distill-qwen-7b, r1-distill-llama-8b or r1-0528-qwen3-8b
    #[arg(long)]
    like: String,
    /// main decoder layers (the real count by default)
    #[arg(long)]
    layers: Option<usize>,
    /// routed experts per MoE layer
    #[arg(long)]
    experts: Option<usize>,
    #[arg(long)]
    vocab: Option<usize>,
    #[arg(long)]
    hidden: Option<usize>,
    /// MTP modules to write after the main layers (v3: 1 by default)
    #[arg(long)]
    mtp: Option<usize>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// largest shard in MiB
    #[arg(long, default_value_t = 4096)]
    shard_mib: usize,
    #[arg(long)]
    out: PathBuf,
    /// write only config.json (enough for `whale cost` and `whale inspect`-style accounting of
    /// models too big to materialise, such as the full V3)
    #[arg(long)]
    config_only: bool,
}

fn human(n: u64) -> String {
    let n = n as f64;
    if n >= 1e9 {
        format!("{:.2}B", n / 1e9)
    } else if n >= 1e6 {
        format!("{:.2}M", n / 1e6)
    } else if n >= 1e3 {
        format!("{:.1}K", n / 1e3)
    } else {
        format!("{n}")
    }
}

/// `whale inspect FILE.gguf`: the architecture, the tensors by ggml type, and the bytes a
/// decode step reads (every weight but the embedding, of which one row; of expert tensors the
/// share `expert_used_count / expert_count`).
fn inspect_gguf(a: &InspectArgs) -> Result<()> {
    use whale_model::gguf::Gguf;
    let g = Gguf::open(&a.dir)?;
    let arch = g.string("general.architecture")?.to_string();
    let (used, experts) = match (
        g.uint(&format!("{arch}.expert_used_count")),
        g.uint(&format!("{arch}.expert_count")),
    ) {
        (Ok(u), Ok(e)) if e > 0 && u <= e => (u as f64, e as f64),
        _ => (1.0, 1.0),
    };
    let mut step = 0f64;
    for (name, t) in &g.tensors {
        step += if name.starts_with("token_embd.") {
            t.len as f64 / t.shape.first().copied().unwrap_or(1).max(1) as f64
        } else if name.contains("_exps.") {
            t.len as f64 * used / experts
        } else {
            t.len as f64
        };
    }
    let types = g.by_type();
    if a.json {
        let by: Vec<serde_json::Value> = types
            .iter()
            .map(|(t, n, b)| json!({"type": t.name(), "tensors": n, "bytes": b}))
            .collect();
        println!(
            "{}",
            json!({
                "file": a.dir.display().to_string(), "parts": g.paths.len(),
                "architecture": arch, "name": g.string("general.name").ok(),
                "tensors": g.tensors.len(), "bytes": g.total_bytes(),
                "by_type": by, "decode_step_bytes": step.round() as u64,
            })
        );
        return Ok(());
    }
    println!(
        "file             {} ({} part(s))",
        a.dir.display(),
        g.paths.len()
    );
    println!(
        "architecture     {arch}{}",
        g.string("general.name")
            .map(|n| format!(" ({n})"))
            .unwrap_or_default()
    );
    println!(
        "tensors          {} ({:.3} GB)",
        g.tensors.len(),
        g.total_bytes() as f64 / 1e9
    );
    for (t, n, b) in &types {
        println!("  {:<14} {n} tensors, {:.3} GB", t.name(), *b as f64 / 1e9);
    }
    println!(
        "decode step      {:.3} GB of weights read a token",
        step / 1e9
    );
    Ok(())
}

pub fn inspect(a: InspectArgs) -> Result<()> {
    if whale_model::gguf::is_gguf(&a.dir) {
        return inspect_gguf(&a);
    }
    // a directory with config.json alone (`whale synth --config-only`, or a released config
    // whose weights are too big to have here) is accounted from the config
    let has_weights = ["model.safetensors", "model.safetensors.index.json"]
        .iter()
        .any(|f| a.dir.join(f).exists());
    let ck = if has_weights || !a.dir.join("config.json").exists() {
        Some(Checkpoint::open(&a.dir)?)
    } else {
        None
    };
    let owned;
    let c = match &ck {
        Some(ck) => &ck.config,
        None => {
            owned = ModelConfig::from_file(&a.dir.join("config.json"))?;
            &owned
        }
    };
    let p = count(c);
    let kv = kv_bytes_per_token(c, 2);
    let mut formats: BTreeMap<String, usize> = BTreeMap::new();
    if let Some(ck) = &ck {
        for n in ck.tensor_names() {
            *formats
                .entry(format!("{:?}", ck.entry(n).unwrap().dtype))
                .or_default() += 1;
        }
    }
    let stored_bytes = ck.as_ref().map(|ck| ck.total_stored_bytes());
    let mtp_on_disk = (0..c.num_nextn_predict_layers)
        .filter(|k| {
            ck.as_ref().is_some_and(|ck| {
                ck.has(&format!(
                    "model.layers.{}.eh_proj.weight",
                    c.num_hidden_layers + k
                )) || ck.has(&format!("mtp.{k}.e_proj.weight"))
            })
        })
        .count();
    let moe_layers = (0..c.num_hidden_layers)
        .filter(|&i| c.is_moe_layer(i))
        .count();
    let width = c.cache_width();
    let v4 = whale_model::params::v4_cache(c, 2);
    if a.json {
        let v = json!({
            "model_type": c.model_type.as_str(),
            "layers": c.num_hidden_layers, "moe_layers": moe_layers, "mtp_layers_on_disk": mtp_on_disk,
            "hidden_size": c.hidden_size, "num_attention_heads": c.num_attention_heads,
            "q_lora_rank": c.q_lora_rank, "kv_lora_rank": c.kv_lora_rank,
            "params_total": p.total(), "params_active_per_token": p.active(), "params_mtp": p.mtp,
            "params_indexer": p.indexer,
            "params_compressor": p.compressor,
            "params_hyper_connections": p.hyper_connections,
            "v4_cache": v4.as_ref().map(|k| json!({
                "by_layer_kind": k.kinds.iter().map(|(kind, layers, per_token, fixed)| json!({
                    "kind": kind, "layers": layers, "bytes_per_token_per_layer_bf16": per_token,
                    "fixed_bytes_per_layer_bf16": fixed,
                })).collect::<Vec<_>>(),
                "bytes_per_sequence_bf16": {
                    "128k": k.per_sequence(128 * 1024), "1m": k.per_sequence(1 << 20),
                },
                "v3_mla_bytes_per_sequence_bf16": {
                    "128k": 61.0 * 576.0 * 2.0 * 131072.0, "1m": 61.0 * 576.0 * 2.0 * 1048576.0,
                },
            })),
            "indexer": c.indexer.as_ref().map(|i| json!({"index_n_heads": i.index_n_heads, "index_head_dim": i.index_head_dim, "index_topk": i.index_topk})),
            "kv_cache_values_per_token_per_layer": width,
            "num_key_value_heads": c.gqa.as_ref().map(|g| g.num_key_value_heads),
            "head_dim": c.gqa.as_ref().map(|g| g.head_dim),
            "kv_bytes_per_token_bf16": {"cached": kv.cached, "mla": kv.mla, "mha": kv.mha, "gqa8": kv.gqa8},
            "mha_over_mla": kv.mha as f64 / kv.mla as f64,
            "mla_over_cached": kv.mla as f64 / kv.cached as f64,
            "tensor_dtypes": formats, "stored_bytes": stored_bytes,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "model            {} ({})",
        c.model_type.as_str(),
        a.dir.display()
    );
    println!(
        "layers           {} main ({} dense + {} MoE), {} MTP module(s) on disk",
        c.num_hidden_layers,
        c.num_hidden_layers - moe_layers,
        moe_layers,
        mtp_on_disk
    );
    if let Some(g) = &c.gqa {
        println!(
            "attention        GQA: hidden {}, {} query heads sharing {} key/value heads, head_dim {}{}{}",
            c.hidden_size,
            c.num_attention_heads,
            g.num_key_value_heads,
            g.head_dim,
            if g.qkv_bias { ", q/k/v biases" } else { "" },
            if g.qk_norm { ", q/k norms" } else { "" },
        );
    } else if c.v4.is_none() {
        println!(
        "attention        MLA: hidden {}, {} heads, q_lora_rank {}, kv_lora_rank {}, qk nope/rope {}/{}, v {}, softmax scale {:.6}",
        c.hidden_size,
        c.num_attention_heads,
        c.q_lora_rank.map(|r| r.to_string()).unwrap_or("none".into()),
        c.kv_lora_rank,
        c.qk_nope_head_dim,
        c.qk_rope_head_dim,
        c.v_head_dim,
        softmax_scale(c)
    );
    }
    if let (Some(v), Some(k)) = (&c.v4, &v4) {
        println!(
            "attention        V4: hidden {}, {} heads of {} sharing one key/value head (rope {}), q_lora_rank {}, {} output groups of rank {}, window {}, CSA every {} tokens (indexer {} heads of {}, top {}), HCA every {}",
            c.hidden_size, c.num_attention_heads, v.head_dim, v.qk_rope_head_dim,
            c.q_lora_rank.unwrap_or(0), v.o_groups, v.o_lora_rank, v.sliding_window,
            v.compress_rate_csa, v.index_n_heads, v.index_head_dim, v.index_topk, v.compress_rate_hca
        );
        let kinds: Vec<String> = k
            .kinds
            .iter()
            .map(|(kind, l, _, _)| format!("{l} {kind}"))
            .collect();
        println!(
            "layers by kind   {}; {} hash-routed MoE layers, {} hyper-connection streams",
            kinds.join(", "),
            v.hash_layers.iter().filter(|&&h| h).count(),
            v.hc_mult
        );
    }
    if let Some(i) = &c.indexer {
        println!(
            "sparse attention lightning indexer: {} heads of {}, each query reads its top {} tokens ({} parameters)",
            i.index_n_heads,
            i.index_head_dim,
            i.index_topk,
            human(p.indexer)
        );
    }
    if let Some(m) = &c.moe {
        println!(
            "experts          {} routed (top-{}, {} / {}, {} groups keep {}), {} shared, width {}, norm_topk_prob {}, routed_scaling_factor {}",
            m.n_routed_experts,
            m.num_experts_per_tok,
            m.topk_method.as_str(),
            m.scoring_func.as_str(),
            m.n_group,
            m.topk_group,
            m.n_shared_experts,
            m.moe_intermediate_size,
            m.norm_topk_prob,
            m.routed_scaling_factor
        );
    }
    if let Some(v) = &c.v4 {
        println!(
            "rope             sliding layers theta {}; compressed layers theta {}{}, max {} positions",
            c.rope_theta,
            v.compress_rope_theta,
            v.compress_yarn.as_ref().map_or(String::new(), |y| format!(
                ", YaRN factor {} over {} original positions",
                y.factor, y.original_max_position_embeddings
            )),
            c.max_position_embeddings
        );
    } else {
        match (&c.yarn, &c.llama3) {
        (Some(y), _) => println!(
            "rope             theta {}, YaRN factor {} over {} original positions, max {}",
            c.rope_theta, y.factor, y.original_max_position_embeddings, c.max_position_embeddings
        ),
        (None, Some(l)) => println!(
            "rope             theta {}, llama3 factor {} (low/high freq {}/{}) over {} original positions, max {}",
            c.rope_theta, l.factor, l.low_freq_factor, l.high_freq_factor, l.original_max_position_embeddings, c.max_position_embeddings
        ),
        (None, None) => println!(
            "rope             theta {}, max {} positions",
            c.rope_theta, c.max_position_embeddings
        ),
    }
    }
    let fmt: Vec<String> = formats.iter().map(|(k, v)| format!("{k} x{v}")).collect();
    match stored_bytes {
        Some(b) => println!(
            "tensors          {} ({:.2} GB stored)",
            fmt.join(", "),
            b as f64 / 1e9
        ),
        None => println!("tensors          none here (config.json only)"),
    }
    println!(
        "parameters       total {} ({}), active per token {} ({})",
        human(p.total()),
        p.total(),
        human(p.active()),
        p.active()
    );
    if p.mtp > 0 {
        println!(
            "                 + {} in MTP modules (not part of the main model)",
            human(p.mtp)
        );
    }
    if let Some(k) = &v4 {
        for (kind, l, per, fixed) in &k.kinds {
            println!(
                "kv cache         {kind}: {l} layers x ({per:.1} bytes per token + {fixed} bytes per sequence) in bf16"
            );
        }
        let gb = |b: f64| b / 1e9;
        let v3 = |ctx: f64| 61.0 * 576.0 * 2.0 * ctx;
        println!(
            "kv per sequence  128K tokens {:.3} GB, 1M tokens {:.3} GB ({:.1} bytes per token in all); V3's MLA: {:.2} GB, {:.2} GB; MHA of these heads: {:.0} GB at 128K",
            gb(k.per_sequence(128 * 1024)),
            gb(k.per_sequence(1 << 20)),
            k.per_token(),
            gb(v3(131072.0)),
            gb(v3(1048576.0)),
            gb(kv.mha as f64 * 131072.0)
        );
        return Ok(());
    }
    if c.gqa.is_some() {
        println!(
            "kv cache/token   GQA {} values/layer = {} bytes in bf16 ({} layers)",
            width, kv.cached, c.num_hidden_layers
        );
        println!(
            "                 vs multi-head attention with the same heads: {} bytes ({:.1}x); an MLA cache of V3's width: {} bytes ({:.2}x this cache)",
            kv.mha,
            kv.mha as f64 / kv.cached as f64,
            kv.mla,
            kv.mla as f64 / kv.cached as f64
        );
        return Ok(());
    }
    if c.indexer.is_some() {
        println!(
            "kv cache/token   MLA {} + indexer key {} values/layer = {} bytes in bf16 ({} layers; the latent alone {} bytes)",
            c.mla_width(),
            width - c.mla_width(),
            kv.cached,
            c.num_hidden_layers,
            kv.mla
        );
    } else {
        println!(
            "kv cache/token   MLA {} values/layer = {} bytes in bf16 ({} layers)",
            width, kv.mla, c.num_hidden_layers
        );
    }
    println!(
        "                 vs multi-head attention with the same heads: {} bytes ({:.1}x), GQA-8: {} bytes ({:.1}x)",
        kv.mha,
        kv.mha as f64 / kv.cached as f64,
        kv.gqa8,
        kv.gqa8 as f64 / kv.cached as f64
    );
    Ok(())
}

pub fn synth(a: SynthArgs) -> Result<()> {
    let preset = Preset::parse(&a.like)?;
    if a.shard_mib == 0 {
        bail!("--shard-mib must be positive");
    }
    let cfg = shaped_config(
        preset,
        &Overrides {
            layers: a.layers,
            experts: a.experts,
            vocab: a.vocab,
            hidden: a.hidden,
            mtp: a.mtp,
        },
    )?;
    let p = count(&cfg);
    if a.config_only {
        std::fs::create_dir_all(&a.out)
            .with_context(|| format!("cannot create {}", a.out.display()))?;
        let path = a.out.join("config.json");
        std::fs::write(&path, serde_json::to_string_pretty(&cfg.to_hub_json())?)
            .with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("wrote {} ({} parameters)", path.display(), human(p.total()));
        return Ok(());
    }
    eprintln!(
        "writing a {} checkpoint: {} parameters ({} active) to {}",
        a.like,
        human(p.total() + p.mtp),
        human(p.active()),
        a.out.display()
    );
    write_checkpoint(&cfg, &a.out, a.seed, a.shard_mib << 20, true)?;
    Ok(())
}

#[derive(Args)]
pub struct QuantizeArgs {
    #[arg(long)]
    model: PathBuf,
    /// int8 (q8_0) or int4 (q4_0)
    #[arg(long, required_unless_present = "to_gguf")]
    dtype: Option<String>,
    /// write a GGUF file (`--out FILE.gguf`) with the linear layers in this ggml type: F32, F16,
    /// BF16 or Q8_0 (qwen2, qwen3 and llama models)
    #[arg(long, conflicts_with = "dtype")]
    to_gguf: Option<String>,
    #[arg(long)]
    out: PathBuf,
}

pub fn quantize(a: QuantizeArgs) -> Result<()> {
    if let Some(fmt) = &a.to_gguf {
        use whale_kernels::ggml::GgmlType;
        let ty = GgmlType::ALL
            .into_iter()
            .find(|t| t.name().eq_ignore_ascii_case(fmt))
            .ok_or_else(|| {
                anyhow::anyhow!("--to-gguf: unknown ggml type `{fmt}` (F32, F16, BF16, Q8_0)")
            })?;
        let ck = Checkpoint::open(&a.model)?;
        whale_model::gguf::export(&ck, &a.out, ty)
            .map_err(|e| anyhow::anyhow!("--to-gguf: {e:#}"))?;
        eprintln!(
            "wrote {}; load it with --model {}",
            a.out.display(),
            a.out.display()
        );
        return Ok(());
    }
    let dtype = a.dtype.as_deref().expect("required without --to-gguf");
    let format = match whale_model::parse_dtype(dtype)? {
        Some(f @ (whale_model::Format::Q8_0 | whale_model::Format::Q4_0)) => f,
        _ => bail!("--dtype: whale quantize writes int8 or int4"),
    };
    if a.out.exists() && a.out.canonicalize()? == a.model.canonicalize()? {
        bail!("--out must differ from --model");
    }
    let ck = Checkpoint::open(&a.model)?;
    let t = std::time::Instant::now();
    whale_model::quantize::save_quantized(&ck, format, &a.out)?;
    eprintln!(
        "wrote {} ({:.1}s); load it with --model {} (no --dtype needed)",
        a.out.display(),
        t.elapsed().as_secs_f64(),
        a.out.display()
    );
    Ok(())
}
