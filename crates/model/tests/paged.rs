//! The paged latent cache gives the same numbers as a contiguous one, shares full prefix blocks
//! only on exact token matches, and never hands out more blocks than it has.

use std::path::PathBuf;
use whale_model::paged::{BlockPool, PagedBatch, SeqBlocks};
use whale_model::{AttentionForm, Checkpoint, Logits, Model};

/// V3's latent rows, V3.2's with the indexer keys after them (index_topk 8: the longer prompts
/// here attend to chosen rows), and V4's window keys, compressor inputs and compressed entries
/// (window 8, CSA every 4 tokens with index_topk 4, HCA every 8), the latter also as released
/// (FP8 blocks, MXFP4 experts: their products give a token the same bits alone and batched).
fn models() -> Vec<Model> {
    ["tiny-v3", "tiny-v32", "tiny-v4", "tiny-v4-fp8"]
        .iter()
        .map(|name| {
            let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../../testdata/fixtures")
                .join(name);
            Model::load(&Checkpoint::open(&dir).unwrap()).unwrap()
        })
        .collect()
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
    let d = m.hidden_width();
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
    for m in models() {
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
}

#[test]
fn prefix_blocks_are_reused_on_exact_matches_only() {
    for m in models() {
        let mut pool = BlockPool::new(&m.config, 4, 64);
        let system: Vec<u32> = (10..30).collect(); // 20 tokens = 5 full blocks
        let first: Vec<u32> = system.iter().copied().chain([7, 8, 9]).collect();
        let (mut a, hit) = pool.start(&first, 0);
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
        let (mut b, hit) = pool.start(&second, 0);
        assert_eq!(hit, 20);
        let rest = second[hit..].to_vec();
        let lb = step(&m, &mut pool, std::slice::from_mut(&mut b), &[rest]);
        assert_eq!(lb[0], alone(&m, &second, 0)[0]);
        pool.finish(&mut b);
        let _ = la;

        // one token different inside the second block: only the first block matches
        let mut third = second.clone();
        third[5] = 300;
        let (mut c, hit) = pool.start(&third, 0);
        assert_eq!(hit, 4);
        pool.finish(&mut c);

        // a prompt that is exactly cached blocks still leaves its last token to compute
        let (mut d, hit) = pool.start(&system, 0);
        assert_eq!(hit, 16);
        pool.finish(&mut d);
    }
}

#[test]
fn a_full_pool_refuses_instead_of_overflowing() {
    for m in models() {
        let mut pool = BlockPool::new(&m.config, 4, 3);
        let mut s = SeqBlocks::default();
        assert!(pool.reserve(&mut s, 12));
        let mut t = SeqBlocks::default();
        assert!(!pool.reserve(&mut t, 1));
        assert!(t.blocks.is_empty());
        pool.finish(&mut s);
        assert!(pool.reserve(&mut t, 5));
    }
}

/// Runs a 30-token prompt through a pool and saves its 7 full blocks of 4 under fingerprint 7;
/// returns the file and the prompt.
fn saved_prefixes(m: &Model, dir: &std::path::Path) -> (PathBuf, Vec<u32>) {
    let file = dir.join("prefixes.bin");
    let prompt: Vec<u32> = (10..40).collect();
    let mut pool = BlockPool::new(&m.config, 4, 64);
    let (mut a, _) = pool.start(&prompt, 0);
    step(
        m,
        &mut pool,
        std::slice::from_mut(&mut a),
        std::slice::from_ref(&prompt),
    );
    pool.finish(&mut a);
    assert_eq!(pool.save_prefixes(&file, 7).unwrap(), 7);
    (file, prompt)
}

#[test]
fn saved_prefixes_come_back_in_a_new_pool_for_the_same_model_only() {
    for m in models() {
        let tmp = tempfile::tempdir().unwrap();
        let (file, prompt) = saved_prefixes(&m, tmp.path());
        // a new pool with the same fingerprint serves the prefix, with the same numbers
        let mut fresh = BlockPool::new(&m.config, 4, 64);
        let r = fresh.load_prefixes(&file, 7).unwrap();
        assert_eq!((r.loaded, r.skipped), (7, 0), "{r:?}");
        let (mut b, hit) = fresh.start(&prompt, 0);
        assert_eq!(hit, 28);
        let rest = prompt[hit..].to_vec();
        let lb = step(&m, &mut fresh, std::slice::from_mut(&mut b), &[rest]);
        assert_eq!(lb[0], alone(&m, &prompt, 0)[0]);
        // another fingerprint (another model or layout) reads nothing
        let mut other = BlockPool::new(&m.config, 4, 64);
        assert_eq!(other.load_prefixes(&file, 8).unwrap().loaded, 0);
        assert_eq!(other.start(&prompt, 0).1, 0);
    }
}

/// Every kind of damage to a saved cache is found before a row is used: the damaged records
/// are skipped (the rest still load), a damaged header or count loads nothing, and nothing
/// panics.
#[test]
fn a_damaged_context_cache_is_detected_record_by_record() {
    for m in models() {
        let tmp = tempfile::tempdir().unwrap();
        let (file, _) = saved_prefixes(&m, tmp.path());
        let good = std::fs::read(&file).unwrap();
        let header = 8 + 16 + 5 * 8 + 8;
        let rec = (good.len() - header) / 7;
        let rows_of = |i: usize| header + i * rec + 16..header + (i + 1) * rec;
        let load = |bytes: &[u8]| {
            std::fs::write(&file, bytes).unwrap();
            BlockPool::new(&m.config, 4, 64)
                .load_prefixes(&file, 7)
                .unwrap()
        };
        let f32s = |v: f32| v.to_le_bytes().repeat(8);
        // one record's rows overwritten (same size): random bytes, NaNs, the rows scaled
        let mut random = good.clone();
        let mut x = 12345u64;
        for b in &mut random[rows_of(2)] {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
            *b = (x >> 56) as u8;
        }
        let mut nan = good.clone();
        nan[rows_of(3).start..rows_of(3).start + 32].copy_from_slice(&f32s(f32::NAN));
        let mut scaled = good.clone();
        let r = rows_of(4);
        let doubled: Vec<u8> = good[r.clone()]
            .chunks_exact(4)
            .flat_map(|c| (f32::from_le_bytes(c.try_into().unwrap()) * 2.0).to_le_bytes())
            .collect();
        scaled[r].copy_from_slice(&doubled);
        for (what, bytes) in [
            ("random rows", random),
            ("NaN rows", nan),
            ("scaled rows", scaled),
        ] {
            let r = load(&bytes);
            assert_eq!((r.loaded, r.skipped), (6, 1), "{what}: {r:?}");
            assert!(
                r.notes.iter().any(|n| n.contains("damaged")),
                "{what}: {r:?}"
            );
        }
        // a truncated file: the whole records before the cut load, the rest are counted skipped
        let r = load(&good[..good.len() - rec / 2]);
        assert_eq!((r.loaded, r.skipped), (6, 1), "truncated: {r:?}");
        // a crafted record count (one that would wrap `header + n * rec`), or any header byte
        // changed, loads nothing
        let mut crafted = good.clone();
        let n = (u64::MAX / rec as u64) + 2;
        crafted[header - 16..header - 8].copy_from_slice(&n.to_le_bytes());
        assert_eq!(load(&crafted).loaded, 0);
        // even with a header checksum made to match, the count is checked against the file
        let sum = crc32fast::hash(&crafted[..header - 8]) as u64;
        crafted[header - 8..header].copy_from_slice(&sum.to_le_bytes());
        let r = load(&crafted);
        assert_eq!(r.loaded, 7, "{r:?}");
        assert!(r.notes.iter().any(|n| n.contains("promises")), "{r:?}");
        for at in [0, 9, 30, header - 1] {
            let mut b = good.clone();
            b[at] ^= 1;
            assert_eq!(load(&b).loaded, 0, "header byte {at}");
        }
        assert_eq!(load(&good[..10]).loaded, 0);
        assert_eq!(load(b"").loaded, 0);
        assert_eq!(load(&good).loaded, 7);
    }
}
