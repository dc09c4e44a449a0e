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
pub fn bind_inputs(
    g: &mut Graph,
    dims: &BTreeMap<String, usize>,
    shapes: &BTreeMap<String, Vec<usize>>,
) -> Result<()> {
    let mut missing: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for &v in &g.inputs.clone() {
        let value = &g.values[v];
        let Some((elem, declared)) = value.declared.clone() else {
            return Err(Error::Tensor { tensor: value.name.clone(), msg: "graph input has no tensor type".into() });
        };
        let dtype = DType::from_onnx(elem).map_err(|e| Error::Tensor { tensor: value.name.clone(), msg: e.to_string() })?;
        if let Some(shape) = shapes.get(&value.name) {
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

/// Builds every node's op, reporting all unsupported nodes together.
pub fn build_ops(g: &mut Graph) -> Result<()> {
    let mut unsupported = Vec::new();
    for node in g.nodes.iter_mut().filter(|n| !n.dead) {
        match drift_ops::build_op(&node.op_type, &node.domain, node.opset, &node.attrs) {
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
                        msg: format!("input '{}' is neither a graph input, an initializer nor a node output", g.values[v].name),
                    });
                }
            }
        }
    }
    for &v in &g.outputs {
        if !producer.contains_key(&v) && g.values[v].constant.is_none() && !graph_inputs.contains(&v) {
            return Err(Error::Tensor { tensor: g.values[v].name.clone(), msg: "graph output is never computed".into() });
        }
    }
    petgraph::algo::toposort(&dg, None).map(|order| order.into_iter().map(|i| dg[i]).collect()).map_err(|cycle| {
        let n = &g.nodes[dg[cycle.node_id()]];
        Error::Node { node: n.name.clone(), op_type: n.op_type.clone(), msg: "is part of a cycle".into() }
    })
}

/// Infers every value's type in `order` and folds nodes whose inputs are all
/// known (through the ops' CPU references).
pub fn infer_and_fold(g: &mut Graph, order: &[NodeId]) -> Result<()> {
    for &id in order {
        let node = &g.nodes[id];
        let op = node.op.as_ref().expect("build_ops ran");
        let ins: Vec<Option<Input>> = node
            .inputs
            .iter()
            .map(|v| {
                v.map(|v| {
                    let val = &g.values[v];
                    Input { ty: val.ty.as_ref().expect("inputs typed in topological order"), value: val.constant.as_deref() }
                })
            })
            .collect();
        let err = |e: drift_ops::Error| node_error(node.name.clone(), &node.op_type, e);
        let all_known = ins.iter().flatten().all(|i| i.value.is_some());
        let folded = if all_known {
            let vals: Vec<Option<&Tensor>> = ins.iter().map(|i| i.and_then(|i| i.value)).collect();
            match op.eval(&vals) {
                Ok(v) => Some(v),
                Err(drift_ops::Error::Unsupported(_)) => None,
                Err(e) => return Err(err(e)),
            }
        } else {
            op.fold_from_types(&ins)
        };
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
