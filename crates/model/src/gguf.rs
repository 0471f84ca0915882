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

    /// A float; an f32 as its shortest decimal (llama.cpp writes `1e-6` as f32, the hub's
    /// config says 1e-6).
    pub fn float(&self, key: &str) -> Result<f64> {
        match self.get(key)? {
            Value::F32(x) => Ok(x.to_string().parse().expect("a float's own text")),
            Value::F64(x) => Ok(*x),
            v => Err(self.wrong(key, "a float", v)),
        }
    }

    pub fn boolean(&self, key: &str) -> Result<bool> {
        match self.get(key)? {
            Value::Bool(b) => Ok(*b),
            v => Err(self.wrong(key, "a bool", v)),
        }
    }

    /// An array of strings.
    pub fn strings(&self, key: &str) -> Result<Vec<&str>> {
        match self.get(key)? {
            Value::Array(a) => a
                .iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s.as_str()),
                    v => Err(self.wrong(key, "an array of strings", v)),
                })
                .collect(),
            v => Err(self.wrong(key, "an array of strings", v)),
        }
    }

    /// An array of integers.
    pub fn ints(&self, key: &str) -> Result<Vec<i64>> {
        match self.get(key)? {
            Value::Array(a) => a
                .iter()
                .map(|v| match v {
                    Value::I32(x) => Ok(*x as i64),
                    Value::U32(x) => Ok(*x as i64),
                    Value::I64(x) => Ok(*x),
                    Value::U8(x) => Ok(*x as i64),
                    Value::I8(x) => Ok(*x as i64),
                    v => Err(self.wrong(key, "an array of integers", v)),
                })
                .collect(),
            v => Err(self.wrong(key, "an array of integers", v)),
        }
    }

    /// The hub `tokenizer.json` (and the tokenizer_config.json fields whale reads) of the
    /// vocabulary in `tokenizer.ggml.*`: byte-level BPE (`model` gpt2) with GPT-2's
    /// pre-tokenizer (`pre` gpt-2); control and user-defined tokens become added tokens.
    pub fn hub_tokenizer(&self) -> Result<(serde_json::Value, serde_json::Value)> {
        use serde_json::json;
        let model = self.string("tokenizer.ggml.model")?;
        if model != "gpt2" {
            bail!(
                "{}: metadata key tokenizer.ggml.model is `{model}`; whale reads gpt2 (byte-level BPE) vocabularies",
                self.paths[0].display()
            );
        }
        let pre = if self.has("tokenizer.ggml.pre") {
            self.string("tokenizer.ggml.pre")?
        } else {
            "gpt-2"
        };
        if pre != "gpt-2" {
            bail!(
                "{}: metadata key tokenizer.ggml.pre is `{pre}`, a pre-tokenizer whale does not read from GGUF yet (gpt-2); use the hub's tokenizer files",
                self.paths[0].display()
            );
        }
        let tokens = self.strings("tokenizer.ggml.tokens")?;
        let types = if self.has("tokenizer.ggml.token_type") {
            self.ints("tokenizer.ggml.token_type")?
        } else {
            vec![1; tokens.len()]
        };
        if types.len() != tokens.len() {
            bail!(
                "{}: tokenizer.ggml.token_type has {} entries for {} tokens",
                self.paths[0].display(),
                types.len(),
                tokens.len()
            );
        }
        let merges = self.strings("tokenizer.ggml.merges")?;
        let mut vocab = serde_json::Map::new();
        let mut added = Vec::new();
        for (id, (t, ty)) in tokens.iter().zip(&types).enumerate() {
            vocab.insert(t.to_string(), json!(id));
            // llama.cpp's token types: 3 control, 4 user-defined
            if *ty == 3 || *ty == 4 {
                added.push(
                    json!({"id": id, "content": t, "single_word": false, "lstrip": false,
                    "rstrip": false, "normalized": false, "special": *ty == 3}),
                );
            }
        }
        let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
        let tok = json!({
            "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
            "normalizer": null, "pre_tokenizer": byte_level, "post_processor": null,
            "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
            "model": {"type": "BPE", "dropout": null, "unk_token": null,
                "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": false,
                "byte_fallback": false, "ignore_merges": false, "vocab": vocab, "merges": merges},
        });
        let token = |key: &str| -> Result<Option<String>> {
            if !self.has(key) {
                return Ok(None);
            }
            let id = self.uint(key)? as usize;
            tokens
                .get(id)
                .map(|t| Some(t.to_string()))
                .ok_or_else(|| anyhow!("{}: {key} {id} is not a token", self.paths[0].display()))
        };
        let mut cfg = json!({
            "bos_token": token("tokenizer.ggml.bos_token_id")?,
            "eos_token": token("tokenizer.ggml.eos_token_id")?,
            "add_bos_token": if self.has("tokenizer.ggml.add_bos_token") {
                self.boolean("tokenizer.ggml.add_bos_token")?
            } else {
                false
            },
            "add_eos_token": if self.has("tokenizer.ggml.add_eos_token") {
                self.boolean("tokenizer.ggml.add_eos_token")?
            } else {
                false
            },
        });
        if self.has("tokenizer.chat_template") {
            cfg["chat_template"] = self.string("tokenizer.chat_template")?.into();
        }
        Ok((tok, cfg))
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

/// The dense decoders whale reads from GGUF, by `general.architecture` (R1's distills).
const DENSE: [&str; 3] = ["qwen2", "qwen3", "llama"];

/// llama.cpp's names of a block's tensors beside the hub's (`blk.N.` / `model.layers.N.`).
const BLOCK_NAMES: [(&str, &str); 15] = [
    ("attn_norm.weight", "input_layernorm.weight"),
    ("ffn_norm.weight", "post_attention_layernorm.weight"),
    ("attn_q.weight", "self_attn.q_proj.weight"),
    ("attn_k.weight", "self_attn.k_proj.weight"),
    ("attn_v.weight", "self_attn.v_proj.weight"),
    ("attn_q.bias", "self_attn.q_proj.bias"),
    ("attn_k.bias", "self_attn.k_proj.bias"),
    ("attn_v.bias", "self_attn.v_proj.bias"),
    ("attn_output.weight", "self_attn.o_proj.weight"),
    ("attn_output.bias", "self_attn.o_proj.bias"),
    ("attn_q_norm.weight", "self_attn.q_norm.weight"),
    ("attn_k_norm.weight", "self_attn.k_norm.weight"),
    ("ffn_gate.weight", "mlp.gate_proj.weight"),
    ("ffn_up.weight", "mlp.up_proj.weight"),
    ("ffn_down.weight", "mlp.down_proj.weight"),
];

const TOP_NAMES: [(&str, &str); 3] = [
    ("token_embd.weight", "model.embed_tokens.weight"),
    ("output_norm.weight", "model.norm.weight"),
    ("output.weight", "lm_head.weight"),
];

/// The hub name of a GGUF tensor of a dense decoder, where whale has one.
pub fn hub_name(gguf: &str) -> Option<String> {
    if let Some((_, h)) = TOP_NAMES.iter().find(|(g, _)| *g == gguf) {
        return Some(h.to_string());
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (i, leaf) = rest.split_once('.')?;
    let i: usize = i.parse().ok()?;
    let (_, h) = BLOCK_NAMES.iter().find(|(g, _)| *g == leaf)?;
    Some(format!("model.layers.{i}.{h}"))
}

/// The GGUF name of a hub tensor of a dense decoder.
pub fn gguf_name(hub: &str) -> Option<String> {
    if let Some((g, _)) = TOP_NAMES.iter().find(|(_, h)| *h == hub) {
        return Some(g.to_string());
    }
    let rest = hub.strip_prefix("model.layers.")?;
    let (i, leaf) = rest.split_once('.')?;
    let i: usize = i.parse().ok()?;
    let (g, _) = BLOCK_NAMES.iter().find(|(_, h)| *h == leaf)?;
    Some(format!("blk.{i}.{g}"))
}

/// llama.cpp stores a `llama` model's q and k rows permuted (its rope rotates adjacent pairs,
/// the hub's rotates halves): row r of the file is row `permuted(r)` of the hub's weight, for
/// `heads` heads of `rows / heads` rows.
pub fn llama_permuted_row(r: usize, rows: usize, heads: usize) -> usize {
    let per = rows / heads;
    let (h, j) = (r / per, r % per);
    // file (h, i, two) <- hub (h, two, i): j = 2 * i + two
    h * per + (j % 2) * (per / 2) + j / 2
}

impl Gguf {
    /// The architecture, checked to be one whale runs from GGUF.
    pub fn architecture(&self) -> Result<&str> {
        let arch = self.string("general.architecture")?;
        if !DENSE.contains(&arch) {
            bail!(
                "{}: general.architecture `{arch}` is not one whale runs from GGUF yet (supported: {})",
                self.paths[0].display(),
                DENSE.join(", ")
            );
        }
        Ok(arch)
    }

    /// The hub config.json of a dense decoder from its metadata (llama.cpp's keys), so the
    /// config is checked as every other is.
    pub fn hub_config(&self) -> Result<serde_json::Value> {
        let arch = self.architecture()?;
        let k = |key: &str| format!("{arch}.{key}");
        // every key of the architecture is one read here: another could change the model
        const READ: [&str; 15] = [
            "context_length",
            "embedding_length",
            "block_count",
            "feed_forward_length",
            "attention.head_count",
            "attention.head_count_kv",
            "attention.key_length",
            "attention.value_length",
            "attention.layer_norm_rms_epsilon",
            "rope.freq_base",
            "rope.dimension_count",
            "vocab_size",
            "rope.scaling.type",
            "rope.scaling.factor",
            "rope.scaling.original_context_length",
        ];
        let mut unread: Vec<&String> = self
            .metadata
            .keys()
            .filter(|key| {
                key.strip_prefix(arch)
                    .and_then(|r| r.strip_prefix('.'))
                    .is_some_and(|r| !READ.contains(&r))
            })
            .collect();
        unread.sort();
        if let Some(key) = unread.first() {
            bail!(
                "{}: metadata key {key} is not one whale reads for {arch} (it could change the model)",
                self.paths[0].display()
            );
        }
        let heads = self.uint(&k("attention.head_count"))?;
        let hidden = self.uint(&k("embedding_length"))?;
        let vocab = match self.uint(&k("vocab_size")) {
            Ok(v) => v,
            Err(_) => self.tensor("token_embd.weight")?.shape[0] as u64,
        };
        let mut c = serde_json::json!({
            "model_type": arch,
            "vocab_size": vocab,
            "hidden_size": hidden,
            "intermediate_size": self.uint(&k("feed_forward_length"))?,
            "num_hidden_layers": self.uint(&k("block_count"))?,
            "num_attention_heads": heads,
            "num_key_value_heads": if self.has(&k("attention.head_count_kv")) {
                self.uint(&k("attention.head_count_kv"))?
            } else {
                heads
            },
            "max_position_embeddings": self.uint(&k("context_length"))?,
            "rms_norm_eps": self.float(&k("attention.layer_norm_rms_epsilon"))?,
            "rope_theta": if self.has(&k("rope.freq_base")) { self.float(&k("rope.freq_base"))? } else { 10000.0 },
            "tie_word_embeddings": !self.tensors.contains_key("output.weight"),
            "attention_bias": self.tensors.contains_key("blk.0.attn_q.bias"),
        });
        let head_dim = if self.has(&k("attention.key_length")) {
            let d = self.uint(&k("attention.key_length"))?;
            c["head_dim"] = d.into();
            d
        } else {
            hidden / heads.max(1)
        };
        // whale's heads rotate and return every dimension of one width
        for key in ["attention.value_length", "rope.dimension_count"] {
            if self.has(&k(key)) && self.uint(&k(key))? != head_dim {
                bail!(
                    "{}: metadata key {} is {}, not the head size {head_dim}; whale runs heads whose values and rotated dims are the whole head",
                    self.paths[0].display(),
                    k(key),
                    self.uint(&k(key))?
                );
            }
        }
        for (key, field) in [
            ("tokenizer.ggml.bos_token_id", "bos_token_id"),
            ("tokenizer.ggml.eos_token_id", "eos_token_id"),
        ] {
            if self.has(key) {
                c[field] = self.uint(key)?.into();
            }
        }
        if self.tensors.contains_key("rope_freqs.weight") {
            bail!(
                "{}: rope_freqs.weight (llama3 rope scaling as llama.cpp stores it) is not read yet",
                self.paths[0].display()
            );
        }
        let scaling = k("rope.scaling.type");
        if self.has(&scaling) {
            match self.string(&scaling)? {
                "none" => {}
                "yarn" => {
                    c["rope_scaling"] = serde_json::json!({
                        "rope_type": "yarn",
                        "factor": self.float(&k("rope.scaling.factor"))?,
                        "original_max_position_embeddings":
                            self.uint(&k("rope.scaling.original_context_length"))?,
                    });
                }
                other => bail!(
                    "{}: metadata key {scaling} is `{other}`; whale reads none and yarn",
                    self.paths[0].display()
                ),
            }
        }
        Ok(c)
    }
}

/// Writes a dense decoder's checkpoint as a GGUF file under llama.cpp's names and metadata
/// keys: 2-D weights in `ty` (F32, F16, BF16 or Q8_0; the embedding too), norms and biases in
/// F32, a `llama` model's q and k rows permuted as llama.cpp permutes them.
pub fn export(ck: &crate::Checkpoint, out: &Path, ty: GgmlType) -> Result<()> {
    let c = &ck.config;
    let arch = c.model_type.as_str();
    if !DENSE.contains(&arch) {
        bail!("GGUF export writes qwen2, qwen3 and llama models; this one is {arch}");
    }
    if !matches!(
        ty,
        GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 | GgmlType::Q8_0
    ) {
        bail!(
            "GGUF export writes F32, F16, BF16 or Q8_0, not {}",
            ty.name()
        );
    }
    if c.llama3.is_some() {
        bail!(
            "GGUF export of llama3 rope scaling (llama.cpp's rope_freqs tensor) is not written yet"
        );
    }
    let g = c.gqa.as_ref().expect("a dense decoder");
    let k = |key: &str| format!("{arch}.{key}");
    let mut meta: Vec<(String, Meta)> = vec![
        ("general.architecture".into(), Meta::Str(arch.into())),
        (
            k("context_length"),
            Meta::U32(c.max_position_embeddings as u32),
        ),
        (k("embedding_length"), Meta::U32(c.hidden_size as u32)),
        (k("block_count"), Meta::U32(c.num_hidden_layers as u32)),
        (
            k("feed_forward_length"),
            Meta::U32(c.intermediate_size as u32),
        ),
        (
            k("attention.head_count"),
            Meta::U32(c.num_attention_heads as u32),
        ),
        (
            k("attention.head_count_kv"),
            Meta::U32(g.num_key_value_heads as u32),
        ),
        (k("attention.key_length"), Meta::U32(g.head_dim as u32)),
        (k("attention.value_length"), Meta::U32(g.head_dim as u32)),
        (k("rope.freq_base"), Meta::F32(c.rope_theta as f32)),
        (
            k("attention.layer_norm_rms_epsilon"),
            Meta::F32(c.rms_norm_eps as f32),
        ),
        (k("vocab_size"), Meta::U32(c.vocab_size as u32)),
    ];
    if let Some(y) = &c.yarn {
        meta.push((k("rope.scaling.type"), Meta::Str("yarn".into())));
        meta.push((k("rope.scaling.factor"), Meta::F32(y.factor as f32)));
        meta.push((
            k("rope.scaling.original_context_length"),
            Meta::U32(y.original_max_position_embeddings as u32),
        ));
    }
    if let Some(b) = c.bos_token_id {
        meta.push(("tokenizer.ggml.bos_token_id".into(), Meta::U32(b)));
    }
    if let Some(&e) = c.eos_token_ids.first() {
        meta.push(("tokenizer.ggml.eos_token_id".into(), Meta::U32(e)));
    }
    meta.extend(tokenizer_meta(&ck.dir, c.vocab_size)?);
    let mut tensors: Vec<(String, GgmlType, Vec<usize>, Vec<u8>)> = Vec::new();
    for hub in ck.tensor_names() {
        let Some(name) = gguf_name(hub) else {
            bail!("tensor {hub} has no GGUF name whale writes");
        };
        if name == "output.weight" && c.tie_word_embeddings {
            continue;
        }
        let e = ck.entry(hub).expect("listed");
        let (rows, cols) = match e.shape[..] {
            [n] => (1, n),
            [r, c] => (r, c),
            _ => bail!("tensor {hub} has shape {:?}", e.shape),
        };
        let mut values = if e.shape.len() == 1 {
            ck.vector(hub, cols)?
        } else {
            ck.matrix(hub, rows, cols)?.to_f32()
        };
        let heads = if hub.contains("q_proj.") {
            c.num_attention_heads
        } else {
            g.num_key_value_heads
        };
        if arch == "llama" && (hub.contains("q_proj.") || hub.contains("k_proj.")) {
            let (n, w) = if e.shape.len() == 1 {
                (cols, 1)
            } else {
                (rows, cols)
            };
            let src = values.clone();
            for r in 0..n {
                let from = llama_permuted_row(r, n, heads);
                values[r * w..(r + 1) * w].copy_from_slice(&src[from * w..(from + 1) * w]);
            }
        }
        let t = if e.shape.len() == 1 || (ty == GgmlType::Q8_0 && !cols.is_multiple_of(32)) {
            GgmlType::F32
        } else {
            ty
        };
        let bytes: Vec<u8> = match t {
            GgmlType::F32 => bytemuck::cast_slice(&values).to_vec(),
            GgmlType::F16 => values
                .iter()
                .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
                .collect(),
            GgmlType::BF16 => values
                .iter()
                .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
                .collect(),
            _ => {
                let (mut qs, mut sc) = (Vec::new(), Vec::new());
                whale_kernels::quant::quantize_q8_0(&values, &mut qs, &mut sc);
                let mut out = Vec::with_capacity(qs.len() / 32 * 34);
                for (q, s) in qs.chunks_exact(32).zip(&sc) {
                    out.extend(s.to_le_bytes());
                    out.extend(q.iter().map(|&v| v as u8));
                }
                out
            }
        };
        tensors.push((name, t, e.shape.clone(), bytes));
    }
    let meta: Vec<(&str, Meta)> = meta.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    let tensors: Vec<(&str, GgmlType, Vec<usize>, &[u8])> = tensors
        .iter()
        .map(|(n, t, s, b)| (n.as_str(), *t, s.clone(), b.as_slice()))
        .collect();
    write(out, &meta, &tensors)
}

/// `tokenizer.ggml.*` and `tokenizer.chat_template` of a checkpoint's tokenizer.json and
/// tokenizer_config.json: byte-level BPE with GPT-2's pre-tokenizer (what llama.cpp calls
/// `gpt2` / `gpt-2`), padded to the model's vocabulary with unused tokens as llama.cpp pads.
fn tokenizer_meta(dir: &Path, vocab_size: usize) -> Result<Vec<(String, Meta)>> {
    let read = |f: &str| -> Result<Option<serde_json::Value>> {
        let p = dir.join(f);
        if !p.exists() {
            return Ok(None);
        }
        let text =
            std::fs::read_to_string(&p).with_context(|| format!("cannot read {}", p.display()))?;
        Ok(Some(
            serde_json::from_str(&text).with_context(|| format!("{} is not JSON", p.display()))?,
        ))
    };
    let Some(tok) = read("tokenizer.json")? else {
        bail!(
            "{}: no tokenizer.json to write into the GGUF",
            dir.display()
        );
    };
    let byte_level = tok.pointer("/pre_tokenizer/type").and_then(|t| t.as_str())
        == Some("ByteLevel")
        && tok
            .pointer("/pre_tokenizer/use_regex")
            .and_then(|t| t.as_bool())
            == Some(true);
    if tok.pointer("/model/type").and_then(|t| t.as_str()) != Some("BPE") || !byte_level {
        bail!("{}: GGUF export writes byte-level BPE tokenizers with GPT-2's pre-tokenizer; this one is another", dir.display());
    }
    let vocab = tok
        .pointer("/model/vocab")
        .and_then(|v| v.as_object())
        .ok_or_else(|| anyhow!("tokenizer.json has no model.vocab"))?;
    let mut tokens: Vec<Option<String>> = vec![None; vocab_size.max(vocab.len())];
    let mut types = vec![1i32; tokens.len()];
    let mut put = |id: u64, t: &str, ty: i32| -> Result<()> {
        let slot = tokens
            .get_mut(id as usize)
            .ok_or_else(|| anyhow!("token {t} has id {id}, past the vocabulary"))?;
        *slot = Some(t.to_string());
        types[id as usize] = ty;
        Ok(())
    };
    for (t, id) in vocab {
        put(
            id.as_u64().ok_or_else(|| anyhow!("token {t} has no id"))?,
            t,
            1,
        )?;
    }
    for a in tok
        .get("added_tokens")
        .and_then(|a| a.as_array())
        .into_iter()
        .flatten()
    {
        let (Some(id), Some(t)) = (a["id"].as_u64(), a["content"].as_str()) else {
            bail!("tokenizer.json: an added token without id or content");
        };
        put(
            id,
            t,
            if a["special"].as_bool() == Some(true) {
                3
            } else {
                4
            },
        )?;
    }
    let mut names = Vec::with_capacity(tokens.len());
    for (i, t) in tokens.into_iter().enumerate() {
        names.push(t.unwrap_or_else(|| {
            types[i] = 5;
            format!("[PAD{i}]")
        }));
    }
    let merges: Vec<String> = tok
        .pointer("/model/merges")
        .and_then(|m| m.as_array())
        .into_iter()
        .flatten()
        .map(|m| match m {
            serde_json::Value::String(s) => Ok(s.clone()),
            serde_json::Value::Array(p) if p.len() == 2 => Ok(format!(
                "{} {}",
                p[0].as_str().unwrap_or(""),
                p[1].as_str().unwrap_or("")
            )),
            _ => bail!("tokenizer.json: a merge that is neither \"a b\" nor [a, b]"),
        })
        .collect::<Result<_>>()?;
    let mut meta = vec![
        ("tokenizer.ggml.model".to_string(), Meta::Str("gpt2".into())),
        ("tokenizer.ggml.pre".to_string(), Meta::Str("gpt-2".into())),
        ("tokenizer.ggml.tokens".to_string(), Meta::Strs(names)),
        ("tokenizer.ggml.token_type".to_string(), Meta::I32s(types)),
        ("tokenizer.ggml.merges".to_string(), Meta::Strs(merges)),
    ];
    if let Some(cfg) = read("tokenizer_config.json")? {
        if let Some(b) = cfg.get("add_bos_token").and_then(|b| b.as_bool()) {
            meta.push(("tokenizer.ggml.add_bos_token".into(), Meta::Bool(b)));
        }
        if let Some(t) = cfg.get("chat_template").and_then(|t| t.as_str()) {
            meta.push(("tokenizer.chat_template".into(), Meta::Str(t.into())));
        }
    }
    Ok(meta)
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

    /// llama.cpp's `permute`: reshape(heads, 2, rows / heads / 2) then swap the last two axes.
    #[test]
    fn llama_rows_are_permuted_as_llama_cpp_permutes_them() {
        let file: Vec<usize> = (0..8).map(|r| llama_permuted_row(r, 8, 2)).collect();
        assert_eq!(file, [0, 2, 1, 3, 4, 6, 5, 7]);
        let file: Vec<usize> = (0..6).map(|r| llama_permuted_row(r, 6, 1)).collect();
        assert_eq!(file, [0, 3, 1, 4, 2, 5]);
    }

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
