//! Scatter ops: ScatterElements (and the legacy Scatter of opsets 9-10, the
//! same op without reductions) and ScatterND, each with reduction none, add,
//! mul, max or min.
//!
//! GPU: a first kernel copies `data` to the output, a second applies the
//! updates. Updates that may hit the same output element run serially on
//! one thread in the reference's order, so reductions are deterministic
//! and race-free:
//! - ScatterElements: an update's target differs from the update's own
//!   coordinates only along `axis`, so updates on different *lines* (all
//!   coordinates but `axis`) never collide. One thread per line walks it.
//! - ScatterND: index tuple `t` selects a slice of the output, and slice
//!   element `s` of every tuple lands at offset `s` of its slice; so one
//!   thread per slice element walks all tuples. With reduction none,
//!   duplicate tuples are undefined behaviour per the spec, and every update
//!   element gets its own thread instead.
//!
//! Negative indices count from the end of their axis. Out-of-range indices
//! are invalid models: the CPU reference rejects them, kernels clamp them to
//! stay in bounds.

use crate::families::movement::kernel;
use crate::wgsl::strides;
use crate::{
    Attrs, DType, Error, Input, KernelArg, LowerCtx, Lowering, Op, Phys, Result, Tensor, TensorRef, TypeInfo, arg,
    bail, norm_axis, numel, ty,
};

/// How an update combines with the element it lands on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reduction {
    None,
    Add,
    Mul,
    Max,
    Min,
}

impl Reduction {
    fn parse(a: &Attrs) -> Result<Reduction> {
        Ok(match a.str("reduction", "none")? {
            "none" => Reduction::None,
            "add" => Reduction::Add,
            "mul" => Reduction::Mul,
            "max" => Reduction::Max,
            "min" => Reduction::Min,
            r => bail!("attribute 'reduction' must be none, add, mul, max or min, got '{r}'"),
        })
    }

    /// CPU: the new value of element `old` receiving update `u`.
    fn apply_f64(self, old: f64, u: f64) -> f64 {
        match self {
            Reduction::None => u,
            Reduction::Add => old + u,
            Reduction::Mul => old * u,
            Reduction::Max => old.max(u),
            Reduction::Min => old.min(u),
        }
    }

    fn apply_i64(self, old: i64, u: i64) -> i64 {
        match self {
            Reduction::None => u,
            Reduction::Add => old.wrapping_add(u),
            Reduction::Mul => old.wrapping_mul(u),
            Reduction::Max => old.max(u),
            Reduction::Min => old.min(u),
        }
    }

    /// WGSL: the new value of element `o` receiving update `u`.
    fn wgsl(self) -> &'static str {
        match self {
            Reduction::None => "u",
            Reduction::Add => "o + u",
            Reduction::Mul => "o * u",
            Reduction::Max => "max(o, u)",
            Reduction::Min => "min(o, u)",
        }
    }
}

/// Builds a scatter op.
pub fn build(op_type: &str, a: &Attrs, _opset: i64) -> Result<Box<dyn Op>> {
    Ok(match op_type {
        "ScatterElements" => Box::new(ScatterElements { axis: a.int("axis", 0)?, reduction: Reduction::parse(a)? }),
        // Scatter (opsets 9-10) is ScatterElements without reductions.
        "Scatter" => Box::new(ScatterElements { axis: a.int("axis", 0)?, reduction: Reduction::None }),
        "ScatterND" => Box::new(ScatterNd { reduction: Reduction::parse(a)? }),
        _ => return Err(Error::unsupported(op_type.to_string())),
    })
}

// ---------------------------------------------------------------------------
// Shared pieces

/// WGSL helpers: wrapping and clamping an index into `0..n`.
const HELPERS: &str = "
fn wrap_idx(k: i32, n: i32) -> u32 {
    // Negative indices count from the end; out-of-range ones are clamped.
    return u32(clamp(select(k, k + n, k < 0), 0, max(n - 1, 0)));
}
";

/// Checks the index operand's type and that updates match data's type.
fn check_types(data: &TypeInfo, indices: &TypeInfo, updates: &TypeInfo) -> Result<()> {
    if !matches!(indices.dtype, DType::I32 | DType::I64) {
        bail!("indices must be int32 or int64, got {}", indices.dtype);
    }
    if updates.dtype != data.dtype {
        bail!("updates are {} but data is {}", updates.dtype, data.dtype);
    }
    Ok(())
}

/// CPU: a possibly negative index wrapped into `0..n`, or an error.
fn wrap_checked(k: i64, n: usize) -> Result<usize> {
    let w = if k < 0 { k + n as i64 } else { k };
    if w < 0 || w >= n as i64 {
        bail!("index {k} is out of range for an axis of size {n}");
    }
    Ok(w as usize)
}

/// CPU: `data` with `updates[u]` combined into element `targets[u]`, in
/// order. Floats combine as f64, integers as i64, each rounded back.
fn scatter_host(data: &Tensor, updates: &Tensor, targets: &[usize], red: Reduction) -> Tensor {
    if data.dtype.is_float() {
        let (mut out, u) = (data.to_f64(), updates.to_f64());
        targets.iter().zip(u).for_each(|(&t, u)| out[t] = red.apply_f64(out[t], u));
        Tensor::from_f64(data.dtype, data.shape.clone(), out)
    } else {
        let (mut out, u) = (data.to_i64(), updates.to_i64());
        targets.iter().zip(u).for_each(|(&t, u)| out[t] = red.apply_i64(out[t], u));
        Tensor::from_i64(data.dtype, data.shape.clone(), out)
    }
}

/// The kernel copying `data` (input 0) to the output.
fn copy_kernel(n: usize) -> crate::Kernel {
    let args = vec![KernelArg::new("x", TensorRef::Input(0)), KernelArg::new("y", TensorRef::Output(0))];
    kernel("scatter_copy", args, n, "", "    st_y(i, ld_x(i));")
}

/// Arguments of the update kernel: indices, updates, output.
fn update_args() -> Vec<KernelArg> {
    vec![
        KernelArg::new("k", TensorRef::Input(1)),
        KernelArg::new("u", TensorRef::Input(2)),
        KernelArg::new("y", TensorRef::Output(0)),
    ]
}

/// WGSL reading index element `e` as i32.
fn ld_index(e: &str, dtype: DType) -> String {
    if dtype.phys() == Phys::I32 { format!("ld_k({e})") } else { format!("i32(ld_k({e}))") }
}

fn tyof(t: &Tensor) -> TypeInfo {
    TypeInfo::new(t.dtype, t.shape.clone())
}

// ---------------------------------------------------------------------------
// ScatterElements

/// ScatterElements: `out[.., indices[c], ..] (op)= updates[c]` for every
/// coordinate `c` of `indices`, the index replacing coordinate `axis`.
#[derive(Debug)]
pub struct ScatterElements {
    pub axis: i64,
    pub reduction: Reduction,
}

impl ScatterElements {
    /// Checks shapes; returns the normalized axis.
    fn check(&self, data: &TypeInfo, indices: &TypeInfo, updates: &TypeInfo) -> Result<usize> {
        check_types(data, indices, updates)?;
        let axis = norm_axis(self.axis, data.rank())?;
        if indices.rank() != data.rank() || updates.shape != indices.shape {
            bail!(
                "indices {:?} and updates {:?} must have one shape of data's rank {}",
                indices.shape,
                updates.shape,
                data.rank()
            );
        }
        if (0..data.rank()).any(|d| d != axis && indices.shape[d] > data.shape[d]) {
            bail!("indices {:?} exceed data {:?} off axis {axis}", indices.shape, data.shape);
        }
        Ok(axis)
    }
}

impl Op for ScatterElements {
    fn infer(&self, inputs: &[Option<Input>]) -> Result<Vec<TypeInfo>> {
        let data = ty(inputs, 0)?;
        self.check(data, ty(inputs, 1)?, ty(inputs, 2)?)?;
        Ok(vec![data.clone()])
    }

    fn eval(&self, inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>> {
        let (data, indices, updates) = (arg(inputs, 0)?, arg(inputs, 1)?, arg(inputs, 2)?);
        let axis = self.check(&tyof(data), &tyof(indices), &tyof(updates))?;
        let ds = strides(&data.shape);
        let k = indices.to_i64();
        let mut targets = Vec::with_capacity(k.len());
        for (e, &kv) in k.iter().enumerate() {
            // Coordinates of update e, with the index along the axis.
            let mut rem = e;
            let mut t = 0;
            for d in (0..indices.rank()).rev() {
                let c = rem % indices.shape[d];
                rem /= indices.shape[d];
                let c = if d == axis { wrap_checked(kv, data.shape[d])? } else { c };
                t += c * ds[d];
            }
            targets.push(t);
        }
        Ok(vec![scatter_host(data, updates, &targets, self.reduction)])
    }

    fn lower(&self, cx: &LowerCtx) -> Result<Lowering> {
        let (data, indices) = (cx.input(0)?, cx.input(1)?);
        let axis = self.check(data, indices, cx.input(2)?)?;
        let (is, ds) = (strides(&indices.shape), strides(&data.shape));
        let len = indices.shape[axis];
        let lines = indices.numel().checked_div(len).unwrap_or(0);
        // Line coordinates: every axis but `axis`, row-major.
        let mut line_off = String::new();
        let (mut u_base, mut y_base) = (vec!["0u".to_string()], vec!["0u".to_string()]);
        let mut inner = 1;
        for d in (0..indices.rank()).rev().filter(|&d| d != axis) {
            let n = indices.shape[d];
            line_off += &format!("    let c{d} = (i / {inner}u) % {n}u;\n");
            u_base.push(format!("c{d} * {}u", is[d]));
            y_base.push(format!("c{d} * {}u", ds[d]));
            inner *= n;
        }
        let body = format!(
            "{line_off}    let ub = {};\n    let yb = {};\n    for (var j = 0u; j < {len}u; j++) {{\n        let e = ub + j * {}u;\n        let t = yb + wrap_idx({}, {}) * {}u;\n        let o = ld_y(t);\n        let u = ld_u(e);\n        st_y(t, {});\n    }}",
            u_base.join(" + "),
            y_base.join(" + "),
            is[axis],
            ld_index("e", indices.dtype),
            data.shape[axis],
            ds[axis],
            self.reduction.wgsl(),
        );
        let kernels = vec![copy_kernel(data.numel()), kernel("scatter_elements", update_args(), lines, HELPERS, &body)];
        Ok(Lowering::Kernels { temps: vec![], kernels })
    }
}

// ---------------------------------------------------------------------------
// ScatterND

/// ScatterND: index tuple `indices[t, :]` (the last axis of `indices` holds
/// `q` coordinates) selects a slice of `data.shape[q..]`, which `updates[t]`
/// combines into.
#[derive(Debug)]
pub struct ScatterNd {
    pub reduction: Reduction,
}

/// ScatterND's problem sizes.
struct NdDims {
    /// Coordinates per tuple.
    q: usize,
    /// Number of tuples.
    tuples: usize,
    /// Elements per slice.
    slice: usize,
}

impl ScatterNd {
    fn check(&self, data: &TypeInfo, indices: &TypeInfo, updates: &TypeInfo) -> Result<NdDims> {
        check_types(data, indices, updates)?;
        let Some((&q, lead)) = indices.shape.split_last() else { bail!("indices must have rank >= 1") };
        if q > data.rank() {
            bail!("index tuples of length {q} exceed data's rank {}", data.rank());
        }
        let want = [lead, &data.shape[q..]].concat();
        if updates.shape != want {
            bail!(
                "updates have shape {:?}, data {:?} and indices {:?} need {want:?}",
                updates.shape,
                data.shape,
                indices.shape
            );
        }
        Ok(NdDims { q, tuples: numel(lead), slice: numel(&data.shape[q..]) })
    }
}

impl Op for ScatterNd {
    fn infer(&self, inputs: &[Option<Input>]) -> Result<Vec<TypeInfo>> {
        let data = ty(inputs, 0)?;
        self.check(data, ty(inputs, 1)?, ty(inputs, 2)?)?;
        Ok(vec![data.clone()])
    }

    fn eval(&self, inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>> {
        let (data, indices, updates) = (arg(inputs, 0)?, arg(inputs, 1)?, arg(inputs, 2)?);
        let NdDims { q, tuples, slice } = self.check(&tyof(data), &tyof(indices), &tyof(updates))?;
        let (ds, k) = (strides(&data.shape), indices.to_i64());
        let mut targets = Vec::with_capacity(tuples * slice);
        for t in 0..tuples {
            let mut base = 0;
            for j in 0..q {
                base += wrap_checked(k[t * q + j], data.shape[j])? * ds[j];
            }
            targets.extend((0..slice).map(|s| base + s));
        }
        Ok(vec![scatter_host(data, updates, &targets, self.reduction)])
    }

    fn lower(&self, cx: &LowerCtx) -> Result<Lowering> {
        let (data, indices) = (cx.input(0)?, cx.input(1)?);
        let NdDims { q, tuples, slice } = self.check(data, indices, cx.input(2)?)?;
        let ds = strides(&data.shape);
        let mut base = vec!["0u".to_string()];
        for (j, (&n, &st)) in data.shape.iter().zip(&ds).take(q).enumerate() {
            let k = ld_index(&format!("t * {q}u + {j}u"), indices.dtype);
            base.push(format!("wrap_idx({k}, {n}) * {st}u"));
        }
        let base = base.join(" + ");
        let apply = format!(
            "        let y_at = {base} + s;\n        let o = ld_y(y_at);\n        let u = ld_u(t * {slice}u + s);\n        st_y(y_at, {});\n",
            self.reduction.wgsl()
        );
        let update = if self.reduction == Reduction::None {
            // One thread per update element (duplicate tuples are undefined).
            let body = format!("    let t = i / {slice}u;\n    let s = i % {slice}u;\n    {{\n{apply}    }}");
            kernel("scatter_nd", update_args(), tuples * slice, HELPERS, &body)
        } else {
            // One thread per slice element, walking the tuples in order.
            let body = format!("    let s = i;\n    for (var t = 0u; t < {tuples}u; t++) {{\n{apply}    }}");
            kernel("scatter_nd_reduce", update_args(), if tuples == 0 { 0 } else { slice }, HELPERS, &body)
        };
        Ok(Lowering::Kernels { temps: vec![], kernels: vec![copy_kernel(data.numel()), update] })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Attr;

    fn run(op: &str, axis: i64, reduction: &str, data: &Tensor, k: &Tensor, u: &Tensor) -> Result<Tensor> {
        let a = [("axis", Attr::Int(axis)), ("reduction", Attr::Str(reduction.into()))];
        let a = Attrs(a.into_iter().map(|(n, v)| (n.to_string(), v)).collect());
        Ok(build(op, &a, 18)?.eval(&[Some(data), Some(k), Some(u)])?.remove(0))
    }

    fn f32s(shape: Vec<usize>, v: &[f32]) -> Tensor {
        Tensor::from_f32(shape, v.to_vec())
    }

    /// Float results agree with the reference's f32 arithmetic to rounding.
    fn close(got: &Tensor, want: &[f64]) {
        let g = got.to_f64();
        assert!(
            g.len() == want.len() && g.iter().zip(want).all(|(a, b)| (a - b).abs() <= 1e-6 * b.abs().max(1.0)),
            "{g:?}"
        );
    }

    fn i64s(shape: Vec<usize>, v: &[i64]) -> Tensor {
        Tensor::from_i64(DType::I64, shape, v.to_vec())
    }

    // Expected values: onnx.reference.ReferenceEvaluator on the same inputs.
    #[test]
    fn scatter_elements_axes_reductions_and_negative_indices() {
        let data = f32s(vec![1, 5], &[1.0, 2.0, 3.0, 4.0, 5.0]);
        let k = i64s(vec![1, 2], &[1, 1]);
        let u = f32s(vec![1, 2], &[1.1, 2.1]);
        let add = run("ScatterElements", 1, "add", &data, &k, &u).unwrap();
        close(&add, &[1.0, 5.2, 3.0, 4.0, 5.0]);
        let mul = run("ScatterElements", 1, "mul", &data, &k, &u).unwrap();
        close(&mul, &[1.0, 4.62, 3.0, 4.0, 5.0]);
        let neg = i64s(vec![1, 2], &[1, -3]);
        let none = run("ScatterElements", 1, "none", &data, &neg, &u).unwrap();
        assert_eq!(none.to_f64(), f32s(vec![5], &[1.0, 1.1, 2.1, 4.0, 5.0]).to_f64());

        // Axis 0 of a 3x3 matrix (the ONNX spec's first example).
        let data = f32s(vec![3, 3], &[0.0; 9]);
        let k = i64s(vec![2, 3], &[1, 0, 2, 0, 2, 1]);
        let u = f32s(vec![2, 3], &[1.0, 1.1, 1.2, 2.0, 2.1, 2.2]);
        let y = run("Scatter", 0, "none", &data, &k, &u).unwrap();
        let want = f32s(vec![9], &[2.0, 1.1, 0.0, 1.0, 0.0, 2.2, 0.0, 2.1, 1.2]);
        assert_eq!(y.to_f64(), want.to_f64());

        let bad = i64s(vec![1, 2], &[1, 5]);
        let data = f32s(vec![1, 5], &[0.0; 5]);
        assert!(run("ScatterElements", 1, "none", &data, &bad, &f32s(vec![1, 2], &[0.0; 2])).is_err());
    }

    #[test]
    fn scatter_nd_slices_and_reductions() {
        // Element tuples with a duplicate: max keeps the larger update.
        let data = f32s(vec![2, 2], &[1.0, 2.0, 3.0, 4.0]);
        let k = i64s(vec![2, 2], &[0, 0, 0, 0]);
        let u = f32s(vec![2], &[5.0, 0.5]);
        let y = run("ScatterND", 0, "max", &data, &k, &u).unwrap();
        assert_eq!(y.to_f64(), vec![5.0, 2.0, 3.0, 4.0]);
        let y = run("ScatterND", 0, "min", &data, &k, &u).unwrap();
        assert_eq!(y.to_f64(), vec![0.5, 2.0, 3.0, 4.0]);

        // Row tuples of an int32 matrix, adding twice into row -1.
        let data = Tensor::from_i64(DType::I32, vec![3, 2], vec![1, 2, 3, 4, 5, 6]);
        let k = i64s(vec![2, 1], &[-1, 2]);
        let u = Tensor::from_i64(DType::I32, vec![2, 2], vec![10, 20, 30, 40]);
        let y = run("ScatterND", 0, "add", &data, &k, &u).unwrap();
        assert_eq!(y.to_i64(), vec![1, 2, 3, 4, 45, 66]);
        let y = run("ScatterND", 0, "mul", &data, &k, &u).unwrap();
        assert_eq!(y.to_i64(), vec![1, 2, 3, 4, 1500, 4800]);
        let y = run(
            "ScatterND",
            0,
            "none",
            &data,
            &i64s(vec![1, 1], &[0]),
            &Tensor::from_i64(DType::I32, vec![1, 2], vec![7, 8]),
        )
        .unwrap();
        assert_eq!(y.to_i64(), vec![7, 8, 3, 4, 5, 6]);
        assert!(run("ScatterND", 0, "none", &data, &i64s(vec![1, 1], &[0]), &u).is_err());
    }
}
