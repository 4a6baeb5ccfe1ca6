//! The embedded composer: analyses the pictures, writes a score for them and
//! synthesises it. No weights.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use super::{Made, Pipeline, Work};
use crate::analysis::{Analysis, StatsEncoder, analyze_until};
use crate::audio::resample;
use crate::error::{Error, Result};
use crate::service::{MusicSpec, Stage, VideoId};
use crate::sketch::{SketchSettings, Style, compose};

/// The sketch engine, keeping the last analysis: analysis is most of its
/// work, and a tempo change or a new seed asks for the same video again.
#[derive(Default)]
pub(crate) struct Sketch {
    last: Option<(VideoId, Option<f64>, Arc<Analysis>)>,
}

impl From<&MusicSpec> for SketchSettings {
    fn from(spec: &MusicSpec) -> Self {
        SketchSettings {
            bpm: spec.tempo,
            // The composer writes the whole video's music and the span is
            // cut from it: a bar of the piece is one of the whole's.
            downbeat: spec.downbeat.map(|d| d + spec.span.start / spec.playrate),
            style: Style::from_prompt(&spec.prompt),
            rhythm_strength: spec.rhythm_strength,
            semantic_strength: spec.semantic_strength,
            meter: spec.meter,
            seed: spec.seed,
        }
    }
}

impl Sketch {
    /// The analysis of the video `id` at `path` (up to `until` seconds),
    /// kept for the next request of the same video.
    pub(crate) fn analysis(
        &mut self,
        path: &Path,
        id: &VideoId,
        until: Option<f64>,
        cancel: &AtomicBool,
        progress: &dyn Fn(f64),
    ) -> Result<Arc<Analysis>> {
        if let Some((v, p, a)) = &self.last
            && v == id
            && *p == until
        {
            return Ok(a.clone());
        }
        let a = Arc::new(analyze_until(
            path,
            &mut StatsEncoder::default(),
            until,
            cancel,
            &mut |f| progress(f),
        )?);
        self.last = Some((id.clone(), until, a.clone()));
        Ok(a)
    }
}

impl Pipeline for Sketch {
    fn make(&mut self, work: Work<'_>) -> Result<Made> {
        let spec = work.spec;
        let (Some((path, _)), Some(id)) = (work.video, spec.video.as_ref()) else {
            return Err(Error::InvalidSetting(
                "the sketch engine scores a video: give one".into(),
            ));
        };
        let analysis = self.analysis(path, id, spec.preview_until, work.cancel, &|f| {
            (work.progress)(Stage::Analysing, f)
        })?;
        let analysis = match &spec.cuts {
            Some(c) => Arc::new(analysis.with_cuts(&c.times, c.merge)),
            None => analysis,
        };
        let analysis = if spec.playrate == 1.0 {
            analysis
        } else {
            Arc::new(analysis.retimed(spec.playrate))
        };
        // The whole video is composed and the span cut from it, so a range
        // plays the same bars as the full piece does at that time.
        let comp = compose(
            &analysis,
            &SketchSettings::from(spec),
            work.cancel,
            &mut |f| (work.progress)(Stage::Composing, f),
        )?;
        (work.progress)(Stage::Finishing, 0.0);
        let audio = resample(&comp.audio, spec.sample_rate)?;
        let audio = audio.slice_seconds(
            spec.span.start / spec.playrate,
            spec.span.end / spec.playrate,
        );
        Ok(Made {
            audio,
            bpm: Some(comp.score.bpm),
            downbeat: Some(comp.score.bar_phase - spec.span.start / spec.playrate),
            analysis: Some(analysis),
            loudness: comp.loudness,
            tags: None,
        })
    }
}
