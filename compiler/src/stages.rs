//! Programs with bounded dynamic dims, and stage-aware LLM bundles.
//!
//! With `--dim NAME=MIN..MAX` the graph is compiled once per *stage*: when a
//! sequence-length dim spans 1 and more, a decode stage (`seq = 1`: its
//! matmuls see one row and lower to bandwidth-bound GEMV kernels) and a
//! prefill stage (`seq = 2..MAX`: tiled GEMMs over a run-time row count).
//! The stages' graphs are merged into one before lowering, sharing every
//! weight (the same constants) and one arena; the bundle's `stages` say
//! which dispatches and IO placements each uses, and the runtime picks the
//! stage from the run's dims.
//!
//! Carried state: an input `past_key_values.X` and output `present.X` (the
//! optimum naming of decoder KV caches) form a pair; both live outside the
//! arena at the same offset of two state buffers, identically in every
//! stage, so the runtime can feed one run's `present` to the next run's
//! `past` by swapping the two buffers.

use crate::dynamic::{self, DynInfo, lower::Class};
use crate::error::{Error, Result};
use crate::ir::{Graph, Node, NodeId, ValueId};
use crate::program::{Extras, Pin};
use crate::{Compiled, Options, passes, program};
use drift_runtime::bundle as b;
use std::collections::HashMap;

/// Appends token sampling to a decoder (`drift compile --sampler`): input
/// `sampling` (f32 [4]: temperature, top-k, a uniform number, 0) and output
/// `next_token` (int64 [batch, 1]) sampled from the last position of
/// `logits` by `SampleToken` (`drift_ops::families::sampling`).
pub fn add_sampler(g: &mut Graph) -> Result<()> {
    let Some(&logits) = g.outputs.iter().find(|&&v| g.values[v].name == "logits") else {
        return Err(Error::Other("--sampler: the model has no output named 'logits'".into()));
    };
    let float = drift_ops::DType::F32.onnx();
    let params = g.add_value(crate::ir::Value {
        name: "sampling".into(),
        declared: Some((float, vec![crate::ir::Dim::Fixed(4)])),
        ..Default::default()
    });
    let out = g.add_value(crate::ir::Value { name: "next_token".into(), ..Default::default() });
    g.nodes.push(Node {
        name: "sample_token".into(),
        op_type: "SampleToken".into(),
        domain: "ai.drift".into(),
        opset: 1,
        inputs: vec![Some(logits), Some(params)],
        outputs: vec![Some(out)],
        ..Default::default()
    });
    g.inputs.push(params);
    g.outputs.push(out);
    Ok(())
}

/// One stage: its name and each symbol's bounds while it runs.
struct StageSpec {
    name: &'static str,
    bounds: Vec<(i64, i64)>,
}

/// The symbol that separates decode from prefill: a sequence length (its
/// name contains `seq`, not `past`) whose range holds 1 and more.
fn seq_symbol(spec: &dynamic::DimSpec) -> Option<usize> {
    spec.symbols.iter().position(|s| s.name.contains("seq") && !s.name.contains("past") && s.min <= 1 && s.max > 1)
}

fn stage_specs(spec: &dynamic::DimSpec) -> Vec<StageSpec> {
    let full: Vec<(i64, i64)> = spec.symbols.iter().map(|s| (s.min, s.max)).collect();
    match seq_symbol(spec) {
        Some(k) => {
            let (mut decode, mut prefill) = (full.clone(), full);
            decode[k] = (1, 1);
            prefill[k] = (2.max(spec.symbols[k].min), spec.symbols[k].max);
            vec![StageSpec { name: "decode", bounds: decode }, StageSpec { name: "prefill", bounds: prefill }]
        }
        None => vec![StageSpec { name: "main", bounds: full }],
    }
}

/// The output carrying input `name` over to the next run, by optimum's names.
pub fn state_output(name: &str) -> Option<String> {
    name.strip_prefix("past_key_values.").map(|rest| format!("present.{rest}"))
}

/// A copy of a graph whose ops are not built yet.
fn clone_unbuilt(g: &Graph) -> Graph {
    let nodes = g
        .nodes
        .iter()
        .map(|n| Node {
            name: n.name.clone(),
            op_type: n.op_type.clone(),
            domain: n.domain.clone(),
            opset: n.opset,
            attrs: n.attrs.clone(),
            inputs: n.inputs.clone(),
            outputs: n.outputs.clone(),
            op: None,
            dead: n.dead,
            subgraphs: n.subgraphs.clone(),
            scope: n.scope.clone(),
        })
        .collect();
    Graph {
        name: g.name.clone(),
        values: g.values.clone(),
        nodes,
        inputs: g.inputs.clone(),
        outputs: g.outputs.clone(),
        opsets: g.opsets.clone(),
        dir: g.dir.clone(),
    }
}

/// One stage compiled up to lowering.
struct Part {
    g: Graph,
    info: DynInfo,
    order: Vec<NodeId>,
}

fn compile_part(g0: &Graph, opts: &Options, spec: &dynamic::DimSpec, stage: &StageSpec) -> Result<Part> {
    let mut g = clone_unbuilt(g0);
    dynamic::decompose::run(&mut g)?;
    let mut info = dynamic::bind_inputs(&mut g, spec, &stage.bounds)?;
    passes::fix_input_values(&mut g, &opts.const_inputs)?;
    passes::build_ops(&mut g)?;
    let order = dynamic::infer(&mut g, &mut info)?;
    passes::eliminate_dead_nodes(&mut g, &order);
    dynamic::lower::plan(&g, &mut info, &order);
    Ok(Part { g, info, order })
}

/// Compiles a graph with bounded dynamic dims (see the module docs).
pub fn compile(g0: Graph, opts: &Options) -> Result<Compiled> {
    let spec = dynamic::resolve(&g0, &opts.dims, &opts.dim_ranges)?;
    let stages = stage_specs(&spec);
    let parts: Vec<Part> = stages.iter().map(|s| compile_part(&g0, opts, &spec, s)).collect::<Result<_>>()?;
    let shared = g0.values.len();
    drop(g0);
    let n_inputs = parts[0].g.inputs.len();
    let n_outputs = parts[0].g.outputs.len();
    let mut merged: Option<Part> = None;
    let mut dispatch_prefix = vec![];
    for (stage, part) in stages.iter().zip(parts) {
        dispatch_prefix.push(format!("{}/", stage.name));
        merged = Some(match merged {
            None => rename(part, stage.name),
            Some(m) => merge(m, rename(part, stage.name), shared),
        });
    }
    let mut m = merged.expect("one stage at least");
    m.info.bounds = spec.symbols.iter().map(|s| (s.min, s.max)).collect();
    let (pins, state_bytes, pairs) = pin_state(&m, n_inputs, n_outputs, stages.len())?;
    let extras = Extras { dynamic: Some(&m.info), pins, state_bytes };
    // Dynamic kernels are the same on every GPU: one generic program.
    let target = drift_ops::Target { f16: false, ..drift_ops::Target::GENERIC };
    let mut program = program::build_with(&m.g, &m.order, &opts.limits, &target, opts.weights, &extras)?;
    split_stages(&mut program.bundle, &stages, n_inputs, n_outputs, &spec)?;
    program.bundle.state = pairs;
    let stats = crate::stats::of(&m.g, &m.order, &program.bundle);
    Ok(Compiled { program, stats })
}

/// Prefixes a stage's node names (dispatch labels tell the stages apart).
fn rename(mut p: Part, stage: &str) -> Part {
    for n in &mut p.g.nodes {
        n.name = format!("{stage}/{}", n.name);
    }
    p
}

/// Appends stage `b` to `a`: values created by `b`'s compile get new ids,
/// the constants both inherited from the imported graph stay one value.
fn merge(mut a: Part, b: Part, shared: usize) -> Part {
    let mut map: HashMap<ValueId, ValueId> = HashMap::new();
    for (v, value) in b.g.values.into_iter().enumerate() {
        let same = v < shared
            && match (&a.g.values[v].constant, &value.constant) {
                (Some(x), Some(y)) => std::sync::Arc::ptr_eq(x, y),
                _ => false,
            };
        let id = if same { v } else { a.g.add_value(value) };
        map.insert(v, id);
    }
    let base = a.g.nodes.len();
    for mut n in b.g.nodes {
        n.inputs = n.inputs.iter().map(|v| v.map(|v| map[&v])).collect();
        n.outputs = n.outputs.iter().map(|v| v.map(|v| map[&v])).collect();
        a.g.nodes.push(n);
    }
    a.g.inputs.extend(b.g.inputs.iter().map(|v| map[v]));
    a.g.outputs.extend(b.g.outputs.iter().map(|v| map[v]));
    a.order.extend(b.order.iter().map(|&id| id + base));
    for (v, s) in b.info.shapes {
        a.info.shapes.insert(map[&v], s);
    }
    for (v, s) in b.info.values {
        a.info.values.insert(map[&v], s);
    }
    let class: Vec<(NodeId, Class)> = b.info.plan.class.into_iter().collect();
    for (id, c) in class {
        a.info.plan.class.insert(id + base, c);
    }
    for (av, (sm, qk)) in b.info.plan.attention {
        a.info.plan.attention.insert(av + base, (sm + base, qk + base));
    }
    for (first, second) in b.info.plan.paired {
        a.info.plan.paired.insert(first + base, second + base);
    }
    for (product, means) in b.info.plan.prologue {
        a.info.plan.prologue.insert(product + base, means.iter().map(|m| m + base).collect());
    }
    a
}

/// Pins each state pair's input (buffer 0) and output (buffer 1) at one
/// offset in every stage; returns the pins, the buffers' size and the pairs.
fn pin_state(
    m: &Part,
    n_inputs: usize,
    n_outputs: usize,
    n_stages: usize,
) -> Result<(HashMap<ValueId, Pin>, u64, Vec<b::StatePair>)> {
    let g = &m.g;
    let mut pins = HashMap::new();
    let mut pairs = vec![];
    let mut offset = 0u64;
    for i in 0..n_inputs {
        let input_name = &g.values[g.inputs[i]].name;
        let Some(out_name) = state_output(input_name) else { continue };
        let Some(o) = (0..n_outputs).find(|&o| g.values[g.outputs[o]].name == out_name) else { continue };
        let bytes = |v: ValueId| g.ty(v).numel().max(1) as u64 * 4;
        let mut size = 0;
        for s in 0..n_stages {
            let (vi, vo) = (g.inputs[s * n_inputs + i], g.outputs[s * n_outputs + o]);
            if g.values[vi].constant.is_some() || g.values[vo].constant.is_some() {
                return Err(Error::Tensor {
                    tensor: input_name.clone(),
                    msg: "carried state cannot be a constant".into(),
                });
            }
            size = size.max(bytes(vi)).max(bytes(vo));
            pins.insert(vi, Pin { buffer: 0, offset });
            pins.insert(vo, Pin { buffer: 1, offset });
        }
        offset += size.next_multiple_of(256);
        pairs.push(b::StatePair { input: input_name.clone(), output: out_name });
    }
    Ok((pins, offset, pairs))
}

/// Splits the merged program's IO and dispatch list into its stages.
fn split_stages(
    bundle: &mut b::Bundle,
    stages: &[StageSpec],
    n_inputs: usize,
    n_outputs: usize,
    spec: &dynamic::DimSpec,
) -> Result<()> {
    if bundle.inputs.len() != n_inputs * stages.len() || bundle.outputs.len() != n_outputs * stages.len() {
        return Err(Error::Other("a stage's inputs or outputs were folded into constants".into()));
    }
    let place = |t: &b::IoTensor| {
        let size = t.shape.iter().product::<u64>().max(1) * 4;
        b::Place { buffer: t.buffer, offset: t.offset, size }
    };
    let mut first = 0u32;
    let mut out = vec![];
    for (s, stage) in stages.iter().enumerate() {
        let prefix = format!("{}/", stage.name);
        let count =
            bundle.dispatches[first as usize..].iter().take_while(|d| d.label.starts_with(&prefix)).count() as u32;
        let when = stage
            .bounds
            .iter()
            .enumerate()
            .filter(|(k, b)| **b != (spec.symbols[*k].min, spec.symbols[*k].max))
            .map(|(k, &(lo, hi))| b::SymbolRange { sym: k as u32, min: lo as u64, max: hi as u64 })
            .collect();
        out.push(b::Stage {
            name: stage.name.to_string(),
            when,
            first_dispatch: first,
            dispatch_count: count,
            inputs: bundle.inputs[s * n_inputs..(s + 1) * n_inputs].iter().map(place).collect(),
            outputs: bundle.outputs[s * n_outputs..(s + 1) * n_outputs].iter().map(place).collect(),
        });
        first += count;
    }
    if first as usize != bundle.dispatches.len() {
        let stray: Vec<&str> = bundle.dispatches[first as usize..].iter().take(3).map(|d| d.label.as_str()).collect();
        return Err(Error::Other(format!("dispatches outside every stage: {}", stray.join(", "))));
    }
    // The description callers match against: the most general stage's (the
    // last: prefill), whose shapes are sized for every stage.
    let last = stages.len() - 1;
    bundle.inputs = bundle.inputs[last * n_inputs..].to_vec();
    bundle.outputs = bundle.outputs[last * n_outputs..].to_vec();
    bundle.stages = if stages.len() > 1 { out } else { vec![] };
    Ok(())
}
