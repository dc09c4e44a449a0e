//! Layout selection: the physical form of tensors and weights, chosen per
//! tensor by the compiler, with a conversion only where a consumer needs it.
//!
//! - A padded convolution reads its input zero-padded. Instead of a copy
//!   kernel per Conv, the input is given the padded layout as a tensor of
//!   its own (`Conv(x, pads) -> Conv(Pad(x), pads=0)`); fusion then lets the
//!   producer of `x` store straight into the padded layout, writing the
//!   border's zeros itself (see `fuse.rs`), so no kernel converts it.
//! - Weights are re-laid out at compile time for the kernel that reads them:
//!   Gemm's B is stored `[K, N]`, the order in which neighbouring threads of
//!   the product kernel read neighbouring columns.

use super::rewrite::{Ctx, Pass, Patch, Ref, Rule, attrs};
use crate::ir::NodeId;
use drift_ops::{Attr, DType, Tensor};

pub const PADDED_INPUTS: Pass = Pass {
    name: "select-layouts",
    rules: &[
        // Conv(x, pads) -> Conv(Pad(x, pads'), pads=0), pads' covering every window
        Rule { name: "conv-padded-input", roots: &["Conv"], apply: conv_padded_input },
        // Gemm(A, B, transB=1) -> Gemm(A, Bᵀ, transB=0) for constant B
        Rule { name: "gemm-weights-kn", roots: &["Gemm"], apply: gemm_weights_kn },
    ],
};

fn ints(cx: &Ctx, id: NodeId, name: &str, n: usize, default: i64) -> Option<Vec<i64>> {
    match cx.node(id).attrs.ints_opt(name).ok()? {
        Some(v) if v.len() == n => Some(v.to_vec()),
        Some(_) => None,
        None => Some(vec![default; n]),
    }
}

fn conv_padded_input(cx: &Ctx, id: NodeId) -> Option<Patch> {
    let n = cx.node(id);
    let auto = n.attrs.str("auto_pad", "NOTSET").ok()?;
    let (x, w, y) = (cx.input(id, 0)?, cx.input(id, 1)?, cx.output(id, 0)?);
    let (xs, ws, ys) = (&cx.ty(x).shape, &cx.ty(w).shape, &cx.ty(y).shape);
    let r = xs.len().checked_sub(2)?;
    // Pad's attribute is `paddings` in opset 1.
    if auto != "NOTSET" || r == 0 || !cx.ty(x).dtype.is_float() || ys.len() != xs.len() || n.opset < 2 {
        return None;
    }
    // A Conv feeding a Concat runs while the concatenated features are all
    // live (DenseNet): a padded copy of its input would add to the peak.
    if cx.consumers(y).iter().any(|&c| cx.node(c).op_type == "Concat") {
        return None;
    }
    let pads = ints(cx, id, "pads", 2 * r, 0)?;
    let strides = ints(cx, id, "strides", r, 1)?;
    let dil = ints(cx, id, "dilations", r, 1)?;
    if pads.iter().all(|&p| p == 0) || pads.iter().any(|&p| p < 0) {
        return None;
    }
    // Padded extent: every window fits, and the input fits after the begin pad.
    let mut total = vec![0i64; 2 * xs.len()];
    for d in 0..r {
        let span = (ws[2 + d] as i64 - 1) * dil[d] + 1;
        let need = (ys[2 + d] as i64 - 1) * strides[d] + span;
        let extent = need.max(xs[2 + d] as i64 + pads[d]);
        total[2 + d] = pads[d];
        total[xs.len() + 2 + d] = extent - xs[2 + d] as i64 - pads[d];
    }
    let mut p = Patch::new();
    let padded = if n.opset < 11 {
        p.node("Pad", attrs(vec![("pads", Attr::Ints(total))]), vec![Some(Ref::Old(x))])
    } else {
        let t = p.constant(Tensor::from_i64(DType::I64, vec![total.len()], total));
        p.node("Pad", Default::default(), vec![Some(Ref::Old(x)), Some(t)])
    };
    let mut a = n.attrs.clone();
    a.0.insert("pads".into(), Attr::Ints(vec![0; 2 * r]));
    let mut inputs = vec![Some(padded)];
    inputs.extend(n.inputs[1..].iter().map(|v| v.map(Ref::Old)));
    let conv = p.node("Conv", a, inputs);
    Some(p.replace(y, conv))
}

fn gemm_weights_kn(cx: &Ctx, id: NodeId) -> Option<Patch> {
    let n = cx.node(id);
    if n.attrs.int("transB", 0).ok()? == 0 {
        return None;
    }
    let b = cx.constant(cx.input(id, 1)?)?;
    if b.rank() != 2 {
        return None;
    }
    let (rows, cols) = (b.shape[0], b.shape[1]);
    let v = b.to_f64();
    let t: Vec<f64> = (0..cols * rows).map(|i| v[(i % rows) * cols + i / rows]).collect();
    let bt = if b.dtype.is_float() {
        Tensor::from_f64(b.dtype, vec![cols, rows], t)
    } else {
        let vi = b.to_i64();
        Tensor::from_i64(
            b.dtype,
            vec![cols, rows],
            (0..cols * rows).map(|i| vi[(i % rows) * cols + i / rows]).collect(),
        )
    };
    let mut a = n.attrs.clone();
    a.0.insert("transB".into(), Attr::Int(0));
    let mut p = Patch::new();
    let bc = p.constant(bt);
    let mut inputs = vec![n.inputs[0].map(Ref::Old), Some(bc)];
    inputs.extend(n.inputs[2..].iter().map(|v| v.map(Ref::Old)));
    let g = p.node("Gemm", a, inputs);
    Some(p.replace(cx.output(id, 0)?, g))
}
