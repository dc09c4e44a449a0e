//! Fusion of elementwise consumers into the store of their producer.
//!
//! Every kernel writes its outputs through generated accessors
//! `st_<name>(i, v)`. When a kernel declares an output `stored_once` (every
//! element written once, with its final value, never read back), the
//! compiler can generate that accessor itself: instead of storing `v`, it
//! computes the consumers' expression of `v` — loading their other operands
//! at the broadcast position of `i` — and stores the result into the last
//! consumer's output. One mechanism covers elementwise chains (the producer
//! is itself elementwise) and epilogues of MatMul, Conv, pooling, reductions
//! and normalizations (bias, activation, residual add, scale, clamp).
//!
//! ```text
//!   Conv ─▶ t0 ─▶ Add(·, skip) ─▶ t1 ─▶ Relu ─▶ y     becomes     Fused[Conv; Add, Relu](x, w, b, skip) ─▶ y
//! ```
//!
//! Invariants of a fused group (checked by `grow`):
//! - every member's output has the producer's output shape, so `i` indexes
//!   all of them alike;
//! - every value inside the group except the last is used only inside it;
//! - no member reads a value computed from the group outside it (no cycle),
//!   so the fused node can run as soon as the producer's inputs and the
//!   members' other operands are ready (right after the last of their
//!   producers), at the latest where the last member ran.

use super::rewrite::{Ctx, Pass, Patch, Ref, Rule};
use crate::ir::{NodeId, ValueId};
use drift_ops::wgsl::{broadcast_index, lit, unravel};
use drift_ops::{Input, Kernel, KernelArg, LowerCtx, Lowering, Op, Result, Tensor, TensorRef, TypeInfo};
use std::collections::HashSet;
use std::sync::Arc;

pub const EPILOGUES: Pass = Pass {
    name: "fuse-elementwise",
    rules: &[
        // producer(..) -> e1 -> e2 ... -> Fused[producer; e1, e2, ...]
        Rule { name: "fuse-into-store", roots: &[], apply: fuse_group },
    ],
};

/// The fused store's WGSL, given the name of the accessor it replaces.
type StoreFn = Box<dyn Fn(&str) -> String>;

/// Where a member's operand comes from.
#[derive(Clone, Debug, PartialEq)]
enum Operand {
    /// The producer's output (the `v` of its store).
    Main,
    /// The output of an earlier member.
    Member(usize),
    /// Input `n` of the fused node (after the producer's own inputs).
    External(usize),
    /// A one-element constant, inlined as a literal.
    Literal(f64),
}

/// An elementwise node of the group.
#[derive(Debug)]
struct Member {
    op: Box<dyn Op>,
    op_type: String,
    operands: Vec<Option<Operand>>,
    /// Types of the operands and of the output, as the node had them.
    operand_types: Vec<Option<TypeInfo>>,
    /// Values of constant operands (Clip's bounds are read from them).
    operand_values: Vec<Option<Arc<Tensor>>>,
    out: TypeInfo,
}

/// A producer with elementwise members fused into its stores.
#[derive(Debug)]
pub struct FusedOp {
    producer: Box<dyn Op>,
    producer_type: String,
    /// Number of the fused node's inputs that belong to the producer.
    producer_inputs: usize,
    producer_out: TypeInfo,
    members: Vec<Member>,
    /// A zero Pad consuming the last value: the store goes to the padded
    /// layout, and the border is written with zeros by the threads owning
    /// the nearest interior elements.
    pad: Option<PadStore>,
    prologues: Vec<Prologue>,
}

/// An input the producer reads zero-padded: the fused node takes the
/// unpadded tensor, and the producer's loads check the bounds.
#[derive(Clone, Debug, PartialEq)]
struct Prologue {
    input: usize,
    pad: PadStore,
    source: ValueId,
}

/// The padded layout a fused kernel stores into.
#[derive(Clone, Debug, PartialEq)]
struct PadStore {
    begin: Vec<usize>,
    out: TypeInfo,
}

impl FusedOp {
    /// "Conv+Add+Relu": the op types fused, for listings ("Pad>Conv" for a
    /// padded load).
    pub fn describe(&self) -> String {
        let loads = self.prologues.iter().map(|_| "Pad>").collect::<String>();
        loads
            + &std::iter::once(self.producer_type.as_str())
                .chain(self.members.iter().map(|m| m.op_type.as_str()))
                .chain(self.pad.as_ref().map(|_| "Pad"))
                .collect::<Vec<_>>()
                .join("+")
    }

    fn member_inputs<'a>(&self, m: &'a Member) -> Vec<Option<Input<'a>>> {
        m.operand_types
            .iter()
            .zip(&m.operand_values)
            .map(|(t, v)| t.as_ref().map(|ty| Input { ty, value: v.as_deref() }))
            .collect()
    }
}

impl Op for FusedOp {
    fn infer(&self, _inputs: &[Option<Input>]) -> Result<Vec<TypeInfo>> {
        if let Some(pad) = &self.pad {
            return Ok(vec![pad.out.clone()]);
        }
        Ok(vec![self.members.last().map_or(self.producer_out.clone(), |m| m.out.clone())])
    }

    fn eval(&self, inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>> {
        let padded: Vec<Tensor> = self
            .prologues
            .iter()
            .map(|p| inputs[p.input].map(|t| pad_zeros(t, &p.pad)))
            .collect::<Option<_>>()
            .ok_or_else(|| drift_ops::Error::msg("missing input"))?;
        let mut own: Vec<Option<&Tensor>> = inputs[..self.producer_inputs].to_vec();
        for (p, t) in self.prologues.iter().zip(&padded) {
            own[p.input] = Some(t);
        }
        let main = self.producer.eval(&own)?.swap_remove(0);
        let mut outs: Vec<Tensor> = vec![];
        for m in &self.members {
            let literals: Vec<Option<Tensor>> = m
                .operands
                .iter()
                .zip(&m.operand_types)
                .map(|(o, t)| match (o, t) {
                    (Some(Operand::Literal(x)), Some(t)) => {
                        Some(Tensor::from_f64(t.dtype, t.shape.clone(), vec![*x; t.numel()]))
                    }
                    _ => None,
                })
                .collect();
            let args: Vec<Option<&Tensor>> = m
                .operands
                .iter()
                .zip(&literals)
                .map(|(o, lit)| match o {
                    None => None,
                    Some(Operand::Main) => Some(&main),
                    Some(Operand::Member(j)) => Some(&outs[*j]),
                    Some(Operand::External(n)) => inputs[self.producer_inputs + n],
                    Some(Operand::Literal(_)) => lit.as_ref(),
                })
                .collect();
            let y = m.op.eval(&args)?.swap_remove(0);
            outs.push(y);
        }
        let y = outs.pop().unwrap_or(main);
        Ok(vec![match &self.pad {
            Some(pad) => pad_zeros(&y, pad),
            None => y,
        }])
    }

    fn lower(&self, cx: &LowerCtx) -> Result<Lowering> {
        let mut inner = LowerCtx {
            inputs: cx.inputs[..self.producer_inputs].to_vec(),
            outputs: vec![self.producer_out.clone()],
            target: cx.target,
        };
        for p in &self.prologues {
            inner.inputs[p.input] = Some(Input { ty: &p.pad.out, value: None });
        }
        let Lowering::Kernels { mut temps, mut kernels } = self.producer.lower(&inner)? else {
            drift_ops::bail!("a fused producer must lower to kernels");
        };
        let writes = || kernels.iter().flat_map(|k| &k.args).filter(|a| a.tensor == TensorRef::Output(0));
        if !writes().all(|a| a.stored_once) {
            // This target's kernels store the output in parts (tiles, split
            // sums): they write a scratch copy, and one more kernel applies
            // the members from it.
            let t = temps.len();
            temps.push(drift_ops::TempSpec { elems: self.producer_out.numel(), phys: self.producer_out.dtype.phys() });
            for a in kernels.iter_mut().flat_map(|k| k.args.iter_mut()).filter(|a| a.tensor == TensorRef::Output(0)) {
                a.tensor = TensorRef::Temp(t);
            }
            let args = vec![
                KernelArg::new("fzt", TensorRef::Temp(t)),
                KernelArg::new("fzv", TensorRef::Output(0)).stored_once(),
            ];
            let n = self.producer_out.numel();
            kernels.push(drift_ops::wgsl::kernel_1d("epilogue", args, n, "", "    st_fzv(i, ld_fzt(i));"));
        }
        let (store_fn, args) = self.epilogue(cx)?;
        let mut kernels: Vec<Kernel> =
            kernels.into_iter().map(|k| splice(k, &store_fn, &args)).collect::<Result<_>>()?;
        for p in &self.prologues {
            let source = cx.input(p.input)?;
            kernels = kernels.into_iter().map(|k| padded_load(k, p, source)).collect();
        }
        Ok(Lowering::Kernels { temps, kernels })
    }
}

/// `t` zero-padded into `pad`'s layout.
fn pad_zeros(t: &Tensor, pad: &PadStore) -> Tensor {
    let v = t.to_f64();
    let mut out = vec![0.0; pad.out.numel()];
    let (src, dst) = (drift_ops::wgsl::strides(&t.shape), drift_ops::wgsl::strides(&pad.out.shape));
    for (i, x) in v.iter().enumerate() {
        let o: usize = (0..t.shape.len()).map(|d| ((i / src[d]) % t.shape[d] + pad.begin[d]) * dst[d]).sum();
        out[o] = *x;
    }
    Tensor::from_f64(t.dtype, pad.out.shape.clone(), out)
}

/// WGSL storing value `val` of element `i` (coordinates `fc*` over
/// `shape`) into the padded layout, and zeros into the border elements
/// whose nearest interior element this is.
fn padded_store(shape: &[usize], pad: &PadStore, val: &str) -> String {
    let st = drift_ops::wgsl::strides(&pad.out.shape);
    let zero = drift_ops::wgsl::lit(pad.out.dtype.phys(), 0.0);
    let at = |d: usize, c: String| format!("({c}) * {}u", st[d]);
    let center: Vec<String> = (0..shape.len()).map(|d| at(d, format!("fc{d} + {}u", pad.begin[d]))).collect();
    let mut s = format!("    st_fzy({}, {val});\n", if center.is_empty() { "0u".into() } else { center.join(" + ") });
    let padded: Vec<usize> = (0..shape.len()).filter(|&d| pad.out.shape[d] != shape[d]).collect();
    if padded.is_empty() {
        return s;
    }
    let edge: Vec<String> =
        padded.iter().map(|&d| format!("(fc{d} == 0u) | (fc{d} == {}u)", shape[d].max(1) - 1)).collect();
    // Non-short-circuit `|`: plain selects, no branches per condition.
    s += &format!("    if ({}) {{\n", edge.join(" | "));
    let mut base: Vec<String> = (0..shape.len()).filter(|d| !padded.contains(d)).map(|d| center[d].clone()).collect();
    let mut open = String::new();
    let mut close = String::new();
    let mut own = vec![];
    for &d in &padded {
        let c = format!("fc{d} + {}u", pad.begin[d]);
        s += &format!(
            "        let lo{d} = select({c}, 0u, fc{d} == 0u);\n        let hi{d} = select({c}, {}u, fc{d} == {}u);\n",
            pad.out.shape[d] - 1,
            shape[d].max(1) - 1
        );
        open += &format!("        for (var p{d} = lo{d}; p{d} <= hi{d}; p{d} = p{d} + 1u) {{\n");
        close += "        }\n";
        base.push(format!("p{d} * {}u", st[d]));
        own.push(format!("(p{d} != {c})"));
    }
    s += &open;
    s += &format!("        if ({}) {{ st_fzy({}, {zero}); }}\n", own.join(" | "), base.join(" + "));
    s += &close;
    s += "    }\n";
    s
}

/// Makes kernel `k` read input `p.input` zero-padded from the unpadded
/// `source`: its `ld_<name>(j)` becomes a bounds-checked load.
fn padded_load(mut k: Kernel, p: &Prologue, source: &TypeInfo) -> Kernel {
    let shape = &p.pad.out.shape;
    let src_st = drift_ops::wgsl::strides(&source.shape);
    let zero = lit(source.dtype.phys(), 0.0);
    let t = source.dtype.phys().wgsl();
    for a in k.args.iter_mut().filter(|a| a.tensor == TensorRef::Input(p.input)) {
        let unpadded = format!("{}_unpadded", a.name);
        let name = std::mem::replace(&mut a.name, unpadded);
        // The padded index is not the thread's own element of the source.
        a.pointwise = false;
        let mut f = format!("fn ld_{name}(j: u32) -> {t} {{\n{}", unravel("pj", "j", shape));
        let mut conds = vec![];
        let mut idx = vec![];
        for d in 0..shape.len() {
            let b = p.pad.begin[d];
            if b > 0 || shape[d] != source.shape[d] {
                conds.push(format!("pj{d} < {b}u || pj{d} >= {}u", b + source.shape[d]));
            }
            idx.push(format!("(pj{d} - {b}u) * {}u", src_st[d]));
        }
        if !conds.is_empty() {
            f += &format!("    if ({}) {{ return {zero}; }}\n", conds.join(" || "));
        }
        f +=
            &format!("    return ld_{}({});\n}}\n", a.name, if idx.is_empty() { "0u".into() } else { idx.join(" + ") });
        // Padded, the argument is no longer read as plain quads.
        if std::mem::take(&mut a.wide) {
            f += &drift_ops::wgsl::quads_from_loads(&name);
        }
        k.body = f + &k.body;
    }
    k
}

/// Replaces kernel `k`'s store of output 0 by the fused store.
fn splice(mut k: Kernel, store_fn: &dyn Fn(&str) -> String, extra: &[KernelArg]) -> Result<Kernel> {
    let Some(pos) = k.args.iter().position(|a| a.tensor == TensorRef::Output(0)) else { return Ok(k) };
    if !k.args[pos].stored_once {
        drift_ops::bail!("kernel '{}' does not store its output once", k.name);
    }
    let y = k.args.remove(pos);
    let name = y.name;
    // The fused store touches only element `i` of its output and of the
    // operands it reads at `i`; that keeps them pointwise (in-place reuse)
    // only if the producer's own store was.
    k.args.extend(extra.iter().cloned().map(|mut a| {
        a.pointwise &= y.pointwise;
        a
    }));
    k.body = merge_helpers(&k.body, &store_fn(&name)) + &k.body;
    k.name = format!("{}_fused", k.name);
    Ok(k)
}

/// The functions of `helpers` that `expr` calls, directly or through
/// each other (elementwise ops share one helper library).
fn used_helpers(helpers: &str, expr: &str) -> String {
    let mut funcs: Vec<(String, String)> = vec![];
    for line in helpers.lines() {
        if let Some(rest) = line.strip_prefix("fn ") {
            funcs.push((rest.split('(').next().unwrap_or("").trim().to_string(), String::new()));
        }
        if let Some((_, text)) = funcs.last_mut() {
            *text += line;
            *text += "\n";
        }
    }
    let mut keep = vec![false; funcs.len()];
    let mut reached = expr.to_string();
    loop {
        let before = keep.iter().filter(|&&k| k).count();
        for (k, (name, text)) in funcs.iter().enumerate() {
            if !keep[k] && reached.contains(&format!("{name}(")) {
                keep[k] = true;
                reached += text;
            }
        }
        if keep.iter().filter(|&&k| k).count() == before {
            break;
        }
    }
    funcs.iter().zip(&keep).filter(|(_, k)| **k).map(|((_, t), _)| t.as_str()).collect()
}

/// The functions of `extra` that `body` does not define yet, then the rest
/// of `extra`. Generated helpers of one name are the same text, so a
/// function already there is dropped.
fn merge_helpers(body: &str, extra: &str) -> String {
    let mut out = String::new();
    let mut skipping = false;
    let mut seen: HashSet<String> = HashSet::new();
    for line in extra.lines() {
        if let Some(rest) = line.strip_prefix("fn ") {
            let name = rest.split('(').next().unwrap_or("").trim().to_string();
            skipping = body.contains(&format!("fn {name}(")) || !seen.insert(name);
        }
        if !skipping {
            out += line;
            out += "\n";
        }
        if line.starts_with('}') {
            skipping = false;
        }
    }
    out
}

impl FusedOp {
    /// The fused store as WGSL (a function of the replaced accessor's name)
    /// and the kernel arguments it adds.
    fn epilogue(&self, cx: &LowerCtx) -> Result<(StoreFn, Vec<KernelArg>)> {
        let shape = self.producer_out.shape.clone();
        let n_ext = cx.inputs.len() - self.producer_inputs;
        let mut args: Vec<KernelArg> =
            (0..n_ext).map(|n| KernelArg::new(&format!("fz{n}"), TensorRef::Input(self.producer_inputs + n))).collect();
        let mut fzy = KernelArg::new("fzy", TensorRef::Output(0)).stored_once();
        // Element `i` of the output (unless padded); operands read only at `i`.
        fzy.pointwise = self.pad.is_none();
        let mut at_own = vec![true; n_ext];
        let mut helpers = String::new();
        let mut stmts = unravel("fc", "i", &shape);
        for (j, m) in self.members.iter().enumerate() {
            let ins = self.member_inputs(m);
            let mcx = LowerCtx { inputs: ins, outputs: vec![m.out.clone()], target: cx.target };
            let probe: Vec<String> = (0..m.operands.len()).map(|k| format!("o{k}")).collect();
            let Some(pw) = m.op.pointwise(&mcx, &probe) else {
                drift_ops::bail!("fused op {} has no pointwise form", m.op_type);
            };
            let mut operands = vec![];
            for (k, o) in m.operands.iter().enumerate() {
                let e = match o {
                    None => String::new(),
                    Some(Operand::Main) => "v".to_string(),
                    Some(Operand::Member(p)) => format!("f{p}"),
                    Some(Operand::Literal(x)) => lit(m.operand_types[k].as_ref().expect("typed").dtype.phys(), *x),
                    Some(Operand::External(n)) => {
                        let own = &m.operand_types[k].as_ref().expect("typed").shape;
                        let s = pw.operand_shapes.get(k).unwrap_or(own);
                        let idx = if *s == shape { "i".to_string() } else { broadcast_index("fc", &shape, s) };
                        at_own[*n] &= idx == "i";
                        format!("ld_fz{n}({idx})")
                    }
                };
                operands.push(e);
            }
            let pw = m.op.pointwise(&mcx, &operands).expect("probed above");
            helpers = merge_helpers(&helpers, &used_helpers(&pw.helpers, &pw.expr)).to_string() + &helpers;
            stmts += &format!("    let f{j} = {};\n", pw.expr);
        }
        let t = self.producer_out.dtype.phys().wgsl();
        let last = if self.members.is_empty() { "v".to_string() } else { format!("f{}", self.members.len() - 1) };
        stmts += &match &self.pad {
            Some(pad) => padded_store(&shape, pad, &last),
            None => format!("    st_fzy(i, {last});\n"),
        };
        for (a, own) in args.iter_mut().zip(&at_own) {
            a.pointwise = *own;
        }
        args.push(fzy);
        let store = move |name: &str| format!("{helpers}fn st_{name}(i: u32, v: {t}) {{\n{stmts}}}\n");
        Ok((Box::new(store), args))
    }
}

/// Ops fused as members: the elementwise ops with a pointwise form.
fn is_member_candidate(cx: &Ctx, id: NodeId, shape: &[usize]) -> bool {
    let n = cx.node(id);
    let Some(op) = n.op.as_deref() else { return false };
    let Some(y) = n.outputs.first().copied().flatten() else { return false };
    if n.outputs.len() != 1 || cx.ty(y).shape != shape || cx.constant(y).is_some() {
        return false;
    }
    let inputs: Vec<Option<Input>> =
        n.inputs.iter().map(|v| v.map(|v| Input { ty: cx.ty(v), value: cx.constant(v) })).collect();
    let probe: Vec<String> = (0..inputs.len()).map(|k| format!("o{k}")).collect();
    cx.memo("pointwise", id, || {
        op.pointwise(&LowerCtx { inputs, outputs: vec![cx.ty(y).clone()], target: Default::default() }, &probe)
            .is_some()
    })
}

/// Whether node `id` can be a producer: its lowering stores output 0 once
/// in every kernel, and it has no other used output.
fn is_producer(cx: &Ctx, id: NodeId) -> Option<ValueId> {
    let n = cx.node(id);
    let op = n.op.as_deref()?;
    let y = n.outputs.first().copied().flatten()?;
    // Empty outputs get no kernels at all (`program::build`).
    if n.outputs.iter().skip(1).flatten().any(|&v| cx.used(v)) || cx.constant(y).is_some() || cx.ty(y).numel() == 0 {
        return None;
    }
    let stores_once = || {
        let inputs: Vec<Option<Input>> =
            n.inputs.iter().map(|v| v.map(|v| Input { ty: cx.ty(v), value: cx.constant(v) })).collect();
        // Fusion is decided for the generic kernels; `FusedOp::lower` falls
        // back to a separate epilogue kernel where a target's are not.
        let lcx = LowerCtx { inputs, outputs: vec![cx.ty(y).clone()], target: Default::default() };
        if !op.data_dependent_dims(&lcx).is_empty() {
            return false;
        }
        let Ok(Lowering::Kernels { kernels, .. }) = op.lower(&lcx) else { return false };
        let writes = kernels.iter().flat_map(|k| &k.args).filter(|a| a.tensor == TensorRef::Output(0));
        let (all_once, some) = writes.fold((true, false), |(once, _), a| (once && a.stored_once, true));
        all_once && some
    };
    cx.memo("stores-once", id, stores_once).then_some(y)
}

/// The members fused after the producer `p` (output `y`), in order; empty
/// when nothing fuses.
fn grow(cx: &Ctx, p: NodeId, y: ValueId) -> Vec<NodeId> {
    let shape = cx.ty(y).shape.clone();
    let mut group: Vec<NodeId> = vec![];
    let mut best: Vec<NodeId> = vec![];
    loop {
        let inside: HashSet<NodeId> = group.iter().copied().chain([p]).collect();
        // Values of the group used outside it: the next to absorb is the
        // earliest one whose every consumer can join.
        let escaping: Vec<ValueId> = inside
            .iter()
            .filter_map(|&n| cx.output(n, 0))
            .filter(|&v| cx.is_output(v) || cx.consumers(v).iter().any(|c| !inside.contains(c)))
            .collect();
        let next = escaping.iter().copied().filter(|&v| !cx.is_output(v)).find(|&v| {
            let outside: Vec<NodeId> = cx.consumers(v).iter().copied().filter(|c| !inside.contains(c)).collect();
            !outside.is_empty() && outside.iter().all(|&c| is_member_candidate(cx, c, &shape))
        });
        if escaping.len() == 1 && !group.is_empty() && acyclic(cx, p, &group) {
            best = group.clone();
        }
        let Some(v) = next else { break };
        let mut add: Vec<NodeId> = cx.consumers(v).iter().copied().filter(|c| !inside.contains(c)).collect();
        add.sort();
        group.extend(add);
        if group.len() > 64 {
            break;
        }
    }
    best
}

/// No member reads a value computed from the group by a node outside it.
fn acyclic(cx: &Ctx, p: NodeId, group: &[NodeId]) -> bool {
    let inside: HashSet<NodeId> = group.iter().copied().chain([p]).collect();
    let mut tainted: HashSet<ValueId> = HashSet::new();
    let mut stack: Vec<ValueId> = inside.iter().filter_map(|&n| cx.output(n, 0)).collect();
    let mut seen: HashSet<NodeId> = HashSet::new();
    while let Some(v) = stack.pop() {
        for &c in cx.consumers(v) {
            if inside.contains(&c) || !seen.insert(c) {
                continue;
            }
            for &o in cx.node(c).outputs.iter().flatten() {
                if tainted.insert(o) {
                    stack.push(o);
                }
            }
        }
    }
    group.iter().all(|&m| cx.node(m).inputs.iter().flatten().all(|v| !tainted.contains(v)))
}

/// A Pad node with zero constant padding (no negative pads): its layout.
fn zero_pad(cx: &Ctx, pad: NodeId) -> Option<PadStore> {
    let n = cx.node(pad);
    if n.op_type != "Pad" || !n.domain.is_empty() || n.attrs.str("mode", "constant").ok()? != "constant" {
        return None;
    }
    let value_zero = match cx.input(pad, 2) {
        Some(c) => cx.scalar(c) == Some(0.0),
        None => n.attrs.float("value", 0.0).ok()? == 0.0,
    };
    let pads = match n.attrs.ints_opt("pads").ok()? {
        Some(p) if n.opset < 11 => p.to_vec(),
        _ => cx.constant(cx.input(pad, 1)?)?.to_i64(),
    };
    let rank = cx.ty(cx.input(pad, 0)?).rank();
    if !value_zero || cx.input(pad, 3).is_some() || pads.len() != 2 * rank || pads.iter().any(|&p| p < 0) {
        return None;
    }
    let out = cx.ty(cx.output(pad, 0)?).clone();
    Some(PadStore { begin: pads[..rank].iter().map(|&p| p as usize).collect(), out })
}

/// Most a padded layout may add to a tensor's size for fusion to store
/// into it. Past that (small images: 7x7 padded to 9x9 is 65% more) the
/// extra memory costs more than it saves, and the consumer reads the
/// unpadded tensor through bounds-checked loads instead.
const MAX_PAD_GROWTH: f64 = 1.2;

/// Whether storing into `pad`'s layout is worth its memory.
fn worth_storing_padded(cx: &Ctx, pad: NodeId, layout: &PadStore) -> bool {
    let src = cx.input(pad, 0).map_or(0, |v| cx.ty(v).numel());
    layout.out.numel() as f64 <= MAX_PAD_GROWTH * src as f64
}

/// A zero Pad that is the only use of `v`, which fusion can store into.
fn terminal_pad(cx: &Ctx, v: ValueId) -> Option<(NodeId, PadStore)> {
    let [pad] = cx.consumers(v) else { return None };
    (!cx.is_output(v) && cx.input(*pad, 0) == Some(v)).then_some(())?;
    let layout = zero_pad(cx, *pad)?;
    worth_storing_padded(cx, *pad, &layout).then_some((*pad, layout))
}

/// Inputs of `p` that are zero Pads no kernel stores padded (of graph
/// inputs, or not worth the memory): `p` reads them through a
/// bounds-checked load instead.
fn prologue_pads(cx: &Ctx, p: NodeId) -> Vec<Prologue> {
    let n = cx.node(p);
    (0..n.inputs.len())
        .filter_map(|k| {
            let v = cx.input(p, k)?;
            let pad = cx.produced_by(v, "Pad")?;
            let src = cx.input(pad, 0)?;
            let once = n.inputs.iter().filter(|&&i| i == Some(v)).count() == 1;
            if !cx.only_used_by(v, p) || !once || cx.constant(src).is_some() {
                return None;
            }
            let layout = zero_pad(cx, pad)?;
            let stored = cx.producer(src).is_some() && worth_storing_padded(cx, pad, &layout);
            (!stored).then_some(Prologue { input: k, pad: layout, source: src })
        })
        .collect()
}

fn fuse_group(cx: &Ctx, p: NodeId) -> Option<Patch> {
    let y = is_producer(cx, p)?;
    let mut members = grow(cx, p, y);
    let last_value = match members.iter().max_by_key(|&&m| members_rank(cx, &members, m)) {
        Some(&m) => cx.output(m, 0)?,
        None => y,
    };
    let pad = terminal_pad(cx, last_value);
    let prologues = prologue_pads(cx, p);
    if members.is_empty() && pad.is_none() && prologues.is_empty() {
        return None;
    }
    // Members in an order where each follows what it reads.
    let mut ordered: Vec<NodeId> = vec![];
    let mut have: HashSet<ValueId> = [y].into();
    while !members.is_empty() {
        let k = members.iter().position(|&m| {
            cx.node(m)
                .inputs
                .iter()
                .flatten()
                .all(|v| have.contains(v) || !members.iter().any(|&o| cx.output(o, 0) == Some(*v)))
        })?;
        let m = members.remove(k);
        have.insert(cx.output(m, 0)?);
        ordered.push(m);
    }
    build_patch(cx, p, y, &ordered, pad, prologues)
}

/// How many other members `m` (transitively) reads: the last member reads most.
fn members_rank(cx: &Ctx, members: &[NodeId], m: NodeId) -> usize {
    let outs: HashSet<ValueId> = members.iter().filter_map(|&o| cx.output(o, 0)).collect();
    let mut seen: HashSet<NodeId> = HashSet::new();
    let mut stack = vec![m];
    while let Some(n) = stack.pop() {
        for v in cx.node(n).inputs.iter().flatten().filter(|v| outs.contains(v)) {
            let p = cx.producer(*v).expect("members have producers");
            if seen.insert(p) {
                stack.push(p);
            }
        }
    }
    seen.len()
}

fn build_patch(
    cx: &Ctx,
    p: NodeId,
    y: ValueId,
    members: &[NodeId],
    pad: Option<(NodeId, PadStore)>,
    prologues: Vec<Prologue>,
) -> Option<Patch> {
    let pn = cx.node(p);
    let mut inputs: Vec<Option<Ref>> = pn.inputs.iter().map(|v| v.map(Ref::Old)).collect();
    for pro in &prologues {
        inputs[pro.input] = Some(Ref::Old(pro.source));
    }
    let producer_inputs = inputs.len();
    let mut externals: Vec<ValueId> = vec![];
    let mut fused_members = vec![];
    for &m in members {
        let n = cx.node(m);
        let mut operands = vec![];
        let mut types = vec![];
        let mut values = vec![];
        for v in &n.inputs {
            let Some(v) = *v else {
                operands.push(None);
                types.push(None);
                values.push(None);
                continue;
            };
            types.push(Some(cx.ty(v).clone()));
            values.push(cx.g.values[v].constant.clone());
            let o = if v == y {
                Operand::Main
            } else if let Some(j) = members.iter().position(|&o| cx.output(o, 0) == Some(v)) {
                Operand::Member(j)
            } else if let Some(c) = cx.constant(v).filter(|t| t.len() == 1 && t.dtype.phys() == drift_ops::Phys::F32) {
                Operand::Literal(c.to_f64()[0])
            } else {
                let n = externals.iter().position(|&e| e == v).unwrap_or_else(|| {
                    externals.push(v);
                    externals.len() - 1
                });
                Operand::External(n)
            };
            operands.push(Some(o));
        }
        let out = cx.ty(cx.output(m, 0)?).clone();
        let op = drift_ops::build_op(&n.op_type, &n.domain, n.opset, &n.attrs, 1).ok()?;
        fused_members.push(Member {
            op,
            op_type: n.op_type.clone(),
            operands,
            operand_types: types,
            operand_values: values,
            out,
        });
    }
    inputs.extend(externals.iter().map(|&v| Some(Ref::Old(v))));
    let producer = rebuild(cx, p)?;
    let fused = FusedOp {
        producer,
        producer_type: pn.op_type.clone(),
        producer_inputs,
        producer_out: cx.ty(y).clone(),
        members: fused_members,
        pad: pad.as_ref().map(|(_, s)| s.clone()),
        prologues,
    };
    let last = match &pad {
        Some((n, _)) => *n,
        None => members.last().copied().unwrap_or(p),
    };
    let name = fused.describe();
    let mut patch = Patch::new();
    let out = patch.built(&name, Box::new(fused), inputs);
    // As early as every operand allows: right after the producer, or after
    // the last node computing an operand of a member. Running it there keeps
    // the producer's inputs from living longer than before.
    let ready = externals.iter().filter_map(|&v| cx.producer(v));
    Some(patch.replace(cx.output(last, 0)?, out).after_all(std::iter::once(p).chain(ready)))
}

/// A fresh copy of node `id`'s op (ops are not `Clone`), rebuilt from its
/// attributes; `None` for nodes the optimizer built (a fused node is not
/// fused again).
fn rebuild(cx: &Ctx, id: NodeId) -> Option<Box<dyn Op>> {
    let n = cx.node(id);
    if n.domain.is_empty() {
        return drift_ops::build_op(&n.op_type, &n.domain, n.opset, &n.attrs, n.outputs.len()).ok();
    }
    None
}
