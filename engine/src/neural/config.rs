//! Model configuration as Hugging Face writes it (`config.json`,
//! `generation_config.json`), with the field names and defaults of `transformers`.

use std::path::Path;

use serde::Deserialize;

use crate::{Error, Result};

/// The longest sinusoidal position table a config may ask for.
const MAX_POSITIONS: usize = 1 << 16;

fn one() -> usize {
    1
}

/// `MusicgenConfig`: the three sub-models.
#[derive(Debug, Clone, Deserialize)]
pub struct MusicgenConfig {
    pub text_encoder: T5Config,
    pub audio_encoder: EncodecConfig,
    pub decoder: DecoderConfig,
}

impl MusicgenConfig {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::opening(path, e))?;
        let cfg: Self = serde_json::from_str(&text)
            .map_err(|e| Error::model_file(path, format!("not a MusicGen config: {e}")))?;
        cfg.validate()
            .map_err(|reason| Error::model_file(path, reason))?;
        Ok(cfg)
    }

    /// Checks the sizes the implementation divides by or indexes with, so a hostile or
    /// mistyped config is an error rather than a panic deep in a kernel.
    fn validate(&self) -> std::result::Result<(), String> {
        let d = &self.decoder;
        let t = &self.text_encoder;
        let a = &self.audio_encoder;
        let positive = [
            ("decoder.hidden_size", d.hidden_size),
            ("decoder.num_attention_heads", d.num_attention_heads),
            ("decoder.num_codebooks", d.num_codebooks),
            ("decoder.vocab_size", d.vocab_size),
            ("decoder.ffn_dim", d.ffn_dim),
            ("text_encoder.d_model", t.d_model),
            ("text_encoder.num_heads", t.num_heads),
            ("text_encoder.d_kv", t.d_kv),
            (
                "text_encoder.relative_attention_num_buckets",
                t.relative_attention_num_buckets,
            ),
            ("audio_encoder.hidden_size", a.hidden_size),
            ("audio_encoder.num_filters", a.num_filters),
            ("audio_encoder.codebook_size", a.codebook_size),
        ];
        for (name, v) in positive {
            if v == 0 {
                return Err(format!("{name} is 0"));
            }
        }
        if d.hidden_size % d.num_attention_heads != 0 {
            return Err(format!(
                "decoder.hidden_size {} is not a multiple of num_attention_heads {}",
                d.hidden_size, d.num_attention_heads
            ));
        }
        if d.hidden_size < 4 {
            return Err("decoder.hidden_size is too small for sinusoidal positions".into());
        }
        if d.audio_channels != 1 {
            return Err("only mono MusicGen checkpoints are supported (audio_channels = 1)".into());
        }
        if a.upsampling_ratios.is_empty() || a.upsampling_ratios.contains(&0) {
            return Err("audio_encoder.upsampling_ratios must be non-zero".into());
        }
        // Sizes no checkpoint tensor pins down, bounded so a hostile file cannot ask
        // for an allocation that takes the process down.
        if d.max_position_embeddings > MAX_POSITIONS {
            return Err(format!(
                "decoder.max_position_embeddings {} (at most {MAX_POSITIONS})",
                d.max_position_embeddings
            ));
        }
        if a.upsampling_ratios.len() > 8 || a.upsampling_ratios.iter().any(|&r| r > 64) {
            return Err("audio_encoder.upsampling_ratios: at most 8 stages of at most 64".into());
        }
        if !(1..=64).contains(&a.num_quantizers()) {
            return Err(format!(
                "audio_encoder.target_bandwidths give {} quantizers (expected 1–64)",
                a.num_quantizers()
            ));
        }
        if a.codebook_size != d.vocab_size {
            return Err(format!(
                "decoder.vocab_size {} differs from audio_encoder.codebook_size {}",
                d.vocab_size, a.codebook_size
            ));
        }
        if !matches!(t.dense_act_fn().as_str(), "relu" | "gelu_new" | "gelu") {
            return Err(format!(
                "text_encoder.feed_forward_proj `{}` is not supported",
                t.feed_forward_proj
            ));
        }
        if d.activation_function != "gelu" {
            return Err(format!(
                "decoder.activation_function `{}` is not supported",
                d.activation_function
            ));
        }
        if a.use_causal_conv || a.norm_type != "weight_norm" || a.audio_channels != 1 {
            return Err(
                "only the non-causal, weight-normed mono EnCodec of MusicGen is supported".into(),
            );
        }
        Ok(())
    }
}

/// `T5Config`, encoder side.
#[derive(Debug, Clone, Deserialize)]
pub struct T5Config {
    pub vocab_size: usize,
    pub d_model: usize,
    pub d_kv: usize,
    pub d_ff: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    #[serde(default = "t5_buckets")]
    pub relative_attention_num_buckets: usize,
    #[serde(default = "t5_max_distance")]
    pub relative_attention_max_distance: usize,
    #[serde(default = "t5_eps")]
    pub layer_norm_epsilon: f64,
    #[serde(default = "t5_proj")]
    pub feed_forward_proj: String,
}

fn t5_buckets() -> usize {
    32
}
fn t5_max_distance() -> usize {
    128
}
fn t5_eps() -> f64 {
    1e-6
}
fn t5_proj() -> String {
    "relu".into()
}

impl T5Config {
    /// "gated-gelu" means a gated feed-forward with the tanh GELU, as transformers reads it.
    pub fn is_gated(&self) -> bool {
        self.feed_forward_proj.starts_with("gated-")
    }

    pub fn dense_act_fn(&self) -> String {
        let act = self
            .feed_forward_proj
            .strip_prefix("gated-")
            .unwrap_or(&self.feed_forward_proj);
        if act == "gelu" && self.is_gated() {
            "gelu_new".into()
        } else {
            act.into()
        }
    }
}

/// `EncodecConfig`, the parts the decoder needs.
#[derive(Debug, Clone, Deserialize)]
pub struct EncodecConfig {
    pub sampling_rate: u32,
    #[serde(default = "one")]
    pub audio_channels: usize,
    pub num_filters: usize,
    pub hidden_size: usize,
    #[serde(default)]
    pub codebook_dim: Option<usize>,
    pub codebook_size: usize,
    pub upsampling_ratios: Vec<usize>,
    pub target_bandwidths: Vec<f64>,
    #[serde(default = "two")]
    pub num_lstm_layers: usize,
    #[serde(default = "weight_norm")]
    pub norm_type: String,
    #[serde(default = "reflect")]
    pub pad_mode: String,
    #[serde(default)]
    pub use_causal_conv: bool,
    #[serde(default = "two")]
    pub compress: usize,
    #[serde(default = "three")]
    pub residual_kernel_size: usize,
    #[serde(default = "two")]
    pub dilation_growth_rate: usize,
    #[serde(default = "one")]
    pub num_residual_layers: usize,
    #[serde(default = "seven")]
    pub kernel_size: usize,
    #[serde(default = "seven")]
    pub last_kernel_size: usize,
    #[serde(default)]
    pub use_conv_shortcut: bool,
}

fn two() -> usize {
    2
}
fn three() -> usize {
    3
}
fn seven() -> usize {
    7
}
fn weight_norm() -> String {
    "weight_norm".into()
}
fn reflect() -> String {
    "reflect".into()
}

impl EncodecConfig {
    pub fn codebook_dim(&self) -> usize {
        self.codebook_dim.unwrap_or(self.hidden_size)
    }

    /// Audio samples per code frame.
    pub fn hop_length(&self) -> usize {
        self.upsampling_ratios.iter().product()
    }

    /// Code frames per second (50 for MusicGen's 32 kHz codec).
    pub fn frame_rate(&self) -> usize {
        (self.sampling_rate as usize).div_ceil(self.hop_length())
    }

    /// Number of residual quantizers, as `transformers` derives it.
    pub fn num_quantizers(&self) -> usize {
        let max_bw = self.target_bandwidths.iter().cloned().fold(0.0, f64::max);
        ((1000.0 * max_bw) / (self.frame_rate() as f64 * 10.0)).floor() as usize
    }
}

/// `MusicgenDecoderConfig`.
#[derive(Debug, Clone, Deserialize)]
pub struct DecoderConfig {
    pub vocab_size: usize,
    #[serde(default = "max_positions")]
    pub max_position_embeddings: usize,
    pub num_hidden_layers: usize,
    pub ffn_dim: usize,
    pub num_attention_heads: usize,
    pub hidden_size: usize,
    #[serde(default = "gelu")]
    pub activation_function: String,
    #[serde(default = "four")]
    pub num_codebooks: usize,
    #[serde(default = "one")]
    pub audio_channels: usize,
    #[serde(default)]
    pub cross_attention_hidden_size: Option<usize>,
}

fn max_positions() -> usize {
    2048
}
fn gelu() -> String {
    "gelu".into()
}
fn four() -> usize {
    4
}

impl DecoderConfig {
    /// The token that fills the delay pattern's gaps and starts every sequence.
    pub fn pad_token(&self) -> u32 {
        self.vocab_size as u32
    }
}

/// `generation_config.json`: the sampling defaults the checkpoint ships with.
#[derive(Debug, Clone, Deserialize)]
pub struct GenerationConfig {
    #[serde(default = "yes")]
    pub do_sample: bool,
    #[serde(default = "guidance")]
    pub guidance_scale: f64,
    #[serde(default = "top_k")]
    pub top_k: usize,
    #[serde(default)]
    pub top_p: Option<f64>,
    #[serde(default = "temperature")]
    pub temperature: f64,
}

fn yes() -> bool {
    true
}
fn guidance() -> f64 {
    3.0
}
fn top_k() -> usize {
    250
}
fn temperature() -> f64 {
    1.0
}

impl Default for GenerationConfig {
    fn default() -> Self {
        Self {
            do_sample: true,
            guidance_scale: guidance(),
            top_k: top_k(),
            top_p: None,
            temperature: temperature(),
        }
    }
}

impl GenerationConfig {
    /// The file's values, or MusicGen's defaults when the file is absent.
    pub fn load_or_default(path: &Path) -> Result<Self> {
        match std::fs::read_to_string(path) {
            Ok(text) => serde_json::from_str(&text)
                .map_err(|e| Error::model_file(path, format!("not a generation config: {e}"))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(Error::io(path, e)),
        }
    }
}
