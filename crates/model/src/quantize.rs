//! `whale quantize`: a checkpoint with its linear layers stored block-quantised, so a big model
//! is quantised once rather than on every start.
//!
//! Layout (documented in the README): the same tensor names as the source; each quantised
//! linear weight is `int8` [rows, cols] (Q8_0) or `uint8` [rows, cols / 2] (Q4_0, byte j of a
//! 32-block holds values j and j + 16 in its low and high nibble) with its f16 block scales in
//! `<name>_whale_scale` [rows, cols / 32]; config.json carries
//! `"whale_quantization": {"format": "q8_0" | "q4_0", "block_size": 32, "scale_dtype": "F16"}`.
//! Everything else — including linear weights whose rows 32 does not divide, with their FP8
//! `weight_scale_inv` (V4: `scale`) and `quantization_config` — is copied byte for byte, so
//! loading the result gives exactly what converting the source at load (`--dtype`) gives.

use anyhow::{bail, Context, Result};
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use std::path::Path;
use whale_kernels::{Format, WeightData};

use crate::checkpoint::Checkpoint;

/// Weights the model loads through `Checkpoint::linear` (and so quantises).
pub fn is_linear(name: &str) -> bool {
    const SUFFIXES: &[&str] = &[
        "q_a_proj.weight",
        "q_b_proj.weight",
        "q_proj.weight",
        "kv_a_proj_with_mqa.weight",
        "kv_b_proj.weight",
        "o_proj.weight",
        "gate_proj.weight",
        "up_proj.weight",
        "down_proj.weight",
        "eh_proj.weight",
        "lm_head.weight",
        "shared_head.head.weight",
        // V3.2's indexer (its weights_proj stays as stored)
        "indexer.wq_b.weight",
        "indexer.wk.weight",
        // V4 under its released names (`head.weight` is also lm_head's suffix)
        "head.weight",
        "attn.wq_a.weight",
        "attn.wq_b.weight",
        "attn.wkv.weight",
        "attn.wo_a.weight",
        "attn.wo_b.weight",
        "compressor.wkv.weight",
        "compressor.wgate.weight",
        ".w1.weight",
        ".w2.weight",
        ".w3.weight",
        // V4's MTP modules join the streams through these
        "e_proj.weight",
        "h_proj.weight",
    ];
    SUFFIXES.iter().any(|s| name.ends_with(s))
}

enum Out<'a> {
    Borrowed(Dtype, Vec<usize>, &'a [u8]),
    Owned(Dtype, Vec<usize>, Vec<u8>),
}

pub fn save_quantized(ck: &Checkpoint, format: Format, out: &Path) -> Result<()> {
    if !matches!(format, Format::Q8_0 | Format::Q4_0) {
        bail!("whale quantize writes int8 or int4 checkpoints");
    }
    if ck.whale_quant.is_some() {
        bail!(
            "{} is already a whale-quantised checkpoint",
            ck.dir.display()
        );
    }
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let mut tensors: Vec<(String, Out)> = Vec::new();
    // [rows, cols] of a linear weight as the model multiplies it (V4's MXFP4 experts store two
    // values a byte); the block formats take rows 32 divides
    let shape = |name: &str| {
        let e = ck.entry(name)?;
        let packed = matches!(e.dtype, Dtype::I8 | Dtype::U8);
        (is_linear(name) && e.shape.len() == 2)
            .then(|| (e.shape[0], e.shape[1] * if packed { 2 } else { 1 }))
            .filter(|(_, cols)| cols.is_multiple_of(32))
    };
    for name in ck.tensor_names() {
        let e = ck.entry(name).expect("listed");
        // the block scales of a weight quantised here are folded into it
        let base = name
            .strip_suffix("_scale_inv")
            .map(str::to_string)
            .or_else(|| name.strip_suffix(".scale").map(|m| format!("{m}.weight")));
        if base.is_some_and(|b| shape(&b).is_some()) {
            continue;
        }
        let quantised = if let Some((rows, cols)) = shape(name) {
            match ck.matrix(name, rows, cols)?.convert(format).map(|q| q.data) {
                Some(WeightData::Q8_0 { qs, scales }) => Some((
                    Out::Owned(
                        Dtype::I8,
                        vec![rows, cols],
                        bytemuck::cast_slice(qs.as_slice()).to_vec(),
                    ),
                    bytemuck::cast_slice(scales.as_slice()).to_vec(),
                )),
                Some(WeightData::Q4_0 { qs, scales }) => Some((
                    Out::Owned(Dtype::U8, vec![rows, cols / 2], qs.as_slice().to_vec()),
                    bytemuck::cast_slice(scales.as_slice()).to_vec(),
                )),
                _ => None,
            }
            .map(|(w, s)| (w, s, rows, cols))
        } else {
            None
        };
        match quantised {
            Some((w, scales, rows, cols)) => {
                tensors.push((name.into(), w));
                tensors.push((
                    format!("{name}_whale_scale"),
                    Out::Owned(Dtype::F16, vec![rows, cols / 32], scales),
                ));
            }
            None => tensors.push((
                name.into(),
                Out::Borrowed(e.dtype, e.shape.clone(), ck.bytes(name)?),
            )),
        }
    }
    let views = tensors
        .iter()
        .map(|(n, t)| {
            let v = match t {
                Out::Borrowed(d, s, b) => TensorView::new(*d, s.clone(), b),
                Out::Owned(d, s, b) => TensorView::new(*d, s.clone(), b),
            };
            v.map(|v| (n.clone(), v))
                .map_err(|e| anyhow::anyhow!("tensor {n}: {e:?}"))
        })
        .collect::<Result<Vec<_>>>()?;
    let path = out.join("model.safetensors");
    safetensors::serialize_to_file(views, None, &path)
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e:?}", path.display()))?;

    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(ck.dir.join("config.json"))?)?;
    let o = cfg
        .as_object_mut()
        .context("config.json is not an object")?;
    let fmt = if format == Format::Q8_0 {
        "q8_0"
    } else {
        "q4_0"
    };
    o.insert(
        "whale_quantization".into(),
        serde_json::json!({"format": fmt, "block_size": 32, "scale_dtype": "F16"}),
    );
    std::fs::write(out.join("config.json"), serde_json::to_string_pretty(&cfg)?)?;
    for f in [
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    ] {
        let src = ck.dir.join(f);
        if src.exists() {
            std::fs::copy(&src, out.join(f))
                .with_context(|| format!("cannot copy {}", src.display()))?;
        }
    }
    Ok(())
}
