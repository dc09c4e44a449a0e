#!/usr/bin/env python3
"""Write the ONNX backend conformance tests of the installed `onnx` package to disk.

onnx 1.23.2 no longer ships `onnx/backend/test/data/node/`; its 1,884 node tests are
built in memory by `onnx.backend.test.loader.load_model_tests(kind="node")`. This
script writes them, plus the model folders the wheel still ships, in the classic layout
that test runners expect:

    <out>/<folder>/<test>/model.onnx
    <out>/<folder>/<test>/test_data_set_0/input_<i>.pb    (TensorProto, or Sequence/
    <out>/<folder>/<test>/test_data_set_0/output_<i>.pb    Optional/MapProto; see below)
    <out>/<folder>/<test>/meta.json                        {"rtol": .., "atol": ..}

Folders: node/ (generated), light/ (9 classic CNNs: the wheel ships only the model and
its expected output; the input is rebuilt exactly as onnx's own runner does),
simple/, pytorch-converted/, pytorch-operator/ (shipped in the classic layout; copied).

Values whose graph type is a sequence or optional are written as SequenceProto /
OptionalProto (as onnx's own `cmd_tools generate-data` does); their meta.json lists
them under "non_tensor" so a runner that handles only tensors can skip the case.

Usage:
    python3 scripts/gen_onnx_tests.py --out target/onnx-tests [--force]

Output is deterministic (byte-identical across runs) for given onnx, numpy and ml_dtypes
versions (scripts/setup pins them). A stamp file records those versions and this script's
hash; when it matches, nothing is rewritten.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper
from onnx.backend.test.loader import DATA_DIR, load_model_tests

DEFAULT_RTOL = 1e-3
DEFAULT_ATOL = 1e-7
COPIED_FOLDERS = ["simple", "pytorch-converted", "pytorch-operator"]
ALL_FOLDERS = ["node", "light", *COPIED_FOLDERS]
STAMP_NAME = ".stamp.json"


# ---------------------------------------------------------------- writing values


def value_to_proto(value, value_info: onnx.ValueInfoProto):
    """Turn one test value into the proto its graph type calls for, named after the graph value."""
    kind = value_info.type.WhichOneof("value")
    name = value_info.name
    if kind == "sequence_type":
        return numpy_helper.from_list(value, name)
    if kind == "optional_type":
        return numpy_helper.from_optional(value, name)
    if kind == "map_type":
        return numpy_helper.from_dict(value, name)
    if isinstance(value, TensorProto):
        proto = TensorProto()
        proto.CopyFrom(value)
        proto.name = name
        return proto
    return numpy_helper.from_array(np.asarray(value), name)


def write_data_set(dir_: Path, inputs, outputs, graph: onnx.GraphProto) -> None:
    """Write input_<i>.pb / output_<i>.pb for one data set."""
    dir_.mkdir(parents=True)
    for prefix, values, infos in (("input", inputs, graph.input), ("output", outputs, graph.output)):
        for i, (value, info) in enumerate(zip(values, infos)):
            data = value_to_proto(value, info).SerializeToString()
            (dir_ / f"{prefix}_{i}.pb").write_bytes(data)


def write_meta(test_dir: Path, rtol: float, atol: float, **extra) -> None:
    meta = {"rtol": rtol, "atol": atol, **extra}
    (test_dir / "meta.json").write_text(json.dumps(meta, sort_keys=True) + "\n")


def non_tensor_values(graph: onnx.GraphProto) -> list[str]:
    """Names of graph inputs/outputs whose type is not a plain tensor."""
    return [
        vi.name
        for vi in [*graph.input, *graph.output]
        if vi.type.WhichOneof("value") != "tensor_type"
    ]


# ---------------------------------------------------------------- node tests


def load_node_cases():
    # The case builders overflow casts and divide by zero on purpose; keep the output clean.
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        return load_model_tests(kind="node")


def write_node_tests(dest: Path) -> None:
    for case in load_node_cases():
        test_dir = dest / case.name
        test_dir.mkdir(parents=True)
        graph = case.model.graph
        (test_dir / "model.onnx").write_bytes(case.model.SerializeToString())
        for i, (inputs, outputs) in enumerate(case.data_sets):
            assert len(inputs) == len(graph.input) and len(outputs) == len(graph.output), case.name
            write_data_set(test_dir / f"test_data_set_{i}", inputs, outputs, graph)
        extra = {"non_tensor": nt} if (nt := non_tensor_values(graph)) else {}
        write_meta(test_dir, case.rtol, case.atol, **extra)


# ---------------------------------------------------------------- light models


def light_dummy_input(value_info: onnx.ValueInfoProto) -> np.ndarray:
    """The input onnx's backend runner feeds light models: arange(n)/n in the input's shape."""
    assert value_info.type.tensor_type.elem_type == TensorProto.FLOAT, value_info.name
    shape = tuple(
        d.dim_value if d.HasField("dim_value") else 1 for d in value_info.type.tensor_type.shape.dim
    )
    n = int(np.prod(shape))
    return (np.arange(n).reshape(shape) / n).astype(np.float32)


def write_light_tests(dest: Path) -> None:
    """light/<test>/: model + arange input + the expected output shipped in the wheel."""
    for case in load_model_tests(kind="real"):
        src_model = Path(DATA_DIR, "light", f"light_{case.model_name}.onnx")
        model = onnx.load(src_model)
        graph = model.graph
        initializers = {t.name for t in graph.initializer}
        test_dir = dest / case.name
        data_dir = test_dir / "test_data_set_0"
        data_dir.mkdir(parents=True)
        shutil.copyfile(src_model, test_dir / "model.onnx")
        real_inputs = [vi for vi in graph.input if vi.name not in initializers]
        for i, vi in enumerate(real_inputs):
            proto = numpy_helper.from_array(light_dummy_input(vi), vi.name)
            (data_dir / f"input_{i}.pb").write_bytes(proto.SerializeToString())
        for i, _ in enumerate(graph.output):
            shipped = src_model.with_name(f"light_{case.model_name}_output_{i}.pb")
            shutil.copyfile(shipped, data_dir / f"output_{i}.pb")
        write_meta(test_dir, case.rtol, case.atol)


# ---------------------------------------------------------------- shipped folders


def copy_shipped_tests(folder: str, dest: Path) -> None:
    """Copy a folder the wheel ships in the classic layout and add meta.json to each test."""
    tolerances = {c.name: (c.rtol, c.atol) for c in load_model_tests(kind=folder)}
    src = Path(DATA_DIR, folder)
    for name in sorted(os.listdir(src)):
        if not (src / name / "model.onnx").exists():
            continue
        shutil.copytree(src / name, dest / name)
        rtol, atol = tolerances.get(name, (DEFAULT_RTOL, DEFAULT_ATOL))
        graph = onnx.load(dest / name / "model.onnx").graph
        extra = {"non_tensor": nt} if (nt := non_tensor_values(graph)) else {}
        write_meta(dest / name, rtol, atol, **extra)


# ---------------------------------------------------------------- driver


def build_folder(out: Path, folder: str) -> None:
    """Build <out>/<folder> in a temporary folder, then swap it in."""
    tmp = out / f".{folder}.tmp"
    final = out / folder
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if folder == "node":
        write_node_tests(tmp)
    elif folder == "light":
        write_light_tests(tmp)
    else:
        copy_shipped_tests(folder, tmp)
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)


def stamp_for_this_run() -> dict:
    script_hash = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()
    # The expected outputs are computed by numpy and ml_dtypes at generation time.
    import ml_dtypes

    return {
        "onnx": onnx.__version__,
        "numpy": np.__version__,
        "ml_dtypes": ml_dtypes.__version__,
        "script_sha256": script_hash,
    }


def is_up_to_date(out: Path, stamp: dict) -> bool:
    stamp_path = out / STAMP_NAME
    if not stamp_path.exists() or not all((out / f).is_dir() for f in ALL_FOLDERS):
        return False
    return json.loads(stamp_path.read_text()) == stamp


def print_counts(out: Path) -> None:
    total = 0
    for folder in ALL_FOLDERS:
        tests = [d for d in (out / folder).iterdir() if (d / "model.onnx").exists()]
        non_tensor = sum("non_tensor" in json.loads((d / "meta.json").read_text()) for d in tests)
        total += len(tests)
        note = f"  ({non_tensor} with sequence/optional values)" if non_tensor else ""
        print(f"  {folder:<18} {len(tests):5d} tests{note}")
    print(f"  {'total':<18} {total:5d} tests")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("target/onnx-tests"))
    parser.add_argument("--force", action="store_true", help="rewrite even if up to date")
    args = parser.parse_args()
    out: Path = args.out

    stamp = stamp_for_this_run()
    if not args.force and is_up_to_date(out, stamp):
        print(f"ONNX tests in {out} are up to date (onnx {onnx.__version__}):")
        print_counts(out)
        return 0

    start = time.monotonic()
    out.mkdir(parents=True, exist_ok=True)
    (out / STAMP_NAME).unlink(missing_ok=True)
    for folder in ALL_FOLDERS:
        build_folder(out, folder)
    (out / STAMP_NAME).write_text(json.dumps(stamp, sort_keys=True) + "\n")
    print(f"Wrote ONNX tests of onnx {onnx.__version__} to {out} in {time.monotonic() - start:.1f} s:")
    print_counts(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
