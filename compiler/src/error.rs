//! Compiler errors. Every message names the file, node, tensor or kernel it
//! is about, so a user can find the problem in their model.

use std::path::PathBuf;

/// A node the compiler cannot handle, for the all-at-once report.
#[derive(Debug, Clone)]
pub struct UnsupportedNode {
    pub node: String,
    pub op_type: String,
    pub domain: String,
    pub opset: i64,
    pub reason: String,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path} is not a valid ONNX model: {reason}")]
    NotOnnx { path: PathBuf, reason: String },
    #[error("{}", unsupported_message(.0))]
    Unsupported(Vec<UnsupportedNode>),
    #[error("node '{node}' ({op_type}): {msg}")]
    Node { node: String, op_type: String, msg: String },
    /// An operand that decides a shape is only known at run time. `from_inputs`
    /// names the graph inputs it is computed from: fixing their values at
    /// compile time (`--const-input`) makes the model compile.
    #[error("{}", needs_value_message(.node, .op_type, .what, .from_inputs))]
    NeedsValue { node: String, op_type: String, what: String, from_inputs: Vec<String> },
    #[error("tensor '{tensor}': {msg}")]
    Tensor { tensor: String, msg: String },
    #[error("kernel '{kernel}' for node '{node}' is invalid WGSL: {msg}")]
    Codegen { kernel: String, node: String, msg: String },
    #[error("{0}")]
    Other(String),
}

fn unsupported_message(nodes: &[UnsupportedNode]) -> String {
    let mut m = format!("{} node(s) use unsupported operators:", nodes.len());
    for n in nodes {
        let domain = if n.domain.is_empty() { "ai.onnx" } else { &n.domain };
        m += &format!("\n  node '{}': {} ({} opset {}): {}", n.node, n.op_type, domain, n.opset, n.reason);
    }
    m
}

fn needs_value_message(node: &str, op_type: &str, what: &str, from_inputs: &[String]) -> String {
    let mut m = format!("node '{node}' ({op_type}): {what} must be known at compile time");
    if from_inputs.is_empty() {
        m += ", but it is computed from run-time data";
    } else {
        let list: Vec<String> = from_inputs.iter().map(|n| format!("'{n}'")).collect();
        let hint: Vec<String> = from_inputs.iter().map(|n| format!("--const-input {n}=FILE.npy")).collect();
        m += &format!(", and it depends on graph input(s) {}: fix them with {}", list.join(", "), hint.join(" "));
    }
    m
}

pub type Result<T> = std::result::Result<T, Error>;
