//! The same weights in the other layouts a checkpoint can come in give the same numbers:
//! the transformers-5 config form, a single unsharded file, f16 storage, and rope rows
//! permuted into half-split order with `rope_interleave: false`.

use half::f16;
use safetensors::{serialize_to_file, tensor::TensorView, Dtype, SafeTensors};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use whale_model::{AttentionForm, Checkpoint, Logits, Model};

type Tensors = BTreeMap<String, (Dtype, Vec<usize>, Vec<u8>)>;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata/fixtures")
        .join(name)
}

/// A scratch directory, removed when dropped (a failing test's too).
fn tmp(tag: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("whale-layouts-{tag}-"))
        .tempdir()
        .unwrap()
}

fn read(path: &Path) -> Tensors {
    let bytes = std::fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(n, v)| (n, (v.dtype(), v.shape().to_vec(), v.data().to_vec())))
        .collect()
}

fn write(path: &Path, t: &Tensors) {
    let views: Vec<(String, TensorView)> = t
        .iter()
        .map(|(n, (d, s, b))| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    serialize_to_file(views, None, path).unwrap();
}

/// Every tensor of a fixture checkpoint, shards merged.
fn all_tensors(name: &str) -> Tensors {
    let mut t = Tensors::new();
    for f in [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ] {
        t.extend(read(&fixture(name).join(f)));
    }
    t
}

fn config(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture(name).join("config.json")).unwrap())
        .unwrap()
}

/// A single-file checkpoint in `dir` with `cfg` and `t`.
fn single_file(dir: &Path, cfg: &Value, t: &Tensors) {
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    write(&dir.join("model.safetensors"), t);
}

fn reference_logits(name: &str, i: usize) -> (Vec<u32>, Vec<f32>) {
    let t = read(&fixture(name).join("reference.safetensors"));
    let ids = t[&format!("prompt_{i}")]
        .2
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as u32)
        .collect();
    let l = t[&format!("logits_{i}")]
        .2
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    (ids, l)
}

fn logits(dir: &Path, ids: &[u32]) -> Vec<f32> {
    let m = Model::load(&Checkpoint::open(dir).unwrap()).unwrap();
    let mut cache = m.new_cache(ids.len());
    m.forward(ids, &mut cache, AttentionForm::Plain, Logits::All)
        .unwrap()
}

fn max_err(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn transformers5_config_and_single_file() {
    let name = "tiny-v3";
    let mut cfg = config(name);
    let o = cfg.as_object_mut().unwrap();
    let theta = o.remove("rope_theta").unwrap();
    let mut rp = o.remove("rope_scaling").unwrap();
    let rp_o = rp.as_object_mut().unwrap();
    rp_o.remove("type");
    rp_o.insert("rope_type".into(), json!("yarn"));
    rp_o.insert("rope_theta".into(), theta);
    o.insert("rope_parameters".into(), rp);
    let dir = tmp("tf5");
    single_file(dir.path(), &cfg, &all_tensors(name));
    let (ids, want) = reference_logits(name, 1); // 91 tokens, past the original 64: YaRN matters
    assert!(max_err(&logits(dir.path(), &ids), &want) <= 1e-4);
}

#[test]
fn f16_storage_reads_the_same_values_as_f32() {
    let name = "tiny-v2-group"; // stored in f32
    let t = all_tensors(name);
    let mut as_f16 = Tensors::new();
    let mut rounded_f32 = Tensors::new();
    for (n, (d, s, b)) in &t {
        assert_eq!(*d, Dtype::F32);
        let h: Vec<f16> = b
            .chunks_exact(4)
            .map(|c| f16::from_f32(f32::from_le_bytes(c.try_into().unwrap())))
            .collect();
        as_f16.insert(
            n.clone(),
            (
                Dtype::F16,
                s.clone(),
                h.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ),
        );
        rounded_f32.insert(
            n.clone(),
            (
                Dtype::F32,
                s.clone(),
                h.iter().flat_map(|v| v.to_f32().to_le_bytes()).collect(),
            ),
        );
    }
    let (a, b) = (tmp("f16"), tmp("f16-as-f32"));
    single_file(a.path(), &config(name), &as_f16);
    single_file(b.path(), &config(name), &rounded_f32);
    let (ids, _) = reference_logits(name, 0);
    let (la, lb) = (logits(a.path(), &ids), logits(b.path(), &ids));
    assert_eq!(la, lb, "f16 weights widen exactly to f32");
}

#[test]
fn half_split_rope_rows_with_rope_interleave_false() {
    for name in ["tiny-v3", "tiny-v2-lite"] {
        let cfg0 = config(name);
        let c = cfg0.as_object().unwrap();
        let g = |k: &str| c[k].as_u64().unwrap() as usize;
        let (heads, nope, dr, dc) = (
            g("num_attention_heads"),
            g("qk_nope_head_dim"),
            g("qk_rope_head_dim"),
            g("kv_lora_rank"),
        );
        // new row j of a rope band takes old row perm[j]: evens first, then odds
        let perm: Vec<usize> = (0..dr).step_by(2).chain((1..dr).step_by(2)).collect();
        let mut t = all_tensors(name);
        let permute = |t: &mut Tensors, tensor: &str, starts: Vec<usize>| {
            let e = t.get_mut(tensor).unwrap();
            let row_bytes = e.2.len() / e.1[0];
            let old = e.2.clone();
            for s in starts {
                for (j, &src) in perm.iter().enumerate() {
                    e.2[(s + j) * row_bytes..(s + j + 1) * row_bytes]
                        .copy_from_slice(&old[(s + src) * row_bytes..(s + src + 1) * row_bytes]);
                }
            }
        };
        let layers = g("num_hidden_layers");
        for l in 0..layers {
            let p = format!("model.layers.{l}.self_attn.");
            let q = if t.contains_key(&format!("{p}q_b_proj.weight")) {
                "q_b_proj"
            } else {
                "q_proj"
            };
            permute(
                &mut t,
                &format!("{p}{q}.weight"),
                (0..heads).map(|h| h * (nope + dr) + nope).collect(),
            );
            permute(&mut t, &format!("{p}kv_a_proj_with_mqa.weight"), vec![dc]);
        }
        let mut cfg = cfg0.clone();
        cfg["rope_interleave"] = json!(false);
        let dir = tmp(&format!("neox-{name}"));
        single_file(dir.path(), &cfg, &t);
        let (ids, want) = reference_logits(name, 1);
        let err = max_err(&logits(dir.path(), &ids), &want);
        assert!(err <= 1e-4, "{name}: {err}");
    }
}

#[test]
fn an_fp8_nan_code_is_refused_at_load() {
    let name = "tiny-v3-fp8";
    let mut t = all_tensors(name);
    let w = "model.layers.0.self_attn.o_proj.weight";
    assert_eq!(t[w].0, Dtype::F8_E4M3);
    let dir = tmp("fp8-nan");
    single_file(dir.path(), &config(name), &t);
    assert!(Model::load(&Checkpoint::open(dir.path()).unwrap()).is_ok());
    t.get_mut(w).unwrap().2[5] = 0xff; // -NaN
    single_file(dir.path(), &config(name), &t);
    let err = Model::load(&Checkpoint::open(dir.path()).unwrap())
        .err()
        .expect("a NaN code is an error");
    let msg = format!("{err:#}");
    assert!(msg.contains(w) && msg.contains("NaN code"), "{msg}");
}
