//! The paged latent cache: one pool of fixed-size blocks shared by all sequences, each sequence
//! holding a block table. A block stores `block_size` tokens of every layer (per layer a
//! contiguous run of rows, so attention reads it in place). Full blocks are keyed by a hash of
//! every token up to and including them, so a new sequence whose prompt starts with the same
//! tokens reuses them (prefix caching); reuse happens only on an exact token match.

use std::collections::{HashMap, VecDeque};

use crate::cache::KvStore;
use crate::config::ModelConfig;

const PREFIX_MAGIC: &[u8; 8] = b"WHALEPC1";

pub struct BlockPool {
    pub block_size: usize,
    layers: usize,
    width: usize,
    data: Vec<f32>,
    refs: Vec<u32>,
    /// blocks nobody holds and no prefix names, ready to hand out
    free: Vec<usize>,
    /// blocks nobody holds that still cache a prefix, oldest first (evicted in this order)
    cached_idle: VecDeque<usize>,
    by_hash: HashMap<u64, usize>,
    hash_of: Vec<Option<u64>>,
}

/// One sequence's place in the pool.
#[derive(Default, Debug, Clone)]
pub struct SeqBlocks {
    pub blocks: Vec<usize>,
    /// committed tokens
    pub len: usize,
    /// the tokens, for hashing full blocks
    pub tokens: Vec<u32>,
    /// chained hash of each full block registered so far
    hashes: Vec<u64>,
}

fn chain_hash(prev: u64, tokens: &[u32]) -> u64 {
    // FNV-1a over the previous block's hash and this block's tokens: a block's key names every
    // token before it, so equal keys mean equal prefixes (up to 64-bit collisions).
    let mut h = 0xcbf29ce484222325u64 ^ prev;
    for t in tokens {
        for b in t.to_le_bytes() {
            h = (h ^ b as u64).wrapping_mul(0x100000001b3);
        }
    }
    h
}

impl BlockPool {
    pub fn new(cfg: &ModelConfig, block_size: usize, n_blocks: usize) -> Self {
        let (layers, width) = (cfg.num_hidden_layers, cfg.latent_cache_width());
        BlockPool {
            block_size,
            layers,
            width,
            data: vec![0f32; n_blocks * layers * block_size * width],
            refs: vec![0; n_blocks],
            free: (0..n_blocks).rev().collect(),
            cached_idle: VecDeque::new(),
            by_hash: HashMap::new(),
            hash_of: vec![None; n_blocks],
        }
    }

    /// A pool of the same shape with nothing in it (its storage reused).
    pub fn emptied(&mut self) -> Self {
        let n = self.refs.len();
        BlockPool {
            block_size: self.block_size,
            layers: self.layers,
            width: self.width,
            data: std::mem::take(&mut self.data),
            refs: vec![0; n],
            free: (0..n).rev().collect(),
            cached_idle: VecDeque::new(),
            by_hash: HashMap::new(),
            hash_of: vec![None; n],
        }
    }

    /// Blocks that fit in `bytes` of f32 storage.
    pub fn blocks_for_bytes(cfg: &ModelConfig, block_size: usize, bytes: usize) -> usize {
        bytes / (cfg.num_hidden_layers * block_size * cfg.latent_cache_width() * 4)
    }

    pub fn total_blocks(&self) -> usize {
        self.refs.len()
    }

    /// Blocks that can be handed out now (free, or idle holders of a cached prefix).
    pub fn available(&self) -> usize {
        self.free.len() + self.cached_idle.len()
    }

    /// Blocks held by sequences.
    pub fn used(&self) -> usize {
        self.refs.iter().filter(|&&r| r > 0).count()
    }

    fn take_block(&mut self) -> Option<usize> {
        if let Some(b) = self.free.pop() {
            return Some(b);
        }
        let b = self.cached_idle.pop_front()?;
        if let Some(h) = self.hash_of[b].take() {
            self.by_hash.remove(&h);
        }
        Some(b)
    }

    fn hold(&mut self, b: usize) {
        if self.refs[b] == 0 {
            self.cached_idle.retain(|&x| x != b);
        }
        self.refs[b] += 1;
    }

    fn release(&mut self, b: usize) {
        self.refs[b] -= 1;
        if self.refs[b] == 0 {
            if self.hash_of[b].is_some() {
                self.cached_idle.push_back(b);
            } else {
                self.free.push(b);
            }
        }
    }

    /// Starts a sequence for `prompt`, reusing every cached full block of its prefix but never
    /// the whole prompt (the last token must run to give logits). Returns the sequence and the
    /// number of prompt tokens served from the cache.
    pub fn start(&mut self, prompt: &[u32]) -> (SeqBlocks, usize) {
        let mut seq = SeqBlocks::default();
        let bs = self.block_size;
        let mut prev = 0u64;
        for chunk in prompt.chunks_exact(bs) {
            if seq.len + bs >= prompt.len() {
                break;
            }
            let h = chain_hash(prev, chunk);
            let Some(&b) = self.by_hash.get(&h) else {
                break;
            };
            self.hold(b);
            seq.blocks.push(b);
            seq.hashes.push(h);
            seq.tokens.extend_from_slice(chunk);
            seq.len += bs;
            prev = h;
        }
        let hit = seq.len;
        (seq, hit)
    }

    /// Makes room for `n` more tokens of `seq`; false (and nothing taken) if the pool is short.
    pub fn reserve(&mut self, seq: &mut SeqBlocks, n: usize) -> bool {
        let need = (seq.len + n)
            .div_ceil(self.block_size)
            .saturating_sub(seq.blocks.len());
        if need > self.available() {
            return false;
        }
        for _ in 0..need {
            let b = self.take_block().expect("counted above");
            self.hold(b);
            seq.blocks.push(b);
        }
        true
    }

    /// Returns every block of `seq` to the pool (cached prefixes stay findable until evicted).
    pub fn finish(&mut self, seq: &mut SeqBlocks) {
        for b in seq.blocks.drain(..) {
            self.release(b);
        }
        seq.len = 0;
        seq.tokens.clear();
        seq.hashes.clear();
    }

    /// Records committed tokens and registers newly filled blocks under their prefix hash.
    fn commit(&mut self, seq: &mut SeqBlocks, new_tokens: &[u32]) {
        seq.tokens.extend_from_slice(new_tokens);
        seq.len += new_tokens.len();
        let bs = self.block_size;
        while seq.hashes.len() < seq.len / bs {
            let i = seq.hashes.len();
            let prev = if i == 0 { 0 } else { seq.hashes[i - 1] };
            let h = chain_hash(prev, &seq.tokens[i * bs..(i + 1) * bs]);
            seq.hashes.push(h);
            let b = seq.blocks[i];
            if !self.by_hash.contains_key(&h) && self.hash_of[b].is_none() {
                self.by_hash.insert(h, b);
                self.hash_of[b] = Some(h);
            }
        }
    }

    /// Writes every block that caches a prefix (its key and rows) to `path`; `fingerprint`
    /// names the model and layout, so a different model never reads them back. Returns the
    /// number of blocks written.
    pub fn save_prefixes(
        &self,
        path: &std::path::Path,
        fingerprint: u64,
    ) -> std::io::Result<usize> {
        use std::io::Write;
        let keyed: Vec<(u64, usize)> = self.by_hash.iter().map(|(&h, &b)| (h, b)).collect();
        let tmp = path.with_extension("tmp");
        let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
        f.write_all(PREFIX_MAGIC)?;
        for v in [fingerprint, self.block_size as u64, keyed.len() as u64] {
            f.write_all(&v.to_le_bytes())?;
        }
        let size = self.layers * self.block_size * self.width;
        for (h, b) in &keyed {
            f.write_all(&h.to_le_bytes())?;
            f.write_all(bytemuck::cast_slice(&self.data[b * size..(b + 1) * size]))?;
        }
        f.flush()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        Ok(keyed.len())
    }

    /// Reads prefixes written by `save_prefixes` into free blocks (as many as fit). A file of
    /// another model or layout, or a damaged one, is ignored: Ok(0).
    pub fn load_prefixes(
        &mut self,
        path: &std::path::Path,
        fingerprint: u64,
    ) -> std::io::Result<usize> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e),
        };
        let word = |i: usize| {
            bytes
                .get(8 + i * 8..16 + i * 8)
                .map(|w| u64::from_le_bytes(w.try_into().unwrap()))
        };
        if bytes.get(..8) != Some(PREFIX_MAGIC)
            || word(0) != Some(fingerprint)
            || word(1) != Some(self.block_size as u64)
        {
            return Ok(0);
        }
        let n = word(2).unwrap_or(0) as usize;
        let size = self.layers * self.block_size * self.width;
        let rec = 8 + size * 4;
        if bytes.len() != 32 + n * rec {
            return Ok(0);
        }
        let mut loaded = 0;
        for i in 0..n {
            let Some(b) = self.free.pop() else { break };
            let at = 32 + i * rec;
            let h = u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap());
            let rows: Vec<f32> = bytemuck::pod_collect_to_vec(&bytes[at + 8..at + rec]);
            self.data[b * size..(b + 1) * size].copy_from_slice(&rows);
            self.hash_of[b] = Some(h);
            self.by_hash.insert(h, b);
            self.cached_idle.push_back(b);
            loaded += 1;
        }
        Ok(loaded)
    }

    fn region(&self, block: usize, layer: usize) -> std::ops::Range<usize> {
        let size = self.block_size * self.width;
        let start = (block * self.layers + layer) * size;
        start..start + size
    }
}

/// A step's view of the pool: the sequences of the batch (their blocks reserved beforehand),
/// the new tokens each will commit, and the rows written so far this step.
pub struct PagedBatch<'a> {
    pub pool: &'a mut BlockPool,
    pub seqs: Vec<&'a mut SeqBlocks>,
    pub new_tokens: Vec<&'a [u32]>,
    appended: Vec<Vec<usize>>,
}

impl<'a> PagedBatch<'a> {
    pub fn new(
        pool: &'a mut BlockPool,
        seqs: Vec<&'a mut SeqBlocks>,
        new_tokens: Vec<&'a [u32]>,
    ) -> Self {
        let layers = pool.layers;
        let appended = seqs.iter().map(|_| vec![0; layers]).collect();
        PagedBatch {
            pool,
            seqs,
            new_tokens,
            appended,
        }
    }
}

impl KvStore for PagedBatch<'_> {
    fn seq_len(&self, seq: usize) -> usize {
        self.seqs[seq].len
    }

    fn append(&mut self, seq: usize, layer: usize, rows: &[f32]) {
        let (bs, w) = (self.pool.block_size, self.pool.width);
        let start = self.seqs[seq].len + self.appended[seq][layer];
        for (i, row) in rows.chunks_exact(w).enumerate() {
            let pos = start + i;
            let block = self.seqs[seq].blocks[pos / bs];
            let r = self.pool.region(block, layer);
            self.pool.data[r][(pos % bs) * w..(pos % bs + 1) * w].copy_from_slice(row);
        }
        self.appended[seq][layer] += rows.len() / w;
    }

    fn chunks(&self, seq: usize, layer: usize) -> Vec<&[f32]> {
        let (bs, w) = (self.pool.block_size, self.pool.width);
        let mut left = self.seqs[seq].len + self.appended[seq][layer];
        let mut out = Vec::new();
        for &b in &self.seqs[seq].blocks {
            if left == 0 {
                break;
            }
            let n = left.min(bs);
            let r = self.pool.region(b, layer);
            out.push(&self.pool.data[r][..n * w]);
            left -= n;
        }
        out
    }

    fn commit(&mut self, seq: usize, n: usize) {
        debug_assert_eq!(n, self.new_tokens[seq].len());
        let toks = self.new_tokens[seq];
        self.pool.commit(self.seqs[seq], toks);
        self.appended[seq].iter_mut().for_each(|a| *a = 0);
    }

    fn shape(&self) -> (usize, usize) {
        (self.pool.width, self.pool.layers)
    }
}
