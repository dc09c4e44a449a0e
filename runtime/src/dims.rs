//! Bounded dynamic dims at run time: the symbols' values are solved from
//! the shapes the caller passes, checked against their bounds, and used to
//! evaluate the bundle's polynomials (output shapes, workgroup counts).
//! This is all the runtime knows of dynamic shapes: a few integer sums of
//! products per run.

use crate::bundle::{BufferKind, Bundle, DimExpr, Groups, IoTensor, Symbol};
use crate::error::{Error, Result, bundle_err, fmt_shape};

/// The value of `e` for symbol values `vals`.
pub fn eval(e: &DimExpr, vals: &[u64]) -> i64 {
    e.terms.iter().map(|t| t.coeff * t.syms.iter().map(|&s| vals[s as usize] as i64).product::<i64>()).sum()
}

/// A dispatch's workgroup count along one axis.
pub fn groups(g: &Groups, vals: &[u64]) -> u32 {
    let n = g.expr.as_ref().map_or(0, |e| eval(e, vals)).max(0) as u64;
    let n = n.div_ceil(u64::from(g.div.max(1)));
    let n = if g.cap > 0 { n.min(u64::from(g.cap)) } else { n };
    n.min(u64::from(u32::MAX)) as u32
}

/// A tensor's actual shape: its dims evaluated, or its fixed shape.
pub fn shape(t: &IoTensor, vals: &[u64]) -> Vec<usize> {
    if t.dims.is_empty() {
        return t.shape.iter().map(|&d| d as usize).collect();
    }
    t.dims.iter().map(|e| eval(e, vals).max(0) as usize).collect()
}

/// A dim with its symbols named, for messages.
fn show(e: &DimExpr, symbols: &[Symbol]) -> String {
    let terms: Vec<String> = e
        .terms
        .iter()
        .map(|t| {
            let mut f: Vec<String> = t.syms.iter().map(|&s| symbols[s as usize].name.clone()).collect();
            if t.coeff != 1 || f.is_empty() {
                f.insert(0, t.coeff.to_string());
            }
            f.join("*")
        })
        .collect();
    if terms.is_empty() { "0".into() } else { terms.join(" + ") }
}

/// Solves every symbol from the given shapes of the inputs with dims, then
/// checks each axis and each symbol's bounds. `given[i]` pairs an input's
/// description with the shape passed for it.
pub fn solve(symbols: &[Symbol], given: &[(&IoTensor, &[usize])]) -> Result<Vec<u64>> {
    let mut vals: Vec<Option<u64>> = vec![None; symbols.len()];
    // Axes that are one symbol fix it; then axes with one unknown left.
    let mut progress = true;
    while progress {
        progress = false;
        for (t, shape) in given {
            for (e, &d) in t.dims.iter().zip(shape.iter()) {
                let unknown: Vec<u32> = e
                    .terms
                    .iter()
                    .flat_map(|t| t.syms.iter().copied())
                    .filter(|&s| vals[s as usize].is_none())
                    .collect();
                let Some(&s) = unknown.first() else { continue };
                if unknown.iter().any(|&u| u != s) {
                    continue;
                }
                // Linear in s: d = c·s + rest.
                let (mut c, mut rest) = (0i64, 0i64);
                let mut linear = true;
                for term in &e.terms {
                    let n = term.syms.iter().filter(|&&x| x == s).count();
                    let known: i64 =
                        term.syms.iter().filter(|&&x| x != s).map(|&x| vals[x as usize].unwrap_or(0) as i64).product();
                    match n {
                        0 => rest += term.coeff * known,
                        1 => c += term.coeff * known,
                        _ => linear = false,
                    }
                }
                let num = d as i64 - rest;
                if linear && c != 0 && num % c == 0 && num / c >= 0 {
                    vals[s as usize] = Some((num / c) as u64);
                    progress = true;
                }
            }
        }
    }
    let vals: Vec<u64> = vals
        .iter()
        .zip(symbols)
        .map(|(v, sym)| v.ok_or_else(|| Error::Run(format!("the inputs' shapes do not determine dim '{}'", sym.name))))
        .collect::<Result<_>>()?;
    for (t, shape) in given {
        let want = self::shape(t, &vals);
        if want.as_slice() != *shape {
            let dims: Vec<String> = t.dims.iter().map(|e| show(e, symbols)).collect();
            return Err(Error::ShapeMismatch {
                name: t.name.clone(),
                expected: format!("[{}] = {}", dims.join(", "), fmt_shape(&want)),
                got: fmt_shape(shape),
            });
        }
    }
    for (sym, &v) in symbols.iter().zip(&vals) {
        if v < sym.min || v > sym.max {
            let input = given.iter().find(|(t, _)| {
                t.dims
                    .iter()
                    .any(|e| e.terms.iter().any(|x| x.syms.iter().any(|&s| symbols[s as usize].name == sym.name)))
            });
            return Err(Error::DimOutOfBounds {
                name: sym.name.clone(),
                value: v,
                min: sym.min,
                max: sym.max,
                input: input.map(|(t, _)| t.name.clone()).unwrap_or_default(),
            });
        }
    }
    Ok(vals)
}

/// Checks the dynamic-dims, stage and state fields of a bundle.
pub(crate) fn validate(b: &Bundle) -> Result<()> {
    let bad = |field: String, problem: String| Err(bundle_err(field, problem));
    let n_syms = b.symbols.len();
    if n_syms > MAX_SYMBOLS {
        return bad("symbols".into(), format!("has {n_syms} entries, at most {MAX_SYMBOLS} are allowed"));
    }
    for (i, s) in b.symbols.iter().enumerate() {
        if s.min > s.max || s.max > u64::from(u32::MAX) {
            return bad(format!("symbols[{i}]"), format!("'{}' has the bounds {}..{}", s.name, s.min, s.max));
        }
    }
    let expr_ok = |e: &DimExpr| e.terms.iter().all(|t| t.syms.iter().all(|&s| (s as usize) < n_syms));
    for (list, tensors) in [("inputs", &b.inputs), ("outputs", &b.outputs)] {
        for (i, t) in tensors.iter().enumerate() {
            if !t.dims.is_empty() && (t.dims.len() != t.shape.len() || !t.dims.iter().all(expr_ok)) {
                return bad(format!("{list}[{i}].dims"), "does not match the shape's rank and the symbols".into());
            }
        }
    }
    for (i, d) in b.dispatches.iter().enumerate() {
        let ok = d.groups.is_empty()
            || d.groups.len() == 3 && d.groups.iter().all(|g| g.div > 0 && g.expr.as_ref().is_some_and(expr_ok));
        if !ok {
            return bad(format!("dispatches[{i}].groups"), "are not three counts over the symbols".into());
        }
    }
    for (i, st) in b.stages.iter().enumerate() {
        let field = |f: &str| format!("stages[{i}].{f}");
        let end = u64::from(st.first_dispatch) + u64::from(st.dispatch_count);
        if end > b.dispatches.len() as u64 {
            return bad(field("dispatch_count"), format!("runs past the {} dispatches", b.dispatches.len()));
        }
        if st.inputs.len() != b.inputs.len() || st.outputs.len() != b.outputs.len() {
            return bad(field("inputs"), "do not list every input and output".into());
        }
        for (p, t) in st.inputs.iter().zip(&b.inputs).chain(st.outputs.iter().zip(&b.outputs)) {
            let fits = b.buffers.get(p.buffer as usize).is_some_and(|buf| {
                buf.kind == BufferKind::Arena as i32
                    && p.offset.is_multiple_of(4)
                    && p.size.is_multiple_of(4)
                    && p.offset.saturating_add(p.size) <= buf.size
            });
            if !fits {
                return bad(field("inputs"), format!("place tensor '{}' outside an Arena buffer", t.name));
            }
        }
        if st.when.iter().any(|r| r.sym as usize >= n_syms || r.min > r.max) {
            return bad(field("when"), "names an unknown symbol or an empty range".into());
        }
    }
    match b.state_buffers[..] {
        [] => {}
        [s0, s1] => {
            let buf = |i: u32| b.buffers.get(i as usize).filter(|x| x.kind == BufferKind::Arena as i32);
            if s0 == s1 || buf(s0).zip(buf(s1)).is_none_or(|(x, y)| x.size != y.size) {
                return bad("state_buffers".into(), "are not two distinct Arena buffers of one size".into());
            }
        }
        _ => return bad("state_buffers".into(), "must hold two buffers or none".into()),
    }
    for (i, p) in b.state.iter().enumerate() {
        let known = b.inputs.iter().any(|t| t.name == p.input) && b.outputs.iter().any(|t| t.name == p.output);
        if !known || b.state_buffers.is_empty() {
            return bad(
                format!("state[{i}]"),
                format!("pairs '{}' with '{}', which are not both IO tensors", p.input, p.output),
            );
        }
    }
    Ok(())
}

/// The `dims` uniform holds this many u32s.
pub const MAX_SYMBOLS: usize = 8;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::Term;

    fn sym(s: u32) -> DimExpr {
        DimExpr { terms: vec![Term { coeff: 1, syms: vec![s] }] }
    }
    fn konst(c: i64) -> DimExpr {
        DimExpr { terms: vec![Term { coeff: c, syms: vec![] }] }
    }

    #[test]
    fn solves_sums_and_checks_bounds() {
        let symbols =
            vec![Symbol { name: "seq".into(), min: 1, max: 8 }, Symbol { name: "past".into(), min: 0, max: 16 }];
        let ids = IoTensor { name: "ids".into(), dims: vec![konst(1), sym(0)], ..Default::default() };
        let total = DimExpr { terms: vec![Term { coeff: 1, syms: vec![0] }, Term { coeff: 1, syms: vec![1] }] };
        let mask = IoTensor { name: "mask".into(), dims: vec![konst(1), total], ..Default::default() };
        let v = solve(&symbols, &[(&ids, &[1, 3]), (&mask, &[1, 10])]).unwrap();
        assert_eq!(v, vec![3, 7]);
        let e = solve(&symbols, &[(&ids, &[1, 3]), (&mask, &[1, 30])]).unwrap_err();
        assert!(e.to_string().contains("past") && e.to_string().contains("27"), "{e}");
        let e = solve(&symbols, &[(&ids, &[2, 3]), (&mask, &[1, 10])]).unwrap_err();
        assert!(e.to_string().contains("'ids'"), "{e}");
        assert_eq!(groups(&Groups { expr: Some(sym(1)), div: 4, cap: 0 }, &v), 2);
    }
}
