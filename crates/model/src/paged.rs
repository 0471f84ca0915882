//! The paged latent cache: one pool of fixed-size blocks shared by all sequences, each sequence
//! holding a block table. A block stores `block_size` tokens of every layer (per layer a
//! contiguous run of rows, so attention reads it in place). Full blocks are keyed by a hash of
//! every token up to and including them, so a new sequence whose prompt starts with the same
//! tokens reuses them (prefix caching); reuse happens only on an exact token match.

use std::collections::{HashMap, VecDeque};
use std::hash::Hasher;

use siphasher::sip::SipHasher13;

use crate::cache::KvStore;
use crate::config::ModelConfig;

const PREFIX_MAGIC: &[u8; 8] = b"WHALEPC2";
/// magic, key (16 bytes), fingerprint, block size, layers, width, record count, then a
/// checksum of all of these (as a u64)
const HEADER_BYTES: usize = 8 + 16 + 5 * 8 + 8;

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
    /// the SipHash key of every block key: without it nobody outside can compute or aim at a
    /// block key (random per pool; a pool that loads saved prefixes takes the file's)
    key: [u8; 16],
    /// prefix keys registered or evicted since the pool was made
    changes: u64,
}

/// What `load_prefixes` found in a context-cache file.
#[derive(Debug, Default, PartialEq)]
pub struct LoadReport {
    pub loaded: usize,
    /// records that were damaged (checksum, non-finite values, a repeated key), missing from
    /// a truncated file, or left over when the pool was full
    pub skipped: usize,
    /// why the whole file was not used, or what was skipped and why
    pub notes: Vec<String>,
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
    /// where the chain of block keys starts: sequences with another salt (another tenant)
    /// never share a block, and cannot learn from hits what another tenant's prompts hold
    pub salt: u64,
}

impl BlockPool {
    /// Keyed SipHash over the previous block's key and this block's tokens: a block's key
    /// names every token before it (and the tenant's salt), so equal keys mean equal prefixes.
    fn chain_hash(&self, prev: u64, tokens: &[u32]) -> u64 {
        let mut h = SipHasher13::new_with_key(&self.key);
        h.write_u64(prev);
        for t in tokens {
            h.write_u32(*t);
        }
        h.finish()
    }

    /// The salt that starts the block keys of the tenant named by `tenant`.
    pub fn salt_for(&self, tenant: &[u8]) -> u64 {
        if tenant.is_empty() {
            return 0;
        }
        let mut h = SipHasher13::new_with_key(&self.key);
        h.write(b"whale tenant\0");
        h.write(tenant);
        h.finish()
    }
}

impl BlockPool {
    pub fn new(cfg: &ModelConfig, block_size: usize, n_blocks: usize) -> Self {
        let (layers, width) = (cfg.num_hidden_layers, cfg.cache_width());
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
            key: rand::random(),
            changes: 0,
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
            key: self.key,
            changes: 0,
        }
    }

    /// Blocks that fit in `bytes` of f32 storage.
    pub fn blocks_for_bytes(cfg: &ModelConfig, block_size: usize, bytes: usize) -> usize {
        bytes / (cfg.num_hidden_layers * block_size * cfg.cache_width() * 4)
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
            self.changes += 1;
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
    pub fn start(&mut self, prompt: &[u32], salt: u64) -> (SeqBlocks, usize) {
        let mut seq = SeqBlocks {
            salt,
            ..SeqBlocks::default()
        };
        let bs = self.block_size;
        let mut prev = salt;
        for chunk in prompt.chunks_exact(bs) {
            if seq.len + bs >= prompt.len() {
                break;
            }
            let h = self.chain_hash(prev, chunk);
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
            let prev = if i == 0 { seq.salt } else { seq.hashes[i - 1] };
            let h = self.chain_hash(prev, &seq.tokens[i * bs..(i + 1) * bs]);
            seq.hashes.push(h);
            let b = seq.blocks[i];
            if !self.by_hash.contains_key(&h) && self.hash_of[b].is_none() {
                self.by_hash.insert(h, b);
                self.hash_of[b] = Some(h);
                self.changes += 1;
            }
        }
    }

    /// Writes every block that caches a prefix (its key and rows, each record with a checksum)
    /// to `path`: to a temporary file, synced, then renamed over `path`, so a crash leaves the
    /// old file or the new one, never half of one. `fingerprint` names the model and layout.
    /// Returns the number of blocks written.
    pub fn save_prefixes(
        &self,
        path: &std::path::Path,
        fingerprint: u64,
    ) -> std::io::Result<usize> {
        use std::io::Write;
        let keyed: Vec<(u64, usize)> = self.by_hash.iter().map(|(&h, &b)| (h, b)).collect();
        let tmp = path.with_extension("tmp");
        let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
        f.write_all(&self.header(fingerprint, keyed.len() as u64))?;
        let size = self.layers * self.block_size * self.width;
        for (h, b) in &keyed {
            let rows: &[u8] = bytemuck::cast_slice(&self.data[b * size..(b + 1) * size]);
            f.write_all(&h.to_le_bytes())?;
            f.write_all(&record_sum(*h, rows).to_le_bytes())?;
            f.write_all(rows)?;
        }
        f.flush()?;
        f.get_ref().sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        Ok(keyed.len())
    }

    fn header(&self, fingerprint: u64, count: u64) -> Vec<u8> {
        let mut h = Vec::with_capacity(HEADER_BYTES);
        h.extend_from_slice(PREFIX_MAGIC);
        h.extend_from_slice(&self.key);
        for v in [
            fingerprint,
            self.block_size as u64,
            self.layers as u64,
            self.width as u64,
            count,
        ] {
            h.extend_from_slice(&v.to_le_bytes());
        }
        let sum = crc32fast::hash(&h) as u64;
        h.extend_from_slice(&sum.to_le_bytes());
        h
    }

    /// Reads prefixes written by `save_prefixes` into free blocks (as many as fit) of a pool
    /// that caches nothing yet; the pool takes the file's hash key, so the keys match. A file
    /// of another model or layout, or with a damaged header, is not used at all; a damaged
    /// record (checksum, non-finite values), a repeated one, or one a truncated file lacks is
    /// skipped. Nothing read is used before it is checked; the report says what was skipped.
    pub fn load_prefixes(
        &mut self,
        path: &std::path::Path,
        fingerprint: u64,
    ) -> std::io::Result<LoadReport> {
        let mut report = LoadReport::default();
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(report),
            Err(e) => return Err(e),
        };
        if !self.by_hash.is_empty() {
            report.notes.push("the pool already caches prefixes".into());
            return Ok(report);
        }
        let Some(head) = bytes.get(..HEADER_BYTES) else {
            report
                .notes
                .push("the file is shorter than its header".into());
            return Ok(report);
        };
        let word = |i: usize| u64::from_le_bytes(head[24 + i * 8..32 + i * 8].try_into().unwrap());
        if &head[..8] != PREFIX_MAGIC {
            report
                .notes
                .push("not a whale context cache of this version".into());
            return Ok(report);
        }
        if crc32fast::hash(&head[..HEADER_BYTES - 8]) as u64 != word(5) {
            report
                .notes
                .push("the header's checksum does not match".into());
            return Ok(report);
        }
        let layout = [
            self.block_size as u64,
            self.layers as u64,
            self.width as u64,
        ];
        if word(0) != fingerprint || [word(1), word(2), word(3)] != layout {
            report
                .notes
                .push("written for another model or cache layout".into());
            return Ok(report);
        }
        let key: [u8; 16] = head[8..24].try_into().unwrap();
        let size = self.layers * self.block_size * self.width;
        let rec = 16 + size * 4;
        let count = word(4);
        let present = ((bytes.len() - HEADER_BYTES) / rec) as u64;
        if present != count || !(bytes.len() - HEADER_BYTES).is_multiple_of(rec) {
            report.notes.push(format!(
                "the header promises {count} records, the file holds {present} whole ones"
            ));
        }
        self.key = key;
        let usable = count.min(present) as usize;
        report.skipped += (count as usize).saturating_sub(usable);
        let (mut bad, mut full) = (0, 0);
        for r in bytes[HEADER_BYTES..].chunks_exact(rec).take(usable) {
            let h = u64::from_le_bytes(r[..8].try_into().unwrap());
            let sum = u64::from_le_bytes(r[8..16].try_into().unwrap());
            let rows = &r[16..];
            let rows: Vec<f32> = bytemuck::pod_collect_to_vec(rows);
            if sum != record_sum(h, &r[16..])
                || !rows.iter().all(|x| x.is_finite())
                || self.by_hash.contains_key(&h)
            {
                bad += 1;
                continue;
            }
            let Some(b) = self.free.pop() else {
                full += 1;
                continue;
            };
            self.data[b * size..(b + 1) * size].copy_from_slice(&rows);
            self.hash_of[b] = Some(h);
            self.by_hash.insert(h, b);
            self.cached_idle.push_back(b);
            report.loaded += 1;
        }
        if bad > 0 {
            report.notes.push(format!(
                "{bad} damaged records (checksum, non-finite values or a repeated key)"
            ));
        }
        if full > 0 {
            report
                .notes
                .push(format!("{full} records did not fit in the pool"));
        }
        report.skipped += bad + full;
        Ok(report)
    }

    /// Prefix keys registered or evicted so far: when it has not moved, a save would write
    /// the same file again.
    pub fn prefix_changes(&self) -> u64 {
        self.changes
    }

    fn region(&self, block: usize, layer: usize) -> std::ops::Range<usize> {
        let size = self.block_size * self.width;
        let start = (block * self.layers + layer) * size;
        start..start + size
    }
}

/// The checksum of one saved block: its key and its rows.
fn record_sum(key: u64, rows: &[u8]) -> u64 {
    let mut c = crc32fast::Hasher::new();
    c.update(&key.to_le_bytes());
    c.update(rows);
    c.finalize() as u64
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
