#!/usr/bin/env python3
"""Tiny DeepSeek-V3.2 checkpoints (MLA + DeepSeek Sparse Attention) in the released hub layout,
with reference outputs from transformers' own `deepseek_v32` implementation in float32.

The DeepSeek cases' tool (shared/tools/make_fixtures.py, next to the repository) provides the
tokenizer, the V3 weights, the shard writer and the reference runs; this adds the lightning
indexer (`self_attn.indexer.{wq_b,wk,k_norm,weights_proj}`) and checks that every top-k choice
the indexer made while the references were computed had a clear gap at its boundary, so that a
correct float32 re-implementation must choose the same tokens (a seed that leaves a near-tie is
replaced by the next one).

Needs: torch, transformers (5.23), safetensors, tokenizers, numpy.
Usage: make_v32_fixtures.py OUT_DIR [--seed N] [--cases a,b] [--shared DIR]
"""
import argparse
import json
import os
import sys

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

CASES = {
    # index_topk 8 is below every prompt but the two-token one, so most queries attend to a
    # chosen subset; YaRN with the original context at 64 (prompt 1 crosses it); an MTP layer
    # on disk (with its own indexer) that the main model must skip; bf16 storage.
    "tiny-v32": dict(
        model_type="deepseek_v32", vocab=384, hidden=64, inter=160, moe_inter=32, layers=3,
        dense=1, experts=16, shared=1, topk=4, n_group=4, topk_group=2, topk_method="noaux_tc",
        scoring="sigmoid", norm_topk=True, scale=2.5, heads=4, q_lora=48, kv_lora=32,
        nope=16, rope=8, v=16, yarn=4.0, orig_ctx=64, max_pos=256, dtype="bf16", mtp=1,
        index_heads=8, index_dim=16, index_topk=8,
    ),
    # The released storage: float8_e4m3fn weights with a weight_scale_inv per 128x128 block
    # (indexer's wq_b and wk included; weights_proj stays bf16 as released), partial blocks.
    "tiny-v32-fp8": dict(
        model_type="deepseek_v32", vocab=384, hidden=320, inter=448, moe_inter=160, layers=2,
        dense=1, experts=8, shared=1, topk=2, n_group=2, topk_group=1, topk_method="noaux_tc",
        scoring="sigmoid", norm_topk=True, scale=2.5, heads=4, q_lora=192, kv_lora=144,
        nope=32, rope=16, v=32, yarn=4.0, orig_ctx=64, max_pos=256, dtype="fp8", mtp=0,
        index_heads=8, index_dim=48, index_topk=12,
    ),
    # other shapes: 2 heads, an indexer of 6 heads over a 24-wide query latent, top 5, no YaRN,
    # 2 groups keeping 1, f32 storage, no MTP layer
    "tiny-v32-b": dict(
        model_type="deepseek_v32", vocab=384, hidden=48, inter=96, moe_inter=24, layers=2,
        dense=1, experts=8, shared=1, topk=2, n_group=2, topk_group=1, topk_method="noaux_tc",
        scoring="sigmoid", norm_topk=True, scale=1.5, heads=2, q_lora=24, kv_lora=16,
        nope=8, rope=8, v=8, yarn=None, orig_ctx=None, max_pos=256, dtype="f32", mtp=0,
        index_heads=6, index_dim=16, index_topk=5,
    ),
}

# Smallest gap allowed between the k-th and the (k+1)-th index score of a query.
MIN_GAP = 1e-3


def hub_config(mf, c):
    cfg = mf.hub_config(c)
    cfg["architectures"] = ["DeepseekV32ForCausalLM"]
    cfg.update(index_n_heads=c["index_heads"], index_head_dim=c["index_dim"], index_topk=c["index_topk"])
    return cfg


def random_state(mf, c, seed):
    sd = mf.random_state(c, seed)
    g = torch.Generator().manual_seed(seed + 7)
    H, D, n = c["hidden"], c["index_dim"], c["index_heads"]
    std = 0.25 if H <= 64 else 0.12
    for i in range(c["layers"] + c["mtp"]):
        p = f"model.layers.{i}.self_attn.indexer."
        sd[p + "wq_b.weight"] = torch.randn(n * D, c["q_lora"], generator=g) * std
        sd[p + "wk.weight"] = torch.randn(D, H, generator=g) * std
        sd[p + "k_norm.weight"] = 1.0 + 0.3 * torch.randn(D, generator=g)
        sd[p + "k_norm.bias"] = 0.3 * torch.randn(D, generator=g)
        sd[p + "weights_proj.weight"] = torch.randn(n, H, generator=g) * std
        if i >= c["dense"]:  # the V3 tool adds the router's bias for deepseek_v3 only
            sd[f"model.layers.{i}.mlp.gate.e_score_correction_bias"] = 0.2 * torch.randn(c["experts"], generator=g)
    return sd


def store(mf, c, sd):
    """As the V3 cases, but `weights_proj` is never FP8 (the release keeps it in bf16)."""
    keep = {k: v for k, v in sd.items() if k.endswith("weights_proj.weight")}
    disk, ref = mf.store(c, {k: v for k, v in sd.items() if k not in keep})
    for k, w in keep.items():
        b = w.to(torch.bfloat16 if c["dtype"] != "f32" else torch.float32).contiguous()
        disk[k], ref[k] = b, b.float()
    return disk, ref


class Gaps:
    """Replaces the indexer's forward with the same computation that also records, for every
    query that chose among more than index_topk tokens, the gap at the top-k boundary."""

    def __init__(self):
        self.smallest = float("inf")
        self.choices = 0

    def install(self):
        from transformers.models.deepseek_v32 import modeling_deepseek_v32 as m
        gaps = self

        def forward(self, hidden_states, q_resid, position_embeddings, attention_mask, position_ids, past_key_values=None):
            b, s, _ = hidden_states.shape
            cos, sin = position_embeddings
            q = self.wq_b(q_resid).view(b, s, self.n_heads, self.head_dim)
            q_rot, q_pass = torch.split(q, [self.qk_rope_head_dim, self.head_dim - self.qk_rope_head_dim], dim=-1)
            k = self.k_norm(self.wk(hidden_states)).unsqueeze(2)
            k_rot, k_pass = torch.split(k, [self.qk_rope_head_dim, self.head_dim - self.qk_rope_head_dim], dim=-1)
            q_rot, k_rot = m.apply_rotary_pos_emb(q_rot, k_rot, cos, sin, unsqueeze_dim=2)
            q = torch.cat([q_rot, q_pass], dim=-1)
            k = torch.cat([k_rot, k_pass], dim=-1).squeeze(2)
            if past_key_values is not None:
                k = past_key_values.update_indexer(k, self.layer_idx)
            scores = F.relu(torch.matmul(q.float(), k.transpose(-1, -2).float().unsqueeze(1)) * self.softmax_scale)
            weights = self.weights_proj(hidden_states.to(self.weights_proj.weight.dtype)).float() * (self.n_heads ** -0.5)
            index_scores = torch.matmul(weights.unsqueeze(-2), scores).squeeze(-2)
            if attention_mask.dtype == torch.bool:
                index_scores = index_scores.masked_fill(~attention_mask, float("-inf"))
            else:
                index_scores = index_scores + attention_mask
            topk = min(self.index_topk, index_scores.shape[-1])
            for row in index_scores.reshape(-1, index_scores.shape[-1]):
                valid = row[torch.isfinite(row) & (row > -1e30)]
                if valid.numel() > topk:
                    top = valid.topk(topk + 1).values
                    gaps.smallest = min(gaps.smallest, float(top[topk - 1] - top[topk]))
                    gaps.choices += 1
            return index_scores.topk(topk, dim=-1).indices.to(torch.int32)

        m.DeepseekV32Indexer.forward = forward


def make_case(mf, gaps, root, name, seed):
    c = CASES[name]
    out = os.path.join(root, name)
    os.makedirs(out, exist_ok=True)
    for attempt in range(40):
        s = seed + 1000 * attempt
        torch.manual_seed(s)
        cfg = hub_config(mf, c)
        tok = mf.make_tokenizer(c["vocab"])
        disk, ref = store(mf, c, random_state(mf, c, s))
        model = mf.hf_model(c, cfg, ref)
        gaps.smallest, gaps.choices = float("inf"), 0
        tensors, meta = mf.references(c, model, tok, s)
        if gaps.smallest >= MIN_GAP:
            break
        print(name, "seed", s, "left a near-tie in the indexer (gap %.2e); next seed" % gaps.smallest)
    else:
        raise SystemExit(f"{name}: no seed without indexer near-ties")
    write_case(mf, out, c, cfg, tok, disk, tensors, meta, name, s, gaps,
               "the stored weights widened to float32 (fp8 blocks dequantized as w * weight_scale_inv)")
    if c["dtype"] != "fp8":  # (transformers' FP8 loader wants an accelerator)
        from_hub_layout(out, tensors)
    print(name, "ok", json.dumps(meta["prompts"]), json.dumps(meta["indexer"]))


def write_case(mf, out, c, cfg, tok, disk, tensors, meta, name, seed, gaps, reference_weights):
    """A case's files: config, generation config, tokenizer, shards, references (this tool's
    and make_v4_fixtures.py's)."""
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    with open(os.path.join(out, "generation_config.json"), "w") as f:
        json.dump({"bos_token_id": 0, "eos_token_id": 1, "do_sample": True, "temperature": 0.6, "top_p": 0.95}, f, indent=2)
    tok.save(os.path.join(out, "tokenizer.json"))
    with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
        json.dump({
            "add_bos_token": True, "add_eos_token": False, "bos_token": mf.BOS, "eos_token": mf.EOS,
            "pad_token": mf.PAD, "model_max_length": c["max_pos"], "legacy": True,
            "tokenizer_class": "LlamaTokenizerFast", "chat_template": mf.CHAT_TEMPLATE,
        }, f, indent=2, ensure_ascii=False)
    mf.write_shards(out, disk)
    save_file(tensors, os.path.join(out, "reference.safetensors"))
    meta.update({
        "case": name, "seed": seed, "source": "transformers %s, torch %s, float32 on CPU" % (
            __import__("transformers").__version__, torch.__version__),
        "storage_dtype": c["dtype"],
        "reference_weights": reference_weights,
        "indexer": {"choices": gaps.choices, "min_topk_gap": gaps.smallest},
        "tensors": "prompt_i: int64 token ids; logits_i: float32 [tokens, vocab] for the whole prompt; "
                   "greedy_i: int64, 12 tokens greedily generated after prompt_i (no EOS stop)",
    })
    with open(os.path.join(out, "reference.json"), "w") as f:
        json.dump(meta, f, indent=2, ensure_ascii=False)


def from_hub_layout(out, tensors):
    """The files as written load in transformers (its own renames, experts fused) and give the
    reference logits."""
    from transformers import AutoModelForCausalLM
    model, info = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32, output_loading_info=True)
    left = {k: v for k, v in info.items() if v and k != "error_msgs"}
    assert not [m for m in left.get("missing_keys", []) if "rotary" not in m] and not left.get("unexpected_keys"), left
    # (a quantised checkpoint comes back dequantized to bf16, which holds its values exactly)
    model.float().eval()
    with torch.no_grad():
        for i in range(4):
            ids = tensors[f"prompt_{i}"][None]
            err = float((model(ids).logits[0] - tensors[f"logits_{i}"]).abs().max())
            assert err < 1e-5, (out, i, err)


def run(cases, make_case, gaps, default_seed):
    """The command line of this tool and make_v4_fixtures.py: OUT_DIR [--seed N] [--cases a,b]
    [--shared DIR]; each case's seed follows from its place in `cases`."""
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--seed", type=int, default=default_seed)
    ap.add_argument("--cases", default=",".join(cases))
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--shared", default=os.path.join(here, "..", "..", "shared", "tools"))
    a = ap.parse_args()
    sys.path.insert(0, a.shared)
    import make_fixtures as mf
    gaps.install()
    for name in a.cases.split(","):
        make_case(mf, gaps, a.out, name, a.seed + 101 * list(cases).index(name))


def main():
    run(CASES, make_case, Gaps(), 3232)


if __name__ == "__main__":
    sys.exit(main())
