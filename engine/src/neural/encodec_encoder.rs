//! The EnCodec encoder of MusicGen (32 kHz, mono): audio to the continuous
//! embeddings of a SEANet encoder (convolution, residual blocks with ELU, four
//! strided downsampling convolutions, 2-layer LSTM, convolution), then to codes by
//! the residual vector quantizer — as transformers' `EncodecModel.encode` computes
//! them, so the codes MusicGen is trained on can be made here.
//!
//! Loaded apart from [`super::encodec::EncodecDecoder`]: generation never pays for
//! the encoder's weights.
//!
//! Activations are kept time-major, `(time, channels)`, unlike the decoder's: a
//! strided convolution over time-major rows is then a free reshape into frames of
//! `stride` samples and two matrix products, and every tap of a stride-1
//! convolution reads a contiguous run of rows.

use std::path::Path;

use candle_core::{DType, Tensor};

use super::config::{EncodecConfig, MusicgenConfig};
use super::encodec::{Lstm, reflect_pad, weight_normed};
use super::nn::embedding;
use super::weights::Weights;
use crate::{Error, Result};

/// A stride-1, non-causal convolution over time-major activations.
struct Conv {
    /// `(kernel·in, out)`, row `j·in + c` for input channel `c` at tap `j`.
    weight: Tensor,
    /// The same, one `(in, out)` matrix per tap.
    taps: Vec<Tensor>,
    bias: Tensor,
    kernel: usize,
    dilation: usize,
}

/// Below this many input channels a convolution gathers its taps side by side
/// into one matrix product ([`Conv::forward`]).
const UNFOLD_BELOW: usize = 16;

impl Conv {
    fn load(w: &Weights, cin: usize, cout: usize, kernel: usize, dilation: usize) -> Result<Self> {
        let w = w.pp("conv");
        let weight = weight_normed(&w, [cout, cin, kernel])?
            .permute((2, 1, 0))?
            .reshape((kernel * cin, cout))?
            .contiguous()?;
        let taps = (0..kernel)
            .map(|j| weight.narrow(0, j * cin, cin))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Self {
            weight,
            taps,
            bias: w.get(&[cout], "bias")?,
            kernel,
            dilation,
        })
    }

    /// Reflect-pads `(k−1)·d`, the larger half on the left (transformers'
    /// `EncodecConv1d`; its extra right padding is always 0 at stride 1), then
    /// convolves by matrix products over the shifted rows: one per tap, summed, or —
    /// for few input channels, where each tap's product would be a thin, slow
    /// rank-`in` update (the first convolution reads one channel) — one over the
    /// taps gathered side by side, a copy `k` times the input's size that is small
    /// only there.
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let total = (self.kernel - 1) * self.dilation;
        let right = total / 2;
        let (t, cin) = x.dims2()?;
        let x = reflect_pad(x, 0, total - right, right)?;
        let y = if self.kernel == 1 {
            x.matmul(&self.weight)?
        } else if cin < UNFOLD_BELOW {
            if u32::try_from(t + total).is_err() {
                candle_core::bail!("{t} samples are too many to encode in one pass");
            }
            let (k, d) = (self.kernel, self.dilation);
            let idx: Vec<u32> = (0..t)
                .flat_map(|i| (0..k).map(move |j| (i + j * d) as u32))
                .collect();
            let idx = Tensor::from_vec(idx, t * k, x.device())?;
            x.index_select(&idx, 0)?
                .reshape((t, k * cin))?
                .matmul(&self.weight)?
        } else {
            let mut y = x.narrow(0, 0, t)?.matmul(&self.taps[0])?;
            for (j, tap) in self.taps.iter().enumerate().skip(1) {
                y = (y + x.narrow(0, j * self.dilation, t)?.matmul(tap)?)?;
            }
            y
        };
        y.broadcast_add(&self.bias)
    }

    /// Samples this convolution reads on either side of its output position.
    fn reach(&self) -> usize {
        ((self.kernel - 1) * self.dilation).div_ceil(2)
    }
}

/// A downsampling convolution: kernel `2·stride`, stride `stride`, as every
/// strided convolution of EnCodec's encoder is.
struct Down {
    /// Taps `0..stride` and `stride..2·stride` as `(stride·in, out)` matrices, row
    /// `j·in + c` for input channel `c` at tap `j`: the layout of `stride`
    /// consecutive time-major rows read as one.
    first: Tensor,
    second: Tensor,
    bias: Tensor,
    stride: usize,
}

impl Down {
    fn load(w: &Weights, cin: usize, cout: usize, stride: usize) -> Result<Self> {
        let w = w.pp("conv");
        let weight = weight_normed(&w, [cout, cin, 2 * stride])?;
        let half = |from: usize| -> candle_core::Result<Tensor> {
            // (out, in, stride) → (stride, in, out) → (stride·in, out)
            weight
                .narrow(2, from, stride)?
                .permute((2, 1, 0))?
                .reshape((stride * cin, cout))?
                .contiguous()
        };
        Ok(Self {
            first: half(0)?,
            second: half(stride)?,
            bias: w.get(&[cout], "bias")?,
            stride,
        })
    }

    /// `x` `(t, in)` → `(⌈t / stride⌉, out)`. transformers pads `stride` in all,
    /// the larger half on the left, plus `_get_extra_padding_for_conv1d` on the
    /// right, which rounds the padded length up to a whole number of frames:
    /// `(⌈t / stride⌉ + 1) · stride`. Output frame `i` then reads padded frames
    /// `i` and `i + 1`.
    ///
    /// The extra padding is computed here in integers. transformers computes it
    /// through a float32 division, which for inputs over 2²⁴ samples (about 8.7
    /// minutes at 32 kHz) rounds to a negative padding that crops the input; this
    /// gives what the formula means there instead.
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (t, cin) = x.dims2()?;
        let s = self.stride;
        let frames = t.div_ceil(s);
        let extra = frames * s - t;
        let right = s / 2;
        let x = reflect_pad(x, 0, s - right, right + extra)?;
        let x = x.reshape((frames + 1, s * cin))?;
        let y = x.narrow(0, 0, frames)?.matmul(&self.first)?;
        let y = (y + x.narrow(0, 1, frames)?.matmul(&self.second)?)?;
        y.broadcast_add(&self.bias)
    }
}

/// SEANet's residual block: `x + conv₂(elu(conv₁(elu(x))))`.
struct ResBlock {
    conv1: Conv,
    conv2: Conv,
}

enum Stage {
    Conv(Conv),
    Res(ResBlock),
    Elu,
    Down(Down),
}

impl Stage {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Stage::Conv(c) => c.forward(x),
            Stage::Res(r) => {
                let h = r.conv1.forward(&x.elu(1.0)?)?;
                let h = r.conv2.forward(&h.elu(1.0)?)?;
                x + h
            }
            Stage::Elu => x.elu(1.0),
            Stage::Down(d) => d.forward(x),
        }
    }
}

pub struct EncodecEncoder {
    /// The stages before the LSTM, from the audio rate down to the frame rate:
    /// each reaches only a few neighbouring samples.
    local: Vec<Stage>,
    lstm: Lstm,
    /// The last convolution, to `hidden_size` channels (after an ELU).
    last: Conv,
    codebooks: Vec<Tensor>,
    cfg: EncodecConfig,
}

/// Code frames per chunk of the stages before the LSTM: 10 s, about 80 MB per
/// activation of musicgen-small's codec at the audio rate (64 channels).
const ENCODE_CHUNK: usize = 500;

impl EncodecEncoder {
    /// Opens the encoder of the MusicGen checkpoint in `dir` (its `config.json` and
    /// weights), reading only the encoder's tensors.
    pub fn open(dir: &Path) -> Result<Self> {
        let cfg = MusicgenConfig::load(&dir.join("config.json"))?;
        let w = Weights::open_dir(dir)?;
        Self::load(&w.pp("audio_encoder"), &cfg.audio_encoder)
    }

    /// Loads from `w` pointing at `audio_encoder` in a MusicGen checkpoint.
    pub fn load(w: &Weights, cfg: &EncodecConfig) -> Result<Self> {
        check_config(cfg)?;
        let e = w.pp("encoder.layers");
        let mut idx = 0usize;
        let mut next = || {
            idx += 1;
            idx - 1
        };
        let mut local = vec![Stage::Conv(Conv::load(
            &e.pp(next()),
            cfg.audio_channels,
            cfg.num_filters,
            cfg.kernel_size,
            1,
        )?)];
        let mut ch = cfg.num_filters;
        for &ratio in cfg.upsampling_ratios.iter().rev() {
            for j in 0..cfg.num_residual_layers {
                let r = e.pp(next());
                let hidden = ch / cfg.compress;
                local.push(Stage::Res(ResBlock {
                    conv1: Conv::load(
                        &r.pp("block.1"),
                        ch,
                        hidden,
                        cfg.residual_kernel_size,
                        cfg.dilation_growth_rate.pow(j as u32),
                    )?,
                    conv2: Conv::load(&r.pp("block.3"), hidden, ch, 1, 1)?,
                }));
            }
            next();
            local.push(Stage::Elu);
            local.push(Stage::Down(Down::load(&e.pp(next()), ch, 2 * ch, ratio)?));
            ch *= 2;
        }
        let lstm = Lstm::load(&e.pp(next()), ch, cfg.num_lstm_layers)?;
        next();
        let last = Conv::load(&e.pp(next()), ch, cfg.hidden_size, cfg.last_kernel_size, 1)?;
        let dim = cfg.codebook_dim();
        let codebooks = (0..cfg.num_quantizers())
            .map(|i| {
                w.pp(format!("quantizer.layers.{i}.codebook"))
                    .get(&[cfg.codebook_size, dim], "embed")
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            local,
            lstm,
            last,
            codebooks,
            cfg: cfg.clone(),
        })
    }

    pub fn sample_rate(&self) -> u32 {
        self.cfg.sampling_rate
    }

    pub fn hop_length(&self) -> usize {
        self.cfg.hop_length()
    }

    /// The quantizers the checkpoint has: the most codebooks [`Self::quantize`]
    /// can give.
    pub fn num_quantizers(&self) -> usize {
        self.codebooks.len()
    }

    /// The codebooks transformers' `encode` uses at `bandwidth` kbps, which must be
    /// one of the config's `target_bandwidths`: `max(1, ⌊1000·bandwidth /
    /// (log2(codebook_size)·frame_rate)⌋)`, at most [`Self::num_quantizers`]. A
    /// different formula from the one that counts the quantizers: for
    /// facebook/musicgen-* both give 4 at 2.2 kbps, but not for every codec.
    pub fn codebooks_for_bandwidth(&self, bandwidth: f64) -> Result<usize> {
        if !self.cfg.target_bandwidths.contains(&bandwidth) {
            return Err(Error::InvalidSetting(format!(
                "a bandwidth of {bandwidth} kbps; this codec has {:?}",
                self.cfg.target_bandwidths
            )));
        }
        let per_quantizer = (self.cfg.codebook_size as f64).log2() * self.cfg.frame_rate() as f64;
        // As in transformers, a bandwidth of 0 or less means all quantizers.
        let n = if bandwidth > 0.0 {
            (bandwidth * 1000.0 / per_quantizer).floor().max(1.0) as usize
        } else {
            usize::MAX
        };
        Ok(n.min(self.codebooks.len()))
    }

    /// The codebooks [`Self::encode`] gives: those of the first target bandwidth,
    /// transformers' default and what MusicGen encodes audio prompts with (4 for
    /// facebook/musicgen-*, as many as the language model reads).
    pub fn default_codebooks(&self) -> Result<usize> {
        let first =
            *self.cfg.target_bandwidths.first().ok_or_else(|| {
                Error::InvalidSetting("the codec lists no target bandwidth".into())
            })?;
        self.codebooks_for_bandwidth(first)
    }

    /// `audio` `(batch, 1, samples)` → codes `(batch, codebooks, ⌈samples / hop⌉)`
    /// (u32) at the default bandwidth: transformers'
    /// `EncodecModel.encode(audio).audio_codes[0]`.
    pub fn encode(&self, audio: &Tensor) -> Result<Tensor> {
        self.encode_codebooks(audio, self.default_codebooks()?)
    }

    /// [`Self::encode`] with the first `codebooks` quantizers. Residual
    /// quantization makes the first `k` codes of every count the same.
    pub fn encode_codebooks(&self, audio: &Tensor, codebooks: usize) -> Result<Tensor> {
        self.check_codebooks(codebooks)?;
        let rows = self.embed_rows(audio, ENCODE_CHUNK)?;
        self.quantize_rows(&rows, codebooks)
    }

    /// The continuous embeddings, before quantization: `audio` `(batch, 1, samples)`
    /// → `(batch, hidden, ⌈samples / hop⌉)`, transformers'
    /// `EncodecModel.encoder(audio)`.
    pub fn embed(&self, audio: &Tensor) -> Result<Tensor> {
        self.embed_in_chunks(audio, ENCODE_CHUNK)
    }

    /// [`Self::embed`], running the stages before the LSTM `chunk` frames at a
    /// time. Each chunk is encoded with [`Self::margin`] frames of real audio on
    /// either side and only its own frames kept, so the result is the one pass's
    /// while a long piece holds a chunk's activations at the audio rate rather than
    /// the whole piece's. Chunks start on frame boundaries, so every stride lines up
    /// with the one pass's.
    pub fn embed_in_chunks(&self, audio: &Tensor, chunk: usize) -> Result<Tensor> {
        Ok(self
            .embed_rows(audio, chunk)?
            .transpose(1, 2)?
            .contiguous()?)
    }

    /// Quantizes `embeddings` `(batch, hidden, frames)` with the first `codebooks`
    /// quantizers → codes `(batch, codebooks, frames)` (u32).
    pub fn quantize(&self, embeddings: &Tensor, codebooks: usize) -> Result<Tensor> {
        self.check_codebooks(codebooks)?;
        let (_, dim, _) = embeddings.dims3()?;
        if dim != self.cfg.hidden_size {
            return Err(Error::InvalidSetting(format!(
                "embeddings of {dim} channels given to a codec of {}",
                self.cfg.hidden_size
            )));
        }
        let rows = embeddings.to_dtype(DType::F32)?.transpose(1, 2)?;
        self.quantize_rows(&rows.contiguous()?, codebooks)
    }

    fn check_codebooks(&self, codebooks: usize) -> Result<()> {
        if codebooks == 0 || codebooks > self.codebooks.len() {
            return Err(Error::InvalidSetting(format!(
                "{codebooks} codebooks asked of a codec of {}",
                self.codebooks.len()
            )));
        }
        Ok(())
    }

    /// The embeddings as `(batch, frames, hidden)`.
    fn embed_rows(&self, audio: &Tensor, chunk: usize) -> Result<Tensor> {
        let (batch, channels, samples) = audio.dims3().map_err(|_| {
            Error::InvalidSetting(format!(
                "audio of shape {:?}; the encoder takes (batch, 1, samples)",
                audio.dims()
            ))
        })?;
        if channels != self.cfg.audio_channels || batch == 0 || samples == 0 {
            return Err(Error::InvalidSetting(format!(
                "audio of shape {:?}; the encoder takes (batch, {}, samples), none empty",
                audio.dims(),
                self.cfg.audio_channels
            )));
        }
        let audio = audio.to_dtype(DType::F32)?;
        let frames = (0..batch)
            .map(|b| self.frame_rate_item(&audio.get(b)?.t()?.contiguous()?, chunk.max(1)))
            .collect::<Result<Vec<_>>>()?;
        // The LSTM steps through all pieces together; the convolutions after it are
        // cheap at the frame rate.
        let items = self
            .lstm
            .forward_time_major_batch(&frames)?
            .iter()
            .map(|h| self.last.forward(&h.elu(1.0)?))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Tensor::stack(&items, 0)?)
    }

    /// One piece, `(samples, 1)`, through the stages before the LSTM →
    /// `(frames, channels)`.
    fn frame_rate_item(&self, x: &Tensor, chunk: usize) -> Result<Tensor> {
        let (samples, hop) = (x.dim(0)?, self.hop_length());
        let frames = samples.div_ceil(hop);
        let h = if frames <= chunk {
            self.run_local(x.clone())?
        } else {
            let margin = self.margin();
            let mut parts = Vec::with_capacity(frames.div_ceil(chunk));
            for a in (0..frames).step_by(chunk) {
                let b = (a + chunk).min(frames);
                let (from, to) = (a.saturating_sub(margin), (b + margin).min(frames));
                // The last chunk runs to the real end, so it is padded as the piece is.
                let end = if to == frames { samples } else { to * hop };
                let y = self.run_local(x.narrow(0, from * hop, end - from * hop)?)?;
                parts.push(y.narrow(0, a - from, b - a)?);
            }
            Tensor::cat(&parts, 0)?
        };
        if h.dim(0)? != frames {
            return Err(Error::InvalidSetting(format!(
                "the encoder made {} frames of {samples} samples, not {frames}",
                h.dim(0)?
            )));
        }
        Ok(h)
    }

    fn run_local(&self, mut x: Tensor) -> candle_core::Result<Tensor> {
        for stage in &self.local {
            x = stage.forward(&x)?;
        }
        Ok(x)
    }

    /// Frames of context a chunk needs on each side for its own frames to come out
    /// as in one pass: the reach of every stage before the LSTM, summed in samples
    /// and rounded up to frames, plus one.
    fn margin(&self) -> usize {
        let mut rate = 1; // samples per position at the current stage
        let mut reach = 0;
        for stage in &self.local {
            match stage {
                Stage::Conv(c) => reach += c.reach() * rate,
                Stage::Res(r) => reach += (r.conv1.reach() + r.conv2.reach()) * rate,
                Stage::Down(d) => {
                    reach += 2 * d.stride * rate;
                    rate *= d.stride;
                }
                Stage::Elu => {}
            }
        }
        reach.div_ceil(self.hop_length()) + 1
    }

    /// Residual vector quantization of `rows` `(batch, frames, dim)`: at each level
    /// the nearest code by Euclidean distance, computed as transformers does
    /// (`−(‖x‖² − 2·x·e + ‖e‖²)`, its largest), then the code's vector subtracted.
    fn quantize_rows(&self, rows: &Tensor, codebooks: usize) -> Result<Tensor> {
        let (batch, frames, dim) = rows.dims3()?;
        let mut residual = rows.reshape((batch * frames, dim))?;
        let mut codes = Vec::with_capacity(codebooks);
        for book in &self.codebooks[..codebooks] {
            let norms = book.sqr()?.sum(1)?.unsqueeze(0)?; // (1, codes)
            let scaled = residual.sqr()?.sum_keepdim(1)?; // (rows, 1)
            let dot = residual.matmul(&book.t()?)?;
            let dist = scaled
                .broadcast_sub(&(dot * 2.0)?)?
                .broadcast_add(&norms)?
                .neg()?;
            let idx = dist.argmax(1)?; // (rows,) u32
            residual = (residual - embedding(book, &idx)?)?;
            codes.push(idx.reshape((batch, frames))?);
        }
        Ok(Tensor::stack(&codes, 1)?)
    }
}

/// Refuses the EnCodec variants this encoder does not compute, rather than
/// encoding them wrongly: input normalisation and chunking (48 kHz EnCodec), and
/// the convolutional shortcut of the residual blocks. MusicGen's codec uses none.
fn check_config(cfg: &EncodecConfig) -> Result<()> {
    let unsupported = if cfg.normalize {
        Some("normalize = true")
    } else if cfg.chunk_length_s.is_some() {
        Some("chunk_length_s set")
    } else if cfg.use_conv_shortcut {
        Some("use_conv_shortcut = true")
    } else if cfg.use_causal_conv || cfg.norm_type != "weight_norm" || cfg.pad_mode != "reflect" {
        Some("a causal, group-normed or zero-padded convolution")
    } else if cfg.audio_channels != 1 {
        Some("more than one audio channel")
    } else if cfg.codebook_dim() != cfg.hidden_size {
        Some("codebook_dim different from hidden_size")
    } else if cfg.upsampling_ratios.is_empty()
        || cfg.upsampling_ratios.iter().any(|&r| r == 0 || r > 64)
        || cfg.upsampling_ratios.len() > 8
        || cfg.num_filters == 0
        || cfg.hidden_size == 0
        || cfg.compress == 0
        || cfg.kernel_size == 0
        || cfg.last_kernel_size == 0
        || cfg.residual_kernel_size == 0
        || cfg.num_residual_layers > 8
        || cfg
            .dilation_growth_rate
            .checked_pow(cfg.num_residual_layers as u32)
            .is_none()
    {
        Some("a zero or out-of-range layer size")
    } else {
        None
    };
    match unsupported {
        Some(what) => Err(Error::InvalidSetting(format!(
            "the EnCodec encoder supports MusicGen's codec only, not {what}"
        ))),
        None => Ok(()),
    }
}
