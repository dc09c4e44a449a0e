//! From a typed, folded graph to the bundle: lower nodes to kernels, give
//! every tensor a home (arena offset or weights), plan the arena, generate
//! and validate shaders, and assemble the dispatch list.

use crate::codegen::{self, ArgBinding, Quads, StorageBinding};
use crate::error::{Error, Result};
use crate::ir::{Graph, NodeId, ValueId};
use crate::plan::{self, Lifetime};
use drift_ops::{Input, Kernel, KernelArg, LowerCtx, Lowering, Phys, Storage, Target, Tensor, TensorRef, TypeInfo};
use drift_runtime::bundle::{self as b, BindingKind, BufferKind, PARAMS_ALIGN};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// Byte alignment of tensors inside weights buffers.
const WEIGHTS_ALIGN: u64 = 256;
/// Byte alignment of tensors inside the arena. Kernels index 32-bit words
/// from an offset in their params and copies need 4-byte alignment, so this
/// only keeps tensors off each other's 16-byte lines; 256 for all would
/// waste more than the planner's 5% budget on models of many small tensors.
const ARENA_ALIGN: u64 = 16;
/// Arena tensors of at least ARENA_BIG_BYTES start at multiples of
/// ARENA_BIG_ALIGN, so streaming kernels read whole cache lines; on such
/// tensors the padding is under 0.4%.
const ARENA_BIG_BYTES: u64 = 64 << 10;
const ARENA_BIG_ALIGN: u64 = 256;

/// Where a tensor lives before buffers are assigned.
#[derive(Clone, Debug)]
enum Home {
    /// Planned into the arena.
    Arena { bytes: u64 },
    /// A constant, stored in a weights buffer.
    Weight(Arc<Tensor>),
    /// At a fixed place in a state buffer (see [`Pin`]).
    Pinned { pin: Pin, bytes: u64 },
}

/// A tensor kept outside the arena, at the same place in every stage: the
/// KV cache. State buffer 0 holds the carried inputs, buffer 1 the outputs
/// paired with them; the runtime swaps the two between runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pin {
    pub buffer: usize,
    pub offset: u64,
}

/// What a program adds to a plain static graph: the dynamic-dims lowering
/// and pinned state tensors.
#[derive(Default)]
pub struct Extras<'a> {
    pub dynamic: Option<&'a crate::dynamic::DynInfo>,
    pub pins: HashMap<ValueId, Pin>,
    /// Bytes of the two state buffers (0 when there is no state).
    pub state_bytes: u64,
}

#[derive(Clone, Debug)]
struct Slot {
    home: Home,
    phys: Phys,
    storage: Storage,
}

impl Slot {
    fn word(home: Home, phys: Phys) -> Slot {
        Slot { home, phys, storage: Storage::Word }
    }
}

/// How float constants are stored in the weights section (`drift compile --weights`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WeightFormat {
    /// One 32-bit word per element, as the kernels compute.
    #[default]
    F32,
    /// IEEE halves for float constants of at least [`MIN_F16_ELEMS`]
    /// elements whose values fit f16's range; kernels widen them to f32.
    F16,
}

/// Smaller float constants stay f32 under `WeightFormat::F16`: they cost
/// next to nothing, and they are often scalars (epsilons, scales, clip
/// bounds) where f16's rounding or a flushed subnormal would hurt most.
pub const MIN_F16_ELEMS: usize = 256;

/// The storage of a constant under `format`.
fn weight_storage(t: &Tensor, phys: Phys, format: WeightFormat) -> Storage {
    let f16 = format == WeightFormat::F16 && phys == Phys::F32 && t.len() >= MIN_F16_ELEMS && t.fits_f16();
    if f16 { Storage::F16 } else { Storage::Word }
}

/// One kernel launch before codegen.
struct Step {
    node: String,
    kernel: Kernel,
    /// Storage slot of each kernel argument.
    slots: Vec<usize>,
    /// Dynamic kernels: run-time workgroup counts; the kernel reads `dims`.
    groups: Option<[crate::dynamic::kernels::Groups; 3]>,
}

/// Limits the plan must respect.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Most bytes one binding may cover. A larger buffer is bound in windows.
    pub max_binding_bytes: u64,
    /// Largest buffer (the arena, or a weights buffer holding one constant
    /// larger than a binding).
    pub max_buffer_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        // WebGPU's default maxStorageBufferBindingSize, also lavapipe's; and
        // lavapipe's max_buffer_size (NVIDIA allows 4 GiB, WebGPU by default
        // 256 MiB: the runtime checks the device at load).
        Limits { max_binding_bytes: 128 << 20, max_buffer_bytes: 2 << 30 }
    }
}

/// The assembled program: the bundle header and its weights section.
pub struct Program {
    pub bundle: b::Bundle,
    pub weights: Vec<u8>,
}

struct Builder<'g> {
    g: &'g Graph,
    weights: WeightFormat,
    extras: &'g Extras<'g>,
    slots: Vec<Slot>,
    value_slot: HashMap<ValueId, usize>,
    steps: Vec<Step>,
    /// Outputs of data-dependent length: value → (axis, slot of the count).
    extents: HashMap<ValueId, (usize, usize)>,
    target: Target,
}

/// Lowers the live nodes of `g` (in `order`) into a program for `target`,
/// with float constants stored as `weights` says.
pub fn build(g: &Graph, order: &[NodeId], limits: &Limits, target: &Target, weights: WeightFormat) -> Result<Program> {
    build_with(g, order, limits, target, weights, &Extras::default())
}

/// [`build`] with dynamic dims and pinned tensors.
pub fn build_with(
    g: &Graph,
    order: &[NodeId],
    limits: &Limits,
    target: &Target,
    weights: WeightFormat,
    extras: &Extras,
) -> Result<Program> {
    let mut bld = Builder {
        g,
        weights,
        extras,
        slots: vec![],
        value_slot: HashMap::new(),
        steps: vec![],
        extents: HashMap::new(),
        target: *target,
    };
    for &v in g.inputs.iter().filter(|&&v| g.values[v].constant.is_none()) {
        bld.slot_of(v);
    }
    // Keep lowering past unsupported nodes so the user sees all of them.
    let mut unsupported = vec![];
    for &id in order.iter().filter(|&&id| !g.nodes[id].dead) {
        match bld.lower_node(id) {
            Ok(()) => {}
            Err(Error::Unsupported(nodes)) => unsupported.extend(nodes),
            Err(e) => return Err(e),
        }
    }
    if !unsupported.is_empty() {
        return Err(Error::Unsupported(unsupported));
    }
    check_extent_uses(g, order, &bld.extents)?;
    bld.copy_constant_outputs();
    bld.finish(limits)
}

impl<'g> Builder<'g> {
    fn slot_of(&mut self, v: ValueId) -> usize {
        if let Some(&s) = self.value_slot.get(&v) {
            return s;
        }
        let value = &self.g.values[v];
        let ty = self.g.ty(v);
        let phys = ty.dtype.phys();
        let slot = match &value.constant {
            Some(t) => {
                Slot { storage: weight_storage(t, phys, self.weights), ..Slot::word(Home::Weight(t.clone()), phys) }
            }
            None => match self.extras.pins.get(&v) {
                Some(&pin) => Slot::word(Home::Pinned { pin, bytes: elem_bytes(ty.numel()) }, phys),
                None => Slot::word(Home::Arena { bytes: elem_bytes(ty.numel()) }, phys),
            },
        };
        self.slots.push(slot);
        let s = self.slots.len() - 1;
        self.value_slot.insert(v, s);
        s
    }

    fn lower_node(&mut self, id: NodeId) -> Result<()> {
        let g = self.g;
        let node = &g.nodes[id];
        if let Some(d) = self.extras.dynamic
            && self.lower_dynamic(d, id)?
        {
            return Ok(());
        }
        let op = node.op.as_ref().expect("ops built");
        let inputs: Vec<Option<Input>> = node
            .inputs
            .iter()
            .map(|v| v.map(|v| Input { ty: g.ty(v), value: g.values[v].constant.as_deref() }))
            .collect();
        let outputs: Vec<TypeInfo> = node
            .outputs
            .iter()
            .map(|v| v.map(|v| g.ty(v).clone()).unwrap_or_else(|| TypeInfo::new(drift_ops::DType::F32, vec![0])))
            .collect();
        let cx = LowerCtx { inputs, outputs, target: self.target };
        let extents = op.data_dependent_dims(&cx);
        if extents.is_empty() && produces_nothing(node, &cx.outputs) {
            // Every output is empty: there is nothing to compute, and kernel
            // text built for zero-length axes would divide by zero.
            return Ok(());
        }
        let lowering = op.lower(&cx).map_err(|e| match e {
            drift_ops::Error::Unsupported(reason) => Error::Unsupported(vec![crate::error::UnsupportedNode {
                node: node.name.clone(),
                op_type: node.op_type.clone(),
                domain: node.domain.clone(),
                opset: node.opset,
                reason,
            }]),
            e => crate::passes::op_error(g, id, e),
        })?;
        match lowering {
            Lowering::Alias => {
                let (Some(Some(src)), Some(Some(dst))) = (node.inputs.first(), node.outputs.first()) else {
                    return Err(Error::Node {
                        node: node.name.clone(),
                        op_type: node.op_type.clone(),
                        msg: "a view needs an input and an output".into(),
                    });
                };
                let s = self.slot_of(*src);
                self.value_slot.insert(*dst, s);
            }
            Lowering::Kernels { temps, kernels } => {
                let temp_slots: Vec<usize> = temps
                    .iter()
                    .map(|t| {
                        self.slots.push(Slot::word(Home::Arena { bytes: elem_bytes(t.elems) }, t.phys));
                        self.slots.len() - 1
                    })
                    .collect();
                for d in extents {
                    if let (Some(Some(v)), Some(&count)) = (node.outputs.get(d.output), temp_slots.get(d.count_temp)) {
                        self.extents.insert(*v, (d.axis, count));
                    }
                }
                for kernel in kernels {
                    let slots =
                        kernel.args.iter().map(|a| self.arg_slot(node, a, &temp_slots)).collect::<Result<Vec<_>>>()?;
                    self.steps.push(Step { node: node.name.clone(), kernel, slots, groups: None });
                }
            }
        }
        Ok(())
    }

    /// Lowers a node of the dynamic part of the graph; false when the node
    /// is static and takes the op's own lowering.
    fn lower_dynamic(&mut self, d: &crate::dynamic::DynInfo, id: NodeId) -> Result<bool> {
        use crate::dynamic::lower::{ArgOf, DynLowering};
        let node = &self.g.nodes[id];
        match d.lower(self.g, id)? {
            DynLowering::Static => return Ok(false),
            DynLowering::Skip => {}
            DynLowering::Alias => {
                if let (Some(Some(src)), Some(Some(dst))) = (node.inputs.first(), node.outputs.first()) {
                    let s = self.slot_of(*src);
                    self.value_slot.insert(*dst, s);
                }
            }
            DynLowering::Steps { temps, steps } => {
                let temp_slots: Vec<usize> = temps
                    .iter()
                    .map(|t| {
                        self.slots.push(Slot::word(Home::Arena { bytes: elem_bytes(t.elems) }, t.phys));
                        self.slots.len() - 1
                    })
                    .collect();
                for step in steps {
                    let slots = step
                        .values
                        .iter()
                        .map(|a| match *a {
                            ArgOf::Value(v) => self.slot_of(v),
                            ArgOf::Temp(i) => temp_slots[i],
                        })
                        .collect();
                    let groups = Some(step.groups);
                    self.steps.push(Step { node: node.name.clone(), kernel: step.kernel, slots, groups });
                }
            }
        }
        Ok(true)
    }

    fn arg_slot(&mut self, node: &crate::ir::Node, a: &KernelArg, temps: &[usize]) -> Result<usize> {
        let bad = |what: &str| Error::Node {
            node: node.name.clone(),
            op_type: node.op_type.clone(),
            msg: format!("kernel argument '{}' names {what}", a.name),
        };
        match a.tensor {
            TensorRef::Input(i) => match node.inputs.get(i) {
                Some(Some(v)) => Ok(self.slot_of(*v)),
                _ => Err(bad(&format!("missing input {i}"))),
            },
            TensorRef::Output(i) => match node.outputs.get(i) {
                Some(Some(v)) => Ok(self.slot_of(*v)),
                _ => Err(bad(&format!("missing output {i}"))),
            },
            TensorRef::Temp(i) => temps.get(i).copied().ok_or_else(|| bad(&format!("missing temp {i}"))),
        }
    }

    /// Graph outputs must live in the arena for readback: constant outputs
    /// get a copy kernel from their weights buffer.
    fn copy_constant_outputs(&mut self) {
        for &v in &self.g.outputs {
            let src = self.slot_of(v);
            if !matches!(self.slots[src].home, Home::Weight(_)) {
                continue;
            }
            let ty = self.g.ty(v);
            self.slots.push(Slot::word(Home::Arena { bytes: elem_bytes(ty.numel()) }, ty.dtype.phys()));
            let dst = self.slots.len() - 1;
            self.value_slot.insert(v, dst);
            let args = vec![KernelArg::new("x", TensorRef::Input(0)), KernelArg::new("y", TensorRef::Output(0))];
            let kernel = drift_ops::wgsl::kernel_1d("copy", args, ty.numel(), "", "    st_y(i, ld_x(i));");
            let node = format!("output {}", self.g.values[v].name);
            self.steps.push(Step { node, kernel, slots: vec![src, dst], groups: None });
        }
    }

    fn finish(self, limits: &Limits) -> Result<Program> {
        let layout = Layout::new(&self, limits)?;
        let mut kernels: Vec<b::Kernel> = vec![];
        let mut kernel_index: HashMap<String, u32> = HashMap::new();
        let mut dispatches = vec![];
        let mut params: Vec<u8> = vec![];
        for step in &self.steps {
            let (mut source, binds, offsets) = layout.kernel_source(step);
            if step.groups.is_some() {
                source = codegen::dims_decl(binds.buffers.len() as u32 + 1) + &source;
            }
            let k = match kernel_index.get(&source) {
                Some(&k) => k,
                None => {
                    let shaders = codegen::compile_wgsl(&source).map_err(|msg| Error::Codegen {
                        kernel: step.kernel.name.clone(),
                        node: step.node.clone(),
                        msg,
                    })?;
                    let mut k = bundle_kernel(step, &binds.buffers, &layout, shaders, offsets.len());
                    if step.groups.is_some() {
                        k.bindings.push(BindingKind::Dims as i32);
                    }
                    kernels.push(k);
                    kernel_index.insert(source, kernels.len() as u32 - 1);
                    kernels.len() as u32 - 1
                }
            };
            let params_offset = params.len() as u32;
            params.extend(offsets.iter().flat_map(|o| o.to_le_bytes()));
            params.resize(params.len().next_multiple_of(PARAMS_ALIGN as usize), 0);
            let touched: HashSet<usize> = step.slots.iter().copied().collect();
            dispatches.push(b::Dispatch {
                kernel: k,
                buffers: binds.buffers,
                params_offset,
                workgroups: step.kernel.workgroups.iter().map(|&w| w.max(1)).collect(),
                label: step.node.clone(),
                bytes: touched.iter().map(|&s| layout.bytes[s]).sum(),
                flops: step.kernel.flops,
                windows: binds.windows,
                groups: step.groups.as_ref().map(|gs| gs.iter().map(bundle_groups).collect()).unwrap_or_default(),
            });
        }
        let mut needs = vec![];
        if kernel_index.keys().any(|src| src.contains("enable f16;")) {
            needs.push(b::Need::F16 as i32);
        }
        if kernel_index.keys().any(|src| src.contains("enable wgpu_cooperative_matrix;")) {
            needs.push(b::Need::CooperativeMatrix as i32);
        }
        let io = |v: &ValueId| {
            let mut t = layout.io_tensor(self.g, &self.value_slot, *v);
            if let Some(d) = self.extras.dynamic.filter(|d| d.shapes.contains_key(v)) {
                t.dims = d.shape(self.g, *v).iter().map(dim_expr).collect();
            }
            t.extent = self.extents.get(v).map(|&(axis, count)| {
                let (buffer, offset) = layout.place[count];
                b::Extent { axis: axis as u32, buffer, offset }
            });
            t
        };
        let bundle = b::Bundle {
            compiler_version: env!("CARGO_PKG_VERSION").to_string(),
            model_name: self.g.name.clone(),
            inputs: self.g.inputs.iter().filter(|&&v| !is_fixed(self.g, v)).map(io).collect(),
            fixed_inputs: self
                .g
                .inputs
                .iter()
                .filter(|&&v| is_fixed(self.g, v))
                .map(|&v| fixed_input(self.g, v))
                .collect(),
            outputs: self.g.outputs.iter().map(io).collect(),
            buffers: layout.buffers.clone(),
            kernels,
            dispatches,
            params,
            weights_size: layout.weights.len() as u64,
            variants: vec![],
            target: self.target.name.to_string(),
            vendors: self.target.vendors.to_vec(),
            needs,
            memory: Some(layout.memory.clone()),
            symbols: self
                .extras
                .dynamic
                .map(|d| {
                    let sym = |s: &crate::dynamic::Symbol| b::Symbol {
                        name: s.name.clone(),
                        min: s.min as u64,
                        max: s.max as u64,
                    };
                    d.spec.symbols.iter().map(sym).collect()
                })
                .unwrap_or_default(),
            state_buffers: layout.state_buffers.clone(),
            ..Default::default()
        };
        Ok(Program { bundle, weights: layout.weights })
    }
}

/// One bundle from the programs of several targets: the `generic` one (or
/// the last) is the top level, the others its variants. Weights buffers
/// with the same bytes are stored once, so targets sharing a weight layout
/// cost no extra file size.
pub fn with_variants(mut programs: Vec<Program>) -> Program {
    let top = programs.iter().position(|p| p.bundle.target == "generic").unwrap_or(programs.len() - 1);
    let mut main = programs.remove(top);
    let mut known: HashMap<&[u8], u64> = HashMap::new();
    let weights_of = |p: &Program, buf: &b::Buffer| {
        let start = buf.weights_offset as usize;
        p.weights[start..start + buf.size as usize].to_vec()
    };
    let mut appended: Vec<u8> = main.weights.clone();
    for buf in main.bundle.buffers.iter().filter(|x| x.kind == BufferKind::Weights as i32) {
        let start = buf.weights_offset as usize;
        known.entry(&main.weights[start..start + buf.size as usize]).or_insert(buf.weights_offset);
    }
    let mut variants = vec![];
    for mut p in programs {
        for i in 0..p.bundle.buffers.len() {
            if p.bundle.buffers[i].kind != BufferKind::Weights as i32 {
                continue;
            }
            let bytes = weights_of(&p, &p.bundle.buffers[i]);
            let offset = match known.get(bytes.as_slice()) {
                Some(&o) => o,
                None => {
                    appended.resize(appended.len().next_multiple_of(WEIGHTS_ALIGN as usize), 0);
                    let o = appended.len() as u64;
                    appended.extend_from_slice(&bytes);
                    o
                }
            };
            p.bundle.buffers[i].weights_offset = offset;
        }
        variants.push(p.bundle);
    }
    drop(known);
    for v in &mut variants {
        v.weights_size = appended.len() as u64;
    }
    main.bundle.weights_size = appended.len() as u64;
    main.bundle.variants = variants;
    main.weights = appended;
    main
}

/// Whether all of a node's present outputs have no elements.
fn produces_nothing(node: &crate::ir::Node, outputs: &[TypeInfo]) -> bool {
    let present: Vec<&TypeInfo> =
        node.outputs.iter().zip(outputs).filter(|(v, _)| v.is_some()).map(|(_, t)| t).collect();
    !present.is_empty() && present.iter().all(|t| t.numel() == 0)
}

fn elem_bytes(n: usize) -> u64 {
    (n.max(1) as u64) * 4
}

/// A polynomial as the bundle's terms.
pub fn dim_expr(p: &drift_ops::dims::Poly) -> b::DimExpr {
    b::DimExpr { terms: p.terms().map(|(syms, coeff)| b::Term { coeff, syms: syms.to_vec() }).collect() }
}

fn bundle_groups(g: &crate::dynamic::kernels::Groups) -> b::Groups {
    b::Groups { expr: Some(dim_expr(&g.expr)), div: g.div, cap: g.cap }
}

fn bundle_kernel(step: &Step, buffers: &[u32], layout: &Layout, s: codegen::Shaders, n_args: usize) -> b::Kernel {
    let mut bindings = vec![BindingKind::Params as i32];
    for &buf in buffers {
        let kind = if layout.buffers[buf as usize].kind == BufferKind::Arena as i32 {
            BindingKind::StorageReadWrite
        } else {
            BindingKind::StorageRead
        };
        bindings.push(kind as i32);
    }
    b::Kernel {
        name: step.kernel.name.clone(),
        entry_point: "main".into(),
        workgroup_size: step.kernel.workgroup_size.to_vec(),
        bindings,
        params_size: (n_args.div_ceil(4).max(1) * 16) as u32,
        wgsl: s.wgsl,
        spirv: s.spirv.iter().flat_map(|w| w.to_le_bytes()).collect(),
        msl: s.msl,
        msl_entry_point: s.msl_entry_point,
    }
}

/// Final placement: each slot's buffer and byte offset.
struct Layout {
    buffers: Vec<b::Buffer>,
    /// Per buffer: the window size when it is larger than one binding.
    window: Vec<Option<u64>>,
    /// The two state buffers, when tensors are pinned.
    state_buffers: Vec<u32>,
    /// (buffer, byte offset) per slot.
    place: Vec<(u32, u64)>,
    /// Bytes per slot.
    bytes: Vec<u64>,
    weights: Vec<u8>,
    phys: Vec<Phys>,
    storage: Vec<Storage>,
    /// The arena of f16 activations (`--precision f16`), if any.
    half_buffer: Option<u32>,
    memory: b::MemoryStats,
}

/// How a binding presents its buffer to a kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum View {
    /// Words (or f16 activations).
    Plain,
    /// `array<atomic<u32>>`, for counters.
    Atomic,
    /// `array<vec4<u32>>` (`array<vec4<f16>>` in the f16 activation arena),
    /// for four elements a load.
    Quads,
}

/// The storage bindings of one dispatch.
struct Binds {
    /// Buffer per binding (bindings 1..).
    buffers: Vec<u32>,
    /// Range per binding; empty when every binding is a whole buffer.
    windows: Vec<b::Window>,
}

/// The arena's plan: offsets per arena slot and what the planner reports.
struct ArenaPlan {
    offsets: Vec<u64>,
    size: u64,
    window: Option<u64>,
    memory: b::MemoryStats,
}

impl Layout {
    fn new(bld: &Builder, limits: &Limits) -> Result<Layout> {
        let n = bld.slots.len();
        let mut place = vec![(0u32, 0u64); n];
        let mut bytes = vec![0u64; n];
        let arena_slots: Vec<usize> = (0..n).filter(|&s| matches!(bld.slots[s].home, Home::Arena { .. })).collect();
        // f16 activations (`--precision f16`) get an arena of their own.
        let half = half_slots(bld);
        let (halves, fulls): (Vec<usize>, Vec<usize>) = arena_slots.iter().partition(|&&s| half.contains(&s));
        let arena = plan_arena(bld, &fulls, limits, false)?;
        let mut buffers = vec![b::Buffer { kind: BufferKind::Arena as i32, size: arena.size, weights_offset: 0 }];
        let mut window = vec![arena.window];
        for (i, &s) in fulls.iter().enumerate() {
            place[s] = (0, arena.offsets[i]);
            if let Home::Arena { bytes: b } = bld.slots[s].home {
                bytes[s] = b;
            }
        }
        let mut half_buffer = None;
        if !halves.is_empty() {
            let plan = plan_arena(bld, &halves, limits, true)?;
            half_buffer = Some(buffers.len() as u32);
            buffers.push(b::Buffer { kind: BufferKind::Arena as i32, size: plan.size, weights_offset: 0 });
            window.push(None);
            for (i, &s) in halves.iter().enumerate() {
                place[s] = (1, plan.offsets[i]);
                if let Home::Arena { bytes: b } = bld.slots[s].home {
                    bytes[s] = half_bytes(b);
                }
            }
        }
        // Weights: packed in order into buffers no larger than one binding;
        // a constant larger than that gets a buffer of its own, bound in windows.
        let mut weights: Vec<u8> = vec![];
        let mut cur: Option<usize> = None;
        for (s, slot) in bld.slots.iter().enumerate() {
            let Home::Weight(t) = &slot.home else { continue };
            let data = t.to_storage_bytes(slot.storage).map_err(|e| Error::Other(format!("constant: {e}")))?;
            let size = data.len() as u64;
            if size > limits.max_buffer_bytes {
                return Err(Error::Other(format!(
                    "a constant of shape {:?} needs {size} bytes, more than one buffer may hold ({})",
                    t.shape, limits.max_buffer_bytes
                )));
            }
            let oversized = size > limits.max_binding_bytes;
            let fits = !oversized
                && cur.is_some_and(|c| {
                    buffers[c].size.next_multiple_of(WEIGHTS_ALIGN) + size <= limits.max_binding_bytes
                });
            if !fits {
                weights.resize(weights.len().next_multiple_of(WEIGHTS_ALIGN as usize), 0);
                buffers.push(b::Buffer {
                    kind: BufferKind::Weights as i32,
                    size: 0,
                    weights_offset: weights.len() as u64,
                });
                window.push(oversized.then(|| window_bytes(limits)).transpose()?);
                cur = Some(buffers.len() - 1);
            }
            let c = cur.expect("set above");
            let off = buffers[c].size.next_multiple_of(WEIGHTS_ALIGN);
            let start = buffers[c].weights_offset + off;
            weights.resize(start as usize, 0);
            weights.extend(data);
            buffers[c].size = off + size;
            place[s] = (c as u32, off);
            bytes[s] = size;
            if oversized {
                // Nothing else goes into a windowed buffer.
                cur = None;
            }
        }
        // State: two buffers of the same size, pinned tensors at their offsets.
        let mut state_buffers = vec![];
        if bld.extras.state_bytes > 0 {
            for _ in 0..2 {
                state_buffers.push(buffers.len() as u32);
                let size = bld.extras.state_bytes.next_multiple_of(256);
                buffers.push(b::Buffer { kind: BufferKind::Arena as i32, size, weights_offset: 0 });
                window.push(None);
            }
        }
        for (s, slot) in bld.slots.iter().enumerate() {
            if let Home::Pinned { pin, bytes: b } = slot.home {
                place[s] = (state_buffers[pin.buffer], pin.offset);
                bytes[s] = b;
            }
        }
        let phys = bld.slots.iter().map(|s| s.phys).collect();
        let storage = bld.slots.iter().map(|s| s.storage).collect();
        Ok(Layout {
            buffers,
            window,
            state_buffers,
            place,
            bytes,
            weights,
            phys,
            storage,
            memory: arena.memory,
            half_buffer,
        })
    }

    /// The kernel's full WGSL, its storage bindings and each argument's
    /// element offset (relative to the start of its first binding).
    fn kernel_source(&self, step: &Step) -> (String, Binds, Vec<u32>) {
        // Distinct (buffer, window, view) in order of first use; `None`
        // is the whole buffer. Atomic counters bind their arena a second
        // time, as `array<atomic<u32>>` (both bindings read-write), and
        // 16-byte reads their buffer as `array<vec4<u32>>`.
        let mut bound: Vec<(u32, Option<u64>, View)> = vec![];
        let mut binding_of = |key: (u32, Option<u64>, View)| {
            let k = bound.iter().position(|&x| x == key).unwrap_or_else(|| {
                bound.push(key);
                bound.len() - 1
            });
            k as u32 + 1
        };
        let mut args = vec![];
        let mut offsets = vec![];
        for (a, &s) in step.kernel.args.iter().zip(&step.slots) {
            let (buf, off) = self.place[s];
            let writable = self.buffers[buf as usize].kind == BufferKind::Arena as i32;
            let (first, spanned, local) = match self.window[buf as usize] {
                None => (None, 1, off),
                Some(w) => {
                    let end = off + self.bytes[s].max(1) - 1;
                    (Some(off / w), end / w - off / w + 1, off % w)
                }
            };
            let view = if a.atomic { View::Atomic } else { View::Plain };
            let bindings: Vec<u32> = (0..spanned).map(|k| binding_of((buf, first.map(|f| f + k), view))).collect();
            let windows = (spanned > 1).then(|| codegen::Windows {
                bindings: bindings.clone(),
                shift: (self.window[buf as usize].unwrap_or(4) / 4).trailing_zeros(),
            });
            let (phys, storage) = (self.phys[s], self.storage[s]);
            // Quads need one binding, word storage and a start on a whole
            // quad: 16 bytes, or 8 in the f16 activation arena.
            let half = Some(buf) == self.half_buffer;
            let quad_bytes = if half { 8 } else { 16 };
            let aligned = spanned == 1 && storage == Storage::Word && local.is_multiple_of(quad_bytes);
            let quads = match a.wide {
                false => Quads::No,
                true if aligned => Quads::Bound(binding_of((buf, first, View::Quads))),
                true => Quads::Words,
            };
            args.push(ArgBinding {
                name: a.name.clone(),
                phys,
                storage,
                binding: bindings[0],
                writable,
                windows,
                atomic: a.atomic,
                quads,
            });
            // Offsets count elements of the storage: halves in the f16
            // activation arena and for f16 weights, words otherwise.
            let elem = if Some(buf) == self.half_buffer { 2 } else { storage.elem_bytes() };
            offsets.push((local / elem) as u32);
        }
        let storage: Vec<StorageBinding> = bound
            .iter()
            .map(|&(buf, _, view)| StorageBinding {
                read_write: self.buffers[buf as usize].kind == BufferKind::Arena as i32,
                half: Some(buf) == self.half_buffer && view != View::Atomic,
                atomic: view == View::Atomic,
                quads: view == View::Quads,
            })
            .collect();
        let source = codegen::prelude(&args, &storage) + &step.kernel.body;
        let windows = if bound.iter().any(|(_, w, _)| w.is_some()) {
            bound.iter().map(|&(buf, w, _)| self.window_range(buf, w)).collect()
        } else {
            vec![]
        };
        (source, Binds { buffers: bound.iter().map(|&(buf, _, _)| buf).collect(), windows }, offsets)
    }

    /// The byte range that window `w` (or the whole buffer) of `buf` covers.
    fn window_range(&self, buf: u32, w: Option<u64>) -> b::Window {
        let size = self.buffers[buf as usize].size;
        match (w, self.window[buf as usize]) {
            (Some(k), Some(bytes)) => b::Window { offset: k * bytes, size: bytes.min(size - k * bytes) },
            _ => b::Window { offset: 0, size },
        }
    }

    fn io_tensor(&self, g: &Graph, value_slot: &HashMap<ValueId, usize>, v: ValueId) -> b::IoTensor {
        let ty = g.ty(v);
        let s = value_slot[&v];
        let (buffer, offset) = self.place[s];
        b::IoTensor {
            name: g.values[v].name.clone(),
            dtype: ty.dtype.onnx(),
            shape: ty.shape.iter().map(|&d| d as u64).collect(),
            buffer,
            offset,
            phys: match self.phys[s] {
                Phys::F32 => b::PhysType::F32,
                Phys::I32 => b::PhysType::I32,
                Phys::U32 => b::PhysType::U32,
            } as i32,
            extent: None,
            dims: vec![],
        }
    }
}

/// Bytes of a tensor of `word_bytes` (4 per element) stored as f16.
fn half_bytes(word_bytes: u64) -> u64 {
    (word_bytes / 2).next_multiple_of(4)
}

/// Slots stored as f16 under `--precision f16`: float activations between
/// nodes. Graph inputs and outputs stay f32 (the runtime's boundary), and
/// so do kernels' temps (partial sums keep f32 accumulation).
fn half_slots(bld: &Builder) -> HashSet<usize> {
    if !bld.target.f16 {
        return HashSet::new();
    }
    let io: HashSet<usize> =
        bld.g.inputs.iter().chain(&bld.g.outputs).filter_map(|v| bld.value_slot.get(v).copied()).collect();
    bld.value_slot
        .values()
        .copied()
        .filter(|&s| {
            let slot = &bld.slots[s];
            slot.phys == Phys::F32 && matches!(slot.home, Home::Arena { .. }) && !io.contains(&s)
        })
        .collect()
}

/// A value of data-dependent length has its actual shape only at run time,
/// after the GPU has computed it; only the caller may read it.
fn check_extent_uses(g: &Graph, order: &[NodeId], extents: &HashMap<ValueId, (usize, usize)>) -> Result<()> {
    for &id in order.iter().filter(|&&id| !g.nodes[id].dead) {
        let node = &g.nodes[id];
        if let Some(v) = node.inputs.iter().flatten().find(|v| extents.contains_key(v)) {
            return Err(Error::Node {
                node: node.name.clone(),
                op_type: node.op_type.clone(),
                msg: format!(
                    "reads '{}', whose length depends on run-time data; such values can only be graph outputs",
                    g.values[*v].name
                ),
            });
        }
    }
    Ok(())
}

/// Whether graph input `v` had its value fixed at compile time.
fn is_fixed(g: &Graph, v: ValueId) -> bool {
    g.values[v].constant.is_some()
}

/// The bundle's record of a fixed input: what callers must pass.
fn fixed_input(g: &Graph, v: ValueId) -> b::FixedInput {
    let t = g.values[v].constant.as_ref().expect("fixed inputs are constant");
    b::FixedInput {
        name: g.values[v].name.clone(),
        dtype: t.dtype.onnx(),
        shape: t.shape.iter().map(|&d| d as u64).collect(),
        value: t.to_raw(),
    }
}

/// The window size for buffers larger than one binding: the largest power
/// of two that one binding may cover.
fn window_bytes(limits: &Limits) -> Result<u64> {
    let w = 1u64 << (63 - limits.max_binding_bytes.max(1).leading_zeros());
    if w < b::WINDOW_ALIGN {
        return Err(Error::Other(format!(
            "a binding of at most {} bytes cannot hold a {}-byte window",
            limits.max_binding_bytes,
            b::WINDOW_ALIGN
        )));
    }
    Ok(w)
}

/// Plans the arena over the step list with the best strategy. When the
/// arena outgrows one binding it is planned again with windows, so that
/// tensors that fit one window stay inside one.
/// `half`: the arena of f16 activations, whose tensors take 2 bytes an
/// element and which is never windowed (windowed accessors read words).
fn plan_arena(bld: &Builder, arena_slots: &[usize], limits: &Limits, half: bool) -> Result<ArenaPlan> {
    let mut tensors = arena_lifetimes(bld, arena_slots);
    if half {
        for t in &mut tensors {
            t.bytes = half_bytes(t.bytes);
        }
    }
    let in_place = in_place_pairs(bld, arena_slots);
    let big_align = Some((ARENA_BIG_BYTES, ARENA_BIG_ALIGN));
    let mut problem = plan::Problem { tensors, in_place, align: ARENA_ALIGN, big_align, window: None };
    let mut planned = plan::plan(&problem, plan::Strategy::Best);
    if planned.total > limits.max_binding_bytes && half {
        return Err(Error::Other(format!(
            "the f16 activations need {} bytes, more than one binding may hold ({}); compile with --precision f32",
            planned.total, limits.max_binding_bytes
        )));
    }
    if planned.total > limits.max_binding_bytes {
        problem.window = Some(window_bytes(limits)?);
        planned = plan::plan(&problem, plan::Strategy::Best);
    }
    debug_assert_eq!(plan::check(&problem, &planned), Ok(()));
    let size = planned.total.next_multiple_of(4).max(4);
    let lower_bound_bytes = plan::problem_lower_bound(&problem);
    if size > limits.max_buffer_bytes {
        return Err(Error::Other(format!(
            "the activations need an arena of {size} bytes ({lower_bound_bytes} live at once), more than one buffer may hold ({})",
            limits.max_buffer_bytes
        )));
    }
    let memory = b::MemoryStats {
        lower_bound_bytes,
        naive_bytes: plan::naive_bytes(&problem.tensors),
        strategy: planned.strategy.name().to_string(),
        in_place: planned.in_place.len() as u32,
        tensors: problem.tensors.len() as u32,
    };
    Ok(ArenaPlan { offsets: planned.offsets, size, window: problem.window, memory })
}

/// Pairs (input, output), as indices into `arena_slots`, of a step whose
/// kernel touches both only pointwise: the output may be written over the
/// input if the input dies there (the planner checks lifetimes and sizes).
fn in_place_pairs(bld: &Builder, arena_slots: &[usize]) -> Vec<(usize, usize)> {
    let index: HashMap<usize, usize> = arena_slots.iter().enumerate().map(|(i, &s)| (s, i)).collect();
    let mut pairs = vec![];
    for step in &bld.steps {
        let args = step.kernel.args.iter().zip(&step.slots);
        // A tensor qualifies only if every argument naming it is pointwise.
        let pointwise = |slot: usize| args.clone().all(|(a, &s)| s != slot || a.pointwise);
        for (out, &o) in args.clone().filter(|(a, _)| matches!(a.tensor, TensorRef::Output(_))) {
            for (inp, &i) in args.clone().filter(|(a, _)| matches!(a.tensor, TensorRef::Input(_))) {
                if out.pointwise
                    && inp.pointwise
                    && i != o
                    && pointwise(i)
                    && pointwise(o)
                    && let (Some(&a), Some(&b)) = (index.get(&i), index.get(&o))
                {
                    pairs.push((a, b));
                }
            }
        }
    }
    pairs
}

/// First and last step touching each arena slot; graph inputs live from
/// the start, graph outputs to the end.
fn arena_lifetimes(bld: &Builder, arena_slots: &[usize]) -> Vec<Lifetime> {
    let end = bld.steps.len();
    let mut first = vec![usize::MAX; bld.slots.len()];
    let mut last = vec![0usize; bld.slots.len()];
    for (i, step) in bld.steps.iter().enumerate() {
        for &s in &step.slots {
            first[s] = first[s].min(i);
            last[s] = last[s].max(i);
        }
    }
    for &v in &bld.g.inputs {
        if let Some(&s) = bld.value_slot.get(&v) {
            first[s] = 0;
        }
    }
    for &v in &bld.g.outputs {
        if let Some(&s) = bld.value_slot.get(&v) {
            last[s] = end;
            first[s] = first[s].min(end);
        }
    }
    // Counts of data-dependent extents are read back with the outputs.
    for &(_, s) in bld.extents.values() {
        last[s] = end;
    }
    // Atomic counters persist across runs (zero at rest): live throughout,
    // so no other tensor ever shares their bytes.
    for step in &bld.steps {
        for (a, &s) in step.kernel.args.iter().zip(&step.slots) {
            if a.atomic {
                (first[s], last[s]) = (0, end);
            }
        }
    }
    arena_slots
        .iter()
        .map(|&s| {
            let bytes = match bld.slots[s].home {
                Home::Arena { bytes } => bytes,
                Home::Weight(_) | Home::Pinned { .. } => 0,
            };
            let f = if first[s] == usize::MAX { end } else { first[s] };
            Lifetime { first: f, last: last[s].max(f), bytes }
        })
        .collect()
}
