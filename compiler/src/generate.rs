//! `drift generate`: token generation with a stage-aware LLM bundle.
//!
//! The bundle must carry a sampler (`drift compile --sampler`) and its KV
//! cache as state pairs. The first run is the prefill stage over the prompt
//! (the cache inputs empty); its token is read back (time to first token).
//! Decode steps then run in chains of `sync_every` ([`Session::run_steps`]):
//! each step takes the token the previous one sampled straight from the GPU
//! ([`Feed::Output`]), the cache is carried on the GPU ([`Feed::Carried`]),
//! and the host waits once per chain, reading back only the chain's tokens.
//! Sampling (argmax, or temperature and top-k with a host-drawn uniform
//! number per step) runs on the GPU.

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
    /// Decode steps per host synchronization (at least 1). A stop token
    /// ends generation at the end of its chain; later tokens are dropped.
    pub sync_every: usize,
}

/// The generated tokens and the time prefill and decode took.
#[derive(Clone, Debug)]
pub struct Report {
    pub tokens: Vec<i64>,
    /// Prefill until its token was on the host.
    pub prefill: Duration,
    /// Decode steps run (a chain cut by a stop token runs to its end).
    pub decode_steps: usize,
    pub decode: Duration,
}

impl Report {
    /// Decode steps per second (each step samples one token).
    pub fn decode_tokens_per_s(&self) -> f64 {
        let t = self.decode.as_secs_f64();
        if t > 0.0 { self.decode_steps as f64 / t } else { 0.0 }
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

/// The names a generation needs from the bundle: whether it takes an
/// attention mask and position ids, and its (past, present) state pairs.
struct Io {
    mask: bool,
    positions: bool,
    pairs: Vec<(String, String)>,
}

fn check_io(session: &Session) -> Result<Io, String> {
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
    Ok(Io { mask: has("attention_mask"), positions: has("position_ids"), pairs })
}

/// The host inputs of one run over `n` new tokens after `past` cached ones.
struct StepInputs {
    mask: HostTensor,
    positions: HostTensor,
    sampling: HostTensor,
}

impl StepInputs {
    fn new(past: usize, n: usize, s: &Settings, rng: &mut u64) -> StepInputs {
        let positions: Vec<i64> = (past..past + n).map(|p| p as i64).collect();
        let params = [s.temperature, s.top_k as f32, uniform(rng), 0.0];
        StepInputs {
            mask: tensor_i64(vec![1, past + n], &vec![1; past + n]),
            positions: tensor_i64(vec![1, n], &positions),
            sampling: HostTensor::from_f32(vec![4], &params),
        }
    }

    /// The feeds of a run: these inputs, `ids`, and the cache as `cache` says.
    fn feeds<'a>(&'a self, io: &'a Io, ids: Feed<'a>, cache: &[Feed<'a>]) -> Vec<(&'a str, Feed<'a>)> {
        let mut feeds = vec![("input_ids", ids), ("sampling", Feed::Host(&self.sampling))];
        if io.mask {
            feeds.push(("attention_mask", Feed::Host(&self.mask)));
        }
        if io.positions {
            feeds.push(("position_ids", Feed::Host(&self.positions)));
        }
        feeds.extend(io.pairs.iter().zip(cache).map(|((input, _), &f)| (input.as_str(), f)));
        feeds
    }
}

/// Generates up to `s.max_new_tokens` tokens after `prompt`.
pub fn generate(session: &mut Session, prompt: &[i64], s: &Settings) -> Result<Report, String> {
    let io = check_io(session)?;
    if prompt.is_empty() {
        return Err("the prompt has no tokens".into());
    }
    let mut report = Report { tokens: vec![], prefill: Duration::ZERO, decode_steps: 0, decode: Duration::ZERO };
    if s.max_new_tokens == 0 {
        return Ok(report);
    }
    let mut rng = s.seed ^ 0x9E37_79B9_7F4A_7C15;
    let start = Instant::now();
    let first = prefill(session, &io, prompt, s, &mut rng)?;
    report.prefill = start.elapsed();
    report.tokens.push(first);
    let mut past = prompt.len();
    while report.tokens.len() < s.max_new_tokens && s.stop != Some(*report.tokens.last().expect("one token")) {
        let n = s.sync_every.max(1).min(s.max_new_tokens - report.tokens.len());
        let start = Instant::now();
        let last = *report.tokens.last().expect("one token");
        let tokens = decode_chain(session, &io, last, past, n, s, &mut rng)
            .map_err(|e| format!("decoding tokens {}..{} of the sequence: {e}", past + 1, past + n))?;
        report.decode += start.elapsed();
        report.decode_steps += n;
        past += n;
        for t in tokens {
            report.tokens.push(t);
            if s.stop == Some(t) {
                break;
            }
        }
    }
    Ok(report)
}

/// Runs the prompt with an empty cache and returns the sampled token.
fn prefill(session: &mut Session, io: &Io, prompt: &[i64], s: &Settings, rng: &mut u64) -> Result<i64, String> {
    // The cache inputs of the first run: every dynamic dim 0.
    let zeros = vec![0u64; session.symbols().count()];
    let mut empty = vec![];
    for (input, _) in &io.pairs {
        let shape = session.input_shape_at(input, &zeros).ok_or(format!("no input '{input}'"))?;
        let dtype = session.inputs().find(|i| &i.name == input).map(|i| i.dtype).expect("listed");
        empty.push(HostTensor::new(dtype, shape, vec![]).map_err(|e| e.to_string())?);
    }
    let ids = tensor_i64(vec![1, prompt.len()], prompt);
    let inputs = StepInputs::new(0, prompt.len(), s, rng);
    let cache: Vec<Feed> = empty.iter().map(Feed::Host).collect();
    let out = session.run_with(&inputs.feeds(io, Feed::Host(&ids), &cache), Some(&["next_token"]));
    Ok(out.map_err(|e| e.to_string())?[0].1.to_f64_vec()[0] as i64)
}

/// `n` decode steps after `past` cached tokens, the first fed `token`,
/// each later one the token its predecessor sampled; returns the `n` tokens.
fn decode_chain(
    session: &mut Session,
    io: &Io,
    token: i64,
    past: usize,
    n: usize,
    s: &Settings,
    rng: &mut u64,
) -> Result<Vec<i64>, String> {
    let ids = tensor_i64(vec![1, 1], &[token]);
    let inputs: Vec<StepInputs> = (0..n).map(|j| StepInputs::new(past + j, 1, s, rng)).collect();
    let cache = vec![Feed::Carried; io.pairs.len()];
    let steps: Vec<Vec<(&str, Feed)>> = inputs
        .iter()
        .enumerate()
        .map(|(j, x)| x.feeds(io, if j == 0 { Feed::Host(&ids) } else { Feed::Output("next_token") }, &cache))
        .collect();
    let outs = session.run_steps(&steps, &["next_token"]).map_err(|e| e.to_string())?;
    Ok(outs.iter().map(|o| o[0].1.to_f64_vec()[0] as i64).collect())
}
