//! The semantic module: CLIP's global features of a window's frames (1 fps)
//! become cross-attention states. An embedding manager maps each frame's feature
//! into T5's input embedding space, MusicGen's T5 encoder (frozen, with LoRA on
//! its attention) encodes the sequence, and a projector maps it to the decoder's
//! width. The states join the text prompt's, if any, in cross-attention.

use candle_core::{DType, Tensor};

use super::{AdapterConfig, Dense, Init, Params};
use crate::neural::nn::{Linear, Lora};
use crate::neural::t5::T5Encoder;
use crate::{Error, Result};

#[derive(Clone)]
pub struct SemanticModule {
    manager: Dense,
    t5: T5Encoder,
    projector: Dense,
    clip_width: usize,
}

impl SemanticModule {
    /// A fresh module over `t5`, its trainable tensors added to `params` under
    /// `semantic.`. The projector starts as MusicGen's own text projection
    /// `enc_to_dec` (or the identity where the checkpoint has none), so that
    /// T5 states reach the decoder as the text prompt's do; LoRA's `B` starts at
    /// zero, leaving T5 as it was.
    pub fn new(
        cfg: &AdapterConfig,
        t5: &T5Encoder,
        enc_to_dec: Option<&Linear>,
        decoder_hidden: usize,
        params: &mut Params,
        dtype: DType,
    ) -> Result<Self> {
        let t5 = t5.to_dtype(dtype)?;
        let d = t5.hidden_size();
        let device = t5.device().clone();
        let mut init = Init::new(cfg.seed, &device, dtype);
        let manager = Dense::new(
            params,
            "semantic.manager",
            &init.uniform(d, cfg.clip_width)?,
            &init.zeros(&[d])?,
        )?;
        let scale = cfg.lora_alpha / cfg.lora_rank as f64;
        let rank = cfg.lora_rank;
        let t5 = t5.with_lora(&cfg.lora_targets, &mut |path, inn, out| {
            Ok(Lora {
                a: params.add(
                    format!("semantic.t5.{path}.lora_A"),
                    &init.uniform(rank, inn)?,
                )?,
                b: params.add(
                    format!("semantic.t5.{path}.lora_B"),
                    &init.zeros(&[out, rank])?,
                )?,
                scale,
            })
        })?;
        let (w, b) = match enc_to_dec {
            Some(p) => {
                if p.in_dim() != d || p.out_dim() != decoder_hidden {
                    return Err(Error::InvalidSetting(format!(
                        "a text projection {}→{} between T5 of width {d} and a decoder of {decoder_hidden}",
                        p.in_dim(),
                        p.out_dim()
                    )));
                }
                let b = match p.bias() {
                    Some(b) => b.to_dtype(dtype)?,
                    None => init.zeros(&[decoder_hidden])?,
                };
                (p.weight()?.to_dtype(dtype)?.contiguous()?, b)
            }
            None if d == decoder_hidden => (init.eye(d)?, init.zeros(&[d])?),
            None => {
                return Err(Error::InvalidSetting(format!(
                    "T5 of width {d} and a decoder of {decoder_hidden} with no projection between"
                )));
            }
        };
        let projector = Dense::new(params, "semantic.projector", &w, &b)?;
        Ok(Self {
            manager,
            t5,
            projector,
            clip_width: cfg.clip_width,
        })
    }

    /// Cross-attention states `(batch, frames, hidden)` for CLIP global features
    /// `(batch, frames, clip_width)`; `mask` `(batch, frames)` is 1 for a frame
    /// and 0 for padding, where the states are zero.
    pub fn forward(&self, features: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let (_, _, w) = features.dims3()?;
        if w != self.clip_width {
            return Err(Error::InvalidSetting(format!(
                "CLIP features {w} wide for an adapter trained on {}",
                self.clip_width
            )));
        }
        let x = self.manager.forward(features)?;
        let h = self.t5.forward_embeds(&x, mask)?;
        let states = self.projector.forward(&h)?;
        let m = mask.to_dtype(states.dtype())?.unsqueeze(2)?;
        Ok(states.broadcast_mul(&m)?)
    }
}
