//! Training speed from random weights (no checkpoint can be downloaded where
//! it runs): optimiser steps per second on a tiny config, and one step
//! (forward, backward, update) of a stage-2 adapter on a musicgen-small-shaped
//! model over a 10 s window, with the process's peak memory.

use std::time::Instant;

use candle_core::DType;
use rand::{Rng, SeedableRng};

use super::{Example, TrainConfig, Trainer};
use crate::Result;
use crate::neural::bench::{musicgen_small, peak_rss_mb};
use crate::neural::conditioning::{Adapter, AdapterConfig};
use crate::neural::config::MusicgenConfig;
use crate::neural::models::musicgen::MusicgenDecoder;
use crate::neural::nn::Linear;
use crate::neural::t5::T5Encoder;
use crate::neural::weights::Weights;

#[derive(Debug, Clone, serde::Serialize)]
pub struct TrainBench {
    pub threads: usize,
    /// The tiny config (the test fixtures' shape): windows per step, their
    /// length, and steps per second.
    pub tiny_batch: usize,
    pub tiny_window_s: f64,
    pub tiny_steps_per_s: f64,
    pub tiny_trainable: usize,
    /// musicgen-small's shape, one 10 s window: seconds per step (the best
    /// of the steps after the first).
    pub small_window_s: f64,
    pub small_step_s: f64,
    pub small_first_step_s: f64,
    pub small_trainable: usize,
    pub peak_rss_mb: Option<f64>,
}

/// The test fixtures' shape: T5 32 wide with 2 layers, a decoder 48 wide with
/// 4 layers, codebooks of 64.
fn tiny() -> MusicgenConfig {
    let mut c = musicgen_small();
    let t = &mut c.text_encoder;
    (
        t.d_model,
        t.d_kv,
        t.d_ff,
        t.num_layers,
        t.num_heads,
        t.vocab_size,
    ) = (32, 8, 64, 2, 4, 100);
    let d = &mut c.decoder;
    (
        d.hidden_size,
        d.ffn_dim,
        d.num_hidden_layers,
        d.num_attention_heads,
    ) = (48, 64, 4, 4);
    (d.vocab_size, d.max_position_embeddings) = (64, 512);
    c
}

/// A stage-2 trainer on random weights of `cfg`'s shape.
fn trainer(cfg: &MusicgenConfig, adapter: &AdapterConfig) -> Result<Trainer> {
    let w = Weights::random(7);
    let t5 = T5Encoder::load(&w.pp("text_encoder"), &cfg.text_encoder)?;
    let (th, dh) = (cfg.text_encoder.d_model, cfg.decoder.hidden_size);
    let proj = if th != dh {
        Some(Linear::load(&w.pp("enc_to_dec_proj"), th, dh, true)?)
    } else {
        None
    };
    let decoder = MusicgenDecoder::load(&w.pp("decoder"), &cfg.decoder)?;
    let mut a = Adapter::from_parts(
        adapter,
        &t5,
        proj.as_ref(),
        &cfg.decoder,
        "random",
        "random".into(),
        DType::F32,
    )?;
    a.add_rhythm_for(&cfg.decoder)?;
    Trainer::from_parts(
        decoder,
        a,
        TrainConfig {
            steps: 1_000_000,
            warmup: 1,
            ..TrainConfig::default()
        },
    )
}

/// Random windows of `frames` code frames.
fn windows(n: usize, frames: usize, k: usize, vocab: u32, clip: usize) -> Vec<Example> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let seconds = frames.div_ceil(50).max(1);
    (0..n)
        .map(|_| Example {
            codes: (0..frames)
                .map(|_| (0..k).map(|_| rng.random_range(0..vocab)).collect())
                .collect(),
            clip: (0..seconds * clip)
                .map(|_| rng.random_range(-1.0..1.0))
                .collect(),
            clip_frames: seconds,
            rhythm: (0..frames + k)
                .map(|_| rng.random_range(0.0..1.0))
                .collect(),
            text: None,
        })
        .collect()
}

pub fn run(progress: &mut dyn FnMut(&str)) -> Result<TrainBench> {
    let adapter = AdapterConfig {
        clip_width: 768,
        ..AdapterConfig::default()
    };
    progress("tiny config: 20 steps of 4 windows of 4 s");
    let cfg = tiny();
    let tiny_adapter = AdapterConfig {
        clip_width: 32,
        block_size: 1,
        ..adapter.clone()
    };
    let mut t = trainer(&cfg, &tiny_adapter)?;
    let data = windows(4, 200, 4, 64, 32);
    let batch: Vec<&Example> = data.iter().collect();
    t.step(&batch)?;
    let start = Instant::now();
    let steps = 20;
    for _ in 0..steps {
        t.step(&batch)?;
    }
    let tiny_steps_per_s = steps as f64 / start.elapsed().as_secs_f64();
    let tiny_trainable = t.trained_count();
    drop(t);

    progress("musicgen-small shape: steps on one 10 s window");
    let cfg = musicgen_small();
    let mut t = trainer(&cfg, &adapter)?;
    let data = windows(1, 500, 4, 2048, 768);
    let batch: Vec<&Example> = data.iter().collect();
    let mut times = Vec::new();
    for _ in 0..3 {
        let s = Instant::now();
        t.step(&batch)?;
        times.push(s.elapsed().as_secs_f64());
    }
    Ok(TrainBench {
        threads: candle_core::utils::get_num_threads(),
        tiny_batch: 4,
        tiny_window_s: 4.0,
        tiny_steps_per_s,
        tiny_trainable,
        small_window_s: 10.0,
        small_step_s: times[1..].iter().copied().fold(f64::INFINITY, f64::min),
        small_first_step_s: times[0],
        small_trainable: t.trained_count(),
        peak_rss_mb: peak_rss_mb(),
    })
}
