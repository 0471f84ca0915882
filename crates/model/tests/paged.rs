//! The paged latent cache gives the same numbers as a contiguous one, shares full prefix blocks
//! only on exact token matches, and never hands out more blocks than it has.

use std::path::PathBuf;
use whale_model::paged::{BlockPool, PagedBatch, SeqBlocks};
use whale_model::{AttentionForm, Checkpoint, Logits, Model};

fn model() -> Model {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata/fixtures/tiny-v3");
    Model::load(&Checkpoint::open(&dir).unwrap()).unwrap()
}

fn argmax(v: &[f32]) -> u32 {
    (0..v.len()).fold(0, |b, i| if v[i] > v[b] { i } else { b }) as u32
}

/// Runs one step for `seqs` (blocks reserved here) and returns each sequence's last logits.
fn step(
    m: &Model,
    pool: &mut BlockPool,
    seqs: &mut [SeqBlocks],
    toks: &[Vec<u32>],
) -> Vec<Vec<f32>> {
    for (s, t) in seqs.iter_mut().zip(toks) {
        assert!(pool.reserve(s, t.len()));
    }
    let d = m.config.hidden_size;
    let new: Vec<&[u32]> = toks.iter().map(|t| t.as_slice()).collect();
    let mut batch = PagedBatch::new(pool, seqs.iter_mut().collect(), new.clone());
    let h = m
        .forward_batch(&new, &mut batch, AttentionForm::Auto)
        .unwrap();
    let mut end = 0;
    toks.iter()
        .map(|t| {
            end += t.len();
            m.logits(&h[(end - 1) * d..end * d])
        })
        .collect()
}

fn alone(m: &Model, prompt: &[u32], steps: usize) -> Vec<Vec<f32>> {
    let mut cache = m.new_cache(prompt.len() + steps);
    let mut out = vec![m
        .forward(prompt, &mut cache, AttentionForm::Auto, Logits::Last)
        .unwrap()];
    for _ in 0..steps {
        let next = argmax(out.last().unwrap());
        out.push(
            m.forward(&[next], &mut cache, AttentionForm::Auto, Logits::Last)
                .unwrap(),
        );
    }
    out
}

#[test]
fn paged_batches_match_contiguous_caches_bit_for_bit() {
    let m = model();
    let prompts: Vec<Vec<u32>> = vec![(5..40).collect(), vec![0, 3], (100..117).collect()];
    let mut pool = BlockPool::new(&m.config, 4, 64);
    let mut seqs: Vec<SeqBlocks> = prompts.iter().map(|_| SeqBlocks::default()).collect();
    let mut toks = prompts.clone();
    let want: Vec<Vec<Vec<f32>>> = prompts.iter().map(|p| alone(&m, p, 5)).collect();
    #[allow(clippy::needless_range_loop)] // `s` indexes the per-sequence histories
    for s in 0..6 {
        let got = step(&m, &mut pool, &mut seqs, &toks);
        for i in 0..prompts.len() {
            assert_eq!(got[i], want[i][s], "sequence {i} step {s}");
        }
        toks = got.iter().map(|l| vec![argmax(l)]).collect();
    }
    for s in &mut seqs {
        pool.finish(s);
    }
    assert_eq!(pool.used(), 0);
    assert_eq!(pool.available(), pool.total_blocks());
}

#[test]
fn prefix_blocks_are_reused_on_exact_matches_only() {
    let m = model();
    let mut pool = BlockPool::new(&m.config, 4, 64);
    let system: Vec<u32> = (10..30).collect(); // 20 tokens = 5 full blocks
    let first: Vec<u32> = system.iter().copied().chain([7, 8, 9]).collect();
    let (mut a, hit) = pool.start(&first);
    assert_eq!(hit, 0);
    let la = step(
        &m,
        &mut pool,
        std::slice::from_mut(&mut a),
        std::slice::from_ref(&first),
    );
    pool.finish(&mut a);

    // same system prompt, different question: 5 blocks reused, same logits as computing all
    let second: Vec<u32> = system.iter().copied().chain([50, 51]).collect();
    let (mut b, hit) = pool.start(&second);
    assert_eq!(hit, 20);
    let rest = second[hit..].to_vec();
    let lb = step(&m, &mut pool, std::slice::from_mut(&mut b), &[rest]);
    assert_eq!(lb[0], alone(&m, &second, 0)[0]);
    pool.finish(&mut b);
    let _ = la;

    // one token different inside the second block: only the first block matches
    let mut third = second.clone();
    third[5] = 300;
    let (mut c, hit) = pool.start(&third);
    assert_eq!(hit, 4);
    pool.finish(&mut c);

    // a prompt that is exactly cached blocks still leaves its last token to compute
    let (mut d, hit) = pool.start(&system);
    assert_eq!(hit, 16);
    pool.finish(&mut d);
}

#[test]
fn a_full_pool_refuses_instead_of_overflowing() {
    let m = model();
    let mut pool = BlockPool::new(&m.config, 4, 3);
    let mut s = SeqBlocks::default();
    assert!(pool.reserve(&mut s, 12));
    let mut t = SeqBlocks::default();
    assert!(!pool.reserve(&mut t, 1));
    assert!(t.blocks.is_empty());
    pool.finish(&mut s);
    assert!(pool.reserve(&mut t, 5));
}

#[test]
fn saved_prefixes_come_back_in_a_new_pool_for_the_same_model_only() {
    let m = model();
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("prefixes.bin");
    let prompt: Vec<u32> = (10..40).collect();
    let mut pool = BlockPool::new(&m.config, 4, 64);
    let (mut a, _) = pool.start(&prompt);
    step(
        &m,
        &mut pool,
        std::slice::from_mut(&mut a),
        std::slice::from_ref(&prompt),
    );
    pool.finish(&mut a);
    assert_eq!(pool.save_prefixes(&file, 7).unwrap(), 7); // 30 tokens = 7 full blocks
                                                          // a new pool with the same fingerprint serves the prefix, with the same numbers
    let mut fresh = BlockPool::new(&m.config, 4, 64);
    assert_eq!(fresh.load_prefixes(&file, 7).unwrap(), 7);
    let (mut b, hit) = fresh.start(&prompt);
    assert_eq!(hit, 28);
    let rest = prompt[hit..].to_vec();
    let lb = step(&m, &mut fresh, std::slice::from_mut(&mut b), &[rest]);
    assert_eq!(lb[0], alone(&m, &prompt, 0)[0]);
    // another fingerprint (another model or layout) reads nothing
    let mut other = BlockPool::new(&m.config, 4, 64);
    assert_eq!(other.load_prefixes(&file, 8).unwrap(), 0);
    assert_eq!(other.start(&prompt).1, 0);
    // a damaged file reads nothing either
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() - 1]).unwrap();
    assert_eq!(
        BlockPool::new(&m.config, 4, 64)
            .load_prefixes(&file, 7)
            .unwrap(),
        0
    );
    std::fs::remove_file(&file).ok();
}
