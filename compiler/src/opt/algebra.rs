//! Algebraic rewrites: BatchNormalization into a per-channel scale and
//! shift, folded into the weights of the Conv or Gemm before it; chains of
//! transposes and of reshape-like views collapsed or cancelled; scalar
//! scales of MatMul operands moved after the product.

use super::rewrite::{Ctx, Pass, Patch, Ref, Rule, attrs};
use crate::ir::{NodeId, ValueId};
use drift_ops::{Attr, DType, Tensor};

pub const BATCH_NORM: Pass = Pass {
    name: "fold-batch-norm",
    rules: &[
        // BatchNormalization(x) -> x * s + t, s = scale / sqrt(var + eps), t = B - mean * s
        Rule { name: "batch-norm-affine", roots: &["BatchNormalization"], apply: batch_norm_affine },
        // Conv(x, W, b) * s[c] -> Conv(x, W * s[c], b * s[c])
        Rule { name: "conv-scale", roots: &["Mul"], apply: conv_scale },
        // Conv(x, W, b) + t[c] -> Conv(x, W, b + t[c])
        Rule { name: "conv-shift", roots: &["Add"], apply: conv_shift },
        // Gemm(A, B, C) * s[n] -> Gemm(A, B * s[n], C * s[n])
        Rule { name: "gemm-scale", roots: &["Mul"], apply: gemm_scale },
        // Gemm(A, B, C) + t[n] -> Gemm(A, B, C + t[n])
        Rule { name: "gemm-shift", roots: &["Add"], apply: gemm_shift },
    ],
};

pub const TRANSPOSES: Pass = Pass {
    name: "fold-transposes-and-reshapes",
    rules: &[
        // Transpose(Transpose(x, p), q) -> Transpose(x, p∘q), or x for the identity
        Rule { name: "transpose-transpose", roots: &["Transpose"], apply: transpose_transpose },
        // Transpose(x) moving only size-1 axes -> Reshape(x)
        Rule { name: "transpose-as-reshape", roots: &["Transpose"], apply: transpose_as_reshape },
        // Reshape(Reshape(x)) -> Reshape(x) (any chain of Reshape, Flatten, Squeeze, Unsqueeze)
        Rule { name: "reshape-reshape", roots: VIEWS, apply: reshape_reshape },
    ],
};

pub const SCALES: Pass = Pass {
    name: "hoist-scales",
    rules: &[
        // MatMul(x * a, y * b) -> MatMul(x, y) * (a * b), a and b scalar constants
        // (PyTorch's SDPA export scales Q and Kᵀ by sqrt(scale) each)
        Rule { name: "matmul-scaled-operand", roots: &["MatMul"], apply: matmul_scaled_operand },
    ],
};

/// Ops that only reinterpret the shape: the bytes stay as they are.
const VIEWS: &[&str] = &["Reshape", "Flatten", "Squeeze", "Unsqueeze"];

fn batch_norm_affine(cx: &Ctx, id: NodeId) -> Option<Patch> {
    let n = cx.node(id);
    if n.outputs.iter().skip(1).flatten().any(|&v| cx.used(v)) || n.attrs.int("training_mode", 0).ok()? != 0 {
        return None;
    }
    let x = cx.input(id, 0)?;
    let param = |k| cx.input(id, k).and_then(|v| cx.constant(v)).map(|t| t.to_f64());
    let (scale, bias, mean, var) = (param(1)?, param(2)?, param(3)?, param(4)?);
    let eps = n.attrs.float("epsilon", 1e-5).ok()? as f64;
    let xt = cx.ty(x);
    let c = *xt.shape.get(1)?;
    if [&scale, &bias, &mean, &var].iter().any(|p| p.len() != c) || !xt.dtype.is_float() {
        return None;
    }
    let s: Vec<f64> = (0..c).map(|k| scale[k] / (var[k] + eps).sqrt()).collect();
    let t: Vec<f64> = (0..c).map(|k| bias[k] - mean[k] * s[k]).collect();
    let mut shape = vec![c];
    shape.extend(std::iter::repeat_n(1, xt.rank().saturating_sub(2)));
    let mut p = Patch::new();
    let sc = p.constant(Tensor::from_f64(xt.dtype, shape.clone(), s));
    let tc = p.constant(Tensor::from_f64(xt.dtype, shape, t));
    let m = p.node("Mul", Default::default(), vec![Some(Ref::Old(x)), Some(sc)]);
    let y = p.node("Add", Default::default(), vec![Some(m), Some(tc)]);
    Some(p.replace(cx.output(id, 0)?, y))
}

/// For `op(a, b)` with one side produced by an `op_type` node used only
/// here and the other a constant varying at most along `axis` of the
/// output: (producer, per-channel values).
fn channel_operand(cx: &Ctx, id: NodeId, op_type: &str, axis: usize) -> Option<(NodeId, Vec<f64>)> {
    let y = cx.output(id, 0)?;
    let out = cx.ty(y);
    for (a, b) in [(cx.input(id, 0)?, cx.input(id, 1)?), (cx.input(id, 1)?, cx.input(id, 0)?)] {
        let Some(p) = cx.produced_by(a, op_type) else { continue };
        let Some(c) = cx.constant(b) else { continue };
        if !cx.only_used_by(a, id) || cx.ty(a) != out || c.rank() > out.rank() {
            continue;
        }
        let off = out.rank() - c.rank();
        let varies_elsewhere = c.shape.iter().enumerate().any(|(d, &n)| n != 1 && d + off != axis);
        if varies_elsewhere {
            continue;
        }
        let vals = c.to_f64();
        let channels = out.shape[axis];
        let per = if vals.len() == 1 { vec![vals[0]; channels] } else { vals };
        if per.len() == channels {
            return Some((p, per));
        }
    }
    None
}

/// A Conv whose weight (and bias, if any) are float constants.
fn conv_params<'a>(cx: &Ctx<'a>, conv: NodeId) -> Option<(&'a Tensor, Option<&'a Tensor>)> {
    let w = cx.constant(cx.input(conv, 1)?)?;
    let b = match cx.input(conv, 2) {
        Some(b) => Some(cx.constant(b)?),
        None => None,
    };
    w.dtype.is_float().then_some((w, b))
}

fn conv_scale(cx: &Ctx, id: NodeId) -> Option<Patch> {
    let (conv, s) = channel_operand(cx, id, "Conv", 1)?;
    let (w, b) = conv_params(cx, conv)?;
    let m = w.shape[0];
    let per = w.len() / m.max(1);
    let wv: Vec<f64> = w.to_f64().iter().enumerate().map(|(i, &x)| x * s[i / per]).collect();
    let bv: Vec<f64> = match b {
        Some(b) => b.to_f64().iter().zip(&s).map(|(x, k)| x * k).collect(),
        None => vec![0.0; m],
    };
    new_conv(cx, id, conv, Tensor::from_f64(w.dtype, w.shape.clone(), wv), Some(bv))
}

fn conv_shift(cx: &Ctx, id: NodeId) -> Option<Patch> {
    let (conv, t) = channel_operand(cx, id, "Conv", 1)?;
    let (w, b) = conv_params(cx, conv)?;
    let bv: Vec<f64> = match b {
        Some(b) => b.to_f64().iter().zip(&t).map(|(x, k)| x + k).collect(),
        None => t,
    };
    new_conv(cx, id, conv, w.clone(), Some(bv))
}

/// The Conv `conv` with new weights and bias, replacing node `id`'s output.
fn new_conv(cx: &Ctx, id: NodeId, conv: NodeId, w: Tensor, bias: Option<Vec<f64>>) -> Option<Patch> {
    let n = cx.node(conv);
    let mut p = Patch::new();
    let dtype = w.dtype;
    let wc = p.constant(w);
    let mut inputs = vec![Some(Ref::Old(cx.input(conv, 0)?)), Some(wc)];
    if let Some(b) = bias {
        let len = b.len();
        inputs.push(Some(p.constant(Tensor::from_f64(dtype, vec![len], b))));
    }
    let y = p.node("Conv", n.attrs.clone(), inputs);
    Some(p.replace(cx.output(id, 0)?, y).at(conv))
}

/// A Gemm with constant float B (and C, if any), and its attributes.
struct GemmParts<'a> {
    b: &'a Tensor,
    c: Option<&'a Tensor>,
    trans_b: bool,
    beta: f64,
}

fn gemm_parts<'a>(cx: &Ctx<'a>, gemm: NodeId) -> Option<GemmParts<'a>> {
    let n = cx.node(gemm);
    let b = cx.constant(cx.input(gemm, 1)?)?;
    let c = match cx.input(gemm, 2) {
        Some(c) => Some(cx.constant(c)?),
        None => None,
    };
    (b.dtype.is_float() && b.rank() == 2).then_some(())?;
    Some(GemmParts {
        b,
        c,
        trans_b: n.attrs.int("transB", 0).ok()? != 0,
        beta: n.attrs.float("beta", 1.0).ok()? as f64,
    })
}

/// Gemm's C as a full `[m, n]` matrix (it broadcasts).
fn full_bias(c: Option<&Tensor>, m: usize, n: usize) -> Vec<f64> {
    let Some(c) = c else { return vec![0.0; m * n] };
    let v = c.to_f64();
    let idx = drift_ops::families::elementwise::broadcast_indices(&[m, n], &c.shape, m * n);
    idx.iter().map(|&i| v[i]).collect()
}

fn gemm_scale(cx: &Ctx, id: NodeId) -> Option<Patch> {
    let (gemm, s) = channel_operand(cx, id, "Gemm", 1)?;
    let g = gemm_parts(cx, gemm)?;
    let (rows, cols) = (g.b.shape[0], g.b.shape[1]);
    let bv: Vec<f64> =
        g.b.to_f64().iter().enumerate().map(|(i, &x)| x * if g.trans_b { s[i / cols] } else { s[i % cols] }).collect();
    let y = cx.ty(cx.output(gemm, 0)?);
    let (m, n) = (y.shape[0], y.shape[1]);
    let c: Vec<f64> = full_bias(g.c, m, n).iter().enumerate().map(|(i, &x)| x * s[i % n]).collect();
    new_gemm(cx, id, gemm, Tensor::from_f64(g.b.dtype, vec![rows, cols], bv), g.c.map(|_| (c, vec![m, n])), g.beta)
}

fn gemm_shift(cx: &Ctx, id: NodeId) -> Option<Patch> {
    let (gemm, t) = channel_operand(cx, id, "Gemm", 1)?;
    let g = gemm_parts(cx, gemm)?;
    let y = cx.ty(cx.output(gemm, 0)?);
    let (m, n) = (y.shape[0], y.shape[1]);
    let beta = if g.c.is_some() { g.beta } else { 1.0 };
    if beta == 0.0 {
        return None;
    }
    // C' = C + t / beta, so that beta * C' = beta * C + t.
    let c: Vec<f64> = full_bias(g.c, m, n).iter().enumerate().map(|(i, &x)| x + t[i % n] / beta).collect();
    new_gemm(cx, id, gemm, g.b.clone(), Some((c, vec![m, n])), beta)
}

fn new_gemm(
    cx: &Ctx,
    id: NodeId,
    gemm: NodeId,
    b: Tensor,
    c: Option<(Vec<f64>, Vec<usize>)>,
    beta: f64,
) -> Option<Patch> {
    let n = cx.node(gemm);
    let mut a = n.attrs.clone();
    a.0.insert("beta".into(), Attr::Float(beta as f32));
    let mut p = Patch::new();
    let dtype = b.dtype;
    let bc = p.constant(b);
    let mut inputs = vec![Some(Ref::Old(cx.input(gemm, 0)?)), Some(bc)];
    if let Some((c, shape)) = c {
        inputs.push(Some(p.constant(Tensor::from_f64(dtype, shape, c))));
    }
    let y = p.node("Gemm", a, inputs);
    Some(p.replace(cx.output(id, 0)?, y).at(gemm))
}

fn perm_of(cx: &Ctx, id: NodeId) -> Option<Vec<usize>> {
    let rank = cx.ty(cx.input(id, 0)?).rank();
    match cx.node(id).attrs.ints_opt("perm").ok()? {
        Some(p) => p.iter().map(|&x| usize::try_from(if x < 0 { x + rank as i64 } else { x }).ok()).collect(),
        None => Some((0..rank).rev().collect()),
    }
}

fn transpose_transpose(cx: &Ctx, id: NodeId) -> Option<Patch> {
    let x = cx.input(id, 0)?;
    let inner = cx.produced_by(x, "Transpose")?;
    let (p, q) = (perm_of(cx, inner)?, perm_of(cx, id)?);
    // out[i] = mid[q[i]] = in[p[q[i]]]
    let composed: Vec<usize> = q.iter().map(|&i| p[i]).collect();
    let src = cx.input(inner, 0)?;
    let y = cx.output(id, 0)?;
    if composed.iter().enumerate().all(|(k, &d)| d == k) {
        return Some(Patch::new().replace(y, Ref::Old(src)));
    }
    let mut patch = Patch::new();
    let perm = Attr::Ints(composed.iter().map(|&d| d as i64).collect());
    let t = patch.node("Transpose", attrs(vec![("perm", perm)]), vec![Some(Ref::Old(src))]);
    Some(patch.replace(y, t))
}

fn transpose_as_reshape(cx: &Ctx, id: NodeId) -> Option<Patch> {
    reshape_input_opset(cx, id)?;
    let x = cx.input(id, 0)?;
    let perm = perm_of(cx, id)?;
    let shape = &cx.ty(x).shape;
    // The order of the axes longer than 1 is what decides the bytes.
    let moved: Vec<usize> = perm.iter().copied().filter(|&d| shape[d] != 1).collect();
    if !moved.windows(2).all(|w| w[0] < w[1]) {
        return None;
    }
    reshape_to(x, cx.output(id, 0)?, &cx.ty(cx.output(id, 0)?).shape)
}

fn reshape_reshape(cx: &Ctx, id: NodeId) -> Option<Patch> {
    reshape_input_opset(cx, id)?;
    let x = cx.input(id, 0)?;
    let inner = cx.producer(x).filter(|&p| VIEWS.contains(&cx.node(p).op_type.as_str()))?;
    reshape_to(cx.input(inner, 0)?, cx.output(id, 0)?, &cx.ty(cx.output(id, 0)?).shape)
}

/// Reshape takes its shape as an input from opset 5 on (an attribute before).
fn reshape_input_opset(cx: &Ctx, id: NodeId) -> Option<()> {
    (cx.node(id).opset >= 5).then_some(())
}

/// `y` replaced by `Reshape(x, shape)`.
fn reshape_to(x: usize, y: usize, shape: &[usize]) -> Option<Patch> {
    let mut p = Patch::new();
    let s = p.constant(Tensor::from_i64(DType::I64, vec![shape.len()], shape.iter().map(|&d| d as i64).collect()));
    let r = p.node("Reshape", Default::default(), vec![Some(Ref::Old(x)), Some(s)]);
    Some(p.replace(y, r))
}

/// `v = x * c` or `v = x / c` with `c` a scalar constant and `v` used only
/// by `user`, of the same type as `x`: (x, the factor).
fn scaled(cx: &Ctx, v: ValueId, user: NodeId) -> Option<(ValueId, f64)> {
    let m = cx.producer(v)?;
    let op = cx.node(m).op_type.as_str();
    if !matches!(op, "Mul" | "Div") || !cx.only_used_by(v, user) {
        return None;
    }
    let (a, b) = (cx.input(m, 0)?, cx.input(m, 1)?);
    let (x, c) = match (op, cx.scalar(b), cx.scalar(a)) {
        ("Div", Some(c), _) if c != 0.0 => (a, 1.0 / c),
        ("Mul", Some(c), _) => (a, c),
        ("Mul", None, Some(c)) => (b, c),
        _ => return None,
    };
    (cx.ty(x) == cx.ty(v) && cx.constant(x).is_none()).then_some((x, c))
}

fn matmul_scaled_operand(cx: &Ctx, id: NodeId) -> Option<Patch> {
    let y = cx.output(id, 0)?;
    let dtype = cx.ty(y).dtype;
    if !dtype.is_float() {
        return None;
    }
    let (mut a, mut b) = (cx.input(id, 0)?, cx.input(id, 1)?);
    let mut factor = 1.0;
    let mut hoisted = false;
    for side in [&mut a, &mut b] {
        if let Some((x, c)) = scaled(cx, *side, id) {
            (*side, factor, hoisted) = (x, factor * c, true);
        }
    }
    if !hoisted {
        return None;
    }
    let mut p = Patch::new();
    let product = p.node("MatMul", Default::default(), vec![Some(Ref::Old(a)), Some(Ref::Old(b))]);
    let c = p.constant(Tensor::from_f64(dtype, vec![], vec![factor]));
    let scaled = p.node("Mul", Default::default(), vec![Some(product), Some(c)]);
    Some(p.replace(y, scaled))
}
