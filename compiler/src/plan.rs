//! Static memory planning: byte offsets for tensors with known lifetimes,
//! so tensors that are never live together share memory.

/// A tensor's size and the inclusive range of steps during which it is live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lifetime {
    pub first: usize,
    pub last: usize,
    pub bytes: u64,
}

/// Offsets per tensor (same order as the input) and the arena size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub offsets: Vec<u64>,
    pub total: u64,
}

fn overlaps(a: &Lifetime, b: &Lifetime) -> bool {
    a.first <= b.last && b.first <= a.last
}

/// Greedy by size (as in TFLite/ML Drift): largest tensor first, each placed
/// at the lowest aligned offset that does not collide with an already placed
/// tensor whose lifetime overlaps.
pub fn greedy_by_size(tensors: &[Lifetime], align: u64) -> Plan {
    let mut order: Vec<usize> = (0..tensors.len()).collect();
    order.sort_by(|&a, &b| tensors[b].bytes.cmp(&tensors[a].bytes).then(a.cmp(&b)));
    let mut offsets = vec![0u64; tensors.len()];
    let mut placed: Vec<usize> = vec![];
    let mut total = 0;
    for &t in &order {
        let mut busy: Vec<(u64, u64)> = placed
            .iter()
            .filter(|&&p| overlaps(&tensors[p], &tensors[t]))
            .map(|&p| (offsets[p], offsets[p] + tensors[p].bytes))
            .collect();
        busy.sort();
        let mut off = 0u64;
        for (start, end) in busy {
            if off + tensors[t].bytes <= start {
                break;
            }
            off = off.max(end.next_multiple_of(align));
        }
        offsets[t] = off;
        total = total.max(off + tensors[t].bytes);
        placed.push(t);
    }
    Plan { offsets, total }
}
