#!/usr/bin/env python3
"""Calibration sweep for the product kernels of a GPU target, in one run.

Builds single-op ONNX models of the products that dominate the benchmark
networks (ResNet-50, MobileNetV2 and BERT-base at batch 1, a ResNet-50
convolution at batch 32, a 4096^3 GEMM), compiles each with a list of
`drift compile --tune` overrides (tile, split, kernel choice) at f32 and f16,
times every bundle in one `drift bench --json --profile` process, and prints
per product the GPU time of each variant next to the default choice. Also
times chains of 200 dependent ReLU dispatches (`--no-opt`) at three sizes:
the per-dispatch floor of the GPU and driver, and elementwise bandwidth.

The winners go into the target tables of `ops/src/target.rs` and
`ops/src/products.rs` by hand; docs/benchmarks.md records the sweep.

Usage (on the GPU machine; needs numpy and onnx):
    python3 tests/bench/tune.py --drift path/to/drift --out tune/ [--only c4,bert_ff2] [--quick | --focus]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# name: (kind, params). conv: (batch, cin, cout, k, hw, stride, group); matmul: (m, k, n).
SHAPES = {
    # ResNet-50, batch 1
    "r50_c1": ("conv", (1, 64, 64, 3, 56, 1, 1)),
    "r50_c2": ("conv", (1, 128, 128, 3, 28, 1, 1)),
    "r50_c3": ("conv", (1, 256, 256, 3, 14, 1, 1)),
    "r50_c4": ("conv", (1, 512, 512, 3, 7, 1, 1)),
    "r50_p1": ("conv", (1, 64, 256, 1, 56, 1, 1)),
    "r50_p3": ("conv", (1, 1024, 256, 1, 14, 1, 1)),
    "r50_p4": ("conv", (1, 2048, 512, 1, 7, 1, 1)),
    # MobileNetV2, batch 1
    "mb_pw": ("conv", (1, 960, 160, 1, 7, 1, 1)),
    "mb_pw2": ("conv", (1, 32, 192, 1, 28, 1, 1)),
    "mb_dw": ("conv", (1, 960, 960, 3, 7, 1, 960)),
    "mb_dw2": ("conv", (1, 144, 144, 3, 56, 1, 144)),
    "mb_dw3": ("conv", (1, 96, 96, 3, 112, 2, 96)),
    # BERT-base, batch 1, sequence 128
    "bert_qkv": ("matmul", (128, 768, 768)),
    "bert_ff1": ("matmul", (128, 768, 3072)),
    "bert_ff2": ("matmul", (128, 3072, 768)),
    # batched
    "r50b32_c3": ("conv", (32, 256, 256, 3, 14, 1, 1)),
    "bertb8_ff2": ("matmul", (1024, 3072, 768)),
    "gemm4096": ("matmul", (4096, 4096, 4096)),
}

SPLITS = [1, 2, 4, 8, 16, 32]
RELU_SIZES = (1, 96 * 1024, 1536 * 1024)
F32_TILES = ["128x128x16x8x8", "64x64x16x4x4", "32x32x32x2x2", "64x32x16x4x2", "32x64x16x2x4"]
COOP_TILES = ["128x128x32x64x32", "64x64x32x32x32", "32x32x32x16x16", "64x32x32x32x16", "32x64x32x16x32"]
BIG_F32 = ["128x128x16x8x8", "128x128x32x8x8", "128x64x16x8x4", "64x128x16x4x8"]
BIG_COOP = ["128x128x32x64x32", "128x128x64x64x32", "128x256x32x64x64", "256x128x32x64x64", "128x128x32x32x64"]


def log(*a) -> None:
    print(*a, flush=True)


def save_model(nodes: list, inputs: dict, outputs: dict, weights: dict, path: Path) -> None:
    """One float32 graph: inputs and outputs by name -> shape, weights by name -> array."""
    info = lambda items: [helper.make_tensor_value_info(k, TensorProto.FLOAT, s) for k, s in items.items()]
    inits = [numpy_helper.from_array(v, k) for k, v in weights.items()]
    g = helper.make_graph(nodes, path.stem, info(inputs), info(outputs), inits)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)


def conv_model(p, path: Path) -> None:
    n, cin, cout, k, hw, stride, group = p
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((cout, cin // group, k, k)) / np.sqrt(cin // group * k * k)).astype(np.float32)
    b = rng.standard_normal(cout).astype(np.float32)
    pad = k // 2
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], pads=[pad] * 4, strides=[stride] * 2, group=group)
    out = (hw + 2 * pad - k) // stride + 1
    save_model([node], {"x": [n, cin, hw, hw]}, {"y": [n, cout, out, out]}, {"w": w, "b": b}, path)


def matmul_model(p, path: Path) -> None:
    m, k, n = p
    b = (np.random.default_rng(0).standard_normal((k, n)) / np.sqrt(k)).astype(np.float32)
    save_model([helper.make_node("MatMul", ["a", "b"], ["y"])], {"a": [m, k]}, {"y": [m, n]}, {"b": b}, path)


def relu_chain(size: int, path: Path, count: int = 200) -> None:
    nodes = [helper.make_node("Relu", [f"t{i}"], [f"t{i + 1}"]) for i in range(count)]
    save_model(nodes, {"t0": [size]}, {f"t{count}": [size]}, {}, path)


def torch_floor(sizes, count: int = 200) -> dict:
    """The peer's floor: a CUDA graph of `count` dependent ReLUs per size, replayed
    (median ms of single synchronized replays after warm-up), or {} without torch."""
    try:
        import torch
    except ImportError:
        return {}
    if not torch.cuda.is_available():
        return {}
    out = {}
    for size in sizes:
        x = torch.randn(size, device="cuda")
        def chain():
            y = x
            for _ in range(count):
                y = torch.relu(y)
            return y
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            chain()
        torch.cuda.current_stream().wait_stream(s)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            chain()
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < 0.3:
            graph.replay()
            torch.cuda.synchronize()
        times = []
        for _ in range(50):
            t = time.perf_counter()
            graph.replay()
            torch.cuda.synchronize()
            times.append((time.perf_counter() - t) * 1e3)
        out[size] = sorted(times)[len(times) // 2]
    return out


def variants(kind: str, p, name: str, quick: bool, focus: bool = False):
    """(label, precision, extra compile flags) of every variant of one product."""
    out = []
    for prec in ("f32", "f16"):
        out.append(("default", prec, []))
        if kind == "conv" and p[6] > 1:
            out.append(("grouped=product", prec, ["--tune", "grouped=product"]))
            continue
        big = name in ("gemm4096", "r50b32_c3", "bertb8_ff2")
        tiles = (BIG_F32 if prec == "f32" else BIG_COOP) if big else (F32_TILES if prec == "f32" else COOP_TILES)
        key = "tile" if prec == "f32" else "coop"
        splits = [1] if big else SPLITS
        if quick:
            tiles, splits = tiles[:3], [1, 4, 16] if not big else [1]
        if focus:
            out.append(("split-meet=pass", prec, ["--tune", "split-meet=pass"]))
            if not big:
                for sp in (4, 8, 16):
                    out.append((f"split={sp}", prec, ["--tune", f"split={sp}"]))
            continue
        for t in tiles:
            for s in splits:
                out.append((f"{key}={t},split={s}", prec, ["--tune", f"{key}={t},split={s}"]))
        out.append(("default --weights f16", prec, ["--weights", "f16"]))
    return out


def compile_one(drift: str, onnx_path: Path, bundle: Path, prec: str, flags: list, target: str) -> str | None:
    cmd = [drift, "compile", str(onnx_path), "-o", str(bundle), "--precision", prec, "--target", target, *flags]
    p = subprocess.run(cmd, capture_output=True, text=True)
    return None if p.returncode == 0 else p.stderr.strip()[-400:]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--drift", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--only", default="")
    ap.add_argument("--target", default="nvidia")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--focus", action="store_true", help="only the defaults, with and without in-kernel split meeting")
    ap.add_argument("--iters", type=int, default=30)
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path("/tmp/drift-tune")
    work.mkdir(parents=True, exist_ok=True)
    only = [s for s in a.only.split(",") if s]
    jobs = []  # (shape, label, prec, onnx, bundle, flags)
    for name, (kind, p) in SHAPES.items():
        if only and name not in only:
            continue
        path = work / f"{name}.onnx"
        (conv_model if kind == "conv" else matmul_model)(p, path)
        for i, (label, prec, flags) in enumerate(variants(kind, p, name, a.quick, a.focus)):
            jobs.append((name, label, prec, path, work / f"{name}_{prec}_{i}.drift", flags))
    for size in RELU_SIZES:
        path = work / f"relu{size}.onnx"
        relu_chain(size, path)
        jobs.append((f"relu200_{size}", "no-opt", "f32", path, work / f"relu{size}.drift", ["--no-opt"]))
    t0 = time.time()
    with ThreadPoolExecutor(os.cpu_count() or 4) as pool:
        errors = list(pool.map(lambda j: compile_one(a.drift, j[3], j[4], j[2], j[5], a.target), jobs))
    log(f"compiled {len(jobs)} bundles in {time.time() - t0:.1f} s")
    ok = [j for j, e in zip(jobs, errors) if e is None]
    for j, e in zip(jobs, errors):
        if e is not None:
            log(f"  compile failed: {j[0]} {j[2]} {j[1]}: {e}")
    t0 = time.time()
    p = subprocess.run([a.drift, "bench", "--trusted", "--json", "--profile", "--iters", str(a.iters), "--warmup", "5",
                        *[str(j[4]) for j in ok]], capture_output=True, text=True)
    log(f"benched {len(ok)} bundles in {time.time() - t0:.1f} s (exit {p.returncode})")
    lines = [json.loads(x) for x in p.stdout.splitlines() if x.startswith("{")]
    if len(lines) != len(ok):
        log(f"expected {len(ok)} reports, got {len(lines)}; stderr: {p.stderr[-2000:]}")
    rows = []
    for j, r in zip(ok, lines):
        rows.append({"shape": j[0], "variant": j[1], "precision": j[2], **{k: r.get(k) for k in (
            "median_ms", "gpu_ms", "dispatches", "target", "error", "gpu", "driver")},
            "kernels": summarize(r.get("kernels", []))})
    (out / "tune.json").write_text(json.dumps(rows, indent=0))
    report(rows)
    floor = torch_floor(RELU_SIZES)
    for size, ms in floor.items():
        log(f"PyTorch CUDA graph, 200 dependent ReLUs of {size} elements: {ms * 1e3:.1f} us "
            f"({ms * 1e3 / 200:.2f} us per kernel)")
    return 0


def summarize(kernels: list) -> list:
    """Kernels by name: [name, dispatches, total us, median us per dispatch]."""
    by = {}
    for k in kernels:
        by.setdefault(k["kernel"], []).append(k["us"])
    return [[n, len(v), round(sum(v), 2), round(sorted(v)[len(v) // 2], 2)] for n, v in by.items()]


def report(rows: list) -> None:
    if rows:
        log(f"device: {rows[0].get('gpu')} driver {rows[0].get('driver')}, {time.strftime('%Y-%m-%d %H:%M %Z')}")
    by = {}
    for r in rows:
        by.setdefault((r["shape"], r["precision"]), []).append(r)
    for (shape, prec), rs in by.items():
        rs = [r for r in rs if r.get("gpu_ms") is not None]
        if not rs:
            continue
        default = next((r for r in rs if r["variant"] == "default"), rs[0])
        best = sorted(rs, key=lambda r: r["gpu_ms"])[:4]
        d = default
        log(f"{shape:<12} {prec} default {d['gpu_ms'] * 1e3:8.1f} us GPU {d['median_ms'] * 1e3:8.1f} us wall "
            f"{d['kernels']}")
        for b in best:
            log(f"    {b['gpu_ms'] * 1e3:8.1f} us GPU {b['median_ms'] * 1e3:8.1f} us wall  {b['variant']}  "
                f"{b['kernels']}")


if __name__ == "__main__":
    sys.exit(main())
