//! Training the VidMusician adapters on a frozen MusicGen, in two stages:
//! stage 1 the semantic module and T5's LoRA, stage 2 adds the rhythm module.
//!
//! - [`batch`]: examples (codes, CLIP features, rhythm curve), the delay
//!   pattern, the masked cross-entropy over the codebooks.
//! - [`data`]: a folder of videos and their music, extracted once and cached;
//!   windows and the held-out split.
//! - [`optim`]: AdamW, gradient clipping, warm-up then cosine.
//! - [`log`]: the JSONL log and the loss plot.
//! - [`run`]: a whole run as `vidmusician train` makes it.
//!
//! A [`Trainer`] makes one step at a time from the examples it is given and
//! saves and resumes checkpoints exactly (parameters, optimiser moments and
//! the step: a resumed run reaches the same parameters, bit for bit on the
//! CPU, as one never interrupted).

pub mod batch;
pub mod bench;
pub mod data;
pub mod log;
pub mod optim;
pub mod run;

use std::path::Path;

use candle_core::{DType, Tensor};
use rand::{Rng, SeedableRng};

use crate::neural::MusicGen;
use crate::neural::conditioning::adapter::{set_params, write_safetensors};
use crate::neural::conditioning::{Adapter, AdapterInfo};
use crate::neural::models::musicgen::{Conditioning, MusicgenDecoder};
use crate::neural::weights::Weights;
use crate::{Error, Result};

pub use batch::{Batch, Example};
pub use optim::{AdamW, AdamWConfig};

/// `format` in a checkpoint's metadata.
const CHECKPOINT_FORMAT: &str = "vidmusician-checkpoint";

/// How a run trains. Saved in its checkpoints: a resume must use the same.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct TrainConfig {
    /// Optimiser steps in all.
    pub steps: usize,
    /// Windows per step.
    pub batch_size: usize,
    /// Longest training window, seconds.
    pub window_seconds: f64,
    /// Peak learning rate.
    pub lr: f64,
    /// Steps of linear warm-up before the cosine decay.
    pub warmup: usize,
    /// The gradient's global norm is clipped to this.
    pub clip_norm: f64,
    pub adamw: AdamWConfig,
    /// Seed of everything random in the run after initialisation (condition
    /// dropout, window choice).
    pub seed: u64,
    /// In stage 2, also go on training the semantic module and T5's LoRA
    /// (false: the rhythm module alone, the rest as stage 1 left it).
    pub stage2_semantic: bool,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            steps: 1000,
            batch_size: 4,
            window_seconds: 30.0,
            lr: 1e-4,
            warmup: 100,
            clip_norm: 1.0,
            adamw: AdamWConfig::default(),
            seed: 0,
            stage2_semantic: true,
        }
    }
}

/// What one step did.
#[derive(Debug, Clone, Copy)]
pub struct StepStats {
    /// The step's number, from 1.
    pub step: usize,
    pub loss: f64,
    /// The gradient's norm before clipping.
    pub grad_norm: f64,
    pub lr: f64,
}

pub struct Trainer {
    decoder: MusicgenDecoder,
    adapter: Adapter,
    /// The names of the tensors the optimiser updates, in its order.
    trained: Vec<String>,
    opt: AdamW,
    cfg: TrainConfig,
}

impl Trainer {
    /// A run training `adapter` (fresh, or a stage-1 adapter with its rhythm
    /// module added) on `base`, which stays frozen. It runs on the device of
    /// `base`'s text encoder (the CPU unless [`MusicGen::text_to_device`]
    /// moved it), where the adapter made for `base` lives too.
    pub fn new(base: &MusicGen, adapter: Adapter, cfg: TrainConfig) -> Result<Self> {
        if cfg.batch_size == 0 || cfg.steps == 0 || !(cfg.lr.is_finite() && cfg.lr > 0.0) {
            return Err(Error::InvalidSetting(
                "training needs at least one step, one window per step and a positive learning rate"
                    .into(),
            ));
        }
        let device = base.text_encoder().device();
        if let Some((name, v)) = adapter.params.iter().next()
            && !v.device().same_device(device)
        {
            return Err(Error::InvalidSetting(format!(
                "the adapter's `{name}` is on {:?} and the base model's text encoder on {device:?}: \
                 an adapter trains on its base model's device",
                v.device()
            )));
        }
        let w = Weights::open_dir(base.dir())?.on(device).pp("decoder");
        let decoder = MusicgenDecoder::load(&w, &base.config().decoder)?;
        Self::from_parts(decoder, adapter, cfg)
    }

    /// [`Trainer::new`] on a decoder already built (benchmarks build one
    /// from random weights).
    pub fn from_parts(
        decoder: MusicgenDecoder,
        adapter: Adapter,
        cfg: TrainConfig,
    ) -> Result<Self> {
        let trained: Vec<String> = adapter
            .params
            .iter()
            .map(|(n, _)| n)
            .filter(|n| adapter.info.stage < 2 || cfg.stage2_semantic || n.starts_with("rhythm."))
            .map(String::from)
            .collect();
        let vars = trained
            .iter()
            .filter_map(|n| adapter.params.get(n).cloned())
            .collect();
        let opt = AdamW::new(vars, cfg.adamw)?;
        Ok(Self {
            decoder,
            adapter,
            trained,
            opt,
            cfg,
        })
    }

    /// The tensors this run trains.
    fn trained_vars(&self) -> Vec<candle_core::Var> {
        self.trained
            .iter()
            .filter_map(|n| self.adapter.params.get(n).cloned())
            .collect()
    }

    /// How many values this run trains.
    pub fn trained_count(&self) -> usize {
        self.trained_vars().iter().map(|v| v.elem_count()).sum()
    }

    pub fn adapter(&self) -> &Adapter {
        &self.adapter
    }

    /// The frozen decoder the run trains against.
    pub fn decoder(&self) -> &MusicgenDecoder {
        &self.decoder
    }

    pub fn config(&self) -> &TrainConfig {
        &self.cfg
    }

    /// Steps done so far.
    pub fn steps_done(&self) -> usize {
        self.opt.steps_done()
    }

    fn batch(&self, examples: &[&Example]) -> Result<Batch> {
        let c = self.decoder.config();
        let a = &self.adapter.info.config;
        Batch::new(
            examples,
            c.num_codebooks,
            c.vocab_size,
            a.clip_width,
            c.hidden_size,
            a.rhythm_context,
            self.decoder.dtype(),
            self.decoder.device(),
        )
    }

    /// The loss on `batch`, the conditions (caption, pictures, rhythm) of the
    /// examples whose `keep` is false zeroed (what the unconditional branch of
    /// guidance sees).
    fn loss(&self, batch: &Batch, keep: &[bool]) -> Result<Tensor> {
        let dtype = self.decoder.dtype();
        let keep = Tensor::from_vec(
            keep.iter().map(|&k| if k { 1f32 } else { 0.0 }).collect(),
            (keep.len(), 1, 1),
            self.decoder.device(),
        )?
        .to_dtype(dtype)?;
        let visual = self.adapter.visual_states(&batch.clip, &batch.clip_mask)?;
        // The caption's states first, as a prompt's come at inference.
        let (states, mask) = match &batch.text {
            Some((text, text_mask)) => (
                Tensor::cat(&[text, &visual], 1)?,
                Tensor::cat(&[text_mask, &batch.clip_mask], 1)?,
            ),
            None => (visual, batch.clip_mask.clone()),
        };
        let states = states.broadcast_mul(&keep)?;
        let inputs = self
            .adapter
            .layer_inputs(&batch.rhythm)?
            .into_iter()
            .map(|i| i.map(|t| t.broadcast_mul(&keep)).transpose())
            .collect::<candle_core::Result<Vec<_>>>()?;
        let logits = self.decoder.forward(
            &batch.inputs,
            &Conditioning {
                cross: Some((&states, &mask)),
                layer_inputs: &inputs,
            },
        )?;
        batch::masked_cross_entropy(&logits, batch)
    }

    /// One optimiser step on `examples` (windows of equal length).
    pub fn step(&mut self, examples: &[&Example]) -> Result<StepStats> {
        let step = self.opt.steps_done();
        let batch = self.batch(examples)?;
        // Each step draws from its own stream, so a resumed run draws what
        // an uninterrupted one would.
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(
            self.cfg.seed ^ (step as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
        );
        let p = self.adapter.info.config.condition_dropout;
        let keep: Vec<bool> = examples.iter().map(|_| !rng.random_bool(p)).collect();
        let loss = self.loss(&batch, &keep)?;
        let mut grads = loss.backward()?;
        let vars = self.trained_vars();
        let grad_norm = optim::clip_grad_norm(&vars, &mut grads, self.cfg.clip_norm)?;
        let lr = optim::learning_rate(step, self.cfg.lr, self.cfg.warmup, self.cfg.steps);
        self.opt.step(&grads, lr)?;
        Ok(StepStats {
            step: step + 1,
            loss: scalar(&loss)?,
            grad_norm,
            lr,
        })
    }

    /// The loss on `examples` with every condition kept (a held-out split).
    pub fn eval(&self, examples: &[&Example]) -> Result<f64> {
        let batch = self.batch(examples)?;
        scalar(&self.loss(&batch, &vec![true; examples.len()])?.detach())
    }

    /// Writes a checkpoint: the adapter's tensors, the optimiser's moments,
    /// the step and both configs.
    pub fn save_checkpoint(&self, path: &Path) -> Result<()> {
        let (m, v) = self.opt.moments();
        let mut tensors: Vec<(String, Tensor)> = Vec::new();
        for (name, var) in self.adapter.params.iter() {
            tensors.push((
                format!("param.{name}"),
                var.as_tensor().to_dtype(DType::F32)?,
            ));
        }
        for (i, name) in self.trained.iter().enumerate() {
            tensors.push((format!("adam_m.{name}"), m[i].to_dtype(DType::F32)?));
            tensors.push((format!("adam_v.{name}"), v[i].to_dtype(DType::F32)?));
        }
        let mut meta = self.adapter.info.to_metadata()?;
        meta.insert("format".into(), CHECKPOINT_FORMAT.into());
        meta.insert("step".into(), self.opt.steps_done().to_string());
        meta.insert(
            "train".into(),
            serde_json::to_string(&self.cfg)
                .map_err(|e| Error::InvalidSetting(format!("training config: {e}")))?,
        );
        write_safetensors(path, &tensors, meta)
    }

    /// Resumes the run a checkpoint at `path` saved, on `base` with `cfg`:
    /// both must be the run's own.
    pub fn resume(path: &Path, base: &MusicGen, cfg: TrainConfig) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::opening(path, e))?;
        let file = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| {
            Error::model_file(path, format!("the checkpoint is damaged or truncated: {e}"))
        })?;
        let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)
            .map_err(|e| Error::model_file(path, format!("the checkpoint's header: {e}")))?;
        let mut meta = header.metadata().clone().unwrap_or_default();
        if meta.get("format").map(String::as_str) != Some(CHECKPOINT_FORMAT) {
            return Err(Error::model_file(
                path,
                "not a VidMusician training checkpoint",
            ));
        }
        meta.insert(
            "format".into(),
            crate::neural::conditioning::adapter::FORMAT.into(),
        );
        let info = AdapterInfo::from_metadata(path, &meta)?;
        let hash = base.weights_hash()?;
        if info.base_hash != hash {
            return Err(Error::model_file(
                path,
                format!(
                    "this checkpoint trains an adapter for {} (weights {}), not for the given model (weights {hash})",
                    info.base_model, info.base_hash
                ),
            ));
        }
        let saved: TrainConfig = meta
            .get("train")
            .and_then(|t| serde_json::from_str(t).ok())
            .ok_or_else(|| {
                Error::model_file(path, "the checkpoint has no readable training config")
            })?;
        if saved != cfg {
            return Err(Error::model_file(
                path,
                format!(
                    "the checkpoint is of another training config ({}); resume with the same settings",
                    differences(&saved, &cfg)
                ),
            ));
        }
        let step: usize = meta
            .get("step")
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| Error::model_file(path, "the checkpoint has no step count"))?;
        let adapter = Adapter::from_saved(info, base, &file, "param.", path)?;
        let mut trainer = Self::new(base, adapter, cfg)?;
        let load_all = |prefix: &str| -> Result<Vec<Tensor>> {
            // The moments load into a copy of the trained tensors' layout.
            let mut copy = crate::neural::conditioning::Params::default();
            for (name, v) in trainer.trained.iter().zip(trainer.trained_vars()) {
                copy.add(name.clone(), &v.zeros_like()?)?;
            }
            set_params(&copy, &file, prefix, path)?;
            Ok(copy.iter().map(|(_, v)| v.as_tensor().clone()).collect())
        };
        let (m, v) = (load_all("adam_m.")?, load_all("adam_v.")?);
        trainer.opt.restore(m, v, step)?;
        Ok(trainer)
    }
}

fn scalar(t: &Tensor) -> Result<f64> {
    Ok(t.to_dtype(DType::F64)?.to_scalar::<f64>()?)
}

/// The fields in which two configs differ, named, for an error message.
fn differences(a: &TrainConfig, b: &TrainConfig) -> String {
    let (a, b) = (
        serde_json::to_value(a).unwrap_or_default(),
        serde_json::to_value(b).unwrap_or_default(),
    );
    let (Some(a), Some(b)) = (a.as_object(), b.as_object()) else {
        return String::new();
    };
    a.iter()
        .filter(|(k, v)| b.get(*k) != Some(*v))
        .map(|(k, v)| {
            format!(
                "{k}: {v} there, {} here",
                b.get(k).cloned().unwrap_or_default()
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}
