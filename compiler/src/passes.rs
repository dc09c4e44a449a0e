//! Graph passes, each a plain function over the IR, run in the order that
//! `lib.rs::compile` lists them.

use crate::error::{Error, Result, UnsupportedNode};
use crate::ir::{Dim, Graph, NodeId, ValueId};
use drift_ops::{DType, Input, Tensor, TypeInfo};
use petgraph::graph::DiGraph;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

/// Fixes every graph input's type: declared dims, symbols bound by
/// `--dim`, or a whole shape given by the caller. Reports every unbound
/// symbol at once.
pub fn bind_inputs(g: &mut Graph, dims: &BTreeMap<String, usize>, shapes: &BTreeMap<String, Vec<usize>>) -> Result<()> {
    let mut missing: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for &v in &g.inputs.clone() {
        let value = &g.values[v];
        let Some((elem, declared)) = value.declared.clone() else {
            return Err(Error::Tensor { tensor: value.name.clone(), msg: "graph input has no tensor type".into() });
        };
        let dtype =
            DType::from_onnx(elem).map_err(|e| Error::Tensor { tensor: value.name.clone(), msg: e.to_string() })?;
        if let Some(shape) = shapes.get(&value.name) {
            check_elements(shape).map_err(|msg| Error::Tensor { tensor: value.name.clone(), msg })?;
            g.values[v].ty = Some(TypeInfo::new(dtype, shape.clone()));
            continue;
        }
        let mut shape = Vec::with_capacity(declared.len());
        for (axis, d) in declared.iter().enumerate() {
            match d {
                Dim::Fixed(n) => shape.push(*n),
                Dim::Sym(s) => match dims.get(s) {
                    Some(&n) => shape.push(n),
                    None => missing.entry(s.clone()).or_default().push(format!("{}[{axis}]", value.name)),
                },
                Dim::Unknown => missing.entry("?".into()).or_default().push(format!("{}[{axis}]", value.name)),
            }
        }
        if declared.len() == shape.len() {
            check_elements(&shape).map_err(|msg| Error::Tensor { tensor: g.values[v].name.clone(), msg })?;
        }
        g.values[v].ty = Some(TypeInfo::new(dtype, shape));
    }
    if missing.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = missing
        .iter()
        .map(|(s, uses)| {
            if s == "?" {
                format!("unnamed dims at {} (give the input's shape)", uses.join(", "))
            } else {
                format!("'{s}' (used by {})", uses.join(", "))
            }
        })
        .collect();
    Err(Error::Other(format!(
        "the model has dynamic dimensions that must be fixed at compile time: {}; bind them with --dim NAME=VALUE",
        list.join("; ")
    )))
}

/// Most elements one tensor may have: kernels index elements with 32-bit integers.
pub const MAX_ELEMENTS: u64 = u32::MAX as u64;

/// Constant folding materializes tensors in host memory; a node whose
/// result would have more elements is left to the GPU instead.
const MAX_FOLD_ELEMENTS: u64 = 1 << 30;

/// The element count of `shape`, `None` if it overflows u64.
fn elements(shape: &[usize]) -> Option<u64> {
    shape.iter().try_fold(1u64, |n, &d| n.checked_mul(d as u64))
}

/// Rejects shapes with more than [`MAX_ELEMENTS`] elements, before any pass
/// multiplies their dimensions or allocates for them.
fn check_elements(shape: &[usize]) -> std::result::Result<(), String> {
    match elements(shape) {
        Some(n) if n <= MAX_ELEMENTS => Ok(()),
        Some(n) => Err(format!("shape {shape:?} has {n} elements, more than the {MAX_ELEMENTS} a GPU tensor may hold")),
        None => Err(format!("shape {shape:?} has more elements than 64 bits can count")),
    }
}

/// Builds every node's op, reporting all unsupported nodes together.
pub fn build_ops(g: &mut Graph) -> Result<()> {
    let mut unsupported = Vec::new();
    for node in g.nodes.iter_mut().filter(|n| !n.dead && n.op.is_none() && !crate::ir::is_control_flow(n)) {
        match drift_ops::build_op(&node.op_type, &node.domain, node.opset, &node.attrs, node.outputs.len()) {
            Ok(op) => node.op = Some(op),
            Err(drift_ops::Error::Unsupported(reason)) => unsupported.push(UnsupportedNode {
                node: node.name.clone(),
                op_type: node.op_type.clone(),
                domain: node.domain.clone(),
                opset: node.opset,
                reason: if reason == node.op_type { "no implementation".into() } else { reason },
            }),
            Err(e) => return Err(node_error(g_name(&node.name), &node.op_type, e)),
        }
    }
    if unsupported.is_empty() { Ok(()) } else { Err(Error::Unsupported(unsupported)) }
}

fn g_name(s: &str) -> String {
    s.to_string()
}

fn node_error(node: String, op_type: &str, e: impl std::fmt::Display) -> Error {
    Error::Node { node, op_type: op_type.to_string(), msg: e.to_string() }
}

/// The compiler error for an op error of node `id`: a `NeedsValue` names the
/// tensor and the graph inputs it is computed from.
pub fn op_error(g: &Graph, id: NodeId, e: drift_ops::Error) -> Error {
    let node = &g.nodes[id];
    match e {
        drift_ops::Error::NeedsValue { input, what } => {
            let tensor = node.inputs.get(input).copied().flatten();
            let what = match tensor {
                Some(v) => format!("{what} (input {input}, tensor '{}')", g.values[v].name),
                None => format!("{what} (input {input})"),
            };
            let from_inputs = tensor.map(|v| source_inputs(g, v)).unwrap_or_default();
            Error::NeedsValue { node: node.name.clone(), op_type: node.op_type.clone(), what, from_inputs }
        }
        e => node_error(node.name.clone(), &node.op_type, e),
    }
}

/// Names of the non-constant graph inputs that value `v` is computed from.
fn source_inputs(g: &Graph, v: ValueId) -> Vec<String> {
    let producer: HashMap<ValueId, NodeId> =
        g.live_nodes().flat_map(|(id, n)| n.outputs.iter().flatten().map(move |&o| (o, id))).collect();
    let graph_inputs: BTreeSet<ValueId> = g.inputs.iter().copied().collect();
    let (mut seen, mut stack, mut found) = (BTreeSet::new(), vec![v], BTreeSet::new());
    while let Some(v) = stack.pop() {
        if !seen.insert(v) || g.values[v].constant.is_some() {
            continue;
        }
        if graph_inputs.contains(&v) {
            found.insert(g.values[v].name.clone());
        } else if let Some(&p) = producer.get(&v) {
            stack.extend(g.nodes[p].inputs.iter().flatten().copied());
        }
    }
    found.into_iter().collect()
}

/// Fixes the values of the graph inputs named in `values` (`--const-input`):
/// they become constants the passes can fold, and the bundle records them
/// so the runtime can check that callers pass exactly these values.
pub fn fix_input_values(g: &mut Graph, values: &BTreeMap<String, Tensor>) -> Result<()> {
    for (name, t) in values {
        let Some(&v) = g.inputs.iter().find(|&&v| &g.values[v].name == name) else {
            let names: Vec<&str> = g.inputs.iter().map(|&v| g.values[v].name.as_str()).collect();
            return Err(Error::Tensor {
                tensor: name.clone(),
                msg: format!("--const-input names no graph input (inputs: {})", names.join(", ")),
            });
        };
        let ty = g.values[v].ty.as_ref().expect("bind_inputs typed every input");
        if ty.dtype != t.dtype || ty.shape != t.shape {
            return Err(Error::Tensor {
                tensor: name.clone(),
                msg: format!(
                    "the fixed value is {} {:?}, but the input is {} {:?}",
                    t.dtype, t.shape, ty.dtype, ty.shape
                ),
            });
        }
        g.values[v].constant = Some(Arc::new(t.clone()));
    }
    Ok(())
}

/// Orders nodes so producers precede consumers; rejects cycles, undefined
/// inputs and values produced twice.
pub fn toposort(g: &Graph) -> Result<Vec<NodeId>> {
    let mut dg = DiGraph::<NodeId, ()>::new();
    let ids: HashMap<NodeId, _> = g.live_nodes().map(|(id, _)| (id, dg.add_node(id))).collect();
    let mut producer: HashMap<ValueId, NodeId> = HashMap::new();
    for (id, n) in g.live_nodes() {
        for &v in n.outputs.iter().flatten() {
            if let Some(prev) = producer.insert(v, id) {
                return Err(Error::Tensor {
                    tensor: g.values[v].name.clone(),
                    msg: format!("is produced by two nodes, '{}' and '{}'", g.nodes[prev].name, n.name),
                });
            }
        }
    }
    let graph_inputs: BTreeSet<ValueId> = g.inputs.iter().copied().collect();
    for (id, n) in g.live_nodes() {
        for &v in n.inputs.iter().flatten() {
            match producer.get(&v) {
                Some(&p) => {
                    dg.add_edge(ids[&p], ids[&id], ());
                }
                None if g.values[v].constant.is_some() || graph_inputs.contains(&v) => {}
                None => {
                    return Err(Error::Node {
                        node: n.name.clone(),
                        op_type: n.op_type.clone(),
                        msg: format!(
                            "input '{}' is neither a graph input, an initializer nor a node output",
                            g.values[v].name
                        ),
                    });
                }
            }
        }
    }
    for &v in &g.outputs {
        if !producer.contains_key(&v) && g.values[v].constant.is_none() && !graph_inputs.contains(&v) {
            return Err(Error::Tensor {
                tensor: g.values[v].name.clone(),
                msg: "graph output is never computed".into(),
            });
        }
    }
    petgraph::algo::toposort(&dg, None).map(|order| order.into_iter().map(|i| dg[i]).collect()).map_err(|cycle| {
        let n = &g.nodes[dg[cycle.node_id()]];
        Error::Node { node: n.name.clone(), op_type: n.op_type.clone(), msg: "is part of a cycle".into() }
    })
}

/// Infers every value's type in `order` and folds nodes whose inputs are all
/// known (through the ops' CPU references). Nodes already typed are skipped;
/// control-flow nodes and what depends on them wait: the returned list holds
/// the control-flow nodes whose inputs are typed, for `control` to inline.
pub fn infer_and_fold(g: &mut Graph, order: &[NodeId]) -> Result<Vec<NodeId>> {
    let mut pending = vec![];
    for &id in order {
        let node = &g.nodes[id];
        let typed = |v: &Option<ValueId>| v.is_none_or(|v| g.values[v].ty.is_some());
        if !node.inputs.iter().all(typed)
            || (!node.outputs.is_empty() && node.outputs.iter().flatten().all(|&v| g.values[v].ty.is_some()))
        {
            continue;
        }
        if crate::ir::is_control_flow(node) {
            pending.push(id);
            continue;
        }
        let op = node.op.as_ref().expect("build_ops ran");
        let ins: Vec<Option<Input>> = node
            .inputs
            .iter()
            .map(|v| {
                v.map(|v| {
                    let val = &g.values[v];
                    Input {
                        ty: val.ty.as_ref().expect("inputs typed in topological order"),
                        value: val.constant.as_deref(),
                    }
                })
            })
            .collect();
        let err = |e: drift_ops::Error| op_error(g, id, e);
        let folded = fold(op.as_ref(), &ins).map_err(err)?;
        let outputs = node.outputs.clone();
        match folded {
            Some(vals) => {
                for (slot, t) in outputs.iter().zip(vals) {
                    if let Some(v) = slot {
                        g.values[*v].ty = Some(TypeInfo::new(t.dtype, t.shape.clone()));
                        g.values[*v].constant = Some(Arc::new(t));
                    }
                }
            }
            None => {
                let tys = op.infer(&ins).map_err(err)?;
                for (slot, t) in outputs.iter().zip(tys) {
                    if let Some(v) = slot {
                        g.values[*v].ty = Some(t);
                    }
                }
            }
        }
        let node = &g.nodes[id];
        if let Some(v) = node.outputs.iter().flatten().find(|&&v| g.values[v].ty.is_none()) {
            return Err(Error::Node {
                node: node.name.clone(),
                op_type: node.op_type.clone(),
                msg: format!("output '{}' was not produced by the op", g.values[*v].name),
            });
        }
        for &v in node.outputs.iter().flatten() {
            let shape = &g.values[v].ty.as_ref().expect("checked above").shape;
            check_elements(shape).map_err(|msg| Error::Node {
                node: node.name.clone(),
                op_type: node.op_type.clone(),
                msg: format!("output '{}': {msg}", g.values[v].name),
            })?;
        }
    }
    Ok(pending)
}

/// The outputs of an op whose inputs are all known, through its CPU
/// reference, or those that follow from the input types alone (Shape);
/// `None` when the op must run on the GPU.
pub fn fold(
    op: &dyn drift_ops::Op,
    ins: &[Option<Input>],
) -> std::result::Result<Option<Vec<Tensor>>, drift_ops::Error> {
    let all_known = ins.iter().flatten().all(|i| i.value.is_some());
    // Never allocate an absurd constant (ConstantOfShape of [1e6, 1e6, 1e6]):
    // results too large to fold go to the GPU, which checks its limits.
    let foldable = || match op.infer(ins) {
        Ok(tys) => tys.iter().all(|t| elements(&t.shape).is_some_and(|n| n <= MAX_FOLD_ELEMENTS)),
        Err(_) => true,
    };
    if all_known && foldable() {
        let vals: Vec<Option<&Tensor>> = ins.iter().map(|i| i.and_then(|i| i.value)).collect();
        return match op.eval(&vals) {
            Ok(v) => Ok(Some(v)),
            Err(drift_ops::Error::Unsupported(_)) => Ok(None),
            Err(e) => Err(e),
        };
    }
    Ok(op.fold_from_types(ins))
}

/// After inference: every live node's outputs have types. A node left
/// untyped reads a value nothing computes (a bug in an inlining pass).
pub fn check_all_typed(g: &Graph, order: &[NodeId]) -> Result<()> {
    for &id in order {
        let node = &g.nodes[id];
        if let Some(&v) = node.outputs.iter().flatten().find(|&&v| g.values[v].ty.is_none()) {
            return Err(node_error(
                node.name.clone(),
                &node.op_type,
                format!("output '{}' has no type", g.values[v].name),
            ));
        }
    }
    Ok(())
}

/// Marks nodes dead when their outputs are all constants or unused.
pub fn eliminate_dead_nodes(g: &mut Graph, order: &[NodeId]) {
    let mut needed: BTreeSet<ValueId> = g.outputs.iter().copied().collect();
    for &id in order.iter().rev() {
        let n = &g.nodes[id];
        let useful = n.outputs.iter().flatten().any(|v| needed.contains(v) && g.values[*v].constant.is_none());
        if useful {
            needed.extend(n.inputs.iter().flatten().copied());
        } else {
            g.nodes[id].dead = true;
        }
    }
}

/// Splits Gemm/MatMul nodes whose constant weight is larger than one
/// binding may hold (VGG's 400 MB fully connected layers on a 128 MiB
/// device) into column blocks joined by a Concat: `Y = [A·B₀ | A·B₁ | …]`.
/// Returns the new node order.
pub fn split_oversized_weights(g: &mut Graph, order: &[NodeId], max_bytes: u64) -> Result<Vec<NodeId>> {
    let mut new_order = Vec::with_capacity(order.len());
    for &id in order {
        match weight_split_plan(g, id, max_bytes) {
            Some(plan) => new_order.extend(apply_weight_split(g, id, plan)?),
            None => new_order.push(id),
        }
    }
    Ok(new_order)
}

/// (number of blocks, whether B is stored transposed)
struct SplitPlan {
    blocks: usize,
    trans_b: bool,
}

fn weight_split_plan(g: &Graph, id: NodeId, max_bytes: u64) -> Option<SplitPlan> {
    let n = &g.nodes[id];
    if n.dead || !(n.op_type == "Gemm" || n.op_type == "MatMul") {
        return None;
    }
    let b = g.values[(*n.inputs.get(1)?)?].constant.as_ref()?;
    let bytes = b.len() as u64 * 4;
    if bytes <= max_bytes || b.rank() != 2 {
        return None;
    }
    let trans_b = n.op_type == "Gemm" && n.attrs.int("transB", 0).ok()? != 0;
    if n.op_type == "Gemm" && n.attrs.int("transA", 0).ok()? != 0 {
        return None;
    }
    Some(SplitPlan { blocks: bytes.div_ceil(max_bytes) as usize, trans_b })
}

fn apply_weight_split(g: &mut Graph, id: NodeId, plan: SplitPlan) -> Result<Vec<NodeId>> {
    let node = &g.nodes[id];
    let (name, op_type, opset, attrs) = (node.name.clone(), node.op_type.clone(), node.opset, node.attrs.clone());
    let inputs = node.inputs.clone();
    let out = node.outputs[0].expect("Gemm/MatMul has an output");
    let b = g.values[inputs[1].expect("checked")].constant.clone().expect("checked");
    let c = inputs.get(2).copied().flatten();
    let n_cols = if plan.trans_b { b.shape[0] } else { b.shape[1] };
    let per = n_cols.div_ceil(plan.blocks);
    let mut ids = vec![];
    let mut parts = vec![];
    for (k, start) in (0..n_cols).step_by(per).enumerate() {
        let end = (start + per).min(n_cols);
        let bk = column_block(&b, start, end, plan.trans_b);
        let bv = g.add_constant(format!("{name}/B{k}"), bk);
        let cv = c.map(|c| split_bias(g, c, start, end, n_cols, &format!("{name}/C{k}")));
        let yv = g.add_value(crate::ir::Value { name: format!("{name}/Y{k}"), ..Default::default() });
        let mut ins = vec![inputs[0], Some(bv)];
        if let Some(cv) = cv {
            ins.push(Some(cv));
        }
        ids.push(add_typed_node(g, format!("{name}/part{k}"), &op_type, opset, attrs.clone(), ins, yv)?);
        parts.push(Some(yv));
    }
    let mut concat_attrs = drift_ops::Attrs::default();
    concat_attrs.0.insert("axis".into(), drift_ops::Attr::Int(-1));
    ids.push(add_typed_node(
        g,
        format!("{name}/concat"),
        "Concat",
        g.opsets.get("").copied().unwrap_or(13),
        concat_attrs,
        parts,
        out,
    )?);
    g.nodes[id].dead = true;
    Ok(ids)
}

fn column_block(b: &Tensor, start: usize, end: usize, trans: bool) -> Tensor {
    let v = b.to_f64();
    let (rows, cols) = (b.shape[0], b.shape[1]);
    if trans {
        // Rows of B are output columns.
        Tensor::from_f64(b.dtype, vec![end - start, cols], v[start * cols..end * cols].to_vec())
    } else {
        let data = (0..rows).flat_map(|r| v[r * cols + start..r * cols + end].to_vec()).collect();
        Tensor::from_f64(b.dtype, vec![rows, end - start], data)
    }
}

/// The bias block for output columns `start..end`; a bias that does not
/// vary along the columns is shared.
fn split_bias(g: &mut Graph, c: ValueId, start: usize, end: usize, n_cols: usize, name: &str) -> ValueId {
    let Some(t) = g.values[c].constant.clone() else { return c };
    if t.shape.last() != Some(&n_cols) {
        return c;
    }
    let rows = t.len() / n_cols;
    let v = t.to_f64();
    let data = (0..rows).flat_map(|r| v[r * n_cols + start..r * n_cols + end].to_vec()).collect();
    let mut shape = t.shape.clone();
    *shape.last_mut().expect("nonempty") = end - start;
    g.add_constant(name.to_string(), Tensor::from_f64(t.dtype, shape, data))
}

/// Adds a node with its op built and its output typed.
fn add_typed_node(
    g: &mut Graph,
    name: String,
    op_type: &str,
    opset: i64,
    attrs: drift_ops::Attrs,
    inputs: Vec<Option<ValueId>>,
    out: ValueId,
) -> Result<NodeId> {
    let op = drift_ops::build_op(op_type, "", opset, &attrs, 1).map_err(|e| node_error(name.clone(), op_type, e))?;
    let ins: Vec<Option<Input>> =
        inputs.iter().map(|v| v.map(|v| Input { ty: g.ty(v), value: g.values[v].constant.as_deref() })).collect();
    let ty = op.infer(&ins).map_err(|e| node_error(name.clone(), op_type, e))?;
    g.values[out].ty = ty.into_iter().next();
    g.nodes.push(crate::ir::Node {
        name,
        op_type: op_type.to_string(),
        domain: String::new(),
        opset,
        attrs,
        inputs,
        outputs: vec![Some(out)],
        op: Some(op),
        ..Default::default()
    });
    Ok(g.nodes.len() - 1)
}
