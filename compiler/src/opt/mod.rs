//! The graph optimizer. Rewrite rules (pattern + patch, `rewrite.rs`) are
//! grouped into named passes, each run to a fixed point; the passes run in
//! the order of [`SIMPLIFY`] (before oversized weights are split) and
//! [`FUSE`] (after). Debug builds check the IR after every pass.
//!
//! One file per pass group: `cleanup` (constant folding, no-ops, CSE),
//! `algebra` (BatchNorm into weights, transposes and reshapes), `patterns`
//! (GELU, SiLU, Softmax, LayerNorm, RMSNorm, attention spelled out in
//! primitive ops), `layout` (tensor layouts and weight re-layout), `fuse`
//! (elementwise consumers spliced into their producer's store).

pub mod algebra;
pub mod cleanup;
pub mod fuse;
pub mod layout;
pub mod patterns;
pub mod rewrite;
pub mod text;

use crate::error::Result;
use crate::ir::{Graph, NodeId};
pub use rewrite::Pass;

/// Graph-level rewrites, in order: clean up, recognize composite ops,
/// fold what that exposes.
pub const SIMPLIFY: &[&Pass] = &[
    &cleanup::FOLD,
    &cleanup::NO_OPS,
    &cleanup::CSE,
    &algebra::TRANSPOSES,
    &algebra::BATCH_NORM,
    &patterns::LAYER_NORM,
    &patterns::RMS_NORM,
    &patterns::ACTIVATIONS,
    &algebra::SCALES,
    &patterns::ATTENTION,
    &algebra::TRANSPOSES,
    &cleanup::NO_OPS,
    &cleanup::CSE,
];

/// Kernel-level rewrites, after weights are split: layouts, then fusion.
pub const FUSE: &[&Pass] = &[&layout::PADDED_INPUTS, &fuse::EPILOGUES];

/// Every pass, for lookup by name (`compiler/tests/passes`).
pub const ALL: &[&Pass] = &[
    &cleanup::FOLD,
    &cleanup::NO_OPS,
    &cleanup::CSE,
    &algebra::TRANSPOSES,
    &algebra::BATCH_NORM,
    &patterns::LAYER_NORM,
    &patterns::RMS_NORM,
    &patterns::ACTIVATIONS,
    &algebra::SCALES,
    &patterns::ATTENTION,
    &layout::PADDED_INPUTS,
    &fuse::EPILOGUES,
];

/// The pass called `name`.
pub fn pass(name: &str) -> Option<&'static Pass> {
    ALL.iter().copied().find(|p| p.name == name)
}

/// Runs `passes` over the live nodes in `order`; returns the new order.
pub fn run(g: &mut Graph, order: Vec<NodeId>, passes: &[&Pass]) -> Result<Vec<NodeId>> {
    rewrite::remove_unused(g, &order);
    let mut order: Vec<NodeId> = order.into_iter().filter(|&id| !g.nodes[id].dead).collect();
    for pass in passes {
        order = rewrite::run_pass(g, order, pass)?;
        if cfg!(debug_assertions) {
            rewrite::check(g, &order, pass.name)?;
        }
    }
    release_unused_constants(g);
    Ok(order)
}

/// Drops the data of constants no live node reads any more (weights
/// replaced by folded ones), so compiling a large model does not hold both.
fn release_unused_constants(g: &mut Graph) {
    let mut used = vec![false; g.values.len()];
    for (_, n) in g.live_nodes() {
        for &v in n.inputs.iter().flatten() {
            used[v] = true;
        }
    }
    for &v in g.inputs.iter().chain(&g.outputs) {
        used[v] = true;
    }
    for (v, value) in g.values.iter_mut().enumerate() {
        if !used[v] && value.constant.is_some() {
            value.constant = None;
        }
    }
}
