//! `tokenizer.json` through the `tokenizers` crate and the `chat_template` of
//! `tokenizer_config.json` rendered with minijinja the way transformers renders it
//! (trim_blocks, lstrip_blocks, Python string methods such as `.split`).

use anyhow::{anyhow, bail, Context, Result};
use minijinja::{Environment, ErrorKind};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::Path;

/// A chat message as the template sees it: role, content (`None` is the template's `none`, as
/// for an assistant turn that only calls tools) and any other keys the request gave it
/// (`tool_calls`, `tool_call_id`, `name`), passed on as they are.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Message {
    pub role: String,
    pub content: Option<String>,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, Value>,
}

impl Message {
    pub fn new(role: &str, content: &str) -> Self {
        Message {
            role: role.into(),
            content: Some(content.into()),
            extra: Default::default(),
        }
    }

    pub fn text(&self) -> &str {
        self.content.as_deref().unwrap_or("")
    }
}

pub struct ChatTokenizer {
    tok: tokenizers::Tokenizer,
    chat_template: Option<String>,
    /// with no template: the format the release ships as code (V3.2, V4), from config.json
    native: Option<crate::native_chat::NativeFormat>,
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    pub add_bos_token: bool,
    /// UTF-8 bytes of the longest vocabulary entry: no token stands for more text than this
    max_token_bytes: usize,
    /// the text of each special added token (turn markers, BOS, EOS, tool markers), longest
    /// first: spelled inside a message, it is tokenised as text, so no one can forge a turn
    control_texts: Vec<String>,
}

/// A rendered chat prompt in which every control token's text that came from a message's
/// content stands as a placeholder (`\u{E000}nonce:k\u{E001}`, a nonce no client can guess):
/// the template's own control tokens become tokens, the messages' become text.
#[derive(Debug, Clone)]
pub struct Rendered {
    pub text: String,
    nonce: u64,
    literals: Vec<String>,
}

impl Rendered {
    fn placeholder(nonce: u64, k: usize) -> String {
        format!("\u{E000}{nonce:016x}:{k}\u{E001}")
    }

    /// The prompt as the template wrote it, the messages' text put back.
    pub fn plain(&self) -> std::borrow::Cow<'_, str> {
        if self.literals.is_empty() {
            return self.text.as_str().into();
        }
        let mut t = self.text.clone();
        for (k, lit) in self.literals.iter().enumerate() {
            t = t.replace(&Self::placeholder(self.nonce, k), lit);
        }
        t.into()
    }
}

/// DeepSeek's fill-in-the-middle markers: begin, hole, end.
pub const FIM_TOKENS: [&str; 3] = ["<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>"];

/// Text above this is measured piece by piece before it is tokenised whole.
const MEASURE_PIECE: usize = 64 << 10;

/// `bos_token` and friends are either a string or an AddedToken object with `content`.
fn token_text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(|c| c.as_str()).map(String::from),
        _ => None,
    }
}

impl ChatTokenizer {
    /// A GGUF file's vocabulary and chat template (`tokenizer.ggml.*`, `tokenizer.chat_template`).
    fn from_gguf(path: &Path) -> Result<Self> {
        let g = whale_model::gguf::Gguf::open(path)?;
        let (json, cfg) = g.hub_tokenizer()?;
        let tok: tokenizers::Tokenizer = json.to_string().parse().map_err(|e| {
            anyhow!(
                "{}: its vocabulary does not make a tokenizer: {e}",
                path.display()
            )
        })?;
        Self::assemble(tok, cfg, None)
    }

    pub fn load(dir: &Path) -> Result<Self> {
        if whale_model::gguf::is_gguf(dir) {
            return Self::from_gguf(dir);
        }
        let path = dir.join("tokenizer.json");
        let tok = if path.exists() || !dir.join(crate::tiktoken::RANK_FILE).exists() {
            if !path.exists() {
                bail!("{} is missing", path.display());
            }
            tokenizers::Tokenizer::from_file(&path)
                .map_err(|e| anyhow!("{} is not a valid tokenizer: {e}", path.display()))?
        } else {
            let json = crate::tiktoken::tokenizer_json(dir)?;
            json.parse::<tokenizers::Tokenizer>().map_err(|e| {
                anyhow!(
                    "{}: the tiktoken vocabulary does not make a tokenizer: {e}",
                    dir.display()
                )
            })?
        };
        let cfg_path = dir.join("tokenizer_config.json");
        let cfg: Value = if cfg_path.exists() {
            let text = std::fs::read_to_string(&cfg_path)
                .with_context(|| format!("cannot read {}", cfg_path.display()))?;
            serde_json::from_str(&text)
                .with_context(|| format!("{} is not valid JSON", cfg_path.display()))?
        } else {
            Value::Null
        };
        // (taken where the config has no template of its own)
        let native = std::fs::read_to_string(dir.join("config.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            .and_then(|c| {
                c.get("model_type")
                    .and_then(|m| m.as_str())
                    .and_then(crate::native_chat::NativeFormat::for_model_type)
            });
        Self::assemble(tok, cfg, native)
    }

    /// The tokenizer with its tokenizer_config.json fields; `native`: the release's own
    /// conversation format for a checkpoint without a template.
    fn assemble(
        tok: tokenizers::Tokenizer,
        cfg: Value,
        native: Option<crate::native_chat::NativeFormat>,
    ) -> Result<Self> {
        let chat_template = match cfg.get("chat_template") {
            Some(Value::String(s)) => Some(s.clone()),
            // a list of named templates: take "default"
            Some(Value::Array(a)) => a
                .iter()
                .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                .and_then(|t| t.get("template"))
                .and_then(|t| t.as_str())
                .map(String::from),
            _ => None,
        };
        // byte-level vocabularies spell a byte as one char of up to two UTF-8 bytes, so an
        // entry's UTF-8 length bounds the bytes it stands for from above
        let max_token_bytes = tok
            .get_vocab(true)
            .keys()
            .map(|k| k.len())
            .max()
            .unwrap_or(1)
            .max(1);
        // `<think>` and `</think>` stay: templates split earlier answers at them, and they
        // cannot open a turn
        let mut control_texts: Vec<String> = tok
            .get_added_tokens_decoder()
            .values()
            .filter(|t| t.special && t.content != "<think>" && t.content != "</think>")
            .map(|t| t.content.clone())
            .filter(|c| !c.is_empty())
            .collect();
        control_texts.sort_by_key(|c| std::cmp::Reverse(c.len()));
        let native = native.filter(|_| chat_template.is_none());
        // (a GGUF's `tokenizer.ggml.add_eos_token` arrives as this field)
        if cfg.get("add_eos_token").and_then(|b| b.as_bool()) == Some(true) {
            bail!("tokenizer_config.json: `add_eos_token: true` is not supported (whale appends no end-of-sequence token to prompts)");
        }
        Ok(ChatTokenizer {
            control_texts,
            max_token_bytes,
            tok,
            chat_template,
            native,
            bos_token: token_text(cfg.get("bos_token")),
            eos_token: token_text(cfg.get("eos_token")),
            add_bos_token: cfg
                .get("add_bos_token")
                .and_then(|b| b.as_bool())
                .unwrap_or(false),
        })
    }

    /// Tokens of `text` with no special tokens added (the text may contain special tokens).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self
            .tok
            .encode(text, false)
            .map_err(|e| anyhow!("cannot tokenize: {e}"))?
            .get_ids()
            .to_vec())
    }

    /// Whether `text` certainly has more than `limit` tokens, found without tokenising it whole
    /// (which costs hundreds of bytes of memory per byte of text). Sound: never true of a text
    /// that fits. First by its length (no token covers more than the longest vocabulary entry),
    /// then for long texts by counting pieces: every pre-token (and every added token) of the
    /// text is at least one token, and counting pre-tokens in separate pieces of the text
    /// finds at most one extra per stage of the pre-tokenizer at each cut, which is subtracted.
    pub fn surely_longer_than(&self, text: &str, limit: usize) -> bool {
        if text.len() > limit.saturating_mul(self.max_token_bytes) {
            return true;
        }
        if text.len() <= MEASURE_PIECE {
            return false;
        }
        use tokenizers::{OffsetReferential, OffsetType, PreTokenizer};
        let stages = match self.tok.get_pre_tokenizer() {
            Some(tokenizers::PreTokenizerWrapper::Sequence(s)) => s.as_ref().len(),
            _ => 1,
        };
        let mut at_least = 0usize;
        let mut first = true;
        let mut rest = text;
        while !rest.is_empty() {
            let mut cut = rest.len().min(MEASURE_PIECE);
            while !rest.is_char_boundary(cut) {
                cut -= 1;
            }
            let (piece, tail) = rest.split_at(cut);
            rest = tail;
            let mut pre = self
                .tok
                .get_added_vocabulary()
                .extract_and_normalize(self.tok.get_normalizer(), piece);
            if let Some(p) = self.tok.get_pre_tokenizer() {
                if p.pre_tokenize(&mut pre).is_err() {
                    return false;
                }
            }
            let n = pre
                .get_splits(OffsetReferential::Original, OffsetType::None)
                .len();
            // the cut before every piece but the first may have split `stages` pre-tokens
            let extra = if first { 0 } else { stages };
            first = false;
            at_least += n.saturating_sub(extra);
            if at_least > limit {
                return true;
            }
        }
        false
    }

    /// A plain completion prompt: BOS first when the tokenizer wants one, never twice.
    pub fn encode_prompt(&self, text: &str) -> Result<Vec<u32>> {
        let mut ids = self.encode(text)?;
        if self.add_bos_token {
            if let Some(bos) = self
                .bos_token
                .as_deref()
                .and_then(|b| self.tok.token_to_id(b))
            {
                if ids.first() != Some(&bos) {
                    ids.insert(0, bos);
                }
            }
        }
        Ok(ids)
    }

    /// Tokens of `text` read as plain text: the added vocabulary (special tokens included) is
    /// not matched, as transformers' `split_special_tokens=True` does.
    pub fn encode_as_text(&self, text: &str) -> Result<Vec<u32>> {
        use tokenizers::{Model, OffsetReferential, OffsetType, PreTokenizer};
        let none = tokenizers::AddedVocabulary::new();
        let mut pre = none.extract_and_normalize(self.tok.get_normalizer(), text);
        if let Some(p) = self.tok.get_pre_tokenizer() {
            p.pre_tokenize(&mut pre)
                .map_err(|e| anyhow!("cannot tokenize: {e}"))?;
        }
        pre.tokenize(|n| self.tok.get_model().tokenize(n.get()))
            .map_err(|e| anyhow!("cannot tokenize: {e}"))?;
        Ok(pre
            .get_splits(OffsetReferential::Original, OffsetType::None)
            .into_iter()
            .flat_map(|(_, _, toks)| toks.iter().flatten().map(|t| t.id))
            .collect())
    }

    /// Tokens of a rendered chat: the template's text as usual, each placeholder as the text it
    /// stands for.
    pub fn encode_rendered(&self, r: &Rendered) -> Result<Vec<u32>> {
        if r.literals.is_empty() {
            return self.encode(&r.text);
        }
        let mut ids = Vec::new();
        let mut rest = r.text.as_str();
        while let Some(at) = rest.find('\u{E000}') {
            let (before, from) = rest.split_at(at);
            let lit = (0..r.literals.len())
                .find(|&k| from.starts_with(&Rendered::placeholder(r.nonce, k)));
            match lit {
                Some(k) => {
                    ids.extend(self.encode(before)?);
                    ids.extend(self.encode_as_text(&r.literals[k])?);
                    rest = &from[Rendered::placeholder(r.nonce, k).len()..];
                }
                None => {
                    // a private-use char of the text itself: keep going past it
                    let skip = at + '\u{E000}'.len_utf8();
                    ids.extend(self.encode(&rest[..skip])?);
                    rest = &rest[skip..];
                }
            }
        }
        ids.extend(self.encode(rest)?);
        Ok(ids)
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.tok
            .decode(ids, false)
            .map_err(|e| anyhow!("cannot detokenize: {e}"))
    }

    /// The id of a token spelled exactly `text` (a special token's text, for instance).
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.tok.token_to_id(text)
    }

    /// DeepSeek's fill-in-the-middle prompt, `<｜fim▁begin｜>prefix<｜fim▁hole｜>suffix<｜fim▁end｜>`
    /// (the model writes the middle), when this vocabulary has those tokens.
    pub fn fim_prompt(&self, prefix: &str, suffix: &str) -> Option<String> {
        let [begin, hole, end] = FIM_TOKENS;
        FIM_TOKENS
            .iter()
            .all(|t| self.token_id(t).is_some())
            .then(|| format!("{begin}{prefix}{hole}{suffix}{end}"))
    }

    /// Replaces the checkpoint's chat template (vLLM's `--chat-template`: a template that,
    /// say, renders the tool definitions DeepSeek's own templates leave out).
    pub fn set_chat_template(&mut self, template: String) -> Result<()> {
        let mut env = Environment::new();
        env.add_template("chat", &template)
            .context("the chat template does not parse")?;
        self.chat_template = Some(template);
        Ok(())
    }

    /// Whether the chat template reads a variable of this name (a kwarg it does not mention
    /// would be dropped silently).
    pub fn template_mentions(&self, name: &str) -> bool {
        self.chat_template.as_deref().is_some_and(|t| {
            t.match_indices(name).any(|(i, _)| {
                let word = |c: char| c.is_alphanumeric() || c == '_';
                !t[..i].ends_with(word) && !t[i + name.len()..].starts_with(word)
            })
        })
    }

    /// The conversation format the release ships as code, where the checkpoint has no
    /// template and one is known for its model type.
    pub fn native_format(&self) -> Option<crate::native_chat::NativeFormat> {
        self.native.filter(|_| self.chat_template.is_none())
    }

    pub fn has_chat_template(&self) -> bool {
        self.chat_template.is_some() || self.native.is_some()
    }

    /// The chat template rendered for `messages`, control-token text in their contents held as
    /// placeholders (see `Rendered`); `extra` adds template variables (for example `thinking`
    /// for templates that can turn reasoning off).
    pub fn render_chat(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
        extra: &Value,
    ) -> Result<Rendered> {
        let nonce: u64 = rand::random();
        let mut literals: Vec<String> = Vec::new();
        let mut guard = |text: &str| {
            let mut text = text.to_string();
            for c in &self.control_texts {
                if text.contains(c.as_str()) {
                    let k = literals.len();
                    literals.push(c.clone());
                    text = text.replace(c.as_str(), &Rendered::placeholder(nonce, k));
                }
            }
            text
        };
        let mut guarded: Vec<Message> = Vec::with_capacity(messages.len());
        for m in messages {
            let mut g = m.clone();
            g.content = m.content.as_deref().map(&mut guard);
            // every string a message carries reaches the template: tool results, call
            // arguments and names are guarded like contents
            for v in g.extra.values_mut() {
                guard_strings(v, &mut guard);
            }
            guarded.push(g);
        }
        // and so are the tool definitions' names and descriptions
        let mut extra = extra.clone();
        guard_strings(&mut extra, &mut guard);
        let text = match self.render_raw(&guarded, add_generation_prompt, &extra) {
            Ok(t) => t,
            // a template that tests `content` as a string even on a turn that only calls tools
            // (R1-0528's `'</think>' in content`) fails on `none`; its other branch writes the
            // same calls after an empty content
            Err(e) if guarded.iter().any(|m| m.content.is_none()) => {
                for m in guarded.iter_mut().filter(|m| m.content.is_none()) {
                    m.content = Some(String::new());
                }
                self.render_raw(&guarded, add_generation_prompt, &extra)
                    .map_err(|_| e)?
            }
            Err(e) => return Err(e),
        };
        Ok(Rendered {
            text,
            nonce,
            literals,
        })
    }

    fn render_raw(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
        extra: &Value,
    ) -> Result<String> {
        let Some(src) = &self.chat_template else {
            if let Some(f) = self.native {
                // the encoders have no switch for the generation prompt: a conversation ending
                // on a user turn always opens the assistant's
                let thinking = extra.get("thinking").and_then(|t| t.as_bool()) != Some(false);
                return f.render(messages, thinking, extra.get("tools"));
            }
            bail!("tokenizer_config.json has no chat_template");
        };
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> Result<String, minijinja::Error> {
                Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
            },
        );
        env.add_filter("tojson", tojson);
        env.add_template("chat", src)
            .context("chat_template does not parse")?;
        let mut ctx = serde_json::json!({
            "messages": messages,
            "add_generation_prompt": add_generation_prompt,
            "bos_token": self.bos_token.clone().unwrap_or_default(),
            "eos_token": self.eos_token.clone().unwrap_or_default(),
        });
        if let (Some(c), Some(e)) = (ctx.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                c.insert(k.clone(), v.clone());
            }
        }
        let tmpl = env.get_template("chat")?;
        tmpl.render(&ctx)
            .map_err(|e| anyhow!("chat_template failed: {e}"))
    }

    /// Rendered chat as token ids. The template writes BOS itself, so no special tokens are
    /// added on top (the double-BOS pitfall).
    pub fn encode_chat(&self, messages: &[Message], extra: &Value) -> Result<(String, Vec<u32>)> {
        let r = self.render_chat(messages, true, extra)?;
        let ids = self.encode_rendered(&r)?;
        Ok((r.plain().into_owned(), ids))
    }
}

/// transformers' `tojson`: `json.dumps(x, ensure_ascii=False, indent=.., separators=..,
/// sort_keys=..)`, so a template's tool list is the text the model was trained on.
fn tojson(
    value: minijinja::Value,
    kwargs: minijinja::value::Kwargs,
) -> Result<minijinja::Value, minijinja::Error> {
    let bad = |m: String| minijinja::Error::new(ErrorKind::InvalidOperation, m);
    let json = serde_json::to_value(&value).map_err(|e| bad(format!("tojson: {e}")))?;
    let indent = match kwargs.get::<Option<minijinja::Value>>("indent")? {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) => match (v.as_i64(), v.as_str()) {
            (Some(n), _) => Some(" ".repeat(n.max(0) as usize)),
            (_, Some(s)) => Some(s.to_string()),
            _ => {
                return Err(bad(format!(
                    "tojson: indent must be a number or a string, not {v}"
                )))
            }
        },
    };
    let mut o = crate::pyjson::Options::default().with_indent(indent);
    if let Some(a) = kwargs.get::<Option<bool>>("ensure_ascii")? {
        o.ensure_ascii = a;
    }
    if let Some(k) = kwargs.get::<Option<bool>>("sort_keys")? {
        o.sort_keys = k;
    }
    if let Some(seps) = kwargs.get::<Option<Vec<String>>>("separators")? {
        let [item, key] = <[String; 2]>::try_from(seps)
            .map_err(|_| bad("tojson: separators is a pair (item, key)".into()))?;
        (o.item_sep, o.key_sep) = (item, key);
    }
    kwargs.assert_all_used()?;
    Ok(minijinja::Value::from_safe_string(crate::pyjson::dumps(
        &json, &o,
    )))
}

fn guard_strings(v: &mut Value, guard: &mut impl FnMut(&str) -> String) {
    match v {
        Value::String(s) => *s = guard(s),
        Value::Array(a) => a.iter_mut().for_each(|x| guard_strings(x, guard)),
        Value::Object(o) => o.values_mut().for_each(|x| guard_strings(x, guard)),
        _ => {}
    }
}

/// Whether a rendered prompt ends inside an open `<think>` block (the R1 template primes one).
pub fn primes_reasoning(prompt: &str) -> bool {
    match (prompt.rfind("<think>"), prompt.rfind("</think>")) {
        (Some(open), Some(close)) => open > close,
        (Some(_), None) => true,
        _ => false,
    }
}
