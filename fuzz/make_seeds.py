"""Writes the fuzzers' seed corpus: tiny ONNX models (one op family each)
into corpus/onnx_compile/, and their bundles, compiled by the drift binary
of this checkout, into corpus/bundle_load/.

    cargo build --release -p drift-compiler && python3 fuzz/make_seeds.py
"""

import pathlib
import subprocess

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HERE = pathlib.Path(__file__).resolve().parent
DRIFT = HERE.parent / "target" / "release" / "drift"
F = TensorProto.FLOAT


def vi(name, shape, elem=F):
    return helper.make_tensor_value_info(name, elem, shape)


def init(name, array):
    return numpy_helper.from_array(np.asarray(array), name)


def model(name, nodes, inputs, outputs, inits=()):
    graph = helper.make_graph(nodes, name, inputs, outputs, list(inits))
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


rng = np.random.default_rng(0)
w = lambda *s: (rng.standard_normal(s) * 0.1).astype(np.float32)

MODELS = {
    "relu": model("relu", [helper.make_node("Relu", ["x"], ["y"])], [vi("x", [4])], [vi("y", [4])]),
    "add_const": model(
        "add_const", [helper.make_node("Add", ["x", "w"], ["y"])], [vi("x", [2, 3])], [vi("y", [2, 3])],
        [init("w", w(2, 3))]),
    "gemm": model(
        "gemm", [helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1)], [vi("x", [1, 16])], [vi("y", [1, 16])],
        [init("w", w(16, 16)), init("b", w(16))]),
    "conv": model(
        "conv", [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])], [vi("x", [1, 1, 5, 5])],
        [vi("y", [1, 2, 5, 5])], [init("w", w(2, 1, 3, 3))]),
    "reshape_softmax": model(
        "reshape_softmax",
        [helper.make_node("Reshape", ["x", "s"], ["r"]), helper.make_node("Softmax", ["r"], ["y"], axis=-1)],
        [vi("x", [2, 6])], [vi("y", [3, 4])], [init("s", np.array([3, 4], dtype=np.int64))]),
    "reduce_where": model(
        "reduce_where",
        [helper.make_node("ReduceMax", ["x"], ["m"], keepdims=1), helper.make_node("Greater", ["x", "m"], ["c"]),
         helper.make_node("Where", ["c", "x", "m"], ["y"])],
        [vi("x", [3, 5])], [vi("y", [3, 5])]),
    "symbolic": model(
        "symbolic", [helper.make_node("Sigmoid", ["x"], ["y"])], [vi("x", ["batch", 4])], [vi("y", ["batch", 4])]),
}

for sub in ("onnx_compile", "bundle_load"):
    (HERE / "corpus" / sub).mkdir(parents=True, exist_ok=True)
for name, m in MODELS.items():
    onnx_path = HERE / "corpus" / "onnx_compile" / f"seed-{name}.onnx"
    onnx.save(m, onnx_path)
    if name == "symbolic":
        continue
    bundle = HERE / "corpus" / "bundle_load" / f"seed-{name}.drift"
    subprocess.run([str(DRIFT), "compile", str(onnx_path), "-o", str(bundle)], check=True, capture_output=True)
    if name == "gemm":  # 256 weights: stored as f16
        f16 = bundle.with_name(f"seed-{name}-f16.drift")
        subprocess.run([str(DRIFT), "compile", str(onnx_path), "-o", str(f16), "--weights", "f16"], check=True,
                       capture_output=True)
