//! Speed of the neural engine at the real model's size, with random weights built in
//! memory (no checkpoint can be downloaded where the benchmark runs).

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use serde::Serialize;

use super::config::MusicgenConfig;
use super::decoder::Decoder;
use super::encodec::EncodecDecoder;
use super::generate::{Sampling, generate};
use super::weights::Weights;
use crate::Result;

/// facebook/musicgen-small's configuration (T5-base text encoder, 24-layer decoder
/// of width 1024, EnCodec 32 kHz).
pub const MUSICGEN_SMALL: &str = r#"{
  "text_encoder": {"vocab_size": 32128, "d_model": 768, "d_kv": 64, "d_ff": 3072,
    "num_layers": 12, "num_heads": 12, "feed_forward_proj": "relu"},
  "audio_encoder": {"sampling_rate": 32000, "audio_channels": 1, "num_filters": 64,
    "hidden_size": 128, "codebook_size": 2048, "upsampling_ratios": [8, 5, 4, 4],
    "target_bandwidths": [2.2], "num_lstm_layers": 2, "norm_type": "weight_norm",
    "pad_mode": "reflect", "use_causal_conv": false},
  "decoder": {"vocab_size": 2048, "max_position_embeddings": 2048,
    "num_hidden_layers": 24, "ffn_dim": 4096, "num_attention_heads": 16,
    "hidden_size": 1024, "num_codebooks": 4, "activation_function": "gelu"}
}"#;

pub fn musicgen_small() -> MusicgenConfig {
    serde_json::from_str(MUSICGEN_SMALL).expect("PANIC: the built-in config parses")
}

#[derive(Debug, Clone, Serialize)]
pub struct DecoderBench {
    pub threads: usize,
    pub frames: usize,
    pub steps: usize,
    pub guided_steps_per_s: f64,
    pub unguided_steps_per_s: f64,
    /// Seconds of decoder time per 10 s of audio (503 steps), with guidance.
    pub guided_s_per_10s_audio: f64,
    pub encodec_s_per_10s_audio: f64,
    pub peak_rss_mb: Option<f64>,
}

/// Peak resident memory of this process so far (Linux), MB.
pub fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Times `frames` frames of generation (sampling, top-k 250) with guidance 3 and
/// without, and the EnCodec decoding of 10 s of codes.
pub fn run(frames: usize, progress: &mut dyn FnMut(&str)) -> Result<DecoderBench> {
    let cfg = musicgen_small();
    progress("building a musicgen-small decoder with random weights");
    let w = Weights::random(7);
    let decoder = Decoder::load(&w.pp("decoder"), &cfg.decoder)?;
    let states = Tensor::randn(0f32, 1.0, (1, 12, cfg.decoder.hidden_size), &Device::Cpu)?;
    let cross = decoder
        .cross_kv(&states, None)?
        .pop()
        .expect("PANIC: one sequence of states gives one");
    let k = cfg.decoder.num_codebooks;
    let steps = frames + k - 1;
    let mut time = |guidance: f64, label: &str| -> Result<f64> {
        progress(label);
        let s = Sampling {
            guidance,
            ..Sampling::default()
        };
        let t0 = Instant::now();
        generate(&decoder, Some(&cross), &[], frames, &s, &mut |_| true)?;
        Ok(steps as f64 / t0.elapsed().as_secs_f64())
    };
    // One short run first so page faults and first-touch costs are not timed.
    {
        let s = Sampling::default();
        generate(&decoder, Some(&cross), &[], 4, &s, &mut |_| true)?;
    }
    let guided = time(3.0, "decoder steps with guidance 3")?;
    let unguided = time(1.0, "decoder steps without guidance")?;
    drop(decoder);

    progress("EnCodec: decoding 10 s of codes");
    let codec = EncodecDecoder::load(&w.pp("audio_encoder"), &cfg.audio_encoder)?;
    let codes = Tensor::zeros((1, k, 500), DType::U32, &Device::Cpu)?;
    codec.decode(&codes.narrow(2, 0, 50)?)?;
    let t0 = Instant::now();
    codec.decode(&codes)?;
    let encodec = t0.elapsed().as_secs_f64();
    Ok(DecoderBench {
        threads: candle_core::utils::get_num_threads(),
        frames,
        steps,
        guided_steps_per_s: guided,
        unguided_steps_per_s: unguided,
        guided_s_per_10s_audio: 503.0 / guided,
        encodec_s_per_10s_audio: encodec,
        peak_rss_mb: peak_rss_mb(),
    })
}
