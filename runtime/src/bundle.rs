//! The bundle schema: what the compiler writes and the runtime replays.
//!
//! A bundle file (format version 2) is
//! ```text
//! offset 0   magic  b"DRIFTBN\0"                    (8 bytes)
//! offset 8   format version, u32 LE                  (FORMAT_VERSION)
//! offset 12  flags, u32 LE                           (0; reserved)
//! offset 16  compiler version, ASCII, NUL-padded     (16 bytes)
//! offset 32  header length H, u64 LE
//! offset 40  weights length W, u64 LE
//! offset 48  CRC-32 of the header, u32 LE
//! offset 52  CRC-32 of the weights section, u32 LE
//! offset 56  reserved, u32 (0)
//! offset 60  CRC-32 of bytes 0..60, u32 LE
//! offset 64  header: a prost-encoded `Bundle` (H bytes)
//! then zero padding to the next multiple of WEIGHTS_ALIGN
//!            weights section (W bytes); the file ends there
//! ```
//! Offsets 0..32 keep their meaning in every format version, so a runtime
//! can name the compiler of a bundle it cannot read. The messages are
//! declared with prost derives rather than a `.proto` file so the build
//! needs no `protoc`; `docs/bundle.md` gives the equivalent schema.

/// First eight bytes of every bundle.
pub const MAGIC: &[u8; 8] = b"DRIFTBN\0";
/// Bumped on every incompatible change of the layout or the messages. This
/// runtime reads exactly this version. History: 1 = 24-byte preamble, no
/// checksums; 2 = 64-byte preamble with compiler version and CRC-32s.
pub const FORMAT_VERSION: u32 = 2;
/// The weights section starts at a multiple of this many bytes.
pub const WEIGHTS_ALIGN: u64 = 256;
/// Size of the fixed preamble before the prost message.
pub const FILE_HEADER_LEN: usize = 64;
/// Bytes of the compiler version field in the preamble.
pub const COMPILER_VERSION_LEN: usize = 16;
/// Each dispatch's parameter block starts at a multiple of this (the
/// WebGPU default `min_uniform_buffer_offset_alignment`).
pub const PARAMS_ALIGN: u32 = 256;
/// Window offsets are multiples of this (WebGPU's default
/// `min_storage_buffer_offset_alignment`).
pub const WINDOW_ALIGN: u64 = 256;

/// The whole program: tensors at the boundary, buffers, kernels and the
/// ordered dispatch list.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Bundle {
    #[prost(string, tag = "1")]
    pub compiler_version: String,
    #[prost(string, tag = "2")]
    pub model_name: String,
    #[prost(message, repeated, tag = "3")]
    pub inputs: Vec<IoTensor>,
    #[prost(message, repeated, tag = "4")]
    pub outputs: Vec<IoTensor>,
    #[prost(message, repeated, tag = "5")]
    pub buffers: Vec<Buffer>,
    #[prost(message, repeated, tag = "6")]
    pub kernels: Vec<Kernel>,
    #[prost(message, repeated, tag = "7")]
    pub dispatches: Vec<Dispatch>,
    /// Uniform data of all dispatches, one block per dispatch at
    /// `Dispatch::params_offset`, each a multiple of PARAMS_ALIGN apart.
    #[prost(bytes = "vec", tag = "8")]
    pub params: Vec<u8>,
    /// Length of the weights section that follows the header.
    #[prost(uint64, tag = "9")]
    pub weights_size: u64,
    /// Graph inputs whose values were fixed at compile time. They have no
    /// place on the GPU; a caller may pass them, and must pass these values.
    #[prost(message, repeated, tag = "20")]
    pub fixed_inputs: Vec<FixedInput>,
    /// Bounded dynamic dims (`drift compile --dim seq=1..2048`). Their run
    /// values are solved from the inputs' shapes (`IoTensor::dims`) and
    /// given to kernels in the `Dims` binding.
    #[prost(message, repeated, tag = "50")]
    pub symbols: Vec<Symbol>,
    /// Programs over parts of the dispatch list sharing buffers and weights
    /// (prefill and decode); empty: one program, all dispatches.
    #[prost(message, repeated, tag = "51")]
    pub stages: Vec<Stage>,
    /// Two buffers holding carried state: inputs of `state` pairs in the
    /// first, their outputs at the same offsets in the second. A run that
    /// carries state swaps them, so outputs become inputs without a copy.
    #[prost(uint32, repeated, tag = "52")]
    pub state_buffers: Vec<u32>,
    #[prost(message, repeated, tag = "53")]
    pub state: Vec<StatePair>,
    /// What the memory planner achieved, for `drift inspect`; the runtime
    /// ignores it.
    #[prost(message, optional, tag = "30")]
    pub memory: Option<MemoryStats>,
    /// Other kernel sets of the same model, one per device target (`drift
    /// compile --target`), each a whole program over the same weights
    /// section: the runtime runs the first whose vendors and needs match the
    /// adapter, else this top-level program. Variants have no variants.
    #[prost(message, repeated, tag = "40")]
    pub variants: Vec<Bundle>,
    /// The target this program was compiled for ("" or "generic": any GPU).
    #[prost(string, tag = "41")]
    pub target: String,
    /// PCI vendor ids of the GPUs the program is for; empty: any.
    #[prost(uint32, repeated, tag = "42")]
    pub vendors: Vec<u32>,
    /// Device features the kernels use.
    #[prost(enumeration = "Need", repeated, tag = "43")]
    pub needs: Vec<i32>,
}

/// A device feature a program's kernels need.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum Need {
    /// f16 arithmetic and 16-bit storage buffers (`Features::SHADER_F16`).
    F16 = 0,
    /// Cooperative-matrix (tensor-core) operations.
    CooperativeMatrix = 1,
}

/// A bounded dynamic dim.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Symbol {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(uint64, tag = "2")]
    pub min: u64,
    #[prost(uint64, tag = "3")]
    pub max: u64,
}

/// A polynomial over the symbols: `Σ coeff · Π values[syms]`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct DimExpr {
    #[prost(message, repeated, tag = "1")]
    pub terms: Vec<Term>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Term {
    #[prost(sint64, tag = "1")]
    pub coeff: i64,
    /// Indices into `Bundle::symbols`, repeated for powers.
    #[prost(uint32, repeated, tag = "2")]
    pub syms: Vec<u32>,
}

/// A workgroup count computed per run: `min(ceil(expr / div), cap)`, no
/// cap when 0.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Groups {
    #[prost(message, optional, tag = "1")]
    pub expr: Option<DimExpr>,
    #[prost(uint32, tag = "2")]
    pub div: u32,
    #[prost(uint32, tag = "3")]
    pub cap: u32,
}

/// One program of a multi-stage bundle.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Stage {
    #[prost(string, tag = "1")]
    pub name: String,
    /// The stage runs when each listed symbol lies in its range.
    #[prost(message, repeated, tag = "2")]
    pub when: Vec<SymbolRange>,
    #[prost(uint32, tag = "3")]
    pub first_dispatch: u32,
    #[prost(uint32, tag = "4")]
    pub dispatch_count: u32,
    /// Where each of `Bundle::inputs` / `outputs` lives in this stage.
    #[prost(message, repeated, tag = "5")]
    pub inputs: Vec<Place>,
    #[prost(message, repeated, tag = "6")]
    pub outputs: Vec<Place>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct SymbolRange {
    #[prost(uint32, tag = "1")]
    pub sym: u32,
    #[prost(uint64, tag = "2")]
    pub min: u64,
    #[prost(uint64, tag = "3")]
    pub max: u64,
}

/// A buffer, byte offset and the bytes reserved there.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Place {
    #[prost(uint32, tag = "1")]
    pub buffer: u32,
    #[prost(uint64, tag = "2")]
    pub offset: u64,
    #[prost(uint64, tag = "3")]
    pub size: u64,
}

/// An input a run may take from the previous run's output (the KV cache).
#[derive(Clone, PartialEq, prost::Message)]
pub struct StatePair {
    #[prost(string, tag = "1")]
    pub input: String,
    #[prost(string, tag = "2")]
    pub output: String,
}

/// The memory plan's figures (all in bytes) next to the arena it produced.
#[derive(Clone, PartialEq, prost::Message)]
pub struct MemoryStats {
    /// The most bytes of arena tensors live at once over the dispatch list:
    /// no plan can be smaller.
    #[prost(uint64, tag = "1")]
    pub lower_bound_bytes: u64,
    /// Bytes if every arena tensor had memory of its own.
    #[prost(uint64, tag = "2")]
    pub naive_bytes: u64,
    /// The strategy whose plan was taken.
    #[prost(string, tag = "3")]
    pub strategy: String,
    /// Tensors written over an input in place.
    #[prost(uint32, tag = "4")]
    pub in_place: u32,
    /// Arena tensors planned (views share their input's).
    #[prost(uint32, tag = "5")]
    pub tensors: u32,
}

/// A graph input fixed at compile time (`drift compile --const-input`),
/// because it decides shapes (Reshape's shape, Reduce's axes, ...).
#[derive(Clone, PartialEq, prost::Message)]
pub struct FixedInput {
    #[prost(string, tag = "1")]
    pub name: String,
    /// Logical element type, as ONNX's `TensorProto.DataType` numbers it.
    #[prost(int32, tag = "2")]
    pub dtype: i32,
    #[prost(uint64, repeated, tag = "3")]
    pub shape: Vec<u64>,
    /// The value, as logical little-endian bytes (`HostTensor::data`).
    #[prost(bytes = "vec", tag = "4")]
    pub value: Vec<u8>,
}

/// A graph input or output: its logical type (what the user passes) and the
/// place of its physical copy on the GPU.
#[derive(Clone, PartialEq, prost::Message)]
pub struct IoTensor {
    #[prost(string, tag = "1")]
    pub name: String,
    /// Logical element type, as ONNX's `TensorProto.DataType` numbers it.
    #[prost(int32, tag = "2")]
    pub dtype: i32,
    #[prost(uint64, repeated, tag = "3")]
    pub shape: Vec<u64>,
    /// Index into `Bundle::buffers`.
    #[prost(uint32, tag = "4")]
    pub buffer: u32,
    /// Byte offset inside that buffer.
    #[prost(uint64, tag = "5")]
    pub offset: u64,
    /// Element type as stored on the GPU.
    #[prost(enumeration = "PhysType", tag = "6")]
    pub phys: i32,
    /// Outputs only: set when the extent along one axis depends on the data
    /// (NonZero, Unique, NonMaxSuppression, Compress). `shape` is then an
    /// upper bound, and the kernels leave the actual extent as a u32 at the
    /// place this names; the elements are laid out for the actual shape.
    #[prost(message, optional, tag = "20")]
    pub extent: Option<Extent>,
    /// With bounded dynamic dims: each axis as a polynomial over the
    /// symbols; `shape` then holds the bounds the buffers are sized for.
    #[prost(message, repeated, tag = "21")]
    pub dims: Vec<DimExpr>,
}

/// Where a data-dependent output extent is left by the kernels.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Extent {
    /// The axis of the output whose length the count gives.
    #[prost(uint32, tag = "1")]
    pub axis: u32,
    /// Index into `Bundle::buffers` (an Arena buffer).
    #[prost(uint32, tag = "2")]
    pub buffer: u32,
    /// Byte offset of the u32 count in that buffer.
    #[prost(uint64, tag = "3")]
    pub offset: u64,
}

/// How elements are stored on the GPU. Every physical element is 32 bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum PhysType {
    F32 = 0,
    I32 = 1,
    U32 = 2,
}

/// What fills a buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum BufferKind {
    /// Activations, inputs and outputs: planned offsets, read and written.
    Arena = 0,
    /// Constants: uploaded once from the weights section, then only read.
    Weights = 1,
}

/// One GPU buffer.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Buffer {
    #[prost(enumeration = "BufferKind", tag = "1")]
    pub kind: i32,
    /// Size in bytes (a multiple of 4).
    #[prost(uint64, tag = "2")]
    pub size: u64,
    /// For `Weights`: where its bytes start in the weights section.
    #[prost(uint64, tag = "3")]
    pub weights_offset: u64,
}

/// How a kernel binds one resource. Binding 0 is always the parameter block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum BindingKind {
    /// `var<uniform>` with a dynamic offset: the dispatch's parameter block.
    Params = 0,
    /// `var<storage, read>`.
    StorageRead = 1,
    /// `var<storage, read_write>`.
    StorageReadWrite = 2,
    /// `var<uniform>`, the run's symbol values (last binding, no offset).
    Dims = 3,
}

/// A compute kernel in every shader language the compiler emitted.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Kernel {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub entry_point: String,
    #[prost(uint32, repeated, tag = "3")]
    pub workgroup_size: Vec<u32>,
    /// Group 0, bindings 0..n-1 in this order (dense, as passthrough needs).
    #[prost(enumeration = "BindingKind", repeated, tag = "4")]
    pub bindings: Vec<i32>,
    /// Bytes of the parameter block this kernel reads.
    #[prost(uint32, tag = "5")]
    pub params_size: u32,
    #[prost(string, tag = "6")]
    pub wgsl: String,
    /// SPIR-V words, little endian.
    #[prost(bytes = "vec", tag = "7")]
    pub spirv: Vec<u8>,
    #[prost(string, tag = "8")]
    pub msl: String,
    /// The entry point's name in the MSL source (naga may rename it).
    #[prost(string, tag = "9")]
    pub msl_entry_point: String,
}

/// One step of the program.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Dispatch {
    /// Index into `Bundle::kernels`.
    #[prost(uint32, tag = "1")]
    pub kernel: u32,
    /// For each storage binding of the kernel (bindings 1..), the buffer it binds.
    #[prost(uint32, repeated, tag = "2")]
    pub buffers: Vec<u32>,
    /// Byte offset of this dispatch's block in `Bundle::params`.
    #[prost(uint32, tag = "3")]
    pub params_offset: u32,
    /// Workgroup counts (x, y, z).
    #[prost(uint32, repeated, tag = "4")]
    pub workgroups: Vec<u32>,
    /// The graph node(s) this dispatch computes, for profiles and errors.
    #[prost(string, tag = "5")]
    pub label: String,
    /// With bounded dynamic dims: the workgroup counts (x, y, z) per run;
    /// `workgroups` then holds their largest values.
    #[prost(message, repeated, tag = "6")]
    pub groups: Vec<Groups>,
    /// Bytes of the tensors the dispatch reads and writes (each counted
    /// once), for achieved-bandwidth figures in profiles.
    #[prost(uint64, tag = "40")]
    pub bytes: u64,
    /// Arithmetic operations (a multiply-add counts 2); 0 when only bytes
    /// matter.
    #[prost(uint64, tag = "41")]
    pub flops: u64,
    /// Empty: each storage binding binds its whole buffer. Otherwise one
    /// range per storage binding: buffers larger than one binding are bound
    /// in windows (one buffer may appear at several bindings).
    #[prost(message, repeated, tag = "30")]
    pub windows: Vec<Window>,
}

/// The byte range of a buffer that one binding covers.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Window {
    /// A multiple of WINDOW_ALIGN.
    #[prost(uint64, tag = "1")]
    pub offset: u64,
    /// Positive, a multiple of 4.
    #[prost(uint64, tag = "2")]
    pub size: u64,
}
