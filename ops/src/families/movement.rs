//! Data-movement ops: every output element is a copy of one input element
//! (or a fill value). Transpose, Concat, Split, Slice, Gather,
//! GatherElements, GatherND, Tile, Pad, CenterCropPad, DepthToSpace,
//! SpaceToDepth, Trilu, OneHot, plus the line-wise movers CumSum, CumProd and
//! ReverseSequence.
//!
//! Design: one thread per output element computes its source index from
//! its coordinates, with shapes, strides and constant operands (perm,
//! starts, pads, repeats, ...) baked into the WGSL. Since every element is
//! one 32-bit word whatever its logical type, the kernels are type-agnostic
//! copies. Concat and Split emit one kernel per input/output so each kernel
//! binds two buffers only and does no per-element search. Index operands
//! (Gather's indices, OneHot's indices, ...) are read at run time and may be
//! negative: kernels wrap them by the axis size and clamp them to stay in
//! bounds. Operands that do not change the output shape (Trilu's k,
//! CumSum's axis, Pad's constant_value) may also be run-time values; the
//! others (starts, pads, repeats, split, depth, CenterCropPad's shape) must
//! be constants. CPU
//! references mirror the same index maps.

use crate::wgsl::{kernel_1d, lit, strides, unravel};
use crate::{
    Attrs, DType, Data, Error, Input, Kernel, KernelArg, LowerCtx, Lowering, Op, Phys, Result, Tensor, TensorRef,
    TypeInfo, arg, bail, norm_axis, numel, ty, unsupported, value,
};

/// Builds a movement op from its ONNX type, attributes and opset.
pub fn build(op_type: &str, a: &Attrs, opset: i64) -> Result<Box<dyn Op>> {
    let ints = |name: &str| -> Result<Option<Vec<i64>>> { Ok(a.ints_opt(name)?.map(<[i64]>::to_vec)) };
    Ok(match op_type {
        "Transpose" => Box::new(Transpose { perm: ints("perm")? }),
        "Concat" => {
            let axis = a.int_opt("axis")?;
            // Opset 1 defaulted the axis to 1; later opsets require it.
            Box::new(Concat { axis: axis.unwrap_or(1) })
        }
        "Split" => Box::new(Split {
            axis: a.int("axis", 0)?,
            attr_split: if opset < 13 { ints("split")? } else { None },
            num_outputs: a.int_opt("num_outputs")?.map(|n| n.max(1) as usize),
        }),
        "Slice" => Box::new(Slice {
            attrs: if opset < 10 {
                let need = |n: &str| ints(n)?.ok_or_else(|| Error::msg(format!("attribute '{n}' is required")));
                Some((need("starts")?, need("ends")?, ints("axes")?))
            } else {
                None
            },
        }),
        "Gather" => Box::new(Gather { axis: a.int("axis", 0)? }),
        "GatherElements" => Box::new(GatherElements { axis: a.int("axis", 0)? }),
        "GatherND" => Box::new(GatherNd { batch_dims: a.int("batch_dims", 0)?.max(0) as usize }),
        "Tile" => {
            if opset < 6 {
                unsupported!("Tile of opset {opset} (tiles/axis inputs)");
            }
            Box::new(Tile)
        }
        "Pad" => {
            let mode = match a.str("mode", "constant")? {
                "constant" => PadMode::Constant,
                "reflect" => PadMode::Reflect,
                "edge" => PadMode::Edge,
                "wrap" => PadMode::Wrap,
                m => unsupported!("Pad mode '{m}'"),
            };
            let attr_pads = match opset {
                ..2 => ints("paddings")?,
                2..11 => ints("pads")?,
                _ => None,
            };
            Box::new(Pad { mode, attr_pads, attr_value: a.float("value", 0.0)? as f64 })
        }
        "DepthToSpace" | "SpaceToDepth" => {
            let block = a.int_opt("blocksize")?.ok_or_else(|| Error::msg("attribute 'blocksize' is required"))?;
            if block < 1 {
                bail!("blocksize must be positive, got {block}");
            }
            let crd = match a.str("mode", "DCR")? {
                "DCR" => false,
                "CRD" => true,
                m => bail!("unknown mode '{m}'"),
            };
            let to_space = op_type == "DepthToSpace";
            Box::new(BlockMove { block: block as usize, crd, to_space })
        }
        "Trilu" => Box::new(Trilu { upper: a.int("upper", 1)? != 0 }),
        "OneHot" => Box::new(OneHot { axis: a.int("axis", -1)? }),
        "CenterCropPad" => Box::new(CenterCropPad { axes: ints("axes")? }),
        "CumSum" | "CumProd" => Box::new(Cumulative {
            product: op_type == "CumProd",
            exclusive: a.int("exclusive", 0)? != 0,
            reverse: a.int("reverse", 0)? != 0,
        }),
        "ReverseSequence" => Box::new(ReverseSequence {
            batch_axis: a.int("batch_axis", 1)? as usize,
            time_axis: a.int("time_axis", 0)? as usize,
        }),
        _ => return Err(Error::unsupported(op_type.to_string())),
    })
}

// ---------------------------------------------------------------------------
// Shared helpers (also used by the shape family).

/// Arguments `x` = input 0 and `y` = output 0.
pub(crate) fn xy_args() -> Vec<KernelArg> {
    vec![KernelArg::new("x", TensorRef::Input(0)), KernelArg::new("y", TensorRef::Output(0))]
}

/// [`xy_args`] for kernels storing each output element once.
pub(crate) fn once_args() -> Vec<KernelArg> {
    vec![KernelArg::new("x", TensorRef::Input(0)), KernelArg::new("y", TensorRef::Output(0)).stored_once()]
}

/// A kernel over the elements of `out_shape`: `stmts` sees `i` and the
/// output coordinates `c0..c{rank-1}`.
pub(crate) fn map_kernel(name: &str, args: Vec<KernelArg>, out_shape: &[usize], stmts: &str) -> Kernel {
    let body = unravel("c", "i", out_shape) + stmts;
    kernel(name, args, numel(out_shape), HELPERS, &body)
}

/// `kernel_1d`, except that a kernel over no elements gets an empty body:
/// its index arithmetic would divide by the zero-sized dimension.
pub(crate) fn kernel(name: &str, args: Vec<KernelArg>, n: usize, helpers: &str, body: &str) -> Kernel {
    kernel_1d(name, args, n, helpers, if n == 0 { "" } else { body })
}

/// A WGSL u32 sum of `terms`, "0u" if there are none.
pub(crate) fn lin(terms: Vec<String>) -> String {
    if terms.is_empty() { "0u".to_string() } else { terms.join(" + ") }
}

/// CPU: the tensor whose element `e` is `x`'s element `src[e]`.
pub(crate) fn take(x: &Tensor, shape: Vec<usize>, src: &[usize]) -> Tensor {
    let data = match &x.data {
        Data::F32(v) => Data::F32(src.iter().map(|&i| v[i]).collect()),
        Data::F64(v) => Data::F64(src.iter().map(|&i| v[i]).collect()),
        Data::I64(v) => Data::I64(src.iter().map(|&i| v[i]).collect()),
    };
    Tensor { dtype: x.dtype, shape, data }
}

/// CPU: like `take`, with `fill` (rounded to `x`'s type) where `src` is None.
fn take_or(x: &Tensor, shape: Vec<usize>, src: &[Option<usize>], fill: f64) -> Tensor {
    let f = Tensor::from_f64(x.dtype, vec![1], vec![fill]);
    let mut ext = x.clone();
    match (&mut ext.data, f.data) {
        (Data::F32(v), Data::F32(w)) => v.extend(w),
        (Data::F64(v), Data::F64(w)) => v.extend(w),
        (Data::I64(v), Data::I64(w)) => v.extend(w),
        _ => unreachable!("a tensor and its own dtype's fill share a storage kind"),
    }
    let n = x.len();
    let idx: Vec<usize> = src.iter().map(|s| s.unwrap_or(n)).collect();
    take(&ext, shape, &idx)
}

/// CPU: `f` applied to the coordinates of every element of `shape`, in
/// row-major order.
pub(crate) fn map_coords<T>(shape: &[usize], mut f: impl FnMut(&[usize]) -> T) -> Vec<T> {
    let n = numel(shape);
    let mut c = vec![0usize; shape.len()];
    let mut out = Vec::with_capacity(n);
    for e in 0..n {
        let mut r = e;
        for d in (0..shape.len()).rev() {
            c[d] = r % shape[d];
            r /= shape[d];
        }
        out.push(f(&c));
    }
    out
}

/// Wraps a possibly negative index by `n` and clamps it into `0..n`, as the
/// kernels do (out-of-range indices are invalid models; clamping keeps the
/// GPU in bounds).
fn wrap_index(k: i64, n: usize) -> usize {
    let k = if k < 0 { k + n as i64 } else { k };
    k.clamp(0, (n as i64 - 1).max(0)) as usize
}

/// WGSL helpers the kernels of this family may call.
const HELPERS: &str = "
fn wrap_idx(k: i32, n: i32) -> u32 {
    // Negative indices count from the end; out-of-range ones are clamped.
    return u32(clamp(select(k, k + n, k < 0), 0, max(n - 1, 0)));
}
fn pad_wrap(a: i32, n: i32) -> i32 {
    let r = a % n;
    return select(r, r + n, r < 0);
}
fn pad_reflect(a: i32, n: i32) -> i32 {
    if (n == 1) { return 0; }
    let per = 2 * (n - 1);
    let t = pad_wrap(a, per);
    return select(t, per - t, t >= n);
}
";

/// Element type of an index operand read by a kernel as i32.
fn as_i32(expr: &str, dtype: DType) -> String {
    match dtype.phys() {
        Phys::I32 => expr.to_string(),
        _ => format!("i32({expr})"),
    }
}

/// Reads optional input `i` as a shape rule sees it: None if omitted,
/// an error if given but not constant.
fn const_opt<'a>(inputs: &[Option<Input<'a>>], i: usize, what: &str) -> Result<Option<&'a Tensor>> {
    match inputs.get(i).copied().flatten() {
        None => Ok(None),
        Some(Input { value: Some(v), .. }) => Ok(Some(v)),
        Some(_) => Err(Error::needs_value(i, what)),
    }
}

/// CPU counterpart of `const_opt`.
fn opt<'a>(inputs: &[Option<&'a Tensor>], i: usize) -> Option<&'a Tensor> {
    inputs.get(i).copied().flatten()
}

/// Shape-rule inputs describing host tensors, so CPU references can reuse
/// the shape rules.
fn types_of(inputs: &[Option<&Tensor>]) -> Vec<Option<TypeInfo>> {
    inputs.iter().map(|t| t.map(|t| TypeInfo::new(t.dtype, t.shape.clone()))).collect()
}

fn typed<'a>(inputs: &[Option<&'a Tensor>], tys: &'a [Option<TypeInfo>]) -> Vec<Option<Input<'a>>> {
    inputs.iter().zip(tys).map(|(t, ty)| ty.as_ref().map(|ty| Input { ty, value: *t })).collect()
}

/// Runs `op`'s shape rule on host tensors.
fn infer_host(op: &dyn Op, inputs: &[Option<&Tensor>]) -> Result<Vec<TypeInfo>> {
    let tys = types_of(inputs);
    op.infer(&typed(inputs, &tys))
}

// ---------------------------------------------------------------------------
// Transpose

/// Transpose: output axis d is input axis perm[d] (default: reversed).
#[derive(Debug)]
pub struct Transpose {
    pub perm: Option<Vec<i64>>,
}

impl Transpose {
    fn perm(&self, rank: usize) -> Result<Vec<usize>> {
        let p: Vec<usize> = match &self.perm {
            None => (0..rank).rev().collect(),
            Some(p) => p.iter().map(|&a| norm_axis(a, rank)).collect::<Result<_>>()?,
        };
        let mut seen = p.clone();
        seen.sort_unstable();
        if seen != (0..rank).collect::<Vec<_>>() {
            bail!("perm {:?} is not a permutation of rank {rank}", self.perm);
        }
        Ok(p)
    }
}

impl Op for Transpose {
    fn infer(&self, inputs: &[Option<Input>]) -> Result<Vec<TypeInfo>> {
        let x = ty(inputs, 0)?;
        let shape = self.perm(x.rank())?.iter().map(|&a| x.shape[a]).collect();
        Ok(vec![TypeInfo::new(x.dtype, shape)])
    }

    fn eval(&self, inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>> {
        let x = arg(inputs, 0)?;
        let perm = self.perm(x.rank())?;
        let st = strides(&x.shape);
        let out: Vec<usize> = perm.iter().map(|&a| x.shape[a]).collect();
        let src = map_coords(&out, |c| c.iter().zip(&perm).map(|(&cd, &a)| cd * st[a]).sum());
        Ok(vec![take(x, out, &src)])
    }

    fn lower(&self, cx: &LowerCtx) -> Result<Lowering> {
        let x = cx.input(0)?;
        let perm = self.perm(x.rank())?;
        let st = strides(&x.shape);
        let out = &cx.output(0).shape;
        let src = lin((0..out.len()).filter(|&d| out[d] != 1).map(|d| format!("c{d} * {}u", st[perm[d]])).collect());
        Ok(Lowering::one(map_kernel("transpose", once_args(), out, &format!("    st_y(i, ld_x({src}));"))))
    }
}

// ---------------------------------------------------------------------------
// Concat and Split

/// Splits a shape around `axis` into (outer count, axis length, inner count).
fn around(shape: &[usize], axis: usize) -> (usize, usize, usize) {
    (numel(&shape[..axis]), shape[axis], numel(&shape[axis + 1..]))
}

/// Concat: joins inputs along an axis.
#[derive(Debug)]
pub struct Concat {
    pub axis: i64,
}

impl Op for Concat {
    fn infer(&self, inputs: &[Option<Input>]) -> Result<Vec<TypeInfo>> {
        let first = ty(inputs, 0)?;
        let axis = norm_axis(self.axis, first.rank())?;
        let mut shape = first.shape.clone();
        shape[axis] = 0;
        for i in 0..inputs.len() {
            let t = ty(inputs, i)?;
            let same = t.rank() == shape.len() && (0..shape.len()).all(|d| d == axis || t.shape[d] == shape[d]);
            if !same || t.dtype != first.dtype {
                bail!(
                    "cannot concatenate {:?} {} with {:?} {} on axis {axis}",
                    first.shape,
                    first.dtype,
                    t.shape,
                    t.dtype
                );
            }
            shape[axis] += t.shape[axis];
        }
        Ok(vec![TypeInfo::new(first.dtype, shape)])
    }

    fn eval(&self, inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>> {
        let out = infer_host(self, inputs)?.remove(0);
        let axis = norm_axis(self.axis, out.rank())?;
        let (outer, inner) = (numel(&out.shape[..axis]), numel(&out.shape[axis + 1..]));
        let ts: Vec<&Tensor> = (0..inputs.len()).map(|i| arg(inputs, i)).collect::<Result<_>>()?;
        // Inputs laid end to end; each outer index takes one contiguous
        // chunk from every input in turn.
        let flat = concat_flat(&ts)?;
        let starts: Vec<usize> = ts.iter().scan(0, |acc, t| Some(std::mem::replace(acc, *acc + t.len()))).collect();
        let mut src = Vec::with_capacity(out.numel());
        for o in 0..outer {
            for (t, &start) in ts.iter().zip(&starts) {
                let chunk = t.shape[axis] * inner;
                src.extend((0..chunk).map(|r| start + o * chunk + r));
            }
        }
        Ok(vec![take(&flat, out.shape, &src)])
    }

    fn lower(&self, cx: &LowerCtx) -> Result<Lowering> {
        let out = cx.output(0);
        let axis = norm_axis(self.axis, out.rank())?;
        let (_, out_len, inner) = around(&out.shape, axis);
        let mut kernels = Vec::new();
        let mut off = 0;
        for k in 0..cx.inputs.len() {
            let t = cx.input(k)?;
            let chunk = t.shape[axis] * inner;
            if t.numel() > 0 {
                let body = format!(
                    "    let o = i / {chunk}u;\n    st_y(o * {}u + {}u + i % {chunk}u, ld_x(i));",
                    out_len * inner,
                    off * inner
                );
                let args = vec![KernelArg::new("x", TensorRef::Input(k)), KernelArg::new("y", TensorRef::Output(0))];
                kernels.push(kernel("concat", args, t.numel(), "", &body));
            }
            off += t.shape[axis];
        }
        Ok(Lowering::Kernels { temps: vec![], kernels })
    }
}

/// Host tensors of one dtype laid end to end (flat).
fn concat_flat(ts: &[&Tensor]) -> Result<Tensor> {
    let mut data = ts[0].data.clone();
    for t in &ts[1..] {
        match (&mut data, &t.data) {
            (Data::F32(v), Data::F32(w)) => v.extend(w),
            (Data::F64(v), Data::F64(w)) => v.extend(w),
            (Data::I64(v), Data::I64(w)) => v.extend(w),
            _ => bail!("Concat inputs differ in type"),
        }
    }
    let mut t = Tensor { dtype: ts[0].dtype, shape: vec![], data };
    t.shape = vec![t.len()];
    Ok(t)
}

/// Split: cuts the input along an axis into consecutive parts.
#[derive(Debug)]
pub struct Split {
    pub axis: i64,
    /// The `split` attribute of opsets before 13.
    pub attr_split: Option<Vec<i64>>,
    /// Equal parts: the `num_outputs` attribute (opset 18), or the node's
    /// output count when the compiler supplies it under that name.
    pub num_outputs: Option<usize>,
}

impl Split {
    fn sizes(&self, dim: usize, split_input: Option<&Tensor>) -> Result<Vec<usize>> {
        let explicit = split_input.map(Tensor::to_i64).or_else(|| self.attr_split.clone());
        if let Some(s) = explicit {
            if s.iter().any(|&v| v < 0) || s.iter().sum::<i64>() != dim as i64 {
                bail!("split {s:?} does not add up to the dimension {dim}");
            }
            return Ok(s.iter().map(|&v| v as usize).collect());
        }
        let Some(n) = self.num_outputs else {
            unsupported!("Split into equal parts without 'num_outputs' (the node's output count is not known here)")
        };
        // Parts of ceil(dim / n), the last one taking the rest.
        let part = dim.div_ceil(n);
        Ok((0..n).map(|k| part.min(dim.saturating_sub(k * part))).collect())
    }
}

impl Op for Split {
    fn infer(&self, inputs: &[Option<Input>]) -> Result<Vec<TypeInfo>> {
        let x = ty(inputs, 0)?;
        let axis = norm_axis(self.axis, x.rank())?;
        let sizes = self.sizes(x.shape[axis], const_opt(inputs, 1, "split")?)?;
        Ok(sizes
            .iter()
            .map(|&s| {
                let mut shape = x.shape.clone();
                shape[axis] = s;
                TypeInfo::new(x.dtype, shape)
            })
            .collect())
    }

    fn eval(&self, inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>> {
        let x = arg(inputs, 0)?;
        let axis = norm_axis(self.axis, x.rank())?;
        let (outer, len, inner) = around(&x.shape, axis);
        let mut off = 0;
        let mut outs = Vec::new();
        for s in self.sizes(len, opt(inputs, 1))? {
            let mut shape = x.shape.clone();
            shape[axis] = s;
            let chunk = s * inner;
            let src: Vec<usize> =
                (0..outer * chunk).map(|e| (e / chunk) * len * inner + off * inner + e % chunk).collect();
            outs.push(take(x, shape, &src));
            off += s;
        }
        Ok(outs)
    }

    fn lower(&self, cx: &LowerCtx) -> Result<Lowering> {
        let x = cx.input(0)?;
        let axis = norm_axis(self.axis, x.rank())?;
        let (_, len, inner) = around(&x.shape, axis);
        let mut kernels = Vec::new();
        let mut off = 0;
        // Shapes from the shape rule: an omitted output's placeholder type
        // differs from its part's, and gets no kernel.
        for (k, y) in self.infer(&cx.inputs)?.iter().enumerate() {
            let s = y.shape[axis];
            let chunk = s * inner;
            if y.numel() > 0 && cx.outputs.get(k) == Some(y) {
                let body = format!(
                    "    let o = i / {chunk}u;\n    st_y(i, ld_x(o * {}u + {}u + i % {chunk}u));",
                    len * inner,
                    off * inner
                );
                let args = vec![KernelArg::new("x", TensorRef::Input(0)), KernelArg::new("y", TensorRef::Output(k))];
                kernels.push(kernel("split", args, y.numel(), "", &body));
            }
            off += s;
        }
        Ok(Lowering::Kernels { temps: vec![], kernels })
    }
}

// ---------------------------------------------------------------------------
// Slice

/// Slice: strided sub-box, numpy semantics (negative indices count from the
/// end, out-of-range bounds clamp, negative steps walk backwards).
#[derive(Debug)]
pub struct Slice {
    /// Opset 1..9: starts, ends, axes attributes.
    pub attrs: Option<SliceAttrs>,
}

/// Opset 1..9 Slice attributes: starts, ends and optional axes.
pub type SliceAttrs = (Vec<i64>, Vec<i64>, Option<Vec<i64>>);

/// Per-dimension first index and step, and the output shape.
#[derive(Debug, PartialEq)]
struct SliceParams {
    start: Vec<i64>,
    step: Vec<i64>,
    shape: Vec<usize>,
}

fn slice_params(
    shape: &[usize],
    starts: &[i64],
    ends: &[i64],
    axes: Option<&[i64]>,
    steps: Option<&[i64]>,
) -> Result<SliceParams> {
    let r = shape.len();
    let mut p = SliceParams { start: vec![0; r], step: vec![1; r], shape: shape.to_vec() };
    if starts.len() != ends.len() {
        bail!("starts {starts:?} and ends {ends:?} differ in length");
    }
    let default_axes: Vec<i64> = (0..starts.len() as i64).collect();
    let axes = axes.unwrap_or(&default_axes);
    if axes.len() != starts.len() || steps.is_some_and(|s| s.len() != starts.len()) {
        bail!("starts, ends, axes and steps differ in length");
    }
    let mut seen = vec![false; r];
    for (j, &a) in axes.iter().enumerate() {
        let d = norm_axis(a, r)?;
        if std::mem::replace(&mut seen[d], true) {
            bail!("axis {a} is repeated in {axes:?}");
        }
        let n = shape[d] as i64;
        let step = steps.map_or(1, |s| s[j]);
        if step == 0 {
            bail!("slice step is 0");
        }
        let fix = |v: i64| if v < 0 { v.saturating_add(n) } else { v };
        let (mut s, mut e) = (fix(starts[j]), fix(ends[j]));
        let count = if step > 0 {
            s = s.clamp(0, n);
            e = e.clamp(0, n);
            if e > s { (e - s + step - 1) / step } else { 0 }
        } else {
            s = s.clamp(0, (n - 1).max(0));
            e = e.clamp(-1, n - 1);
            if s > e { (s - e + (-step) - 1) / (-step) } else { 0 }
        };
        p.start[d] = s;
        p.step[d] = step;
        p.shape[d] = count as usize;
    }
    Ok(p)
}

impl Slice {
    fn params(&self, shape: &[usize], vals: [Option<&Tensor>; 4]) -> Result<SliceParams> {
        if let Some((s, e, a)) = &self.attrs {
            return slice_params(shape, s, e, a.as_deref(), None);
        }
        let get = |i: usize| vals[i].map(Tensor::to_i64);
        let (Some(s), Some(e)) = (get(0), get(1)) else { bail!("Slice needs starts and ends") };
        slice_params(shape, &s, &e, get(2).as_deref(), get(3).as_deref())
    }
}

impl Op for Slice {
    fn infer(&self, inputs: &[Option<Input>]) -> Result<Vec<TypeInfo>> {
        let x = ty(inputs, 0)?;
        let vals = if self.attrs.is_some() {
            [None; 4]
        } else {
            [
                const_opt(inputs, 1, "starts")?,
                const_opt(inputs, 2, "ends")?,
                const_opt(inputs, 3, "axes")?,
                const_opt(inputs, 4, "steps")?,
            ]
        };
        Ok(vec![TypeInfo::new(x.dtype, self.params(&x.shape, vals)?.shape)])
    }

    fn eval(&self, inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>> {
        let x = arg(inputs, 0)?;
        let p = self.params(&x.shape, [opt(inputs, 1), opt(inputs, 2), opt(inputs, 3), opt(inputs, 4)])?;
        let st = strides(&x.shape);
        let src = map_coords(&p.shape, |c| {
            (0..c.len()).map(|d| (p.start[d] + c[d] as i64 * p.step[d]) as usize * st[d]).sum()
        });
        Ok(vec![take(x, p.shape, &src)])
    }

    fn lower(&self, cx: &LowerCtx) -> Result<Lowering> {
        let x = cx.input(0)?;
        let vals = if self.attrs.is_some() {
            [None; 4]
        } else {
            let get = |i| if cx.has_input(i) { cx.const_input(i, "slice bound").map(Some) } else { Ok(None) };
            [get(1)?, get(2)?, get(3)?, get(4)?]
        };
        let p = self.params(&x.shape, vals)?;
        let st = strides(&x.shape);
        let terms = (0..p.shape.len())
            .filter(|&d| x.shape[d] != 1)
            .map(|d| match (p.start[d], p.step[d]) {
                (0, 1) => format!("c{d} * {}u", st[d]),
                (s, k) => format!("u32({s} + {k} * i32(c{d})) * {}u", st[d]),
            })
            .collect();
        let body = format!("    st_y(i, ld_x({}));", lin(terms));
        Ok(Lowering::one(map_kernel("slice", once_args(), &p.shape, &body)))
    }
}

// ---------------------------------------------------------------------------
// Gather family

/// Gather: picks slices along `axis` by an index tensor.
#[derive(Debug)]
pub struct Gather {
    pub axis: i64,
}

impl Op for Gather {
    fn infer(&self, inputs: &[Option<Input>]) -> Result<Vec<TypeInfo>> {
        let (x, ind) = (ty(inputs, 0)?, ty(inputs, 1)?);
        let axis = norm_axis(self.axis, x.rank())?;
        let shape = [&x.shape[..axis], &ind.shape[..], &x.shape[axis + 1..]].concat();
        Ok(vec![TypeInfo::new(x.dtype, shape)])
    }

    fn eval(&self, inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>> {
        let (x, ind) = (arg(inputs, 0)?, arg(inputs, 1)?);
        let out = infer_host(self, inputs)?.remove(0);
        let axis = norm_axis(self.axis, x.rank())?;
        let (_, len, inner) = around(&x.shape, axis);
        let k = ind.to_i64();
        let nk = k.len();
        let src: Vec<usize> = (0..out.numel())
            .map(|e| {
                let (o, j, r) = (e / (nk * inner), (e / inner) % nk, e % inner);
                (o * len + wrap_index(k[j], len)) * inner + r
            })
            .collect();
        Ok(vec![take(x, out.shape, &src)])
    }

    fn lower(&self, cx: &LowerCtx) -> Result<Lowering> {
        let (x, ind) = (cx.input(0)?, cx.input(1)?);
        let axis = norm_axis(self.axis, x.rank())?;
        let (_, len, inner) = around(&x.shape, axis);
        let nk = ind.numel().max(1);
        let k = as_i32("ld_ind(j)", ind.dtype);
        let body = format!(
            "    let o = i / {}u;\n    let j = (i / {inner}u) % {nk}u;\n    let k = wrap_idx({k}, {len});\n    st_y(i, ld_x((o * {len}u + k) * {inner}u + i % {inner}u));",
            nk * inner
        );
        let args = vec![
            KernelArg::new("x", TensorRef::Input(0)),
            KernelArg::new("ind", TensorRef::Input(1)),
            KernelArg::new("y", TensorRef::Output(0)).stored_once(),
        ];
        Ok(Lowering::one(kernel("gather", args, cx.output(0).numel(), HELPERS, &body)))
    }
}

fn xiy_args() -> Vec<KernelArg> {
    vec![
        KernelArg::new("x", TensorRef::Input(0)),
        KernelArg::new("ind", TensorRef::Input(1)),
        KernelArg::new("y", TensorRef::Output(0)),
    ]
}

/// GatherElements: output has the indices' shape; each index replaces its
/// own coordinate along `axis`.
#[derive(Debug)]
pub struct GatherElements {
    pub axis: i64,
}

impl Op for GatherElements {
    fn infer(&self, inputs: &[Option<Input>]) -> Result<Vec<TypeInfo>> {
        let (x, ind) = (ty(inputs, 0)?, ty(inputs, 1)?);
        if x.rank() != ind.rank() {
            bail!("data {:?} and indices {:?} differ in rank", x.shape, ind.shape);
        }
        norm_axis(self.axis, x.rank())?;
        Ok(vec![TypeInfo::new(x.dtype, ind.shape.clone())])
    }

    fn eval(&self, inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>> {
        let (x, ind) = (arg(inputs, 0)?, arg(inputs, 1)?);
        let axis = norm_axis(self.axis, x.rank())?;
        let st = strides(&x.shape);
        let k = ind.to_i64();
        let mut e = 0;
        let src = map_coords(&ind.shape, |c| {
            let s = (0..c.len()).map(|d| if d == axis { wrap_index(k[e], x.shape[d]) } else { c[d] } * st[d]).sum();
            e += 1;
            s
        });
        Ok(vec![take(x, ind.shape.clone(), &src)])
    }

    fn lower(&self, cx: &LowerCtx) -> Result<Lowering> {
        let (x, ind) = (cx.input(0)?, cx.input(1)?);
        let axis = norm_axis(self.axis, x.rank())?;
        let st = strides(&x.shape);
        let terms = (0..x.rank())
            .map(|d| if d == axis { format!("k * {}u", st[d]) } else { format!("c{d} * {}u", st[d]) })
            .collect();
        let body = format!(
            "    let k = wrap_idx({}, {});\n    st_y(i, ld_x({}));",
            as_i32("ld_ind(i)", ind.dtype),
            x.shape[axis],
            lin(terms)
        );
        Ok(Lowering::one(map_kernel("gather_elements", xiy_args(), &ind.shape, &body)))
    }
}

/// GatherND: the last indices dimension addresses the data's leading
/// (post-batch) dimensions; the rest of the data comes along.
#[derive(Debug)]
pub struct GatherNd {
    pub batch_dims: usize,
}

/// (index tuple length m, batch count, tuples per batch, inner slice size).
fn gather_nd_dims(x: &[usize], ind: &[usize], b: usize) -> Result<(usize, usize, usize, usize)> {
    let Some(&m) = ind.last() else { bail!("GatherND indices must have rank >= 1") };
    if b >= ind.len() || b + m > x.len() || x[..b] != ind[..b] {
        bail!("GatherND: data {x:?}, indices {ind:?} and batch_dims {b} do not fit");
    }
    let batches = numel(&ind[..b]);
    Ok((m, batches, numel(&ind[b..ind.len() - 1]), numel(&x[b + m..])))
}

impl Op for GatherNd {
    fn infer(&self, inputs: &[Option<Input>]) -> Result<Vec<TypeInfo>> {
        let (x, ind) = (ty(inputs, 0)?, ty(inputs, 1)?);
        let (m, ..) = gather_nd_dims(&x.shape, &ind.shape, self.batch_dims)?;
        let shape = [&ind.shape[..ind.rank() - 1], &x.shape[self.batch_dims + m..]].concat();
        Ok(vec![TypeInfo::new(x.dtype, shape)])
    }

    fn eval(&self, inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>> {
        let (x, ind) = (arg(inputs, 0)?, arg(inputs, 1)?);
        let out = infer_host(self, inputs)?.remove(0);
        let b = self.batch_dims;
        let (m, _, per_batch, inner) = gather_nd_dims(&x.shape, &ind.shape, b)?;
        let st = strides(&x.shape);
        let batch_size = numel(&x.shape[b..]);
        let k = ind.to_i64();
        let src: Vec<usize> = (0..out.numel())
            .map(|e| {
                let (g, r) = (e / inner, e % inner);
                let base = (g / per_batch.max(1)) * batch_size;
                base + (0..m).map(|j| wrap_index(k[g * m + j], x.shape[b + j]) * st[b + j]).sum::<usize>() + r
            })
            .collect();
        Ok(vec![take(x, out.shape, &src)])
    }

    fn lower(&self, cx: &LowerCtx) -> Result<Lowering> {
        let (x, ind) = (cx.input(0)?, cx.input(1)?);
        let b = self.batch_dims;
        let (m, _, per_batch, inner) = gather_nd_dims(&x.shape, &ind.shape, b)?;
        let st = strides(&x.shape);
        let mut body = format!(
            "    let g = i / {inner}u;\n    var src = (g / {}u) * {}u + i % {inner}u;\n",
            per_batch.max(1),
            numel(&x.shape[b..])
        );
        for j in 0..m {
            let k = as_i32(&format!("ld_ind(g * {m}u + {j}u)"), ind.dtype);
            body += &format!("    src += wrap_idx({k}, {}) * {}u;\n", x.shape[b + j], st[b + j]);
        }
        body += "    st_y(i, ld_x(src));";
        Ok(Lowering::one(kernel("gather_nd", xiy_args(), cx.output(0).numel(), HELPERS, &body)))
    }
}

// ---------------------------------------------------------------------------
// Tile and Pad

/// Tile: repeats the input `repeats[d]` times along each dimension.
#[derive(Debug)]
pub struct Tile;

fn tile_shape(x: &[usize], reps: &[i64]) -> Result<Vec<usize>> {
    if reps.len() != x.len() || reps.iter().any(|&r| r < 0) {
        bail!("repeats {reps:?} do not fit shape {x:?}");
    }
    Ok(x.iter().zip(reps).map(|(&n, &r)| n * r as usize).collect())
}

impl Op for Tile {
    fn infer(&self, inputs: &[Option<Input>]) -> Result<Vec<TypeInfo>> {
        let x = ty(inputs, 0)?;
        let Some(reps) = const_opt(inputs, 1, "repeats")? else { bail!("Tile needs repeats") };
        Ok(vec![TypeInfo::new(x.dtype, tile_shape(&x.shape, &reps.to_i64())?)])
    }

    fn eval(&self, inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>> {
        let x = arg(inputs, 0)?;
        let out = tile_shape(&x.shape, &arg(inputs, 1)?.to_i64())?;
        let st = strides(&x.shape);
        let src = map_coords(&out, |c| (0..c.len()).map(|d| (c[d] % x.shape[d]) * st[d]).sum());
        Ok(vec![take(x, out, &src)])
    }

    fn lower(&self, cx: &LowerCtx) -> Result<Lowering> {
        let x = cx.input(0)?;
        let out = &cx.output(0).shape;
        let st = strides(&x.shape);
        let terms = (0..x.rank())
            .filter(|&d| x.shape[d] > 1)
            .map(|d| {
                if out[d] == x.shape[d] {
                    format!("c{d} * {}u", st[d])
                } else {
                    format!("(c{d} % {}u) * {}u", x.shape[d], st[d])
                }
            })
            .collect();
        Ok(Lowering::one(map_kernel("tile", xy_args(), out, &format!("    st_y(i, ld_x({}));", lin(terms)))))
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum PadMode {
    Constant,
    Reflect,
    Edge,
    Wrap,
}

/// Pad: grows (or, with negative pads, crops) each dimension at both ends.
#[derive(Debug)]
pub struct Pad {
    pub mode: PadMode,
    /// `pads` (`paddings` in opset 1) attribute before opset 11.
    pub attr_pads: Option<Vec<i64>>,
    /// `value` attribute before opset 11.
    pub attr_value: f64,
}

impl Pad {
    /// Per-dimension leading pads and the output shape.
    fn plan(&self, shape: &[usize], pads: Option<&Tensor>, axes: Option<&Tensor>) -> Result<(Vec<i64>, Vec<usize>)> {
        let r = shape.len();
        let pads = match (&self.attr_pads, pads) {
            (Some(p), _) => p.clone(),
            (None, Some(t)) => t.to_i64(),
            (None, None) => bail!("Pad needs pads"),
        };
        let axes: Vec<usize> = match axes {
            Some(t) => t.to_i64().iter().map(|&a| norm_axis(a, r)).collect::<Result<_>>()?,
            None => (0..r).collect(),
        };
        if pads.len() != 2 * axes.len() {
            bail!("pads {pads:?} do not fit {} axes", axes.len());
        }
        let (mut begin, mut out) = (vec![0i64; r], shape.to_vec());
        for (j, &d) in axes.iter().enumerate() {
            let (b, e) = (pads[j], pads[axes.len() + j]);
            let n = shape[d] as i64 + b + e;
            if n < 0 {
                bail!("pads {pads:?} remove more than dimension {d} holds");
            }
            if n > 0 && shape[d] == 0 && self.mode != PadMode::Constant {
                bail!("Pad mode {:?} cannot extend an empty dimension", self.mode);
            }
            begin[d] = b;
            out[d] = n as usize;
        }
        Ok((begin, out))
    }

    /// Source coordinate of output coordinate `c` along a dimension of size
    /// `n` with leading pad `b`; None for the constant fill.
    fn source(&self, c: usize, b: i64, n: usize) -> Option<usize> {
        let (s, n) = (c as i64 - b, n as i64);
        match self.mode {
            _ if (0..n).contains(&s) => Some(s as usize),
            PadMode::Constant => None,
            PadMode::Edge => Some(s.clamp(0, n - 1) as usize),
            PadMode::Wrap => Some(s.rem_euclid(n) as usize),
            PadMode::Reflect if n == 1 => Some(0),
            PadMode::Reflect => {
                let per = 2 * (n - 1);
                let t = s.rem_euclid(per);
                Some(if t >= n { per - t } else { t } as usize)
            }
        }
    }

    fn fill(&self, v: Option<&Tensor>) -> f64 {
        match v {
            Some(t) if !t.is_empty() => t.to_f64()[0],
            Some(_) => 0.0,
            None => self.attr_value,
        }
    }
}

impl Op for Pad {
    fn infer(&self, inputs: &[Option<Input>]) -> Result<Vec<TypeInfo>> {
        let x = ty(inputs, 0)?;
        let (pads, axes) = if self.attr_pads.is_some() {
            (None, None)
        } else {
            (const_opt(inputs, 1, "pads")?, const_opt(inputs, 3, "axes")?)
        };
        Ok(vec![TypeInfo::new(x.dtype, self.plan(&x.shape, pads, axes)?.1)])
    }

    fn eval(&self, inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>> {
        let x = arg(inputs, 0)?;
        let (begin, out) = self.plan(&x.shape, opt(inputs, 1), opt(inputs, 3))?;
        let st = strides(&x.shape);
        let src = map_coords(&out, |c| {
            (0..c.len()).try_fold(0, |acc, d| self.source(c[d], begin[d], x.shape[d]).map(|s| acc + s * st[d]))
        });
        Ok(vec![take_or(x, out, &src, self.fill(opt(inputs, 2)))])
    }

    fn lower(&self, cx: &LowerCtx) -> Result<Lowering> {
        let x = cx.input(0)?;
        let get = |i| if cx.has_input(i) { cx.const_input(i, "pad operand").map(Some) } else { Ok(None) };
        let (pads, axes) = if self.attr_pads.is_some() { (None, None) } else { (get(1)?, get(3)?) };
        let (begin, out) = self.plan(&x.shape, pads, axes)?;
        let st = strides(&x.shape);
        let mut args = xy_args();
        let mut body = String::new();
        let mut inside = Vec::new();
        let mut terms = Vec::new();
        for d in 0..out.len() {
            let n = x.shape[d] as i64;
            if begin[d] == 0 && out[d] == x.shape[d] {
                terms.push(format!("c{d} * {}u", st[d]));
                continue;
            }
            let s = format!("i32(c{d}) - {}", lit(Phys::I32, begin[d] as f64));
            let s = match self.mode {
                PadMode::Constant => {
                    inside.push(format!("s{d} >= 0 && s{d} < {n}"));
                    s
                }
                PadMode::Edge => format!("clamp({s}, 0, {})", (n - 1).max(0)),
                PadMode::Wrap => format!("pad_wrap({s}, {n})"),
                PadMode::Reflect => format!("pad_reflect({s}, {n})"),
            };
            body += &format!("    let s{d} = {s};\n");
            terms.push(format!("u32(s{d}) * {}u", st[d]));
        }
        let src = lin(terms);
        if inside.is_empty() {
            body += &format!("    st_y(i, ld_x({src}));");
        } else {
            let fill = match (cx.has_input(2), cx.value(2)) {
                (true, None) => {
                    args.push(KernelArg::new("cv", TensorRef::Input(2)));
                    "ld_cv(0u)".to_string()
                }
                (_, v) => lit(x.dtype.phys(), self.fill(v)),
            };
            body += &format!(
                "    if ({}) {{\n        st_y(i, ld_x({src}));\n    }} else {{\n        st_y(i, {fill});\n    }}",
                inside.join(" && ")
            );
        }
        Ok(Lowering::one(map_kernel("pad", args, &out, &body)))
    }
}

// ---------------------------------------------------------------------------
// CenterCropPad

/// CenterCropPad: crops or zero-pads the listed axes (default: all) to the
/// sizes in input 1 (a constant), keeping the content centred; an odd
/// difference puts the extra element at the end.
#[derive(Debug)]
pub struct CenterCropPad {
    pub axes: Option<Vec<i64>>,
}

impl CenterCropPad {
    /// The output shape and, per axis, the signed offset from an output
    /// coordinate to its input coordinate.
    fn plan(&self, x: &[usize], sizes: &Tensor) -> Result<(Vec<usize>, Vec<i64>)> {
        let r = x.len();
        let axes: Vec<usize> = match &self.axes {
            None => (0..r).collect(),
            Some(a) => a.iter().map(|&a| norm_axis(a, r)).collect::<Result<_>>()?,
        };
        let sizes = sizes.to_i64();
        if sizes.len() != axes.len() {
            bail!("shape has {} values for {} axes", sizes.len(), axes.len());
        }
        let (mut shape, mut off) = (x.to_vec(), vec![0i64; r]);
        for (&a, &n) in axes.iter().zip(&sizes) {
            if n < 0 {
                bail!("shape value {n} for axis {a} is negative");
            }
            let d = x[a] as i64;
            // Cropping starts (d - n) / 2 into the input; padding puts the
            // input (n - d) / 2 into the output. Both round down.
            off[a] = if n <= d { (d - n) / 2 } else { -((n - d) / 2) };
            shape[a] = n as usize;
        }
        Ok((shape, off))
    }
}

impl Op for CenterCropPad {
    fn infer(&self, inputs: &[Option<Input>]) -> Result<Vec<TypeInfo>> {
        let x = ty(inputs, 0)?;
        let (shape, _) = self.plan(&x.shape, crate::need_value(inputs, 1, "shape")?)?;
        Ok(vec![TypeInfo::new(x.dtype, shape)])
    }

    fn eval(&self, inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>> {
        let x = arg(inputs, 0)?;
        let (shape, off) = self.plan(&x.shape, arg(inputs, 1)?)?;
        let st = strides(&x.shape);
        let src = map_coords(&shape, |c| {
            let mut e = 0;
            for (d, &cd) in c.iter().enumerate() {
                let s = cd as i64 + off[d];
                if s < 0 || s >= x.shape[d] as i64 {
                    return None;
                }
                e += s as usize * st[d];
            }
            Some(e)
        });
        Ok(vec![take_or(x, shape, &src, 0.0)])
    }

    fn lower(&self, cx: &LowerCtx) -> Result<Lowering> {
        let x = cx.input(0)?;
        let (shape, off) = self.plan(&x.shape, cx.const_input(1, "shape")?)?;
        let st = strides(&x.shape);
        let (mut stmts, mut terms, mut inside) = (String::new(), vec![], vec![]);
        for d in 0..shape.len() {
            if off[d] == 0 && shape[d] <= x.shape[d] {
                // Neither cropped nor padded (or cropped at the end only).
                terms.push(format!("c{d} * {}u", st[d]));
                continue;
            }
            stmts += &format!("    let s{d} = i32(c{d}) + {};\n", off[d]);
            inside.push(format!("s{d} >= 0 && s{d} < {}", x.shape[d]));
            terms.push(format!("u32(s{d}) * {}u", st[d]));
        }
        let zero = lit(x.dtype.phys(), 0.0);
        let body = if inside.is_empty() {
            format!("    st_y(i, ld_x({}));", lin(terms))
        } else {
            format!(
                "{stmts}    if ({}) {{ st_y(i, ld_x({})); }} else {{ st_y(i, {zero}); }}",
                inside.join(" && "),
                lin(terms)
            )
        };
        Ok(Lowering::one(map_kernel("center_crop_pad", xy_args(), &shape, &body)))
    }
}

// ---------------------------------------------------------------------------
// DepthToSpace / SpaceToDepth

/// DepthToSpace and SpaceToDepth on NCHW, in DCR or CRD channel order.
#[derive(Debug)]
pub struct BlockMove {
    pub block: usize,
    pub crd: bool,
    pub to_space: bool,
}

impl BlockMove {
    fn out_shape(&self, x: &[usize]) -> Result<Vec<usize>> {
        let b = self.block;
        let &[n, c, h, w] = x else { bail!("expects a 4-D NCHW input, got {x:?}") };
        if self.to_space {
            if c % (b * b) != 0 {
                bail!("channels {c} are not a multiple of blocksize² {}", b * b);
            }
            Ok(vec![n, c / (b * b), h * b, w * b])
        } else {
            if h % b != 0 || w % b != 0 {
                bail!("spatial size {h}x{w} is not a multiple of blocksize {b}");
            }
            Ok(vec![n, c * b * b, h / b, w / b])
        }
    }

    /// Input element index of output coordinates (n, c, h, w), in the
    /// depth tensor's channel order (DCR: block offset major; CRD: channel
    /// major).
    fn source(&self, x: &[usize], o: [usize; 4]) -> usize {
        let b = self.block;
        let [n, c, h, w] = o;
        let (cin, hin, win) = (x[1], x[2], x[3]);
        let (ch, hh, ww) = if self.to_space {
            let cout = cin / (b * b);
            let (bi, bj) = (h % b, w % b);
            let ch = if self.crd { c * b * b + bi * b + bj } else { (bi * b + bj) * cout + c };
            (ch, h / b, w / b)
        } else {
            let (blk, cc) = if self.crd { (c % (b * b), c / (b * b)) } else { (c / cin, c % cin) };
            (cc, h * b + blk / b, w * b + blk % b)
        };
        ((n * cin + ch) * hin + hh) * win + ww
    }

    fn wgsl_source(&self, x: &[usize]) -> String {
        let b = self.block;
        let (cin, hin, win) = (x[1], x[2], x[3]);
        let (ch, hh, ww) = if self.to_space {
            let cout = cin / (b * b);
            let ch = if self.crd {
                format!("c1 * {}u + (c2 % {b}u) * {b}u + c3 % {b}u", b * b)
            } else {
                format!("((c2 % {b}u) * {b}u + c3 % {b}u) * {cout}u + c1")
            };
            (ch, format!("c2 / {b}u"), format!("c3 / {b}u"))
        } else {
            let (blk, cc) = if self.crd {
                (format!("(c1 % {}u)", b * b), format!("c1 / {}u", b * b))
            } else {
                (format!("(c1 / {cin}u)"), format!("c1 % {cin}u"))
            };
            (cc, format!("c2 * {b}u + {blk} / {b}u"), format!("c3 * {b}u + {blk} % {b}u"))
        };
        format!("((c0 * {cin}u + {ch}) * {hin}u + {hh}) * {win}u + {ww}")
    }
}

impl Op for BlockMove {
    fn infer(&self, inputs: &[Option<Input>]) -> Result<Vec<TypeInfo>> {
        let x = ty(inputs, 0)?;
        Ok(vec![TypeInfo::new(x.dtype, self.out_shape(&x.shape)?)])
    }

    fn eval(&self, inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>> {
        let x = arg(inputs, 0)?;
        let out = self.out_shape(&x.shape)?;
        let src = map_coords(&out, |c| self.source(&x.shape, [c[0], c[1], c[2], c[3]]));
        Ok(vec![take(x, out, &src)])
    }

    fn lower(&self, cx: &LowerCtx) -> Result<Lowering> {
        let x = cx.input(0)?;
        let body = format!("    st_y(i, ld_x({}));", self.wgsl_source(&x.shape));
        let name = if self.to_space { "depth_to_space" } else { "space_to_depth" };
        Ok(Lowering::one(map_kernel(name, xy_args(), &cx.output(0).shape, &body)))
    }
}

// ---------------------------------------------------------------------------
// Trilu, OneHot

/// Trilu: keeps the upper (j - i >= k) or lower (j - i <= k) triangle of
/// the last two dimensions, zeroing the rest.
#[derive(Debug)]
pub struct Trilu {
    pub upper: bool,
}

impl Trilu {
    fn keep(&self, row: usize, col: usize, k: i64) -> bool {
        let d = col as i64 - row as i64;
        if self.upper { d >= k } else { d <= k }
    }
}

fn scalar_k(t: Option<&Tensor>) -> i64 {
    t.and_then(|t| t.to_i64().first().copied()).unwrap_or(0)
}

impl Op for Trilu {
    fn infer(&self, inputs: &[Option<Input>]) -> Result<Vec<TypeInfo>> {
        let x = ty(inputs, 0)?;
        if x.rank() < 2 {
            bail!("Trilu needs rank >= 2, got {:?}", x.shape);
        }
        Ok(vec![x.clone()])
    }

    fn eval(&self, inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>> {
        let x = arg(inputs, 0)?;
        let k = scalar_k(opt(inputs, 1));
        let r = x.rank();
        let src = map_coords(&x.shape, |c| self.keep(c[r - 2], c[r - 1], k));
        let idx: Vec<Option<usize>> = src.iter().enumerate().map(|(e, &keep)| keep.then_some(e)).collect();
        Ok(vec![take_or(x, x.shape.clone(), &idx, 0.0)])
    }

    fn lower(&self, cx: &LowerCtx) -> Result<Lowering> {
        let x = cx.input(0)?;
        let (rows, cols) = (x.shape[x.rank() - 2], x.shape[x.rank() - 1]);
        let mut args = xy_args();
        let k = match (cx.has_input(1), cx.value(1)) {
            // k beyond ±(rows + cols) behaves like the bound; clamping keeps
            // the literal inside i32.
            (_, Some(_)) | (false, _) => {
                let bound = rows as i64 + cols as i64 + 1;
                lit(Phys::I32, scalar_k(cx.value(1)).clamp(-bound, bound) as f64)
            }
            (true, None) => {
                args.push(KernelArg::new("k", TensorRef::Input(1)));
                as_i32("ld_k(0u)", cx.input(1)?.dtype)
            }
        };
        let cmp = if self.upper { ">=" } else { "<=" };
        let zero = lit(x.dtype.phys(), 0.0);
        let body = format!(
            "    let col = i32(i % {}u);\n    let row = i32((i / {}u) % {}u);\n    st_y(i, select({zero}, ld_x(i), col - row {cmp} {k}));",
            cols.max(1),
            cols.max(1),
            rows.max(1),
        );
        Ok(Lowering::one(kernel("trilu", args, x.numel(), "", &body)))
    }
}

/// OneHot: inserts a `depth` axis; on_value where the index matches,
/// off_value elsewhere (negative indices count from `depth`).
#[derive(Debug)]
pub struct OneHot {
    pub axis: i64,
}

impl OneHot {
    fn plan(&self, ind: &[usize], depth: Option<&Tensor>) -> Result<(usize, usize, Vec<usize>)> {
        let Some(depth) = depth else { return Err(Error::needs_value(1, "depth")) };
        let d = depth.to_f64().first().copied().unwrap_or(0.0);
        if d < 1.0 {
            bail!("OneHot depth {d} must be positive");
        }
        let d = d as usize;
        let r = ind.len() as i64;
        let axis = if self.axis < 0 { self.axis + r + 1 } else { self.axis };
        if !(0..=r).contains(&axis) {
            bail!("axis {} is out of range for rank {}", self.axis, r + 1);
        }
        let axis = axis as usize;
        let shape = [&ind[..axis], &[d], &ind[axis..]].concat();
        Ok((axis, d, shape))
    }
}

impl Op for OneHot {
    fn infer(&self, inputs: &[Option<Input>]) -> Result<Vec<TypeInfo>> {
        let (ind, vals) = (ty(inputs, 0)?, ty(inputs, 2)?);
        let (_, _, shape) = self.plan(&ind.shape, value(inputs, 1))?;
        Ok(vec![TypeInfo::new(vals.dtype, shape)])
    }

    fn eval(&self, inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>> {
        let (ind, vals) = (arg(inputs, 0)?, arg(inputs, 2)?);
        let (axis, depth, shape) = self.plan(&ind.shape, opt(inputs, 1))?;
        let inner = numel(&ind.shape[axis..]);
        let k = ind.to_i64();
        let src: Vec<usize> = (0..numel(&shape))
            .map(|e| {
                let (o, j, r) = (e / (depth * inner), (e / inner) % depth, e % inner);
                let v = k[o * inner + r];
                let v = if v < 0 { v + depth as i64 } else { v };
                usize::from(v == j as i64)
            })
            .collect();
        Ok(vec![take(vals, shape, &src)])
    }

    fn lower(&self, cx: &LowerCtx) -> Result<Lowering> {
        let ind = cx.input(0)?;
        let (axis, depth, _) = self.plan(&ind.shape, Some(cx.const_input(1, "depth")?))?;
        let inner = numel(&ind.shape[axis..]);
        let k = as_i32(&format!("ld_ind(o * {inner}u + i % {inner}u)"), ind.dtype);
        let body = format!(
            "    let o = i / {}u;\n    let j = i32((i / {inner}u) % {depth}u);\n    let k0 = {k};\n    let k = select(k0, k0 + {depth}, k0 < 0);\n    st_y(i, select(ld_v(0u), ld_v(1u), k == j));",
            depth * inner
        );
        let args = vec![
            KernelArg::new("ind", TensorRef::Input(0)),
            KernelArg::new("v", TensorRef::Input(2)),
            KernelArg::new("y", TensorRef::Output(0)),
        ];
        Ok(Lowering::one(kernel("onehot", args, cx.output(0).numel(), "", &body)))
    }
}

// ---------------------------------------------------------------------------
// CumSum, ReverseSequence

/// CumSum and CumProd: running sums (products) along an axis, optionally
/// exclusive and/or from the end.
#[derive(Debug)]
pub struct Cumulative {
    pub product: bool,
    pub exclusive: bool,
    pub reverse: bool,
}

impl Cumulative {
    fn name(&self) -> &'static str {
        if self.product { "cumprod" } else { "cumsum" }
    }

    /// WGSL folding element `v` into the accumulator `acc`.
    fn fold_wgsl(&self, v: &str) -> String {
        if self.product { format!("acc = acc * {v};") } else { format!("acc = acc + {v};") }
    }
}

fn cumsum_axis(axis: Option<&Tensor>, rank: usize) -> Result<usize> {
    let Some(a) = axis else { return Err(Error::needs_value(1, "axis")) };
    norm_axis(scalar_k(Some(a)), rank)
}

impl Op for Cumulative {
    fn infer(&self, inputs: &[Option<Input>]) -> Result<Vec<TypeInfo>> {
        let x = ty(inputs, 0)?;
        ty(inputs, 1)?;
        if let Some(a) = value(inputs, 1) {
            cumsum_axis(Some(a), x.rank())?;
        }
        Ok(vec![x.clone()])
    }

    fn eval(&self, inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>> {
        let x = arg(inputs, 0)?;
        let axis = cumsum_axis(opt(inputs, 1), x.rank())?;
        let (outer, len, inner) = around(&x.shape, axis);
        let order = |k: usize| if self.reverse { len - 1 - k } else { k };
        // Integers accumulate exactly as i64 (wrapping), floats as f64;
        // both round at the end.
        let float = x.dtype.is_float();
        let (fv, iv) = (x.to_f64(), x.to_i64());
        let (mut fo, mut io) = (vec![0.0; x.len()], vec![0i64; x.len()]);
        let (f_id, i_id) = if self.product { (1.0, 1i64) } else { (0.0, 0i64) };
        let fold = |fa: &mut f64, ia: &mut i64, e: usize| {
            if self.product {
                *fa *= fv[e];
                *ia = ia.wrapping_mul(iv[e]);
            } else {
                *fa += fv[e];
                *ia = ia.wrapping_add(iv[e]);
            }
        };
        for line in 0..outer * inner {
            let base = (line / inner) * len * inner + line % inner;
            let (mut fa, mut ia) = (f_id, i_id);
            for k in 0..len {
                let e = base + order(k) * inner;
                if !self.exclusive {
                    fold(&mut fa, &mut ia, e);
                }
                fo[e] = fa;
                io[e] = ia;
                if self.exclusive {
                    fold(&mut fa, &mut ia, e);
                }
            }
        }
        Ok(vec![if float {
            Tensor::from_f64(x.dtype, x.shape.clone(), fo)
        } else {
            Tensor::from_i64(x.dtype, x.shape.clone(), io)
        }])
    }

    fn lower(&self, cx: &LowerCtx) -> Result<Lowering> {
        let x = cx.input(0)?;
        let Some(axis) = cx.value(1) else { return self.lower_dynamic(cx) };
        let axis = cumsum_axis(Some(axis), x.rank())?;
        let (outer, len, inner) = around(&x.shape, axis);
        let t = x.dtype.phys().wgsl();
        let e = if self.reverse {
            format!("base + ({}u - k) * {inner}u", len.max(1) - 1)
        } else {
            format!("base + k * {inner}u")
        };
        let fold = format!("        {}\n", self.fold_wgsl("ld_x(e)"));
        let (pre, post) = if self.exclusive { ("", fold.as_str()) } else { (fold.as_str(), "") };
        // One thread per line along the axis: a sequential scan.
        let body = format!(
            "    let base = (i / {inner}u) * {}u + i % {inner}u;\n    var acc = {t}({});\n    for (var k = 0u; k < {len}u; k++) {{\n        let e = {e};\n{pre}        st_y(e, acc);\n{post}    }}",
            len * inner,
            self.product as u8
        );
        Ok(Lowering::one(kernel(self.name(), xy_args(), outer * inner, "", &body)))
    }
}

impl Cumulative {
    /// The axis known only at run time: one thread per element folds its
    /// prefix (or suffix) along the axis, found in baked dims and strides.
    fn lower_dynamic(&self, cx: &LowerCtx) -> Result<Lowering> {
        let x = cx.input(0)?;
        let r = x.rank();
        if r == 0 {
            bail!("{} needs rank >= 1", self.name());
        }
        let list = |v: &[usize]| v.iter().map(|d| format!("{d}u")).collect::<Vec<_>>().join(", ");
        let t = x.dtype.phys().wgsl();
        let (lo, hi) = match (self.reverse, self.exclusive) {
            (false, false) => ("0u", "pos + 1u"),
            (false, true) => ("0u", "pos"),
            (true, false) => ("pos", "n"),
            (true, true) => ("pos + 1u", "n"),
        };
        let a = as_i32("ld_ax(0u)", cx.input(1)?.dtype);
        let body = format!(
            "    var dims = array<u32, {r}>({});\n    var strd = array<u32, {r}>({});\n    let a0 = {a};\n    let ax = u32(clamp(select(a0, a0 + {r}, a0 < 0), 0, {}));\n    let n = dims[ax];\n    let st = strd[ax];\n    let pos = (i / st) % n;\n    let base = i - pos * st;\n    var acc = {t}({});\n    for (var k = {lo}; k < {hi}; k++) {{\n        {}\n    }}\n    st_y(i, acc);",
            list(&x.shape),
            list(&strides(&x.shape)),
            r - 1,
            self.product as u8,
            self.fold_wgsl("ld_x(base + k * st)")
        );
        let mut args = xy_args();
        args.push(KernelArg::new("ax", TensorRef::Input(1)));
        Ok(Lowering::one(kernel(self.name(), args, x.numel(), "", &body)))
    }
}

/// ReverseSequence: reverses the first `seq_lens[b]` steps along the time
/// axis of each batch entry.
#[derive(Debug)]
pub struct ReverseSequence {
    pub batch_axis: usize,
    pub time_axis: usize,
}

impl Op for ReverseSequence {
    fn infer(&self, inputs: &[Option<Input>]) -> Result<Vec<TypeInfo>> {
        let x = ty(inputs, 0)?;
        let (b, t) = (self.batch_axis, self.time_axis);
        if x.rank() < 2 || b == t || b > 1 || t > 1 {
            bail!("batch_axis {b} and time_axis {t} must be 0 and 1 in some order for shape {:?}", x.shape);
        }
        ty(inputs, 1)?;
        Ok(vec![x.clone()])
    }

    fn eval(&self, inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>> {
        let (x, lens) = (arg(inputs, 0)?, arg(inputs, 1)?);
        infer_host(self, inputs)?;
        let (lens, st) = (lens.to_i64(), strides(&x.shape));
        let (ta, ba) = (self.time_axis, self.batch_axis);
        let mut e = 0;
        let src = map_coords(&x.shape, |c| {
            let (t, len) = (c[ta] as i64, lens[c[ba]].clamp(0, x.shape[ta] as i64));
            let s = if t < len { e - c[ta] * st[ta] + (len - 1 - t) as usize * st[ta] } else { e };
            e += 1;
            s
        });
        Ok(vec![take(x, x.shape.clone(), &src)])
    }

    fn lower(&self, cx: &LowerCtx) -> Result<Lowering> {
        let (x, lens) = (cx.input(0)?, cx.input(1)?);
        let (ta, ba) = (self.time_axis, self.batch_axis);
        let st = strides(&x.shape)[ta];
        let len = as_i32(&format!("ld_len(c{ba})"), lens.dtype);
        let body = format!(
            "    let len = clamp({len}, 0, {});\n    let t = i32(c{ta});\n    let src = select(i, u32(i32(i) + (len - 1 - 2 * t) * {st}), t < len);\n    st_y(i, ld_x(src));",
            x.shape[ta]
        );
        let args = vec![
            KernelArg::new("x", TensorRef::Input(0)),
            KernelArg::new("len", TensorRef::Input(1)),
            KernelArg::new("y", TensorRef::Output(0)),
        ];
        Ok(Lowering::one(map_kernel("reverse_sequence", args, &x.shape, &body)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Attr;
    use crate::testing::*;

    fn run(op: &str, a: Attrs, opset: i64, inputs: &[Option<&Tensor>]) -> Vec<Tensor> {
        build(op, &a, opset).unwrap().eval(inputs).unwrap()
    }

    fn iota(shape: Vec<usize>) -> Tensor {
        let n = numel(&shape);
        Tensor::from_f32(shape, (0..n).map(|v| v as f32).collect())
    }

    fn ints(v: &[i64]) -> Tensor {
        Tensor::i64_vec(v.to_vec())
    }

    #[test]
    fn transpose_default_and_perm() {
        let x = iota(vec![2, 3]);
        let y = &run("Transpose", Attrs::default(), 13, &[Some(&x)])[0];
        assert_eq!(y.shape, vec![3, 2]);
        assert_eq!(y.to_f64(), vec![0.0, 3.0, 1.0, 4.0, 2.0, 5.0]);
        let x = iota(vec![2, 3, 4]);
        let y = &run("Transpose", attrs(vec![("perm", Attr::Ints(vec![1, 2, 0]))]), 13, &[Some(&x)])[0];
        assert_eq!(y.shape, vec![3, 4, 2]);
        // y[1,2,1] = x[1,1,2] = 12 + 4 + 2.
        assert_eq!(y.to_f64()[8 + 4 + 1], 18.0);
    }

    #[test]
    fn concat_and_split_roundtrip() {
        let a = iota(vec![2, 2]);
        let b = Tensor::from_f32(vec![2, 1], vec![10.0, 11.0]);
        let y = &run("Concat", attrs(vec![("axis", Attr::Int(-1))]), 13, &[Some(&a), Some(&b)])[0];
        assert_eq!(y.shape, vec![2, 3]);
        assert_eq!(y.to_f64(), vec![0.0, 1.0, 10.0, 2.0, 3.0, 11.0]);
        let split = ints(&[2, 1]);
        let parts = run("Split", attrs(vec![("axis", Attr::Int(1))]), 13, &[Some(y), Some(&split)]);
        assert_eq!(parts, vec![a.clone(), b]);
        // opset 18 num_outputs: parts of ceil(5/3) = 2, the last one smaller.
        let x = iota(vec![5]);
        let parts = run("Split", attrs(vec![("num_outputs", Attr::Int(3))]), 18, &[Some(&x)]);
        let got: Vec<Vec<f64>> = parts.iter().map(|t| t.to_f64()).collect();
        assert_eq!(got, vec![vec![0.0, 1.0], vec![2.0, 3.0], vec![4.0]]);
        let old = attrs(vec![("split", Attr::Ints(vec![1, 4]))]);
        assert_eq!(run("Split", old, 11, &[Some(&x)])[1].to_f64(), vec![1.0, 2.0, 3.0, 4.0]);
        let z = ints(&[0, 5]);
        assert_eq!(run("Split", Attrs::default(), 13, &[Some(&x), Some(&z)])[0].shape, vec![0]);
    }

    #[test]
    fn slice_steps_and_clamps() {
        let x = iota(vec![3, 4]);
        let s = |st: &[i64], en: &[i64], ax: &[i64], sp: &[i64]| {
            let (a, b, c, d) = (ints(st), ints(en), ints(ax), ints(sp));
            run("Slice", Attrs::default(), 13, &[Some(&x), Some(&a), Some(&b), Some(&c), Some(&d)])[0].clone()
        };
        let y = s(&[1, 0], &[2, 3], &[0, 1], &[1, 2]);
        assert_eq!((y.shape.clone(), y.to_f64()), (vec![1, 2], vec![4.0, 6.0]));
        let y = s(&[-1], &[i64::MIN], &[1], &[-1]);
        assert_eq!(y.shape, vec![3, 4]);
        assert_eq!(y.to_f64()[..4], [3.0, 2.0, 1.0, 0.0]);
        let y = s(&[10], &[1000], &[0], &[1]);
        assert_eq!(y.shape, vec![0, 4]);
        let y = s(&[0], &[i64::MAX], &[-1], &[3]);
        assert_eq!(y.to_f64(), vec![0.0, 3.0, 4.0, 7.0, 8.0, 11.0]);
        let old =
            attrs(vec![("starts", Attr::Ints(vec![1])), ("ends", Attr::Ints(vec![-1])), ("axes", Attr::Ints(vec![1]))]);
        assert_eq!(run("Slice", old, 1, &[Some(&x)])[0].to_f64(), vec![1.0, 2.0, 5.0, 6.0, 9.0, 10.0]);
    }

    #[test]
    fn gathers() {
        let x = iota(vec![3, 2]);
        let k = Tensor::from_i64(DType::I64, vec![2, 2], vec![0, -1, 1, 0]);
        let y = &run("Gather", Attrs::default(), 13, &[Some(&x), Some(&k)])[0];
        assert_eq!(y.shape, vec![2, 2, 2]);
        assert_eq!(y.to_f64(), vec![0.0, 1.0, 4.0, 5.0, 2.0, 3.0, 0.0, 1.0]);
        let k1 = ints(&[1]);
        let y = &run("Gather", attrs(vec![("axis", Attr::Int(1))]), 13, &[Some(&x), Some(&k1)])[0];
        assert_eq!((y.shape.clone(), y.to_f64()), (vec![3, 1], vec![1.0, 3.0, 5.0]));

        // onnx test_gather_elements_negative_indices.
        let x = iota(vec![3, 3]);
        let k = Tensor::from_i64(DType::I64, vec![2, 3], vec![-1, -2, 0, -2, 0, 0]);
        let y = &run("GatherElements", Attrs::default(), 13, &[Some(&x), Some(&k)])[0];
        assert_eq!(y.to_f64(), vec![6.0, 4.0, 2.0, 3.0, 1.0, 2.0]);

        // onnx test_gathernd_example_int32_batch_dim1.
        let x = Tensor::from_i64(DType::I32, vec![2, 2, 2], (0..8).collect());
        let k = Tensor::from_i64(DType::I64, vec![2, 1], vec![1, 0]);
        let y = &run("GatherND", attrs(vec![("batch_dims", Attr::Int(1))]), 13, &[Some(&x), Some(&k)])[0];
        assert_eq!((y.shape.clone(), y.to_i64()), (vec![2, 2], vec![2, 3, 4, 5]));
        let k = Tensor::from_i64(DType::I64, vec![2, 2], vec![0, 0, 1, 1]);
        let y = &run("GatherND", Attrs::default(), 13, &[Some(&x), Some(&k)])[0];
        assert_eq!((y.shape.clone(), y.to_i64()), (vec![2, 2], vec![0, 1, 6, 7]));
    }

    #[test]
    fn tile_repeats() {
        let x = iota(vec![2, 2]);
        let r = ints(&[1, 2]);
        let y = &run("Tile", Attrs::default(), 13, &[Some(&x), Some(&r)])[0];
        assert_eq!(y.to_f64(), vec![0.0, 1.0, 0.0, 1.0, 2.0, 3.0, 2.0, 3.0]);
    }

    #[test]
    fn pad_modes() {
        let x = Tensor::from_f32(vec![3], vec![1.0, 2.0, 3.0]);
        let pad = |mode: &str, p: &[i64]| {
            let a = attrs(vec![("mode", Attr::Str(mode.into()))]);
            let (pt, cv) = (ints(p), Tensor::scalar_f64(DType::F32, 9.0));
            run("Pad", a, 13, &[Some(&x), Some(&pt), Some(&cv)])[0].to_f64()
        };
        assert_eq!(pad("constant", &[2, 1]), vec![9.0, 9.0, 1.0, 2.0, 3.0, 9.0]);
        assert_eq!(pad("reflect", &[5, 0]), vec![2.0, 1.0, 2.0, 3.0, 2.0, 1.0, 2.0, 3.0]);
        assert_eq!(pad("edge", &[2, 2]), vec![1.0, 1.0, 1.0, 2.0, 3.0, 3.0, 3.0]);
        assert_eq!(pad("wrap", &[2, 4]), vec![2.0, 3.0, 1.0, 2.0, 3.0, 1.0, 2.0, 3.0, 1.0]);
        assert_eq!(pad("constant", &[-1, 1]), vec![2.0, 3.0, 9.0]);
        // opset 2 attributes, axes input of opset 18.
        let a = attrs(vec![("pads", Attr::Ints(vec![0, 1, 0, 0])), ("value", Attr::Float(-1.0))]);
        let m = iota(vec![2, 2]);
        assert_eq!(run("Pad", a, 2, &[Some(&m)])[0].to_f64(), vec![-1.0, 0.0, 1.0, -1.0, 2.0, 3.0]);
        let (pt, ax) = (ints(&[1, 0]), ints(&[-2]));
        let y = &run("Pad", Attrs::default(), 18, &[Some(&m), Some(&pt), None, Some(&ax)])[0];
        assert_eq!((y.shape.clone(), y.to_f64()), (vec![3, 2], vec![0.0, 0.0, 0.0, 1.0, 2.0, 3.0]));
    }

    #[test]
    fn depth_space() {
        // numpy: x = arange(8).reshape(1, 8, 1, 1), blocksize 2.
        let x = iota(vec![1, 8, 1, 1]);
        let bs = |mode: &str| attrs(vec![("blocksize", Attr::Int(2)), ("mode", Attr::Str(mode.into()))]);
        let y = &run("DepthToSpace", bs("DCR"), 13, &[Some(&x)])[0];
        assert_eq!(y.shape, vec![1, 2, 2, 2]);
        assert_eq!(y.to_f64(), vec![0.0, 2.0, 4.0, 6.0, 1.0, 3.0, 5.0, 7.0]);
        let y = &run("DepthToSpace", bs("CRD"), 13, &[Some(&x)])[0];
        assert_eq!(y.to_f64(), vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]);
        // SpaceToDepth inverts DepthToSpace (DCR).
        let s = iota(vec![1, 2, 2, 2]);
        let d = &run("SpaceToDepth", bs("DCR"), 13, &[Some(&s)])[0];
        assert_eq!(d.to_f64(), vec![0.0, 4.0, 1.0, 5.0, 2.0, 6.0, 3.0, 7.0]);
        assert_eq!(&run("DepthToSpace", bs("DCR"), 13, &[Some(d)])[0], &s);
        let d = &run("SpaceToDepth", bs("CRD"), 13, &[Some(&s)])[0];
        assert_eq!(&run("DepthToSpace", bs("CRD"), 13, &[Some(d)])[0], &s);
    }

    #[test]
    fn trilu_and_onehot() {
        let x = iota(vec![3, 3]);
        let k = Tensor::from_i64(DType::I64, vec![], vec![1]);
        let y = &run("Trilu", Attrs::default(), 14, &[Some(&x), Some(&k)])[0];
        assert_eq!(y.to_f64(), vec![0.0, 1.0, 2.0, 0.0, 0.0, 5.0, 0.0, 0.0, 0.0]);
        let y = &run("Trilu", attrs(vec![("upper", Attr::Int(0))]), 14, &[Some(&x)])[0];
        assert_eq!(y.to_f64(), vec![0.0, 0.0, 0.0, 3.0, 4.0, 0.0, 6.0, 7.0, 8.0]);

        let ind = Tensor::from_i64(DType::I64, vec![3], vec![0, -1, 5]);
        let depth = Tensor::from_i64(DType::I64, vec![], vec![3]);
        let vals = Tensor::from_f32(vec![2], vec![-1.0, 7.0]);
        let y = &run("OneHot", Attrs::default(), 11, &[Some(&ind), Some(&depth), Some(&vals)])[0];
        assert_eq!(y.shape, vec![3, 3]);
        assert_eq!(y.to_f64(), vec![7.0, -1.0, -1.0, -1.0, -1.0, 7.0, -1.0, -1.0, -1.0]);
        let y = &run("OneHot", attrs(vec![("axis", Attr::Int(0))]), 11, &[Some(&ind), Some(&depth), Some(&vals)])[0];
        assert_eq!(y.to_f64(), vec![7.0, -1.0, -1.0, -1.0, -1.0, -1.0, -1.0, 7.0, -1.0]);
    }

    #[test]
    fn cumsum_variants() {
        let x = Tensor::from_f32(vec![5], vec![1.0, 2.0, 3.0, 4.0, 5.0]);
        let ax = Tensor::from_i64(DType::I32, vec![], vec![0]);
        let c = |e: i64, r: i64| {
            let a = attrs(vec![("exclusive", Attr::Int(e)), ("reverse", Attr::Int(r))]);
            run("CumSum", a, 14, &[Some(&x), Some(&ax)])[0].to_f64()
        };
        assert_eq!(c(0, 0), vec![1.0, 3.0, 6.0, 10.0, 15.0]);
        assert_eq!(c(1, 0), vec![0.0, 1.0, 3.0, 6.0, 10.0]);
        assert_eq!(c(0, 1), vec![15.0, 14.0, 12.0, 9.0, 5.0]);
        assert_eq!(c(1, 1), vec![14.0, 12.0, 9.0, 5.0, 0.0]);
        let m = Tensor::from_i64(DType::I32, vec![2, 3], vec![1, 2, 3, 4, 5, 6]);
        let ax = Tensor::from_i64(DType::I64, vec![], vec![-1]);
        assert_eq!(run("CumSum", Attrs::default(), 14, &[Some(&m), Some(&ax)])[0].to_i64(), vec![1, 3, 6, 4, 9, 15]);
    }

    // Expected values: onnx.reference.ReferenceEvaluator on the same inputs.
    #[test]
    fn cumprod_variants() {
        let x = Tensor::from_f32(vec![5], vec![1.0, 2.0, 3.0, 4.0, 5.0]);
        let ax = Tensor::from_i64(DType::I32, vec![], vec![0]);
        let c = |e: i64, r: i64| {
            let a = attrs(vec![("exclusive", Attr::Int(e)), ("reverse", Attr::Int(r))]);
            run("CumProd", a, 26, &[Some(&x), Some(&ax)])[0].to_f64()
        };
        assert_eq!(c(0, 0), vec![1.0, 2.0, 6.0, 24.0, 120.0]);
        assert_eq!(c(0, 1), vec![120.0, 120.0, 60.0, 20.0, 5.0]);
        assert_eq!(c(1, 0), vec![1.0, 1.0, 2.0, 6.0, 24.0]);
        assert_eq!(c(1, 1), vec![120.0, 60.0, 20.0, 5.0, 1.0]);
        let m = Tensor::from_i64(DType::I32, vec![2, 3], vec![1, 2, 3, 4, 5, 6]);
        let last = Tensor::from_i64(DType::I64, vec![], vec![-1]);
        assert_eq!(
            run("CumProd", Attrs::default(), 26, &[Some(&m), Some(&last)])[0].to_i64(),
            vec![1, 2, 6, 4, 20, 120]
        );
        let first = Tensor::from_i64(DType::I64, vec![], vec![0]);
        let a = attrs(vec![("exclusive", Attr::Int(1))]);
        assert_eq!(run("CumProd", a, 26, &[Some(&m), Some(&first)])[0].to_i64(), vec![1, 1, 1, 1, 2, 3]);
    }

    #[test]
    fn center_crop_pad() {
        let x = iota(vec![3, 5]);
        // Pad 3 -> 6 rows (1 before, 2 after), crop 5 -> 2 columns from 1.
        let y = &run("CenterCropPad", Attrs::default(), 18, &[Some(&x), Some(&ints(&[6, 2]))])[0];
        assert_eq!(y.shape, vec![6, 2]);
        assert_eq!(y.to_f64(), vec![0.0, 0.0, 1.0, 2.0, 6.0, 7.0, 11.0, 12.0, 0.0, 0.0, 0.0, 0.0]);
        let a = attrs(vec![("axes", Attr::Ints(vec![-1]))]);
        let y = &run("CenterCropPad", a, 18, &[Some(&x), Some(&ints(&[4]))])[0];
        assert_eq!(y.shape, vec![3, 4]);
        assert_eq!(y.to_f64(), vec![0.0, 1.0, 2.0, 3.0, 5.0, 6.0, 7.0, 8.0, 10.0, 11.0, 12.0, 13.0]);
    }

    #[test]
    fn reverse_sequence() {
        // onnx test_reversesequence_time: time_axis 0, batch_axis 1.
        let x = iota(vec![4, 4]);
        let lens = ints(&[4, 3, 2, 1]);
        let a = attrs(vec![("time_axis", Attr::Int(0)), ("batch_axis", Attr::Int(1))]);
        let y = &run("ReverseSequence", a, 10, &[Some(&x), Some(&lens)])[0];
        let want = [12.0, 9.0, 6.0, 3.0, 8.0, 5.0, 2.0, 7.0, 4.0, 1.0, 10.0, 11.0, 0.0, 13.0, 14.0, 15.0];
        assert_eq!(y.to_f64(), want);
    }
}
