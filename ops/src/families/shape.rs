//! Shape ops: views that only reinterpret a tensor's shape (Reshape,
//! Flatten, Squeeze, Unsqueeze, Identity, Dropout at inference), shape
//! queries (Shape, Size), and generators whose output depends on nothing but
//! attributes or constant operands (Constant, ConstantOfShape, Range,
//! EyeLike) plus Expand.
//!
//! Design: views lower to `Lowering::Alias`, so they cost nothing at run
//! time (Dropout too, unless its mask is wanted or it may train). Shape and
//! Size fold from types alone (`fold_from_types`); the generators are
//! normally folded by the compiler through `eval`, but each still has a
//! small kernel so an unfolded node stays runnable. Shape operands
//! (Reshape's shape, Squeeze's axes, ...) must be compile-time constants:
//! every shape is concrete.

use crate::families::elementwise::broadcast_shapes;
use crate::families::movement::{kernel, map_kernel, take, xy_args};
use crate::wgsl::{f32_lit, lit};
use crate::{
    Attr, Attrs, DType, Data, Error, Input, KernelArg, LowerCtx, Lowering, Op, Result, Tensor, TensorRef, TypeInfo,
    arg, bail, numel, ty, unsupported, value,
};

/// Builds a shape op from its ONNX type, attributes and opset.
pub fn build(op_type: &str, a: &Attrs, opset: i64) -> Result<Box<dyn Op>> {
    Ok(match op_type {
        "Reshape" => Box::new(Reshape {
            attr_shape: if opset < 5 { a.ints_opt("shape")?.map(<[i64]>::to_vec) } else { None },
            allowzero: a.int("allowzero", 0)? != 0,
        }),
        "Flatten" => Box::new(Flatten { axis: a.int("axis", 1)? }),
        "Squeeze" => Box::new(Squeeze { attr_axes: axes_attr(a, opset)? }),
        "Unsqueeze" => Box::new(Unsqueeze { attr_axes: axes_attr(a, opset)? }),
        "Identity" => Box::new(Identity),
        // Before opset 7 `is_test = 0` asked for training; this compiler
        // runs inference, so those graphs get the inference behaviour too.
        "Dropout" => Box::new(Dropout { seed: a.int_opt("seed")?.map(|s| s as u32) }),
        "Shape" => Box::new(ShapeOp { start: a.int("start", 0)?, end: a.int_opt("end")? }),
        "Size" => Box::new(SizeOp),
        "Constant" => Box::new(Constant { value: constant_value(a)? }),
        "ConstantOfShape" => {
            let v = match a.tensor_opt("value")? {
                Some(t) if t.len() == 1 => t.reshaped(vec![])?,
                Some(t) => bail!("ConstantOfShape's value must have one element, it has {}", t.len()),
                None => Tensor::scalar_f64(DType::F32, 0.0),
            };
            Box::new(ConstantOfShape { value: v })
        }
        "Expand" => Box::new(Expand),
        "Range" => Box::new(Range),
        "EyeLike" => {
            let dtype = a.int_opt("dtype")?.map(|d| DType::from_onnx(d as i32)).transpose()?;
            Box::new(EyeLike { k: a.int("k", 0)?, dtype })
        }
        _ => return Err(Error::unsupported(op_type.to_string())),
    })
}

/// Squeeze/Unsqueeze axes: an attribute before opset 13, an input after.
fn axes_attr(a: &Attrs, opset: i64) -> Result<Option<Vec<i64>>> {
    Ok(if opset < 13 { a.ints_opt("axes")?.map(<[i64]>::to_vec) } else { None })
}

/// A shape operand the shape rule needs: from the attribute if the opset
/// has one, else from constant input `i`.
fn const_ints(inputs: &[Option<Input>], attr: &Option<Vec<i64>>, i: usize, what: &str) -> Result<Option<Vec<i64>>> {
    if let Some(v) = attr {
        return Ok(Some(v.clone()));
    }
    if inputs.get(i).copied().flatten().is_none() {
        return Ok(None);
    }
    match value(inputs, i) {
        Some(t) => Ok(Some(t.to_i64())),
        None => Err(Error::needs_value(i, what)),
    }
}

/// Wraps an `Option<&Tensor>` list as shape-rule inputs, so CPU references
/// reuse the shape rules.
fn typed<'a>(inputs: &[Option<&'a Tensor>], tys: &'a [Option<TypeInfo>]) -> Vec<Option<Input<'a>>> {
    inputs.iter().zip(tys).map(|(t, ty)| ty.as_ref().map(|ty| Input { ty, value: *t })).collect()
}

fn types_of(inputs: &[Option<&Tensor>]) -> Vec<Option<TypeInfo>> {
    inputs.iter().map(|t| t.map(|t| TypeInfo::new(t.dtype, t.shape.clone()))).collect()
}

/// Runs a view's shape rule and relabels input 0's values with its shape.
fn eval_view(op: &dyn Op, inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>> {
    let tys = types_of(inputs);
    let out = op.infer(&typed(inputs, &tys))?;
    Ok(vec![arg(inputs, 0)?.reshaped(out[0].shape.clone())?])
}

/// Reshape: output takes the target shape; 0 copies the input's dimension
/// (unless `allowzero`), -1 takes what is left.
#[derive(Debug)]
pub struct Reshape {
    /// The `shape` attribute of opset 1..4.
    pub attr_shape: Option<Vec<i64>>,
    pub allowzero: bool,
}

/// Resolves a Reshape target against the input shape.
pub fn reshape_target(input: &[usize], spec: &[i64], allowzero: bool) -> Result<Vec<usize>> {
    let mut out = Vec::with_capacity(spec.len());
    let mut infer_at = None;
    for (d, &s) in spec.iter().enumerate() {
        match s {
            0 if !allowzero => match input.get(d) {
                Some(&n) => out.push(n),
                None => bail!("shape {spec:?} copies dimension {d}, the input {input:?} has no such dimension"),
            },
            -1 if infer_at.is_none() => {
                infer_at = Some(d);
                out.push(1);
            }
            s if s >= 0 => out.push(s as usize),
            _ => bail!("shape {spec:?} has an invalid dimension {s}"),
        }
    }
    let total = numel(input);
    if let Some(d) = infer_at {
        let rest = numel(&out);
        if rest == 0 || !total.is_multiple_of(rest) {
            bail!("cannot reshape {input:?} to {spec:?}");
        }
        out[d] = total / rest;
    }
    if numel(&out) != total {
        bail!("cannot reshape {input:?} ({total} elements) to {spec:?}");
    }
    Ok(out)
}

impl Op for Reshape {
    fn infer(&self, inputs: &[Option<Input>]) -> Result<Vec<TypeInfo>> {
        let x = ty(inputs, 0)?;
        let Some(spec) = const_ints(inputs, &self.attr_shape, 1, "shape")? else { bail!("Reshape needs a shape") };
        Ok(vec![TypeInfo::new(x.dtype, reshape_target(&x.shape, &spec, self.allowzero)?)])
    }

    fn eval(&self, inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>> {
        eval_view(self, inputs)
    }

    fn lower(&self, _cx: &LowerCtx) -> Result<Lowering> {
        Ok(Lowering::Alias)
    }
}

/// Flatten: a 2-D view [prod(dims before axis), prod(dims from axis)].
#[derive(Debug)]
pub struct Flatten {
    pub axis: i64,
}

impl Op for Flatten {
    fn infer(&self, inputs: &[Option<Input>]) -> Result<Vec<TypeInfo>> {
        let x = ty(inputs, 0)?;
        let r = x.rank() as i64;
        let a = if self.axis < 0 { self.axis + r } else { self.axis };
        if !(0..=r).contains(&a) {
            bail!("axis {} is out of range for rank {r}", self.axis);
        }
        let (lo, hi) = x.shape.split_at(a as usize);
        Ok(vec![TypeInfo::new(x.dtype, vec![numel(lo), numel(hi)])])
    }

    fn eval(&self, inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>> {
        eval_view(self, inputs)
    }

    fn lower(&self, _cx: &LowerCtx) -> Result<Lowering> {
        Ok(Lowering::Alias)
    }
}

/// Normalizes axes against `rank`, rejecting repeats.
fn norm_axes(axes: &[i64], rank: usize) -> Result<Vec<usize>> {
    let mut out = Vec::with_capacity(axes.len());
    for &a in axes {
        let n = crate::norm_axis(a, rank)?;
        if out.contains(&n) {
            bail!("axis {a} is repeated in {axes:?}");
        }
        out.push(n);
    }
    Ok(out)
}

/// Squeeze: drops the listed dimensions of size 1 (all of them if none
/// are listed).
#[derive(Debug)]
pub struct Squeeze {
    pub attr_axes: Option<Vec<i64>>,
}

impl Op for Squeeze {
    fn infer(&self, inputs: &[Option<Input>]) -> Result<Vec<TypeInfo>> {
        let x = ty(inputs, 0)?;
        let shape = match const_ints(inputs, &self.attr_axes, 1, "axes")? {
            None => x.shape.iter().copied().filter(|&d| d != 1).collect(),
            Some(axes) => {
                let axes = norm_axes(&axes, x.rank())?;
                if let Some(&a) = axes.iter().find(|&&a| x.shape[a] != 1) {
                    bail!("cannot squeeze axis {a} of size {} in {:?}", x.shape[a], x.shape);
                }
                x.shape.iter().enumerate().filter(|(d, _)| !axes.contains(d)).map(|(_, &n)| n).collect()
            }
        };
        Ok(vec![TypeInfo::new(x.dtype, shape)])
    }

    fn eval(&self, inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>> {
        eval_view(self, inputs)
    }

    fn lower(&self, _cx: &LowerCtx) -> Result<Lowering> {
        Ok(Lowering::Alias)
    }
}

/// Unsqueeze: inserts dimensions of size 1 at the listed output axes.
#[derive(Debug)]
pub struct Unsqueeze {
    pub attr_axes: Option<Vec<i64>>,
}

impl Op for Unsqueeze {
    fn infer(&self, inputs: &[Option<Input>]) -> Result<Vec<TypeInfo>> {
        let x = ty(inputs, 0)?;
        let Some(axes) = const_ints(inputs, &self.attr_axes, 1, "axes")? else { bail!("Unsqueeze needs axes") };
        let rank = x.rank() + axes.len();
        let axes = norm_axes(&axes, rank)?;
        let mut rest = x.shape.iter();
        let shape = (0..rank).map(|d| if axes.contains(&d) { 1 } else { *rest.next().unwrap_or(&1) }).collect();
        Ok(vec![TypeInfo::new(x.dtype, shape)])
    }

    fn eval(&self, inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>> {
        eval_view(self, inputs)
    }

    fn lower(&self, _cx: &LowerCtx) -> Result<Lowering> {
        Ok(Lowering::Alias)
    }
}

/// Identity: output 0 is input 0.
#[derive(Debug)]
pub struct Identity;

impl Op for Identity {
    fn infer(&self, inputs: &[Option<Input>]) -> Result<Vec<TypeInfo>> {
        Ok(vec![ty(inputs, 0)?.clone()])
    }

    fn eval(&self, inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>> {
        Ok(vec![arg(inputs, 0)?.clone()])
    }

    fn lower(&self, _cx: &LowerCtx) -> Result<Lowering> {
        Ok(Lowering::Alias)
    }
}

/// Dropout: at inference (no `training_mode`, or false, or ratio 0)
/// output 0 is input 0 and the optional mask (output 1) is all true.
/// In training mode it drops elements at random and scales the kept ones
/// by 1 / (1 - ratio). With a `seed`, the draws are numpy's
/// `RandomState(seed).uniform` (what onnx's reference uses), baked into the
/// kernel for small tensors; otherwise a counter-based hash of the element
/// index. `ratio` and `training_mode` may be known only at run time; the
/// kernel then decides per run.
#[derive(Debug)]
pub struct Dropout {
    pub seed: Option<u32>,
}

/// Most draws baked into a Dropout kernel; larger tensors use the hash.
const MAX_BAKED_DRAWS: usize = 4096;

/// Dropout's default ratio.
const DROP_RATIO: f64 = 0.5;

/// A uniform value in [0, 1) for element `i`: the PCG output permutation
/// of a scrambled index. `DROP_HASH_WGSL` is the same function on the GPU.
fn drop_hash(i: u32, seed: u32) -> f64 {
    let mut h = i.wrapping_mul(747796405).wrapping_add(2891336453).wrapping_add(seed.wrapping_mul(2654435769));
    h = ((h >> ((h >> 28) + 4)) ^ h).wrapping_mul(277803737);
    h = (h >> 22) ^ h;
    (h >> 8) as f64 / 16777216.0
}

const DROP_HASH_WGSL: &str = "
fn drop_hash(i: u32, seed: u32) -> f32 {
    var h = i * 747796405u + 2891336453u + seed * 2654435769u;
    h = ((h >> ((h >> 28u) + 4u)) ^ h) * 277803737u;
    h = (h >> 22u) ^ h;
    return f32(h >> 8u) / 16777216.0;
}
";

/// numpy's legacy `RandomState(seed).uniform(0, 1, n)`: MT19937 seeded by
/// `init_genrand`, 53-bit doubles from pairs of 32-bit outputs.
fn numpy_uniform(seed: u32, n: usize) -> Vec<f64> {
    const N: usize = 624;
    let mut mt = [0u32; N];
    mt[0] = seed;
    for i in 1..N {
        mt[i] = 1812433253u32.wrapping_mul(mt[i - 1] ^ (mt[i - 1] >> 30)).wrapping_add(i as u32);
    }
    let mut idx = N;
    let mut next = move || {
        if idx >= N {
            for k in 0..N {
                let y = (mt[k] & 0x8000_0000) | (mt[(k + 1) % N] & 0x7fff_ffff);
                mt[k] = mt[(k + 397) % N] ^ (y >> 1) ^ if y & 1 != 0 { 0x9908_b0df } else { 0 };
            }
            idx = 0;
        }
        let mut y = mt[idx];
        idx += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    };
    (0..n)
        .map(|_| {
            let (a, b) = (next() >> 5, next() >> 6);
            (a as f64 * 67108864.0 + b as f64) / 9007199254740992.0
        })
        .collect()
}

impl Dropout {
    /// The uniform draw of every element.
    fn draws(&self, n: usize) -> Vec<f64> {
        match self.seed {
            Some(seed) => numpy_uniform(seed, n),
            None => (0..n).map(|i| drop_hash(i as u32, 0)).collect(),
        }
    }

    /// WGSL statements defining `u`, element i's draw.
    fn wgsl_draw(&self, n: usize) -> String {
        match self.seed {
            Some(seed) if n <= MAX_BAKED_DRAWS => {
                let bits: Vec<String> =
                    numpy_uniform(seed, n).iter().map(|&u| format!("{}u", (u as f32).to_bits())).collect();
                format!("    var draws = array<u32, {n}>({});\n    let u = bitcast<f32>(draws[i]);\n", bits.join(", "))
            }
            seed => format!("    let u = drop_hash(i, {}u);\n", seed.unwrap_or(0)),
        }
    }

    /// (training, ratio) when both are known; None where one is a
    /// run-time value.
    fn mode(ratio: Option<Option<&Tensor>>, training: Option<Option<&Tensor>>) -> Option<(bool, f64)> {
        let first = |t: &Tensor| t.to_f64().first().copied().unwrap_or(0.0);
        let training = match training {
            None => false,
            Some(t) => first(t?) != 0.0,
        };
        if !training {
            // The ratio does not matter at inference, known or not.
            return Some((false, DROP_RATIO));
        }
        let ratio = match ratio {
            None => DROP_RATIO,
            Some(t) => first(t?),
        };
        Some((training, ratio))
    }
}

impl Op for Dropout {
    fn infer(&self, inputs: &[Option<Input>]) -> Result<Vec<TypeInfo>> {
        let x = ty(inputs, 0)?.clone();
        let mask = TypeInfo::new(DType::Bool, x.shape.clone());
        Ok(vec![x, mask])
    }

    fn eval(&self, inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>> {
        let x = arg(inputs, 0)?;
        let get = |i: usize| inputs.get(i).copied().flatten().map(Some);
        let (training, ratio) = Dropout::mode(get(1), get(2)).expect("every input is known here");
        if !training || ratio == 0.0 {
            let mask = Tensor::from_i64(DType::Bool, x.shape.clone(), vec![1; x.len()]);
            return Ok(vec![x.clone(), mask]);
        }
        let keep: Vec<bool> = self.draws(x.len()).iter().map(|&u| u >= ratio).collect();
        let scale = 1.0 / (1.0 - ratio);
        let y = x.to_f64().iter().zip(&keep).map(|(&v, &k)| if k { v * scale } else { 0.0 }).collect();
        let mask = keep.iter().map(|&k| k as i64).collect();
        Ok(vec![Tensor::from_f64(x.dtype, x.shape.clone(), y), Tensor::from_i64(DType::Bool, x.shape.clone(), mask)])
    }

    fn lower(&self, cx: &LowerCtx) -> Result<Lowering> {
        // An omitted mask output has a placeholder type, not bool.
        let want_mask = cx.outputs.get(1).is_some_and(|m| m.dtype == DType::Bool);
        let known = |i: usize| cx.has_input(i).then(|| cx.value(i));
        let mut args = xy_args();
        if want_mask {
            args.push(KernelArg::new("m", TensorRef::Output(1)));
        }
        let n = cx.output(0).numel();
        let body = match Dropout::mode(known(1), known(2)) {
            Some((false, _)) | Some((_, 0.0)) if !want_mask => return Ok(Lowering::Alias),
            // The mask is wanted too: a view cannot also write it, so copy.
            Some((false, _)) | Some((_, 0.0)) => "    st_y(i, ld_x(i));\n    st_m(i, 1u);".to_string(),
            _ => {
                let ratio = match known(1) {
                    None => f32_lit(DROP_RATIO as f32),
                    Some(Some(t)) => f32_lit(t.to_f64().first().copied().unwrap_or(0.0) as f32),
                    Some(None) => {
                        args.push(KernelArg::new("r", TensorRef::Input(1)));
                        "ld_r(0u)".into()
                    }
                };
                let training = match known(2) {
                    Some(None) => {
                        args.push(KernelArg::new("t", TensorRef::Input(2)));
                        "ld_t(0u) != 0u".to_string()
                    }
                    _ => "true".into(),
                };
                let mut b = format!(
                    "{}    let r = {ratio};\n    let drop = ({training}) && r != 0.0;\n    let keep = !drop || u >= r;\n    let scale = select(1.0, 1.0 / (1.0 - r), drop);\n    st_y(i, select(0.0, ld_x(i) * scale, keep));",
                    self.wgsl_draw(n)
                );
                if want_mask {
                    b += "\n    st_m(i, select(0u, 1u, keep));";
                }
                b
            }
        };
        Ok(Lowering::one(kernel("dropout", args, n, DROP_HASH_WGSL, &body)))
    }
}

/// Kernel writing the known value `t` into output 0: the fallback when
/// the compiler did not fold a value known at compile time.
fn literal_lowering(t: &Tensor) -> Result<Lowering> {
    const MAX: usize = 4096;
    if t.len() > MAX {
        unsupported!("a computed constant of {} elements (more than {MAX}) must be folded", t.len());
    }
    let words = t.to_phys_words()?;
    let ty = t.dtype.phys().wgsl();
    let body = if words.is_empty() {
        format!("    st_y(i, {ty}());")
    } else {
        let list: Vec<String> = words.iter().map(|w| format!("{w}u")).collect();
        // A function-scope `var` so the array may be indexed at run time.
        format!(
            "    var vals = array<u32, {}>({});\n    st_y(i, bitcast<{ty}>(vals[i]));",
            words.len(),
            list.join(", ")
        )
    };
    let args = vec![KernelArg::new("y", TensorRef::Output(0))];
    Ok(Lowering::one(kernel("literal", args, t.len(), "", &body)))
}

/// Shape: the input's dimensions `start..end` as int64.
#[derive(Debug)]
pub struct ShapeOp {
    pub start: i64,
    pub end: Option<i64>,
}

impl ShapeOp {
    fn value(&self, shape: &[usize]) -> Tensor {
        let r = shape.len() as i64;
        let clamp = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r) as usize;
        let (s, e) = (clamp(self.start), clamp(self.end.unwrap_or(r)));
        let dims = if s < e { &shape[s..e] } else { &[][..] };
        Tensor::i64_vec(dims.iter().map(|&d| d as i64).collect())
    }
}

impl Op for ShapeOp {
    fn infer(&self, inputs: &[Option<Input>]) -> Result<Vec<TypeInfo>> {
        let v = self.value(&ty(inputs, 0)?.shape);
        Ok(vec![TypeInfo::new(DType::I64, v.shape)])
    }

    fn eval(&self, inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>> {
        Ok(vec![self.value(&arg(inputs, 0)?.shape)])
    }

    fn fold_from_types(&self, inputs: &[Option<Input>]) -> Option<Vec<Tensor>> {
        Some(vec![self.value(&ty(inputs, 0).ok()?.shape)])
    }

    fn lower(&self, cx: &LowerCtx) -> Result<Lowering> {
        literal_lowering(&self.value(&cx.input(0)?.shape))
    }
}

/// Size: the input's element count as an int64 scalar.
#[derive(Debug)]
pub struct SizeOp;

fn size_value(shape: &[usize]) -> Tensor {
    Tensor::from_i64(DType::I64, vec![], vec![numel(shape) as i64])
}

impl Op for SizeOp {
    fn infer(&self, inputs: &[Option<Input>]) -> Result<Vec<TypeInfo>> {
        ty(inputs, 0)?;
        Ok(vec![TypeInfo::new(DType::I64, vec![])])
    }

    fn eval(&self, inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>> {
        Ok(vec![size_value(&arg(inputs, 0)?.shape)])
    }

    fn fold_from_types(&self, inputs: &[Option<Input>]) -> Option<Vec<Tensor>> {
        Some(vec![size_value(&ty(inputs, 0).ok()?.shape)])
    }

    fn lower(&self, cx: &LowerCtx) -> Result<Lowering> {
        literal_lowering(&size_value(&cx.input(0)?.shape))
    }
}

/// Constant's value from whichever `value*` attribute the node has.
fn constant_value(a: &Attrs) -> Result<Tensor> {
    let mut found = a.0.iter().filter(|(k, _)| k.starts_with("value") || k.as_str() == "sparse_value");
    let Some((name, attr)) = found.next() else { bail!("Constant has no value attribute") };
    if found.next().is_some() {
        bail!("Constant must have exactly one value attribute");
    }
    Ok(match (name.as_str(), attr) {
        ("value", Attr::Tensor(t)) => t.clone(),
        ("value_float", Attr::Float(v)) => Tensor::from_f32(vec![], vec![*v]),
        ("value_floats", Attr::Floats(v)) => Tensor::from_f32(vec![v.len()], v.clone()),
        ("value_int", Attr::Int(v)) => Tensor::from_i64(DType::I64, vec![], vec![*v]),
        ("value_ints", Attr::Ints(v)) => Tensor::i64_vec(v.clone()),
        (name, _) => unsupported!("Constant with attribute '{name}'"),
    })
}

/// Constant: a value given by attribute.
#[derive(Debug)]
pub struct Constant {
    pub value: Tensor,
}

impl Op for Constant {
    fn infer(&self, _inputs: &[Option<Input>]) -> Result<Vec<TypeInfo>> {
        Ok(vec![TypeInfo::new(self.value.dtype, self.value.shape.clone())])
    }

    fn eval(&self, _inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>> {
        Ok(vec![self.value.clone()])
    }

    fn fold_from_types(&self, _inputs: &[Option<Input>]) -> Option<Vec<Tensor>> {
        Some(vec![self.value.clone()])
    }

    fn lower(&self, _cx: &LowerCtx) -> Result<Lowering> {
        literal_lowering(&self.value)
    }
}

/// Reads a shape operand (non-negative int64 dims).
fn dims_of(v: &[i64], what: &str) -> Result<Vec<usize>> {
    v.iter()
        .map(|&d| usize::try_from(d).map_err(|_| Error::msg(format!("{what} {v:?} has a negative dimension"))))
        .collect()
}

/// ConstantOfShape: a tensor of the given shape filled with one value.
#[derive(Debug)]
pub struct ConstantOfShape {
    /// Scalar fill value; its type is the output's.
    pub value: Tensor,
}

impl Op for ConstantOfShape {
    fn infer(&self, inputs: &[Option<Input>]) -> Result<Vec<TypeInfo>> {
        let Some(shape) = const_ints(inputs, &None, 0, "shape")? else { bail!("ConstantOfShape needs a shape") };
        Ok(vec![TypeInfo::new(self.value.dtype, dims_of(&shape, "shape")?)])
    }

    fn eval(&self, inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>> {
        let shape = dims_of(&arg(inputs, 0)?.to_i64(), "shape")?;
        let n = numel(&shape);
        // Built directly: the light CNN models fill their weights this way,
        // so n reaches 10^8.
        let data = match &self.value.data {
            Data::F32(v) => Data::F32(vec![v[0]; n]),
            Data::F64(v) => Data::F64(vec![v[0]; n]),
            Data::I64(v) => Data::I64(vec![v[0]; n]),
        };
        Ok(vec![Tensor { dtype: self.value.dtype, shape, data }])
    }

    fn lower(&self, cx: &LowerCtx) -> Result<Lowering> {
        let v = lit(self.value.dtype.phys(), self.value.to_f64()[0]);
        let args = vec![KernelArg::new("y", TensorRef::Output(0))];
        Ok(Lowering::one(kernel("fill", args, cx.output(0).numel(), "", &format!("    st_y(i, {v});"))))
    }
}

/// Expand: broadcasts the input to a shape (numpy rules, both ways).
#[derive(Debug)]
pub struct Expand;

impl Op for Expand {
    fn infer(&self, inputs: &[Option<Input>]) -> Result<Vec<TypeInfo>> {
        let x = ty(inputs, 0)?;
        let Some(shape) = const_ints(inputs, &None, 1, "shape")? else { bail!("Expand needs a shape") };
        let shape = dims_of(&shape, "shape")?;
        Ok(vec![TypeInfo::new(x.dtype, broadcast_shapes(&[&x.shape, &shape])?)])
    }

    fn eval(&self, inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>> {
        let x = arg(inputs, 0)?;
        let shape = dims_of(&arg(inputs, 1)?.to_i64(), "shape")?;
        let out = broadcast_shapes(&[&x.shape, &shape])?;
        let src = crate::families::elementwise::broadcast_indices(&out, &x.shape, numel(&out));
        Ok(vec![take(x, out, &src)])
    }

    fn lower(&self, cx: &LowerCtx) -> Result<Lowering> {
        let (x, out) = (cx.input(0)?, &cx.output(0).shape);
        let src = crate::wgsl::broadcast_index("c", out, &x.shape);
        Ok(Lowering::one(map_kernel("expand", xy_args(), out, &format!("    st_y(i, ld_x({src}));"))))
    }
}

/// Range: `start + i * delta` for i in 0..max(ceil((limit - start) / delta), 0).
#[derive(Debug)]
pub struct Range;

/// The element count and (start, delta) of a Range, from its three scalars.
fn range_params(start: &Tensor, limit: &Tensor, delta: &Tensor) -> Result<(usize, f64, f64)> {
    let one = |t: &Tensor, what: &str| match t.len() {
        1 => Ok(()),
        n => Err(Error::msg(format!("Range's {what} must be a scalar, it has {n} elements"))),
    };
    one(start, "start")?;
    one(limit, "limit")?;
    one(delta, "delta")?;
    let n = if start.dtype.is_float() {
        let (s, l, d) = (start.to_f64()[0], limit.to_f64()[0], delta.to_f64()[0]);
        if d == 0.0 {
            bail!("Range's delta is 0");
        }
        ((l - s) / d).ceil().max(0.0) as usize
    } else {
        let (s, l, d) = (start.to_i64()[0], limit.to_i64()[0], delta.to_i64()[0]);
        if d == 0 {
            bail!("Range's delta is 0");
        }
        let span = l - s;
        // Integer ceil division keeps exactness for large int64 spans.
        let q = span / d + i64::from(span % d != 0 && (span < 0) == (d < 0));
        q.max(0) as usize
    };
    Ok((n, start.to_f64()[0], delta.to_f64()[0]))
}

impl Op for Range {
    fn infer(&self, inputs: &[Option<Input>]) -> Result<Vec<TypeInfo>> {
        let dtype = ty(inputs, 0)?.dtype;
        let vals: Vec<&Tensor> = (0..3)
            .map(|i| value(inputs, i).ok_or_else(|| Error::needs_value(i, ["start", "limit", "delta"][i])))
            .collect::<Result<_>>()?;
        let (n, _, _) = range_params(vals[0], vals[1], vals[2])?;
        Ok(vec![TypeInfo::new(dtype, vec![n])])
    }

    fn eval(&self, inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>> {
        let (s, l, d) = (arg(inputs, 0)?, arg(inputs, 1)?, arg(inputs, 2)?);
        let (n, _, _) = range_params(s, l, d)?;
        Ok(vec![if s.dtype.is_float() {
            // Accumulated in the element type, as numpy.arange does.
            let (s0, d0) = (s.to_f64()[0], d.to_f64()[0]);
            Tensor::from_f64(s.dtype, vec![n], (0..n).map(|i| s0 + i as f64 * d0).collect())
        } else {
            let (s0, d0) = (s.to_i64()[0], d.to_i64()[0]);
            Tensor::from_i64(s.dtype, vec![n], (0..n as i64).map(|i| s0 + i * d0).collect())
        }])
    }

    fn lower(&self, cx: &LowerCtx) -> Result<Lowering> {
        let s = cx.const_input(0, "start")?;
        let (_, start, delta) = range_params(s, cx.const_input(1, "limit")?, cx.const_input(2, "delta")?)?;
        let p = s.dtype.phys();
        let t = p.wgsl();
        let body = format!("    st_y(i, {} + {t}(i) * {});", lit(p, start), lit(p, delta));
        let args = vec![KernelArg::new("y", TensorRef::Output(0))];
        Ok(Lowering::one(kernel("range", args, cx.output(0).numel(), "", &body)))
    }
}

/// EyeLike: a 2-D tensor of the input's shape with ones on diagonal `k`.
#[derive(Debug)]
pub struct EyeLike {
    pub k: i64,
    pub dtype: Option<DType>,
}

impl Op for EyeLike {
    fn infer(&self, inputs: &[Option<Input>]) -> Result<Vec<TypeInfo>> {
        let x = ty(inputs, 0)?;
        if x.rank() != 2 {
            bail!("EyeLike needs a 2-D input, got shape {:?}", x.shape);
        }
        Ok(vec![TypeInfo::new(self.dtype.unwrap_or(x.dtype), x.shape.clone())])
    }

    fn eval(&self, inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>> {
        let x = arg(inputs, 0)?;
        let out = self.infer(&[Some(Input { ty: &TypeInfo::new(x.dtype, x.shape.clone()), value: None })])?;
        let cols = x.shape[1];
        let v = (0..x.len()).map(|e| ((e % cols) as i64 - (e / cols) as i64 == self.k) as i64).collect();
        Ok(vec![Tensor::from_i64(out[0].dtype, x.shape.clone(), v)])
    }

    fn lower(&self, cx: &LowerCtx) -> Result<Lowering> {
        let out = cx.output(0);
        let p = out.dtype.phys();
        let body = format!(
            "    let on = i32(i % {c}u) - i32(i / {c}u) == {k};\n    st_y(i, select({}, {}, on));",
            lit(p, 0.0),
            lit(p, 1.0),
            c = out.shape[1].max(1),
            k = lit(crate::Phys::I32, self.k as f64),
        );
        let args = vec![KernelArg::new("y", TensorRef::Output(0))];
        Ok(Lowering::one(kernel("eyelike", args, out.numel(), "", &body)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::*;

    fn run(op: &str, a: Attrs, opset: i64, inputs: &[Option<&Tensor>]) -> Vec<Tensor> {
        build(op, &a, opset).unwrap().eval(inputs).unwrap()
    }

    fn f32s(shape: Vec<usize>) -> Tensor {
        let n = numel(&shape);
        Tensor::from_f32(shape, (0..n).map(|v| v as f32).collect())
    }

    #[test]
    fn reshape_zero_and_minus_one() {
        let x = f32s(vec![2, 3, 4]);
        let s = Tensor::i64_vec(vec![0, -1]);
        let y = &run("Reshape", Attrs::default(), 14, &[Some(&x), Some(&s)])[0];
        assert_eq!(y.shape, vec![2, 12]);
        assert_eq!(y.to_f64()[13], 13.0);
        let old = attrs(vec![("shape", Attr::Ints(vec![4, 0, 2]))]);
        assert_eq!(run("Reshape", old, 1, &[Some(&x)])[0].shape, vec![4, 3, 2]);
        // allowzero keeps a literal 0 (here on an empty tensor).
        let e = f32s(vec![0, 3]);
        let z = attrs(vec![("allowzero", Attr::Int(1))]);
        let s = Tensor::i64_vec(vec![3, 0]);
        assert_eq!(run("Reshape", z, 14, &[Some(&e), Some(&s)])[0].shape, vec![3, 0]);
    }

    #[test]
    fn flatten_axes() {
        let x = f32s(vec![2, 3, 4, 5]);
        let f = |axis| run("Flatten", attrs(vec![("axis", Attr::Int(axis))]), 13, &[Some(&x)])[0].shape.clone();
        assert_eq!(f(0), vec![1, 120]);
        assert_eq!(f(2), vec![6, 20]);
        assert_eq!(f(-1), vec![24, 5]);
        assert_eq!(f(4), vec![120, 1]);
    }

    #[test]
    fn squeeze_unsqueeze() {
        let x = f32s(vec![1, 3, 1, 5]);
        assert_eq!(run("Squeeze", Attrs::default(), 13, &[Some(&x)])[0].shape, vec![3, 5]);
        let ax = Tensor::i64_vec(vec![-2]);
        assert_eq!(run("Squeeze", Attrs::default(), 13, &[Some(&x), Some(&ax)])[0].shape, vec![1, 3, 5]);
        let old = attrs(vec![("axes", Attr::Ints(vec![0]))]);
        assert_eq!(run("Squeeze", old, 11, &[Some(&x)])[0].shape, vec![3, 1, 5]);
        let y = f32s(vec![3, 4, 5]);
        let ax = Tensor::i64_vec(vec![5, 4, 2]);
        assert_eq!(run("Unsqueeze", Attrs::default(), 13, &[Some(&y), Some(&ax)])[0].shape, vec![3, 4, 1, 5, 1, 1]);
        let ax = Tensor::i64_vec(vec![-1, 0]);
        assert_eq!(run("Unsqueeze", Attrs::default(), 13, &[Some(&y), Some(&ax)])[0].shape, vec![1, 3, 4, 5, 1]);
        let bad = Tensor::i64_vec(vec![1]);
        assert!(build("Squeeze", &Attrs::default(), 13).unwrap().eval(&[Some(&y), Some(&bad)]).is_err());
    }

    #[test]
    fn identity_and_dropout() {
        let x = f32s(vec![2, 2]);
        assert_eq!(run("Identity", Attrs::default(), 13, &[Some(&x)]), vec![x.clone()]);
        let out = run("Dropout", Attrs::default(), 13, &[Some(&x)]);
        assert_eq!(out[0], x);
        assert_eq!(out[1].dtype, DType::Bool);
        assert_eq!(out[1].to_i64(), vec![1, 1, 1, 1]);
        let ratio = Tensor::scalar_f64(DType::F32, 0.5);
        let train = Tensor::from_i64(DType::Bool, vec![], vec![1]);
        let op = build("Dropout", &Attrs::default(), 13).unwrap();
        // Training: kept elements scale by 1 / (1 - 0.5), dropped ones are 0.
        let big = f32s(vec![1000]);
        let out = op.eval(&[Some(&big), Some(&ratio), Some(&train)]).unwrap();
        let (y, m) = (out[0].to_f64(), out[1].to_i64());
        for (e, (&v, &k)) in y.iter().zip(&m).enumerate() {
            assert_eq!(v, if k == 1 { 2.0 * e as f64 } else { 0.0 });
        }
        let kept = m.iter().sum::<i64>();
        assert!((400..600).contains(&kept), "{kept} of 1000 kept at ratio 0.5");
        let zero = Tensor::scalar_f64(DType::F32, 0.0);
        assert_eq!(op.eval(&[Some(&x), Some(&zero), Some(&train)]).unwrap()[0], x);
    }

    #[test]
    fn dropout_draws_match_numpy() {
        // numpy.random.RandomState(0).uniform(0, 1, 3) and RandomState(7)'s 700th.
        let u = numpy_uniform(0, 3);
        assert_eq!(u, vec![0.5488135039273248, 0.7151893663724195, 0.6027633760716439]);
        assert_eq!(numpy_uniform(7, 700)[699], 0.33871568992326884);
    }

    #[test]
    fn shape_and_size() {
        let x = f32s(vec![3, 4, 5]);
        let sh = |a: Vec<(&str, Attr)>| run("Shape", attrs(a), 15, &[Some(&x)])[0].to_i64();
        assert_eq!(sh(vec![]), vec![3, 4, 5]);
        assert_eq!(sh(vec![("start", Attr::Int(1))]), vec![4, 5]);
        assert_eq!(sh(vec![("end", Attr::Int(-1))]), vec![3, 4]);
        assert_eq!(sh(vec![("start", Attr::Int(-10)), ("end", Attr::Int(10))]), vec![3, 4, 5]);
        assert_eq!(sh(vec![("start", Attr::Int(2)), ("end", Attr::Int(1))]), Vec::<i64>::new());
        let ty = TypeInfo::new(DType::F32, vec![3, 4, 5]);
        let inp = [Some(Input { ty: &ty, value: None })];
        let s = build("Size", &Attrs::default(), 13).unwrap().fold_from_types(&inp).unwrap();
        assert_eq!((s[0].shape.clone(), s[0].to_i64()), (vec![], vec![60]));
        let s = build("Shape", &Attrs::default(), 13).unwrap().fold_from_types(&inp).unwrap();
        assert_eq!(s[0].to_i64(), vec![3, 4, 5]);
    }

    #[test]
    fn constants() {
        let c = |a| run("Constant", attrs(vec![a]), 13, &[])[0].clone();
        let v = c(("value_floats", Attr::Floats(vec![1.5, 2.0])));
        assert_eq!((v.dtype, v.to_f64()), (DType::F32, vec![1.5, 2.0]));
        let v = c(("value_int", Attr::Int(7)));
        assert_eq!((v.dtype, v.shape.clone(), v.to_i64()), (DType::I64, vec![], vec![7]));
        let t = Tensor::from_i64(DType::I32, vec![2], vec![3, 4]);
        assert_eq!(c(("value", Attr::Tensor(t.clone()))), t);
        assert_eq!(c(("value_float", Attr::Float(0.25))).to_f64(), vec![0.25]);
        assert_eq!(c(("value_ints", Attr::Ints(vec![1, 2]))).to_i64(), vec![1, 2]);

        let shape = Tensor::i64_vec(vec![2, 3]);
        let y = &run("ConstantOfShape", Attrs::default(), 13, &[Some(&shape)])[0];
        assert_eq!((y.dtype, y.shape.clone(), y.to_f64()), (DType::F32, vec![2, 3], vec![0.0; 6]));
        let val = Tensor::from_i64(DType::I32, vec![1], vec![5]);
        let y = &run("ConstantOfShape", attrs(vec![("value", Attr::Tensor(val))]), 13, &[Some(&shape)])[0];
        assert_eq!((y.dtype, y.to_i64()), (DType::I32, vec![5; 6]));
        let empty = Tensor::i64_vec(vec![0]);
        assert_eq!(run("ConstantOfShape", Attrs::default(), 13, &[Some(&empty)])[0].len(), 0);
    }

    #[test]
    fn expand_broadcasts_both_ways() {
        let x = Tensor::from_f32(vec![3, 1], vec![1.0, 2.0, 3.0]);
        let s = Tensor::i64_vec(vec![2, 1, 4]);
        let y = &run("Expand", Attrs::default(), 13, &[Some(&x), Some(&s)])[0];
        assert_eq!(y.shape, vec![2, 3, 4]);
        assert_eq!(y.to_f64()[..8], [1.0, 1.0, 1.0, 1.0, 2.0, 2.0, 2.0, 2.0]);
        let s = Tensor::i64_vec(vec![1, 1]);
        assert_eq!(run("Expand", Attrs::default(), 13, &[Some(&x), Some(&s)])[0].shape, vec![3, 1]);
    }

    #[test]
    fn range_counts() {
        let f = |s: f64, l: f64, d: f64| {
            let t = |v| Tensor::scalar_f64(DType::F32, v);
            run("Range", Attrs::default(), 11, &[Some(&t(s)), Some(&t(l)), Some(&t(d))])[0].to_f64()
        };
        assert_eq!(f(1.0, 5.0, 2.0), vec![1.0, 3.0]);
        assert_eq!(f(1.0, 5.5, 1.5), vec![1.0, 2.5, 4.0]);
        assert!(f(5.0, 1.0, 1.0).is_empty());
        let i = |v| Tensor::from_i64(DType::I32, vec![], vec![v]);
        let y = &run("Range", Attrs::default(), 11, &[Some(&i(10)), Some(&i(6)), Some(&i(-3))])[0];
        assert_eq!((y.dtype, y.to_i64()), (DType::I32, vec![10, 7]));
    }

    #[test]
    fn eyelike_offsets() {
        let x = Tensor::from_i64(DType::I32, vec![3, 4], vec![0; 12]);
        let y = &run("EyeLike", attrs(vec![("k", Attr::Int(1))]), 9, &[Some(&x)])[0];
        assert_eq!(y.dtype, DType::I32);
        assert_eq!(y.to_i64(), vec![0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1]);
        let a = attrs(vec![("k", Attr::Int(-1)), ("dtype", Attr::Int(1))]);
        let y = &run("EyeLike", a, 9, &[Some(&x)])[0];
        assert_eq!(y.dtype, DType::F32);
        assert_eq!(y.to_f64()[4], 1.0);
        assert_eq!(y.to_f64()[9], 1.0);
    }

    #[test]
    fn lowerings_are_views_or_kernels() {
        let ty = TypeInfo::new(DType::F32, vec![2, 3]);
        let s = Tensor::i64_vec(vec![6]);
        let sty = TypeInfo::new(DType::I64, vec![1]);
        let cx = LowerCtx {
            inputs: vec![Some(Input { ty: &ty, value: None }), Some(Input { ty: &sty, value: Some(&s) })],
            outputs: vec![TypeInfo::new(DType::F32, vec![6])],
            target: Default::default(),
        };
        let op = build("Reshape", &Attrs::default(), 14).unwrap();
        assert_eq!(op.lower(&cx).unwrap(), Lowering::Alias);
        let shape = build("Shape", &Attrs::default(), 14).unwrap();
        let Lowering::Kernels { kernels, .. } = shape.lower(&cx).unwrap() else { panic!() };
        assert!(kernels[0].body.contains("array<u32, 2>(2u, 3u)"));
    }
}
