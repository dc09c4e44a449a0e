//! drift's runtime: loads a bundle written by the drift compiler and replays
//! its dispatch list on a GPU through wgpu.
//!
//! The compiler decides everything (buffers, offsets, kernels, dispatch
//! order); the runtime checks the bundle once, builds every GPU object once,
//! and each run only uploads inputs, records the dispatches into one compute
//! pass and reads the outputs back.
//!
//! ```no_run
//! use drift_runtime::{Gpu, HostTensor, Model, Session};
//! let gpu = Gpu::new()?;
//! // Untrusted: kernels run from WGSL with bounds checks; see `Model::load_trusted`.
//! let model = Model::load("model.drift")?;
//! let mut session = Session::new(&gpu, &model)?;
//! let x = HostTensor::from_f32(vec![1, 4], &[1.0, 2.0, 3.0, 4.0]);
//! for (name, tensor) in session.run(&[("x", &x)])? {
//!     println!("{name}: {:?}", tensor.to_f32_vec());
//! }
//! # Ok::<(), drift_runtime::Error>(())
//! ```
//!
//! Modules: [`bundle`] (the schema), [`format`] (file framing and
//! checksums), [`validate`] (field checks), [`model`] (with [`Trust`]), [`dtype`] and [`tensor`] (host data), [`gpu`] and
//! [`session`] (the GPU side), [`error`].

pub mod bundle;
pub mod dims;
pub mod dtype;
pub mod error;
pub mod format;
pub mod gpu;
pub mod model;
pub mod session;
pub mod tensor;
pub mod validate;

pub use bundle::Bundle;
pub use dtype::DType;
pub use error::{Error, Result};
pub use format::{parse, write_bundle, write_bundle_to};
pub use gpu::{Gpu, GpuInfo, GpuOptions, ShaderPath};
pub use model::{Model, TensorInfo, Trust};
pub use session::{Feed, Session};
pub use tensor::HostTensor;
pub use validate::validate;
