#!/usr/bin/env python3
"""Reference decodings of ggml's block formats for whale's GGUF kernels
(crates/kernels/src/ggml.rs; test: crates/model/tests/gguf.rs).

For every type whale reads, random blocks (their f16 / bf16 / f32 fields random finite values,
everything else random bytes) and what the `gguf` Python package's `dequantize` makes of them,
written to testdata/ggml/dequantize.safetensors as `<TYPE>.blocks` (U8) and `<TYPE>.values` (F32).

Needs: numpy, gguf, safetensors.   Usage: make_ggml_references.py [--seed N]
"""
import argparse
import os

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as T
from gguf.quants import dequantize
from safetensors.numpy import save_file

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))

# byte offsets of each block's f16 fields
F16_FIELDS = {
    T.Q4_0: [0], T.Q4_1: [0, 2], T.Q5_0: [0], T.Q5_1: [0, 2], T.Q8_0: [0],
    T.Q2_K: [80, 82], T.Q3_K: [108], T.Q4_K: [0, 2], T.Q5_K: [0, 2], T.Q6_K: [208],
}
TYPES = [T.F32, T.F16, T.BF16, *F16_FIELDS]


def blocks(t, n, rng):
    bs, ts = GGML_QUANT_SIZES[t]
    if t == T.F32:
        return rng.standard_normal(n * bs).astype(np.float32).view(np.uint8)
    if t == T.F16:
        return (rng.standard_normal(n * bs) * 4).astype(np.float16).view(np.uint8)
    if t == T.BF16:
        f = (rng.standard_normal(n * bs) * 4).astype(np.float32)
        return (f.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8)
    b = rng.integers(0, 256, size=(n, ts), dtype=np.uint8)
    for at in F16_FIELDS[t]:
        # scales of either sign and a wide range of magnitudes, subnormals included
        v = (rng.standard_normal(n) * np.exp2(rng.integers(-20, 4, size=n))).astype(np.float16)
        b[:, at:at + 2] = v.view(np.uint8).reshape(n, 2)
    return b.reshape(-1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=2525)
    a = ap.parse_args()
    rng = np.random.default_rng(a.seed)
    out = {}
    for t in TYPES:
        bs, ts = GGML_QUANT_SIZES[t]
        n = 12 if bs > 1 else 300
        raw = blocks(t, n, rng)
        values = dequantize(raw, t).astype(np.float32).reshape(-1)
        assert values.size == n * bs and np.isfinite(values).all(), t.name
        out[f"{t.name}.blocks"] = raw
        out[f"{t.name}.values"] = values
        print(t.name, n, "blocks")
    save_file(out, os.path.join(ROOT, "testdata", "ggml", "dequantize.safetensors"))


if __name__ == "__main__":
    main()
