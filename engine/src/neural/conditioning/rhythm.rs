//! The rhythm module: the rhythm curve (50 Hz, one value per code frame) enters
//! the decoder by in-attention. A Zero-Linear (weights and bias zero) maps the
//! curve around each frame to the decoder's width; a chain of Identity-Linears
//! (identity weights, zero bias), one per block of decoder layers, carries it on,
//! and each link's output is added to the hidden state before its block's first
//! layer, in the first blocks only ([`AdapterConfig::rhythm_blocks`]). At
//! initialisation it adds exact zeros: the stage-1 model is unchanged.

use candle_core::{DType, Device, Tensor};

use super::{AdapterConfig, Dense, Init, Params};
use crate::neural::config::DecoderConfig;
use crate::{Error, Result};

#[derive(Clone)]
pub struct RhythmModule {
    zero: Dense,
    /// One per block that takes the input.
    chain: Vec<Dense>,
    block_size: usize,
    layers: usize,
    width: usize,
}

impl RhythmModule {
    /// A fresh module for a decoder of `decoder`'s shape, its trainable tensors
    /// added to `params` under `rhythm.`.
    pub fn new(
        cfg: &AdapterConfig,
        decoder: &DecoderConfig,
        params: &mut Params,
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        cfg.validate(decoder)?;
        let h = decoder.hidden_size;
        let width = cfg.rhythm_width();
        let init = Init::new(cfg.seed, device, dtype);
        let zero = Dense::new(
            params,
            "rhythm.zero",
            &init.zeros(&[h, width])?,
            &init.zeros(&[h])?,
        )?;
        let chain = (0..cfg.rhythm_blocks(decoder))
            .map(|b| {
                Dense::new(
                    params,
                    &format!("rhythm.chain.{b}"),
                    &init.eye(h)?,
                    &init.zeros(&[h])?,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            zero,
            chain,
            block_size: cfg.block_size,
            layers: decoder.num_hidden_layers,
            width,
        })
    }

    /// Values per code frame [`RhythmModule::forward`] reads.
    pub fn width(&self) -> usize {
        self.width
    }

    /// The Zero-Linear's output for `input`.
    pub fn zero_linear(&self, input: &Tensor) -> Result<Tensor> {
        self.zero.forward(input)
    }

    /// The Identity-Linears, first block first.
    pub fn chain(&self) -> &[Dense] {
        &self.chain
    }

    /// Per decoder layer, what to add before it, for `input`
    /// `(batch, frames, width)` ([`rhythm_input`]): `Some` at the first layer of
    /// each block that takes the rhythm input.
    pub fn forward(&self, input: &Tensor) -> Result<Vec<Option<Tensor>>> {
        if input.dim(candle_core::D::Minus1)? != self.width {
            return Err(Error::InvalidSetting(format!(
                "a rhythm input {} wide for a module that reads {}",
                input.dim(candle_core::D::Minus1)?,
                self.width
            )));
        }
        let mut out = vec![None; self.layers];
        let mut h = self.zero.forward(input)?;
        for (b, link) in self.chain.iter().enumerate() {
            h = link.forward(&h)?;
            out[b * self.block_size] = Some(h.clone());
        }
        Ok(out)
    }
}

/// The rhythm module's input for the code frames `start..start + frames` of a
/// piece whose rhythm curve (one value per code frame) is `curve`: for each
/// frame, the curve from `context` frames before it to `context` after, zero
/// beyond the curve's ends. `frames × (2 · context + 1)` values, frame-major.
pub fn rhythm_input(curve: &[f32], start: usize, frames: usize, context: usize) -> Vec<f32> {
    let width = 2 * context + 1;
    let mut out = Vec::with_capacity(frames * width);
    for f in start..start + frames {
        for o in 0..width {
            let at = (f + o).checked_sub(context);
            out.push(at.and_then(|i| curve.get(i)).copied().unwrap_or(0.0));
        }
    }
    out
}

/// A piece's rhythm curve (one value per code frame) as the rhythm module
/// reads it under `normalise` ([`super::AdapterConfig::rhythm_normalise`]):
/// divided by its largest value after the start, the start kept as it is.
/// The start is the first [`START_FRAMES`] frames: the curve's first value
/// (1, by the method's convention) reaches them through the interpolation
/// from 25 fps. A curve with no change after its start is left as it is.
pub fn prepare_curve(curve: &[f32], normalise: bool) -> Vec<f32> {
    let peak = curve.iter().skip(START_FRAMES).fold(0f32, |m, &v| m.max(v));
    if !normalise || peak <= 1e-6 || !peak.is_finite() {
        return curve.to_vec();
    }
    curve
        .iter()
        .enumerate()
        .map(|(i, &v)| if i < START_FRAMES { v } else { v / peak })
        .collect()
}

/// Code frames at a piece's start that the curve's first value (taken at
/// 25 fps, the curve read at 50 Hz) decides.
pub const START_FRAMES: usize = 2;
