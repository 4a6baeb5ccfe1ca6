//! CLIP's `config.json` (`CLIPConfig` with `text_config` and `vision_config`) and
//! `preprocessor_config.json` (`CLIPImageProcessor`), with the field names and defaults
//! of `transformers`, so that a field a checkpoint leaves out means what it means there.

use std::path::Path;

use serde::Deserialize;

use crate::{Error, Result};

/// The activation of the MLPs (`hidden_act`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Activation {
    /// `x · σ(1.702 x)`, what OpenAI's CLIP was trained with.
    #[serde(rename = "quick_gelu")]
    QuickGelu,
    /// The exact GELU (erf).
    #[serde(rename = "gelu")]
    Gelu,
    /// The tanh approximation of GELU (transformers' `gelu_new`, PyTorch's `tanh`).
    #[serde(rename = "gelu_new", alias = "gelu_pytorch_tanh")]
    GeluTanh,
    #[serde(rename = "relu")]
    Relu,
}

impl Activation {
    pub fn apply(self, x: &candle_core::Tensor) -> candle_core::Result<candle_core::Tensor> {
        match self {
            Activation::QuickGelu => super::quick_gelu(x),
            Activation::Gelu => x.gelu_erf(),
            Activation::GeluTanh => x.gelu(),
            Activation::Relu => x.relu(),
        }
    }
}

/// `CLIPTextConfig`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct ClipTextConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub max_position_embeddings: usize,
    pub hidden_act: Activation,
    pub layer_norm_eps: f64,
    pub bos_token_id: u32,
    /// 2 in configs written before transformers PR #24773, which pool at the argmax
    /// of the ids instead of at the first eos.
    #[serde(deserialize_with = "one_or_first")]
    pub eos_token_id: u32,
    pub pad_token_id: u32,
}

impl Default for ClipTextConfig {
    fn default() -> Self {
        Self {
            vocab_size: 49408,
            hidden_size: 512,
            intermediate_size: 2048,
            num_hidden_layers: 12,
            num_attention_heads: 8,
            max_position_embeddings: 77,
            hidden_act: Activation::QuickGelu,
            layer_norm_eps: 1e-5,
            bos_token_id: 49406,
            eos_token_id: 49407,
            pad_token_id: 1,
        }
    }
}

impl ClipTextConfig {
    /// Whether the text tower pools at the argmax of the ids (configs whose
    /// `eos_token_id` is 2, as transformers keeps them) rather than at the first eos.
    pub fn legacy_pooling(&self) -> bool {
        self.eos_token_id == 2
    }
}

/// `CLIPVisionConfig`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct ClipVisionConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_channels: usize,
    pub image_size: usize,
    pub patch_size: usize,
    pub hidden_act: Activation,
    pub layer_norm_eps: f64,
}

impl Default for ClipVisionConfig {
    fn default() -> Self {
        Self {
            hidden_size: 768,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            num_channels: 3,
            image_size: 224,
            patch_size: 32,
            hidden_act: Activation::QuickGelu,
            layer_norm_eps: 1e-5,
        }
    }
}

impl ClipVisionConfig {
    /// Patches per side; like the strided convolution of the reference, a remainder
    /// of the image that fills no whole patch is left out.
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size.max(1)
    }

    pub fn num_patches(&self) -> usize {
        self.grid() * self.grid()
    }
}

/// `CLIPConfig`: both towers and the shared embedding width.
#[derive(Debug, Clone, Deserialize)]
pub struct ClipConfig {
    #[serde(default)]
    pub text_config: ClipTextConfig,
    #[serde(default)]
    pub vision_config: ClipVisionConfig,
    #[serde(default = "default_projection_dim")]
    pub projection_dim: usize,
    #[serde(default = "default_logit_scale")]
    pub logit_scale_init_value: f64,
}

fn default_projection_dim() -> usize {
    512
}

fn default_logit_scale() -> f64 {
    2.6592
}

/// `eos_token_id` may be written as one id or a list of them; the first one counts.
fn one_or_first<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<u32, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(u32),
        Many(Vec<u32>),
    }
    match OneOrMany::deserialize(d)? {
        OneOrMany::One(v) => Ok(v),
        OneOrMany::Many(v) => v
            .first()
            .copied()
            .ok_or_else(|| serde::de::Error::custom("eos_token_id is an empty list")),
    }
}

impl ClipConfig {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::opening(path, e))?;
        Self::parse(&text).map_err(|reason| Error::model_file(path, reason))
    }

    /// Parses and checks the text of a `config.json`.
    pub fn parse(text: &str) -> std::result::Result<Self, String> {
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))?;
        // A MusicGen or other config would otherwise parse as CLIP's defaults.
        let is_clip = value.get("model_type").and_then(|t| t.as_str()) == Some("clip")
            || (value.get("text_config").is_some() && value.get("vision_config").is_some());
        if !is_clip {
            return Err(
                "not a CLIP config (no model_type \"clip\", no text_config and \
                        vision_config)"
                    .to_string(),
            );
        }
        let cfg: Self =
            serde_json::from_value(value).map_err(|e| format!("not a CLIP config: {e}"))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks the sizes the implementation divides by or indexes with, so a mistyped
    /// config is an error rather than a panic deep in a kernel.
    fn validate(&self) -> std::result::Result<(), String> {
        let t = &self.text_config;
        let v = &self.vision_config;
        let positive = [
            ("projection_dim", self.projection_dim),
            ("text_config.vocab_size", t.vocab_size),
            ("text_config.hidden_size", t.hidden_size),
            ("text_config.intermediate_size", t.intermediate_size),
            ("text_config.num_attention_heads", t.num_attention_heads),
            (
                "text_config.max_position_embeddings",
                t.max_position_embeddings,
            ),
            ("vision_config.hidden_size", v.hidden_size),
            ("vision_config.intermediate_size", v.intermediate_size),
            ("vision_config.num_attention_heads", v.num_attention_heads),
            ("vision_config.num_channels", v.num_channels),
            ("vision_config.patch_size", v.patch_size),
        ];
        for (name, n) in positive {
            if n == 0 {
                return Err(format!("{name} is 0"));
            }
        }
        for (name, width, heads) in [
            ("text_config", t.hidden_size, t.num_attention_heads),
            ("vision_config", v.hidden_size, v.num_attention_heads),
        ] {
            if width % heads != 0 {
                return Err(format!(
                    "{name}.hidden_size {width} is not a multiple of num_attention_heads {heads}"
                ));
            }
        }
        if v.image_size < v.patch_size {
            return Err(format!(
                "vision_config.image_size {} is smaller than its patch_size {}",
                v.image_size, v.patch_size
            ));
        }
        if v.num_channels != 3 {
            return Err(format!(
                "vision_config.num_channels is {}; only RGB (3) images are supported",
                v.num_channels
            ));
        }
        Ok(())
    }
}

/// `preprocessor_config.json` (`CLIPImageProcessor`): how frames become pixels.
#[derive(Debug, Clone, PartialEq)]
pub struct PreprocessConfig {
    /// The shortest edge is resized to this (bicubic).
    pub shortest_edge: usize,
    /// `(height, width)` of the centre crop.
    pub crop: (usize, usize),
    pub rescale_factor: f64,
    pub mean: [f32; 3],
    pub std: [f32; 3],
    pub do_resize: bool,
    pub do_center_crop: bool,
    pub do_rescale: bool,
    pub do_normalize: bool,
}

/// CLIP's own normalisation (OpenAI's training statistics), transformers'
/// `OPENAI_CLIP_MEAN` / `OPENAI_CLIP_STD`, digit for digit as they are written there
/// (the nearest f32 is the same as for the values read from a JSON file).
pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
#[allow(clippy::excessive_precision)]
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_58, 0.275_777_11];

impl PreprocessConfig {
    /// What `CLIPImageProcessor` does by default for a model of `image_size`.
    pub fn for_image_size(image_size: usize) -> Self {
        Self {
            shortest_edge: image_size,
            crop: (image_size, image_size),
            rescale_factor: 1.0 / 255.0,
            mean: CLIP_MEAN,
            std: CLIP_STD,
            do_resize: true,
            do_center_crop: true,
            do_rescale: true,
            do_normalize: true,
        }
    }

    /// Reads `path`; a missing file gives the defaults for `image_size`.
    pub fn load_or_default(path: &Path, image_size: usize) -> Result<Self> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(&text, image_size).map_err(|r| Error::model_file(path, r)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Ok(Self::for_image_size(image_size))
            }
            Err(e) => Err(Error::io(path, e)),
        }
    }

    pub fn parse(text: &str, image_size: usize) -> std::result::Result<Self, String> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Size {
            Square(usize),
            Map {
                shortest_edge: Option<usize>,
                height: Option<usize>,
                width: Option<usize>,
            },
        }
        #[derive(Deserialize)]
        struct Raw {
            size: Option<Size>,
            crop_size: Option<Size>,
            rescale_factor: Option<f64>,
            image_mean: Option<[f32; 3]>,
            image_std: Option<[f32; 3]>,
            do_resize: Option<bool>,
            do_center_crop: Option<bool>,
            do_rescale: Option<bool>,
            do_normalize: Option<bool>,
            resample: Option<u32>,
        }
        let raw: Raw = serde_json::from_str(text)
            .map_err(|e| format!("not a CLIP image processor config: {e}"))?;
        let d = Self::for_image_size(image_size);
        // PIL's filter numbers: 3 is BICUBIC, the only one implemented.
        if let Some(r) = raw.resample
            && r != 3
        {
            return Err(format!(
                "resample {r} is not supported; only bicubic (3), as CLIP uses"
            ));
        }
        let shortest_edge = match raw.size {
            None => d.shortest_edge,
            Some(Size::Square(n)) => n,
            Some(Size::Map {
                shortest_edge: Some(n),
                ..
            }) => n,
            Some(Size::Map { .. }) => {
                return Err("size without shortest_edge is not supported".to_string());
            }
        };
        let crop = match raw.crop_size {
            None => d.crop,
            Some(Size::Square(n)) => (n, n),
            Some(Size::Map {
                height: Some(h),
                width: Some(w),
                ..
            }) => (h, w),
            Some(Size::Map { .. }) => {
                return Err("crop_size needs height and width".to_string());
            }
        };
        let cfg = Self {
            shortest_edge,
            crop,
            rescale_factor: raw.rescale_factor.unwrap_or(d.rescale_factor),
            mean: raw.image_mean.unwrap_or(d.mean),
            std: raw.image_std.unwrap_or(d.std),
            do_resize: raw.do_resize.unwrap_or(true),
            do_center_crop: raw.do_center_crop.unwrap_or(true),
            do_rescale: raw.do_rescale.unwrap_or(true),
            do_normalize: raw.do_normalize.unwrap_or(true),
        };
        if cfg.shortest_edge == 0 || cfg.crop.0 == 0 || cfg.crop.1 == 0 {
            return Err("size and crop_size must be positive".to_string());
        }
        if cfg.std.iter().any(|s| *s == 0.0 || !s.is_finite()) {
            return Err(format!(
                "image_std {:?} has a zero or non-finite value",
                cfg.std
            ));
        }
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `config.json` of openai/clip-vit-base-patch32 as the hub has it (trimmed of
    /// fields that do not shape the network; the old `eos_token_id` 2 kept).
    const BASE_PATCH32: &str = r#"{
      "_name_or_path": "openai/clip-vit-base-patch32",
      "architectures": ["CLIPModel"],
      "initializer_factor": 1.0,
      "logit_scale_init_value": 2.6592,
      "model_type": "clip",
      "projection_dim": 512,
      "text_config": {
        "bos_token_id": 0,
        "dropout": 0.0,
        "eos_token_id": 2,
        "hidden_act": "quick_gelu",
        "hidden_size": 512,
        "intermediate_size": 2048,
        "max_position_embeddings": 77,
        "model_type": "clip_text_model",
        "num_attention_heads": 8,
        "num_hidden_layers": 12,
        "pad_token_id": 1,
        "projection_dim": 512,
        "vocab_size": 49408
      },
      "text_config_dict": null,
      "torch_dtype": "float32",
      "transformers_version": null,
      "vision_config": {
        "dropout": 0.0,
        "hidden_act": "quick_gelu",
        "hidden_size": 768,
        "image_size": 224,
        "intermediate_size": 3072,
        "model_type": "clip_vision_model",
        "num_attention_heads": 12,
        "num_hidden_layers": 12,
        "patch_size": 32,
        "projection_dim": 512
      },
      "vision_config_dict": null
    }"#;

    #[test]
    fn base_patch32_parses_with_transformers_defaults() {
        let c = ClipConfig::parse(BASE_PATCH32).unwrap();
        assert_eq!(c.projection_dim, 512);
        let v = &c.vision_config;
        assert_eq!(
            (v.hidden_size, v.num_hidden_layers, v.num_attention_heads),
            (768, 12, 12)
        );
        assert_eq!(
            (v.image_size, v.patch_size, v.grid(), v.num_patches()),
            (224, 32, 7, 49)
        );
        assert_eq!(v.hidden_act, Activation::QuickGelu);
        // Not in the file: the default.
        assert_eq!(v.layer_norm_eps, 1e-5);
        assert_eq!(v.num_channels, 3);
        let t = &c.text_config;
        assert_eq!(
            (t.hidden_size, t.num_hidden_layers, t.num_attention_heads),
            (512, 12, 8)
        );
        assert_eq!((t.vocab_size, t.max_position_embeddings), (49408, 77));
        assert!(t.legacy_pooling());
        assert_eq!(t.layer_norm_eps, 1e-5);
    }

    #[test]
    fn newer_eos_ids_pool_at_the_eos_and_lists_take_the_first() {
        let newer = BASE_PATCH32.replace(r#""eos_token_id": 2"#, r#""eos_token_id": 49407"#);
        assert!(
            !ClipConfig::parse(&newer)
                .unwrap()
                .text_config
                .legacy_pooling()
        );
        let list = BASE_PATCH32.replace(r#""eos_token_id": 2"#, r#""eos_token_id": [49407, 1]"#);
        assert_eq!(
            ClipConfig::parse(&list).unwrap().text_config.eos_token_id,
            49407
        );
    }

    #[test]
    fn an_empty_clip_config_is_clip_vit_base_patch32() {
        let c = ClipConfig::parse(r#"{"model_type": "clip"}"#).unwrap();
        assert_eq!(c.text_config.eos_token_id, 49407);
        assert_eq!(c.vision_config.patch_size, 32);
        assert_eq!(c.logit_scale_init_value, 2.6592);
    }

    #[test]
    fn activations_and_bad_configs() {
        for (name, act) in [
            ("gelu", Activation::Gelu),
            ("gelu_new", Activation::GeluTanh),
            ("gelu_pytorch_tanh", Activation::GeluTanh),
        ] {
            let text = BASE_PATCH32.replace(
                r#""hidden_size": 768,"#,
                &format!(r#""hidden_size": 768, "hidden_act": "{name}","#),
            );
            // `hidden_act` now appears twice in the vision config; serde keeps the last.
            let text = text.replacen(
                r#""hidden_act": "quick_gelu",
        "hidden_size": 768"#,
                r#""hidden_size": 768"#,
                1,
            );
            let c = ClipConfig::parse(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(c.vision_config.hidden_act, act, "{name}");
        }
        let swish = BASE_PATCH32.replacen("quick_gelu", "swish", 1);
        assert!(ClipConfig::parse(&swish).unwrap_err().contains("swish"));
        let heads = BASE_PATCH32.replace(
            r#""num_attention_heads": 12"#,
            r#""num_attention_heads": 7"#,
        );
        assert!(
            ClipConfig::parse(&heads)
                .unwrap_err()
                .contains("num_attention_heads")
        );
        let zero = BASE_PATCH32.replace(r#""patch_size": 32"#, r#""patch_size": 0"#);
        assert!(ClipConfig::parse(&zero).unwrap_err().contains("patch_size"));
        let musicgen = r#"{"text_encoder": {}, "audio_encoder": {}, "decoder": {}}"#;
        assert!(
            ClipConfig::parse(musicgen)
                .unwrap_err()
                .contains("not a CLIP config")
        );
    }

    #[test]
    fn preprocessor_configs_old_and_new() {
        let new = r#"{"crop_size": {"height": 224, "width": 224}, "do_center_crop": true,
            "do_normalize": true, "do_resize": true, "image_mean": [0.48145466, 0.4578275, 0.40821073],
            "image_std": [0.26862954, 0.26130258, 0.27577711], "resample": 3,
            "size": {"shortest_edge": 224}}"#;
        let old = r#"{"crop_size": 224, "do_center_crop": true, "do_normalize": true,
            "do_resize": true, "feature_extractor_type": "CLIPFeatureExtractor",
            "image_mean": [0.48145466, 0.4578275, 0.40821073],
            "image_std": [0.26862954, 0.26130258, 0.27577711], "resample": 3, "size": 224}"#;
        let want = PreprocessConfig::for_image_size(224);
        assert_eq!(PreprocessConfig::parse(new, 336).unwrap(), want);
        assert_eq!(PreprocessConfig::parse(old, 336).unwrap(), want);
        let absent = PreprocessConfig::load_or_default(Path::new("/nonexistent/p.json"), 336);
        assert_eq!(absent.unwrap(), PreprocessConfig::for_image_size(336));
        let bilinear = new.replace(r#""resample": 3"#, r#""resample": 2"#);
        assert!(
            PreprocessConfig::parse(&bilinear, 224)
                .unwrap_err()
                .contains("resample")
        );
    }
}
