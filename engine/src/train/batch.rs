//! Training examples and the batches the decoder reads: codes under MusicGen's
//! delay pattern, with the targets and the mask of what is predicted.

use candle_core::{DType, Device, Tensor};

use crate::{Error, Result};

/// One window of a piece, everything precomputed.
#[derive(Debug, Clone)]
pub struct Example {
    /// `frames × codebooks` EnCodec codes of the music.
    pub codes: Vec<Vec<u32>>,
    /// `clip_frames × clip_width` CLIP global features (1 fps) of the window's
    /// pictures.
    pub clip: Vec<f32>,
    pub clip_frames: usize,
    /// The rhythm curve at the code frame rate, from the rhythm input's
    /// context (`rhythm_context` frames) before the window's first frame on
    /// (zeros before the piece's start): the rhythm input reads around each
    /// frame, as in generation.
    pub rhythm: Vec<f32>,
    /// The piece's caption as cross-attention states, `tokens × hidden`
    /// (MusicGen's own text encoder and projection: what a prompt gives at
    /// inference); they come before the visual states.
    pub text: Option<std::sync::Arc<Vec<f32>>>,
}

/// Codes under the delay pattern, as the decoder reads them in one pass.
///
/// Position `p` holds frame `p − c − 1` of codebook `c` (position 0 is the
/// start token; gaps are the pad token), and the logits at `p` predict
/// position `p + 1`: frame `p − c`. `frames + codebooks − 1` positions cover
/// every frame of every codebook once.
#[derive(Debug, Clone, PartialEq)]
pub struct Delayed {
    /// `codebooks × positions` input tokens.
    pub inputs: Vec<u32>,
    /// `codebooks × positions` targets (the pad token where nothing is predicted).
    pub targets: Vec<u32>,
    /// `codebooks × positions`: 1 where a target is a real code.
    pub mask: Vec<f32>,
    pub positions: usize,
}

/// The delay pattern of `codes` (`frames × k`).
pub fn delay(codes: &[Vec<u32>], k: usize, pad: u32) -> Delayed {
    let frames = codes.len();
    let positions = frames + k - 1;
    let at = |p: usize, c: usize| match p.checked_sub(c + 1) {
        Some(f) if f < frames => Some(codes[f][c]),
        _ => None,
    };
    let mut inputs = Vec::with_capacity(k * positions);
    let mut targets = Vec::with_capacity(k * positions);
    let mut mask = Vec::with_capacity(k * positions);
    for c in 0..k {
        for p in 0..positions {
            inputs.push(at(p, c).unwrap_or(pad));
            let t = at(p + 1, c);
            targets.push(t.unwrap_or(pad));
            mask.push(if t.is_some() { 1.0 } else { 0.0 });
        }
    }
    Delayed {
        inputs,
        targets,
        mask,
        positions,
    }
}

/// A batch of examples of equal length, as tensors.
pub struct Batch {
    /// `(batch, codebooks, positions)` u32.
    pub inputs: Tensor,
    /// `(batch · codebooks · positions)` u32.
    pub targets: Tensor,
    /// `(batch · codebooks · positions)`, 1 where a target counts.
    pub mask: Tensor,
    /// `(batch, clip_frames, clip_width)` and its mask `(batch, clip_frames)`.
    pub clip: Tensor,
    pub clip_mask: Tensor,
    /// `(batch, positions, rhythm width)`.
    pub rhythm: Tensor,
    /// The captions' states `(batch, tokens, hidden)` and mask `(batch,
    /// tokens)`, padded to the longest; `None` when no window has one.
    pub text: Option<(Tensor, Tensor)>,
}

impl Batch {
    /// Stacks `examples` (the same number of frames each, codes below `vocab`);
    /// shorter CLIP sequences and captions are padded. Position `p` reads the
    /// rhythm curve around frame `p`, `context` frames each side.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        examples: &[&Example],
        k: usize,
        vocab: usize,
        clip_width: usize,
        hidden: usize,
        context: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let Some(first) = examples.first() else {
            return Err(Error::InvalidSetting("an empty batch".into()));
        };
        let frames = first.codes.len();
        let clip_frames = examples.iter().map(|e| e.clip_frames).max().unwrap_or(0);
        for e in examples {
            if e.codes.len() != frames || frames == 0 {
                return Err(Error::InvalidSetting(
                    "a batch's windows must have the same number of frames".into(),
                ));
            }
            if e.codes
                .iter()
                .any(|f| f.len() != k || f.iter().any(|&c| c as usize >= vocab))
            {
                return Err(Error::InvalidSetting(format!(
                    "training codes must be {k} per frame, each below {vocab}"
                )));
            }
            if e.clip.len() != e.clip_frames * clip_width || e.clip_frames == 0 {
                return Err(Error::InvalidSetting(format!(
                    "CLIP features must be {clip_width} wide, at least one frame"
                )));
            }
            if e.text.as_ref().is_some_and(|t| t.len() % hidden != 0) {
                return Err(Error::InvalidSetting(format!(
                    "caption states must be {hidden} wide"
                )));
            }
        }
        let tokens = |e: &Example| e.text.as_ref().map_or(0, |t| t.len() / hidden);
        let longest = examples.iter().map(|e| tokens(e)).max().unwrap_or(0);
        let text = if longest == 0 {
            None
        } else {
            let (mut states, mut mask) = (Vec::new(), Vec::new());
            for e in examples {
                if let Some(t) = &e.text {
                    states.extend_from_slice(t);
                }
                states.resize(states.len() + (longest - tokens(e)) * hidden, 0.0);
                mask.extend((0..longest).map(|i| u32::from(i < tokens(e))));
            }
            let b = examples.len();
            Some((
                Tensor::from_vec(states, (b, longest, hidden), device)?.to_dtype(dtype)?,
                Tensor::from_vec(mask, (b, longest), device)?,
            ))
        };
        let pad = vocab as u32;
        let width = 2 * context + 1;
        let b = examples.len();
        let (mut inputs, mut targets, mut mask) = (Vec::new(), Vec::new(), Vec::new());
        let (mut clip, mut clip_mask, mut rhythm) = (Vec::new(), Vec::new(), Vec::new());
        let mut positions = 0;
        for e in examples {
            let d = delay(&e.codes, k, pad);
            positions = d.positions;
            inputs.extend(d.inputs);
            // A masked target counts for nothing, but it must still index
            // the vocabulary: the pad token lies one past it.
            targets.extend(
                d.targets
                    .iter()
                    .zip(&d.mask)
                    .map(|(&t, &m)| if m > 0.0 { t } else { 0 }),
            );
            mask.extend(d.mask);
            clip.extend_from_slice(&e.clip);
            clip.resize(clip.len() + (clip_frames - e.clip_frames) * clip_width, 0.0);
            clip_mask.extend((0..clip_frames).map(|i| u32::from(i < e.clip_frames)));
            rhythm.extend(crate::neural::conditioning::rhythm::rhythm_input(
                &e.rhythm, context, positions, context,
            ));
        }
        let n = b * k * positions;
        Ok(Self {
            inputs: Tensor::from_vec(inputs, (b, k, positions), device)?,
            targets: Tensor::from_vec(targets, n, device)?,
            mask: Tensor::from_vec(mask, n, device)?.to_dtype(dtype)?,
            clip: Tensor::from_vec(clip, (b, clip_frames, clip_width), device)?.to_dtype(dtype)?,
            clip_mask: Tensor::from_vec(clip_mask, (b, clip_frames), device)?,
            rhythm: Tensor::from_vec(rhythm, (b, positions, width), device)?.to_dtype(dtype)?,
            text,
        })
    }
}

/// Mean cross-entropy of `logits` `(batch, codebooks, positions, vocab)` against
/// the batch's targets, over the positions its mask keeps.
pub fn masked_cross_entropy(logits: &Tensor, batch: &Batch) -> Result<Tensor> {
    let vocab = logits.dim(candle_core::D::Minus1)?;
    let flat = logits.reshape((logits.elem_count() / vocab, vocab))?;
    let logp = candle_nn::ops::log_softmax(&flat, candle_core::D::Minus1)?;
    let picked = logp.gather(&batch.targets.unsqueeze(1)?, 1)?.squeeze(1)?;
    let total = (picked * &batch.mask)?.sum_all()?;
    let count = batch.mask.sum_all()?;
    Ok((total.neg()? / count)?)
}

#[cfg(test)]
mod tests {
    use super::delay;

    #[test]
    fn the_delay_pattern_predicts_each_frame_of_each_codebook_once() {
        // 3 frames, 2 codebooks; codes name (frame, codebook) as 10·f + c.
        let codes: Vec<Vec<u32>> = (0..3).map(|f| vec![10 * f, 10 * f + 1]).collect();
        let d = delay(&codes, 2, 99);
        assert_eq!(d.positions, 4);
        // Codebook 0: start, f0, f1, f2; codebook 1: start, pad, f0, f1.
        assert_eq!(d.inputs, [99, 0, 10, 20, 99, 99, 1, 11]);
        // Targets are the next position's tokens where they are real codes.
        assert_eq!(d.targets, [0, 10, 20, 99, 99, 1, 11, 21]);
        assert_eq!(d.mask, [1., 1., 1., 0., 0., 1., 1., 1.]);
    }
}
