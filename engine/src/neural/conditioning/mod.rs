//! The VidMusician method's trainable parts beside a frozen MusicGen: the
//! semantic module (CLIP global features into cross-attention, through a
//! LoRA-tuned T5) and the rhythm module (the rhythm curve into each block's
//! first layer, in-attention). DESIGN.md ("The method") lists what the method
//! fixes; [`AdapterConfig`] holds what it leaves open.
//!
//! - [`semantic`]: embedding manager → T5 with LoRA → projector.
//! - [`rhythm`]: Zero-Linear → chain of Identity-Linears, one per block.
//! - [`adapter`]: both, with their config, for one base model; the adapter file.

pub mod adapter;
pub mod rhythm;
pub mod semantic;

use candle_core::{DType, Device, Tensor, Var};
use rand::{Rng, SeedableRng};

use crate::neural::config::{DecoderConfig, MusicgenConfig, T5Config};
use crate::{Error, Result};

pub use adapter::{Adapter, AdapterInfo};
pub use rhythm::RhythmModule;
pub use semantic::SemanticModule;

/// The choices the method leaves open, saved with an adapter.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct AdapterConfig {
    /// Width of the CLIP global features the semantic module reads: the
    /// vision tower's pooled output (`hidden_size`: 768 for ViT-B, 1024 for
    /// ViT-L/14).
    pub clip_width: usize,
    /// LoRA rank on T5's attention projections.
    pub lora_rank: usize,
    /// LoRA's scale is `alpha / rank`.
    pub lora_alpha: f64,
    /// Which of T5's attention projections get a LoRA (`q`, `k`, `v`, `o`).
    pub lora_targets: Vec<String>,
    /// Decoder layers per block: the rhythm input enters before each block's
    /// first layer.
    pub block_size: usize,
    /// The share of blocks, from the first, that take the rhythm input
    /// (rounded up).
    pub rhythm_fraction: f64,
    /// Rhythm-curve samples each side of a code frame that the rhythm module
    /// reads: its input width is `2 · context + 1`, the curve around the frame.
    pub rhythm_context: usize,
    /// Scale each piece's rhythm curve so that its largest change after the
    /// first frame is 1 (the first frame stays 1, as the method has it). The
    /// raw distances are small and differ between CLIP models (a cut moves
    /// tiny random CLIP by 0.06, real ones by a few tenths), and the
    /// Zero-Linear learns slowly from small inputs.
    pub rhythm_normalise: bool,
    /// Chance, per training window, that its conditions (caption, pictures,
    /// rhythm) are dropped, so that classifier-free guidance works at
    /// inference.
    pub condition_dropout: f64,
    /// Seed of the random initialisation (embedding manager, LoRA `A`).
    pub seed: u64,
}

impl Default for AdapterConfig {
    fn default() -> Self {
        Self {
            clip_width: 768,
            lora_rank: 8,
            lora_alpha: 16.0,
            lora_targets: vec!["q".into(), "v".into()],
            block_size: 4,
            rhythm_fraction: 0.75,
            rhythm_context: 2,
            rhythm_normalise: true,
            condition_dropout: 0.1,
            seed: 0,
        }
    }
}

impl AdapterConfig {
    /// Checks the fields against each other and against `decoder`, so that a
    /// hostile or mistyped config is an error, not a panic.
    pub fn validate(&self, decoder: &DecoderConfig) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidSetting(format!("adapter config: {m}")));
        if self.clip_width == 0 || self.clip_width > 65_536 {
            return bad(format!("clip_width {} out of range", self.clip_width));
        }
        if self.lora_rank == 0 || self.lora_rank > 1024 {
            return bad(format!(
                "lora_rank {} out of range 1..=1024",
                self.lora_rank
            ));
        }
        if !self.lora_alpha.is_finite() {
            return bad("lora_alpha is not a number".into());
        }
        if let Some(t) = self
            .lora_targets
            .iter()
            .find(|t| !crate::neural::t5::T5Encoder::LORA_TARGETS.contains(&t.as_str()))
        {
            return bad(format!("unknown LoRA target `{t}` (q, k, v or o)"));
        }
        if self.block_size == 0 || self.block_size > decoder.num_hidden_layers {
            return bad(format!(
                "block_size {} for a decoder of {} layers",
                self.block_size, decoder.num_hidden_layers
            ));
        }
        if !(0.0..=1.0).contains(&self.rhythm_fraction) {
            return bad(format!(
                "rhythm_fraction {} outside 0..=1",
                self.rhythm_fraction
            ));
        }
        if self.rhythm_context > 256 {
            return bad(format!("rhythm_context {} over 256", self.rhythm_context));
        }
        if !(0.0..=1.0).contains(&self.condition_dropout) {
            return bad(format!(
                "condition_dropout {} outside 0..=1",
                self.condition_dropout
            ));
        }
        Ok(())
    }

    /// Values per code frame the rhythm module reads.
    pub fn rhythm_width(&self) -> usize {
        2 * self.rhythm_context + 1
    }

    /// Trainable values of an adapter of this config on a MusicGen of `base`'s
    /// shape, at `stage` (1: the semantic module and LoRA; 2: with the rhythm
    /// module).
    pub fn trainable_count(&self, base: &MusicgenConfig, stage: u8) -> usize {
        self.count_for(&base.text_encoder, &base.decoder, stage)
    }

    fn count_for(&self, t: &T5Config, decoder: &DecoderConfig, stage: u8) -> usize {
        let (d, inner, h) = (t.d_model, t.num_heads * t.d_kv, decoder.hidden_size);
        let manager = self.clip_width * d + d;
        // q, k and v map d → inner, o inner → d: a rank-r pair holds r·(d + inner).
        let lora = t.num_layers * self.lora_targets.len() * self.lora_rank * (d + inner);
        let projector = d * h + h;
        let semantic = manager + lora + projector;
        if stage < 2 {
            return semantic;
        }
        let zero = h * self.rhythm_width() + h;
        semantic + zero + self.rhythm_blocks(decoder) * (h * h + h)
    }

    /// How many blocks, from the first, take the rhythm input.
    pub fn rhythm_blocks(&self, decoder: &DecoderConfig) -> usize {
        let blocks = decoder.num_hidden_layers.div_ceil(self.block_size.max(1));
        ((blocks as f64 * self.rhythm_fraction).ceil() as usize).min(blocks)
    }
}

/// The trainable tensors, in creation order, by name: what the optimiser
/// updates and the adapter file holds.
#[derive(Default, Clone)]
pub struct Params {
    named: Vec<(String, Var)>,
}

impl Params {
    /// Adds a trainable tensor initialised to `init`.
    pub fn add(&mut self, name: impl Into<String>, init: &Tensor) -> Result<Var> {
        let name = name.into();
        if self.named.iter().any(|(n, _)| *n == name) {
            return Err(Error::InvalidSetting(format!(
                "two trainable tensors named {name}"
            )));
        }
        let var = Var::from_tensor(init)?;
        self.named.push((name, var.clone()));
        Ok(var)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &Var)> {
        self.named.iter().map(|(n, v)| (n.as_str(), v))
    }

    pub fn get(&self, name: &str) -> Option<&Var> {
        self.named.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }

    pub fn vars(&self) -> Vec<Var> {
        self.named.iter().map(|(_, v)| v.clone()).collect()
    }

    /// Trainable values in all.
    pub fn count(&self) -> usize {
        self.named.iter().map(|(_, v)| v.elem_count()).sum()
    }
}

/// A trainable affine map `y = x Wᵀ + b`, `W` `(out, in)` as PyTorch lays it
/// out. Unlike [`crate::neural::nn::Linear`] it keeps no transposed copy: the
/// optimiser updates `W` in place and the next forward must see it.
#[derive(Clone, Debug)]
pub struct Dense {
    pub weight: Var,
    pub bias: Var,
}

impl Dense {
    /// A new layer in `params` under `name` (`name.weight`, `name.bias`).
    pub fn new(params: &mut Params, name: &str, weight: &Tensor, bias: &Tensor) -> Result<Self> {
        Ok(Self {
            weight: params.add(format!("{name}.weight"), weight)?,
            bias: params.add(format!("{name}.bias"), bias)?,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims();
        let (out, inn) = self.weight.dims2()?;
        let rows = x.elem_count() / inn.max(1);
        let y = x
            .reshape((rows, inn))?
            .matmul(&self.weight.as_tensor().t()?)?
            .broadcast_add(self.bias.as_tensor())?;
        let mut shape = dims.to_vec();
        if let Some(last) = shape.last_mut() {
            *last = out;
        }
        Ok(y.reshape(shape)?)
    }
}

/// Deterministic random numbers for initialisation.
pub(crate) struct Init {
    rng: rand_chacha::ChaCha8Rng,
    device: Device,
    dtype: DType,
}

impl Init {
    pub(crate) fn new(seed: u64, device: &Device, dtype: DType) -> Self {
        Self {
            rng: rand_chacha::ChaCha8Rng::seed_from_u64(seed),
            device: device.clone(),
            dtype,
        }
    }

    /// PyTorch's default for a linear layer's weight: uniform in ±1/√in.
    pub(crate) fn uniform(&mut self, out: usize, inn: usize) -> Result<Tensor> {
        let a = 1.0 / (inn.max(1) as f32).sqrt();
        let v: Vec<f32> = (0..out * inn)
            .map(|_| self.rng.random_range(-a..a))
            .collect();
        self.tensor(v, &[out, inn])
    }

    pub(crate) fn zeros(&self, shape: &[usize]) -> Result<Tensor> {
        Ok(Tensor::zeros(shape, self.dtype, &self.device)?)
    }

    pub(crate) fn eye(&self, n: usize) -> Result<Tensor> {
        Ok(Tensor::eye(n, self.dtype, &self.device)?)
    }

    pub(crate) fn tensor(&self, v: Vec<f32>, shape: &[usize]) -> Result<Tensor> {
        Ok(Tensor::from_vec(v, shape, &self.device)?.to_dtype(self.dtype)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// musicgen-small's and -medium's shapes: T5-base, and a decoder 1024 wide
    /// with 24 layers or 1536 wide with 48.
    fn shapes(hidden: usize, layers: usize) -> (T5Config, DecoderConfig) {
        let t5 = serde_json::json!({
            "vocab_size": 32128, "d_model": 768, "d_kv": 64, "d_ff": 3072,
            "num_layers": 12, "num_heads": 12
        });
        let dec = serde_json::json!({
            "vocab_size": 2048, "num_hidden_layers": layers, "ffn_dim": hidden * 4,
            "num_attention_heads": 16, "hidden_size": hidden
        });
        (
            serde_json::from_value(t5).unwrap(),
            serde_json::from_value(dec).unwrap(),
        )
    }

    /// The figures the README gives beside the paper's 24.79M.
    #[test]
    fn trainable_counts_of_the_default_config_on_musicgen_small_and_medium() {
        let cfg = AdapterConfig::default();
        let (t5, small) = shapes(1024, 24);
        assert_eq!(cfg.rhythm_blocks(&small), 5);
        assert_eq!(cfg.count_for(&t5, &small, 1), 1_672_960);
        assert_eq!(cfg.count_for(&t5, &small, 2), 6_927_104);
        let (t5, medium) = shapes(1536, 48);
        assert_eq!(cfg.rhythm_blocks(&medium), 9);
        assert_eq!(cfg.count_for(&t5, &medium, 1), 2_066_688);
        assert_eq!(cfg.count_for(&t5, &medium, 2), 23_323_392);
        // CLIP ViT-L/14's 1024-wide features, LoRA of rank 16 on all four
        // projections: the nearest of our choices to the paper's count.
        let wide = AdapterConfig {
            clip_width: 1024,
            lora_rank: 16,
            lora_targets: ["q", "k", "v", "o"].map(String::from).to_vec(),
            ..cfg
        };
        assert_eq!(wide.count_for(&t5, &medium, 2), 24_404_736);
    }
}
