//! A whole MusicGen checkpoint: tokenizer, T5 text encoder, the projection to the
//! decoder's width, the decoder, and the EnCodec decoder; text in, 32 kHz audio out.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{Device, Tensor};

use super::config::{GenerationConfig, MusicgenConfig};
use super::decoder::{CrossKv, Decoder, Precision};
use super::encodec::{EncodecDecoder, SpanDecoder};
use super::generate::{Frames, Progress, Sampling, generate_on, generate_with};
use super::models::musicgen::MusicgenDecoder;
use super::nn::Linear;
use super::t5::T5Encoder;
use super::weights::Weights;
use crate::{Error, Result};

/// Longest prompt, in tokens, given to the text encoder.
pub const MAX_PROMPT_TOKENS: usize = 512;

/// Seconds of music one decoder window covers (MusicGen was trained on 30 s).
pub const WINDOW_SECONDS: f64 = 30.0;
/// Seconds of the previous window a continuation window reads before it goes on.
pub const CONTEXT_SECONDS: f64 = 10.0;
/// How often a window's finished frames are handed over while it is made,
/// seconds of music: the first sound comes a few seconds into generation
/// rather than after a whole window, and each hand-over costs a decode of
/// the codec's context around it.
const PUBLISH_SECONDS: f64 = 2.0;
/// The first hand-over of a piece comes once this much of its audio has
/// settled, seconds: the mastering's gain window (see `audio::StreamMaster`,
/// 1.5 s) and a little for the resampler's delay, so that the first
/// hand-over is heard at once.
const FIRST_PUBLISH_SECONDS: f64 = 1.6;

pub struct MusicGen {
    dir: PathBuf,
    cfg: MusicgenConfig,
    generation: GenerationConfig,
    tokenizer: tokenizers::Tokenizer,
    text: T5Encoder,
    /// Present when the text encoder is narrower or wider than the decoder.
    enc_to_dec: Option<Linear>,
    /// The CPU's generation decoder; `None` in a model loaded without it
    /// ([`MusicGen::load_without_decoder`]).
    decoder: Option<Decoder>,
    /// The arithmetic asked of the CPU decoder (its own once it holds one).
    precision: Precision,
    /// The decoder on another device (a GPU) when generation runs there; the
    /// CPU decoder stays for the adapter's tools and the benchmarks.
    on_device: Option<OnDevice>,
    codec: EncodecDecoder,
    /// The codec on the decoder's device when that is a GPU in this
    /// process: the piece's audio is decoded there.
    codec_on_device: Option<EncodecDecoder>,
    /// [`MusicGen::weights_hash`], computed on first use.
    weights_hash: std::sync::OnceLock<String>,
}

/// Where a generation stands, for progress bars.
#[derive(Debug, Clone, Copy)]
pub struct GenerationProgress {
    /// Code frames finished so far (of all windows).
    pub frames_done: usize,
    pub frames_total: usize,
}

impl MusicGen {
    /// Loads the checkpoint in `dir` (`config.json`, `model.safetensors` or shards,
    /// `tokenizer.json`, optionally `generation_config.json`).
    pub fn load(dir: &Path) -> Result<Self> {
        Self::load_as(dir, Precision::F32)
    }

    /// [`MusicGen::load`] with the decoder's weights converted to `precision` as they
    /// are read (see [`Decoder::load_as`]): an 8-bit model never holds its decoder in
    /// f32 whole.
    pub fn load_as(dir: &Path, precision: Precision) -> Result<Self> {
        Self::load_parts(dir, precision, true)
    }

    /// [`MusicGen::load_as`] without the CPU's generation decoder (most of
    /// the weights: 1.4 GB of musicgen-small's in f32, 13 GB of -large's):
    /// for a model whose decoder runs on a device, which holds its own copy
    /// ([`MusicGen::use_device`] next), and for training, whose steps run on
    /// a decoder of their own. Generating with it on the CPU is an error in
    /// words until [`MusicGen::use_device`] gives it a decoder.
    pub fn load_without_decoder(dir: &Path, precision: Precision) -> Result<Self> {
        Self::load_parts(dir, precision, false)
    }

    fn load_parts(dir: &Path, precision: Precision, with_decoder: bool) -> Result<Self> {
        let cfg = MusicgenConfig::load(&dir.join("config.json"))?;
        let generation = GenerationConfig::load_or_default(&dir.join("generation_config.json"))?;
        let tok_path = dir.join("tokenizer.json");
        if !tok_path.is_file() {
            return Err(Error::NotFound(tok_path));
        }
        let tokenizer = tokenizers::Tokenizer::from_file(&tok_path)
            .map_err(|e| Error::model_file(&tok_path, format!("not a valid tokenizer: {e}")))?;
        let w = Weights::open_dir(dir)?;
        let (text, enc_to_dec, decoder, codec) =
            load_networks(&w, &cfg, dir, with_decoder.then_some(precision))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            cfg,
            generation,
            tokenizer,
            text,
            enc_to_dec,
            precision: decoder.as_ref().map_or(precision, Decoder::precision),
            decoder,
            on_device: None,
            codec,
            codec_on_device: None,
            weights_hash: std::sync::OnceLock::new(),
        })
    }

    /// Runs generation's decoder on `chosen` in `dtype` from now on (the
    /// weights are read again from the checkpoint and copied there, or
    /// loaded by the GPU helper); the CPU goes back to the CPU decoder,
    /// read from the checkpoint if the model was loaded without it.
    /// Nothing changes when this fails.
    pub fn use_device(
        &mut self,
        chosen: &super::device::Chosen,
        dtype: candle_core::DType,
    ) -> Result<()> {
        use super::device::Backend;
        match &chosen.backend {
            Backend::Candle(d) if d.is_cpu() => {
                if self.decoder.is_none() {
                    let w = Weights::open_dir(&self.dir)?;
                    self.decoder = Some(Decoder::load_as(
                        &w.pp("decoder"),
                        &self.cfg.decoder,
                        self.precision,
                    )?);
                }
                self.on_device = None;
                self.codec_on_device = None;
            }
            Backend::Candle(device) => {
                let w = Weights::open_dir(&self.dir)?;
                let d = MusicgenDecoder::load(&w.pp("decoder"), &self.cfg.decoder)?;
                let d = d.to_device(device, dtype)?;
                let codec = codec_on(&self.codec, device).map_err(|reason| Error::Device {
                    device: chosen.name.clone(),
                    reason,
                })?;
                self.on_device = Some(OnDevice::Candle(Box::new(d)));
                self.codec_on_device = Some(codec);
            }
            Backend::Helper(h) => {
                h.load(&self.dir, dtype)?;
                // The helper decodes the audio too where its device holds
                // the codec and decodes as the CPU does; otherwise the
                // codec stays here and decodes each stretch of frames as
                // the helper hands it over.
                let decodes = h.load_codec(&self.dir).is_ok();
                self.on_device = Some(OnDevice::Helper {
                    helper: h.clone(),
                    dtype,
                    decodes,
                });
                self.codec_on_device = None;
            }
        }
        Ok(())
    }

    /// [`MusicGen::use_device`] with a decoder already built (its device and
    /// dtype are kept): for models made in memory, without a checkpoint.
    pub fn use_device_decoder(&mut self, decoder: MusicgenDecoder) -> Result<()> {
        if decoder.config() != &self.cfg.decoder {
            return Err(Error::InvalidSetting(
                "a device decoder of another shape than the model's".into(),
            ));
        }
        // A decoder on the CPU is taken too: it runs the device path there,
        // which tests compare with the CPU decoder.
        self.on_device = Some(OnDevice::Candle(Box::new(decoder)));
        Ok(())
    }

    /// The device generation's decoder runs on: `cpu`, `cuda:N`, or
    /// `helper:cuda:N` through the GPU helper ([`super::device::Chosen::key`]).
    pub fn device_name(&self) -> String {
        match &self.on_device {
            None => "cpu".into(),
            Some(OnDevice::Helper { helper, .. }) => format!("helper:{}", helper.device()),
            Some(OnDevice::Candle(d)) => super::device::candle_device_name(d.device()),
        }
    }

    /// The tensors (names and shapes) a checkpoint of `cfg` holds, found by loading
    /// the networks from random weights (memory for the whole model, briefly).
    pub fn checkpoint_layout(cfg: &MusicgenConfig) -> Result<Vec<(String, Vec<usize>)>> {
        let w = Weights::random(0);
        load_networks(&w, cfg, Path::new(""), Some(Precision::F32))?;
        Ok(w.asked())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn config(&self) -> &MusicgenConfig {
        &self.cfg
    }

    /// The CPU's generation decoder; an error for a model loaded without
    /// it ([`MusicGen::load_without_decoder`]).
    pub fn decoder(&self) -> Result<&Decoder> {
        self.decoder.as_ref().ok_or_else(|| {
            Error::InvalidSetting(format!(
                "the MusicGen of {} was loaded without its CPU decoder (its decoder runs on {})",
                self.dir.display(),
                self.device_name()
            ))
        })
    }

    /// Whether it holds the CPU's generation decoder.
    pub fn holds_cpu_decoder(&self) -> bool {
        self.decoder.is_some()
    }

    /// How the CPU decoder holds its weights (or would, once loaded).
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Holds the CPU decoder's weights in `precision` from now on.
    pub fn set_precision(&mut self, precision: Precision) {
        if let Some(d) = &mut self.decoder {
            d.set_precision(precision);
            self.precision = d.precision();
        } else {
            self.precision = precision;
        }
    }

    pub fn codec(&self) -> &EncodecDecoder {
        &self.codec
    }

    /// The codec the piece's audio is decoded with: on the decoder's GPU
    /// when that is in this process, else the CPU's.
    fn decoding_codec(&self) -> &EncodecDecoder {
        self.codec_on_device.as_ref().unwrap_or(&self.codec)
    }

    pub fn text_encoder(&self) -> &T5Encoder {
        &self.text
    }

    /// A hash of the weights an adapter builds on (the text encoder, its
    /// projection and the decoder; not the codec), the same for the same
    /// checkpoint on any machine. It reads the whole checkpoint once.
    pub fn weights_hash(&self) -> Result<String> {
        if let Some(h) = self.weights_hash.get() {
            return Ok(h.clone());
        }
        let h = Weights::open_dir(&self.dir)?.content_hash(&["audio_encoder."])?;
        Ok(self.weights_hash.get_or_init(|| h).clone())
    }

    /// The projection from T5's width to the decoder's, where they differ.
    pub fn text_projection(&self) -> Option<&Linear> {
        self.enc_to_dec.as_ref()
    }

    /// Reads the text encoder and its projection again from the checkpoint,
    /// onto `device`, for training there: adapters made or loaded for this
    /// model afterwards hold their tensors on `device` too, and prompts are
    /// encoded there. Generation's decoder stays where it is
    /// ([`MusicGen::use_device`] moves it), so a model whose text encoder
    /// is on a GPU is for training, not for generating. Nothing changes when
    /// this fails.
    pub fn text_to_device(&mut self, device: &Device) -> Result<()> {
        if self.text.device().same_device(device) {
            return Ok(());
        }
        let w = Weights::open_dir(&self.dir)?.on(device);
        let text = T5Encoder::load(&w.pp("text_encoder"), &self.cfg.text_encoder)?;
        let enc_to_dec = match &self.enc_to_dec {
            Some(p) => Some(p.to_device(device)?),
            None => None,
        };
        (self.text, self.enc_to_dec) = (text, enc_to_dec);
        Ok(())
    }

    pub fn sample_rate(&self) -> u32 {
        self.codec.sample_rate()
    }

    /// Code frames per second.
    pub fn frame_rate(&self) -> usize {
        self.cfg.audio_encoder.frame_rate()
    }

    /// The checkpoint's own sampling settings (`generation_config.json`).
    pub fn default_sampling(&self) -> Sampling {
        let g = &self.generation;
        Sampling {
            guidance: g.guidance_scale,
            temperature: g.do_sample.then_some(g.temperature),
            top_k: g.top_k,
            top_p: g.top_p.unwrap_or(1.0),
            seed: 0,
        }
    }

    /// Token ids `(batch, len)` and mask `(batch, len)` for `prompts`, padded on the
    /// right to the longest, as the Hugging Face processor pads.
    pub fn tokenize(&self, prompts: &[&str]) -> Result<(Tensor, Tensor)> {
        let pad = self.tokenizer.token_to_id("<pad>").unwrap_or(0);
        let mut rows = Vec::with_capacity(prompts.len());
        for p in prompts {
            let enc = self
                .tokenizer
                .encode(*p, true)
                .map_err(|e| Error::InvalidSetting(format!("cannot tokenize the prompt: {e}")))?;
            let mut ids = enc.get_ids().to_vec();
            ids.truncate(MAX_PROMPT_TOKENS);
            if let Some(&bad) = ids.iter().find(|&&i| i as usize >= self.text.vocab_size()) {
                return Err(Error::model_file(
                    self.dir.join("tokenizer.json"),
                    format!(
                        "token id {bad} is outside the text encoder's vocabulary of {}",
                        self.text.vocab_size()
                    ),
                ));
            }
            rows.push(ids);
        }
        let len = rows.iter().map(Vec::len).max().unwrap_or(0).max(1);
        let mut ids = Vec::with_capacity(rows.len() * len);
        let mut mask = Vec::with_capacity(rows.len() * len);
        for r in &rows {
            ids.extend(r.iter().copied().chain(std::iter::repeat(pad)).take(len));
            mask.extend((0..len).map(|i| u32::from(i < r.len())));
        }
        let n = rows.len();
        let device = self.text.device();
        Ok((
            Tensor::from_vec(ids, (n, len), device)?,
            Tensor::from_vec(mask, (n, len), device)?,
        ))
    }

    /// The decoder's conditioning states `(batch, len, hidden)`: T5 states projected
    /// to the decoder's width, zeroed at padding.
    pub fn text_states(&self, ids: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let mut h = self.text.forward(ids, mask)?;
        if let Some(p) = &self.enc_to_dec {
            h = p.forward(&h)?;
        }
        let m = mask.to_dtype(candle_core::DType::F32)?.unsqueeze(2)?;
        Ok(h.broadcast_mul(&m)?)
    }

    /// Cross-attention conditions for one prompt.
    pub fn condition(&self, prompt: &str) -> Result<Cross> {
        let (ids, mask) = self.tokenize(&[prompt])?;
        let states = self.text_states(&ids, &mask)?;
        self.cross(&states, &mask)
    }

    /// Cross-attention conditions from one sequence of states `(1, len,
    /// hidden)` and its mask `(1, len)`, for the decoder generation runs on.
    pub fn cross(&self, states: &Tensor, mask: &Tensor) -> Result<Cross> {
        if self.on_device.is_some() {
            return Ok(Cross::States(states.clone(), mask.clone()));
        }
        self.decoder()?
            .cross_kv(states, Some(mask))?
            .pop()
            .map(Cross::Cpu)
            .ok_or_else(|| Error::InvalidSetting("no conditioning states".into()))
    }

    /// Generates `frames` code frames for `prompt`, in windows of at most 30 s, each
    /// after the first continuing from the last 10 s of the one before.
    pub fn generate_frames(
        &self,
        prompt: &str,
        frames: usize,
        sampling: &Sampling,
        on_progress: &mut dyn FnMut(GenerationProgress) -> bool,
    ) -> Result<Frames> {
        let prompts = PromptSchedule::one(prompt);
        self.generate_windows_with(
            frames,
            sampling,
            &mut self.text_conditions(&prompts),
            on_progress,
            None,
        )
    }

    /// Each window's conditions under `prompts`: the prompt of the stretch
    /// its new music covers most. Each distinct prompt is encoded once,
    /// however many windows use it.
    pub fn text_conditions<'a>(
        &'a self,
        prompts: &'a PromptSchedule,
    ) -> impl FnMut(WindowSpan) -> Result<WindowInput> + 'a {
        let rate = self.frame_rate() as f64;
        let mut encoded: Vec<(String, Arc<Cross>)> = Vec::new();
        move |w: WindowSpan| {
            let prompt = prompts.for_span(
                w.new_from as f64 / rate,
                (w.new_from + w.new_frames) as f64 / rate,
            );
            if let Some((_, c)) = encoded.iter().find(|(p, _)| p == prompt) {
                return Ok(WindowInput::cross(c.clone()));
            }
            let c = Arc::new(self.condition(prompt)?);
            encoded.push((prompt.to_string(), c.clone()));
            Ok(WindowInput::cross(c))
        }
    }

    /// The window loop: `frames` code frames, each window conditioned on
    /// what `condition` gives for it. With `on_window`, it is called with all
    /// the final frames so far every [`PUBLISH_SECONDS`] of music while a
    /// window is made, and after each window; where the GPU helper decodes
    /// the audio, with the samples that settled since the call before.
    fn generate_windows_with(
        &self,
        frames: usize,
        sampling: &Sampling,
        condition: &mut dyn FnMut(WindowSpan) -> Result<WindowInput>,
        on_progress: &mut dyn FnMut(GenerationProgress) -> bool,
        mut on_window: Option<&mut OnWindow<'_>>,
    ) -> Result<Frames> {
        let rate = self.frame_rate() as f64;
        let k = self.cfg.decoder.num_codebooks;
        let max_window = ((WINDOW_SECONDS * rate) as usize)
            .min(
                self.cfg
                    .decoder
                    .max_position_embeddings
                    .saturating_sub(k + 1),
            )
            .max(2);
        let context = ((CONTEXT_SECONDS * rate) as usize).min(max_window / 2);
        let mut out: Frames = Vec::with_capacity(frames);
        let mut window = 0u64;
        // The helper decodes where it can, for a caller that takes audio:
        // this piece's number there.
        let piece = match &self.on_device {
            Some(OnDevice::Helper { decodes: true, .. }) if on_window.is_some() => {
                static PIECES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
                Some(PIECES.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
            }
            _ => None,
        };
        while out.len() < frames {
            let prompt_frames = if out.is_empty() {
                &out[..0]
            } else {
                &out[out.len() - context.min(out.len())..]
            };
            let new = (frames - out.len()).min(max_window - prompt_frames.len());
            let done_before = out.len();
            // The window's new music takes the conditions of the stretch it
            // covers; the context it continues from keeps the music joined.
            let input = condition(WindowSpan {
                first: done_before - prompt_frames.len(),
                new_from: done_before,
                new_frames: new,
                positions: prompt_frames.len() + new + k - 1,
            })?;
            // Each window draws from its own stream, so a window's tokens do not
            // depend on how many draws the ones before it made.
            let s = Sampling {
                seed: sampling
                    .seed
                    .wrapping_add(window.wrapping_mul(0x9E37_79B9_7F4A_7C15)),
                ..sampling.clone()
            };
            let steps_new = new;
            // The window's frames are handed over every couple of seconds as
            // they become final, not only when the window is done, so its
            // music can be heard while the rest of it is made.
            let every = ((PUBLISH_SECONDS * rate) as usize).max(1);
            // The first hand-over of the piece, in settled frames: the codec
            // holds back the last few frames it knows.
            let first_settled = ((FIRST_PUBLISH_SECONDS * rate).ceil() as usize).max(1);
            let mut handed = 0usize;
            let mut failed = None;
            // A hand-over's audio from the helper, for the step it came with.
            let helper_audio = std::cell::Cell::new(None::<Vec<f32>>);
            let mut on_step = |p: Progress, complete: &[Vec<u32>]| {
                let done = done_before + (p.step * steps_new / p.steps.max(1));
                let go_on = on_progress(GenerationProgress {
                    frames_done: done.min(frames),
                    frames_total: frames,
                });
                let Some(on_window) = on_window.as_mut() else {
                    return go_on;
                };
                // Where the helper decodes, it hands over by the same rule.
                let audio = helper_audio.take();
                let due = if piece.is_some() {
                    audio.is_some()
                } else if handed == 0 && window == 0 {
                    self.codec.settled(p.complete, false) >= first_settled
                } else {
                    p.complete >= handed + every
                };
                if go_on && due && p.complete < new {
                    handed = p.complete;
                    let mut so_far = out.clone();
                    so_far.extend_from_slice(complete);
                    if let Err(e) = on_window(&so_far, audio) {
                        failed = Some(e);
                        return false;
                    }
                }
                go_on
            };
            // Each decoder reads the conditions made for it (`Self::cross`).
            let (kv, states) = match input.cross.as_deref() {
                None => (None, None),
                Some(Cross::Cpu(kv)) => (Some(kv), None),
                Some(Cross::States(states, mask)) => (None, Some((states, mask))),
            };
            let mismatched = match &self.on_device {
                None => states.is_some(),
                Some(_) => kv.is_some(),
            };
            let fresh = match &self.on_device {
                _ if mismatched => Err(Error::InvalidSetting(
                    "a window's conditions were made for another device than the decoder's".into(),
                )),
                Some(OnDevice::Candle(d)) => generate_on(
                    d,
                    states,
                    &input.layer_inputs,
                    prompt_frames,
                    new,
                    &s,
                    &mut on_step,
                )
                .map_err(|e| match e {
                    // The device's own failures (no memory for the window, a
                    // fault) are told apart from the request's, so the
                    // engine can go on on the CPU.
                    Error::Tensor(t) if !d.device().is_cpu() => Error::Device {
                        device: self.device_name(),
                        reason: t.to_string(),
                    },
                    other => other,
                }),
                // Another model of this process may have had the helper
                // load its decoder since: it is asked for with the window.
                Some(OnDevice::Helper { helper, dtype, .. }) => {
                    // Where it decodes, the helper is told the piece.
                    let plan = piece.map(|piece| super::helper::AudioPlan {
                        piece,
                        codec: self.dir.clone(),
                        before: done_before,
                        total: frames,
                        first_settled,
                        every,
                    });
                    helper
                        .generate_piece(
                            &self.dir,
                            *dtype,
                            states,
                            &input.layer_inputs,
                            prompt_frames,
                            new,
                            &s,
                            plan,
                            &mut |p, complete, audio| {
                                helper_audio.set(audio);
                                on_step(p, complete)
                            },
                        )
                        .map(|(got, audio)| {
                            helper_audio.set(audio);
                            got
                        })
                }
                None => generate_with(
                    self.decoder()?,
                    kv,
                    &input.layer_inputs,
                    prompt_frames,
                    new,
                    &s,
                    &mut on_step,
                ),
            };
            if let Some(e) = failed {
                return Err(e);
            }
            out.extend(fresh?);
            window += 1;
            if let Some(on_window) = on_window.as_mut() {
                on_window(&out, helper_audio.take())?;
            }
        }
        Ok(out)
    }

    /// Decodes code frames to mono audio at the codec's rate.
    pub fn decode(&self, frames: &Frames) -> Result<Vec<f32>> {
        if frames.is_empty() {
            return Ok(Vec::new());
        }
        let codes = codes_tensor(frames)?;
        Ok(self
            .decoding_codec()
            .decode(&codes)?
            .flatten_all()?
            .to_vec1()?)
    }

    /// Text to music: `seconds` of audio at [`Self::sample_rate`].
    pub fn generate(
        &self,
        prompt: &str,
        seconds: f64,
        sampling: &Sampling,
        on_progress: &mut dyn FnMut(GenerationProgress) -> bool,
    ) -> Result<Vec<f32>> {
        if !seconds.is_finite() || seconds <= 0.0 || seconds > 3600.0 {
            return Err(Error::InvalidSetting(
                "duration must be above 0 and at most an hour".into(),
            ));
        }
        let mut audio = Vec::new();
        self.generate_streaming(prompt, seconds, sampling, on_progress, &mut |a| {
            audio.extend_from_slice(a);
            Ok(())
        })?;
        Ok(audio)
    }

    /// [`MusicGen::generate`], handing the audio over as it is made: every couple of
    /// seconds of code frames and after each window, `on_audio` gets the samples
    /// that follow the ones it already has and can no longer change. The pieces, in
    /// order, are the piece.
    pub fn generate_streaming(
        &self,
        prompt: &str,
        seconds: f64,
        sampling: &Sampling,
        on_progress: &mut dyn FnMut(GenerationProgress) -> bool,
        on_audio: &mut dyn FnMut(&[f32]) -> Result<()>,
    ) -> Result<()> {
        let prompts = PromptSchedule::one(prompt);
        self.generate_streaming_scheduled(&prompts, seconds, sampling, on_progress, on_audio)
    }

    /// [`MusicGen::generate_streaming`] with a prompt that changes over the
    /// piece: each 30 s window is made under the prompt of the stretch it
    /// covers most, continuing the music before it.
    pub fn generate_streaming_scheduled(
        &self,
        prompts: &PromptSchedule,
        seconds: f64,
        sampling: &Sampling,
        on_progress: &mut dyn FnMut(GenerationProgress) -> bool,
        on_audio: &mut dyn FnMut(&[f32]) -> Result<()>,
    ) -> Result<()> {
        self.generate_streaming_with(
            seconds,
            sampling,
            &mut self.text_conditions(prompts),
            on_progress,
            on_audio,
        )
    }

    /// [`MusicGen::generate_streaming`] with each window conditioned on what
    /// `condition` gives for it (visual states, in-attention inputs).
    pub fn generate_streaming_with(
        &self,
        seconds: f64,
        sampling: &Sampling,
        condition: &mut dyn FnMut(WindowSpan) -> Result<WindowInput>,
        on_progress: &mut dyn FnMut(GenerationProgress) -> bool,
        on_audio: &mut dyn FnMut(&[f32]) -> Result<()>,
    ) -> Result<()> {
        if !seconds.is_finite() || seconds <= 0.0 || seconds > 3600.0 {
            return Err(Error::InvalidSetting(
                "duration must be above 0 and at most an hour".into(),
            ));
        }
        let frames = (seconds * self.frame_rate() as f64).ceil() as usize;
        let samples = (seconds * self.sample_rate() as f64).round() as usize;
        let mut spans = SpanDecoder::default();
        let mut sent_samples = 0usize;
        let mut on_window = |out: &Frames, decoded: Option<Vec<f32>>| {
            let audio = match decoded {
                // Decoded in the GPU helper.
                Some(a) => a,
                None => {
                    let codes = codes_tensor(out)?;
                    match spans.next(self.decoding_codec(), &codes, out.len() >= frames)? {
                        Some(a) => a.flatten_all()?.to_vec1()?,
                        None => return Ok(()),
                    }
                }
            };
            if audio.is_empty() {
                return Ok(());
            }
            // The codec's frames may run past the asked length: cut there.
            let keep = audio.len().min(samples.saturating_sub(sent_samples));
            on_audio(&audio[..keep])?;
            sent_samples += keep;
            Ok(())
        };
        self.generate_windows_with(
            frames,
            sampling,
            condition,
            on_progress,
            Some(&mut on_window),
        )?;
        Ok(())
    }
}

/// What [`MusicGen`]'s window loop hands its frames to: all the final
/// frames so far, and, where the GPU helper decoded them, the samples that
/// settled since the hand-over before.
type OnWindow<'a> = dyn FnMut(&Frames, Option<Vec<f32>>) -> Result<()> + 'a;

/// Where a window of generation lies in the piece, in code frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowSpan {
    /// The piece's frame at the window's first position: the start of the
    /// context it continues from (or of its new music, for the first window).
    pub first: usize,
    /// The first frame it makes, and how many.
    pub new_from: usize,
    pub new_frames: usize,
    /// Decoder positions the window runs (context, new frames and the delay
    /// pattern's tail): what in-attention inputs must cover.
    pub positions: usize,
}

/// Where generation's decoder runs when not on the CPU.
enum OnDevice {
    /// As candle tensors on a device of this process.
    Candle(Box<MusicgenDecoder>),
    /// In the GPU helper, in `dtype`; `decodes`: the helper decodes the
    /// audio too (its device holds the codec).
    Helper {
        helper: Arc<super::helper::Helper>,
        dtype: candle_core::DType,
        decodes: bool,
    },
}

/// A window's cross-attention conditions, ready for the decoder that runs
/// it ([`MusicGen::cross`] makes the right one).
pub enum Cross {
    /// Keys and values for the CPU decoder.
    Cpu(CrossKv),
    /// States `(1, len, hidden)` and mask `(1, len)` for a device decoder,
    /// which makes its keys and values on the device.
    States(Tensor, Tensor),
}

/// What a window is conditioned on.
pub struct WindowInput {
    /// Cross-attention conditions; `None`: unconditional.
    pub cross: Option<Arc<Cross>>,
    /// Per decoder layer, in-attention inputs for the window's positions
    /// (see [`generate_with`]); empty for none.
    pub layer_inputs: Vec<Option<Vec<f32>>>,
}

impl WindowInput {
    pub fn cross(c: Arc<Cross>) -> Self {
        Self {
            cross: Some(c),
            layer_inputs: Vec::new(),
        }
    }
}

/// Prompts over a piece: each holds from its start time (seconds) on.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptSchedule {
    entries: Vec<(f64, String)>,
}

impl PromptSchedule {
    /// One prompt for the whole piece.
    pub fn one(prompt: &str) -> Self {
        Self {
            entries: vec![(0.0, prompt.to_string())],
        }
    }

    /// Prompts from their start times on; the earliest also covers the time
    /// before it. Empty: the empty prompt throughout.
    pub fn new(mut entries: Vec<(f64, String)>) -> Self {
        entries.retain(|(t, _)| t.is_finite());
        entries.sort_by(|a, b| a.0.total_cmp(&b.0));
        if entries.is_empty() {
            entries.push((0.0, String::new()));
        }
        Self { entries }
    }

    pub fn entries(&self) -> &[(f64, String)] {
        &self.entries
    }

    /// The prompt that covers the most of `start..end` (the earlier one on
    /// a tie).
    pub fn for_span(&self, start: f64, end: f64) -> &str {
        let mut best = (f64::NEG_INFINITY, self.entries[0].1.as_str());
        for (k, (t, p)) in self.entries.iter().enumerate() {
            let from = if k == 0 { f64::NEG_INFINITY } else { *t };
            let to = self.entries.get(k + 1).map_or(f64::INFINITY, |e| e.0);
            let cover = end.min(to) - start.max(from);
            if cover > best.0 {
                best = (cover, p.as_str());
            }
        }
        best.1
    }
}

/// Frames (one code per codebook each) as the codec's `(1, codebooks, frames)`.
pub(super) fn codes_tensor(frames: &Frames) -> Result<Tensor> {
    let k = frames.first().map_or(0, Vec::len);
    let t = frames.len();
    let mut ids = Vec::with_capacity(k * t);
    for c in 0..k {
        ids.extend(frames.iter().map(|f| f[c]));
    }
    Ok(Tensor::from_vec(ids, (1, k, t), &Device::Cpu)?)
}

type Networks = (T5Encoder, Option<Linear>, Option<Decoder>, EncodecDecoder);

/// The four networks of a MusicGen checkpoint, the decoder at `decoder`'s
/// precision (none without one); `dir` names the model in errors.
fn load_networks(
    w: &Weights,
    cfg: &MusicgenConfig,
    dir: &Path,
    decoder: Option<Precision>,
) -> Result<Networks> {
    let text = T5Encoder::load(&w.pp("text_encoder"), &cfg.text_encoder)?;
    let (th, dh) = (cfg.text_encoder.d_model, cfg.decoder.hidden_size);
    let enc_to_dec = if th != dh && cfg.decoder.cross_attention_hidden_size.is_none() {
        Some(Linear::load(&w.pp("enc_to_dec_proj"), th, dh, true)?)
    } else {
        None
    };
    let decoder = decoder
        .map(|p| Decoder::load_as(&w.pp("decoder"), &cfg.decoder, p))
        .transpose()?;
    let codec = EncodecDecoder::load(&w.pp("audio_encoder"), &cfg.audio_encoder)?;
    if codec.num_codebooks() < cfg.decoder.num_codebooks {
        return Err(Error::model_file(
            dir.join("config.json"),
            format!(
                "the codec has {} codebooks but the decoder writes {}",
                codec.num_codebooks(),
                cfg.decoder.num_codebooks
            ),
        ));
    }
    Ok((text, enc_to_dec, decoder, codec))
}

/// The EnCodec decoder of the MusicGen checkpoint in `dir`, on `device`
/// (checked there against the CPU's, see [`codec_on`]): what the GPU helper
/// decodes pieces with.
pub(super) fn codec_for(dir: &Path, device: &Device) -> Result<EncodecDecoder> {
    let cfg = MusicgenConfig::load(&dir.join("config.json"))?;
    let w = Weights::open_dir(dir)?;
    let codec = EncodecDecoder::load(&w.pp("audio_encoder"), &cfg.audio_encoder)?;
    if device.is_cpu() {
        // The CPU's own kernels: the same audio as the engine's.
        return Ok(codec);
    }
    codec_on(&codec, device).map_err(|reason| Error::Device {
        device: super::device::candle_device_name(device),
        reason,
    })
}

/// `codec` on `device`, checked before it is trusted with a piece: a few
/// frames decoded there must give the CPU's audio (within 1e-3 of the
/// loudest sample), so a device whose ops fail or differ is found here and
/// the work stays on the CPU. The reason, when it is not.
fn codec_on(
    codec: &EncodecDecoder,
    device: &Device,
) -> std::result::Result<EncodecDecoder, String> {
    let on = codec
        .to_device(device)
        .map_err(|e| format!("cannot hold the codec ({e})"))?;
    let k = codec.num_codebooks();
    let frames = 8;
    let ids: Vec<u32> = (0..k * frames).map(|i| (i as u32 * 37) % 64).collect();
    let check = || -> Result<(Vec<f32>, Vec<f32>)> {
        let codes = Tensor::from_vec(ids.clone(), (1, k, frames), &Device::Cpu)?;
        let want = codec.decode(&codes)?.flatten_all()?.to_vec1::<f32>()?;
        let got = on.decode(&codes)?.flatten_all()?.to_vec1::<f32>()?;
        Ok((want, got))
    };
    let (want, got) = check().map_err(|e| format!("cannot run the codec ({e})"))?;
    let peak = want.iter().fold(1f32, |m, v| m.max(v.abs()));
    let diff = want
        .iter()
        .zip(&got)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    if got.len() != want.len() || got.iter().any(|v| !v.is_finite()) || diff > 1e-3 * peak {
        return Err(format!(
            "the codec decodes differently there (by {diff} of {peak})"
        ));
    }
    Ok(on)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The codec moved for a device is checked against the CPU's before it
    /// is used: on the CPU device (candle's ops in place of the kernels)
    /// it passes, and decodes as the CPU's does.
    #[test]
    fn a_codec_on_a_device_is_checked_against_the_cpus() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/musicgen-tiny");
        let m = MusicGen::load(&dir).unwrap();
        let on = codec_on(m.codec(), &Device::Cpu).unwrap();
        assert!(!on.device().is_cuda());
        let frames: Frames = (0..20).map(|i| vec![(i * 7) % 64; 4]).collect();
        let codes = codes_tensor(&frames).unwrap();
        let a = m.codec().decode(&codes).unwrap().flatten_all().unwrap();
        let b = on.decode(&codes).unwrap().flatten_all().unwrap();
        let d = (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(d < 1e-5, "{d}");
    }
}
