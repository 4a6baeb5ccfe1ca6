//! The small layers every model here is built from. They are our own rather than
//! candle-nn's so that later work can swap their kernels (8-bit weights, both
//! guidance rows in one pass over a weight) and wrap them (LoRA) without touching
//! the models.
//!
//! Everything here is differentiable: candle's fused softmax and layer norms have
//! no backward pass (autograd stops at them without a word), and the adapters are
//! trained through these layers.

use candle_core::{D, DType, Tensor, Var};

use super::weights::Weights;
use crate::Result;

/// `y = x Wᵀ (+ b)`. The weight is kept transposed and contiguous: a matmul
/// against it is faster on CPU than candle's `Linear`, whose transposed view takes a
/// slow path for few rows.
#[derive(Clone, Debug)]
pub struct Linear {
    /// `(in, out)`.
    wt: Tensor,
    bias: Option<Tensor>,
    lora: Option<Lora>,
}

/// A low-rank update beside a frozen weight (Hu et al., "LoRA", 2021):
/// `y += scale · x Aᵀ Bᵀ`. `B` starts at zero, so a fresh one changes nothing.
#[derive(Clone, Debug)]
pub struct Lora {
    /// `(rank, in)`.
    pub a: Var,
    /// `(out, rank)`.
    pub b: Var,
    /// `alpha / rank`.
    pub scale: f64,
}

impl Linear {
    pub fn load(w: &Weights, in_dim: usize, out_dim: usize, bias: bool) -> Result<Self> {
        let wt = w.transposed(&[("weight", out_dim)], in_dim)?;
        let bias = if bias {
            Some(w.get(&[out_dim], "bias")?)
        } else {
            None
        };
        Ok(Self {
            wt,
            bias,
            lora: None,
        })
    }

    /// From a weight laid out as PyTorch stores it, `(out, in)`.
    pub fn from_weight(weight: &Tensor, bias: Option<Tensor>) -> candle_core::Result<Self> {
        Ok(Self {
            wt: weight.t()?.contiguous()?,
            bias,
            lora: None,
        })
    }

    pub fn in_dim(&self) -> usize {
        self.wt.dim(0).unwrap_or(0)
    }

    pub fn out_dim(&self) -> usize {
        self.wt.dim(1).unwrap_or(0)
    }

    /// The weight as PyTorch lays it out, `(out, in)`.
    pub fn weight(&self) -> candle_core::Result<Tensor> {
        self.wt.t()
    }

    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// This layer with `lora` beside its weight.
    pub fn with_lora(&self, lora: Lora) -> Self {
        Self {
            lora: Some(lora),
            ..self.clone()
        }
    }

    /// The layer times `s` (its weight and bias): for inference, where a
    /// product's scale is folded into the layer before it rather than run as
    /// a pass of its own. A LoRA is merged first.
    pub fn scaled(&self, s: f64) -> candle_core::Result<Self> {
        let merged = self.to_device(self.wt.device())?;
        Ok(Self {
            wt: (merged.wt * s)?,
            bias: merged.bias.map(|b| b * s).transpose()?,
            lora: None,
        })
    }

    /// Layers reading the same input, side by side as one (their outputs
    /// one after another): one product instead of one each. For inference
    /// (LoRAs are merged first). Either all have a bias or none.
    pub fn side_by_side(layers: &[Linear]) -> candle_core::Result<Self> {
        let Some(first) = layers.first() else {
            candle_core::bail!("no layers to put side by side");
        };
        let merged = layers
            .iter()
            .map(|l| l.to_device(first.wt.device()))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let wts: Vec<&Tensor> = merged.iter().map(|l| &l.wt).collect();
        let biases: Vec<&Tensor> = merged.iter().filter_map(|l| l.bias.as_ref()).collect();
        let bias = match biases.len() {
            0 => None,
            n if n == merged.len() => Some(Tensor::cat(&biases, 0)?),
            _ => candle_core::bail!("layers with and without a bias side by side"),
        };
        Ok(Self {
            wt: Tensor::cat(&wts, 1)?,
            bias,
            lora: None,
        })
    }

    /// The same layer in `dtype` (the f64 copies gradient checks run on).
    pub fn to_dtype(&self, dtype: DType) -> candle_core::Result<Self> {
        Ok(Self {
            wt: self.wt.to_dtype(dtype)?,
            bias: self.bias.as_ref().map(|b| b.to_dtype(dtype)).transpose()?,
            lora: self.lora.clone(),
        })
    }

    /// The same layer on `device` (weights, bias and any LoRA merged into
    /// the weight: inference only).
    pub fn to_device(&self, device: &candle_core::Device) -> candle_core::Result<Self> {
        let mut wt = self.wt.clone();
        if let Some(l) = &self.lora {
            // (in, out) += scale · Aᵀ Bᵀ
            let delta = (l.a.as_tensor().t()?.matmul(&l.b.as_tensor().t()?)? * l.scale)?;
            let delta = delta.to_dtype(wt.dtype())?;
            wt = (wt + delta)?;
        }
        Ok(Self {
            wt: wt.to_device(device)?,
            bias: self
                .bias
                .as_ref()
                .map(|b| b.to_device(device))
                .transpose()?,
            lora: None,
        })
    }

    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let dims = x.dims();
        let in_dim = dims[dims.len() - 1];
        let rows = x.elem_count() / in_dim.max(1);
        let x2 = x.reshape((rows, in_dim))?;
        let mut y = x2.matmul(&self.wt)?;
        if let Some(l) = &self.lora {
            let low = x2.matmul(&l.a.as_tensor().t()?)?;
            y = (y + (low.matmul(&l.b.as_tensor().t()?)? * l.scale)?)?;
        }
        let y = match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        let mut out = dims.to_vec();
        *out.last_mut()
            .expect("a tensor with at least one dimension") = self.out_dim();
        y.reshape(out)
    }
}

/// T5's RMS norm: scale only, no mean, no bias.
#[derive(Clone, Debug)]
pub struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    pub fn load(w: &Weights, dim: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: w.get(&[dim], "weight")?,
            eps,
        })
    }

    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let var = x.sqr()?.mean_keepdim(D::Minus1)?;
        let x = x.broadcast_div(&(var + self.eps)?.sqrt()?)?;
        x.broadcast_mul(&self.weight)
    }

    pub fn to_dtype(&self, dtype: DType) -> candle_core::Result<Self> {
        Ok(Self {
            weight: self.weight.to_dtype(dtype)?,
            eps: self.eps,
        })
    }
}

/// Layer normalisation with a scale and a bias, over the last axis.
#[derive(Clone, Debug)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    pub fn load(w: &Weights, dim: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: w.get(&[dim], "weight")?,
            bias: w.get(&[dim], "bias")?,
            eps,
        })
    }

    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let mean = x.mean_keepdim(D::Minus1)?;
        let centred = x.broadcast_sub(&mean)?;
        let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
        centred
            .broadcast_div(&(var + self.eps)?.sqrt()?)?
            .broadcast_mul(&self.weight)?
            .broadcast_add(&self.bias)
    }

    pub fn to_dtype(&self, dtype: DType) -> candle_core::Result<Self> {
        Ok(Self {
            weight: self.weight.to_dtype(dtype)?,
            bias: self.bias.to_dtype(dtype)?,
            eps: self.eps,
        })
    }

    /// [`LayerNorm::forward`] as one fused kernel (candle-nn's), for
    /// inference: it has no backward pass, and on a GPU it is one launch
    /// instead of seven.
    pub fn forward_fused(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        candle_nn::ops::layer_norm(&x.contiguous()?, &self.weight, &self.bias, self.eps as f32)
    }

    /// The same norm on `device`.
    pub fn to_device(&self, device: &candle_core::Device) -> candle_core::Result<Self> {
        Ok(Self {
            weight: self.weight.to_device(device)?,
            bias: self.bias.to_device(device)?,
            eps: self.eps,
        })
    }
}

/// Softmax over the last axis. The maximum taken out for range is detached: the
/// result does not depend on it, and its gradient would only add rounding.
pub fn softmax(x: &Tensor) -> candle_core::Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
}

/// Rows of `table` for `ids` (any shape of u32 ids); the result has the ids' shape
/// plus the table's width.
pub fn embedding(table: &Tensor, ids: &Tensor) -> candle_core::Result<Tensor> {
    let width = table.dim(1)?;
    let mut shape = ids.dims().to_vec();
    shape.push(width);
    let flat = ids.flatten_all()?.to_dtype(DType::U32)?;
    table.index_select(&flat, 0)?.reshape(shape)
}

/// Scaled-dot-product attention over `(batch, heads, seq, head_dim)` tensors, with an
/// additive bias broadcast over the scores (positions, masks).
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: Option<f64>,
    bias: Option<&Tensor>,
) -> candle_core::Result<Tensor> {
    let mut scores = q.contiguous()?.matmul(&k.t()?.contiguous()?)?;
    if let Some(s) = scale {
        scores = (scores * s)?;
    }
    if let Some(b) = bias {
        scores = scores.broadcast_add(b)?;
    }
    let probs = softmax(&scores)?;
    probs.matmul(&v.contiguous()?)
}

/// `(batch, seq, heads·head_dim)` → `(batch, heads, seq, head_dim)`.
pub fn split_heads(x: &Tensor, heads: usize) -> candle_core::Result<Tensor> {
    let (b, s, d) = x.dims3()?;
    x.reshape((b, s, heads, d / heads))?.transpose(1, 2)
}

/// The inverse of [`split_heads`].
pub fn merge_heads(x: &Tensor) -> candle_core::Result<Tensor> {
    let (b, h, s, d) = x.dims4()?;
    x.transpose(1, 2)?.reshape((b, s, h * d))
}
