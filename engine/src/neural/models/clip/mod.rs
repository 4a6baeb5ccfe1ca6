//! CLIP (Radford et al. 2021, "Learning Transferable Visual Models From Natural
//! Language Supervision"), both towers, loading the Hugging Face layout of
//! `openai/clip-vit-base-patch32`, `-base-patch16` and `-large-patch14` as
//! transformers' `CLIPModel` (`models/clip/modeling_clip.py`) writes and reads it.
//!
//! - [`config`]: `config.json` and `preprocessor_config.json`.
//! - [`preprocess`]: frames to pixels, equal to `CLIPImageProcessor`'s PIL path.
//! - [`vision`]: the ViT: pooled class token, projection, patch tokens.
//! - [`text`]: the tokenizer and the causal text transformer.
//!
//! [`Clip`] holds a whole checkpoint and scores frames against words.
//!
//! On CPU the work is in the matmuls: frames go through the towers as one batch (a
//! batch of `n` frames makes matmuls of `n × (patches + 1)` rows), every linear layer
//! multiplies against its weight stored transposed and contiguous, and the three
//! attention projections are one matmul. candle runs them on the rayon pool that is
//! current: a caller that wants CLIP on its own threads runs it inside
//! `ThreadPool::install`.

pub mod bench;
pub mod config;
mod int8;
mod ops;
pub mod preprocess;
pub mod text;
pub mod vision;

use std::path::{Path, PathBuf};

use candle_core::{D, DType, Device, Tensor};
use serde::{Deserialize, Serialize};

pub use config::{Activation, ClipConfig, ClipTextConfig, ClipVisionConfig, PreprocessConfig};
pub use preprocess::RgbImage;
pub use text::{ClipText, ClipTokenizer, TextOutput};
pub use vision::{ClipVision, VisionOutput, VisionPrecision};

use crate::neural::nn::{attention, merge_heads, split_heads};
use crate::neural::weights::Weights;
use crate::{Error, Result};

/// transformers' `quick_gelu`, `x · σ(1.702 x)`. On CPU it is one pass over the
/// tensor on the current rayon pool: written as candle ops it takes three passes and
/// three tensors of the MLP's width, about a tenth of a vision layer's time.
fn quick_gelu(x: &Tensor) -> candle_core::Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == candle_core::DType::F32 {
        x.contiguous()?.apply_op1_no_bwd(&QuickGelu)
    } else {
        x * candle_nn::ops::sigmoid(&(x * 1.702)?)?
    }
}

struct QuickGelu;

impl candle_core::CustomOp1 for QuickGelu {
    fn name(&self) -> &'static str {
        "quick-gelu"
    }

    fn cpu_fwd(
        &self,
        storage: &candle_core::CpuStorage,
        layout: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        use rayon::prelude::*;
        let src = ops::slice(storage, layout, "quick-gelu")?;
        let mut out = vec![0f32; src.len()];
        // Chunks large enough that a task outweighs rayon's hand-over.
        out.par_chunks_mut(1 << 14)
            .zip(src.par_chunks(1 << 14))
            .for_each(|(o, s)| {
                for (o, &x) in o.iter_mut().zip(s) {
                    *o = x / (1.0 + (-1.702 * x).exp());
                }
            });
        Ok((candle_core::CpuStorage::F32(out), layout.shape().clone()))
    }
}

/// PyTorch's LayerNorm (biased variance), with weight and bias.
struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    fn load(w: &Weights, dim: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: w.get(&[dim], "weight")?,
            bias: w.get(&[dim], "bias")?,
            eps,
        })
    }

    fn to_dtype(&self, dtype: DType) -> candle_core::Result<Self> {
        Ok(Self {
            weight: self.weight.to_dtype(dtype)?,
            bias: self.bias.to_dtype(dtype)?,
            eps: self.eps,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        // The fused kernel; inference only (autograd stops at it).
        candle_nn::ops::layer_norm(&x.contiguous()?, &self.weight, &self.bias, self.eps as f32)
    }
}

/// A linear layer's weight, transposed and contiguous `(in, out)`, and its bias, kept
/// apart so that the bias goes into the pass that follows the matmul ([`ops`]).
struct Proj {
    /// `None` for a layer loaded straight into 8 bits ([`Proj::load_parts`]).
    wt: Option<Tensor>,
    in_dim: usize,
    out_dim: usize,
    bias: Tensor,
    /// The weight in 8 bits, when the tower runs at [`VisionPrecision::Int8`].
    int8: Option<int8::Int8Weight>,
}

impl Proj {
    /// The linear layers `parts` (weight names and output sizes, each
    /// `(out, in_dim)`) stacked along the output axis, with `bias` over all
    /// of them; in 8 bits (`int8`, where the CPU runs them) quantized
    /// straight from the checkpoint's mapping, with no f32 copy made or kept
    /// (four times the 8-bit weight's bytes, and most of the load's time).
    fn load_parts(
        w: &Weights,
        parts: &[(&str, usize)],
        in_dim: usize,
        bias: Tensor,
        int8: bool,
    ) -> Result<Self> {
        let out_dim = parts.iter().map(|(_, rows)| rows).sum();
        if int8 && int8::available() {
            let q = lend_f32(w, parts, in_dim, &[], &mut |views| {
                // Output column `c` is a row of the part it falls in.
                let mut starts = Vec::with_capacity(views.len());
                let mut at = 0;
                for (_, rows) in parts {
                    starts.push(at);
                    at += rows;
                }
                let column = |c: usize| {
                    let p = starts.partition_point(|&s| s <= c) - 1;
                    let r = c - starts[p];
                    &views[p][r * in_dim..(r + 1) * in_dim]
                };
                Ok(int8::Int8Weight::from_columns(in_dim, out_dim, column))
            })?;
            if let Some(q) = q {
                return Ok(Self {
                    wt: None,
                    in_dim,
                    out_dim,
                    bias,
                    int8: Some(q),
                });
            }
        }
        Ok(Self {
            wt: Some(w.transposed(parts, in_dim)?),
            in_dim,
            out_dim,
            bias,
            int8: None,
        })
    }

    /// Quantizes the weight to 8 bits for [`Proj::matmul`] (`on`), or drops the
    /// quantized copy. Returns whether the 8-bit product is in use.
    fn set_int8(&mut self, on: bool) -> Result<bool> {
        let Some(wt) = &self.wt else {
            // Loaded in 8 bits only: it stays so (its f32 weight was never kept).
            return if on {
                Ok(true)
            } else {
                Err(Error::InvalidSetting(
                    "this CLIP tower was loaded in 8 bits: load it again for f32".into(),
                ))
            };
        };
        if !on || !int8::available() {
            self.int8 = None;
            return Ok(false);
        }
        if self.int8.is_none() {
            let (k, n) = wt.dims2()?;
            // Quantized where the weight lies, not from a copy of it.
            let (storage, layout) = wt.storage_and_layout();
            self.int8 = match &*storage {
                candle_core::Storage::Cpu(cpu) => {
                    int8::Int8Weight::new(ops::slice(cpu, layout, "8-bit quantization")?, k, n)
                }
                _ => None,
            };
        }
        Ok(self.int8.is_some())
    }

    /// The layer in `dtype` (f32, f16, bf16). An 8-bit layer has no weight
    /// to convert: an error.
    fn to_dtype(&self, dtype: DType) -> Result<Self> {
        let (Some(wt), None) = (&self.wt, &self.int8) else {
            return Err(Error::InvalidSetting(
                "an 8-bit CLIP layer cannot change type: load it in f32".into(),
            ));
        };
        Ok(Self {
            wt: Some(wt.to_dtype(dtype)?),
            in_dim: self.in_dim,
            out_dim: self.out_dim,
            bias: self.bias.to_dtype(dtype)?,
            int8: None,
        })
    }

    /// `x`, `(…, in)`, as contiguous `(rows, in)`.
    fn rows(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let in_dim = self.in_dim;
        x.reshape((x.elem_count() / in_dim.max(1), in_dim))?
            .contiguous()
    }

    /// The shape of the product with `x`, `(…, out)`.
    fn out_shape(&self, x: &Tensor) -> candle_core::Result<Vec<usize>> {
        let mut shape = x.dims().to_vec();
        if let Some(last) = shape.last_mut() {
            *last = self.out_dim;
        }
        Ok(shape)
    }

    /// `x Wᵀ`, without the bias, for `x` of `(…, in)`.
    fn matmul(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let dims = x.dims();
        let (in_dim, out_dim) = (self.in_dim, self.out_dim);
        let rows = x.elem_count() / in_dim.max(1);
        let x = x.reshape((rows, in_dim))?;
        let y = match (&self.int8, &self.wt) {
            (Some(q), _) if ops::applies(&x) => x.contiguous()?.apply_op1_no_bwd(q)?,
            (_, Some(wt)) => x.matmul(wt)?,
            (_, None) => candle_core::bail!("CLIP's 8-bit layers take f32 on the CPU"),
        };
        let mut shape = dims.to_vec();
        if let Some(last) = shape.last_mut() {
            *last = out_dim;
        }
        y.reshape(shape)
    }

    /// `act(x Wᵀ + b)`.
    fn forward_act(&self, x: &Tensor, act: Option<Activation>) -> candle_core::Result<Tensor> {
        if let (Some(w), true) = (&self.int8, ops::applies(x)) {
            let quick = act == Some(Activation::QuickGelu);
            let y = self
                .rows(x)?
                .apply_op2_no_bwd(&self.bias, &int8::Fused { w, quick })?
                .reshape(self.out_shape(x)?)?;
            return match act {
                Some(a) if !quick => a.apply(&y),
                _ => Ok(y),
            };
        }
        let y = self.matmul(x)?;
        if ops::applies(&y) {
            return ops::bias_act(&y, &self.bias, act);
        }
        let y = y.broadcast_add(&self.bias)?;
        match act {
            Some(a) => a.apply(&y),
            None => Ok(y),
        }
    }

    /// `x + (h Wᵀ + b)`: the layer's output added to the residual stream `x`.
    fn forward_residual(&self, x: &Tensor, h: &Tensor) -> candle_core::Result<Tensor> {
        if let (Some(w), true) = (&self.int8, ops::applies(h) && ops::applies(x)) {
            let shape = self.out_shape(h)?;
            if x.dims() != shape.as_slice() {
                candle_core::bail!("residual of {:?} and {shape:?}", x.dims());
            }
            return self
                .rows(h)?
                .apply_op3_no_bwd(
                    &self.bias,
                    &x.contiguous()?,
                    &int8::Fused { w, quick: false },
                )?
                .reshape(shape);
        }
        let y = self.matmul(h)?;
        if ops::applies(&y) && ops::applies(x) {
            return ops::bias_residual(x, &y, &self.bias);
        }
        x + y.broadcast_add(&self.bias)?
    }
}

/// `f` lent the f32 values of the weights `parts` (names and rows, each
/// `rows × inn`) all at once, each read in place where the checkpoint
/// allows ([`Weights::with_f32`]); `held` are those lent so far.
fn lend_f32<R>(
    w: &Weights,
    parts: &[(&str, usize)],
    inn: usize,
    held: &[&[f32]],
    f: &mut dyn FnMut(&[&[f32]]) -> Result<R>,
) -> Result<R> {
    match parts.split_first() {
        None => f(held),
        Some((&(name, rows), rest)) => w.with_f32(&[rows, inn], name, |v| {
            let mut more: Vec<&[f32]> = held.to_vec();
            more.push(v);
            lend_f32(w, rest, inn, &more, f)
        }),
    }
}

/// One `CLIPEncoderLayer`: pre-LayerNorm attention and MLP, each with a residual.
struct Layer {
    norm1: LayerNorm,
    /// `q_proj`, `k_proj` and `v_proj` stacked into one `(hidden, 3·hidden)` matmul.
    qkv: Proj,
    out: Proj,
    norm2: LayerNorm,
    fc1: Proj,
    fc2: Proj,
}

/// `CLIPEncoder`, shared by both towers.
struct Encoder {
    layers: Vec<Layer>,
    heads: usize,
    act: Activation,
    /// `head_dim^-0.5`, applied to the scores as the reference does.
    scale: f64,
}

/// An encoder's sizes, as either tower's config gives them.
struct EncoderShape {
    layers: usize,
    hidden: usize,
    intermediate: usize,
    heads: usize,
    act: Activation,
    eps: f64,
}

impl Encoder {
    /// The encoder under `w`, its linear layers in 8 bits straight from the
    /// checkpoint when `int8` (see [`Proj::load_parts`]).
    fn load(w: &Weights, shape: EncoderShape, int8: bool) -> Result<Self> {
        let EncoderShape {
            layers,
            hidden,
            intermediate,
            heads,
            act,
            eps,
        } = shape;
        let mut out = Vec::with_capacity(layers);
        for i in 0..layers {
            let l = w.pp(format!("layers.{i}"));
            let a = l.pp("self_attn");
            let names = ["q_proj", "k_proj", "v_proj"];
            let biases = names
                .iter()
                .map(|name| a.pp(name).get(&[hidden], "bias"))
                .collect::<Result<Vec<_>>>()?;
            let qkv = Proj::load_parts(
                &a,
                &[
                    ("q_proj.weight", hidden),
                    ("k_proj.weight", hidden),
                    ("v_proj.weight", hidden),
                ],
                hidden,
                Tensor::cat(&biases, 0)?,
                int8,
            )?;
            let proj = |w: &Weights, inn: usize, out: usize| {
                Proj::load_parts(w, &[("weight", out)], inn, w.get(&[out], "bias")?, int8)
            };
            out.push(Layer {
                norm1: LayerNorm::load(&l.pp("layer_norm1"), hidden, eps)?,
                qkv,
                out: proj(&a.pp("out_proj"), hidden, hidden)?,
                norm2: LayerNorm::load(&l.pp("layer_norm2"), hidden, eps)?,
                fc1: proj(&l.pp("mlp.fc1"), hidden, intermediate)?,
                fc2: proj(&l.pp("mlp.fc2"), intermediate, hidden)?,
            });
        }
        Ok(Self {
            layers: out,
            heads,
            act,
            scale: ((hidden / heads) as f64).powf(-0.5),
        })
    }

    /// `(batch, seq, hidden)` through every layer; `bias` is added to the attention
    /// scores (the text tower's causal mask).
    /// Runs the linear layers in 8 bits (`on`) or f32. Returns whether every layer
    /// took 8 bits (not on a CPU without AVX-512 VNNI or AVX-VNNI).
    fn set_int8(&mut self, on: bool) -> Result<bool> {
        let mut all = true;
        for l in &mut self.layers {
            for p in [&mut l.qkv, &mut l.out, &mut l.fc1, &mut l.fc2] {
                all &= p.set_int8(on)?;
            }
        }
        Ok(all)
    }

    /// The encoder in `dtype`; see [`Proj::to_dtype`].
    fn to_dtype(&self, dtype: DType) -> Result<Self> {
        let layers = self
            .layers
            .iter()
            .map(|l| {
                Ok(Layer {
                    norm1: l.norm1.to_dtype(dtype)?,
                    qkv: l.qkv.to_dtype(dtype)?,
                    out: l.out.to_dtype(dtype)?,
                    norm2: l.norm2.to_dtype(dtype)?,
                    fc1: l.fc1.to_dtype(dtype)?,
                    fc2: l.fc2.to_dtype(dtype)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            layers,
            heads: self.heads,
            act: self.act,
            scale: self.scale,
        })
    }

    /// Whether every linear layer runs in 8 bits.
    fn all_int8(&self) -> bool {
        self.layers.iter().all(|l| {
            [&l.qkv, &l.out, &l.fc1, &l.fc2]
                .iter()
                .all(|p| p.int8.is_some())
        })
    }

    fn forward(&self, x: &Tensor, bias: Option<&Tensor>) -> candle_core::Result<Tensor> {
        let hidden = x.dim(D::Minus1)?;
        let mut x = x.clone();
        for l in &self.layers {
            let h = l.norm1.forward(&x)?;
            let qkv = l.qkv.matmul(&h)?;
            let y = if bias.is_none() && ops::applies(&qkv) {
                ops::attention(&qkv, &l.qkv.bias, self.heads, self.scale)?
            } else {
                let qkv = qkv.broadcast_add(&l.qkv.bias)?;
                let q = split_heads(&qkv.narrow(D::Minus1, 0, hidden)?, self.heads)?;
                let k = split_heads(&qkv.narrow(D::Minus1, hidden, hidden)?, self.heads)?;
                let v = split_heads(&qkv.narrow(D::Minus1, 2 * hidden, hidden)?, self.heads)?;
                merge_heads(&attention(&q, &k, &v, Some(self.scale), bias)?)?
            };
            x = l.out.forward_residual(&x, &y)?;
            let h = l.norm2.forward(&x)?;
            let h = l.fc1.forward_act(&h, Some(self.act))?;
            x = l.fc2.forward_residual(&x, &h)?;
        }
        Ok(x)
    }
}

/// A whole CLIP checkpoint: both towers, the tokenizer, the image preprocessing and
/// the learned temperature.
pub struct Clip {
    /// `None` in a CLIP loaded for its words alone ([`Clip::load_words`]).
    vision: Option<ClipVision>,
    pub text: ClipText,
    pub tokenizer: ClipTokenizer,
    pub preprocess: PreprocessConfig,
    /// `logit_scale` as stored (the log of the temperature's inverse).
    logit_scale: f32,
    cfg: ClipConfig,
    dir: PathBuf,
}

impl Clip {
    /// Loads the CLIP checkpoint in `dir`: `config.json`, `tokenizer.json`, the
    /// weights, and `preprocessor_config.json` if present (CLIP's defaults if not).
    pub fn load(dir: &Path) -> Result<Self> {
        Self::load_as(dir, VisionPrecision::F32)
    }

    /// [`Clip::load`] with both towers' encoders at `precision`
    /// ([`ClipVision::load_as`], [`ClipText::load_as`]).
    pub fn load_as(dir: &Path, precision: VisionPrecision) -> Result<Self> {
        Self::load_towers(dir, precision, true)
    }

    /// [`Clip::load_as`] without the vision tower: what scores pictures read
    /// elsewhere (a GPU) against words needs the text tower alone, and the
    /// vision tower is most of the weights (88 of ViT-B/32's 151 million).
    /// Encoding frames with it is an error.
    pub fn load_words(dir: &Path, precision: VisionPrecision) -> Result<Self> {
        Self::load_towers(dir, precision, false)
    }

    fn load_towers(dir: &Path, precision: VisionPrecision, vision: bool) -> Result<Self> {
        let (cfg, preprocess) = configs(dir)?;
        let tokenizer = ClipTokenizer::load(&dir.join("tokenizer.json"), &cfg.text_config)?;
        let w = Weights::open_dir(dir)?;
        let logit_scale = w.get(&[], "logit_scale")?.to_scalar::<f32>()?;
        Ok(Self {
            vision: if vision {
                Some(ClipVision::load_as(&w, &cfg, precision)?)
            } else {
                None
            },
            text: ClipText::load_as(&w, &cfg, precision)?,
            tokenizer,
            preprocess,
            logit_scale,
            cfg,
            dir: dir.to_path_buf(),
        })
    }

    pub fn config(&self) -> &ClipConfig {
        &self.cfg
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The vision tower; an error for a CLIP loaded without it.
    pub fn vision(&self) -> Result<&ClipVision> {
        self.vision.as_ref().ok_or_else(|| self.no_vision())
    }

    pub fn vision_mut(&mut self) -> Result<&mut ClipVision> {
        let missing = self.no_vision();
        self.vision.as_mut().ok_or(missing)
    }

    /// Whether it holds its vision tower ([`Clip::load_words`] does not).
    pub fn has_vision(&self) -> bool {
        self.vision.is_some()
    }

    fn no_vision(&self) -> Error {
        Error::InvalidSetting(format!(
            "the CLIP of {} was loaded without its vision tower",
            self.dir.display()
        ))
    }

    /// `exp(logit_scale)`, the factor on cosine similarities.
    pub fn logit_scale(&self) -> f32 {
        self.logit_scale.exp()
    }

    /// Preprocesses and encodes frames in one batch.
    pub fn encode_images(&self, images: &[RgbImage]) -> Result<VisionOutput> {
        if images.is_empty() {
            return Err(Error::InvalidSetting("no images to encode".to_string()));
        }
        let vision = self.vision()?;
        let pixels = preprocess::preprocess(&self.preprocess, images, &Device::Cpu)?;
        vision.forward(&pixels)
    }

    /// Tokenises and encodes prompts in one batch.
    pub fn encode_texts(&self, prompts: &[&str]) -> Result<TextOutput> {
        if prompts.is_empty() {
            return Err(Error::InvalidSetting("no prompts to encode".to_string()));
        }
        let ids = self.tokenizer.encode_batch(prompts, &Device::Cpu)?;
        self.text.forward(&ids)
    }

    /// transformers' `logits_per_image`: `(images, texts)` cosine similarities of
    /// the projected embeddings, times [`Clip::logit_scale`].
    pub fn similarity(&self, image_embeds: &Tensor, text_embeds: &Tensor) -> Result<Tensor> {
        similarity(image_embeds, text_embeds, self.logit_scale())
    }
}

/// Frames encoded by a vision tower, as f32 rows whatever device and type
/// computed them: what the features are made of.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Encoded {
    /// `pooler_output`, one row per frame.
    pub pooled: Vec<Vec<f32>>,
    /// `image_embeds`, one row per frame.
    pub projected: Vec<Vec<f32>>,
    /// Each frame's last-layer patch tokens, flattened (`patches × hidden`);
    /// empty unless asked for.
    pub patches: Vec<Vec<f32>>,
}

/// What reads frames for the features: CLIP in this process (the CPU, or a
/// GPU in a `cuda` build: [`ClipFrames`]), or its vision tower in a GPU
/// helper ([`crate::neural::helper::HelperFrames`]). Each gives the same
/// rows for the same frames within its arithmetic.
pub trait FrameEncoder: Send + Sync {
    /// The checkpoint's configuration.
    fn config(&self) -> &ClipConfig;
    /// The preprocessing it applies.
    fn preprocessing(&self) -> &PreprocessConfig;
    /// `f32`, `int8`, `f16` or `bf16`: features made in another arithmetic
    /// are another model's, and are cached apart.
    fn arithmetic(&self) -> &'static str;
    /// Encodes frames in one batch; their patch tokens too with `patches`.
    fn encode(&self, images: &[RgbImage], patches: bool) -> Result<Encoded>;

    /// The side of the square frames it reads (CLIP's resize, centre
    /// cropped).
    fn side(&self) -> usize {
        self.preprocessing().shortest_edge.max(1)
    }
}

/// `images` through `vision`, preprocessed onto `device`, as rows.
fn encode_rows(
    vision: &ClipVision,
    pre: &PreprocessConfig,
    device: &Device,
    images: &[RgbImage],
    patches: bool,
) -> Result<Encoded> {
    if images.is_empty() {
        return Err(Error::InvalidSetting("no images to encode".to_string()));
    }
    let v = vision.forward(&preprocess::preprocess(pre, images, device)?)?;
    let rows =
        |t: &Tensor| -> Result<Vec<Vec<f32>>> { Ok(t.to_dtype(DType::F32)?.to_vec2::<f32>()?) };
    Ok(Encoded {
        pooled: rows(&v.pooled)?,
        projected: rows(&v.projected)?,
        patches: if patches {
            rows(&v.patch_tokens.flatten_from(1)?)?
        } else {
            Vec::new()
        },
    })
}

/// The name of a vision tower's arithmetic, as [`FrameEncoder::arithmetic`]
/// gives it.
fn arithmetic_of(vision: &ClipVision) -> &'static str {
    match (vision.precision(), vision.dtype()) {
        (VisionPrecision::Int8, _) => "int8",
        (_, DType::F16) => "f16",
        (_, DType::BF16) => "bf16",
        _ => "f32",
    }
}

impl FrameEncoder for Clip {
    fn config(&self) -> &ClipConfig {
        &self.cfg
    }

    fn preprocessing(&self) -> &PreprocessConfig {
        &self.preprocess
    }

    fn arithmetic(&self) -> &'static str {
        // A CLIP without its vision tower reads no frames, so keys none.
        self.vision.as_ref().map_or("none", arithmetic_of)
    }

    fn encode(&self, images: &[RgbImage], patches: bool) -> Result<Encoded> {
        encode_rows(
            self.vision()?,
            &self.preprocess,
            &Device::Cpu,
            images,
            patches,
        )
    }
}

/// CLIP's vision tower alone, with its preprocessing, on a candle device in
/// f32, f16 or bf16: what reads a video's frames on a GPU. (The text tower
/// runs once per vocabulary and its results are kept; it stays with the
/// CPU's [`Clip`].) The pixels are made on the CPU and copied over, so both
/// see the same input.
pub struct ClipFrames {
    vision: ClipVision,
    preprocess: PreprocessConfig,
    cfg: ClipConfig,
    device: Device,
}

impl ClipFrames {
    /// The vision tower of the checkpoint in `dir` on `device` in `dtype`.
    pub fn load(dir: &Path, device: &Device, dtype: DType) -> Result<Self> {
        let (cfg, preprocess) = configs(dir)?;
        let w = Weights::open_dir(dir)?.on(device);
        let mut vision = ClipVision::load_as(&w, &cfg, VisionPrecision::F32)?;
        if dtype != DType::F32 {
            vision = vision.to_dtype(dtype)?;
        }
        Ok(Self {
            vision,
            preprocess,
            cfg,
            device: device.clone(),
        })
    }
}

/// A CLIP checkpoint's `config.json` and its `preprocessor_config.json`
/// (CLIP's defaults for its image size where there is none).
pub fn configs(dir: &Path) -> Result<(ClipConfig, PreprocessConfig)> {
    let cfg = ClipConfig::load(&dir.join("config.json"))?;
    let preprocess = PreprocessConfig::load_or_default(
        &dir.join("preprocessor_config.json"),
        cfg.vision_config.image_size,
    )?;
    Ok((cfg, preprocess))
}

impl FrameEncoder for ClipFrames {
    fn config(&self) -> &ClipConfig {
        &self.cfg
    }

    fn preprocessing(&self) -> &PreprocessConfig {
        &self.preprocess
    }

    fn arithmetic(&self) -> &'static str {
        arithmetic_of(&self.vision)
    }

    fn encode(&self, images: &[RgbImage], patches: bool) -> Result<Encoded> {
        encode_rows(
            &self.vision,
            &self.preprocess,
            &self.device,
            images,
            patches,
        )
    }
}

/// `scale · normalise(image_embeds) · normalise(text_embeds)ᵀ`, `(images, texts)`,
/// each row L2-normalised as transformers does it (`x / ‖x‖`).
pub fn similarity(image_embeds: &Tensor, text_embeds: &Tensor, scale: f32) -> Result<Tensor> {
    let (_, di) = image_embeds.dims2()?;
    let (_, dt) = text_embeds.dims2()?;
    if di != dt {
        return Err(Error::InvalidSetting(format!(
            "image embeddings are {di} wide and text embeddings {dt}: not the same model"
        )));
    }
    let unit = |x: &Tensor| -> candle_core::Result<Tensor> {
        x.broadcast_div(&x.sqr()?.sum_keepdim(1)?.sqrt()?)
    };
    let sims = unit(image_embeds)?.matmul(&unit(text_embeds)?.t()?)?;
    Ok((sims * f64::from(scale))?)
}
