//! MusicGen's decoder as candle tensors: differentiable (every op has a backward
//! pass) and on any candle device, for training the adapters and for devices other
//! than the CPU. The CPU inference path stays [`crate::neural::decoder::Decoder`],
//! which reads each weight once per step from plain buffers; the two are tested
//! equal.
//!
//! The math is transformers' `MusicgenForCausalLM` (Copet et al., "Simple and
//! Controllable Music Generation", 2023): a pre-LayerNorm transformer over the sum
//! of the codebooks' embeddings plus sinusoidal positions, causal self-attention,
//! cross-attention to the conditioning states, a GELU feed-forward, one LM head per
//! codebook. Checkpoint paths are the same (`model.decoder.layers.{i}.…`,
//! `lm_heads.{k}`). Two inputs serve the VidMusician method: the cross-attention
//! reads any sequence of states (text, visual, or both joined), and each layer can
//! take an additive input before its self-attention (in-attention).
//!
//! It runs whole sequences from position 0 (teacher forcing), with no cache.

use candle_core::{D, DType, Device, Tensor};

use crate::neural::config::DecoderConfig;
use crate::neural::decoder::sinusoids;
use crate::neural::nn::{LayerNorm, Linear, embedding, merge_heads, softmax, split_heads};
use crate::neural::weights::Weights;
use crate::{Error, Result};

const LN_EPS: f64 = 1e-5;

#[derive(Clone)]
struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
}

impl Attention {
    fn load(w: &Weights, h: usize) -> Result<Self> {
        Ok(Self {
            q: Linear::load(&w.pp("q_proj"), h, h, false)?,
            k: Linear::load(&w.pp("k_proj"), h, h, false)?,
            v: Linear::load(&w.pp("v_proj"), h, h, false)?,
            out: Linear::load(&w.pp("out_proj"), h, h, false)?,
        })
    }

    fn to_dtype(&self, dtype: DType) -> Result<Self> {
        Ok(Self {
            q: self.q.to_dtype(dtype)?,
            k: self.k.to_dtype(dtype)?,
            v: self.v.to_dtype(dtype)?,
            out: self.out.to_dtype(dtype)?,
        })
    }

    /// `x` `(batch, len, hidden)` attends to `kv` `(batch, keys, hidden)`, with
    /// `bias` added to the scores.
    fn forward(&self, x: &Tensor, kv: &Tensor, heads: usize, bias: &Tensor) -> Result<Tensor> {
        let hd = x.dim(D::Minus1)? / heads;
        let q = split_heads(&self.q.forward(x)?, heads)?.contiguous()?;
        let k = split_heads(&self.k.forward(kv)?, heads)?;
        let v = split_heads(&self.v.forward(kv)?, heads)?.contiguous()?;
        let scores = (q.matmul(&k.t()?.contiguous()?)? * (1.0 / (hd as f64).sqrt()))?;
        let probs = softmax(&scores.broadcast_add(bias)?)?;
        Ok(self.out.forward(&merge_heads(&probs.matmul(&v)?)?)?)
    }
}

#[derive(Clone)]
struct Layer {
    self_norm: LayerNorm,
    self_attn: Attention,
    cross_norm: LayerNorm,
    cross_attn: Attention,
    ff_norm: LayerNorm,
    fc1: Linear,
    fc2: Linear,
}

/// MusicGen's decoder and LM heads; see the module documentation.
#[derive(Clone)]
pub struct MusicgenDecoder {
    /// Per codebook, `(vocab + 1, hidden)`.
    embed: Vec<Tensor>,
    /// `(max_positions, hidden)`.
    positions: Tensor,
    layers: Vec<Layer>,
    norm: LayerNorm,
    heads: Vec<Linear>,
    cfg: DecoderConfig,
}

/// What the decoder reads besides its tokens.
#[derive(Default)]
pub struct Conditioning<'a> {
    /// `(batch, len, hidden)` states for cross-attention, with their mask
    /// `(batch, len)` (1 for a state, 0 for padding). `None` is the
    /// unconditional branch of guidance: zeroed states, whose cross-attention
    /// adds exactly nothing.
    pub cross: Option<(&'a Tensor, &'a Tensor)>,
    /// Per layer, an optional `(batch, len, hidden)` input added to the hidden
    /// state before the layer's self-attention.
    pub layer_inputs: &'a [Option<Tensor>],
}

impl MusicgenDecoder {
    /// Loads from `w` pointing at `decoder` in a MusicGen checkpoint (which holds
    /// `model.decoder.*` and `lm_heads.*`).
    pub fn load(w: &Weights, cfg: &DecoderConfig) -> Result<Self> {
        let h = cfg.hidden_size;
        let d = w.pp("model.decoder");
        let embed = (0..cfg.num_codebooks)
            .map(|k| {
                d.get(
                    &[cfg.vocab_size + 1, h],
                    &format!("embed_tokens.{k}.weight"),
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| {
                let l = d.pp(format!("layers.{i}"));
                Ok(Layer {
                    self_norm: LayerNorm::load(&l.pp("self_attn_layer_norm"), h, LN_EPS)?,
                    self_attn: Attention::load(&l.pp("self_attn"), h)?,
                    cross_norm: LayerNorm::load(&l.pp("encoder_attn_layer_norm"), h, LN_EPS)?,
                    cross_attn: Attention::load(&l.pp("encoder_attn"), h)?,
                    ff_norm: LayerNorm::load(&l.pp("final_layer_norm"), h, LN_EPS)?,
                    fc1: Linear::load(&l.pp("fc1"), h, cfg.ffn_dim, false)?,
                    fc2: Linear::load(&l.pp("fc2"), cfg.ffn_dim, h, false)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let heads = (0..cfg.num_codebooks)
            .map(|k| Linear::load(&w.pp(format!("lm_heads.{k}")), h, cfg.vocab_size, false))
            .collect::<Result<Vec<_>>>()?;
        let positions = Tensor::from_vec(
            sinusoids(cfg.max_position_embeddings, h),
            (cfg.max_position_embeddings, h),
            w.device(),
        )?;
        Ok(Self {
            embed,
            positions,
            layers,
            norm: LayerNorm::load(&d.pp("layer_norm"), h, LN_EPS)?,
            heads,
            cfg: cfg.clone(),
        })
    }

    pub fn config(&self) -> &DecoderConfig {
        &self.cfg
    }

    pub fn device(&self) -> &Device {
        self.positions.device()
    }

    pub fn dtype(&self) -> DType {
        self.positions.dtype()
    }

    /// The same decoder in `dtype` (f64 for gradient checks).
    pub fn to_dtype(&self, dtype: DType) -> Result<Self> {
        let layers = self
            .layers
            .iter()
            .map(|l| {
                Ok(Layer {
                    self_norm: l.self_norm.to_dtype(dtype)?,
                    self_attn: l.self_attn.to_dtype(dtype)?,
                    cross_norm: l.cross_norm.to_dtype(dtype)?,
                    cross_attn: l.cross_attn.to_dtype(dtype)?,
                    ff_norm: l.ff_norm.to_dtype(dtype)?,
                    fc1: l.fc1.to_dtype(dtype)?,
                    fc2: l.fc2.to_dtype(dtype)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            embed: self
                .embed
                .iter()
                .map(|t| t.to_dtype(dtype))
                .collect::<candle_core::Result<_>>()?,
            positions: self.positions.to_dtype(dtype)?,
            layers,
            norm: self.norm.to_dtype(dtype)?,
            heads: self
                .heads
                .iter()
                .map(|l| l.to_dtype(dtype))
                .collect::<candle_core::Result<_>>()?,
            cfg: self.cfg.clone(),
        })
    }

    /// Logits `(batch, codebooks, len, vocab)` for `tokens` `(batch, codebooks,
    /// len)` (u32, the delay pattern already applied) at positions `0..len`.
    pub fn forward(&self, tokens: &Tensor, cond: &Conditioning<'_>) -> Result<Tensor> {
        let (b, k, len) = tokens.dims3()?;
        let h = self.cfg.hidden_size;
        let heads = self.cfg.num_attention_heads;
        if k != self.cfg.num_codebooks || len == 0 {
            return Err(Error::InvalidSetting(format!(
                "the decoder reads {} codebooks, got tokens of shape {:?}",
                self.cfg.num_codebooks,
                tokens.dims()
            )));
        }
        if len > self.cfg.max_position_embeddings {
            return Err(Error::InvalidSetting(format!(
                "a decoder window of {len} steps is longer than the model's {} positions",
                self.cfg.max_position_embeddings
            )));
        }
        let max_token = tokens.max_all()?.to_scalar::<u32>()?;
        if max_token as usize > self.cfg.vocab_size {
            return Err(Error::InvalidSetting(format!(
                "token {max_token} outside the codebooks"
            )));
        }
        if cond.layer_inputs.len() > self.layers.len() {
            return Err(Error::InvalidSetting(format!(
                "{} layer inputs for a decoder of {} layers",
                cond.layer_inputs.len(),
                self.layers.len()
            )));
        }
        let dtype = self.dtype();
        let mut x = self.positions.narrow(0, 0, len)?.unsqueeze(0)?;
        for (cb, table) in self.embed.iter().enumerate() {
            x = x.broadcast_add(&embedding(table, &tokens.narrow(1, cb, 1)?.squeeze(1)?)?)?;
        }
        let causal = causal_bias(len, dtype, self.device())?;
        let cross = match cond.cross {
            Some((states, mask)) => {
                let (sb, _, sh) = states.dims3()?;
                if sb != b || sh != h {
                    return Err(Error::InvalidSetting(format!(
                        "conditioning states of shape {:?} for {b} sequences of width {h}",
                        states.dims()
                    )));
                }
                Some((states, padding_bias(mask, dtype)?))
            }
            None => None,
        };
        for (li, layer) in self.layers.iter().enumerate() {
            if let Some(Some(add)) = cond.layer_inputs.get(li) {
                if add.dims() != [b, len, h] {
                    return Err(Error::InvalidSetting(format!(
                        "layer input {li} of shape {:?}, expected {:?}",
                        add.dims(),
                        [b, len, h]
                    )));
                }
                x = (x + add)?;
            }
            let n = layer.self_norm.forward(&x)?;
            x = (&x + layer.self_attn.forward(&n, &n, heads, &causal)?)?;
            if let Some((states, bias)) = &cross {
                let n = layer.cross_norm.forward(&x)?;
                x = (&x + layer.cross_attn.forward(&n, states, heads, bias)?)?;
            }
            let n = layer.ff_norm.forward(&x)?;
            let f = layer.fc1.forward(&n)?.gelu_erf()?;
            x = (&x + layer.fc2.forward(&f)?)?;
        }
        let n = self.norm.forward(&x)?;
        let logits = self
            .heads
            .iter()
            .map(|head| head.forward(&n))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Tensor::stack(&logits, 1)?)
    }
}

/// `(1, 1, len, len)`: 0 on and below the diagonal, the most negative f32 above.
fn causal_bias(len: usize, dtype: DType, device: &Device) -> Result<Tensor> {
    let v: Vec<f32> = (0..len)
        .flat_map(|q| (0..len).map(move |k| if k <= q { 0.0 } else { f32::MIN }))
        .collect();
    Ok(Tensor::from_vec(v, (1, 1, len, len), device)?.to_dtype(dtype)?)
}

/// `(batch, 1, 1, len)`: 0 where `mask` is 1, the most negative f32 where it is 0.
fn padding_bias(mask: &Tensor, dtype: DType) -> Result<Tensor> {
    Ok(crate::neural::t5::padding_bias(mask)?.to_dtype(dtype)?)
}
