#!/usr/bin/env python3
"""Reference renderings of DeepSeek-V3.2's and V4's conversation formats, for whale's native
encoders (crates/engine/src/native_chat.rs, tests in crates/engine/tests/native_chat.rs).

Those releases ship their format as Python code instead of a chat template:
`encoding/encoding_dsv32.py` in deepseek-ai/DeepSeek-V3.2 and `encoding/encoding_dsv4.py` in
deepseek-ai/DeepSeek-V4-Flash. Point this at copies of those files (from the hub; never copied
into this repository); it renders every conversation below in both thinking modes and writes
testdata/encodings/{dsv32,dsv4}.json: the cases and the exact strings `encode_messages` returns.

    python3 tools/encoding_references.py --dsv32 PATH/encoding_dsv32.py --dsv4 PATH/encoding_dsv4.py
"""
import argparse
import importlib.util
import json
import os

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))

CASES = {
    "one-turn": [{"role": "user", "content": "What is 12 + 30?"}],
    "system": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "What is 12 + 30?"},
    ],
    "multi-turn": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "Hello! I am DeepSeek.", "reasoning_content": "thinking..."},
        {"role": "user", "content": "1+1=?"},
    ],
    "no-system-two-answers": [
        {"role": "user", "content": "Name a prime."},
        {"role": "assistant", "content": "7", "reasoning_content": "7 is prime."},
        {"role": "user", "content": "Another?"},
        {"role": "assistant", "content": "11"},
        {"role": "user", "content": "And one more, with <think> in it?"},
    ],
    "prefix-continuation": [
        {"role": "user", "content": "What is 2 + 2?"},
        {"role": "assistant", "content": "4", "reasoning_content": "2 plus 2 is 4."},
    ],
    "empty-system": [
        {"role": "system", "content": ""},
        {"role": "user", "content": "Hi"},
    ],
}


def load(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    m = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(m)
    return m


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dsv32", required=True)
    ap.add_argument("--dsv4", required=True)
    a = ap.parse_args()
    for tag, path in [("dsv32", a.dsv32), ("dsv4", a.dsv4)]:
        enc = load(path, tag)
        out = {"source": os.path.basename(path), "cases": []}
        for name, messages in CASES.items():
            for mode in ("thinking", "chat"):
                text = enc.encode_messages(json.loads(json.dumps(messages)), thinking_mode=mode)
                out["cases"].append({"name": name, "thinking_mode": mode, "messages": messages, "text": text})
        with open(os.path.join(ROOT, "testdata", "encodings", f"{tag}.json"), "w") as f:
            json.dump(out, f, indent=1, ensure_ascii=False)
        print(tag, len(out["cases"]), "cases")


if __name__ == "__main__":
    main()
