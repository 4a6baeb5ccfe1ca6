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
    /// Set by [`MusicgenDecoder::to_device`], whose copy serves the
    /// sessions' steps only (see [`Stepping`]).
    stepping: Option<Stepping>,
}

/// A decoder's weights in the forms inference steps take. At batch 2 a step
/// of musicgen-small on a GPU is bound by how many kernels it launches, not
/// by reading its weights, so each form saves a launch a layer or more:
/// every attention's query projection has `head_dim^-0.5` folded in (the
/// scores need no scaling pass), and the LM heads are side by side (one
/// product for every codebook's logits). Such a copy runs sessions, not
/// [`MusicgenDecoder::forward`].
#[derive(Clone)]
struct Stepping {
    heads: Linear,
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
            stepping: None,
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
        if self.stepping.is_some() {
            return Err(Error::InvalidSetting(
                "this copy of the decoder is made for inference sessions only".into(),
            ));
        }
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
            stepping: None,
        })
    }

    /// Logits `(batch, codebooks, len, vocab)` for `tokens` `(batch, codebooks,
    /// len)` (u32, the delay pattern already applied) at positions `0..len`.
    pub fn forward(&self, tokens: &Tensor, cond: &Conditioning<'_>) -> Result<Tensor> {
        if self.stepping.is_some() {
            return Err(Error::InvalidSetting(
                "this copy of the decoder is made for inference sessions only".into(),
            ));
        }
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

impl Attention {
    fn to_device(&self, device: &Device) -> Result<Self> {
        Ok(Self {
            q: self.q.to_device(device)?,
            k: self.k.to_device(device)?,
            v: self.v.to_device(device)?,
            out: self.out.to_device(device)?,
        })
    }
}

impl MusicgenDecoder {
    /// The same decoder on `device` in `dtype`, for inference ([`Self::session`]).
    pub fn to_device(&self, device: &Device, dtype: DType) -> Result<Self> {
        let d = self.to_dtype(dtype)?;
        let layers = d
            .layers
            .iter()
            .map(|l| {
                Ok(Layer {
                    self_norm: l.self_norm.to_device(device)?,
                    self_attn: l.self_attn.to_device(device)?,
                    cross_norm: l.cross_norm.to_device(device)?,
                    cross_attn: l.cross_attn.to_device(device)?,
                    ff_norm: l.ff_norm.to_device(device)?,
                    fc1: l.fc1.to_device(device)?,
                    fc2: l.fc2.to_device(device)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Self {
            embed: d
                .embed
                .iter()
                .map(|t| t.to_device(device))
                .collect::<candle_core::Result<_>>()?,
            positions: d.positions.to_device(device)?,
            layers,
            norm: d.norm.to_device(device)?,
            heads: d
                .heads
                .iter()
                .map(|l| l.to_device(device))
                .collect::<candle_core::Result<_>>()?,
            cfg: d.cfg,
            stepping: None,
        }
        .with_stepping()
    }

    /// This decoder with its weights in the [`Stepping`] forms (in place:
    /// no second copy is kept).
    fn with_stepping(mut self) -> Result<Self> {
        let scale = 1.0 / ((self.cfg.hidden_size / self.cfg.num_attention_heads) as f64).sqrt();
        for l in &mut self.layers {
            l.self_attn.q = l.self_attn.q.scaled(scale)?;
            l.cross_attn.q = l.cross_attn.q.scaled(scale)?;
        }
        let heads = Linear::side_by_side(&self.heads)?;
        self.heads = Vec::new();
        self.stepping = Some(Stepping { heads });
        Ok(self)
    }

    /// An incremental decoding session of `batch` sequences (1, or 2 for
    /// classifier-free guidance: the conditional sequence, then the
    /// unconditional one) over at most `capacity` positions. The keys and
    /// values of self-attention live in buffers made here, on the decoder's
    /// device, for the whole window: a step writes its positions into them
    /// and allocates nothing that grows. `cross` holds the conditional
    /// sequence's states `(1, len, hidden)` and mask `(1, len)`, any device;
    /// the unconditional sequence reads zeroed states, whose
    /// cross-attention adds exactly nothing, so both run as one batch.
    pub fn session(
        &self,
        cross: Option<(&Tensor, &Tensor)>,
        batch: usize,
        capacity: usize,
    ) -> Result<DecoderSession<'_>> {
        let h = self.cfg.hidden_size;
        let heads = self.cfg.num_attention_heads;
        let hd = h / heads;
        let (dev, dtype) = (self.device().clone(), self.dtype());
        if !(1..=2).contains(&batch) {
            return Err(Error::InvalidSetting(format!(
                "a decoding session runs 1 or 2 sequences, not {batch}"
            )));
        }
        if self.stepping.is_none() {
            return Err(Error::InvalidSetting(
                "a decoding session needs the decoder's inference copy (to_device)".into(),
            ));
        }
        let capacity = capacity.min(self.cfg.max_position_embeddings);
        let self_kv = self
            .layers
            .iter()
            .map(|_| {
                let z = || Tensor::zeros((batch, heads, capacity, hd), dtype, &dev);
                Ok((z()?, z()?))
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let cross = match cross {
            Some((states, mask)) => {
                let (sb, _, sh) = states.dims3()?;
                if sb != 1 || sh != h {
                    return Err(Error::InvalidSetting(format!(
                        "conditioning states of shape {:?} for one sequence of width {h}",
                        states.dims()
                    )));
                }
                let mut states = states.to_device(&dev)?.to_dtype(dtype)?;
                let mut mask = mask.to_device(&dev)?;
                if batch == 2 {
                    states = Tensor::cat(&[&states, &states.zeros_like()?], 0)?;
                    mask = Tensor::cat(&[&mask, &mask.ones_like()?], 0)?;
                }
                let padded = mask.to_dtype(DType::F32)?.min_all()?.to_scalar::<f32>()? < 1.0;
                let bias = if padded {
                    Some(padding_bias(&mask, dtype)?)
                } else {
                    None
                };
                let kv = self
                    .layers
                    .iter()
                    .map(|l| {
                        let a = &l.cross_attn;
                        let k = split_heads(&a.k.forward(&states)?, heads)?.contiguous()?;
                        let v = split_heads(&a.v.forward(&states)?, heads)?.contiguous()?;
                        Ok((k, v))
                    })
                    .collect::<Result<Vec<_>>>()?;
                Some((kv, bias))
            }
            None => None,
        };
        Ok(DecoderSession {
            dec: self,
            batch,
            len: 0,
            capacity,
            self_kv,
            cross,
            held_inputs: Vec::new(),
        })
    }
}

/// Per layer, cross-attention's keys and values, and the padding bias.
type CrossKeys = (Vec<(Tensor, Tensor)>, Option<Tensor>);

/// See [`MusicgenDecoder::session`].
pub struct DecoderSession<'d> {
    dec: &'d MusicgenDecoder,
    batch: usize,
    /// Positions read so far.
    len: usize,
    capacity: usize,
    /// Per layer, `(batch, heads, capacity, head_dim)` keys and values.
    self_kv: Vec<(Tensor, Tensor)>,
    /// Per layer, cross-attention keys and values `(batch, heads, states,
    /// head_dim)`, and the padding bias `(batch, 1, 1, states)`; `None`
    /// when nothing is padded (the bias would add zeros).
    cross: Option<CrossKeys>,
    /// Per layer, the window's in-attention inputs on the device,
    /// `(batch, positions, hidden)` (the unconditional row zero), when
    /// [`DecoderSession::hold_layer_inputs`] gave them: a step then reads
    /// its rows there rather than copying them over.
    held_inputs: Vec<Option<Tensor>>,
}

impl DecoderSession<'_> {
    /// Positions read so far.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn batch(&self) -> usize {
        self.batch
    }

    /// Puts the window's in-attention inputs on the device at once:
    /// `inputs[i]`, when present, holds `hidden` values for each of the
    /// session's positions from 0 for layer `i` of the conditional
    /// sequence. From then on each step reads its rows there, and the
    /// rows [`DecoderSession::step`] is given for those layers are not
    /// read (they must be the same): on a GPU that is one copy per window
    /// instead of one per layer and step, each of which waits for the
    /// device.
    pub fn hold_layer_inputs(&mut self, inputs: &[Option<Vec<f32>>]) -> Result<()> {
        let dec = self.dec;
        let h = dec.cfg.hidden_size;
        let positions = self.capacity;
        if inputs.len() > dec.layers.len() {
            return Err(Error::InvalidSetting(format!(
                "{} layer inputs for a decoder of {} layers",
                inputs.len(),
                dec.layers.len()
            )));
        }
        let (dev, dtype) = (dec.device().clone(), dec.dtype());
        self.held_inputs = inputs
            .iter()
            .map(|rows| {
                let Some(rows) = rows else {
                    return Ok(None);
                };
                if rows.len() < positions * h {
                    return Err(Error::InvalidSetting(format!(
                        "in-attention inputs for {} positions; the session has {positions}",
                        rows.len() / h.max(1)
                    )));
                }
                let cond = Tensor::from_slice(&rows[..positions * h], (1, positions, h), &dev)?
                    .to_dtype(dtype)?;
                let both = if self.batch == 2 {
                    Tensor::cat(&[&cond, &cond.zeros_like()?], 0)?
                } else {
                    cond
                };
                Ok(Some(both))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(())
    }

    /// Reads `n` more positions, the same `tokens` (`codebooks × n`,
    /// codebook-major) on every sequence, and returns the logits of the last
    /// one, `(sequence, codebook, vocab)` flattened, in f32 on the host.
    /// `inputs[i]`, when present, holds `n × hidden` in-attention values for
    /// layer `i` of the conditional sequence (the unconditional one gets
    /// none, as in guidance's dropped conditions).
    pub fn step(
        &mut self,
        tokens: &[u32],
        n: usize,
        inputs: &[Option<&[f32]>],
    ) -> Result<Vec<f32>> {
        let dec = self.dec;
        let cfg = &dec.cfg;
        let (k, h, heads) = (cfg.num_codebooks, cfg.hidden_size, cfg.num_attention_heads);
        let b = self.batch;
        let (dev, dtype) = (dec.device().clone(), dec.dtype());
        if n == 0 || tokens.len() != k * n {
            return Err(Error::InvalidSetting(format!(
                "a step needs {k} codebooks × {n} positions of tokens, got {}",
                tokens.len()
            )));
        }
        if self.len + n > self.capacity {
            return Err(Error::InvalidSetting(format!(
                "a decoder window of {} steps is longer than the session's {} positions",
                self.len + n,
                self.capacity
            )));
        }
        if let Some(&t) = tokens.iter().find(|&&t| t as usize > cfg.vocab_size) {
            return Err(Error::InvalidSetting(format!(
                "token {t} outside the codebooks"
            )));
        }
        if inputs.len() > dec.layers.len() {
            return Err(Error::InvalidSetting(format!(
                "{} layer inputs for a decoder of {} layers",
                inputs.len(),
                dec.layers.len()
            )));
        }
        let ids = Tensor::from_slice(tokens, (k, n), &dev)?;
        let mut x = dec.positions.narrow(0, self.len, n)?;
        for (cb, table) in dec.embed.iter().enumerate() {
            x = (x + table.index_select(&ids.get(cb)?, 0)?)?;
        }
        let mut x = x.unsqueeze(0)?.broadcast_as((b, n, h))?.contiguous()?;
        let total = self.len + n;
        // Within this step's positions, each reads only those before it.
        let causal = if n > 1 {
            let before = self.len;
            let v: Vec<f32> = (0..n)
                .flat_map(|q| {
                    (0..total).map(move |key| if key <= before + q { 0.0 } else { f32::MIN })
                })
                .collect();
            Some(Tensor::from_vec(v, (1, 1, n, total), &dev)?.to_dtype(dtype)?)
        } else {
            None
        };
        let Some(stepping) = &dec.stepping else {
            return Err(Error::InvalidSetting(
                "a decoding session needs the decoder's inference copy (to_device)".into(),
            ));
        };
        // The queries' projections carry `head_dim^-0.5` ([`Stepping`]).
        for (li, layer) in dec.layers.iter().enumerate() {
            if let Some(Some(held)) = self.held_inputs.get(li) {
                x = (x + held.narrow(1, self.len, n)?)?;
            } else if let Some(Some(add)) = inputs.get(li) {
                if add.len() != n * h {
                    return Err(Error::InvalidSetting(format!(
                        "layer input {li} has {} values, expected {}",
                        add.len(),
                        n * h
                    )));
                }
                let mut rows = add.to_vec();
                rows.resize(b * n * h, 0.0);
                let add = Tensor::from_vec(rows, (b, n, h), &dev)?.to_dtype(dtype)?;
                x = (x + add)?;
            }
            // Self-attention over the cache and this step's positions.
            let a = &layer.self_attn;
            let nx = layer.self_norm.forward_fused(&x)?;
            let q = split_heads(&a.q.forward(&nx)?, heads)?.contiguous()?;
            let kn = split_heads(&a.k.forward(&nx)?, heads)?.contiguous()?;
            let vn = split_heads(&a.v.forward(&nx)?, heads)?.contiguous()?;
            let (kc, vc) = &self.self_kv[li];
            kc.slice_set(&kn, 2, self.len)?;
            vc.slice_set(&vn, 2, self.len)?;
            let keys = kc.narrow(2, 0, total)?;
            let values = vc.narrow(2, 0, total)?;
            let mut scores = q.matmul(&keys.t()?)?;
            if let Some(c) = &causal {
                scores = scores.broadcast_add(c)?;
            }
            let probs = candle_nn::ops::softmax_last_dim(&scores)?;
            x = (x + a.out.forward(&merge_heads(&probs.matmul(&values)?)?)?)?;
            // Cross-attention to the conditioning states.
            if let Some((kv, bias)) = &self.cross {
                let a = &layer.cross_attn;
                let nx = layer.cross_norm.forward_fused(&x)?;
                let q = split_heads(&a.q.forward(&nx)?, heads)?.contiguous()?;
                let (ck, cv) = &kv[li];
                let mut scores = q.matmul(&ck.t()?)?;
                if let Some(bias) = bias {
                    scores = scores.broadcast_add(bias)?;
                }
                let probs = candle_nn::ops::softmax_last_dim(&scores)?;
                x = (x + a.out.forward(&merge_heads(&probs.matmul(cv)?)?)?)?;
            }
            let nx = layer.ff_norm.forward_fused(&x)?;
            x = (x + layer.fc2.forward(&layer.fc1.forward(&nx)?.gelu_erf()?)?)?;
        }
        self.len = total;
        let last = dec.norm.forward_fused(&x.narrow(1, n - 1, 1)?)?;
        // (batch, 1, codebooks · vocab): each sequence's codebooks in order.
        let logits = stepping.heads.forward(&last)?;
        Ok(logits.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?)
    }
}
