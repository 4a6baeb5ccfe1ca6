//! CLIP's vision tower (`CLIPVisionModel` plus `visual_projection`): a ViT over
//! non-overlapping patches with a class token, pre- and post-LayerNorm.

use candle_core::{DType, Tensor};

use super::config::ClipConfig;
use super::{Encoder, EncoderShape, LayerNorm};
use crate::Result;
use crate::neural::nn::Linear;
use crate::neural::weights::Weights;

/// What the vision tower gives for a batch of frames.
#[derive(Debug, Clone)]
pub struct VisionOutput {
    /// The class token after `post_layernorm` (transformers' `pooler_output`),
    /// `(batch, hidden)`.
    pub pooled: Tensor,
    /// `pooled` through `visual_projection` (`image_embeds`), `(batch, projection_dim)`.
    pub projected: Tensor,
    /// The last encoder layer's output at the patches, without `post_layernorm`
    /// (`last_hidden_state[:, 1:, :]`), `(batch, patches, hidden)`, row-major over the
    /// patch grid.
    pub patch_tokens: Tensor,
}

/// The arithmetic of a CLIP tower's encoder on the CPU (named for the vision
/// tower, the first to have it; the text tower takes it too).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VisionPrecision {
    /// f32 throughout: transformers' results within rounding.
    #[default]
    F32,
    /// The encoder's linear layers (nine tenths of the work) in 8 bits: weights
    /// quantized per output column, activations per row, exact integer sums
    /// (AVX-512 VNNI or AVX-VNNI), bias, activation and residual applied as each product is
    /// dequantized. Two to three times as fast as f32 on a Zen 4 core. The
    /// embeddings move by about a ten-thousandth in cosine on the test fixtures and
    /// on random ViT-B/32 weights; a real checkpoint's activation outliers may cost
    /// more, so callers choose it. Everything else stays f32.
    Int8,
}

pub struct ClipVision {
    /// The patch convolution as a matrix, `(channels·patch·patch, hidden)`: a strided
    /// convolution whose kernel equals its stride is one matmul over unfolded patches.
    patch_wt: Tensor,
    class_embedding: Tensor,
    position_embedding: Tensor,
    pre_norm: LayerNorm,
    encoder: Encoder,
    post_norm: LayerNorm,
    projection: Linear,
    image_size: usize,
    patch: usize,
    channels: usize,
    precision: VisionPrecision,
}

impl ClipVision {
    /// Loads the tower from `w`, which points at the checkpoint's root (it reads
    /// `vision_model.*` and `visual_projection.weight`).
    pub fn load(w: &Weights, cfg: &ClipConfig) -> Result<Self> {
        Self::load_as(w, cfg, VisionPrecision::F32)
    }

    /// [`ClipVision::load`] at `precision`. At [`VisionPrecision::Int8`], where
    /// the CPU runs it, the encoder's weights are quantized straight from the
    /// checkpoint and no f32 copy of them is kept (such a tower cannot go back
    /// to f32); elsewhere it is f32, as [`ClipVision::precision`] then says.
    pub fn load_as(w: &Weights, cfg: &ClipConfig, precision: VisionPrecision) -> Result<Self> {
        let int8 = precision == VisionPrecision::Int8;
        let v = &cfg.vision_config;
        let d = v.hidden_size;
        let m = w.pp("vision_model");
        let e = m.pp("embeddings");
        let conv = e.get(
            &[d, v.num_channels, v.patch_size, v.patch_size],
            "patch_embedding.weight",
        )?;
        let patch_wt = conv
            .reshape((d, v.num_channels * v.patch_size * v.patch_size))?
            .t()?
            .contiguous()?;
        let projection = Linear::from_weight(
            &w.get(&[cfg.projection_dim, d], "visual_projection.weight")?,
            None,
        )?;
        let mut tower = Self {
            patch_wt,
            class_embedding: e.get(&[d], "class_embedding")?,
            position_embedding: e.get(&[v.num_patches() + 1, d], "position_embedding.weight")?,
            // `pre_layrnorm` is the checkpoint's spelling.
            pre_norm: LayerNorm::load(&m.pp("pre_layrnorm"), d, v.layer_norm_eps)?,
            encoder: Encoder::load(
                &m.pp("encoder"),
                EncoderShape {
                    layers: v.num_hidden_layers,
                    hidden: d,
                    intermediate: v.intermediate_size,
                    heads: v.num_attention_heads,
                    act: v.hidden_act,
                    eps: v.layer_norm_eps,
                },
                int8,
            )?,
            post_norm: LayerNorm::load(&m.pp("post_layernorm"), d, v.layer_norm_eps)?,
            projection,
            image_size: v.image_size,
            patch: v.patch_size,
            channels: v.num_channels,
            precision: VisionPrecision::F32,
        };
        if int8 {
            // What the layers took: 8 bits, or f32 on a CPU without the kernels.
            tower.set_precision(VisionPrecision::Int8)?;
        }
        Ok(tower)
    }

    /// Sets the encoder's arithmetic. [`VisionPrecision::Int8`] needs AVX-512 VNNI
    /// or AVX-VNNI; without either the tower stays at f32. Returns the precision now in use.
    /// A tower loaded in 8 bits ([`ClipVision::load_as`]) has no f32 weights to
    /// go back to: asked for f32 it is an error, and it stays as it was.
    pub fn set_precision(&mut self, precision: VisionPrecision) -> Result<VisionPrecision> {
        let int8 = self.encoder.set_int8(precision == VisionPrecision::Int8)?;
        self.precision = if int8 {
            VisionPrecision::Int8
        } else {
            // A partial switch (no layer can be partly quantized today) is undone.
            self.encoder.set_int8(false)?;
            VisionPrecision::F32
        };
        Ok(self.precision)
    }

    /// The encoder's arithmetic now.
    pub fn precision(&self) -> VisionPrecision {
        self.precision
    }

    /// The tower in `dtype` (f32, f16, bf16), on the device it is on: for a
    /// GPU, where half types run at twice f32's speed or more. The pixels
    /// it is given are converted to its type; what it returns is in it. A
    /// tower in 8 bits cannot change type (an error).
    pub fn to_dtype(&self, dtype: DType) -> Result<Self> {
        if self.precision == VisionPrecision::Int8 {
            return Err(crate::Error::InvalidSetting(
                "a CLIP tower in 8 bits cannot change type: load it in f32".into(),
            ));
        }
        Ok(Self {
            patch_wt: self.patch_wt.to_dtype(dtype)?,
            class_embedding: self.class_embedding.to_dtype(dtype)?,
            position_embedding: self.position_embedding.to_dtype(dtype)?,
            pre_norm: self.pre_norm.to_dtype(dtype)?,
            encoder: self.encoder.to_dtype(dtype)?,
            post_norm: self.post_norm.to_dtype(dtype)?,
            projection: self.projection.to_dtype(dtype)?,
            image_size: self.image_size,
            patch: self.patch,
            channels: self.channels,
            precision: self.precision,
        })
    }

    /// The type of its weights (and of what it returns).
    pub fn dtype(&self) -> DType {
        self.patch_wt.dtype()
    }

    /// Side of the square input, pixels.
    pub fn image_size(&self) -> usize {
        self.image_size
    }

    /// Encodes `pixels`, `(batch, channels, image_size, image_size)` f32 as
    /// [`super::preprocess`] makes them. All frames go through each layer together, so
    /// the matmuls have `batch × (patches + 1)` rows.
    pub fn forward(&self, pixels: &Tensor) -> Result<VisionOutput> {
        let (b, c, h, w) = pixels.dims4()?;
        if (c, h, w) != (self.channels, self.image_size, self.image_size) {
            return Err(crate::Error::InvalidSetting(format!(
                "the vision tower takes {}×{}×{} pixels per frame, got {c}×{h}×{w}",
                self.channels, self.image_size, self.image_size
            )));
        }
        let pixels = pixels.to_dtype(self.dtype())?;
        let p = self.patch;
        let g = self.image_size / p;
        // Patches that fill the grid; a remainder is left out, as the strided
        // convolution of the reference leaves it.
        let pixels = pixels.narrow(2, 0, g * p)?.narrow(3, 0, g * p)?;
        // (b, c, gy, py, gx, px) → (b, gy, gx, c, py, px): each row is one patch
        // laid out as the convolution kernel is.
        let patches = pixels
            .reshape((b, c, g, p, g, p))?
            .permute((0, 2, 4, 1, 3, 5))?
            .contiguous()?
            .reshape((b * g * g, c * p * p))?;
        let d = self.patch_wt.dim(1)?;
        let patch_embeds = patches.matmul(&self.patch_wt)?.reshape((b, g * g, d))?;
        let class = self
            .class_embedding
            .reshape((1, 1, d))?
            .broadcast_as((b, 1, d))?;
        let x = Tensor::cat(&[&class, &patch_embeds], 1)?
            .broadcast_add(&self.position_embedding.unsqueeze(0)?)?;
        let x = self.pre_norm.forward(&x)?;
        let last = self.encoder.forward(&x, None)?;
        let cls = last.narrow(1, 0, 1)?.squeeze(1)?;
        let pooled = self.post_norm.forward(&cls)?;
        let projected = self.projection.forward(&pooled)?;
        let patch_tokens = last.narrow(1, 1, g * g)?.contiguous()?;
        Ok(VisionOutput {
            pooled,
            projected,
            patch_tokens,
        })
    }
}
