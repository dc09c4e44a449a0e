//! The runtime's one error type.
//!
//! Every message names the thing at fault (a bundle field such as
//! `dispatches[3].kernel`, an input by name, a kernel by index and name) so a
//! failure can be traced without a debugger.

use std::path::PathBuf;

use crate::bundle::FORMAT_VERSION;

/// Everything that can go wrong while loading a bundle or running it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read bundle '{}': {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },

    #[error("not a drift bundle (bad magic)")]
    BadMagic,

    #[error("{}", version_message(*version, writer.as_deref()))]
    UnsupportedVersion { version: u32, writer: Option<String> },

    #[error("bundle flags {0:#x} are not supported (this runtime knows none)")]
    UnsupportedFlags(u32),

    /// The file ends before the fixed 64-byte preamble does.
    #[error("truncated bundle: file has {0} bytes, shorter than the fixed file header")]
    TooShort(usize),

    /// A section runs past the end of the file.
    #[error("truncated bundle: the {section} section ends at byte {expected}, file has {actual}")]
    Truncated { section: &'static str, expected: u64, actual: u64 },

    /// A section's CRC-32 does not match its bytes.
    #[error(
        "bundle {section} checksum mismatch (stored {stored:#010x}, computed {computed:#010x}): the file is damaged"
    )]
    Checksum { section: &'static str, stored: u32, computed: u32 },

    #[error("bundle header does not decode: {0}")]
    Decode(#[from] prost::DecodeError),

    /// A field of the decoded bundle breaks an invariant; `problem` follows
    /// the field name, e.g. "= 17 is out of range (12 kernels)".
    #[error("bundle field {field} {problem}")]
    Bundle { field: String, problem: String },

    #[error("unknown input '{name}' (inputs: {expected})")]
    UnknownInput { name: String, expected: String },

    #[error("missing input '{0}'")]
    MissingInput(String),

    #[error("input '{name}' was fixed at compile time to {expected}, but {got} was given; recompile with that value")]
    FixedInputMismatch { name: String, expected: String, got: String },

    #[error("input '{0}' is given more than once")]
    DuplicateInput(String),

    #[error("input '{name}': expected shape {expected}, got {got}")]
    ShapeMismatch { name: String, expected: String, got: String },

    #[error("input '{name}': expected dtype {expected}, got {got}")]
    DTypeMismatch { name: String, expected: &'static str, got: &'static str },

    /// A tensor's byte buffer does not match its dtype and shape.
    #[error("{what}: data has {got} bytes, its dtype and shape need {expected}")]
    DataLength { what: String, expected: usize, got: usize },

    /// A 64-bit value that the 32-bit GPU form cannot hold; `what` names the
    /// tensor, e.g. "input 'idx'".
    #[error("value {value} of {what} does not fit {target} on the GPU")]
    DoesNotFit { value: String, what: String, target: &'static str },

    #[error("unknown ONNX data type {0}")]
    UnknownDType(i32),

    #[error("{var}={value} is not one of {allowed}")]
    BadEnv { var: &'static str, value: String, allowed: &'static str },

    #[error("no GPU adapter found ({0})")]
    NoAdapter(String),

    #[error("cannot open the GPU device: {0}")]
    RequestDevice(String),

    /// The bundle is well formed but needs more than this GPU offers.
    #[error("this GPU cannot run the bundle: {0}")]
    Unsupported(String),

    /// A kernel's shader module or pipeline failed to build.
    #[error("kernels[{index}] '{name}' failed to build: {message}")]
    Kernel { index: usize, name: String, message: String },

    /// A bounded dynamic dim outside the range the bundle was compiled for.
    #[error("input '{input}': dim '{name}' = {value} is outside the bounds {min}..{max} the bundle was compiled for")]
    DimOutOfBounds { name: String, value: u64, min: u64, max: u64, input: String },

    /// A run the bundle cannot serve as asked (carried state, stages, fetches).
    #[error("{0}")]
    Run(String),

    /// An error reported by wgpu or the driver while creating resources or running.
    #[error("GPU error: {0}")]
    Gpu(String),
}

/// The runtime's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Says which versions this runtime reads and what to do about another.
fn version_message(version: u32, writer: Option<&str>) -> String {
    let runtime = env!("CARGO_PKG_VERSION");
    let reads = format!("drift-runtime {runtime} reads format version {FORMAT_VERSION} only");
    if version < FORMAT_VERSION {
        format!(
            "bundle format version {version} is older than this runtime supports ({reads}); recompile the model with drift-compiler {runtime}"
        )
    } else {
        let by = writer.map(|w| format!(", written by drift-compiler {w}")).unwrap_or_default();
        format!(
            "bundle format version {version} is newer than this runtime supports ({reads}){by}; use a matching runtime or recompile with drift-compiler {runtime}"
        )
    }
}

/// Shorthand for an [`Error::Bundle`].
pub(crate) fn bundle_err(field: impl Into<String>, problem: impl Into<String>) -> Error {
    Error::Bundle { field: field.into(), problem: problem.into() }
}

/// Writes a shape the way messages show it: `[1,3,224,224]`.
pub(crate) fn fmt_shape<T: std::fmt::Display>(shape: &[T]) -> String {
    let dims: Vec<String> = shape.iter().map(ToString::to_string).collect();
    format!("[{}]", dims.join(","))
}
