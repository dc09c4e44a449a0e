//! A small text form of graphs, so pass tests are data: an input graph, the
//! pass, the expected graph (`compiler/tests/passes/*.txt`).
//!
//! ```text
//! opset 17
//! input x: f32[1,3,8,8]
//! const w: f32[4,3,3,3] = iota
//! const s: f32[4,1,1] = [1, 2, 3, 4]
//! y = Conv(x, w) {pads=[1,1,1,1]}
//! z = Mul(y, s)
//! output z
//! ```
//!
//! Constants are `[values]`, `fill X` or `iota` (element k is
//! `(k % 7) * 0.25 - 0.75`); omitted inputs are `_`; an op of another
//! domain than ai.onnx is written `domain.Op` (`com.microsoft.MatMulNBits`,
//! opset 1; [`print`] leaves domains out); attributes are ints,
//! floats (with a `.`), strings in quotes or lists of either. [`print`]
//! writes the same form, summarizing constants of more than 16 elements.

use crate::ir::{Dim, Graph, Node, NodeId, Value, ValueId};
use drift_ops::{Attr, Attrs, DType, Tensor, TypeInfo};
use std::collections::HashMap;
use std::sync::Arc;

/// Parses the text form into a graph with typed inputs and constants.
pub fn parse(src: &str) -> Result<Graph, String> {
    let mut g = Graph { name: "text".into(), ..Graph::default() };
    let mut names: HashMap<String, ValueId> = HashMap::new();
    let mut opset = 17;
    for (n, raw) in src.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        let err = |m: &str| format!("line {}: {m}: '{raw}'", n + 1);
        if line.is_empty() {
            continue;
        }
        if let Some(v) = line.strip_prefix("opset ") {
            opset = v.trim().parse().map_err(|_| err("bad opset"))?;
        } else if let Some(rest) = line.strip_prefix("input ") {
            let (name, ty) = typed_name(rest).ok_or_else(|| err("expected 'input NAME: TYPE[DIMS]'"))?;
            let declared = Some((ty.dtype.onnx(), ty.shape.iter().map(|&d| Dim::Fixed(d)).collect()));
            let v = g.add_value(Value { name: name.clone(), ty: Some(ty), declared, constant: None });
            g.inputs.push(v);
            names.insert(name, v);
        } else if let Some(rest) = line.strip_prefix("const ") {
            let (decl, init) = rest.split_once('=').ok_or_else(|| err("expected 'const NAME: TYPE[DIMS] = VALUE'"))?;
            let (name, ty) = typed_name(decl).ok_or_else(|| err("bad constant type"))?;
            let t = constant(&ty, init.trim()).ok_or_else(|| err("bad constant value"))?;
            let v =
                g.add_value(Value { name: name.clone(), ty: Some(ty), constant: Some(Arc::new(t)), declared: None });
            names.insert(name, v);
        } else if let Some(rest) = line.strip_prefix("output ") {
            let v = *names.get(rest.trim()).ok_or_else(|| err("unknown value"))?;
            g.outputs.push(v);
        } else {
            let node = node(line, &mut g, &mut names, opset).ok_or_else(|| err("expected 'OUTS = Op(INS) {ATTRS}'"))?;
            g.nodes.push(node);
        }
    }
    g.opsets.insert(String::new(), opset);
    Ok(g)
}

fn typed_name(s: &str) -> Option<(String, TypeInfo)> {
    let (name, ty) = s.split_once(':')?;
    let (dt, dims) = ty.trim().strip_suffix(']')?.split_once('[')?;
    let dtype = match dt {
        "f32" => DType::F32,
        "f16" => DType::F16,
        "i64" => DType::I64,
        "i32" => DType::I32,
        "i8" => DType::I8,
        "u8" => DType::U8,
        "bool" => DType::Bool,
        _ => return None,
    };
    let shape =
        dims.split(',').filter(|d| !d.trim().is_empty()).map(|d| d.trim().parse().ok()).collect::<Option<_>>()?;
    Some((name.trim().to_string(), TypeInfo::new(dtype, shape)))
}

fn constant(ty: &TypeInfo, init: &str) -> Option<Tensor> {
    let n = ty.numel();
    let vals: Vec<f64> = if init == "iota" {
        (0..n).map(|k| (k % 7) as f64 * 0.25 - 0.75).collect()
    } else if let Some(x) = init.strip_prefix("fill ") {
        vec![x.trim().parse().ok()?; n]
    } else {
        let list = init.strip_prefix('[')?.strip_suffix(']')?;
        list.split(',').filter(|x| !x.trim().is_empty()).map(|x| x.trim().parse().ok()).collect::<Option<_>>()?
    };
    (vals.len() == n).then(|| Tensor::from_f64(ty.dtype, ty.shape.clone(), vals))
}

fn node(line: &str, g: &mut Graph, names: &mut HashMap<String, ValueId>, opset: i64) -> Option<Node> {
    let (outs, rhs) = line.split_once('=')?;
    let (qualified, rest) = rhs.trim().split_once('(')?;
    let (domain, op_type) = qualified.trim().rsplit_once('.').unwrap_or(("", qualified.trim()));
    let (args, attrs) = rest.split_once(')')?;
    let mut inputs = vec![];
    for a in args.split(',').map(str::trim).filter(|a| !a.is_empty()) {
        inputs.push(if a == "_" { None } else { Some(*names.get(a)?) });
    }
    let mut outputs = vec![];
    for o in outs.split(',').map(str::trim) {
        outputs.push(if o == "_" {
            None
        } else {
            let v = g.add_value(Value { name: o.to_string(), ..Value::default() });
            names.insert(o.to_string(), v);
            Some(v)
        });
    }
    let name = outs.split(',').next()?.trim().to_string();
    Some(Node {
        name,
        op_type: op_type.to_string(),
        opset: if domain.is_empty() { opset } else { 1 },
        domain: domain.to_string(),
        attrs: parse_attrs(attrs.trim())?,
        inputs,
        outputs,
        ..Node::default()
    })
}

fn parse_attrs(s: &str) -> Option<Attrs> {
    let mut out = Attrs::default();
    let Some(body) = s.strip_prefix('{').and_then(|b| b.strip_suffix('}')) else {
        return s.is_empty().then_some(out);
    };
    // Split at commas outside brackets and quotes.
    let (mut depth, mut start, mut parts, mut quoted) = (0, 0, vec![], false);
    for (i, c) in body.char_indices() {
        match c {
            '"' => quoted = !quoted,
            '[' if !quoted => depth += 1,
            ']' if !quoted => depth -= 1,
            ',' if depth == 0 && !quoted => {
                parts.push(&body[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&body[start..]);
    for p in parts.iter().map(|p| p.trim()).filter(|p| !p.is_empty()) {
        let (k, v) = p.split_once('=')?;
        out.0.insert(k.trim().to_string(), attr_value(v.trim())?);
    }
    Some(out)
}

fn attr_value(v: &str) -> Option<Attr> {
    if let Some(s) = v.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
        return Some(Attr::Str(s.to_string()));
    }
    if let Some(list) = v.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
        let items: Vec<&str> = list.split(',').map(str::trim).filter(|x| !x.is_empty()).collect();
        if items.iter().any(|x| x.contains('.')) {
            return Some(Attr::Floats(items.iter().map(|x| x.parse().ok()).collect::<Option<_>>()?));
        }
        return Some(Attr::Ints(items.iter().map(|x| x.parse().ok()).collect::<Option<_>>()?));
    }
    if v.contains('.') || v.contains('e') { v.parse().ok().map(Attr::Float) } else { v.parse().ok().map(Attr::Int) }
}

/// The live nodes of `g` in `order`, in the text form.
pub fn print(g: &Graph, order: &[NodeId]) -> String {
    let mut s = String::new();
    let ty = |v: ValueId| g.values[v].ty.as_ref().map_or("?".to_string(), type_text);
    for &v in &g.inputs {
        s += &format!("input {}: {}\n", g.values[v].name, ty(v));
    }
    let live: Vec<NodeId> = order.iter().copied().filter(|&id| !g.nodes[id].dead).collect();
    let mut shown = std::collections::HashSet::new();
    for &id in &live {
        for &v in g.nodes[id].inputs.iter().flatten() {
            if let Some(t) = &g.values[v].constant
                && shown.insert(v)
            {
                s += &format!("const {}: {} = {}\n", g.values[v].name, ty(v), const_text(t));
            }
        }
    }
    for &id in &live {
        let n = &g.nodes[id];
        let name = |v: &Option<ValueId>| v.map_or("_".to_string(), |v| g.values[v].name.clone());
        let outs: Vec<String> = n.outputs.iter().map(name).collect();
        let ins: Vec<String> = n.inputs.iter().map(name).collect();
        s += &format!("{} = {}({}){}\n", outs.join(", "), n.op_type, ins.join(", "), attrs_text(&n.attrs));
    }
    for &v in &g.outputs {
        if let Some(t) = &g.values[v].constant {
            s += &format!("const {}: {} = {}\n", g.values[v].name, ty(v), const_text(t));
        }
        s += &format!("output {}\n", g.values[v].name);
    }
    s
}

fn type_text(t: &TypeInfo) -> String {
    let dt = match t.dtype {
        DType::F32 => "f32",
        DType::F16 => "f16",
        DType::I64 => "i64",
        DType::I32 => "i32",
        DType::I8 => "i8",
        DType::U8 => "u8",
        DType::Bool => "bool",
        _ => "other",
    };
    let dims: Vec<String> = t.shape.iter().map(|d| d.to_string()).collect();
    format!("{dt}[{}]", dims.join(","))
}

/// Values rounded to 6 significant digits, so tests do not depend on the
/// last bits of folded arithmetic.
fn const_text(t: &Tensor) -> String {
    let v = t.to_f64();
    let num = |x: f64| {
        let r = format!("{:.5e}", x).parse::<f64>().unwrap_or(x);
        if r == r.trunc() && r.abs() < 1e15 { format!("{}", r as i64) } else { format!("{r}") }
    };
    if v.len() <= 16 {
        format!("[{}]", v.iter().map(|&x| num(x)).collect::<Vec<_>>().join(", "))
    } else {
        format!("<{} values, sum {}>", v.len(), num(v.iter().sum()))
    }
}

fn attrs_text(a: &Attrs) -> String {
    if a.0.is_empty() {
        return String::new();
    }
    let items: Vec<String> = a
        .0
        .iter()
        .map(|(k, v)| {
            let v = match v {
                Attr::Int(i) => i.to_string(),
                Attr::Float(f) => format!("{f:?}"),
                Attr::Str(s) => format!("\"{s}\""),
                Attr::Ints(l) => format!("[{}]", l.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(",")),
                Attr::Floats(l) => format!("[{}]", l.iter().map(|x| format!("{x:?}")).collect::<Vec<_>>().join(",")),
                other => format!("{other:?}"),
            };
            format!("{k}={v}")
        })
        .collect();
    format!(" {{{}}}", items.join(", "))
}
