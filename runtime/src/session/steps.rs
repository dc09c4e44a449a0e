//! Runs of several steps with one synchronization: [`Session::run_steps`].
//!
//! A step is an ordinary run. Each is submitted as soon as it is recorded,
//! so the GPU runs one step while the CPU records the next; an input may
//! come from the previous step's output on the GPU ([`Feed::Output`]), and
//! the fetched outputs of every step come back with one map at the end.
//! Token generation uses it to sample many tokens per host round trip.

use super::{Carry, Feed, Readback, Session, check_readback, create_readback, readback_layout};
use crate::error::{Error, Result};
use crate::tensor::HostTensor;

/// Each step's fetched outputs, in bundle order.
pub type StepOutputs = Vec<Vec<(String, HostTensor)>>;

impl Session {
    /// Runs `steps` in order and returns each step's outputs named in
    /// `fetch`. A step's feeds are those of [`Session::run_with`], plus
    /// [`Feed::Output`] after the first step. Inputs are uploaded in queue
    /// order, so a step's host data never overwrites what an earlier step
    /// still reads. A step that fails its checks stops the chain with the
    /// earlier steps submitted (the carried state is theirs).
    pub fn run_steps(&mut self, steps: &[Vec<(&str, Feed)>], fetch: &[&str]) -> Result<StepOutputs> {
        let wanted = self.fetched(Some(fetch))?;
        let layout = readback_layout(&self.outputs, &wanted);
        let total = layout.bytes.saturating_mul(steps.len() as u64);
        check_readback(&self.device.limits(), total)?;
        let readback = create_readback(&self.device, "step outputs", total);
        let carry = self.carry_for(steps)?;
        let mut shapes = Vec::with_capacity(steps.len());
        for (k, feeds) in steps.iter().enumerate() {
            let run = self.prepare(feeds)?;
            let base = k as u64 * layout.bytes;
            let target = readback.as_ref().map(|b| (b, base, &layout));
            self.queue.submit([self.record(&run, target, carry.as_ref())]);
            shapes.push(run.shapes);
        }
        self.read_back(readback.as_ref(), |words| {
            let step_words = |k: usize| step_slice(words, &layout, k);
            (0..steps.len()).map(|k| self.convert(step_words(k), &layout, &shapes[k], &wanted)).collect()
        })
    }

    /// The carry buffer for the outputs that chained inputs name, or `None`
    /// when no step has one; the first step cannot (nothing precedes it).
    fn carry_for(&self, steps: &[Vec<(&str, Feed)>]) -> Result<Option<Carry>> {
        let mut outputs: Vec<(usize, u64)> = vec![];
        let mut bytes = 0;
        for (k, feeds) in steps.iter().enumerate() {
            for (input, feed) in feeds {
                let Feed::Output(name) = feed else { continue };
                if k == 0 {
                    return Err(Error::Run(format!(
                        "input '{input}': the first step has no previous step for output '{name}'"
                    )));
                }
                let o = self.output_index(name)?;
                if outputs.iter().all(|&(x, _)| x != o) {
                    outputs.push((o, bytes));
                    bytes += self.outputs[o].size;
                }
            }
        }
        if outputs.is_empty() {
            return Ok(None);
        }
        let buffer = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("carried outputs"),
            size: bytes.max(4),
            usage: wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        Ok(Some(Carry { buffer, outputs }))
    }
}

/// Step `k`'s part of a readback holding every step side by side (empty
/// when nothing is read back).
fn step_slice<'w>(words: &'w [u8], layout: &Readback, k: usize) -> &'w [u8] {
    let start = k * layout.bytes as usize;
    words.get(start..start + layout.bytes as usize).unwrap_or_default()
}
