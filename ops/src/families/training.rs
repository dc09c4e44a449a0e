//! Optimizer steps of the `ai.onnx.preview.training` domain: Adagrad,
//! Momentum (standard and Nesterov) and Adam. Each updates n tensors at once:
//! inputs are the learning rate R, the step count T, then n tensors of each
//! kind (X, G, and the optimizer's state); outputs are the n new X, then the
//! n new states of each kind. Every element is independent, so each tensor
//! group is one elementwise kernel.

use crate::wgsl::{f32_lit, kernel_1d};
use crate::{
    Attrs, Error, Input, KernelArg, LowerCtx, Lowering, Op, Result, Tensor, TensorRef, TypeInfo, arg, bail, ty,
};

/// Builds an op of this family.
pub fn build(op_type: &str, a: &Attrs, _opset: i64) -> Result<Box<dyn Op>> {
    let rule = match op_type {
        "Adagrad" => Rule::Adagrad {
            decay: a.float("decay_factor", 0.0)?,
            eps: a.float("epsilon", 1e-6)?,
            norm: a.float("norm_coefficient", 0.0)?,
        },
        "Momentum" => {
            let required =
                |name: &str| a.float_opt(name)?.ok_or_else(|| Error::msg(format!("attribute '{name}' is required")));
            Rule::Momentum {
                alpha: required("alpha")?,
                beta: required("beta")?,
                norm: required("norm_coefficient")?,
                nesterov: match a.str("mode", "")? {
                    "standard" => false,
                    "nesterov" => true,
                    m => bail!("mode '{m}' is neither 'standard' nor 'nesterov'"),
                },
            }
        }
        "Adam" => Rule::Adam {
            alpha: a.float("alpha", 0.9)?,
            beta: a.float("beta", 0.999)?,
            eps: a.float("epsilon", 1e-6)?,
            norm: a.float("norm_coefficient", 0.0)?,
            norm_post: a.float("norm_coefficient_post", 0.0)?,
        },
        _ => return Err(Error::unsupported(op_type)),
    };
    Ok(Box::new(Optimizer { rule }))
}

/// The update rule and its hyper-parameters.
#[derive(Debug, Clone, Copy)]
enum Rule {
    Adagrad { decay: f32, eps: f32, norm: f32 },
    Momentum { alpha: f32, beta: f32, norm: f32, nesterov: bool },
    Adam { alpha: f32, beta: f32, eps: f32, norm: f32, norm_post: f32 },
}

impl Rule {
    /// Tensors per group: X, G and the states.
    fn per_group(self) -> usize {
        match self {
            Rule::Adagrad { .. } | Rule::Momentum { .. } => 3,
            Rule::Adam { .. } => 4,
        }
    }

    /// One element's update: `(r, t, x, g, states) -> (x_new, new states)`.
    fn apply(self, r: f64, t: f64, x: f64, g: f64, s: &[f64]) -> Vec<f64> {
        match self {
            Rule::Adagrad { decay, eps, norm } => {
                let r = r / (1.0 + t * f64::from(decay));
                let g = f64::from(norm) * x + g;
                let h = s[0] + g * g;
                vec![x - r * g / (h.sqrt() + f64::from(eps)), h]
            }
            Rule::Momentum { alpha, beta, norm, nesterov } => {
                let g = f64::from(norm) * x + g;
                let beta = if t > 0.0 { f64::from(beta) } else { 1.0 };
                let v = f64::from(alpha) * s[0] + beta * g;
                let step = if nesterov { g + f64::from(alpha) * v } else { v };
                vec![x - r * step, v]
            }
            Rule::Adam { alpha, beta, eps, norm, norm_post } => {
                let (alpha, beta) = (f64::from(alpha), f64::from(beta));
                let g = f64::from(norm) * x + g;
                let v = alpha * s[0] + (1.0 - alpha) * g;
                let h = beta * s[1] + (1.0 - beta) * g * g;
                let r = if t > 0.0 { r * (1.0 - beta.powf(t)).sqrt() / (1.0 - alpha.powf(t)) } else { r };
                let x = x - r * (v / (h.sqrt() + f64::from(eps)));
                vec![(1.0 - f64::from(norm_post)) * x, v, h]
            }
        }
    }

    /// The same update in WGSL over `r`, `t`, `x`, `g`, `s0`, `s1`, storing
    /// through `st_o0..`.
    fn wgsl(self) -> String {
        match self {
            Rule::Adagrad { decay, eps, norm } => format!(
                "    let rr = r / (1.0f + t * {});\n    let gg = {} * x + g;\n    let h = s0 + gg * gg;\n    st_o0(i, x - rr * gg / (sqrt(h) + {}));\n    st_o1(i, h);",
                f32_lit(decay),
                f32_lit(norm),
                f32_lit(eps)
            ),
            Rule::Momentum { alpha, beta, norm, nesterov } => {
                let step = if nesterov { format!("gg + {} * v", f32_lit(alpha)) } else { "v".to_string() };
                format!(
                    "    let gg = {} * x + g;\n    let b = select(1.0f, {}, t > 0.0f);\n    let v = {} * s0 + b * gg;\n    st_o0(i, x - r * ({step}));\n    st_o1(i, v);",
                    f32_lit(norm),
                    f32_lit(beta),
                    f32_lit(alpha)
                )
            }
            Rule::Adam { alpha, beta, eps, norm, norm_post } => format!(
                "    let gg = {n} * x + g;
    let v = {a} * s0 + (1.0f - {a}) * gg;
    let h = {b} * s1 + (1.0f - {b}) * gg * gg;
    let rr = select(r, r * sqrt(1.0f - pow({b}, t)) / (1.0f - pow({a}, t)), t > 0.0f);
    st_o0(i, (1.0f - {np}) * (x - rr * (v / (sqrt(h) + {e}))));
    st_o1(i, v);
    st_o2(i, h);",
                n = f32_lit(norm),
                a = f32_lit(alpha),
                b = f32_lit(beta),
                e = f32_lit(eps),
                np = f32_lit(norm_post)
            ),
        }
    }
}

#[derive(Debug)]
pub struct Optimizer {
    rule: Rule,
}

impl Optimizer {
    /// Number of tensor groups, from the input count.
    fn groups(&self, n_inputs: usize) -> Result<usize> {
        let k = self.rule.per_group();
        if n_inputs < 2 + k || !(n_inputs - 2).is_multiple_of(k) {
            bail!("expects R, T and {k} tensors per group, got {n_inputs} inputs");
        }
        Ok((n_inputs - 2) / k)
    }
}

impl Op for Optimizer {
    fn infer(&self, inputs: &[Option<Input>]) -> Result<Vec<TypeInfo>> {
        let n = self.groups(inputs.len())?;
        let k = self.rule.per_group();
        // Outputs: the new X of every group, then each state kind in turn.
        let mut out = vec![];
        for kind in [0].into_iter().chain(2..k) {
            for group in 0..n {
                out.push(ty(inputs, 2 + kind * n + group)?.clone());
            }
        }
        Ok(out)
    }

    fn eval(&self, inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>> {
        let n = self.groups(inputs.len())?;
        let k = self.rule.per_group();
        let scalar = |i| arg(inputs, i).map(|t| t.to_f64().first().copied().unwrap_or(0.0));
        let (r, t) = (scalar(0)?, scalar(1)?);
        let mut outs: Vec<Vec<Tensor>> = vec![vec![]; k - 1];
        for group in 0..n {
            let tensor = |kind: usize| arg(inputs, 2 + kind * n + group);
            let (x, g) = (tensor(0)?, tensor(1)?.to_f64());
            let states: Vec<Vec<f64>> = (2..k).map(|kind| tensor(kind).map(Tensor::to_f64)).collect::<Result<_>>()?;
            let xs = x.to_f64();
            let per_elem: Vec<Vec<f64>> = (0..xs.len())
                .map(|e| {
                    let s: Vec<f64> = states.iter().map(|v| v[e]).collect();
                    self.rule.apply(r, t, xs[e], g[e], &s)
                })
                .collect();
            for (o, list) in outs.iter_mut().enumerate() {
                list.push(Tensor::from_f64(x.dtype, x.shape.clone(), per_elem.iter().map(|v| v[o]).collect()));
            }
        }
        Ok(outs.into_iter().flatten().collect())
    }

    fn lower(&self, cx: &LowerCtx) -> Result<Lowering> {
        let n = self.groups(cx.inputs.len())?;
        let k = self.rule.per_group();
        let mut kernels = vec![];
        for group in 0..n {
            let mut args =
                vec![KernelArg::new("rate", TensorRef::Input(0)), KernelArg::new("step", TensorRef::Input(1))];
            let names = ["x", "g", "s0", "s1"];
            for (kind, name) in names.iter().enumerate().take(k) {
                args.push(KernelArg::new(name, TensorRef::Input(2 + kind * n + group)));
            }
            for o in 0..k - 1 {
                args.push(KernelArg::new(&format!("o{o}"), TensorRef::Output(o * n + group)));
            }
            let step = match cx.input(1)?.dtype.phys() {
                crate::Phys::F32 => "ld_step(0u)".to_string(),
                _ => "f32(ld_step(0u))".to_string(),
            };
            let loads: String = names.iter().take(k).map(|name| format!("    let {name} = ld_{name}(i);\n")).collect();
            let body = format!("    let r = ld_rate(0u);\n    let t = {step};\n{loads}{}", self.rule.wgsl());
            kernels.push(kernel_1d("optimizer", args, cx.input(2 + group)?.numel(), "", &body));
        }
        Ok(Lowering::Kernels { temps: vec![], kernels })
    }
}
