//! `vidmusician train`: an adapter of the VidMusician method, trained on a
//! folder of videos with their music.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use anyhow::Result;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use vidmusician_engine::neural::conditioning::AdapterConfig;
use vidmusician_engine::neural::device::{self, DeviceChoice};
use vidmusician_engine::neural::hub::{self, ModelKind};
use vidmusician_engine::train::run::{RunEvent, RunOptions, run};
use vidmusician_engine::train::{AdamWConfig, TrainConfig};

#[derive(Args)]
pub struct TrainArgs {
    /// 1: the semantic module and T5's LoRA; 2: adds the rhythm module to
    /// the stage-1 adapter given with --init.
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..=2))]
    stage: u8,
    /// A folder of videos whose sound is their music, or each with a WAV of
    /// the same name beside it (`a.mp4` + `a.wav`), optionally a caption
    /// (`a.txt`). Every tenth video is held out to measure the model.
    #[arg(long, value_name = "DIR")]
    data: PathBuf,
    /// The adapter to write (NAME.safetensors; NAME.ckpt, NAME.log.jsonl and
    /// NAME.loss.png go beside it). An existing file is not replaced.
    #[arg(long, value_name = "ADAPTER")]
    out: PathBuf,
    /// Stage 2: the stage-1 adapter to start from.
    #[arg(long, value_name = "STAGE1_ADAPTER")]
    init: Option<PathBuf>,
    /// Continue the run whose checkpoint is NAME.ckpt, with the same settings.
    #[arg(long)]
    resume: bool,
    /// Optimiser steps.
    #[arg(long, default_value_t = 1000)]
    steps: usize,
    /// Windows per step.
    #[arg(long, default_value_t = 4)]
    batch: usize,
    /// Peak learning rate.
    #[arg(long, default_value_t = 1e-4)]
    lr: f64,
    /// Warm-up steps before the cosine decay.
    #[arg(long, default_value_t = 100)]
    warmup: usize,
    /// Longest training window, seconds (MusicGen was trained on 30).
    #[arg(long, default_value_t = 30.0, value_name = "SECONDS")]
    window: f64,
    /// Measure the held-out loss every N steps.
    #[arg(long, default_value_t = 100, value_name = "N")]
    eval_every: usize,
    /// Write a checkpoint every N steps.
    #[arg(long, default_value_t = 100, value_name = "N")]
    checkpoint_every: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Stage 2: train the rhythm module alone, keeping the semantic module
    /// and LoRA as stage 1 left them (by default they go on training).
    #[arg(long)]
    rhythm_only: bool,
    /// Stage 1: LoRA rank on T5's attention projections (8 if unset; stage 2
    /// keeps the stage-1 adapter's).
    #[arg(long)]
    lora_rank: Option<usize>,
    /// Chance that a window's conditions (caption, pictures, rhythm) are
    /// dropped, for guidance.
    #[arg(long, default_value_t = 0.1, value_name = "P")]
    condition_dropout: f64,
    /// Look here first for models (a model folder, or a folder of them).
    #[arg(long, value_name = "DIR")]
    model_dir: Option<PathBuf>,
    /// The MusicGen checkpoint the adapter is for.
    #[arg(long, default_value = hub::DEFAULT_MODEL)]
    model: String,
    /// The CLIP checkpoint that reads the pictures.
    #[arg(long, default_value = hub::DEFAULT_CLIP)]
    clip_model: String,
    /// Do not cache what is extracted from the videos.
    #[arg(long)]
    no_cache: bool,
    /// Where the steps run: auto, cpu, cuda, cuda:N. CUDA needs vidmusician
    /// built with the `cuda` feature (training does not go through the GPU
    /// helper); auto takes a CUDA device when the build has one and it
    /// answers. The videos are read on the CPU either way.
    #[arg(long, default_value = "auto")]
    device: DeviceChoice,
}

pub fn train(a: TrainArgs) -> Result<()> {
    if a.stage == 2 && a.lora_rank.is_some() {
        anyhow::bail!("--lora-rank is for stage 1: stage 2 keeps the stage-1 adapter's LoRA");
    }
    // Before the models are looked for (and perhaps downloaded): a device
    // that cannot be had is said at once.
    let device = device::choose_in_process(a.device, "training")?;
    eprintln!("{}", device.note);
    let musicgen_dir =
        hub::find_model_of(&a.model, Some(ModelKind::MusicGen), a.model_dir.as_deref())?;
    let clip_dir =
        hub::find_model_of(&a.clip_model, Some(ModelKind::Clip), a.model_dir.as_deref())?;
    let options = RunOptions {
        stage: a.stage,
        data: a.data,
        out: a.out,
        init: a.init,
        resume: a.resume,
        train: TrainConfig {
            steps: a.steps,
            batch_size: a.batch,
            window_seconds: a.window,
            lr: a.lr,
            warmup: a.warmup,
            clip_norm: 1.0,
            adamw: AdamWConfig::default(),
            seed: a.seed,
            stage2_semantic: !a.rhythm_only,
        },
        adapter: AdapterConfig {
            lora_rank: a.lora_rank.unwrap_or(AdapterConfig::default().lora_rank),
            condition_dropout: a.condition_dropout,
            seed: a.seed,
            ..AdapterConfig::default()
        },
        eval_every: a.eval_every,
        checkpoint_every: a.checkpoint_every,
        musicgen_dir,
        musicgen_id: a.model,
        clip_dir,
        cache_dir: if a.no_cache {
            None
        } else {
            vidmusician_engine::service::cache_root()
        },
        device: device.candle_device(),
    };
    let style = ProgressStyle::with_template("{prefix:>10} [{bar:30}] {pos}/{len} {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    let bar = ProgressBar::new(0).with_style(style);
    let steps = options.train.steps as u64;
    let cancel = AtomicBool::new(false);
    let summary = run(&options, &cancel, &mut |e| match e {
        RunEvent::Extracting { done, total, name } => {
            bar.set_prefix("extracting");
            bar.set_length(total as u64);
            bar.set_position(done as u64);
            bar.set_message(name.to_string());
        }
        RunEvent::Skipped(s) => {
            bar.suspend(|| eprintln!("skipped {}: {}", s.video.display(), s.reason));
        }
        RunEvent::Ready {
            trainable,
            train_pieces,
            held_pieces,
            window_seconds,
            from_step,
            held_out,
        } => {
            bar.suspend(|| {
                let millions = if trainable >= 100_000 {
                    format!(" ({:.2}M)", trainable as f64 / 1e6)
                } else {
                    String::new()
                };
                eprintln!(
                    "stage {}: {trainable} trainable parameters{millions}; {train_pieces} videos to train on, {held_pieces} held out; windows of {window_seconds:.1} s",
                    options.stage
                );
                if from_step > 0 {
                    eprintln!("resuming at step {from_step}");
                }
                eprintln!("held-out loss at the start: {held_out:.4}");
            });
            bar.set_prefix("training");
            bar.set_length(steps);
            bar.set_position(from_step as u64);
        }
        RunEvent::Step { stats, steps_per_s } => {
            bar.set_position(stats.step as u64);
            bar.set_message(format!(
                "loss {:.4}  {steps_per_s:.2} steps/s  lr {:.2e}",
                stats.loss, stats.lr
            ));
        }
        RunEvent::HeldOut { step, loss } => {
            bar.suspend(|| eprintln!("step {step}: held-out loss {loss:.4}"));
        }
    });
    bar.finish_and_clear();
    let summary = summary?;
    println!(
        "adapter: {} ({} trainable parameters; held-out loss {:.4} → {:.4})",
        summary.adapter.display(),
        summary.trainable,
        summary.held_out_start,
        summary.held_out_end
    );
    println!("checkpoint: {}", summary.checkpoint.display());
    println!("log: {}", summary.log.display());
    println!("loss plot: {}", summary.plot.display());
    Ok(())
}
