//! Recognition of composite ops that exporters spell out in primitive ops
//! (PyTorch before opset 17/20/23 does): GELU in its erf and tanh forms,
//! SiLU, Softmax, LayerNorm, RMSNorm, and scaled dot-product attention.
//! Each becomes the op drift implements, with one kernel.

use super::rewrite::{Ctx, Pass, Patch, Ref, Rule, attrs};
use crate::ir::{NodeId, ValueId};
use drift_ops::{Attr, Tensor};

pub const ACTIVATIONS: Pass = Pass {
    name: "recognize-activations",
    rules: &[
        // x * 0.5 * (1 + erf(x / sqrt(2))) -> Gelu(x)
        Rule { name: "gelu-erf", roots: &["Erf"], apply: gelu_erf },
        // 0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x^3))) -> Gelu(x, approximate=tanh)
        Rule { name: "gelu-tanh", roots: &["Tanh"], apply: gelu_tanh },
        // x * sigmoid(x) -> Swish(x)   (SiLU)
        Rule { name: "silu", roots: &["Sigmoid"], apply: silu },
        // exp(x - max(x)) / sum(exp(x - max(x))) -> Softmax(x)
        Rule { name: "softmax", roots: &["Exp"], apply: softmax },
    ],
};

pub const LAYER_NORM: Pass = Pass {
    name: "recognize-layer-norm",
    rules: &[
        // (x - mean(x)) / sqrt(mean((x - mean(x))^2) + eps) * g + b -> LayerNormalization(x, g, b)
        Rule { name: "layer-norm", roots: &["Div"], apply: layer_norm },
    ],
};

pub const RMS_NORM: Pass = Pass {
    name: "recognize-rms-norm",
    rules: &[
        // x / sqrt(mean(x^2) + eps) * g -> RMSNormalization(x, g)   (also x * (1 / sqrt(..)))
        Rule { name: "rms-norm", roots: &["ReduceMean"], apply: rms_norm },
    ],
};

pub const ATTENTION: Pass = Pass {
    name: "recognize-attention",
    rules: &[
        // softmax(Q Kᵀ * s + mask) V, heads split by Reshape+Transpose -> Attention(q, k, v, mask)
        Rule { name: "attention", roots: &["Softmax"], apply: attention },
    ],
};

/// Whether `x` is within a relative 1e-4 of `want`.
fn near(x: Option<f64>, want: f64) -> bool {
    x.is_some_and(|x| (x - want).abs() <= 1e-4 * want.abs().max(1e-6))
}

/// The single consumer of `v` if it is a live `op_type` node.
fn sole_consumer(cx: &Ctx, v: ValueId, op_type: &str) -> Option<NodeId> {
    match cx.consumers(v) {
        [c] if !cx.is_output(v) && cx.node(*c).op_type == op_type && cx.node(*c).domain.is_empty() => Some(*c),
        _ => None,
    }
}

/// `op(a, b)` where one side is a constant equal to `want` everywhere: the other side.
fn with_constant(cx: &Ctx, id: NodeId, want: f64) -> Option<ValueId> {
    let (a, b) = (cx.input(id, 0)?, cx.input(id, 1)?);
    if near(cx.scalar(b), want) {
        Some(a)
    } else if near(cx.scalar(a), want) {
        Some(b)
    } else {
        None
    }
}

/// The tail shared by both GELU forms, from `inner` (erf or tanh of the
/// scaled x): `0.5 * x * (1 + inner)`, with the multiplications in any
/// order. Returns the node computing the result.
fn gelu_tail(cx: &Ctx, x: ValueId, inner: ValueId) -> Option<NodeId> {
    let add = sole_consumer(cx, inner, "Add")?;
    (with_constant(cx, add, 1.0) == Some(inner)).then_some(())?;
    let one_plus = cx.output(add, 0)?;
    let m1 = sole_consumer(cx, one_plus, "Mul")?;
    let other = cx.other_input(m1, one_plus)?;
    if other == x {
        // (x * (1 + inner)) * 0.5
        let m2 = sole_consumer(cx, cx.output(m1, 0)?, "Mul")?;
        (with_constant(cx, m2, 0.5) == cx.output(m1, 0)).then_some(m2)
    } else {
        // (x * 0.5) * (1 + inner)
        let half = cx.produced_by(other, "Mul")?;
        (with_constant(cx, half, 0.5) == Some(x) && cx.only_used_by(other, m1)).then_some(m1)
    }
}

fn gelu(cx: &Ctx, x: ValueId, last: NodeId, approximate: &str) -> Option<Patch> {
    if !cx.ty(x).dtype.is_float() {
        return None;
    }
    let mut p = Patch::new();
    let a = attrs(vec![("approximate", Attr::Str(approximate.into()))]);
    let y = p.node("Gelu", a, vec![Some(Ref::Old(x))]);
    Some(p.replace(cx.output(last, 0)?, y))
}

fn gelu_erf(cx: &Ctx, id: NodeId) -> Option<Patch> {
    let d = cx.input(id, 0)?;
    let scale = cx.producer(d)?;
    let (op, x) = (cx.node(scale).op_type.as_str(), cx.input(scale, 0)?);
    let ok = match op {
        "Div" => near(cx.scalar(cx.input(scale, 1)?), std::f64::consts::SQRT_2),
        "Mul" => near(cx.scalar(cx.input(scale, 1)?), std::f64::consts::FRAC_1_SQRT_2),
        _ => false,
    };
    (ok && cx.only_used_by(d, id)).then_some(())?;
    let last = gelu_tail(cx, x, cx.output(id, 0)?)?;
    gelu(cx, x, last, "none")
}

fn gelu_tanh(cx: &Ctx, id: NodeId) -> Option<Patch> {
    // tanh(k * (x + c * x^3))
    let k = cx.input(id, 0)?;
    let km = cx.produced_by(k, "Mul")?;
    let inner = with_constant(cx, km, (2.0 / std::f64::consts::PI).sqrt())?;
    let add = cx.produced_by(inner, "Add")?;
    let (a, b) = (cx.input(add, 0)?, cx.input(add, 1)?);
    let cube_of = |v: ValueId| -> Option<ValueId> {
        let m = cx.produced_by(v, "Mul")?;
        let p = with_constant(cx, m, 0.044715)?;
        let pow = cx.produced_by(p, "Pow")?;
        near(cx.scalar(cx.input(pow, 1)?), 3.0).then(|| cx.input(pow, 0))?
    };
    let x = if cube_of(b) == Some(a) {
        a
    } else if cube_of(a) == Some(b) {
        b
    } else {
        return None;
    };
    let last = gelu_tail(cx, x, cx.output(id, 0)?)?;
    gelu(cx, x, last, "tanh")
}

fn silu(cx: &Ctx, id: NodeId) -> Option<Patch> {
    let (x, s) = (cx.input(id, 0)?, cx.output(id, 0)?);
    let m = sole_consumer(cx, s, "Mul")?;
    (cx.other_input(m, s) == Some(x) && cx.ty(x).dtype.is_float()).then_some(())?;
    let mut p = Patch::new();
    let y = p.node("Swish", attrs(vec![("alpha", Attr::Float(1.0))]), vec![Some(Ref::Old(x))]);
    Some(p.replace(cx.output(m, 0)?, y))
}

/// The axes of a Reduce node (attribute before opset 18, input after),
/// normalized, if it keeps dims.
fn reduce_axes(cx: &Ctx, id: NodeId) -> Option<Vec<usize>> {
    if cx.node(id).attrs.int("keepdims", 1).ok()? == 0 {
        return None;
    }
    let rank = cx.ty(cx.input(id, 0)?).rank() as i64;
    let mut axes: Vec<usize> = cx
        .ints_attr_or_input(id, "axes", 1)?
        .iter()
        .map(|&a| usize::try_from(if a < 0 { a + rank } else { a }).ok())
        .collect::<Option<_>>()?;
    axes.sort();
    Some(axes)
}

/// The first axis when `axes` are the trailing axes of a rank-`rank` tensor.
fn trailing(axes: &[usize], rank: usize) -> Option<usize> {
    let first = *axes.first()?;
    (axes.iter().copied().eq(first..rank)).then_some(first)
}

/// `ReduceX(x, axes)` over the trailing axes of x: (x, first axis).
fn reduce_of(cx: &Ctx, v: ValueId, op_type: &str) -> Option<(ValueId, usize)> {
    let r = cx.produced_by(v, op_type)?;
    let x = cx.input(r, 0)?;
    let axis = trailing(&reduce_axes(cx, r)?, cx.ty(x).rank())?;
    Some((x, axis))
}

fn softmax(cx: &Ctx, id: NodeId) -> Option<Patch> {
    let (arg, e) = (cx.input(id, 0)?, cx.output(id, 0)?);
    // exp(x - max(x)) or exp(x)
    let x = match cx.produced_by(arg, "Sub") {
        Some(sub) if reduce_of(cx, cx.input(sub, 1)?, "ReduceMax").map(|(m, _)| m) == cx.input(sub, 0) => {
            cx.input(sub, 0)?
        }
        _ => arg,
    };
    let [c1, c2] = cx.consumers(e) else { return None };
    let (sum, div) = if cx.node(*c1).op_type == "ReduceSum" { (*c1, *c2) } else { (*c2, *c1) };
    let rank = cx.ty(x).rank();
    let axis = trailing(&reduce_axes(cx, sum)?, rank)?;
    let div_ok = cx.node(div).op_type == "Div" && cx.input(div, 0) == Some(e) && cx.input(div, 1) == cx.output(sum, 0);
    if !div_ok || axis + 1 != rank || cx.is_output(e) || !cx.ty(x).dtype.is_float() {
        return None;
    }
    let mut p = Patch::new();
    let y = p.node("Softmax", attrs(vec![("axis", Attr::Int(-1))]), vec![Some(Ref::Old(x))]);
    Some(p.replace(cx.output(div, 0)?, y).at(div))
}

/// `v` as `d * d` or `d ^ 2`: d.
fn square_of(cx: &Ctx, v: ValueId) -> Option<ValueId> {
    let p = cx.producer(v)?;
    match cx.node(p).op_type.as_str() {
        "Pow" if near(cx.scalar(cx.input(p, 1)?), 2.0) => cx.input(p, 0),
        "Mul" if cx.input(p, 0) == cx.input(p, 1) => cx.input(p, 0),
        _ => None,
    }
}

/// `sqrt(v + eps)` with v = `ReduceMean(t, trailing axes)`: (t, first axis, eps).
fn sqrt_mean_eps(cx: &Ctx, s: ValueId) -> Option<(ValueId, usize, f64)> {
    let sqrt = cx.produced_by(s, "Sqrt")?;
    let add = cx.produced_by(cx.input(sqrt, 0)?, "Add")?;
    let (a, b) = (cx.input(add, 0)?, cx.input(add, 1)?);
    let (mean, eps) = match (cx.scalar(a), cx.scalar(b)) {
        (None, Some(e)) => (a, e),
        (Some(e), None) => (b, e),
        _ => return None,
    };
    let (t, axis) = reduce_of(cx, mean, "ReduceMean")?;
    Some((t, axis, eps))
}

/// After a normalized value `n`: an optional `* gamma` and `+ beta` by
/// constants over the normalized axes. Returns (last value, gamma, beta).
fn affine_after(
    cx: &Ctx,
    n: ValueId,
    norm_shape: &[usize],
    with_beta: bool,
) -> (ValueId, Option<ValueId>, Option<ValueId>) {
    let fits =
        |c: ValueId| cx.constant(c).is_some_and(|t| t.shape == norm_shape || t.shape.iter().product::<usize>() == 1);
    let step = |v: ValueId, op: &str| -> Option<(ValueId, ValueId)> {
        let m = sole_consumer(cx, v, op)?;
        let c = cx.other_input(m, v)?;
        fits(c).then(|| Some((cx.output(m, 0)?, c)))?
    };
    let (mut last, mut gamma, mut beta) = (n, None, None);
    if let Some((y, g)) = step(last, "Mul") {
        (last, gamma) = (y, Some(g));
    }
    if with_beta && let Some((y, b)) = step(last, "Add") {
        (last, beta) = (y, Some(b));
    }
    (last, gamma, beta)
}

/// A constant parameter of `shape`: `given` broadcast, or `fill`.
fn norm_param(
    cx: &Ctx,
    p: &mut Patch,
    given: Option<ValueId>,
    shape: &[usize],
    dtype: drift_ops::DType,
    fill: f64,
) -> Ref {
    match given.and_then(|v| cx.constant(v)) {
        Some(t) if t.shape == shape => Ref::Old(given.expect("matched")),
        Some(t) => p.constant(Tensor::from_f64(dtype, shape.to_vec(), vec![t.to_f64()[0]; shape.iter().product()])),
        None => p.constant(super::cleanup::filled(dtype, shape.to_vec(), fill)),
    }
}

fn layer_norm(cx: &Ctx, id: NodeId) -> Option<Patch> {
    let (d, s) = (cx.input(id, 0)?, cx.input(id, 1)?);
    let sub = cx.produced_by(d, "Sub")?;
    let x = cx.input(sub, 0)?;
    let (mx, axis) = reduce_of(cx, cx.input(sub, 1)?, "ReduceMean")?;
    let (sq, axis2, eps) = sqrt_mean_eps(cx, s)?;
    if mx != x || axis2 != axis || square_of(cx, sq) != Some(d) || !cx.ty(x).dtype.is_float() {
        return None;
    }
    let xt = cx.ty(x);
    let norm_shape = xt.shape[axis..].to_vec();
    let (last, gamma, beta) = affine_after(cx, cx.output(id, 0)?, &norm_shape, true);
    let mut p = Patch::new();
    let g = norm_param(cx, &mut p, gamma, &norm_shape, xt.dtype, 1.0);
    let b = norm_param(cx, &mut p, beta, &norm_shape, xt.dtype, 0.0);
    let a = attrs(vec![("axis", Attr::Int(axis as i64)), ("epsilon", Attr::Float(eps as f32))]);
    let y = p.node("LayerNormalization", a, vec![Some(Ref::Old(x)), Some(g), Some(b)]);
    let anchor = cx.producer(last)?;
    Some(p.replace(last, y).at(anchor))
}

fn rms_norm(cx: &Ctx, id: NodeId) -> Option<Patch> {
    let x = square_of(cx, cx.input(id, 0)?)?;
    let mean = cx.output(id, 0)?;
    let add = sole_consumer(cx, mean, "Add")?;
    let sqrt = sole_consumer(cx, cx.output(add, 0)?, "Sqrt")?;
    let s = cx.output(sqrt, 0)?;
    let (_, axis, eps) = sqrt_mean_eps(cx, s)?;
    // x / s, or x * (1 / s)
    let n = if let Some(div) = sole_consumer(cx, s, "Div") {
        (cx.input(div, 0) == Some(x)).then(|| cx.output(div, 0))??
    } else {
        let rec = sole_consumer(cx, s, "Reciprocal")?;
        let r = cx.output(rec, 0)?;
        let m = sole_consumer(cx, r, "Mul")?;
        (cx.other_input(m, r) == Some(x)).then(|| cx.output(m, 0))??
    };
    let xt = cx.ty(x);
    if !xt.dtype.is_float() || cx.ty(n) != xt {
        return None;
    }
    let norm_shape = xt.shape[axis..].to_vec();
    let (last, gamma, _) = affine_after(cx, n, &norm_shape, false);
    let mut p = Patch::new();
    let g = norm_param(cx, &mut p, gamma, &norm_shape, xt.dtype, 1.0);
    let a = attrs(vec![("axis", Attr::Int(axis as i64)), ("epsilon", Attr::Float(eps as f32))]);
    let y = p.node("RMSNormalization", a, vec![Some(Ref::Old(x)), Some(g)]);
    let anchor = cx.producer(last)?;
    Some(p.replace(last, y).at(anchor))
}

/// `v = Transpose(Reshape(x3, [B, S, H, D]), perm)`: (x3, H).
fn split_heads(cx: &Ctx, v: ValueId, perm: &[i64]) -> Option<(ValueId, usize)> {
    let t = cx.produced_by(v, "Transpose")?;
    if cx.node(t).attrs.ints_opt("perm").ok()?? != perm || !cx.only_used_by(v, cx.consumers(v).first().copied()?) {
        return None;
    }
    let r = cx.input(t, 0)?;
    let reshape = cx.produced_by(r, "Reshape")?;
    let x3 = cx.input(reshape, 0)?;
    let (s4, s3) = (&cx.ty(r).shape, &cx.ty(x3).shape);
    let ok = s4.len() == 4 && s3.len() == 3 && s3[..2] == s4[..2] && s3[2] == s4[2] * s4[3] && cx.only_used_by(r, t);
    ok.then_some((x3, s4[2]))
}

fn attention(cx: &Ctx, id: NodeId) -> Option<Patch> {
    let rank = cx.ty(cx.input(id, 0)?).rank() as i64;
    let axis = cx.node(id).attrs.int("axis", -1).ok()?;
    if rank != 4 || (axis != -1 && axis != 3) {
        return None;
    }
    let probs = cx.output(id, 0)?;
    let pv = sole_consumer(cx, probs, "MatMul")?;
    (cx.input(pv, 0) == Some(probs)).then_some(())?;
    // Back from the softmax: optional mask, optional scale, the product.
    let mut z = cx.input(id, 0)?;
    let mut mask = None;
    if let Some(add) = cx.produced_by(z, "Add")
        && cx.only_used_by(z, id)
    {
        let (a, b) = (cx.input(add, 0)?, cx.input(add, 1)?);
        let from_matmul = |v: ValueId| {
            cx.producer(v).is_some_and(|p| matches!(cx.node(p).op_type.as_str(), "MatMul" | "Div" | "Mul"))
        };
        let (s, m) = if from_matmul(a) { (a, b) } else { (b, a) };
        (mask, z) = (Some(m), s);
    }
    let mut scale = 1.0;
    if let Some(sc) = cx.producer(z).filter(|&p| matches!(cx.node(p).op_type.as_str(), "Div" | "Mul")) {
        let c = cx.scalar(cx.input(sc, 1)?)?;
        scale = if cx.node(sc).op_type == "Div" { 1.0 / c } else { c };
        (cx.only_used_by(z, cx.consumers(z)[0])).then_some(())?;
        z = cx.input(sc, 0)?;
    }
    let qk = cx.produced_by(z, "MatMul")?;
    let (q3, hq) = split_heads(cx, cx.input(qk, 0)?, &[0, 2, 1, 3])?;
    let (k3, hk) = split_heads(cx, cx.input(qk, 1)?, &[0, 2, 3, 1])?;
    let (v3, hv) = split_heads(cx, cx.input(pv, 1)?, &[0, 2, 1, 3])?;
    // After: merge the heads back into [B, S, H * D].
    let o4 = cx.output(pv, 0)?;
    let t = sole_consumer(cx, o4, "Transpose")?;
    (cx.node(t).attrs.ints_opt("perm").ok()?? == [0, 2, 1, 3]).then_some(())?;
    let merge = sole_consumer(cx, cx.output(t, 0)?, "Reshape")?;
    let y3 = cx.output(merge, 0)?;
    let (yt, qt) = (cx.ty(y3), cx.ty(q3));
    if hq != hk || hk != hv || yt.rank() != 3 || yt.shape[..2] != qt.shape[..2] || !qt.dtype.is_float() {
        return None;
    }
    if let Some(m) = mask
        && !(cx.ty(m).rank() <= 4 && cx.ty(m).dtype == qt.dtype)
    {
        return None;
    }
    let mut p = Patch::new();
    let a = attrs(vec![
        ("q_num_heads", Attr::Int(hq as i64)),
        ("kv_num_heads", Attr::Int(hq as i64)),
        ("scale", Attr::Float(scale as f32)),
    ]);
    let y =
        p.node("Attention", a, vec![Some(Ref::Old(q3)), Some(Ref::Old(k3)), Some(Ref::Old(v3)), mask.map(Ref::Old)]);
    Some(p.replace(y3, y).at(merge))
}
