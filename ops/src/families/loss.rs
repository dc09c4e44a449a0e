//! SoftmaxCrossEntropyLoss and NegativeLogLikelihoodLoss.
//!
//! Both see the scores as `(N, C, D)` with `D` the product of any trailing
//! dims, and the target as `(N, D)`. Element `(n, d)` with class
//! `t = target[n, d]` has weight `w = weight[t]` (1 without weights, 0 when
//! `t == ignore_index`) and loss `-w * s[n, t, d]`, where `s` is the input
//! itself (NLL) or its log-softmax over C (SCE). Reduction `none` returns
//! the per-element losses in the target's shape; `sum` their sum; `mean`
//! their sum divided by the sum of the weights, which is the element count
//! when there are neither weights nor ignored elements (the ONNX rule).
//!
//! GPU: SCE first runs the norm family's LogSoftmax row kernel over axis 1,
//! into its optional second output or a temp. The loss is then one thread
//! per element (`none`) or one row kernel whose lanes accumulate losses and
//! weights and combine them in shared memory (`sum`, `mean`): a reduction
//! to one scalar fits one workgroup, and the pairwise combine keeps f32
//! sums accurate. Targets of ignored elements may be anything; other
//! targets outside `0..C` are invalid and are clamped to stay in bounds.

use crate::families::norm::{SoftmaxKind, SoftmaxOp};
use crate::families::reduce::{Rows, row_kernel};
use crate::wgsl::kernel_1d;
use crate::{
    Attrs, Error, Input, KernelArg, LowerCtx, Lowering, Op, Phys, Result, TempSpec, Tensor, TensorRef, TypeInfo, arg,
    bail, numel, ty,
};

/// How per-element losses combine into the output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reduction {
    None,
    Sum,
    Mean,
}

/// NegativeLogLikelihoodLoss (`softmax == false`) or
/// SoftmaxCrossEntropyLoss (`softmax == true`).
#[derive(Debug)]
pub struct Loss {
    pub softmax: bool,
    pub reduction: Reduction,
    pub ignore_index: Option<i64>,
}

/// Builds an op of this family.
pub fn build(op_type: &str, a: &Attrs, _opset: i64) -> Result<Box<dyn Op>> {
    let softmax = match op_type {
        "SoftmaxCrossEntropyLoss" => true,
        "NegativeLogLikelihoodLoss" => false,
        _ => return Err(Error::unsupported(op_type.to_string())),
    };
    let reduction = match a.str("reduction", "mean")? {
        "none" => Reduction::None,
        "sum" => Reduction::Sum,
        "mean" => Reduction::Mean,
        r => bail!("attribute 'reduction' must be none, sum or mean, got '{r}'"),
    };
    Ok(Box::new(Loss { softmax, reduction, ignore_index: a.int_opt("ignore_index")? }))
}

/// The `(N, C, D)` view of the scores.
#[derive(Clone, Copy, Debug)]
struct Dims {
    n: usize,
    c: usize,
    d: usize,
}

impl Loss {
    /// Checks the inputs' shapes and returns the `(N, C, D)` view.
    fn dims(&self, x: &TypeInfo, target: &TypeInfo, weight: Option<&TypeInfo>) -> Result<Dims> {
        if x.rank() < 2 {
            bail!("scores must have rank >= 2 (N, C, ...), got shape {:?}", x.shape);
        }
        if !x.dtype.is_float() {
            return Err(Error::unsupported(format!("{} scores", x.dtype)));
        }
        let want: Vec<usize> = [&x.shape[..1], &x.shape[2..]].concat();
        if target.shape != want {
            bail!("target has shape {:?}, scores of shape {:?} need {:?}", target.shape, x.shape, want);
        }
        if target.dtype.is_float() {
            bail!("target must be an integer tensor, got {}", target.dtype);
        }
        if let Some(w) = weight
            && w.shape != [x.shape[1]]
        {
            bail!("weight has shape {:?}, {} classes need [{}]", w.shape, x.shape[1], x.shape[1]);
        }
        Ok(Dims { n: x.shape[0], c: x.shape[1], d: numel(&x.shape[2..]) })
    }

    fn loss_shape(&self, target: &TypeInfo) -> Vec<usize> {
        if self.reduction == Reduction::None { target.shape.clone() } else { vec![] }
    }

    /// The ignore index as the GPU compares it: targets are range-checked
    /// to i32, so an index outside i32 can never match and is dropped.
    fn ignore_i32(&self) -> Option<i32> {
        self.ignore_index.and_then(|k| i32::try_from(k).ok())
    }

    fn log_softmax() -> SoftmaxOp {
        SoftmaxOp { kind: SoftmaxKind::LogSoftmax, axis: 1, flatten: false }
    }
}

impl Op for Loss {
    fn infer(&self, inputs: &[Option<Input>]) -> Result<Vec<TypeInfo>> {
        let (x, target) = (ty(inputs, 0)?, ty(inputs, 1)?);
        let weight = inputs.get(2).copied().flatten().map(|i| i.ty);
        self.dims(x, target, weight)?;
        let mut out = vec![TypeInfo::new(x.dtype, self.loss_shape(target))];
        if self.softmax {
            // The optional log_prob output; a node that does not name it
            // simply leaves it unused.
            out.push(x.clone());
        }
        Ok(out)
    }

    fn eval(&self, inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>> {
        let (x, target) = (arg(inputs, 0)?, arg(inputs, 1)?);
        let weight = inputs.get(2).copied().flatten();
        let tyof = |t: &Tensor| TypeInfo::new(t.dtype, t.shape.clone());
        let dims = self.dims(&tyof(x), &tyof(target), weight.map(tyof).as_ref())?;
        let scores = if self.softmax { Self::log_softmax().eval(&[Some(x)])?.remove(0) } else { x.clone() };
        let s = scores.to_f64();
        let t = target.to_i64();
        let w = weight.map(Tensor::to_f64);
        let (mut losses, mut weights) = (vec![0.0; t.len()], vec![0.0; t.len()]);
        for (i, &k) in t.iter().enumerate() {
            if Some(k) == self.ignore_index {
                continue;
            }
            let k = k.clamp(0, dims.c as i64 - 1) as usize;
            let wk = w.as_ref().map_or(1.0, |w| w[k]);
            let (n, d) = (i / dims.d, i % dims.d);
            losses[i] = -wk * s[(n * dims.c + k) * dims.d + d];
            weights[i] = wk;
        }
        let loss = match self.reduction {
            Reduction::None => Tensor::from_f64(x.dtype, target.shape.clone(), losses),
            Reduction::Sum => Tensor::scalar_f64(x.dtype, losses.iter().sum()),
            Reduction::Mean => Tensor::scalar_f64(x.dtype, losses.iter().sum::<f64>() / weights.iter().sum::<f64>()),
        };
        let mut out = vec![loss];
        if self.softmax {
            out.push(scores);
        }
        Ok(out)
    }

    fn lower(&self, cx: &LowerCtx) -> Result<Lowering> {
        let (x, target) = (cx.input(0)?, cx.input(1)?);
        let has_w = cx.has_input(2);
        let dims = self.dims(x, target, if has_w { Some(cx.input(2)?) } else { None })?;
        let (mut temps, mut kernels) = (vec![], vec![]);
        // Where the scores the loss gathers from live.
        let mut scores = TensorRef::Input(0);
        if self.softmax {
            // log_prob goes to output 1 when the node names it (an unnamed
            // optional output arrives as a [0]-shaped placeholder), else to
            // a temp.
            scores = if cx.outputs.len() > 1 && cx.output(1).shape == x.shape {
                TensorRef::Output(1)
            } else {
                temps.push(TempSpec { elems: x.numel(), phys: Phys::F32 });
                TensorRef::Temp(0)
            };
            let mut k = match Self::log_softmax().lower(cx)? {
                Lowering::Kernels { mut kernels, .. } if kernels.len() == 1 => kernels.remove(0),
                _ => bail!("LogSoftmax lowered to an unexpected form"),
            };
            for a in &mut k.args {
                if a.tensor == TensorRef::Output(0) {
                    a.tensor = scores;
                }
            }
            kernels.push(k);
        }
        let mut args = vec![
            KernelArg::new("s", scores),
            KernelArg::new("t", TensorRef::Input(1)),
            KernelArg::new("y", TensorRef::Output(0)),
        ];
        if has_w {
            args.push(KernelArg::new("w", TensorRef::Input(2)));
        }
        let helpers = self.loss_fn(dims, target.dtype.phys(), has_w);
        let count = dims.n * dims.d;
        kernels.push(match self.reduction {
            Reduction::None => kernel_1d("loss", args, count, &helpers, "    st_y(i, loss_at(i).x);"),
            red => {
                let result = if red == Reduction::Sum { "l" } else { "l / w" };
                let body = format!(
                    "    var l = 0.0;
    var w = 0.0;
    for (var j = lane; j < n_el; j = j + LANES) {{
        let v = loss_at(j);
        l = l + v.x;
        w = w + v.y;
    }}
    l = seg_sum_f32(l, lid);
    w = seg_sum_f32(w, lid);
    if (valid && lane == 0u) {{ st_y(0u, {result}); }}"
                );
                row_kernel("loss_reduce", args, &Rows::contiguous(1, count), &helpers, &body)
            }
        });
        Ok(Lowering::Kernels { temps, kernels })
    }
}

impl Loss {
    /// WGSL `loss_at(i) -> vec2<f32>`: element `i`'s (weighted loss, weight).
    fn loss_fn(&self, dims: Dims, target_phys: Phys, has_w: bool) -> String {
        let Dims { c, d, .. } = dims;
        let t = if target_phys == Phys::I32 { "ld_t(i)".to_string() } else { "i32(ld_t(i))".to_string() };
        let skip = match self.ignore_i32() {
            Some(k) => format!("    if (t == {k}) {{ return vec2<f32>(0.0, 0.0); }}\n"),
            None => String::new(),
        };
        let w = if has_w { "ld_w(k)" } else { "1.0" };
        format!(
            "fn loss_at(i: u32) -> vec2<f32> {{
    let t = {t};
{skip}    let k = u32(clamp(t, 0, {cmax}));
    let w = {w};
    let s = ld_s((i / {d}u) * {cd}u + k * {d}u + i % {d}u);
    return vec2<f32>(-w * s, w);
}}
",
            cmax = c.max(1) - 1,
            cd = c * d,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Attr, DType};

    fn op(kind: &str, reduction: &str, ii: Option<i64>) -> Box<dyn Op> {
        let mut a = vec![("reduction".to_string(), Attr::Str(reduction.into()))];
        if let Some(k) = ii {
            a.push(("ignore_index".to_string(), Attr::Int(k)));
        }
        build(kind, &Attrs(a.into_iter().collect()), 13).unwrap()
    }

    fn close(got: &[f64], want: &[f64]) {
        assert_eq!(got.len(), want.len(), "{got:?} vs {want:?}");
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() <= 1e-5 * (1.0 + w.abs()), "{got:?} vs {want:?}");
        }
    }

    // Scores x[n, c, d] of shape (2, 3, 2), target (2, 2), weight (3); the
    // expected values come from onnx.reference.ReferenceEvaluator.
    fn case() -> (Tensor, Tensor, Tensor) {
        let x =
            Tensor::from_f32(vec![2, 3, 2], vec![0.5, -1.0, 2.0, 0.25, -0.5, 1.5, 1.0, 0.0, -2.0, 3.0, 0.75, -0.25]);
        let t = Tensor::from_i64(DType::I64, vec![2, 2], vec![2, 0, 1, -1]);
        let w = Tensor::from_f32(vec![3], vec![0.2, 0.3, 0.5]);
        (x, t, w)
    }

    #[test]
    fn nll_reductions_weights_and_ignore_index() {
        let (x, t, w) = case();
        let nll = |t: &Tensor, red: &str, ii: Option<i64>, w: Option<&Tensor>| {
            op("NegativeLogLikelihoodLoss", red, ii).eval(&[Some(&x), Some(t), w]).unwrap()[0].to_f64()
        };
        close(&nll(&t, "none", Some(-1), None), &[0.5, 1.0, 2.0, 0.0]);
        close(&nll(&t, "sum", Some(-1), Some(&w)), &[1.05]);
        // Mean divides by the weights of the elements not ignored: 1.0.
        close(&nll(&t, "mean", Some(-1), Some(&w)), &[1.05]);
        close(&nll(&in_range_target(), "mean", None, None), &[0.125]);
    }

    /// `case`'s target with the ignored -1 replaced by class 1.
    fn in_range_target() -> Tensor {
        Tensor::from_i64(DType::I64, vec![2, 2], vec![2, 0, 1, 1])
    }

    #[test]
    fn sce_with_log_prob() {
        let (x, t, w) = case();
        let out = op("SoftmaxCrossEntropyLoss", "mean", Some(-1)).eval(&[Some(&x), Some(&t), Some(&w)]).unwrap();
        close(&out[0].to_f64(), &[3.027003288269043]);
        assert_eq!(out[1].shape, vec![2, 3, 2]);
        close(&out[1].to_f64()[..6], &[-1.7663679, -2.8137808, -0.26636788, -1.5637809, -2.7663677, -0.31378078]);
        let t2 = in_range_target();
        let none = op("SoftmaxCrossEntropyLoss", "none", None).eval(&[Some(&x), Some(&t2)]).unwrap();
        close(&none[0].to_f64(), &[2.7663677, 2.8137808, 3.603544, 0.08485692]);
        // Without weights, mean counts only the elements not ignored (3).
        let mean = op("SoftmaxCrossEntropyLoss", "mean", Some(0)).eval(&[Some(&x), Some(&t2)]).unwrap();
        close(&mean[0].to_f64(), &[2.1515896]);
    }

    #[test]
    fn shapes_are_checked() {
        let (x, _, _) = case();
        let bad = Tensor::from_i64(DType::I64, vec![2, 3], vec![0; 6]);
        assert!(op("NegativeLogLikelihoodLoss", "sum", None).eval(&[Some(&x), Some(&bad)]).is_err());
        assert!(build("NegativeLogLikelihoodLoss", &Attrs::default(), 13).is_ok());
    }
}
