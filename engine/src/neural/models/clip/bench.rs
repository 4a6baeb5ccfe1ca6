//! CLIP's speed on this machine: the vision tower at clip-vit-base-patch32's
//! shape with random weights (no checkpoint can be assumed), fed the frames
//! of a synthetic video, as the engines feed it: at 1 fps for the global
//! features, at 25 fps for the rhythm curve. Reported as multiples of real
//! time (seconds of video per second of work).

use std::sync::atomic::AtomicBool;
use std::time::Instant;

use candle_core::Device;
use serde::Serialize;

use super::{
    ClipConfig, ClipVision, PreprocessConfig, RgbImage, VisionPrecision, preprocess::preprocess,
};
use crate::analysis::clip_features::sample_batches;
use crate::error::Result;
use crate::neural::weights::Weights;

/// openai/clip-vit-base-patch32's `config.json`, as far as the vision tower
/// reads it.
const BASE_PATCH32: &str = r#"{
  "model_type": "clip", "projection_dim": 512, "logit_scale_init_value": 2.6592,
  "text_config": {"hidden_size": 512, "intermediate_size": 2048, "num_hidden_layers": 12,
    "num_attention_heads": 8, "max_position_embeddings": 77, "vocab_size": 49408,
    "hidden_act": "quick_gelu", "eos_token_id": 49407},
  "vision_config": {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
    "num_attention_heads": 12, "image_size": 224, "patch_size": 32, "hidden_act": "quick_gelu"}
}"#;

#[derive(Debug, Clone, Serialize)]
pub struct ClipBench {
    pub model: &'static str,
    pub threads: usize,
    pub video_seconds: f64,
    /// Frames encoded at 1 fps, and seconds of video per second of work.
    pub global_frames: usize,
    pub global_x_real_time: f64,
    /// Frames encoded at 25 fps, and seconds of video per second of work.
    pub local_frames: usize,
    pub local_x_real_time: f64,
    /// The vision tower alone, milliseconds per frame in batches of 16.
    pub ms_per_frame: f64,
    /// The same with the encoder's linear layers in 8 bits, where the CPU has
    /// AVX-512 VNNI or AVX-VNNI ([`VisionPrecision::Int8`]).
    pub int8: Option<ClipBenchInt8>,
    /// Loading a checkpoint of this shape (both towers, from the page cache),
    /// the fastest of three: in f32; with the vision tower quantized to 8
    /// bits straight from the file as the plugin loads it (where the CPU
    /// can); and loaded in f32 first, then quantized, for comparison.
    pub load_s: f64,
    pub load_int8_s: f64,
    pub load_f32_then_int8_s: f64,
    /// The built-in vocabulary's tag embeddings: the text tower over every
    /// tag's picture descriptions (here with a word-level tokenizer, one
    /// token per word), as a zero-shot piece's analysis makes them: with the
    /// text tower in f32, and in 8 bits as the plugin runs it (where the CPU
    /// can).
    pub tag_embeddings_s: f64,
    pub tag_embeddings_int8_s: Option<f64>,
    /// The zero-shot engine's reading of a video.
    pub reading: ReadingBench,
}

/// The zero-shot engine's reading of a video: the weight-free analysis at
/// 25 fps and CLIP's global features at 1 fps (the 8-bit tower where the
/// CPU can), as two passes that each decode the video, and from one decode
/// ([`crate::analysis::clip_features::analysis_and_global`]); the best of
/// three, the two ways alternated.
#[derive(Debug, Clone, Serialize)]
pub struct ReadingBench {
    pub video: String,
    pub apart_s: f64,
    pub one_decode_s: f64,
    /// `apart_s / one_decode_s`.
    pub speedup: f64,
}

/// The 8-bit encoder's figures, and how far its embeddings are from f32's.
#[derive(Debug, Clone, Serialize)]
pub struct ClipBenchInt8 {
    /// The integer kernel that ran: `avx512-vnni` or `avx-vnni`.
    pub kernel: &'static str,
    pub global_x_real_time: f64,
    pub local_x_real_time: f64,
    pub ms_per_frame: f64,
    /// Cosine similarity of each 1 fps frame's pooled and projected embeddings to
    /// f32's: the smallest over the frames.
    pub pooled_cosine_min: f64,
    pub projected_cosine_min: f64,
}

/// Times CLIP's passes over `seconds` of a synthetic 640×360 video; the
/// zero-shot reading over `reading_video` (that video when `None`).
pub fn run(
    seconds: f64,
    reading_video: Option<&std::path::Path>,
    progress: &mut dyn FnMut(&str),
) -> Result<ClipBench> {
    let cfg = ClipConfig::parse(BASE_PATCH32).map_err(crate::Error::InvalidSetting)?;
    let vision = ClipVision::load(&Weights::random(11), &cfg)?;
    let pre = PreprocessConfig::for_image_size(cfg.vision_config.image_size);
    let dir = tempfile::tempdir().map_err(|e| crate::Error::io(std::env::temp_dir(), e))?;
    let video = dir.path().join("bench.mp4");
    progress("writing a synthetic video");
    crate::video::synth::write_video(
        &video,
        &crate::video::synth::SynthSpec::new(640, 360, 25, seconds, vec![seconds / 3.0]),
    )?;
    let cancel = AtomicBool::new(false);
    // One pass at `rate` with the tower as it is set; returns frames, wall seconds,
    // the tower's seconds, and the pooled and projected rows when `keep`.
    let pass = |vision: &ClipVision, rate: f64, keep: bool| -> Result<Pass> {
        let mut p = Pass::default();
        let t0 = Instant::now();
        sample_batches(
            &video,
            pre.shortest_edge,
            rate,
            None,
            &cancel,
            &mut |_| {},
            |imgs: &[RgbImage]| {
                let t = Instant::now();
                let pixels = preprocess(&pre, imgs, &Device::Cpu)?;
                let out = vision.forward(&pixels)?;
                // Read back as the engines do, so nothing stays lazily unevaluated.
                let _ = out.patch_tokens.flatten_all()?.to_vec1::<f32>()?;
                p.model_s += t.elapsed().as_secs_f64();
                p.frames += imgs.len();
                if keep {
                    p.pooled.extend(out.pooled.to_vec2::<f32>()?);
                    p.projected.extend(out.projected.to_vec2::<f32>()?);
                }
                Ok(())
            },
        )?;
        p.wall_s = t0.elapsed().as_secs_f64();
        Ok(p)
    };
    progress("global features at 1 fps");
    let g = pass(&vision, crate::analysis::GLOBAL_FPS, true)?;
    progress("patch tokens at 25 fps");
    let l = pass(&vision, crate::analysis::LOCAL_FPS, false)?;
    let mut vision = vision;
    let int8 = if vision.set_precision(VisionPrecision::Int8)? == VisionPrecision::Int8 {
        progress("8-bit encoder: global features at 1 fps");
        let g8 = pass(&vision, crate::analysis::GLOBAL_FPS, true)?;
        progress("8-bit encoder: patch tokens at 25 fps");
        let l8 = pass(&vision, crate::analysis::LOCAL_FPS, false)?;
        Some(ClipBenchInt8 {
            kernel: super::int8::kernel_name(),
            global_x_real_time: seconds / g8.wall_s,
            local_x_real_time: seconds / l8.wall_s,
            ms_per_frame: ms_per_frame(&g8, &l8),
            pooled_cosine_min: cosine_min(&g.pooled, &g8.pooled),
            projected_cosine_min: cosine_min(&g.projected, &g8.projected),
        })
    } else {
        None
    };
    progress("loading a checkpoint of this shape");
    let ckpt = dir.path().join("clip");
    std::fs::create_dir_all(&ckpt).map_err(|e| crate::Error::io(&ckpt, e))?;
    write_random_checkpoint(&ckpt)?;
    let (mut load_s, mut load_int8_s, mut load_f32_then_int8_s) =
        (f64::INFINITY, f64::INFINITY, f64::INFINITY);
    for _ in 0..3 {
        let t = Instant::now();
        drop(super::Clip::load(&ckpt)?);
        load_s = load_s.min(t.elapsed().as_secs_f64());
        let t = Instant::now();
        drop(super::Clip::load_as(&ckpt, VisionPrecision::Int8)?);
        load_int8_s = load_int8_s.min(t.elapsed().as_secs_f64());
        let t = Instant::now();
        let mut clip = super::Clip::load(&ckpt)?;
        clip.vision_mut()?.set_precision(VisionPrecision::Int8)?;
        load_f32_then_int8_s = load_f32_then_int8_s.min(t.elapsed().as_secs_f64());
    }
    progress("the built-in vocabulary's tag embeddings");
    let clip = super::Clip::load(&ckpt)?;
    let vocab = crate::analysis::tags::Vocabulary::builtin();
    let t = Instant::now();
    crate::analysis::clip_features::tag_embeddings(&clip, &vocab)?;
    let tag_embeddings_s = t.elapsed().as_secs_f64();
    let clip = super::Clip::load_as(&ckpt, VisionPrecision::Int8)?;
    let tag_embeddings_int8_s = (clip.text.precision() == VisionPrecision::Int8)
        .then(|| {
            let t = Instant::now();
            crate::analysis::clip_features::tag_embeddings(&clip, &vocab)
                .map(|_| t.elapsed().as_secs_f64())
        })
        .transpose()?;
    let reading = {
        use crate::analysis::clip_features::{analysis_and_global, global_features};
        use crate::analysis::{StatsEncoder, analyze_until};
        let v = reading_video.unwrap_or(&video);
        let info = crate::video::probe(v)?;
        progress("the zero-shot reading of the video: two passes, then one decode");
        let (mut apart_s, mut one_decode_s) = (f64::INFINITY, f64::INFINITY);
        for _ in 0..3 {
            let t = Instant::now();
            analyze_until(v, &mut StatsEncoder::default(), None, &cancel, &mut |_| {})?;
            global_features(v, &clip, None, &cancel, &mut |_| {})?;
            apart_s = apart_s.min(t.elapsed().as_secs_f64());
            let t = Instant::now();
            analysis_and_global(
                v,
                &mut StatsEncoder::default(),
                &clip,
                None,
                &cancel,
                &mut |_| {},
            )?;
            one_decode_s = one_decode_s.min(t.elapsed().as_secs_f64());
        }
        ReadingBench {
            video: format!(
                "{}x{} {:.2} fps {} {:.1} s",
                info.width, info.height, info.frame_rate, info.codec, info.duration
            ),
            apart_s,
            one_decode_s,
            speedup: apart_s / one_decode_s,
        }
    };
    Ok(ClipBench {
        model: "clip-vit-base-patch32 shape, random weights",
        threads: rayon::current_num_threads(),
        video_seconds: seconds,
        global_frames: g.frames,
        global_x_real_time: seconds / g.wall_s,
        local_frames: l.frames,
        local_x_real_time: seconds / l.wall_s,
        ms_per_frame: ms_per_frame(&g, &l),
        int8,
        load_s,
        load_int8_s,
        load_f32_then_int8_s,
        tag_embeddings_s,
        tag_embeddings_int8_s,
        reading,
    })
}

#[derive(Default)]
struct Pass {
    frames: usize,
    wall_s: f64,
    model_s: f64,
    pooled: Vec<Vec<f32>>,
    projected: Vec<Vec<f32>>,
}

fn ms_per_frame(a: &Pass, b: &Pass) -> f64 {
    1000.0 * (a.model_s + b.model_s) / (a.frames + b.frames).max(1) as f64
}

/// The smallest cosine similarity of matching rows (1 when there are none).
fn cosine_min(a: &[Vec<f32>], b: &[Vec<f32>]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            let dot: f64 = x.iter().zip(y).map(|(p, q)| f64::from(p * q)).sum();
            let n = |v: &[f32]| v.iter().map(|p| f64::from(p * p)).sum::<f64>().sqrt();
            dot / (n(x) * n(y)).max(f64::MIN_POSITIVE)
        })
        .fold(1.0, f64::min)
}

/// Writes a CLIP folder of clip-vit-base-patch32's layout with random weights
/// (`model.safetensors`, `config.json`, a word-level `tokenizer.json` that
/// brackets every prompt with the start and end tokens), for benchmarks of
/// the engines at their real size.
pub fn write_random_checkpoint(dir: &std::path::Path) -> Result<u64> {
    use tokenizers::processors::template::TemplateProcessing;
    let io = |p: &std::path::Path, e| crate::Error::io(p, e);
    let text = BASE_PATCH32.replace(
        "\"eos_token_id\": 49407",
        "\"eos_token_id\": 1, \"bos_token_id\": 0, \"pad_token_id\": 1",
    );
    let cfg = ClipConfig::parse(&text).map_err(crate::Error::InvalidSetting)?;
    let w = Weights::random(0);
    ClipVision::load(&w, &cfg)?;
    super::ClipText::load(&w, &cfg)?;
    let _ = w.get(&[], "logit_scale")?;
    let mut tensors = std::collections::HashMap::new();
    for (name, shape) in w.asked() {
        let t = if shape.is_empty() {
            candle_core::Tensor::new(2.6592f32, &Device::Cpu)?
        } else {
            candle_core::Tensor::randn(0f32, 0.02, shape.as_slice(), &Device::Cpu)?
        };
        tensors.insert(name, t);
    }
    let path = dir.join("model.safetensors");
    candle_core::safetensors::save(&tensors, &path)?;
    let bytes = std::fs::metadata(&path).map_err(|e| io(&path, e))?.len();
    let config = dir.join("config.json");
    std::fs::write(&config, text).map_err(|e| io(&config, e))?;
    let bad = |e: tokenizers::Error| crate::Error::InvalidSetting(format!("bench tokenizer: {e}"));
    let mut tokenizer = crate::neural::bench::word_tokenizer(&[
        ("<|startoftext|>", 0),
        ("<|endoftext|>", 1),
        ("<unk>", 2),
    ])?;
    tokenizer.with_pre_tokenizer(Some(tokenizers::pre_tokenizers::whitespace::Whitespace {}));
    tokenizer.with_post_processor(Some(
        TemplateProcessing::builder()
            .try_single("<|startoftext|> $A <|endoftext|>")
            .map_err(|e| crate::Error::InvalidSetting(format!("bench tokenizer: {e}")))?
            .special_tokens(vec![("<|startoftext|>", 0), ("<|endoftext|>", 1)])
            .build()
            .map_err(|e| crate::Error::InvalidSetting(format!("bench tokenizer: {e}")))?,
    ));
    tokenizer
        .save(dir.join("tokenizer.json"), false)
        .map_err(bad)?;
    Ok(bytes)
}

/// CLIP's vision tower on a device against the CPU's f32 tower, at
/// clip-vit-base-patch32's shape with random weights: in each type, how
/// far its embeddings are from the CPU's and how many frames a second it
/// reads in the engines' batches of 16 (the VidMusician engine reads 25 a
/// second of video).
#[derive(Debug, Clone, Serialize)]
pub struct ClipDeviceBench {
    pub model: &'static str,
    pub device: String,
    /// The CPU's f32 tower on this machine, for scale.
    pub cpu_frames_per_s: f64,
    pub rows: Vec<ClipDeviceRow>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ClipDeviceRow {
    pub dtype: &'static str,
    /// The smallest cosine of a frame's pooled and projected embeddings to
    /// the CPU's f32 ones.
    pub pooled_cosine_min: f64,
    pub projected_cosine_min: f64,
    /// The largest difference of a patch token value, over the largest
    /// value: what the rhythm curve reads.
    pub patch_relative_max_diff: f64,
    pub frames_per_s: f64,
    /// Seconds of video per second of work at 25 fps (the rhythm curve's
    /// pass), the tower alone.
    pub local_x_real_time: f64,
}

/// Runs [`ClipDeviceBench`] on `device` in each of `dtypes`, timing
/// `batches` batches of `batch` frames (the engines' 16) after one to warm
/// up; the CPU's tower, one batch.
pub fn device(
    device: &Device,
    dtypes: &[candle_core::DType],
    batch: usize,
    batches: usize,
    progress: &mut dyn FnMut(&str),
) -> Result<ClipDeviceBench> {
    use rand::{Rng, SeedableRng};
    let cfg = ClipConfig::parse(BASE_PATCH32).map_err(crate::Error::InvalidSetting)?;
    let pre = PreprocessConfig::for_image_size(cfg.vision_config.image_size);
    let side = pre.shortest_edge;
    // Frames of noise: the tower's speed does not depend on what they show,
    // and noise keeps every frame's tokens apart.
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
    let bytes: Vec<Vec<u8>> = (0..batch.max(1))
        .map(|_| (0..side * side * 3).map(|_| rng.random()).collect())
        .collect();
    let images = bytes
        .iter()
        .map(|b| RgbImage::new(side, side, b))
        .collect::<Result<Vec<_>>>()?;
    let time = |vision: &ClipVision, on: &Device, n: usize| -> Result<(super::Encoded, f64)> {
        let first = super::encode_rows(vision, &pre, on, &images, true)?;
        let t = Instant::now();
        for _ in 0..n {
            // Read back as the engines do, so the device has finished.
            super::encode_rows(vision, &pre, on, &images, true)?;
        }
        let fps = (n * images.len()) as f64 / t.elapsed().as_secs_f64().max(1e-9);
        Ok((first, fps))
    };
    progress("the CPU's f32 tower");
    let cpu = ClipVision::load(&Weights::random(11), &cfg)?;
    let (want, cpu_fps) = time(&cpu, &Device::Cpu, 1)?;
    let mut rows = Vec::new();
    for &dtype in dtypes {
        let name = crate::neural::device::dtype_name(dtype);
        progress(&format!("the tower on the device in {name}"));
        let mut on = ClipVision::load(&Weights::random(11).on(device), &cfg)?;
        if dtype != candle_core::DType::F32 {
            on = on.to_dtype(dtype)?;
        }
        let (got, fps) = time(&on, device, batches.max(1))?;
        let scale = want
            .patches
            .iter()
            .flatten()
            .fold(0f32, |m, v| m.max(v.abs()))
            .max(f32::MIN_POSITIVE);
        let diff = want
            .patches
            .iter()
            .flatten()
            .zip(got.patches.iter().flatten())
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        rows.push(ClipDeviceRow {
            dtype: name,
            pooled_cosine_min: cosine_min(&want.pooled, &got.pooled),
            projected_cosine_min: cosine_min(&want.projected, &got.projected),
            patch_relative_max_diff: f64::from(diff / scale),
            frames_per_s: fps,
            local_x_real_time: fps / crate::analysis::LOCAL_FPS,
        });
    }
    Ok(ClipDeviceBench {
        model: "clip-vit-base-patch32 (random weights)",
        device: crate::neural::device::candle_device_name(device),
        cpu_frames_per_s: cpu_fps,
        rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The device bench's arithmetic, run on the CPU: f32 agrees with itself
    /// exactly, f16 within its rounding.
    #[test]
    fn the_device_bench_compares_each_type_with_the_cpu() {
        let dtypes = [candle_core::DType::F32, candle_core::DType::F16];
        let r = device(&Device::Cpu, &dtypes, 1, 1, &mut |_| {}).unwrap();
        assert_eq!(r.device, "cpu");
        assert_eq!(r.rows.len(), 2);
        let (f32_row, f16_row) = (&r.rows[0], &r.rows[1]);
        assert_eq!((f32_row.dtype, f16_row.dtype), ("f32", "f16"));
        assert!(f32_row.pooled_cosine_min > 0.999_999, "{f32_row:?}");
        assert_eq!(f32_row.patch_relative_max_diff, 0.0, "{f32_row:?}");
        assert!(f16_row.pooled_cosine_min > 0.99, "{f16_row:?}");
        assert!(f16_row.patch_relative_max_diff > 0.0, "{f16_row:?}");
        assert!(f16_row.patch_relative_max_diff < 0.05, "{f16_row:?}");
        assert!(r.cpu_frames_per_s > 0.0 && f16_row.frames_per_s > 0.0);
    }
}
