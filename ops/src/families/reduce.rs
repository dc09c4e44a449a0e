//! Reductions: ReduceSum, ReduceMean, ReduceMax, ReduceMin, ReduceProd,
//! ReduceL1, ReduceL2, ReduceLogSum, ReduceLogSumExp, ReduceSumSquare, and
//! ArgMax / ArgMin; plus the row-kernel machinery the normalization family
//! (softmax, layer/instance/group norm, ...) shares.
//!
//! Design: every reduction is seen as a batch of *rows*. The input's axes
//! split into kept axes (which number the rows, in output order) and
//! reduced axes (which number the elements of a row); each side's linear
//! index unravels over its own (size, stride) list, so any axis set works
//! without a transpose. A row kernel gives each row a power-of-two segment
//! of lanes inside a 256-thread workgroup (one lane for tiny rows, 256 for
//! long ones): lanes stride over the row accumulating privately, then a
//! shared-memory tree combines the segment. Accumulating in per-lane partial
//! sums keeps f32 sums accurate (it is a two-level pairwise sum).

use crate::wgsl::{grid_1d, strides};
use crate::{
    Attrs, DType, Error, Input, Kernel, KernelArg, LowerCtx, Lowering, Op, Phys, Result, Tensor, TensorRef, TypeInfo,
    arg, bail, norm_axis, ty,
};

/// Threads per workgroup of row kernels.
const ROW_WG: u32 = 256;

/// A batch of rows over a tensor: row `r`'s element `j` is at linear index
/// `offset(r, row_dims) + offset(j, elem_dims)`; dims are (size, stride)
/// lists in row-major order.
#[derive(Clone, Debug, PartialEq)]
pub struct Rows {
    pub rows: usize,
    pub len: usize,
    pub row_dims: Vec<(usize, usize)>,
    pub elem_dims: Vec<(usize, usize)>,
}

impl Rows {
    /// Rows numbered by the axes of `shape` not in `axes` (row-major, so
    /// row `r` is output element `r` of a reduction), elements by `axes`.
    pub fn over_axes(shape: &[usize], axes: &[usize]) -> Rows {
        let st = strides(shape);
        let (mut rd, mut ed) = (vec![], vec![]);
        for (d, (&n, &s)) in shape.iter().zip(&st).enumerate() {
            if axes.contains(&d) { ed.push((n, s)) } else { rd.push((n, s)) }
        }
        Rows {
            rows: rd.iter().map(|d| d.0).product(),
            len: ed.iter().map(|d| d.0).product(),
            row_dims: merge_dims(&rd),
            elem_dims: merge_dims(&ed),
        }
    }

    /// `rows` contiguous rows of `len` elements.
    pub fn contiguous(rows: usize, len: usize) -> Rows {
        Rows::over_axes(&[rows, len], &[1])
    }

    /// Linear index of element `j` of row `r`.
    pub fn index(&self, r: usize, j: usize) -> usize {
        offset(r, &self.row_dims) + offset(j, &self.elem_dims)
    }
}

/// Drops unit dims and fuses neighbours that are contiguous with each other.
fn merge_dims(dims: &[(usize, usize)]) -> Vec<(usize, usize)> {
    let mut out: Vec<(usize, usize)> = vec![];
    for &(n, s) in dims.iter().filter(|d| d.0 != 1) {
        match out.last_mut() {
            Some(last) if last.1 == n * s => *last = (last.0 * n, s),
            _ => out.push((n, s)),
        }
    }
    out
}

fn offset(mut v: usize, dims: &[(usize, usize)]) -> usize {
    let mut off = 0;
    for &(n, s) in dims.iter().rev() {
        if n == 0 {
            return 0;
        }
        off += (v % n) * s;
        v /= n;
    }
    off
}

/// WGSL expression for `offset(var, dims)`.
fn offset_wgsl(var: &str, dims: &[(usize, usize)]) -> String {
    let mut terms = vec![];
    let mut inner = 1usize;
    for (k, &(n, s)) in dims.iter().enumerate().rev() {
        let mut c = if inner == 1 { var.to_string() } else { format!("({var} / {inner}u)") };
        if k > 0 {
            c = format!("({c} % {n}u)");
        }
        terms.push(if s == 1 { c } else { format!("{c} * {s}u") });
        inner *= n.max(1);
    }
    if terms.is_empty() { "0u".to_string() } else { terms.join(" + ") }
}

/// A kernel over `rows`. `body` runs once per thread and sees `row` (the
/// row index), `lane` (0..LANES), `valid` (whether the row exists; lanes of
/// absent rows still take part in barriers), `n_el` (the row length, 0 for
/// absent rows), `base` (linear index of the row's element 0), `lid`, and
/// `elem_off(j)`; it may call `seg_{sum,prod,max,min}_{f32,i32,u32}(v, lid)`
/// and `seg_arg{max,min}_{first,last}_{f32,i32,u32}(v, j, lid)`, which
/// combine a value over the row's lanes (the latter return the winning
/// element index). Body code must reach those calls on every thread.
pub fn row_kernel(name: &str, args: Vec<KernelArg>, rows: &Rows, helpers: &str, body: &str) -> Kernel {
    let lanes = (rows.len.max(1).next_power_of_two() as u32).min(ROW_WG);
    let per_group = (ROW_WG / lanes) as usize;
    let groups = rows.rows.div_ceil(per_group).max(1);
    let workgroups = grid_1d(groups * ROW_WG as usize, ROW_WG);
    let nx = workgroups[0];
    let code = format!("{helpers}\n{body}");
    let mut segs = String::new();
    for t in ["f32", "i32", "u32"] {
        for op in ["sum", "prod", "max", "min"] {
            if code.contains(&format!("seg_{op}_{t}(")) {
                segs += &seg_fn(op, t);
            }
        }
        for op in ["max", "min"] {
            for tie in ["first", "last"] {
                if code.contains(&format!("seg_arg{op}_{tie}_{t}(")) {
                    segs += &seg_arg_fn(op, tie, t);
                }
            }
        }
    }
    let body = format!(
        "var<workgroup> sh_f32: array<f32, {ROW_WG}>;
var<workgroup> sh_i32: array<i32, {ROW_WG}>;
var<workgroup> sh_u32: array<u32, {ROW_WG}>;
var<workgroup> sh_idx: array<u32, {ROW_WG}>;
const LANES: u32 = {lanes}u;
const ROW_LEN: u32 = {len}u;
fn row_base(r: u32) -> u32 {{ return {rb}; }}
fn elem_off(j: u32) -> u32 {{ return {eo}; }}
{segs}{helpers}
@compute @workgroup_size({ROW_WG})
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {{
    let row = (wid.x + wid.y * {nx}u) * {per_group}u + lid / LANES;
    let lane = lid % LANES;
    let valid = row < {nrows}u;
    let n_el = select(0u, ROW_LEN, valid);
    let base = row_base(select(0u, row, valid));
{body}
}}
",
        len = rows.len,
        nrows = rows.rows,
        rb = offset_wgsl("r", &rows.row_dims),
        eo = offset_wgsl("j", &rows.elem_dims),
    );
    Kernel { name: name.to_string(), args, body, workgroup_size: [ROW_WG, 1, 1], workgroups, flops: 0 }
}

/// Segment reduction over a row's lanes through shared memory.
fn seg_fn(op: &str, t: &str) -> String {
    let comb = match op {
        "sum" => "a + b",
        "prod" => "a * b",
        "max" => "max(a, b)",
        _ => "min(a, b)",
    };
    format!(
        "fn seg_{op}_{t}(v: {t}, lid: u32) -> {t} {{
    sh_{t}[lid] = v;
    workgroupBarrier();
    let ln = lid % LANES;
    for (var s = LANES / 2u; s > 0u; s = s >> 1u) {{
        if (ln < s) {{
            let a = sh_{t}[lid];
            let b = sh_{t}[lid + s];
            sh_{t}[lid] = {comb};
        }}
        workgroupBarrier();
    }}
    let r = sh_{t}[lid - ln];
    workgroupBarrier();
    return r;
}}
"
    )
}

/// Segment arg-reduction: each lane brings its best value and its element
/// index (0xffffffff for none); ties go to the lower (`first`) or higher
/// (`last`) index.
fn seg_arg_fn(op: &str, tie: &str, t: &str) -> String {
    let better = if op == "max" { "b > a" } else { "b < a" };
    let tie_cmp = if tie == "first" { "bi < ai" } else { "bi > ai" };
    format!(
        "fn seg_arg{op}_{tie}_{t}(v: {t}, j: u32, lid: u32) -> u32 {{
    sh_{t}[lid] = v;
    sh_idx[lid] = j;
    workgroupBarrier();
    let ln = lid % LANES;
    for (var s = LANES / 2u; s > 0u; s = s >> 1u) {{
        if (ln < s) {{
            let a = sh_{t}[lid];
            let ai = sh_idx[lid];
            let b = sh_{t}[lid + s];
            let bi = sh_idx[lid + s];
            if (bi != 0xffffffffu && (ai == 0xffffffffu || {better} || (b == a && {tie_cmp}))) {{
                sh_{t}[lid] = b;
                sh_idx[lid] = bi;
            }}
        }}
        workgroupBarrier();
    }}
    let r = sh_idx[lid - ln];
    workgroupBarrier();
    return r;
}}
"
    )
}

/// WGSL literal for -inf / +inf.
pub const NEG_INF: &str = "bitcast<f32>(0xff800000u)";
pub const POS_INF: &str = "bitcast<f32>(0x7f800000u)";

/// The value range of an integer dtype (bool is 0..1).
fn int_range(dt: DType) -> (i64, i64) {
    match dt {
        DType::Bool => (0, 1),
        DType::U8 => (0, u8::MAX as i64),
        DType::U16 => (0, u16::MAX as i64),
        DType::U32 => (0, u32::MAX as i64),
        DType::U64 => (0, i64::MAX),
        DType::I8 => (i8::MIN as i64, i8::MAX as i64),
        DType::I16 => (i16::MIN as i64, i16::MAX as i64),
        DType::I32 => (i32::MIN as i64, i32::MAX as i64),
        _ => (i64::MIN, i64::MAX),
    }
}

/// Which Reduce* op.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Sum,
    Mean,
    Max,
    Min,
    Prod,
    L1,
    L2,
    LogSum,
    LogSumExp,
    SumSquare,
}

impl Kind {
    /// Whether the GPU kernel works in the integer physical types.
    fn int_ok(self) -> bool {
        !matches!(self, Kind::L2 | Kind::LogSum | Kind::LogSumExp)
    }
}

/// One Reduce* op. Axes come from the attribute or (ReduceSum ≥ 13, the
/// others ≥ 18) from input 1, which must be a known constant.
#[derive(Debug)]
pub struct Reduce {
    pub kind: Kind,
    pub keepdims: bool,
    pub noop_with_empty_axes: bool,
    pub attr_axes: Option<Vec<i64>>,
    pub axes_input: bool,
}

impl Reduce {
    /// The reduced axes, sorted: all of them when none are given, none for
    /// `noop_with_empty_axes`.
    fn resolve(&self, rank: usize, given: Option<Vec<i64>>) -> Result<Vec<usize>> {
        let given = given.unwrap_or_default();
        if given.is_empty() {
            return Ok(if self.noop_with_empty_axes { vec![] } else { (0..rank).collect() });
        }
        let mut axes = given.iter().map(|&a| norm_axis(a, rank)).collect::<Result<Vec<_>>>()?;
        axes.sort_unstable();
        axes.dedup();
        Ok(axes)
    }

    /// Axes given by the attribute or the (known) axes input.
    fn given(&self, axes_in: Option<Option<&Tensor>>) -> Result<Option<Vec<i64>>> {
        if !self.axes_input {
            return Ok(self.attr_axes.clone());
        }
        match axes_in {
            None => Ok(None),
            Some(Some(t)) => Ok(Some(t.to_i64())),
            Some(None) => Err(Error::needs_value(1, "axes")),
        }
    }

    fn out_shape(&self, shape: &[usize], axes: &[usize]) -> Vec<usize> {
        let mut out = vec![];
        for (d, &n) in shape.iter().enumerate() {
            if !axes.contains(&d) {
                out.push(n);
            } else if self.keepdims {
                out.push(1);
            }
        }
        out
    }

    fn fold_f(&self, v: &[f64]) -> f64 {
        let sum = |it: &mut dyn Iterator<Item = f64>| it.sum::<f64>();
        match self.kind {
            Kind::Sum => sum(&mut v.iter().copied()),
            Kind::Mean => sum(&mut v.iter().copied()) / v.len() as f64,
            Kind::Max => v.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            Kind::Min => v.iter().copied().fold(f64::INFINITY, f64::min),
            Kind::Prod => v.iter().product(),
            Kind::L1 => sum(&mut v.iter().map(|x| x.abs())),
            Kind::L2 => sum(&mut v.iter().map(|x| x * x)).sqrt(),
            Kind::LogSum => sum(&mut v.iter().copied()).ln(),
            Kind::SumSquare => sum(&mut v.iter().map(|x| x * x)),
            Kind::LogSumExp => {
                // Like onnx: the shift ignores infinities.
                let m = v.iter().copied().filter(|x| x.is_finite()).fold(f64::NEG_INFINITY, f64::max);
                let m = if m == f64::NEG_INFINITY { 0.0 } else { m };
                m + sum(&mut v.iter().map(|x| (x - m).exp())).ln()
            }
        }
    }

    fn fold_i(&self, v: &[i64], dt: DType) -> i64 {
        let (lo, hi) = int_range(dt);
        match self.kind {
            Kind::Sum => v.iter().fold(0i64, |a, &b| a.wrapping_add(b)),
            Kind::Mean => {
                let s = v.iter().fold(0i64, |a, &b| a.wrapping_add(b));
                if v.is_empty() { 0 } else { s / v.len() as i64 }
            }
            Kind::Max => v.iter().copied().fold(lo, i64::max),
            Kind::Min => v.iter().copied().fold(hi, i64::min),
            Kind::Prod => v.iter().fold(1i64, |a, &b| a.wrapping_mul(b)),
            Kind::L1 => v.iter().fold(0i64, |a, &b| a.wrapping_add(b.wrapping_abs())),
            Kind::SumSquare => v.iter().fold(0i64, |a, &b| a.wrapping_add(b.wrapping_mul(b))),
            _ => self.fold_f(&v.iter().map(|&x| x as f64).collect::<Vec<_>>()) as i64,
        }
    }

    /// The kernel body computing one row.
    fn body(&self, dt: DType) -> Result<String> {
        let p = dt.phys();
        let t = p.wgsl();
        if p != Phys::F32 && !self.kind.int_ok() {
            return Err(Error::unsupported(format!("{:?} on integers", self.kind)));
        }
        if self.kind == Kind::LogSumExp {
            return Ok(format!(
                "    var m = {NEG_INF};
    for (var j = lane; j < n_el; j = j + LANES) {{
        let v = ld_x(base + elem_off(j));
        m = max(m, select(v, {NEG_INF}, abs(v) == {POS_INF}));
    }}
    m = seg_max_f32(m, lid);
    let ms = select(m, 0.0, m == {NEG_INF});
    var acc = 0.0;
    for (var j = lane; j < n_el; j = j + LANES) {{
        acc = acc + exp(ld_x(base + elem_off(j)) - ms);
    }}
    acc = seg_sum_f32(acc, lid);
    if (valid && lane == 0u) {{ st_y(row, log(acc) + ms); }}"
            ));
        }
        let (lo, hi) = int_range(dt);
        let lit = |x: f64| crate::wgsl::lit(p, x);
        let ident = match (self.kind, p) {
            (Kind::Prod, _) => lit(1.0),
            (Kind::Max, Phys::F32) => NEG_INF.to_string(),
            (Kind::Min, Phys::F32) => POS_INF.to_string(),
            (Kind::Max, Phys::I32) => "bitcast<i32>(0x80000000u)".to_string(),
            (Kind::Max, _) => lit(lo as f64),
            (Kind::Min, Phys::I32) => "i32(2147483647)".to_string(),
            (Kind::Min, _) => format!("{}u", hi.min(u32::MAX as i64)),
            _ => lit(0.0),
        };
        let map = match self.kind {
            Kind::L1 if p != Phys::U32 => "abs(v)",
            Kind::L2 | Kind::SumSquare => "v * v",
            _ => "v",
        };
        let (op, comb) = match self.kind {
            Kind::Max => ("max", format!("max(acc, {map})")),
            Kind::Min => ("min", format!("min(acc, {map})")),
            Kind::Prod => ("prod", format!("acc * {map}")),
            _ => ("sum", format!("acc + {map}")),
        };
        let fin = match self.kind {
            Kind::Mean => format!("acc / {t}(ROW_LEN)"),
            Kind::L2 => "sqrt(acc)".to_string(),
            Kind::LogSum => "log(acc)".to_string(),
            _ => "acc".to_string(),
        };
        Ok(format!(
            "    var acc: {t} = {ident};
    for (var j = lane; j < n_el; j = j + LANES) {{
        let v = ld_x(base + elem_off(j));
        acc = {comb};
    }}
    acc = seg_{op}_{t}(acc, lid);
    if (valid && lane == 0u) {{ st_y(row, {fin}); }}"
        ))
    }
}

impl Op for Reduce {
    fn infer(&self, inputs: &[Option<Input>]) -> Result<Vec<TypeInfo>> {
        let x = ty(inputs, 0)?;
        let given = self.given(inputs.get(1).copied().flatten().map(|i| i.value))?;
        let axes = self.resolve(x.rank(), given)?;
        Ok(vec![TypeInfo::new(x.dtype, self.out_shape(&x.shape, &axes))])
    }

    fn eval(&self, inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>> {
        let x = arg(inputs, 0)?;
        let given = self.given(inputs.get(1).copied().flatten().map(Some))?;
        let axes = self.resolve(x.rank(), given)?;
        let rows = Rows::over_axes(&x.shape, &axes);
        let shape = self.out_shape(&x.shape, &axes);
        if x.dtype.is_float() {
            let v = x.to_f64();
            let out = (0..rows.rows)
                .map(|r| self.fold_f(&(0..rows.len).map(|j| v[rows.index(r, j)]).collect::<Vec<_>>()))
                .collect();
            Ok(vec![Tensor::from_f64(x.dtype, shape, out)])
        } else {
            let v = x.to_i64();
            let out = (0..rows.rows)
                .map(|r| self.fold_i(&(0..rows.len).map(|j| v[rows.index(r, j)]).collect::<Vec<_>>(), x.dtype))
                .collect();
            Ok(vec![Tensor::from_i64(x.dtype, shape, out)])
        }
    }

    fn lower(&self, cx: &LowerCtx) -> Result<Lowering> {
        let x = cx.input(0)?;
        let given = if self.axes_input && cx.has_input(1) {
            Some(cx.const_input(1, "axes")?.to_i64())
        } else {
            self.given(None)?
        };
        let axes = self.resolve(x.rank(), given)?;
        let rows = Rows::over_axes(&x.shape, &axes);
        let args =
            vec![KernelArg::new("x", TensorRef::Input(0)), KernelArg::new("y", TensorRef::Output(0)).stored_once()];
        let name = format!("reduce_{:?}", self.kind).to_lowercase();
        Ok(Lowering::one(row_kernel(&name, args, &rows, "", &self.body(x.dtype)?)))
    }
}

/// ArgMax / ArgMin along one axis; the result is int64.
#[derive(Debug)]
pub struct ArgReduce {
    pub max: bool,
    pub axis: i64,
    pub keepdims: bool,
    pub select_last_index: bool,
}

impl ArgReduce {
    fn layout(&self, shape: &[usize]) -> Result<(Rows, Vec<usize>)> {
        if shape.is_empty() {
            bail!("input must have rank ≥ 1");
        }
        let axis = norm_axis(self.axis, shape.len())?;
        let rows = Rows::over_axes(shape, &[axis]);
        if rows.len == 0 && rows.rows > 0 {
            bail!("cannot take the arg{} over an empty axis", if self.max { "max" } else { "min" });
        }
        let mut out = shape.to_vec();
        if self.keepdims {
            out[axis] = 1
        } else {
            out.remove(axis);
        }
        Ok((rows, out))
    }

    /// Whether `b` at a later index replaces the current best `a`.
    fn takes<T: PartialOrd>(&self, b: T, a: T) -> bool {
        match (self.max, self.select_last_index) {
            (true, false) => b > a,
            (true, true) => b >= a,
            (false, false) => b < a,
            (false, true) => b <= a,
        }
    }

    fn best<T: PartialOrd + Copy>(&self, v: impl Iterator<Item = T>) -> i64 {
        let mut best: Option<(T, i64)> = None;
        for (j, x) in v.enumerate() {
            if best.is_none_or(|(a, _)| self.takes(x, a)) {
                best = Some((x, j as i64));
            }
        }
        best.map_or(0, |b| b.1)
    }
}

impl Op for ArgReduce {
    fn infer(&self, inputs: &[Option<Input>]) -> Result<Vec<TypeInfo>> {
        let (_, shape) = self.layout(&ty(inputs, 0)?.shape)?;
        Ok(vec![TypeInfo::new(DType::I64, shape)])
    }

    fn eval(&self, inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>> {
        let x = arg(inputs, 0)?;
        let (rows, shape) = self.layout(&x.shape)?;
        let out = if x.dtype.is_float() {
            let v = x.to_f64();
            (0..rows.rows).map(|r| self.best((0..rows.len).map(|j| v[rows.index(r, j)]))).collect()
        } else {
            let v = x.to_i64();
            (0..rows.rows).map(|r| self.best((0..rows.len).map(|j| v[rows.index(r, j)]))).collect()
        };
        Ok(vec![Tensor::from_i64(DType::I64, shape, out)])
    }

    fn lower(&self, cx: &LowerCtx) -> Result<Lowering> {
        let x = cx.input(0)?;
        let (rows, _) = self.layout(&x.shape)?;
        let t = x.dtype.phys().wgsl();
        let cmp = match (self.max, self.select_last_index) {
            (true, false) => ">",
            (true, true) => ">=",
            (false, false) => "<",
            (false, true) => "<=",
        };
        let op = if self.max { "max" } else { "min" };
        let tie = if self.select_last_index { "last" } else { "first" };
        let body = format!(
            "    var best: {t};
    var bi = 0xffffffffu;
    for (var j = lane; j < n_el; j = j + LANES) {{
        let v = ld_x(base + elem_off(j));
        if (bi == 0xffffffffu || v {cmp} best) {{
            best = v;
            bi = j;
        }}
    }}
    bi = seg_arg{op}_{tie}_{t}(best, bi, lid);
    if (valid && lane == 0u) {{ st_y(row, i32(bi)); }}"
        );
        let args =
            vec![KernelArg::new("x", TensorRef::Input(0)), KernelArg::new("y", TensorRef::Output(0)).stored_once()];
        Ok(Lowering::one(row_kernel(&format!("arg{op}"), args, &rows, "", &body)))
    }
}

/// Builds a reduction op. Axes moved from attribute to input at opset 13
/// for ReduceSum and at 18 for the others.
pub fn build(op_type: &str, a: &Attrs, opset: i64) -> Result<Box<dyn Op>> {
    let kind = match op_type {
        "ArgMax" | "ArgMin" => {
            return Ok(Box::new(ArgReduce {
                max: op_type == "ArgMax",
                axis: a.int("axis", 0)?,
                keepdims: a.int("keepdims", 1)? != 0,
                select_last_index: a.int("select_last_index", 0)? != 0,
            }));
        }
        "ReduceSum" => Kind::Sum,
        "ReduceMean" => Kind::Mean,
        "ReduceMax" => Kind::Max,
        "ReduceMin" => Kind::Min,
        "ReduceProd" => Kind::Prod,
        "ReduceL1" => Kind::L1,
        "ReduceL2" => Kind::L2,
        "ReduceLogSum" => Kind::LogSum,
        "ReduceLogSumExp" => Kind::LogSumExp,
        "ReduceSumSquare" => Kind::SumSquare,
        _ => return Err(Error::unsupported(op_type.to_string())),
    };
    let axes_input = opset >= if kind == Kind::Sum { 13 } else { 18 };
    Ok(Box::new(Reduce {
        kind,
        keepdims: a.int("keepdims", 1)? != 0,
        noop_with_empty_axes: a.int("noop_with_empty_axes", 0)? != 0,
        attr_axes: if axes_input { None } else { a.ints_opt("axes")?.map(|v| v.to_vec()) },
        axes_input,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Attr;
    use crate::testing::*;

    fn run(op: &str, opset: i64, a: &[(&str, Attr)], x: Tensor, axes: Option<Vec<i64>>) -> Tensor {
        let op = build(op, &attrs(a), opset).unwrap();
        let ax = axes.map(Tensor::i64_vec);
        op.eval(&[Some(&x), ax.as_ref()]).unwrap().remove(0)
    }

    fn x234() -> Tensor {
        Tensor::from_f32(vec![2, 3, 4], (0..24).map(|i| i as f32 - 5.0).collect())
    }

    #[test]
    fn rows_layout_merges_dims() {
        let r = Rows::over_axes(&[2, 3, 4, 5], &[1, 2]);
        assert_eq!((r.rows, r.len), (10, 12));
        assert_eq!(r.row_dims, vec![(2, 60), (5, 1)]);
        assert_eq!(r.elem_dims, vec![(12, 5)]);
        assert_eq!(r.index(6, 7), 60 + 1 + 35);
        assert_eq!(offset_wgsl("j", &[(2, 60), (5, 1)]), "(j % 5u) + (j / 5u) * 60u");
    }

    #[test]
    fn reduce_sum_axes_input_and_attr() {
        // numpy: x.sum(axis=1) of arange(24).reshape(2,3,4) - 5
        let y = run("ReduceSum", 13, &[("keepdims", Attr::Int(0))], x234(), Some(vec![1]));
        assert_eq!(y.shape, vec![2, 4]);
        assert_eq!(y.to_f64(), vec![-3.0, 0.0, 3.0, 6.0, 33.0, 36.0, 39.0, 42.0]);
        let y = run("ReduceSum", 11, &[("axes", Attr::Ints(vec![-1]))], x234(), None);
        assert_eq!(y.shape, vec![2, 3, 1]);
        assert_eq!(y.to_f64(), vec![-14.0, 2.0, 18.0, 34.0, 50.0, 66.0]);
    }

    #[test]
    fn reduce_all_and_noop() {
        let y = run("ReduceMean", 18, &[], x234(), None);
        assert_eq!(y.shape, vec![1, 1, 1]);
        assert_eq!(y.to_f64(), vec![6.5]);
        let y = run("ReduceSumSquare", 18, &[("noop_with_empty_axes", Attr::Int(1))], x234(), Some(vec![]));
        assert_eq!(y.shape, vec![2, 3, 4]);
        assert_eq!(y.to_f64()[0], 25.0);
    }

    #[test]
    fn reduce_kinds() {
        let x = Tensor::from_f32(vec![2, 2], vec![1.0, -2.0, 3.0, 4.0]);
        let k = |op: &str| {
            run(op, 13, &[("axes", Attr::Ints(vec![1])), ("keepdims", Attr::Int(0))], x.clone(), None).to_f64()
        };
        assert_eq!(k("ReduceMax"), vec![1.0, 4.0]);
        assert_eq!(k("ReduceMin"), vec![-2.0, 3.0]);
        assert_eq!(k("ReduceProd"), vec![-2.0, 12.0]);
        assert_eq!(k("ReduceL1"), vec![3.0, 7.0]);
        assert_eq!(k("ReduceL2"), vec![5f32.sqrt() as f64, 5.0]);
        assert_eq!(k("ReduceSumSquare"), vec![5.0, 25.0]);
        assert_eq!(k("ReduceLogSum")[1], 7f32.ln() as f64);
        // log(e^3 + e^4) = 4.3132617
        assert!((k("ReduceLogSumExp")[1] - 4.313_261_7).abs() < 1e-6);
    }

    #[test]
    fn reduce_empty_set() {
        let x = Tensor::from_f32(vec![2, 0, 4], vec![]);
        let y = run("ReduceMax", 18, &[], x.clone(), Some(vec![1]));
        assert_eq!(y.shape, vec![2, 1, 4]);
        assert!(y.to_f64().iter().all(|&v| v == f64::NEG_INFINITY));
        let y = run("ReduceProd", 18, &[], x.clone(), Some(vec![1]));
        assert!(y.to_f64().iter().all(|&v| v == 1.0));
        let y = run("ReduceLogSumExp", 18, &[], x, Some(vec![1]));
        assert!(y.to_f64().iter().all(|&v| v == f64::NEG_INFINITY));
    }

    #[test]
    fn reduce_int_and_bool() {
        let x = Tensor::from_i64(DType::I32, vec![2, 2], vec![3, -7, 2, 5]);
        let y = run("ReduceMin", 18, &[("keepdims", Attr::Int(0))], x, Some(vec![0]));
        assert_eq!(y.to_i64(), vec![2, -7]);
        let b = Tensor::from_i64(DType::Bool, vec![2, 2], vec![1, 0, 0, 0]);
        let y = run("ReduceMax", 18, &[("keepdims", Attr::Int(0))], b, Some(vec![1]));
        assert_eq!(y.to_i64(), vec![1, 0]);
    }

    #[test]
    fn argmax_argmin() {
        let x = Tensor::from_f32(vec![2, 3], vec![2.0, 5.0, 5.0, 1.0, 1.0, 0.0]);
        let y = run("ArgMax", 13, &[("axis", Attr::Int(1))], x.clone(), None);
        assert_eq!((y.dtype, y.shape.clone(), y.to_i64()), (DType::I64, vec![2, 1], vec![1, 0]));
        let y = run("ArgMax", 13, &[("axis", Attr::Int(1)), ("select_last_index", Attr::Int(1))], x.clone(), None);
        assert_eq!(y.to_i64(), vec![2, 1]);
        let y = run("ArgMin", 13, &[("axis", Attr::Int(0)), ("keepdims", Attr::Int(0))], x, None);
        assert_eq!((y.shape.clone(), y.to_i64()), (vec![3], vec![1, 1, 1]));
    }
}
