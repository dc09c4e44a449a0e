//! Symbolic shape rules for the ops of decoder-only LLM graphs.
//!
//! Each rule maps the inputs' symbolic shapes (and, for the small integer
//! tensors of shape arithmetic, their symbolic elements) to the outputs'.
//! Shape → Gather → Unsqueeze → Concat → Reshape chains thus stay symbolic:
//! `Shape(input_ids)[1]` is the polynomial `seq`, and the Reshape reading
//! the Concat gets `[1, seq, 4, 16]` without any kernel running.

use drift_ops::dims::{Poly, numel};
use drift_ops::{Attrs, DType, Tensor};

/// What a rule sees of one input.
#[derive(Clone, Debug)]
pub struct SymIn<'a> {
    pub dtype: DType,
    pub shape: Vec<Poly>,
    /// The elements of a small integer tensor, when known (constants, or
    /// computed from shapes).
    pub value: Option<Vec<Poly>>,
    pub constant: Option<&'a Tensor>,
}

/// What a rule gives for one output.
#[derive(Clone, Debug, PartialEq)]
pub struct SymOut {
    pub dtype: DType,
    pub shape: Vec<Poly>,
    pub value: Option<Vec<Poly>>,
}

impl SymOut {
    fn data(dtype: DType, shape: Vec<Poly>) -> SymOut {
        SymOut { dtype, shape, value: None }
    }
}

/// Why a rule failed.
pub enum RuleError {
    /// The op has no symbolic rule (or not for these operands).
    Unsupported(String),
    Invalid(String),
}

type R<T> = Result<T, RuleError>;

fn invalid<T>(msg: impl Into<String>) -> R<T> {
    Err(RuleError::Invalid(msg.into()))
}

fn unsupported<T>(msg: impl Into<String>) -> R<T> {
    Err(RuleError::Unsupported(msg.into()))
}

/// Small integer constants become symbolic values, so shape arithmetic on
/// them stays exact.
pub const MAX_VALUE_ELEMS: usize = 64;

/// The elements of a constant as polynomials, if it is a small integer tensor.
pub fn const_value(t: &Tensor) -> Option<Vec<Poly>> {
    (!t.dtype.is_float() && t.len() <= MAX_VALUE_ELEMS).then(|| t.to_i64().into_iter().map(Poly::konst).collect())
}

fn req<'a, 'b>(ins: &'b [Option<SymIn<'a>>], i: usize) -> R<&'b SymIn<'a>> {
    match ins.get(i).and_then(|x| x.as_ref()) {
        Some(x) => Ok(x),
        None => invalid(format!("input {i} is required")),
    }
}

fn opt<'a, 'b>(ins: &'b [Option<SymIn<'a>>], i: usize) -> Option<&'b SymIn<'a>> {
    ins.get(i).and_then(|x| x.as_ref())
}

/// The integer elements of input `i`, which decide shapes.
fn ints(ins: &[Option<SymIn>], i: usize, what: &str) -> R<Vec<Poly>> {
    match req(ins, i)?.value.clone() {
        Some(v) => Ok(v),
        None => unsupported(format!("{what} (input {i}) is computed from run-time data, not from shapes")),
    }
}

/// Constant integer elements of input `i`.
fn const_ints(ins: &[Option<SymIn>], i: usize, what: &str) -> R<Vec<i64>> {
    ints(ins, i, what)?
        .iter()
        .map(|p| p.as_const().ok_or_else(|| RuleError::Unsupported(format!("{what} (input {i}) must be constant"))))
        .collect()
}

fn axis(a: i64, rank: usize) -> R<usize> {
    let r = rank as i64;
    let x = if a < 0 { a + r } else { a };
    if x < 0 || x >= r.max(1) {
        return invalid(format!("axis {a} is out of range for rank {rank}"));
    }
    Ok(x as usize)
}

fn attr_int(a: &Attrs, name: &str, default: i64) -> R<i64> {
    a.int(name, default).map_err(|e| RuleError::Invalid(e.to_string()))
}

fn attr_ints(a: &Attrs, name: &str) -> R<Option<Vec<i64>>> {
    a.ints_opt(name).map(|v| v.map(|v| v.to_vec())).map_err(|e| RuleError::Invalid(e.to_string()))
}

/// numpy broadcasting of symbolic shapes: dims must be equal or 1.
pub fn broadcast(shapes: &[&[Poly]]) -> R<Vec<Poly>> {
    let rank = shapes.iter().map(|s| s.len()).max().unwrap_or(0);
    let one = Poly::konst(1);
    let mut out = vec![one.clone(); rank];
    for s in shapes {
        let off = rank - s.len();
        for (i, d) in s.iter().enumerate() {
            let o = &mut out[off + i];
            if *o == one {
                *o = d.clone();
            } else if d != &one && d != o {
                return invalid(format!("cannot broadcast dims {o:?} and {d:?}"));
            }
        }
    }
    Ok(out)
}

/// Element `i` of a value broadcast to `n` elements (scalars repeat).
fn elem(v: &[Poly], i: usize) -> Poly {
    if v.len() == 1 { v[0].clone() } else { v[i].clone() }
}

/// Elementwise arithmetic on symbolic integer values, where it stays exact.
fn value_arith(op: &str, vals: &[&Vec<Poly>]) -> Option<Vec<Poly>> {
    let n = vals.iter().map(|v| v.len()).max()?;
    if vals.iter().any(|v| v.len() != n && v.len() != 1) {
        return None;
    }
    (0..n)
        .map(|i| {
            let a: Vec<Poly> = vals.iter().map(|v| elem(v, i)).collect();
            match (op, a.as_slice()) {
                ("Add", [x, y]) => Some(x.add(y)),
                ("Sub", [x, y]) => Some(x.sub(y)),
                ("Mul", [x, y]) => Some(x.mul(y)),
                ("Div", [x, y]) => x.div_exact(y),
                ("Neg", [x]) => Some(x.scale(-1)),
                ("Identity", [x]) => Some(x.clone()),
                _ => None,
            }
        })
        .collect()
}

/// Ops whose every output element is a scalar function of the inputs'
/// elements at the broadcast position.
pub fn is_elementwise(op: &str) -> bool {
    matches!(
        op,
        "Add"
            | "Sub"
            | "Mul"
            | "Div"
            | "Pow"
            | "Neg"
            | "Sqrt"
            | "Reciprocal"
            | "Exp"
            | "Log"
            | "Tanh"
            | "Sigmoid"
            | "Relu"
            | "Erf"
            | "Cos"
            | "Sin"
            | "Abs"
            | "Gelu"
            | "Softplus"
            | "Equal"
            | "Less"
            | "LessOrEqual"
            | "Greater"
            | "GreaterOrEqual"
            | "And"
            | "Or"
            | "Not"
            | "Xor"
            | "Where"
            | "Cast"
            | "Max"
            | "Min"
            | "Clip"
    )
}

fn yields_bool(op: &str) -> bool {
    matches!(op, "Equal" | "Less" | "LessOrEqual" | "Greater" | "GreaterOrEqual" | "And" | "Or" | "Not" | "Xor")
}

/// Output types of one node.
pub fn infer(op: &str, a: &Attrs, opset: i64, ins: &[Option<SymIn>]) -> R<Vec<SymOut>> {
    let x = || req(ins, 0);
    match op {
        "Shape" => {
            let s = &x()?.shape;
            let r = s.len() as i64;
            let clamp = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r) as usize;
            let (start, end) = (clamp(attr_int(a, "start", 0)?), clamp(attr_int(a, "end", r)?));
            let v: Vec<Poly> = s[start..end.max(start)].to_vec();
            Ok(vec![SymOut { dtype: DType::I64, shape: vec![Poly::konst(v.len() as i64)], value: Some(v) }])
        }
        "Size" => {
            let n = numel(&x()?.shape);
            Ok(vec![SymOut { dtype: DType::I64, shape: vec![], value: Some(vec![n]) }])
        }
        "Identity" | "Dropout" => {
            let i = x()?;
            Ok(vec![SymOut { dtype: i.dtype, shape: i.shape.clone(), value: i.value.clone() }])
        }
        "Unsqueeze" | "Squeeze" => squeeze(op, a, opset, ins),
        "Reshape" => reshape(a, ins),
        "Flatten" => {
            let i = x()?;
            let ax = axis(attr_int(a, "axis", 1)?, i.shape.len() + 1)?;
            let shape = vec![numel(&i.shape[..ax]), numel(&i.shape[ax..])];
            Ok(vec![SymOut { dtype: i.dtype, shape, value: i.value.clone() }])
        }
        "Concat" => concat(a, ins),
        "Gather" => gather(a, ins),
        "Transpose" => {
            let i = x()?;
            let perm = attr_ints(a, "perm")?.unwrap_or_else(|| (0..i.shape.len() as i64).rev().collect());
            let shape = perm.iter().map(|&p| axis(p, i.shape.len()).map(|p| i.shape[p].clone())).collect::<R<_>>()?;
            Ok(vec![SymOut::data(i.dtype, shape)])
        }
        "Slice" => slice(ins),
        "Expand" => {
            let i = x()?;
            let target = ints(ins, 1, "shape")?;
            let shape = broadcast(&[&i.shape, &target])?;
            Ok(vec![SymOut::data(i.dtype, shape)])
        }
        "Range" => {
            let (start, limit, delta) = (ints(ins, 0, "start")?, ints(ins, 1, "limit")?, const_ints(ins, 2, "delta")?);
            if delta != [1] {
                return unsupported("Range with symbolic bounds needs delta 1");
            }
            Ok(vec![SymOut::data(x()?.dtype, vec![limit[0].sub(&start[0])])])
        }
        "ConstantOfShape" => {
            let shape = ints(ins, 0, "shape")?;
            let dtype = match a.0.get("value") {
                Some(drift_ops::Attr::Tensor(t)) => t.dtype,
                _ => DType::F32,
            };
            Ok(vec![SymOut::data(dtype, shape)])
        }
        "MatMul" => matmul(ins),
        "QMatMul" => {
            let i = x()?;
            let n = attr_int(a, "N", 0)?;
            let mut shape = i.shape.clone();
            *shape.last_mut().ok_or_else(|| RuleError::Invalid("A must have rank ≥ 1".into()))? = Poly::konst(n);
            Ok(vec![SymOut::data(i.dtype, shape)])
        }
        "Softmax" | "LogSoftmax" => {
            let i = x()?;
            Ok(vec![SymOut::data(i.dtype, i.shape.clone())])
        }
        // Y only: the optional Mean and InvStdDev outputs have no rule.
        "LayerNormalization" => {
            let i = x()?;
            let r = i.shape.len() as i64;
            let a = attr_int(a, "axis", -1)?;
            if a != -1 && a != r - 1 {
                return unsupported("LayerNormalization with symbolic dims must normalize the last axis");
            }
            Ok(vec![SymOut::data(i.dtype, i.shape.clone())])
        }
        "ReduceMean" | "ReduceSum" | "ReduceMax" | "ReduceMin" => reduce(a, opset, ins),
        "SampleToken" => {
            let i = x()?;
            Ok(vec![SymOut::data(DType::I64, vec![i.shape[0].clone(), Poly::konst(1)])])
        }
        op if is_elementwise(op) => elementwise(op, a, ins),
        _ => unsupported("no symbolic shape rule"),
    }
}

fn elementwise(op: &str, a: &Attrs, ins: &[Option<SymIn>]) -> R<Vec<SymOut>> {
    let present: Vec<&SymIn> = match op {
        // Clip's bounds are scalars that do not broadcast the output.
        "Clip" => vec![req(ins, 0)?],
        _ => ins.iter().flatten().collect(),
    };
    let shapes: Vec<&[Poly]> = present.iter().map(|i| i.shape.as_slice()).collect();
    let shape = broadcast(&shapes)?;
    let data = if op == "Where" { req(ins, 1)? } else { req(ins, 0)? };
    let dtype = match op {
        "Cast" => DType::from_onnx(attr_int(a, "to", 1)? as i32).map_err(|e| RuleError::Invalid(e.to_string()))?,
        op if yields_bool(op) => DType::Bool,
        _ => data.dtype,
    };
    let vals: Option<Vec<&Vec<Poly>>> = present.iter().map(|i| i.value.as_ref()).collect();
    let value = match (op, vals) {
        ("Cast", Some(v)) if !dtype.is_float() && dtype != DType::Bool => Some(v[0].clone()),
        (op, Some(v)) => value_arith(op, &v),
        _ => None,
    };
    Ok(vec![SymOut { dtype, shape, value }])
}

fn squeeze(op: &str, a: &Attrs, opset: i64, ins: &[Option<SymIn>]) -> R<Vec<SymOut>> {
    let i = req(ins, 0)?;
    let axes = if opset >= 13 {
        if opt(ins, 1).is_some() { Some(const_ints(ins, 1, "axes")?) } else { None }
    } else {
        attr_ints(a, "axes")?
    };
    let mut shape = i.shape.clone();
    if op == "Unsqueeze" {
        let axes = axes.ok_or_else(|| RuleError::Invalid("Unsqueeze needs axes".into()))?;
        let rank = shape.len() + axes.len();
        let mut norm: Vec<usize> = axes.iter().map(|&x| axis(x, rank)).collect::<R<_>>()?;
        norm.sort_unstable();
        for ax in norm {
            shape.insert(ax, Poly::konst(1));
        }
    } else {
        let one = Poly::konst(1);
        let drop: Vec<usize> = match axes {
            Some(axes) => axes.iter().map(|&x| axis(x, shape.len())).collect::<R<_>>()?,
            None => {
                if shape.iter().any(|d| !d.is_const()) {
                    return unsupported("Squeeze without axes on a symbolic shape");
                }
                (0..shape.len()).filter(|&k| shape[k] == one).collect()
            }
        };
        for &ax in &drop {
            if shape[ax] != one {
                return invalid(format!("cannot squeeze axis {ax} of length {:?}", shape[ax]));
            }
        }
        shape = shape.into_iter().enumerate().filter(|(k, _)| !drop.contains(k)).map(|(_, d)| d).collect();
    }
    Ok(vec![SymOut { dtype: i.dtype, shape, value: i.value.clone() }])
}

fn reshape(a: &Attrs, ins: &[Option<SymIn>]) -> R<Vec<SymOut>> {
    let i = req(ins, 0)?;
    let target = ints(ins, 1, "shape")?;
    let allow_zero = attr_int(a, "allowzero", 0)? != 0;
    let mut shape = Vec::with_capacity(target.len());
    let mut infer_at = None;
    for (k, d) in target.iter().enumerate() {
        match d.as_const() {
            Some(-1) => {
                if infer_at.replace(k).is_some() {
                    return invalid("shape has more than one -1");
                }
                shape.push(Poly::konst(1));
            }
            Some(0) if !allow_zero => match i.shape.get(k) {
                Some(x) => shape.push(x.clone()),
                None => return invalid(format!("shape[{k}] = 0 copies a dim the input does not have")),
            },
            _ => shape.push(d.clone()),
        }
    }
    let total = numel(&i.shape);
    if let Some(k) = infer_at {
        let known = numel(&shape);
        shape[k] = total.div_exact(&known).ok_or_else(|| {
            RuleError::Unsupported(format!("cannot infer -1 symbolically: {total:?} elements over {known:?}"))
        })?;
    } else if numel(&shape) != total {
        return invalid(format!("cannot reshape {:?} into {:?}", i.shape, shape));
    }
    Ok(vec![SymOut { dtype: i.dtype, shape, value: i.value.clone() }])
}

fn concat(a: &Attrs, ins: &[Option<SymIn>]) -> R<Vec<SymOut>> {
    let parts: Vec<&SymIn> = ins.iter().flatten().collect();
    let first = parts.first().ok_or_else(|| RuleError::Invalid("Concat needs inputs".into()))?;
    let rank = first.shape.len();
    let ax = axis(attr_int(a, "axis", 0)?, rank)?;
    let mut shape = first.shape.clone();
    shape[ax] = Poly::default();
    for p in &parts {
        if p.shape.len() != rank {
            return invalid("inputs have different ranks");
        }
        for (k, d) in p.shape.iter().enumerate() {
            if k != ax && d != &first.shape[k] {
                return invalid(format!("inputs differ on axis {k}: {:?} vs {:?}", d, first.shape[k]));
            }
        }
        shape[ax] = shape[ax].add(&p.shape[ax]);
    }
    let value = if rank == 1 {
        parts.iter().map(|p| p.value.clone()).collect::<Option<Vec<_>>>().map(|v| v.concat())
    } else {
        None
    };
    Ok(vec![SymOut { dtype: first.dtype, shape, value }])
}

fn gather(a: &Attrs, ins: &[Option<SymIn>]) -> R<Vec<SymOut>> {
    let (data, idx) = (req(ins, 0)?, req(ins, 1)?);
    let ax = axis(attr_int(a, "axis", 0)?, data.shape.len())?;
    let mut shape = data.shape[..ax].to_vec();
    shape.extend(idx.shape.iter().cloned());
    shape.extend(data.shape[ax + 1..].iter().cloned());
    // Shape arithmetic: picking entries of a symbolic 1-D value.
    let value = match (&data.value, &idx.value) {
        (Some(v), Some(ix)) if data.shape.len() == 1 => ix
            .iter()
            .map(|p| {
                let k = p.as_const()?;
                let k = if k < 0 { k + v.len() as i64 } else { k };
                v.get(usize::try_from(k).ok()?).cloned()
            })
            .collect(),
        _ => None,
    };
    Ok(vec![SymOut { dtype: data.dtype, shape, value }])
}

/// Slice with constant starts, steps and axes; ends constant, or symbolic
/// and within the axis (exported masks slice `[..., :key_length]`).
fn slice(ins: &[Option<SymIn>]) -> R<Vec<SymOut>> {
    let data = req(ins, 0)?;
    let rank = data.shape.len();
    let starts = const_ints(ins, 1, "starts")?;
    let ends = ints(ins, 2, "ends")?;
    let axes = if opt(ins, 3).is_some() { const_ints(ins, 3, "axes")? } else { (0..starts.len() as i64).collect() };
    let steps = if opt(ins, 4).is_some() { const_ints(ins, 4, "steps")? } else { vec![1; starts.len()] };
    let mut shape = data.shape.clone();
    let mut bounds = vec![];
    for (k, &a) in axes.iter().enumerate() {
        let ax = axis(a, rank)?;
        let (start, step, end) = (starts[k], steps[k], &ends[k]);
        let (b, len) = slice_axis(&data.shape[ax], start, end, step)?;
        shape[ax] = len;
        bounds.push((ax, b));
    }
    let value = match &data.value {
        Some(v) if rank == 1 && bounds.len() == 1 => {
            let (_, (s, step)) = bounds[0].clone();
            let n = shape[0].as_const();
            match (s.as_const(), n) {
                (Some(s), Some(n)) => {
                    (0..n).map(|i| v.get(usize::try_from(s + i * step).ok()?).cloned()).collect::<Option<_>>()
                }
                _ => None,
            }
        }
        _ => None,
    };
    Ok(vec![SymOut { dtype: data.dtype, shape, value }])
}

/// The symbolic start and length of one sliced axis of length `dim`.
pub fn slice_axis(dim: &Poly, start: i64, end: &Poly, step: i64) -> R<((Poly, i64), Poly)> {
    if step == 0 {
        return invalid("slice step 0");
    }
    if let (Some(d), Some(e)) = (dim.as_const(), end.as_const()) {
        // The ONNX rule on constants.
        let clamp = |v: i64, lo: i64, hi: i64| v.clamp(lo, hi);
        let norm = |v: i64| if v < 0 { v + d } else { v };
        let (s, e) = if step > 0 {
            (clamp(norm(start), 0, d), clamp(norm(e), 0, d))
        } else {
            (clamp(norm(start), -1, d - 1), clamp(norm(e), -1, d - 1))
        };
        let ceil = |n: i64, d: i64| (n + d - 1) / d;
        let len = if step > 0 { ceil((e - s).max(0), step) } else { ceil((s - e).max(0), -step) };
        return Ok(((Poly::konst(s), step), Poly::konst(len)));
    }
    if step != 1 || start < 0 {
        return unsupported("Slice of a symbolic axis needs step 1 and a non-negative start");
    }
    let s = Poly::konst(start);
    // A constant end beyond any length means "to the end".
    let len = match end.as_const() {
        Some(e) if e >= i32::MAX as i64 => dim.sub(&s),
        Some(e) if e < 0 => dim.add(&Poly::konst(e)).sub(&s),
        _ if end == dim => dim.sub(&s),
        _ => end.sub(&s),
    };
    Ok(((s, 1), len))
}

fn matmul(ins: &[Option<SymIn>]) -> R<Vec<SymOut>> {
    let (a, b) = (req(ins, 0)?, req(ins, 1)?);
    if a.shape.len() < 2 || b.shape.len() < 2 {
        return unsupported("MatMul of 1-D operands with symbolic dims");
    }
    let (ra, rb) = (a.shape.len(), b.shape.len());
    if a.shape[ra - 1] != b.shape[rb - 2] {
        return invalid(format!("inner dims differ: {:?} vs {:?}", a.shape[ra - 1], b.shape[rb - 2]));
    }
    let mut shape = broadcast(&[&a.shape[..ra - 2], &b.shape[..rb - 2]])?;
    shape.push(a.shape[ra - 2].clone());
    shape.push(b.shape[rb - 1].clone());
    Ok(vec![SymOut::data(a.dtype, shape)])
}

fn reduce(a: &Attrs, opset: i64, ins: &[Option<SymIn>]) -> R<Vec<SymOut>> {
    let i = req(ins, 0)?;
    let rank = i.shape.len();
    let axes =
        if opset >= 18 && opt(ins, 1).is_some() { Some(const_ints(ins, 1, "axes")?) } else { attr_ints(a, "axes")? };
    let axes: Vec<usize> = match axes {
        Some(ax) if !ax.is_empty() => ax.iter().map(|&x| axis(x, rank)).collect::<R<_>>()?,
        _ => (0..rank).collect(),
    };
    let keep = attr_int(a, "keepdims", 1)? != 0;
    let mut shape = vec![];
    for (k, d) in i.shape.iter().enumerate() {
        if !axes.contains(&k) {
            shape.push(d.clone());
        } else if keep {
            shape.push(Poly::konst(1));
        }
    }
    Ok(vec![SymOut::data(i.dtype, shape)])
}
