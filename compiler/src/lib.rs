//! drift-compiler: ONNX model → drift bundle.
//!
//! The whole pipeline is the flat list in [`compile_graph`]: import, bind
//! dynamic dims, build ops, order, infer shapes while folding constants,
//! drop dead nodes, lower to kernels, plan memory, generate shaders,
//! assemble the bundle.

pub mod codegen;
pub mod control;
pub mod dynamic;
pub mod error;
pub mod generate;
pub mod import;
pub mod inspect;
pub mod ir;
pub mod merge;
pub mod npy;
pub mod opt;
pub mod passes;
pub mod plan;
pub mod program;
pub mod quantize;
pub mod stages;
pub mod stats;

pub use error::{Error, Result};
pub use program::{Limits, WeightFormat};

use std::collections::BTreeMap;
use std::path::Path;

/// What the user chose at compile time.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Values of symbolic dimensions (`--dim batch=1`).
    pub dims: BTreeMap<String, usize>,
    /// Bounded dynamic dims (`--dim seq=1..2048`): kernels read them at run time.
    pub dim_ranges: BTreeMap<String, (usize, usize)>,
    /// Whole shapes for named inputs, overriding what the model declares.
    pub input_shapes: BTreeMap<String, Vec<usize>>,
    /// Values of inputs fixed at compile time (`--const-input name=file.npy`):
    /// shape-deciding operands such as Reshape's shape or Reduce's axes.
    pub const_inputs: BTreeMap<String, drift_ops::Tensor>,
    /// Weight-only quantization of constant MatMul weights (`--quantize`).
    pub quantize: Option<quantize::Quantize>,
    /// Append GPU token sampling to a decoder's logits (`--sampler`).
    pub sampler: bool,
    pub limits: Limits,
    /// Skip the graph optimizer (`--no-opt`).
    pub no_opt: bool,
    /// How float constants are stored (`--weights f32|f16`).
    pub weights: WeightFormat,
    /// Device targets to emit kernel sets for (`--target`); empty means
    /// `generic` alone. The first of `generic` or, lacking it, the last
    /// listed is the bundle's top-level program, the others its variants.
    pub targets: Vec<drift_ops::Target>,
    /// `--precision f16`: activations stored as f16 (math and accumulation
    /// stay f32 except in cooperative-matrix products, which multiply f16).
    pub f16: bool,
    /// Overrides of the product heuristics (`--tune`), for calibration sweeps.
    pub tuning: drift_ops::Tuning,
}

/// A compiled model, ready to be written.
pub struct Compiled {
    pub program: program::Program,
    pub stats: stats::Stats,
}

impl Compiled {
    /// The bundle file's bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        drift_runtime::format::write_bundle(&self.program.bundle, &self.program.weights)
    }
}

/// A runtime host tensor (e.g. read from `.npy`) as a compile-time constant.
pub fn host_to_tensor(t: &drift_runtime::HostTensor) -> std::result::Result<drift_ops::Tensor, String> {
    let dtype = drift_ops::DType::from_onnx(t.dtype.onnx()).map_err(|e| e.to_string())?;
    drift_ops::Tensor::from_raw(dtype, t.shape.clone(), &t.data).map_err(|e| e.to_string())
}

/// Compiles the ONNX file at `path`.
pub fn compile_file(path: &Path, opts: &Options) -> Result<Compiled> {
    let graph = import::import_file(path)?;
    compile_graph(graph, opts)
}

/// The pipeline, one pass per line.
pub fn compile_graph(mut g: ir::Graph, opts: &Options) -> Result<Compiled> {
    if opts.sampler {
        stages::add_sampler(&mut g)?;
    }
    quantize::repack_matmul_nbits(&mut g)?;
    if !opts.dim_ranges.is_empty() {
        merge::merge_sibling_matmuls(&mut g);
    }
    if let Some(q) = opts.quantize {
        quantize::quantize_matmuls(&mut g, q)?;
    }
    if !opts.dim_ranges.is_empty() {
        return stages::compile(g, opts);
    }
    passes::bind_inputs(&mut g, &opts.dims, &opts.input_shapes)?;
    passes::fix_input_values(&mut g, &opts.const_inputs)?;
    passes::build_ops(&mut g)?;
    let order = control::infer_with_control_flow(&mut g)?;
    let order = opt::run(&mut g, order, if opts.no_opt { &[] } else { opt::SIMPLIFY })?;
    let order = passes::split_oversized_weights(&mut g, &order, opts.limits.max_binding_bytes)?;
    passes::eliminate_dead_nodes(&mut g, &order);
    let order = opt::run(&mut g, order, if opts.no_opt { &[] } else { opt::FUSE })?;
    let targets = if opts.targets.is_empty() { vec![drift_ops::Target::GENERIC] } else { opts.targets.clone() };
    let mut programs = vec![];
    for target in targets {
        let target = drift_ops::Target { f16: opts.f16, tuning: opts.tuning, ..target };
        // Targets of big GPUs bind more than WebGPU's default.
        let limits = Limits {
            max_binding_bytes: opts.limits.max_binding_bytes.max(target.max_binding_bytes),
            ..opts.limits.clone()
        };
        let limits = if target.name == "generic" { opts.limits.clone() } else { limits };
        programs.push(program::build(&g, &order, &limits, &target, opts.weights)?);
    }
    let program = program::with_variants(programs);
    let stats = stats::of(&g, &order, &program.bundle);
    Ok(Compiled { program, stats })
}
