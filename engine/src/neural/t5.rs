//! The T5 text encoder, with an attention mask for padded batches. Its linear layers
//! are [`Linear`]s so that LoRA can wrap them for training, and it can encode input
//! embeddings as well as token ids (the semantic module feeds it CLIP features).

use candle_core::{DType, Device, Tensor};

use super::config::T5Config;
use super::nn::{Linear, Lora, RmsNorm, attention, embedding, merge_heads, split_heads};
use super::weights::Weights;
use crate::Result;

#[derive(Clone)]
struct SelfAttention {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    heads: usize,
}

#[derive(Clone)]
enum FeedForward {
    Plain {
        wi: Linear,
        wo: Linear,
        act: Act,
    },
    Gated {
        wi_0: Linear,
        wi_1: Linear,
        wo: Linear,
        act: Act,
    },
}

#[derive(Clone, Copy)]
enum Act {
    Relu,
    GeluErf,
    GeluTanh,
}

impl Act {
    fn apply(self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Act::Relu => x.relu(),
            Act::GeluErf => x.gelu_erf(),
            Act::GeluTanh => x.gelu(),
        }
    }
}

#[derive(Clone)]
struct Block {
    attn_norm: RmsNorm,
    attn: SelfAttention,
    ff_norm: RmsNorm,
    ff: FeedForward,
}

#[derive(Clone)]
pub struct T5Encoder {
    shared: Tensor,
    /// `(buckets, heads)`, held by the first block and shared by all.
    relative_bias: Tensor,
    blocks: Vec<Block>,
    final_norm: RmsNorm,
    cfg: T5Config,
}

impl T5Encoder {
    /// Loads the encoder from `w`, which points at the T5 model (`text_encoder` in a
    /// MusicGen checkpoint).
    pub fn load(w: &Weights, cfg: &T5Config) -> Result<Self> {
        let d = cfg.d_model;
        let inner = cfg.num_heads * cfg.d_kv;
        let shared = w.get_any(
            &[cfg.vocab_size, d],
            &["shared.weight", "encoder.embed_tokens.weight"],
        )?;
        let act = match cfg.dense_act_fn().as_str() {
            "relu" => Act::Relu,
            "gelu_new" => Act::GeluTanh,
            _ => Act::GeluErf,
        };
        let enc = w.pp("encoder");
        let mut blocks = Vec::with_capacity(cfg.num_layers);
        for i in 0..cfg.num_layers {
            let b = enc.pp(format!("block.{i}"));
            let a = b.pp("layer.0.SelfAttention");
            let attn = SelfAttention {
                q: Linear::load(&a.pp("q"), d, inner, false)?,
                k: Linear::load(&a.pp("k"), d, inner, false)?,
                v: Linear::load(&a.pp("v"), d, inner, false)?,
                o: Linear::load(&a.pp("o"), inner, d, false)?,
                heads: cfg.num_heads,
            };
            let f = b.pp("layer.1.DenseReluDense");
            let ff = if cfg.is_gated() {
                FeedForward::Gated {
                    wi_0: Linear::load(&f.pp("wi_0"), d, cfg.d_ff, false)?,
                    wi_1: Linear::load(&f.pp("wi_1"), d, cfg.d_ff, false)?,
                    wo: Linear::load(&f.pp("wo"), cfg.d_ff, d, false)?,
                    act,
                }
            } else {
                FeedForward::Plain {
                    wi: Linear::load(&f.pp("wi"), d, cfg.d_ff, false)?,
                    wo: Linear::load(&f.pp("wo"), cfg.d_ff, d, false)?,
                    act,
                }
            };
            blocks.push(Block {
                attn_norm: RmsNorm::load(&b.pp("layer.0.layer_norm"), d, cfg.layer_norm_epsilon)?,
                attn,
                ff_norm: RmsNorm::load(&b.pp("layer.1.layer_norm"), d, cfg.layer_norm_epsilon)?,
                ff,
            });
        }
        let relative_bias = enc.get(
            &[cfg.relative_attention_num_buckets, cfg.num_heads],
            "block.0.layer.0.SelfAttention.relative_attention_bias.weight",
        )?;
        Ok(Self {
            shared,
            relative_bias,
            blocks,
            final_norm: RmsNorm::load(&enc.pp("final_layer_norm"), d, cfg.layer_norm_epsilon)?,
            cfg: cfg.clone(),
        })
    }

    pub fn device(&self) -> &Device {
        self.shared.device()
    }

    pub fn hidden_size(&self) -> usize {
        self.cfg.d_model
    }

    pub fn vocab_size(&self) -> usize {
        self.cfg.vocab_size
    }

    /// The attention projections a LoRA can wrap, by the names T5's checkpoints
    /// give them.
    pub const LORA_TARGETS: [&str; 4] = ["q", "k", "v", "o"];

    /// This encoder with a LoRA beside each self-attention projection named in
    /// `targets` (of [`T5Encoder::LORA_TARGETS`]); `make(name, in, out)` creates
    /// each, `name` being the projection's checkpoint path
    /// (`encoder.block.0.layer.0.SelfAttention.q`). The frozen weights are shared
    /// with `self`.
    pub fn with_lora(
        &self,
        targets: &[String],
        make: &mut dyn FnMut(&str, usize, usize) -> Result<Lora>,
    ) -> Result<Self> {
        let mut out = self.clone();
        for (i, block) in out.blocks.iter_mut().enumerate() {
            let a = &mut block.attn;
            for (name, lin) in [
                ("q", &mut a.q),
                ("k", &mut a.k),
                ("v", &mut a.v),
                ("o", &mut a.o),
            ] {
                if targets.iter().any(|t| t == name) {
                    let path = format!("encoder.block.{i}.layer.0.SelfAttention.{name}");
                    let lora = make(&path, lin.in_dim(), lin.out_dim())?;
                    *lin = lin.with_lora(lora);
                }
            }
        }
        Ok(out)
    }

    /// The same encoder in `dtype`.
    pub fn to_dtype(&self, dtype: DType) -> Result<Self> {
        let mut out = self.clone();
        out.shared = self.shared.to_dtype(dtype)?;
        out.relative_bias = self.relative_bias.to_dtype(dtype)?;
        out.final_norm = self.final_norm.to_dtype(dtype)?;
        for b in &mut out.blocks {
            b.attn_norm = b.attn_norm.to_dtype(dtype)?;
            b.ff_norm = b.ff_norm.to_dtype(dtype)?;
            let a = &mut b.attn;
            for lin in [&mut a.q, &mut a.k, &mut a.v, &mut a.o] {
                *lin = lin.to_dtype(dtype)?;
            }
            match &mut b.ff {
                FeedForward::Plain { wi, wo, .. } => {
                    *wi = wi.to_dtype(dtype)?;
                    *wo = wo.to_dtype(dtype)?;
                }
                FeedForward::Gated { wi_0, wi_1, wo, .. } => {
                    *wi_0 = wi_0.to_dtype(dtype)?;
                    *wi_1 = wi_1.to_dtype(dtype)?;
                    *wo = wo.to_dtype(dtype)?;
                }
            }
        }
        Ok(out)
    }

    /// Encodes `ids` `(batch, len)` (u32); `mask` `(batch, len)` is 1 for tokens and
    /// 0 for padding. Returns `(batch, len, d_model)`.
    pub fn forward(&self, ids: &Tensor, mask: &Tensor) -> Result<Tensor> {
        self.forward_embeds(&embedding(&self.shared, ids)?, mask)
    }

    /// Encodes input embeddings `(batch, len, d_model)` in place of token ids.
    pub fn forward_embeds(&self, x: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let (_, len, _) = x.dims3()?;
        let mut x = x.clone();
        let bias = self
            .position_bias(len, x.device())?
            .broadcast_add(&padding_bias(mask)?.to_dtype(x.dtype())?)?;
        for block in &self.blocks {
            let h = block.attn_norm.forward(&x)?;
            let a = &block.attn;
            let q = split_heads(&a.q.forward(&h)?, a.heads)?;
            let k = split_heads(&a.k.forward(&h)?, a.heads)?;
            let v = split_heads(&a.v.forward(&h)?, a.heads)?;
            // T5 folds its scale into the weights: no 1/√d here.
            let y = attention(&q, &k, &v, None, Some(&bias))?;
            x = (x + a.o.forward(&merge_heads(&y)?)?)?;
            let h = block.ff_norm.forward(&x)?;
            let y = match &block.ff {
                FeedForward::Plain { wi, wo, act } => wo.forward(&act.apply(&wi.forward(&h)?)?)?,
                FeedForward::Gated {
                    wi_0,
                    wi_1,
                    wo,
                    act,
                } => {
                    let g = act.apply(&wi_0.forward(&h)?)?;
                    wo.forward(&(g * wi_1.forward(&h)?)?)?
                }
            };
            x = (x + y)?;
        }
        Ok(self.final_norm.forward(&x)?)
    }

    /// `(1, heads, len, len)` relative position bias.
    fn position_bias(&self, len: usize, device: &Device) -> candle_core::Result<Tensor> {
        let mut buckets = Vec::with_capacity(len * len);
        for q in 0..len {
            for k in 0..len {
                buckets.push(relative_bucket(
                    k as i64 - q as i64,
                    self.cfg.relative_attention_num_buckets,
                    self.cfg.relative_attention_max_distance,
                ));
            }
        }
        let ids = Tensor::from_vec(buckets, (len, len), device)?;
        embedding(&self.relative_bias, &ids)?
            .permute((2, 0, 1))?
            .unsqueeze(0)
    }
}

/// `(batch, 1, 1, len)`: 0 where `mask` is 1, the most negative f32 where it is 0, as
/// transformers builds it.
pub fn padding_bias(mask: &Tensor) -> candle_core::Result<Tensor> {
    let m = mask.to_dtype(DType::F32)?;
    let bias = ((m - 1.0)? * -(f32::MIN as f64))?;
    bias.unsqueeze(1)?.unsqueeze(1)
}

/// T5's bidirectional bucket for `relative = key − query`, computed in f32 in the
/// same order as the reference so boundary positions fall in the same bucket.
fn relative_bucket(relative: i64, num_buckets: usize, max_distance: usize) -> u32 {
    let half = (num_buckets / 2) as i64;
    let mut bucket = if relative > 0 { half } else { 0 };
    let n = relative.abs();
    let max_exact = half / 2;
    if n < max_exact {
        bucket += n;
    } else {
        let ratio = (n as f32 / max_exact as f32).ln();
        let denom = ((max_distance as f64) / (max_exact as f64)).ln() as f32;
        let large = max_exact + ((ratio / denom) * (half - max_exact) as f32) as i64;
        bucket += large.min(half - 1);
    }
    bucket as u32
}

#[cfg(test)]
mod tests {
    use super::relative_bucket;

    #[test]
    fn buckets_match_t5_for_its_default_geometry() {
        // Values from transformers' `_relative_position_bucket` with 32 buckets and
        // max distance 128, bidirectional.
        let cases = [
            (0, 0),
            (-1, 1),
            (1, 17),
            (-7, 7),
            (-8, 8),
            (-12, 9),
            (-16, 10),
            (-64, 14),
            (-200, 15),
            (200, 31),
            (9, 24),
        ];
        for (rel, want) in cases {
            assert_eq!(relative_bucket(rel, 32, 128), want, "relative {rel}");
        }
    }
}
