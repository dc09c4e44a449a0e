//! `drift generate`: token generation with a stage-aware LLM bundle.
//!
//! The bundle must carry a sampler (`drift compile --sampler`) and its KV
//! cache as state pairs. The first run is the prefill stage over the prompt
//! (the cache inputs empty); each later run is one decode step fed the token
//! the previous run sampled, with the cache carried on the GPU
//! ([`Feed::Carried`]). Each run reads back only `next_token`: sampling
//! (argmax, or temperature and top-k with a host-drawn uniform number) runs
//! on the GPU.

use drift_runtime::{DType, Feed, HostTensor, Session};
use std::time::{Duration, Instant};

/// How to sample, and when to stop.
#[derive(Clone, Debug)]
pub struct Settings {
    pub max_new_tokens: usize,
    /// 0 samples greedily.
    pub temperature: f32,
    pub top_k: u32,
    pub seed: u64,
    /// Stop after this token (end of sequence), if given.
    pub stop: Option<i64>,
}

/// The generated tokens and the time each run took.
#[derive(Clone, Debug)]
pub struct Report {
    pub tokens: Vec<i64>,
    pub prefill: Duration,
    pub decode: Vec<Duration>,
}

impl Report {
    /// Decode tokens per second (each decode run yields one token).
    pub fn decode_tokens_per_s(&self) -> f64 {
        let t: f64 = self.decode.iter().map(Duration::as_secs_f64).sum();
        if t > 0.0 { self.decode.len() as f64 / t } else { 0.0 }
    }
}

fn tensor_i64(shape: Vec<usize>, v: &[i64]) -> HostTensor {
    HostTensor::new(DType::I64, shape, v.iter().flat_map(|x| x.to_le_bytes()).collect()).expect("length matches")
}

/// A deterministic uniform number in [0, 1) per step (xorshift64*).
fn uniform(state: &mut u64) -> f32 {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    let x = state.wrapping_mul(0x2545_F491_4F6C_DD1D);
    (x >> 40) as f32 / (1u64 << 24) as f32
}

/// Generates up to `s.max_new_tokens` tokens after `prompt`.
pub fn generate(session: &mut Session, prompt: &[i64], s: &Settings) -> Result<Report, String> {
    let names: Vec<String> = session.inputs().map(|i| i.name.clone()).collect();
    let has = |n: &str| names.iter().any(|x| x == n);
    if !has("sampling") || !session.outputs().any(|o| o.name == "next_token") {
        return Err("the bundle has no sampler: compile it with --sampler".into());
    }
    if !has("input_ids") {
        return Err("the bundle has no input 'input_ids'".into());
    }
    let pairs: Vec<(String, String)> =
        session.state_pairs().iter().map(|(i, o)| (i.to_string(), o.to_string())).collect();
    if pairs.is_empty() {
        return Err("the bundle carries no KV cache (inputs past_key_values.* paired with outputs present.*)".into());
    }
    if prompt.is_empty() {
        return Err("the prompt has no tokens".into());
    }
    // The cache inputs of the first run: every dynamic dim 0.
    let zeros = vec![0u64; session.symbols().count()];
    let mut empty = vec![];
    for (input, _) in &pairs {
        let shape = session.input_shape_at(input, &zeros).ok_or(format!("no input '{input}'"))?;
        let dtype = session.inputs().find(|i| &i.name == input).map(|i| i.dtype).expect("listed");
        empty.push(HostTensor::new(dtype, shape, vec![]).map_err(|e| e.to_string())?);
    }
    let mut rng = s.seed ^ 0x9E37_79B9_7F4A_7C15;
    let mut report = Report { tokens: vec![], prefill: Duration::ZERO, decode: vec![] };
    let mut step: Vec<i64> = prompt.to_vec();
    let mut past = 0usize;
    for k in 0..s.max_new_tokens {
        let n = step.len();
        let ids = tensor_i64(vec![1, n], &step);
        let mask = tensor_i64(vec![1, past + n], &vec![1; past + n]);
        let pos: Vec<i64> = (past..past + n).map(|p| p as i64).collect();
        let pos = tensor_i64(vec![1, n], &pos);
        let params = [s.temperature, s.top_k as f32, uniform(&mut rng), 0.0];
        let params = HostTensor::from_f32(vec![4], &params);
        let mut feeds: Vec<(&str, Feed)> = vec![("input_ids", Feed::Host(&ids)), ("sampling", Feed::Host(&params))];
        if has("attention_mask") {
            feeds.push(("attention_mask", Feed::Host(&mask)));
        }
        if has("position_ids") {
            feeds.push(("position_ids", Feed::Host(&pos)));
        }
        for (j, (input, _)) in pairs.iter().enumerate() {
            feeds.push((input.as_str(), if k == 0 { Feed::Host(&empty[j]) } else { Feed::Carried }));
        }
        let start = Instant::now();
        let out = session.run_with(&feeds, Some(&["next_token"])).map_err(|e| e.to_string())?;
        let took = start.elapsed();
        let token = out[0].1.to_f64_vec()[0] as i64;
        if k == 0 {
            report.prefill = took;
        } else {
            report.decode.push(took);
        }
        report.tokens.push(token);
        past += n;
        step = vec![token];
        if s.stop == Some(token) {
            break;
        }
    }
    Ok(report)
}
