//! The compiler's graph IR: values (tensors) and nodes in two arenas,
//! addressed by index. It is built by the importer, rewritten by passes and
//! never serialized — only the bundle is.

use drift_ops::{Attrs, Op, Tensor, TypeInfo};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

pub type ValueId = usize;
pub type NodeId = usize;

/// One dimension as the model declares it.
#[derive(Clone, Debug, PartialEq)]
pub enum Dim {
    Fixed(usize),
    /// A named symbolic dimension (`dim_param`), bound by `--dim`.
    Sym(String),
    /// Unnamed and unknown.
    Unknown,
}

/// A tensor of the graph.
#[derive(Clone, Debug, Default)]
pub struct Value {
    pub name: String,
    /// Declared element type (ONNX number) and shape, when the model gives them.
    pub declared: Option<(i32, Vec<Dim>)>,
    /// Inferred concrete type.
    pub ty: Option<TypeInfo>,
    /// Known value: initializers and folded constants.
    pub constant: Option<Arc<Tensor>>,
}

/// One operator application.
#[derive(Debug, Default)]
pub struct Node {
    pub name: String,
    pub op_type: String,
    pub domain: String,
    pub opset: i64,
    pub attrs: Attrs,
    /// `None` for an omitted optional input ("" in ONNX).
    pub inputs: Vec<Option<ValueId>>,
    pub outputs: Vec<Option<ValueId>>,
    /// Built by the `build_ops` pass.
    pub op: Option<Box<dyn Op>>,
    /// Removed by a pass; kept in the arena so ids stay stable.
    pub dead: bool,
    /// Graph attributes (If's branches, Loop's and Scan's bodies), kept as
    /// protobufs until the control-flow pass inlines them.
    pub subgraphs: BTreeMap<String, Arc<onnx_protobuf::GraphProto>>,
    /// Names the subgraphs may reference besides the model's own values:
    /// the renamed values of the body this node was inlined from.
    pub scope: Arc<HashMap<String, ValueId>>,
}

/// Control-flow operators, which the compiler inlines rather than lowers.
pub fn is_control_flow(node: &Node) -> bool {
    node.domain.is_empty() && matches!(node.op_type.as_str(), "If" | "Loop" | "Scan")
}

/// A whole model.
#[derive(Debug, Default)]
pub struct Graph {
    pub name: String,
    pub values: Vec<Value>,
    pub nodes: Vec<Node>,
    pub inputs: Vec<ValueId>,
    pub outputs: Vec<ValueId>,
    /// Opset version per domain ("" is ai.onnx).
    pub opsets: BTreeMap<String, i64>,
    /// The model's folder, where external data of inlined subgraphs lives.
    pub dir: std::path::PathBuf,
}

impl Graph {
    pub fn add_value(&mut self, v: Value) -> ValueId {
        self.values.push(v);
        self.values.len() - 1
    }

    /// A new constant value holding `t`, typed.
    pub fn add_constant(&mut self, name: String, t: Tensor) -> ValueId {
        let ty = Some(TypeInfo::new(t.dtype, t.shape.clone()));
        self.add_value(Value { name, ty, constant: Some(Arc::new(t)), declared: None })
    }

    pub fn live_nodes(&self) -> impl Iterator<Item = (NodeId, &Node)> {
        self.nodes.iter().enumerate().filter(|(_, n)| !n.dead)
    }

    /// The node producing each value, if any.
    pub fn producers(&self) -> Vec<Option<NodeId>> {
        let mut p = vec![None; self.values.len()];
        for (id, n) in self.live_nodes() {
            for v in n.outputs.iter().flatten() {
                p[*v] = Some(id);
            }
        }
        p
    }

    /// The type of a value; panics only if inference has not run, a bug.
    pub fn ty(&self, v: ValueId) -> &TypeInfo {
        self.values[v].ty.as_ref().expect("shape inference runs before this point")
    }
}
