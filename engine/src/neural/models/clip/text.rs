//! CLIP's text tower (`CLIPTextModel` plus `text_projection`): a causal transformer
//! over BPE tokens, pooled at the end-of-text token.

use std::path::Path;

use candle_core::{DType, Device, Tensor};

use super::config::{ClipConfig, ClipTextConfig};
use super::{Encoder, EncoderShape, LayerNorm, VisionPrecision};
use crate::neural::nn::{Linear, embedding};
use crate::neural::weights::Weights;
use crate::{Error, Result};

/// What the text tower gives for a batch of prompts.
#[derive(Debug, Clone)]
pub struct TextOutput {
    /// The final-layer-normed state at the pooling position (transformers'
    /// `pooler_output`), `(batch, hidden)`.
    pub pooled: Tensor,
    /// `pooled` through `text_projection` (`text_embeds`), `(batch, projection_dim)`.
    pub projected: Tensor,
}

pub struct ClipText {
    token_embedding: Tensor,
    position_embedding: Tensor,
    encoder: Encoder,
    final_norm: LayerNorm,
    projection: Linear,
    cfg: ClipTextConfig,
    precision: VisionPrecision,
}

impl ClipText {
    /// Loads the tower from `w`, which points at the checkpoint's root (it reads
    /// `text_model.*` and `text_projection.weight`).
    pub fn load(w: &Weights, cfg: &ClipConfig) -> Result<Self> {
        Self::load_as(w, cfg, VisionPrecision::F32)
    }

    /// [`ClipText::load`] with the encoder's linear layers at `precision`, as
    /// the vision tower's ([`super::ClipVision::load_as`]: in 8 bits straight
    /// from the checkpoint where the CPU runs them, f32 elsewhere).
    pub fn load_as(w: &Weights, cfg: &ClipConfig, precision: VisionPrecision) -> Result<Self> {
        let t = &cfg.text_config;
        let d = t.hidden_size;
        let m = w.pp("text_model");
        let e = m.pp("embeddings");
        let mut tower = Self {
            token_embedding: e.get(&[t.vocab_size, d], "token_embedding.weight")?,
            position_embedding: e
                .get(&[t.max_position_embeddings, d], "position_embedding.weight")?,
            encoder: Encoder::load(
                &m.pp("encoder"),
                EncoderShape {
                    layers: t.num_hidden_layers,
                    hidden: d,
                    intermediate: t.intermediate_size,
                    heads: t.num_attention_heads,
                    act: t.hidden_act,
                    eps: t.layer_norm_eps,
                },
                precision == VisionPrecision::Int8,
            )?,
            final_norm: LayerNorm::load(&m.pp("final_layer_norm"), d, t.layer_norm_eps)?,
            projection: Linear::from_weight(
                &w.get(&[cfg.projection_dim, d], "text_projection.weight")?,
                None,
            )?,
            cfg: t.clone(),
            precision: VisionPrecision::F32,
        };
        if precision == VisionPrecision::Int8 && tower.encoder.all_int8() {
            tower.precision = VisionPrecision::Int8;
        }
        Ok(tower)
    }

    pub fn config(&self) -> &ClipTextConfig {
        &self.cfg
    }

    /// The encoder's arithmetic: 8 bits only when loaded so on a CPU that
    /// runs them.
    pub fn precision(&self) -> VisionPrecision {
        self.precision
    }

    /// Encodes token ids, `(batch, len)` u32, padded on the right if rows differ in
    /// length. The mask is causal only: a token never sees the ones after it, so the
    /// padding after a row's eos changes nothing at the pooling position.
    ///
    /// Pools as transformers does: at the first `eos_token_id` of each row, or, for a
    /// config whose eos id is 2 (written before the fix of PR #24773), at the largest
    /// id (CLIP's eos is its highest id). A row without its eos pools at position 0,
    /// as the reference does; [`ClipTokenizer`] never makes one.
    pub fn forward(&self, ids: &Tensor) -> Result<TextOutput> {
        let (b, len) = ids.dims2()?;
        let max = self.cfg.max_position_embeddings;
        if len == 0 || len > max {
            return Err(Error::InvalidSetting(format!(
                "the text tower takes 1 to {max} tokens per prompt, got {len}"
            )));
        }
        let ids = ids.to_dtype(DType::U32)?;
        let rows: Vec<Vec<u32>> = ids.to_vec2()?;
        let vocab = self.cfg.vocab_size as u32;
        if let Some(bad) = rows.iter().flatten().find(|&&i| i >= vocab) {
            return Err(Error::InvalidSetting(format!(
                "token id {bad} is outside the text tower's vocabulary of {vocab}"
            )));
        }
        let x = embedding(&self.token_embedding, &ids)?
            .broadcast_add(&self.position_embedding.narrow(0, 0, len)?.unsqueeze(0)?)?;
        let mask = causal_bias(len, ids.device())?;
        let last = self.encoder.forward(&x, Some(&mask))?;
        let positions: Vec<u32> = rows
            .iter()
            .enumerate()
            .map(|(r, row)| (r * len + self.pool_position(row)) as u32)
            .collect();
        let d = last.dim(2)?;
        let picked = last
            .reshape((b * len, d))?
            .index_select(&Tensor::new(positions, ids.device())?, 0)?;
        // The final norm works on each position alone: applying it to the pooled
        // rows only gives the same as the reference's norm-then-pick.
        let pooled = self.final_norm.forward(&picked)?;
        let projected = self.projection.forward(&pooled)?;
        Ok(TextOutput { pooled, projected })
    }

    fn pool_position(&self, row: &[u32]) -> usize {
        if self.cfg.legacy_pooling() {
            // torch's argmax: the first of equal maxima.
            let mut best = 0;
            for (i, &v) in row.iter().enumerate() {
                if v > row[best] {
                    best = i;
                }
            }
            best
        } else {
            row.iter()
                .position(|&v| v == self.cfg.eos_token_id)
                .unwrap_or(0)
        }
    }
}

/// `(1, 1, len, len)`: 0 on and below the diagonal, the most negative f32 above it,
/// as transformers' causal mask.
fn causal_bias(len: usize, device: &Device) -> candle_core::Result<Tensor> {
    let v: Vec<f32> = (0..len)
        .flat_map(|q| (0..len).map(move |k| if k > q { f32::MIN } else { 0.0 }))
        .collect();
    Tensor::from_vec(v, (1, 1, len, len), device)
}

/// CLIP's tokenizer from `tokenizer.json`, truncating to the tower's length while
/// keeping the eos, and padding a batch on the right.
pub struct ClipTokenizer {
    tokenizer: tokenizers::Tokenizer,
    path: std::path::PathBuf,
    eos: u32,
    pad: u32,
    legacy: bool,
}

impl ClipTokenizer {
    /// Reads `path` (`tokenizer.json`) for a text tower of `cfg`.
    pub fn load(path: &Path, cfg: &ClipTextConfig) -> Result<Self> {
        if !path.is_file() {
            return Err(Error::NotFound(path.to_path_buf()));
        }
        let mut tokenizer = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| Error::model_file(path, format!("not a valid tokenizer: {e}")))?;
        // The post-processor's bos and eos are counted inside `max_length`, so
        // truncation cuts the words and keeps the eos, as transformers'
        // `truncation=True, max_length=…` does.
        tokenizer
            .with_truncation(Some(tokenizers::TruncationParams {
                max_length: cfg.max_position_embeddings,
                ..Default::default()
            }))
            .map_err(|e| Error::model_file(path, format!("cannot truncate with it: {e}")))?;
        tokenizer.with_padding(None);
        // A legacy config's eos id (2) is not the tokenizer's: the end-of-text token
        // is then found by its name.
        let eos = if cfg.legacy_pooling() {
            tokenizer
                .token_to_id("<|endoftext|>")
                .unwrap_or(cfg.eos_token_id)
        } else {
            cfg.eos_token_id
        };
        Ok(Self {
            tokenizer,
            path: path.to_path_buf(),
            eos,
            // A pad id outside the vocabulary (some configs carry one) would be
            // refused by the tower; the eos pads as well, after the pooling position.
            pad: if cfg.pad_token_id < cfg.vocab_size as u32 {
                cfg.pad_token_id
            } else {
                eos
            },
            legacy: cfg.legacy_pooling(),
        })
    }

    /// Token ids of each prompt (with bos and eos), unpadded.
    pub fn encode(&self, prompt: &str) -> Result<Vec<u32>> {
        let enc = self.tokenizer.encode(prompt, true).map_err(|e| {
            Error::model_file(&self.path, format!("cannot tokenise {prompt:?}: {e}"))
        })?;
        let ids = enc.get_ids().to_vec();
        // Pooling reads the eos; a tokenizer that does not end prompts with it would
        // give the embedding of some other token, silently.
        let ends_right = if self.legacy {
            ids.last().is_some_and(|&l| ids.iter().all(|&i| i <= l))
        } else {
            ids.contains(&self.eos)
        };
        if !ends_right {
            return Err(Error::model_file(
                &self.path,
                format!(
                    "the tokenizer does not end {prompt:?} with the end-of-text token (id {})",
                    self.eos
                ),
            ));
        }
        Ok(ids)
    }

    /// `(batch, longest)` u32 ids, rows padded on the right with the pad id.
    pub fn encode_batch(&self, prompts: &[&str], device: &Device) -> Result<Tensor> {
        let rows = prompts
            .iter()
            .map(|p| self.encode(p))
            .collect::<Result<Vec<_>>>()?;
        let len = rows.iter().map(Vec::len).max().unwrap_or(0);
        let mut flat = Vec::with_capacity(rows.len() * len);
        for row in &rows {
            flat.extend_from_slice(row);
            flat.extend(std::iter::repeat_n(self.pad, len - row.len()));
        }
        Ok(Tensor::from_vec(flat, (rows.len(), len), device)?)
    }
}
