//! Training loop behaviour: checkpoints the engine loads, bias balancing, falling loss, resume.

mod common;

use candle_core::{DType, Tensor};
use whale_model::{AttentionForm, Checkpoint, LatentCache, Logits, Model};
use whale_train::config::TrainConfig;
use whale_train::pretrain::{update_biases, write_model_files};
use whale_train::{Options, Store, TrainModel};

#[test]
fn a_saved_checkpoint_loads_in_the_engine_with_identical_logits() -> anyhow::Result<()> {
    let cfg = common::tiny_config(40);
    let store = Store::init(&cfg, 11, DType::F32)?;
    let tmp = tempdir("ckpt");
    let dir = tmp.path();
    write_model_files(&cfg, dir)?;
    store.save(&cfg, dir, DType::F32)?;
    let model = TrainModel::new(cfg.clone(), store)?;
    let ids: Vec<u32> = vec![0, 5, 9, 33, 2, 17, 39, 4, 4, 21];
    let got = model
        .forward(std::slice::from_ref(&ids), &[ids.len()], Options::default())?
        .logits
        .squeeze(0)?;
    let engine = Model::load(&Checkpoint::open(dir)?)?;
    let mut cache = LatentCache::new(&engine.config, 32);
    let want = engine.forward(&ids, &mut cache, AttentionForm::Plain, Logits::All)?;
    let want = Tensor::from_vec(want, (ids.len(), 40), &candle_core::Device::Cpu)?;
    let err: f32 = (got - want)?.abs()?.max_all()?.to_scalar()?;
    // two float32 implementations summing in different orders
    assert!(err < 1e-4, "max abs logit difference {err}");
    Ok(())
}

#[test]
fn the_balancing_bias_moves_against_load() -> anyhow::Result<()> {
    let cfg = common::tiny_config(40);
    let store = Store::init(&cfg, 1, DType::F32)?;
    let name = "model.layers.1.mlp.gate.e_score_correction_bias".to_string();
    let vio = update_biases(
        &store,
        std::slice::from_ref(&name),
        &[vec![9.0, 1.0, 5.0, 5.0]],
        0.01,
    )?;
    let b: Vec<f32> = store.get(&name)?.to_vec1()?;
    assert_eq!(b, vec![-0.01, 0.01, 0.0, 0.0]);
    assert!((vio[0] - (9.0 / 5.0 - 1.0)).abs() < 1e-6);
    Ok(())
}

fn tiny_run(steps: usize) -> String {
    format!(
        r#"
[model]
model_type = "deepseek_v3"
vocab_size = 300
hidden_size = 32
intermediate_size = 64
moe_intermediate_size = 16
num_hidden_layers = 2
num_attention_heads = 2
q_lora_rank = 16
kv_lora_rank = 16
qk_nope_head_dim = 8
qk_rope_head_dim = 8
v_head_dim = 8
n_routed_experts = 4
n_shared_experts = 1
num_experts_per_tok = 2
n_group = 2
topk_group = 1
topk_method = "noaux_tc"
scoring_func = "sigmoid"
norm_topk_prob = true
routed_scaling_factor = 2.5
first_k_dense_replace = 1
num_nextn_predict_layers = 1
max_position_embeddings = 256
rope_theta = 10000.0
rms_norm_eps = 1e-6

[train]
steps = {steps}
batch_size = 8
lr = 1e-2
warmup = 2
grad_clip = 1.0
seed = 4
bias_update_speed = 0.001
mtp_lambda = 0.3
save_every = 5

[[data.tasks]]
name = "add2"
pool = 500
"#
    )
}

#[test]
fn loss_falls_and_a_resumed_run_matches_an_uninterrupted_one() -> anyhow::Result<()> {
    let (tmp_a, tmp_b) = (tempdir("full"), tempdir("resumed"));
    let (a, b) = (tmp_a.path(), tmp_b.path());
    let full = whale_train::pretrain::run(&TrainConfig::parse(&tiny_run(16))?, a, false, false)?;
    whale_train::pretrain::run(
        &TrainConfig::parse(&tiny_run(16))?.with_steps_cut(5),
        b,
        false,
        false,
    )?;
    // as if the process had died after logging steps it did not save
    let log_b = b.join("metrics.jsonl");
    let mut text = std::fs::read_to_string(&log_b)?;
    text.push_str("{\"step\": 6, \"loss\": 99.0}\n{\"step\": 7, \"loss\": 99.0}\n");
    std::fs::write(&log_b, text)?;
    let resumed = whale_train::pretrain::run(&TrainConfig::parse(&tiny_run(16))?, b, true, false)?;
    assert_eq!(resumed.steps, 16);
    let rows = whale_train::metrics::read_jsonl(&a.join("metrics.jsonl"))?;
    let rows_b = whale_train::metrics::read_jsonl(&log_b)?;
    let steps = |r: &[serde_json::Value]| r.iter().map(|x| x["step"].as_u64()).collect::<Vec<_>>();
    assert_eq!(steps(&rows_b), (1..=16).map(Some).collect::<Vec<_>>());
    assert_eq!(rows_b[6]["loss"], rows[6]["loss"]);
    let first = rows[0]["loss"].as_f64().unwrap();
    let last = rows.last().unwrap()["loss"].as_f64().unwrap();
    assert!(last < 0.6 * first, "loss {first} -> {last}");
    let wa =
        candle_core::safetensors::load(a.join("model.safetensors"), &candle_core::Device::Cpu)?;
    let wb =
        candle_core::safetensors::load(b.join("model.safetensors"), &candle_core::Device::Cpu)?;
    for (name, t) in &wa {
        let d: f32 = (t - &wb[name])?.abs()?.max_all()?.to_scalar()?;
        assert!(d == 0.0, "{name} differs by {d} after resuming");
    }
    assert_eq!(full.tokens, resumed.tokens);
    Ok(())
}

#[test]
fn bad_configs_are_refused() {
    assert!(TrainConfig::parse(&tiny_run(0)).is_err());
    assert!(TrainConfig::parse(&tiny_run(5).replace("lr = 1e-2", "lr = -1.0")).is_err());
    assert!(TrainConfig::parse(&tiny_run(5).replace("name = \"add2\"", "name = \"div2\"")).is_ok());
    assert!(TrainConfig::parse(
        &tiny_run(5).replace("model_type = \"deepseek_v3\"", "model_type = \"llama\"")
    )
    .is_err());
    assert!(TrainConfig::parse(&tiny_run(5).replace("seed = 4", "seed = 4\nsed = 5")).is_err());
    assert!(
        TrainConfig::parse(&tiny_run(5).replace("seed = 4", "seed = 4\nmulti_turn = 1.5")).is_err()
    );
    assert!(
        TrainConfig::parse(&tiny_run(5).replace("seed = 4", "seed = 4\nmulti_turn = 0.5")).is_ok()
    );
    let bad_task =
        TrainConfig::parse(&tiny_run(5).replace("name = \"add2\"", "name = \"div2\"")).unwrap();
    assert!(whale_train::pretrain::run(&bad_task, tempdir("bad").path(), false, false).is_err());
    assert!(whale_train::pretrain::run(
        &TrainConfig::parse(&tiny_run(5)).unwrap(),
        tempdir("nostate").path(),
        true,
        false
    )
    .is_err());
}

/// A scratch directory, removed when dropped (a failing test's too).
fn tempdir(tag: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("whale-train-test-{tag}-"))
        .tempdir()
        .unwrap()
}
