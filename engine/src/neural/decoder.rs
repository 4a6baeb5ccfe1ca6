//! The MusicGen decoder: a pre-LayerNorm transformer over the sum of the 4 codebook
//! embeddings, with sinusoidal positions, self-attention with a KV cache,
//! cross-attention to the conditioning states, a GELU feed-forward and one LM head per
//! codebook.
//!
//! Two inputs beyond MusicGen's own exist for the VidMusician method: the
//! cross-attention takes any sequence of states (text, and later text + visual), and
//! each layer can take an additive input before its self-attention (in-attention).

use candle_core::{DType, Device, Tensor};
use candle_nn::kv_cache::KvCache;

use super::config::DecoderConfig;
use super::nn::{LayerNorm, Linear, attention, embedding, merge_heads, split_heads};
use super::weights::Weights;
use crate::Result;

const LN_EPS: f64 = 1e-5;

struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
}

impl Attention {
    fn load(w: &Weights, dim: usize) -> Result<Self> {
        Ok(Self {
            q: Linear::load(&w.pp("q_proj"), dim, dim, false)?,
            k: Linear::load(&w.pp("k_proj"), dim, dim, false)?,
            v: Linear::load(&w.pp("v_proj"), dim, dim, false)?,
            out: Linear::load(&w.pp("out_proj"), dim, dim, false)?,
        })
    }
}

struct Layer {
    self_norm: LayerNorm,
    self_attn: Attention,
    cross_norm: LayerNorm,
    cross_attn: Attention,
    ff_norm: LayerNorm,
    fc1: Linear,
    fc2: Linear,
}

pub struct Decoder {
    embed: Vec<Tensor>,
    /// `(max_positions, hidden)`: not in checkpoints; built as transformers builds it.
    positions: Tensor,
    layers: Vec<Layer>,
    norm: LayerNorm,
    heads: Vec<Linear>,
    cfg: DecoderConfig,
    device: Device,
}

/// Cross-attention keys and values, computed once per generation from the
/// conditioning states.
pub struct CrossKv {
    /// Per layer `(k, v)`, each `(batch, heads, len, head_dim)`.
    kv: Vec<(Tensor, Tensor)>,
    /// `(batch, 1, 1, len)` additive mask.
    bias: Option<Tensor>,
}

/// Self-attention cache for one sequence (or one batch of sequences decoded together).
pub struct SelfCache {
    layers: Vec<KvCache>,
    len: usize,
}

impl SelfCache {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Decoder {
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
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let l = d.pp(format!("layers.{i}"));
            layers.push(Layer {
                self_norm: LayerNorm::load(&l.pp("self_attn_layer_norm"), h, LN_EPS)?,
                self_attn: Attention::load(&l.pp("self_attn"), h)?,
                cross_norm: LayerNorm::load(&l.pp("encoder_attn_layer_norm"), h, LN_EPS)?,
                cross_attn: Attention::load(&l.pp("encoder_attn"), h)?,
                ff_norm: LayerNorm::load(&l.pp("final_layer_norm"), h, LN_EPS)?,
                fc1: Linear::load(&l.pp("fc1"), h, cfg.ffn_dim, false)?,
                fc2: Linear::load(&l.pp("fc2"), cfg.ffn_dim, h, false)?,
            });
        }
        let heads = (0..cfg.num_codebooks)
            .map(|k| Linear::load(&w.pp(format!("lm_heads.{k}")), h, cfg.vocab_size, false))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            embed,
            positions: sinusoids(cfg.max_position_embeddings, h, w.device())?,
            layers,
            norm: LayerNorm::load(&d.pp("layer_norm"), h, LN_EPS)?,
            heads,
            cfg: cfg.clone(),
            device: w.device().clone(),
        })
    }

    pub fn config(&self) -> &DecoderConfig {
        &self.cfg
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    pub fn new_cache(&self, max_len: usize) -> SelfCache {
        SelfCache {
            layers: (0..self.layers.len())
                .map(|_| KvCache::new(2, max_len.max(1)))
                .collect(),
            len: 0,
        }
    }

    /// Cross-attention keys/values for `states` `(batch, len, hidden)`; `mask`
    /// `(batch, len)` is 1 for real positions and 0 for padding.
    pub fn cross_kv(&self, states: &Tensor, mask: Option<&Tensor>) -> Result<CrossKv> {
        let heads = self.cfg.num_attention_heads;
        let kv = self
            .layers
            .iter()
            .map(|l| {
                let k = split_heads(&l.cross_attn.k.forward(states)?, heads)?.contiguous()?;
                let v = split_heads(&l.cross_attn.v.forward(states)?, heads)?.contiguous()?;
                Ok((k, v))
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let bias = mask.map(super::t5::padding_bias).transpose()?;
        Ok(CrossKv { kv, bias })
    }

    /// Runs `codes` `(batch, codebooks, seq)` (u32) at the positions after what
    /// `cache` holds, and returns logits `(batch, codebooks, seq, vocab)`.
    ///
    /// `cross` is `None` for the unconditional branch of classifier-free guidance:
    /// it sees zeroed conditioning states, whose keys and values are zero, so its
    /// cross-attention adds exactly nothing and is skipped. `layer_inputs[i]`, when
    /// present, is added to the hidden state `(batch, seq, hidden)` before layer `i`.
    pub fn forward(
        &self,
        codes: &Tensor,
        cross: Option<&CrossKv>,
        cache: &mut SelfCache,
        layer_inputs: &[Option<Tensor>],
    ) -> Result<Tensor> {
        let (_, k, seq) = codes.dims3()?;
        if k != self.cfg.num_codebooks {
            return Err(crate::Error::InvalidSetting(format!(
                "{k} codebooks given to a decoder of {}",
                self.cfg.num_codebooks
            )));
        }
        let start = cache.len;
        if start + seq > self.cfg.max_position_embeddings {
            return Err(crate::Error::InvalidSetting(format!(
                "a decoder window of {} steps is longer than the model's {} positions",
                start + seq,
                self.cfg.max_position_embeddings
            )));
        }
        let mut x = embedding(&self.embed[0], &codes.narrow(1, 0, 1)?.squeeze(1)?)?;
        for (cb, table) in self.embed.iter().enumerate().skip(1) {
            x = (x + embedding(table, &codes.narrow(1, cb, 1)?.squeeze(1)?)?)?;
        }
        x = x.broadcast_add(&self.positions.narrow(0, start, seq)?)?;
        let causal = if seq > 1 {
            Some(causal_bias(seq, start, codes.device())?)
        } else {
            None
        };
        let heads = self.cfg.num_attention_heads;
        let scale = 1.0 / ((self.cfg.hidden_size / heads) as f64).sqrt();
        for (i, layer) in self.layers.iter().enumerate() {
            if let Some(Some(add)) = layer_inputs.get(i) {
                x = x.broadcast_add(add)?;
            }
            let h = layer.self_norm.forward(&x)?;
            let a = &layer.self_attn;
            let q = split_heads(&a.q.forward(&h)?, heads)?;
            let kk = split_heads(&a.k.forward(&h)?, heads)?.contiguous()?;
            let vv = split_heads(&a.v.forward(&h)?, heads)?.contiguous()?;
            let (kk, vv) = cache.layers[i].append(&kk, &vv)?;
            let y = attention(&q, &kk, &vv, Some(scale), causal.as_ref())?;
            x = (x + a.out.forward(&merge_heads(&y)?)?)?;
            if let Some(c) = cross {
                let h = layer.cross_norm.forward(&x)?;
                let a = &layer.cross_attn;
                let q = split_heads(&a.q.forward(&h)?, heads)?;
                let (ck, cv) = &c.kv[i];
                let y = attention(&q, ck, cv, Some(scale), c.bias.as_ref())?;
                x = (x + a.out.forward(&merge_heads(&y)?)?)?;
            }
            let h = layer.ff_norm.forward(&x)?;
            let h = layer.fc2.forward(&layer.fc1.forward(&h)?.gelu_erf()?)?;
            x = (x + h)?;
        }
        cache.len += seq;
        let x = self.norm.forward(&x)?;
        let logits = self
            .heads
            .iter()
            .map(|head| head.forward(&x))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Tensor::stack(&logits, 1)?)
    }
}

/// `(seq, start + seq)` additive causal mask for a chunk that starts after `start`
/// cached positions.
fn causal_bias(seq: usize, start: usize, device: &Device) -> candle_core::Result<Tensor> {
    let total = start + seq;
    let mut m = vec![0f32; seq * total];
    for q in 0..seq {
        for k in (start + q + 1)..total {
            m[q * total + k] = f32::MIN;
        }
    }
    Tensor::from_vec(m, (seq, total), device)
}

/// The decoder's sinusoidal position table: cos in the first half, sin in the second,
/// as transformers' `MusicgenSinusoidalPositionalEmbedding` builds it (in f32).
pub fn sinusoids(positions: usize, dim: usize, device: &Device) -> candle_core::Result<Tensor> {
    let half = dim / 2;
    let step = (10000f64.ln() / (half as f64 - 1.0)) as f32;
    let freqs: Vec<f32> = (0..half).map(|i| (i as f32 * -step).exp()).collect();
    let mut table = vec![0f32; positions * dim];
    for p in 0..positions {
        let row = &mut table[p * dim..(p + 1) * dim];
        for (i, f) in freqs.iter().enumerate() {
            let a = p as f32 * f;
            row[i] = a.cos();
            row[half + i] = a.sin();
        }
    }
    Tensor::from_vec(table, (positions, dim), device)?.to_dtype(DType::F32)
}
