"""The openai SDK's tool loop against `whale serve`: create -> tool_calls -> tool results ->
final answer, streamed and not, on a random-weight model whose tokenizer has DeepSeek's tool
markers and whose chat template is DeepSeek-R1's (testdata/templates). `tool_choice` forces the
first turn's call, so the random weights really emit one."""
import json
import os
import shutil
import subprocess

import openai
import pytest

from whale_server import ROOT, WHALE, start_server, stop_server

TEMPLATES = os.path.join(ROOT, "testdata", "templates")
TOOLS = [{
    "type": "function",
    "function": {
        "name": "multiply", "description": "a times b",
        "parameters": {"type": "object", "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 999},
                                                         "b": {"type": "integer", "minimum": 0, "maximum": 999}},
                       "required": ["a", "b"], "additionalProperties": False},
    },
}]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    d = tmp_path_factory.mktemp("tools")
    subprocess.run([WHALE, "synth", "--like", "v2-lite", "--layers", "1", "--experts", "4", "--vocab", "512",
                    "--hidden", "128", "--out", str(d)], check=True, capture_output=True)
    shutil.copy(os.path.join(TEMPLATES, "tokenizer.json"), d / "tokenizer.json")
    with open(os.path.join(TEMPLATES, "deepseek-r1.jinja"), encoding="utf-8") as f:
        template = f.read()
    (d / "tokenizer_config.json").write_text(json.dumps({
        "add_bos_token": True, "bos_token": "<｜begin▁of▁sentence｜>", "eos_token": "<｜end▁of▁sentence｜>",
        "tokenizer_class": "LlamaTokenizerFast", "chat_template": template}), encoding="utf-8")
    proc, base = start_server(str(d), "--cache-mem", "16MiB", "--served-model-name", "deepseek-reasoner")
    yield openai.OpenAI(base_url=base + "/v1", api_key="none", max_retries=0)
    stop_server(proc)


def run_tool(call):
    args = json.loads(call.function.arguments)
    return str(args["a"] * args["b"])


def collect_stream(stream):
    """The SDK user's accumulation of a streamed answer: content, calls by index, finish."""
    content, calls, finish = "", {}, None
    for chunk in stream:
        for ch in chunk.choices:
            d = ch.delta
            content += d.content or ""
            for tc in d.tool_calls or []:
                c = calls.setdefault(tc.index, {"id": None, "name": "", "arguments": ""})
                if tc.id:
                    c["id"] = tc.id
                if tc.function and tc.function.name:
                    c["name"] += tc.function.name
                if tc.function and tc.function.arguments:
                    c["arguments"] += tc.function.arguments
            finish = ch.finish_reason or finish
    return content, [calls[k] for k in sorted(calls)], finish


@pytest.mark.parametrize("stream", [False, True])
def test_tool_loop(server, stream):
    messages = [{"role": "user", "content": "What is 123 * 45? Use the tool."}]
    first = dict(model="deepseek-reasoner", messages=messages, tools=TOOLS, temperature=0, max_tokens=200,
                 tool_choice={"type": "function", "function": {"name": "multiply"}},
                 extra_body={"thinking": {"type": "disabled"}})
    if stream:
        content, calls, finish = collect_stream(server.chat.completions.create(stream=True, **first))
        assert finish == "tool_calls"
        assert len(calls) == 1 and calls[0]["name"] == "multiply" and calls[0]["id"].startswith("call_")
        json.loads(calls[0]["arguments"])
        assistant = {"role": "assistant", "content": content or None, "tool_calls": [
            {"id": c["id"], "type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}}
            for c in calls]}
        results = [{"role": "tool", "tool_call_id": c["id"], "content": str(
            json.loads(c["arguments"])["a"] * json.loads(c["arguments"])["b"])} for c in calls]
    else:
        r = server.chat.completions.create(**first)
        c = r.choices[0]
        assert c.finish_reason == "tool_calls"
        assert c.message.content is None
        (call,) = c.message.tool_calls
        assert call.type == "function" and call.function.name == "multiply"
        assistant = c.message.model_dump(exclude_none=True, exclude={"reasoning_content"})
        results = [{"role": "tool", "tool_call_id": call.id, "content": run_tool(call)}]
    messages += [assistant] + results
    final = dict(model="deepseek-reasoner", messages=messages, tools=TOOLS, temperature=0, max_tokens=16,
                 extra_body={"thinking": {"type": "disabled"}, "tool_choice": "none"})
    if stream:
        content, calls, finish = collect_stream(server.chat.completions.create(stream=True, **final))
        assert calls == [] and finish in ("stop", "length")
    else:
        r = server.chat.completions.create(**final)
        assert r.choices[0].message.tool_calls is None
        assert r.choices[0].finish_reason in ("stop", "length")
        # the tool's result is in the prompt the model answered
        assert r.usage.prompt_tokens > 0


def test_bad_tools_are_400s(server):
    with pytest.raises(openai.BadRequestError) as e:
        server.chat.completions.create(model="deepseek-reasoner", messages=[{"role": "user", "content": "hi"}],
                                       tools=[{"type": "function", "function": {"name": "f", "parameters": "x"}}])
    assert "parameters" in str(e.value)
