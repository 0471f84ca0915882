"""The official `openai` Python SDK against a real `whale serve` on a loopback port.

Run by .ci/run after the Rust suite (it builds target/release/whale)."""
import os

import openai
import pytest

from whale_server import ROOT, start_server as start, stop_server

MODEL = os.path.join(ROOT, "testdata", "fixtures", "tiny-v3")


def start_server(*extra):
    return start(MODEL, "--cache-mem", "16MiB", *extra)


@pytest.fixture(scope="module")
def server():
    proc, base = start_server("--api-key", "sk-test")
    yield base
    stop_server(proc)


def client(base, key="sk-test"):
    return openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0)


def test_models(server):
    models = client(server).models.list()
    assert [m.id for m in models.data] == ["tiny-v3"]


def test_chat_non_streaming_with_reasoning(server):
    r = client(server).chat.completions.create(
        model="tiny-v3", messages=[{"role": "user", "content": "What is 12 + 30?"}],
        max_tokens=12, temperature=0)
    c = r.choices[0]
    assert c.finish_reason in ("length", "stop")
    # DeepSeek's field rides along in the message
    assert hasattr(c.message, "reasoning_content") or "reasoning_content" in (c.message.model_extra or {})
    assert r.usage.completion_tokens <= 12
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_chat_streaming_equals_non_streaming(server):
    cl = client(server)
    msgs = [{"role": "user", "content": "Explain latent attention."}]
    whole = cl.chat.completions.create(model="tiny-v3", messages=msgs, max_tokens=16, temperature=0)
    reasoning, content, usage = "", "", None
    for chunk in cl.chat.completions.create(model="tiny-v3", messages=msgs, max_tokens=16, temperature=0,
                                             stream=True, stream_options={"include_usage": True}):
        if chunk.usage is not None:
            usage = chunk.usage
        for ch in chunk.choices:
            extra = ch.delta.model_extra or {}
            reasoning += extra.get("reasoning_content") or ""
            content += ch.delta.content or ""
    m = whole.choices[0].message
    want_reasoning = (m.model_extra or {}).get("reasoning_content") or ""
    # field by field, exactly: the stream is trimmed as the whole message is
    assert reasoning == want_reasoning
    assert content == (m.content or "")
    assert usage is not None and usage.completion_tokens == whole.usage.completion_tokens


def test_completions_streaming_and_not(server):
    ids = [0, 5, 7, 11]
    r = client(server).completions.create(model="tiny-v3", prompt=ids, max_tokens=8, temperature=0,
                                          extra_body={"ignore_eos": True})
    assert r.usage.completion_tokens == 8
    assert r.choices[0].finish_reason == "length"
    streamed = "".join(c.choices[0].text for c in client(server).completions.create(
        model="tiny-v3", prompt=ids, max_tokens=8, temperature=0, stream=True, extra_body={"ignore_eos": True}))
    assert streamed == r.choices[0].text


def test_errors_are_openai_errors(server):
    with pytest.raises(openai.AuthenticationError):
        client(server, key="wrong").models.list()
    with pytest.raises(openai.NotFoundError):
        client(server).chat.completions.create(model="gpt-17", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError) as e:
        client(server).chat.completions.create(model="tiny-v3", messages=[])
    assert e.value.body["param"] == "messages"
    with pytest.raises(openai.BadRequestError) as e:
        client(server).chat.completions.create(model="tiny-v3", messages=[{"role": "user", "content": "hi"}],
                                               max_tokens=10_000)
    assert e.value.body["code"] == "context_length_exceeded"


def test_n_samples_and_vote(server):
    r = client(server).chat.completions.create(
        model="tiny-v3", messages=[{"role": "user", "content": "What is 2 + 2?"}], max_tokens=6,
        temperature=0.8, seed=3, n=4, extra_body={"whale_vote": True})
    assert len(r.choices) == 4
    vote = r.model_extra["whale_vote"]
    assert sum(v["count"] for v in vote["votes"]) == 4


def test_context_cache_survives_a_restart(tmp_path):
    cache_dir = tmp_path / "ctx"
    system = "You are a careful assistant who explains latent attention in detail. " * 4

    def serve_once(question):
        proc, base = start_server("--context-cache-dir", str(cache_dir))
        r = client(base, key="none").chat.completions.create(
            model="tiny-v3", messages=[{"role": "system", "content": system}, {"role": "user", "content": question}],
            max_tokens=2, temperature=0)
        stop_server(proc)
        return r.usage.model_extra["prompt_cache_hit_tokens"]

    assert serve_once("What is a latent?") == 0
    assert (cache_dir / "prefix-cache.bin").exists()
    # a fresh process: the first request already finds the system prompt's blocks
    assert serve_once("What is a head?") > 32
