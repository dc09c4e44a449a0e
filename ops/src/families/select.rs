//! Ops whose output length depends on the input data: NonZero, Compress,
//! Unique and NonMaxSuppression.
//!
//! drift plans every buffer ahead of time, so these ops declare an upper
//! bound as their output shape (`infer`) and report the actual length at run
//! time: their kernels write it as one u32 into a temp that
//! [`Op::data_dependent_dims`] names, and lay the output out for the actual
//! shape. The runtime reads the count back with the output and trims the
//! shape. Such outputs can only be graph outputs (the compiler checks).
//!
//! The kernels favour simplicity over speed: counting and compaction run in
//! one workgroup (each of 256 threads scans a contiguous chunk), and Unique
//! and NonMaxSuppression compare all pairs. These ops sit at the end of
//! detection and data-cleaning graphs, on small tensors.

use crate::op::{DataDependentDim, norm_axis};
use crate::tensor::numel;
use crate::wgsl::kernel_1d;
use crate::{
    Attrs, DType, Error, Input, Kernel, KernelArg, LowerCtx, Lowering, Op, Phys, Result, TempSpec, Tensor, TensorRef,
    TypeInfo, arg, bail, need_value, ty, value,
};

/// Builds an op of this family.
pub fn build(op_type: &str, attrs: &Attrs, _opset: i64) -> Result<Box<dyn Op>> {
    match op_type {
        "NonZero" => Ok(Box::new(NonZero)),
        "Compress" => Ok(Box::new(Compress { axis: attrs.int_opt("axis")? })),
        "Unique" => Ok(Box::new(Unique { axis: attrs.int_opt("axis")?, sorted: attrs.int("sorted", 1)? != 0 })),
        "NonMaxSuppression" => Ok(Box::new(NonMaxSuppression { center_point_box: attrs.int("center_point_box", 0)? })),
        _ => Err(Error::unsupported(op_type)),
    }
}

/// Threads of the single-workgroup counting kernels.
const SCAN_THREADS: usize = 256;

/// A one-workgroup kernel: `body` runs in each of `SCAN_THREADS` threads
/// with `t` the thread index. Every thread reaches every barrier.
fn single_group(name: &str, args: Vec<KernelArg>, helpers: &str, body: &str) -> Kernel {
    let body = format!(
        "{helpers}
var<workgroup> part: array<u32, {SCAN_THREADS}>;
var<workgroup> total: u32;
@compute @workgroup_size({SCAN_THREADS})
fn main(@builtin(local_invocation_id) lid: vec3<u32>) {{
    let t = lid.x;
{body}
}}
"
    );
    Kernel {
        name: name.into(),
        args,
        body,
        workgroup_size: [SCAN_THREADS as u32, 1, 1],
        workgroups: [1, 1, 1],
        flops: 0,
    }
}

/// WGSL statements of a chunked exclusive scan in one workgroup: each thread
/// counts the `pred(i)` hits of its chunk of `0..n`, then `base` holds the
/// hits before its chunk and `total` all hits. Writes `count(0)` when
/// `count_arg` is given.
fn chunk_scan(n: usize, pred: &str, count_arg: Option<&str>) -> String {
    let chunk = n.div_ceil(SCAN_THREADS).max(1);
    let store = count_arg.map(|c| format!("        st_{c}(0u, run);\n")).unwrap_or_default();
    format!(
        "    let begin = min(t * {chunk}u, {n}u);
    let end = min(begin + {chunk}u, {n}u);
    var hits = 0u;
    for (var i = begin; i < end; i++) {{
        if ({pred}) {{ hits++; }}
    }}
    part[t] = hits;
    workgroupBarrier();
    if (t == 0u) {{
        var run = 0u;
        for (var k = 0u; k < {SCAN_THREADS}u; k++) {{
            let h = part[k];
            part[k] = run;
            run += h;
        }}
        total = run;
{store}    }}
    workgroupBarrier();
    let base = part[t];
    let all = total;
"
    )
}

/// WGSL test "element `i` of `x` is not zero" for a physical type.
fn nonzero_test(x: &str, p: Phys) -> String {
    match p {
        Phys::F32 => format!("ld_{x}(i) != 0.0f"),
        Phys::I32 => format!("ld_{x}(i) != 0i"),
        Phys::U32 => format!("ld_{x}(i) != 0u"),
    }
}

fn count_temp() -> TempSpec {
    TempSpec { elems: 1, phys: Phys::U32 }
}

// ---------------------------------------------------------------------------
// NonZero

/// NonZero: the coordinates of the non-zero elements, `[rank, count]`, in
/// row-major order of the elements.
#[derive(Debug)]
pub struct NonZero;

impl Op for NonZero {
    fn infer(&self, inputs: &[Option<Input>]) -> Result<Vec<TypeInfo>> {
        let x = ty(inputs, 0)?;
        Ok(vec![TypeInfo::new(DType::I64, vec![x.rank(), x.numel()])])
    }

    fn eval(&self, inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>> {
        let x = arg(inputs, 0)?;
        let hits: Vec<usize> = x.to_f64().iter().enumerate().filter(|(_, v)| **v != 0.0).map(|(i, _)| i).collect();
        let strides = crate::wgsl::strides(&x.shape);
        let mut out = vec![0i64; x.rank() * hits.len()];
        for (k, &i) in hits.iter().enumerate() {
            for d in 0..x.rank() {
                out[d * hits.len() + k] = ((i / strides[d]) % x.shape[d]) as i64;
            }
        }
        Ok(vec![Tensor::from_i64(DType::I64, vec![x.rank(), hits.len()], out)])
    }

    fn lower(&self, cx: &LowerCtx) -> Result<Lowering> {
        let x = cx.input(0)?;
        let strides = crate::wgsl::strides(&x.shape);
        let coords: String = (0..x.rank())
            .map(|d| {
                let (s, n) = (strides[d].max(1), x.shape[d].max(1));
                format!("                st_y({d}u * all + base + k, i32((i / {s}u) % {n}u));\n")
            })
            .collect();
        let test = nonzero_test("x", x.dtype.phys());
        let body = chunk_scan(x.numel(), &test, Some("count"))
            + &format!(
                "    var k = 0u;
    for (var i = begin; i < end; i++) {{
        if ({test}) {{
{coords}            k++;
        }}
    }}"
            );
        let args = vec![
            KernelArg::new("x", TensorRef::Input(0)),
            KernelArg::new("y", TensorRef::Output(0)),
            KernelArg::new("count", TensorRef::Temp(0)),
        ];
        Ok(Lowering::Kernels { temps: vec![count_temp()], kernels: vec![single_group("nonzero", args, "", &body)] })
    }

    fn data_dependent_dims(&self, _cx: &LowerCtx) -> Vec<DataDependentDim> {
        vec![DataDependentDim { output: 0, axis: 1, count_temp: 0 }]
    }
}

// ---------------------------------------------------------------------------
// Compress

/// Compress: the slices along `axis` (or the elements of the flattened
/// input) whose `condition` entry is true. A condition shorter than the
/// axis drops the rest.
#[derive(Debug)]
pub struct Compress {
    pub axis: Option<i64>,
}

/// How Compress walks its input: `outer × len × inner`, `len` being the
/// compressed axis (the whole input when flattened).
struct CompressPlan {
    outer: usize,
    len: usize,
    inner: usize,
    /// Condition entries that count: `min(len, condition length)`.
    used: usize,
    axis: usize,
    shape: Vec<usize>,
}

impl Compress {
    fn plan(&self, x: &TypeInfo, cond: &TypeInfo) -> Result<CompressPlan> {
        if cond.rank() != 1 {
            bail!("condition must be 1-D, got shape {:?}", cond.shape);
        }
        let (outer, len, inner, axis, shape) = match self.axis {
            Some(a) => {
                let axis = norm_axis(a, x.rank())?;
                let (outer, inner) = (numel(&x.shape[..axis]), numel(&x.shape[axis + 1..]));
                (outer, x.shape[axis], inner, axis, x.shape.clone())
            }
            None => (1, x.numel(), 1, 0, vec![x.numel()]),
        };
        Ok(CompressPlan { outer, len, inner, used: len.min(cond.shape[0]), axis, shape })
    }
}

impl Op for Compress {
    fn infer(&self, inputs: &[Option<Input>]) -> Result<Vec<TypeInfo>> {
        let (x, cond) = (ty(inputs, 0)?, ty(inputs, 1)?);
        let p = self.plan(x, cond)?;
        let mut shape = p.shape;
        // A known condition gives the exact length; otherwise all can pass.
        shape[p.axis] = match value(inputs, 1) {
            Some(c) => c.to_f64()[..p.used].iter().filter(|&&v| v != 0.0).count(),
            None => p.used,
        };
        Ok(vec![TypeInfo::new(x.dtype, shape)])
    }

    fn eval(&self, inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>> {
        let (x, cond) = (arg(inputs, 0)?, arg(inputs, 1)?);
        let p = self.plan(&TypeInfo::new(x.dtype, x.shape.clone()), &TypeInfo::new(cond.dtype, cond.shape.clone()))?;
        let keep: Vec<usize> = (0..p.used).filter(|&j| cond.to_f64()[j] != 0.0).collect();
        let mut src = vec![];
        for o in 0..p.outer {
            for &j in &keep {
                src.extend((0..p.inner).map(|r| (o * p.len + j) * p.inner + r));
            }
        }
        let mut shape = p.shape;
        shape[p.axis] = keep.len();
        Ok(vec![gather_flat(x, shape, &src)])
    }

    fn lower(&self, cx: &LowerCtx) -> Result<Lowering> {
        let (x, cond) = (cx.input(0)?, cx.input(1)?);
        let p = self.plan(x, cond)?;
        let test = nonzero_test("cond", cond.dtype.phys());
        let scan = chunk_scan(p.used, &test, Some("count"))
            + "    var k = base;
    for (var i = begin; i < end; i++) {
        st_pos(i, k);
        if ("
            + &test
            + ") { k++; }
    }";
        let scan_args = vec![
            KernelArg::new("cond", TensorRef::Input(1)),
            KernelArg::new("pos", TensorRef::Temp(1)),
            KernelArg::new("count", TensorRef::Temp(0)),
        ];
        let (len, inner, used) = (p.len, p.inner, p.used);
        let scatter = format!(
            "    let j = (i / {inner}u) % {len}u;
    if (j >= {used}u || ld_cond(j) == {zero}) {{ return; }}
    let o = i / ({len}u * {inner}u);
    let dst = (o * ld_count(0u) + ld_pos(j)) * {inner}u + i % {inner}u;
    st_y(dst, ld_x(i));",
            zero = crate::wgsl::lit(cond.dtype.phys(), 0.0),
        );
        let scatter_args = vec![
            KernelArg::new("x", TensorRef::Input(0)),
            KernelArg::new("cond", TensorRef::Input(1)),
            KernelArg::new("pos", TensorRef::Temp(1)),
            KernelArg::new("count", TensorRef::Temp(0)),
            KernelArg::new("y", TensorRef::Output(0)),
        ];
        Ok(Lowering::Kernels {
            temps: vec![count_temp(), TempSpec { elems: used.max(1), phys: Phys::U32 }],
            kernels: vec![
                single_group("compress_scan", scan_args, "", &scan),
                kernel_1d("compress", scatter_args, p.outer * len * inner, "", &scatter),
            ],
        })
    }

    fn data_dependent_dims(&self, cx: &LowerCtx) -> Vec<DataDependentDim> {
        let axis = match (cx.input(0), cx.input(1)) {
            (Ok(x), Ok(cond)) => self.plan(x, cond).map_or(0, |p| p.axis),
            _ => 0,
        };
        vec![DataDependentDim { output: 0, axis, count_temp: 0 }]
    }
}

/// `x`'s elements at flat indices `src`, as a tensor of `shape`.
fn gather_flat(x: &Tensor, shape: Vec<usize>, src: &[usize]) -> Tensor {
    match x.dtype.phys() {
        Phys::F32 => {
            let v = x.to_f64();
            Tensor::from_f64(x.dtype, shape, src.iter().map(|&i| v[i]).collect())
        }
        _ => {
            let v = x.to_i64();
            Tensor::from_i64(x.dtype, shape, src.iter().map(|&i| v[i]).collect())
        }
    }
}

// ---------------------------------------------------------------------------
// Unique

/// Unique: the distinct elements (or slices along `axis`), sorted or in
/// order of first occurrence, with the first-occurrence indices, the
/// inverse mapping and the counts.
#[derive(Debug)]
pub struct Unique {
    pub axis: Option<i64>,
    pub sorted: bool,
}

/// Unique compares slices: `m` slices of `elems` elements each; element `e`
/// of slice `j` is at `(e / inner * m + j) * inner + e % inner`.
struct UniquePlan {
    m: usize,
    inner: usize,
    elems: usize,
    axis: usize,
    /// Output 0's shape for `m` distinct slices.
    shape: Vec<usize>,
}

impl UniquePlan {
    fn index(&self, j: usize, e: usize) -> usize {
        (e / self.inner * self.m + j) * self.inner + e % self.inner
    }
}

impl Unique {
    fn plan(&self, x: &TypeInfo) -> Result<UniquePlan> {
        Ok(match self.axis {
            Some(a) => {
                let axis = norm_axis(a, x.rank())?;
                let m = x.shape[axis];
                let inner = numel(&x.shape[axis + 1..]);
                UniquePlan { m, inner, elems: numel(&x.shape) / m.max(1), axis, shape: x.shape.clone() }
            }
            None => UniquePlan { m: x.numel(), inner: 1, elems: 1, axis: 0, shape: vec![x.numel()] },
        })
    }
}

impl Op for Unique {
    fn infer(&self, inputs: &[Option<Input>]) -> Result<Vec<TypeInfo>> {
        let x = ty(inputs, 0)?;
        let p = self.plan(x)?;
        let idx = TypeInfo::new(DType::I64, vec![p.m]);
        Ok(vec![TypeInfo::new(x.dtype, p.shape), idx.clone(), idx.clone(), idx])
    }

    fn eval(&self, inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>> {
        let x = arg(inputs, 0)?;
        let p = self.plan(&TypeInfo::new(x.dtype, x.shape.clone()))?;
        let v = x.to_f64();
        let slices: Vec<Vec<f64>> = (0..p.m).map(|j| (0..p.elems).map(|e| v[p.index(j, e)]).collect()).collect();
        let first: Vec<usize> = (0..p.m).map(|j| (0..j).find(|&k| slices[k] == slices[j]).unwrap_or(j)).collect();
        let mut reps: Vec<usize> = (0..p.m).filter(|&j| first[j] == j).collect();
        if self.sorted {
            // Vec<f64> compares lexicographically, as the kernel's `less` does.
            reps.sort_by(|&a, &b| slices[a].partial_cmp(&slices[b]).unwrap_or(std::cmp::Ordering::Equal));
        }
        let u = reps.len();
        let out = UniquePlan { m: u, inner: p.inner, elems: p.elems, axis: p.axis, shape: vec![] };
        let mut src = vec![0; u * p.elems];
        for (r, &j) in reps.iter().enumerate() {
            for e in 0..p.elems {
                src[out.index(r, e)] = p.index(j, e);
            }
        }
        let mut shape = p.shape.clone();
        shape[p.axis] = u;
        let rank_of = |j: usize| reps.iter().position(|&r| r == first[j]).unwrap_or(0) as i64;
        let counts: Vec<i64> = reps.iter().map(|&j| first.iter().filter(|&&f| f == j).count() as i64).collect();
        Ok(vec![
            gather_flat(x, shape, &src),
            Tensor::from_i64(DType::I64, vec![u], reps.iter().map(|&j| j as i64).collect()),
            Tensor::from_i64(DType::I64, vec![p.m], (0..p.m).map(rank_of).collect()),
            Tensor::from_i64(DType::I64, vec![u], counts),
        ])
    }

    fn lower(&self, cx: &LowerCtx) -> Result<Lowering> {
        let x = cx.input(0)?;
        let p = self.plan(x)?;
        let (m, inner, elems) = (p.m, p.inner, p.elems);
        // Element e of slice j, and slice comparisons over all elements.
        let helpers = format!(
            "fn at(j: u32, e: u32) -> u32 {{ return (e / {inner}u * {m}u + j) * {inner}u + e % {inner}u; }}
fn same(a: u32, b: u32) -> bool {{
    for (var e = 0u; e < {elems}u; e++) {{ if (ld_x(at(a, e)) != ld_x(at(b, e))) {{ return false; }} }}
    return true;
}}
fn less(a: u32, b: u32) -> bool {{
    for (var e = 0u; e < {elems}u; e++) {{
        let va = ld_x(at(a, e));
        let vb = ld_x(at(b, e));
        if (va != vb) {{ return va < vb; }}
    }}
    return false;
}}"
        );
        let first_body = "    var f = i;\n    for (var k = 0u; k < i; k++) { if (same(k, i)) { f = k; break; } }\n    st_first(i, f);";
        let order = if self.sorted { "less(k, i)" } else { "k < i" };
        let rank_body = format!(
            "    if (ld_first(i) != i) {{ st_rank(i, 0u); return; }}
    var r = 0u;
    for (var k = 0u; k < {m}u; k++) {{ if (ld_first(k) == k && {order}) {{ r++; }} }}
    st_rank(i, r);"
        );
        let count_body = chunk_scan(m, "ld_first(i) == i", Some("count"));
        let x_arg = || KernelArg::new("x", TensorRef::Input(0));
        let first = || KernelArg::new("first", TensorRef::Temp(1));
        let rank = || KernelArg::new("rank", TensorRef::Temp(2));
        let count = || KernelArg::new("count", TensorRef::Temp(0));
        let mut kernels = vec![
            kernel_1d("unique_first", vec![x_arg(), first()], m, &helpers, first_body),
            kernel_1d("unique_rank", vec![x_arg(), first(), rank()], m, &helpers, &rank_body),
            single_group("unique_count", vec![first(), count()], "", &count_body),
        ];
        // Outputs the node does not use are not written (they get no place).
        let present = |k: usize| cx.outputs.get(k).is_some_and(|t| t.numel() > 0);
        let mut args = vec![first(), rank(), count()];
        let mut body = "    let f = ld_first(i);\n    let r = ld_rank(f);\n".to_string();
        if present(0) {
            args.push(x_arg());
            args.push(KernelArg::new("y", TensorRef::Output(0)));
            body += &format!(
                "    if (f == i) {{\n        let u = ld_count(0u);\n        for (var e = 0u; e < {elems}u; e++) {{\n            st_y((e / {inner}u * u + r) * {inner}u + e % {inner}u, ld_x(at(i, e)));\n        }}\n    }}\n"
            );
        }
        if present(1) {
            args.push(KernelArg::new("indices", TensorRef::Output(1)));
            body += "    if (f == i) { st_indices(r, i32(i)); }\n";
        }
        if present(2) {
            args.push(KernelArg::new("inverse", TensorRef::Output(2)));
            body += "    st_inverse(i, i32(r));\n";
        }
        if present(3) {
            args.push(KernelArg::new("counts", TensorRef::Output(3)));
            body += &format!(
                "    if (f == i) {{\n        var c = 0u;\n        for (var k = 0u; k < {m}u; k++) {{ if (ld_first(k) == i) {{ c++; }} }}\n        st_counts(r, i32(c));\n    }}\n"
            );
        }
        let helpers = if present(0) { helpers } else { String::new() };
        kernels.push(kernel_1d("unique_write", args, m, &helpers, &body));
        let u32s = |elems: usize| TempSpec { elems: elems.max(1), phys: Phys::U32 };
        Ok(Lowering::Kernels { temps: vec![count_temp(), u32s(m), u32s(m)], kernels })
    }

    fn data_dependent_dims(&self, cx: &LowerCtx) -> Vec<DataDependentDim> {
        let axis = cx.input(0).ok().and_then(|x| self.plan(x).ok()).map_or(0, |p| p.axis);
        [(0, axis), (1, 0), (3, 0)]
            .iter()
            .map(|&(output, axis)| DataDependentDim { output, axis, count_temp: 0 })
            .collect()
    }
}

// ---------------------------------------------------------------------------
// NonMaxSuppression

/// NonMaxSuppression: per batch and class, greedily keeps the highest
/// scoring boxes (ties: lower index first) that overlap no kept box by more
/// than `iou_threshold`; output rows are `[batch, class, box]`.
#[derive(Debug)]
pub struct NonMaxSuppression {
    pub center_point_box: i64,
}

/// Sizes of one NonMaxSuppression: batches, classes, boxes, and the most
/// boxes kept per class.
struct NmsPlan {
    b: usize,
    c: usize,
    n: usize,
    keep: usize,
}

impl NonMaxSuppression {
    fn plan(&self, boxes: &TypeInfo, scores: &TypeInfo, max_out: Option<&Tensor>) -> Result<NmsPlan> {
        let (&[b, n, 4], &[sb, c, sn]) = (boxes.shape.as_slice(), scores.shape.as_slice()) else {
            bail!(
                "boxes must be [batches, boxes, 4] and scores [batches, classes, boxes], got {:?} and {:?}",
                boxes.shape,
                scores.shape
            );
        };
        if sb != b || sn != n {
            bail!("boxes {:?} and scores {:?} disagree on batches or boxes", boxes.shape, scores.shape);
        }
        let max_out = max_out.and_then(|t| t.to_i64().first().copied()).unwrap_or(0).max(0) as usize;
        Ok(NmsPlan { b, c, n, keep: max_out.min(n) })
    }

    fn max_out<'a>(inputs: &[Option<Input<'a>>]) -> Result<Option<&'a Tensor>> {
        match inputs.get(2).copied().flatten() {
            None => Ok(None),
            Some(_) => need_value(inputs, 2, "max_output_boxes_per_class").map(Some),
        }
    }

    /// The corners `(y1, x1, y2, x2)` of box `b`, ordered min before max.
    fn corners(&self, b: &[f64]) -> [f64; 4] {
        if self.center_point_box != 0 {
            let (hw, hh) = (b[2] / 2.0, b[3] / 2.0);
            [b[1] - hh, b[0] - hw, b[1] + hh, b[0] + hw]
        } else {
            [b[0].min(b[2]), b[1].min(b[3]), b[0].max(b[2]), b[1].max(b[3])]
        }
    }

    fn suppresses(&self, a: &[f64], b: &[f64], iou_threshold: f64) -> bool {
        let (a, b) = (self.corners(a), self.corners(b));
        let (ih, iw) = (a[2].min(b[2]) - a[0].max(b[0]), a[3].min(b[3]) - a[1].max(b[1]));
        if ih <= 0.0 || iw <= 0.0 {
            return false;
        }
        let inter = ih * iw;
        let (area_a, area_b) = ((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]));
        let union = area_a + area_b - inter;
        if area_a <= 0.0 || area_b <= 0.0 || union <= 0.0 {
            return false;
        }
        inter / union > iou_threshold
    }

    /// WGSL of `corners` and `suppresses` over boxes in `ld_boxes`.
    fn wgsl_helpers(&self) -> String {
        let corners = if self.center_point_box != 0 {
            "    let hw = ld_boxes(o + 2u) * 0.5f;\n    let hh = ld_boxes(o + 3u) * 0.5f;\n    let cx = ld_boxes(o);\n    let cy = ld_boxes(o + 1u);\n    return vec4<f32>(cy - hh, cx - hw, cy + hh, cx + hw);"
        } else {
            "    let a = vec2<f32>(ld_boxes(o), ld_boxes(o + 1u));\n    let b = vec2<f32>(ld_boxes(o + 2u), ld_boxes(o + 3u));\n    return vec4<f32>(min(a, b), max(a, b));"
        };
        format!(
            "fn corners(o: u32) -> vec4<f32> {{\n{corners}\n}}
fn suppresses(p: u32, q: u32, thr: f32) -> bool {{
    let a = corners(p);
    let b = corners(q);
    let ih = min(a.z, b.z) - max(a.x, b.x);
    let iw = min(a.w, b.w) - max(a.y, b.y);
    if (ih <= 0.0f || iw <= 0.0f) {{ return false; }}
    let inter = ih * iw;
    let area_a = (a.z - a.x) * (a.w - a.y);
    let area_b = (b.z - b.x) * (b.w - b.y);
    let uni = area_a + area_b - inter;
    if (area_a <= 0.0f || area_b <= 0.0f || uni <= 0.0f) {{ return false; }}
    return inter / uni > thr;
}}"
        )
    }
}

impl Op for NonMaxSuppression {
    fn infer(&self, inputs: &[Option<Input>]) -> Result<Vec<TypeInfo>> {
        let p = self.plan(ty(inputs, 0)?, ty(inputs, 1)?, Self::max_out(inputs)?)?;
        Ok(vec![TypeInfo::new(DType::I64, vec![p.b * p.c * p.keep, 3])])
    }

    fn eval(&self, inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>> {
        let (boxes, scores) = (arg(inputs, 0)?, arg(inputs, 1)?);
        let opt = |i: usize| inputs.get(i).copied().flatten();
        let info = |t: &Tensor| TypeInfo::new(t.dtype, t.shape.clone());
        let p = self.plan(&info(boxes), &info(scores), opt(2))?;
        let iou = opt(3).and_then(|t| t.to_f64().first().copied()).unwrap_or(0.0);
        let score_min = opt(4).and_then(|t| t.to_f64().first().copied());
        let (bx, sc) = (boxes.to_f64(), scores.to_f64());
        let mut rows = vec![];
        for b in 0..p.b {
            for c in 0..p.c {
                let s = &sc[(b * p.c + c) * p.n..][..p.n];
                let mut order: Vec<usize> = (0..p.n).filter(|&j| score_min.is_none_or(|m| s[j] > m)).collect();
                order.sort_by(|&x, &y| s[y].partial_cmp(&s[x]).unwrap_or(std::cmp::Ordering::Equal));
                let bx_of = |j: usize| &bx[(b * p.n + j) * 4..][..4];
                let mut kept: Vec<usize> = vec![];
                for j in order {
                    if kept.len() == p.keep {
                        break;
                    }
                    if !kept.iter().any(|&k| self.suppresses(bx_of(j), bx_of(k), iou)) {
                        kept.push(j);
                    }
                }
                rows.extend(kept.iter().flat_map(|&j| [b as i64, c as i64, j as i64]));
            }
        }
        Ok(vec![Tensor::from_i64(DType::I64, vec![rows.len() / 3, 3], rows)])
    }

    fn lower(&self, cx: &LowerCtx) -> Result<Lowering> {
        let max_out = if cx.has_input(2) { Some(cx.const_input(2, "max_output_boxes_per_class")?) } else { None };
        let p = self.plan(cx.input(0)?, cx.input(1)?, max_out)?;
        let (c, n, keep) = (p.c, p.n, p.keep);
        let iou = if cx.has_input(3) { "ld_iou(0u)" } else { "0.0f" };
        let candidate = if cx.has_input(4) { "ld_scores(sb + j) > ld_smin(0u)" } else { "true" };
        let select_body = format!(
            "    let sb = i * {n}u;
    let bb = (i / {c}u) * {n}u * 4u;
    for (var j = 0u; j < {n}u; j++) {{ st_done(sb + j, select(1u, 0u, {candidate})); }}
    var kept = 0u;
    loop {{
        if (kept >= {keep}u) {{ break; }}
        var best = {n}u;
        var best_score = 0.0f;
        for (var j = 0u; j < {n}u; j++) {{
            let s = ld_scores(sb + j);
            if (ld_done(sb + j) == 0u && (best == {n}u || s > best_score)) {{ best = j; best_score = s; }}
        }}
        if (best == {n}u) {{ break; }}
        st_done(sb + best, 1u);
        var keep_it = true;
        for (var k = 0u; k < kept; k++) {{
            if (suppresses(bb + best * 4u, bb + ld_sel(i * {keep}u + k) * 4u, {iou})) {{ keep_it = false; break; }}
        }}
        if (keep_it) {{ st_sel(i * {keep}u + kept, best); kept++; }}
    }}
    st_nsel(i, kept);"
        );
        let mut select_args = vec![
            KernelArg::new("boxes", TensorRef::Input(0)),
            KernelArg::new("scores", TensorRef::Input(1)),
            KernelArg::new("done", TensorRef::Temp(1)),
            KernelArg::new("sel", TensorRef::Temp(2)),
            KernelArg::new("nsel", TensorRef::Temp(3)),
        ];
        if cx.has_input(3) {
            select_args.push(KernelArg::new("iou", TensorRef::Input(3)));
        }
        if cx.has_input(4) {
            select_args.push(KernelArg::new("smin", TensorRef::Input(4)));
        }
        let gather_body = format!(
            "    var row = 0u;
    for (var q = 0u; q < {groups}u; q++) {{
        for (var k = 0u; k < ld_nsel(q); k++) {{
            st_y(row * 3u, i32(q / {c}u));
            st_y(row * 3u + 1u, i32(q % {c}u));
            st_y(row * 3u + 2u, i32(ld_sel(q * {keep}u + k)));
            row++;
        }}
    }}
    st_count(0u, row);",
            groups = p.b * c
        );
        let gather_args = vec![
            KernelArg::new("sel", TensorRef::Temp(2)),
            KernelArg::new("nsel", TensorRef::Temp(3)),
            KernelArg::new("y", TensorRef::Output(0)),
            KernelArg::new("count", TensorRef::Temp(0)),
        ];
        let u32s = |elems: usize| TempSpec { elems: elems.max(1), phys: Phys::U32 };
        Ok(Lowering::Kernels {
            temps: vec![count_temp(), u32s(p.b * c * n), u32s(p.b * c * keep), u32s(p.b * c)],
            kernels: vec![
                kernel_1d("nms_select", select_args, p.b * c, &self.wgsl_helpers(), &select_body),
                kernel_1d("nms_gather", gather_args, 1, "", &gather_body),
            ],
        })
    }

    fn data_dependent_dims(&self, _cx: &LowerCtx) -> Vec<DataDependentDim> {
        vec![DataDependentDim { output: 0, axis: 0, count_temp: 0 }]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn i64s(shape: &[usize], v: &[i64]) -> Tensor {
        Tensor::from_i64(DType::I64, shape.to_vec(), v.to_vec())
    }

    fn f32s(shape: &[usize], v: &[f32]) -> Tensor {
        Tensor::from_f32(shape.to_vec(), v.to_vec())
    }

    // Expected values below are the examples of the ONNX operator docs.

    #[test]
    fn nonzero_lists_coordinates_row_major() {
        let out = NonZero.eval(&[Some(&i64s(&[2, 2], &[1, 0, 1, 1]))]).unwrap();
        assert_eq!(out[0].shape, vec![2, 3]);
        assert_eq!(out[0].to_i64(), vec![0, 1, 1, 0, 0, 1]);
    }

    #[test]
    fn compress_keeps_selected_slices() {
        let x = f32s(&[3, 2], &[1., 2., 3., 4., 5., 6.]);
        let cond = Tensor::from_i64(DType::Bool, vec![3], vec![0, 1, 1]);
        let out = Compress { axis: Some(0) }.eval(&[Some(&x), Some(&cond)]).unwrap();
        assert_eq!((out[0].shape.clone(), out[0].to_f64()), (vec![2, 2], vec![3., 4., 5., 6.]));
        let short = Tensor::from_i64(DType::Bool, vec![2], vec![0, 1]);
        let out = Compress { axis: None }.eval(&[Some(&x), Some(&short)]).unwrap();
        assert_eq!((out[0].shape.clone(), out[0].to_f64()), (vec![1], vec![2.]));
    }

    #[test]
    fn unique_sorted_and_unsorted() {
        let x = f32s(&[6], &[2., 1., 1., 3., 4., 3.]);
        let out = Unique { axis: None, sorted: true }.eval(&[Some(&x)]).unwrap();
        assert_eq!(out[0].to_f64(), vec![1., 2., 3., 4.]);
        assert_eq!(out[1].to_i64(), vec![1, 0, 3, 4]);
        assert_eq!(out[2].to_i64(), vec![1, 0, 0, 2, 3, 2]);
        assert_eq!(out[3].to_i64(), vec![2, 1, 2, 1]);
        let out = Unique { axis: None, sorted: false }.eval(&[Some(&x)]).unwrap();
        assert_eq!(out[0].to_f64(), vec![2., 1., 3., 4.]);
        assert_eq!(out[1].to_i64(), vec![0, 1, 3, 4]);
        assert_eq!(out[2].to_i64(), vec![0, 1, 1, 2, 3, 2]);
        assert_eq!(out[3].to_i64(), vec![1, 2, 2, 1]);
    }

    #[test]
    fn unique_along_an_axis_compares_slices() {
        let x = f32s(&[3, 3], &[1., 0., 0., 1., 0., 0., 2., 3., 4.]);
        let out = Unique { axis: Some(0), sorted: true }.eval(&[Some(&x)]).unwrap();
        assert_eq!((out[0].shape.clone(), out[0].to_f64()), (vec![2, 3], vec![1., 0., 0., 2., 3., 4.]));
        assert_eq!(out[2].to_i64(), vec![0, 0, 1]);
        assert_eq!(out[3].to_i64(), vec![2, 1]);
    }

    #[test]
    fn nms_suppresses_by_iou() {
        // onnx's test_nonmaxsuppression_suppress_by_IOU.
        let boxes = f32s(
            &[1, 6, 4],
            &[
                0., 0., 1., 1., 0., 0.1, 1., 1.1, 0., -0.1, 1., 0.9, 0., 10., 1., 11., 0., 10.1, 1., 11.1, 0., 100.,
                1., 101.,
            ],
        );
        let scores = f32s(&[1, 1, 6], &[0.9, 0.75, 0.6, 0.95, 0.5, 0.3]);
        let (max_out, iou, smin) = (i64s(&[1], &[3]), f32s(&[1], &[0.5]), f32s(&[1], &[0.0]));
        let op = NonMaxSuppression { center_point_box: 0 };
        let out = op.eval(&[Some(&boxes), Some(&scores), Some(&max_out), Some(&iou), Some(&smin)]).unwrap();
        assert_eq!(out[0].shape, vec![3, 3]);
        assert_eq!(out[0].to_i64(), vec![0, 0, 3, 0, 0, 0, 0, 0, 5]);
    }
}
