#!/usr/bin/env python3
"""Tiny checkpoints of R1's dense distill architectures (qwen2, llama, qwen3) in the hub layout,
with reference outputs from transformers' own Qwen2/Llama/Qwen3 implementations in float32.

The DeepSeek cases' tool (shared/tools/make_fixtures.py, next to the repository) provides the
tokenizer, the shard writer and the reference runs; this adds the dense model types.

Needs: torch, transformers (5.23), safetensors, tokenizers, numpy.
Usage: make_dense_fixtures.py OUT_DIR [--seed N] [--cases a,b] [--shared DIR]
"""
import argparse
import json
import os
import sys

import torch
from safetensors.torch import save_file

CASES = {
    # R1-Distill-Qwen layout: q/k/v biases, no o_proj bias, grouped heads (4 query, 2 kv).
    "tiny-qwen2": dict(
        model_type="qwen2", vocab=384, hidden=64, inter=128, layers=3, heads=4, kv_heads=2,
        head_dim=None, bias=True, tie=False, rope_theta=10000.0, rope=None, dtype="bf16",
    ),
    # R1-Distill-Llama layout with llama3 rope scaling (original context 32, so the prompts
    # cross it), one kv head (multi-query), attention_bias on all four projections, tied head.
    "tiny-llama": dict(
        model_type="llama", vocab=384, hidden=64, inter=160, layers=2, heads=4, kv_heads=1,
        head_dim=None, bias=True, tie=True, rope_theta=500000.0,
        rope={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
              "original_max_position_embeddings": 32},
        dtype="f16",
    ),
    # R1-0528-Qwen3 layout: q/k RMSNorm per head, head_dim not hidden / heads, YaRN.
    "tiny-qwen3": dict(
        model_type="qwen3", vocab=384, hidden=48, inter=96, layers=3, heads=6, kv_heads=2,
        head_dim=24, bias=False, tie=False, rope_theta=1000000.0,
        rope={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32},
        dtype="f32",
    ),
}

ARCH = {"qwen2": "Qwen2ForCausalLM", "llama": "LlamaForCausalLM", "qwen3": "Qwen3ForCausalLM"}


def hub_config(c):
    cfg = {
        "architectures": [ARCH[c["model_type"]]], "model_type": c["model_type"],
        "attention_dropout": 0.0, "bos_token_id": 0, "eos_token_id": 1, "hidden_act": "silu",
        "hidden_size": c["hidden"], "intermediate_size": c["inter"], "initializer_range": 0.02,
        "max_position_embeddings": 256, "num_attention_heads": c["heads"],
        "num_hidden_layers": c["layers"], "num_key_value_heads": c["kv_heads"],
        "rms_norm_eps": 1e-6, "rope_theta": c["rope_theta"], "rope_scaling": c["rope"],
        "tie_word_embeddings": c["tie"], "use_cache": True, "vocab_size": c["vocab"],
        "torch_dtype": {"bf16": "bfloat16", "f16": "float16", "f32": "float32"}[c["dtype"]],
    }
    if c["head_dim"]:
        cfg["head_dim"] = c["head_dim"]
    if c["model_type"] == "qwen2":
        cfg.update(use_sliding_window=False, sliding_window=4096, max_window_layers=c["layers"])
    else:
        cfg["attention_bias"] = c["bias"]
    if c["model_type"] == "llama":
        cfg.update(mlp_bias=False, pretraining_tp=1)
    return cfg


def random_state(c, seed):
    g = torch.Generator().manual_seed(seed)
    H, V = c["hidden"], c["vocab"]
    dh = c["head_dim"] or H // c["heads"]
    q, kv = c["heads"] * dh, c["kv_heads"] * dh

    def rnd(*shape, s=0.25):
        return torch.randn(*shape, generator=g) * s

    def norm(n):
        return 1.0 + 0.3 * torch.randn(n, generator=g)

    # a tied head reads the embedding: at std 1 its logits reach ~35, where f32 rounding alone
    # passes the 1e-4 the parity tests hold logits to; 0.5 keeps them near the untied cases'
    sd = {"model.embed_tokens.weight": rnd(V, H, s=0.5 if c["tie"] else 1.0), "model.norm.weight": norm(H)}
    if not c["tie"]:
        sd["lm_head.weight"] = rnd(V, H)
    for i in range(c["layers"]):
        p = f"model.layers.{i}."
        sd[p + "input_layernorm.weight"] = norm(H)
        sd[p + "post_attention_layernorm.weight"] = norm(H)
        a = p + "self_attn."
        for name, rows in [("q_proj", q), ("k_proj", kv), ("v_proj", kv)]:
            sd[a + name + ".weight"] = rnd(rows, H)
            if c["bias"]:
                sd[a + name + ".bias"] = rnd(rows, s=0.5)
        sd[a + "o_proj.weight"] = rnd(H, q)
        if c["bias"] and c["model_type"] != "qwen2":
            sd[a + "o_proj.bias"] = rnd(H, s=0.5)
        if c["model_type"] == "qwen3":
            sd[a + "q_norm.weight"] = norm(dh)
            sd[a + "k_norm.weight"] = norm(dh)
        m = p + "mlp."
        sd[m + "gate_proj.weight"] = rnd(c["inter"], H)
        sd[m + "up_proj.weight"] = rnd(c["inter"], H)
        sd[m + "down_proj.weight"] = rnd(H, c["inter"])
    return sd


def store(c, sd):
    dtype = {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32}[c["dtype"]]
    disk = {k: w.to(dtype).contiguous() for k, w in sd.items()}
    return disk, {k: w.float() for k, w in disk.items()}


def hf_model(cfg, ref):
    from transformers import AutoConfig, AutoModelForCausalLM
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**cfg), dtype=torch.float32)
    missing, unexpected = model.load_state_dict(ref, strict=False)
    missing = [m for m in missing if "rotary" not in m and not (cfg["tie_word_embeddings"] and m == "lm_head.weight")]
    assert not missing and not unexpected, (missing, unexpected)
    if cfg["tie_word_embeddings"]:
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    model.eval()
    return model


def make_case(mf, root, name, seed):
    c = CASES[name]
    out = os.path.join(root, name)
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(seed)
    cfg = hub_config(c)
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    with open(os.path.join(out, "generation_config.json"), "w") as f:
        json.dump({"bos_token_id": 0, "eos_token_id": 1, "do_sample": True, "temperature": 0.6, "top_p": 0.95}, f, indent=2)
    tok = mf.make_tokenizer(c["vocab"])
    tok.save(os.path.join(out, "tokenizer.json"))
    with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
        json.dump({
            "add_bos_token": True, "add_eos_token": False, "bos_token": mf.BOS, "eos_token": mf.EOS,
            "pad_token": mf.PAD, "model_max_length": 256, "legacy": True,
            "tokenizer_class": "LlamaTokenizerFast", "chat_template": mf.CHAT_TEMPLATE,
        }, f, indent=2, ensure_ascii=False)
    disk, ref = store(c, random_state(c, seed))
    mf.write_shards(out, disk)
    model = hf_model(cfg, ref)
    tensors, meta = mf.references(c, model, tok, seed)
    save_file(tensors, os.path.join(out, "reference.safetensors"))
    meta.update({
        "case": name, "seed": seed, "source": "transformers %s, torch %s, float32 on CPU" % (
            __import__("transformers").__version__, torch.__version__),
        "storage_dtype": c["dtype"],
        "reference_weights": "the stored weights widened to float32",
        "tensors": "prompt_i: int64 token ids; logits_i: float32 [tokens, vocab] for the whole prompt; "
                   "greedy_i: int64, 12 tokens greedily generated after prompt_i (no EOS stop)",
    })
    with open(os.path.join(out, "reference.json"), "w") as f:
        json.dump(meta, f, indent=2, ensure_ascii=False)
    print(name, "ok", json.dumps(meta["prompts"]))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--seed", type=int, default=4321)
    ap.add_argument("--cases", default=",".join(CASES))
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--shared", default=os.path.join(here, "..", "..", "shared", "tools"))
    a = ap.parse_args()
    sys.path.insert(0, a.shared)
    import make_fixtures as mf
    for i, name in enumerate(a.cases.split(",")):
        make_case(mf, a.out, name, a.seed + 101 * i)


if __name__ == "__main__":
    sys.exit(main())
