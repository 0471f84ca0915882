"""Reference renderings of DeepSeek's chat templates by Hugging Face transformers, for whale's
template tests (crates/engine/tests/templates.rs).

Writes testdata/templates/references.json: for every template in testdata/templates/*.jinja and
every conversation of CASES, the text `apply_chat_template` renders and its token ids under
testdata/templates/tokenizer.json (or the error transformers raises).

    python3 -m venv /tmp/tv && /tmp/tv/bin/pip install transformers==5.23.0 jinja2
    /tmp/tv/bin/python tools/template_references.py
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
    {"name": "continue-final", "messages": [{"role": "user", "content": "Count to three."},
                                            {"role": "assistant", "content": "One, two,"}],
     "add_generation_prompt": False, "continue_final_message": True},
]


def render(tok, template, case, kwargs):
    msgs = copy.deepcopy(case["messages"])
    text = tok.apply_chat_template(
        msgs, tools=case.get("tools"), chat_template=template, tokenize=False,
        add_generation_prompt=case.get("add_generation_prompt", True),
        continue_final_message=case.get("continue_final_message", False), **kwargs)
    return {"text": text, "ids": tok(text, add_special_tokens=False)["input_ids"]}


def render_none_kept(tok, template, case, kwargs):
    """transformers' own renderer on the conversation as given: apply_chat_template drops keys
    whose value is None first, and DeepSeek's templates then fail on `content: None` (they test
    `message['content'] is none`)."""
    text, _ = render_jinja_template(
        conversations=[copy.deepcopy(case["messages"])], tools=case.get("tools"), chat_template=template,
        add_generation_prompt=case.get("add_generation_prompt", True),
        continue_final_message=case.get("continue_final_message", False), **{**tok.special_tokens_map, **kwargs})
    text = text[0]
    return {"text": text, "ids": tok(text, add_special_tokens=False)["input_ids"]}


def main():
    tok = PreTrainedTokenizerFast(tokenizer_file=os.path.join(DATA, "tokenizer.json"),
                                  bos_token="<｜begin▁of▁sentence｜>", eos_token="<｜end▁of▁sentence｜>")
    out = []
    for path in sorted(glob.glob(os.path.join(DATA, "*.jinja"))):
        name = os.path.basename(path)[:-len(".jinja")]
        with open(path, encoding="utf-8") as f:
            template = f.read()
        variants = [{}]
        if "thinking" in template:
            variants = [{"thinking": False}, {"thinking": True}]
        for case in CASES:
            for kwargs in variants:
                ref = {"template": name, "case": case["name"], "kwargs": kwargs}
                try:
                    ref.update(render(tok, template, case, kwargs))
                except Exception as e:  # recorded; the template's own rendering follows
                    ref["transformers_error"] = f"{type(e).__name__}: {e}"
                    try:
                        ref.update(render_none_kept(tok, template, case, kwargs))
                        ref["none_kept"] = True
                    except Exception as e2:  # the template itself cannot take None here
                        ref["none_kept_error"] = f"{type(e2).__name__}: {e2}"
                out.append(ref)
    with open(os.path.join(DATA, "references.json"), "w", encoding="utf-8") as f:
        json.dump({"transformers": transformers.__version__, "cases": CASES, "references": out}, f,
                  ensure_ascii=False, indent=1)
    for r in out:
        print(r["template"], r["case"], r["kwargs"], len(r.get("ids", [])),
              "(None kept)" if r.get("none_kept") else r.get("none_kept_error", ""))


if __name__ == "__main__":
    main()
