#!/usr/bin/env python3
"""GGUF files written by llama.cpp's own converter from whale's tiny fixtures, for whale's GGUF
loader tests (crates/model/tests/gguf.rs): testdata/gguf/<case>-<type>.gguf.

llama.cpp is the oracle of the GGUF layout (tensor names, llama's q/k row permutation, metadata
keys). Point this at a llama.cpp source tree (the one vendored in the `llama-cpp-python` sdist);
nothing of it is copied into this repository. Its converter wants a tokenizer it recognises and
no token id past `vocab_size`, so each fixture is copied with its tokenizer's added tokens (ids
past the vocabulary) dropped and its byte-level pre-tokenizer named as GPT-2's; the weights and
config are the fixture's. Optionally `llama-quantize` (from a build of the same tree) makes
further types from the F32 file.

Needs: torch, transformers, numpy, sentencepiece-free llama.cpp conversion deps.
Usage: make_gguf_references.py --llama-cpp DIR [--quantize PATH/llama-quantize]
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
# (case, fixture): tiny-llama-plain is tiny-llama without its llama3 rope scaling, which
# llama.cpp keeps as a tensor of its own (`rope_freqs`) that whale does not read yet
CASES = [("tiny-qwen2", "tiny-qwen2"), ("tiny-qwen3", "tiny-qwen3"), ("tiny-llama-plain", "tiny-llama")]
# (file type the converter writes, name)
OUTTYPES = [("f32", "F32"), ("q8_0", "Q8_0")]


def prepared(src, dst):
    shutil.copytree(src, dst)
    cfg = json.load(open(os.path.join(dst, "config.json")))
    if dst.endswith("-plain"):
        cfg.pop("rope_scaling")
        json.dump(cfg, open(os.path.join(dst, "config.json"), "w"), indent=2)
    tok_path = os.path.join(dst, "tokenizer.json")
    tok = json.load(open(tok_path))
    tok["added_tokens"] = [t for t in tok["added_tokens"] if t["id"] < cfg["vocab_size"]]
    json.dump(tok, open(tok_path, "w"), ensure_ascii=False)
    tc_path = os.path.join(dst, "tokenizer_config.json")
    tc = json.load(open(tc_path))
    tc.pop("added_tokens_decoder", None)
    # (transformers would add an unknown token of its own past the vocabulary)
    tc["unk_token"] = tc["pad_token"]
    json.dump(tc, open(tc_path, "w"), ensure_ascii=False)
    for f in ("reference.safetensors", "reference.json"):
        if os.path.exists(os.path.join(dst, f)):
            os.remove(os.path.join(dst, f))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--llama-cpp", required=True)
    ap.add_argument("--quantize")
    a = ap.parse_args()
    sys.path.insert(0, a.llama_cpp)
    sys.path.insert(0, os.path.join(a.llama_cpp, "gguf-py"))
    import conversion.base as base
    base.TextModel.get_vocab_base_pre = lambda self, tokenizer: "gpt-2"
    import convert_hf_to_gguf as conv
    out_dir = os.path.join(ROOT, "testdata", "gguf")
    os.makedirs(out_dir, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for case, fixture in CASES:
            src = os.path.join(tmp, case)
            prepared(os.path.join(ROOT, "testdata", "fixtures", fixture), src)
            for outtype, name in OUTTYPES:
                out = os.path.join(out_dir, f"{case}-{name}.gguf")
                sys.argv = ["convert_hf_to_gguf.py", src, "--outtype", outtype, "--outfile", out]
                conv.main()
                print(case, name, os.path.getsize(out), "bytes")


if __name__ == "__main__":
    main()
