//! tiktoken vocabularies as Kimi-K2 and Moonlight ship them: `tiktoken.model` (one
//! `base64(token bytes) rank` per line), the split pattern and the count of reserved special
//! tokens in their `tokenization_*.py`, and the special tokens' names in `tokenizer_config.json`
//! (`added_tokens_decoder`; ids past the ranks without a name are `<|reserved_token_{id}|>`).
//!
//! They are turned once at load into the `tokenizers` form (transformers' own tiktoken
//! conversion: byte-level vocabulary, merges ordered by the rank of the token they make, the
//! whole pre-token taken as is when it is a token), so the rest of whale — the chat template,
//! special-token handling, grammars — reads one kind of tokenizer. `tokenizers` is built with
//! fancy-regex, the engine Python's tiktoken splits with, so the pattern means the same.

use anyhow::{anyhow, bail, Context, Result};
use base64::Engine;
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::path::Path;

pub const RANK_FILE: &str = "tiktoken.model";

/// What a `tokenization_*.py` says when it leaves these out (Kimi-K2's and Moonlight's values).
const DEFAULT_RESERVED: usize = 256;

/// GPT-2's map from bytes to printable characters, which byte-level vocabularies spell
/// tokens in.
fn bytes_to_unicode() -> [char; 256] {
    let mut map = ['\0'; 256];
    let mut n = 0u32;
    for b in 0..256u32 {
        let printable =
            (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
        map[b as usize] = if printable {
            char::from_u32(b).unwrap()
        } else {
            n += 1;
            char::from_u32(255 + n).unwrap()
        };
    }
    map
}

/// The ranks of a `tiktoken.model`, in rank order, checked: every line a base64 token and a
/// rank, ranks 0..n each once, no token twice, every single byte present.
pub fn read_ranks(path: &Path) -> Result<Vec<Vec<u8>>> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| anyhow!("{} is not a tiktoken rank file (not text)", path.display()))?;
    let mut by_rank: Vec<Option<Vec<u8>>> = Vec::new();
    let mut seen: HashMap<Vec<u8>, usize> = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        if line.is_empty() {
            continue;
        }
        let bad = |what: &str| anyhow!("{} line {}: {what}", path.display(), i + 1);
        let (tok, rank) = line
            .split_once(' ')
            .ok_or_else(|| bad("not `base64-token rank`"))?;
        let tok = base64::engine::general_purpose::STANDARD
            .decode(tok)
            .map_err(|_| bad("the token is not base64"))?;
        let rank: usize = rank
            .trim()
            .parse()
            .map_err(|_| bad("the rank is not a number"))?;
        if tok.is_empty() {
            return Err(bad("an empty token"));
        }
        if rank >= 1 << 24 {
            return Err(bad("the rank is past 16M"));
        }
        if let Some(first) = seen.insert(tok.clone(), i + 1) {
            return Err(bad(&format!("the token of line {first} again")));
        }
        if by_rank.len() <= rank {
            by_rank.resize(rank + 1, None);
        }
        if by_rank[rank].is_some() {
            return Err(bad(&format!("rank {rank} given twice")));
        }
        by_rank[rank] = Some(tok);
    }
    if by_rank.is_empty() {
        bail!("{} holds no ranks", path.display());
    }
    let ranks: Vec<Vec<u8>> = by_rank
        .into_iter()
        .enumerate()
        .map(|(r, t)| {
            t.ok_or_else(|| {
                anyhow!(
                    "{}: rank {r} is missing (truncated or damaged?)",
                    path.display()
                )
            })
        })
        .collect::<Result<_>>()?;
    if let Some(b) = (0..=255u8).find(|b| !seen.contains_key(&vec![*b])) {
        bail!(
            "{}: the single byte {b:#04x} is not a token, so some text cannot be encoded (truncated or damaged?)",
            path.display()
        );
    }
    Ok(ranks)
}

/// The split pattern and reserved-token count of the checkpoint's `tokenization_*.py`: the
/// literals of `pat_str = "|".join([r"""...""", ...])` (or `pat_str = r"""..."""`), and
/// `num_reserved_special_tokens = N`. Read as text, never run.
fn read_python(dir: &Path, cfg: &Value) -> Result<(String, usize)> {
    let file = cfg
        .get("auto_map")
        .and_then(|m| m.get("AutoTokenizer"))
        .and_then(|a| a.as_array())
        .and_then(|a| a.iter().find_map(|x| x.as_str()))
        .and_then(|s| s.split_once('.'))
        .map(|(module, _)| format!("{module}.py"));
    let path = match file {
        Some(f) if !f.contains('/') => dir.join(f),
        _ => std::fs::read_dir(dir)?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("tokenization_") && n.ends_with(".py"))
            })
            .ok_or_else(|| {
                anyhow!(
                    "{}: a tiktoken checkpoint needs its tokenization_*.py (the split pattern is there)",
                    dir.display()
                )
            })?,
    };
    let src = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let at = src
        .find("pat_str")
        .ok_or_else(|| anyhow!("{}: no `pat_str` (the split pattern)", path.display()))?;
    let rest = &src[at..];
    let rest = &rest[rest
        .find('=')
        .ok_or_else(|| anyhow!("{}: `pat_str` is not assigned", path.display()))?
        + 1..];
    let joined = rest.trim_start().starts_with("\"|\".join(");
    // the statement ends at the `)` closing the join, or after the one literal
    let mut parts = Vec::new();
    let mut s = rest;
    loop {
        let next_lit = s.find("r\"\"\"");
        let end = if joined { s.find("])") } else { None };
        match (next_lit, end) {
            (Some(l), e) if e.is_none_or(|e| l < e) => {
                let body = &s[l + 4..];
                let close = body.find("\"\"\"").ok_or_else(|| {
                    anyhow!("{}: an unterminated pattern literal", path.display())
                })?;
                parts.push(body[..close].to_string());
                s = &body[close + 3..];
                if !joined {
                    break;
                }
            }
            _ => break,
        }
    }
    if parts.is_empty() {
        bail!(
            "{}: `pat_str` is not written as raw triple-quoted literals whale can read",
            path.display()
        );
    }
    let reserved = match src.find("num_reserved_special_tokens") {
        None => DEFAULT_RESERVED,
        Some(i) => {
            let line = src[i..].lines().next().unwrap_or("");
            line.split_once('=')
                .and_then(|(_, v)| v.trim().parse().ok())
                .ok_or_else(|| anyhow!("{}: `{line}` is not a number of tokens", path.display()))?
        }
    };
    Ok((parts.join("|"), reserved))
}

/// The `tokenizer.json` text for a checkpoint that ships `tiktoken.model` instead.
pub fn tokenizer_json(dir: &Path) -> Result<String> {
    let ranks = read_ranks(&dir.join(RANK_FILE))?;
    let cfg_path = dir.join("tokenizer_config.json");
    let cfg: Value = match std::fs::read_to_string(&cfg_path) {
        Ok(t) => serde_json::from_str(&t)
            .with_context(|| format!("{} is not valid JSON", cfg_path.display()))?,
        Err(_) => Value::Null,
    };
    let (pattern, reserved) = read_python(dir, &cfg)?;
    // named special tokens by id
    let mut names: HashMap<usize, String> = HashMap::new();
    if let Some(m) = cfg.get("added_tokens_decoder").and_then(|m| m.as_object()) {
        for (id, t) in m {
            let id: usize = id.parse().map_err(|_| {
                anyhow!(
                    "{}: added_tokens_decoder key `{id}` is not an id",
                    cfg_path.display()
                )
            })?;
            let content = t.get("content").and_then(|c| c.as_str()).ok_or_else(|| {
                anyhow!(
                    "{}: added_tokens_decoder[{id}] has no content",
                    cfg_path.display()
                )
            })?;
            names.insert(id, content.to_string());
        }
    }
    let n = ranks.len();
    // Kimi's tokenizer: ids n .. n + reserved + 2 are special, named or reserved
    let specials: Vec<(usize, String)> = (n..n + reserved + 2)
        .map(|id| {
            (
                id,
                names
                    .remove(&id)
                    .unwrap_or_else(|| format!("<|reserved_token_{id}|>")),
            )
        })
        .collect();
    if let Some((id, name)) = names.iter().min() {
        bail!(
            "{}: added token {name:?} has id {id}, outside the special ids {n}..{} that follow the {n} ranks",
            cfg_path.display(),
            n + reserved + 2
        );
    }
    let enc = bytes_to_unicode();
    let spell = |t: &[u8]| -> String { t.iter().map(|&b| enc[b as usize]).collect() };
    let rank_of: HashMap<&[u8], usize> = ranks
        .iter()
        .enumerate()
        .map(|(r, t)| (t.as_slice(), r))
        .collect();
    let mut vocab = Map::new();
    // (rank made, left rank, right rank, left, right)
    type Merge<'a> = (usize, usize, usize, &'a [u8], &'a [u8]);
    let mut merges: Vec<Merge> = Vec::new();
    for (r, t) in ranks.iter().enumerate() {
        vocab.insert(spell(t), json!(r));
        for i in 1..t.len() {
            let (a, b) = t.split_at(i);
            if let (Some(&ra), Some(&rb)) = (rank_of.get(a), rank_of.get(b)) {
                merges.push((r, ra, rb, a, b));
            }
        }
    }
    merges.sort_unstable_by_key(|&(r, ra, rb, _, _)| (r, ra, rb));
    let merges: Vec<Value> = merges
        .iter()
        .map(|(_, _, _, a, b)| json!([spell(a), spell(b)]))
        .collect();
    let added: Vec<Value> = specials
        .iter()
        .map(|(id, content)| {
            json!({"id": id, "content": content, "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": false},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}
        ]},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                  "ignore_merges": true, "vocab": vocab, "merges": merges}
    })
    .to_string())
}

/// The tokenizer of a checkpoint directory as `tokenizer.json` text: the file itself, or the
/// conversion of `tiktoken.model` where that is what the checkpoint ships.
pub fn tokenizer_source(dir: &Path) -> Result<String> {
    let path = dir.join("tokenizer.json");
    if path.exists() {
        return std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()));
    }
    if dir.join(RANK_FILE).exists() {
        return tokenizer_json(dir);
    }
    bail!(
        "{}: no tokenizer (neither tokenizer.json nor {RANK_FILE})",
        dir.display()
    )
}
