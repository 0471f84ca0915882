//! Sampling responses from a checkpoint with the engine (the same code path `whale serve` runs),
//! many sequences in parallel.

use anyhow::Result;
use rayon::prelude::*;
use whale_engine::generate::{FinishReason, GenerateParams};
use whale_engine::sampler::SamplingParams;
use whale_engine::Engine;

pub struct Response {
    pub ids: Vec<u32>,
    /// decoded response (after the primed `<think>\n`), EOS excluded
    pub text: String,
    pub finished: bool,
}

/// `samples` responses to each prompt: greedy when `temperature` is 0, else sampled with seeds
/// derived from `seed` (one per prompt and sample, so runs are reproducible).
pub fn generate(
    engine: &Engine,
    prompts: &[Vec<u32>],
    samples: usize,
    temperature: f32,
    seed: u64,
    max_tokens: usize,
) -> Result<Vec<Vec<Response>>> {
    let tok = engine.tokenizer()?;
    let jobs: Vec<(usize, usize)> = (0..prompts.len())
        .flat_map(|p| (0..samples).map(move |s| (p, s)))
        .collect();
    let outs: Vec<Result<Response>> = jobs
        .par_iter()
        .map(|&(p, s)| {
            let params = GenerateParams {
                max_tokens,
                sampling: SamplingParams {
                    temperature,
                    seed: Some(
                        seed.wrapping_mul(1_000_003)
                            .wrapping_add((p * samples + s) as u64),
                    ),
                    ..SamplingParams::default()
                },
                stop: vec![],
                ignore_eos: false,
            };
            let (ids, finish, _, _) = engine.generate_ids(&prompts[p], &params, |_| Ok(true))?;
            Ok(Response {
                text: tok.decode(&ids)?,
                ids,
                finished: finish == FinishReason::Stop,
            })
        })
        .collect();
    let mut grouped: Vec<Vec<Response>> = (0..prompts.len())
        .map(|_| Vec::with_capacity(samples))
        .collect();
    for ((p, _), r) in jobs.into_iter().zip(outs) {
        grouped[p].push(r?);
    }
    Ok(grouped)
}
