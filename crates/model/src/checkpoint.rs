//! A checkpoint directory in the Hugging Face layout: `config.json`, one `model.safetensors` or
//! shards listed in `model.safetensors.index.json`, all memory-mapped. Tensors are handed out
//! in their stored format: f32, f16, bf16, float8_e4m3fn with block scales (V3's f32
//! `weight_scale_inv`, V4's E8M0 `scale`), or V4's MXFP4 experts (int8-packed E2M1 codes with
//! E8M0 `scale`s per 32 values).

use anyhow::{anyhow, bail, Context, Result};
use half::{bf16, f16};
use memmap2::Mmap;
use rayon::prelude::*;
use safetensors::{Dtype, SafeTensors};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use whale_kernels::arena::Arena;
use whale_kernels::buf::ByteOwner;
use whale_kernels::{Buf, Format, Matrix, WeightData};

use crate::config::ModelConfig;

struct MappedFile(Mmap);

impl AsRef<[u8]> for MappedFile {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

#[derive(Clone, Debug)]
pub struct TensorEntry {
    pub file: usize,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    /// byte range inside the file
    pub start: usize,
    pub len: usize,
}

pub struct Checkpoint {
    pub dir: PathBuf,
    pub config: ModelConfig,
    /// Format that linear layers are converted to once at load (`--dtype`); None keeps the
    /// stored format.
    pub dtype: Option<Format>,
    /// Block format of a checkpoint written by `whale quantize` (config.json
    /// `whale_quantization.format`), whose int8/uint8 linear weights carry `<name>_whale_scale`.
    pub whale_quant: Option<Format>,
    files: Vec<(PathBuf, ByteOwner)>,
    /// the same mappings, for dropping pages whole tensors no longer need (None: bytes made
    /// at load, a GGUF tensor repacked)
    maps: Vec<Option<Arc<MappedFile>>>,
    /// Whether linear weights used as stored are copied into `arena` (2 MiB pages: bf16 decode
    /// +8% on the test model) rather than read in place from the file's 4 KiB page-cache
    /// pages. On by default where the files fit well inside the memory available; converted
    /// weights are always packed (they are copies anyway).
    pub pack: bool,
    /// where linear weights are packed (see `whale_kernels::arena`)
    arena: Arena,
    tensors: BTreeMap<String, TensorEntry>,
}

/// `whale_quantization.format` of a config written by `whale quantize`.
fn read_whale_quant(path: &Path) -> Result<Option<Format>> {
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path)?)?;
    match v.get("whale_quantization").and_then(|q| q.get("format")) {
        None => Ok(None),
        Some(f) => match f.as_str().and_then(Format::parse) {
            Some(fmt @ (Format::Q8_0 | Format::Q4_0)) => Ok(Some(fmt)),
            _ => bail!(
                "{}: unsupported whale_quantization.format {f}",
                path.display()
            ),
        },
    }
}

/// DeepSeek-V4's name for the scales of weight `name`: `<module>.weight` -> `<module>.scale`.
fn v4_scale_name(name: &str) -> String {
    format!("{}.scale", name.strip_suffix(".weight").unwrap_or(name))
}

/// MemAvailable of /proc/meminfo in bytes, where there is one.
fn available_memory() -> Option<usize> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb: usize = info
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

fn map_file(path: &Path) -> Result<Arc<MappedFile>> {
    let f = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    // SAFETY: the file is opened read-only; whale never writes to a checkpoint it has mapped.
    let m = unsafe { Mmap::map(&f) }
        .with_context(|| format!("cannot memory-map {}", path.display()))?;
    Ok(Arc::new(MappedFile(m)))
}

impl Checkpoint {
    pub fn open(dir: &Path) -> Result<Self> {
        if crate::gguf::is_gguf(dir) {
            return Self::open_gguf(dir);
        }
        if !dir.is_dir() {
            bail!("model directory {} does not exist", dir.display());
        }
        let config = ModelConfig::from_file(&dir.join("config.json"))?;
        let whale_quant = read_whale_quant(&dir.join("config.json"))?;
        let index = dir.join("model.safetensors.index.json");
        let single = dir.join("model.safetensors");
        // file name -> tensor names the index promises in it
        let mut wanted: BTreeMap<String, Vec<String>> = BTreeMap::new();
        if index.exists() {
            let text = std::fs::read_to_string(&index)
                .with_context(|| format!("cannot read {}", index.display()))?;
            let v: serde_json::Value = serde_json::from_str(&text)
                .with_context(|| format!("{} is not valid JSON", index.display()))?;
            let map = v
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| anyhow!("{}: no `weight_map` object", index.display()))?;
            for (name, file) in map {
                let file = file.as_str().ok_or_else(|| {
                    anyhow!("{}: weight_map[{name}] is not a file name", index.display())
                })?;
                if file.contains('/') || file.contains("..") {
                    bail!(
                        "{}: weight_map[{name}] names a file outside the directory",
                        index.display()
                    );
                }
                wanted
                    .entry(file.to_string())
                    .or_default()
                    .push(name.clone());
            }
        } else if single.exists() {
            wanted.insert("model.safetensors".into(), vec![]);
        } else {
            bail!(
                "{}: neither model.safetensors nor model.safetensors.index.json found",
                dir.display()
            );
        }

        let mut files = Vec::new();
        let mut maps = Vec::new();
        let mut tensors = BTreeMap::new();
        for (file_name, names) in wanted {
            let path = dir.join(&file_name);
            if !path.exists() {
                bail!(
                    "{} is missing (listed in model.safetensors.index.json)",
                    path.display()
                );
            }
            let map = map_file(&path)?;
            let owner: ByteOwner = map.clone();
            let bytes: &[u8] = (*map).as_ref();
            let st = SafeTensors::deserialize(bytes).map_err(|e| {
                anyhow!("{} is not a valid safetensors file: {e:?}", path.display())
            })?;
            let base = bytes.as_ptr() as usize;
            let mut here = HashMap::new();
            for (name, view) in st.tensors() {
                let data = view.data();
                let entry = TensorEntry {
                    file: files.len(),
                    dtype: view.dtype(),
                    shape: view.shape().to_vec(),
                    start: data.as_ptr() as usize - base,
                    len: data.len(),
                };
                here.insert(name, entry);
            }
            for n in &names {
                if !here.contains_key(n) {
                    bail!(
                        "tensor {n} is listed in model.safetensors.index.json under {file_name} but that file does not hold it"
                    );
                }
            }
            // A tensor not listed in the index is not part of the checkpoint (HF ignores it too).
            for (name, e) in here {
                if names.is_empty() || names.contains(&name) {
                    tensors.insert(name, e);
                }
            }
            files.push((path, owner));
            maps.push(Some(map));
        }
        let file_bytes: usize = maps.iter().flatten().map(|m| m.0.len()).sum();
        // a model that does not fit is read from its files whichever way; leave room for the
        // cache and everything else
        let pack = available_memory().is_some_and(|a| file_bytes <= a / 4 * 3);
        Ok(Checkpoint {
            dir: dir.to_path_buf(),
            config,
            dtype: None,
            whale_quant,
            files,
            maps,
            tensors,
            pack,
            arena: Arena::default(),
        })
    }

    /// A GGUF file of a dense decoder (qwen2, qwen3, llama) under the hub's names. F32, F16 and
    /// BF16 tensors are read in place from the file; Q8_0 and Q4_0 are the blocks whale's own
    /// kernels take, repacked (scales apart from the codes); the other ggml types are widened
    /// to f32 at load until kernels of their own read them in place. A `llama` file's q and k
    /// rows are put back in the hub's order.
    fn open_gguf(path: &Path) -> Result<Self> {
        use crate::gguf::{hub_name, llama_permuted_row, Gguf};
        use whale_kernels::ggml::{dequantize, GgmlType};
        let g = Gguf::open(path)?;
        let config = ModelConfig::from_json(&g.hub_config()?)
            .with_context(|| format!("{}: the model its metadata describes", path.display()))?;
        let permute = g.architecture()? == "llama";
        let gqa = config.gqa.as_ref().expect("a dense decoder");
        let (heads, kv_heads) = (config.num_attention_heads, gqa.num_key_value_heads);
        let mut files: Vec<(PathBuf, ByteOwner)> = Vec::new();
        let mut maps = Vec::new();
        for p in &g.paths {
            let map = map_file(p)?;
            files.push((p.clone(), map.clone()));
            maps.push(Some(map));
        }
        let mut tensors = BTreeMap::new();
        let mut widened = 0usize;
        let mut own = |files: &mut Vec<(PathBuf, ByteOwner)>, bytes: Vec<u8>| {
            files.push((path.to_path_buf(), Arc::new(bytes)));
            maps.push(None);
            files.len() - 1
        };
        for (name, t) in &g.tensors {
            let hub = hub_name(name).ok_or_else(|| {
                anyhow!(
                    "{}: tensor {name} is not one whale knows in a dense decoder",
                    path.display()
                )
            })?;
            let bytes = &g.bytes(name)?;
            let (rows, cols) = match t.shape[..] {
                [n] => (1, n),
                [r, c] => (r, c),
                _ => bail!("{}: tensor {name} has shape {:?}", path.display(), t.shape),
            };
            // row r of the stored tensor is row `order(r)` of the hub's
            let heads_here = if hub.ends_with("q_proj.weight") || hub.ends_with("q_proj.bias") {
                Some(heads)
            } else if hub.ends_with("k_proj.weight") || hub.ends_with("k_proj.bias") {
                Some(kv_heads)
            } else {
                None
            };
            // rows as the permutation counts them (a bias: its values)
            let prows = if t.shape.len() == 1 { cols } else { rows };
            let reorder = permute && heads_here.is_some();
            let unpermute = |bytes: &[u8], row_bytes: usize| -> Vec<u8> {
                let h = heads_here.expect("q or k");
                let mut out = vec![0u8; bytes.len()];
                for r in 0..prows {
                    let to = llama_permuted_row(r, prows, h);
                    out[to * row_bytes..(to + 1) * row_bytes]
                        .copy_from_slice(&bytes[r * row_bytes..(r + 1) * row_bytes]);
                }
                out
            };
            let shape = t.shape.clone();
            let dtype = match t.ty {
                GgmlType::F32 => Some(Dtype::F32),
                GgmlType::F16 => Some(Dtype::F16),
                GgmlType::BF16 => Some(Dtype::BF16),
                _ => None,
            };
            if let Some(dtype) = dtype {
                let (file, start) = if reorder {
                    let row_bytes = bytes.len() / prows;
                    (own(&mut files, unpermute(bytes, row_bytes)), 0)
                } else {
                    (t.file, t.start)
                };
                tensors.insert(
                    hub,
                    TensorEntry {
                        file,
                        dtype,
                        shape,
                        start,
                        len: t.len,
                    },
                );
                continue;
            }
            match t.ty {
                GgmlType::Q8_0 | GgmlType::Q4_0 if t.shape.len() == 2 => {
                    // whale's block layout: the codes, then the f16 scales apart
                    let bytes = if reorder {
                        unpermute(bytes, bytes.len() / rows)
                    } else {
                        bytes.to_vec()
                    };
                    let (ts, code_bytes) = if t.ty == GgmlType::Q8_0 {
                        (34, 32)
                    } else {
                        (18, 16)
                    };
                    let (mut codes, mut scales) = (Vec::new(), Vec::new());
                    for b in bytes.chunks_exact(ts) {
                        scales.extend_from_slice(&b[..2]);
                        codes.extend_from_slice(&b[2..2 + code_bytes]);
                    }
                    let (code_len, scale_len) = (codes.len(), scales.len());
                    let (dtype, code_shape) = if t.ty == GgmlType::Q8_0 {
                        (Dtype::I8, vec![rows, cols])
                    } else {
                        (Dtype::U8, vec![rows, cols / 2])
                    };
                    let cf = own(&mut files, codes);
                    let sf = own(&mut files, scales);
                    tensors.insert(
                        format!("{hub}_whale_scale"),
                        TensorEntry {
                            file: sf,
                            dtype: Dtype::F16,
                            shape: vec![rows, cols / 32],
                            start: 0,
                            len: scale_len,
                        },
                    );
                    tensors.insert(
                        hub,
                        TensorEntry {
                            file: cf,
                            dtype,
                            shape: code_shape,
                            start: 0,
                            len: code_len,
                        },
                    );
                }
                ty => {
                    let mut values = vec![0f32; rows * cols];
                    dequantize(ty, bytes, &mut values);
                    let mut raw: Vec<u8> = bytemuck::cast_slice(&values).to_vec();
                    if reorder {
                        raw = unpermute(&raw, raw.len() / prows);
                    }
                    widened += 1;
                    let len = raw.len();
                    let file = own(&mut files, raw);
                    tensors.insert(
                        hub,
                        TensorEntry {
                            file,
                            dtype: Dtype::F32,
                            shape,
                            start: 0,
                            len,
                        },
                    );
                }
            }
        }
        if widened > 0 {
            eprintln!(
                "note: {widened} tensor(s) of {} are in ggml types whale has no kernels for yet; they are widened to f32 at load",
                path.display()
            );
        }
        Ok(Checkpoint {
            dir: path.to_path_buf(),
            config,
            dtype: None,
            // the repacked Q8_0 / Q4_0 blocks: codes apart, `<name>_whale_scale` beside them
            whale_quant: Some(Format::Q8_0),
            files,
            maps,
            tensors,
            pack: false,
            arena: Arena::default(),
        })
    }

    pub fn tensor_names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(|s| s.as_str())
    }

    /// Whether the weights come from a GGUF file.
    pub fn is_gguf(&self) -> bool {
        crate::gguf::is_gguf(&self.dir)
    }

    pub fn entry(&self, name: &str) -> Option<&TensorEntry> {
        self.tensors.get(name)
    }

    pub fn has(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    pub fn total_stored_bytes(&self) -> usize {
        self.tensors.values().map(|e| e.len).sum()
    }

    fn get(&self, name: &str) -> Result<&TensorEntry> {
        self.tensors.get(name).ok_or_else(|| {
            anyhow!(
                "tensor {name} is missing from the checkpoint in {}",
                self.dir.display()
            )
        })
    }

    fn file_of(&self, e: &TensorEntry) -> &Path {
        &self.files[e.file].0
    }

    fn check_shape(&self, name: &str, e: &TensorEntry, want: &[usize]) -> Result<()> {
        if e.shape != want {
            bail!(
                "tensor {name} in {} has shape {:?}, expected {:?}",
                self.file_of(e).display(),
                e.shape,
                want
            );
        }
        Ok(())
    }

    /// Elements of a tensor widened to f32 (for norms, biases, router weights, scales).
    fn to_f32_vec(&self, name: &str, e: &TensorEntry) -> Result<Vec<f32>> {
        let owner = self.files[e.file].1.clone();
        let n: usize = e.shape.iter().product();
        Ok(match e.dtype {
            Dtype::F32 => Buf::<f32>::shared(owner, e.start, n).as_slice().to_vec(),
            Dtype::BF16 => Buf::<bf16>::shared(owner, e.start, n)
                .as_slice()
                .iter()
                .map(|v| v.to_f32())
                .collect(),
            Dtype::F16 => Buf::<f16>::shared(owner, e.start, n)
                .as_slice()
                .iter()
                .map(|v| v.to_f32())
                .collect(),
            // (E8M0's NaN code comes out as +inf, which the scale checks refuse)
            Dtype::F8_E8M0 => Buf::<u8>::shared(owner, e.start, n)
                .as_slice()
                .iter()
                .map(|&b| whale_kernels::fp4::e8m0(b))
                .collect(),
            d => bail!(
                "tensor {name} in {} has dtype {d:?}; expected F32, BF16 or F16",
                self.file_of(e).display()
            ),
        })
    }

    /// A Q8_0 (int8 [rows, cols]) or Q4_0 (uint8 [rows, cols / 2]) weight saved by
    /// `whale quantize`, with its f16 block scales `<name>_whale_scale` [rows, cols / 32].
    fn whale_block_matrix(
        &self,
        name: &str,
        e: &TensorEntry,
        q: Format,
        rows: usize,
        cols: usize,
    ) -> Result<Matrix> {
        use whale_kernels::quant::QK;
        let owner = self.files[e.file].1.clone();
        let scale_name = format!("{name}_whale_scale");
        let se = self.get(&scale_name)?;
        if se.dtype != Dtype::F16 {
            bail!("tensor {scale_name} must be F16, found {:?}", se.dtype);
        }
        self.check_shape(&scale_name, se, &[rows, cols / QK])?;
        let scales =
            Buf::<half::f16>::shared(self.files[se.file].1.clone(), se.start, rows * cols / QK);
        // a GGUF's Q8_0 and Q4_0 blocks share a checkpoint: the codes' dtype says which
        let q = match (q, e.dtype) {
            (Format::Q8_0 | Format::Q4_0, Dtype::I8) if self.is_gguf() => Format::Q8_0,
            (Format::Q8_0 | Format::Q4_0, Dtype::U8) if self.is_gguf() => Format::Q4_0,
            _ => q,
        };
        let data = match (q, e.dtype) {
            (Format::Q8_0, Dtype::I8) => {
                self.check_shape(name, e, &[rows, cols])?;
                WeightData::Q8_0 {
                    qs: Buf::shared(owner, e.start, rows * cols),
                    scales,
                }
            }
            (Format::Q4_0, Dtype::U8) => {
                self.check_shape(name, e, &[rows, cols / 2])?;
                WeightData::Q4_0 {
                    qs: Buf::shared(owner, e.start, rows * cols / 2),
                    scales,
                }
            }
            _ => bail!(
                "tensor {name} has dtype {:?}, which does not hold {q:?} blocks",
                e.dtype
            ),
        };
        Ok(Matrix { rows, cols, data })
    }

    /// Raw bytes of a tensor as stored.
    pub fn bytes(&self, name: &str) -> Result<&[u8]> {
        let e = self.get(name)?;
        Ok(self.files[e.file].1.range(e.start, e.len))
    }

    /// A 1-D tensor of length `len`, as f32.
    pub fn vector(&self, name: &str, len: usize) -> Result<Vec<f32>> {
        let e = self.get(name)?;
        self.check_shape(name, e, &[len])?;
        self.to_f32_vec(name, e)
    }

    /// A tensor of any shape as f32 (V4's position biases, hyper-connection scales).
    pub fn array(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let e = self.get(name)?;
        self.check_shape(name, e, shape)?;
        self.to_f32_vec(name, e)
    }

    /// An integer table [rows, cols] (I32 or I64) whose every value is below `bound` (V4's
    /// `tid2eid`: token id -> experts).
    pub fn indices(&self, name: &str, rows: usize, cols: usize, bound: usize) -> Result<Vec<u32>> {
        let e = self.get(name)?;
        self.check_shape(name, e, &[rows, cols])?;
        let raw = self.bytes(name)?;
        let vals: Vec<i64> = match e.dtype {
            Dtype::I32 => raw
                .chunks_exact(4)
                .map(|c| i32::from_le_bytes(c.try_into().unwrap()) as i64)
                .collect(),
            Dtype::I64 => raw
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                .collect(),
            d => bail!(
                "tensor {name} in {} has dtype {d:?}; expected I32 or I64",
                self.file_of(e).display()
            ),
        };
        if let Some((i, v)) = vals
            .iter()
            .enumerate()
            .find(|(_, &v)| v < 0 || v as usize >= bound)
        {
            bail!(
                "tensor {name} holds {v} at row {}, outside 0..{bound}",
                i / cols.max(1)
            );
        }
        Ok(vals.into_iter().map(|v| v as u32).collect())
    }

    /// The weight of a linear layer: `matrix`, converted to `self.dtype` when one is set (rows
    /// whose length the block formats cannot split stay as stored).
    pub fn linear(&self, name: &str, rows: usize, cols: usize) -> Result<Matrix> {
        let m = self.matrix(name, rows, cols)?;
        let (m, converted) = match self.dtype {
            Some(f) if m.format() != Some(f) => match m.retag(f) {
                Ok(same_bytes) => (same_bytes, false),
                Err(m) => match m.convert(f) {
                    Some(converted) => (converted, true),
                    None => (m, false),
                },
            },
            _ => (m, false),
        };
        if !(converted || self.pack) {
            return Ok(m);
        }
        // The stored bytes are not read again once converted or copied: let the kernel drop
        // their pages so the model does not also keep the file resident (before the copy where
        // they are converted already, so the load's peak holds one copy fewer).
        if converted {
            self.release(name);
            return Ok(m.packed_into(&self.arena));
        }
        // (a `whale quantize` checkpoint's block scales are a tensor of their own)
        let scales = format!("{name}_whale_scale");
        for t in [name, &scales] {
            self.populate(t);
        }
        let packed = m.packed_into(&self.arena);
        for t in [name, &scales] {
            self.release(t);
        }
        Ok(packed)
    }

    /// `m` (a matrix made at load from the checkpoint's weights) packed as `linear` packs them.
    pub fn packed(&self, m: Matrix) -> Matrix {
        m.packed_into(&self.arena)
    }

    /// The whole pages inside a tensor's bytes: (file, offset, length).
    fn pages(&self, name: &str) -> Option<(usize, usize, usize)> {
        let e = self.tensors.get(name)?;
        const PAGE: usize = 4096;
        let start = e.start.div_ceil(PAGE) * PAGE;
        let end = (e.start + e.len) / PAGE * PAGE;
        (end > start).then_some((e.file, start, end - start))
    }

    /// Drops the resident pages of a tensor's bytes (whole pages inside it only). They are
    /// read back from the file if anything touches them again.
    fn release(&self, name: &str) {
        if let Some((file, start, len)) = self.pages(name) {
            // SAFETY: the mapping is read-only and file-backed; MADV_DONTNEED only discards
            // clean pages, which later reads fetch again from the file. Borrowed views of these
            // bytes (none remain for a converted tensor) would still read the same contents.
            let Some(map) = &self.maps[file] else {
                return;
            };
            let _ = unsafe {
                map.0
                    .unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, len)
            };
        }
    }

    /// Maps in a tensor's pages in one call before they are read through: a fault per 4 KiB
    /// page made copying a bf16 checkpoint into the arena run at ~0.6 GB/s. Advice only; an
    /// older kernel without it faults them in one by one as before.
    fn populate(&self, name: &str) {
        if let Some((file, start, len)) = self.pages(name) {
            #[cfg(target_os = "linux")]
            if let Some(map) = &self.maps[file] {
                let _ = map
                    .0
                    .advise_range(memmap2::Advice::PopulateRead, start, len);
            }
            #[cfg(not(target_os = "linux"))]
            let _ = (file, start, len);
        }
    }

    /// The block scales of a quantised weight `name`, where the checkpoint has them: V3's
    /// `<name>_scale_inv` or V4's `<module>.scale`.
    fn scale_of(&self, name: &str) -> Option<(String, &TensorEntry)> {
        [format!("{name}_scale_inv"), v4_scale_name(name)]
            .into_iter()
            .find_map(|s| self.tensors.get(&s).map(|e| (s, e)))
    }

    /// A V4 MXFP4 weight: `name` holds [rows, cols / 2] bytes of E2M1 code pairs (I8 or U8),
    /// its scales [rows, cols / 32] E8M0 bytes.
    fn fp4_matrix(
        &self,
        name: &str,
        e: &TensorEntry,
        (scale_name, se): (String, &TensorEntry),
        rows: usize,
        cols: usize,
    ) -> Result<Matrix> {
        use whale_kernels::fp4::{is_nan_e8m0, GROUP};
        if !cols.is_multiple_of(GROUP) {
            bail!("tensor {name} is MXFP4, whose rows are whole groups of {GROUP} values; its {cols} columns are not");
        }
        self.check_shape(name, e, &[rows, cols / 2])?;
        if !matches!(se.dtype, Dtype::F8_E8M0 | Dtype::U8) {
            bail!(
                "tensor {scale_name} (the MXFP4 scales of {name}) has dtype {:?}; expected F8_E8M0",
                se.dtype
            );
        }
        self.check_shape(&scale_name, se, &[rows, cols / GROUP])?;
        let scales: Buf<u8> =
            Buf::shared(self.files[se.file].1.clone(), se.start, rows * cols / GROUP);
        if scales.as_slice().iter().any(|&b| is_nan_e8m0(b)) {
            bail!(
                "tensor {scale_name} in {} holds E8M0's NaN code (0xFF): the file is damaged",
                self.file_of(se).display()
            );
        }
        let codes = Buf::shared(self.files[e.file].1.clone(), e.start, rows * cols / 2);
        Ok(Matrix {
            rows,
            cols,
            data: WeightData::Fp4 { codes, scales },
        })
    }

    /// A 2-D weight [rows, cols] kept in its stored format. FP8 and MXFP4 weights come with
    /// their block scales (`scale_of`).
    pub fn matrix(&self, name: &str, rows: usize, cols: usize) -> Result<Matrix> {
        let e = self.get(name)?;
        if let (Some(q), Dtype::I8 | Dtype::U8) = (self.whale_quant, e.dtype) {
            return self.whale_block_matrix(name, e, q, rows, cols);
        }
        if matches!(e.dtype, Dtype::I8 | Dtype::U8) {
            let scale = self.scale_of(name).ok_or_else(|| {
                anyhow!(
                    "tensor {name} holds {:?} codes (MXFP4 pairs) but its E8M0 scales {} are \
                     missing from the checkpoint in {}",
                    e.dtype,
                    v4_scale_name(name),
                    self.dir.display()
                )
            })?;
            return self.fp4_matrix(name, e, scale, rows, cols);
        }
        self.check_shape(name, e, &[rows, cols])?;
        let owner = self.files[e.file].1.clone();
        let n = rows * cols;
        let data = match e.dtype {
            Dtype::F32 => WeightData::F32(Buf::shared(owner, e.start, n)),
            Dtype::F16 => WeightData::F16(Buf::shared(owner, e.start, n)),
            Dtype::BF16 => WeightData::BF16(Buf::shared(owner, e.start, n)),
            Dtype::F8_E4M3 => {
                let [br, bc] = self.config.fp8_block.unwrap_or([128, 128]);
                let (scale_name, se) = self.scale_of(name).ok_or_else(|| {
                    anyhow!(
                        "{name} is float8_e4m3fn and needs its block scales {name}_scale_inv \
                         (or, as DeepSeek-V4 names them, {}); the checkpoint in {} has neither",
                        v4_scale_name(name),
                        self.dir.display()
                    )
                })?;
                self.check_shape(&scale_name, se, &[rows.div_ceil(br), cols.div_ceil(bc)])?;
                let scale_inv = self.to_f32_vec(&scale_name, se)?;
                if let Some(bad) = scale_inv.iter().find(|s| !s.is_finite()) {
                    bail!("tensor {scale_name} holds a non-finite scale ({bad})");
                }
                let codes: Buf<u8> = Buf::shared(owner, e.start, n);
                // The kernels widen codes through f16 fields, where S.1111.111 is no NaN; no
                // released checkpoint holds one, so one is a damaged file, not a value.
                // (a fold without early exit, in 1 MiB chunks: it vectorises)
                let nan = |c: &[u8]| c.iter().fold(false, |a, &b| a | (b & 0x7f == 0x7f));
                if codes.as_slice().par_chunks(1 << 20).any(nan) {
                    bail!(
                        "tensor {name} in {} holds a NaN code (float8_e4m3fn S.1111.111): the \
                         file is damaged",
                        self.file_of(e).display()
                    );
                }
                WeightData::Fp8Block {
                    codes,
                    scale_inv,
                    block_rows: br,
                    block_cols: bc,
                }
            }
            d => bail!(
                "tensor {name} in {} has dtype {d:?}; supported: F32, F16, BF16, F8_E4M3, and \
                 I8 MXFP4 codes with their E8M0 scales",
                self.file_of(e).display()
            ),
        };
        Ok(Matrix { rows, cols, data })
    }
}
