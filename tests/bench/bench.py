#!/usr/bin/env python3
"""drift against PyTorch on one NVIDIA GPU, in one run, with no network.

Exports ResNet-50, MobileNetV2 and BERT-base (random weights, torchvision and
transformers as installed) and a 4096x4096x4096 GEMM (onnx.helper) to ONNX,
compiles each with the `drift` binary given, checks drift's outputs against
PyTorch's float32 outputs (TF32 off), and times both at fp32 and fp16:
PyTorch eager and CUDA-graph replay, drift `bench` (Session::replay: record,
submit, wait). Every latency is the median of host wall times of single runs,
each ended by a synchronize, after warm-up. Prints one table last; writes
results.json, profiles.txt and the log under --out.

Usage (see tests/bench/run.sh, which also installs the Vulkan loader):
    python3 tests/bench/bench.py --drift path/to/drift --out results/ [--only resnet50,gemm]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

ITERS = 200
WARMUP = 20
WARMUP_S = 0.3


def log(*args) -> None:
    print(*args, flush=True)


# ---------------------------------------------------------------- models


class LastHidden(torch.nn.Module):
    """BERT returning only its last hidden state (one ONNX output)."""

    def __init__(self, bert):
        super().__init__()
        self.bert = bert

    def forward(self, input_ids):
        return self.bert(input_ids=input_ids).last_hidden_state


def vision(name: str, batch: int):
    import torchvision

    torch.manual_seed(0)
    net = getattr(torchvision.models, name)(weights=None).eval()
    x = torch.randn(batch, 3, 224, 224)
    return net, {"x": x}


def bert(batch: int):
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    # SDPA: PyTorch's fastest attention, and its mask path allocates nothing
    # on the host, so the model can be captured in a CUDA graph.
    config = BertConfig(attn_implementation="sdpa")
    net = LastHidden(BertModel(config, add_pooling_layer=False)).eval()
    ids = torch.randint(0, config.vocab_size, (batch, 128), dtype=torch.int64)
    return net, {"input_ids": ids}


class Gemm(torch.nn.Module):
    def __init__(self, b: np.ndarray):
        super().__init__()
        self.b = torch.nn.Parameter(torch.from_numpy(b), requires_grad=False)

    def forward(self, a):
        return a @ self.b


def gemm_model(n: int, path: Path):
    """A = input, B = constant: the ONNX file is built directly."""
    rng = np.random.default_rng(0)
    b = (rng.standard_normal((n, n), dtype=np.float32) / np.sqrt(n)).astype(np.float32)
    a = rng.standard_normal((n, n), dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["y"])],
        "gemm",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [n, n])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [n, n])],
        [numpy_helper.from_array(b, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save(model, path)
    return Gemm(b).eval(), {"a": torch.from_numpy(a)}


def export(net, inputs: dict, path: Path) -> None:
    names = list(inputs)
    args = tuple(inputs.values())
    try:
        torch.onnx.export(net, args, str(path), input_names=names, output_names=["y"], opset_version=17, dynamo=False)
    except Exception as e:  # the TorchScript exporter may be gone; the dynamo one needs onnxscript
        log(f"  TorchScript export failed ({e!r:.200}); trying dynamo=True")
        torch.onnx.export(net, args, str(path), input_names=names, output_names=["y"], opset_version=18, dynamo=True)


# ---------------------------------------------------------------- timing


def median_p90(times_ms: list[float]) -> tuple[float, float]:
    t = sorted(times_ms)
    return t[len(t) // 2], t[min(len(t) - 1, int(np.ceil(0.9 * len(t))) - 1)]


def time_fn(fn, iters: int) -> list[float]:
    # Warm up by count and by time (as `drift bench --warmup-ms`): an idle GPU
    # needs a few hundred milliseconds of load to reach its clocks.
    t0 = time.perf_counter()
    n = 0
    while n < WARMUP or time.perf_counter() - t0 < WARMUP_S:
        fn()
        torch.cuda.synchronize()
        n += 1
    out = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def torch_times(net, inputs: dict, half: bool, iters: int) -> dict:
    dev = torch.device("cuda")
    net = net.to(dev)
    net = net.half() if half else net.float()
    args = [v.to(dev) for v in inputs.values()]
    args = [a.half() if (half and a.is_floating_point()) else a for a in args]
    res = {}
    with torch.no_grad():
        res["eager"] = median_p90(time_fn(lambda: net(*args), iters))
        y = net(*args).float().cpu().numpy().astype(np.float64)
        res["y"] = y
        try:
            res["graph"] = graph_times(net, args, iters)
        except Exception as e:
            res["graph"] = None
            res["graph_error"] = str(e)[-500:]
            log(f"  CUDA graph capture failed: {e}")
    net.float().cpu()
    return res


def graph_times(net, args, iters: int):
    with torch.no_grad():
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(3):
                net(*args)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            net(*args)
        return median_p90(time_fn(graph.replay, iters))


def torch_reference(net, inputs: dict) -> np.ndarray:
    """float32 on the GPU with TF32 off."""
    dev = torch.device("cuda")
    with torch.no_grad():
        y = net.to(dev).float()(*[v.to(dev) for v in inputs.values()])
    net.cpu()
    return y.float().cpu().numpy()


# ---------------------------------------------------------------- drift


def run(cmd: list[str], timeout: int = 600) -> str:
    log("  $ " + " ".join(cmd))
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    err = "\n".join(line for line in p.stderr.splitlines() if "XDG_RUNTIME_DIR" not in line)
    if p.returncode != 0:
        raise RuntimeError(f"exit {p.returncode}: {err.strip()[-2000:]}")
    if err.strip():
        log("  " + err.strip()[-500:])
    return p.stdout


def drift_case(drift: str, onnx_path: Path, work: Path, tag: str, precision: str, targets: str,
               inputs: dict, ref: np.ndarray, iters: int, profiles, extra: tuple = ()) -> dict:
    bundle = work / f"{tag}.drift"
    t0 = time.perf_counter()
    out = run([drift, "compile", str(onnx_path), "-o", str(bundle), "--precision", precision, "--target", targets,
               *extra])
    res = {"compile_s": time.perf_counter() - t0, "compile": out.strip()}
    flags = []
    for name, value in inputs.items():
        f = work / f"{tag}_{name}.npy"
        np.save(f, value.numpy())
        flags += ["--input", f"{name}={f}"]
    outdir = work / f"{tag}_out"
    # Bundles this script compiled: trusted, so they take the passthrough path.
    run([drift, "run", "--trusted", str(bundle), *flags, "--output-dir", str(outdir)])
    y = np.load(next(outdir.glob("*.npy")))
    res["rel_err"] = float(np.linalg.norm(y.astype(np.float64) - ref) / np.linalg.norm(ref))
    res["max_abs_err"] = float(np.abs(y - ref).max())
    bench = json.loads(
        run([drift, "bench", "--trusted", str(bundle), *flags, "--json", "--profile", "--iters", str(iters),
             "--warmup", str(WARMUP)])
    )
    res.update(bench)
    prof = run([drift, "bench", "--trusted", str(bundle), *flags, "--profile", "--iters", "5", "--warmup", "2"])
    profiles.write(f"==== {tag} ({precision}, --target {targets})\n{prof}\n")
    profiles.flush()
    return res


# ---------------------------------------------------------------- main


CASES = [
    # name, builder, batch, GEMM flops (0: a network), precisions, targets
    ("gemm4096", None, 1, 2 * 4096**3, ("f32", "f16"), "nvidia"),
    ("resnet50", lambda: vision("resnet50", 1), 1, 0, ("f32", "f16"), "generic,nvidia"),
    ("mobilenetv2", lambda: vision("mobilenet_v2", 1), 1, 0, ("f32", "f16"), "generic,nvidia"),
    ("bert-base", lambda: bert(1), 1, 0, ("f32", "f16"), "generic,nvidia"),
    ("resnet50-b32", lambda: vision("resnet50", 32), 32, 0, ("f16",), "nvidia"),
    ("bert-base-b8", lambda: bert(8), 8, 0, ("f16",), "nvidia"),
]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--drift", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--only", default="")
    ap.add_argument("--iters", type=int, default=ITERS)
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path("/tmp/drift-bench")
    work.mkdir(parents=True, exist_ok=True)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = True
    torch.set_float32_matmul_precision("highest")
    env = {
        "gpu": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
    }
    try:
        env["driver"] = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        env["driver"] = "?"
    log("environment:", json.dumps(env))
    only = [s for s in a.only.split(",") if s]
    results = {"env": env, "cases": {}}
    profiles = open(out / "profiles.txt", "w")
    for name, build, batch, flops, precisions, targets in CASES:
        if only and name not in only:
            continue
        log(f"== {name}")
        case = results["cases"].setdefault(name, {"batch": batch, "flops": flops})
        try:
            onnx_path = work / f"{name}.onnx"
            if build is None:
                net, inputs = gemm_model(4096, onnx_path)
            else:
                net, inputs = build()
                export(net, inputs, onnx_path)
            ref = torch_reference(net, inputs).astype(np.float64)
            iters = max(20, a.iters // 10) if (flops or batch > 1) else a.iters
            for precision in precisions:
                half = precision == "f16"
                entry = case.setdefault(precision, {})
                try:
                    t = torch_times(net, inputs, half, iters)
                    y = t.pop("y")
                    t["rel_err"] = float(np.linalg.norm(y - ref) / np.linalg.norm(ref))
                    entry["torch"] = t
                    log(f"  torch {precision}: {entry['torch']}")
                except Exception as e:
                    entry["torch_error"] = str(e)[-2000:]
                    log(f"  torch {precision} FAILED: {e}")
                try:
                    entry["drift"] = drift_case(a.drift, onnx_path, work, f"{name}_{precision}", precision,
                                                targets, inputs, ref, iters, profiles)
                    d = entry["drift"]
                    log(f"  drift {precision}: median {d['median_ms']:.3f} ms p90 {d['p90_ms']:.3f} ms "
                        f"err {d['rel_err']:.2e} target {d['target']} "
                        f"{d['record_submit_us_per_dispatch']:.2f} us/dispatch")
                    torch_err = (entry.get("torch") or {}).get("rel_err", 0.0)
                    if not d["rel_err"] <= max(10 * torch_err, 1e-3):
                        # A wrong result is reported as such; the second-pass
                        # split reduction shows whether the in-kernel one is
                        # the cause.
                        log(f"  drift {precision} ERROR {d['rel_err']:.2e} above bound; again with "
                            f"--tune split-meet=pass")
                        entry["drift_split_pass"] = drift_case(
                            a.drift, onnx_path, work, f"{name}_{precision}_pass", precision, targets, inputs, ref,
                            iters, profiles, ("--tune", "split-meet=pass"))
                        log(f"  drift {precision} split-meet=pass: err {entry['drift_split_pass']['rel_err']:.2e} "
                            f"median {entry['drift_split_pass']['median_ms']:.3f} ms")
                except Exception as e:
                    entry["drift_error"] = str(e)[-3000:]
                    log(f"  drift {precision} FAILED: {str(e)[-3000:]}")
            if "resnet50" == name:
                # The generic kernel set on the same GPU: what specialization buys.
                try:
                    e = drift_case(a.drift, onnx_path, work, "resnet50_f32_generic", "f32", "generic",
                                   inputs, ref, iters, profiles)
                    case["f32"]["drift_generic"] = e
                except Exception as e:
                    case["f32"]["drift_generic_error"] = str(e)[-2000:]
        except Exception as e:
            case["error"] = traceback.format_exc()[-3000:]
            log(f"  FAILED: {case['error']}")
        (out / "results.json").write_text(json.dumps(results, indent=1))
    profiles.close()
    print_table(results)
    return 0


def print_table(results: dict) -> None:
    log("\nenvironment: " + json.dumps(results["env"]))
    head = f"{'model':<14} {'prec':<4} {'torch eager':>11} {'torch graph':>11} {'drift':>9} {'drift/graph':>11} {'drift GPU':>9} {'rel err':>8}  note"
    log(head)
    log("-" * len(head))
    for name, case in results["cases"].items():
        if "error" in case:
            log(f"{name:<14} error: {case['error'].splitlines()[-1][:100]}")
        for prec in ("f32", "f16"):
            e = case.get(prec)
            if not e:
                continue
            t = e.get("torch") or {}
            te = t["eager"][0] if t.get("eager") else float("nan")
            tg = t["graph"][0] if t.get("graph") else float("nan")
            d = e.get("drift")
            if d is None:
                log(f"{name:<14} {prec:<4} {te:>11.3f} {tg:>11.3f}   drift failed: {e.get('drift_error', '')[-120:]}")
                continue
            dm = d["median_ms"]
            note = f"target {d['target']}, {d['dispatches']} dispatches, {d['record_submit_us_per_dispatch']:.2f} us/dispatch CPU"
            if case["flops"]:
                note += f"; TFLOP/s torch {case['flops'] / tg / 1e9:.1f}, drift {case['flops'] / dm / 1e9:.1f}"
            if case["batch"] > 1:
                note += f"; items/s torch {case['batch'] / tg * 1e3:.0f}, drift {case['batch'] / dm * 1e3:.0f}"
            gpu = d.get("gpu_ms", float("nan"))
            if "rel_err" in t:
                note += f"; torch {prec} err {t['rel_err']:.1e}"
            log(f"{name:<14} {prec:<4} {te:>11.3f} {tg:>11.3f} {dm:>9.3f} {dm / tg:>11.2f} {gpu:>9.3f} {d['rel_err']:>8.1e}  {note}")
            g = e.get("drift_generic")
            if g:
                log(f"{'  generic set':<14} {prec:<4} {'':>11} {'':>11} {g['median_ms']:>9.3f} {g['median_ms'] / tg:>11.2f} {'':>9} {g['rel_err']:>8.1e}  target {g['target']}")
    log("latencies in ms (medians of single synchronized runs); drift GPU = sum of its kernels' timestamps")


if __name__ == "__main__":
    sys.exit(main())
