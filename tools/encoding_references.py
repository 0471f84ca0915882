#!/usr/bin/env python3
"""Reference renderings of DeepSeek-V3.2's and V4's conversation formats, for whale's native
encoders (crates/engine/src/native_chat.rs, tests in crates/engine/tests/native_chat.rs).

Those releases ship their format as Python code instead of a chat template:
`encoding/encoding_dsv32.py` in deepseek-ai/DeepSeek-V3.2 and `encoding/encoding_dsv4.py` in
deepseek-ai/DeepSeek-V4-Flash. Point this at copies of those files (from the hub; never copied
into this repository); it renders every conversation below (with and without tools) in both thinking modes and writes
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

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather of a city (\"now\"), in °C by default.",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]}},
        "required": ["city"]}}}
ADD = {"type": "function", "function": {
    "name": "add", "description": "a + b",
    "parameters": {"type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
                   "required": ["a", "b"]}}}


def call(id_, name, args):
    return {"id": id_, "type": "function", "function": {"name": name, "arguments": json.dumps(args, ensure_ascii=False)}}


# conversations with tools: (messages, the request's `tools`)
TOOL_CASES = {
    "tools-offered": ([
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "What's the weather in Paris?"},
    ], [WEATHER, ADD]),
    "call-and-result": ([
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "", "reasoning_content": "I should look it up.",
         "tool_calls": [call("call_0", "get_weather", {"city": "Paris"})]},
        {"role": "tool", "tool_call_id": "call_0", "content": "{\"temp\": 21}"},
    ], [WEATHER]),
    "parallel-results-out-of-order": ([
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Add 1 and 2, and check Oslo."},
        {"role": "assistant", "content": "Doing both.", "reasoning_content": "Two calls.",
         "tool_calls": [call("call_a", "add", {"a": 1, "b": 2}), call("call_b", "get_weather", {"city": "Oslo", "unit": "c"})]},
        {"role": "tool", "tool_call_id": "call_b", "content": "-3"},
        {"role": "tool", "tool_call_id": "call_a", "content": "3"},
        {"role": "assistant", "content": "3, and -3 °C in Oslo.", "reasoning_content": "Done."},
        {"role": "user", "content": "Thanks! And 2 + 2?"},
    ], [WEATHER, ADD]),
    "argument-types": ([
        {"role": "user", "content": "Try the types."},
        {"role": "assistant", "content": None, "reasoning_content": "",
         "tool_calls": [call("c1", "add", {"a": 1.5, "b": -2, "note": "say \"hi\" <b>", "flags": [True, None], "opts": {"x": "東京"}})]},
        {"role": "tool", "tool_call_id": "c1", "content": "ok"},
        {"role": "user", "content": "And now?"},
    ], [ADD]),
    "result-then-user-text": ([
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": "", "reasoning_content": "Call it.",
         "tool_calls": [call("w", "get_weather", {"city": "Rome"})]},
        {"role": "tool", "tool_call_id": "w", "content": "sunny"},
        {"role": "user", "content": "Also, is that warm?"},
    ], [WEATHER]),
    # a repeated call id ranks by its last call (V4 sorts results by a dict of ids); an empty id
    # falls back to the function's
    "repeated-and-empty-ids": ([
        {"role": "user", "content": "Three lookups."},
        {"role": "assistant", "content": "", "reasoning_content": "Go.",
         "tool_calls": [call("a", "add", {"a": 1, "b": 1}), call("b", "add", {"a": 2, "b": 2}),
                        call("a", "add", {"a": 3, "b": 3}),
                        {"id": "", "type": "function", "function": {"id": "c", "name": "add", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c", "content": "R0"},
        {"role": "tool", "tool_call_id": "a", "content": "R1"},
        {"role": "tool", "tool_call_id": "b", "content": "R2"},
    ], [ADD]),
    "history-without-tools": ([
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": "", "reasoning_content": "Call it.",
         "tool_calls": [call("w", "get_weather", {"city": "Rome"})]},
        {"role": "tool", "tool_call_id": "w", "content": "sunny"},
        {"role": "assistant", "content": "Sunny in Rome.", "reasoning_content": "Answer."},
        {"role": "user", "content": "Thanks."},
    ], None),
}


def with_tools(messages, tools):
    """The request's tools on the conversation's first message where it is a system message
    (as DeepSeek's own V3.2 test conversation carries them), else on an empty system message put
    first (as vLLM hands them to these encoders); whale does the same."""
    if not tools:
        return messages
    if messages and messages[0]["role"] == "system":
        return [dict(messages[0], tools=tools)] + messages[1:]
    return [{"role": "system", "tools": tools}] + messages


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
        for name, (messages, tools) in TOOL_CASES.items():
            for mode in ("thinking", "chat"):
                text = enc.encode_messages(json.loads(json.dumps(with_tools(messages, tools))), thinking_mode=mode)
                out["cases"].append({"name": name, "thinking_mode": mode, "messages": messages, "tools": tools, "text": text})
        with open(os.path.join(ROOT, "testdata", "encodings", f"{tag}.json"), "w") as f:
            json.dump(out, f, indent=1, ensure_ascii=False)
        print(tag, len(out["cases"]), "cases")


if __name__ == "__main__":
    main()
