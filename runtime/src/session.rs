//! Replaying a bundle on a GPU.
//!
//! [`Session::new`] builds everything a run needs once: buffers (weights
//! uploaded), one params uniform buffer, a pipeline per kernel, a bind group
//! per dispatch and one staging buffer for all outputs. [`Session::run`] then
//! only writes inputs, records every dispatch into one compute pass, submits
//! once, and reads the outputs back with one map.
//!
//! Which shaders a session uses depends on the model's [`Trust`]: a trusted
//! model takes the GPU's passthrough path (SPIR-V or MSL as compiled), an
//! untrusted one always its WGSL, validated by naga and bounds-checked.

use std::borrow::Cow;
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use crate::bundle::{
    BindingKind, Buffer, BufferKind, Bundle, Dispatch, Groups, IoTensor, Kernel, Need, PARAMS_ALIGN, Symbol,
    SymbolRange, WINDOW_ALIGN,
};
use crate::error::{Error, Result, fmt_shape};
use crate::gpu::{Gpu, ShaderPath, take_error};
use crate::model::{Model, TensorInfo, Trust, target_name};
use crate::tensor::HostTensor;
use crate::validate::{binding_kinds, io_size};

mod steps;
pub use steps::StepOutputs;

/// A model instantiated on a GPU, ready to run repeatedly.
pub struct Session {
    shader_path: ShaderPath,
    device: wgpu::Device,
    queue: wgpu::Queue,
    errors: Arc<Mutex<Option<String>>>,
    buffers: Vec<wgpu::Buffer>,
    pipelines: Vec<wgpu::ComputePipeline>,
    steps: Vec<Step>,
    inputs: Vec<Slot>,
    outputs: Vec<Slot>,
    /// Inputs fixed at compile time: checked, never uploaded.
    fixed_inputs: Vec<(String, HostTensor)>,
    /// All outputs side by side, where `staging_layout` says; `None` when
    /// no output has elements.
    staging: Option<wgpu::Buffer>,
    staging_layout: Readback,
    /// Reused for converting inputs to their GPU form.
    scratch: Vec<u8>,
    /// The target of the program this session runs (`Model::program_for`).
    target: String,
    /// Bounded dynamic dims, and the uniform their run values go to.
    symbols: Vec<Symbol>,
    dims: wgpu::Buffer,
    stages: Vec<StageRt>,
    state: Option<StateRt>,
    /// The stage and symbol values of the last run (what `replay` repeats).
    last: (usize, Vec<u64>),
    /// Each output's shape in the last run (what a carried or chained input
    /// takes); `None` before the first.
    last_shapes: Vec<Option<Vec<usize>>>,
}

/// One dispatch, ready to record.
struct Step {
    pipeline: usize,
    /// The bind group, and a second one with the state buffers swapped
    /// when the dispatch binds them.
    bind_groups: Vec<wgpu::BindGroup>,
    params_offset: u32,
    workgroups: [u32; 3],
    /// Workgroup counts computed per run (dynamic dims), if any.
    groups: Vec<Groups>,
}

/// One program of the bundle: a range of dispatches and where the inputs
/// and outputs live while it runs.
struct StageRt {
    when: Vec<SymbolRange>,
    steps: std::ops::Range<usize>,
    /// (buffer, offset, bytes reserved) per input and output.
    inputs: Vec<(usize, u64, u64)>,
    outputs: Vec<(usize, u64, u64)>,
}

/// Carried state: the two buffers, which inputs and outputs pair up, and
/// which buffer the inputs are read from now.
struct StateRt {
    buffers: [usize; 2],
    /// (input index, output index).
    pairs: Vec<(usize, usize)>,
    swapped: bool,
}

/// Where a run's input comes from.
#[derive(Clone, Copy, Debug)]
pub enum Feed<'a> {
    /// Uploaded from the host.
    Host(&'a HostTensor),
    /// The previous run's output paired with this input (`Bundle::state`),
    /// left on the GPU: nothing is copied.
    Carried,
    /// The named output of the previous step of [`Session::run_steps`],
    /// copied on the GPU (e.g. a sampled token fed back as the next input).
    Output(&'a str),
}

/// Where an input or output lives on the GPU.
struct Slot {
    info: TensorInfo,
    /// Placement in the first stage (stages give their own).
    buffer: usize,
    offset: u64,
    /// Bytes of the physical copy at the bounds: 4 per element.
    size: u64,
    /// Outputs only: a data-dependent extent to read back with the data.
    extent: Option<ExtentSlot>,
    /// The bundle's description (symbolic dims).
    desc: IoTensor,
}

/// Where a data-dependent output's actual extent is, and where it lands.
struct ExtentSlot {
    axis: usize,
    buffer: usize,
    offset: u64,
}

/// Bytes of the uniform binding of a kernel: wgpu needs a nonzero size and
/// WGSL uniform structs are multiples of 16 bytes.
fn params_binding_size(kernel: &Kernel) -> u64 {
    u64::from(kernel.params_size).next_multiple_of(16).max(16)
}

/// Bytes of the `dims` uniform: one u32 per possible symbol.
const DIMS_BYTES: u64 = 32;

impl Session {
    /// Creates every GPU object `model` needs on `gpu`.
    pub fn new(gpu: &Gpu, model: &Model) -> Result<Session> {
        let bundle = model.program_for(gpu.vendor(), |n| gpu.has(n))?;
        let shader_path = shader_path(gpu, model.trust());
        // Every check before the first GPU call.
        check_needs(gpu, bundle)?;
        check_limits(gpu, bundle)?;
        check_shaders(bundle, shader_path)?;
        let device = &gpu.device;

        let inputs: Vec<Slot> = bundle.inputs.iter().zip(model.inputs()).map(|(t, info)| slot(t, info)).collect();
        let outputs: Vec<Slot> = bundle.outputs.iter().zip(model.outputs()).map(|(t, info)| slot(t, info)).collect();
        let staging_layout = readback_layout(&outputs, &vec![true; outputs.len()]);
        check_readback(&gpu.device.limits(), staging_layout.bytes)?;
        let ((buffers, params, staging, dims), err) = catch(device, || {
            let buffers = create_buffers(device, bundle, model.weights());
            let dims = device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("dims"),
                size: DIMS_BYTES,
                usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            let params = create_params_buffer(device, &gpu.queue, bundle);
            (buffers, params, create_readback(device, "outputs", staging_layout.bytes), dims)
        });
        if let Some(e) = err {
            return Err(Error::Gpu(format!("creating buffers: {e}")));
        }
        let state = state_of(bundle, &inputs, &outputs);
        // The buffers as a state-carrying run sees them: the two swapped.
        let swapped: Vec<wgpu::Buffer> = match &state {
            Some(st) => (0..buffers.len()).map(|b| buffers[swap(st, b, true)].clone()).collect(),
            None => vec![],
        };

        let (layouts, pipelines) = create_pipelines(device, shader_path, bundle)?;
        let (steps, err) = catch(device, || {
            let step = |d: &Dispatch| {
                let mut bind_groups = vec![create_bind_group(device, bundle, d, &layouts, &buffers, &params, &dims)];
                let binds_state =
                    state.as_ref().is_some_and(|st| d.buffers.iter().any(|&b| st.buffers.contains(&(b as usize))));
                if binds_state {
                    bind_groups.push(create_bind_group(device, bundle, d, &layouts, &swapped, &params, &dims));
                }
                Step {
                    pipeline: d.kernel as usize,
                    bind_groups,
                    params_offset: d.params_offset,
                    workgroups: [d.workgroups[0], d.workgroups[1], d.workgroups[2]],
                    groups: d.groups.clone(),
                }
            };
            bundle.dispatches.iter().map(step).collect::<Vec<_>>()
        });
        if let Some(e) = err {
            return Err(Error::Gpu(format!("creating bind groups: {e}")));
        }

        Ok(Session {
            shader_path,
            device: device.clone(),
            queue: gpu.queue.clone(),
            errors: Arc::clone(&gpu.errors),
            buffers,
            pipelines,
            steps,
            stages: stages_of(bundle, &inputs, &outputs),
            inputs,
            fixed_inputs: model.fixed_inputs().to_vec(),
            outputs,
            staging,
            staging_layout,
            scratch: Vec::new(),
            target: target_name(bundle).to_string(),
            symbols: bundle.symbols.clone(),
            dims,
            state,
            last: (0, vec![0; bundle.symbols.len()]),
            last_shapes: vec![None; bundle.outputs.len()],
        })
    }

    /// How this session's kernels reached the GPU: passthrough only for a
    /// trusted model on a GPU that has it, WGSL otherwise.
    pub fn shader_path(&self) -> ShaderPath {
        self.shader_path
    }

    /// The target of the kernel set this session runs ("generic", "nvidia", ...).
    pub fn target(&self) -> &str {
        &self.target
    }

    /// Number of dispatches one run records (of the last run's stage).
    pub fn dispatches(&self) -> usize {
        self.stage_dispatches().len()
    }

    /// The bundle dispatches (indices into the program's `dispatches`) that
    /// a run of the last run's stage records; all of them without stages.
    pub fn stage_dispatches(&self) -> std::ops::Range<usize> {
        self.stages.get(self.last.0).map_or(0..self.steps.len(), |s| s.steps.clone())
    }

    /// Replays every dispatch on the inputs of the last run (no uploads, no
    /// readback) and waits for the GPU. Returns the CPU time spent
    /// recording and submitting, for benchmarks.
    pub fn replay(&mut self) -> Result<Duration> {
        let start = Instant::now();
        let mut encoder = self.device.create_command_encoder(&Default::default());
        let (stage, vals) = self.last.clone();
        self.record_pass(&mut encoder, None, stage, &vals);
        self.queue.submit([encoder.finish()]);
        let cpu = start.elapsed();
        self.wait()?;
        Ok(cpu)
    }

    /// GPU nanoseconds of every dispatch of one replay, in dispatch order,
    /// from timestamps written between dispatches (needs the adapter's
    /// TIMESTAMP_QUERY_INSIDE_PASSES; not on Apple GPUs).
    pub fn profile(&mut self) -> Result<Vec<f64>> {
        let features = self.device.features();
        if !features.contains(wgpu::Features::TIMESTAMP_QUERY | wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES) {
            return Err(Error::Unsupported("this GPU cannot write timestamps between dispatches".into()));
        }
        let (stage, vals) = self.last.clone();
        let count = self.stages[stage].steps.len() as u32 + 1;
        if count > wgpu::QUERY_SET_MAX_QUERIES {
            return Err(Error::Unsupported(format!(
                "profiling {} dispatches needs more than {} timestamps",
                self.steps.len(),
                wgpu::QUERY_SET_MAX_QUERIES
            )));
        }
        let bytes = u64::from(count) * wgpu::QUERY_SIZE as u64;
        let queries = self.device.create_query_set(&wgpu::QuerySetDescriptor {
            label: Some("profile"),
            ty: wgpu::QueryType::Timestamp,
            count,
        });
        let buffer = |usage| {
            self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("profile"),
                size: bytes,
                usage,
                mapped_at_creation: false,
            })
        };
        let resolved = buffer(wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC);
        let readback = buffer(wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST);
        let mut encoder = self.device.create_command_encoder(&Default::default());
        self.record_pass(&mut encoder, Some(&queries), stage, &vals);
        encoder.resolve_query_set(&queries, 0..count, &resolved, 0);
        encoder.copy_buffer_to_buffer(&resolved, 0, &readback, 0, bytes);
        self.queue.submit([encoder.finish()]);
        let view = self.map(&readback)?;
        let ticks: Vec<u64> =
            view.chunks_exact(8).map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes"))).collect();
        drop(view);
        readback.unmap();
        if let Some(e) = take_error(&self.errors) {
            return Err(Error::Gpu(e));
        }
        let period = f64::from(self.queue.get_timestamp_period());
        Ok(ticks.windows(2).map(|w| w[1].saturating_sub(w[0]) as f64 * period).collect())
    }

    /// Waits for submitted work; reports what wgpu reported meanwhile.
    fn wait(&self) -> Result<()> {
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::Gpu(format!("waiting for the GPU: {e}")))?;
        match take_error(&self.errors) {
            Some(e) => Err(Error::Gpu(e)),
            None => Ok(()),
        }
    }

    /// The inputs `run` expects, in bundle order.
    pub fn inputs(&self) -> impl Iterator<Item = &TensorInfo> {
        self.inputs.iter().map(|s| &s.info)
    }

    /// The outputs `run` returns, in bundle order.
    pub fn outputs(&self) -> impl Iterator<Item = &TensorInfo> {
        self.outputs.iter().map(|s| &s.info)
    }

    /// The bounded dynamic dims: name, smallest and largest value.
    pub fn symbols(&self) -> impl Iterator<Item = (&str, u64, u64)> {
        self.symbols.iter().map(|s| (s.name.as_str(), s.min, s.max))
    }

    /// Input `name`'s shape for the given symbol values (in [`Session::symbols`]
    /// order), e.g. an empty KV cache with every dynamic dim 0.
    pub fn input_shape_at(&self, name: &str, values: &[u64]) -> Option<Vec<usize>> {
        let slot = self.inputs.iter().find(|s| s.info.name == name)?;
        (values.len() >= self.symbols.len()).then(|| crate::dims::shape(&slot.desc, values))
    }

    /// The (input, output) names a run can carry over on the GPU.
    pub fn state_pairs(&self) -> Vec<(&str, &str)> {
        let Some(st) = &self.state else { return vec![] };
        st.pairs.iter().map(|&(i, o)| (self.inputs[i].info.name.as_str(), self.outputs[o].info.name.as_str())).collect()
    }

    /// Runs the model once. Every input must be given exactly once, with the
    /// bundle's dtype and shape (within the bounds of dynamic dims); outputs
    /// come back in bundle order.
    pub fn run(&mut self, inputs: &[(&str, &HostTensor)]) -> Result<Vec<(String, HostTensor)>> {
        let feeds: Vec<(&str, Feed)> = inputs.iter().map(|&(n, t)| (n, Feed::Host(t))).collect();
        self.run_with(&feeds, None)
    }

    /// A run whose inputs may stay on the GPU from the previous run
    /// ([`Feed::Carried`]), reading back only the outputs in `fetch` (all
    /// when `None`); the others stay on the GPU, where a state output is
    /// carried into the next run.
    pub fn run_with(&mut self, feeds: &[(&str, Feed)], fetch: Option<&[&str]>) -> Result<Vec<(String, HostTensor)>> {
        if let Some((name, _)) = feeds.iter().find(|(_, f)| matches!(f, Feed::Output(_))) {
            return Err(Error::Run(format!(
                "input '{name}': an output feeds an input only between the steps of run_steps"
            )));
        }
        let wanted = self.fetched(fetch)?;
        let run = self.prepare(feeds)?;
        let staging = self.staging.as_ref().map(|b| (b, 0, &self.staging_layout));
        self.queue.submit([self.record(&run, staging, None)]);
        let layout = &self.staging_layout;
        self.read_back(self.staging.as_ref(), |words| self.convert(words, layout, &run.shapes, &wanted))
    }

    /// Matches a run's inputs, solves its symbol values and picks its stage,
    /// uploads its host inputs and symbol values (queued: they reach the GPU
    /// after every earlier submission), and moves the carried state on.
    fn prepare(&mut self, feeds: &[(&str, Feed)]) -> Result<Prepared> {
        let carried = feeds.iter().any(|(_, f)| matches!(f, Feed::Carried));
        let (order, shapes, chained) = self.match_inputs(feeds)?;
        let vals = if self.symbols.is_empty() {
            vec![]
        } else {
            let given: Vec<(&IoTensor, &[usize])> = self
                .inputs
                .iter()
                .zip(&shapes)
                .filter(|(s, _)| !s.desc.dims.is_empty())
                .map(|(s, sh)| (&s.desc, sh.as_slice()))
                .collect();
            crate::dims::solve(&self.symbols, &given)?
        };
        let stage = self.stage_for(&vals)?;
        if let Some(st) = &mut self.state {
            st.swapped ^= carried;
        }
        for (i, tensor) in order.iter().enumerate() {
            let Some(tensor) = tensor else { continue };
            let what = format!("input '{}'", self.inputs[i].info.name);
            self.scratch.clear();
            tensor.dtype.to_physical(&tensor.data, tensor.len(), &what, &mut self.scratch)?;
            if !self.scratch.is_empty() {
                let (b, off, size) = self.place(stage, true, i);
                if self.scratch.len() as u64 > size {
                    let name = &self.inputs[i].info.name;
                    return Err(Error::Run(format!("input '{name}' is larger than this program planned for")));
                }
                self.queue.write_buffer(&self.buffers[b], off, &self.scratch);
            }
        }
        if !self.symbols.is_empty() {
            let mut words = [0u8; DIMS_BYTES as usize];
            for (k, &v) in vals.iter().enumerate() {
                words[4 * k..4 * k + 4].copy_from_slice(&(v as u32).to_le_bytes());
            }
            self.queue.write_buffer(&self.dims, 0, &words);
        }
        let out_shapes: Vec<Vec<usize>> = self.outputs.iter().map(|o| crate::dims::shape(&o.desc, &vals)).collect();
        self.last = (stage, vals.clone());
        self.last_shapes = out_shapes.iter().cloned().map(Some).collect();
        Ok(Prepared { stage, vals, input_shapes: shapes, shapes: out_shapes, chained })
    }

    /// Which outputs a run reads back.
    fn fetched(&self, fetch: Option<&[&str]>) -> Result<Vec<bool>> {
        let Some(names) = fetch else { return Ok(vec![true; self.outputs.len()]) };
        let mut wanted = vec![false; self.outputs.len()];
        for name in names {
            wanted[self.output_index(name)?] = true;
        }
        Ok(wanted)
    }

    /// The index of output `name`, or an error listing the outputs.
    fn output_index(&self, name: &str) -> Result<usize> {
        self.outputs.iter().position(|o| o.info.name == name).ok_or_else(|| {
            let all: Vec<&str> = self.outputs.iter().map(|o| o.info.name.as_str()).collect();
            Error::Run(format!("unknown output '{name}' (outputs: {})", all.join(", ")))
        })
    }

    /// The first stage whose ranges hold the run's symbol values.
    fn stage_for(&self, vals: &[u64]) -> Result<usize> {
        let fits = |s: &StageRt| s.when.iter().all(|r| (r.min..=r.max).contains(&vals[r.sym as usize]));
        self.stages.iter().position(fits).ok_or_else(|| {
            let dims: Vec<String> = self.symbols.iter().zip(vals).map(|(s, v)| format!("{}={v}", s.name)).collect();
            Error::Run(format!("no program of the bundle serves {}", dims.join(", ")))
        })
    }

    /// Buffer and offset of input (or output) `i` in `stage`, the state
    /// buffers swapped as the current run sees them.
    fn place(&self, stage: usize, input: bool, i: usize) -> (usize, u64, u64) {
        let st = &self.stages[stage];
        let (b, off, size) = if input { st.inputs[i] } else { st.outputs[i] };
        match &self.state {
            Some(state) => (swap(state, b, state.swapped), off, size),
            None => (b, off, size),
        }
    }

    /// Pairs the given inputs with the bundle's, in bundle order, checking
    /// names, dtypes, shapes and data lengths; a carried or chained input
    /// takes the shape its output had in the last run. Returns the host
    /// tensors to upload, every input's shape and the chained inputs.
    fn match_inputs<'a>(&self, given: &[(&str, Feed<'a>)]) -> Result<Matched<'a>> {
        let mut order: Vec<Option<Feed>> = vec![None; self.inputs.len()];
        for &(name, feed) in given {
            if let (Some((_, fixed)), Feed::Host(tensor)) = (self.fixed_inputs.iter().find(|(n, _)| n == name), feed) {
                check_fixed_input(name, fixed, tensor)?;
                continue;
            }
            let Some(i) = self.inputs.iter().position(|s| s.info.name == name) else {
                let names: Vec<&str> = self.inputs.iter().map(|s| s.info.name.as_str()).collect();
                return Err(Error::UnknownInput { name: name.to_string(), expected: names.join(", ") });
            };
            if order[i].replace(feed).is_some() {
                return Err(Error::DuplicateInput(name.to_string()));
            }
        }
        let mut tensors = vec![];
        let mut shapes = vec![];
        let mut chained = vec![];
        for (i, (slot, feed)) in self.inputs.iter().zip(order).enumerate() {
            match feed {
                None => return Err(Error::MissingInput(slot.info.name.clone())),
                Some(Feed::Host(t)) => {
                    check_input(&slot.info, &slot.desc, t)?;
                    tensors.push(Some(t));
                    shapes.push(t.shape.clone());
                }
                Some(Feed::Carried) => {
                    shapes.push(self.carried_shape(&slot.info.name)?);
                    tensors.push(None);
                }
                Some(Feed::Output(name)) => {
                    let o = self.output_index(name)?;
                    shapes.push(self.chained_shape(slot, o)?);
                    tensors.push(None);
                    chained.push((i, o));
                }
            }
        }
        Ok((tensors, shapes, chained))
    }

    /// The shape the output paired with input `name` had in the last run.
    fn carried_shape(&self, name: &str) -> Result<Vec<usize>> {
        let state =
            self.state.as_ref().ok_or_else(|| Error::Run(format!("input '{name}': the bundle carries no state")))?;
        let i = self.inputs.iter().position(|s| s.info.name == name).expect("matched above");
        let Some(&(_, o)) = state.pairs.iter().find(|(inp, _)| *inp == i) else {
            return Err(Error::Run(format!("input '{name}' is not carried state (state: {:?})", self.state_pairs())));
        };
        self.last_shape(name, o)
    }

    /// The shape of output `o` in the last run, as input `input` takes it:
    /// same dtype, no data-dependent extent, a shape the input accepts.
    fn chained_shape(&self, input: &Slot, o: usize) -> Result<Vec<usize>> {
        let out = &self.outputs[o];
        let name = &input.info.name;
        if out.info.dtype != input.info.dtype {
            return Err(Error::DTypeMismatch {
                name: name.clone(),
                expected: input.info.dtype.name(),
                got: out.info.dtype.name(),
            });
        }
        if out.extent.is_some() {
            let o = &out.info.name;
            return Err(Error::Run(format!("input '{name}': output '{o}' has a data-dependent size")));
        }
        let shape = self.last_shape(name, o)?;
        check_shape(&input.info, &input.desc, &shape)?;
        Ok(shape)
    }

    /// The shape of output `o` in the last run, for input `name`.
    fn last_shape(&self, name: &str, o: usize) -> Result<Vec<usize>> {
        self.last_shapes[o].clone().ok_or_else(|| {
            Error::Run(format!(
                "input '{name}': nothing to carry, '{}' has not been computed yet",
                self.outputs[o].info.name
            ))
        })
    }

    /// One command buffer: the chained inputs copied in from `carry`, the
    /// stage's dispatches in one compute pass, the fetched outputs (their
    /// actual size) copied into `readback` at its base offset, and the
    /// outputs that `carry` holds copied out for the next step.
    fn record(
        &self,
        run: &Prepared,
        readback: Option<(&wgpu::Buffer, u64, &Readback)>,
        carry: Option<&Carry>,
    ) -> wgpu::CommandBuffer {
        let mut encoder = self.device.create_command_encoder(&Default::default());
        let bytes = |shape: &[usize], bound: u64| (shape.iter().product::<usize>() as u64 * 4).min(bound);
        for &(i, o) in &run.chained {
            let carry = carry.expect("run_steps gives a carry buffer to steps with chained inputs");
            let (b, off, size) = self.place(run.stage, true, i);
            let n = bytes(&run.input_shapes[i], size);
            if n > 0 {
                encoder.copy_buffer_to_buffer(&carry.buffer, carry.offset(o), &self.buffers[b], off, n);
            }
        }
        self.record_pass(&mut encoder, None, run.stage, &run.vals);
        if let Some((buffer, base, layout)) = readback {
            for (i, at) in layout.data.iter().enumerate() {
                let Some(at) = at else { continue };
                let (b, off, size) = self.place(run.stage, false, i);
                let n = bytes(&run.shapes[i], size);
                if n > 0 {
                    encoder.copy_buffer_to_buffer(&self.buffers[b], off, buffer, base + at, n);
                }
            }
            for (o, at) in self.outputs.iter().zip(&layout.extents) {
                if let (Some(e), Some(at)) = (&o.extent, at) {
                    encoder.copy_buffer_to_buffer(&self.buffers[e.buffer], e.offset, buffer, base + at, 4);
                }
            }
        }
        if let Some(carry) = carry {
            for &(o, at) in &carry.outputs {
                let (b, off, size) = self.place(run.stage, false, o);
                let n = bytes(&run.shapes[o], size);
                if n > 0 {
                    encoder.copy_buffer_to_buffer(&self.buffers[b], off, &carry.buffer, at, n);
                }
            }
        }
        encoder.finish()
    }

    /// One compute pass over the dispatches of `stage`, their workgroup
    /// counts evaluated for the symbol values `vals` (empty ones skipped),
    /// the state buffers bound as the current run sees them; with
    /// `timestamps`, query `i` is written before dispatch `i` and the last
    /// after all of them.
    fn record_pass(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        timestamps: Option<&wgpu::QuerySet>,
        stage: usize,
        vals: &[u64],
    ) {
        let swapped = self.state.as_ref().is_some_and(|s| s.swapped);
        let range = self.stages[stage].steps.clone();
        let mut pass = encoder.begin_compute_pass(&Default::default());
        for (i, step) in self.steps[range.clone()].iter().enumerate() {
            if let Some(q) = timestamps {
                pass.write_timestamp(q, i as u32);
            }
            let [x, y, z] = if step.groups.is_empty() {
                step.workgroups
            } else {
                [0, 1, 2].map(|k| crate::dims::groups(&step.groups[k], vals))
            };
            if x == 0 || y == 0 || z == 0 {
                continue;
            }
            let bind_group = &step.bind_groups[if swapped { step.bind_groups.len() - 1 } else { 0 }];
            pass.set_pipeline(&self.pipelines[step.pipeline]);
            pass.set_bind_group(0, bind_group, &[step.params_offset]);
            pass.dispatch_workgroups(x, y, z);
        }
        if let Some(q) = timestamps {
            pass.write_timestamp(q, range.len() as u32);
        }
    }

    /// Waits for the submitted work, maps `readback` (if any) once and
    /// hands its bytes to `convert`; an error wgpu reported meanwhile
    /// explains a failure best, so it comes first.
    fn read_back<T>(&self, readback: Option<&wgpu::Buffer>, convert: impl FnOnce(&[u8]) -> Result<T>) -> Result<T> {
        let Some(buffer) = readback else {
            // Nothing to read back, but a run still ends when the GPU is done.
            self.wait()?;
            return convert(&[]);
        };
        let result = match (self.map(buffer), take_error(&self.errors)) {
            (_, Some(e)) => Err(Error::Gpu(e)),
            (Err(e), None) => Err(e),
            (Ok(view), None) => convert(&view),
        };
        // Always unmap, or the next run's map fails. After a failed map this
        // reports "not mapped", which is noise next to the error above.
        buffer.unmap();
        if result.is_err() {
            take_error(&self.errors);
        }
        result
    }

    /// The fetched outputs from the bytes of a readback laid out as
    /// `layout` (`words` is empty when every output is).
    fn convert(
        &self,
        words: &[u8],
        layout: &Readback,
        shapes: &[Vec<usize>],
        wanted: &[bool],
    ) -> Result<Vec<(String, HostTensor)>> {
        let word_at =
            |at: u64| words.get(at as usize..at as usize + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
        let mut fetched = vec![];
        for (i, o) in self.outputs.iter().enumerate().filter(|(i, _)| wanted[*i]) {
            let count = layout.extents[i].map(|at| word_at(at).unwrap_or(0) as usize);
            let shape = actual_shape(o, shapes[i].clone(), count)?;
            let bytes = shape.iter().product::<usize>() * 4;
            let at = layout.data[i].unwrap_or(0) as usize;
            let words = words.get(at..at + bytes).unwrap_or_default();
            let mut data = Vec::with_capacity(words.len() / 4 * o.info.dtype.size_bytes());
            o.info.dtype.from_physical(words, &mut data);
            fetched.push((o.info.name.clone(), HostTensor { dtype: o.info.dtype, shape, data }));
        }
        Ok(fetched)
    }

    /// Maps `staging` for reading and waits for the GPU.
    fn map(&self, staging: &wgpu::Buffer) -> Result<wgpu::BufferView> {
        let (tx, rx) = mpsc::channel();
        staging.map_async(wgpu::MapMode::Read, .., move |r| {
            // The receiver lives until after the poll below; a failed send
            // can only mean it is gone, and then nobody needs the result.
            let _ = tx.send(r);
        });
        if let Err(e) = self.device.poll(wgpu::PollType::wait_indefinitely()) {
            return Err(Error::Gpu(format!("waiting for the GPU: {e}")));
        }
        match rx.try_recv() {
            Ok(Ok(())) => staging.get_mapped_range(..).map_err(|e| Error::Gpu(format!("reading outputs: {e}"))),
            Ok(Err(e)) => Err(Error::Gpu(format!("reading outputs: {e}"))),
            Err(_) => Err(Error::Gpu("reading outputs: the map did not complete".to_string())),
        }
    }
}

/// The host tensors to upload (`None`: on the GPU already), every input's
/// shape, and the chained inputs as (input, output).
type Matched<'a> = (Vec<Option<&'a HostTensor>>, Vec<Vec<usize>>, Vec<(usize, usize)>);

/// A run whose inputs are uploaded and symbol values written, ready to record.
struct Prepared {
    stage: usize,
    vals: Vec<u64>,
    input_shapes: Vec<Vec<usize>>,
    /// Every output's shape at `vals`.
    shapes: Vec<Vec<usize>>,
    /// Inputs taken from the previous step's outputs: (input, output).
    chained: Vec<(usize, usize)>,
}

/// Outputs that the next step of a chain takes as inputs, each kept at its
/// offset in `buffer` between the steps. A separate buffer, because an
/// input's place may overlap the output's, and the next step's uploads
/// land before its commands run.
struct Carry {
    buffer: wgpu::Buffer,
    /// (output, offset).
    outputs: Vec<(usize, u64)>,
}

impl Carry {
    fn offset(&self, output: usize) -> u64 {
        self.outputs.iter().find(|(o, _)| *o == output).map_or(0, |&(_, at)| at)
    }
}

/// Buffer `b` as a run sees it: with `swapped`, the two state buffers trade places.
fn swap(st: &StateRt, b: usize, swapped: bool) -> usize {
    match (swapped, st.buffers) {
        (true, [s0, s1]) if b == s0 => s1,
        (true, [s0, s1]) if b == s1 => s0,
        _ => b,
    }
}

/// The bundle's stages, or one stage running every dispatch.
fn stages_of(bundle: &Bundle, inputs: &[Slot], outputs: &[Slot]) -> Vec<StageRt> {
    if bundle.stages.is_empty() {
        return vec![StageRt {
            when: vec![],
            steps: 0..bundle.dispatches.len(),
            inputs: inputs.iter().map(|s| (s.buffer, s.offset, s.size)).collect(),
            outputs: outputs.iter().map(|s| (s.buffer, s.offset, s.size)).collect(),
        }];
    }
    let place = |p: &crate::bundle::Place| (p.buffer as usize, p.offset, p.size);
    bundle
        .stages
        .iter()
        .map(|s| StageRt {
            when: s.when.clone(),
            steps: s.first_dispatch as usize..(s.first_dispatch + s.dispatch_count) as usize,
            inputs: s.inputs.iter().map(place).collect(),
            outputs: s.outputs.iter().map(place).collect(),
        })
        .collect()
}

/// The carried state of the bundle, if it has any.
fn state_of(bundle: &Bundle, inputs: &[Slot], outputs: &[Slot]) -> Option<StateRt> {
    let [s0, s1] = bundle.state_buffers[..] else { return None };
    let index = |slots: &[Slot], name: &str| slots.iter().position(|s| s.info.name == name);
    let pairs =
        bundle.state.iter().filter_map(|p| Some((index(inputs, &p.input)?, index(outputs, &p.output)?))).collect();
    Some(StateRt { buffers: [s0 as usize, s1 as usize], pairs, swapped: false })
}

/// An output's shape: the bundle's, with a data-dependent extent replaced
/// by the `count` the kernels left (checked against the planned bound).
fn actual_shape(o: &Slot, mut shape: Vec<usize>, count: Option<usize>) -> Result<Vec<usize>> {
    let (Some(e), Some(count)) = (&o.extent, count) else { return Ok(shape) };
    if count > shape[e.axis] {
        return Err(Error::Gpu(format!(
            "output '{}': the kernels report {count} entries along axis {}, more than the planned {}",
            o.info.name, e.axis, shape[e.axis]
        )));
    }
    shape[e.axis] = count;
    Ok(shape)
}

/// A fixed input is part of the program: a different value would need a
/// different program, so it is an error, never silently ignored.
fn check_fixed_input(name: &str, fixed: &HostTensor, given: &HostTensor) -> Result<()> {
    if given == fixed {
        return Ok(());
    }
    Err(Error::FixedInputMismatch {
        name: name.to_string(),
        expected: format!("{} {} {:?}", fixed.dtype.name(), fmt_shape(&fixed.shape), preview(fixed)),
        got: format!("{} {} {:?}", given.dtype.name(), fmt_shape(&given.shape), preview(given)),
    })
}

/// The first few values of a tensor, for messages.
fn preview(t: &HostTensor) -> Vec<f64> {
    t.to_f64_vec().into_iter().take(8).collect()
}

/// Checks a given tensor against the bundle's description of that input
/// (the shape only when it is static: dynamic dims are solved later).
fn check_input(info: &TensorInfo, desc: &IoTensor, tensor: &HostTensor) -> Result<()> {
    if tensor.dtype != info.dtype {
        return Err(Error::DTypeMismatch {
            name: info.name.clone(),
            expected: info.dtype.name(),
            got: tensor.dtype.name(),
        });
    }
    check_shape(info, desc, &tensor.shape)?;
    tensor.check_len(&format!("input '{}'", info.name))
}

/// Checks a shape against the bundle's description of an input: its rank,
/// and every dim when none is dynamic (dynamic dims are solved later).
fn check_shape(info: &TensorInfo, desc: &IoTensor, shape: &[usize]) -> Result<()> {
    if shape.len() != info.shape.len() || (desc.dims.is_empty() && shape != info.shape) {
        return Err(Error::ShapeMismatch {
            name: info.name.clone(),
            expected: fmt_shape(&info.shape),
            got: fmt_shape(shape),
        });
    }
    Ok(())
}

fn slot(t: &IoTensor, info: &TensorInfo) -> Slot {
    Slot {
        info: info.clone(),
        buffer: t.buffer as usize,
        offset: t.offset,
        size: io_size(t).expect("validate() checked the size"),
        extent: t.extent.as_ref().map(|e| ExtentSlot {
            axis: e.axis as usize,
            buffer: e.buffer as usize,
            offset: e.offset,
        }),
        desc: t.clone(),
    }
}

/// Runs `f` inside validation, out-of-memory and internal error scopes and
/// returns its value with the first error caught, so bad bundles or shaders
/// become `Error`s instead of reaching the uncaptured-error handler.
fn catch<T>(device: &wgpu::Device, f: impl FnOnce() -> T) -> (T, Option<String>) {
    use wgpu::ErrorFilter::*;
    let scopes = [Validation, OutOfMemory, Internal].map(|filter| device.push_error_scope(filter));
    let value = f();
    let mut first = None;
    // Scopes pop in reverse order of pushing.
    for scope in scopes.into_iter().rev() {
        if let Some(e) = pollster::block_on(scope.pop()) {
            first.get_or_insert_with(|| e.to_string().trim_end().to_string());
        }
    }
    (value, first)
}

/// The GPU's preferred path for a trusted model; WGSL for an untrusted one.
fn shader_path(gpu: &Gpu, trust: Trust) -> ShaderPath {
    match trust {
        Trust::Trusted => gpu.shader_path,
        Trust::Untrusted => ShaderPath::Wgsl,
    }
}

/// An untrusted bundle runs only WGSL: its SPIR-V would otherwise reach
/// naga's SPIR-V front end, a larger surface than the WGSL one, for no gain.
fn check_shaders(bundle: &Bundle, path: ShaderPath) -> Result<()> {
    if path != ShaderPath::Wgsl {
        return Ok(());
    }
    match bundle.kernels.iter().position(|k| k.wgsl.is_empty()) {
        Some(i) => Err(crate::error::bundle_err(
            format!("kernels[{i}].wgsl"),
            "is empty; without WGSL the kernel can only run as a trusted bundle on a passthrough GPU",
        )),
        None => Ok(()),
    }
}

/// Fails with `Error::Unsupported` when the program's kernels use device
/// features the GPU lacks (a bundle compiled for other targets only).
fn check_needs(gpu: &Gpu, bundle: &Bundle) -> Result<()> {
    for need in bundle.needs.iter().filter_map(|&n| Need::try_from(n).ok()) {
        if !gpu.has(need) {
            return Err(Error::Unsupported(format!(
                "the '{}' kernels need {need:?}, which the GPU lacks (compile with --target generic)",
                target_name(bundle)
            )));
        }
    }
    Ok(())
}

/// Fails with `Error::Unsupported` when the bundle needs more than the device allows.
fn check_limits(gpu: &Gpu, bundle: &Bundle) -> Result<()> {
    let limits = gpu.device.limits();
    let unsupported = |msg: String| Err(Error::Unsupported(msg));
    let align = limits.min_uniform_buffer_offset_alignment;
    if align == 0 || !PARAMS_ALIGN.is_multiple_of(align) {
        return unsupported(format!("its uniform offset alignment {align} does not divide {}", PARAMS_ALIGN));
    }
    for (i, b) in bundle.buffers.iter().enumerate() {
        if b.size > limits.max_buffer_size {
            let max = limits.max_buffer_size;
            return unsupported(format!("buffers[{i}] has {} bytes, the GPU allows at most {max}", b.size));
        }
    }
    check_binding_limits(&limits, bundle)?;
    for (i, k) in bundle.kernels.iter().enumerate() {
        check_kernel_limits(&limits, i, k)?;
    }
    let max_groups = limits.max_compute_workgroups_per_dimension;
    if let Some((i, d)) =
        bundle.dispatches.iter().enumerate().find(|(_, d)| d.workgroups.iter().any(|&n| n > max_groups))
    {
        return unsupported(format!(
            "dispatches[{i}] launches {} workgroups, the GPU allows {max_groups} per dimension",
            fmt_shape(&d.workgroups)
        ));
    }
    Ok(())
}

/// Fails with `Error::Unsupported` when reading outputs back needs a larger
/// buffer than the device allows.
fn check_readback(limits: &wgpu::Limits, bytes: u64) -> Result<()> {
    let max = limits.max_buffer_size;
    if bytes > max {
        return Err(Error::Unsupported(format!("its outputs need {bytes} bytes of readback, the GPU allows {max}")));
    }
    Ok(())
}

/// Every storage binding (a whole buffer or a window) against the largest
/// binding and the window alignment the GPU allows.
fn check_binding_limits(limits: &wgpu::Limits, bundle: &Bundle) -> Result<()> {
    let align = u64::from(limits.min_storage_buffer_offset_alignment);
    if bundle.dispatches.iter().any(|d| !d.windows.is_empty()) && (align == 0 || !WINDOW_ALIGN.is_multiple_of(align)) {
        return Err(Error::Unsupported(format!("its storage offset alignment {align} does not divide {WINDOW_ALIGN}")));
    }
    let max = limits.max_storage_buffer_binding_size;
    for (i, d) in bundle.dispatches.iter().enumerate() {
        for (j, &b) in d.buffers.iter().enumerate() {
            let size = d.windows.get(j).map_or(bundle.buffers[b as usize].size, |w| w.size);
            if size > max {
                return Err(Error::Unsupported(format!(
                    "dispatches[{i}] binds {size} bytes of buffers[{b}] at once, the GPU binds at most {max}"
                )));
            }
        }
    }
    Ok(())
}

/// A kernel's bindings, params block and workgroup size against the limits.
fn check_kernel_limits(limits: &wgpu::Limits, i: usize, k: &Kernel) -> Result<()> {
    let unsupported = |msg: String| Err(Error::Unsupported(msg));
    let what = format!("kernels[{i}] '{}'", k.name);
    let storage = k.bindings.len() as u64 - 1;
    if storage > u64::from(limits.max_storage_buffers_per_shader_stage) {
        return unsupported(format!(
            "{what} has {storage} storage bindings, the GPU allows {}",
            limits.max_storage_buffers_per_shader_stage
        ));
    }
    if params_binding_size(k) > limits.max_uniform_buffer_binding_size {
        return unsupported(format!(
            "{what} reads {} params bytes, the GPU allows {}",
            k.params_size, limits.max_uniform_buffer_binding_size
        ));
    }
    let [x, y, z] = [k.workgroup_size[0], k.workgroup_size[1], k.workgroup_size[2]];
    let invocations = u64::from(x) * u64::from(y) * u64::from(z);
    if x > limits.max_compute_workgroup_size_x
        || y > limits.max_compute_workgroup_size_y
        || z > limits.max_compute_workgroup_size_z
        || invocations > u64::from(limits.max_compute_invocations_per_workgroup)
    {
        return unsupported(format!(
            "{what} has workgroup size {}, too large for the GPU",
            fmt_shape(&k.workgroup_size)
        ));
    }
    Ok(())
}

/// Arenas start zeroed (wgpu guarantees it); weights are filled from the
/// weights section through a mapping, with no staging copy on our side.
fn create_buffers(device: &wgpu::Device, bundle: &Bundle, weights: &[u8]) -> Vec<wgpu::Buffer> {
    bundle.buffers.iter().enumerate().map(|(i, b)| create_buffer(device, i, b, weights)).collect()
}

fn create_buffer(device: &wgpu::Device, i: usize, b: &Buffer, weights: &[u8]) -> wgpu::Buffer {
    let is_weights = b.kind == BufferKind::Weights as i32;
    let label = format!("buffers[{i}]");
    let buffer = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some(&label),
        size: b.size,
        // COPY_SRC on weights too: an output may be a constant.
        usage: if is_weights {
            wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC
        } else {
            wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST
        },
        mapped_at_creation: is_weights,
    });
    if is_weights {
        // validate() checked the range against weights_size, parse() that
        // the section holds weights_size bytes.
        let start = b.weights_offset as usize;
        let src = &weights[start..start + b.size as usize];
        // Creation errors (e.g. out of memory) leave no mapping; the error
        // scope around us reports them.
        if let Ok(mut view) = buffer.get_mapped_range_mut(..) {
            view.copy_from_slice(src);
        }
        buffer.unmap();
    }
    buffer
}

/// One uniform buffer holding every dispatch's params block, padded so that
/// each dispatch's binding window fits.
fn create_params_buffer(device: &wgpu::Device, queue: &wgpu::Queue, bundle: &Bundle) -> wgpu::Buffer {
    let window_end = bundle
        .dispatches
        .iter()
        .map(|d| u64::from(d.params_offset) + params_binding_size(&bundle.kernels[d.kernel as usize]))
        .max()
        .unwrap_or(0);
    let size = window_end.max(bundle.params.len() as u64).next_multiple_of(16).max(256);
    let buffer = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("params"),
        size,
        usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    // write_buffer wants a multiple of 4 bytes.
    let mut data = bundle.params.clone();
    data.resize(data.len().next_multiple_of(4), 0);
    if !data.is_empty() {
        queue.write_buffer(&buffer, 0, &data);
    }
    buffer
}

/// Every kernel's bind group layout and pipeline; a kernel that fails to
/// build is named in the error.
fn create_pipelines(
    device: &wgpu::Device,
    path: ShaderPath,
    bundle: &Bundle,
) -> Result<(Vec<wgpu::BindGroupLayout>, Vec<wgpu::ComputePipeline>)> {
    let mut layouts = Vec::with_capacity(bundle.kernels.len());
    let mut pipelines = Vec::with_capacity(bundle.kernels.len());
    for (index, kernel) in bundle.kernels.iter().enumerate() {
        let ((layout, pipeline), err) = catch(device, || create_pipeline(device, path, kernel));
        if let Some(message) = err {
            let name = kernel.name.clone();
            return Err(Error::Kernel { index, name, message });
        }
        layouts.push(layout);
        pipelines.push(pipeline);
    }
    Ok((layouts, pipelines))
}

/// The bind group layout and compute pipeline of one kernel.
fn create_pipeline(
    device: &wgpu::Device,
    path: ShaderPath,
    kernel: &Kernel,
) -> (wgpu::BindGroupLayout, wgpu::ComputePipeline) {
    let entries: Vec<wgpu::BindGroupLayoutEntry> =
        binding_kinds(kernel).enumerate().map(|(b, kind)| layout_entry(b as u32, kind, kernel)).collect();
    let label = Some(kernel.name.as_str());
    let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor { label, entries: &entries });
    // Passthrough shaders carry no reflection, so the layout is always explicit.
    let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
        label,
        bind_group_layouts: &[Some(&layout)],
        immediate_size: 0,
    });
    let (module, entry_point) = create_module(device, path, kernel);
    let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label,
        layout: Some(&pipeline_layout),
        module: &module,
        entry_point: Some(entry_point),
        compilation_options: Default::default(),
        cache: None,
    });
    (layout, pipeline)
}

fn layout_entry(binding: u32, kind: Option<BindingKind>, kernel: &Kernel) -> wgpu::BindGroupLayoutEntry {
    let ty = match kind {
        Some(BindingKind::Params) => wgpu::BindingType::Buffer {
            ty: wgpu::BufferBindingType::Uniform,
            has_dynamic_offset: true,
            min_binding_size: wgpu::BufferSize::new(params_binding_size(kernel)),
        },
        Some(BindingKind::Dims) => wgpu::BindingType::Buffer {
            ty: wgpu::BufferBindingType::Uniform,
            has_dynamic_offset: false,
            min_binding_size: wgpu::BufferSize::new(DIMS_BYTES),
        },
        // validate() allows only StorageRead / StorageReadWrite here.
        read => wgpu::BindingType::Buffer {
            ty: wgpu::BufferBindingType::Storage { read_only: read != Some(BindingKind::StorageReadWrite) },
            has_dynamic_offset: false,
            min_binding_size: None,
        },
    };
    wgpu::BindGroupLayoutEntry { binding, visibility: wgpu::ShaderStages::COMPUTE, ty, count: None }
}

/// The kernel's shader module for `path`, falling back to WGSL (then to
/// SPIR-V through naga) when the bundle lacks the preferred form; returns
/// the entry point name to use with it.
fn create_module<'k>(device: &wgpu::Device, path: ShaderPath, kernel: &'k Kernel) -> (wgpu::ShaderModule, &'k str) {
    let label = Some(kernel.name.as_str());
    let [x, y, z] = [kernel.workgroup_size[0], kernel.workgroup_size[1], kernel.workgroup_size[2]];
    let passthrough = |name: &'k str, spirv, msl| {
        let entry = wgpu::PassthroughShaderEntryPoint { name: Cow::Borrowed(name), workgroup_size: (x, y, z) };
        let desc = wgpu::ShaderModuleDescriptorPassthrough {
            label,
            entry_points: Cow::Owned(vec![entry]),
            spirv,
            msl,
            ..Default::default()
        };
        // SAFETY: passthrough code reaches the driver unvalidated and without
        // bounds checks. Only a model the caller marked Trust::Trusted gets
        // here (see `shader_path`); the compiler validated it with naga and
        // its kernels guard their own indices.
        (unsafe { device.create_shader_module_passthrough(desc) }, name)
    };
    match path {
        ShaderPath::SpirvPassthrough if !kernel.spirv.is_empty() => {
            passthrough(&kernel.entry_point, Some(Cow::Owned(spirv_words(kernel))), None)
        }
        ShaderPath::MslPassthrough if !kernel.msl.is_empty() => {
            let name = if kernel.msl_entry_point.is_empty() { &kernel.entry_point } else { &kernel.msl_entry_point };
            passthrough(name, None, Some(Cow::Borrowed(kernel.msl.as_str())))
        }
        _ => {
            let source = if kernel.wgsl.is_empty() {
                wgpu::ShaderSource::SpirV(Cow::Owned(spirv_words(kernel)))
            } else {
                wgpu::ShaderSource::Wgsl(Cow::Borrowed(kernel.wgsl.as_str()))
            };
            let module = device.create_shader_module(wgpu::ShaderModuleDescriptor { label, source });
            (module, &kernel.entry_point)
        }
    }
}

/// SPIR-V bytes (little endian) as words; validate() checked the length.
fn spirv_words(kernel: &Kernel) -> Vec<u32> {
    kernel.spirv.chunks_exact(4).map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]])).collect()
}

/// Binding 0: the params window at offset 0 (moved by the dynamic offset);
/// then each storage buffer whole.
fn create_bind_group(
    device: &wgpu::Device,
    bundle: &Bundle,
    dispatch: &Dispatch,
    layouts: &[wgpu::BindGroupLayout],
    buffers: &[wgpu::Buffer],
    params: &wgpu::Buffer,
    dims: &wgpu::Buffer,
) -> wgpu::BindGroup {
    let kernel = &bundle.kernels[dispatch.kernel as usize];
    let params_binding =
        wgpu::BufferBinding { buffer: params, offset: 0, size: wgpu::BufferSize::new(params_binding_size(kernel)) };
    let mut entries =
        vec![wgpu::BindGroupEntry { binding: 0, resource: wgpu::BindingResource::Buffer(params_binding) }];
    for (j, &b) in dispatch.buffers.iter().enumerate() {
        let resource = match dispatch.windows.get(j) {
            Some(w) => wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer: &buffers[b as usize],
                offset: w.offset,
                size: wgpu::BufferSize::new(w.size),
            }),
            None => buffers[b as usize].as_entire_binding(),
        };
        entries.push(wgpu::BindGroupEntry { binding: j as u32 + 1, resource });
    }
    // Kernels of dynamic shapes end with the dims uniform.
    if kernel.bindings.last() == Some(&(BindingKind::Dims as i32)) {
        let binding = dispatch.buffers.len() as u32 + 1;
        entries.push(wgpu::BindGroupEntry { binding, resource: dims.as_entire_binding() });
    }
    device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: Some(&dispatch.label),
        layout: &layouts[dispatch.kernel as usize],
        entries: &entries,
    })
}

/// Where fetched outputs land in a readback buffer: each fetched output's
/// data and data-dependent extent, at offsets aligned for mapping.
#[derive(Clone, Debug, Default)]
struct Readback {
    data: Vec<Option<u64>>,
    extents: Vec<Option<u64>>,
    /// Bytes in all (saturated: checked against the GPU's limit).
    bytes: u64,
}

/// Lays out the `wanted` outputs side by side, each at its bound size.
fn readback_layout(outputs: &[Slot], wanted: &[bool]) -> Readback {
    let mut r = Readback::default();
    for (o, &w) in outputs.iter().zip(wanted) {
        let fetched = w && o.size > 0;
        r.data.push(fetched.then_some(r.bytes));
        if fetched {
            r.bytes = r.bytes.saturating_add(o.size).next_multiple_of(wgpu::MAP_ALIGNMENT);
        }
        r.extents.push((w && o.extent.is_some()).then_some(r.bytes));
        if w && o.extent.is_some() {
            r.bytes = r.bytes.saturating_add(wgpu::MAP_ALIGNMENT);
        }
    }
    r
}

/// A MAP_READ buffer of `bytes`; `None` for nothing to read.
fn create_readback(device: &wgpu::Device, label: &str, bytes: u64) -> Option<wgpu::Buffer> {
    (bytes > 0).then(|| {
        device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: bytes,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
    })
}
