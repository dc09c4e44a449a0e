#!/usr/bin/env python3
"""Write drift's focused edge-case tests: small one-op models per op family.

The ONNX node suite tests each op's main forms; these cases aim at the corners a
compiler gets wrong: broadcasting between unequal ranks, negative axes, empty tensors
(a zero-length axis), rank-0 scalars, clamped or reversed ranges. Each case is one
node (or a few) built with onnx.helper. Its expected outputs come from onnxruntime
(CPU, graph optimizations off); for ops onnxruntime does not implement, from
onnx.reference.ReferenceEvaluator. meta.json says which.

Layout (the classic ONNX backend-test layout, so the same loader reads both):

    tests/edge/<family>/<case>/model.onnx
    tests/edge/<family>/<case>/test_data_set_0/{input,output}_<i>.pb
    tests/edge/<family>/<case>/meta.json       {"rtol", "atol", "reference"}

Usage:
    python3 tests/edge/generate.py            # rewrite every case
    python3 tests/edge/generate.py conv       # rewrite one family

The test `cargo test -p drift-tests --test edge` runs every case on the GPU and
requires all of them to pass.
"""
from __future__ import annotations

import json
import shutil
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

EDGE_DIR = Path(__file__).resolve().parent
DEFAULT_OPSET = 21
RTOL, ATOL = 1e-4, 1e-5
RNG = np.random.default_rng(7)


def rand(*shape, dtype=np.float32):
    """Normal values in float32 (or cast to an integer type, small magnitudes)."""
    x = RNG.standard_normal(shape).astype(np.float32)
    if np.issubdtype(dtype, np.integer):
        return (x * 4).round().astype(dtype)
    return x.astype(dtype)


def pos(*shape):
    """Positive float32 values in [0.5, 2)."""
    return (RNG.random(shape) * 1.5 + 0.5).astype(np.float32)


def i64(*values):
    return np.array(values, dtype=np.int64)


@dataclass
class Case:
    """One model: `op` applied to graph inputs (fed at run time) and constants
    (initializers, for shape-deciding operands). Input order follows `args`:
    a name in `inputs` or `consts`, or "" for an omitted optional input."""

    family: str
    name: str
    op: str
    args: list[str]
    inputs: dict[str, np.ndarray] = field(default_factory=dict)
    consts: dict[str, np.ndarray] = field(default_factory=dict)
    attrs: dict = field(default_factory=dict)
    outputs: int = 1
    opset: int = DEFAULT_OPSET
    domain: str = ""


CASES: list[Case] = []


def case(family, name, op, args, inputs=None, consts=None, outputs=1, opset=DEFAULT_OPSET, domain="", **attrs):
    inputs = {n: np.asarray(a) for n, a in (inputs or {}).items()}
    consts = {n: np.asarray(a) for n, a in (consts or {}).items()}
    CASES.append(Case(family, name, op, args, inputs, consts, attrs, outputs, opset, domain))


# ---------------------------------------------------------------- elementwise

E = "elementwise"
case(E, "add_broadcast_three_ranks", "Add", ["a", "b"], {"a": rand(2, 1, 3), "b": rand(4, 1)})
case(E, "add_rank0", "Add", ["a", "b"], {"a": rand(), "b": rand()})
case(E, "mul_rank0_by_matrix", "Mul", ["a", "b"], {"a": rand(), "b": rand(2, 3)})
case(E, "sub_empty_rows", "Sub", ["a", "b"], {"a": rand(0, 3), "b": rand(3)})
case(E, "relu_empty", "Relu", ["x"], {"x": rand(0)})
case(E, "where_three_way_broadcast", "Where", ["c", "x", "y"],
     {"c": rand(3, 1) > 0, "x": rand(1, 4), "y": rand()})
case(E, "pow_row_broadcast", "Pow", ["x", "y"], {"x": pos(2, 3), "y": rand(3)})
case(E, "max_variadic_broadcast", "Max", ["a", "b", "c"], {"a": rand(3), "b": rand(2, 1), "c": rand()})
case(E, "min_single_input", "Min", ["a"], {"a": rand(2, 2)})
case(E, "sum_empty", "Sum", ["a", "b"], {"a": rand(2, 0), "b": rand(1, 0)})
case(E, "clip_rank0_bounds", "Clip", ["x", "lo", "hi"], {"x": rand(5)}, {"lo": np.float32(-0.5), "hi": np.float32(0.5)})
case(E, "clip_min_only", "Clip", ["x", "lo"], {"x": rand(2, 3)}, {"lo": np.float32(0.0)})
case(E, "equal_int64_broadcast", "Equal", ["a", "b"], {"a": rand(2, 1, dtype=np.int64), "b": rand(3, dtype=np.int64)})
case(E, "greater_rank0_vs_vector", "Greater", ["a", "b"], {"a": rand(), "b": rand(4)})
case(E, "and_bool_broadcast", "And", ["a", "b"], {"a": rand(2, 3) > 0, "b": rand(3) > 0})
case(E, "not_empty", "Not", ["a"], {"a": rand(0, 2) > 0})
case(E, "cast_rank0_float_to_int32", "Cast", ["x"], {"x": np.float32(3.75)}, to=TensorProto.INT32)
case(E, "cast_int64_to_float_empty", "Cast", ["x"], {"x": rand(0, 4, dtype=np.int64)}, to=TensorProto.FLOAT)
case(E, "div_int32_positive", "Div", ["a", "b"], {"a": i64(7, 9, 100).astype(np.int32), "b": i64(2, 4, 7).astype(np.int32)})
case(E, "mod_fmod_negative", "Mod", ["a", "b"], {"a": rand(6), "b": pos(6)}, fmod=1)
case(E, "prelu_channel_slope", "PRelu", ["x", "s"], {"x": rand(2, 3, 4)}, {"s": rand(3, 1)})
case(E, "sigmoid_odd_size", "Sigmoid", ["x"], {"x": rand(3, 5, 7)})
case(E, "leakyrelu_rank0", "LeakyRelu", ["x"], {"x": np.float32(-2.0)}, alpha=0.2)

# ---------------------------------------------------------------- matmul

M = "matmul"
case(M, "matmul_vector_vector", "MatMul", ["a", "b"], {"a": rand(5), "b": rand(5)})
case(M, "matmul_vector_matrix", "MatMul", ["a", "b"], {"a": rand(3), "b": rand(3, 4)})
case(M, "matmul_matrix_vector", "MatMul", ["a", "b"], {"a": rand(4, 3), "b": rand(3)})
case(M, "matmul_batch_broadcast", "MatMul", ["a", "b"], {"a": rand(2, 1, 3, 4), "b": rand(5, 4, 2)})
case(M, "matmul_vector_batch", "MatMul", ["a", "b"], {"a": rand(4), "b": rand(2, 4, 3)})
case(M, "matmul_inner_zero", "MatMul", ["a", "b"], {"a": rand(3, 0), "b": rand(0, 4)})
case(M, "matmul_rows_zero", "MatMul", ["a", "b"], {"a": rand(0, 3), "b": rand(3, 4)})
case(M, "matmul_weight_const", "MatMul", ["a", "w"], {"a": rand(2, 7, 33)}, {"w": rand(33, 17)})
case(M, "matmul_int32", "MatMul", ["a", "b"], {"a": rand(3, 4, dtype=np.int32), "b": rand(4, 2, dtype=np.int32)})
case(M, "gemm_transposes_scalar_c", "Gemm", ["a", "b", "c"], {"a": rand(3, 2), "b": rand(4, 3)},
     {"c": np.float32(0.5)}, transA=1, transB=1, alpha=0.5, beta=2.0)
case(M, "gemm_row_c", "Gemm", ["a", "b", "c"], {"a": rand(2, 3), "b": rand(3, 4)}, {"c": rand(1, 4)})
case(M, "gemm_column_c", "Gemm", ["a", "b", "c"], {"a": rand(2, 3), "b": rand(3, 4)}, {"c": rand(2, 1)})
case(M, "gemm_without_c", "Gemm", ["a", "b"], {"a": rand(5, 3), "b": rand(3, 2)})

# ---------------------------------------------------------------- conv

C = "conv"
case(C, "conv1d_stride_dilation", "Conv", ["x", "w", "b"], {"x": rand(1, 2, 11)},
     {"w": rand(3, 2, 3), "b": rand(3)}, strides=[2], dilations=[2])
case(C, "conv3d", "Conv", ["x", "w"], {"x": rand(1, 2, 4, 5, 3)}, {"w": rand(2, 2, 2, 3, 2)})
case(C, "conv_depthwise", "Conv", ["x", "w"], {"x": rand(1, 4, 6, 6)}, {"w": rand(4, 1, 3, 3)}, group=4, pads=[1, 1, 1, 1])
case(C, "conv_groups_two", "Conv", ["x", "w", "b"], {"x": rand(2, 4, 5, 5)}, {"w": rand(6, 2, 3, 3), "b": rand(6)}, group=2)
case(C, "conv_same_upper_stride2", "Conv", ["x", "w"], {"x": rand(1, 1, 6, 7)}, {"w": rand(2, 1, 3, 3)},
     auto_pad="SAME_UPPER", strides=[2, 2])
case(C, "conv_same_lower_even_kernel", "Conv", ["x", "w"], {"x": rand(1, 1, 5, 5)}, {"w": rand(1, 1, 2, 2)},
     auto_pad="SAME_LOWER")
case(C, "conv_asymmetric_pads", "Conv", ["x", "w"], {"x": rand(1, 2, 5, 4)}, {"w": rand(3, 2, 3, 3)}, pads=[0, 1, 2, 0])
case(C, "conv_1x1_no_bias", "Conv", ["x", "w"], {"x": rand(1, 8, 3, 3)}, {"w": rand(5, 8, 1, 1)})
case(C, "convtranspose_output_padding", "ConvTranspose", ["x", "w"], {"x": rand(1, 2, 3, 3)}, {"w": rand(2, 3, 3, 3)},
     strides=[2, 2], output_padding=[1, 0])
case(C, "convtranspose_groups_dilation", "ConvTranspose", ["x", "w", "b"], {"x": rand(1, 4, 3, 4)},
     {"w": rand(4, 1, 2, 2), "b": rand(2)}, group=2, dilations=[2, 1])
case(C, "convtranspose_output_shape", "ConvTranspose", ["x", "w"], {"x": rand(1, 1, 3, 3)}, {"w": rand(1, 2, 3, 3)},
     strides=[3, 2], output_shape=[10, 8])
case(C, "convtranspose_1d_pads", "ConvTranspose", ["x", "w"], {"x": rand(2, 3, 5)}, {"w": rand(3, 2, 4)},
     strides=[2], pads=[1, 2])

# ---------------------------------------------------------------- pool

P = "pool"
case(P, "maxpool_ceil_mode", "MaxPool", ["x"], {"x": rand(1, 2, 6, 7)}, kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1)
case(P, "maxpool_dilations_pads", "MaxPool", ["x"], {"x": rand(1, 1, 7, 7)}, kernel_shape=[2, 2], dilations=[2, 2],
     pads=[1, 1, 1, 1])
case(P, "maxpool_1d_indices", "MaxPool", ["x"], {"x": rand(2, 3, 9)}, outputs=2, kernel_shape=[3], strides=[2])
case(P, "maxpool_3d", "MaxPool", ["x"], {"x": rand(1, 1, 4, 4, 4)}, kernel_shape=[2, 2, 2], strides=[2, 2, 2])
case(P, "averagepool_count_include_pad", "AveragePool", ["x"], {"x": rand(1, 1, 5, 5)}, kernel_shape=[3, 3],
     pads=[1, 1, 1, 1], count_include_pad=1)
case(P, "averagepool_exclude_pad_ceil", "AveragePool", ["x"], {"x": rand(1, 2, 5, 6)}, kernel_shape=[2, 3],
     strides=[2, 2], pads=[1, 0, 1, 1], ceil_mode=1)
case(P, "averagepool_same_lower", "AveragePool", ["x"], {"x": rand(1, 1, 6, 6)}, kernel_shape=[2, 2],
     auto_pad="SAME_LOWER")
case(P, "lppool_p3", "LpPool", ["x"], {"x": rand(1, 2, 5, 5)}, kernel_shape=[2, 2], p=3)
case(P, "globalmaxpool_3d", "GlobalMaxPool", ["x"], {"x": rand(2, 3, 2, 3, 4)})
case(P, "globalaveragepool_1d", "GlobalAveragePool", ["x"], {"x": rand(1, 5, 7)})

# ---------------------------------------------------------------- reduce

R = "reduce"
case(R, "reducesum_negative_axes", "ReduceSum", ["x", "axes"], {"x": rand(2, 3, 4)}, {"axes": i64(-1, -3)}, keepdims=0)
case(R, "reducemean_all_axes", "ReduceMean", ["x"], {"x": rand(2, 3, 4)}, opset=18)
case(R, "reducemax_noop_empty_axes", "ReduceMax", ["x"], {"x": rand(3, 2)}, noop_with_empty_axes=1, opset=18)
case(R, "reducesum_empty_axis", "ReduceSum", ["x", "axes"], {"x": rand(2, 0, 3)}, {"axes": i64(1)})
case(R, "reducesum_rank0", "ReduceSum", ["x"], {"x": rand()}, keepdims=0)
case(R, "reducel2_keepdims", "ReduceL2", ["x", "axes"], {"x": rand(3, 4)}, {"axes": i64(-1)}, opset=18)
case(R, "reducelogsumexp_negative_axis", "ReduceLogSumExp", ["x", "axes"], {"x": rand(2, 5, 3)}, {"axes": i64(-2)},
     keepdims=0, opset=18)
case(R, "reduceprod_middle", "ReduceProd", ["x", "axes"], {"x": pos(2, 3, 2)}, {"axes": i64(1)}, opset=18)
case(R, "reducemin_int32", "ReduceMin", ["x", "axes"], {"x": rand(4, 5, dtype=np.int32)}, {"axes": i64(0)}, opset=18)
case(R, "argmax_negative_axis", "ArgMax", ["x"], {"x": rand(3, 4, 5)}, axis=-2, keepdims=0)
case(R, "argmin_select_last_index", "ArgMin", ["x"], {"x": np.array([[1, 0, 0, 2], [3, 3, 1, 1]], np.float32)},
     axis=1, select_last_index=1)
case(R, "argmax_rank1", "ArgMax", ["x"], {"x": rand(7)})

# ---------------------------------------------------------------- norm

N = "norm"
case(N, "softmax_rank1", "Softmax", ["x"], {"x": rand(6)})
case(N, "softmax_axis_negative2", "Softmax", ["x"], {"x": rand(2, 3, 4)}, axis=-2)
case(N, "logsoftmax_axis0", "LogSoftmax", ["x"], {"x": rand(4, 3)}, axis=0)
case(N, "hardmax_ties", "Hardmax", ["x"], {"x": np.array([[1, 3, 3], [2, 2, 0]], np.float32)})
case(N, "layernorm_axis_negative2", "LayerNormalization", ["x", "s", "b"], {"x": rand(2, 3, 4)},
     {"s": pos(3, 4), "b": rand(3, 4)}, axis=-2)
case(N, "layernorm_three_outputs", "LayerNormalization", ["x", "s"], {"x": rand(2, 5)}, {"s": pos(5)}, outputs=3)
case(N, "batchnorm_rank2", "BatchNormalization", ["x", "s", "b", "m", "v"], {"x": rand(4, 3)},
     {"s": pos(3), "b": rand(3), "m": rand(3), "v": pos(3)})
case(N, "instancenorm_rank3", "InstanceNormalization", ["x", "s", "b"], {"x": rand(2, 3, 5)}, {"s": pos(3), "b": rand(3)})
case(N, "groupnorm_two_groups", "GroupNormalization", ["x", "s", "b"], {"x": rand(2, 4, 3, 2)},
     {"s": pos(4), "b": rand(4)}, num_groups=2)
case(N, "rmsnorm_last_axis", "RMSNormalization", ["x", "s"], {"x": rand(2, 3, 8)}, {"s": pos(8)}, opset=23)
case(N, "lpnormalization_p1_negative_axis", "LpNormalization", ["x"], {"x": rand(3, 4)}, axis=-1, p=1)
case(N, "meanvariancenormalization_axes", "MeanVarianceNormalization", ["x"], {"x": rand(2, 3, 4)}, axes=[0, 2])
# Odd size: onnxruntime refuses even sizes, and the reference evaluator's LRN loops over the batch axis.
case(N, "lrn_strong_alpha", "LRN", ["x"], {"x": rand(2, 5, 3, 3)}, size=3, alpha=0.5, beta=0.6, bias=2.0)

# ---------------------------------------------------------------- shape (views and shape arithmetic)

S = "shape"
case(S, "reshape_zero_and_minus_one", "Reshape", ["x", "s"], {"x": rand(2, 3, 4)}, {"s": i64(0, -1)})
case(S, "reshape_allowzero_empty", "Reshape", ["x", "s"], {"x": rand(0, 3)}, {"s": i64(3, 0)}, allowzero=1)
case(S, "reshape_to_rank0", "Reshape", ["x", "s"], {"x": rand(1, 1)}, {"s": np.zeros(0, np.int64)})
case(S, "squeeze_negative_axes", "Squeeze", ["x", "axes"], {"x": rand(1, 3, 1, 2)}, {"axes": i64(-2, 0)})
case(S, "squeeze_all_ones", "Squeeze", ["x"], {"x": rand(1, 1, 1)})
case(S, "unsqueeze_negative_axes", "Unsqueeze", ["x", "axes"], {"x": rand(3, 2)}, {"axes": i64(-1, 1)})
case(S, "unsqueeze_rank0", "Unsqueeze", ["x", "axes"], {"x": rand()}, {"axes": i64(0)})
case(S, "flatten_negative_axis", "Flatten", ["x"], {"x": rand(2, 3, 4, 5)}, axis=-2)
case(S, "flatten_axis0", "Flatten", ["x"], {"x": rand(2, 3)}, axis=0)
case(S, "transpose_rank5", "Transpose", ["x"], {"x": rand(2, 1, 3, 2, 2)}, perm=[4, 2, 0, 3, 1])
case(S, "transpose_default_reverses", "Transpose", ["x"], {"x": rand(2, 3, 4)})
case(S, "transpose_empty", "Transpose", ["x"], {"x": rand(0, 3)}, perm=[1, 0])
case(S, "shape_start_end_negative", "Shape", ["x"], {"x": rand(2, 3, 4, 5)}, start=-3, end=-1)
case(S, "size_rank0", "Size", ["x"], {"x": rand()})
case(S, "expand_rank_increase", "Expand", ["x", "s"], {"x": rand(3, 1)}, {"s": i64(2, 1, 4)})
case(S, "expand_rank0", "Expand", ["x", "s"], {"x": rand()}, {"s": i64(2, 2)})
case(S, "identity_rank0", "Identity", ["x"], {"x": rand()})

# ---------------------------------------------------------------- movement

V = "movement"
case(V, "concat_negative_axis_with_empty", "Concat", ["a", "b", "c"],
     {"a": rand(2, 0), "b": rand(2, 3), "c": rand(2, 1)}, axis=-1)
case(V, "concat_rank1_many", "Concat", ["a", "b", "c", "d"], {"a": rand(1), "b": rand(3), "c": rand(2), "d": rand(1)}, axis=0)
case(V, "slice_negative_steps", "Slice", ["x", "st", "en", "ax", "sp"], {"x": rand(10)},
     {"st": i64(-1), "en": i64(-1000000), "ax": i64(0), "sp": i64(-2)})
case(V, "slice_clamped_ends", "Slice", ["x", "st", "en", "ax"], {"x": rand(3, 5)},
     {"st": i64(1, -100), "en": i64(1000, 3), "ax": i64(-1, 0)})
case(V, "slice_to_empty", "Slice", ["x", "st", "en"], {"x": rand(4, 3)}, {"st": i64(3), "en": i64(1)})
case(V, "gather_negative_indices", "Gather", ["x", "i"], {"x": rand(5, 3)}, {"i": i64(-1, 0, -5)})
case(V, "gather_rank0_index", "Gather", ["x", "i"], {"x": rand(3, 4)}, {"i": np.array(-2, np.int64)}, axis=1)
case(V, "gather_runtime_indices_axis_negative", "Gather", ["x", "i"], {"x": rand(2, 4, 3), "i": i64(3, 0, 3)}, axis=-2)
case(V, "gatherelements_negative_axis", "GatherElements", ["x", "i"], {"x": rand(3, 4)},
     {"i": np.array([[0, -1], [2, 1], [-4, 3]], np.int64)}, axis=-1)
case(V, "gathernd_batch_dims", "GatherND", ["x", "i"], {"x": rand(2, 3, 4)}, {"i": np.array([[[1, 2]], [[0, -1]]], np.int64)},
     batch_dims=1)
case(V, "pad_reflect", "Pad", ["x", "p"], {"x": rand(1, 3, 4)}, {"p": i64(0, 1, 2, 0, 2, 1)}, mode="reflect")
case(V, "pad_edge", "Pad", ["x", "p"], {"x": rand(2, 3)}, {"p": i64(2, 0, 1, 3)}, mode="edge")
case(V, "pad_wrap", "Pad", ["x", "p"], {"x": rand(3, 4)}, {"p": i64(1, 3, 2, 1)}, mode="wrap")
case(V, "pad_negative_crops", "Pad", ["x", "p", "v"], {"x": rand(4, 5)}, {"p": i64(-1, 2, 0, -2), "v": np.float32(1.5)})
case(V, "pad_axes_negative", "Pad", ["x", "p", "", "a"], {"x": rand(2, 3, 2)}, {"p": i64(1, 1), "a": i64(-2)})
case(V, "tile_rank3", "Tile", ["x", "r"], {"x": rand(2, 1, 3)}, {"r": i64(1, 3, 2)})
case(V, "tile_zero_repeat", "Tile", ["x", "r"], {"x": rand(2, 3)}, {"r": i64(0, 2)})
case(V, "split_uneven_num_outputs", "Split", ["x"], {"x": rand(7, 2)}, outputs=3, axis=0, num_outputs=3, opset=18)
case(V, "split_negative_axis_sizes", "Split", ["x", "s"], {"x": rand(2, 6)}, {"s": i64(1, 0, 5)}, outputs=3, axis=-1)
case(V, "trilu_lower_negative_k", "Trilu", ["x", "k"], {"x": rand(4, 5)}, {"k": np.array(-1, np.int64)}, upper=0)
case(V, "trilu_upper_batched", "Trilu", ["x", "k"], {"x": rand(2, 3, 3)}, {"k": np.array(1, np.int64)})
case(V, "cumsum_reverse_exclusive", "CumSum", ["x", "a"], {"x": rand(3, 4)}, {"a": np.array(-1, np.int64)},
     reverse=1, exclusive=1)
case(V, "depthtospace_crd", "DepthToSpace", ["x"], {"x": rand(1, 8, 2, 3)}, blocksize=2, mode="CRD")
case(V, "spacetodepth", "SpaceToDepth", ["x"], {"x": rand(2, 2, 4, 6)}, blocksize=2)
case(V, "onehot_negative_axis", "OneHot", ["i", "d", "v"], {"i": i64(0, 2, -1, 1)},
     {"d": np.array(3, np.int64), "v": np.array([-1, 5], np.float32)}, axis=-2)
case(V, "range_float", "Range", ["s", "l", "d"], {}, {"s": np.float32(1.0), "l": np.float32(2.9), "d": np.float32(0.4)})
case(V, "range_empty", "Range", ["s", "l", "d"], {}, {"s": np.array(5, np.int64), "l": np.array(1, np.int64),
                                                     "d": np.array(2, np.int64)})
case(V, "eyelike_negative_k", "EyeLike", ["x"], {"x": rand(3, 4)}, k=-1)
case(V, "constantofshape_empty", "ConstantOfShape", ["s"], {}, {"s": i64(2, 0)},
     value=numpy_helper.from_array(np.array([7], np.float32)))
case(V, "reversesequence_time_major", "ReverseSequence", ["x", "l"], {"x": rand(4, 2, 3)},
     {"l": i64(3, 1)}, batch_axis=1, time_axis=0)

# ---------------------------------------------------------------- resize

Z = "resize"
case(Z, "resize_linear_align_corners", "Resize", ["x", "", "sc"], {"x": rand(1, 1, 3, 4)},
     {"sc": np.array([1, 1, 2, 1.5], np.float32)}, mode="linear", coordinate_transformation_mode="align_corners")
case(Z, "resize_nearest_ceil_half_pixel", "Resize", ["x", "", "sc"], {"x": rand(1, 2, 2, 3)},
     {"sc": np.array([1, 1, 2.5, 1.7], np.float32)}, mode="nearest", nearest_mode="round_prefer_ceil")
case(Z, "resize_cubic_downsample", "Resize", ["x", "", "sc"], {"x": rand(1, 1, 8, 8)},
     {"sc": np.array([1, 1, 0.5, 0.75], np.float32)}, mode="cubic")
case(Z, "resize_sizes_not_larger", "Resize", ["x", "", "", "sz"], {"x": rand(1, 1, 4, 6)},
     {"sz": i64(3, 5)}, axes=[2, 3], keep_aspect_ratio_policy="not_larger", mode="linear")
case(Z, "resize_linear_antialias", "Resize", ["x", "", "sc"], {"x": rand(1, 1, 8, 6)},
     {"sc": np.array([1, 1, 0.5, 0.5], np.float32)}, mode="linear", antialias=1)

# ---------------------------------------------------------------- scatter

X = "scatter"
case(X, "scatterelements_negative_axis_add", "ScatterElements", ["x", "i", "u"], {"x": rand(3, 4), "u": rand(3, 2)},
     {"i": np.array([[0, -1], [1, 1], [3, 0]], np.int64)}, axis=-1, reduction="add")
case(X, "scatterelements_max_duplicates", "ScatterElements", ["x", "i", "u"], {"x": rand(4), "u": rand(4)},
     {"i": i64(1, 1, 3, 1)}, reduction="max")
case(X, "scatternd_negative_indices", "ScatterND", ["x", "i", "u"], {"x": rand(4, 3), "u": rand(2, 3)},
     {"i": np.array([[-1], [0]], np.int64)})
case(X, "scatternd_mul_slices", "ScatterND", ["x", "i", "u"], {"x": rand(2, 3, 2), "u": rand(2, 2)},
     {"i": np.array([[0, 1], [1, 2]], np.int64)}, reduction="mul")

# ---------------------------------------------------------------- select (data-dependent lengths)

L = "select"
case(L, "nonzero_matrix", "NonZero", ["x"], {"x": np.array([[0, 1, 0], [2, 0, 3]], np.float32)})
case(L, "nonzero_all_zero", "NonZero", ["x"], {"x": np.zeros((2, 3), np.float32)})
case(L, "compress_negative_axis", "Compress", ["x", "c"], {"x": rand(2, 4)},
     {"c": np.array([True, False, True], bool)}, axis=-1)
case(L, "compress_flat", "Compress", ["x", "c"], {"x": rand(2, 3)}, {"c": np.array([0, 1, 1, 0, 1], bool)})
case(L, "unique_sorted_flat", "Unique", ["x"], {"x": np.array([2, 1, 1, 3, 4, 3], np.float32)}, outputs=4)

# ---------------------------------------------------------------- sort

T = "sort"
case(T, "topk_negative_axis", "TopK", ["x", "k"], {"x": rand(3, 5)}, {"k": i64(2)}, outputs=2, axis=-1)
case(T, "topk_smallest_axis0", "TopK", ["x", "k"], {"x": rand(6, 2)}, {"k": i64(3)}, outputs=2, axis=0, largest=0)
case(T, "topk_ties_lower_index_first", "TopK", ["x", "k"], {"x": np.array([1, 3, 3, 2, 3], np.float32)},
     {"k": i64(3)}, outputs=2)

# ---------------------------------------------------------------- einsum

I = "einsum"
case(I, "einsum_trace", "Einsum", ["x"], {"x": rand(4, 4)}, equation="ii->")
case(I, "einsum_outer", "Einsum", ["a", "b"], {"a": rand(3), "b": rand(4)}, equation="i,j->ij")
case(I, "einsum_batch_matmul", "Einsum", ["a", "b"], {"a": rand(2, 3, 4), "b": rand(2, 4, 5)}, equation="bij,bjk->bik")
case(I, "einsum_implicit_transpose_sum", "Einsum", ["x"], {"x": rand(3, 4, 2)}, equation="kji")
case(I, "einsum_ellipsis_broadcast", "Einsum", ["a", "b"], {"a": rand(2, 1, 3), "b": rand(4, 3)},
     equation="...i,ji->...j")

# ---------------------------------------------------------------- quant

Q = "quant"
case(Q, "quantize_per_axis_negative", "QuantizeLinear", ["x", "s", "z"], {"x": rand(2, 3, 4)},
     {"s": pos(3) / 10, "z": np.array([0, 10, -5], np.int8)}, axis=-2)
case(Q, "dequantize_rank0_scale", "DequantizeLinear", ["x", "s", "z"], {"x": rand(5, dtype=np.int32).astype(np.uint8)},
     {"s": np.float32(0.25), "z": np.uint8(3)})
case(Q, "quantize_blocked", "QuantizeLinear", ["x", "s"], {"x": rand(2, 8)}, {"s": pos(2, 2) / 10},
     axis=1, block_size=4, output_dtype=TensorProto.INT8)
case(Q, "dynamicquantizelinear_negative", "DynamicQuantizeLinear", ["x"], {"x": rand(3, 4)}, outputs=3)
case(Q, "matmulinteger_zero_points", "MatMulInteger", ["a", "b", "za", "zb"],
     {"a": rand(3, 4, dtype=np.int32).astype(np.uint8)},
     {"b": rand(4, 2, dtype=np.int32).astype(np.uint8), "za": np.uint8(2), "zb": np.array([1, 3], np.uint8)})



def nbits_case(name, m, k, n, bits, block, zero_points):
    """onnxruntime's MatMulNBits (com.microsoft): B as random packed codes.
    K long enough that the GEMV's threads take several words each, and not
    a multiple of the block (padded codes ignored)."""
    blocks = -(-k // block)
    blob = block * bits // 8
    gen = np.random.default_rng(len(name) * 7919 + k)
    consts = {"b": gen.integers(0, 256, (n, blocks, blob), dtype=np.uint8),
              "s": (gen.random(n * blocks, dtype=np.float32) * 0.02 + 0.005).astype(np.float32)}
    args = ["a", "b", "s"]
    if zero_points:
        consts["z"] = gen.integers(0, 256, n * -(-blocks * bits // 8), dtype=np.uint8)
        args.append("z")
    # A local generator: the cases after these keep their data.
    case(Q, name, "MatMulNBits", args, {"a": gen.standard_normal((m, k)).astype(np.float32)}, consts, domain="com.microsoft", opset=1,
         K=k, N=n, bits=bits, block_size=block)


nbits_case("matmulnbits_int4_gemv_long_k", 1, 2100, 33, 4, 32, False)
nbits_case("matmulnbits_int8_gemv_rows_zero_points", 3, 1536, 20, 8, 64, True)
nbits_case("matmulnbits_int4_gemm_zero_points", 20, 256, 70, 4, 32, True)
# 257 units of four words per row: each GEMV thread loads four at once.
nbits_case("matmulnbits_int8_gemv_batched_loads", 1, 4100, 8, 8, 32, True)

# ---------------------------------------------------------------- rnn

N2 = "rnn"
H = 3
case(N2, "lstm_one_step_batch1", "LSTM", ["x", "w", "r", "b"], {"x": rand(1, 1, 2)},
     {"w": rand(1, 4 * H, 2), "r": rand(1, 4 * H, H), "b": rand(1, 8 * H)}, outputs=3, hidden_size=H)
case(N2, "gru_reverse_initial_h", "GRU", ["x", "w", "r", "b", "", "h"], {"x": rand(4, 2, 3)},
     {"w": rand(1, 3 * H, 3), "r": rand(1, 3 * H, H), "b": rand(1, 6 * H), "h": rand(1, 2, H)},
     outputs=2, hidden_size=H, direction="reverse")
case(N2, "rnn_bidirectional", "RNN", ["x", "w", "r"], {"x": rand(3, 1, 2)},
     {"w": rand(2, H, 2), "r": rand(2, H, H)}, outputs=2, hidden_size=H, direction="bidirectional")

# ---------------------------------------------------------------- loss

O = "loss"
case(O, "softmaxcrossentropy_ignore_index", "SoftmaxCrossEntropyLoss", ["x", "y"], {"x": rand(4, 3)},
     {"y": i64(0, 2, -1, 1)}, ignore_index=-1, reduction="mean")
case(O, "nllloss_rank3_sum", "NegativeLogLikelihoodLoss", ["x", "y"], {"x": rand(2, 3, 2)},
     {"y": np.array([[0, 2], [1, 1]], np.int64)}, reduction="sum")

# ---------------------------------------------------------------- signal

G = "signal"
case(G, "dft_onesided_axis", "DFT", ["x", "", "a"], {"x": rand(1, 8, 1)}, {"a": np.array(1, np.int64)}, onesided=1)
case(G, "hannwindow_symmetric", "HannWindow", ["n"], {}, {"n": np.array(7, np.int64)}, periodic=0)
case(G, "stft_hop", "STFT", ["x", "step", "w"], {"x": rand(1, 32, 1)},
     {"step": np.array(4, np.int64), "w": np.hanning(8).astype(np.float32)}, onesided=1)

# ---------------------------------------------------------------- sample

A = "sample"
case(A, "gridsample_bilinear_align_corners", "GridSample", ["x", "g"], {"x": rand(1, 2, 4, 5)},
     {"g": (RNG.random((1, 3, 2, 2)) * 2.4 - 1.2).astype(np.float32)}, align_corners=1)
case(A, "gridsample_nearest_reflection", "GridSample", ["x", "g"], {"x": rand(1, 1, 3, 3)},
     {"g": (RNG.random((1, 2, 4, 2)) * 3 - 1.5).astype(np.float32)}, mode="nearest", padding_mode="reflection")
case(A, "roialign_avg", "RoiAlign", ["x", "r", "b"], {"x": rand(1, 2, 6, 6)},
     {"r": np.array([[0.5, 0.5, 4.0, 3.5], [1.0, 0.0, 5.0, 5.0]], np.float32), "b": i64(0, 0)},
     output_height=2, output_width=3, sampling_ratio=2)

# ---------------------------------------------------------------- attention and transformer blocks

AT = "attention"
case(AT, "attention_causal_gqa", "Attention", ["q", "k", "v"], {"q": rand(1, 4, 3, 8), "k": rand(1, 2, 5, 8),
                                                               "v": rand(1, 2, 5, 8)}, is_causal=1, opset=23)
case(AT, "attention_3d_bool_mask", "Attention", ["q", "k", "v", "m"], {"q": rand(2, 3, 8), "k": rand(2, 4, 8),
                                                                       "v": rand(2, 4, 8)},
     {"m": rand(3, 4) > -1.0}, q_num_heads=2, kv_num_heads=2, opset=23)
case(AT, "rotaryembedding_interleaved", "RotaryEmbedding", ["x", "c", "s", "p"], {"x": rand(1, 2, 3, 4)},
     {"c": rand(6, 2), "s": rand(6, 2), "p": np.array([[0, 2, 5]], np.int64)}, interleaved=1, opset=23)

# ---------------------------------------------------------------- training

TR = "training"
case(TR, "adam_one_tensor", "Adam", ["r", "t", "x", "g", "v", "h"], {"x": rand(3), "g": rand(3)},
     {"r": np.float32(0.1), "t": np.int64(2), "v": rand(3), "h": pos(3)}, outputs=3,
     domain="ai.onnx.preview.training", opset=1, alpha=0.9, beta=0.99, epsilon=1e-6)


# More corners: legacy axis semantics, integer and bool data through every kind of kernel, empty operands.
case(N, "softmax_opset11_flattens_from_axis", "Softmax", ["x"], {"x": rand(2, 3, 4)}, axis=1, opset=11)
case(N, "softmax_empty_batch", "Softmax", ["x"], {"x": rand(0, 5)})
case(M, "matmul_empty_batch", "MatMul", ["a", "b"], {"a": rand(0, 2, 3), "b": rand(3, 4)})
case(V, "concat_all_empty", "Concat", ["a", "b"], {"a": rand(0, 2), "b": rand(0, 2)}, axis=0)
case(V, "gather_empty_indices", "Gather", ["x", "i"], {"x": rand(4, 3)}, {"i": np.zeros((0,), np.int64)})
case(V, "gather_int64_data", "Gather", ["x", "i"], {"x": rand(5, 2, dtype=np.int64)}, {"i": np.array([[4, 0], [-1, 2]], np.int64)})
case(E, "where_int64_values", "Where", ["c", "x", "y"], {"c": rand(2, 3) > 0, "x": rand(2, 3, dtype=np.int64),
                                                       "y": np.array(-7, np.int64)})
case(S, "expand_to_empty", "Expand", ["x", "s"], {"x": rand(1, 3)}, {"s": i64(0, 1)})
case(E, "mean_variadic_broadcast", "Mean", ["a", "b", "c"], {"a": rand(2, 3), "b": rand(3), "c": rand(1, 1)})
case(V, "cumsum_int32_axis0", "CumSum", ["x", "a"], {"x": rand(4, 3, dtype=np.int32)}, {"a": np.array(0, np.int32)})
case(R, "argmax_int32_ties_first", "ArgMax", ["x"], {"x": np.array([[3, 7, 7], [1, 1, 0]], np.int32)}, axis=1)
case(R, "reducesum_int64_keepdims", "ReduceSum", ["x", "axes"], {"x": rand(3, 4, dtype=np.int64)}, {"axes": i64(1)})
case(R, "reducemean_rank0_axes_empty_noop", "ReduceMean", ["x"], {"x": rand(3)}, keepdims=0, opset=18)
case(E, "bitwise_and_uint8_broadcast", "BitwiseAnd", ["a", "b"], {"a": np.array([[255, 17], [3, 128]], np.uint8),
                                                                "b": np.array([15, 240], np.uint8)}, opset=18)
case(E, "isnan_isinf_mix", "IsInf", ["x"], {"x": np.array([np.inf, -np.inf, np.nan, 1.0], np.float32)}, detect_negative=0)
case(E, "sign_zero_and_negatives", "Sign", ["x"], {"x": np.array([-2.5, 0.0, -0.0, 3.0], np.float32)})
case(E, "round_half_to_even", "Round", ["x"], {"x": np.array([0.5, 1.5, 2.5, -0.5, -1.5, 2.4999], np.float32)})
case(S, "transpose_int64", "Transpose", ["x"], {"x": rand(2, 3, dtype=np.int64)}, perm=[1, 0])
case(V, "slice_rank1_step3_negative_start", "Slice", ["x", "st", "en", "ax", "sp"], {"x": rand(11)},
     {"st": i64(-10), "en": i64(100), "ax": i64(-1), "sp": i64(3)})
case(V, "tile_bool", "Tile", ["x", "r"], {"x": rand(2, 2) > 0}, {"r": i64(2, 1)})
case(P, "maxpool_int8", "MaxPool", ["x"], {"x": rand(1, 1, 4, 4, dtype=np.int8)}, kernel_shape=[2, 2], strides=[2, 2])
case(C, "conv_batch3_stride_pads", "Conv", ["x", "w", "b"], {"x": rand(3, 2, 7, 6)}, {"w": rand(4, 2, 3, 2), "b": rand(4)},
     strides=[2, 3], pads=[1, 0, 2, 1])

# ---------------------------------------------------------------- writing


def build_model(c: Case) -> onnx.ModelProto:
    graph_inputs = [
        helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
        for n, a in c.inputs.items()
    ]
    inits = [numpy_helper.from_array(np.asarray(a), n) for n, a in c.consts.items()]
    outs = [f"y{i}" for i in range(c.outputs)]
    node = helper.make_node(c.op, c.args, outs, name=f"{c.name}_node", domain=c.domain, **c.attrs)
    graph_outputs = [helper.make_empty_tensor_value_info(o) for o in outs]
    graph = helper.make_graph([node], c.name, graph_inputs, graph_outputs, initializer=inits)
    opsets = [helper.make_opsetid(c.domain, c.opset)]
    if c.domain:
        opsets.append(helper.make_opsetid("", DEFAULT_OPSET))
    model = helper.make_model(graph, opset_imports=opsets, producer_name="drift-edge-tests")
    model.ir_version = 10
    return model


def reference_outputs(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> tuple[list[np.ndarray], str]:
    """onnxruntime's outputs, or the ONNX reference evaluator's where onnxruntime cannot run the op."""
    try:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        opts.intra_op_num_threads = 1
        sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        return sess.run(None, feeds), "onnxruntime"
    except Exception as e:  # noqa: BLE001 - any failure means "use the reference evaluator"
        reason = str(e).splitlines()[0][:120]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        outs = ReferenceEvaluator(model).run(None, feeds)
    # The evaluator computes some ops in float64 (Adam); the op's outputs have the types shape inference gives.
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True).graph.output
    types = [helper.tensor_dtype_to_np_dtype(o.type.tensor_type.elem_type) for o in inferred]
    return [np.asarray(o).astype(t) for o, t in zip(outs, types)], f"onnx.reference (onnxruntime: {reason})"


def write_case(c: Case) -> str:
    model = build_model(c)
    outs, source = reference_outputs(model, c.inputs)
    # Record the output types the reference produced, so the model is fully typed.
    del model.graph.output[:]
    for i, o in enumerate(outs):
        dtype = helper.np_dtype_to_tensor_dtype(o.dtype)
        model.graph.output.append(helper.make_tensor_value_info(f"y{i}", dtype, o.shape))
    onnx.checker.check_model(model)
    case_dir = EDGE_DIR / c.family / c.name
    shutil.rmtree(case_dir, ignore_errors=True)
    data = case_dir / "test_data_set_0"
    data.mkdir(parents=True)
    (case_dir / "model.onnx").write_bytes(model.SerializeToString())
    for i, (n, a) in enumerate(c.inputs.items()):
        (data / f"input_{i}.pb").write_bytes(numpy_helper.from_array(np.asarray(a), n).SerializeToString())
    for i, o in enumerate(outs):
        (data / f"output_{i}.pb").write_bytes(numpy_helper.from_array(np.asarray(o), f"y{i}").SerializeToString())
    meta = {"rtol": RTOL, "atol": ATOL, "reference": source}
    (case_dir / "meta.json").write_text(json.dumps(meta, sort_keys=True) + "\n")
    return source


def main() -> int:
    only = set(sys.argv[1:])
    names = [f"{c.family}/{c.name}" for c in CASES]
    assert len(names) == len(set(names)), "case names must be unique"
    families = sorted({c.family for c in CASES})
    for fam in families:
        if only and fam not in only:
            continue
        shutil.rmtree(EDGE_DIR / fam, ignore_errors=True)
        cases = [c for c in CASES if c.family == fam]
        by_ref = [write_case(c) for c in cases]
        n_ref = sum(s != "onnxruntime" for s in by_ref)
        print(f"  {fam:<12} {len(cases):3d} cases ({n_ref} by the ONNX reference evaluator)")
    print(f"  {'total':<12} {len(CASES):3d} cases")
    return 0


if __name__ == "__main__":
    sys.exit(main())
