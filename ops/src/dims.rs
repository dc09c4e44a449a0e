//! Symbolic dimensions: polynomials with integer coefficients over a model's
//! bounded dynamic dims (`drift compile --dim seq=1..2048`).
//!
//! Exported decoders compute every shape from a few symbols (sequence
//! length, past length, their sum, products with head sizes), so one
//! canonical form covers them: a sum of monomials, each a coefficient times
//! a sorted list of symbols. Equal shapes have equal polynomials, which is
//! what broadcasting and Concat checks need; kernels render them as WGSL
//! over the `dims` uniform (`dims.s0`, ...), and the runtime evaluates the
//! same terms for dispatch sizes and output shapes.

use std::collections::BTreeMap;
use std::fmt;

/// A symbol: an index into the program's list of dynamic dims.
pub type Sym = u32;

/// Most symbols a program may have (the `dims` uniform holds this many u32s).
pub const MAX_SYMS: usize = 8;

/// `Σ coeff · Π syms`, with no zero coefficients and sorted monomials.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Poly(BTreeMap<Vec<Sym>, i64>);

impl Poly {
    pub fn konst(c: i64) -> Poly {
        let mut m = BTreeMap::new();
        if c != 0 {
            m.insert(vec![], c);
        }
        Poly(m)
    }

    pub fn sym(s: Sym) -> Poly {
        Poly(BTreeMap::from([(vec![s], 1)]))
    }

    /// The value when no symbol occurs.
    pub fn as_const(&self) -> Option<i64> {
        match self.0.len() {
            0 => Some(0),
            1 => self.0.get(&vec![]).copied(),
            _ => None,
        }
    }

    pub fn is_const(&self) -> bool {
        self.as_const().is_some()
    }

    /// The monomials: (symbols, coefficient).
    pub fn terms(&self) -> impl Iterator<Item = (&[Sym], i64)> {
        self.0.iter().map(|(m, &c)| (m.as_slice(), c))
    }

    /// Symbols that occur.
    pub fn syms(&self) -> Vec<Sym> {
        let mut s: Vec<Sym> = self.0.keys().flatten().copied().collect();
        s.sort_unstable();
        s.dedup();
        s
    }

    fn insert(&mut self, m: Vec<Sym>, c: i64) {
        let e = self.0.entry(m).or_insert(0);
        *e += c;
        if *e == 0 {
            self.0.retain(|_, v| *v != 0);
        }
    }

    pub fn add(&self, o: &Poly) -> Poly {
        let mut r = self.clone();
        for (m, &c) in &o.0 {
            r.insert(m.clone(), c);
        }
        r
    }

    pub fn sub(&self, o: &Poly) -> Poly {
        self.add(&o.scale(-1))
    }

    pub fn scale(&self, k: i64) -> Poly {
        if k == 0 {
            return Poly::default();
        }
        Poly(self.0.iter().map(|(m, &c)| (m.clone(), c * k)).collect())
    }

    pub fn mul(&self, o: &Poly) -> Poly {
        let mut r = Poly::default();
        for (a, &ca) in &self.0 {
            for (b, &cb) in &o.0 {
                let mut m: Vec<Sym> = a.iter().chain(b).copied().collect();
                m.sort_unstable();
                r.insert(m, ca * cb);
            }
        }
        r
    }

    /// `self / o` when it is exact: `o` a constant dividing every
    /// coefficient, a single monomial dividing every term, or `self` itself.
    pub fn div_exact(&self, o: &Poly) -> Option<Poly> {
        if self == o && !o.0.is_empty() {
            return Some(Poly::konst(1));
        }
        if o.0.len() != 1 {
            return None;
        }
        let (dm, &dc) = o.0.iter().next()?;
        let mut r = Poly::default();
        for (m, &c) in &self.0 {
            if c % dc != 0 {
                return None;
            }
            let mut rest = m.clone();
            for s in dm {
                let at = rest.iter().position(|x| x == s)?;
                rest.remove(at);
            }
            r.insert(rest, c / dc);
        }
        Some(r)
    }

    /// The value for symbol values `vals`.
    pub fn eval(&self, vals: &[i64]) -> i64 {
        self.0.iter().map(|(m, &c)| c * m.iter().map(|&s| vals[s as usize]).product::<i64>()).sum()
    }

    /// Smallest and largest value over the box of symbol `bounds`
    /// (inclusive), taken at its corners: exact for the multilinear
    /// polynomials shapes are.
    pub fn range(&self, bounds: &[(i64, i64)]) -> (i64, i64) {
        let syms = self.syms();
        let mut lo = i64::MAX;
        let mut hi = i64::MIN;
        for corner in 0..1u32 << syms.len() {
            let mut vals: Vec<i64> = bounds.iter().map(|b| b.0).collect();
            for (k, &s) in syms.iter().enumerate() {
                let b = bounds[s as usize];
                vals[s as usize] = if corner >> k & 1 == 1 { b.1 } else { b.0 };
            }
            let v = self.eval(&vals);
            lo = lo.min(v);
            hi = hi.max(v);
        }
        (lo, hi)
    }

    /// A WGSL `u32` expression (wrapping arithmetic gives the exact value
    /// for any result in `0..2^32`, negative coefficients included).
    pub fn wgsl(&self) -> String {
        if self.0.is_empty() {
            return "0u".into();
        }
        let mut out = String::new();
        for (i, (m, &c)) in self.0.iter().enumerate() {
            let mag = c.unsigned_abs();
            let mut factors: Vec<String> = m.iter().map(|s| format!("dims.s{s}")).collect();
            if mag != 1 || factors.is_empty() {
                factors.insert(0, format!("{mag}u"));
            }
            let term = factors.join(" * ");
            if i == 0 {
                out = if c < 0 { format!("0u - {term}") } else { term };
            } else {
                out += if c < 0 { " - " } else { " + " };
                out += &term;
            }
        }
        if self.0.len() > 1 || out.contains(" - ") { format!("({out})") } else { out }
    }
}

impl fmt::Debug for Poly {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return write!(f, "0");
        }
        let terms: Vec<String> = self
            .0
            .iter()
            .map(|(m, c)| {
                let syms: Vec<String> = m.iter().map(|s| format!("s{s}")).collect();
                match (syms.is_empty(), *c) {
                    (true, c) => c.to_string(),
                    (false, 1) => syms.join("*"),
                    (false, c) => format!("{c}*{}", syms.join("*")),
                }
            })
            .collect();
        write!(f, "{}", terms.join(" + "))
    }
}

/// Product of a shape's dims.
pub fn numel(shape: &[Poly]) -> Poly {
    shape.iter().fold(Poly::konst(1), |a, d| a.mul(d))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_sums_products_and_exact_division() {
        let (s, p) = (Poly::sym(0), Poly::sym(1));
        let total = p.add(&s);
        assert_eq!(total.sub(&s), p);
        assert_eq!(s.add(&p), total);
        let n = total.mul(&Poly::konst(64)).mul(&s);
        assert_eq!(n.div_exact(&s.mul(&Poly::konst(16))), Some(total.scale(4)));
        assert_eq!(n.div_exact(&total), None, "division by a sum is not attempted");
        assert_eq!(total.div_exact(&total), Some(Poly::konst(1)));
        assert_eq!(n.eval(&[3, 5]), 8 * 64 * 3);
        assert_eq!(total.sub(&s.scale(2)).range(&[(1, 4), (0, 10)]), (-4, 9));
        assert_eq!(Poly::konst(7).wgsl(), "7u");
        assert_eq!(total.wgsl(), "(dims.s0 + dims.s1)");
        assert_eq!(p.sub(&s).wgsl(), "(0u - dims.s0 + dims.s1)");
    }
}
