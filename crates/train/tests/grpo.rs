//! GRPO: group advantages and one policy step.

mod common;

use candle_core::DType;
use whale_train::data::{Batch, Example};
use whale_train::grpo::{advantages, grpo_loss, sequence_logprobs};
use whale_train::optim::AdamW;
use whale_train::{Store, TrainModel};

#[test]
fn advantages_are_normalised_within_the_group() {
    let a = advantages(&[1.0, 0.0, 0.0, 1.0]);
    for (x, want) in a.iter().zip([1.0, -1.0, -1.0, 1.0]) {
        assert!((x - want).abs() < 1e-3, "{a:?}");
    }
    assert_eq!(advantages(&[0.5, 0.5, 0.5]), vec![0.0; 3]);
}

fn response_logprob(model: &TrainModel, b: &Batch, row: usize) -> f64 {
    let lp: Vec<Vec<f32>> = sequence_logprobs(model, b).unwrap().to_vec2().unwrap();
    lp[row]
        .iter()
        .zip(&b.weights[row])
        .map(|(l, w)| (l * w) as f64)
        .sum()
}

#[test]
fn a_grpo_step_raises_the_rewarded_sample_against_the_unrewarded_one() -> anyhow::Result<()> {
    let cfg = common::tiny_config(30);
    let policy = TrainModel::new(cfg.clone(), Store::init(&cfg, 9, DType::F32)?)?;
    let reference = TrainModel::new(cfg, policy.store.snapshot()?)?;
    let prompt = vec![0u32, 3, 12, 7, 4];
    let rewarded = [prompt.clone(), vec![20, 21, 22, 1]].concat();
    let unrewarded = [prompt.clone(), vec![25, 9, 28, 1]].concat();
    let ex = |ids: Vec<u32>| Example {
        ids,
        prompt_len: prompt.len(),
    };
    let batch = Batch::new(&[ex(rewarded), ex(unrewarded)], true, 2);
    let adv = advantages(&[1.0, 0.0]);
    let gap = |m: &TrainModel| response_logprob(m, &batch, 0) - response_logprob(m, &batch, 1);
    let before = gap(&policy);
    let ref_lp = sequence_logprobs(&reference, &batch)?.detach();
    let mut opt = AdamW::new(0.0);
    let (loss, kl) = grpo_loss(&policy, &batch, &adv, None, &ref_lp, 0.04, 0.2)?;
    assert!(kl.abs() < 1e-6, "policy == reference at the start, KL {kl}");
    let grads = loss.backward()?;
    opt.step(policy.store.trainable(), &grads, 1e-3)?;
    let after = gap(&policy);
    assert!(
        after > before + 0.01,
        "log p(rewarded) - log p(unrewarded): {before} -> {after}"
    );
    Ok(())
}
