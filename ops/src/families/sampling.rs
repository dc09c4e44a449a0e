//! Token sampling on the GPU: `SampleToken` (ai.drift, internal), which the
//! compiler appends to a decoder's `logits` (`drift compile --sampler`) so a
//! generation step reads back one token id per sequence, not the logits.
//!
//! Inputs: logits `[batch, seq, vocab]` (the last position is sampled) and
//! params `[4]` f32: temperature, top-k, a uniform random number in [0, 1)
//! drawn by the host, unused. Output: `[batch, 1]` int64 token ids.
//!
//! Temperature ≤ 0 or top-k 1 is greedy: the first index of the largest
//! logit (numpy's argmax). Otherwise the k largest logits are kept (ties at
//! the k-th value all stay), weighted `exp((x - max) / temperature)`, and the
//! token is the first index whose running weight sum, in vocabulary order,
//! exceeds `u × total`. The kernel finds the k-th largest value exactly by
//! bisection on the ordered bit patterns of the floats (32 counting passes),
//! one workgroup per sequence.

use crate::wgsl::f32_lit;
use crate::{DType, Input, Kernel, KernelArg, LowerCtx, Lowering, Op, Result, Tensor, TensorRef, TypeInfo};
use crate::{arg, bail, ty};

/// Builds SampleToken.
pub fn build(_op_type: &str) -> Result<Box<dyn Op>> {
    Ok(Box::new(SampleToken))
}

#[derive(Debug)]
pub struct SampleToken;

/// The sampling parameters as the kernel reads them.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Params {
    pub temperature: f32,
    pub top_k: u32,
    pub uniform: f32,
}

impl Params {
    pub fn greedy() -> Params {
        Params { temperature: 0.0, top_k: 1, uniform: 0.0 }
    }

    /// The `params` input's values.
    pub fn to_vec(self) -> Vec<f32> {
        vec![self.temperature, self.top_k as f32, self.uniform, 0.0]
    }

    fn from_slice(p: &[f64]) -> Params {
        let get = |i: usize| p.get(i).copied().unwrap_or(0.0);
        Params { temperature: get(0) as f32, top_k: get(1).max(0.0) as u32, uniform: get(2) as f32 }
    }
}

/// The token the sampling rule picks from one row of logits (the CPU
/// reference; the kernel computes the same in f32).
pub fn sample_row(logits: &[f32], p: Params) -> usize {
    let argmax = logits.iter().enumerate().fold(0, |best, (i, &x)| if x > logits[best] { i } else { best });
    if p.temperature <= 0.0 || p.top_k <= 1 {
        return argmax;
    }
    let k = (p.top_k as usize).min(logits.len());
    let mut sorted: Vec<f32> = logits.to_vec();
    sorted.sort_by(|a, b| b.total_cmp(a));
    let threshold = sorted[k - 1];
    let max = logits[argmax];
    let weights: Vec<f64> =
        logits.iter().map(|&x| if x >= threshold { (((x - max) / p.temperature) as f64).exp() } else { 0.0 }).collect();
    let goal = p.uniform as f64 * weights.iter().sum::<f64>();
    let mut acc = 0.0;
    for (i, w) in weights.iter().enumerate() {
        acc += w;
        if acc > goal && *w > 0.0 {
            return i;
        }
    }
    argmax
}

impl Op for SampleToken {
    fn infer(&self, inputs: &[Option<Input>]) -> Result<Vec<TypeInfo>> {
        let l = ty(inputs, 0)?;
        if l.rank() != 3 || !l.dtype.is_float() {
            bail!("logits must be float [batch, seq, vocab], got {} {:?}", l.dtype, l.shape);
        }
        if ty(inputs, 1)?.numel() != 4 {
            bail!("params must hold 4 values (temperature, top-k, uniform, 0)");
        }
        Ok(vec![TypeInfo::new(DType::I64, vec![l.shape[0], 1])])
    }

    fn eval(&self, inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>> {
        let (l, p) = (arg(inputs, 0)?, arg(inputs, 1)?);
        let (b, s, v) = (l.shape[0], l.shape[1], l.shape[2]);
        let params = Params::from_slice(&p.to_f64());
        let x: Vec<f32> = l.to_f64().into_iter().map(|x| x as f32).collect();
        let ids = (0..b).map(|r| sample_row(&x[(r * s + s - 1) * v..(r * s + s) * v], params) as i64).collect();
        Ok(vec![Tensor::from_i64(DType::I64, vec![b, 1], ids)])
    }

    fn lower(&self, cx: &LowerCtx) -> Result<Lowering> {
        let l = cx.input(0)?;
        Ok(Lowering::one(sample_kernel(l.shape[0], &format!("{}u", l.shape[1]), l.shape[2])))
    }
}

/// One workgroup per sequence; `seq` is the WGSL expression of the logits'
/// sequence length (a literal, or a run-time dim). Arguments: `logits`,
/// `params`, `y`.
pub fn sample_kernel(batch: usize, seq: &str, vocab: usize) -> Kernel {
    let neg_inf = f32_lit(f32::NEG_INFINITY);
    let body = format!(
        "const V: u32 = {vocab}u;
const CHUNK: u32 = {chunk}u;
var<workgroup> rf: array<f32, 256>;
var<workgroup> ru: array<u32, 256>;
var<workgroup> mode: vec2<f32>;

/// Orders f32 bit patterns like the floats.
fn key(x: f32) -> u32 {{
    let b = bitcast<u32>(x);
    return select(b | 0x80000000u, ~b, (b & 0x80000000u) != 0u);
}}

fn sum_f(t: u32, v: f32) -> f32 {{
    rf[t] = v;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s >>= 1u) {{
        if (t < s) {{ rf[t] += rf[t + s]; }}
        workgroupBarrier();
    }}
    let r = rf[0];
    workgroupBarrier();
    return r;
}}

fn sum_u(t: u32, v: u32) -> u32 {{
    ru[t] = v;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s >>= 1u) {{
        if (t < s) {{ ru[t] += ru[t + s]; }}
        workgroupBarrier();
    }}
    let r = ru[0];
    workgroupBarrier();
    return r;
}}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {{
    let t = lid.x;
    let S = {seq};
    let base = (wid.x * S + S - 1u) * V;
    // Largest logit, first index among equals.
    var best = {neg_inf};
    var at = 0xffffffffu;
    for (var i = t; i < V; i += 256u) {{
        let x = ld_logits(base + i);
        if (x > best) {{ best = x; at = i; }}
    }}
    rf[t] = best;
    ru[t] = at;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s >>= 1u) {{
        if (t < s) {{
            let x = rf[t + s];
            let j = ru[t + s];
            if (x > rf[t] || (x == rf[t] && j < ru[t])) {{ rf[t] = x; ru[t] = j; }}
        }}
        workgroupBarrier();
    }}
    let mx = rf[0];
    let argmax = min(ru[0], V - 1u);
    workgroupBarrier();
    // The parameters as workgroup-uniform values (the early exit and the
    // loops after it must be taken by all threads alike).
    if (t == 0u) {{ mode = vec2<f32>(ld_params(0u), ld_params(1u)); }}
    let m = workgroupUniformLoad(&mode);
    let temperature = m.x;
    let k = u32(max(m.y, 0.0));
    if (temperature <= 0.0 || k <= 1u) {{
        if (t == 0u) {{ st_y(wid.x, i32(argmax)); }}
        return;
    }}
    // The k-th largest key: the largest threshold with at least k keys at or above it.
    var th = 0u;
    for (var bit = 31i; bit >= 0i; bit--) {{
        let cand = th | (1u << u32(bit));
        var n = 0u;
        for (var i = t; i < V; i += 256u) {{ n += u32(key(ld_logits(base + i)) >= cand); }}
        if (sum_u(t, n) >= min(k, V)) {{ th = cand; }}
    }}
    // Weights of the kept logits over each thread's contiguous chunk.
    let lo = t * CHUNK;
    let hi = min(lo + CHUNK, V);
    var w = 0.0;
    for (var i = lo; i < hi; i++) {{
        let x = ld_logits(base + i);
        if (key(x) >= th) {{ w += exp((x - mx) / temperature); }}
    }}
    rf[t] = w;
    workgroupBarrier();
    if (t == 0u) {{
        // Exclusive prefix sums of the chunks, and the total at the end.
        var acc = 0.0;
        for (var j = 0u; j < 256u; j++) {{ let c = rf[j]; rf[j] = acc; acc += c; }}
        ru[0] = bitcast<u32>(acc);
    }}
    workgroupBarrier();
    let total = bitcast<f32>(ru[0]);
    let goal = ld_params(2u) * total;
    var run = rf[t];
    let mine = run <= goal && goal < run + w;
    workgroupBarrier();
    if (t == 0u) {{ ru[1] = 0xffffffffu; }}
    workgroupBarrier();
    if (mine) {{
        for (var i = lo; i < hi; i++) {{
            let x = ld_logits(base + i);
            if (key(x) >= th) {{
                run += exp((x - mx) / temperature);
                if (run > goal) {{ ru[1] = i; break; }}
            }}
        }}
    }}
    workgroupBarrier();
    if (t == 0u) {{
        let pick = ru[1];
        st_y(wid.x, i32(select(argmax, pick, pick < V)));
    }}
}}
",
        chunk = vocab.div_ceil(256).max(1),
    );
    let args = vec![
        KernelArg::new("logits", TensorRef::Input(0)),
        KernelArg::new("params", TensorRef::Input(1)),
        KernelArg::new("y", TensorRef::Output(0)),
    ];
    Kernel {
        name: "sample_token".into(),
        args,
        body,
        workgroup_size: [256, 1, 1],
        workgroups: [batch.max(1) as u32, 1, 1],
        flops: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_is_the_first_argmax_and_top_k_stays_in_the_top_k() {
        let logits = [0.5, 2.0, -1.0, 2.0, 1.5];
        assert_eq!(sample_row(&logits, Params::greedy()), 1);
        let p = |u| Params { temperature: 1.0, top_k: 2, uniform: u };
        // Two tied maxima share the mass: u below one half picks the first.
        assert_eq!(sample_row(&logits, p(0.25)), 1);
        assert_eq!(sample_row(&logits, p(0.75)), 3);
        let three = |u| Params { temperature: 0.5, top_k: 3, uniform: u };
        for u in [0.0, 0.3, 0.6, 0.9, 0.999] {
            assert!([1, 3, 4].contains(&sample_row(&logits, three(u))));
        }
    }
}
