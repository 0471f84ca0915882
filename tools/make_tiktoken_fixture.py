#!/usr/bin/env python3
"""A tiktoken-tokenised tokenizer in Kimi-K2's released layout, with Python tiktoken's ids for
1,000 varied strings and transformers' renderings of its chat template — ground truth for
whale's tiktoken loader (crates/engine/tests/tiktoken.rs).

Layout written to OUT (default testdata/tiktoken/kimi-k2):
  tiktoken.model         base64(token bytes) and rank per line, like Kimi-K2's / Moonlight's
  tokenization_kimi.py   the tokenizer class transformers loads with trust_remote_code, with
                         Kimi's split pattern and 256 reserved special tokens
  tokenizer_config.json  added_tokens_decoder at Kimi-K2's offsets past the ranks, auto_map,
                         bos/eos/pad/unk, and the chat template (testdata/tiktoken/*.jinja)
  strings.json           [{"text", "ids"}]: tiktoken.Encoding(...).encode(text, allowed_special="all")
  chat.json              [{"name", "template", "messages", "tools", "text", "ids"}]

The ranks come from a byte-level BPE trained here on mixed text (a real rank file is 160K
tokens; the algorithm is the same at any size).

    /tmp/tv/bin/pip install transformers==5.23.0 jinja2 tiktoken tokenizers
    /tmp/tv/bin/python tools/make_tiktoken_fixture.py
"""
import base64
import glob
import json
import os
import random
import sys

import tiktoken
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
HERE = os.path.join(ROOT, "testdata", "tiktoken")

# Kimi's split pattern: Han runs, cased words with English contractions, up to 3 digits,
# punctuation runs, newlines, spaces (as tokenization_kimi.py defines it).
PATTERN_PARTS = [
    r"""[\p{Han}]+""",
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]*[\p{Ll}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]+[\p{Ll}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
    r"""\p{N}{1,3}""",
    r""" ?[^\s\p{L}\p{N}]+[\r\n]*""",
    r"""\s*[\r\n]+""",
    r"""\s+(?!\S)""",
    r"""\s+""",
]
RESERVED = 256

# Kimi-K2's named special tokens, by offset past the ranks (163584 there)
NAMED = {
    0: "[BOS]", 1: "[EOS]", 2: "<|im_end|>", 3: "<|im_user|>", 4: "<|im_assistant|>",
    6: "<|start_header_id|>", 7: "<|end_header_id|>", 9: "[EOT]", 10: "<|im_system|>",
    11: "<|tool_calls_section_begin|>", 12: "<|tool_calls_section_end|>", 13: "<|tool_call_begin|>",
    14: "<|tool_call_argument_begin|>", 15: "<|tool_call_end|>", 17: "<|im_middle|>",
    254: "[UNK]", 255: "[PAD]",
}

PY_CLASS = '''"""The tokenizer of a tiktoken checkpoint in Kimi-K2's layout (whale's test fixture)."""
import os

import tiktoken
from tiktoken.load import load_tiktoken_bpe
from transformers import PreTrainedTokenizer


class TikTokenTokenizer(PreTrainedTokenizer):
    vocab_files_names = {"vocab_file": "tiktoken.model"}
    model_input_names = ["input_ids", "attention_mask"]

    num_reserved_special_tokens = %(reserved)d

    pat_str = "|".join(
        [
%(parts)s
        ]
    )

    def __init__(self, vocab_file, bos_token="[BOS]", eos_token="[EOS]", unk_token=None,
                 pad_token=None, additional_special_tokens=None, added_tokens_decoder=None, **kwargs):
        names = {i: t.content for i, t in (added_tokens_decoder or {}).items()}
        ranks = load_tiktoken_bpe(vocab_file)
        n = len(ranks)
        self.special_tokens = {
            names.get(i, f"<|reserved_token_{i}|>"): i
            for i in range(n, n + self.num_reserved_special_tokens + 2)
        }
        self.model = tiktoken.Encoding(name=os.path.basename(vocab_file), pat_str=self.pat_str,
                                       mergeable_ranks=ranks, special_tokens=self.special_tokens)
        self.vocab_file = vocab_file
        self.decoder = {i: self.model.decode_single_token_bytes(i).decode("latin-1")
                        for i in range(self.model.n_vocab)}
        self.encoder = {v: k for k, v in self.decoder.items()}
        super().__init__(bos_token=bos_token, eos_token=eos_token, unk_token=unk_token,
                         pad_token=pad_token, additional_special_tokens=additional_special_tokens,
                         added_tokens_decoder=added_tokens_decoder, **kwargs)

    @property
    def vocab_size(self):
        return self.model.n_vocab

    def get_vocab(self):
        return dict(self.encoder)

    def _tokenize(self, text, **kwargs):
        return [self.decoder[t] for t in self.model.encode(text, allowed_special="all")]

    def _convert_token_to_id(self, token):
        return self.encoder.get(token, self.special_tokens.get(token))

    def _convert_id_to_token(self, index):
        return self.decoder.get(index)

    def convert_tokens_to_string(self, tokens):
        return b"".join(t.encode("latin-1") for t in tokens).decode("utf-8", "replace")

    def save_vocabulary(self, save_directory, filename_prefix=None):
        return (self.vocab_file,)
'''


def corpus(rng):
    words = ("the model reads every token once and the cache keeps what attention needs; "
             "DeepSeek Kimi Moonlight tokenizer ranks merges bytes pattern split whitespace "
             "don't it's we're they've I'm you'll he'd HELLO World CamelCase snake_case").split()
    han = "的一是不了人我在有他这中大来上国个到说们为子和你地出道也时年得就那要下以生会自着去之过家学对可她里后小么心多天而能好都然没日于起还发成事只作当想看文无开手十用主行方又如前所本见经头面公同三已老从动两长"
    code = ["fn main() {\n    println!(\"{}\", 42);\n}\n", "def f(x):\n    return x ** 2  # square\n",
            "for (int i = 0; i < n; ++i) { a[i] += b[i]; }", "SELECT * FROM t WHERE id = 7;",
            "<div class=\"x\">&nbsp;</div>", "let v: Vec<u32> = (0..10).collect();"]
    out = []
    for _ in range(3000):
        k = rng.random()
        if k < 0.4:
            out.append(" ".join(rng.choice(words) for _ in range(rng.randint(3, 20))))
        elif k < 0.6:
            out.append("".join(rng.choice(han) for _ in range(rng.randint(2, 30))))
        elif k < 0.8:
            out.append(rng.choice(code))
        else:
            out.append(str(rng.randint(0, 10 ** 12)) + " " + "🐋🙂👍🏽" * rng.randint(1, 3))
    return out


def train_ranks(rng, size):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(corpus(rng), trainer)
    model = json.loads(tok.to_str())["model"]
    byte_dec = {v: k for k, v in bytes_to_unicode().items()}
    ranks = {bytes([b]): b for b in range(256)}
    for m in model["merges"]:
        a, b = m if isinstance(m, list) else m.split(" ")
        t = bytes(byte_dec[c] for c in a + b)
        if t not in ranks:
            ranks[t] = len(ranks)
    return ranks


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def test_strings(rng, specials):
    pools = {
        "ascii": ["Hello, world!", "  leading and trailing  ", "tabs\tand\nnewlines\r\n", "DON'T STOP; it's FINE",
                  "we're here, they'll go, I'd say", "e-mail: a.b@c.org", "x" * 200, "\n\n\n", "   ", "a  b   c"],
        "cjk": ["你好，世界！", "深度求索的模型", "月之暗面 Kimi 模型", "日本語のテキストです。", "한국어 문장입니다.", "混合English和中文",
                "数字123和456", "「引号」《书名》"],
        "emoji": ["🐋", "👨‍👩‍👧‍👦", "👍🏽👍🏿", "🇫🇷🇯🇵", "❤️‍🔥", "🙂🙃😉", "⌚️⏰"],
        "code": ["fn main() {\n    println!(\"{}\", 42);\n}", "if x == 3:\n\treturn [i**2 for i in y]",
                 "#include <stdio.h>\nint main(){return 0;}", "{\"a\": [1, 2.5e-3, null, true]}", "a->b && c || !d",
                 "    indented\n        more\n"],
        "numbers": ["1234567890", "3.14159265358979", "1,000,000", "0x7fffffff", "2026-12-03T20:01:53Z"],
        "marks": ["café naïve résumé", "e\u0301 a\u0300", "Ω≈ç√∫˜µ≤≥÷", "ℌ𝔢𝔩𝔩𝔬", "\u200b\u200d\ufeff", "İstanbul ß ǅ"],
    }
    cats = list(pools)
    out = []
    for i in range(1000):
        parts = []
        for _ in range(rng.randint(1, 4)):
            r = rng.random()
            if r < 0.12:
                parts.append(rng.choice(specials))
            elif r < 0.2:
                # random code points from several planes (no surrogates)
                cp = lambda: rng.choice([rng.randint(0x20, 0x7e), rng.randint(0xa0, 0x2fff),
                                         rng.randint(0x3000, 0x9fff), rng.randint(0xac00, 0xd7a3),
                                         rng.randint(0xe000, 0xffff), rng.randint(0x10000, 0x1faff)])
                parts.append("".join(chr(cp()) for _ in range(rng.randint(1, 12))))
            else:
                parts.append(rng.choice(pools[cats[i % len(cats)] if rng.random() < 0.5 else rng.choice(cats)]))
        sep = rng.choice(["", " ", "\n", "  ", "\t"])
        out.append(sep.join(parts))
    return out


CHAT_CASES = [
    {"name": "user", "messages": [{"role": "user", "content": "What is 2 + 3?"}]},
    {"name": "system-user", "messages": [{"role": "system", "content": "You are terse."},
                                         {"role": "user", "content": "Hi! 你好 🐋"}]},
    {"name": "multi-turn", "messages": [{"role": "user", "content": "2 + 2?"}, {"role": "assistant", "content": "4"},
                                        {"role": "user", "content": "And 3 + 3?"}]},
    {"name": "tools-offered", "tools": [{"type": "function", "function": {"name": "get_weather",
     "description": "The weather in a city <now> & \"later\" — 天气", "parameters": {"type": "object",
     "required": ["city"], "properties": {"city": {"type": "string", "description": "City name"},
     "days": {"type": "integer", "minimum": 1, "maximum": 7.5, "default": 1e-05}}}}}],
     "messages": [{"role": "user", "content": "Weather in Paris?"}]},
    {"name": "call-and-result", "tools": [{"type": "function", "function": {"name": "get_weather",
     "description": "The weather in a city", "parameters": {"type": "object", "required": ["city"],
     "properties": {"city": {"type": "string"}}}}}],
     "messages": [{"role": "user", "content": "Weather in Paris?"},
                  {"role": "assistant", "content": "", "tool_calls": [{"id": "functions.get_weather:0", "type": "function",
                   "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}},
                   {"id": "functions.get_weather:1", "type": "function",
                    "function": {"name": "get_weather", "arguments": {"zeta": 1, "alpha": [2.5, None, True]}}}]},
                  {"role": "tool", "tool_call_id": "functions.get_weather:0", "name": "get_weather", "content": "18C, clear"}]},
    {"name": "no-generation-prompt", "add_generation_prompt": False,
     "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]},
]


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "kimi-k2")
    os.makedirs(out, exist_ok=True)
    rng = random.Random(20261203)
    ranks = train_ranks(rng, 2048)
    with open(os.path.join(out, "tiktoken.model"), "w") as f:
        for t, r in sorted(ranks.items(), key=lambda x: x[1]):
            f.write(base64.b64encode(t).decode() + " " + str(r) + "\n")
    n = len(ranks)
    templates = sorted(glob.glob(os.path.join(HERE, "*.jinja")))
    added = {str(n + k): {"content": c, "lstrip": False, "normalized": False, "rstrip": False,
                          "single_word": False, "special": True} for k, c in NAMED.items()}
    parts = "\n".join(f'            r"""{p}""",' for p in PATTERN_PARTS)
    with open(os.path.join(out, "tokenization_kimi.py"), "w") as f:
        f.write(PY_CLASS % {"reserved": RESERVED, "parts": parts})
    cfg = {
        "added_tokens_decoder": added,
        "additional_special_tokens": ["<|im_end|>", "<|im_user|>", "<|im_assistant|>", "<|start_header_id|>",
                                      "<|end_header_id|>", "[EOT]", "<|im_system|>", "<|im_middle|>"],
        "auto_map": {"AutoTokenizer": ["tokenization_kimi.TikTokenTokenizer", None]},
        "bos_token": "[BOS]", "clean_up_tokenization_spaces": False, "eos_token": "[EOS]",
        "extra_special_tokens": {}, "model_max_length": 1000000000000000019884624838656,
        "pad_token": "[PAD]", "tokenizer_class": "TikTokenTokenizer", "unk_token": "[UNK]",
    }
    if templates:
        with open(templates[0]) as f:
            cfg["chat_template"] = f.read()
    with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
        json.dump(cfg, f, indent=2, ensure_ascii=False)

    specials = {NAMED.get(i - n, f"<|reserved_token_{i}|>"): i for i in range(n, n + RESERVED + 2)}
    enc = tiktoken.Encoding(name="fixture", pat_str="|".join(PATTERN_PARTS), mergeable_ranks=ranks,
                            special_tokens=specials)
    strings = test_strings(rng, list(NAMED.values()) + [f"<|reserved_token_{n + 5}|>"])
    with open(os.path.join(out, "strings.json"), "w") as f:
        json.dump([{"text": s, "ids": enc.encode(s, allowed_special="all")} for s in strings], f,
                  ensure_ascii=False, indent=0)

    import transformers
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(out, trust_remote_code=True)
    chats = []
    for path in templates:
        with open(path) as f:
            template = f.read()
        for case in CHAT_CASES:
            gen = case.get("add_generation_prompt", True)
            kw = dict(tools=case.get("tools"), add_generation_prompt=gen, chat_template=template)
            text = tok.apply_chat_template(case["messages"], tokenize=False, **kw)
            ids = tok.apply_chat_template(case["messages"], tokenize=True, **kw)
            if not isinstance(ids, list):
                ids = ids["input_ids"]
            assert ids == enc.encode(text, allowed_special="all"), case["name"]
            chats.append({"name": case["name"], "template": os.path.basename(path), "messages": case["messages"],
                          "tools": case.get("tools"), "add_generation_prompt": gen, "text": text, "ids": list(map(int, ids))})
    with open(os.path.join(out, "chat.json"), "w") as f:
        json.dump({"source": f"transformers {transformers.__version__}, tiktoken {tiktoken.__version__}",
                   "cases": chats}, f, ensure_ascii=False, indent=1)
    print(f"{n} ranks, {len(strings)} strings, {len(chats)} chat renderings -> {out}")


if __name__ == "__main__":
    main()
