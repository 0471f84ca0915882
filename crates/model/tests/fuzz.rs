//! Property tests of what whale reads from disk: a context-cache file with any bytes changed
//! loads only records that are exactly as saved (or none), and a checkpoint whose config or
//! safetensors header is damaged is refused with an error, never a panic. `PROPTEST_CASES`
//! sets the number of cases.

use proptest::prelude::*;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use whale_model::paged::{BlockPool, PagedBatch};
use whale_model::{AttentionForm, Checkpoint, Model};

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata/fixtures/tiny-v3")
}

fn model() -> &'static Model {
    static M: OnceLock<Model> = OnceLock::new();
    M.get_or_init(|| Model::load(&Checkpoint::open(&fixture()).unwrap()).unwrap())
}

/// A saved context cache of a 30-token prompt (7 full blocks of 4), and the pool it came from.
fn saved() -> &'static (Vec<u8>, Vec<Vec<f32>>) {
    static S: OnceLock<(Vec<u8>, Vec<Vec<f32>>)> = OnceLock::new();
    S.get_or_init(|| {
        let m = model();
        let mut pool = BlockPool::new(&m.config, 4, 16);
        let prompt: Vec<u32> = (10..40).collect();
        let (mut s, _) = pool.start(&prompt, 0);
        assert!(pool.reserve(&mut s, prompt.len()));
        let mut batch = PagedBatch::new(&mut pool, vec![&mut s], vec![&prompt]);
        m.forward_batch(&[&prompt], &mut batch, AttentionForm::Auto)
            .unwrap();
        pool.finish(&mut s);
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.bin");
        pool.save_prefixes(&f, 1).unwrap();
        (std::fs::read(&f).unwrap(), rows(&pool))
    })
}

/// Every cached block's rows, sorted, to compare pools by content.
fn rows(pool: &BlockPool) -> Vec<Vec<f32>> {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("r.bin");
    pool.save_prefixes(&f, 1).unwrap();
    let b = std::fs::read(&f).unwrap();
    let header = 72;
    let n = u64::from_le_bytes(b[56..64].try_into().unwrap()) as usize;
    if n == 0 {
        return vec![];
    }
    let rec = (b.len() - header) / n;
    let mut out: Vec<Vec<f32>> = b[header..]
        .chunks_exact(rec)
        .map(|r| bytemuck::pod_collect_to_vec::<u8, f32>(&r[16..]))
        .collect();
    out.sort_by(|a, b| a.partial_cmp(b).unwrap());
    out
}

fn load(bytes: &[u8]) -> BlockPool {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("c.bin");
    std::fs::write(&f, bytes).unwrap();
    let mut pool = BlockPool::new(&model().config, 4, 16);
    pool.load_prefixes(&f, 1).unwrap();
    pool
}

/// A copy of the fixture with `config.json` and the first shard as given.
fn checkpoint_with(dir: &Path, config: &[u8], shard: &[u8]) {
    for e in std::fs::read_dir(fixture()).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, dir.join(p.file_name().unwrap())).unwrap();
    }
    std::fs::write(dir.join("config.json"), config).unwrap();
    std::fs::write(dir.join("model-00001-of-00002.safetensors"), shard).unwrap();
}

fn config_value() -> impl Strategy<Value = serde_json::Value> {
    prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        (-3i64..3).prop_map(serde_json::Value::from),
        any::<u32>().prop_map(serde_json::Value::from),
        any::<u64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f)
            .map_or(serde_json::Value::Null, serde_json::Value::Number)),
        "[a-z_]{0,12}".prop_map(serde_json::Value::from),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(64), ..ProptestConfig::default() })]

    #[test]
    fn a_changed_cache_file_loads_only_records_as_saved(
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in prop::option::of(any::<prop::sample::Index>()),
    ) {
        let (good, want) = saved();
        let mut bytes = good.clone();
        for (at, v) in &edits {
            let i = at.index(bytes.len());
            bytes[i] = bytes[i].wrapping_add(v | 1);
        }
        if let Some(c) = cut {
            bytes.truncate(c.index(bytes.len()));
        }
        let got = rows(&load(&bytes));
        // whatever loaded is exactly one of the saved blocks
        for r in &got {
            prop_assert!(want.contains(r), "a changed record was loaded");
        }
    }

    #[test]
    fn any_bytes_as_a_cache_file_load_nothing_and_do_not_panic(
        bytes in prop::collection::vec(any::<u8>(), 0..4096),
    ) {
        prop_assert!(rows(&load(&bytes)).is_empty());
    }

    #[test]
    fn a_damaged_config_is_refused_or_loads(
        key in prop::sample::select(vec![
            "hidden_size", "intermediate_size", "moe_intermediate_size", "kv_lora_rank",
            "q_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim",
            "max_position_embeddings", "n_group", "topk_group", "topk_method",
            "n_routed_experts", "n_shared_experts", "num_experts_per_tok", "num_attention_heads",
            "num_key_value_heads", "num_hidden_layers", "num_nextn_predict_layers",
            "rms_norm_eps", "rope_theta", "rope_scaling", "vocab_size", "scoring_func",
            "first_k_dense_replace", "moe_layer_freq", "routed_scaling_factor", "model_type",
        ]),
        value in config_value(),
    ) {
        let mut cfg: serde_json::Value =
            serde_json::from_slice(&std::fs::read(fixture().join("config.json")).unwrap()).unwrap();
        cfg[key] = value;
        let shard = std::fs::read(fixture().join("model-00001-of-00002.safetensors")).unwrap();
        let dir = tempfile::tempdir().unwrap();
        checkpoint_with(dir.path(), &serde_json::to_vec(&cfg).unwrap(), &shard);
        if let Ok(ck) = Checkpoint::open(dir.path()) {
            let _ = Model::load(&ck);
        }
    }

    #[test]
    fn a_damaged_safetensors_header_is_refused(
        edits in prop::collection::vec((0usize..2048, any::<u8>()), 1..6),
    ) {
        let config = std::fs::read(fixture().join("config.json")).unwrap();
        let mut shard = std::fs::read(fixture().join("model-00001-of-00002.safetensors")).unwrap();
        let header = 8 + u64::from_le_bytes(shard[..8].try_into().unwrap()) as usize;
        for (at, v) in &edits {
            let i = at % header;
            shard[i] = shard[i].wrapping_add(v | 1);
        }
        let dir = tempfile::tempdir().unwrap();
        checkpoint_with(dir.path(), &config, &shard);
        if let Ok(ck) = Checkpoint::open(dir.path()) {
            let _ = Model::load(&ck);
        }
    }
}
