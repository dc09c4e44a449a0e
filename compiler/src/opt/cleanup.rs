//! Clean-up passes: constant folding, no-op removal and common
//! subexpression elimination. Dead code goes as soon as a patch leaves a
//! node unused (`rewrite::remove_unused`).

use super::rewrite::{Ctx, Pass, Patch, Ref, Rule};
use crate::ir::NodeId;
use drift_ops::{DType, Input};

pub const FOLD: Pass = Pass {
    name: "fold-constants",
    rules: &[
        // op(constants...) -> constant, through the op's CPU reference
        Rule { name: "fold", roots: &[], apply: fold },
    ],
};

pub const NO_OPS: Pass = Pass {
    name: "remove-no-ops",
    rules: &[
        // Identity(x) -> x
        Rule { name: "identity", roots: &["Identity"], apply: forward_input },
        // Dropout(x) -> x (inference; the mask output unused)
        Rule { name: "dropout", roots: &["Dropout"], apply: dropout },
        // Cast(x: T, to=T) -> x
        Rule { name: "cast-same-type", roots: &["Cast", "CastLike"], apply: same_type },
        // Reshape(x) -> x when the shape stays (also Expand, Flatten, Squeeze, Unsqueeze)
        Rule { name: "same-shape", roots: &["Reshape", "Expand", "Flatten", "Squeeze", "Unsqueeze"], apply: same_type },
        // Transpose(x, perm=identity) -> x
        Rule { name: "identity-transpose", roots: &["Transpose"], apply: identity_transpose },
        // Concat(x) -> x; Sum(x) -> x; Max(x) -> x; Min(x) -> x; Mean(x) -> x
        Rule { name: "single-operand", roots: &["Concat", "Sum", "Max", "Min", "Mean"], apply: single_operand },
        // x*1 -> x, 1*x -> x, x/1 -> x
        Rule { name: "mul-one", roots: &["Mul", "Div"], apply: mul_one },
        // x+0 -> x, 0+x -> x, x-0 -> x
        Rule { name: "add-zero", roots: &["Add", "Sub"], apply: add_zero },
    ],
};

pub const CSE: Pass = Pass {
    name: "common-subexpressions",
    rules: &[
        // f(a, b) twice -> f(a, b) once
        Rule { name: "cse", roots: &[], apply: common_subexpression },
    ],
};

fn fold(cx: &Ctx, id: NodeId) -> Option<Patch> {
    let n = cx.node(id);
    let outs: Vec<_> = n.outputs.iter().flatten().copied().collect();
    if outs.is_empty() || outs.iter().all(|&v| cx.constant(v).is_some()) {
        return None;
    }
    if !n.inputs.iter().flatten().all(|&v| cx.constant(v).is_some()) {
        return None;
    }
    let ins: Vec<Option<Input>> =
        n.inputs.iter().map(|v| v.map(|v| Input { ty: cx.ty(v), value: cx.constant(v) })).collect();
    let vals = crate::passes::fold(n.op.as_deref()?, &ins).ok()??;
    let mut p = Patch::new();
    for (slot, t) in n.outputs.iter().zip(vals) {
        if let Some(v) = slot {
            let c = p.constant(t);
            p = p.replace(*v, c);
        }
    }
    Some(p)
}

/// Output 0 replaced by input 0, when they have the same type.
fn same_type(cx: &Ctx, id: NodeId) -> Option<Patch> {
    let (x, y) = (cx.input(id, 0)?, cx.output(id, 0)?);
    (cx.ty(x) == cx.ty(y)).then(|| Patch::new().replace(y, Ref::Old(x)))
}

fn forward_input(cx: &Ctx, id: NodeId) -> Option<Patch> {
    same_type(cx, id)
}

fn dropout(cx: &Ctx, id: NodeId) -> Option<Patch> {
    if cx.output(id, 1).is_some_and(|m| cx.used(m)) {
        return None;
    }
    // Opset 12+: a training_mode input that is not a constant false keeps it.
    if let Some(t) = cx.input(id, 2)
        && cx.scalar(t) != Some(0.0)
    {
        return None;
    }
    same_type(cx, id)
}

fn identity_transpose(cx: &Ctx, id: NodeId) -> Option<Patch> {
    let perm = cx.node(id).attrs.ints_opt("perm").ok()??;
    perm.iter().enumerate().all(|(k, &p)| p == k as i64).then(|| same_type(cx, id))?
}

fn single_operand(cx: &Ctx, id: NodeId) -> Option<Patch> {
    (cx.node(id).inputs.len() == 1).then(|| same_type(cx, id))?
}

/// `op(x, c)` (or `op(c, x)` when `commutes`) with constant `c` equal to
/// `unit` everywhere: the output is `x`.
fn unit_operand(cx: &Ctx, id: NodeId, unit: f64, commutes: bool) -> Option<Patch> {
    let (a, b, y) = (cx.input(id, 0)?, cx.input(id, 1)?, cx.output(id, 0)?);
    let keep = if cx.scalar(b) == Some(unit) {
        a
    } else if commutes && cx.scalar(a) == Some(unit) {
        b
    } else {
        return None;
    };
    // Only when the unit neither broadcasts the other operand nor changes its type.
    (cx.ty(keep) == cx.ty(y)).then(|| Patch::new().replace(y, Ref::Old(keep)))
}

fn mul_one(cx: &Ctx, id: NodeId) -> Option<Patch> {
    unit_operand(cx, id, 1.0, cx.node(id).op_type == "Mul")
}

fn add_zero(cx: &Ctx, id: NodeId) -> Option<Patch> {
    // x + (-0.0) is x for every x, x + 0.0 is not for x = -0.0; float
    // models do not rely on the sign of zero, integer ones have none.
    unit_operand(cx, id, 0.0, cx.node(id).op_type == "Add")
}

/// Ops whose result is not a function of their inputs.
const IMPURE: &[&str] =
    &["RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Bernoulli", "Multinomial"];

fn common_subexpression(cx: &Ctx, id: NodeId) -> Option<Patch> {
    let n = cx.node(id);
    if IMPURE.contains(&n.op_type.as_str())
        || !n.subgraphs.is_empty()
        || n.inputs.is_empty()
        || n.domain == super::rewrite::OPT_DOMAIN
    {
        return None;
    }
    // Candidates read the same first input; the earliest twin is kept.
    let first = n.inputs.iter().flatten().next()?;
    let twin = cx.consumers(*first).iter().copied().find(|&o| {
        let m = cx.node(o);
        o < id
            && m.op_type == n.op_type
            && m.domain == n.domain
            && m.opset == n.opset
            && m.inputs == n.inputs
            && m.attrs == n.attrs
            && m.outputs.len() == n.outputs.len()
            && m.outputs.iter().zip(&n.outputs).all(|(a, b)| a.is_some() == b.is_some())
            && m.subgraphs.is_empty()
    })?;
    let mut p = Patch::new();
    for (a, b) in cx.node(twin).outputs.iter().zip(&n.outputs) {
        if let (Some(a), Some(b)) = (a, b) {
            p = p.replace(*b, Ref::Old(*a));
        }
    }
    Some(p)
}

/// A constant of `dtype` filled with `x`, of shape `shape`.
pub fn filled(dtype: DType, shape: Vec<usize>, x: f64) -> drift_ops::Tensor {
    let n = shape.iter().product();
    drift_ops::Tensor::from_f64(dtype, shape, vec![x; n])
}
