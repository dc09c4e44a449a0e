//! WGSL for the dynamic nodes: every value a kernel reads is a function of
//! its coordinates (`fn f<id>(c: array<u32, R>) -> T`): a load of a tensor,
//! a constant, a symbolic shape element, or an inlined injective op calling
//! its inputs' functions with mapped coordinates. Shapes, strides and loop
//! bounds are polynomials over the `dims` uniform (`dims.s0`, ...).
//!
//! Kernel templates: one thread per element (injective ops), one workgroup
//! per row (Softmax, last-axis reductions), a 64×64-tiled or a
//! thread-per-output batched MatMul, and QMatMul's GEMV/GEMM with their A
//! loads going through the same functions.

use super::DynInfo;
use super::lower::{ArgOf, DynLowering, DynStep};
use crate::ir::{Graph, NodeId, ValueId};
use drift_ops::dims::{Poly, numel};
use drift_ops::families::nbits::{self, QSpec};
use drift_ops::wgsl::f32_lit;
use drift_ops::{Attrs, DType, Kernel, KernelArg, Phys, TempSpec, TensorRef};
use std::collections::{HashMap, HashSet};

type R<T> = std::result::Result<T, String>;

/// A dynamic workgroup count: `min(ceil(expr / div), cap)` (cap 0: none).
#[derive(Clone, Debug, PartialEq)]
pub struct Groups {
    pub expr: Poly,
    pub div: u32,
    pub cap: u32,
}

impl Groups {
    pub fn fixed(n: u32) -> Groups {
        Groups { expr: Poly::konst(n as i64), div: 1, cap: 0 }
    }
    fn ceil(expr: Poly, div: u32) -> Groups {
        Groups { expr, div, cap: 0 }
    }
    /// Value within the bounds, at most.
    pub fn max(&self, info: &DynInfo) -> u32 {
        let n = (info.max_of(&self.expr).max(0) as u64).div_ceil(self.div as u64);
        if self.cap > 0 { n.min(self.cap as u64) as u32 } else { n.min(u32::MAX as u64) as u32 }
    }
}

/// WebGPU's limit on workgroups per grid dimension.
const MAX_GROUPS: u32 = 65535;

/// The functions and arguments of one kernel being generated.
pub struct Gen<'a> {
    g: &'a Graph,
    info: &'a DynInfo,
    fns: Vec<String>,
    done: HashSet<ValueId>,
    args: Vec<(String, ArgOf)>,
    /// Values computed by a given function body instead of loaded (the
    /// scores of a fused attention).
    custom: HashMap<ValueId, String>,
}

fn arr(rank: usize) -> String {
    format!("array<u32, {}>", rank.max(1))
}

/// `array<u32, R>(..)` from coordinate expressions (`0u` for rank 0).
fn coords(c: &[String]) -> String {
    if c.is_empty() { "array<u32, 1>(0u)".into() } else { format!("array<u32, {}>({})", c.len(), c.join(", ")) }
}

/// Row-major strides of a symbolic shape.
fn strides(shape: &[Poly]) -> Vec<Poly> {
    let mut s = vec![Poly::konst(1); shape.len()];
    for k in (0..shape.len().saturating_sub(1)).rev() {
        s[k] = s[k + 1].mul(&shape[k + 1]);
    }
    s
}

/// The linear index of coordinates `c` (an array expression) in `shape`.
fn linear(c: &str, shape: &[Poly]) -> String {
    let st = strides(shape);
    let terms: Vec<String> = st
        .iter()
        .enumerate()
        .filter(|(k, _)| shape[*k] != Poly::konst(1))
        .map(|(k, s)| if *s == Poly::konst(1) { format!("{c}[{k}]") } else { format!("{c}[{k}] * {}", s.wgsl()) })
        .collect();
    if terms.is_empty() { "0u".into() } else { terms.join(" + ") }
}

/// Statements declaring `var {name}: array<u32, R>` as the coordinates of
/// linear index `idx` in `shape`.
fn unravel(name: &str, idx: &str, shape: &[Poly]) -> String {
    let mut s = format!("    var {name}: {};\n    var {name}_rem = {idx};\n", arr(shape.len()));
    for k in (0..shape.len()).rev() {
        if k == 0 {
            s += &format!("    {name}[0] = {name}_rem;\n");
        } else {
            let d = shape[k].wgsl();
            s += &format!("    {name}[{k}] = {name}_rem % {d};\n    {name}_rem = {name}_rem / {d};\n");
        }
    }
    s
}

/// A WGSL literal of physical type `p`.
fn literal(p: Phys, x: f64) -> String {
    drift_ops::wgsl::lit(p, x)
}

impl<'a> Gen<'a> {
    pub fn new(g: &'a Graph, info: &'a DynInfo) -> Gen<'a> {
        Gen { g, info, fns: vec![], done: HashSet::new(), args: vec![], custom: HashMap::new() }
    }

    fn phys(&self, v: ValueId) -> Phys {
        self.g.ty(v).dtype.phys()
    }

    fn shape(&self, v: ValueId) -> Vec<Poly> {
        self.info.shape(self.g, v)
    }

    /// Registers a tensor argument and returns its accessor suffix.
    fn arg(&mut self, v: ArgOf, name: String) -> String {
        if !self.args.iter().any(|(n, _)| *n == name) {
            self.args.push((name.clone(), v));
        }
        name
    }

    /// The function computing `v`'s element at coordinates: a load when `v`
    /// is a tensor, else its computation.
    pub fn value(&mut self, v: ValueId) -> R<String> {
        // Not `f{v}`: value 16 or 32 would name a function `f16` / `f32`.
        let name = format!("val{v}");
        if self.done.contains(&v) {
            return Ok(name);
        }
        let t = self.phys(v).wgsl();
        let rank = self.shape(v).len();
        let body = if let Some(c) = self.g.values[v].constant.as_deref().filter(|c| c.len() == 1) {
            let x = if c.dtype.is_float() { c.to_f64()[0] } else { c.to_i64()[0] as f64 };
            format!("    return {};\n", literal(self.phys(v), x))
        } else if let Some(vals) = self.info.values.get(&v).cloned() {
            self.symbolic_elements(v, &vals)
        } else if let Some(body) = self.custom.get(&v).cloned() {
            body
        } else if self.info.materialized(self.g, v) {
            let acc = self.arg(ArgOf::Value(v), format!("v{v}"));
            format!("    return ld_{acc}({});\n", linear("c", &self.shape(v)))
        } else {
            let id = self.producer(v)?;
            self.compute(id)?
        };
        self.done.insert(v);
        self.fns.push(format!("fn {name}(c: {}) -> {t} {{\n{body}}}\n", arr(rank)));
        Ok(name)
    }

    /// The node producing `v`.
    fn producer(&self, v: ValueId) -> R<NodeId> {
        self.g
            .live_nodes()
            .find(|(_, n)| n.outputs.contains(&Some(v)))
            .map(|(id, _)| id)
            .ok_or_else(|| format!("value '{}' has no producer", self.g.values[v].name))
    }

    /// Shape-arithmetic elements known as polynomials, selected by index.
    fn symbolic_elements(&mut self, v: ValueId, vals: &[Poly]) -> String {
        let p = self.phys(v);
        let conv = |x: String| match p {
            Phys::U32 => x,
            _ => format!("{}({x})", p.wgsl()),
        };
        let idx = linear("c", &self.shape(v));
        let mut e = conv(vals.last().map(|x| x.wgsl()).unwrap_or_else(|| "0u".into()));
        for (k, x) in vals.iter().enumerate().rev().skip(1) {
            e = format!("select({e}, {}, i == {k}u)", conv(x.wgsl()));
        }
        format!("    let i = {idx};\n    return {e};\n")
    }

    /// The body computing node `id`'s (single) output at coordinates `c`.
    fn compute(&mut self, id: NodeId) -> R<String> {
        let node = &self.g.nodes[id];
        let out = node.outputs[0].ok_or("the node has no output")?;
        let out_shape = self.shape(out);
        let input = |i: usize| node.inputs.get(i).copied().flatten().ok_or(format!("input {i} is missing"));
        let op = node.op_type.as_str();
        match op {
            "Reshape" | "Squeeze" | "Unsqueeze" | "Flatten" | "Identity" | "Dropout" => {
                let x = input(0)?;
                let f = self.value(x)?;
                let xs = self.shape(x);
                Ok(format!("    let i = {};\n{}    return {f}(x);\n", linear("c", &out_shape), unravel("x", "i", &xs)))
            }
            "Transpose" => {
                let x = input(0)?;
                let f = self.value(x)?;
                let r = out_shape.len();
                let perm: Vec<usize> = match node.attrs.ints_opt("perm").map_err(|e| e.to_string())? {
                    Some(p) => p.iter().map(|&a| a as usize).collect(),
                    None => (0..r).rev().collect(),
                };
                // out[c] = in[c'] with c'[perm[k]] = c[k].
                let mut src = vec![String::new(); r];
                for (k, &p) in perm.iter().enumerate() {
                    src[p] = format!("c[{k}]");
                }
                Ok(format!("    return {f}({});\n", coords(&src)))
            }
            "Slice" => self.slice(id),
            "Concat" => self.concat(id),
            "Expand" => {
                let x = input(0)?;
                let f = self.value(x)?;
                Ok(format!("    return {f}({});\n", self.broadcast_coords(&self.shape(x), out_shape.len())))
            }
            "Gather" => self.gather(id),
            "Range" => {
                let start = self.info.values.get(&input(0)?).and_then(|v| v.first().cloned());
                let start = match (start, self.g.values[input(0)?].constant.as_deref()) {
                    (Some(s), _) => s,
                    (None, Some(t)) => Poly::konst(t.to_i64()[0]),
                    _ => return Err("Range's start must be known from shapes".into()),
                };
                let t = self.phys(out).wgsl();
                Ok(format!("    return {t}({}) + {t}(c[0]);\n", start.wgsl()))
            }
            "ConstantOfShape" => {
                let x = match node.attrs.tensor_opt("value").map_err(|e| e.to_string())? {
                    Some(t) if t.dtype.is_float() => t.to_f64()[0],
                    Some(t) => t.to_i64()[0] as f64,
                    None => 0.0,
                };
                Ok(format!("    return {};\n", literal(self.phys(out), x)))
            }
            _ if super::shape::is_elementwise(op) => self.elementwise(id),
            _ => Err(format!("{op} cannot be computed inline")),
        }
    }

    /// Coordinates of an operand of `shape` broadcast into rank `r` output
    /// coordinates `c` (right-aligned; length-1 axes read index 0).
    fn broadcast_coords(&self, shape: &[Poly], r: usize) -> String {
        let off = r - shape.len();
        let c: Vec<String> = shape
            .iter()
            .enumerate()
            .map(|(k, d)| if *d == Poly::konst(1) { "0u".into() } else { format!("c[{}]", k + off) })
            .collect();
        coords(&c)
    }

    fn elementwise(&mut self, id: NodeId) -> R<String> {
        let node = &self.g.nodes[id];
        let out = node.outputs[0].ok_or("no output")?;
        let r = self.shape(out).len();
        let mut body = String::new();
        let mut operands = vec![];
        let mut dtypes = vec![];
        let n_in = if node.op_type == "Clip" { 1 } else { node.inputs.len() };
        for (k, v) in node.inputs.iter().take(n_in).enumerate() {
            let Some(v) = *v else { continue };
            let f = self.value(v)?;
            body += &format!("    let a{k} = {f}({});\n", self.broadcast_coords(&self.shape(v), r));
            operands.push(format!("a{k}"));
            dtypes.push(self.g.ty(v).dtype);
        }
        let constant = |i: usize| {
            node.inputs.get(i).copied().flatten().and_then(|v| self.g.values[v].constant.as_deref()).map(|t| t.to_f64())
        };
        let e = scalar(&node.op_type, &node.attrs, &operands, &dtypes, self.g.ty(out).dtype, &constant)?;
        Ok(body + &format!("    return {e};\n"))
    }

    fn slice(&mut self, id: NodeId) -> R<String> {
        let node = &self.g.nodes[id];
        let x = node.inputs[0].ok_or("no data")?;
        let f = self.value(x)?;
        let xs = self.shape(x);
        let ints = |i: usize| -> R<Vec<Poly>> {
            let v = node.inputs.get(i).copied().flatten().ok_or(format!("input {i} missing"))?;
            self.info
                .values
                .get(&v)
                .cloned()
                .or_else(|| {
                    self.g.values[v].constant.as_deref().map(|t| t.to_i64().into_iter().map(Poly::konst).collect())
                })
                .ok_or(format!("input {i} must be known from shapes"))
        };
        let konst = |p: &Poly| p.as_const().ok_or_else(|| "Slice starts, axes and steps must be constant".to_string());
        let starts = ints(1)?;
        let ends = ints(2)?;
        let axes: Vec<i64> = if node.inputs.get(3).copied().flatten().is_some() {
            ints(3)?.iter().map(konst).collect::<R<_>>()?
        } else {
            (0..starts.len() as i64).collect()
        };
        let steps: Vec<i64> = if node.inputs.get(4).copied().flatten().is_some() {
            ints(4)?.iter().map(konst).collect::<R<_>>()?
        } else {
            vec![1; starts.len()]
        };
        let mut src: Vec<String> = (0..xs.len()).map(|k| format!("c[{k}]")).collect();
        for (k, &a) in axes.iter().enumerate() {
            let ax = if a < 0 { (a + xs.len() as i64) as usize } else { a as usize };
            let ((start, step), _) = super::shape::slice_axis(&xs[ax], konst(&starts[k])?, &ends[k], steps[k])
                .map_err(|_| "Slice bounds".to_string())?;
            src[ax] = if step >= 0 {
                format!("c[{ax}] * {step}u + {}", start.wgsl())
            } else {
                format!("{} - c[{ax}] * {}u", start.wgsl(), -step)
            };
        }
        Ok(format!("    return {f}({});\n", coords(&src)))
    }

    fn concat(&mut self, id: NodeId) -> R<String> {
        let node = &self.g.nodes[id];
        let out = node.outputs[0].ok_or("no output")?;
        let r = self.shape(out).len() as i64;
        let a = node.attrs.int("axis", 0).map_err(|e| e.to_string())?;
        let ax = if a < 0 { (a + r) as usize } else { a as usize };
        let mut body = String::new();
        let mut offset = Poly::default();
        let parts: Vec<ValueId> = node.inputs.iter().flatten().copied().collect();
        for (k, &v) in parts.iter().enumerate() {
            let f = self.value(v)?;
            let len = self.shape(v)[ax].clone();
            let end = offset.add(&len);
            let mut src: Vec<String> = (0..r as usize).map(|d| format!("c[{d}]")).collect();
            src[ax] = format!("c[{ax}] - {}", offset.wgsl());
            let call = format!("return {f}({});", coords(&src));
            if k + 1 == parts.len() {
                body += &format!("    {call}\n");
            } else {
                body += &format!("    if (c[{ax}] < {}) {{ {call} }}\n", end.wgsl());
            }
            offset = end;
        }
        Ok(body)
    }

    fn gather(&mut self, id: NodeId) -> R<String> {
        let node = &self.g.nodes[id];
        let (data, idx) = (node.inputs[0].ok_or("no data")?, node.inputs[1].ok_or("no indices")?);
        let (fd, fi) = (self.value(data)?, self.value(idx)?);
        let (ds, is) = (self.shape(data), self.shape(idx));
        let a = node.attrs.int("axis", 0).map_err(|e| e.to_string())?;
        let ax = if a < 0 { (a + ds.len() as i64) as usize } else { a as usize };
        let ic: Vec<String> = (0..is.len()).map(|k| format!("c[{}]", ax + k)).collect();
        let mut dc: Vec<String> = (0..ax).map(|k| format!("c[{k}]")).collect();
        dc.push("u32(j)".into());
        dc.extend((ax + 1..ds.len()).map(|k| format!("c[{}]", k + is.len() - 1)));
        // Negative indices count from the end; out-of-range ones are clamped
        // so that no kernel ever reads outside a tensor.
        let n = ds[ax].wgsl();
        Ok(format!(
            "    var j = i32({fi}({}));\n    if (j < 0) {{ j += i32({n}); }}\n    j = clamp(j, 0, i32({n}) - 1);\n    return {fd}({});\n",
            coords(&ic),
            coords(&dc)
        ))
    }

    /// The kernel body: its functions, then `main`.
    fn finish(
        self,
        name: &str,
        main: &str,
        extra: &str,
        values: Vec<(String, ArgOf)>,
        wg: [u32; 3],
        groups: [Groups; 3],
    ) -> DynStep {
        let mut args: Vec<(String, ArgOf)> = self.args;
        args.extend(values);
        let body = format!("{extra}{}\n{main}", self.fns.join(""));
        let kernel_args = args.iter().map(|(n, _)| KernelArg::new(n, TensorRef::Input(0))).collect();
        let max: Vec<u32> = groups.iter().map(|g| g.max(self.info).max(1)).collect();
        let kernel = Kernel {
            name: name.to_string(),
            args: kernel_args,
            body,
            workgroup_size: wg,
            workgroups: [max[0], max[1], max[2]],
            flops: 0,
        };
        DynStep { kernel, values: args.into_iter().map(|(_, v)| v).collect(), groups }
    }
}

/// The scalar WGSL of an elementwise op over operand expressions.
fn scalar(
    op: &str,
    attrs: &Attrs,
    a: &[String],
    dtypes: &[DType],
    out: DType,
    constant: &dyn Fn(usize) -> Option<Vec<f64>>,
) -> R<String> {
    let float = dtypes.first().is_some_and(|d| d.is_float());
    let x = |i: usize| a.get(i).cloned().ok_or_else(|| format!("{op} needs input {i}"));
    let bin = |o: &str| -> R<String> { Ok(format!("({} {o} {})", x(0)?, x(1)?)) };
    let cmp = |o: &str| -> R<String> { Ok(format!("u32({} {o} {})", x(0)?, x(1)?)) };
    let fun = |f: &str| -> R<String> {
        if !float {
            return Err(format!("{op} on {}", dtypes[0]));
        }
        Ok(format!("{f}({})", x(0)?))
    };
    match op {
        "Add" => bin("+"),
        "Sub" => bin("-"),
        "Mul" => bin("*"),
        "Div" if float => bin("/"),
        "Pow" if float => match constant(1).as_deref() {
            Some([e]) if *e == 2.0 => Ok(format!("({0} * {0})", x(0)?)),
            Some([e]) if *e == 3.0 => Ok(format!("({0} * {0} * {0})", x(0)?)),
            Some([e]) if *e == 0.5 => Ok(format!("sqrt({})", x(0)?)),
            Some([e]) if *e == 1.0 => x(0),
            // WGSL's pow is undefined below 0: integer exponents keep the
            // sign rule (odd ones the sign), others give NaN, as numpy.
            _ => {
                let (b, e) = (x(0)?, x(1)?);
                let m = format!("pow(abs({b}), {e})");
                let signed = format!("select({m}, -{m}, (i32({e}) & 1) == 1)");
                let negative = format!("select({signed}, bitcast<f32>(0x7fc00000u), floor({e}) != {e})");
                Ok(format!("select(select({negative}, {m}, {b} >= 0.0), 1.0, {e} == 0.0)"))
            }
        },
        "Neg" => Ok(format!("(-{})", x(0)?)),
        "Sqrt" => fun("sqrt"),
        "Exp" => fun("exp"),
        "Log" => fun("log"),
        "Tanh" => fun("tanh"),
        "Cos" => fun("cos"),
        "Sin" => fun("sin"),
        "Abs" => Ok(format!("abs({})", x(0)?)),
        "Reciprocal" if float => Ok(format!("(1.0 / {})", x(0)?)),
        "Sigmoid" if float => Ok(format!("(1.0 / (1.0 + exp(-{})))", x(0)?)),
        "Relu" if float => Ok(format!("max({}, 0.0)", x(0)?)),
        "Softplus" if float => Ok(format!("log(1.0 + exp({}))", x(0)?)),
        "Max" if a.len() == 2 => Ok(format!("max({}, {})", x(0)?, x(1)?)),
        "Min" if a.len() == 2 => Ok(format!("min({}, {})", x(0)?, x(1)?)),
        "Clip" if float => {
            let lo = constant(1).and_then(|v| v.first().copied()).unwrap_or(f64::NEG_INFINITY);
            let hi = constant(2).and_then(|v| v.first().copied()).unwrap_or(f64::INFINITY);
            let lo = attrs.float("min", lo as f32).map_err(|e| e.to_string())?;
            let hi = attrs.float("max", hi as f32).map_err(|e| e.to_string())?;
            Ok(format!("clamp({}, {}, {})", x(0)?, f32_lit(lo), f32_lit(hi)))
        }
        "Equal" => cmp("=="),
        "Less" => cmp("<"),
        "LessOrEqual" => cmp("<="),
        "Greater" => cmp(">"),
        "GreaterOrEqual" => cmp(">="),
        "And" => bin("&"),
        "Or" => bin("|"),
        "Xor" => bin("^"),
        "Not" => Ok(format!("(1u - {})", x(0)?)),
        "Where" => Ok(format!("select({}, {}, {} != 0u)", x(2)?, x(1)?, x(0)?)),
        "Cast" => cast(&x(0)?, dtypes[0], out),
        _ => {
            Err(format!("{op} on {} has no dynamic-shape kernel", dtypes.first().map_or("?".into(), |d| d.to_string())))
        }
    }
}

fn cast(x: &str, from: DType, to: DType) -> R<String> {
    if to.is_float() && to != DType::F32 && to != DType::F64 {
        return Err(format!("Cast to {to} has no dynamic-shape kernel"));
    }
    Ok(match (from.phys(), to.phys(), to == DType::Bool) {
        (_, _, true) => format!("u32({x} != {})", literal(from.phys(), 0.0)),
        (a, b, _) if a == b => x.to_string(),
        (_, b, _) => format!("{}({x})", b.wgsl()),
    })
}

// ---------------------------------------------------------------- templates

/// The steps of a dynamic node that needs its own kernel.
pub fn lower_node(mut kg: Gen, id: NodeId) -> R<DynLowering> {
    let node = &kg.g.nodes[id];
    let out = node.outputs.first().copied().flatten().ok_or("the node has no output")?;
    let step = match node.op_type.as_str() {
        "MatMul" => matmul(kg, id, out)?,
        "QMatMul" => qmatmul(kg, id)?,
        "SampleToken" => sample(kg, id)?,
        "Softmax" | "LogSoftmax" | "LayerNormalization" | "ReduceMean" | "ReduceSum" | "ReduceMax" | "ReduceMin" => {
            row(kg, id, out)?
        }
        op if super::lower::is_injective(op)
            || matches!(op, "Reshape" | "Squeeze" | "Unsqueeze" | "Flatten" | "Identity" | "Dropout") =>
        {
            let body = kg.compute(id)?;
            let t = kg.phys(out).wgsl();
            let shape = kg.shape(out);
            kg.fns.push(format!("fn root(c: {}) -> {t} {{\n{body}}}\n", arr(shape.len())));
            injective(kg, out, &shape)
        }
        op => return Err(format!("{op} has no kernel for symbolic shapes")),
    };
    Ok(DynLowering::Steps { temps: vec![], steps: vec![step] })
}

/// Two injective nodes writing tensors of one shape (`lower::pair_concats`)
/// in one kernel: one thread per element of both.
pub fn injective_pair(mut kg: Gen, first: NodeId, second: NodeId) -> R<DynLowering> {
    let outs = [first, second].map(|id| kg.g.nodes[id].outputs.first().copied().flatten());
    let [Some(a), Some(b)] = outs else { return Err("a paired node has no output".into()) };
    let shape = kg.shape(a);
    let t = kg.phys(a).wgsl();
    for (name, id) in [("root", first), ("root2", second)] {
        let body = kg.compute(id)?;
        kg.fns.push(format!("fn {name}(c: {}) -> {t} {{\n{body}}}\n", arr(shape.len())));
    }
    let (main, groups) = grid_stride(&shape, "        st_y(i, root(c));\n        st_z(i, root2(c));\n");
    let values = vec![("y".into(), ArgOf::Value(a)), ("z".into(), ArgOf::Value(b))];
    let step = kg.finish("dyn_eltwise2", &main, "", values, [256, 1, 1], groups);
    Ok(DynLowering::Steps { temps: vec![], steps: vec![step] })
}

/// A `main` of 256-thread workgroups running `stores` (which sees the
/// element index `i` and its coordinates `c` in `shape`) once per element,
/// grid-stride over the dynamic count, and its grid.
fn grid_stride(shape: &[Poly], stores: &str) -> (String, [Groups; 3]) {
    let n = numel(shape);
    let main = format!(
        "@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {{
    let n = {};
    for (var i = gid.x; i < n; i += nwg.x * 256u) {{
{}{stores}    }}
}}
",
        n.wgsl(),
        unravel("c", "i", shape)
    );
    (main, [Groups { expr: n, div: 256, cap: MAX_GROUPS }, Groups::fixed(1), Groups::fixed(1)])
}

/// One thread per output element, grid-stride over the dynamic count.
fn injective(kg: Gen, out: ValueId, shape: &[Poly]) -> DynStep {
    let (main, groups) = grid_stride(shape, "        st_y(i, root(c));\n");
    kg.finish("dyn_eltwise", &main, "", vec![("y".into(), ArgOf::Value(out))], [256, 1, 1], groups)
}

/// One workgroup per row of the last axis: Softmax, LogSoftmax,
/// LayerNormalization and reductions over the last axis.
fn row(mut kg: Gen, id: NodeId, out: ValueId) -> R<DynStep> {
    let node = &kg.g.nodes[id];
    let x = node.inputs[0].ok_or("no input")?;
    let xs = kg.shape(x);
    let r = xs.len();
    let op = node.op_type.clone();
    if op.starts_with("Reduce") {
        let axes = node.attrs.ints_opt("axes").map_err(|e| e.to_string())?.map(|a| a.to_vec());
        let axes = match axes {
            Some(a) => a,
            None if node.inputs.get(1).copied().flatten().is_some() => {
                let v = node.inputs[1].expect("checked");
                kg.g.values[v].constant.as_deref().map(|t| t.to_i64()).ok_or("axes must be constant")?
            }
            None => (0..r as i64).collect(),
        };
        let last = axes.len() == 1 && (axes[0] == -1 || axes[0] == r as i64 - 1);
        if !last && r > 1 {
            return Err("only reductions over the last axis take symbolic dims".into());
        }
    } else {
        let a = node.attrs.int("axis", -1).map_err(|e| e.to_string())?;
        if a != -1 && a != r as i64 - 1 {
            return Err("Softmax with symbolic dims must run over the last axis".into());
        }
    }
    let f = kg.value(x)?;
    let len = xs.last().cloned().unwrap_or(Poly::konst(1));
    let rows = numel(&xs[..r.saturating_sub(1)]);
    let outer = &xs[..r.saturating_sub(1)];
    let elem = if r == 0 { format!("{f}(array<u32, 1>(0u))") } else { format!("{f}(at(oc, j))") };
    let mut at = format!("fn at(oc: {}, j: u32) -> {} {{\n    var c: {};\n", arr(outer.len()), arr(r), arr(r));
    for k in 0..outer.len() {
        at += &format!("    c[{k}] = oc[{k}];\n");
    }
    at += &format!("    c[{}] = j;\n    return c;\n}}\n", r.saturating_sub(1));
    let reduce = |init: &str, acc: &str, combine: &str| {
        format!(
            "    {{
    var acc = {init};
    for (var j = lid.x; j < L; j += 256u) {{ let x = {elem}; acc = {acc}; }}
    red[lid.x] = acc;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s >>= 1u) {{
        if (lid.x < s) {{ let a = red[lid.x]; let b = red[lid.x + s]; red[lid.x] = {combine}; }}
        workgroupBarrier();
    }}
    }}"
        )
    };
    let neg_inf = "bitcast<f32>(0xff800000u)";
    let work = match op.as_str() {
        "Softmax" | "LogSoftmax" => {
            let store = if op == "Softmax" { "exp(x - mx) / sum" } else { "x - mx - log(sum)" };
            format!(
                "{}
        let mx = red[0];
        workgroupBarrier();
    {}
        let sum = red[0];
        for (var j = lid.x; j < L; j += 256u) {{ let x = {elem}; st_y(row * L + j, {store}); }}
        workgroupBarrier();",
                reduce(neg_inf, "max(acc, x)", "max(a, b)"),
                reduce("0.0", "acc + exp(x - mx)", "a + b")
            )
        }
        "LayerNormalization" => {
            // Mean, then the mean of squared deviations (two passes over
            // the row, as onnxruntime computes it), then y = (x - mean) *
            // inv * scale + bias.
            let eps = node.attrs.float("epsilon", 1e-5).map_err(|e| e.to_string())?;
            let params: Vec<ValueId> = node.inputs.iter().skip(1).flatten().copied().collect();
            if params.iter().any(|&v| kg.shape(v).len() != 1) {
                return Err("LayerNormalization with symbolic dims needs a scale and bias of rank 1".into());
            }
            kg.fns.push("fn per(j: u32) -> array<u32, 1> { return array<u32, 1>(j); }\n".into());
            let scale = kg.value(node.inputs.get(1).copied().flatten().ok_or("no scale")?)?;
            let bias = match node.inputs.get(2).copied().flatten() {
                Some(b) => format!(" + {}(per(j))", kg.value(b)?),
                None => String::new(),
            };
            format!(
                "{}
        let mean = red[0] / f32(L);
        workgroupBarrier();
    {}
        let inv = inverseSqrt(red[0] / f32(L) + {});
        for (var j = lid.x; j < L; j += 256u) {{
            let x = {elem};
            st_y(row * L + j, (x - mean) * inv * {scale}(per(j)){bias});
        }}
        workgroupBarrier();",
                reduce("0.0", "acc + x", "a + b"),
                reduce("0.0", "acc + (x - mean) * (x - mean)", "a + b"),
                f32_lit(eps)
            )
        }
        "ReduceMax" | "ReduceMin" => {
            let (init, f) =
                if op == "ReduceMax" { (neg_inf.to_string(), "max") } else { (f32_lit(f32::INFINITY), "min") };
            format!(
                "{}
        if (lid.x == 0u) {{ st_y(row, red[0]); }}
        workgroupBarrier();",
                reduce(&init, &format!("{f}(acc, x)"), &format!("{f}(a, b)"))
            )
        }
        _ => {
            let div = if op == "ReduceMean" { " / f32(L)" } else { "" };
            format!(
                "{}
        if (lid.x == 0u) {{ st_y(row, red[0]{div}); }}
        workgroupBarrier();",
                reduce("0.0", "acc + x", "a + b")
            )
        }
    };
    let main = format!(
        "var<workgroup> red: array<f32, 256>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>) {{
    let rows = {rows};
    let L = {len};
    for (var row = wid.x; row < rows; row += nwg.x) {{
{unr}        {work}
    }}
}}
",
        rows = rows.wgsl(),
        len = len.wgsl(),
        unr = unravel("oc", "row", outer),
    );
    if kg.phys(x) != Phys::F32 {
        return Err(format!("{op} on non-float data with symbolic dims"));
    }
    let groups = [Groups { expr: rows, div: 1, cap: MAX_GROUPS }, Groups::fixed(1), Groups::fixed(1)];
    let y = vec![("y".into(), ArgOf::Value(out))];
    Ok(kg.finish(&format!("dyn_{}", op.to_lowercase()), &main, &at, y, [256, 1, 1], groups))
}

/// WGSL of `fn {name}(x: f32, lane: u32, is_max: bool) -> f32`: the sum or
/// the maximum of `x` over a workgroup of 256 threads (a tree in workgroup
/// memory), returned to every thread; call it in uniform control flow.
fn workgroup_reduce(name: &str) -> String {
    format!(
        "var<workgroup> {name}_tree: array<f32, 256>;

fn {name}(x: f32, lane: u32, is_max: bool) -> f32 {{
    {name}_tree[lane] = x;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s >>= 1u) {{
        if (lane < s) {{
            let a = {name}_tree[lane];
            let b = {name}_tree[lane + s];
            {name}_tree[lane] = select(a + b, max(a, b), is_max);
        }}
        workgroupBarrier();
    }}
    let r = {name}_tree[0];
    workgroupBarrier();
    return r;
}}
"
    )
}

/// The row-mean prologue of product `id` (`lower::fuse_row_means`), if it
/// has one: each mean becomes a read of workgroup memory, and the returned
/// WGSL defines that memory and `fn row_prologue(lane: u32)`, which the
/// product's 256 threads call first to fill it (a strided sum per lane, a
/// tree over the workgroup, as the row kernel computes it).
fn row_prologue(kg: &mut Gen, id: NodeId) -> R<Option<String>> {
    let Some(means) = kg.info.plan.prologue.get(&id).cloned() else { return Ok(None) };
    let mut decl = workgroup_reduce("prologue_sum");
    let mut body = String::from("fn row_prologue(lane: u32) {\n");
    for (i, &m) in means.iter().enumerate() {
        let node = &kg.g.nodes[m];
        let x = node.inputs[0].ok_or("a mean without input")?;
        let out = node.outputs[0].ok_or("a mean without output")?;
        let xs = kg.shape(x);
        let r = xs.len().max(1);
        let outer = &xs[..xs.len().saturating_sub(1)];
        let rows = numel(outer).as_const().ok_or("a prologue mean over a symbolic row count")?;
        let len = xs.last().map_or("1u".to_string(), |d| d.wgsl());
        let read = format!("    return pro_mean{i}[{}];\n", linear("c", &kg.shape(out)));
        kg.custom.insert(out, read);
        let f = kg.value(x)?;
        decl += &format!("var<workgroup> pro_mean{i}: array<f32, {}>;\n", rows.max(1));
        let copy: String = (0..outer.len()).map(|k| format!("        c[{k}] = oc[{k}];\n")).collect();
        body += &format!(
            "    for (var row = 0u; row < {rows}u; row++) {{\n{unr}        var c: {arr};\n{copy}        var acc = 0.0;\n        for (var j = lane; j < {len}; j += 256u) {{ c[{last}] = j; acc += {f}(c); }}\n        let total = prologue_sum(acc, lane, false);\n        if (lane == 0u) {{ pro_mean{i}[row] = total / f32({len}); }}\n    }}\n",
            unr = unravel("oc", "row", outer),
            arr = arr(r),
            last = r - 1,
        );
    }
    Ok(Some(decl + &body + "    workgroupBarrier();\n}\n"))
}

/// Helpers `fa(bc, m, k)` / `fb(bc, k, n)`: operand elements from the
/// output's batch coordinates `bc` (broadcast into each operand's own).
fn operand_fn(kg: &mut Gen, name: &str, v: ValueId, batch_rank: usize) -> R<String> {
    let f = kg.value(v)?;
    let s = kg.shape(v);
    let own = s.len() - 2;
    let off = batch_rank - own;
    let mut c: Vec<String> =
        (0..own).map(|k| if s[k] == Poly::konst(1) { "0u".into() } else { format!("bc[{}]", k + off) }).collect();
    c.push("i".into());
    c.push("j".into());
    Ok(format!("fn {name}(bc: {}, i: u32, j: u32) -> f32 {{ return {f}({}); }}\n", arr(batch_rank), coords(&c)))
}

/// Batched MatMul of f32 operands with symbolic dims.
fn matmul(mut kg: Gen, id: NodeId, out: ValueId) -> R<DynStep> {
    let node = &kg.g.nodes[id];
    let (a, b) = (node.inputs[0].ok_or("no A")?, node.inputs[1].ok_or("no B")?);
    let os = kg.shape(out);
    if os.len() < 2 || kg.shape(a).len() < 2 || kg.shape(b).len() < 2 {
        return Err("MatMul of 1-D operands with symbolic dims".into());
    }
    if kg.phys(a) != Phys::F32 {
        return Err("integer MatMul with symbolic dims".into());
    }
    let br = os.len() - 2;
    let (m, n) = (os[br].clone(), os[br + 1].clone());
    let k = kg.shape(a).last().cloned().expect("rank ≥ 2");
    let batch = numel(&os[..br]);
    let prologue = row_prologue(&mut kg, id)?;
    let mut helpers = prologue.clone().unwrap_or_default();
    helpers += &operand_fn(&mut kg, "fa", a, br)?;
    helpers += &operand_fn(&mut kg, "fb", b, br)?;
    let dims = format!("    let M = {};\n    let N = {};\n    let K = {};\n", m.wgsl(), n.wgsl(), k.wgsl());
    let bc = unravel("bc", "z", &os[..br]);
    let small = m.as_const().is_some_and(|m| m <= 4);
    if prologue.is_some() && !small {
        return Err("a row-mean prologue on a product of many rows".into());
    }
    let call = if prologue.is_some() { "    row_prologue(li);\n" } else { "" };
    let (main, wg, groups) = if small {
        // Few rows (decode): one thread per output, looping over K.
        let main = format!(
            "@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {{
{call}{dims}    let total = {total};
    for (var o = gid.x; o < total; o += nwg.x * 256u) {{
        let col = o % N;
        let row = (o / N) % M;
        let z = o / (M * N);
{bc}        var acc = 0.0;
        for (var kk = 0u; kk < K; kk++) {{ acc += fa(bc, row, kk) * fb(bc, kk, col); }}
        st_y(o, acc);
    }}
}}
",
            total = numel(&os).wgsl(),
            bc = bc
        );
        (
            main,
            [256, 1, 1],
            [Groups { expr: numel(&os), div: 256, cap: MAX_GROUPS }, Groups::fixed(1), Groups::fixed(1)],
        )
    } else {
        let mut fma = String::new();
        for i in 0..4 {
            for j in 0..4 {
                fma += &format!("            acc[{}] += a[{i}] * b[{j}];\n", i * 4 + j);
            }
        }
        let main = format!(
            "var<workgroup> As: array<f32, 1024>;
var<workgroup> Bs: array<f32, 1024>;

@compute @workgroup_size(16, 16)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {{
{dims}    let z = wid.z;
{bc}    let m0 = wid.y * 64u;
    let n0 = wid.x * 64u;
    var acc: array<f32, 16>;
    for (var k0 = 0u; k0 < K; k0 += 16u) {{
        for (var r = li; r < 1024u; r += 256u) {{
            let row = m0 + r / 16u;
            let ka = k0 + r % 16u;
            var va = 0.0;
            if (row < M && ka < K) {{ va = fa(bc, row, ka); }}
            As[r] = va;
            let kb = k0 + r / 64u;
            let col = n0 + r % 64u;
            var vb = 0.0;
            if (kb < K && col < N) {{ vb = fb(bc, kb, col); }}
            Bs[r] = vb;
        }}
        workgroupBarrier();
        for (var kk = 0u; kk < 16u; kk++) {{
            var a: array<f32, 4>;
            var b: array<f32, 4>;
            for (var i = 0u; i < 4u; i++) {{
                a[i] = As[(lid.y + 16u * i) * 16u + kk];
                b[i] = Bs[kk * 64u + lid.x + 16u * i];
            }}
{fma}        }}
        workgroupBarrier();
    }}
    for (var i = 0u; i < 4u; i++) {{
        for (var j = 0u; j < 4u; j++) {{
            let row = m0 + lid.y + 16u * i;
            let col = n0 + lid.x + 16u * j;
            if (row < M && col < N) {{ st_y((z * M + row) * N + col, acc[i * 4u + j]); }}
        }}
    }}
}}
"
        );
        (main, [16, 16, 1], [Groups::ceil(n, 64), Groups::ceil(m, 64), Groups::ceil(batch, 1)])
    };
    Ok(kg.finish("dyn_matmul", &main, &helpers, vec![("y".into(), ArgOf::Value(out))], wg, groups))
}

/// QMatMul with a symbolic row count: A's loads go through its function.
fn qmatmul(mut kg: Gen, id: NodeId) -> R<DynStep> {
    let node = &kg.g.nodes[id];
    let fmt = nbits_format(&node.attrs)?;
    let a = node.inputs[0].ok_or("no A")?;
    let prologue = row_prologue(&mut kg, id)?;
    let xs = kg.shape(a);
    let m = numel(&xs[..xs.len() - 1]);
    let f = kg.value(a)?;
    let outer = &xs[..xs.len() - 1];
    let mut a_at = format!("fn a_at(m: u32, k: u32) -> f32 {{\n{}", unravel("c", "m", outer));
    let r = xs.len();
    a_at += &format!("    var x: {};\n", arr(r));
    for k in 0..outer.len() {
        a_at += &format!("    x[{k}] = c[{k}];\n");
    }
    a_at += &format!("    x[{}] = k;\n    return {f}(x);\n}}\n", r - 1);
    let bias = node.inputs.get(4).copied().flatten().is_some();
    let spec = QSpec { fmt, bias, custom_a: true, prologue: prologue.is_some() };
    let (kernel, groups) = match m.as_const() {
        Some(rows) if rows as usize <= nbits::GEMV_MAX_ROWS => {
            let k = nbits::gemv_kernel(&spec, rows.max(1) as usize);
            let w = k.workgroups;
            (k, [Groups::fixed(w[0]), Groups::fixed(w[1]), Groups::fixed(1)])
        }
        _ if prologue.is_some() => return Err("a row-mean prologue on a product of many rows".into()),
        _ => {
            let k = nbits::gemm_kernel(&spec, &m.wgsl());
            let cols = fmt.n.div_ceil(nbits::GEMM_COLS) as u32;
            (k, [Groups::fixed(cols), Groups::ceil(m, nbits::GEMM_ROWS as u32), Groups::fixed(1)])
        }
    };
    let values: Vec<(String, ArgOf)> = kernel
        .args
        .iter()
        .map(|arg| {
            let v = match arg.tensor {
                TensorRef::Input(i) => node.inputs[i],
                TensorRef::Output(i) => node.outputs[i],
                TensorRef::Temp(_) => None,
            };
            v.map(|v| (arg.name.clone(), ArgOf::Value(v))).ok_or(format!("QMatMul argument '{}' is missing", arg.name))
        })
        .collect::<R<_>>()?;
    // nbits' kernels define `main` after their helpers; ours go first.
    let helpers = a_at + &prologue.unwrap_or_default();
    let mut step = kg.finish(&kernel.name, &kernel.body, &helpers, values, kernel.workgroup_size, groups);
    // The weights' 16-byte reads (`ld4_w`) survive the renaming of arguments.
    for arg in step.kernel.args.iter_mut() {
        arg.wide = kernel.args.iter().any(|a| a.wide && a.name == arg.name);
    }
    Ok(step)
}

/// Token sampling over the last position of logits of a dynamic length.
fn sample(kg: Gen, id: NodeId) -> R<DynStep> {
    let node = &kg.g.nodes[id];
    let logits = node.inputs[0].ok_or("no logits")?;
    let ls = kg.shape(logits);
    let (batch, vocab) = match (ls[0].as_const(), ls[2].as_const()) {
        (Some(b), Some(v)) => (b as usize, v as usize),
        _ => return Err("SampleToken needs a fixed batch and vocabulary".into()),
    };
    let kernel = drift_ops::families::sampling::sample_kernel(batch, &ls[1].wgsl(), vocab);
    let values = vec![
        ("logits".to_string(), ArgOf::Value(logits)),
        ("params".to_string(), ArgOf::Value(node.inputs[1].ok_or("no params")?)),
        ("y".to_string(), ArgOf::Value(node.outputs[0].ok_or("no output")?)),
    ];
    let groups = [Groups::fixed(batch as u32), Groups::fixed(1), Groups::fixed(1)];
    Ok(kg.finish(&kernel.name, &kernel.body, "", values, kernel.workgroup_size, groups))
}

/// The weight format of a QMatMul node.
fn nbits_format(a: &Attrs) -> R<nbits::WeightFormat> {
    let int = |n: &str| a.int(n, 0).map_err(|e| e.to_string());
    Ok(nbits::WeightFormat {
        k: int("K")? as usize,
        n: int("N")? as usize,
        bits: int("bits")? as u32,
        group: int("group")? as usize,
        f16_scales: int("f16_scales")? != 0,
        zero_points: match int("zero_points")? {
            1 => nbits::ZeroPoints::Packed,
            2 => nbits::ZeroPoints::Float,
            _ => nbits::ZeroPoints::Default,
        },
    })
}

/// Decode attention in one kernel (see `lower::fuse_attention`): value
/// product `av`, whose A is the Softmax `sm` of an expression of the score
/// product `qk`. One workgroup per query row: its lanes compute the row's
/// scores (each a dot product of the query and key operands, through the
/// inlined scale and mask), keep them in a scratch row, take the maximum and
/// the sum of exponentials, then one lane per output feature sums
/// probabilities times values.
pub fn attention(mut kg: Gen, av: NodeId, sm: NodeId, qk: NodeId) -> R<DynLowering> {
    let g = kg.g;
    let (q, k) = (g.nodes[qk].inputs[0].ok_or("no Q")?, g.nodes[qk].inputs[1].ok_or("no K")?);
    let scores = g.nodes[qk].outputs[0].ok_or("no scores")?;
    let x = g.nodes[sm].inputs[0].ok_or("no Softmax input")?;
    let v = g.nodes[av].inputs[1].ok_or("no V")?;
    let out = g.nodes[av].outputs[0].ok_or("no output")?;
    let ss = kg.shape(scores);
    let br = ss.len().checked_sub(2).ok_or("scores of rank < 2")?;
    let depth = kg.shape(q).last().cloned().ok_or("Q of rank 0")?;
    // Scores on the fly: the score product's element as a dot product.
    let mut helpers = operand_fn(&mut kg, "fq", q, br)?;
    helpers += &operand_fn(&mut kg, "fk", k, br)?;
    let mut dot = format!("    var bc: {};\n", arr(br));
    for i in 0..br {
        dot += &format!("    bc[{i}] = c[{i}];\n");
    }
    dot += &format!(
        "    var acc = 0.0;\n    for (var d = 0u; d < {}u; d++) {{ acc += fq(bc, c[{br}], d) * fk(bc, d, c[{}]); }}\n    return acc;\n",
        depth.as_const().ok_or("symbolic head size")?,
        br + 1
    );
    kg.custom.insert(scores, dot);
    let f = kg.value(x)?;
    let os = kg.shape(out);
    helpers += &operand_fn(&mut kg, "fv", v, br)?;
    let xs = kg.shape(x);
    let outer = &xs[..xs.len() - 1];
    let rows = numel(outer);
    let len = xs.last().cloned().ok_or("scores of rank 0")?;
    let width = os.last().cloned().ok_or("output of rank 0")?;
    let span = kg.info.max_of(&len).max(1) as u64;
    let mut at =
        format!("fn at(oc: {}, j: u32) -> {} {{\n    var c: {};\n", arr(outer.len()), arr(xs.len()), arr(xs.len()));
    for i in 0..outer.len() {
        at += &format!("    c[{i}] = oc[{i}];\n");
    }
    at += &format!("    c[{}] = j;\n    return c;\n}}\n", outer.len());
    let neg_inf = "bitcast<f32>(0xff800000u)";
    let main = format!(
        "{reduce}
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>) {{
    let rows = {rows};
    let L = {len};
    let N = {width};
    for (var row = wid.x; row < rows; row += nwg.x) {{
{unr}        let base = row * {span}u;
        var m = {neg_inf};
        for (var j = lid.x; j < L; j += 256u) {{ let s = {f}(at(oc, j)); st_sc(base + j, s); m = max(m, s); }}
        m = reduce(m, lid.x, true);
        var sum = 0.0;
        for (var j = lid.x; j < L; j += 256u) {{ let p = exp(ld_sc(base + j) - m); st_sc(base + j, p); sum += p; }}
        sum = reduce(sum, lid.x, false);
        storageBarrier();
        var bc: {barr};
{bcs}        for (var n = lid.x; n < N; n += 256u) {{
            var acc = 0.0;
            for (var j = 0u; j < L; j++) {{ acc += ld_sc(base + j) * fv(bc, j, n); }}
            st_y(row * N + n, acc / sum);
        }}
        storageBarrier();
    }}
}}
",
        reduce = workgroup_reduce("reduce"),
        rows = rows.wgsl(),
        len = len.wgsl(),
        width = width.wgsl(),
        unr = unravel("oc", "row", outer),
        barr = arr(br),
        bcs = (0..br).map(|i| format!("        bc[{i}] = oc[{i}];\n")).collect::<String>(),
    );
    let scratch = TempSpec { elems: kg.info.max_of(&rows).max(1) as usize * span as usize, phys: Phys::F32 };
    let groups = [Groups { expr: rows, div: 1, cap: MAX_GROUPS }, Groups::fixed(1), Groups::fixed(1)];
    let values = vec![("sc".to_string(), ArgOf::Temp(0)), ("y".to_string(), ArgOf::Value(out))];
    let step = kg.finish("dyn_attention", &main, &(at + &helpers), values, [256, 1, 1], groups);
    Ok(DynLowering::Steps { temps: vec![scratch], steps: vec![step] })
}
