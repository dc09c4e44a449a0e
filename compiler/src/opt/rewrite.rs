//! The rewrite engine. A [`Rule`] is a pattern (the op types of the node it
//! is tried on, plus a matching function) that returns a [`Patch`]: new
//! nodes and constants, and which old values they replace. A [`Pass`] is a
//! named rule set, run over the graph until no rule matches. Patches are
//! applied by one function ([`apply`]), which types (and, when all inputs
//! are known, folds) every new node and refuses a patch that would change a
//! value's type; nodes left without uses are removed right away, so a rule
//! never matches twice on the same dead node.

use crate::error::{Error, Result};
use crate::ir::{Graph, Node, NodeId, Value, ValueId};
use drift_ops::{Attr, Attrs, Input, Op, Tensor, TypeInfo};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// A rewrite rule. `roots` lists the op types of the nodes it is tried on
/// (empty: every node); `apply` returns the patch when the pattern matches.
pub struct Rule {
    pub name: &'static str,
    pub roots: &'static [&'static str],
    pub apply: fn(&Ctx, NodeId) -> Option<Patch>,
}

/// A named set of rules, run to a fixed point.
pub struct Pass {
    pub name: &'static str,
    pub rules: &'static [Rule],
}

/// A value a patch refers to: one of the graph, or one the patch creates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ref {
    Old(ValueId),
    /// Output `1` of new node `0`.
    New(usize, usize),
    Const(usize),
}

/// The op of a node a patch adds.
pub enum NewOp {
    /// Built by the op registry, like an imported node.
    Onnx { op_type: String, attrs: Attrs },
    /// Built by the optimizer (fused kernels).
    Built { op_type: String, op: Box<dyn Op>, outputs: usize },
}

pub struct NewNode {
    pub op: NewOp,
    pub inputs: Vec<Option<Ref>>,
}

/// What a rule asks to change.
#[derive(Default)]
pub struct Patch {
    pub nodes: Vec<NewNode>,
    pub consts: Vec<Tensor>,
    /// Every use of the old value becomes a use of the new one.
    pub replace: Vec<(ValueId, Ref)>,
    /// The new nodes are placed right after the last of these nodes in the
    /// order (default: the root); they must be computable there.
    pub anchors: Vec<NodeId>,
}

impl Patch {
    pub fn new() -> Patch {
        Patch::default()
    }

    pub fn constant(&mut self, t: Tensor) -> Ref {
        self.consts.push(t);
        Ref::Const(self.consts.len() - 1)
    }

    /// A new node of a registry op with one output.
    pub fn node(&mut self, op_type: &str, attrs: Attrs, inputs: Vec<Option<Ref>>) -> Ref {
        self.nodes.push(NewNode { op: NewOp::Onnx { op_type: op_type.into(), attrs }, inputs });
        Ref::New(self.nodes.len() - 1, 0)
    }

    /// A new node with an op built by the optimizer.
    pub fn built(&mut self, op_type: &str, op: Box<dyn Op>, inputs: Vec<Option<Ref>>) -> Ref {
        self.nodes.push(NewNode { op: NewOp::Built { op_type: op_type.into(), op, outputs: 1 }, inputs });
        Ref::New(self.nodes.len() - 1, 0)
    }

    pub fn replace(mut self, old: ValueId, new: Ref) -> Patch {
        self.replace.push((old, new));
        self
    }

    pub fn at(mut self, anchor: NodeId) -> Patch {
        self.anchors.push(anchor);
        self
    }

    /// Places the new nodes after the last of `anchors` (see `anchors`).
    pub fn after_all(mut self, anchors: impl IntoIterator<Item = NodeId>) -> Patch {
        self.anchors.extend(anchors);
        self
    }
}

/// Attributes from `(name, value)` pairs.
pub fn attrs(list: Vec<(&str, Attr)>) -> Attrs {
    Attrs(list.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
}

/// The domain of nodes the optimizer builds (fused kernels): no rule that
/// names op types matches them, and CSE leaves them alone.
pub const OPT_DOMAIN: &str = "drift";

/// Producer and consumer tables of a graph, rebuilt after every patch.
pub struct Index {
    producer: Vec<Option<NodeId>>,
    consumers: Vec<Vec<NodeId>>,
    outputs: HashSet<ValueId>,
}

impl Index {
    pub fn new(g: &Graph) -> Index {
        let mut consumers = vec![vec![]; g.values.len()];
        for (id, n) in g.live_nodes() {
            for &v in n.inputs.iter().flatten() {
                if consumers[v].last() != Some(&id) {
                    consumers[v].push(id);
                }
            }
        }
        Index { producer: g.producers(), consumers, outputs: g.outputs.iter().copied().collect() }
    }
}

/// Facts about single nodes that rules compute expensively (whether a
/// node's lowering stores once): nodes never change, so they hold for a
/// whole pass.
pub type Memo = std::cell::RefCell<HashMap<(&'static str, NodeId), bool>>;

/// What rules see: the graph with its producer and consumer tables.
pub struct Ctx<'g> {
    pub g: &'g Graph,
    ix: &'g Index,
    memo: &'g Memo,
}

impl<'g> Ctx<'g> {
    pub fn new(g: &'g Graph, ix: &'g Index, memo: &'g Memo) -> Ctx<'g> {
        Ctx { g, ix, memo }
    }

    /// `fact(id)`, computed once per pass.
    pub fn memo(&self, fact: &'static str, id: NodeId, compute: impl FnOnce() -> bool) -> bool {
        if let Some(&known) = self.memo.borrow().get(&(fact, id)) {
            return known;
        }
        let v = compute();
        self.memo.borrow_mut().insert((fact, id), v);
        v
    }

    pub fn node(&self, id: NodeId) -> &'g Node {
        &self.g.nodes[id]
    }

    /// Input `k` of node `id`, if present.
    pub fn input(&self, id: NodeId, k: usize) -> Option<ValueId> {
        self.g.nodes[id].inputs.get(k).copied().flatten()
    }

    /// Output `k` of node `id`, if present.
    pub fn output(&self, id: NodeId, k: usize) -> Option<ValueId> {
        self.g.nodes[id].outputs.get(k).copied().flatten()
    }

    pub fn producer(&self, v: ValueId) -> Option<NodeId> {
        self.ix.producer[v]
    }

    /// The producer of `v` when it is a live `op_type` node.
    pub fn produced_by(&self, v: ValueId, op_type: &str) -> Option<NodeId> {
        self.ix.producer[v].filter(|&p| self.g.nodes[p].op_type == op_type && self.g.nodes[p].domain.is_empty())
    }

    pub fn consumers(&self, v: ValueId) -> &[NodeId] {
        &self.ix.consumers[v]
    }

    pub fn is_output(&self, v: ValueId) -> bool {
        self.ix.outputs.contains(&v)
    }

    /// Whether `v` has no use besides one consumer (node `by`).
    pub fn only_used_by(&self, v: ValueId, by: NodeId) -> bool {
        !self.is_output(v) && self.ix.consumers[v] == [by]
    }

    /// Whether `v` is used (by a node or as a graph output).
    pub fn used(&self, v: ValueId) -> bool {
        self.is_output(v) || !self.ix.consumers[v].is_empty()
    }

    pub fn constant(&self, v: ValueId) -> Option<&'g Tensor> {
        self.g.values[v].constant.as_deref()
    }

    pub fn ty(&self, v: ValueId) -> &'g TypeInfo {
        self.g.ty(v)
    }

    /// The value of a constant whose elements are all equal.
    pub fn scalar(&self, v: ValueId) -> Option<f64> {
        let t = self.constant(v)?;
        let vals = t.to_f64();
        let first = *vals.first()?;
        vals.iter().all(|&x| x == first || (x.is_nan() && first.is_nan())).then_some(first)
    }

    /// For a node `op(a, b)`: the input that is not `v` (for commutative
    /// matching). `None` unless exactly one side is `v`.
    pub fn other_input(&self, id: NodeId, v: ValueId) -> Option<ValueId> {
        match (self.input(id, 0), self.input(id, 1)) {
            (Some(a), Some(b)) if a == v && b != v => Some(b),
            (Some(a), Some(b)) if b == v && a != v => Some(a),
            _ => None,
        }
    }

    /// An integer list given either as attribute `name` or as constant input `k`.
    pub fn ints_attr_or_input(&self, id: NodeId, name: &str, k: usize) -> Option<Vec<i64>> {
        let n = self.node(id);
        if let Ok(Some(v)) = n.attrs.ints_opt(name) {
            return Some(v.to_vec());
        }
        self.input(id, k).and_then(|v| self.constant(v)).map(|t| t.to_i64())
    }
}

/// Runs `pass` until no rule matches; returns the new order.
pub fn run_pass(g: &mut Graph, order: Vec<NodeId>, pass: &Pass) -> Result<Vec<NodeId>> {
    let mut order = order;
    // A pass that keeps matching is a bug in a rule; stop rather than hang.
    let budget = 8 * g.nodes.len() + 64;
    let mut applied = 0;
    let memo = Memo::default();
    loop {
        let mut changed = false;
        let mut k = 0;
        let mut ix = Index::new(g);
        while k < order.len() {
            let id = order[k];
            k += 1;
            if g.nodes[id].dead || g.nodes[id].op.is_none() {
                continue;
            }
            let patch = {
                let ctx = Ctx::new(g, &ix, &memo);
                let n = &g.nodes[id];
                pass.rules
                    .iter()
                    .filter(|r| r.roots.is_empty() || (n.domain.is_empty() && r.roots.contains(&n.op_type.as_str())))
                    .find_map(|r| (r.apply)(&ctx, id))
            };
            if let Some(patch) = patch
                && apply(g, &mut order, id, patch)?
            {
                ix = Index::new(g);
                changed = true;
                applied += 1;
                if applied > budget {
                    return Err(Error::Other(format!("optimizer pass '{}' does not converge", pass.name)));
                }
            }
        }
        if !changed {
            break;
        }
    }
    order.retain(|&id| !g.nodes[id].dead);
    Ok(stable_toposort(g, &order))
}

/// A topological order of the live nodes that keeps `hint`'s order wherever
/// dependencies allow (patches may place a node early, e.g. CSE's twin).
pub fn stable_toposort(g: &Graph, hint: &[NodeId]) -> Vec<NodeId> {
    let pos: HashMap<NodeId, usize> = hint.iter().enumerate().map(|(k, &id)| (id, k)).collect();
    let producer = g.producers();
    let mut waiting: HashMap<NodeId, usize> = HashMap::new();
    let mut users: HashMap<NodeId, Vec<NodeId>> = HashMap::new();
    for &id in hint {
        let deps: HashSet<NodeId> = g.nodes[id].inputs.iter().flatten().filter_map(|&v| producer[v]).collect();
        waiting.insert(id, deps.len());
        for d in deps {
            users.entry(d).or_default().push(id);
        }
    }
    let mut ready: std::collections::BinaryHeap<std::cmp::Reverse<(usize, NodeId)>> =
        hint.iter().filter(|id| waiting[id] == 0).map(|&id| std::cmp::Reverse((pos[&id], id))).collect();
    let mut out = Vec::with_capacity(hint.len());
    while let Some(std::cmp::Reverse((_, id))) = ready.pop() {
        out.push(id);
        for &u in users.get(&id).map(Vec::as_slice).unwrap_or(&[]) {
            let w = waiting.get_mut(&u).expect("every user is in the hint");
            *w -= 1;
            if *w == 0 {
                ready.push(std::cmp::Reverse((pos[&u], u)));
            }
        }
    }
    // A cycle leaves nodes out; `check` then reports them.
    out
}

/// Applies `patch` (found at node `root`); `false` when it is refused.
pub fn apply(g: &mut Graph, order: &mut Vec<NodeId>, root: NodeId, patch: Patch) -> Result<bool> {
    let graph_inputs: HashSet<ValueId> = g.inputs.iter().copied().collect();
    let outputs: HashSet<ValueId> = g.outputs.iter().copied().collect();
    // A graph output may only be replaced by a value that is neither a graph
    // input nor already an output: it takes over the output's name.
    for &(old, new) in &patch.replace {
        if let Ref::Old(e) = new
            && outputs.contains(&old)
            && (graph_inputs.contains(&e) || outputs.contains(&e))
        {
            return Ok(false);
        }
    }
    let base = g.nodes[root].name.clone();
    let const_ids: Vec<ValueId> = patch
        .consts
        .into_iter()
        .enumerate()
        .map(|(k, t)| {
            let ty = TypeInfo::new(t.dtype, t.shape.clone());
            g.add_value(Value {
                name: format!("{base}/c{k}"),
                ty: Some(ty),
                constant: Some(Arc::new(t)),
                declared: None,
            })
        })
        .collect();
    let first_new_node = g.nodes.len();
    let mut new_outputs: Vec<Vec<ValueId>> = vec![];
    let resolve = |r: Ref, new_outputs: &Vec<Vec<ValueId>>| match r {
        Ref::Old(v) => v,
        Ref::New(n, k) => new_outputs[n][k],
        Ref::Const(c) => const_ids[c],
    };
    for (k, nn) in patch.nodes.into_iter().enumerate() {
        let inputs: Vec<Option<ValueId>> = nn.inputs.iter().map(|r| r.map(|r| resolve(r, &new_outputs))).collect();
        let opset = g.nodes[root].opset;
        let name = format!("{base}/{k}");
        let domain = if matches!(nn.op, NewOp::Built { .. }) { OPT_DOMAIN } else { "" };
        let (op_type, op, n_out) = match nn.op {
            NewOp::Onnx { op_type, attrs } => {
                let op = drift_ops::build_op(&op_type, "", opset, &attrs, 1).map_err(|e| Error::Node {
                    node: name.clone(),
                    op_type: op_type.clone(),
                    msg: format!("optimizer: {e}"),
                })?;
                (op_type, (op, attrs), 1)
            }
            NewOp::Built { op_type, op, outputs } => (op_type, (op, Attrs::default()), outputs),
        };
        let (op, attrs) = op;
        let outs: Vec<ValueId> =
            (0..n_out).map(|j| g.add_value(Value { name: format!("{name}:{j}"), ..Default::default() })).collect();
        type_node(g, &name, &op_type, op.as_ref(), &inputs, &outs)?;
        g.nodes.push(Node {
            name,
            op_type,
            domain: domain.to_string(),
            opset,
            attrs,
            inputs,
            outputs: outs.iter().map(|&v| Some(v)).collect(),
            op: Some(op),
            ..Default::default()
        });
        new_outputs.push(outs);
    }
    let replace: Vec<(ValueId, ValueId)> =
        patch.replace.iter().map(|&(old, new)| (old, resolve(new, &new_outputs))).collect();
    // Replacements keep types: a rule that would change one is refused.
    if replace.iter().any(|&(old, new)| g.values[old].ty != g.values[new].ty) {
        for n in &mut g.nodes[first_new_node..] {
            n.dead = true;
        }
        return Ok(false);
    }
    for (&(old, new), &(_, r)) in replace.iter().zip(&patch.replace) {
        // A new value takes the name of the one it replaces (listings and
        // graph outputs keep their names).
        if !matches!(r, Ref::Old(_)) && !outputs.contains(&old) {
            let name = std::mem::take(&mut g.values[old].name);
            g.values[old].name = format!("{name}/replaced");
            g.values[new].name = name;
        }
        for n in g.nodes.iter_mut().filter(|n| !n.dead) {
            for slot in n.inputs.iter_mut().flatten() {
                if *slot == old {
                    *slot = new;
                }
            }
        }
        for o in g.outputs.iter_mut() {
            if *o == old {
                *o = new;
                let name = std::mem::take(&mut g.values[old].name);
                g.values[old].name = format!("{name}/replaced");
                g.values[new].name = name;
            }
        }
    }
    let anchors = if patch.anchors.is_empty() { vec![root] } else { patch.anchors };
    let at = anchors
        .iter()
        .map(|a| order.iter().position(|id| id == a).map_or(order.len(), |p| p + 1))
        .max()
        .unwrap_or(order.len());
    order.splice(at..at, first_new_node..g.nodes.len());
    remove_unused(g, order);
    Ok(true)
}

/// Types node outputs `outs` through the op's shape rule, folding them to
/// constants when every input is known.
fn type_node(
    g: &mut Graph,
    name: &str,
    op_type: &str,
    op: &dyn Op,
    inputs: &[Option<ValueId>],
    outs: &[ValueId],
) -> Result<()> {
    let err = |e: drift_ops::Error| Error::Node {
        node: name.into(),
        op_type: op_type.into(),
        msg: format!("optimizer: {e}"),
    };
    let ins: Vec<Option<Input>> =
        inputs.iter().map(|v| v.map(|v| Input { ty: g.ty(v), value: g.values[v].constant.as_deref() })).collect();
    let folded = crate::passes::fold(op, &ins).map_err(err)?;
    let tys = op.infer(&ins).map_err(err)?;
    for (k, &v) in outs.iter().enumerate() {
        g.values[v].ty = tys.get(k).cloned();
    }
    if let Some(vals) = folded {
        for (&v, t) in outs.iter().zip(vals) {
            g.values[v].ty = Some(TypeInfo::new(t.dtype, t.shape.clone()));
            g.values[v].constant = Some(Arc::new(t));
        }
    }
    Ok(())
}

/// Marks dead every node none of whose outputs is used or non-constant.
pub fn remove_unused(g: &mut Graph, order: &[NodeId]) {
    let mut used: HashMap<ValueId, usize> = HashMap::new();
    for (_, n) in g.live_nodes() {
        for &v in n.inputs.iter().flatten() {
            *used.entry(v).or_default() += 1;
        }
    }
    let outputs: HashSet<ValueId> = g.outputs.iter().copied().collect();
    for &id in order.iter().rev() {
        let n = &g.nodes[id];
        if n.dead {
            continue;
        }
        let useful =
            n.outputs.iter().flatten().any(|v| {
                (outputs.contains(v) || used.get(v).is_some_and(|&c| c > 0)) && g.values[*v].constant.is_none()
            });
        if !useful {
            for &v in n.inputs.iter().flatten() {
                if let Some(c) = used.get_mut(&v) {
                    *c -= 1;
                }
            }
            g.nodes[id].dead = true;
        }
    }
}

/// Debug builds check the IR after every pass: the order is topological
/// over the live nodes, every input is defined, every value typed and
/// produced once, every graph output computed.
pub fn check(g: &Graph, order: &[NodeId], pass: &str) -> Result<()> {
    let bad = |msg: String| Err(Error::Other(format!("IR check after pass '{pass}': {msg}")));
    let mut defined: HashSet<ValueId> = g.inputs.iter().copied().collect();
    defined.extend((0..g.values.len()).filter(|&v| g.values[v].constant.is_some()));
    let live: HashSet<NodeId> = g.live_nodes().map(|(id, _)| id).collect();
    let in_order: HashSet<NodeId> = order.iter().copied().collect();
    if let Some(id) = live.iter().find(|id| !in_order.contains(id)) {
        return bad(format!("live node '{}' is not in the order", g.nodes[*id].name));
    }
    for &id in order {
        let n = &g.nodes[id];
        if n.dead {
            return bad(format!("dead node '{}' is in the order", n.name));
        }
        if n.op.is_none() {
            return bad(format!("node '{}' has no op", n.name));
        }
        if let Some(v) = n.inputs.iter().flatten().find(|v| !defined.contains(v)) {
            return bad(format!("node '{}' reads '{}' before it is computed", n.name, g.values[*v].name));
        }
        for &v in n.outputs.iter().flatten() {
            if g.values[v].ty.is_none() {
                return bad(format!("output '{}' of '{}' has no type", g.values[v].name, n.name));
            }
            if g.values[v].constant.is_none() && !defined.insert(v) {
                return bad(format!("value '{}' is produced twice", g.values[v].name));
            }
        }
    }
    if let Some(v) = g.outputs.iter().find(|v| !defined.contains(v)) {
        return bad(format!("graph output '{}' is never computed", g.values[*v].name));
    }
    Ok(())
}
