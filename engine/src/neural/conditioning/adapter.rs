//! The adapter: the semantic module, the rhythm module (from stage 2 on) and
//! their config, for one base MusicGen. Saved as one safetensors file whose
//! tensors are the trainable ones by name ([`Params`]) and whose header
//! metadata holds the config, the stage, the base model's id and a hash of the
//! base weights it was trained on: an adapter is refused on any other base.

use std::collections::HashMap;
use std::io::Read as _;
use std::path::Path;

use candle_core::{DType, Tensor};

use super::rhythm::rhythm_input;
use super::{AdapterConfig, Params, RhythmModule, SemanticModule};
use crate::neural::{MusicGen, WindowInput, WindowSpan};
use crate::{Error, Result};

/// `format` in an adapter file's metadata.
pub const FORMAT: &str = "vidmusician-adapter";
/// The layout version this code writes and reads.
pub const VERSION: u32 = 1;
/// A header larger than this is not an adapter's (it holds a few hundred
/// tensor entries at most).
const MAX_HEADER: u64 = 16 << 20;

/// What an adapter file says about itself.
#[derive(Debug, Clone, PartialEq)]
pub struct AdapterInfo {
    pub config: AdapterConfig,
    /// 1: semantic module only; 2: with the rhythm module.
    pub stage: u8,
    /// The base MusicGen's id (`facebook/musicgen-small`).
    pub base_model: String,
    /// [`MusicGen::weights_hash`] of the base it was trained on.
    pub base_hash: String,
}

impl AdapterInfo {
    pub(crate) fn to_metadata(&self) -> Result<HashMap<String, String>> {
        let config = serde_json::to_string(&self.config)
            .map_err(|e| Error::InvalidSetting(format!("adapter config: {e}")))?;
        Ok(HashMap::from([
            ("format".to_string(), FORMAT.to_string()),
            ("version".to_string(), VERSION.to_string()),
            ("config".to_string(), config),
            ("stage".to_string(), self.stage.to_string()),
            ("base_model".to_string(), self.base_model.clone()),
            ("base_hash".to_string(), self.base_hash.clone()),
        ]))
    }

    pub(crate) fn from_metadata(path: &Path, meta: &HashMap<String, String>) -> Result<Self> {
        let bad = |reason: String| Error::model_file(path, reason);
        let field = |k: &str| {
            meta.get(k)
                .ok_or_else(|| bad(format!("not a VidMusician adapter: no `{k}` in its header")))
        };
        if field("format")? != FORMAT {
            return Err(bad(format!(
                "not a VidMusician adapter (its format is `{}`)",
                field("format")?
            )));
        }
        let version: u32 = field("version")?
            .parse()
            .map_err(|_| bad("the adapter's version is not a number".into()))?;
        if version != VERSION {
            return Err(bad(format!(
                "an adapter of layout version {version}; this VidMusician reads version {VERSION}"
            )));
        }
        let config: AdapterConfig = serde_json::from_str(field("config")?)
            .map_err(|e| bad(format!("the adapter's config is unreadable: {e}")))?;
        let stage = match field("stage")?.as_str() {
            "1" => 1,
            "2" => 2,
            s => return Err(bad(format!("adapter stage `{s}` (1 or 2)"))),
        };
        Ok(Self {
            config,
            stage,
            base_model: field("base_model")?.clone(),
            base_hash: field("base_hash")?.clone(),
        })
    }

    /// Reads only the header of the adapter file at `path`.
    pub fn read(path: &Path) -> Result<Self> {
        let mut f = std::fs::File::open(path).map_err(|e| Error::opening(path, e))?;
        let size = f.metadata().map_err(|e| Error::opening(path, e))?.len();
        let mut len = [0u8; 8];
        f.read_exact(&mut len)
            .map_err(|_| Error::model_file(path, "not an adapter file: too short"))?;
        let len = u64::from_le_bytes(len);
        if len > MAX_HEADER || len + 8 > size {
            return Err(Error::model_file(
                path,
                "not an adapter file: its header is damaged or the file is truncated",
            ));
        }
        let mut header = vec![0u8; len as usize];
        f.read_exact(&mut header)
            .map_err(|e| Error::opening(path, e))?;
        #[derive(serde::Deserialize)]
        struct Header {
            #[serde(rename = "__metadata__", default)]
            metadata: HashMap<String, String>,
        }
        let h: Header = serde_json::from_slice(&header).map_err(|_| {
            Error::model_file(
                path,
                "not an adapter file: its header is not safetensors JSON",
            )
        })?;
        Self::from_metadata(path, &h.metadata)
    }
}

/// An adapter ready to condition its base model.
pub struct Adapter {
    pub info: AdapterInfo,
    pub semantic: SemanticModule,
    /// From stage 2 on.
    pub rhythm: Option<RhythmModule>,
    pub params: Params,
}

impl Adapter {
    /// A fresh stage-1 adapter (semantic module only) for `base`, whose id is
    /// `base_model`.
    pub fn new(
        cfg: &AdapterConfig,
        base: &MusicGen,
        base_model: &str,
        dtype: DType,
    ) -> Result<Self> {
        Self::from_parts(
            cfg,
            base.text_encoder(),
            base.text_projection(),
            &base.config().decoder,
            base_model,
            base.weights_hash()?,
            dtype,
        )
    }

    /// [`Adapter::new`] from the base's parts (benchmarks build them from
    /// random weights).
    pub fn from_parts(
        cfg: &AdapterConfig,
        t5: &crate::neural::t5::T5Encoder,
        enc_to_dec: Option<&crate::neural::nn::Linear>,
        decoder: &crate::neural::config::DecoderConfig,
        base_model: &str,
        base_hash: String,
        dtype: DType,
    ) -> Result<Self> {
        cfg.validate(decoder)?;
        let mut params = Params::default();
        let semantic =
            SemanticModule::new(cfg, t5, enc_to_dec, decoder.hidden_size, &mut params, dtype)?;
        Ok(Self {
            info: AdapterInfo {
                config: cfg.clone(),
                stage: 1,
                base_model: base_model.to_string(),
                base_hash,
            },
            semantic,
            rhythm: None,
            params,
        })
    }

    /// Stage 2: adds a fresh rhythm module (which changes nothing until trained).
    pub fn add_rhythm(&mut self, base: &MusicGen) -> Result<()> {
        self.add_rhythm_for(&base.config().decoder)
    }

    /// [`Adapter::add_rhythm`] for a decoder of `decoder`'s shape.
    pub fn add_rhythm_for(&mut self, decoder: &crate::neural::config::DecoderConfig) -> Result<()> {
        if self.rhythm.is_some() {
            return Ok(());
        }
        let (dtype, device) = self
            .params
            .iter()
            .next()
            .map_or((DType::F32, candle_core::Device::Cpu), |(_, v)| {
                (v.dtype(), v.device().clone())
            });
        self.rhythm = Some(RhythmModule::new(
            &self.info.config,
            decoder,
            &mut self.params,
            &device,
            dtype,
        )?);
        self.info.stage = 2;
        Ok(())
    }

    /// Writes the adapter to `path` (a temporary file renamed into place: an
    /// existing file is replaced whole or not at all).
    pub fn save(&self, path: &Path) -> Result<()> {
        let meta = self.info.to_metadata()?;
        let tensors: Vec<(String, Tensor)> = self
            .params
            .iter()
            .map(|(n, v)| Ok((n.to_string(), v.as_tensor().to_dtype(DType::F32)?)))
            .collect::<Result<_>>()?;
        write_safetensors(path, &tensors, meta)
    }

    /// The adapter `info` describes, for `base`, its tensors read from
    /// `file`'s tensors named `prefix` + their names.
    pub(crate) fn from_saved(
        info: AdapterInfo,
        base: &MusicGen,
        file: &safetensors::SafeTensors<'_>,
        prefix: &str,
        path: &Path,
    ) -> Result<Self> {
        let mut adapter = Self::new(&info.config, base, &info.base_model, DType::F32)?;
        if info.stage == 2 {
            adapter.add_rhythm(base)?;
        }
        adapter.info = info;
        set_params(&adapter.params, file, prefix, path)?;
        Ok(adapter)
    }

    /// Loads the adapter at `path` for `base`, refusing one trained on another
    /// base model. Every tensor must be present with its shape, and no other.
    pub fn load(path: &Path, base: &MusicGen, base_model: &str) -> Result<Self> {
        let info = AdapterInfo::read(path)?;
        let hash = base.weights_hash()?;
        if info.base_hash != hash {
            return Err(Error::model_file(
                path,
                format!(
                    "this adapter was trained on {} (weights {}), not on the installed {} (weights {hash}); train one for {} or install {}",
                    info.base_model, info.base_hash, base_model, base_model, info.base_model
                ),
            ));
        }
        info.config.validate(&base.config().decoder)?;
        let bytes = std::fs::read(path).map_err(|e| Error::opening(path, e))?;
        let file = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| {
            Error::model_file(
                path,
                format!("the adapter file is damaged or truncated: {e}"),
            )
        })?;
        Self::from_saved(info, base, &file, "", path)
    }

    /// A generation window's conditions on `base`: the visual states of the
    /// CLIP rows (one per second of the piece) of the seconds the window
    /// covers, after the prompt's `text` states and mask when there are any,
    /// and the rhythm module's in-attention inputs for its positions from
    /// `curve` (one value per code frame of the piece); `semantic` (0..1)
    /// scales the visual states. Windows are cut as training cuts them.
    pub fn window_input(
        &self,
        base: &MusicGen,
        w: WindowSpan,
        clip_rows: &[Vec<f32>],
        curve: &[f32],
        text: Option<(&Tensor, &Tensor)>,
        semantic: f32,
    ) -> Result<WindowInput> {
        let width = self.info.config.clip_width;
        if clip_rows.is_empty() || clip_rows.iter().any(|r| r.len() != width) {
            return Err(Error::InvalidSetting(format!(
                "the adapter reads CLIP features {width} wide, one row per second"
            )));
        }
        let rate = base.frame_rate() as f64;
        let end = w.new_from + w.new_frames;
        let first = ((w.first as f64 / rate) as usize).min(clip_rows.len() - 1);
        let last = ((end as f64 / rate).ceil() as usize).clamp(first + 1, clip_rows.len());
        let rows = &clip_rows[first..last];
        let device = base.text_encoder().device();
        let features = Tensor::from_vec(rows.concat(), (1, rows.len(), width), device)?;
        let ones = Tensor::ones((1, rows.len()), DType::U32, device)?;
        // The semantic strength scales the pictures' states: at 0 they add
        // nothing to cross-attention, as for guidance's unconditional branch.
        let visual = (self.visual_states(&features, &ones)? * f64::from(semantic))?;
        let (states, mask) = match text {
            Some((t, m)) => (
                Tensor::cat(&[t, &visual], 1)?,
                Tensor::cat(&[&m.to_dtype(DType::U32)?, &ones], 1)?,
            ),
            None => (visual, ones),
        };
        let cross = base.cross(&states, &mask)?;
        let layer_inputs = match &self.rhythm {
            Some(r) => {
                let ctx = self.info.config.rhythm_context;
                let input = rhythm_input(curve, w.first, w.positions, ctx);
                let input = Tensor::from_vec(input, (1, w.positions, r.width()), device)?;
                r.forward(&input)?
                    .into_iter()
                    .map(|l| {
                        l.map(|t| t.flatten_all().and_then(|f| f.to_vec1::<f32>()))
                            .transpose()
                    })
                    .collect::<candle_core::Result<Vec<_>>>()?
            }
            None => Vec::new(),
        };
        Ok(WindowInput {
            cross: Some(std::sync::Arc::new(cross)),
            layer_inputs,
        })
    }

    /// Cross-attention states for CLIP global features; see
    /// [`SemanticModule::forward`].
    pub fn visual_states(&self, features: &Tensor, mask: &Tensor) -> Result<Tensor> {
        self.semantic.forward(features, mask)
    }

    /// Per decoder layer, the in-attention input for `rhythm` `(batch, frames,
    /// width)`; nothing before stage 2.
    pub fn layer_inputs(&self, rhythm: &Tensor) -> Result<Vec<Option<Tensor>>> {
        match &self.rhythm {
            Some(r) => r.forward(rhythm),
            None => Ok(Vec::new()),
        }
    }
}

/// Writes `tensors` and `meta` as a safetensors file at `path`, replacing
/// it whole or not at all. Serialised here and written by `atomic_output`,
/// not by `serialize_to_file`: that one renames a private (0600) temporary
/// file into place, and adapters are files users share.
pub(crate) fn write_safetensors(
    path: &Path,
    tensors: &[(String, Tensor)],
    meta: HashMap<String, String>,
) -> Result<()> {
    let bytes = safetensors::serialize(tensors.iter().map(|(n, t)| (n, t)), Some(meta))
        .map_err(|e| Error::output(path, e))?;
    crate::audio::atomic_output(path, |tmp| {
        std::fs::write(tmp, &bytes).map_err(|e| Error::output(path, e))
    })
}

/// Sets every tensor of `params` from `file`'s tensor of the same name after
/// `prefix`; each must be there, f32, with its shape, and the file may hold no
/// other tensor under `prefix`.
pub(crate) fn set_params(
    params: &Params,
    file: &safetensors::SafeTensors<'_>,
    prefix: &str,
    path: &Path,
) -> Result<()> {
    for (name, var) in params.iter() {
        let full = format!("{prefix}{name}");
        let view = file.tensor(&full).map_err(|_| Error::MissingTensor {
            path: path.to_path_buf(),
            name: full.clone(),
        })?;
        if view.shape() != var.dims() {
            return Err(Error::TensorShape {
                path: path.to_path_buf(),
                name: full,
                expected: var.dims().to_vec(),
                found: view.shape().to_vec(),
            });
        }
        if view.dtype() != safetensors::Dtype::F32 {
            return Err(Error::model_file(
                path,
                format!("tensor `{full}` is {:?}, not f32", view.dtype()),
            ));
        }
        let t = Tensor::from_raw_buffer(view.data(), DType::F32, view.shape(), var.device())?
            .to_dtype(var.dtype())?;
        var.set(&t)?;
    }
    if let Some(extra) = file.names().into_iter().find(|n| {
        n.strip_prefix(prefix)
            .is_some_and(|rest| params.get(rest).is_none())
    }) {
        return Err(Error::model_file(
            path,
            format!("tensor `{extra}` belongs to no module of this adapter's config"),
        ));
    }
    Ok(())
}
