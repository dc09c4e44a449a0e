//! A loaded, validated bundle.
//!
//! [`Model`] owns the decoded header and the file bytes the weights section
//! lives in. [`Model::load`] maps the file instead of reading it, so the
//! weights are copied only once, straight into GPU buffers by the session.
//! A model also carries the caller's [`Trust`] in the bundle, which decides
//! whether its kernels may skip shader validation (see docs/security.md).

use std::ops::{Deref, Range};
use std::path::Path;

use memmap2::Mmap;

use crate::bundle::{Bundle, FixedInput, IoTensor, Need};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::format;
use crate::tensor::HostTensor;

/// A graph input or output as the caller sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
}

/// Whether the caller vouches for a bundle. Passthrough shaders (SPIR-V on
/// Vulkan, MSL on Metal) reach the driver without validation or bounds
/// checks, so only a trusted bundle may use them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Trust {
    /// The default. Every kernel runs from its WGSL, which wgpu validates
    /// with naga and compiles with bounds checks on every buffer access;
    /// the bundle's SPIR-V and MSL are never used.
    #[default]
    Untrusted,
    /// The caller knows where the bundle comes from (it compiled it, or
    /// checked its origin): kernels take the passthrough path where the GPU
    /// has one, which is faster to load and to run.
    Trusted,
}

/// A bundle ready to build sessions from.
pub struct Model {
    trust: Trust,
    bundle: Bundle,
    bytes: FileBytes,
    weights: Range<usize>,
    inputs: Vec<TensorInfo>,
    outputs: Vec<TensorInfo>,
    fixed_inputs: Vec<(String, HostTensor)>,
}

/// The file's bytes, mapped or owned.
enum FileBytes {
    Mapped(Mmap),
    Owned(Vec<u8>),
}

impl Deref for FileBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            FileBytes::Mapped(m) => m,
            FileBytes::Owned(v) => v,
        }
    }
}

impl Model {
    /// Maps and validates the bundle file at `path`, as [`Trust::Untrusted`].
    pub fn load(path: impl AsRef<Path>) -> Result<Model> {
        let path = path.as_ref();
        let io_err = |source| Error::Io { path: path.to_owned(), source };
        let file = std::fs::File::open(path).map_err(io_err)?;
        // SAFETY: the mapping is only read. Like every runtime that maps its
        // model, we rely on the file not being modified while it is mapped.
        let map = unsafe { Mmap::map(&file) }.map_err(io_err)?;
        Model::new(FileBytes::Mapped(map))
    }

    /// [`Model::load`], with the caller vouching for the file
    /// ([`Trust::Trusted`]): its kernels may use passthrough shaders.
    pub fn load_trusted(path: impl AsRef<Path>) -> Result<Model> {
        Ok(Model::load(path)?.with_trust(Trust::Trusted))
    }

    /// Validates a bundle already in memory (e.g. from `write_bundle`), as
    /// [`Trust::Untrusted`].
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Model> {
        Model::new(FileBytes::Owned(bytes))
    }

    /// The same model with `trust` (e.g. `Model::from_bytes(b)?.with_trust(Trust::Trusted)`
    /// for a bundle this process just compiled).
    pub fn with_trust(mut self, trust: Trust) -> Model {
        self.trust = trust;
        self
    }

    /// Whether the caller vouched for this bundle.
    pub fn trust(&self) -> Trust {
        self.trust
    }

    fn new(bytes: FileBytes) -> Result<Model> {
        let (bundle, weights) = format::parse(&bytes)?;
        format::validate(&bundle)?;
        // validate() checked dtypes and that sizes fit usize.
        let inputs = bundle.inputs.iter().map(info).collect();
        let outputs = bundle.outputs.iter().map(info).collect();
        let fixed_inputs = bundle.fixed_inputs.iter().map(fixed).collect();
        Ok(Model { trust: Trust::Untrusted, bundle, bytes, weights, inputs, outputs, fixed_inputs })
    }

    /// The decoded, validated header.
    pub fn bundle(&self) -> &Bundle {
        &self.bundle
    }

    /// The program to run on a GPU of PCI vendor `vendor` having the device
    /// features for which `has` is true: the first variant made for that
    /// vendor (or any) whose needs the GPU meets, else the top level. An
    /// untrusted model runs only WGSL, so only variants whose every kernel
    /// has WGSL qualify. `DRIFT_TARGET=<name>` picks a program by target name
    /// instead.
    pub fn program_for(&self, vendor: u32, has: impl Fn(Need) -> bool) -> Result<&Bundle> {
        let programs = || self.bundle.variants.iter().chain([&self.bundle]);
        if let Some(name) = std::env::var("DRIFT_TARGET").ok().filter(|n| !n.is_empty()) {
            let found = programs().find(|p| target_name(p) == name);
            return found.ok_or(Error::BadEnv {
                var: "DRIFT_TARGET",
                value: name,
                allowed: "a target of the bundle (drift inspect lists them)",
            });
        }
        let runnable = |p: &Bundle| self.trust == Trust::Trusted || p.kernels.iter().all(|k| !k.wgsl.is_empty());
        let fits = |p: &Bundle| {
            (p.vendors.is_empty() || p.vendors.contains(&vendor))
                && p.needs.iter().all(|&n| Need::try_from(n).is_ok_and(&has))
                && runnable(p)
        };
        Ok(self.bundle.variants.iter().find(|p| fits(p)).unwrap_or(&self.bundle))
    }

    /// The weights section (`bundle().weights_size` bytes).
    pub fn weights(&self) -> &[u8] {
        &self.bytes[self.weights.clone()]
    }

    /// The graph inputs, in bundle order.
    pub fn inputs(&self) -> &[TensorInfo] {
        &self.inputs
    }

    /// Graph inputs whose values were fixed at compile time, with those
    /// values. Callers may omit them; if given, they must match.
    pub fn fixed_inputs(&self) -> &[(String, HostTensor)] {
        &self.fixed_inputs
    }

    /// The graph outputs, in bundle order.
    pub fn outputs(&self) -> &[TensorInfo] {
        &self.outputs
    }
}

/// A program's target name; the top level of older bundles has none.
pub fn target_name(p: &Bundle) -> &str {
    if p.target.is_empty() { "generic" } else { &p.target }
}

/// A validated fixed input as a host tensor.
fn fixed(t: &FixedInput) -> (String, HostTensor) {
    let dtype = DType::from_onnx(t.dtype).expect("validate() checked the dtype");
    let shape = t.shape.iter().map(|&d| d as usize).collect();
    let tensor = HostTensor::new(dtype, shape, t.value.clone()).expect("validate() checked the length");
    (t.name.clone(), tensor)
}

/// The caller's view of a validated IO tensor.
fn info(t: &IoTensor) -> TensorInfo {
    TensorInfo {
        name: t.name.clone(),
        dtype: DType::from_onnx(t.dtype).expect("validate() checked the dtype"),
        // validate() checked that the element count fits usize.
        shape: t.shape.iter().map(|&d| d as usize).collect(),
    }
}
