//! Autoregressive generation of EnCodec codes with MusicGen's delay pattern:
//! codebook k runs k steps behind codebook 0, so `T` frames take `T + K − 1` decoder
//! steps. Classifier-free guidance runs the conditional and unconditional branches
//! (on the CPU as two sequences over one pass of the weights, on other devices as
//! one batch of 2) and mixes their logits;
//! tokens are then picked greedily or sampled with temperature, top-k and top-p from
//! a seeded generator, so the same seed gives the same codes.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use candle_core::Tensor;

use super::config::DecoderConfig;
use super::decoder::{CrossKv, Decoder, SelfCache, SeqInput};
use super::models::musicgen::{DecoderSession, MusicgenDecoder};
use crate::{Error, Result};

/// How tokens are chosen.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Sampling {
    /// Classifier-free guidance scale; 1 or less turns guidance off.
    pub guidance: f64,
    /// `None` picks the most likely token (greedy).
    pub temperature: Option<f64>,
    /// Keep only the `top_k` most likely tokens (0: all).
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches `top_p` (1: all).
    pub top_p: f64,
    pub seed: u64,
}

impl Default for Sampling {
    fn default() -> Self {
        Self {
            guidance: 3.0,
            temperature: Some(1.0),
            top_k: 250,
            top_p: 1.0,
            seed: 0,
        }
    }
}

impl Sampling {
    pub fn greedy(guidance: f64) -> Self {
        Self {
            guidance,
            temperature: None,
            ..Self::default()
        }
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(Error::InvalidSetting(m.to_string()));
        if !self.guidance.is_finite() || self.guidance < 0.0 || self.guidance > 100.0 {
            return bad("guidance must be between 0 and 100");
        }
        if let Some(t) = self.temperature
            && (!t.is_finite() || t <= 0.0 || t > 100.0)
        {
            return bad("temperature must be above 0 and at most 100");
        }
        if !self.top_p.is_finite() || self.top_p <= 0.0 || self.top_p > 1.0 {
            return bad("top-p must be above 0 and at most 1");
        }
        Ok(())
    }
}

/// Progress of a generation, reported after every decoder step.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    pub step: usize,
    pub steps: usize,
    /// New frames (after the prompt) whose every codebook is final.
    pub complete: usize,
}

/// Frames `[frame][codebook]` of EnCodec codes.
pub type Frames = Vec<Vec<u32>>;

/// Generates `frames` frames after `prompt` (frames already known, which the decoder
/// reads first: the continuation of a previous window). Returns only the new frames.
///
/// `on_step` is called after every decoder step; returning `false` cancels.
pub fn generate(
    decoder: &Decoder,
    cond: Option<&CrossKv>,
    prompt: &[Vec<u32>],
    frames: usize,
    sampling: &Sampling,
    on_step: &mut dyn FnMut(Progress, &[Vec<u32>]) -> bool,
) -> Result<Frames> {
    generate_with(decoder, cond, &[], prompt, frames, sampling, on_step)
}

/// A decoder that generation drives one step at a time: the CPU decoder
/// with its caches, or a [`DecoderSession`] on any candle device.
pub trait Stepper {
    /// Reads `n` more positions, the same `tokens` (`codebooks × n`,
    /// codebook-major) on every sequence, and returns the last position's
    /// logits, `(sequence, codebook, vocab)` flattened. `inputs[i]`, when
    /// present, holds `n × hidden` in-attention values for layer `i` of the
    /// conditional sequence; the unconditional one gets none.
    fn step(&mut self, tokens: &[u32], n: usize, inputs: &[Option<&[f32]>]) -> Result<Vec<f32>>;
}

/// The CPU decoder, one cache per sequence.
struct CpuStepper<'a> {
    decoder: &'a Decoder,
    cond: Option<&'a CrossKv>,
    caches: Vec<SelfCache>,
}

impl Stepper for CpuStepper<'_> {
    fn step(&mut self, tokens: &[u32], n: usize, inputs: &[Option<&[f32]>]) -> Result<Vec<f32>> {
        let cfg = self.decoder.config();
        let (k, h, vocab) = (cfg.num_codebooks, cfg.hidden_size, cfg.vocab_size);
        let cond = self.cond;
        let mut seqs: Vec<SeqInput<'_>> = self
            .caches
            .iter_mut()
            .enumerate()
            .map(|(i, cache)| SeqInput {
                tokens,
                cross: if i == 0 { cond } else { None },
                cache,
            })
            .collect();
        // The conditional sequence's rows, then zeros for the unconditional one.
        let inputs: Vec<Option<Vec<f32>>> = inputs
            .iter()
            .map(|l| {
                l.map(|rows| {
                    let mut v = rows.to_vec();
                    v.resize(seqs.len() * n * h, 0.0);
                    v
                })
            })
            .collect();
        let all = self.decoder.forward(&mut seqs, &inputs)?;
        // (sequence, codebook, position, vocab): the last position of each.
        let mut last = Vec::with_capacity(seqs.len() * k * vocab);
        for seq in 0..seqs.len() {
            for c in 0..k {
                let start = ((seq * k + c) * n + n - 1) * vocab;
                last.extend_from_slice(&all[start..start + vocab]);
            }
        }
        Ok(last)
    }
}

impl Stepper for DecoderSession<'_> {
    fn step(&mut self, tokens: &[u32], n: usize, inputs: &[Option<&[f32]>]) -> Result<Vec<f32>> {
        DecoderSession::step(self, tokens, n, inputs)
    }
}

/// [`generate`] with in-attention inputs: `layer_inputs[i]`, when present,
/// holds `hidden` values per decoder position from 0 (at least
/// `prompt + frames + codebooks − 1` positions), added before layer `i` on
/// the conditional sequence. The unconditional sequence of guidance gets
/// none: it stands for the model with its conditions dropped.
pub fn generate_with(
    decoder: &Decoder,
    cond: Option<&CrossKv>,
    layer_inputs: &[Option<Vec<f32>>],
    prompt: &[Vec<u32>],
    frames: usize,
    sampling: &Sampling,
    on_step: &mut dyn FnMut(Progress, &[Vec<u32>]) -> bool,
) -> Result<Frames> {
    // The conditional sequence, and the unconditional one when guiding: both read
    // the same tokens, and one pass over the weights serves both.
    let start = |sequences: usize, positions: usize| {
        Ok(CpuStepper {
            decoder,
            cond,
            caches: (0..sequences)
                .map(|_| decoder.cache_for(positions))
                .collect(),
        })
    };
    let window = Window {
        conditioned: cond.is_some(),
        layer_inputs,
        prompt,
        frames,
        sampling,
    };
    generate_steps(decoder.config(), window, start, on_step)
}

/// [`generate_with`] on a candle decoder, on whatever device it lives:
/// guidance's two sequences run as one batch, the keys and values in buffers
/// made once for the window. `cross` is the conditional sequence's states
/// `(1, len, hidden)` and mask `(1, len)`.
pub fn generate_on(
    decoder: &MusicgenDecoder,
    cross: Option<(&Tensor, &Tensor)>,
    layer_inputs: &[Option<Vec<f32>>],
    prompt: &[Vec<u32>],
    frames: usize,
    sampling: &Sampling,
    on_step: &mut dyn FnMut(Progress, &[Vec<u32>]) -> bool,
) -> Result<Frames> {
    let start = |sequences: usize, positions: usize| {
        let mut session = decoder.session(cross, sequences, positions)?;
        if layer_inputs.iter().any(Option::is_some) {
            session.hold_layer_inputs(layer_inputs)?;
        }
        Ok(session)
    };
    let window = Window {
        conditioned: cross.is_some(),
        layer_inputs,
        prompt,
        frames,
        sampling,
    };
    generate_steps(decoder.config(), window, start, on_step)
}

/// What one window of generation is asked to make.
struct Window<'a> {
    /// Whether there are conditions (guidance needs them).
    conditioned: bool,
    layer_inputs: &'a [Option<Vec<f32>>],
    prompt: &'a [Vec<u32>],
    frames: usize,
    sampling: &'a Sampling,
}

/// The step loop behind [`generate_with`] and [`generate_on`]. Once the
/// window is checked, `start(sequences, positions)` makes its stepper: one
/// sequence, or two when guiding, over the window's positions.
fn generate_steps<S: Stepper>(
    cfg: &DecoderConfig,
    window: Window<'_>,
    start: impl FnOnce(usize, usize) -> Result<S>,
    on_step: &mut dyn FnMut(Progress, &[Vec<u32>]) -> bool,
) -> Result<Frames> {
    let Window {
        conditioned,
        layer_inputs,
        prompt,
        frames,
        sampling,
    } = window;
    sampling.validate()?;
    let guided = sampling.guidance > 1.0 && conditioned;
    let k = cfg.num_codebooks;
    let vocab = cfg.vocab_size;
    let pad = cfg.pad_token();
    if prompt
        .iter()
        .any(|f| f.len() != k || f.iter().any(|&c| c as usize >= vocab))
    {
        return Err(Error::InvalidSetting(format!(
            "prompt frames must hold {k} codes below {vocab}"
        )));
    }
    let known = prompt.len();
    let total = known + frames;
    if frames == 0 {
        return Ok(Vec::new());
    }
    // Positions: 0 is the start token; position p holds frame p − c − 1 of codebook c.
    let mut out: Frames = vec![vec![pad; k]; total];
    out[..known].clone_from_slice(prompt);
    let mut rng = ChaCha8Rng::seed_from_u64(sampling.seed);

    // Every position up to `known` is fully known: read them in one pass.
    let token_at = |out: &Frames, p: usize, c: usize| -> u32 {
        match p.checked_sub(c + 1) {
            Some(f) if f < total => out[f][c],
            _ => pad,
        }
    };
    let h = cfg.hidden_size;
    if let Some(short) = layer_inputs
        .iter()
        .flatten()
        .find(|l| l.len() < (total + k - 1) * h)
    {
        return Err(Error::InvalidSetting(format!(
            "in-attention inputs for {} positions; the window has {}",
            short.len() / h.max(1),
            total + k - 1
        )));
    }
    let mut stepper = start(if guided { 2 } else { 1 }, total + k - 1)?;
    let steps = total + k - 1 - known;
    let mut fed = 0usize; // positions already read by the decoder
    let mut step = 0usize;
    let mut scratch = vec![0f32; vocab];
    while fed < total + k - 1 {
        let upto = if fed == 0 { known + 1 } else { fed + 1 };
        let mut ids = Vec::with_capacity(k * (upto - fed));
        for c in 0..k {
            for p in fed..upto {
                ids.push(token_at(&out, p, c));
            }
        }
        let n = upto - fed;
        // This step's rows of the in-attention inputs.
        let inputs: Vec<Option<&[f32]>> = layer_inputs
            .iter()
            .map(|l| l.as_ref().map(|rows| &rows[fed * h..upto * h]))
            .collect();
        let all = stepper.step(&ids, n, &inputs)?;
        // (sequence, codebook, vocab) at the last position.
        let at = |seq: usize, c: usize| &all[(seq * k + c) * vocab..(seq * k + c + 1) * vocab];
        let g = sampling.guidance as f32;
        let logits: Vec<f32> = (0..k)
            .flat_map(|c| {
                let cond = at(0, c);
                let mixed: Vec<f32> = if guided {
                    let uncond = at(1, c);
                    cond.iter()
                        .zip(uncond)
                        .map(|(c, u)| u + (c - u) * g)
                        .collect()
                } else {
                    cond.to_vec()
                };
                mixed
            })
            .collect();
        // The logits at position `upto − 1` predict position `upto`.
        let p = upto;
        for c in 0..k {
            let Some(f) = p.checked_sub(c + 1) else {
                continue;
            };
            if f < known || f >= total {
                continue;
            }
            let row = &logits[c * vocab..(c + 1) * vocab];
            out[f][c] = pick(row, sampling, &mut rng, &mut scratch);
        }
        fed = upto;
        step += 1;
        // Frame f's last codebook is read at position f + k: the frames up
        // to `upto − k` are final.
        let complete = (upto + 1).saturating_sub(k).min(total).max(known);
        let progress = Progress {
            step,
            steps,
            complete: complete - known,
        };
        if !on_step(progress, &out[known..complete]) {
            return Err(Error::Cancelled);
        }
    }
    Ok(out.split_off(known))
}

/// Chooses a token from one codebook's logits.
fn pick(logits: &[f32], s: &Sampling, rng: &mut ChaCha8Rng, scratch: &mut [f32]) -> u32 {
    let Some(temperature) = s.temperature else {
        return argmax(logits);
    };
    let t = temperature as f32;
    let n = logits.len();
    scratch[..n].copy_from_slice(logits);
    let probs = &mut scratch[..n];
    for v in probs.iter_mut() {
        *v /= t;
    }
    if s.top_k > 0 && s.top_k < n {
        // Keep values at or above the k-th largest, as transformers' TopK does.
        let mut sorted: Vec<f32> = probs.to_vec();
        sorted.sort_unstable_by(|a, b| b.total_cmp(a));
        let kth = sorted[s.top_k - 1];
        for v in probs.iter_mut() {
            if *v < kth {
                *v = f32::NEG_INFINITY;
            }
        }
    }
    let max = probs.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f32;
    for v in probs.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    for v in probs.iter_mut() {
        *v /= sum;
    }
    if s.top_p < 1.0 {
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_unstable_by(|&a, &b| probs[b].total_cmp(&probs[a]));
        let mut acc = 0f32;
        let mut keep = n;
        for (i, &j) in order.iter().enumerate() {
            acc += probs[j];
            if acc >= s.top_p as f32 {
                keep = i + 1;
                break;
            }
        }
        for &j in &order[keep..] {
            probs[j] = 0.0;
        }
        let total: f32 = probs.iter().sum();
        for v in probs.iter_mut() {
            *v /= total;
        }
    }
    let r: f32 = rng.random();
    let mut acc = 0f32;
    for (i, p) in probs.iter().enumerate() {
        acc += p;
        if r < acc {
            return i as u32;
        }
    }
    // Rounding left the cumulative sum a hair under 1: take the last possible token.
    probs.iter().rposition(|&p| p > 0.0).unwrap_or(0) as u32
}

/// The first index of the largest value, as `torch.argmax` picks on ties.
pub(crate) fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_takes_the_first_of_equal_maxima() {
        assert_eq!(argmax(&[0.0, 2.0, 2.0, 1.0]), 1);
    }

    #[test]
    fn top_k_one_is_greedy() {
        let s = Sampling {
            top_k: 1,
            ..Sampling::default()
        };
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let mut scratch = vec![0.0; 4];
        for _ in 0..50 {
            assert_eq!(pick(&[0.1, 3.0, 2.9, -1.0], &s, &mut rng, &mut scratch), 1);
        }
    }

    #[test]
    fn top_p_keeps_only_the_nucleus() {
        let s = Sampling {
            top_k: 0,
            top_p: 0.5,
            ..Sampling::default()
        };
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let mut scratch = vec![0.0; 3];
        // probabilities ≈ 0.67, 0.24, 0.09: the first alone reaches 0.5
        for _ in 0..50 {
            assert_eq!(pick(&[2.0, 1.0, 0.0], &s, &mut rng, &mut scratch), 0);
        }
    }

    #[test]
    fn sampling_follows_the_distribution() {
        let s = Sampling {
            top_k: 0,
            ..Sampling::default()
        };
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut scratch = vec![0.0; 2];
        let ones = (0..4000)
            .filter(|_| pick(&[0.0, (3.0f32).ln()], &s, &mut rng, &mut scratch) == 1)
            .count();
        // p(1) = 0.75
        assert!((2850..3150).contains(&ones), "{ones}");
    }
}
