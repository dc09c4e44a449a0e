//! drift-ops: every ONNX operator drift supports, each in one place with its
//! attributes, shape rule, GPU kernel generator and CPU reference.
//!
//! This crate knows nothing of GPUs APIs (no wgpu) nor of ONNX protobufs: it
//! speaks WGSL text and host tensors. The compiler builds ops through
//! [`build_op`], types them with [`Op::infer`], folds constants with
//! [`Op::eval`] and turns them into kernels with [`Op::lower`].

mod attr;
pub mod dims;
mod dtype;
mod error;
mod op;
mod products;
mod registry;
mod target;
mod tensor;
pub mod wgsl;

#[cfg(test)]
mod testing;

pub mod families;

pub use attr::{Attr, Attrs};
pub use dtype::{CastMode, DType, Phys, Storage, onnx_type_name, round_float, wgsl_round_fn};
pub use error::{Error, Result};
pub use op::{
    DataDependentDim, Input, Kernel, KernelArg, LowerCtx, Lowering, Op, Pointwise, TempSpec, TensorRef, TypeInfo, arg,
    need_value, norm_axis, ty, value,
};
pub use registry::{build_op, is_supported};
pub use target::{Target, Tile, Tuning};
pub use tensor::{Data, Tensor, numel};
