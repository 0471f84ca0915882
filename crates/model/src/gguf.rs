//! GGUF files as llama.cpp writes them (one file, or split `-00001-of-0000N.gguf` parts): the
//! header read through candle's `gguf_file` (a maintained reader with bounds checks before any
//! allocation), the tensor data memory-mapped and checked to lie inside its file, metadata
//! handed out typed with errors that name the key.

use anyhow::{anyhow, bail, Context, Result};
use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::GgmlDType;
use memmap2::Mmap;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use whale_kernels::ggml::GgmlType;

/// One tensor of the file(s): its type, its shape as numpy writes it (the outer dimension
/// first; GGUF stores the inner one first), and where its bytes are.
#[derive(Clone, Debug)]
pub struct GgufTensor {
    pub ty: GgmlType,
    pub shape: Vec<usize>,
    pub file: usize,
    /// absolute byte range in its file
    pub start: usize,
    pub len: usize,
}

pub struct Gguf {
    pub paths: Vec<PathBuf>,
    pub metadata: HashMap<String, Value>,
    pub tensors: BTreeMap<String, GgufTensor>,
    maps: Vec<Mmap>,
}

/// ggml's type of candle's name for it, where whale reads the type.
fn ggml_type(d: GgmlDType) -> Option<GgmlType> {
    Some(match d {
        GgmlDType::F32 => GgmlType::F32,
        GgmlDType::F16 => GgmlType::F16,
        GgmlDType::BF16 => GgmlType::BF16,
        GgmlDType::Q4_0 => GgmlType::Q4_0,
        GgmlDType::Q4_1 => GgmlType::Q4_1,
        GgmlDType::Q5_0 => GgmlType::Q5_0,
        GgmlDType::Q5_1 => GgmlType::Q5_1,
        GgmlDType::Q8_0 => GgmlType::Q8_0,
        GgmlDType::Q2K => GgmlType::Q2_K,
        GgmlDType::Q3K => GgmlType::Q3_K,
        GgmlDType::Q4K => GgmlType::Q4_K,
        GgmlDType::Q5K => GgmlType::Q5_K,
        GgmlDType::Q6K => GgmlType::Q6_K,
        // Q8_1 and Q8_K are ggml's activation formats, never a model's weights
        _ => return None,
    })
}

/// Whether `path` names a GGUF file.
pub fn is_gguf(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "gguf") && path.is_file()
}

/// The parts of a split GGUF (`NAME-00001-of-00003.gguf` names all three), or the file alone.
fn parts(path: &Path) -> Result<Vec<PathBuf>> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| anyhow!("{}: not a file name", path.display()))?;
    let stem = name.strip_suffix(".gguf").unwrap_or(name);
    // NAME-iiiii-of-nnnnn
    let split = stem.rsplit_once("-of-").and_then(|(head, n)| {
        let (base, i) = head.rsplit_once('-')?;
        let ok = |s: &str| s.len() == 5 && s.bytes().all(|b| b.is_ascii_digit());
        (ok(i) && ok(n)).then(|| (base.to_string(), n.parse::<usize>().ok()))
    });
    let Some((base, Some(n))) = split else {
        return Ok(vec![path.to_path_buf()]);
    };
    if n == 0 {
        bail!("{}: a split GGUF of 0 parts", path.display());
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    (1..=n)
        .map(|i| {
            let p = dir.join(format!("{base}-{i:05}-of-{n:05}.gguf"));
            if p.is_file() {
                Ok(p)
            } else {
                bail!(
                    "{}: part {i} of {n} of this split GGUF is missing",
                    p.display()
                )
            }
        })
        .collect()
}

impl Gguf {
    pub fn open(path: &Path) -> Result<Self> {
        let paths = parts(path)?;
        let mut metadata = HashMap::new();
        let mut tensors = BTreeMap::new();
        let mut maps = Vec::new();
        for (fi, p) in paths.iter().enumerate() {
            let mut f =
                std::fs::File::open(p).with_context(|| format!("cannot open {}", p.display()))?;
            // (candle's message, without the backtrace it appends where RUST_BACKTRACE is set)
            let content = gguf_file::Content::read(&mut f).map_err(|e| {
                let e = e.to_string();
                let first = e.lines().next().unwrap_or("").trim();
                anyhow!("{}: not a GGUF file whale reads: {first}", p.display())
            })?;
            // SAFETY: read-only mapping of a file we do not write; bytes are checked before use.
            let map =
                unsafe { Mmap::map(&f) }.with_context(|| format!("cannot map {}", p.display()))?;
            let size = map.len() as u64;
            for (name, info) in &content.tensor_infos {
                let ty = ggml_type(info.ggml_dtype).ok_or_else(|| {
                    anyhow!(
                        "{}: tensor {name} is {:?}, a ggml type whale does not read",
                        p.display(),
                        info.ggml_dtype
                    )
                })?;
                let shape = info.shape.dims().to_vec();
                let n = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
                let inner = shape.last().copied().unwrap_or(1);
                let len = n
                    .filter(|_| inner.is_multiple_of(ty.block_size()))
                    .and_then(|n| ty.bytes_for(n))
                    .ok_or_else(|| {
                        anyhow!(
                            "{}: tensor {name} of shape {shape:?} is not whole {} blocks",
                            p.display(),
                            ty.name()
                        )
                    })?;
                let start = content.tensor_data_offset.checked_add(info.offset);
                let end = start.and_then(|s| s.checked_add(len as u64));
                match (start, end) {
                    (Some(s), Some(e)) if e <= size => {
                        let t = GgufTensor {
                            ty,
                            shape,
                            file: fi,
                            start: s as usize,
                            len,
                        };
                        if tensors.insert(name.clone(), t).is_some() {
                            bail!("{}: tensor {name} is in two parts", p.display());
                        }
                    }
                    _ => bail!(
                        "{}: tensor {name}'s data runs past the end of the file ({size} bytes): the file is truncated or damaged",
                        p.display()
                    ),
                }
            }
            // the first part carries the model's metadata; later ones repeat the split keys
            for (k, v) in content.metadata {
                metadata.entry(k).or_insert(v);
            }
            maps.push(map);
        }
        Ok(Gguf {
            paths,
            metadata,
            tensors,
            maps,
        })
    }

    /// A tensor's bytes as stored.
    pub fn bytes(&self, name: &str) -> Result<&[u8]> {
        let t = self.tensor(name)?;
        Ok(&self.maps[t.file][t.start..t.start + t.len])
    }

    pub fn tensor(&self, name: &str) -> Result<&GgufTensor> {
        self.tensors
            .get(name)
            .ok_or_else(|| anyhow!("tensor {name} is missing from {}", self.paths[0].display()))
    }

    fn get(&self, key: &str) -> Result<&Value> {
        self.metadata
            .get(key)
            .ok_or_else(|| anyhow!("{}: metadata key {key} is missing", self.paths[0].display()))
    }

    fn wrong(&self, key: &str, want: &str, v: &Value) -> anyhow::Error {
        anyhow!(
            "{}: metadata key {key} must be {want}, found {:?}",
            self.paths[0].display(),
            v.value_type()
        )
    }

    pub fn has(&self, key: &str) -> bool {
        self.metadata.contains_key(key)
    }

    pub fn string(&self, key: &str) -> Result<&str> {
        match self.get(key)? {
            Value::String(s) => Ok(s),
            v => Err(self.wrong(key, "a string", v)),
        }
    }

    /// An unsigned integer of any width (llama.cpp writes u32 for most counts).
    pub fn uint(&self, key: &str) -> Result<u64> {
        let v = self.get(key)?;
        Ok(match v {
            Value::U8(x) => *x as u64,
            Value::U16(x) => *x as u64,
            Value::U32(x) => *x as u64,
            Value::U64(x) => *x,
            Value::I8(x) if *x >= 0 => *x as u64,
            Value::I16(x) if *x >= 0 => *x as u64,
            Value::I32(x) if *x >= 0 => *x as u64,
            Value::I64(x) if *x >= 0 => *x as u64,
            v => return Err(self.wrong(key, "a non-negative integer", v)),
        })
    }

    pub fn float(&self, key: &str) -> Result<f64> {
        match self.get(key)? {
            Value::F32(x) => Ok(*x as f64),
            Value::F64(x) => Ok(*x),
            v => Err(self.wrong(key, "a float", v)),
        }
    }

    /// The tensors by ggml type: (type, count, bytes).
    pub fn by_type(&self) -> Vec<(GgmlType, usize, usize)> {
        let mut m: BTreeMap<u32, (GgmlType, usize, usize)> = BTreeMap::new();
        for t in self.tensors.values() {
            let e = m.entry(t.ty.id()).or_insert((t.ty, 0, 0));
            e.1 += 1;
            e.2 += t.len;
        }
        m.into_values().collect()
    }

    pub fn total_bytes(&self) -> usize {
        self.tensors.values().map(|t| t.len).sum()
    }
}

/// A metadata value to write (the types llama.cpp's keys use).
#[derive(Clone, Debug)]
pub enum Meta {
    U32(u32),
    F32(f32),
    Bool(bool),
    Str(String),
    Strs(Vec<String>),
    I32s(Vec<i32>),
    F32s(Vec<f32>),
}

/// Writes a GGUF v3 file: `meta` in order, then `tensors` (name, type, shape outer dimension
/// first, bytes in the type's encoding) aligned to 32 bytes. Written by hand because candle's
/// writer takes its own tensor type; whale's are bytes already.
pub fn write(
    path: &Path,
    meta: &[(&str, Meta)],
    tensors: &[(&str, GgmlType, Vec<usize>, &[u8])],
) -> Result<()> {
    const ALIGN: usize = 32;
    let mut out: Vec<u8> = Vec::new();
    let str_ = |out: &mut Vec<u8>, s: &str| {
        out.extend((s.len() as u64).to_le_bytes());
        out.extend(s.as_bytes());
    };
    out.extend(b"GGUF");
    out.extend(3u32.to_le_bytes());
    out.extend((tensors.len() as u64).to_le_bytes());
    out.extend((meta.len() as u64).to_le_bytes());
    for (k, v) in meta {
        str_(&mut out, k);
        // gguf value types: 4 u32, 5 i32, 6 f32, 7 bool, 8 string, 9 array
        match v {
            Meta::U32(x) => {
                out.extend(4u32.to_le_bytes());
                out.extend(x.to_le_bytes());
            }
            Meta::F32(x) => {
                out.extend(6u32.to_le_bytes());
                out.extend(x.to_le_bytes());
            }
            Meta::Bool(x) => {
                out.extend(7u32.to_le_bytes());
                out.push(*x as u8);
            }
            Meta::Str(x) => {
                out.extend(8u32.to_le_bytes());
                str_(&mut out, x);
            }
            Meta::Strs(xs) => {
                out.extend(9u32.to_le_bytes());
                out.extend(8u32.to_le_bytes());
                out.extend((xs.len() as u64).to_le_bytes());
                for x in xs {
                    str_(&mut out, x);
                }
            }
            Meta::I32s(xs) => {
                out.extend(9u32.to_le_bytes());
                out.extend(5u32.to_le_bytes());
                out.extend((xs.len() as u64).to_le_bytes());
                xs.iter().for_each(|x| out.extend(x.to_le_bytes()));
            }
            Meta::F32s(xs) => {
                out.extend(9u32.to_le_bytes());
                out.extend(6u32.to_le_bytes());
                out.extend((xs.len() as u64).to_le_bytes());
                xs.iter().for_each(|x| out.extend(x.to_le_bytes()));
            }
        }
    }
    let mut offset = 0usize;
    for (name, ty, shape, bytes) in tensors {
        str_(&mut out, name);
        out.extend((shape.len() as u32).to_le_bytes());
        for d in shape.iter().rev() {
            out.extend((*d as u64).to_le_bytes());
        }
        out.extend(ty.id().to_le_bytes());
        out.extend((offset as u64).to_le_bytes());
        offset += bytes.len().div_ceil(ALIGN) * ALIGN;
    }
    out.resize(out.len().div_ceil(ALIGN) * ALIGN, 0);
    for (_, _, _, bytes) in tensors {
        out.extend(*bytes);
        out.resize(out.len().div_ceil(ALIGN) * ALIGN, 0);
    }
    std::fs::write(path, out).with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_names_list_every_part() {
        let dir = tempfile::tempdir().unwrap();
        let p = |i: usize| dir.path().join(format!("m-{i:05}-of-00002.gguf"));
        std::fs::write(p(1), b"").unwrap();
        assert!(parts(&p(1))
            .unwrap_err()
            .to_string()
            .contains("part 2 of 2"));
        std::fs::write(p(2), b"").unwrap();
        assert_eq!(parts(&p(2)).unwrap(), vec![p(1), p(2)]);
        let one = dir.path().join("model-q4.gguf");
        assert_eq!(parts(&one).unwrap(), vec![one.clone()]);
    }
}
