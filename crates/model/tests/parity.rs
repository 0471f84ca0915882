//! Parity with Hugging Face transformers on the fixture checkpoints (testdata/fixtures, made by
//! shared/tools/make_fixtures.py): logits at every position, greedy continuations, and the
//! agreement of the two attention forms and of cached decoding with full recomputation.

use safetensors::{Dtype, SafeTensors};
use std::path::PathBuf;
use whale_model::{AttentionForm, Checkpoint, Logits, Model};

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

struct Reference {
    prompts: Vec<Vec<u32>>,
    logits: Vec<Vec<f32>>,
    greedy: Vec<Vec<u32>>,
}

fn reference(name: &str) -> Reference {
    let bytes = std::fs::read(fixture(name).join("reference.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let ints = |k: String| -> Vec<u32> {
        let t = st.tensor(&k).unwrap();
        assert_eq!(t.dtype(), Dtype::I64);
        t.data()
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as u32)
            .collect()
    };
    let floats = |k: String| -> Vec<f32> {
        let t = st.tensor(&k).unwrap();
        t.data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    };
    Reference {
        prompts: (0..4).map(|i| ints(format!("prompt_{i}"))).collect(),
        logits: (0..4).map(|i| floats(format!("logits_{i}"))).collect(),
        greedy: (0..4).map(|i| ints(format!("greedy_{i}"))).collect(),
    }
}

fn load(name: &str) -> Model {
    Model::load(&Checkpoint::open(&fixture(name)).unwrap()).unwrap()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best as u32
}

/// float32 forward vs float32 transformers: only summation order differs, so agreement is at
/// the level of f32 rounding amplified through a few layers (the fixtures README: about 1e-4).
const LOGIT_TOL: f32 = 1e-4;

#[test]
fn logits_match_transformers_at_every_position_in_both_attention_forms() {
    for name in CASES {
        let model = load(name);
        let r = reference(name);
        for (i, prompt) in r.prompts.iter().enumerate() {
            for form in [AttentionForm::Plain, AttentionForm::Absorbed] {
                let mut cache = model.new_cache(prompt.len());
                let got = model
                    .forward(prompt, &mut cache, form, Logits::All)
                    .unwrap();
                let err = max_abs_diff(&got, &r.logits[i]);
                if std::env::var("PARITY_DEBUG").is_ok() {
                    let v = model.config.vocab_size;
                    for (t, (a, b)) in got.chunks(v).zip(r.logits[i].chunks(v)).enumerate() {
                        eprintln!(
                            "{name} {i} {form:?} pos {t}: {:e} (max |logit| {})",
                            max_abs_diff(a, b),
                            b.iter().fold(0f32, |m, x| m.max(x.abs()))
                        );
                    }
                }
                assert!(
                    err <= LOGIT_TOL,
                    "{name} prompt {i} {form:?}: max abs error {err}"
                );
            }
        }
    }
}

#[test]
fn cached_greedy_decoding_reproduces_transformers() {
    for name in CASES {
        let model = load(name);
        let r = reference(name);
        for (i, prompt) in r.prompts.iter().enumerate() {
            let mut cache = model.new_cache(prompt.len() + 12);
            let mut logits = model
                .forward(prompt, &mut cache, AttentionForm::Plain, Logits::Last)
                .unwrap();
            let mut out = Vec::new();
            for _ in 0..12 {
                let next = argmax(&logits);
                out.push(next);
                logits = model
                    .forward(&[next], &mut cache, AttentionForm::Absorbed, Logits::Last)
                    .unwrap();
            }
            assert_eq!(out, r.greedy[i], "{name} prompt {i}");
            assert_eq!(cache.len(), prompt.len() + 12);
        }
    }
}

#[test]
fn decoding_token_by_token_equals_recomputing_the_sequence() {
    for name in CASES {
        let model = load(name);
        let r = reference(name);
        let prompt = &r.prompts[2];
        let v = model.config.vocab_size;
        let mut cache = model.new_cache(prompt.len());
        for (t, &tok) in prompt.iter().enumerate() {
            let step = model
                .forward(&[tok], &mut cache, AttentionForm::Absorbed, Logits::Last)
                .unwrap();
            let want = &r.logits[2][t * v..(t + 1) * v];
            let err = max_abs_diff(&step, want);
            assert!(err <= LOGIT_TOL, "{name} step {t}: {err}");
        }
        // The cache holds exactly kv_lora_rank + qk_rope_head_dim values per token per layer
        // under MLA (and V3.2's index_head_dim after them), a key and a value per key/value head
        // under GQA.
        let c = &model.config;
        let width = match &c.gqa {
            // V4's rows (window key, raw compressor inputs, entries), as wide as its widest
            // layer's: a CSA layer's key, raw kv and gate of 2 x head_dim, entry, the indexer's
            // raw kv and gate of 2 x index_head_dim and its entry
            None if c.v4.is_some() => {
                let v = c.v4.as_ref().unwrap();
                let (d, di) = (v.head_dim, v.index_head_dim);
                d + 2 * 2 * d + d + 2 * 2 * di + di
            }
            None => {
                c.kv_lora_rank
                    + c.qk_rope_head_dim
                    + c.indexer.as_ref().map_or(0, |i| i.index_head_dim)
            }
            Some(g) => 2 * g.num_key_value_heads * g.head_dim,
        };
        assert_eq!(cache.values(), prompt.len() * c.num_hidden_layers * width);
    }
}

#[test]
fn mtp_layers_are_kept_apart_from_main_layers() {
    let m = load("tiny-v3");
    assert_eq!(m.layers.len(), 3);
    assert_eq!(m.mtp.len(), 1);
    let m = load("tiny-v2-lite");
    assert!(m.mtp.is_empty());
}

#[test]
fn a_batch_gives_each_sequence_exactly_its_own_results() {
    use whale_model::Caches;
    for name in [
        "tiny-v3",
        "tiny-v2-lite",
        "tiny-v3-fp8",
        "tiny-qwen2",
        "tiny-qwen3",
    ] {
        let model = load(name);
        let r = reference(name);
        let v = model.config.vocab_size;
        let d = model.hidden_width();
        // alone: prefill, then 3 greedy steps each
        let mut alone = Vec::new();
        for p in &r.prompts {
            let mut cache = model.new_cache(p.len() + 3);
            let mut outs = vec![model
                .forward(p, &mut cache, AttentionForm::Auto, Logits::Last)
                .unwrap()];
            for _ in 0..3 {
                let next = argmax(outs.last().unwrap());
                outs.push(
                    model
                        .forward(&[next], &mut cache, AttentionForm::Auto, Logits::Last)
                        .unwrap(),
                );
            }
            alone.push(outs);
        }
        // together: all prompts in one prefill step, then every decode step batched
        let mut caches: Vec<_> = r
            .prompts
            .iter()
            .map(|p| model.new_cache(p.len() + 3))
            .collect();
        let mut steps: Vec<Vec<u32>> = r.prompts.clone();
        #[allow(clippy::needless_range_loop)] // `step` indexes the per-sequence histories
        for step in 0..4 {
            let toks: Vec<&[u32]> = steps.iter().map(|s| s.as_slice()).collect();
            let h = model
                .forward_batch(
                    &toks,
                    &mut Caches(caches.iter_mut().collect()),
                    AttentionForm::Auto,
                )
                .unwrap();
            let mut end = 0;
            for (i, s) in steps.iter_mut().enumerate() {
                end += s.len();
                let logits = model.logits(&h[(end - 1) * d..end * d]);
                assert_eq!(logits.len(), v);
                assert_eq!(logits, alone[i][step], "{name} sequence {i} step {step}");
                *s = vec![argmax(&logits)];
            }
        }
    }
}
