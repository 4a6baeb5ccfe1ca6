//! Training speed from random weights (no checkpoint can be downloaded where
//! it runs): optimiser steps per second on a tiny config, and one step
//! (forward, backward, update) of a stage-2 adapter on a musicgen-small-shaped
//! model over a 10 s window, with the process's peak memory.

use std::time::Instant;

use candle_core::{DType, Device};
use rand::{Rng, SeedableRng};

use super::{Example, TrainConfig, Trainer};
use crate::Result;
use crate::neural::bench::{musicgen_small, peak_rss_mb};
use crate::neural::conditioning::{Adapter, AdapterConfig};
use crate::neural::config::MusicgenConfig;
use crate::neural::device::candle_device_name;
use crate::neural::models::musicgen::MusicgenDecoder;
use crate::neural::nn::Linear;
use crate::neural::t5::T5Encoder;
use crate::neural::weights::Weights;

#[derive(Debug, Clone, serde::Serialize)]
pub struct TrainBench {
    /// Where the steps ran (`cpu`, `cuda:N`).
    pub device: String,
    /// CPU threads.
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

/// A stage-2 trainer on random weights of `cfg`'s shape, on `device` (the
/// same values on every device).
fn trainer(cfg: &MusicgenConfig, adapter: &AdapterConfig, device: &Device) -> Result<Trainer> {
    let w = Weights::random(7).on(device);
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

/// The tiny config's adapter.
fn tiny_adapter() -> AdapterConfig {
    AdapterConfig {
        clip_width: 32,
        block_size: 1,
        ..AdapterConfig::default()
    }
}

/// [`run_on`] the CPU.
pub fn run(progress: &mut dyn FnMut(&str)) -> Result<TrainBench> {
    run_on(&Device::Cpu, progress)
}

/// Training speed with the steps on `device`.
pub fn run_on(device: &Device, progress: &mut dyn FnMut(&str)) -> Result<TrainBench> {
    let adapter = AdapterConfig {
        clip_width: 768,
        ..AdapterConfig::default()
    };
    progress("tiny config: 20 steps of 4 windows of 4 s");
    let cfg = tiny();
    let mut t = trainer(&cfg, &tiny_adapter(), device)?;
    let data = windows(4, 200, 4, 64, 32);
    let batch: Vec<&Example> = data.iter().collect();
    t.step(&batch)?;
    let start = Instant::now();
    let steps = 20;
    for _ in 0..steps {
        t.step(&batch)?;
    }
    // A device runs its kernels behind the host's back: the loss read at
    // the end waits for them.
    t.eval(&batch)?;
    let tiny_steps_per_s = steps as f64 / start.elapsed().as_secs_f64();
    let tiny_trainable = t.trained_count();
    drop(t);

    progress("musicgen-small shape: steps on one 10 s window");
    let cfg = musicgen_small();
    let mut t = trainer(&cfg, &adapter, device)?;
    let data = windows(1, 500, 4, 2048, 768);
    let batch: Vec<&Example> = data.iter().collect();
    let mut times = Vec::new();
    for _ in 0..3 {
        let s = Instant::now();
        t.step(&batch)?;
        times.push(s.elapsed().as_secs_f64());
    }
    Ok(TrainBench {
        device: candle_device_name(device),
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

/// The same training on the CPU and on another device: the tiny config's
/// stage-2 trainer from the same random weights and the same windows.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TrainParity {
    pub device: String,
    pub steps: usize,
    /// Each step's loss, on the CPU and on the device.
    pub cpu_losses: Vec<f64>,
    pub device_losses: Vec<f64>,
    /// The largest difference between the two losses of a step, and
    /// between a trained value after the last step.
    pub max_loss_diff: f64,
    pub max_param_diff: f64,
    /// The largest trained value after the last step (for scale).
    pub max_param: f64,
}

/// [`TrainParity`] over `steps` steps.
pub fn parity(device: &Device, steps: usize) -> Result<TrainParity> {
    let cfg = tiny();
    let data = windows(4, 200, 4, 64, 32);
    let batch: Vec<&Example> = data.iter().collect();
    let train = |device: &Device| -> Result<(Vec<f64>, Vec<Vec<f32>>)> {
        let mut t = trainer(&cfg, &tiny_adapter(), device)?;
        let losses = (0..steps)
            .map(|_| Ok(t.step(&batch)?.loss))
            .collect::<Result<Vec<_>>>()?;
        let params = t
            .adapter()
            .params
            .iter()
            .map(|(_, v)| Ok(v.as_tensor().flatten_all()?.to_vec1::<f32>()?))
            .collect::<Result<Vec<_>>>()?;
        Ok((losses, params))
    };
    let (cpu_losses, cpu_params) = train(&Device::Cpu)?;
    let (device_losses, device_params) = train(device)?;
    let max_loss_diff = cpu_losses
        .iter()
        .zip(&device_losses)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    let (mut max_param_diff, mut max_param) = (0f64, 0f64);
    for (a, b) in cpu_params.iter().zip(&device_params) {
        for (x, y) in a.iter().zip(b) {
            max_param_diff = max_param_diff.max(f64::from((x - y).abs()));
            max_param = max_param.max(f64::from(x.abs()));
        }
    }
    Ok(TrainParity {
        device: candle_device_name(device),
        steps,
        cpu_losses,
        device_losses,
        max_loss_diff,
        max_param_diff,
        max_param,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn training_on_the_cpu_twice_agrees_with_itself() {
        // The parity check's own arithmetic, where both sides are the CPU:
        // the same weights, windows and draws give the same steps exactly.
        let p = parity(&Device::Cpu, 3).unwrap();
        assert_eq!(p.device, "cpu");
        assert_eq!(p.cpu_losses.len(), 3);
        assert!(p.cpu_losses.iter().all(|l| l.is_finite() && *l > 0.0));
        assert_eq!(p.cpu_losses, p.device_losses);
        assert_eq!(p.max_loss_diff, 0.0);
        assert_eq!(p.max_param_diff, 0.0);
        assert!(p.max_param > 0.0);
    }
}
