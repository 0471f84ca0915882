//! Gradients of the training model (MLA, router, experts, MTP) against finite differences, in
//! float64 on a tiny config.

mod common;

use candle_core::{DType, Tensor};
use rand::{Rng, SeedableRng};
use whale_train::data::Batch;
use whale_train::pretrain::train_step;
use whale_train::{Options, Store, TrainModel};

fn loss(model: &TrainModel, b: &Batch, opts: Options) -> f64 {
    train_step(model, b, opts, 0.3)
        .unwrap()
        .loss
        .to_scalar::<f64>()
        .unwrap()
}

#[test]
fn gradients_match_finite_differences() -> anyhow::Result<()> {
    let cfg = common::tiny_config(24);
    let store = Store::init(&cfg, 3, DType::F64)?;
    // non-zero biases so the bias-steered selection is exercised
    let bias = store
        .vars
        .get("model.layers.1.mlp.gate.e_score_correction_bias")
        .unwrap();
    bias.set(&Tensor::new(
        &[0.05f64, -0.02, 0.0, 0.03],
        &candle_core::Device::Cpu,
    )?)?;
    let model = TrainModel::new(cfg, store)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let examples: Vec<whale_train::data::Example> = (0..3)
        .map(|i| whale_train::data::Example {
            ids: (0..7 + 2 * i).map(|_| rng.gen_range(0..24)).collect(),
            prompt_len: 2,
        })
        .collect();
    let batch = Batch::new(&examples, true, 2);
    let opts = Options {
        fp8: false,
        balance_alpha: 0.05,
        mtp: true,
    };
    let grads = train_step(&model, &batch, opts, 0.3)?.loss.backward()?;
    let checked = [
        "model.embed_tokens.weight",
        "model.layers.0.self_attn.q_a_proj.weight",
        "model.layers.0.self_attn.q_b_proj.weight",
        "model.layers.0.self_attn.kv_a_proj_with_mqa.weight",
        "model.layers.0.self_attn.kv_b_proj.weight",
        "model.layers.1.self_attn.kv_a_layernorm.weight",
        "model.layers.1.self_attn.o_proj.weight",
        "model.layers.0.mlp.up_proj.weight",
        "model.layers.1.mlp.gate.weight",
        "model.layers.1.mlp.experts.0.gate_proj.weight",
        "model.layers.1.mlp.experts.3.down_proj.weight",
        "model.layers.1.mlp.shared_experts.up_proj.weight",
        "model.layers.2.eh_proj.weight",
        "model.layers.2.mlp.gate.weight",
        "model.layers.2.shared_head.norm.weight",
        "lm_head.weight",
    ];
    let h = 1e-6;
    let mut worst = 0f64;
    for name in checked {
        let var = model.store.vars.get(name).unwrap();
        let g: Vec<f64> = grads.get(var).unwrap().flatten_all()?.to_vec1()?;
        let w0: Vec<f64> = var.as_tensor().flatten_all()?.to_vec1()?;
        let shape = var.as_tensor().dims().to_vec();
        // the largest-gradient entry and two random ones
        let big = (0..g.len())
            .max_by(|&a, &b| g[a].abs().total_cmp(&g[b].abs()))
            .unwrap();
        for idx in [big, rng.gen_range(0..g.len()), rng.gen_range(0..g.len())] {
            let at = |delta: f64| -> anyhow::Result<f64> {
                let mut w = w0.clone();
                w[idx] += delta;
                var.set(&Tensor::from_vec(
                    w,
                    shape.clone(),
                    &candle_core::Device::Cpu,
                )?)?;
                Ok(loss(&model, &batch, opts))
            };
            let fd = (at(h)? - at(-h)?) / (2.0 * h);
            var.set(&Tensor::from_vec(
                w0.clone(),
                shape.clone(),
                &candle_core::Device::Cpu,
            )?)?;
            let err = (fd - g[idx]).abs() / (1e-6 + g[idx].abs().max(fd.abs()));
            worst = worst.max(err);
            // central differences in f64 are good to ~1e-8 absolute here; a wrong backward is off by O(1)
            assert!(
                (fd - g[idx]).abs() <= 1e-6 + 1e-4 * g[idx].abs(),
                "{name}[{idx}]: autograd {} vs finite difference {fd}",
                g[idx]
            );
        }
        assert!(g.iter().any(|&x| x != 0.0), "{name} gets no gradient");
    }
    eprintln!("worst relative gradient error {worst:.2e}");
    Ok(())
}
