//! Which dynamic nodes get kernels, and the kernels they get.
//!
//! Every live node reading a dynamic value is one of:
//! - `ShapeOnly`: its outputs are shape arithmetic known symbolically
//!   (Shape, Gather on shapes, Concat of dims...): no kernel, consumers read
//!   the polynomials.
//! - `View`: Reshape / Squeeze / Unsqueeze / Flatten / Identity of a
//!   materialized tensor: the output aliases the input (dense layouts).
//! - `Inline`: an injective op (elementwise, Cast, Where, Transpose, Slice,
//!   Concat, Expand, Gather, Range, a view of an inlined value) whose single
//!   consumer computes it on the fly: each becomes a WGSL function of the
//!   output coordinates, called by its consumer's kernel.
//! - `Kernel`: everything else — the anchors (MatMul, QMatMul, Softmax,
//!   reductions, sampling) and injective values that are graph outputs,
//!   read by several nodes or by a node with concrete shapes.
//!
//! An anchor's operands may be inlined expressions: the RMSNorm scale in a
//! matmul's A loads, the attention mask in the softmax's loads.
//!
//! Decode attention (a product of few query rows, a Softmax over its
//! scores, a product with the values) becomes one kernel: the score
//! product and the Softmax are `Fused` into the value product's kernel
//! (`Plan::attention`), which computes scores on the fly from the query
//! and key operands.

use super::DynInfo;
use super::kernels::{self, Gen, Groups};
use super::shape;
use crate::error::{Error, Result};
use crate::ir::{Graph, NodeId, ValueId};
use drift_ops::{Kernel, TempSpec};
use std::collections::{HashMap, HashSet};

/// How a dynamic node is lowered (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    ShapeOnly,
    View,
    Inline,
    Kernel,
    /// Computed inside another node's kernel (the score product and the
    /// Softmax of a fused attention).
    Fused,
    /// A tensor written by another node's kernel (`Plan::paired`).
    Paired,
    /// A row mean computed by each workgroup of the product reading it
    /// (`Plan::prologue`).
    Prologue,
}

/// The decision per dynamic node.
#[derive(Debug, Default)]
pub struct Plan {
    pub class: HashMap<NodeId, Class>,
    /// Fused attentions: the value product → (its Softmax, the score product).
    pub attention: HashMap<NodeId, (NodeId, NodeId)>,
    /// Concats writing tensors of one shape in one dispatch (a decoder's
    /// present key and value): the first → the second, which is `Paired`.
    pub paired: HashMap<NodeId, NodeId>,
    /// Decode products that compute the row means their A operand reads (a
    /// fused RMSNorm) in every workgroup before the product: product → means.
    pub prologue: HashMap<NodeId, Vec<NodeId>>,
}

/// A kernel argument of a dynamic kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArgOf {
    Value(ValueId),
    Temp(usize),
}

/// One dispatch of a dynamic node: the kernel (its `args` name the
/// accessors; `values` says which tensor each one is) and its grid.
pub struct DynStep {
    pub kernel: Kernel,
    pub values: Vec<ArgOf>,
    pub groups: [Groups; 3],
}

/// What the program builder does with a node.
pub enum DynLowering {
    /// Not dynamic: the op's own lowering.
    Static,
    /// No kernel (shape arithmetic, or inlined into its consumer).
    Skip,
    /// The output aliases input 0.
    Alias,
    Steps {
        temps: Vec<TempSpec>,
        steps: Vec<DynStep>,
    },
}

fn is_view(op: &str) -> bool {
    matches!(op, "Reshape" | "Squeeze" | "Unsqueeze" | "Flatten" | "Identity" | "Dropout")
}

/// Ops computed per output element from their inputs' elements.
pub fn is_injective(op: &str) -> bool {
    shape::is_elementwise(op)
        || matches!(op, "Transpose" | "Slice" | "Concat" | "Expand" | "Gather" | "Range" | "ConstantOfShape")
}

/// Decides every dynamic node's class, in topological order.
pub fn plan(g: &Graph, info: &mut DynInfo, order: &[NodeId]) {
    let live: Vec<NodeId> = order.iter().copied().filter(|&id| !g.nodes[id].dead).collect();
    let mut consumers: HashMap<ValueId, Vec<NodeId>> = HashMap::new();
    for &id in &live {
        for &v in g.nodes[id].inputs.iter().flatten() {
            consumers.entry(v).or_default().push(id);
        }
    }
    let producer: HashMap<ValueId, NodeId> =
        live.iter().flat_map(|&id| g.nodes[id].outputs.iter().flatten().map(move |&v| (v, id))).collect();
    let outputs: HashSet<ValueId> = g.outputs.iter().copied().collect();
    let mut class: HashMap<NodeId, Class> = HashMap::new();
    for &id in &live {
        if !info.node_is_dynamic(g, id) && !fusable(g, id) {
            continue;
        }
        let node = &g.nodes[id];
        let outs: Vec<ValueId> = node.outputs.iter().flatten().copied().collect();
        let c = if !outs.is_empty()
            && outs.iter().all(|v| info.values.contains_key(v) || g.values[*v].constant.is_some())
        {
            Class::ShapeOnly
        } else if is_view(&node.op_type) {
            let src = node.inputs[0].expect("views have an input");
            if producer_class(g, &class, src) == Some(Class::Inline) { Class::Inline } else { Class::View }
        } else if is_injective(&node.op_type) {
            Class::Inline
        } else {
            Class::Kernel
        };
        class.insert(id, c);
    }
    // Inlined values are computed by their consumers; anything else
    // reading them (outputs, static nodes, kernels that cannot compute
    // operands) needs a tensor. A value read by several nodes stays inline
    // only if one element of it loads few tensor elements (the RMSNorm
    // scale feeding the Q, K and V products, a residual sum feeding a norm,
    // the next products and the next residual, the rotary halves of Q):
    // each reader recomputes it, which costs a few loads per element where
    // a kernel of its own costs a dependent dispatch. Views pass their
    // reads on, so count through them, last node first.
    // Leaf counts use the previous round's classes (a producer that became
    // a kernel is one load), so rounds repeat until the classes settle.
    let initial = class.clone();
    let mut settled = class.clone();
    for _ in 0..4 {
        let mut round = initial.clone();
        let mut leaves: HashMap<NodeId, usize> = HashMap::new();
        for &id in live.iter().rev() {
            if round.get(&id) != Some(&Class::Inline) {
                continue;
            }
            let v = g.nodes[id].outputs[0].expect("injective ops have an output");
            let readers = readers(g, &round, &consumers, v);
            let readable =
                readers.iter().all(|r| round.contains_key(r) && (round[r] != Class::Kernel || reads_inline(g, *r)));
            let shared =
                readers.len() > 1 && inline_leaves(g, &settled, &producer, &mut leaves, id) <= MAX_SHARED_LEAVES;
            if outputs.contains(&v) || readers.is_empty() || !readable || (readers.len() > 1 && !shared) {
                round.insert(id, Class::Kernel);
            }
        }
        let done = round == settled;
        settled = round;
        if done {
            break;
        }
    }
    class = settled;
    // Views of values that became tensors alias them.
    for &id in &live {
        if class.get(&id) == Some(&Class::Inline) && is_view(&g.nodes[id].op_type) {
            let src = g.nodes[id].inputs[0].expect("views have an input");
            if producer_class(g, &class, src) != Some(Class::Inline) {
                class.insert(id, Class::View);
            }
        }
    }
    let attention = fuse_attention(g, info, &mut class, &consumers, &producer, &live);
    let paired = pair_concats(g, info, &mut class, &producer, &live);
    let prologue = fuse_row_means(g, info, &mut class, &consumers, &producer, &attention, &live);
    info.plan = Plan { class, attention, paired, prologue };
}

/// Most rows of a mean computed in a product's prologue (decode).
const PROLOGUE_ROWS: i64 = 4;

/// Finds last-axis ReduceMeans over few rows whose result reaches exactly
/// one product, through inlined values of its A operand only (RMSNorm's
/// mean of squares feeding the next projection): each workgroup of that
/// product computes the means itself (a row of a few thousand elements,
/// read from cache), which saves a dependent dispatch per norm.
fn fuse_row_means(
    g: &Graph,
    info: &DynInfo,
    class: &mut HashMap<NodeId, Class>,
    consumers: &HashMap<ValueId, Vec<NodeId>>,
    producer: &HashMap<ValueId, NodeId>,
    attention: &HashMap<NodeId, (NodeId, NodeId)>,
    live: &[NodeId],
) -> HashMap<NodeId, Vec<NodeId>> {
    let mut fused: HashMap<NodeId, Vec<NodeId>> = HashMap::new();
    for &id in live {
        let node = &g.nodes[id];
        if node.op_type != "ReduceMean" || class.get(&id) != Some(&Class::Kernel) {
            continue;
        }
        let (Some(Some(x)), Some(Some(mean))) = (node.inputs.first(), node.outputs.first()) else { continue };
        let xs = info.shape(g, *x);
        let rows = drift_ops::dims::numel(&xs[..xs.len().saturating_sub(1)]).as_const();
        if rows.is_none_or(|r| r > PROLOGUE_ROWS) || g.ty(*x).dtype != drift_ops::DType::F32 {
            continue;
        }
        // The anchors the mean reaches through inlined values.
        let mut anchors = HashSet::new();
        let mut stack = vec![*mean];
        let mut through = HashSet::new();
        while let Some(v) = stack.pop() {
            for r in readers(g, class, consumers, v) {
                match class.get(&r) {
                    Some(Class::Inline) => {
                        through.insert(r);
                        stack.extend(g.nodes[r].outputs.iter().flatten().copied());
                    }
                    _ => {
                        anchors.insert(r);
                    }
                }
            }
        }
        let [product] = anchors.into_iter().collect::<Vec<_>>()[..] else { continue };
        let p = &g.nodes[product];
        let is_product = matches!((p.domain.as_str(), p.op_type.as_str()), ("", "MatMul") | ("ai.drift", "QMatMul"));
        if !is_product || class.get(&product) != Some(&Class::Kernel) || attention.contains_key(&product) {
            continue;
        }
        // Only A may carry it: B (input 1 on) reads neither the mean nor
        // anything inlined from it.
        let in_b = p
            .inputs
            .iter()
            .skip(1)
            .flatten()
            .any(|v| *v == *mean || producer.get(v).is_some_and(|n| through.contains(n)));
        let a_rows = p.inputs[0].map(|a| {
            let s = info.shape(g, a);
            drift_ops::dims::numel(&s[..s.len().saturating_sub(1)]).as_const()
        });
        if in_b || a_rows.flatten().is_none_or(|r| r > PROLOGUE_ROWS) {
            continue;
        }
        class.insert(id, Class::Prologue);
        fused.entry(product).or_default().push(id);
    }
    fused
}

/// Pairs Concat kernels writing tensors of one shape and type, the second
/// computable where the first runs (everything it reads is ready there, and
/// none of it comes from the first): each pair is one dispatch. A decode
/// step's present key and value are such a pair in every layer.
fn pair_concats(
    g: &Graph,
    info: &DynInfo,
    class: &mut HashMap<NodeId, Class>,
    producer: &HashMap<ValueId, NodeId>,
    live: &[NodeId],
) -> HashMap<NodeId, NodeId> {
    let position: HashMap<NodeId, usize> = live.iter().enumerate().map(|(i, &id)| (id, i)).collect();
    let concats: Vec<NodeId> = live
        .iter()
        .copied()
        .filter(|id| g.nodes[*id].op_type == "Concat" && class.get(id) == Some(&Class::Kernel))
        .collect();
    let out = |id: NodeId| g.nodes[id].outputs[0].expect("Concat has an output");
    let mut paired = HashMap::new();
    let mut taken: HashSet<NodeId> = HashSet::new();
    for (n, &a) in concats.iter().enumerate() {
        if taken.contains(&a) {
            continue;
        }
        // The pair runs at the first Concat's place: what the second reads
        // must exist by then, its tensors and the views aliasing them (a
        // view's tensor is bound when the view's node is reached).
        let fits = |b: NodeId| {
            let (nodes, leaves) = inline_tree(g, class, producer, &g.nodes[b].inputs, &[Class::Inline, Class::View]);
            g.ty(out(a)).dtype == g.ty(out(b)).dtype
                && info.shape(g, out(a)) == info.shape(g, out(b))
                && leaves.iter().all(|v| *v != out(a) && producer.get(v).is_none_or(|p| position[p] < position[&a]))
                && nodes.iter().all(|n| class.get(n) != Some(&Class::View) || position[n] < position[&a])
        };
        if let Some(&b) = concats[n + 1..].iter().find(|&&b| !taken.contains(&b) && fits(b)) {
            taken.extend([a, b]);
            class.insert(b, Class::Paired);
            paired.insert(a, b);
        }
    }
    paired
}

/// The values computed on the fly from `roots` (producers of a class in
/// `through`, followed to their own operands) and the tensors they end in:
/// (those nodes, the leaf values).
fn inline_tree(
    g: &Graph,
    class: &HashMap<NodeId, Class>,
    producer: &HashMap<ValueId, NodeId>,
    roots: &[Option<ValueId>],
    through: &[Class],
) -> (Vec<NodeId>, Vec<ValueId>) {
    let (mut nodes, mut leaves) = (vec![], vec![]);
    let mut stack: Vec<ValueId> = roots.iter().flatten().copied().collect();
    while let Some(v) = stack.pop() {
        match producer.get(&v) {
            Some(&p) if class.get(&p).is_some_and(|c| through.contains(c)) => {
                nodes.push(p);
                stack.extend(g.nodes[p].inputs.iter().flatten().copied());
            }
            _ => leaves.push(v),
        }
    }
    (nodes, leaves)
}

/// Most query rows per batch of a fused attention: decode (one row, or a
/// few). Prefill's many rows keep their tiled products.
const FUSED_ATTENTION_ROWS: i64 = 4;
/// Longest reduction of the score product (the head size) it fuses.
const FUSED_ATTENTION_DEPTH: i64 = 256;

/// Finds `MatMul(Softmax(e(MatMul(q, k))), v)` with `e` inlined
/// elementwise work (scale, mask) and few query rows; marks the inner
/// product and the Softmax `Fused` into the outer product.
fn fuse_attention(
    g: &Graph,
    info: &DynInfo,
    class: &mut HashMap<NodeId, Class>,
    consumers: &HashMap<ValueId, Vec<NodeId>>,
    producer: &HashMap<ValueId, NodeId>,
    live: &[NodeId],
) -> HashMap<NodeId, (NodeId, NodeId)> {
    let mut fused = HashMap::new();
    for &sm in live {
        let node = &g.nodes[sm];
        if node.op_type != "Softmax" || class.get(&sm) != Some(&Class::Kernel) {
            continue;
        }
        let (Some(x), Some(Some(probs))) = (node.inputs.first(), node.outputs.first()) else { continue };
        // The value product reads the probabilities directly, as A.
        let [av] = readers(g, class, consumers, *probs)[..] else { continue };
        let av_node = &g.nodes[av];
        if av_node.op_type != "MatMul" || class.get(&av) != Some(&Class::Kernel) || av_node.inputs[0] != Some(*probs) {
            continue;
        }
        // The inlined expression under the Softmax, and the one product in it.
        let (tree, leaves) = inline_tree(g, class, producer, std::slice::from_ref(x), &[Class::Inline]);
        let products: Vec<NodeId> = leaves
            .iter()
            .filter_map(|v| producer.get(v).copied())
            .filter(|&p| g.nodes[p].op_type == "MatMul" && class.get(&p) == Some(&Class::Kernel))
            .collect();
        let [qk] = products[..] else { continue };
        let scores = g.nodes[qk].outputs[0].expect("MatMul has an output");
        // The scores and everything inlined from them (not the mask, which
        // other layers may share) feed only this Softmax: once fused, nothing
        // else could compute them.
        let mut from_scores: HashSet<ValueId> = HashSet::from([scores]);
        let mut grew = true;
        while grew {
            grew = false;
            for &n in &tree {
                if g.nodes[n].inputs.iter().flatten().any(|v| from_scores.contains(v)) {
                    for &o in g.nodes[n].outputs.iter().flatten() {
                        grew |= from_scores.insert(o);
                    }
                }
            }
        }
        let inside = |r: &NodeId| *r == sm || tree.contains(r);
        if !from_scores.iter().all(|&v| readers(g, class, consumers, v).iter().all(inside)) {
            continue;
        }
        let shape = info.shape(g, scores);
        let a = g.nodes[qk].inputs[0].expect("MatMul has A");
        let depth = info.shape(g, a).last().and_then(|d| d.as_const());
        let rows = shape.len().checked_sub(2).and_then(|k| shape[k].as_const());
        let f32 = [scores, *probs].iter().all(|&v| g.ty(v).dtype == drift_ops::DType::F32);
        if rows.is_some_and(|m| m <= FUSED_ATTENTION_ROWS) && depth.is_some_and(|d| d <= FUSED_ATTENTION_DEPTH) && f32 {
            class.insert(qk, Class::Fused);
            class.insert(sm, Class::Fused);
            fused.insert(av, (sm, qk));
        }
    }
    fused
}

/// Most tensor elements one element of a value inlined into several readers
/// may load (through the inlined values it is computed from): enough for
/// `gamma * (x + y) / sqrt(mean + eps)`, few enough that chains of
/// residual sums end in a kernel every few layers.
const MAX_SHARED_LEAVES: usize = 4;

/// How many tensor elements computing one element of inlined node `id`
/// loads: its operands that are tensors (constants of one element are
/// literals), through operands that are themselves inlined. With the
/// classes as they stand (producers may still become kernels, which only
/// lowers the count), so the bound is conservative.
fn inline_leaves(
    g: &Graph,
    class: &HashMap<NodeId, Class>,
    producer: &HashMap<ValueId, NodeId>,
    memo: &mut HashMap<NodeId, usize>,
    id: NodeId,
) -> usize {
    if let Some(&n) = memo.get(&id) {
        return n;
    }
    let node = &g.nodes[id];
    // Views, slices, expands and transposes load their data operand only
    // (their other inputs are shapes and indices, folded into the code).
    let data_only = is_view(&node.op_type) || matches!(node.op_type.as_str(), "Slice" | "Expand" | "Transpose");
    let operands = if data_only { &node.inputs[..1.min(node.inputs.len())] } else { &node.inputs[..] };
    let mut n = 0;
    for &v in operands.iter().flatten() {
        if g.values[v].constant.as_ref().is_some_and(|t| t.len() == 1) {
            continue;
        }
        n += match producer.get(&v) {
            Some(&p) if class.get(&p) == Some(&Class::Inline) => inline_leaves(g, class, producer, memo, p),
            _ => 1,
        };
    }
    memo.insert(id, n);
    n
}

/// Whether a node with concrete shapes also takes the fused lowering of the
/// dynamic part (so the decode stage, whose shapes are mostly concrete,
/// fuses like prefill does): the ops whose kernels here cover every case.
fn fusable(g: &Graph, id: NodeId) -> bool {
    let node = &g.nodes[id];
    let float =
        |i: usize| node.inputs.get(i).copied().flatten().is_some_and(|v| g.ty(v).dtype == drift_ops::DType::F32);
    let rank = |i: usize| node.inputs.get(i).copied().flatten().map_or(0, |v| g.ty(v).rank());
    let last_axis = |a: i64| a == -1 || a == rank(0) as i64 - 1;
    if node.outputs.iter().flatten().any(|&v| g.values[v].constant.is_some()) {
        return false;
    }
    match (node.domain.as_str(), node.op_type.as_str()) {
        ("ai.drift", "QMatMul") => float(0),
        ("", "MatMul") => float(0) && float(1) && rank(0) >= 2 && rank(1) >= 2,
        ("", "Softmax" | "LogSoftmax") => {
            node.opset >= 13 && float(0) && last_axis(node.attrs.int("axis", -1).unwrap_or(0))
        }
        ("", "LayerNormalization") => {
            float(0) && node.outputs.len() == 1 && last_axis(node.attrs.int("axis", -1).unwrap_or(0))
        }
        ("", "ReduceMean" | "ReduceSum" | "ReduceMax" | "ReduceMin") => {
            let axes = match node.attrs.ints_opt("axes") {
                Ok(Some(a)) => a.to_vec(),
                _ => match node.inputs.get(1).copied().flatten().and_then(|v| g.values[v].constant.clone()) {
                    Some(t) => t.to_i64(),
                    None => return false,
                },
            };
            float(0) && axes.len() == 1 && last_axis(axes[0])
        }
        ("", "Erf" | "Gelu" | "Softplus") => false,
        ("", "Cast") => node.attrs.int("to", 0).is_ok_and(|t| !matches!(t, 10 | 16)),
        ("", op) => is_injective(op) || is_view(op),
        _ => false,
    }
}

/// Whether an anchor can compute its operands on the fly.
fn reads_inline(g: &Graph, id: NodeId) -> bool {
    matches!(
        g.nodes[id].op_type.as_str(),
        "MatMul"
            | "QMatMul"
            | "Softmax"
            | "LogSoftmax"
            | "LayerNormalization"
            | "ReduceMean"
            | "ReduceSum"
            | "ReduceMax"
            | "ReduceMin"
    ) || is_injective(&g.nodes[id].op_type)
        || is_view(&g.nodes[id].op_type)
}

fn producer_class(g: &Graph, class: &HashMap<NodeId, Class>, v: ValueId) -> Option<Class> {
    g.live_nodes().find(|(_, n)| n.outputs.contains(&Some(v))).and_then(|(id, _)| class.get(&id).copied())
}

/// The nodes that read `v`'s elements, looking through views of it and
/// ignoring those that read only its shape.
fn readers(
    g: &Graph,
    class: &HashMap<NodeId, Class>,
    consumers: &HashMap<ValueId, Vec<NodeId>>,
    v: ValueId,
) -> Vec<NodeId> {
    let mut out = vec![];
    for &c in consumers.get(&v).map(|c| c.as_slice()).unwrap_or_default() {
        let node = &g.nodes[c];
        if matches!(node.op_type.as_str(), "Shape" | "Size") || class.get(&c) == Some(&Class::ShapeOnly) {
            continue;
        }
        // Views of the dynamic part pass reads on; a static one lowers on
        // its own and needs the tensor.
        if is_view(&node.op_type)
            && class.contains_key(&c)
            && node.inputs.first() == Some(&Some(v))
            && let Some(o) = node.outputs[0]
        {
            out.extend(readers(g, class, consumers, o));
            continue;
        }
        out.push(c);
    }
    out.sort_unstable();
    out.dedup();
    out
}

impl DynInfo {
    /// The lowering of node `id` in the dynamic program.
    pub fn lower(&self, g: &Graph, id: NodeId) -> Result<DynLowering> {
        let Some(&class) = self.plan.class.get(&id) else { return Ok(DynLowering::Static) };
        let node = &g.nodes[id];
        let err = |msg: String| Error::Node { node: node.name.clone(), op_type: node.op_type.clone(), msg };
        match class {
            Class::ShapeOnly | Class::Inline | Class::Fused | Class::Paired | Class::Prologue => Ok(DynLowering::Skip),
            Class::View => Ok(DynLowering::Alias),
            Class::Kernel => {
                let kg = Gen::new(g, self);
                if let Some(&(sm, qk)) = self.plan.attention.get(&id) {
                    return kernels::attention(kg, id, sm, qk).map_err(err);
                }
                if let Some(&second) = self.plan.paired.get(&id) {
                    return kernels::injective_pair(kg, id, second).map_err(err);
                }
                kernels::lower_node(kg, id).map_err(err)
            }
        }
    }

    /// Whether value `v` exists as a tensor (not computed on the fly).
    pub fn materialized(&self, g: &Graph, v: ValueId) -> bool {
        match g.live_nodes().find(|(_, n)| n.outputs.contains(&Some(v))) {
            None => true,
            Some((id, _)) => !matches!(
                self.plan.class.get(&id),
                Some(Class::Inline | Class::ShapeOnly | Class::Fused | Class::Prologue)
            ),
        }
    }
}
