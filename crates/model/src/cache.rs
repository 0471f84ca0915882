//! The MLA latent cache of one sequence: per layer and per token exactly
//! `kv_lora_rank + qk_rope_head_dim` values — the latent after `kv_a_layernorm` and the shared
//! rope key after rotation. Nothing per head is ever cached.

use crate::config::ModelConfig;

/// Latent rows of the sequences of a batch, wherever they live (one contiguous buffer per
/// sequence, or blocks of a shared pool). Sequence ids are positions in the batch.
pub trait KvStore {
    /// Tokens of `seq` committed before the current step.
    fn seq_len(&self, seq: usize) -> usize;
    /// Append rows of new tokens of `seq` to `layer`.
    fn append(&mut self, seq: usize, layer: usize, rows: &[f32]);
    /// All rows of `seq` in `layer` (committed and appended this step), as consecutive runs of
    /// whole rows in token order.
    fn chunks(&self, seq: usize, layer: usize) -> Vec<&[f32]>;
    /// Mark `n` appended tokens of `seq` as part of the sequence.
    fn commit(&mut self, seq: usize, n: usize);
    /// Values per token per layer, and layers.
    fn shape(&self) -> (usize, usize);
}

pub struct LatentCache {
    width: usize,
    layers: Vec<Vec<f32>>,
    len: usize,
}

impl LatentCache {
    /// An empty cache; `capacity` tokens are reserved up front so that appending does not
    /// move the cache while it grows to that length.
    pub fn new(cfg: &ModelConfig, capacity: usize) -> Self {
        Self::with_layers(cfg, cfg.num_hidden_layers, capacity)
    }

    pub fn with_layers(cfg: &ModelConfig, layers: usize, capacity: usize) -> Self {
        let width = cfg.cache_width();
        LatentCache {
            width,
            layers: (0..layers)
                .map(|_| Vec::with_capacity(capacity * width))
                .collect(),
            len: 0,
        }
    }

    /// Tokens held.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Append rows for new tokens to one layer (called once per layer per step, before `commit`).
    pub fn append(&mut self, layer: usize, rows: &[f32]) {
        debug_assert_eq!(rows.len() % self.width, 0);
        self.layers[layer].extend_from_slice(rows);
    }

    /// Mark `n` appended tokens as part of the sequence.
    pub fn commit(&mut self, n: usize) {
        self.len += n;
        debug_assert!(self.layers.iter().all(|l| l.len() == self.len * self.width));
    }

    /// Forget everything from token `n` on (rejected drafts, edited history).
    pub fn truncate(&mut self, n: usize) {
        let n = n.min(self.len);
        for l in &mut self.layers {
            l.truncate(n * self.width);
        }
        self.len = n;
    }

    /// f32 values held in total (all layers, all tokens).
    pub fn values(&self) -> usize {
        self.layers.iter().map(|l| l.len()).sum()
    }
}

impl KvStore for LatentCache {
    fn seq_len(&self, seq: usize) -> usize {
        assert_eq!(seq, 0, "a LatentCache holds one sequence");
        self.len
    }
    fn append(&mut self, _seq: usize, layer: usize, rows: &[f32]) {
        LatentCache::append(self, layer, rows)
    }
    fn chunks(&self, _seq: usize, layer: usize) -> Vec<&[f32]> {
        vec![&self.layers[layer]]
    }
    fn commit(&mut self, _seq: usize, n: usize) {
        LatentCache::commit(self, n)
    }
    fn shape(&self) -> (usize, usize) {
        (self.width, self.layers.len())
    }
}

/// A batch of sequences, each with its own contiguous cache.
pub struct Caches<'a>(pub Vec<&'a mut LatentCache>);

impl KvStore for Caches<'_> {
    fn seq_len(&self, seq: usize) -> usize {
        self.0[seq].len
    }
    fn append(&mut self, seq: usize, layer: usize, rows: &[f32]) {
        self.0[seq].append(layer, rows)
    }
    fn chunks(&self, seq: usize, layer: usize) -> Vec<&[f32]> {
        vec![&self.0[seq].layers[layer]]
    }
    fn commit(&mut self, seq: usize, n: usize) {
        self.0[seq].commit(n)
    }
    fn shape(&self) -> (usize, usize) {
        self.0
            .first()
            .map(|c| (c.width, c.layers.len()))
            .unwrap_or((0, 0))
    }
}
