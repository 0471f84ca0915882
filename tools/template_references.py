"""Reference renderings of DeepSeek's chat templates by Hugging Face transformers, for whale's
template tests (crates/engine/tests/templates.rs).

Writes testdata/templates/cases.json (the conversations) and testdata/templates/references.json:
for every template in testdata/templates/*.jinja and every case, the text `apply_chat_template`
renders and its token ids under testdata/templates/tokenizer.json, or the error transformers
raises. A case with an assistant turn of `content: None` and `tool_calls` also gets a twin,
`<case>/empty-content`, with content "" (what the templates' tool-call branch is written for).

    python3 -m venv /tmp/tvenv && /tmp/tvenv/bin/pip install transformers==5.23.0 jinja2
    /tmp/tvenv/bin/python tools/template_references.py
"""
import copy
import glob
import json
import os

import transformers
from transformers import PreTrainedTokenizerFast
from transformers.utils.chat_template_utils import render_jinja_template

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
DATA = os.path.join(ROOT, "testdata", "templates")

TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "The weather in a city",
     "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
    {"type": "function", "function": {"name": "add", "description": "a + b",
     "parameters": {"type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}}, "required": ["a", "b"]}}},
]


def call(i, name, args):
    return {"id": f"call_{i}", "type": "function", "function": {"name": name, "arguments": json.dumps(args)}}


USER = {"role": "user", "content": "What is the weather in Paris, and 2 + 3?"}
CALLS = [call(0, "get_weather", {"city": "Paris"}), call(1, "add", {"a": 2, "b": 3})]

CASES = [
    {"name": "system-user", "messages": [{"role": "system", "content": "You are terse."},
                                         {"role": "user", "content": "Hi!"}]},
    {"name": "two-systems", "messages": [{"role": "system", "content": "One."}, {"role": "system", "content": "Two."},
                                         {"role": "user", "content": "Hi!"}]},
    {"name": "multi-turn-with-reasoning", "messages": [
        {"role": "user", "content": "2 + 2?"},
        {"role": "assistant", "content": "<think>\nTwo and two.\n</think>\n\n4"},
        {"role": "user", "content": "And 3 + 3?"}]},
    {"name": "empty-system-unicode", "messages": [{"role": "system", "content": ""},
                                                  {"role": "user", "content": "Grüße, 世界 🐋 — ∑ x²"}]},
    {"name": "developer", "messages": [{"role": "developer", "content": "Answer in French."},
                                       {"role": "user", "content": "Hello"}]},
    {"name": "tools-offered", "messages": [USER], "tools": TOOLS},
    {"name": "pending-call", "messages": [USER, {"role": "assistant", "content": None, "tool_calls": CALLS[:1]}],
     "tools": TOOLS, "add_generation_prompt": False},
    {"name": "parallel-calls-answered", "messages": [
        USER, {"role": "assistant", "content": None, "tool_calls": CALLS},
        {"role": "tool", "tool_call_id": "call_0", "content": "{\"temp\": 18}"},
        {"role": "tool", "tool_call_id": "call_1", "content": "5"}], "tools": TOOLS},
    {"name": "text-and-call-then-answer-and-new-turn", "messages": [
        USER, {"role": "assistant", "content": "Let me look.", "tool_calls": CALLS[:1]},
        {"role": "tool", "tool_call_id": "call_0", "content": "sunny"},
        {"role": "assistant", "content": "It is sunny in Paris."},
        {"role": "user", "content": "Thanks. And Rome?"}], "tools": TOOLS},
    {"name": "two-tool-results-then-answer", "messages": [
        USER, {"role": "assistant", "content": "", "tool_calls": CALLS},
        {"role": "tool", "tool_call_id": "call_0", "content": "{\"temp\": 18, \"sky\": \"clear\"}"},
        {"role": "tool", "tool_call_id": "call_1", "content": "5"},
        {"role": "assistant", "content": "<think>\nBoth arrived.\n</think>\n\n18 °C and clear; 2 + 3 = 5."},
        {"role": "user", "content": "Merci !"}], "tools": TOOLS},
    {"name": "system-tools-developer-unicode", "messages": [
        {"role": "system", "content": "Système : réponds brièvement."},
        {"role": "developer", "content": "Use tools when they help."}, USER], "tools": TOOLS},
    {"name": "continue-final", "messages": [{"role": "user", "content": "Count to three."},
                                            {"role": "assistant", "content": "One, two,"}],
     "add_generation_prompt": False, "continue_final_message": True},
]


def empty_content_twins(cases):
    """`<case>/empty-content` for every case with an assistant turn of content None and calls."""
    out = []
    for case in cases:
        out.append(case)
        if any(m.get("role") == "assistant" and m.get("content") is None and m.get("tool_calls")
               for m in case["messages"]):
            twin = copy.deepcopy(case)
            twin["name"] = case["name"] + "/empty-content"
            for m in twin["messages"]:
                if m.get("role") == "assistant" and m.get("content") is None and m.get("tool_calls"):
                    m["content"] = ""
            out.append(twin)
    return out


def normalized(case):
    return {"name": case["name"], "messages": case["messages"], "tools": case.get("tools"),
            "add_generation_prompt": case.get("add_generation_prompt", True),
            **({"continue_final_message": True} if case.get("continue_final_message") else {}),
            **({"kwargs": case["kwargs"]} if case.get("kwargs") else {})}


def render(tok, template, case, kwargs):
    text = tok.apply_chat_template(
        copy.deepcopy(case["messages"]), tools=case.get("tools"), chat_template=template, tokenize=False,
        add_generation_prompt=case["add_generation_prompt"],
        continue_final_message=case.get("continue_final_message", False), **kwargs)
    return {"text": text, "ids": tok(text, add_special_tokens=False)["input_ids"]}


def render_none_kept(tok, template, case, kwargs):
    """transformers' own jinja renderer on the conversation exactly as given (apply_chat_template
    drops None-valued keys first, so `message['content'] is none` can never hold there)."""
    text, _ = render_jinja_template(
        conversations=[copy.deepcopy(case["messages"])], tools=case.get("tools"), chat_template=template,
        add_generation_prompt=case["add_generation_prompt"],
        continue_final_message=case.get("continue_final_message", False), **{**tok.special_tokens_map, **kwargs})
    return {"text": text[0], "ids": tok(text[0], add_special_tokens=False)["input_ids"]}


def main():
    tok = PreTrainedTokenizerFast(tokenizer_file=os.path.join(DATA, "tokenizer.json"),
                                  bos_token="<｜begin▁of▁sentence｜>", eos_token="<｜end▁of▁sentence｜>")
    cases = [normalized(c) for c in empty_content_twins(CASES)]
    out = []
    for path in sorted(glob.glob(os.path.join(DATA, "*.jinja"))):
        name = os.path.basename(path)[:-len(".jinja")]
        with open(path, encoding="utf-8", newline="") as f:
            template = f.read()
        # V3.1 reads `thinking` (default false): render it both ways
        variants = [{"thinking": False}, {"thinking": True}] if "thinking" in template else [{}]
        for case in cases:
            for kwargs in variants:
                kwargs = {**kwargs, **case.get("kwargs", {})}
                ref = {"template": name, "case": case["name"], "kwargs": kwargs}
                try:
                    ref.update(render(tok, template, case, kwargs))
                    # the templates write bos_token themselves; the text must start with it once
                    assert ref["ids"][:1] == [tok.bos_token_id] and ref["ids"][1:2] != [tok.bos_token_id]
                except Exception as e:  # recorded, with the template's own rendering of None
                    ref["error"] = f"{type(e).__name__}: {e}"
                    try:
                        ref["none_kept"] = render_none_kept(tok, template, case, kwargs)
                    except Exception as e2:
                        ref["none_kept"] = {"error": f"{type(e2).__name__}: {e2}"}
                out.append(ref)
    with open(os.path.join(DATA, "cases.json"), "w", encoding="utf-8") as f:
        json.dump(cases, f, ensure_ascii=False, indent=1)
        f.write("\n")
    with open(os.path.join(DATA, "references.json"), "w", encoding="utf-8") as f:
        json.dump({"transformers": transformers.__version__, "cases": cases, "references": out}, f,
                  ensure_ascii=False, indent=1)
        f.write("\n")
    for r in out:
        status = ("ERROR " + r["error"][:70] + (" | none_kept " + ("ok" if "text" in r["none_kept"] else r["none_kept"]["error"][:60])))\
            if "error" in r else f"{len(r['ids'])} ids"
        print(f"{r['template']:18} {r['case']:42} {json.dumps(r['kwargs']):20} {status}")


if __name__ == "__main__":
    main()
