//! MusicGen from the prompt alone: the pictures are not read, the video (if
//! any) only sets the length.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::{Made, Pipeline, Work, loaded};
use crate::audio::{Audio, LoudnessReport, StreamMaster, StreamResampler, measure};
use crate::error::{Error, Result};
use crate::neural::generate::Sampling as Decoding;
use crate::neural::{MusicGen, PromptSchedule};
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
            .is_none_or(|m| m.dir() != dir || m.precision() != precision)
        {
            (work.progress)(Stage::Analysing, 0.0);
            // Let go of the old model first: two may not fit.
            self.model = None;
            self.model = Some(loaded::musicgen(dir, precision)?);
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
            analysis: None,
            loudness,
            tags: None,
        })
    }
}

/// MusicGen's music for `prompts`, resampled to `rate` and mastered as it
/// comes, so each window can be heard while the next is generated (the
/// level is set from the start of the piece); `sink` takes the piece as it
/// grows. Mastered to the same loudness as the embedded composer's music.
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
    let mut resampler = StreamResampler::new(model.sample_rate(), rate, 2)?;
    let mut master = StreamMaster::new(rate, 2, TARGET_LUFS, CEILING_DBTP);
    let mut audio = Audio::silence(rate, 2, 0);
    let append = |audio: &mut Audio, piece: Vec<Vec<f32>>| {
        for (c, p) in audio.channels.iter_mut().zip(piece) {
            c.extend(p);
        }
    };
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
        &mut |mono| {
            let piece = resampler.push(&[mono.to_vec(), mono.to_vec()])?;
            append(&mut audio, master.push(&piece)?);
            sink(&audio, false)
        },
    )?;
    progress(Stage::Finishing, 0.0);
    let rest = resampler.finish()?;
    append(&mut audio, master.push(&rest)?);
    append(&mut audio, master.finish()?);
    let loudness = measure(&audio)?;
    Ok((audio, loudness))
}
