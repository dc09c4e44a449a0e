#!/usr/bin/env python3
"""LLM benchmark: decode tokens/s against the memory roofline, prefill against PyTorch eager.

A Llama-architecture model with random weights is built from a transformers `LlamaConfig`
(`transformers.LlamaForCausalLM(config)`, seeded), and its state dict is exported with
`fixtures/llama.py` (the optimum-style decoder graph with past key/values that the tiny
fixture uses; that graph matches `LlamaForCausalLM` to 2e-6 on the fixture). drift compiles it
with bounded dims (`--dim seq=1..512 --dim past=0..1024`), a sampler, and f16 or int4
weights; `drift generate` times prefill and decode (the KV cache carried on the GPU), decode
both with one host synchronization per token (`--sync-every 1`) and in chains of 16 steps that
feed each sampled token to the next step on the GPU (the default).

- Decode roofline: weight bytes read per token (the packed matmul weights and scales, as
  stored) / copy bandwidth measured on the same GPU (torch device-to-device copy, read +
  write bytes). The bar is decode >= 80% of that.
- Prefill: 512 tokens through drift's prefill stage vs PyTorch eager (`model(input_ids)`,
  float16 on CUDA) in the same run.

Usage (on the GPU machine, torch + transformers installed):
    python3 tests/bench/llm.py --drift target/release/drift --out bench-llm.json
    python3 tests/bench/llm.py --small      # a 2-layer model, to check the script anywhere
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "fixtures"))
import llama  # noqa: E402  (the graph builder of the tiny fixture)

# TinyLlama-1.1B's shape: 22 layers, hidden 2048, 32 heads, 4 KV heads, FFN 5632, vocab 32000.
CONFIG_1B = dict(vocab=32000, hidden=2048, layers=22, heads=32, kv_heads=4, inter=5632, rope_theta=10000.0, eps=1e-5)
CONFIG_SMALL = dict(vocab=1000, hidden=256, layers=2, heads=8, kv_heads=2, inter=688, rope_theta=10000.0, eps=1e-5)
PREFILL = 512
DECODE = 128
PROMPT = 16


def transformers_model(cfg: dict):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    # Random init is much faster on the GPU.
    if torch.cuda.is_available():
        torch.set_default_device("cuda")
    config = LlamaConfig(
        vocab_size=cfg["vocab"], hidden_size=cfg["hidden"], num_hidden_layers=cfg["layers"],
        num_attention_heads=cfg["heads"], num_key_value_heads=cfg["kv_heads"], intermediate_size=cfg["inter"],
        rope_theta=cfg["rope_theta"], rms_norm_eps=cfg["eps"], tie_word_embeddings=False,
        attn_implementation="eager", max_position_embeddings=4096,
    )
    model = LlamaForCausalLM(config).eval()
    torch.set_default_device("cpu")
    return model


def export(model, cfg: dict, path: Path) -> None:
    import onnx

    weights = {k: v.detach().float().cpu().numpy() for k, v in model.state_dict().items()}
    proto = llama.build_model(cfg, weights)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(proto, path, save_as_external_data=True, all_tensors_to_one_file=True,
                    location=path.stem + ".data", size_threshold=1024)


def weight_bytes(cfg: dict, fmt: str) -> float:
    """Bytes of matmul weights one decode step reads, as stored (codes + scales)."""
    d, kv = cfg["hidden"], cfg["hidden"] // cfg["heads"] * cfg["kv_heads"]
    per_layer = d * d * 2 + d * kv * 2 + 3 * d * cfg["inter"]
    n = cfg["layers"] * per_layer + d * cfg["vocab"]
    per_weight = {"f16": 2.0, "int4": 0.5 + 2.0 / 32}[fmt]
    return n * per_weight


def copy_bandwidth() -> float:
    """Device-to-device copy bandwidth in bytes/s (read + write), 1 GiB buffers."""
    import torch

    n = 1 << 30
    x = torch.empty(n, dtype=torch.uint8, device="cuda")
    y = torch.empty_like(x)
    for _ in range(3):
        y.copy_(x)
    torch.cuda.synchronize()
    reps = 20
    t = time.perf_counter()
    for _ in range(reps):
        y.copy_(x)
    torch.cuda.synchronize()
    return 2 * n * reps / (time.perf_counter() - t)


def torch_prefill_ms(model, cfg: dict, device: str) -> float:
    import torch

    m = model.to(device=device, dtype=torch.float16 if device == "cuda" else torch.float32)
    ids = torch.randint(0, cfg["vocab"], (1, PREFILL), device=device)
    with torch.no_grad():
        for _ in range(2):
            m(input_ids=ids, use_cache=True)
        if device == "cuda":
            torch.cuda.synchronize()
        times = []
        for _ in range(5):
            t = time.perf_counter()
            m(input_ids=ids, use_cache=True)
            if device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
    return min(times) * 1e3


def run(cmd: list[str]) -> str:
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{p.stderr}")
    return p.stdout + p.stderr


def drift_generate(drift: str, bundle: Path, n_prompt: int, new: int, vocab: int,
                   sync_every: int = 16) -> tuple[float, float, str]:
    rng = np.random.default_rng(1)
    tokens = ",".join(str(t) for t in rng.integers(0, vocab, n_prompt))
    out = run([drift, "generate", "--trusted", str(bundle), "--tokens", tokens, "--max-new-tokens", str(new),
               "--sync-every", str(sync_every)])
    m = re.search(r"prefill (\d+) tokens in ([\d.]+) ms; decode (\d+) tokens at ([\d.]+) tokens/s on (.*)", out)
    if not m:
        raise SystemExit(f"unexpected drift generate output:\n{out}")
    return float(m.group(2)), float(m.group(4)), m.group(5).strip()


def profile_decode(drift: str, bundle: Path, cfg: dict, past: int, work: Path) -> str:
    """`drift bench --profile` of one decode step on a cache of `past` positions:
    per-kernel GPU times of the decode stage."""
    head = cfg["hidden"] // cfg["heads"]
    rng = np.random.default_rng(2)
    inputs = {
        "input_ids": rng.integers(0, cfg["vocab"], (1, 1)).astype(np.int64),
        "attention_mask": np.ones((1, past + 1), np.int64),
        "position_ids": np.full((1, 1), past, np.int64),
        "sampling": np.array([0.0, 1.0, 0.5, 0.0], np.float32),
    }
    for layer in range(cfg["layers"]):
        for kind in ("key", "value"):
            inputs[f"past_key_values.{layer}.{kind}"] = rng.standard_normal(
                (1, cfg["kv_heads"], past, head)).astype(np.float32)
    flags = []
    for name, value in inputs.items():
        f = work / f"decode_{name}.npy"
        np.save(f, value)
        flags += ["--input", f"{name}={f}"]
    return run([drift, "bench", "--trusted", str(bundle), *flags, "--profile", "--iters", "50"])


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--drift", default=str(ROOT / "target/release/drift"))
    ap.add_argument("--work", default="/tmp/drift-bench-llm")
    ap.add_argument("--out", default=None)
    ap.add_argument("--small", action="store_true", help="a 2-layer model, to check the script")
    ap.add_argument("--formats", default="f16,int4")
    ap.add_argument("--skip-torch", action="store_true", help="no copy bandwidth and PyTorch prefill")
    ap.add_argument("--profile-dir", default=None, help="write a per-kernel profile of one decode step here")
    args = ap.parse_args()
    cfg = CONFIG_SMALL if args.small else CONFIG_1B
    work = Path(args.work)
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    t0 = time.perf_counter()
    model = transformers_model(cfg)
    onnx_path = work / "llama.onnx"
    export(model, cfg, onnx_path)
    print(f"model: {sum(p.numel() for p in model.parameters()) / 1e9:.2f} B parameters, exported in "
          f"{time.perf_counter() - t0:.0f} s", flush=True)

    results = {"config": cfg, "formats": {}}
    for fmt in args.formats.split(","):
        bundle = work / f"llama_{fmt}.drift"
        t = time.perf_counter()
        out = run([args.drift, "compile", str(onnx_path), "-o", str(bundle), "--dim", "batch_size=1",
                   "--dim", f"seq=1..{PREFILL}", "--dim", f"past=0..{2 * PREFILL}", "--quantize", fmt,
                   "--group-size", "32", "--sampler"])
        print(out.strip(), f"({time.perf_counter() - t:.0f} s)", flush=True)
        _, decode_tps, gpu = drift_generate(args.drift, bundle, PROMPT, DECODE, cfg["vocab"])
        _, decode_tps_sync1, _ = drift_generate(args.drift, bundle, PROMPT, DECODE, cfg["vocab"], sync_every=1)
        prefill_ms = min(drift_generate(args.drift, bundle, PREFILL, 1, cfg["vocab"])[0] for _ in range(2))
        results["formats"][fmt] = {"decode_tokens_per_s": decode_tps, "decode_tokens_per_s_sync_every_1": decode_tps_sync1,
                                   "prefill_512_ms": prefill_ms, "weight_bytes_per_token": weight_bytes(cfg, fmt)}
        results["gpu"] = gpu
        print(f"{fmt}: decode {decode_tps:.1f} tokens/s (sync every 16; every token: {decode_tps_sync1:.1f}), "
              f"prefill {PREFILL} tokens {prefill_ms:.1f} ms", flush=True)
        if args.profile_dir:
            prof = profile_decode(args.drift, bundle, cfg, PROMPT + DECODE, work)
            Path(args.profile_dir, f"llm_{fmt}_decode_profile.txt").write_text(prof)
            print(prof.split("slowest dispatches")[0], flush=True)

    if args.skip_torch:
        print(json.dumps(results, indent=2))
        return 0
    if device == "cuda":
        bw = copy_bandwidth()
        results["copy_bandwidth_gb_s"] = bw / 1e9
        for fmt, r in results["formats"].items():
            r["roofline_tokens_per_s"] = bw / r["weight_bytes_per_token"]
            r["fraction_of_roofline"] = r["decode_tokens_per_s"] / r["roofline_tokens_per_s"]
    results["torch_eager_prefill_512_ms"] = torch_prefill_ms(model, cfg, device)
    results["torch_device"] = device
    print(json.dumps(results, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
