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
        if !d.hidden_size.is_multiple_of(d.num_attention_heads) {
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
                "audio_encoder.target_bandwidths and codebook_size give {} quantizers \
                 (expected 1–64)",
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
        // Both change the decoder's arithmetic; read as MusicGen's they would
        // decode to wrong audio without a word.
        if a.use_conv_shortcut {
            return Err(
                "audio_encoder.use_conv_shortcut is true (or missing, which transformers reads \
                 as true): only MusicGen's EnCodec, without shortcut convolutions, is supported"
                    .into(),
            );
        }
        if a.pad_mode != "reflect" {
            return Err(format!(
                "audio_encoder.pad_mode `{}` is not supported (MusicGen's EnCodec pads by reflection)",
                a.pad_mode
            ));
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

/// `EncodecConfig`, the parts the decoder and the encoder need.
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
    /// transformers' default is a 1×1 convolution on each residual block's
    /// shortcut; MusicGen's codecs say `false`, and a config that leaves it
    /// out is read as transformers reads it (and refused).
    #[serde(default = "yes")]
    pub use_conv_shortcut: bool,
    /// Whether the encoder scales its input to unit RMS first (48 kHz EnCodec;
    /// MusicGen's codec does not).
    #[serde(default)]
    pub normalize: bool,
    /// Whether the encoder cuts its input into chunks of this many seconds (48 kHz
    /// EnCodec; MusicGen's codec encodes a piece whole).
    #[serde(default)]
    pub chunk_length_s: Option<f64>,
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

    /// Bits of one code: `ceil(log2(codebook_size))`, 0 for a codebook of one code.
    pub fn codebook_nbits(&self) -> usize {
        self.codebook_size.next_power_of_two().trailing_zeros() as usize
    }

    /// Number of residual quantizers, as `transformers` (5.x) derives it in
    /// `EncodecConfig.num_quantizers`:
    ///
    /// ```text
    /// int(1000 * target_bandwidths[-1] // (frame_rate * ceil(log2(codebook_size))))
    /// ```
    ///
    /// with `frame_rate = ceil(sampling_rate / prod(upsampling_ratios))`: the *last*
    /// bandwidth (not the largest) and Python's float floor division. Older versions
    /// divided by `frame_rate * 10`: the same for 1024-code codebooks, and by luck of
    /// the rounding for facebook/musicgen-* (2048 codes at 2.2 kbps: 4 either way), but
    /// not in general (32 codes at 1.0 kbps: 4 quantizers, where the old formula said 2).
    /// A config Python would fail on (no bandwidth, a one-code codebook, a zero
    /// sampling rate) gives 0, which [`MusicgenConfig`]'s validation refuses.
    pub fn num_quantizers(&self) -> usize {
        let Some(&bandwidth) = self.target_bandwidths.last() else {
            return 0;
        };
        let per_quantizer = self.frame_rate() * self.codebook_nbits();
        if per_quantizer == 0 {
            return 0;
        }
        // `as` saturates: negative and NaN give 0, infinity more than any bound.
        py_floor_div(1000.0 * bandwidth, per_quantizer as f64) as usize
    }
}

/// Python's `a // b` on floats, step by step as CPython's `float_floor_div` does it
/// (`fmod`, then snapping the quotient to an integer); not always `(a / b).floor()`:
/// `1.0 // 0.1` is 9.
fn py_floor_div(a: f64, b: f64) -> f64 {
    let rem = a % b;
    let mut div = (a - rem) / b;
    if rem != 0.0 && ((b < 0.0) != (rem < 0.0)) {
        div -= 1.0;
    }
    if div != 0.0 {
        let floor = div.floor();
        if div - floor > 0.5 {
            floor + 1.0
        } else {
            floor
        }
    } else {
        0.0f64.copysign(a / b)
    }
}

/// `MusicgenDecoderConfig`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
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

#[cfg(test)]
mod tests {
    use super::*;

    fn codec(rate: u32, ratios: &[usize], bandwidths: &[f64], codebook: usize) -> EncodecConfig {
        serde_json::from_value(serde_json::json!({
            "sampling_rate": rate,
            "num_filters": 4,
            "hidden_size": 8,
            "codebook_size": codebook,
            "upsampling_ratios": ratios,
            "target_bandwidths": bandwidths,
        }))
        .unwrap()
    }

    /// The count this crate used before: the formula of `transformers` before 5.x
    /// (`frame_rate * 10`), with the largest bandwidth; kept to show where the two part.
    fn old_formula(c: &EncodecConfig) -> usize {
        let max_bw = c.target_bandwidths.iter().cloned().fold(0.0, f64::max);
        ((1000.0 * max_bw) / (c.frame_rate() as f64 * 10.0)).floor() as usize
    }

    #[test]
    fn musicgen_small_has_four_quantizers() {
        let c = codec(32_000, &[8, 5, 4, 4], &[2.2], 2048);
        assert_eq!(c.frame_rate(), 50);
        assert_eq!(c.codebook_nbits(), 11);
        assert_eq!(c.num_quantizers(), 4);
        assert_eq!(old_formula(&c), 4, "the two formulas agree here");
    }

    #[test]
    fn quantizers_follow_the_codebook_size_as_transformers_5_counts_them() {
        // Each config's count in transformers 5.24 (as `EncodecConfig(...).num_quantizers`
        // printed it) and by the old count.
        let check = |c: EncodecConfig, new: usize, old: usize| {
            let what = format!(
                "{} Hz {:?} {} codes",
                c.sampling_rate, c.target_bandwidths, c.codebook_size
            );
            assert_eq!(c.num_quantizers(), new, "{what}");
            assert_eq!(old_formula(&c), old, "{what}");
        };
        // the tiny fixtures: 64 codes at 2.2 kbps, 32 codes at 1.0 kbps
        check(codec(32_000, &[8, 5, 4, 4], &[2.2], 64), 7, 4);
        check(codec(32_000, &[8, 5, 4, 4], &[1.0], 32), 4, 2);
        check(codec(32_000, &[8, 5, 4, 4], &[0.9], 8), 6, 1);
        // EnCodec 24 kHz: the last bandwidth is the largest
        let all = [1.5, 3.0, 6.0, 12.0, 24.0];
        check(codec(24_000, &[8, 5, 4, 2], &all, 1024), 32, 32);
        // the last bandwidth counts, not the largest
        check(codec(24_000, &[8, 5, 4, 2], &[24.0, 1.5], 1024), 2, 32);
        // a frame rate rounded up (22050 / 640 = 34.45 → 35), a codebook that is not a
        // power of two (1000 codes need 10 bits)
        check(codec(22_050, &[8, 5, 4, 4], &[1.0], 1000), 2, 2);
        assert_eq!(codec(22_050, &[8, 5, 4, 4], &[1.0], 1000).frame_rate(), 35);
    }

    #[test]
    fn configs_python_would_fail_on_give_no_quantizers() {
        assert_eq!(codec(32_000, &[640], &[2.2], 1).num_quantizers(), 0);
        assert_eq!(codec(32_000, &[640], &[], 2048).num_quantizers(), 0);
        assert_eq!(codec(0, &[640], &[2.2], 2048).num_quantizers(), 0);
        assert_eq!(codec(32_000, &[640], &[-2.2], 2048).num_quantizers(), 0);
    }

    #[test]
    fn floor_division_is_pythons() {
        // Values printed by CPython 3.11.
        for (a, b, want) in [
            (1.0, 0.1, 9.0),
            (2200.0, 550.0, 4.0),
            (1000.0, 250.0, 4.0),
            (-7.0, 2.0, -4.0),
            (7.0, -2.0, -4.0),
            (1199.9999999999998, 300.0, 3.0),
            (0.0, 5.0, 0.0),
        ] {
            assert_eq!(py_floor_div(a, b), want, "{a} // {b}");
        }
        assert!(py_floor_div(-0.0, 5.0).is_sign_negative());
    }

    #[test]
    fn validation_refuses_a_codec_without_quantizers() {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/musicgen-tiny/config.json");
        let mut cfg = MusicgenConfig::load(&path).unwrap();
        cfg.audio_encoder.codebook_size = 1;
        cfg.decoder.vocab_size = 1;
        let err = cfg.validate().unwrap_err();
        assert!(err.contains("0 quantizers"), "{err}");
    }

    #[test]
    fn a_codec_with_shortcut_convolutions_or_other_padding_is_refused() {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/musicgen-tiny/config.json");
        let text = std::fs::read_to_string(&path).unwrap();
        // As transformers reads a config without the field: shortcuts on.
        let mut json: serde_json::Value = serde_json::from_str(&text).unwrap();
        json["audio_encoder"]
            .as_object_mut()
            .unwrap()
            .remove("use_conv_shortcut");
        let cfg: MusicgenConfig = serde_json::from_value(json.clone()).unwrap();
        let err = cfg.validate().unwrap_err();
        assert!(err.contains("use_conv_shortcut"), "{err}");
        json["audio_encoder"]["use_conv_shortcut"] = false.into();
        json["audio_encoder"]["pad_mode"] = "constant".into();
        let cfg: MusicgenConfig = serde_json::from_value(json).unwrap();
        let err = cfg.validate().unwrap_err();
        assert!(err.contains("pad_mode `constant`"), "{err}");
        // The fixture itself, as written by transformers, passes.
        assert!(MusicgenConfig::load(&path).is_ok());
    }
}
