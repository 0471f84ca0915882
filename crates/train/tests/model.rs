//! The training forward pass against transformers' reference logits and against the engine.

use candle_core::{DType, Tensor};
use std::path::{Path, PathBuf};
use whale_model::{AttentionForm, LatentCache, Logits, ModelConfig};
use whale_train::{Options, Store, TrainModel};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata/fixtures")
        .join(name)
}

#[test]
fn forward_matches_transformers_on_the_v3_fixture() -> anyhow::Result<()> {
    let dir = fixture("tiny-v3");
    let cfg = ModelConfig::from_file(&dir.join("config.json"))?;
    let store = Store::load(&dir, &cfg, DType::F32)?;
    let model = TrainModel::new(cfg.clone(), store)?;
    let refs = candle_core::safetensors::load(
        dir.join("reference.safetensors"),
        &candle_core::Device::Cpu,
    )?;
    for i in 0..4 {
        let ids: Vec<u32> = refs[&format!("prompt_{i}")]
            .to_dtype(DType::I64)?
            .to_vec1::<i64>()?
            .into_iter()
            .map(|x| x as u32)
            .collect();
        let want: Tensor = refs[&format!("logits_{i}")].clone();
        let out = model.forward(std::slice::from_ref(&ids), &[ids.len()], Options::default())?;
        let got = out.logits.squeeze(0)?;
        let err: f32 = (got - want)?.abs()?.max_all()?.to_scalar()?;
        assert!(err < 2e-4, "prompt {i}: max abs logit error {err}");
    }
    Ok(())
}

#[test]
fn mtp_logits_match_the_engine() -> anyhow::Result<()> {
    let dir = fixture("tiny-v3");
    let cfg = ModelConfig::from_file(&dir.join("config.json"))?;
    let store = Store::load(&dir, &cfg, DType::F32)?;
    let model = TrainModel::new(cfg.clone(), store)?;
    let ids: Vec<u32> = vec![0, 17, 93, 5, 250, 11, 42, 7];
    let opts = Options {
        mtp: true,
        ..Options::default()
    };
    let out = model.forward(std::slice::from_ref(&ids), &[ids.len()], opts)?;
    let got = out.mtp_logits.unwrap().squeeze(0)?;

    let engine = whale_model::Model::load(&whale_model::Checkpoint::open(&dir)?)?;
    let mut cache = LatentCache::new(&cfg, 64);
    let hidden = engine.forward_hidden(&ids, &mut cache, AttentionForm::Absorbed)?;
    let _ = Logits::All;
    let d = cfg.hidden_size;
    let n = ids.len() - 1;
    let mut mcache = engine.new_mtp_cache(64).unwrap();
    let want = engine.mtp_logits(&hidden[..n * d], &ids[1..], &mut mcache)?;
    let want = Tensor::from_vec(want, (n, cfg.vocab_size), &candle_core::Device::Cpu)?;
    let err: f32 = (got - want)?.abs()?.max_all()?.to_scalar()?;
    assert!(err < 2e-4, "MTP max abs logit error {err}");
    Ok(())
}
