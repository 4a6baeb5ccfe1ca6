//! The EnCodec decoder of MusicGen (32 kHz, mono): residual-quantizer lookup, a
//! SEANet decoder (convolution, 2-layer LSTM, four upsampling stages with residual
//! blocks, ELU) with weight-normed convolutions, trimming padding exactly as
//! transformers does, so `n` code frames give exactly `n × hop` samples.

use candle_core::{Device, Tensor};

use super::config::EncodecConfig;
use super::kernels;
use super::nn::embedding;
use super::weights::Weights;
use crate::Result;

/// A weight-normed convolution's effective weight, `g · v / ‖v‖`, the norm taken over
/// every dimension but the first (PyTorch's `weight_norm` with `dim=0`). Accepts both
/// spellings transformers has saved: `parametrizations.weight.original0/1` and
/// `weight_g/weight_v`.
pub(super) fn weight_normed(w: &Weights, shape: [usize; 3]) -> Result<Tensor> {
    let g_shape = [shape[0], 1, 1];
    let g = w.get_any(&g_shape, &["parametrizations.weight.original0", "weight_g"])?;
    let v = w.get_any(&shape, &["parametrizations.weight.original1", "weight_v"])?;
    let norm = v.sqr()?.sum_keepdim(2)?.sum_keepdim(1)?.sqrt()?;
    Ok(v.broadcast_mul(&g.broadcast_div(&norm)?)?)
}

struct Conv1d {
    /// One `(out, in)` row-major matrix per tap.
    taps: Vec<Vec<f32>>,
    bias: Vec<f32>,
    cin: usize,
    cout: usize,
    kernel: usize,
    dilation: usize,
    /// On a device ([`EncodecDecoder::to_device`]): the weight `(out, in,
    /// kernel)` and the bias `(1, out, 1)` there, run as candle's
    /// convolution; `taps` is then empty.
    dev: Option<(Tensor, Tensor)>,
}

impl Conv1d {
    fn load(w: &Weights, cin: usize, cout: usize, kernel: usize, dilation: usize) -> Result<Self> {
        let w = w.pp("conv");
        let weight = weight_normed(&w, [cout, cin, kernel])?;
        let taps = (0..kernel)
            .map(|j| weight.narrow(2, j, 1)?.flatten_all()?.to_vec1())
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Self {
            taps,
            bias: w.get(&[cout], "bias")?.to_vec1()?,
            cin,
            cout,
            kernel,
            dilation,
            dev: None,
        })
    }

    /// The layer on `device`, its weights as tensors for candle's
    /// convolution.
    fn to_device(&self, device: &Device) -> candle_core::Result<Self> {
        let (cout, cin, k) = (self.cout, self.cin, self.kernel);
        let mut weight = vec![0f32; cout * cin * k];
        for (j, tap) in self.taps.iter().enumerate() {
            for (r, &v) in tap.iter().enumerate() {
                weight[r * k + j] = v;
            }
        }
        let weight = Tensor::from_vec(weight, (cout, cin, k), device)?;
        let bias = Tensor::from_slice(&self.bias, (1, cout, 1), device)?;
        Ok(Self {
            taps: Vec::new(),
            bias: self.bias.clone(),
            cin,
            cout,
            kernel: k,
            dilation: self.dilation,
            dev: Some((weight, bias)),
        })
    }

    /// Stride-1, non-causal: reflect-pad `(k−1)·d` split with the extra sample on the
    /// left, then convolve as one matrix product per tap over the shifted input
    /// (no unfolded copy of the input, which at the audio rate would be hundreds of
    /// megabytes), each tap's product added straight into the output.
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.forward_onto(x, false, None)
    }

    /// [`Conv1d::forward`] of `elu(x)` when `elu`, plus `residual` (the
    /// output's shape), both done as the input is padded and the output
    /// starts rather than in passes of their own over audio-rate activations.
    fn forward_onto(
        &self,
        x: &Tensor,
        elu: bool,
        residual: Option<&Tensor>,
    ) -> candle_core::Result<Tensor> {
        let total = (self.kernel - 1) * self.dilation;
        let right = total / 2;
        let left = total - right;
        let (b, cin, t) = x.dims3()?;
        if cin != self.cin {
            candle_core::bail!("a convolution of {} channels given {cin}", self.cin);
        }
        if let Some((weight, bias)) = &self.dev {
            let x = if elu { x.elu(1.0)? } else { x.clone() };
            let y = reflect_pad(&x, 2, left, right)?
                .conv1d(weight, 0, 1, self.dilation, 1)?
                .broadcast_add(bias)?;
            return match residual {
                Some(r) => r + y,
                None => Ok(y),
            };
        }
        let wide = t + total;
        let xs = if t > left.max(right) {
            let x = x.contiguous()?;
            let (storage, layout) = x.storage_and_layout();
            let candle_core::Storage::Cpu(candle_core::CpuStorage::F32(all)) = &*storage else {
                candle_core::bail!("EnCodec's decoder runs on the CPU in f32");
            };
            let n = b * cin * t;
            let Some(rows) = all.get(layout.start_offset()..layout.start_offset() + n) else {
                candle_core::bail!("an input shorter than its shape");
            };
            padded_rows(rows, t, left, right, elu)
        } else {
            // Shorter than the padding: `reflect_pad`'s own rule for that.
            let x = if elu { x.elu(1.0)? } else { x.clone() };
            reflect_pad(&x, 2, left, right)?.flatten_all()?.to_vec1()?
        };
        let cout = self.cout;
        let mut out = match residual {
            Some(r) => {
                if r.dims() != [b, cout, t] {
                    candle_core::bail!(
                        "a residual of {:?} for an output of {:?}",
                        r.dims(),
                        [b, cout, t]
                    );
                }
                r.flatten_all()?.to_vec1::<f32>()?
            }
            None => vec![0f32; b * cout * t],
        };
        let threads = rayon::current_num_threads();
        let parallelism = if threads > 1 {
            gemm::Parallelism::Rayon(threads)
        } else {
            gemm::Parallelism::None
        };
        for (i, y) in out.chunks_exact_mut(cout * t).enumerate() {
            for (row, bias) in y.chunks_exact_mut(t).zip(&self.bias) {
                row.iter_mut().for_each(|v| *v += bias);
            }
            let xi = &xs[i * cin * wide..(i + 1) * cin * wide];
            for (j, tap) in self.taps.iter().enumerate() {
                let shift = j * self.dilation;
                // SAFETY: `y` is `cout × t` row-major and written only here; the
                // tap is `cout × cin` row-major; the input read is rows `0..cin`
                // of `xi` (`cin × wide`), columns `shift..shift + t`, and
                // `shift + t ≤ wide` as `shift ≤ total`. gemm computes
                // `y ← 1·y + 1·tap·x` with these strides (in elements).
                unsafe {
                    gemm::gemm(
                        cout,
                        t,
                        cin,
                        y.as_mut_ptr(),
                        1,
                        t as isize,
                        true,
                        tap.as_ptr(),
                        1,
                        cin as isize,
                        xi[shift..].as_ptr(),
                        1,
                        wide as isize,
                        1.0f32,
                        1.0f32,
                        false,
                        false,
                        false,
                        parallelism,
                    );
                }
            }
        }
        Tensor::from_vec(out, (b, cout, t), x.device())
    }
}

/// Rows of `t` samples, each reflect-padded by `left` and `right` as
/// [`reflect_pad`] pads a row longer than both, through ELU first when `elu`
/// (as candle's `elu(1.0)`).
fn padded_rows(x: &[f32], t: usize, left: usize, right: usize, elu: bool) -> Vec<f32> {
    use rayon::prelude::*;
    let wide = t + left + right;
    let mut out = vec![0f32; x.len() / t * wide];
    let f = |v: f32| {
        if elu && !v.is_sign_positive() {
            v.exp() - 1.0
        } else {
            v
        }
    };
    out.par_chunks_mut(wide)
        .zip(x.par_chunks(t))
        .for_each(|(o, r)| {
            for (d, s) in o[left..left + t].iter_mut().zip(r) {
                *d = f(*s);
            }
            for i in 1..=left {
                o[left - i] = f(r[i]);
            }
            for i in 0..right {
                o[left + t + i] = f(r[t - 2 - i]);
            }
        });
    out
}

struct ConvTranspose1d {
    /// `(in, out·kernel)`: the weight as one matrix, so the transposed convolution
    /// is a matrix product followed by an overlap-add.
    weight: Tensor,
    bias: Vec<f32>,
    cout: usize,
    kernel: usize,
    stride: usize,
    /// On a device: the bias `(1, out, 1)` there; `weight` is then
    /// `(in, out, kernel)` for candle's transposed convolution.
    dev_bias: Option<Tensor>,
}

/// Input frames per matrix product of a transposed convolution: bounds the
/// intermediate `frames × out·kernel` matrix on long pieces.
const UP_CHUNK: usize = 2048;

impl ConvTranspose1d {
    fn load(w: &Weights, cin: usize, cout: usize, kernel: usize, stride: usize) -> Result<Self> {
        let w = w.pp("conv");
        Ok(Self {
            weight: weight_normed(&w, [cin, cout, kernel])?
                .reshape((cin, cout * kernel))?
                .contiguous()?,
            bias: w.get(&[cout], "bias")?.to_vec1()?,
            cout,
            kernel,
            stride,
            dev_bias: None,
        })
    }

    /// The layer on `device`, for candle's transposed convolution.
    fn to_device(&self, device: &Device) -> candle_core::Result<Self> {
        let cin = self.weight.dim(0)?;
        Ok(Self {
            weight: self
                .weight
                .reshape((cin, self.cout, self.kernel))?
                .to_device(device)?,
            bias: self.bias.clone(),
            cout: self.cout,
            kernel: self.kernel,
            stride: self.stride,
            dev_bias: Some(Tensor::from_slice(&self.bias, (1, self.cout, 1), device)?),
        })
    }

    /// Transposed convolution with the fixed padding `k − s` trimmed, the larger half
    /// from the left: this trim is what makes the output exactly `stride ×` longer.
    /// Each input frame's contribution `xᵀ W` comes from one matrix product per chunk
    /// of frames and is added into the output at `frame · stride`.
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (b, _, t) = x.dims3()?;
        let (k, s, cout) = (self.kernel, self.stride, self.cout);
        let total = k - s;
        let left = total - total / 2;
        let full = (t - 1) * s + k;
        let len = full - total;
        if let Some(bias) = &self.dev_bias {
            return x
                .conv_transpose1d(&self.weight, 0, 0, s, 1, 1)?
                .narrow(2, left, len)?
                .broadcast_add(bias);
        }
        let mut outs = Vec::with_capacity(b);
        for i in 0..b {
            let xt = x.get(i)?.t()?.contiguous()?; // (t, cin)
            let mut y = vec![0f32; cout * len];
            for (co, row) in y.chunks_exact_mut(len).enumerate() {
                row.fill(self.bias[co]);
            }
            let mut start = 0;
            while start < t {
                let n = UP_CHUNK.min(t - start);
                let cols: Vec<f32> = xt
                    .narrow(0, start, n)?
                    .matmul(&self.weight)?
                    .flatten_all()?
                    .to_vec1()?;
                for (f, frame) in cols.chunks_exact(cout * k).enumerate() {
                    let at = (start + f) * s; // position in the untrimmed output
                    for (co, taps) in frame.chunks_exact(k).enumerate() {
                        let row = &mut y[co * len..(co + 1) * len];
                        for (j, v) in taps.iter().enumerate() {
                            // Positions inside the trimmed padding are dropped.
                            if let Some(p) = (at + j).checked_sub(left)
                                && p < len
                            {
                                row[p] += v;
                            }
                        }
                    }
                }
                start += n;
            }
            outs.push(Tensor::from_vec(y, (cout, len), x.device())?);
        }
        Tensor::stack(&outs, 0)
    }
}

pub(super) struct Lstm {
    layers: Vec<LstmLayer>,
}

struct LstmLayer {
    /// `(in, 4·hidden)`, gates in PyTorch's order i, f, g, o.
    w_ih_t: Tensor,
    /// `(4·hidden, hidden)` row-major, for the recurrent matrix-vector products.
    w_hh: Vec<f32>,
    bias: Tensor,
    /// On a device: `(hidden, 4·hidden)` there, the recurrence run as
    /// candle ops a step at a time; `w_hh` is then empty.
    w_hh_t: Option<Tensor>,
}

impl LstmLayer {
    fn to_device(&self, device: &Device) -> candle_core::Result<Self> {
        let four = self.bias.dim(0)?;
        let w_hh = Tensor::from_slice(&self.w_hh, (four, four / 4), &Device::Cpu)?;
        Ok(Self {
            w_ih_t: self.w_ih_t.to_device(device)?,
            w_hh: Vec::new(),
            bias: self.bias.to_device(device)?,
            w_hh_t: Some(w_hh.t()?.contiguous()?.to_device(device)?),
        })
    }

    /// The recurrence over `pre` `(time, 4·hidden)` on its device, from
    /// `state`, which it leaves after the last step: the hidden states
    /// `(time, hidden)`. The arithmetic of [`lstm_recurrence_from`].
    fn recurrence_on_device(
        w_hh_t: &Tensor,
        pre: &Tensor,
        hidden: usize,
        state: &mut LstmState,
    ) -> candle_core::Result<Tensor> {
        let device = pre.device();
        let time = pre.dim(0)?;
        let mut h = Tensor::from_slice(&state.h, (1, hidden), device)?;
        let mut c = Tensor::from_slice(&state.c, (1, hidden), device)?;
        let mut out = Vec::with_capacity(time);
        for t in 0..time {
            let gates = (h.matmul(w_hh_t)? + pre.narrow(0, t, 1)?)?;
            let i = candle_nn::ops::sigmoid(&gates.narrow(1, 0, hidden)?)?;
            let f = candle_nn::ops::sigmoid(&gates.narrow(1, hidden, hidden)?)?;
            let g = gates.narrow(1, 2 * hidden, hidden)?.tanh()?;
            let o = candle_nn::ops::sigmoid(&gates.narrow(1, 3 * hidden, hidden)?)?;
            c = ((f * &c)? + (i * g)?)?;
            h = (o * c.tanh()?)?;
            out.push(h.clone());
        }
        state.h = h.flatten_all()?.to_vec1()?;
        state.c = c.flatten_all()?.to_vec1()?;
        Tensor::cat(&out, 0)
    }
}

impl Lstm {
    pub(super) fn load(w: &Weights, dim: usize, layers: usize) -> Result<Self> {
        let w = w.pp("lstm");
        let layers = (0..layers)
            .map(|l| {
                let w_ih = w.get(&[4 * dim, dim], &format!("weight_ih_l{l}"))?;
                let w_hh = w.get(&[4 * dim, dim], &format!("weight_hh_l{l}"))?;
                let b_ih = w.get(&[4 * dim], &format!("bias_ih_l{l}"))?;
                let b_hh = w.get(&[4 * dim], &format!("bias_hh_l{l}"))?;
                Ok(LstmLayer {
                    w_ih_t: w_ih.t()?.contiguous()?,
                    w_hh: w_hh.flatten_all()?.to_vec1()?,
                    bias: (b_ih + b_hh)?,
                    w_hh_t: None,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { layers })
    }

    fn to_device(&self, device: &Device) -> candle_core::Result<Self> {
        Ok(Self {
            layers: self
                .layers
                .iter()
                .map(|l| l.to_device(device))
                .collect::<candle_core::Result<_>>()?,
        })
    }

    /// `x` `(batch, channels, time)` → the LSTM's output plus `x` (a residual).
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (b, c, t) = x.dims3()?;
        let mut outs = Vec::with_capacity(b);
        for i in 0..b {
            // (time, channels)
            let h = x.get(i)?.t()?.contiguous()?;
            outs.push(self.run_layers(h, c, t)?.t()?);
        }
        Tensor::stack(&outs, 0)? + x
    }

    /// Several pieces of one length, each `(time, channels)` (the layout the encoder
    /// keeps its activations in) → each one's LSTM output plus itself. They step
    /// together: one pass over the recurrent weights, which bounds a step, serves
    /// them all.
    pub(super) fn forward_time_major_batch(
        &self,
        xs: &[Tensor],
    ) -> candle_core::Result<Vec<Tensor>> {
        let Some(first) = xs.first() else {
            return Ok(Vec::new());
        };
        let (t, c) = first.dims2()?;
        let mut h = Tensor::cat(xs, 0)?; // (pieces·time, channels)
        for layer in &self.layers {
            let pre = h.matmul(&layer.w_ih_t)?.broadcast_add(&layer.bias)?;
            let pre: Vec<f32> = pre.flatten_all()?.to_vec1()?;
            let seq = lstm_recurrence_batch(&pre, xs.len(), &layer.w_hh, c, t);
            h = Tensor::from_vec(seq, (xs.len() * t, c), h.device())?;
        }
        xs.iter()
            .enumerate()
            .map(|(i, x)| h.narrow(0, i * t, t)? + x)
            .collect()
    }

    /// The stacked layers over `h` `(time, channels)`, without the residual.
    fn run_layers(&self, h: Tensor, c: usize, t: usize) -> candle_core::Result<Tensor> {
        let mut state = vec![LstmState::zero(c); self.layers.len()];
        self.run_layers_from(h, c, t, &mut state)
    }

    /// [`Lstm::run_layers`] from each layer's `state`, which is left as it
    /// stands after the last step.
    fn run_layers_from(
        &self,
        mut h: Tensor,
        c: usize,
        t: usize,
        state: &mut [LstmState],
    ) -> candle_core::Result<Tensor> {
        for (layer, state) in self.layers.iter().zip(state) {
            let pre = h.matmul(&layer.w_ih_t)?.broadcast_add(&layer.bias)?;
            if let Some(w_hh_t) = &layer.w_hh_t {
                h = LstmLayer::recurrence_on_device(w_hh_t, &pre, c, state)?;
                continue;
            }
            let pre: Vec<f32> = pre.flatten_all()?.to_vec1()?;
            let seq = lstm_recurrence_from(&pre, &layer.w_hh, c, t, state);
            h = Tensor::from_vec(seq, (t, c), h.device())?;
        }
        Ok(h)
    }

    /// `x` `(1, channels, time)`, the frames after those `state` has seen →
    /// the LSTM's output plus `x`, as [`Lstm::forward`] over the whole
    /// sequence gives it for these frames.
    fn forward_from(&self, x: &Tensor, state: &mut Vec<LstmState>) -> candle_core::Result<Tensor> {
        let (_, c, t) = x.dims3()?;
        if state.len() != self.layers.len() {
            *state = vec![LstmState::zero(c); self.layers.len()];
        }
        let h = x.get(0)?.t()?.contiguous()?;
        self.run_layers_from(h, c, t, state)?.t()?.unsqueeze(0)? + x
    }
}

/// One LSTM layer's hidden and cell state.
#[derive(Clone)]
struct LstmState {
    h: Vec<f32>,
    c: Vec<f32>,
}

impl LstmState {
    fn zero(hidden: usize) -> Self {
        Self {
            h: vec![0.0; hidden],
            c: vec![0.0; hidden],
        }
    }
}

/// Runs one LSTM layer over precomputed input projections `pre` `(time, 4·hidden)`
/// (biases included), from `state`, which it leaves after the last step. Returns
/// the hidden states `(time, hidden)`.
fn lstm_recurrence_from(
    pre: &[f32],
    w_hh: &[f32],
    hidden: usize,
    time: usize,
    state: &mut LstmState,
) -> Vec<f32> {
    let mut out = vec![0f32; time * hidden];
    let LstmState { h, c } = state;
    let mut gates = vec![0f32; 4 * hidden];
    for t in 0..time {
        kernels::gemv(w_hh, hidden, &[h], &mut [&mut gates]);
        for (g, p) in gates
            .iter_mut()
            .zip(&pre[t * 4 * hidden..(t + 1) * 4 * hidden])
        {
            *g += p;
        }
        let (i_g, rest) = gates.split_at(hidden);
        let (f_g, rest) = rest.split_at(hidden);
        let (g_g, o_g) = rest.split_at(hidden);
        for j in 0..hidden {
            let i = sigmoid(i_g[j]);
            let f = sigmoid(f_g[j]);
            let g = g_g[j].tanh();
            let o = sigmoid(o_g[j]);
            c[j] = f * c[j] + i * g;
            h[j] = o * c[j].tanh();
        }
        out[t * hidden..(t + 1) * hidden].copy_from_slice(h);
    }
    out
}

/// [`lstm_recurrence`] for `pieces` sequences at once, `pre` holding each one's
/// `(time, 4·hidden)` projections after the other's; the hidden states likewise.
fn lstm_recurrence_batch(
    pre: &[f32],
    pieces: usize,
    w_hh: &[f32],
    hidden: usize,
    time: usize,
) -> Vec<f32> {
    let mut out = vec![0f32; pieces * time * hidden];
    let mut h = vec![vec![0f32; hidden]; pieces];
    let mut c = vec![vec![0f32; hidden]; pieces];
    let mut gates = vec![vec![0f32; 4 * hidden]; pieces];
    for t in 0..time {
        {
            let xs: Vec<&[f32]> = h.iter().map(|v| v.as_slice()).collect();
            let mut ys: Vec<&mut [f32]> = gates.iter_mut().map(|v| v.as_mut_slice()).collect();
            kernels::gemv(w_hh, hidden, &xs, &mut ys);
        }
        for p in 0..pieces {
            let row = (p * time + t) * 4 * hidden;
            for (g, x) in gates[p].iter_mut().zip(&pre[row..row + 4 * hidden]) {
                *g += x;
            }
            let (i_g, rest) = gates[p].split_at(hidden);
            let (f_g, rest) = rest.split_at(hidden);
            let (g_g, o_g) = rest.split_at(hidden);
            for j in 0..hidden {
                let i = sigmoid(i_g[j]);
                let f = sigmoid(f_g[j]);
                let g = g_g[j].tanh();
                let o = sigmoid(o_g[j]);
                c[p][j] = f * c[p][j] + i * g;
                h[p][j] = o * c[p][j].tanh();
            }
            let at = (p * time + t) * hidden;
            out[at..at + hidden].copy_from_slice(&h[p]);
        }
    }
    out
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

struct ResBlock {
    conv1: Conv1d,
    conv2: Conv1d,
}

enum Stage {
    Conv(Conv1d),
    Lstm(Lstm),
    Elu,
    Up(ConvTranspose1d),
    Res(ResBlock),
}

pub struct EncodecDecoder {
    codebooks: Vec<Tensor>,
    stages: Vec<Stage>,
    cfg: EncodecConfig,
}

impl EncodecDecoder {
    /// Loads from `w` pointing at `audio_encoder` in a MusicGen checkpoint.
    pub fn load(w: &Weights, cfg: &EncodecConfig) -> Result<Self> {
        let dim = cfg.codebook_dim();
        let codebooks = (0..cfg.num_quantizers())
            .map(|i| {
                w.pp(format!("quantizer.layers.{i}.codebook"))
                    .get(&[cfg.codebook_size, dim], "embed")
            })
            .collect::<Result<Vec<_>>>()?;
        let d = w.pp("decoder.layers");
        let mut scale = 1usize << cfg.upsampling_ratios.len();
        let mut stages = Vec::new();
        let mut idx = 0usize;
        let mut next = || {
            idx += 1;
            idx - 1
        };
        stages.push(Stage::Conv(Conv1d::load(
            &d.pp(next()),
            cfg.hidden_size,
            scale * cfg.num_filters,
            cfg.kernel_size,
            1,
        )?));
        stages.push(Stage::Lstm(Lstm::load(
            &d.pp(next()),
            scale * cfg.num_filters,
            cfg.num_lstm_layers,
        )?));
        for &ratio in &cfg.upsampling_ratios {
            let ch = scale * cfg.num_filters;
            next();
            stages.push(Stage::Elu);
            stages.push(Stage::Up(ConvTranspose1d::load(
                &d.pp(next()),
                ch,
                ch / 2,
                ratio * 2,
                ratio,
            )?));
            for j in 0..cfg.num_residual_layers {
                let r = d.pp(next());
                let dim = ch / 2;
                let hidden = dim / cfg.compress;
                stages.push(Stage::Res(ResBlock {
                    conv1: Conv1d::load(
                        &r.pp("block.1"),
                        dim,
                        hidden,
                        cfg.residual_kernel_size,
                        cfg.dilation_growth_rate.pow(j as u32),
                    )?,
                    conv2: Conv1d::load(&r.pp("block.3"), hidden, dim, 1, 1)?,
                }));
            }
            scale /= 2;
        }
        next();
        stages.push(Stage::Elu);
        stages.push(Stage::Conv(Conv1d::load(
            &d.pp(next()),
            cfg.num_filters,
            cfg.audio_channels,
            cfg.last_kernel_size,
            1,
        )?));
        Ok(Self {
            codebooks,
            stages,
            cfg: cfg.clone(),
        })
    }

    /// The same codec on `device` (in f32): its convolutions, transposed
    /// convolutions and LSTM as candle ops there, a GPU in a `cuda` build.
    /// On the CPU device this runs candle's own ops in place of the
    /// hand-written kernels, which tests compare it with. Decoding and
    /// [`SpanDecoder`] take either; codes may come from any device.
    pub fn to_device(&self, device: &Device) -> Result<Self> {
        let conv = |c: &Conv1d| c.to_device(device);
        let stages = self
            .stages
            .iter()
            .map(|s| {
                Ok(match s {
                    Stage::Conv(c) => Stage::Conv(conv(c)?),
                    Stage::Lstm(l) => Stage::Lstm(l.to_device(device)?),
                    Stage::Elu => Stage::Elu,
                    Stage::Up(u) => Stage::Up(u.to_device(device)?),
                    Stage::Res(r) => Stage::Res(ResBlock {
                        conv1: conv(&r.conv1)?,
                        conv2: conv(&r.conv2)?,
                    }),
                })
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Self {
            codebooks: self
                .codebooks
                .iter()
                .map(|b| b.to_device(device))
                .collect::<candle_core::Result<_>>()?,
            stages,
            cfg: self.cfg.clone(),
        })
    }

    /// The device its tensors are on.
    pub fn device(&self) -> Device {
        self.codebooks
            .first()
            .map_or(Device::Cpu, |b| b.device().clone())
    }

    pub fn sample_rate(&self) -> u32 {
        self.cfg.sampling_rate
    }

    pub fn hop_length(&self) -> usize {
        self.cfg.hop_length()
    }

    pub fn num_codebooks(&self) -> usize {
        self.codebooks.len()
    }

    /// `codes` `(batch, codebooks, frames)` (u32) → audio `(batch, 1, frames·hop)`.
    pub fn decode(&self, codes: &Tensor) -> Result<Tensor> {
        self.decode_in_chunks(codes, DECODE_CHUNK)
    }

    /// [`EncodecDecoder::decode`], running the audio-rate stages `chunk` frames at a
    /// time. Everything up to the LSTM runs over the whole piece at the frame rate;
    /// after it every stage is a convolution of finite reach, so each chunk is
    /// decoded with [`EncodecDecoder::margin`] frames of real context on both sides
    /// and only its own samples kept: the same audio as one pass, while a long piece
    /// holds a chunk's activations (64 channels at the audio rate) instead of the
    /// whole piece's — about 1.5 GB for 3 minutes.
    pub fn decode_in_chunks(&self, codes: &Tensor, chunk: usize) -> Result<Tensor> {
        let frames = codes.dim(2)?;
        let x = self.frame_stages(codes)?;
        let chunk = chunk.max(1);
        if frames <= chunk {
            return Ok(self.run(&self.stages[self.local_from()..], x)?);
        }
        let mut parts = Vec::with_capacity(frames.div_ceil(chunk));
        for a in (0..frames).step_by(chunk) {
            parts.push(self.audio_stages(&x, a, (a + chunk).min(frames))?);
        }
        Ok(Tensor::cat(&parts, 2)?)
    }

    /// The audio of frames `from..to` of the piece whose first `codes.dim(2)` frames
    /// are `codes`, as [`EncodecDecoder::decode`] of the whole piece gives it — so
    /// long as `to` is at most [`EncodecDecoder::settled`] frames: audio can be
    /// decoded and played while the rest of the piece is still being generated.
    pub fn decode_span(&self, codes: &Tensor, from: usize, to: usize) -> Result<Tensor> {
        let frames = codes.dim(2)?;
        if from >= to || to > frames {
            return Err(crate::Error::InvalidSetting(format!(
                "frames {from}–{to} of {frames}"
            )));
        }
        let x = self.frame_stages(codes)?;
        self.audio_stages(&x, from, to)
    }

    /// Of a piece known up to frame `known`, the frames whose audio can no longer
    /// change when more frames follow: those the convolutions around the LSTM
    /// cannot see past the end from. All of them when `complete`.
    pub fn settled(&self, known: usize, complete: bool) -> usize {
        if complete {
            return known;
        }
        known.saturating_sub(self.lookahead() + self.margin())
    }

    /// The frame-rate stages, embeddings to LSTM, over the whole piece.
    fn frame_stages(&self, codes: &Tensor) -> Result<Tensor> {
        let x = self.embed(codes)?;
        Ok(self.run(&self.stages[..self.local_from()], x)?)
    }

    /// The codebooks' embeddings of `codes`, summed: `(batch, dim, frames)`.
    fn embed(&self, codes: &Tensor) -> Result<Tensor> {
        let (_, k, _) = codes.dims3()?;
        if k > self.codebooks.len() {
            return Err(crate::Error::InvalidSetting(format!(
                "{k} codebooks given to a codec of {}",
                self.codebooks.len()
            )));
        }
        let codes = &codes.to_device(self.codebooks[0].device())?;
        let mut x = embedding(&self.codebooks[0], &codes.narrow(1, 0, 1)?.squeeze(1)?)?;
        for (i, book) in self.codebooks.iter().enumerate().take(k).skip(1) {
            x = (x + embedding(book, &codes.narrow(1, i, 1)?.squeeze(1)?)?)?;
        }
        Ok(x.transpose(1, 2)?.contiguous()?)
    }

    /// The audio-rate stages for frames `a..b` of the frame-rate activations `x`:
    /// run with [`EncodecDecoder::margin`] frames of real context on both sides,
    /// only the span's own samples kept.
    fn audio_stages(&self, x: &Tensor, a: usize, b: usize) -> Result<Tensor> {
        let (frames, margin, hop) = (x.dim(2)?, self.margin(), self.hop_length());
        let (from, to) = (a.saturating_sub(margin), (b + margin).min(frames));
        let y = self.run(
            &self.stages[self.local_from()..],
            x.narrow(2, from, to - from)?,
        )?;
        if y.dim(2)? != (to - from) * hop {
            return Err(crate::Error::InvalidSetting(format!(
                "the codec made {} samples of {} frames, not {} per frame",
                y.dim(2)?,
                to - from,
                hop
            )));
        }
        Ok(y.narrow(2, (a - from) * hop, (b - a) * hop)?)
    }

    fn run(&self, stages: &[Stage], mut x: Tensor) -> candle_core::Result<Tensor> {
        let mut stages = stages.iter().peekable();
        while let Some(stage) = stages.next() {
            x = match stage {
                Stage::Conv(c) => c.forward(&x)?,
                Stage::Lstm(l) => l.forward(&x)?,
                // An ELU straight before a convolution is taken as it pads.
                Stage::Elu => match stages.next_if(|s| matches!(s, Stage::Conv(_))) {
                    Some(Stage::Conv(c)) => c.forward_onto(&x, true, None)?,
                    _ => x.elu(1.0)?,
                },
                Stage::Up(u) => u.forward(&x)?,
                Stage::Res(r) => {
                    let h = r.conv1.forward_onto(&x, true, None)?;
                    r.conv2.forward_onto(&h, true, Some(&x))?
                }
            };
        }
        Ok(x)
    }

    /// The LSTM stage, where it is the only one and the last of the frame-rate
    /// stages (EnCodec's decoder: a convolution, then the LSTM): then only the
    /// LSTM reaches back further than a few frames, and [`SpanDecoder`] can carry
    /// its state from one span to the next.
    fn the_lstm(&self) -> Option<(usize, &Lstm)> {
        let mut lstms = self.stages.iter().enumerate().filter_map(|(i, s)| match s {
            Stage::Lstm(l) => Some((i, l)),
            _ => None,
        });
        match (lstms.next(), lstms.next()) {
            (Some((i, l)), None) if i + 1 == self.local_from() => Some((i, l)),
            _ => None,
        }
    }

    /// The first stage after which every stage reaches only a few neighbouring
    /// samples (the one after the last LSTM).
    fn local_from(&self) -> usize {
        self.stages
            .iter()
            .rposition(|s| matches!(s, Stage::Lstm(_)))
            .map_or(0, |i| i + 1)
    }

    /// Frames past the end that the stages up to the LSTM reach: the last ones'
    /// activations change when more frames follow (the LSTM carries that on).
    fn lookahead(&self) -> usize {
        let conv = |c: &Conv1d| ((c.kernel - 1) * c.dilation).div_ceil(2);
        self.stages[..self.local_from()]
            .iter()
            .map(|stage| match stage {
                Stage::Conv(c) => conv(c),
                Stage::Res(r) => conv(&r.conv1) + conv(&r.conv2),
                // Nothing up-samples before the LSTM in EnCodec; count a stride's
                // worth should one.
                Stage::Up(u) => u.kernel.div_ceil(u.stride),
                Stage::Elu | Stage::Lstm(_) => 0,
            })
            .sum::<usize>()
            + 1
    }

    /// Frames of context a chunk needs on each side so that its own samples come out
    /// as in one pass: the reach of every stage after the LSTM, summed in frames,
    /// rounded up, plus one for the transposed convolutions' overlap.
    fn margin(&self) -> usize {
        let conv = |c: &Conv1d| ((c.kernel - 1) * c.dilation).div_ceil(2) as f64;
        let mut rate = 1.0; // samples per frame at the current stage
        let mut reach = 0.0;
        for stage in &self.stages[self.local_from()..] {
            match stage {
                Stage::Conv(c) => reach += conv(c) / rate,
                Stage::Res(r) => reach += (conv(&r.conv1) + conv(&r.conv2)) / rate,
                Stage::Up(u) => {
                    reach += u.kernel.div_ceil(u.stride) as f64 / rate;
                    rate *= u.stride as f64;
                }
                Stage::Elu | Stage::Lstm(_) => {}
            }
        }
        reach.ceil() as usize + 1
    }
}

/// A piece decoded while it is generated: each [`SpanDecoder::next`] gives
/// the audio of the frames that settled (see [`EncodecDecoder::settled`])
/// since the one before, equal to that stretch of the whole piece's decode.
///
/// The LSTM's state and the final frame-rate activations are carried from one
/// call to the next, so a call runs the LSTM over its new frames only. Decoding
/// each span from the whole piece so far ([`EncodecDecoder::decode_span`])
/// runs the LSTM from the first frame every time: its recurrent weights are
/// read once per frame, about a millisecond a frame at MusicGen's width, so a
/// few minutes into a piece each two-second hand-over would take longer than
/// the music it hands over.
#[derive(Default)]
pub struct SpanDecoder {
    /// Frames whose audio has been given.
    sent: usize,
    /// The frame-rate activations after the LSTM, `(1, channels, n)`, of
    /// frames `first..first + n`: final, and reaching back as far as the
    /// next span's audio-rate stages read.
    acts: Option<Tensor>,
    first: usize,
    /// The LSTM's layers' state after the last frame of `acts`.
    state: Vec<LstmState>,
}

impl SpanDecoder {
    /// Frames whose audio has been given so far.
    pub fn sent(&self) -> usize {
        self.sent
    }

    fn stored(&self) -> Result<usize> {
        Ok(self.first + self.acts.as_ref().map_or(Ok(0), |a| a.dim(2))?)
    }

    /// The audio `(1, 1, samples)` of the frames settled since the last call,
    /// for the piece whose first `codes.dim(2)` frames are `codes` (the same
    /// piece each call, known further; `complete` when it ends there). `None`
    /// when no frame settled since.
    pub fn next(
        &mut self,
        codec: &EncodecDecoder,
        codes: &Tensor,
        complete: bool,
    ) -> Result<Option<Tensor>> {
        let (batch, _, known) = codes.dims3()?;
        let stored = self.stored()?;
        if known < stored.max(self.sent) {
            return Err(crate::Error::InvalidSetting(format!(
                "a piece decoded up to frame {} came back with {known} frames",
                stored.max(self.sent)
            )));
        }
        let settled = codec.settled(known, complete);
        if settled <= self.sent {
            return Ok(None);
        }
        let Some((at, lstm)) = codec.the_lstm().filter(|_| batch == 1) else {
            // Nothing to carry: each span from the piece so far.
            let audio = codec.decode_span(codes, self.sent, settled)?;
            self.sent = settled;
            return Ok(Some(audio));
        };
        // The frame-rate activations the span's audio-rate stages read, up to
        // `margin` frames past it: all final (`settled` leaves that room).
        let margin = codec.margin();
        let need = (settled + margin).min(known);
        if stored < need {
            // The convolutions before the LSTM read `reach` frames either
            // side: they run from that far back, and only outputs with real
            // context on the left are kept.
            let reach = codec.lookahead();
            let from = stored.saturating_sub(reach);
            let x = codec.embed(&codes.narrow(2, from, known - from)?)?;
            let x = codec.run(&codec.stages[..at], x)?;
            let fresh =
                lstm.forward_from(&x.narrow(2, stored - from, need - stored)?, &mut self.state)?;
            self.acts = Some(match self.acts.take() {
                Some(a) => Tensor::cat(&[a, fresh], 2)?,
                None => fresh,
            });
        }
        let Some(acts) = &self.acts else {
            return Err(crate::Error::InvalidSetting("no frames to decode".into()));
        };
        let audio = codec.audio_stages(acts, self.sent - self.first, settled - self.first)?;
        // Keep what the next span reads to its left.
        let keep_from = settled.saturating_sub(margin).max(self.first);
        let n = acts.dim(2)?;
        self.acts = Some(acts.narrow(2, keep_from - self.first, n - (keep_from - self.first))?);
        self.first = keep_from;
        self.sent = settled;
        Ok(Some(audio))
    }
}

/// Frames per chunk of [`EncodecDecoder::decode`]'s audio-rate stages: 20 s.
const DECODE_CHUNK: usize = 1000;

/// Reflect padding along axis `dim` (PyTorch's `F.pad(mode="reflect")` on the time
/// axis); an input shorter than the padding is first extended with zeros on the
/// right, then that extension is cut again, as transformers' `_pad1d` does.
pub(super) fn reflect_pad(
    x: &Tensor,
    dim: usize,
    left: usize,
    right: usize,
) -> candle_core::Result<Tensor> {
    if left == 0 && right == 0 {
        return Ok(x.clone());
    }
    let len = x.dim(dim)?;
    let max_pad = left.max(right);
    let (x, extra) = if len <= max_pad {
        let extra = max_pad - len + 1;
        (x.pad_with_zeros(dim, 0, extra)?, extra)
    } else {
        (x.clone(), 0)
    };
    let n = x.dim(dim)?;
    let mut idx: Vec<u32> = Vec::with_capacity(n + left + right);
    idx.extend((1..=left).rev().map(|i| i as u32));
    idx.extend((0..n).map(|i| i as u32));
    idx.extend((0..right).map(|i| (n - 2 - i) as u32));
    let ids = Tensor::from_vec(idx, n + left + right, &Device::Cpu)?.to_device(x.device())?;
    let padded = x.index_select(&ids, dim)?;
    let total = padded.dim(dim)?;
    padded.narrow(dim, 0, total - extra)
}
