//! MusicGen from the prompt alone: the pictures are not read, the video (if
//! any) only sets the length.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::{Made, Pipeline, Work, loaded};
use crate::audio::{Audio, LoudnessReport, StreamMaster, StreamResampler, measure};
use crate::error::{Error, Result};
use crate::neural::generate::Sampling as Decoding;
use crate::neural::{MusicGen, PromptSchedule, WindowInput, WindowSpan};
use crate::service::{MusicSpec, Sampling, Stage};
use crate::sketch::{CEILING_DBTP, TARGET_LUFS};

/// The text engine, holding its model between requests (loading takes
/// seconds); the model is shared with every other engine of the process.
#[derive(Default)]
pub(crate) struct Text {
    model: Option<Arc<MusicGen>>,
}

/// What the text engine reads of a spec.
pub(crate) struct TextSettings {
    pub prompt: String,
    pub seconds: f64,
    pub seed: u64,
    pub sampling: Sampling,
}

impl From<&MusicSpec> for TextSettings {
    fn from(spec: &MusicSpec) -> Self {
        Self {
            prompt: spec.prompt.clone(),
            seconds: spec.span.music_seconds(spec.playrate),
            seed: spec.seed,
            sampling: spec.sampling,
        }
    }
}

impl TextSettings {
    /// The model's own decoding settings with the asked ones in place.
    pub fn decoding(&self, model_default: Decoding) -> Decoding {
        let mut d = model_default;
        d.seed = self.seed;
        if let Some(g) = self.sampling.guidance {
            d.guidance = g;
        }
        if let Some(t) = self.sampling.temperature {
            d.temperature = Some(t);
        }
        if let Some(k) = self.sampling.top_k {
            d.top_k = k;
        }
        d
    }
}

impl Pipeline for Text {
    fn uses_pools(&self) -> bool {
        true
    }

    fn make(&mut self, work: Work<'_>) -> Result<Made> {
        let (Some(dir), Some(pools)) = (work.model, work.pools.as_deref()) else {
            return Err(Error::EngineGone);
        };
        let precision = work.config.precision;
        if self
            .model
            .as_ref()
            .is_none_or(|m| !loaded::is_musicgen(m, dir, precision, &work.device))
        {
            (work.progress)(Stage::Analysing, 0.0);
            // Let go of the old model first: two may not fit.
            self.model = None;
            self.model = Some(loaded::musicgen(dir, precision, &work.device)?);
            (work.progress)(Stage::Analysing, 1.0);
        }
        let Some(model) = self.model.clone() else {
            return Err(Error::EngineGone);
        };
        let settings = TextSettings::from(work.spec);
        let decoding = settings.decoding(model.default_sampling());
        let prompts = PromptSchedule::one(&settings.prompt);
        let rate = work.spec.sample_rate;
        let (cancel, progress, sink) = (work.cancel, work.progress, work.sink);
        let (audio, loudness) = pools.run(|| {
            stream(
                &model,
                &prompts,
                settings.seconds,
                &decoding,
                rate,
                cancel,
                progress,
                sink,
            )
        })?;
        Ok(Made {
            audio,
            bpm: None,
            downbeat: None,
            analysis: None,
            loudness,
            tags: None,
        })
    }
}

/// Mono music at the codec's rate made into the piece: stereo at the asked
/// rate, mastered to the same loudness as the embedded composer's music, as
/// it comes (the level is set from the start of the piece).
pub(super) struct Finisher {
    /// The rate of the music taken in (the codec's).
    from: u32,
    resampler: StreamResampler,
    master: StreamMaster,
    audio: Audio,
}

impl Finisher {
    pub fn new(from: u32, rate: u32) -> Result<Self> {
        Ok(Self {
            from,
            resampler: StreamResampler::new(from, rate, 2)?,
            master: StreamMaster::new(rate, 2, TARGET_LUFS, CEILING_DBTP),
            audio: Audio::silence(rate, 2, 0),
        })
    }

    fn append(&mut self, piece: Vec<Vec<f32>>) {
        for (c, p) in self.audio.channels.iter_mut().zip(piece) {
            c.extend(p);
        }
    }

    /// Sets the level from `mono`, the start of the music before it was
    /// changed on its way here (warped, accented), unless set already: the
    /// pieces pushed are then heard as they come, where otherwise the first
    /// 1.5 s pushed would be held to measure.
    pub fn level_from(&mut self, mono: &[f32]) -> Result<()> {
        if self.master.gain_db().is_some() {
            return Ok(());
        }
        let reference = Audio {
            sample_rate: self.from,
            channels: vec![mono.to_vec(), mono.to_vec()],
        };
        self.master.set_gain_from(&reference)
    }

    /// Takes the next stretch of music.
    pub fn push(&mut self, mono: &[f32]) -> Result<()> {
        let piece = self.resampler.push(&[mono.to_vec(), mono.to_vec()])?;
        let mastered = self.master.push(&piece)?;
        self.append(mastered);
        Ok(())
    }

    /// The piece so far.
    pub fn audio(&self) -> &Audio {
        &self.audio
    }

    /// The whole piece and its loudness.
    pub fn finish(mut self) -> Result<(Audio, LoudnessReport)> {
        let rest = self.resampler.finish()?;
        let mastered = self.master.push(&rest)?;
        self.append(mastered);
        let tail = self.master.finish()?;
        self.append(tail);
        let loudness = measure(&self.audio)?;
        Ok((self.audio, loudness))
    }
}

/// MusicGen's music for `prompts`, made into the piece as it comes, so each
/// window can be heard while the next is generated; `sink` takes the piece
/// as it grows.
#[allow(clippy::too_many_arguments)]
pub(super) fn stream(
    model: &MusicGen,
    prompts: &PromptSchedule,
    seconds: f64,
    decoding: &Decoding,
    rate: u32,
    cancel: &AtomicBool,
    progress: &(dyn Fn(Stage, f64) + Sync),
    sink: &mut (dyn FnMut(&Audio, bool) -> Result<()> + Send),
) -> Result<(Audio, LoudnessReport)> {
    stream_with(
        model,
        &mut model.text_conditions(prompts),
        seconds,
        decoding,
        rate,
        cancel,
        progress,
        sink,
    )
}

/// [`stream`] with each window conditioned on what `condition` gives.
#[allow(clippy::too_many_arguments)]
pub(super) fn stream_with(
    model: &MusicGen,
    condition: &mut dyn FnMut(WindowSpan) -> Result<WindowInput>,
    seconds: f64,
    decoding: &Decoding,
    rate: u32,
    cancel: &AtomicBool,
    progress: &(dyn Fn(Stage, f64) + Sync),
    sink: &mut (dyn FnMut(&Audio, bool) -> Result<()> + Send),
) -> Result<(Audio, LoudnessReport)> {
    let mut finisher = Finisher::new(model.sample_rate(), rate)?;
    model.generate_streaming_with(
        seconds,
        decoding,
        condition,
        &mut |p| {
            progress(
                Stage::Composing,
                p.frames_done as f64 / p.frames_total.max(1) as f64,
            );
            !cancel.load(Ordering::Relaxed)
        },
        &mut |mono| {
            finisher.push(mono)?;
            sink(finisher.audio(), false)
        },
    )?;
    progress(Stage::Finishing, 0.0);
    finisher.finish()
}

/// MusicGen's music for `prompts`, handed to `on_audio` as it settles, with
/// progress per decoder step and a cancel check at each.
pub(super) fn generate(
    model: &MusicGen,
    prompts: &PromptSchedule,
    seconds: f64,
    decoding: &Decoding,
    cancel: &AtomicBool,
    progress: &(dyn Fn(Stage, f64) + Sync),
    on_audio: &mut dyn FnMut(&[f32]) -> Result<()>,
) -> Result<()> {
    model.generate_streaming_scheduled(
        prompts,
        seconds,
        decoding,
        &mut |p| {
            progress(
                Stage::Composing,
                p.frames_done as f64 / p.frames_total.max(1) as f64,
            );
            !cancel.load(Ordering::Relaxed)
        },
        on_audio,
    )?;
    progress(Stage::Finishing, 0.0);
    Ok(())
}
