//! Control flow (If, Loop, Scan), inlined at compile time.
//!
//! A bundle is a fixed dispatch list, so control flow must be resolved by
//! the compiler: an If whose condition is known becomes the nodes of the
//! branch it takes; a Loop whose trip count and condition are known becomes
//! one copy of its body per iteration; a Scan becomes one copy per element
//! of its sequence. Conditions and trip counts that come from graph inputs
//! can be fixed with `--const-input` (the error names them); ones computed
//! from run-time data are an error.
//!
//! Inference and inlining alternate: inference types every node it can and
//! reports the control-flow nodes whose inputs are typed; the first one is
//! expanded (a Loop by one iteration, since whether it goes on depends on
//! the iteration just added), and inference runs again.

use crate::error::{Error, Result};
use crate::import::inline_body;
use crate::ir::{Graph, Node, NodeId, Value, ValueId};
use crate::passes;
use drift_ops::{Attr, Attrs, DType, Tensor, TypeInfo};
use std::collections::HashMap;
use std::sync::Arc;

/// Most copies of a body one Loop or Scan may unroll into.
const MAX_UNROLL: usize = 4096;

/// Opset of the helper nodes this pass adds (Unsqueeze takes axes as an
/// input from 13 on).
const HELPER_OPSET: i64 = 13;

/// Infers types and folds constants, inlining control flow on the way.
/// Returns the final topological order.
pub fn infer_with_control_flow(g: &mut Graph) -> Result<Vec<NodeId>> {
    let mut loops: HashMap<NodeId, LoopState> = HashMap::new();
    loop {
        let order = passes::toposort(g)?;
        let pending = passes::infer_and_fold(g, &order)?;
        let Some(&id) = pending.first() else {
            passes::check_all_typed(g, &order)?;
            return Ok(order);
        };
        match g.nodes[id].op_type.as_str() {
            "If" => expand_if(g, id)?,
            "Loop" => expand_loop(g, id, &mut loops)?,
            _ => expand_scan(g, id)?,
        }
        passes::build_ops(g)?;
    }
}

fn node_err(node: &Node, msg: impl Into<String>) -> Error {
    Error::Node { node: node.name.clone(), op_type: node.op_type.clone(), msg: msg.into() }
}

/// The subgraph attribute `name` of a node.
fn body(node: &Node, name: &str) -> Result<Arc<onnx_protobuf::GraphProto>> {
    node.subgraphs.get(name).cloned().ok_or_else(|| node_err(node, format!("has no '{name}' graph attribute")))
}

/// Inlines `body` for one use, with errors naming the control-flow node.
fn inline(
    g: &mut Graph,
    id: NodeId,
    body: &onnx_protobuf::GraphProto,
    tag: &str,
    inputs: &[ValueId],
) -> Result<Vec<ValueId>> {
    let (name, scope) = (g.nodes[id].name.clone(), Arc::clone(&g.nodes[id].scope));
    let prefix = format!("{name}/{tag}/");
    inline_body(g, body, &prefix, inputs, &scope).map(|(outs, _)| outs).map_err(|msg| node_err(&g.nodes[id], msg))
}

/// The compile-time value of input `i`, or the error naming where it comes from.
fn known_input(g: &Graph, id: NodeId, i: usize, what: &str) -> Result<Arc<Tensor>> {
    let v = g.nodes[id]
        .inputs
        .get(i)
        .copied()
        .flatten()
        .ok_or_else(|| node_err(&g.nodes[id], format!("{what} is missing")))?;
    match &g.values[v].constant {
        Some(t) => Ok(Arc::clone(t)),
        None => Err(passes::op_error(g, id, drift_ops::Error::needs_value(i, what))),
    }
}

fn add_value(g: &mut Graph, name: String) -> ValueId {
    g.add_value(Value { name, ..Value::default() })
}

fn add_const(g: &mut Graph, name: String, t: Tensor) -> ValueId {
    let ty = TypeInfo::new(t.dtype, t.shape.clone());
    g.add_value(Value { name, ty: Some(ty), constant: Some(Arc::new(t)), ..Value::default() })
}

fn add_node(g: &mut Graph, name: String, op_type: &str, attrs: Attrs, inputs: Vec<ValueId>, output: ValueId) {
    g.nodes.push(Node {
        name,
        op_type: op_type.into(),
        opset: HELPER_OPSET,
        attrs,
        inputs: inputs.into_iter().map(Some).collect(),
        outputs: vec![Some(output)],
        ..Node::default()
    });
}

/// Makes `dst` (an output of the control-flow node) a copy of `src`.
fn forward(g: &mut Graph, id: NodeId, k: usize, src: ValueId, dst: ValueId) {
    let name = format!("{}/out{k}", g.nodes[id].name);
    add_node(g, name, "Identity", Attrs::default(), vec![src], dst);
}

/// Stacks `parts` along a new `axis`: Unsqueeze each, then Concat.
fn stack(g: &mut Graph, id: NodeId, k: usize, parts: &[ValueId], axis: i64, dst: ValueId) {
    let base = format!("{}/scan{k}", g.nodes[id].name);
    let axes = add_const(g, format!("{base}/axes"), Tensor::i64_vec(vec![axis]));
    let mut unsqueezed = vec![];
    for (t, &part) in parts.iter().enumerate() {
        let u = add_value(g, format!("{base}/{t}"));
        add_node(g, format!("{base}/unsqueeze{t}"), "Unsqueeze", Attrs::default(), vec![part, axes], u);
        unsqueezed.push(u);
    }
    let attrs = Attrs([("axis".to_string(), Attr::Int(axis))].into_iter().collect());
    add_node(g, format!("{base}/concat"), "Concat", attrs, unsqueezed, dst);
}

// ---------------------------------------------------------------------------
// If

fn expand_if(g: &mut Graph, id: NodeId) -> Result<()> {
    let cond = known_input(g, id, 0, "cond")?;
    let taken = cond.to_f64().first().is_some_and(|&c| c != 0.0);
    let branch = if taken { "then_branch" } else { "else_branch" };
    let graph = body(&g.nodes[id], branch)?;
    let outs = inline(g, id, &graph, branch, &[])?;
    let node_outputs = g.nodes[id].outputs.clone();
    if outs.len() != node_outputs.len() {
        return Err(node_err(
            &g.nodes[id],
            format!("{branch} has {} outputs, the node {}", outs.len(), node_outputs.len()),
        ));
    }
    for (k, (src, dst)) in outs.into_iter().zip(node_outputs).enumerate() {
        if let Some(dst) = dst {
            forward(g, id, k, src, dst);
        }
    }
    g.nodes[id].dead = true;
    Ok(())
}

// ---------------------------------------------------------------------------
// Loop

/// How far a Loop has been unrolled.
struct LoopState {
    iterations: usize,
    /// The condition for the next iteration (None: the Loop has none).
    cond: Option<ValueId>,
    carried: Vec<ValueId>,
    /// Per iteration, the values of the scan outputs.
    scans: Vec<Vec<ValueId>>,
}

fn expand_loop(g: &mut Graph, id: NodeId, loops: &mut HashMap<NodeId, LoopState>) -> Result<()> {
    let node = &g.nodes[id];
    if node.inputs.len() < 2 {
        return Err(node_err(node, "needs the M and cond inputs (possibly empty)"));
    }
    if let std::collections::hash_map::Entry::Vacant(slot) = loops.entry(id) {
        let carried = node.inputs[2..].iter().map(|v| v.ok_or_else(|| node_err(node, "a loop-carried input is empty")));
        let carried = carried.collect::<Result<_>>()?;
        slot.insert(LoopState { iterations: 0, cond: node.inputs[1], carried, scans: vec![] });
    }
    let trip_count = match node.inputs[0] {
        Some(_) => Some(known_input(g, id, 0, "M")?.to_i64().first().copied().unwrap_or(0)),
        None => None,
    };
    let state = loops.get_mut(&id).expect("inserted above");
    let go_on = match state.cond {
        None => None,
        Some(_) if state.iterations == 0 => {
            Some(known_input(g, id, 1, "cond")?.to_f64().first().is_some_and(|&v| v != 0.0))
        }
        Some(c) => match &g.values[c].constant {
            Some(t) => Some(t.to_f64().first().is_some_and(|&v| v != 0.0)),
            None => {
                return Err(node_err(&g.nodes[id], "the loop condition its body computes depends on run-time data"));
            }
        },
    };
    if trip_count.is_none() && go_on.is_none() {
        return Err(node_err(&g.nodes[id], "has neither a trip count nor a condition: it never ends"));
    }
    let done = trip_count.is_some_and(|m| state.iterations as i64 >= m) || go_on == Some(false);
    if done {
        let state = loops.remove(&id).expect("present");
        return finish_loop(g, id, state);
    }
    if state.iterations >= MAX_UNROLL {
        return Err(node_err(&g.nodes[id], format!("runs more than {MAX_UNROLL} iterations, too many to unroll")));
    }
    let it = state.iterations;
    let name = g.nodes[id].name.clone();
    let iter_num = add_const(g, format!("{name}/{it}/iter"), Tensor::from_i64(DType::I64, vec![], vec![it as i64]));
    let cond_in = match state.cond {
        Some(c) => c,
        None => add_const(g, format!("{name}/{it}/cond"), Tensor::from_i64(DType::Bool, vec![], vec![1])),
    };
    let inputs: Vec<ValueId> = [iter_num, cond_in].into_iter().chain(state.carried.iter().copied()).collect();
    let n_carried = state.carried.len();
    let graph = body(&g.nodes[id], "body")?;
    let outs = inline(g, id, &graph, &it.to_string(), &inputs)?;
    if outs.len() < 1 + n_carried {
        return Err(node_err(&g.nodes[id], format!("its body has {} outputs, fewer than 1 + {n_carried}", outs.len())));
    }
    let state = loops.get_mut(&id).expect("present");
    state.iterations += 1;
    state.cond = state.cond.map(|_| outs[0]);
    state.carried = outs[1..=n_carried].to_vec();
    state.scans.push(outs[1 + n_carried..].to_vec());
    Ok(())
}

fn finish_loop(g: &mut Graph, id: NodeId, state: LoopState) -> Result<()> {
    let outputs = g.nodes[id].outputs.clone();
    let n_carried = state.carried.len();
    for (k, dst) in outputs.iter().enumerate() {
        let Some(dst) = *dst else { continue };
        if k < n_carried {
            forward(g, id, k, state.carried[k], dst);
            continue;
        }
        let parts: Vec<ValueId> = state.scans.iter().filter_map(|s| s.get(k - n_carried).copied()).collect();
        if parts.is_empty() {
            return Err(node_err(&g.nodes[id], "runs zero times but has scan outputs, whose shape is then unknown"));
        }
        stack(g, id, k, &parts, 0, dst);
    }
    g.nodes[id].dead = true;
    Ok(())
}

// ---------------------------------------------------------------------------
// Scan

fn expand_scan(g: &mut Graph, id: NodeId) -> Result<()> {
    let node = &g.nodes[id];
    if node.opset < 9 {
        return Err(node_err(node, "Scan before opset 9 (batched, with sequence_lens) is not supported"));
    }
    let attr = |e: drift_ops::Error| node_err(node, e.to_string());
    let n_scan = node.attrs.int("num_scan_inputs", 0).map_err(attr)? as usize;
    let inputs: Vec<ValueId> =
        node.inputs.iter().map(|v| v.ok_or_else(|| node_err(node, "an input is empty"))).collect::<Result<_>>()?;
    if n_scan == 0 || n_scan > inputs.len() {
        return Err(node_err(node, format!("num_scan_inputs = {n_scan} does not fit {} inputs", inputs.len())));
    }
    let n_state = inputs.len() - n_scan;
    let ints = |name: &str, n: usize| -> Result<Vec<i64>> {
        Ok(node.attrs.ints_opt(name).map_err(attr)?.map_or(vec![0; n], |v| v.to_vec()))
    };
    let (in_axes, in_dirs) = (ints("scan_input_axes", n_scan)?, ints("scan_input_directions", n_scan)?);
    let n_out_scan = node.outputs.len().saturating_sub(n_state);
    let (out_axes, out_dirs) = (ints("scan_output_axes", n_out_scan)?, ints("scan_output_directions", n_out_scan)?);
    if in_axes.len() != n_scan
        || in_dirs.len() != n_scan
        || out_axes.len() != n_out_scan
        || out_dirs.len() != n_out_scan
    {
        return Err(node_err(node, "scan axes/directions attributes do not match the number of scan inputs/outputs"));
    }
    let mut axes = vec![];
    let mut steps = None;
    for (j, &a) in in_axes.iter().enumerate() {
        let ty = g.ty(inputs[n_state + j]);
        let axis = drift_ops::norm_axis(a, ty.rank()).map_err(attr)?;
        let len = ty.shape[axis];
        if steps.is_some_and(|s| s != len) {
            return Err(node_err(node, "scan inputs disagree on the sequence length"));
        }
        steps = Some(len);
        axes.push(axis);
    }
    let steps = steps.unwrap_or(0);
    if steps > MAX_UNROLL {
        return Err(node_err(node, format!("scans {steps} steps, more than the {MAX_UNROLL} drift unrolls")));
    }
    let graph = body(node, "body")?;
    let name = node.name.clone();
    let mut state: Vec<ValueId> = inputs[..n_state].to_vec();
    let mut scans: Vec<Vec<ValueId>> = vec![vec![]; n_out_scan];
    for t in 0..steps {
        let mut step_inputs = state.clone();
        for j in 0..n_scan {
            let at = if in_dirs[j] != 0 { steps - 1 - t } else { t };
            let index =
                add_const(g, format!("{name}/{t}/index{j}"), Tensor::from_i64(DType::I64, vec![], vec![at as i64]));
            let elem = add_value(g, format!("{name}/{t}/elem{j}"));
            let attrs = Attrs([("axis".to_string(), Attr::Int(axes[j] as i64))].into_iter().collect());
            add_node(g, format!("{name}/{t}/slice{j}"), "Gather", attrs, vec![inputs[n_state + j], index], elem);
            step_inputs.push(elem);
        }
        let outs = inline(g, id, &graph, &t.to_string(), &step_inputs)?;
        if outs.len() != n_state + n_out_scan {
            return Err(node_err(
                &g.nodes[id],
                format!("its body has {} outputs, expected {}", outs.len(), n_state + n_out_scan),
            ));
        }
        state = outs[..n_state].to_vec();
        for (k, parts) in scans.iter_mut().enumerate() {
            parts.push(outs[n_state + k]);
        }
    }
    let outputs = g.nodes[id].outputs.clone();
    for (k, dst) in outputs.iter().enumerate() {
        let Some(dst) = *dst else { continue };
        if k < n_state {
            forward(g, id, k, state[k], dst);
            continue;
        }
        let j = k - n_state;
        let mut parts = scans[j].clone();
        if parts.is_empty() {
            return Err(node_err(&g.nodes[id], "scans zero steps but has scan outputs, whose shape is then unknown"));
        }
        if out_dirs[j] != 0 {
            parts.reverse();
        }
        stack(g, id, k, &parts, out_axes[j], dst);
    }
    g.nodes[id].dead = true;
    Ok(())
}
