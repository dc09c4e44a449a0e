//! Rewrites before symbolic inference: ops whose kernels need concrete
//! shapes, spelled out in the ops the bounded-dims lowering covers, so that
//! its fusion (inlined elementwise work, fused decode attention) applies to
//! them as to an exporter's own spelling. A flat list, run in order by
//! [`run`]:
//!
//! - `Split` with constant sizes → one `Slice` per output;
//! - `RotaryEmbedding` (opset 23) → halves (or interleaved pairs) of the
//!   rotated dims times the cos/sin caches gathered at the positions;
//! - `Attention` (opset 23) → present = past ++ new, key/value heads
//!   repeated for grouped queries, scaled (and soft-capped) scores plus mask
//!   and causal bias, Softmax, product with the values.
//!
//! Each generated node uses opset 18 forms (axes as inputs, Shape with
//! start and end), whatever the model's opset.

use crate::error::{Error, Result};
use crate::ir::{Graph, Node, NodeId, Value, ValueId};
use drift_ops::{Attr, Attrs, DType, Tensor};

/// The opset of generated nodes.
const OPSET: i64 = 18;

/// Every rewrite, in order.
pub fn run(g: &mut Graph) -> Result<()> {
    for id in live(g, "Split") {
        split_to_slices(g, id);
    }
    for id in live(g, "RotaryEmbedding") {
        rotary(g, id)?;
    }
    for id in live(g, "Attention") {
        attention(g, id)?;
    }
    Ok(())
}

/// Live ai.onnx nodes of type `op`.
fn live(g: &Graph, op: &str) -> Vec<NodeId> {
    g.live_nodes().filter(|(_, n)| n.domain.is_empty() && n.op_type == op).map(|(id, _)| id).collect()
}

/// New nodes for one rewritten node, named after it.
struct Emit<'g> {
    g: &'g mut Graph,
    name: String,
    count: usize,
}

impl<'g> Emit<'g> {
    fn new(g: &'g mut Graph, id: NodeId) -> Emit<'g> {
        let name = g.nodes[id].name.clone();
        g.nodes[id].dead = true;
        Emit { g, name, count: 0 }
    }

    fn fresh(&mut self) -> ValueId {
        self.count += 1;
        let name = format!("{}/{}", self.name, self.count);
        self.g.add_value(Value { name, ..Value::default() })
    }

    /// `op(inputs)` into `out` (a fresh value when `None`).
    fn op_into(&mut self, op: &str, inputs: &[ValueId], attrs: &[(&str, Attr)], out: Option<ValueId>) -> ValueId {
        let out = out.unwrap_or_else(|| self.fresh());
        self.count += 1;
        let attrs = Attrs(attrs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect());
        self.g.nodes.push(Node {
            name: format!("{}/{op}_{}", self.name, self.count),
            op_type: op.into(),
            opset: OPSET,
            attrs,
            inputs: inputs.iter().map(|&v| Some(v)).collect(),
            outputs: vec![Some(out)],
            ..Node::default()
        });
        out
    }

    fn op(&mut self, op: &str, inputs: &[ValueId]) -> ValueId {
        self.op_into(op, inputs, &[], None)
    }

    fn constant(&mut self, t: Tensor) -> ValueId {
        self.count += 1;
        self.g.add_constant(format!("{}/const_{}", self.name, self.count), t)
    }

    fn ints(&mut self, v: &[i64]) -> ValueId {
        self.constant(Tensor::from_i64(DType::I64, vec![v.len()], v.to_vec()))
    }

    fn float(&mut self, x: f64) -> ValueId {
        self.constant(Tensor::from_f64(DType::F32, vec![], vec![x]))
    }

    /// `Shape(x)[start..end]`.
    fn shape(&mut self, x: ValueId, start: i64, end: i64) -> ValueId {
        self.op_into("Shape", &[x], &[("start", Attr::Int(start)), ("end", Attr::Int(end))], None)
    }

    fn concat(&mut self, parts: &[ValueId], axis: i64) -> ValueId {
        self.op_into("Concat", parts, &[("axis", Attr::Int(axis))], None)
    }

    fn slice(&mut self, x: ValueId, start: i64, end: i64, axis: i64) -> ValueId {
        let (s, e, a) = (self.ints(&[start]), self.ints(&[end]), self.ints(&[axis]));
        self.op("Slice", &[x, s, e, a])
    }

    fn unsqueeze(&mut self, x: ValueId, axes: &[i64]) -> ValueId {
        let a = self.ints(axes);
        self.op("Unsqueeze", &[x, a])
    }

    fn transpose(&mut self, x: ValueId, perm: &[i64]) -> ValueId {
        self.op_into("Transpose", &[x], &[("perm", Attr::Ints(perm.to_vec()))], None)
    }

    /// `x` reshaped from `[b, s, heads * d]` to `[b, heads, s, d]`.
    fn split_heads(&mut self, x: ValueId, heads: i64) -> ValueId {
        let (bs, h, rest) = (self.shape(x, 0, 2), self.ints(&[heads]), self.ints(&[-1]));
        let shape = self.concat(&[bs, h, rest], 0);
        let x4 = self.op("Reshape", &[x, shape]);
        self.transpose(x4, &[0, 2, 1, 3])
    }
}

/// The node's error for what the rewrite does not cover.
fn unsupported(g: &Graph, id: NodeId, what: &str) -> Error {
    let n = &g.nodes[id];
    Error::Node { node: n.name.clone(), op_type: n.op_type.clone(), msg: format!("{what} with symbolic dims") }
}

/// A constant input's value, from an initializer or a Constant node.
fn constant_input(g: &Graph, id: NodeId, i: usize) -> Option<Tensor> {
    let v = g.nodes[id].inputs.get(i).copied().flatten()?;
    if let Some(t) = g.values[v].constant.as_deref() {
        return Some(t.clone());
    }
    let (_, c) = g.live_nodes().find(|(_, n)| n.op_type == "Constant" && n.outputs.contains(&Some(v)))?;
    c.attrs.tensor_opt("value").ok().flatten().cloned()
}

/// Split with constant sizes (input `split` from opset 13, the attribute
/// before) → one Slice per output; others are left for inference to report.
fn split_to_slices(g: &mut Graph, id: NodeId) {
    let node = &g.nodes[id];
    let sizes = match constant_input(g, id, 1) {
        Some(t) => t.to_i64(),
        None => match node.attrs.ints_opt("split") {
            Ok(Some(s)) => s.to_vec(),
            _ => return,
        },
    };
    let (Some(x), outs, axis) = (node.inputs[0], node.outputs.clone(), node.attrs.int("axis", 0).unwrap_or(0)) else {
        return;
    };
    if sizes.len() != outs.len() {
        return;
    }
    let mut e = Emit::new(g, id);
    let mut start = 0;
    for (&size, out) in sizes.iter().zip(outs) {
        let piece = e.slice(x, start, start + size, axis);
        if let Some(out) = out {
            e.op_into("Identity", &[piece], &[], Some(out));
        }
        start += size;
    }
}

/// RotaryEmbedding: x is `[b, h, s, d]`, or `[b, s, h * d]` with `num_heads`;
/// the first `rotary_embedding_dim` features (all by default) rotate, in
/// halves or in interleaved pairs, by the caches' rows at `position_ids`
/// (or the caches themselves, `[b, s, d/2]`, without them).
fn rotary(g: &mut Graph, id: NodeId) -> Result<()> {
    let node = &g.nodes[id];
    let a = &node.attrs;
    let int = |k: &str| {
        a.int(k, 0).map_err(|e| Error::Node {
            node: node.name.clone(),
            op_type: node.op_type.clone(),
            msg: e.to_string(),
        })
    };
    let (interleaved, heads, dim) = (int("interleaved")? != 0, int("num_heads")?, int("rotary_embedding_dim")?);
    let half = match constant_input(g, id, 1) {
        Some(c) => *c.shape.last().unwrap_or(&0) as i64,
        None => return Err(unsupported(g, id, "RotaryEmbedding without constant cos/sin caches")),
    };
    let ins: Vec<Option<ValueId>> = node.inputs.clone();
    let (Some(x), Some(cos_cache), Some(sin_cache), Some(out)) = (ins[0], ins[1], ins[2], node.outputs[0]) else {
        return Err(unsupported(g, id, "RotaryEmbedding without x, caches or output"));
    };
    let positions = ins.get(3).copied().flatten();
    let mut e = Emit::new(g, id);
    // Work on [b, s, h, d] for packed input, [b, h, s, d] otherwise; the
    // caches broadcast over the heads axis.
    let (x4, heads_axis) = if heads > 0 {
        let (bs, h, rest) = (e.shape(x, 0, 2), e.ints(&[heads]), e.ints(&[-1]));
        let shape = e.concat(&[bs, h, rest], 0);
        (e.op("Reshape", &[x, shape]), 2)
    } else {
        (x, 1)
    };
    let [cos, sin] = [cos_cache, sin_cache].map(|c| {
        let rows = match positions {
            Some(p) => e.op("Gather", &[c, p]),
            None => c,
        };
        e.unsqueeze(rows, &[heads_axis])
    });
    let rotated = if dim > 0 { e.slice(x4, 0, dim, -1) } else { x4 };
    let turned = if interleaved {
        // Pairs (x[2i], x[2i + 1]) as a trailing axis of 2.
        let (lead, pairs) = (e.shape(rotated, 0, 3), e.ints(&[half, 2]));
        let split = e.concat(&[lead, pairs], 0);
        let p = e.op("Reshape", &[rotated, split]);
        let (x1, x2) = (e.slice(p, 0, 1, -1), e.slice(p, 1, 2, -1));
        let (c, s) = (e.unsqueeze(cos, &[-1]), e.unsqueeze(sin, &[-1]));
        let both = rotate(&mut e, x1, x2, c, s);
        let back = e.shape(rotated, 0, 4);
        e.op("Reshape", &[both, back])
    } else {
        let (x1, x2) = (e.slice(rotated, 0, half, -1), e.slice(rotated, half, 2 * half, -1));
        rotate(&mut e, x1, x2, cos, sin)
    };
    let y4 = if dim > 0 {
        let kept = e.slice(x4, dim, i64::MAX, -1);
        e.concat(&[turned, kept], -1)
    } else {
        turned
    };
    if heads > 0 {
        let back = e.shape(x, 0, 3);
        e.op_into("Reshape", &[y4, back], &[], Some(out));
    } else {
        e.op_into("Identity", &[y4], &[], Some(out));
    }
    Ok(())
}

/// The element type of `v` before inference, where its producers tell it:
/// a constant's or a declared type, a Cast's target, a comparison's bool,
/// through ops that keep their data input's type.
fn early_dtype(g: &Graph, v: ValueId) -> Option<DType> {
    if let Some(t) = g.values[v].constant.as_deref() {
        return Some(t.dtype);
    }
    if let Some((t, _)) = &g.values[v].declared {
        return DType::from_onnx(*t).ok();
    }
    let (_, n) = g.live_nodes().find(|(_, n)| n.outputs.contains(&Some(v)))?;
    let data = |i: usize| n.inputs.get(i).copied().flatten().and_then(|x| early_dtype(g, x));
    match n.op_type.as_str() {
        "Cast" => DType::from_onnx(n.attrs.int("to", 0).ok()? as i32).ok(),
        "Equal" | "Less" | "Greater" | "LessOrEqual" | "GreaterOrEqual" | "And" | "Or" | "Not" | "Xor" => {
            Some(DType::Bool)
        }
        "Expand" | "Unsqueeze" | "Squeeze" | "Reshape" | "Slice" | "Transpose" | "Identity" | "Concat" | "Gather" => {
            data(0)
        }
        "Where" => data(1),
        _ => None,
    }
}

/// `[x1 cos - x2 sin, x2 cos + x1 sin]` along the last axis.
fn rotate(e: &mut Emit, x1: ValueId, x2: ValueId, cos: ValueId, sin: ValueId) -> ValueId {
    let (a, b) = (e.op("Mul", &[x1, cos]), e.op("Mul", &[x2, sin]));
    let first = e.op("Sub", &[a, b]);
    let (c, d) = (e.op("Mul", &[x2, cos]), e.op("Mul", &[x1, sin]));
    let second = e.op("Add", &[c, d]);
    e.concat(&[first, second], -1)
}

/// Attention with an optional KV cache: what the bounded-dims lowering
/// fuses for decode (`lower::fuse_attention`) and runs as batched products
/// for prefill. Windows, external cache lengths and the QK output are not
/// covered.
fn attention(g: &mut Graph, id: NodeId) -> Result<()> {
    let node = &g.nodes[id];
    let a = &node.attrs;
    let err = |e: drift_ops::Error| Error::Node {
        node: node.name.clone(),
        op_type: node.op_type.clone(),
        msg: e.to_string(),
    };
    let softcap = a.float("softcap", 0.0).map_err(err)?;
    let windows = a.int("left_window", -1).map_err(err)? >= 0 || a.int("right_window", -1).map_err(err)? >= 0;
    let ins: Vec<Option<ValueId>> = node.inputs.clone();
    let outs: Vec<Option<ValueId>> = node.outputs.clone();
    let input = |i: usize| ins.get(i).copied().flatten();
    if windows || input(6).is_some() || outs.get(3).copied().flatten().is_some() {
        return Err(unsupported(g, id, "Attention with windows, nonpad_kv_seqlen or the QK output"));
    }
    let (q_heads, kv_heads) = (a.int("q_num_heads", 0).map_err(err)?, a.int("kv_num_heads", 0).map_err(err)?);
    let causal = a.int("is_causal", 0).map_err(err)? != 0;
    let scale = a.float_opt("scale").map_err(err)?;
    let (Some(q), Some(k), Some(v), Some(y)) = (input(0), input(1), input(2), outs[0]) else {
        return Err(unsupported(g, id, "Attention without Q, K, V or Y"));
    };
    let mask_is_bool = match input(3) {
        None => false,
        Some(m) => match early_dtype(g, m) {
            Some(t) => t == DType::Bool,
            None => return Err(unsupported(g, id, "Attention with an attn_mask of a type not known before inference")),
        },
    };
    let mut e = Emit::new(g, id);
    let packed = q_heads > 0;
    let (q4, k4, v4) = if packed {
        (e.split_heads(q, q_heads), e.split_heads(k, kv_heads), e.split_heads(v, kv_heads))
    } else {
        (q, k, v)
    };
    // Present = past ++ new along the sequence axis (or the new alone).
    let present = |e: &mut Emit, past: Option<ValueId>, new: ValueId, out: Option<ValueId>| match past {
        Some(p) => e.op_into("Concat", &[p, new], &[("axis", Attr::Int(2))], out),
        None => match out {
            Some(o) => e.op_into("Identity", &[new], &[], Some(o)),
            None => new,
        },
    };
    let kp = present(&mut e, input(4), k4, outs.get(1).copied().flatten());
    let vp = present(&mut e, input(5), v4, outs.get(2).copied().flatten());
    // Key/value heads repeated for grouped queries: [b, kv, 1, t, d]
    // expanded to [b, kv, q / kv, t, d], read as [b, q, t, d].
    let hq = e.shape(q4, 1, 2);
    let hkv = e.shape(kp, 1, 2);
    let rep = e.op("Div", &[hq, hkv]);
    let [kx, vx] = [kp, vp].map(|t| {
        let (b_kv, td, b) = (e.shape(t, 0, 2), e.shape(t, 2, 4), e.shape(t, 0, 1));
        let wide = e.concat(&[b_kv, rep, td], 0);
        let u = e.unsqueeze(t, &[2]);
        let x = e.op("Expand", &[u, wide]);
        let shape = e.concat(&[b, hq, td], 0);
        e.op("Reshape", &[x, shape])
    });
    let kt = e.transpose(kx, &[0, 1, 3, 2]);
    let scores = e.op("MatMul", &[q4, kt]);
    let scale = match scale {
        Some(s) => e.float(f64::from(s)),
        None => {
            let d = e.shape(q4, 3, 4);
            let df = e.op_into("Cast", &[d], &[("to", Attr::Int(1))], None);
            let root = e.op("Sqrt", &[df]);
            e.op("Reciprocal", &[root])
        }
    };
    let mut logits = e.op("Mul", &[scores, scale]);
    if softcap > 0.0 {
        // softcap * tanh(logits / softcap), before masks.
        let cap = e.float(f64::from(softcap));
        let ratio = e.op("Div", &[logits, cap]);
        let t = e.op("Tanh", &[ratio]);
        logits = e.op("Mul", &[t, cap]);
    }
    let neg_inf = e.float(f64::NEG_INFINITY);
    let zero = e.float(0.0);
    if let Some(m) = input(3) {
        let bias = if mask_is_bool { e.op("Where", &[m, zero, neg_inf]) } else { m };
        logits = e.op("Add", &[logits, bias]);
    }
    if causal {
        // Query i (after `past` cached keys) hides keys j > past + i.
        let axes = e.ints(&[0]);
        let s_len = e.shape(q4, 2, 3);
        let t_len = e.shape(kp, 2, 3);
        let s = e.op("Squeeze", &[s_len, axes]);
        let t = e.op("Squeeze", &[t_len, axes]);
        let past = e.op("Sub", &[t, s]);
        let (zero_i, one_i) = (
            e.constant(Tensor::from_i64(DType::I64, vec![], vec![0])),
            e.constant(Tensor::from_i64(DType::I64, vec![], vec![1])),
        );
        let q_pos = e.op("Range", &[past, t, one_i]);
        let k_pos = e.op("Range", &[zero_i, t, one_i]);
        let (kk, qq) = (e.unsqueeze(k_pos, &[0]), e.unsqueeze(q_pos, &[1]));
        let hide = e.op("Greater", &[kk, qq]);
        let bias = e.op("Where", &[hide, neg_inf, zero]);
        logits = e.op("Add", &[logits, bias]);
    }
    let probs = e.op_into("Softmax", &[logits], &[("axis", Attr::Int(-1))], None);
    if packed {
        let y4 = e.op("MatMul", &[probs, vx]);
        let yt = e.transpose(y4, &[0, 2, 1, 3]);
        let (bs, rest) = (e.shape(q, 0, 2), e.ints(&[-1]));
        let shape = e.concat(&[bs, rest], 0);
        e.op_into("Reshape", &[yt, shape], &[], Some(y));
    } else {
        e.op_into("MatMul", &[probs, vx], &[], Some(y));
    }
    Ok(())
}
