//! The embedded composer: music for a video without any model weights.
//!
//! It reads the same visual analysis the neural engines use — cuts, motion
//! energy, global colour statistics — and writes an arrangement (drums,
//! bass, pad harmony, plucked arpeggio, a lead when the picture is busy)
//! with accents on the cuts, intensity following motion, key and mode
//! following the picture, and sections changing at the larger scene
//! changes. It is deterministic for a seed.

mod meter;
mod render;
mod score;
mod style;

pub use meter::Meter;
pub use score::{Inst, Note, Plan, Score, Section, arrange};
pub use style::Style;

use std::sync::atomic::{AtomicBool, Ordering};

use serde::Serialize;

use crate::analysis::Analysis;
use crate::audio::{Audio, LoudnessReport, normalize};
use crate::error::{Error, Result};

/// The loudness the composer masters to (streaming platforms' reference).
pub const TARGET_LUFS: f64 = -14.0;
pub const CEILING_DBTP: f64 = -1.0;
pub const SAMPLE_RATE: u32 = 48_000;

#[derive(Debug, Clone, Serialize)]
pub struct SketchSettings {
    /// Tempo; `None` picks the tempo that lands cuts on beats.
    pub bpm: Option<f64>,
    /// A time (seconds) where a bar starts; `None` anchors the bars where
    /// the cuts fall best.
    pub downbeat: Option<f64>,
    pub seed: u64,
    /// What the prompt asks for.
    pub style: Style,
    /// How strongly the cuts are marked: 0 writes no accents on them, 1 the
    /// full impact and crash.
    pub rhythm_strength: f32,
    /// How much the pictures' content decides mood, energy and sections,
    /// 0–1 (see [`Plan::semantic`]).
    pub semantic_strength: f32,
    pub meter: Meter,
}

impl Default for SketchSettings {
    fn default() -> Self {
        Self {
            bpm: None,
            downbeat: None,
            seed: 0,
            style: Style::default(),
            rhythm_strength: 1.0,
            semantic_strength: 1.0,
            meter: Meter::COMMON,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Composition {
    pub audio: Audio,
    pub score: Score,
    pub loudness: LoudnessReport,
}

pub fn compose(
    analysis: &Analysis,
    settings: &SketchSettings,
    cancel: &AtomicBool,
    progress: &mut dyn FnMut(f64),
) -> Result<Composition> {
    let bpm = match settings.bpm {
        Some(b) if b.is_finite() && (20.0..=400.0).contains(&b) => b,
        Some(b) => {
            return Err(Error::InvalidSetting(format!(
                "tempo {b} BPM (expected 20–400)"
            )));
        }
        // The analysis's tempo, or one nearer the style's pace that still
        // lands the cuts on beats.
        None if settings.style.tempo_shift == 0.0 => analysis.tempo.bpm,
        None => {
            let cuts: Vec<f64> = analysis.cuts.iter().map(|c| c.time).collect();
            crate::analysis::suggest_tempo(
                &cuts,
                analysis.tempo.bpm + settings.style.tempo_shift,
                70.0,
                160.0,
            )
            .bpm
        }
    };
    if let Some(d) = settings.downbeat
        && !d.is_finite()
    {
        return Err(Error::InvalidSetting(format!("downbeat at {d} s")));
    }
    if !(0.0..=1.0).contains(&settings.rhythm_strength) {
        return Err(Error::InvalidSetting(format!(
            "rhythm strength {} (expected 0–1)",
            settings.rhythm_strength
        )));
    }
    if !(0.0..=1.0).contains(&settings.semantic_strength) {
        return Err(Error::InvalidSetting(format!(
            "semantic strength {} (expected 0–1)",
            settings.semantic_strength
        )));
    }
    let style = Style {
        accents: settings.style.accents * settings.rhythm_strength,
        ..settings.style
    };
    let score = arrange(
        analysis,
        &Plan {
            bpm,
            downbeat: settings.downbeat,
            seed: settings.seed,
            style,
            semantic: settings.semantic_strength,
            meter: settings.meter,
        },
    );
    let frames = (analysis.duration * f64::from(SAMPLE_RATE)).round() as usize;
    let mut tick = |p: f64| {
        progress(p * 0.9);
        !cancel.load(Ordering::Relaxed)
    };
    let [l, r] = render::render(&score, SAMPLE_RATE, frames, settings.seed, &mut tick)
        .ok_or(Error::Cancelled)?;
    let mut audio = Audio {
        sample_rate: SAMPLE_RATE,
        channels: vec![l, r],
    };
    let loudness = normalize(&mut audio, TARGET_LUFS, CEILING_DBTP)?;
    progress(1.0);
    Ok(Composition {
        audio,
        score,
        loudness,
    })
}
