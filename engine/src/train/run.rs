//! A whole training run, as `vidmusician train` makes it: checks that cannot
//! pass are made before any work, the data set is extracted (or read from the
//! cache), then steps with a held-out loss now and then, checkpoints, a log
//! and a loss plot, and the adapter written at the end.
//!
//! Files beside the adapter `NAME.safetensors`: `NAME.ckpt` (the checkpoint a
//! `--resume` continues from), `NAME.log.jsonl` and `NAME.loss.png`.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use candle_core::DType;
use rand::SeedableRng;

use super::data::{self, Extractor, Piece, Skipped};
use super::log::{self, Entry};
use super::{Example, StepStats, TrainConfig, Trainer};
use crate::neural::conditioning::{Adapter, AdapterConfig, AdapterInfo};
use crate::neural::encodec_encoder::EncodecEncoder;
use crate::neural::models::clip::{Clip, ClipFrames, FrameEncoder};
use crate::neural::{MusicGen, Precision};
use crate::{Error, Result};

pub struct RunOptions {
    /// 1 or 2.
    pub stage: u8,
    pub data: PathBuf,
    /// The adapter to write (`….safetensors`).
    pub out: PathBuf,
    /// Stage 2: the stage-1 adapter it starts from.
    pub init: Option<PathBuf>,
    pub resume: bool,
    pub train: TrainConfig,
    /// The adapter's choices; its CLIP width is taken from the CLIP model.
    pub adapter: AdapterConfig,
    /// Held-out loss every this many steps (and at the end).
    pub eval_every: usize,
    /// A checkpoint every this many steps (and at the end).
    pub checkpoint_every: usize,
    pub musicgen_dir: PathBuf,
    /// The MusicGen's id, recorded in the adapter.
    pub musicgen_id: String,
    pub clip_dir: PathBuf,
    /// Where extracted pieces are cached; `None`: nowhere.
    pub cache_dir: Option<PathBuf>,
    /// Where the steps run (the text encoder with its LoRA, the decoder and
    /// the adapter): the CPU, or a CUDA device of a `cuda` build. The
    /// extraction from the videos runs on the CPU either way.
    pub device: candle_core::Device,
}

/// What a run reports as it goes.
pub enum RunEvent<'a> {
    Extracting {
        done: usize,
        total: usize,
        name: &'a str,
    },
    Skipped(&'a Skipped),
    Ready {
        trainable: usize,
        train_pieces: usize,
        held_pieces: usize,
        window_seconds: f64,
        from_step: usize,
        held_out: f64,
    },
    Step {
        stats: &'a StepStats,
        steps_per_s: f64,
    },
    HeldOut {
        step: usize,
        loss: f64,
    },
}

/// Where a finished run left its files, and how it did.
#[derive(Debug)]
pub struct RunSummary {
    pub adapter: PathBuf,
    pub checkpoint: PathBuf,
    pub log: PathBuf,
    pub plot: PathBuf,
    pub trainable: usize,
    /// Held-out loss when the run (or this part of it) started, and at the end.
    pub held_out_start: f64,
    pub held_out_end: f64,
}

/// The files beside the adapter `out`.
pub fn side_files(out: &Path) -> (PathBuf, PathBuf, PathBuf) {
    (
        out.with_extension("ckpt"),
        out.with_extension("log.jsonl"),
        out.with_extension("loss.png"),
    )
}

/// Refuses what cannot work, before anything is read or written.
pub fn check(o: &RunOptions) -> Result<()> {
    let bad = |m: String| Err(Error::InvalidSetting(m));
    if o.stage != 1 && o.stage != 2 {
        return bad(format!("--stage {} (1 or 2)", o.stage));
    }
    if o.out.extension().and_then(|e| e.to_str()) != Some("safetensors") {
        return bad(format!(
            "{}: an adapter is a .safetensors file",
            o.out.display()
        ));
    }
    let (ckpt, _, _) = side_files(&o.out);
    if o.resume {
        if !ckpt.is_file() {
            return bad(format!(
                "--resume: no checkpoint at {} to continue from",
                ckpt.display()
            ));
        }
    } else {
        if o.out.exists() {
            return bad(format!(
                "{} exists; training writes a new adapter: choose another name or move it away",
                o.out.display()
            ));
        }
        for (earlier, what) in [(&ckpt, "checkpoint"), (&side_files(&o.out).1, "log")] {
            if earlier.exists() {
                return bad(format!(
                    "{} is an earlier run's {what}: add --resume to continue that run, or move it away",
                    earlier.display()
                ));
            }
        }
        match (o.stage, &o.init) {
            (1, Some(_)) => {
                return bad("--init is for stage 2 (it names the stage-1 adapter)".into());
            }
            (2, None) => {
                return bad("stage 2 starts from a stage-1 adapter: give it with --init".into());
            }
            _ => {}
        }
    }
    if let Some(init) = &o.init {
        if same_file::is_same_file(init, &o.out).unwrap_or(false) || *init == o.out {
            return bad("--init and --out name the same file".into());
        }
        let info = AdapterInfo::read(init)?;
        if info.stage != 1 {
            return bad(format!(
                "{}: a stage-{} adapter; stage 2 starts from a stage-1 one",
                init.display(),
                info.stage
            ));
        }
    }
    if o.eval_every == 0 || o.checkpoint_every == 0 {
        return bad("--eval-every and --checkpoint-every take at least 1".into());
    }
    if !(o.train.window_seconds.is_finite() && o.train.window_seconds >= 1.0) {
        return bad(format!(
            "--window {} (at least 1 s)",
            o.train.window_seconds
        ));
    }
    crate::audio::check_writable(&o.out)?;
    if !o.data.is_dir() {
        return Err(Error::opening(
            &o.data,
            std::io::Error::new(std::io::ErrorKind::NotFound, "no such folder"),
        ));
    }
    Ok(())
}

/// Runs a whole training; see the module documentation.
pub fn run(
    o: &RunOptions,
    cancel: &AtomicBool,
    report: &mut dyn FnMut(RunEvent<'_>),
) -> Result<RunSummary> {
    check(o)?;
    let items = data::scan(&o.data)?;
    if items.len() < 2 {
        return Err(Error::InvalidSetting(format!(
            "{}: one video to train on: at least two are needed, one of them held out to measure the model",
            o.data.display()
        )));
    }
    // The steps run on the trainer's own differentiable decoder
    // (`Trainer::new` reads it from the checkpoint); the model's generation
    // decoder would never be used here, so it is not loaded.
    let mut base = MusicGen::load_without_decoder(&o.musicgen_dir, Precision::F32)?;
    base.text_to_device(&o.device)?;
    // The videos' frames go through CLIP's vision tower on the training
    // device, in f32 (the features are the same model's within rounding on
    // any device, and cached as one).
    let clip: Box<dyn FrameEncoder> = if o.device.is_cpu() {
        Box::new(Clip::load(&o.clip_dir)?)
    } else {
        Box::new(ClipFrames::load(&o.clip_dir, &o.device, DType::F32)?)
    };
    let encoder = EncodecEncoder::open(&o.musicgen_dir)?;
    let base_hash = base.weights_hash()?;
    let (ckpt, log_path, plot_path) = side_files(&o.out);

    let mut trainer = if o.resume {
        let t = Trainer::resume(&ckpt, &base, o.train.clone())?;
        let saved = &t.adapter().info;
        let mut differs = Vec::new();
        if saved.stage != o.stage {
            differs.push(format!("stage: {} there, {} here", saved.stage, o.stage));
        }
        if saved.config.condition_dropout != o.adapter.condition_dropout {
            differs.push(format!(
                "condition dropout: {} there, {} here",
                saved.config.condition_dropout, o.adapter.condition_dropout
            ));
        }
        if o.stage == 1 && saved.config.lora_rank != o.adapter.lora_rank {
            differs.push(format!(
                "LoRA rank: {} there, {} here",
                saved.config.lora_rank, o.adapter.lora_rank
            ));
        }
        if !differs.is_empty() {
            return Err(Error::model_file(
                &ckpt,
                format!(
                    "the checkpoint is of another training config ({}); resume with the same settings",
                    differs.join(", ")
                ),
            ));
        }
        t
    } else {
        let cfg = AdapterConfig {
            clip_width: clip.config().vision_config.hidden_size,
            ..o.adapter.clone()
        };
        let adapter = match &o.init {
            Some(init) => {
                // Stage 2 keeps the stage-1 adapter's modules and choices;
                // only how often conditions are dropped is this run's.
                let mut a = Adapter::load(init, &base, &o.musicgen_id)?;
                a.info.config.condition_dropout = o.adapter.condition_dropout;
                a.add_rhythm(&base)?;
                a
            }
            None => Adapter::new(&cfg, &base, &o.musicgen_id, DType::F32)?,
        };
        Trainer::new(&base, adapter, o.train.clone())?
    };
    let clip_width = trainer.adapter().info.config.clip_width;
    if clip_width != clip.config().vision_config.hidden_size {
        return Err(Error::InvalidSetting(format!(
            "the adapter reads CLIP features {clip_width} wide; {} gives {}",
            o.clip_dir.display(),
            clip.config().vision_config.hidden_size
        )));
    }

    let extractor = Extractor {
        base: &base,
        base_hash,
        encoder: &encoder,
        clip: &*clip,
        clip_id: crate::service::spec::model_fingerprint(&o.clip_dir),
        cache: o.cache_dir.as_ref().map(|d| d.join("train")),
    };
    let (pieces, skipped) = extractor.prepare(&items, cancel, &mut |done, total, name| {
        report(RunEvent::Extracting { done, total, name })
    })?;
    for s in &skipped {
        report(RunEvent::Skipped(s));
    }
    let normalise = trainer.adapter().info.config.rhythm_normalise;
    let pieces = pieces
        .into_iter()
        .map(|p| {
            // A caption becomes the states a prompt would, once per piece.
            let text = match &p.caption {
                Some(c) => {
                    let (ids, mask) = base.tokenize(&[c])?;
                    let states = base.text_states(&ids, &mask)?;
                    Some(std::sync::Arc::new(states.flatten_all()?.to_vec1::<f32>()?))
                }
                None => None,
            };
            Ok(Piece {
                curve: crate::neural::conditioning::rhythm::prepare_curve(&p.curve, normalise),
                text,
                ..p
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let (train, held) = data::split(pieces)?;
    let all: Vec<&Piece> = train.iter().chain(&held).collect();
    let frames = data::window_frames(&all, o.train.window_seconds, &base);
    let rate = base.frame_rate() as f64;
    if frames < 2 {
        return Err(Error::InvalidSetting(
            "the shortest piece is too short to train on".into(),
        ));
    }
    let context = trainer.adapter().info.config.rhythm_context;
    let held_windows = data::held_out_windows(&held, frames, rate, context);
    let held_out = |t: &Trainer| eval(t, &held_windows, o.train.batch_size);
    let held_out_start = held_out(&trainer)?;
    let from_step = trainer.steps_done();
    let mut entries = log::read(&log_path, from_step);
    if o.resume {
        // What an interrupted run logged after its checkpoint is redone.
        log::rewrite(&log_path, &entries)?;
    } else {
        entries.clear();
        let e = Entry {
            step: 0,
            loss: None,
            held_out: Some(held_out_start),
            lr: None,
            grad_norm: None,
            steps_per_s: None,
        };
        log::append(&log_path, &e)?;
        entries.push(e);
    }
    report(RunEvent::Ready {
        trainable: trainer.trained_count(),
        train_pieces: train.len(),
        held_pieces: held.len(),
        window_seconds: frames as f64 / rate,
        from_step,
        held_out: held_out_start,
    });

    let started = Instant::now();
    let mut held_out_end = held_out_start;
    while trainer.steps_done() < o.train.steps {
        if cancel.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(Error::Cancelled);
        }
        let step = trainer.steps_done();
        // The windows of a step depend on the seed and the step alone, so a
        // resumed run draws the same ones.
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(
            o.train.seed.wrapping_add(1) ^ (step as u64).wrapping_mul(0xD1B5_4A32_D192_ED03),
        );
        let windows: Vec<Example> = (0..o.train.batch_size)
            .map(|_| data::random_window(&train, frames, rate, context, &mut rng))
            .collect();
        let refs: Vec<&Example> = windows.iter().collect();
        let stats = trainer.step(&refs)?;
        let steps_per_s = (stats.step - from_step) as f64 / started.elapsed().as_secs_f64();
        report(RunEvent::Step {
            stats: &stats,
            steps_per_s,
        });
        let mut e = Entry {
            step: stats.step,
            loss: Some(stats.loss),
            held_out: None,
            lr: Some(stats.lr),
            grad_norm: Some(stats.grad_norm),
            steps_per_s: Some(steps_per_s),
        };
        let last = stats.step == o.train.steps;
        if stats.step % o.eval_every == 0 || last {
            held_out_end = held_out(&trainer)?;
            e.held_out = Some(held_out_end);
            report(RunEvent::HeldOut {
                step: stats.step,
                loss: held_out_end,
            });
        }
        log::append(&log_path, &e)?;
        entries.push(e);
        if stats.step % o.checkpoint_every == 0 || last {
            trainer.save_checkpoint(&ckpt)?;
        }
    }
    // Checked again: the file may have appeared during a long run. The
    // trained state stays in the checkpoint either way.
    if !o.resume && o.out.exists() {
        return Err(Error::InvalidSetting(format!(
            "{} appeared during training and is not replaced; the trained adapter is in {} (move the file away and add --resume to write it)",
            o.out.display(),
            ckpt.display()
        )));
    }
    trainer.adapter().save(&o.out)?;
    let title = format!(
        "{} — stage {}",
        o.out
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
        o.stage
    );
    log::plot(&entries, &title, &plot_path)?;
    Ok(RunSummary {
        adapter: o.out.clone(),
        checkpoint: ckpt,
        log: log_path,
        plot: plot_path,
        trainable: trainer.trained_count(),
        held_out_start,
        held_out_end,
    })
}

/// The mean held-out loss over `windows`, `batch` at a time (weighted by the
/// windows in each).
fn eval(t: &Trainer, windows: &[Example], batch: usize) -> Result<f64> {
    let mut total = 0.0;
    for chunk in windows.chunks(batch.max(1)) {
        let refs: Vec<&Example> = chunk.iter().collect();
        total += t.eval(&refs)? * chunk.len() as f64;
    }
    Ok(total / windows.len().max(1) as f64)
}
