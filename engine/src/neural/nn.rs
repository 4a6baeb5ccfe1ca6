//! The small layers every model here is built from. They are our own rather than
//! candle-nn's so that later work can swap their kernels (8-bit weights, both
//! guidance rows in one pass over a weight) and wrap them (LoRA) without touching
//! the models.

use candle_core::{D, DType, Tensor};

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
}

impl Linear {
    pub fn load(w: &Weights, in_dim: usize, out_dim: usize, bias: bool) -> Result<Self> {
        let weight = w.get(&[out_dim, in_dim], "weight")?;
        let bias = if bias {
            Some(w.get(&[out_dim], "bias")?)
        } else {
            None
        };
        Ok(Self::from_weight(&weight, bias)?)
    }

    /// From a weight laid out as PyTorch stores it, `(out, in)`.
    pub fn from_weight(weight: &Tensor, bias: Option<Tensor>) -> candle_core::Result<Self> {
        Ok(Self {
            wt: weight.t()?.contiguous()?,
            bias,
        })
    }

    pub fn out_dim(&self) -> usize {
        self.wt.dim(1).unwrap_or(0)
    }

    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let dims = x.dims();
        let in_dim = dims[dims.len() - 1];
        let rows = x.elem_count() / in_dim.max(1);
        let y = x.reshape((rows, in_dim))?.matmul(&self.wt)?;
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
    let probs = candle_nn::ops::softmax_last_dim(&scores)?;
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
