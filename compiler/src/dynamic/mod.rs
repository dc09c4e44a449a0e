//! Bounded dynamic dims (`drift compile --dim seq=1..2048 --dim past=0..4096`).
//!
//! Instead of fixing every dim, a dim given as a range stays a *symbol*:
//! shapes become polynomials over the symbols ([`Poly`]), inferred by the
//! rules in `shape.rs` (Shape → Gather → Concat → Reshape chains stay
//! symbolic), every tensor is planned at its largest size within the
//! bounds (one static memory plan), and the kernels of the nodes whose
//! shapes involve symbols read the symbols' values from a small `dims`
//! uniform the runtime fills per run (`lower.rs`, `kernels.rs`). Their
//! dispatch sizes are polynomials too, evaluated by the runtime. Nodes whose
//! shapes are all concrete lower as usual.
//!
//! Tensors are dense for their actual shape: a reshape stays a view, and a
//! run's outputs are read back at their actual size.

pub mod decompose;
pub mod kernels;
pub mod lower;
pub mod shape;

use crate::error::{Error, Result};
use crate::ir::{Dim, Graph, NodeId, ValueId};
use drift_ops::dims::{MAX_SYMS, Poly};
use drift_ops::{DType, Tensor, TypeInfo};
use shape::{SymIn, SymOut};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

/// A bounded dynamic dim of the program.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Symbol {
    /// The model's name for it (a `dim_param`).
    pub name: String,
    pub min: i64,
    pub max: i64,
}

/// The model's symbols resolved against the user's `--dim` values and ranges.
#[derive(Clone, Debug, Default)]
pub struct DimSpec {
    pub symbols: Vec<Symbol>,
    /// dim_param names fixed to a value (`--dim batch_size=1`).
    pub fixed: BTreeMap<String, i64>,
}

impl DimSpec {
    pub fn index(&self, name: &str) -> Option<usize> {
        self.symbols.iter().position(|s| s.name == name)
    }
}

/// Symbolic types of one compile: per value its shape and, for the small
/// integer tensors of shape arithmetic, its elements.
#[derive(Debug, Default)]
pub struct DynInfo {
    pub spec: DimSpec,
    /// Each symbol's bounds in this compile (a stage may narrow them).
    pub bounds: Vec<(i64, i64)>,
    pub shapes: HashMap<ValueId, Vec<Poly>>,
    pub values: HashMap<ValueId, Vec<Poly>>,
    pub plan: lower::Plan,
}

impl DynInfo {
    /// The symbolic shape of `v` (its concrete one when it has none).
    pub fn shape(&self, g: &Graph, v: ValueId) -> Vec<Poly> {
        match self.shapes.get(&v) {
            Some(s) => s.clone(),
            None => g.ty(v).shape.iter().map(|&d| Poly::konst(d as i64)).collect(),
        }
    }

    /// Whether `v`'s shape or elements involve a symbol.
    pub fn is_dynamic(&self, v: ValueId) -> bool {
        let sym = |p: &Vec<Poly>| p.iter().any(|d| !d.is_const());
        self.shapes.get(&v).is_some_and(sym) || self.values.get(&v).is_some_and(sym)
    }

    /// Whether node `id` reads a dynamic value.
    pub fn node_is_dynamic(&self, g: &Graph, id: NodeId) -> bool {
        g.nodes[id].inputs.iter().flatten().any(|&v| self.is_dynamic(v))
    }

    /// The largest value of `p` within the bounds.
    pub fn max_of(&self, p: &Poly) -> i64 {
        p.range(&self.bounds).1
    }

    /// Shape at the bounds, for the memory plan.
    fn bound_shape(&self, shape: &[Poly]) -> std::result::Result<Vec<usize>, String> {
        shape
            .iter()
            .map(|d| {
                let (lo, hi) = d.range(&self.bounds);
                if lo < 0 {
                    return Err(format!("dim {} can be negative ({lo}) within the bounds", self.show(d)));
                }
                Ok(hi as usize)
            })
            .collect()
    }

    /// A polynomial with the symbols' names, for messages.
    pub fn show(&self, p: &Poly) -> String {
        let mut s = format!("{p:?}");
        for (k, sym) in self.spec.symbols.iter().enumerate().rev() {
            s = s.replace(&format!("s{k}"), &sym.name);
        }
        s
    }

    pub fn show_shape(&self, shape: &[Poly]) -> String {
        let dims: Vec<String> = shape.iter().map(|d| self.show(d)).collect();
        format!("[{}]", dims.join(", "))
    }
}

/// Parses a dim_param such as `past_sequence_length + sequence_length` or
/// `2*n`: sums and differences of products of names and integers.
fn parse_dim(text: &str, resolve: &mut dyn FnMut(&str) -> Option<Poly>) -> Option<Poly> {
    let mut total = Poly::default();
    let mut sign = 1;
    let spaced = text.replace('+', " + ").replace('-', " - ");
    let mut term = Poly::konst(1);
    let mut have_term = false;
    for tok in spaced.split_whitespace() {
        match tok {
            "+" | "-" => {
                if have_term {
                    total = total.add(&term.scale(sign));
                }
                sign = if tok == "-" { -1 } else { 1 };
                term = Poly::konst(1);
                have_term = false;
            }
            _ => {
                for f in tok.split('*').filter(|f| !f.is_empty()) {
                    let p = match f.parse::<i64>() {
                        Ok(n) => Poly::konst(n),
                        Err(_) => resolve(f)?,
                    };
                    term = term.mul(&p);
                }
                have_term = true;
            }
        }
    }
    have_term.then(|| total.add(&term.scale(sign)))
}

/// Names occurring in the graph inputs' dim_params.
fn dim_names(g: &Graph) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for &v in &g.inputs {
        if let Some((_, dims)) = &g.values[v].declared {
            for d in dims {
                if let Dim::Sym(s) = d {
                    let mut add = |n: &str| {
                        names.insert(n.to_string());
                        Some(Poly::konst(1))
                    };
                    if parse_dim(s, &mut add).is_none() {
                        names.insert(s.clone());
                    }
                }
            }
        }
    }
    names
}

/// The model's dim name a `--dim NAME` means: the exact name, or the one
/// name it is a prefix of (`seq` for `sequence_length`).
fn match_name(user: &str, names: &BTreeSet<String>) -> Result<String> {
    if names.contains(user) {
        return Ok(user.to_string());
    }
    let hits: Vec<&String> = names.iter().filter(|n| n.starts_with(user)).collect();
    match hits.as_slice() {
        [one] => Ok(one.to_string()),
        [] => Err(Error::Other(format!(
            "--dim {user}: the model has no dynamic dim of that name (its dims: {})",
            names.iter().cloned().collect::<Vec<_>>().join(", ")
        ))),
        many => Err(Error::Other(format!(
            "--dim {user}: ambiguous, it starts {}",
            many.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(" and ")
        ))),
    }
}

/// Resolves `--dim` values and ranges against the model's dim names.
pub fn resolve(
    g: &Graph,
    fixed: &BTreeMap<String, usize>,
    ranges: &BTreeMap<String, (usize, usize)>,
) -> Result<DimSpec> {
    let names = dim_names(g);
    let mut spec = DimSpec::default();
    for (user, &(lo, hi)) in ranges {
        if lo > hi {
            return Err(Error::Other(format!("--dim {user}={lo}..{hi}: the range is empty")));
        }
        let name = match_name(user, &names)?;
        // A range of one value is a fixed dim.
        if lo == hi {
            spec.fixed.insert(name, lo as i64);
            continue;
        }
        spec.symbols.push(Symbol { name, min: lo as i64, max: hi as i64 });
    }
    if spec.symbols.len() > MAX_SYMS {
        return Err(Error::Other(format!("at most {MAX_SYMS} dims may be bounded, {} are", spec.symbols.len())));
    }
    for (user, &v) in fixed {
        // Exact names only: a fixed dim may also be a whole dim_param.
        let name = if names.contains(user) { user.clone() } else { match_name(user, &names).unwrap_or(user.clone()) };
        spec.fixed.insert(name, v as i64);
    }
    Ok(spec)
}

/// Gives every graph input its symbolic shape (and its type at the bounds).
/// A symbol whose stage bounds are one value becomes that constant.
pub fn bind_inputs(g: &mut Graph, spec: &DimSpec, bounds: &[(i64, i64)]) -> Result<DynInfo> {
    let mut info = DynInfo { spec: spec.clone(), bounds: bounds.to_vec(), ..DynInfo::default() };
    let mut missing = BTreeSet::new();
    for &v in &g.inputs.clone() {
        let value = &g.values[v];
        let Some((elem, declared)) = value.declared.clone() else {
            return Err(Error::Tensor { tensor: value.name.clone(), msg: "graph input has no tensor type".into() });
        };
        let dtype =
            DType::from_onnx(elem).map_err(|e| Error::Tensor { tensor: value.name.clone(), msg: e.to_string() })?;
        let mut shape = vec![];
        for (axis, d) in declared.iter().enumerate() {
            let p = match d {
                Dim::Fixed(n) => Some(Poly::konst(*n as i64)),
                Dim::Sym(s) => {
                    let mut res = |n: &str| -> Option<Poly> {
                        if let Some(&c) = spec.fixed.get(n) {
                            return Some(Poly::konst(c));
                        }
                        let k = spec.index(n)?;
                        let (lo, hi) = bounds[k];
                        Some(if lo == hi { Poly::konst(lo) } else { Poly::sym(k as u32) })
                    };
                    // A whole dim_param may be fixed by name, expression or not.
                    spec.fixed.get(s).map(|&c| Poly::konst(c)).or_else(|| parse_dim(s, &mut res))
                }
                Dim::Unknown => None,
            };
            match p {
                Some(p) => shape.push(p),
                None => {
                    missing.insert(format!("{}[{axis}] ({d:?})", value.name));
                }
            }
        }
        if shape.len() == declared.len() {
            let ty = info.bound_shape(&shape).map_err(|msg| Error::Tensor { tensor: value.name.clone(), msg })?;
            g.values[v].ty = Some(TypeInfo::new(dtype, ty));
            info.shapes.insert(v, shape);
        }
    }
    if !missing.is_empty() {
        return Err(Error::Other(format!(
            "dims left unbound: {}; bound them with --dim NAME=VALUE or --dim NAME=MIN..MAX",
            missing.into_iter().collect::<Vec<_>>().join(", ")
        )));
    }
    Ok(info)
}

/// Infers every value's type: nodes reading only concrete values through the
/// usual inference and folding, the others through the symbolic rules.
pub fn infer(g: &mut Graph, info: &mut DynInfo) -> Result<Vec<NodeId>> {
    let order = crate::passes::toposort(g)?;
    for &id in &order {
        if crate::ir::is_control_flow(&g.nodes[id]) {
            let n = &g.nodes[id];
            return Err(Error::Node {
                node: n.name.clone(),
                op_type: n.op_type.clone(),
                msg: "control flow is not supported together with bounded dynamic dims".into(),
            });
        }
        if !info.node_is_dynamic(g, id) {
            crate::passes::infer_and_fold(g, &[id])?;
            continue;
        }
        infer_node(g, info, id)?;
    }
    crate::passes::check_all_typed(g, &order)?;
    Ok(order)
}

fn infer_node(g: &mut Graph, info: &mut DynInfo, id: NodeId) -> Result<()> {
    let node = &g.nodes[id];
    let ins: Vec<Option<SymIn>> = node
        .inputs
        .iter()
        .map(|v| {
            v.map(|v| {
                let constant = g.values[v].constant.as_deref();
                SymIn {
                    dtype: g.ty(v).dtype,
                    shape: info.shape(g, v),
                    value: info.values.get(&v).cloned().or_else(|| constant.and_then(shape::const_value)),
                    constant,
                }
            })
        })
        .collect();
    let outs = shape::infer(&node.op_type, &node.attrs, node.opset, &ins).map_err(|e| {
        let (what, msg) = match e {
            shape::RuleError::Unsupported(m) => ("cannot take a symbolic dim", m),
            shape::RuleError::Invalid(m) => ("symbolic shapes", m),
        };
        let shapes: Vec<String> = node
            .inputs
            .iter()
            .flatten()
            .filter(|&&v| info.is_dynamic(v))
            .map(|&v| format!("'{}' {}", g.values[v].name, info.show_shape(&info.shape(g, v))))
            .collect();
        Error::Node {
            node: node.name.clone(),
            op_type: node.op_type.clone(),
            msg: format!("{what}: {msg} (dynamic inputs: {})", shapes.join(", ")),
        }
    })?;
    let outputs = node.outputs.clone();
    let (name, op_type) = (node.name.clone(), node.op_type.clone());
    for (slot, out) in outputs.iter().zip(outs) {
        let Some(v) = *slot else { continue };
        set_output(g, info, v, out).map_err(|msg| Error::Node { node: name.clone(), op_type: op_type.clone(), msg })?;
    }
    Ok(())
}

/// Records an output's symbolic type; a value known in full becomes a constant.
fn set_output(g: &mut Graph, info: &mut DynInfo, v: ValueId, out: SymOut) -> std::result::Result<(), String> {
    let bound = info.bound_shape(&out.shape)?;
    g.values[v].ty = Some(TypeInfo::new(out.dtype, bound.clone()));
    let concrete_shape = out.shape.iter().all(|d| d.is_const());
    if let Some(vals) = &out.value {
        if concrete_shape && vals.iter().all(|p| p.is_const()) {
            let ints = vals.iter().map(|p| p.as_const().expect("checked")).collect();
            g.values[v].constant = Some(Arc::new(Tensor::from_i64(out.dtype, bound, ints)));
            return Ok(());
        }
        info.values.insert(v, vals.clone());
    }
    if !concrete_shape {
        info.shapes.insert(v, out.shape);
    }
    Ok(())
}
