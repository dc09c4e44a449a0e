//! TopK: the `k` largest (or smallest) elements along an axis, with their
//! int64 indices.
//!
//! Order: by value (descending for `largest`, ascending otherwise), equal
//! values by lower index first, as the ONNX reference does; NaN counts as
//! larger than every number. The output is always sorted: `sorted = 0`
//! leaves the order unspecified, so sorted order is a valid answer.
//!
//! GPU: one thread per input element counts the elements of its line that
//! come before it; that count is its rank, and an element whose rank is
//! below `k` writes itself (and its index) to output position `rank`. Every
//! rank is taken by exactly one element, so the writes never collide and
//! need no second pass. The cost is O(len) per element, fine for the
//! class-count sized axes TopK sees; `k` must be a compile-time constant
//! since it sets the output shape.

use crate::families::movement::kernel;
use crate::{
    Attrs, DType, Error, Input, KernelArg, LowerCtx, Lowering, Op, Phys, Result, Tensor, TensorRef, TypeInfo, arg,
    bail, need_value, norm_axis, numel, ty,
};
use std::cmp::Ordering;

/// TopK; `attr_k` is opset 1's attribute (later opsets take input 1).
#[derive(Debug)]
pub struct TopK {
    pub axis: i64,
    pub largest: bool,
    pub attr_k: Option<i64>,
}

/// Builds TopK.
pub fn build(op_type: &str, a: &Attrs, opset: i64) -> Result<Box<dyn Op>> {
    if op_type != "TopK" {
        return Err(Error::unsupported(op_type.to_string()));
    }
    let attr_k = if opset < 10 { Some(a.int("k", 1)?) } else { None };
    Ok(Box::new(TopK { axis: a.int("axis", -1)?, largest: a.int("largest", 1)? != 0, attr_k }))
}

/// The `(outer, len, inner)` view of the input around the axis and `k`.
#[derive(Clone, Copy, Debug)]
struct Plan {
    axis: usize,
    outer: usize,
    len: usize,
    inner: usize,
    k: usize,
}

impl TopK {
    fn plan(&self, x: &TypeInfo, k: Option<&Tensor>) -> Result<Plan> {
        let axis = norm_axis(self.axis, x.rank())?;
        let k = match (self.attr_k, k) {
            (Some(k), _) => k,
            (None, Some(t)) if t.len() == 1 => t.to_i64()[0],
            (None, Some(t)) => bail!("input 1 (k) must hold one value, got shape {:?}", t.shape),
            (None, None) => bail!("input 1 (k) is required"),
        };
        let len = x.shape[axis];
        if k < 0 || k as usize > len {
            bail!("k = {k} is out of range for axis {axis} of size {len}");
        }
        let (outer, inner) = (numel(&x.shape[..axis]), numel(&x.shape[axis + 1..]));
        Ok(Plan { axis, outer, len, inner, k: k as usize })
    }

    fn out_types(&self, x: &TypeInfo, p: Plan) -> Vec<TypeInfo> {
        let mut shape = x.shape.clone();
        shape[p.axis] = p.k;
        vec![TypeInfo::new(x.dtype, shape.clone()), TypeInfo::new(DType::I64, shape)]
    }

    /// The order of two values: `Less` means `a` comes first.
    fn order<T: PartialOrd>(&self, a: &T, b: &T) -> Ordering {
        // NaN (the only value not equal to itself) is the largest.
        #[allow(clippy::eq_op)]
        let (na, nb) = (a != a, b != b);
        let asc = na.cmp(&nb).then_with(|| a.partial_cmp(b).unwrap_or(Ordering::Equal));
        if self.largest { asc.reverse() } else { asc }
    }

    /// CPU: the source element of every output position, line by line.
    fn select<T: PartialOrd>(&self, v: &[T], p: Plan) -> Vec<(usize, usize)> {
        let mut picks = vec![(0, 0); p.outer * p.k * p.inner];
        for o in 0..p.outer {
            for r in 0..p.inner {
                let at = |j: usize| (o * p.len + j) * p.inner + r;
                let mut js: Vec<usize> = (0..p.len).collect();
                // A stable sort keeps equal values in index order.
                js.sort_by(|&a, &b| self.order(&v[at(a)], &v[at(b)]));
                for (rank, &j) in js.iter().take(p.k).enumerate() {
                    picks[(o * p.k + rank) * p.inner + r] = (at(j), j);
                }
            }
        }
        picks
    }
}

impl Op for TopK {
    fn infer(&self, inputs: &[Option<Input>]) -> Result<Vec<TypeInfo>> {
        let x = ty(inputs, 0)?;
        let k = if self.attr_k.is_some() { None } else { Some(need_value(inputs, 1, "k")?) };
        Ok(self.out_types(x, self.plan(x, k)?))
    }

    fn eval(&self, inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>> {
        let x = arg(inputs, 0)?;
        let k = if self.attr_k.is_some() { None } else { Some(arg(inputs, 1)?) };
        let xt = TypeInfo::new(x.dtype, x.shape.clone());
        let p = self.plan(&xt, k)?;
        let tys = self.out_types(&xt, p);
        let picks = if x.dtype.is_float() { self.select(&x.to_f64(), p) } else { self.select(&x.to_i64(), p) };
        let src: Vec<usize> = picks.iter().map(|&(e, _)| e).collect();
        let values = crate::families::movement::take(x, tys[0].shape.clone(), &src);
        let indices =
            Tensor::from_i64(DType::I64, tys[1].shape.clone(), picks.iter().map(|&(_, j)| j as i64).collect());
        Ok(vec![values, indices])
    }

    fn lower(&self, cx: &LowerCtx) -> Result<Lowering> {
        let x = cx.input(0)?;
        let k = if self.attr_k.is_some() { None } else { Some(cx.const_input(1, "k")?) };
        let Plan { len, inner, k, .. } = self.plan(x, k)?;
        let t = x.dtype.phys().wgsl();
        // `first(a, ja, b, jb)`: whether element a (index ja) precedes b.
        let better = if self.largest { "gt(a, b)" } else { "gt(b, a)" };
        let gt = if x.dtype.phys() == Phys::F32 {
            // NaN is the largest value and equal to itself.
            "fn gt(a: f32, b: f32) -> bool { return (a != a && b == b) || a > b; }\nfn same(a: f32, b: f32) -> bool { return a == b || (a != a && b != b); }"
                .to_string()
        } else {
            format!(
                "fn gt(a: {t}, b: {t}) -> bool {{ return a > b; }}\nfn same(a: {t}, b: {t}) -> bool {{ return a == b; }}"
            )
        };
        let helpers = format!(
            "{gt}\nfn first(a: {t}, ja: u32, b: {t}, jb: u32) -> bool {{ return {better} || (same(a, b) && ja < jb); }}\n"
        );
        let body = format!(
            "    let r = i % {inner}u;
    let j = (i / {inner}u) % {len}u;
    let o = i / {line}u;
    let base = o * {line}u + r;
    let v = ld_x(i);
    var rank = 0u;
    for (var m = 0u; m < {len}u; m++) {{
        if (first(ld_x(base + m * {inner}u), m, v, j)) {{ rank++; }}
    }}
    if (rank < {k}u) {{
        let at = (o * {k}u + rank) * {inner}u + r;
        st_v(at, v);
        st_ix(at, i32(j));
    }}",
            line = len * inner,
        );
        let args = vec![
            KernelArg::new("x", TensorRef::Input(0)),
            KernelArg::new("v", TensorRef::Output(0)),
            KernelArg::new("ix", TensorRef::Output(1)),
        ];
        // With k = 0 the outputs are empty and there is nothing to write.
        let n = if k == 0 { 0 } else { x.numel() };
        Ok(Lowering::one(kernel("topk", args, n, &helpers, &body)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Attr;

    fn topk(x: &Tensor, k: i64, axis: i64, largest: i64) -> (Vec<f64>, Vec<i64>) {
        let a = [("axis", Attr::Int(axis)), ("largest", Attr::Int(largest))];
        let a = Attrs(a.into_iter().map(|(n, v)| (n.to_string(), v)).collect());
        let k = Tensor::i64_vec(vec![k]);
        let out = build("TopK", &a, 11).unwrap().eval(&[Some(x), Some(&k)]).unwrap();
        (out[0].to_f64(), out[1].to_i64())
    }

    // Expected values: onnx.reference.ReferenceEvaluator on the same inputs.
    #[test]
    fn largest_smallest_and_ties() {
        let x = Tensor::from_f32(vec![2, 4], vec![3.0, 1.0, 3.0, 2.0, -1.0, 5.0, 5.0, 0.0]);
        assert_eq!(topk(&x, 3, 1, 1), (vec![3.0, 3.0, 2.0, 5.0, 5.0, 0.0], vec![0, 2, 3, 1, 2, 3]));
        assert_eq!(topk(&x, 2, -1, 0), (vec![1.0, 2.0, -1.0, 0.0], vec![1, 3, 0, 3]));
        assert_eq!(topk(&x, 1, 0, 1), (vec![3.0, 5.0, 5.0, 2.0], vec![0, 1, 1, 0]));
        let u = Tensor::from_i64(DType::U64, vec![5], vec![7, 9, 7, 1, 9]);
        assert_eq!(topk(&u, 3, 0, 1), (vec![9.0, 9.0, 7.0], vec![1, 4, 0]));
    }

    #[test]
    fn k_out_of_range_is_rejected() {
        let x = Tensor::from_f32(vec![3], vec![1.0, 2.0, 3.0]);
        let k = Tensor::i64_vec(vec![4]);
        assert!(build("TopK", &Attrs::default(), 11).unwrap().eval(&[Some(&x), Some(&k)]).is_err());
    }
}
