//! Fused CPU kernels for the encoder's layers, f32 only. Each replaces a chain of
//! candle ops that would each take a pass over the tensor and a fresh allocation:
//!
//! - [`attention`]: the attention projections' bias, the split into heads, the
//!   scaled scores, softmax and the weighted sum of values, straight from the fused
//!   `q|k|v` matmul's output into merged heads. candle's batched matmuls over
//!   `batch × heads` tiny matrices, the transposes and copies cost more than the
//!   arithmetic (a tenth of a ViT-B/32 layer).
//! - [`bias_act`]: a linear layer's bias and the MLP's activation in one pass.
//! - [`bias_residual`]: a linear layer's bias and the residual sum in one pass.
//!
//! The arithmetic is the reference's, in its order (`x + (y + b)`, scores scaled
//! after the dot product), so the results stay within rounding of transformers'.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::config::Activation;
use crate::neural::kernels;

/// Whether the fused kernels can take `x`: f32 on the CPU.
pub(super) fn applies(x: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == candle_core::DType::F32
}

/// A contiguous f32 slice of a storage, or an error naming the op.
pub(super) fn slice<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> candle_core::Result<&'a [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((a, b))) => Ok(&v[a..b]),
        _ => candle_core::bail!("{op} takes contiguous f32 tensors"),
    }
}

/// Rows handed to one rayon task: enough work that a task outweighs its hand-over.
fn rows_per_task(width: usize) -> usize {
    ((1 << 14) / width.max(1)).max(1)
}

/// `act(y + b)` over the rows of `y` (`(…, n)`), `b` of `n`. `act` is applied here
/// only for quick GELU (the vision towers' activation); others go through candle.
pub(super) fn bias_act(
    y: &Tensor,
    b: &Tensor,
    act: Option<Activation>,
) -> candle_core::Result<Tensor> {
    let quick = act == Some(Activation::QuickGelu);
    let out = y.contiguous()?.apply_op2_no_bwd(b, &BiasAct { quick })?;
    match act {
        Some(a) if !quick => a.apply(&out),
        _ => Ok(out),
    }
}

struct BiasAct {
    quick: bool,
}

impl CustomOp2 for BiasAct {
    fn name(&self) -> &'static str {
        "bias-act"
    }

    fn cpu_fwd(
        &self,
        ys: &CpuStorage,
        yl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let y = slice(ys, yl, self.name())?;
        let b = slice(bs, bl, self.name())?;
        let n = b.len();
        if n == 0 || y.len() % n != 0 {
            candle_core::bail!("bias of {n} for rows of {:?}", yl.shape());
        }
        let mut out = vec![0f32; y.len()];
        let chunk = rows_per_task(n) * n;
        out.par_chunks_mut(chunk)
            .zip(y.par_chunks(chunk))
            .for_each(|(o, y)| {
                for (o, y) in o.chunks_exact_mut(n).zip(y.chunks_exact(n)) {
                    for ((o, &y), &b) in o.iter_mut().zip(y).zip(b) {
                        let x = y + b;
                        // transformers' quick_gelu, `x · σ(1.702 x)`.
                        *o = if self.quick {
                            x / (1.0 + (-1.702 * x).exp())
                        } else {
                            x
                        };
                    }
                }
            });
        Ok((CpuStorage::F32(out), yl.shape().clone()))
    }
}

/// `x + (y + b)`: a residual stream `x` plus a linear layer's output `y` and bias
/// `b`, `x` and `y` of one shape `(…, n)`.
pub(super) fn bias_residual(x: &Tensor, y: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
    if x.dims() != y.dims() {
        candle_core::bail!("residual of {:?} and {:?}", x.dims(), y.dims());
    }
    x.contiguous()?
        .apply_op3_no_bwd(&y.contiguous()?, b, &BiasResidual)
}

struct BiasResidual;

impl CustomOp3 for BiasResidual {
    fn name(&self) -> &'static str {
        "bias-residual"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ys: &CpuStorage,
        yl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = slice(xs, xl, self.name())?;
        let y = slice(ys, yl, self.name())?;
        let b = slice(bs, bl, self.name())?;
        let n = b.len();
        if n == 0 || x.len() % n != 0 || x.len() != y.len() {
            candle_core::bail!("bias of {n} for rows of {:?}", xl.shape());
        }
        let mut out = vec![0f32; x.len()];
        let chunk = rows_per_task(n) * n;
        out.par_chunks_mut(chunk)
            .zip(x.par_chunks(chunk).zip(y.par_chunks(chunk)))
            .for_each(|(o, (x, y))| {
                for ((o, x), y) in o
                    .chunks_exact_mut(n)
                    .zip(x.chunks_exact(n))
                    .zip(y.chunks_exact(n))
                {
                    for (((o, &x), &y), &b) in o.iter_mut().zip(x).zip(y).zip(b) {
                        *o = x + (y + b);
                    }
                }
            });
        Ok((CpuStorage::F32(out), xl.shape().clone()))
    }
}

/// Multi-head self-attention without a mask from the fused projections' output
/// `qkv`, `(batch, seq, 3·hidden)` before their bias `b` (`3·hidden`): softmax(q·kᵀ ·
/// `scale`) · v per head, heads merged, `(batch, seq, hidden)`.
pub(super) fn attention(
    qkv: &Tensor,
    b: &Tensor,
    heads: usize,
    scale: f64,
) -> candle_core::Result<Tensor> {
    qkv.contiguous()?.apply_op2_no_bwd(
        b,
        &Attention {
            heads,
            scale: scale as f32,
        },
    )
}

struct Attention {
    heads: usize,
    scale: f32,
}

impl CustomOp2 for Attention {
    fn name(&self) -> &'static str {
        "clip-attention"
    }

    fn cpu_fwd(
        &self,
        qs: &CpuStorage,
        ql: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let qkv = slice(qs, ql, self.name())?;
        let bias = slice(bs, bl, self.name())?;
        let (batch, seq, width) = ql.shape().dims3()?;
        let d = width / 3;
        if width != 3 * d || bias.len() != width || self.heads == 0 || d % self.heads != 0 {
            candle_core::bail!(
                "attention of {} heads over {:?} with a bias of {}",
                self.heads,
                ql.shape(),
                bias.len()
            );
        }
        let hd = d / self.heads;
        let mut out = vec![0f32; batch * seq * d];
        if seq == 0 {
            return Ok((CpuStorage::F32(out), Shape::from((batch, seq, d))));
        }
        // One task per frame and head; each writes its head's columns of its frame.
        let frames: Vec<(&[f32], &mut [f32])> = qkv
            .chunks_exact(seq * width)
            .zip(out.chunks_exact_mut(seq * d))
            .collect();
        frames.into_par_iter().for_each(|(src, dst)| {
            let mut q = vec![0f32; seq * hd];
            let mut k = vec![0f32; seq * hd];
            let mut v = vec![0f32; seq * hd];
            let mut scores = vec![0f32; seq];
            let mut row = vec![0f32; hd];
            for h in 0..self.heads {
                // The head's q, k and v, biased, each `seq × hd` contiguous.
                for (part, buf) in [&mut q, &mut k, &mut v].into_iter().enumerate() {
                    let col = part * d + h * hd;
                    let bias = &bias[col..col + hd];
                    for (t, dst) in buf.chunks_exact_mut(hd).enumerate() {
                        let s = &src[t * width + col..t * width + col + hd];
                        for ((o, &x), &b) in dst.iter_mut().zip(s).zip(bias) {
                            *o = x + b;
                        }
                    }
                }
                for (i, qi) in q.chunks_exact(hd).enumerate() {
                    for (s, kj) in scores.iter_mut().zip(k.chunks_exact(hd)) {
                        *s = kernels::dot(qi, kj) * self.scale;
                    }
                    kernels::softmax(&mut scores);
                    row.fill(0.0);
                    for (&p, vj) in scores.iter().zip(v.chunks_exact(hd)) {
                        for (o, &x) in row.iter_mut().zip(vj) {
                            *o += p * x;
                        }
                    }
                    dst[i * d + h * hd..i * d + (h + 1) * hd].copy_from_slice(&row);
                }
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((batch, seq, d))))
    }
}
