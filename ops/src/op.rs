//! The `Op` trait: one ONNX operator's shape rule, CPU reference and GPU
//! lowering, kept together so the three never drift apart.

use crate::{DType, Phys, Result, Tensor, bail};

/// Element type and concrete shape of a value.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TypeInfo {
    pub dtype: DType,
    pub shape: Vec<usize>,
}

impl TypeInfo {
    pub fn new(dtype: DType, shape: Vec<usize>) -> TypeInfo {
        TypeInfo { dtype, shape }
    }
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn rank(&self) -> usize {
        self.shape.len()
    }
}

/// What a shape rule or lowering sees of one input: its type, and its value
/// when the compiler knows it (initializers, folded constants).
#[derive(Clone, Copy, Debug)]
pub struct Input<'a> {
    pub ty: &'a TypeInfo,
    pub value: Option<&'a Tensor>,
}

/// One ONNX operator instance with its attributes already parsed.
pub trait Op: std::fmt::Debug + Send + Sync {
    /// Output types. `inputs[i]` is `None` for an omitted optional input.
    fn infer(&self, inputs: &[Option<Input>]) -> Result<Vec<TypeInfo>>;

    /// CPU reference: used for constant folding and tests.
    fn eval(&self, inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>>;

    /// Outputs that follow from input types alone (Shape, Size), so a graph
    /// can fold them although the input values are unknown.
    fn fold_from_types(&self, _inputs: &[Option<Input>]) -> Option<Vec<Tensor>> {
        None
    }

    /// GPU kernels computing the outputs.
    fn lower(&self, cx: &LowerCtx) -> Result<Lowering>;

    /// Output axes whose length depends on the input data (NonZero, Unique,
    /// NonMaxSuppression). For those, `infer` gives an upper bound and the
    /// lowering leaves the actual length in a temp (see [`DataDependentDim`]).
    fn data_dependent_dims(&self, _cx: &LowerCtx) -> Vec<DataDependentDim> {
        vec![]
    }

    /// For ops that compute each output element from the operands' elements
    /// at the same (broadcast) position: that computation as a WGSL
    /// expression, so the compiler can fuse the op into its producer's
    /// store. `operands[k]` is a WGSL expression for operand k's element.
    fn pointwise(&self, _cx: &LowerCtx, _operands: &[String]) -> Option<Pointwise> {
        None
    }
}

/// An elementwise op's output element as an expression (see [`Op::pointwise`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Pointwise {
    pub expr: String,
    /// WGSL functions the expression calls.
    pub helpers: String,
    /// Each operand's shape as it broadcasts (right-aligned) to the output.
    pub operand_shapes: Vec<Vec<usize>>,
}

/// An output axis of data-dependent length. The lowering's kernels write the
/// actual length as one u32 at element 0 of temp `count_temp` and lay the
/// output's elements out for the actual shape (row-major, no gaps); the
/// runtime reads the count back with the output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataDependentDim {
    pub output: usize,
    pub axis: usize,
    pub count_temp: usize,
}

/// Everything a lowering may look at.
pub struct LowerCtx<'a> {
    pub inputs: Vec<Option<Input<'a>>>,
    pub outputs: Vec<TypeInfo>,
    /// The device family the kernels are for (tiles, f16, tensor cores).
    pub target: crate::Target,
}

impl<'a> LowerCtx<'a> {
    /// Type of a required input.
    pub fn input(&self, i: usize) -> Result<&'a TypeInfo> {
        match self.inputs.get(i).copied().flatten() {
            Some(inp) => Ok(inp.ty),
            None => bail!("input {i} is required"),
        }
    }

    /// Whether optional input `i` is present.
    pub fn has_input(&self, i: usize) -> bool {
        matches!(self.inputs.get(i), Some(Some(_)))
    }

    /// The compile-time value of input `i`, if the compiler knows it.
    pub fn value(&self, i: usize) -> Option<&'a Tensor> {
        self.inputs.get(i).copied().flatten().and_then(|inp| inp.value)
    }

    /// The value of an input the kernel needs at compile time.
    pub fn const_input(&self, i: usize, what: &str) -> Result<&'a Tensor> {
        match self.value(i) {
            Some(t) => Ok(t),
            None if self.has_input(i) => Err(crate::Error::needs_value(i, what)),
            None => bail!("input {i} ({what}) is required"),
        }
    }

    pub fn output(&self, i: usize) -> &TypeInfo {
        &self.outputs[i]
    }
}

/// Which tensor a kernel argument names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TensorRef {
    Input(usize),
    Output(usize),
    /// A scratch tensor of the lowering (`Lowering::Kernels::temps`).
    Temp(usize),
}

/// A tensor a kernel reads or writes. The compiler generates accessors
/// `ld_<name>(i: u32) -> T` and `st_<name>(i: u32, v: T)` over the element
/// index, `T` being the physical type.
#[derive(Clone, Debug, PartialEq)]
pub struct KernelArg {
    pub name: String,
    pub tensor: TensorRef,
    /// The kernel writes every element of this output exactly once, with its
    /// final value, and never reads it back: the compiler may then replace
    /// the store `st_<name>(i, v)` by a fused consumer's computation.
    pub stored_once: bool,
    /// The kernel touches this tensor only at the element its thread owns:
    /// the thread of element `i` reads element `i` (before writing any
    /// output) or writes element `i`, and nothing else. An output and an
    /// input that are both pointwise may share memory (in-place reuse).
    pub pointwise: bool,
    /// A temp of `u32` counters the kernel touches only atomically, through
    /// `atomic_add_<name>(i, v) -> u32` and `atomic_store_<name>(i, v)`.
    /// Such a temp persists across runs: it is zero when the program
    /// starts (arenas start zeroed) and every kernel using it must leave it
    /// zero, so no other tensor ever shares its bytes.
    pub atomic: bool,
    /// The kernel also reads this tensor of words four at a time, through
    /// `ld4_<name>(i) -> vec4<u32>` (words `4i .. 4i + 3`): one 16-byte load
    /// from a binding of its buffer as `array<vec4<u32>>` where the tensor
    /// starts on 16 bytes in one binding, four word loads otherwise.
    pub wide: bool,
}

impl KernelArg {
    pub fn new(name: &str, tensor: TensorRef) -> KernelArg {
        KernelArg { name: name.to_string(), tensor, stored_once: false, pointwise: false, atomic: false, wide: false }
    }

    /// Declares the argument a temp of atomic counters (see `atomic`).
    pub fn atomic(mut self) -> KernelArg {
        self.atomic = true;
        self
    }

    /// Declares 16-byte reads of the argument (see `wide`).
    pub fn wide(mut self) -> KernelArg {
        self.wide = true;
        self
    }

    /// Declares the output written once per element (see `stored_once`).
    pub fn stored_once(mut self) -> KernelArg {
        self.stored_once = true;
        self
    }

    /// Marks the argument as touched only at its thread's own element.
    pub fn pointwise(mut self) -> KernelArg {
        self.pointwise = true;
        self
    }
}

/// One compute kernel and how to dispatch it.
#[derive(Clone, Debug, PartialEq)]
pub struct Kernel {
    /// Short name for listings, e.g. "conv2d".
    pub name: String,
    pub args: Vec<KernelArg>,
    /// WGSL that follows the compiler's prelude (bindings and accessors).
    /// Defines `@compute @workgroup_size(..) fn main(..)` and may define
    /// helpers and `var<workgroup>` storage.
    pub body: String,
    pub workgroup_size: [u32; 3],
    pub workgroups: [u32; 3],
    /// Floating-point (or integer multiply-add) operations of one dispatch,
    /// counted as 2 per multiply-add; 0 where only bytes matter. Recorded in
    /// the bundle for `drift bench --profile`.
    pub flops: u64,
}

/// A scratch tensor private to one lowering.
#[derive(Clone, Debug, PartialEq)]
pub struct TempSpec {
    pub elems: usize,
    pub phys: Phys,
}

/// How an op runs on the GPU.
#[derive(Clone, Debug, PartialEq)]
pub enum Lowering {
    /// Run these kernels in order.
    Kernels { temps: Vec<TempSpec>, kernels: Vec<Kernel> },
    /// Output 0 has the same bytes as input 0 (Reshape, Squeeze, ...): no work.
    Alias,
}

impl Lowering {
    pub fn one(kernel: Kernel) -> Lowering {
        Lowering::Kernels { temps: vec![], kernels: vec![kernel] }
    }
}

/// Reads input `i`'s type in a shape rule.
pub fn ty<'a>(inputs: &[Option<Input<'a>>], i: usize) -> Result<&'a TypeInfo> {
    match inputs.get(i).copied().flatten() {
        Some(inp) => Ok(inp.ty),
        None => bail!("input {i} is required"),
    }
}

/// Reads input `i`'s compile-time value in a shape rule, if known.
pub fn value<'a>(inputs: &[Option<Input<'a>>], i: usize) -> Option<&'a Tensor> {
    inputs.get(i).copied().flatten().and_then(|inp| inp.value)
}

/// Reads input `i`'s value in a shape rule where the shape depends on it:
/// `NeedsValue` when the input is present but only known at run time.
pub fn need_value<'a>(inputs: &[Option<Input<'a>>], i: usize, what: &str) -> Result<&'a Tensor> {
    match inputs.get(i).copied().flatten() {
        Some(Input { value: Some(v), .. }) => Ok(v),
        Some(_) => Err(crate::Error::needs_value(i, what)),
        None => bail!("input {i} ({what}) is required"),
    }
}

/// Reads input `i` in a CPU reference.
pub fn arg<'a>(inputs: &[Option<&'a Tensor>], i: usize) -> Result<&'a Tensor> {
    match inputs.get(i).copied().flatten() {
        Some(t) => Ok(t),
        None => bail!("input {i} is required"),
    }
}

/// Normalizes a possibly negative axis against a rank.
pub fn norm_axis(axis: i64, rank: usize) -> Result<usize> {
    let r = rank as i64;
    let a = if axis < 0 { axis + r } else { axis };
    if a < 0 || a >= r.max(1) {
        bail!("axis {axis} is out of range for rank {rank}");
    }
    Ok(a as usize)
}
