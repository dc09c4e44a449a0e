//! Static memory planning: byte offsets for tensors with known lifetimes,
//! so tensors that are never live together share memory.
//!
//! The input is a [`Problem`]: every tensor's size and the inclusive range
//! of dispatch steps during which it is live, pairs that may share memory
//! in place, alignments and optionally a binding window. [`plan`] returns
//! one offset per tensor. Two tensors whose lifetimes overlap never overlap
//! in memory, except an in-place pair, which shares one block.
//!
//! Strategies (after ML Drift / TFLite's GPU memory manager):
//! - greedy by size: largest first, each into the smallest gap left by the
//!   tensors already placed whose lifetimes overlap its own;
//! - greedy in order: in order of first use (largest first on ties), the same
//!   best-fit rule;
//! - greedy by area: largest size × lifetime first, the same rule (DenseNet's
//!   growing concatenations need it: by size alone its plan is 28% over the
//!   lower bound, by area 1.6%);
//! - best: every order, with and without in-place reuse; the smallest wins.
//!
//! In-place: an elementwise kernel whose thread `i` reads input element `i`
//! before writing output element `i` may write its output over an input that
//! dies at that step. The planner merges such a pair into one block (their
//! lifetimes touch at that step) when the sizes agree; chains merge too.
//!
//! Windows: a buffer larger than one binding is bound as several windows of
//! `window` bytes. A tensor that fits a window is kept inside one, so its
//! kernels index one binding; only a tensor larger than a window spans several.

use std::fmt;

/// A tensor's size and the inclusive range of steps during which it is live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lifetime {
    pub first: usize,
    pub last: usize,
    pub bytes: u64,
}

impl Lifetime {
    fn overlaps(&self, other: &Lifetime) -> bool {
        self.first <= other.last && other.first <= self.last
    }
}

/// What to plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub tensors: Vec<Lifetime>,
    /// `(input, output)`: `output` may take `input`'s memory, if `input` dies
    /// at the step where `output` is first written and both have one size.
    pub in_place: Vec<(usize, usize)>,
    /// Every offset is a multiple of this (a power of two, at least 4).
    pub align: u64,
    /// `(bytes, align)`: tensors of at least `bytes` start at multiples of
    /// `align` instead (say, GPU cache lines: on large tensors the padding
    /// costs little).
    pub big_align: Option<(u64, u64)>,
    /// When set (a power of two), no tensor of at most this many bytes may
    /// cross a multiple of it.
    pub window: Option<u64>,
}

/// The orders `Best` tries.
pub const ORDERS: [Strategy; 3] = [Strategy::GreedyBySize, Strategy::GreedyInOrder, Strategy::GreedyByArea];

impl Problem {
    /// The alignment of a tensor of `bytes`.
    pub fn align_of(&self, bytes: u64) -> u64 {
        match self.big_align {
            Some((min, align)) if bytes >= min => align.max(self.align),
            _ => self.align,
        }
    }
}

/// How offsets are chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strategy {
    GreedyBySize,
    GreedyInOrder,
    /// Largest size × lifetime first: long-lived tensors settle low, the
    /// short-lived ones fill the gaps around them.
    GreedyByArea,
    /// Every order, with and without in-place reuse; the smallest plan.
    Best,
}

impl Strategy {
    pub fn name(self) -> &'static str {
        match self {
            Strategy::GreedyBySize => "greedy_by_size",
            Strategy::GreedyInOrder => "greedy_in_order",
            Strategy::GreedyByArea => "greedy_by_area",
            Strategy::Best => "best",
        }
    }

    pub fn from_name(name: &str) -> Option<Strategy> {
        ORDERS.into_iter().chain([Strategy::Best]).find(|s| s.name() == name)
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Offsets per tensor (same order as the input) and the arena size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub offsets: Vec<u64>,
    pub total: u64,
    /// The order that produced this plan (never `Best`).
    pub strategy: Strategy,
    /// The in-place pairs taken: `(input, output)` share one block.
    pub in_place: Vec<(usize, usize)>,
}

/// The most bytes live at once over the schedule: no plan of these tensors
/// can be smaller (ignoring alignment). Zero for no tensors.
pub fn lower_bound(tensors: &[Lifetime]) -> u64 {
    let steps = tensors.iter().map(|t| t.last + 1).max().unwrap_or(0);
    // Difference array over steps: +bytes at first, -bytes after last.
    let mut delta = vec![0i128; steps + 1];
    for t in tensors {
        delta[t.first] += i128::from(t.bytes);
        delta[t.last + 1] -= i128::from(t.bytes);
    }
    let mut live = 0i128;
    let mut peak = 0i128;
    for d in delta {
        live += d;
        peak = peak.max(live);
    }
    peak as u64
}

/// Bytes if every tensor had memory of its own.
pub fn naive_bytes(tensors: &[Lifetime]) -> u64 {
    tensors.iter().map(|t| t.bytes).sum()
}

/// The tensors after taking every admissible in-place pair: one block per
/// group. Returns the blocks, each tensor's block and the pairs taken.
pub fn merge_in_place(p: &Problem) -> (Vec<Lifetime>, Vec<usize>, Vec<(usize, usize)>) {
    let n = p.tensors.len();
    let mut block_of: Vec<usize> = (0..n).collect();
    let mut blocks: Vec<Lifetime> = p.tensors.clone();
    let mut gave = vec![false; n];
    let mut took = vec![false; n];
    let mut taken = vec![];
    for &(input, output) in &p.in_place {
        let (a, b) = (p.tensors[input], p.tensors[output]);
        // The input must die exactly where the output is born, and each
        // tensor gives and takes memory at most once, so groups are chains.
        let ok = input != output && a.last == b.first && a.bytes == b.bytes && !gave[input] && !took[output];
        if !ok {
            continue;
        }
        gave[input] = true;
        took[output] = true;
        let block = block_of[input];
        block_of[output] = block;
        blocks[block].last = blocks[block].last.max(b.last);
        taken.push((input, output));
    }
    // Renumber the blocks that still have members.
    let mut index = vec![usize::MAX; n];
    let mut kept = vec![];
    for block in block_of.iter_mut() {
        let root = *block;
        if index[root] == usize::MAX {
            index[root] = kept.len();
            kept.push(blocks[root]);
        }
        *block = index[root];
    }
    (kept, block_of, taken)
}

/// The lower bound with every admissible in-place pair taken: the smallest
/// arena any plan of `p` may reach.
pub fn problem_lower_bound(p: &Problem) -> u64 {
    lower_bound(&merge_in_place(p).0)
}

/// Plans `p` with `strategy`.
pub fn plan(p: &Problem, strategy: Strategy) -> Plan {
    match strategy {
        Strategy::Best => {
            let mut best: Option<Plan> = None;
            for order in ORDERS {
                for in_place in [true, false] {
                    let candidate = plan_with(p, order, in_place);
                    if best.as_ref().is_none_or(|b| candidate.total < b.total) {
                        best = Some(candidate);
                    }
                }
            }
            best.expect("at least one candidate")
        }
        order => plan_with(p, order, true),
    }
}

fn plan_with(p: &Problem, order: Strategy, in_place: bool) -> Plan {
    let (blocks, block_of, taken) =
        if in_place { merge_in_place(p) } else { (p.tensors.clone(), (0..p.tensors.len()).collect(), vec![]) };
    let mut sequence: Vec<usize> = (0..blocks.len()).collect();
    let area = |b: &Lifetime| u128::from(b.bytes) * (b.last - b.first + 1) as u128;
    use std::cmp::Reverse;
    match order {
        Strategy::GreedyInOrder => sequence.sort_by_key(|&b| (blocks[b].first, Reverse(blocks[b].bytes))),
        Strategy::GreedyByArea => sequence.sort_by_key(|&b| (Reverse(area(&blocks[b])), blocks[b].first)),
        _ => sequence.sort_by_key(|&b| (Reverse(blocks[b].bytes), blocks[b].first)),
    }
    let (block_offsets, total) = assign(&blocks, &sequence, p);
    Plan { offsets: block_of.iter().map(|&b| block_offsets[b]).collect(), total, strategy: order, in_place: taken }
}

/// Places `blocks` in `sequence` order, each at the start of the smallest
/// gap (among blocks already placed whose lifetimes overlap) that holds it,
/// or after all of them.
fn assign(blocks: &[Lifetime], sequence: &[usize], p: &Problem) -> (Vec<u64>, u64) {
    let mut offsets = vec![0u64; blocks.len()];
    let mut placed: Vec<usize> = Vec::with_capacity(blocks.len());
    let mut total = 0;
    let mut busy: Vec<(u64, u64)> = vec![];
    for &b in sequence {
        let t = &blocks[b];
        busy.clear();
        busy.extend(
            placed.iter().filter(|&&q| blocks[q].overlaps(t)).map(|&q| (offsets[q], offsets[q] + blocks[q].bytes)),
        );
        busy.sort_unstable();
        let off = best_fit(&busy, t.bytes, p);
        offsets[b] = off;
        total = total.max(off + t.bytes);
        placed.push(b);
    }
    (offsets, total)
}

/// The lowest legal offset at or after `off` for a tensor of `bytes`.
fn legal(off: u64, bytes: u64, p: &Problem) -> u64 {
    let off = off.next_multiple_of(p.align_of(bytes));
    match p.window {
        // Would cross a window boundary: start at the next window instead.
        Some(w) if bytes > 0 && bytes <= w && off / w != (off + bytes - 1) / w => off.next_multiple_of(w),
        _ => off,
    }
}

/// Start of the smallest gap between the `busy` ranges (sorted by start)
/// that holds `bytes`; after the last range if none does.
fn best_fit(busy: &[(u64, u64)], bytes: u64, p: &Problem) -> u64 {
    let mut best: Option<(u64, u64)> = None; // (gap size, offset)
    let mut cursor = 0u64;
    for &(start, end) in busy {
        let off = legal(cursor, bytes, p);
        if off + bytes <= start {
            let gap = start - cursor;
            if best.is_none_or(|(g, _)| gap < g) {
                best = Some((gap, off));
            }
        }
        cursor = cursor.max(end);
    }
    match best {
        Some((_, off)) => off,
        None => legal(cursor, bytes, p),
    }
}

/// Why a plan is wrong, if it is: overlapping live tensors, a misaligned
/// offset, a tensor crossing a window, a total that does not cover every
/// tensor. In-place pairs taken by the plan may share memory.
pub fn check(p: &Problem, plan: &Plan) -> Result<(), String> {
    let n = p.tensors.len();
    if plan.offsets.len() != n {
        return Err(format!("{} offsets for {n} tensors", plan.offsets.len()));
    }
    let mut shares = vec![vec![]; n];
    for &(a, b) in &plan.in_place {
        if !p.in_place.contains(&(a, b)) {
            return Err(format!("in-place pair ({a}, {b}) was not offered"));
        }
        shares[a].push(b);
        shares[b].push(a);
    }
    for (i, t) in p.tensors.iter().enumerate() {
        let off = plan.offsets[i];
        if !off.is_multiple_of(p.align_of(t.bytes)) {
            return Err(format!("tensor {i} at {off} is not aligned to {}", p.align_of(t.bytes)));
        }
        if off + t.bytes > plan.total {
            return Err(format!("tensor {i} at {off} + {} runs past the total {}", t.bytes, plan.total));
        }
        if let Some(w) = p.window
            && t.bytes > 0
            && t.bytes <= w
            && off / w != (off + t.bytes - 1) / w
        {
            return Err(format!("tensor {i} at {off} ({} bytes) crosses a {w}-byte window", t.bytes));
        }
    }
    for i in 0..n {
        for j in i + 1..n {
            let (a, b) = (&p.tensors[i], &p.tensors[j]);
            let (oa, ob) = (plan.offsets[i], plan.offsets[j]);
            let same_block = oa == ob && in_same_chain(&shares, i, j);
            if a.overlaps(b) && oa < ob + b.bytes && ob < oa + a.bytes && !same_block {
                return Err(format!("tensors {i} and {j} are live together and overlap in memory"));
            }
        }
    }
    Ok(())
}

/// Whether `i` and `j` are linked by a chain of in-place pairs.
fn in_same_chain(shares: &[Vec<usize>], i: usize, j: usize) -> bool {
    let mut seen = vec![false; shares.len()];
    let mut stack = vec![i];
    while let Some(k) = stack.pop() {
        if k == j {
            return true;
        }
        if !std::mem::replace(&mut seen[k], true) {
            stack.extend(&shares[k]);
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(first: usize, last: usize, bytes: u64) -> Lifetime {
        Lifetime { first, last, bytes }
    }

    #[test]
    fn lower_bound_is_the_peak_of_live_bytes() {
        assert_eq!(lower_bound(&[]), 0);
        assert_eq!(lower_bound(&[t(0, 1, 10), t(1, 2, 20), t(2, 3, 5)]), 30);
        assert_eq!(naive_bytes(&[t(0, 1, 10), t(1, 2, 20), t(2, 3, 5)]), 35);
    }

    #[test]
    fn every_strategy_gives_a_valid_plan() {
        let p = Problem {
            tensors: vec![t(0, 2, 100), t(1, 3, 300), t(2, 4, 100), t(3, 5, 200), t(4, 6, 50), t(0, 6, 8)],
            in_place: vec![(0, 2), (2, 4)],
            align: 16,
            big_align: Some((200, 64)),
            window: Some(512),
        };
        for s in ORDERS.into_iter().chain([Strategy::Best]) {
            let plan = plan(&p, s);
            check(&p, &plan).unwrap_or_else(|e| panic!("{s}: {e}"));
            assert!(plan.total >= problem_lower_bound(&p));
        }
    }
}
