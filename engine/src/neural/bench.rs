//! Speed of the neural engine at the real model's size, with random weights built in
//! memory (no checkpoint can be downloaded where the benchmark runs).

use super::kernels::Q8Kernel;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use serde::Serialize;

use super::config::MusicgenConfig;
use super::decoder::{Decoder, Precision, SeqInput};
use super::encodec::EncodecDecoder;
use super::generate::{Sampling, argmax, generate};
use super::model::MusicGen;
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
    "pad_mode": "reflect", "use_causal_conv": false, "use_conv_shortcut": false},
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
    pub q8_guided_steps_per_s: f64,
    pub q8_unguided_steps_per_s: f64,
    /// The 8-bit kernel those ran with, and every kernel this CPU has timed
    /// in the same run: (name, guided, unguided steps/s), the best of two
    /// rounds (in order, then in reverse).
    pub q8_kernel: &'static str,
    pub q8_kernels: Vec<(&'static str, f64, f64)>,
    /// Largest difference of the 8-bit decoder's logits from f32's over a
    /// sequence, and the spread (standard deviation) of f32's logits.
    pub q8_max_logit_diff: f64,
    pub logit_std: f64,
    /// Share of positions and codebooks where both pick the same most likely token.
    pub q8_greedy_agreement: f64,
    pub encodec_s_per_10s_audio: f64,
    pub peak_rss_mb: Option<f64>,
    /// Loading a whole checkpoint of musicgen-small's layout (T5, decoder, EnCodec)
    /// written for the purpose: its size and the most memory the load held above what
    /// the process held before it.
    pub load_file_mb: f64,
    pub load_peak_mb: Option<f64>,
    /// Seconds that load took, and the same checkpoint loaded again with the
    /// decoder in 8 bits as the engines load it (the files in the page cache,
    /// as on a second use; a first read from disk adds the disk's time).
    pub load_s: f64,
    pub load_q8_s: f64,
    /// Seconds to turn a prompt of a dozen words into the decoder's
    /// conditions (T5 and the cross-attention's keys and values, 8-bit
    /// model, best of 3): what each piece, and each new prompt of a
    /// piece, costs before its first step.
    pub prompt_s: f64,
}

/// Peak resident memory of this process so far (Linux), MB.
pub fn peak_rss_mb() -> Option<f64> {
    status_mb("VmHWM:")
}

fn status_mb(field: &str) -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Writes a whole checkpoint of musicgen-small's layout (random values; in shards,
/// as the Hugging Face layout allows, so that writing it never holds it all) with a
/// config and a word-level tokenizer to a temporary folder, then loads it as a user's
/// model is loaded: `(checkpoint MB, peak MB above the memory held before the load)`.
/// The peak is reset first (`/proc/self/clear_refs`), so it is the load's own; `None`
/// where Linux's counters are missing. Then the seconds of that load and of an 8-bit
/// load of the same files.
fn load_peak() -> Result<(f64, Option<f64>, f64, f64, f64)> {
    let dir = tempfile::tempdir().map_err(|e| crate::Error::io(std::env::temp_dir(), e))?;
    let bytes = write_random_checkpoint(dir.path())?;
    // Freed memory that the allocator keeps would be reused by the load unseen.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free heap memory to the system.
    unsafe {
        libc::malloc_trim(0);
    }
    // "5" resets the peak resident size to the current one.
    let reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
    let before = status_mb("VmRSS:");
    let t0 = Instant::now();
    let model = MusicGen::load(dir.path())?;
    let load_s = t0.elapsed().as_secs_f64();
    let peak = match (reset, before, peak_rss_mb()) {
        (true, Some(b), Some(p)) => Some(p - b),
        _ => None,
    };
    drop(model);
    let t0 = Instant::now();
    let model = MusicGen::load_as(dir.path(), Precision::Q8)?;
    let load_q8_s = t0.elapsed().as_secs_f64();
    let mut prompt_s = f64::INFINITY;
    for _ in 0..3 {
        let t0 = Instant::now();
        model.condition("warm lofi hip hop with a soft piano, slow drums and vinyl crackle")?;
        prompt_s = prompt_s.min(t0.elapsed().as_secs_f64());
    }
    Ok((
        bytes as f64 / (1024.0 * 1024.0),
        peak,
        load_s,
        load_q8_s,
        prompt_s,
    ))
}

/// Writes a model folder of musicgen-small's layout with random weights (6 shards and
/// their index, `config.json`, a word-level `tokenizer.json`) into `dir`; returns the
/// weights' size in bytes.
pub fn write_random_checkpoint(dir: &std::path::Path) -> Result<u64> {
    let io = |p: &std::path::Path, e| crate::Error::io(p, e);
    let layout = MusicGen::checkpoint_layout(&musicgen_small())?;
    let mut weight_map = serde_json::Map::new();
    let mut bytes = 0u64;
    for (i, part) in layout.chunks(layout.len().div_ceil(6)).enumerate() {
        let name = format!("model-{:05}-of-00006.safetensors", i + 1);
        let mut shard = std::collections::HashMap::new();
        for (tensor, shape) in part {
            shard.insert(
                tensor.clone(),
                Tensor::randn(0f32, 0.02, shape.as_slice(), &Device::Cpu)?,
            );
            weight_map.insert(tensor.clone(), serde_json::Value::String(name.clone()));
        }
        let path = dir.join(&name);
        candle_core::safetensors::save(&shard, &path)?;
        bytes += std::fs::metadata(&path).map_err(|e| io(&path, e))?.len();
    }
    let write = |name: &str, text: String| {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(|e| io(&path, e))
    };
    write(
        "model.safetensors.index.json",
        serde_json::json!({ "weight_map": weight_map }).to_string(),
    )?;
    write("config.json", MUSICGEN_SMALL.to_string())?;
    let tokenizer = word_tokenizer(&[("<pad>", 0), ("</s>", 1), ("<unk>", 2)])?;
    let path = dir.join("tokenizer.json");
    tokenizer
        .save(&path, false)
        .map_err(|e| crate::Error::InvalidSetting(format!("bench tokenizer: {e}")))?;
    Ok(bytes)
}

/// A word-level tokenizer knowing only `words` (one must be `<unk>`, which
/// every other word becomes): enough for benchmarks, where what the text says
/// does not change the work.
pub(crate) fn word_tokenizer(words: &[(&str, u32)]) -> Result<tokenizers::Tokenizer> {
    let vocab = words.iter().map(|(t, i)| (t.to_string(), *i)).collect();
    let model = tokenizers::models::wordlevel::WordLevel::builder()
        .vocab(vocab)
        .unk_token("<unk>".into())
        .build()
        .map_err(|e| crate::Error::InvalidSetting(format!("bench tokenizer: {e}")))?;
    Ok(tokenizers::Tokenizer::new(model))
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
    let mut decoder = decoder;
    let time = |decoder: &Decoder, guidance: f64| -> Result<f64> {
        let s = Sampling {
            guidance,
            ..Sampling::default()
        };
        let t0 = Instant::now();
        generate(decoder, Some(&cross), &[], frames, &s, &mut |_, _| true)?;
        Ok(steps as f64 / t0.elapsed().as_secs_f64())
    };
    // One short run first so page faults and first-touch costs are not timed.
    {
        let s = Sampling::default();
        generate(&decoder, Some(&cross), &[], 4, &s, &mut |_, _| true)?;
    }
    let guided = {
        progress("decoder steps with guidance 3");
        time(&decoder, 3.0)?
    };
    let unguided = {
        progress("decoder steps without guidance");
        time(&decoder, 1.0)?
    };
    progress("accuracy of 8-bit weights");
    let want = logits_over(&decoder, &cross)?;
    decoder.set_precision(Precision::Q8);
    let got = logits_over(&decoder, &cross)?;
    let chosen = super::kernels::q8_kernel();
    // The portable kernel is timed only where it is the one there is.
    let timed: Vec<Q8Kernel> = [
        Q8Kernel::Avx2,
        Q8Kernel::AvxVnni,
        Q8Kernel::Avx512Vnni,
        Q8Kernel::Portable,
    ]
    .into_iter()
    .filter(|k| k.available() && (*k != Q8Kernel::Portable || chosen == Q8Kernel::Portable))
    .collect();
    // Timed in order and then in reverse (A B C C B A), each kernel's best
    // of its two kept: what runs first pays for caches and clocks settling,
    // which would otherwise favour the kernels timed later.
    let mut best = vec![(0f64, 0f64); timed.len()];
    let order: Vec<usize> = (0..timed.len()).chain((0..timed.len()).rev()).collect();
    for (pass, &i) in order.iter().enumerate() {
        let k = timed[i];
        super::kernels::use_q8_kernel(k);
        let round = 1 + pass / timed.len();
        progress(&format!(
            "8-bit weights ({}, round {round} of 2): decoder steps with guidance 3",
            k.name()
        ));
        let guided = time(&decoder, 3.0)?;
        progress(&format!(
            "8-bit weights ({}, round {round} of 2): decoder steps without guidance",
            k.name()
        ));
        let unguided = time(&decoder, 1.0)?;
        best[i] = (best[i].0.max(guided), best[i].1.max(unguided));
    }
    let kernels: Vec<(&'static str, f64, f64)> = timed
        .iter()
        .zip(&best)
        .map(|(k, (g, u))| (k.name(), *g, *u))
        .collect();
    super::kernels::use_q8_kernel(chosen);
    let (_, q8_guided, q8_unguided) = kernels
        .iter()
        .copied()
        .find(|(n, _, _)| *n == chosen.name())
        .unwrap_or(("", 0.0, 0.0));
    drop(decoder);
    let (max_diff, std, agreement) = compare(&want, &got, cfg.decoder.vocab_size);

    progress("EnCodec: decoding 10 s of codes");
    let codec = EncodecDecoder::load(&w.pp("audio_encoder"), &cfg.audio_encoder)?;
    let codes = Tensor::zeros((1, k, 500), DType::U32, &Device::Cpu)?;
    codec.decode(&codes.narrow(2, 0, 50)?)?;
    let t0 = Instant::now();
    codec.decode(&codes)?;
    let encodec = t0.elapsed().as_secs_f64();
    let peak = peak_rss_mb();
    drop(codec);
    drop(w);
    progress("loading a whole checkpoint of that size from safetensors files");
    let (load_file_mb, load_peak_mb, load_s, load_q8_s, prompt_s) = load_peak()?;
    Ok(DecoderBench {
        threads: candle_core::utils::get_num_threads(),
        frames,
        steps,
        guided_steps_per_s: guided,
        unguided_steps_per_s: unguided,
        guided_s_per_10s_audio: 503.0 / guided,
        q8_guided_steps_per_s: q8_guided,
        q8_unguided_steps_per_s: q8_unguided,
        q8_kernel: chosen.name(),
        q8_kernels: kernels,
        q8_max_logit_diff: max_diff,
        logit_std: std,
        q8_greedy_agreement: agreement,
        encodec_s_per_10s_audio: encodec,
        peak_rss_mb: peak,
        load_file_mb,
        load_peak_mb,
        load_s,
        load_q8_s,
        prompt_s,
    })
}

/// Logits of a conditioned sequence of 64 fixed pseudo-random steps, decoded one
/// step at a time as generation runs (through the step kernels).
fn logits_over(decoder: &Decoder, cross: &super::decoder::CrossKv) -> Result<Vec<f32>> {
    let k = decoder.config().num_codebooks;
    let vocab = decoder.config().vocab_size as u64;
    let mut cache = decoder.new_cache();
    let mut all = Vec::new();
    for step in 0..64u64 {
        let tokens: Vec<u32> = (0..k as u64)
            .map(|c| ((step * 7 + c).wrapping_mul(2_654_435_761) % vocab) as u32)
            .collect();
        let mut seqs = [SeqInput {
            tokens: &tokens,
            cross: Some(cross),
            cache: &mut cache,
        }];
        all.extend(decoder.forward(&mut seqs, &[])?);
    }
    Ok(all)
}

/// facebook/musicgen-medium's decoder (48 layers of width 1536).
pub const MUSICGEN_MEDIUM_DECODER: &str = r#"{"vocab_size": 2048, "max_position_embeddings": 2048,
    "num_hidden_layers": 48, "ffn_dim": 6144, "num_attention_heads": 24,
    "hidden_size": 1536, "num_codebooks": 4, "activation_function": "gelu"}"#;

/// The decoder on a device against the CPU decoder, one model shape and type.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceRun {
    pub model: String,
    pub dtype: String,
    /// Largest difference of the device's logits from the CPU decoder's (f32)
    /// over 64 steps of one conditioned sequence, and the spread of the CPU's.
    pub max_logit_diff: f64,
    pub logit_std: f64,
    /// Share of positions and codebooks where both pick the same most likely token.
    pub greedy_agreement: f64,
    pub guided_steps_per_s: f64,
    pub unguided_steps_per_s: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct DeviceBench {
    pub device: String,
    pub note: String,
    pub frames: usize,
    pub runs: Vec<DeviceRun>,
    /// musicgen-small (random weights, f32) with guidance 3 through the GPU
    /// helper, as the engine of a CPU build drives it: steps per second.
    pub through_helper_guided_steps_per_s: Option<f64>,
    /// The same window with its audio decoded in the helper too (a
    /// hand-over once 1.6 s have settled, then every 2 s, and the rest at
    /// the end), as the engines run it: steps per second, and seconds of
    /// music decoded per second of that run.
    pub through_helper_decoding_steps_per_s: Option<f64>,
    pub through_helper_decoded_x_real_time: Option<f64>,
}

/// What [`through_helper`] measures.
pub struct ThroughHelper {
    /// Guided steps per second, frames only.
    pub steps_per_s: f64,
    /// Guided steps per second with the audio decoded in the helper.
    pub decoding_steps_per_s: f64,
    /// Seconds of music decoded there per second of that run.
    pub decoded_x_real_time: f64,
}

/// Writes a random musicgen-small checkpoint, starts the GPU helper `exe`
/// on `device`, has it load the checkpoint and times `frames` frames with
/// guidance 3 through the pipe, then again with their audio decoded there.
pub fn through_helper(
    exe: &std::path::Path,
    device: &str,
    frames: usize,
    progress: &mut dyn FnMut(&str),
) -> Result<ThroughHelper> {
    progress("writing a random musicgen-small checkpoint for the helper");
    let dir = tempfile::tempdir().map_err(|e| crate::Error::io(std::env::temp_dir(), e))?;
    write_random_checkpoint(dir.path())?;
    progress(&format!("the GPU helper on {device}: loading"));
    let h = super::helper::Helper::start(exe, device)?;
    h.load(dir.path(), DType::F32)?;
    let cfg = musicgen_small().decoder;
    let states = Tensor::randn(0f32, 1.0, (1, 12, cfg.hidden_size), &Device::Cpu)?;
    let mask = Tensor::ones((1, 12), DType::U32, &Device::Cpu)?;
    let s = Sampling::default();
    h.generate(Some((&states, &mask)), &[], &[], 4, &s, &mut |_, _| true)?;
    progress(&format!(
        "the GPU helper on {device}: decoder steps with guidance 3"
    ));
    let t0 = Instant::now();
    h.generate(Some((&states, &mask)), &[], &[], frames, &s, &mut |_, _| {
        true
    })?;
    let steps = (frames + cfg.num_codebooks - 1) as f64;
    let steps_per_s = steps / t0.elapsed().as_secs_f64();

    progress(&format!(
        "the GPU helper on {device}: loading the codec, then the same window decoded there"
    ));
    h.load_codec(dir.path())?;
    let codec = musicgen_small().audio_encoder;
    let rate = codec.frame_rate();
    let plan = super::helper::AudioPlan {
        piece: 0,
        codec: dir.path().to_path_buf(),
        before: 0,
        total: frames,
        first_settled: rate * 8 / 5,
        every: rate * 2,
    };
    let mut samples = 0usize;
    let t0 = Instant::now();
    let (_, last) = h.generate_piece(
        dir.path(),
        DType::F32,
        Some((&states, &mask)),
        &[],
        &[],
        frames,
        &s,
        Some(plan),
        &mut |_, _, audio| {
            samples += audio.map_or(0, |a| a.len());
            true
        },
    )?;
    let took = t0.elapsed().as_secs_f64();
    samples += last.map_or(0, |a| a.len());
    Ok(ThroughHelper {
        steps_per_s,
        decoding_steps_per_s: steps / took,
        decoded_x_real_time: samples as f64 / f64::from(codec.sampling_rate) / took,
    })
}

/// Times the decoder on `device` (sampled generation of `frames` frames,
/// guided and not) for musicgen-small's shape and, with `medium`, musicgen-
/// medium's, in each of `dtypes`, and compares its logits with the CPU
/// decoder's on the same random weights; `checkpoint` adds a MusicGen folder
/// (the test fixtures' tiny one, a real model) with its own weights.
pub fn device(
    choice: super::device::DeviceChoice,
    frames: usize,
    dtypes: &[DType],
    medium: bool,
    checkpoint: Option<&std::path::Path>,
    progress: &mut dyn FnMut(&str),
) -> Result<DeviceBench> {
    use super::generate::generate_on;
    use super::models::musicgen::MusicgenDecoder;
    let chosen = super::device::choose(choice)?;
    let device = match &chosen.backend {
        super::device::Backend::Candle(d) => d.clone(),
        super::device::Backend::Helper(h) => {
            return Err(crate::Error::InvalidSetting(format!(
                "this build reaches {} through the GPU helper; run the benchmark in the \
                 helper itself: `{} bench-device --device {}`",
                h.device(),
                h.exe().display(),
                h.device()
            )));
        }
    };
    // (name, decoder shape, its checkpoint folder or random weights)
    let mut shapes = Vec::new();
    if let Some(dir) = checkpoint {
        let cfg = MusicgenConfig::load(&dir.join("config.json"))?.decoder;
        shapes.push((dir.display().to_string(), cfg, Some(dir)));
    }
    shapes.push(("musicgen-small".to_string(), musicgen_small().decoder, None));
    if medium {
        let cfg = serde_json::from_str(MUSICGEN_MEDIUM_DECODER)
            .expect("PANIC: the built-in config parses");
        shapes.push(("musicgen-medium".to_string(), cfg, None));
    }
    let mut runs = Vec::new();
    for (model, cfg, dir) in shapes {
        progress(&format!("building the {model} decoder"));
        let w = match dir {
            Some(d) => Weights::open_dir(d)?,
            None => Weights::random(7),
        };
        let cpu = Decoder::load(&w.pp("decoder"), &cfg)?;
        let candle = MusicgenDecoder::load(&w.pp("decoder"), &cfg)?;
        drop(w);
        let states = Tensor::randn(0f32, 1.0, (1, 12, cfg.hidden_size), &Device::Cpu)?;
        let mask = Tensor::ones((1, 12), DType::U32, &Device::Cpu)?;
        let cross = cpu
            .cross_kv(&states, Some(&mask))?
            .pop()
            .expect("PANIC: one sequence of states gives one");
        let want = logits_over(&cpu, &cross)?;
        drop(cpu);
        for &dtype in dtypes {
            progress(&format!("{model}, {dtype:?} on {}: logits", chosen.name));
            let dec = candle.to_device(&device, dtype)?;
            let got = session_logits(&dec, &states, &mask)?;
            let (max_logit_diff, logit_std, greedy_agreement) =
                compare(&want, &got, cfg.vocab_size);
            let k = cfg.num_codebooks;
            let steps = frames + k - 1;
            let time = |guidance: f64| -> Result<f64> {
                let s = Sampling {
                    guidance,
                    ..Sampling::default()
                };
                let t0 = Instant::now();
                generate_on(
                    &dec,
                    Some((&states, &mask)),
                    &[],
                    &[],
                    frames,
                    &s,
                    &mut |_, _| true,
                )?;
                Ok(steps as f64 / t0.elapsed().as_secs_f64())
            };
            // Once briefly first: kernels load and memory pools fill untimed.
            generate_on(
                &dec,
                Some((&states, &mask)),
                &[],
                &[],
                4,
                &Sampling::default(),
                &mut |_, _| true,
            )?;
            progress(&format!(
                "{model}, {dtype:?}: decoder steps with guidance 3"
            ));
            let guided = time(3.0)?;
            progress(&format!(
                "{model}, {dtype:?}: decoder steps without guidance"
            ));
            let unguided = time(1.0)?;
            runs.push(DeviceRun {
                model: model.clone(),
                dtype: format!("{dtype:?}").to_lowercase(),
                max_logit_diff,
                logit_std,
                greedy_agreement,
                guided_steps_per_s: guided,
                unguided_steps_per_s: unguided,
            });
        }
    }
    Ok(DeviceBench {
        device: chosen.name,
        note: chosen.note,
        frames,
        runs,
        through_helper_guided_steps_per_s: None,
        through_helper_decoding_steps_per_s: None,
        through_helper_decoded_x_real_time: None,
    })
}

/// [`logits_over`]'s 64 steps through a device session.
fn session_logits(
    dec: &super::models::musicgen::MusicgenDecoder,
    states: &Tensor,
    mask: &Tensor,
) -> Result<Vec<f32>> {
    let k = dec.config().num_codebooks;
    let vocab = dec.config().vocab_size as u64;
    let mut session = dec.session(Some((states, mask)), 1, 64)?;
    let mut all = Vec::new();
    for step in 0..64u64 {
        let tokens: Vec<u32> = (0..k as u64)
            .map(|c| ((step * 7 + c).wrapping_mul(2_654_435_761) % vocab) as u32)
            .collect();
        all.extend(session.step(&tokens, 1, &[])?);
    }
    Ok(all)
}

/// `(largest difference, spread of want, share of equal argmaxes)`.
fn compare(want: &[f32], got: &[f32], vocab: usize) -> (f64, f64, f64) {
    let max_diff = want
        .iter()
        .zip(got)
        .map(|(a, b)| f64::from((a - b).abs()))
        .fold(0.0, f64::max);
    let mean = want.iter().map(|&v| f64::from(v)).sum::<f64>() / want.len().max(1) as f64;
    let std = (want
        .iter()
        .map(|&v| (f64::from(v) - mean).powi(2))
        .sum::<f64>()
        / want.len().max(1) as f64)
        .sqrt();
    let rows = (want.len() / vocab).max(1);
    let agree = want
        .chunks_exact(vocab)
        .zip(got.chunks_exact(vocab))
        .filter(|(a, b)| argmax(a) == argmax(b))
        .count();
    (max_diff, std, agree as f64 / rows as f64)
}

/// EnCodec's decoder on a device against the CPU's kernels, at
/// musicgen-small's codec shape with random weights.
#[derive(Debug, Clone, Serialize)]
pub struct CodecDeviceBench {
    pub device: String,
    pub frames: usize,
    /// Seconds to decode the frames: the CPU's kernels, then on the device
    /// (after a first, untimed decode there).
    pub cpu_s: f64,
    pub device_s: f64,
    /// Seconds of audio per second of work on the device.
    pub device_x_real_time: f64,
    /// The largest difference of a sample, and the largest sample.
    pub max_diff: f64,
    pub peak: f64,
}

/// Decodes `frames` code frames (50 a second) with the CPU's kernels and on
/// `device`, timing both and comparing the audio.
pub fn codec_device(
    device: &Device,
    frames: usize,
    progress: &mut dyn FnMut(&str),
) -> Result<CodecDeviceBench> {
    let cfg = musicgen_small();
    let w = Weights::random(0);
    let cpu = EncodecDecoder::load(&w.pp("audio_encoder"), &cfg.audio_encoder)?;
    let on = cpu.to_device(device)?;
    let k = cfg.decoder.num_codebooks;
    let frames = frames.max(1);
    let ids: Vec<u32> = (0..k * frames)
        .map(|i| ((i as u64 * 2_654_435_761) % cfg.audio_encoder.codebook_size as u64) as u32)
        .collect();
    let codes = Tensor::from_vec(ids, (1, k, frames), &Device::Cpu)?;
    let audio = |t: Tensor| -> Result<Vec<f32>> { Ok(t.flatten_all()?.to_vec1()?) };
    progress("EnCodec on the CPU");
    let t0 = Instant::now();
    let want = audio(cpu.decode(&codes)?)?;
    let cpu_s = t0.elapsed().as_secs_f64();
    progress("EnCodec on the device");
    on.decode(&codes.narrow(2, 0, frames.min(50))?)?;
    let t0 = Instant::now();
    let got = audio(on.decode(&codes)?)?;
    let device_s = t0.elapsed().as_secs_f64();
    let max_diff = want
        .iter()
        .zip(&got)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    let peak = want.iter().fold(0f32, |m, a| m.max(a.abs()));
    let seconds = frames as f64 / cfg.audio_encoder.frame_rate() as f64;
    Ok(CodecDeviceBench {
        device: super::device::candle_device_name(device),
        frames,
        cpu_s,
        device_s,
        device_x_real_time: seconds / device_s.max(1e-9),
        max_diff: if got.len() == want.len() {
            f64::from(max_diff)
        } else {
            f64::INFINITY
        },
        peak: f64::from(peak),
    })
}

#[cfg(test)]
mod codec_tests {
    use super::*;

    /// The codec bench's arithmetic on the CPU device: candle's ops there
    /// against the kernels, musicgen-small's codec.
    #[test]
    fn the_codec_bench_compares_the_device_with_the_cpu() {
        let r = codec_device(&Device::Cpu, 12, &mut |_| {}).unwrap();
        assert_eq!((r.device.as_str(), r.frames), ("cpu", 12));
        assert!(r.peak > 0.0, "{r:?}");
        assert!(r.max_diff <= 1e-4 * r.peak.max(1.0), "{r:?}");
        assert!(r.cpu_s > 0.0 && r.device_s > 0.0);
    }
}
