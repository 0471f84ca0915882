//! The `whale` binary as outside checkers call it: parity commands against the transformers
//! fixtures, and every kind of bad input ending in a one-line error and a non-zero exit.

use safetensors::{serialize_to_file, tensor::TensorView, Dtype, SafeTensors};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const CASES: [&str; 13] = [
    "tiny-v3",
    "tiny-v2-lite",
    "tiny-v2-group",
    "tiny-v3-fp8",
    "tiny-qwen2",
    "tiny-llama",
    "tiny-qwen3",
    "tiny-v32",
    "tiny-v32-fp8",
    "tiny-v4",
    "tiny-v32-b",
    "tiny-v4-b",
    "tiny-v4-fp8",
];

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata/fixtures")
        .join(name)
}

fn whale(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_whale"))
        .args(args)
        .output()
        .unwrap()
}

/// A scratch directory, removed when dropped (a failing test's too).
fn tmp(tag: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("whale-cli-{tag}-"))
        .tempdir()
        .unwrap()
}

fn copy_fixture(name: &str, tag: &str) -> tempfile::TempDir {
    let d = tmp(tag);
    for e in std::fs::read_dir(fixture(name)).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), d.path().join(e.file_name())).unwrap();
    }
    d
}

type Tensors = BTreeMap<String, (Dtype, Vec<usize>, Vec<u8>)>;

fn read_tensors(path: &Path) -> Tensors {
    let bytes = std::fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(n, v)| (n, (v.dtype(), v.shape().to_vec(), v.data().to_vec())))
        .collect()
}

fn write_tensors(path: &Path, t: &Tensors) {
    let views: Vec<(String, TensorView)> = t
        .iter()
        .map(|(n, (d, s, b))| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    serialize_to_file(views, None, path).unwrap();
}

/// Edits the shard holding `tensor` in a copy of a fixture.
fn edit_shard(dir: &Path, tensor: &str, f: impl FnOnce(&mut Tensors)) -> PathBuf {
    let index: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("model.safetensors.index.json")).unwrap(),
    )
    .unwrap();
    let file = dir.join(index["weight_map"][tensor].as_str().unwrap());
    let mut t = read_tensors(&file);
    f(&mut t);
    write_tensors(&file, &t);
    file
}

fn reference(name: &str) -> Tensors {
    read_tensors(&fixture(name).join("reference.safetensors"))
}

fn ints(t: &Tensors, k: &str) -> Vec<i64> {
    t[k].2
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn floats(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn join(ids: &[i64]) -> String {
    ids.iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

#[test]
fn logits_and_generate_commands_reproduce_transformers() {
    let out_tmp = tmp("parity");
    let out_dir = out_tmp.path();
    for name in CASES {
        let r = reference(name);
        let model = fixture(name);
        for i in 0..4 {
            let prompt = ints(&r, &format!("prompt_{i}"));
            let out = out_dir.join(format!("{name}-{i}.safetensors"));
            let o = whale(&[
                "logits",
                "--model",
                model.to_str().unwrap(),
                "--ids",
                &join(&prompt),
                "--out",
                out.to_str().unwrap(),
            ]);
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            let got = read_tensors(&out);
            assert_eq!(got.len(), 1);
            let (dtype, shape, bytes) = &got["logits"];
            assert_eq!(*dtype, Dtype::F32);
            assert_eq!(shape, &r[&format!("logits_{i}")].1);
            let want = floats(&r[&format!("logits_{i}")].2);
            let err = floats(bytes)
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(err <= 1e-4, "{name} prompt {i}: {err}");

            let o = whale(&[
                "generate",
                "--model",
                model.to_str().unwrap(),
                "--ids",
                &join(&prompt),
                "--max-tokens",
                "12",
                "--greedy",
                "--ignore-eos",
            ]);
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
            let got: Vec<i64> = v["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_i64().unwrap())
                .collect();
            assert_eq!(got, ints(&r, &format!("greedy_{i}")), "{name} prompt {i}");
        }
    }
}

#[test]
fn inspect_reports_the_latent_cache() {
    let o = whale(&["inspect", fixture("tiny-v3").to_str().unwrap(), "--json"]);
    assert!(o.status.success());
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["kv_cache_values_per_token_per_layer"], 40); // 32 + 8
    assert_eq!(v["kv_bytes_per_token_bf16"]["mla"], 3 * 40 * 2);
    assert_eq!(v["mtp_layers_on_disk"], 1);
    assert_eq!(v["layers"], 3);
    // a distill: keys and values of 2 heads of 24 dims per layer; next to it V3's latent width
    let o = whale(&["inspect", fixture("tiny-qwen3").to_str().unwrap(), "--json"]);
    assert!(o.status.success());
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["model_type"], "qwen3");
    assert_eq!(v["kv_cache_values_per_token_per_layer"], 2 * 2 * 24);
    assert_eq!(v["kv_bytes_per_token_bf16"]["cached"], 3 * 96 * 2);
    assert_eq!(v["kv_bytes_per_token_bf16"]["mla"], 3 * 576 * 2);
    assert_eq!(v["kv_bytes_per_token_bf16"]["mha"], 3 * 6 * 48 * 2);
    // V3.2: the indexer's 16-wide key after each latent row, its parameters counted
    let o = whale(&["inspect", fixture("tiny-v32").to_str().unwrap(), "--json"]);
    assert!(o.status.success());
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["kv_cache_values_per_token_per_layer"], 32 + 8 + 16);
    assert_eq!(v["kv_bytes_per_token_bf16"]["cached"], 3 * 56 * 2);
    assert_eq!(v["kv_bytes_per_token_bf16"]["mla"], 3 * 40 * 2);
    assert_eq!(v["indexer"]["index_topk"], 8);
    // 8 heads x 16 over the 48-wide query latent, a 16-wide key from 64, k_norm, 8 weights
    assert_eq!(
        v["params_indexer"],
        3 * (8 * 16 * 48 + 16 * 64 + 2 * 16 + 8 * 64)
    );
    // a directory holding config.json alone is accounted from the config
    let d = tmp("cfgonly");
    let o = whale(&[
        "synth",
        "--like",
        "v3.2-fp8",
        "--config-only",
        "--out",
        d.path().to_str().unwrap(),
    ]);
    assert!(o.status.success());
    let o = whale(&["inspect", d.path().to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["model_type"], "deepseek_v32");
    assert_eq!(v["kv_bytes_per_token_bf16"]["cached"], 61 * 704 * 2);
    assert!(v["stored_bytes"].is_null());
}

#[test]
fn run_streams_reasoning_then_answer() {
    let o = whale(&[
        "run",
        "--model",
        fixture("tiny-v3").to_str().unwrap(),
        "--prompt",
        "What is 12 + 30?",
        "--max-tokens",
        "8",
        "--seed",
        "3",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let s = String::from_utf8_lossy(&o.stdout);
    // the R1 template primes <think>, so the stream opens in the reasoning section
    assert!(s.starts_with("[thinking]"), "{s}");
}

/// A bad input: non-zero exit, a single-line message that names `what`, and no panic.
fn assert_clean_error(o: &Output, what: &str) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "expected failure naming {what}");
    assert!(!err.contains("panicked"), "panic: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert!(err.contains(what), "`{err}` does not name {what}");
}

fn logits_of(dir: &Path, ids: &str) -> Output {
    let out = dir.join("out.safetensors");
    whale(&[
        "logits",
        "--model",
        dir.to_str().unwrap(),
        "--ids",
        ids,
        "--out",
        out.to_str().unwrap(),
    ])
}

#[test]
fn bad_checkpoints_fail_cleanly() {
    // missing directory and missing files
    assert_clean_error(
        &logits_of(Path::new("/nonexistent/model"), "0,1"),
        "/nonexistent/model",
    );
    let d_tmp = copy_fixture("tiny-v3", "noconfig");
    let d = d_tmp.path();
    std::fs::remove_file(d.join("config.json")).unwrap();
    assert_clean_error(&logits_of(d, "0,1"), "config.json");
    let d_tmp = copy_fixture("tiny-v3", "noshard");
    let d = d_tmp.path();
    std::fs::remove_file(d.join("model-00002-of-00002.safetensors")).unwrap();
    assert_clean_error(&logits_of(d, "0,1"), "model-00002-of-00002.safetensors");

    // truncated and corrupt safetensors
    let d_tmp = copy_fixture("tiny-v3", "truncated");
    let d = d_tmp.path();
    let f = d.join("model-00001-of-00002.safetensors");
    let len = std::fs::metadata(&f).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&f)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    assert_clean_error(&logits_of(d, "0,1"), "model-00001-of-00002.safetensors");
    let d_tmp = copy_fixture("tiny-v3", "corrupt");
    let d = d_tmp.path();
    let f = d.join("model-00002-of-00002.safetensors");
    let mut b = std::fs::read(&f).unwrap();
    b[8..40].copy_from_slice(&[b'#'; 32]);
    std::fs::write(&f, b).unwrap();
    assert_clean_error(&logits_of(d, "0,1"), "model-00002-of-00002.safetensors");

    // wrong shape, wrong dtype, missing tensor
    let d_tmp = copy_fixture("tiny-v3", "shape");
    let d = d_tmp.path();
    edit_shard(d, "model.norm.weight", |t| {
        let e = t.get_mut("model.norm.weight").unwrap();
        e.1 = vec![32];
        e.2.truncate(64);
    });
    assert_clean_error(&logits_of(d, "0,1"), "model.norm.weight");
    let d_tmp = copy_fixture("tiny-v3", "dtype");
    let d = d_tmp.path();
    let name = "model.layers.0.self_attn.o_proj.weight";
    edit_shard(d, name, |t| t.get_mut(name).unwrap().0 = Dtype::I16);
    assert_clean_error(&logits_of(d, "0,1"), name);
    let d_tmp = copy_fixture("tiny-v3", "missing");
    let d = d_tmp.path();
    let name = "model.layers.1.mlp.experts.3.up_proj.weight";
    edit_shard(d, name, |t| {
        t.remove(name);
    });
    assert_clean_error(&logits_of(d, "0,1"), name);
    // removed from the index as well: still named as missing
    let idx = d.join("model.safetensors.index.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&idx).unwrap()).unwrap();
    v["weight_map"].as_object_mut().unwrap().remove(name);
    std::fs::write(&idx, v.to_string()).unwrap();
    assert_clean_error(&logits_of(d, "0,1"), name);
    // an fp8 weight whose block scales are missing
    let d_tmp = copy_fixture("tiny-v3-fp8", "noscale");
    let d = d_tmp.path();
    let name = "model.layers.0.self_attn.o_proj.weight_scale_inv";
    edit_shard(d, name, |t| {
        t.remove(name);
    });
    assert_clean_error(&logits_of(d, "0,1"), name);
}

#[test]
fn bad_configs_fail_cleanly() {
    for (field, value) in [
        ("model_type", "\"mistral\""),
        ("topk_method", "\"random_pick\""),
        ("scoring_func", "\"relu\""),
        ("hidden_size", "\"wide\""),
    ] {
        let d_tmp = copy_fixture("tiny-v3", &format!("cfg-{field}"));
        let d = d_tmp.path();
        let p = d.join("config.json");
        let mut v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        v[field] = serde_json::from_str(value).unwrap();
        std::fs::write(&p, v.to_string()).unwrap();
        assert_clean_error(&logits_of(d, "0,1"), field);
    }
    // the distills: heads that do not divide into groups, what no distill uses, a bad rope
    for (case, field, value, named) in [
        (
            "tiny-qwen2",
            "num_key_value_heads",
            "3",
            "num_key_value_heads",
        ),
        (
            "tiny-qwen2",
            "use_sliding_window",
            "true",
            "use_sliding_window",
        ),
        ("tiny-llama", "mlp_bias", "true", "mlp_bias"),
        ("tiny-llama", "hidden_act", "\"gelu\"", "hidden_act"),
        (
            "tiny-llama",
            "rope_scaling",
            r#"{"rope_type": "llama3", "factor": 8.0}"#,
            "low_freq_factor",
        ),
        ("tiny-qwen3", "head_dim", "23", "head_dim"),
        // V3.2: no indexer choice, an indexer narrower than the rope dims, a layer kind whale
        // does not run
        ("tiny-v32", "index_topk", "0", "index_topk"),
        ("tiny-v32", "index_head_dim", "4", "index_head_dim"),
        (
            "tiny-v32",
            "layer_types",
            r#"["indexed_attention", "sliding_attention", "indexed_attention"]"#,
            "layer_types",
        ),
        ("tiny-v32", "q_lora_rank", "null", "q_lora_rank"),
        // V4: an unknown layer kind or compression rate, no indexer choice
        (
            "tiny-v4",
            "layer_types",
            r#"["sliding_attention", "compressed_sparse_attention", "linear_attention", "sliding_attention"]"#,
            "layer_types",
        ),
        (
            "tiny-v4",
            "compress_rates",
            r#"{"compressed_sparse_attention": 0}"#,
            "compress_rates",
        ),
        (
            "tiny-v4",
            "compress_rates",
            r#"{"sparse_attention": 4}"#,
            "sparse_attention",
        ),
        ("tiny-v4", "index_topk", "0", "index_topk"),
        (
            "tiny-v4",
            "tie_word_embeddings",
            "true",
            "tie_word_embeddings",
        ),
        ("tiny-v4", "o_groups", "3", "o_groups"),
        (
            "tiny-v4",
            "mlp_layer_types",
            r#"["hash_moe", "moe"]"#,
            "mlp_layer_types",
        ),
        (
            "tiny-qwen3",
            "rope_scaling",
            r#"{"rope_type": "longrope"}"#,
            "longrope",
        ),
    ] {
        let d_tmp = copy_fixture(case, &format!("cfg-{field}"));
        let d = d_tmp.path();
        let p = d.join("config.json");
        let mut v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        v[field] = serde_json::from_str(value).unwrap();
        std::fs::write(&p, v.to_string()).unwrap();
        assert_clean_error(&logits_of(d, "0,1"), named);
    }
    // a bias or a norm the model type implies, missing
    for (case, name) in [
        ("tiny-qwen2", "model.layers.1.self_attn.k_proj.bias"),
        ("tiny-llama", "model.layers.0.self_attn.o_proj.bias"),
        ("tiny-qwen3", "model.layers.2.self_attn.q_norm.weight"),
        ("tiny-v32", "model.layers.1.self_attn.indexer.wk.weight"),
        ("tiny-v32", "model.layers.2.self_attn.indexer.k_norm.bias"),
        (
            "tiny-v32-fp8",
            "model.layers.0.self_attn.indexer.wq_b.weight_scale_inv",
        ),
        ("tiny-v4", "layers.1.attn.indexer.compressor.ape"),
        ("tiny-v4", "layers.2.attn.compressor.wgate.weight"),
        ("tiny-v4", "layers.0.ffn.gate.tid2eid"),
        ("tiny-v4", "hc_head_fn"),
        ("tiny-v4-fp8", "layers.0.attn.wq_a.scale"),
        ("tiny-v4-fp8", "layers.1.ffn.experts.3.w2.scale"),
    ] {
        let d_tmp = copy_fixture(case, "nobias");
        let d = d_tmp.path();
        edit_shard(d, name, |t| {
            t.remove(name);
        });
        assert_clean_error(&logits_of(d, "0,1"), name);
    }
    // V4's hash table: the wrong shape, an expert that does not exist
    let name = "layers.1.ffn.gate.tid2eid";
    for (tag, edit) in [("shape", 0usize), ("range", 1)] {
        let d_tmp = copy_fixture("tiny-v4", &format!("tid2eid-{tag}"));
        let d = d_tmp.path();
        edit_shard(d, name, |t| {
            let e = t.get_mut(name).unwrap();
            if edit == 0 {
                e.1 = vec![e.1[0] / 2, e.1[1] * 2];
            } else {
                e.2[8..12].copy_from_slice(&99i32.to_le_bytes());
            }
        });
        let o = logits_of(d, "0,1");
        assert_clean_error(&o, name);
        if edit == 1 {
            assert!(String::from_utf8_lossy(&o.stderr).contains("99"));
        }
    }
    // V4's quantised release: E8M0's NaN code as a scale (FP8 block and MXFP4 group), MXFP4
    // scales of the wrong shape or dtype
    for (tag, name) in [
        ("nan8", "layers.2.attn.wo_b.scale"),
        ("nan4", "layers.2.ffn.experts.5.w1.scale"),
        ("shape4", "layers.0.ffn.experts.0.w3.scale"),
        ("dtype4", "layers.0.ffn.experts.0.w3.scale"),
    ] {
        let d_tmp = copy_fixture("tiny-v4-fp8", tag);
        let d = d_tmp.path();
        edit_shard(d, name, |t| {
            let e = t.get_mut(name).unwrap();
            match tag {
                "shape4" => e.1 = vec![e.1[0] / 2, e.1[1] * 2],
                "dtype4" => e.0 = Dtype::I8,
                _ => e.2[1] = 0xff,
            }
        });
        let o = logits_of(d, "0,1");
        assert_clean_error(&o, name);
        let want = match tag {
            "nan8" => "non-finite",
            "nan4" => "NaN",
            "shape4" => "shape",
            _ => "F8_E8M0",
        };
        assert!(String::from_utf8_lossy(&o.stderr).contains(want), "{tag}");
    }
    let d_tmp = copy_fixture("tiny-v3", "cfg-json");
    let d = d_tmp.path();
    std::fs::write(d.join("config.json"), "{ not json").unwrap();
    assert_clean_error(&logits_of(d, "0,1"), "config.json");
}

#[test]
fn bad_prompts_fail_cleanly() {
    let m = fixture("tiny-v2-lite");
    assert_clean_error(&logits_of(&m, "0,384"), "384");
    assert_clean_error(&logits_of(&m, "0,x"), "--ids");
    assert_clean_error(&logits_of(&m, ""), "--ids");
    let long = join(&vec![5i64; 257]);
    assert_clean_error(&logits_of(&m, &long), "max_position_embeddings");
    let o = whale(&[
        "generate",
        "--model",
        m.to_str().unwrap(),
        "--ids",
        &join(&vec![5i64; 256]),
        "--max-tokens",
        "4",
        "--greedy",
    ]);
    assert_clean_error(&o, "max_position_embeddings");
    let o = whale(&[
        "run",
        "--model",
        m.to_str().unwrap(),
        "--prompt",
        "hi",
        "--temperature",
        "-1",
    ]);
    assert_clean_error(&o, "temperature");
    let o = whale(&["synth", "--like", "v9", "--out", "/tmp/never"]);
    assert_clean_error(&o, "v9");
}

#[test]
fn chat_keeps_history_and_answers_each_turn() {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_whale"))
        .args([
            "chat",
            "--model",
            fixture("tiny-v3").to_str().unwrap(),
            "--max-tokens",
            "4",
            "--seed",
            "1",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"What is 12 + 30?\nAnd 42 - 30?\n/reset\nHi\n/exit\n")
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let err = String::from_utf8_lossy(&o.stderr);
    let turns: Vec<usize> = err
        .lines()
        .filter_map(|l| l.strip_prefix('[')?.split(' ').next()?.parse().ok())
        .collect();
    assert_eq!(turns.len(), 3, "{err}");
    // the second turn's prompt holds the first exchange; after /reset the history is gone
    assert!(turns[1] > turns[0] + 4, "{turns:?}");
    assert!(turns[2] < turns[1], "{turns:?}");
}

fn json_of(o: &Output) -> serde_json::Value {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

/// The released V4-Flash config (FP8 `quantization_config`, `expert_dtype: fp4`,
/// `compress_ratios` with the MTP module's entry) is read for accounting: `inspect` and `cost`
/// answer from it, loading weights under it is refused with the reason.
#[test]
fn v4_flash_as_released_is_accounted() {
    let d_tmp = tmp("v4cfg");
    let d = d_tmp.path();
    let o = whale(&[
        "synth",
        "--like",
        "v4-flash",
        "--config-only",
        "--out",
        d.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let p = d.join("config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    let o = v.as_object_mut().unwrap();
    o.remove("layer_types");
    o.remove("compress_rates");
    o.remove("mlp_layer_types");
    let mut ratios = vec![0u64, 0];
    for _ in 0..20 {
        ratios.extend([4, 128]);
    }
    ratios.extend([4, 0]);
    o.insert("compress_ratios".into(), serde_json::json!(ratios));
    o.insert("num_hash_layers".into(), serde_json::json!(3));
    o.insert("expert_dtype".into(), serde_json::json!("fp4"));
    o.insert(
        "quantization_config".into(),
        serde_json::json!({"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8", "scale_fmt": "ue8m0", "weight_block_size": [128, 128]}),
    );
    std::fs::write(&p, v.to_string()).unwrap();
    let o = whale(&["inspect", d.to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["params_total"], 284_332_240_471u64);
    let kinds: Vec<u64> = v["v4_cache"]["by_layer_kind"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["layers"].as_u64().unwrap())
        .collect();
    assert_eq!(kinds, vec![2, 21, 20]);
    let o = whale(&[
        "cost",
        "--model",
        d.to_str().unwrap(),
        "--hardware",
        "h800",
        "--gpus",
        "8",
        "--context",
        "131072",
        "--json",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let c: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(c["v4"], true);
    // with a weight file it is a checkpoint, loaded as such: here one missing all but a tensor
    let mut t = Tensors::new();
    t.insert("norm.weight".into(), (Dtype::F32, vec![1], vec![0; 4]));
    write_tensors(&d.join("model.safetensors"), &t);
    assert_clean_error(&logits_of(d, "0,1"), "missing");
}

#[test]
fn cost_answers_from_a_config_alone() {
    let d_tmp = tmp("cost");
    let d = d_tmp.path();
    let v3 = d.join("v3");
    let o = whale(&[
        "synth",
        "--like",
        "v3",
        "--config-only",
        "--out",
        v3.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let png = d.join("cost.png");
    let args = [
        "cost",
        "--model",
        v3.to_str().unwrap(),
        "--hardware",
        "h200",
        "--gpus",
        "8",
        "--dtype",
        "fp8",
        "--batch",
        "32",
        "--context",
        "32768",
        "--json",
        "--plot",
        png.to_str().unwrap(),
    ];
    let r = json_of(&whale(&args));
    let total = r["params_total"].as_f64().unwrap() / 1e9;
    assert!((total - 671.0).abs() / 671.0 < 0.01, "{total}B");
    let active = r["params_active"].as_f64().unwrap() / 1e9;
    assert!((active - 37.5).abs() < 1.0, "{active}B");
    let kv = &r["kv"]["per_token"];
    assert_eq!(kv["mla"], 70272.0);
    assert_eq!((kv["mha"].as_f64().unwrap() / 70272.0).round(), 71.0);
    // a 32K-token sequence: 2.3 GB of latent cache
    assert!((r["kv"]["per_sequence"]["mla"].as_f64().unwrap() - 70272.0 * 32768.0).abs() < 1.0);
    assert_eq!(r["decode"]["step"]["bound"], "memory bandwidth");
    assert!(r["dollars"]["output_over_input"].as_f64().unwrap() > 1.0);
    assert!(std::fs::metadata(&png).unwrap().len() > 10_000);
    // the text form carries the same figures
    let text = whale(&args[..args.len() - 3]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("70272") && text.contains("71.1x less than MHA"),
        "{text}"
    );

    let lite = d.join("lite");
    whale(&[
        "synth",
        "--like",
        "v2-lite",
        "--config-only",
        "--out",
        lite.to_str().unwrap(),
    ]);
    let r = json_of(&whale(&[
        "cost",
        "--model",
        lite.join("config.json").to_str().unwrap(),
        "--hardware",
        "h100",
        "--json",
    ]));
    let total = r["params_total"].as_f64().unwrap() / 1e9;
    assert!((total - 15.7).abs() / 15.7 < 0.01, "{total}B");
    let active =
        (r["params_active"].as_f64().unwrap() - r["params"]["embedding"].as_f64().unwrap()) / 1e9;
    assert!((active - 2.45).abs() < 0.1, "{active}B");
    assert_eq!(r["kv"]["per_token"]["mla"], 31104.0);

    // a stored cpu-local profile is used as is
    let cache = d.join("cache");
    std::fs::create_dir_all(&cache).unwrap();
    std::fs::write(
        cache.join("cpu-local.toml"),
        "[[chip]]\nname = \"cpu-local\"\ndescription = \"a test machine\"\nmemory_gb = 24\nbandwidth_gb_s = 20\nbf16_tflops = 0.1\nprice_per_hour = 0.1\noverlap = false\nsource = \"written by a test\"\n",
    )
    .unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_whale"))
        .args([
            "cost",
            "--model",
            lite.to_str().unwrap(),
            "--hardware",
            "cpu-local",
            "--dtype",
            "int4",
            "--json",
        ])
        .env("WHALE_CACHE_DIR", &cache)
        .output()
        .unwrap();
    let r = json_of(&o);
    assert_eq!(r["hardware_description"], "a test machine");
    let o = Command::new(env!("CARGO_BIN_EXE_whale"))
        .args([
            "cost",
            "--model",
            lite.to_str().unwrap(),
            "--hardware",
            "cpu-local",
            "--gpus",
            "2",
        ])
        .env("WHALE_CACHE_DIR", &cache)
        .output()
        .unwrap();
    assert_clean_error(&o, "no interconnect");
    // a CPU adds memory and compute time: no overlap
    let s = &r["decode"]["step"];
    let sum = s["compute_s"].as_f64().unwrap() + s["memory_s"].as_f64().unwrap();
    assert!((s["seconds"].as_f64().unwrap() - sum).abs() < 1e-12);
}

#[test]
fn cost_refuses_bad_questions() {
    let d_tmp = tmp("cost-bad");
    let d = d_tmp.path();
    let v3 = d.join("v3");
    whale(&[
        "synth",
        "--like",
        "v3",
        "--config-only",
        "--out",
        v3.to_str().unwrap(),
    ]);
    let m = v3.to_str().unwrap();
    let cases: [(&[&str], &str); 8] = [
        (&["--hardware", "tpu-v9"], "unknown hardware `tpu-v9`"),
        (&["--hardware", "h100", "--dtype", "fp8"], "do not fit"),
        (
            &[
                "--hardware",
                "h200",
                "--gpus",
                "8",
                "--dtype",
                "fp8",
                "--batch",
                "100000",
                "--context",
                "32768",
            ],
            "at most",
        ),
        (
            &[
                "--hardware",
                "h200",
                "--gpus",
                "8",
                "--dtype",
                "fp8",
                "--context",
                "10000000",
            ],
            "max_position_embeddings",
        ),
        (
            &["--hardware", "h100", "--gpus", "12", "--dtype", "fp8"],
            "whole nodes",
        ),
        (
            &["--hardware", "h100", "--dtype", "fp4"],
            "unknown dtype `fp4`",
        ),
        (&["--hardware", "h100", "--batch", "0"], "must be positive"),
        (
            &[
                "--hardware",
                "h100",
                "--gpus",
                "16",
                "--dtype",
                "fp8",
                "--price-per-hour=-1",
            ],
            "--price-per-hour",
        ),
    ];
    for (extra, what) in cases {
        let mut args = vec!["cost", "--model", m];
        args.extend_from_slice(extra);
        assert_clean_error(&whale(&args), what);
    }
    // a model type whale does not run
    let llama = d.join("mistral");
    std::fs::create_dir_all(&llama).unwrap();
    std::fs::write(
        llama.join("config.json"),
        r#"{"model_type": "mistral", "hidden_size": 4096}"#,
    )
    .unwrap();
    assert_clean_error(
        &whale(&[
            "cost",
            "--model",
            llama.to_str().unwrap(),
            "--hardware",
            "h100",
        ]),
        "model_type `mistral`",
    );
    assert_clean_error(
        &whale(&[
            "cost",
            "--model",
            d.join("none").to_str().unwrap(),
            "--hardware",
            "h100",
        ]),
        "no config.json",
    );
    assert_clean_error(&whale(&["cost", "--hardware", "h100"]), "--model");
}

/// `whale bench` reports every run against the bandwidth roofline it measures, for any format;
/// bad settings are refused in one line.
#[test]
fn bench_reports_runs_and_refuses_bad_settings() {
    let m = fixture("tiny-v3");
    let m = m.to_str().unwrap();
    let base = ["bench", "--model", m, "--prompt-len", "8", "--threads", "2"];
    let r = json_of(&whale(
        &[
            &base[..],
            &[
                "--gen-len",
                "4",
                "--repeats",
                "2",
                "--dtype",
                "bf16-fast",
                "--json",
            ],
        ]
        .concat(),
    ));
    assert_eq!(r["dtype"], "bf16-fast");
    assert_eq!(r["threads"], 2);
    let batches = r["batches"].as_array().unwrap();
    assert_eq!(batches.len(), 1);
    let runs = batches[0]["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2);
    for run in runs {
        for k in ["prefill_tok_s", "decode_tok_s", "decode_pct_roofline"] {
            assert!(run[k].as_f64().unwrap() > 0.0, "{k}: {run}");
        }
    }
    assert!(batches[0]["weight_bytes_per_decode_step"].as_f64().unwrap() > 0.0);
    assert!(r["peak_rss_bytes"].as_f64().unwrap() >= r["weight_bytes"].as_f64().unwrap());
    // a list of batch sizes: each is measured and set against the first; a step of more
    // sequences reads more experts, so its roofline grows less than the batch
    let r = json_of(&whale(
        &[&base[..], &["--gen-len", "2", "--batch", "1,4", "--json"]].concat(),
    ));
    let batches = r["batches"].as_array().unwrap();
    let field = |i: usize, k: &str| batches[i][k].as_f64().unwrap();
    assert_eq!((field(0, "batch"), field(1, "batch")), (1.0, 4.0));
    assert_eq!(field(0, "best_decode_vs_first"), 1.0);
    assert!(field(1, "best_decode_vs_first") > 0.0);
    let (w1, w4) = (
        field(0, "weight_bytes_per_decode_step"),
        field(1, "weight_bytes_per_decode_step"),
    );
    assert!(w4 > w1 && w4 < 4.0 * w1, "{w1} {w4}");
    let x = field(1, "roofline_vs_first");
    assert!((x - 4.0 * w1 / w4).abs() < 1e-9 * x, "{x}");
    assert_clean_error(
        &whale(&[&base[..], &["--batch", "1,0"]].concat()),
        "must be positive",
    );
    assert_clean_error(
        &whale(&[&base[..], &["--dtype", "bf17"]].concat()),
        "unknown format `bf17`",
    );
    assert_clean_error(
        &whale(&[&base[..], &["--gen-len", "0"]].concat()),
        "must be positive",
    );
    assert_clean_error(
        &whale(&[&base[..], &["--gen-len", "100000"]].concat()),
        "max_position_embeddings",
    );
}

/// `RUST_LOG=info whale serve --log-format json`: one line per request, with its id, endpoint,
/// model, token counts, time to first token, duration and status; refusals logged too; and the
/// flags can come from the environment (`WHALE_PORT`, `WHALE_CACHE_MEM`).
#[test]
fn serve_logs_one_line_per_request() {
    use std::io::{BufRead, BufReader, Read, Write};
    let mut child = Command::new(env!("CARGO_BIN_EXE_whale"))
        .args(["--log-format", "json", "serve", "--model"])
        .arg(fixture("tiny-v3"))
        .env("RUST_LOG", "info")
        .env("WHALE_PORT", "0")
        .env("WHALE_CACHE_MEM", "8MiB")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut port = None;
    let mut line = String::new();
    while port.is_none() && err.read_line(&mut line).unwrap() > 0 {
        port = line
            .split("http://127.0.0.1:")
            .nth(1)
            .and_then(|r| r.split('/').next())
            .and_then(|p| p.parse::<u16>().ok());
        line.clear();
    }
    let port = port.expect("the server prints its address");
    let post = |body: &str| {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        write!(s, "POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    };
    assert!(
        post(r#"{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}"#)
            .starts_with("HTTP/1.1 200")
    );
    assert!(post(
        r#"{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5, "stream": true}"#
    )
    .starts_with("HTTP/1.1 200"));
    assert!(post(r#"{"frob": 1}"#).starts_with("HTTP/1.1 400"));
    std::thread::sleep(std::time::Duration::from_millis(300));
    child.kill().unwrap();
    child.wait().unwrap();
    let mut rest = String::new();
    err.read_to_string(&mut rest).unwrap();
    let lines: Vec<serde_json::Value> = rest
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|v: &serde_json::Value| v["target"] == "whale::request")
        .collect();
    assert_eq!(lines.len(), 3, "{rest}");
    for (l, stream) in lines[..2].iter().zip([false, true]) {
        assert_eq!(l["message"], "request");
        assert!(l["id"].as_str().unwrap().starts_with("chatcmpl-"), "{l}");
        assert_eq!(l["endpoint"], "chat");
        assert_eq!(l["model"], "tiny-v3");
        assert_eq!(l["stream"], stream);
        assert!(l["prompt_tokens"].as_u64().unwrap() > 0, "{l}");
        assert!(l["completion_tokens"].as_u64().unwrap() > 0, "{l}");
        assert!(
            l["cached_tokens"].is_u64() && l["ttft_ms"].is_f64() && l["duration_ms"].is_f64(),
            "{l}"
        );
        assert_eq!(l["status"], "200");
    }
    assert_eq!(lines[2]["status"], 400);
    assert_eq!(lines[2]["param"], "frob");
}

#[test]
fn a_draft_model_keeps_the_greedy_ids_and_reports_acceptance() {
    let main = fixture("tiny-qwen2");
    let main = main.to_str().unwrap();
    let args = [
        "generate",
        "--model",
        main,
        "--ids",
        "0,3,7",
        "--max-tokens",
        "24",
        "--ignore-eos",
    ];
    let plain = whale(&args);
    assert!(plain.status.success());
    for draft in ["tiny-qwen2", "tiny-llama", "tiny-v3"] {
        let d = fixture(draft);
        let o = whale(
            &[
                &args[..],
                &["--draft-model", d.to_str().unwrap(), "--draft-tokens", "3"],
            ]
            .concat(),
        );
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert_eq!(o.stdout, plain.stdout, "drafted by {draft}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("drafts accepted"), "{err}");
    }
    // the same tokenizer padded to other vocabulary sizes (as the 1.5B and 7B distills are):
    // padding ids either model picks never reach the other
    let dir = tmp("draft-vocab");
    let (big, small) = (dir.path().join("big"), dir.path().join("small"));
    for (out, vocab, layers, seed) in [(&big, "400", "2", "1"), (&small, "390", "1", "2")] {
        let o = whale(&[
            "synth",
            "--like",
            "r1-distill-qwen-1.5b",
            "--hidden",
            "64",
            "--vocab",
            vocab,
            "--layers",
            layers,
            "--seed",
            seed,
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    for (m, d) in [(&big, &small), (&small, &big)] {
        let base = [
            "generate",
            "--model",
            m.to_str().unwrap(),
            "--ids",
            "1,2,3",
            "--max-tokens",
            "80",
            "--ignore-eos",
        ];
        let plain = whale(&base);
        assert!(plain.status.success());
        let o = whale(&[&base[..], &["--draft-model", d.to_str().unwrap()]].concat());
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert_eq!(
            o.stdout,
            plain.stdout,
            "{} drafted by {}",
            m.display(),
            d.display()
        );
    }
    // a draft with another tokenizer, sampling, or no draft tokens: refused in one line
    let other = copy_fixture("tiny-llama", "draft-tokenizer");
    let tj = other.path().join("tokenizer.json");
    let text = std::fs::read_to_string(&tj).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let vocab = v["model"]["vocab"].as_object_mut().unwrap();
    let (a, b) = {
        // two ordinary tokens (the first ones are the added special tokens)
        let mut keys = vocab.keys().rev().cloned();
        (keys.next().unwrap(), keys.next().unwrap())
    };
    let (ia, ib) = (vocab[&a].clone(), vocab[&b].clone());
    vocab.insert(a, ib);
    vocab.insert(b, ia);
    std::fs::write(&tj, v.to_string()).unwrap();
    let o = whale(
        &[
            &args[..],
            &["--draft-model", other.path().to_str().unwrap()],
        ]
        .concat(),
    );
    assert_clean_error(&o, "tokenizer");
    let d = fixture("tiny-llama");
    let o = whale(
        &[
            &args[..],
            &["--draft-model", d.to_str().unwrap(), "--temperature", "0.8"],
        ]
        .concat(),
    );
    assert_clean_error(&o, "greedy");
    let o = whale(
        &[
            &args[..],
            &["--draft-model", d.to_str().unwrap(), "--draft-tokens", "0"],
        ]
        .concat(),
    );
    assert_clean_error(&o, "--draft-tokens");
    let o = whale(
        &[
            &args[..],
            &["--draft-model", d.to_str().unwrap(), "--speculative", "mtp"],
        ]
        .concat(),
    );
    assert!(!o.status.success());
}

#[test]
fn run_and_chat_take_a_draft_model_with_the_same_text() {
    let main = fixture("tiny-qwen2");
    let d = fixture("tiny-llama");
    let (main, d) = (main.to_str().unwrap(), d.to_str().unwrap());
    let run = [
        "run",
        "--model",
        main,
        "--prompt",
        "What is 2 + 3?",
        "--temperature",
        "0",
        "--max-tokens",
        "30",
    ];
    let plain = whale(&run);
    assert!(
        plain.status.success(),
        "{}",
        String::from_utf8_lossy(&plain.stderr)
    );
    let o = whale(&[&run[..], &["--draft-model", d, "--draft-tokens", "3"]].concat());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(o.stdout, plain.stdout);
    assert!(String::from_utf8_lossy(&o.stderr).contains("drafts accepted"));
    // two turns of a chat: the history the drafted answers leave is the plain one's
    let chat = |extra: &[&str]| {
        let mut args = vec![
            "chat",
            "--model",
            main,
            "--temperature",
            "0",
            "--max-tokens",
            "20",
        ];
        args.extend_from_slice(extra);
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_whale"))
            .args(&args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        c.stdin
            .take()
            .unwrap()
            .write_all(b"Hello there\nAnd 7 * 6?\n")
            .unwrap();
        c.wait_with_output().unwrap()
    };
    let plain = chat(&[]);
    assert!(
        plain.status.success(),
        "{}",
        String::from_utf8_lossy(&plain.stderr)
    );
    let o = chat(&["--draft-model", d]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(o.stdout, plain.stdout);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.matches("drafts accepted").count(), 2, "{err}");
    // sampling with a draft is refused before anything loads
    let o = whale(&["run", "--model", main, "--prompt", "x", "--draft-model", d]);
    assert_clean_error(&o, "greedy");
}

/// `whale inspect FILE.gguf`: tensors by ggml type and the bytes a decode step reads (the
/// embedding's one row, the active share of the experts); a damaged file is a one-line error.
#[test]
fn inspect_reads_gguf_files() {
    use whale_kernels::ggml::GgmlType;
    use whale_model::gguf::{write, Meta};
    let d_tmp = tmp("gguf");
    let p = d_tmp.path().join("m.gguf");
    let q4k = vec![0u8; 4 * 144]; // 4 Q4_K blocks: 1024 values
    let q8 = vec![0u8; 8 * 34]; // 8 Q8_0 blocks: 256 values
    let f32s = vec![0u8; 16 * 4];
    write(
        &p,
        &[
            ("general.architecture", Meta::Str("deepseek2".into())),
            ("deepseek2.expert_count", Meta::U32(4)),
            ("deepseek2.expert_used_count", Meta::U32(1)),
        ],
        &[
            (
                "blk.0.ffn_up_exps.weight",
                GgmlType::Q4_K,
                vec![4, 1, 256],
                &q4k,
            ),
            ("blk.0.attn_q.weight", GgmlType::Q8_0, vec![8, 32], &q8),
            ("token_embd.weight", GgmlType::F32, vec![4, 4], &f32s),
        ],
    )
    .unwrap();
    let o = whale(&["inspect", p.to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["architecture"], "deepseek2");
    assert_eq!(v["tensors"], 3);
    assert_eq!(v["bytes"], 4 * 144 + 8 * 34 + 64);
    // a quarter of the experts, all of attn_q, one of the embedding's four rows
    assert_eq!(v["decode_step_bytes"], 144 + 8 * 34 + 16);
    let types: Vec<&str> = v["by_type"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["F32", "Q8_0", "Q4_K"]);
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() - 100]).unwrap();
    assert_clean_error(&whale(&["inspect", p.to_str().unwrap()]), "past the end");
}

/// `whale quantize --to-gguf` writes a GGUF that `--model FILE.gguf` runs: F32 gives the
/// checkpoint's logits exactly; an architecture GGUF export does not write is refused.
#[test]
fn quantize_to_gguf_round_trips_through_logits() {
    let d_tmp = tmp("togguf");
    let d = d_tmp.path();
    let file = d.join("m.gguf");
    let src = fixture("tiny-qwen2");
    let o = whale(&[
        "quantize",
        "--model",
        src.to_str().unwrap(),
        "--to-gguf",
        "f32",
        "--out",
        file.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let run = |model: &Path, out: &Path| {
        let o = whale(&[
            "logits",
            "--model",
            model.to_str().unwrap(),
            "--ids",
            "0,5,7,9,11",
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        std::fs::read(out).unwrap()
    };
    assert_eq!(run(&src, &d.join("a.st")), run(&file, &d.join("b.st")));
    let o = whale(&[
        "quantize",
        "--model",
        fixture("tiny-v3").to_str().unwrap(),
        "--to-gguf",
        "q8_0",
        "--out",
        file.to_str().unwrap(),
    ]);
    assert_clean_error(&o, "deepseek_v3");
    let o = whale(&[
        "quantize",
        "--model",
        src.to_str().unwrap(),
        "--to-gguf",
        "iq2_xxs",
        "--out",
        file.to_str().unwrap(),
    ]);
    assert_clean_error(&o, "iq2_xxs");
}
