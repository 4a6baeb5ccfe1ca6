//! Putting generated music's accents on the video's cuts.
//!
//! A text-to-music model asked for 120 BPM plays near it, not on it, and
//! knows nothing of the cuts. This module finds the beats the music has
//! ([`beats`]), plans a time map that moves them onto the chosen tempo's
//! grid and an accent of the music onto every cut ([`plan`]), and plays the
//! music through that map with a pitch-keeping phase vocoder ([`warp`]),
//! whole or window by window, always at exactly the input's length
//! ([`stream`] plans and warps music while it is still being generated). Above
//! half rhythm strength each cut also gets a soft percussive hit
//! ([`accent`]).

mod accent;
pub mod beats;
pub mod plan;
pub mod stream;
pub mod warp;

pub use beats::{BeatSource, BeatTrack, track_beats, track_beats_mono};
pub use plan::{Anchor, AnchorKind, Span, TimeMap, plan, plan_span};
pub use stream::StreamAligner;
pub use warp::{Warper, warp};

use serde::Serialize;

use crate::audio::Audio;

/// The true-peak ceiling the engine masters to, dBTP (the same as
/// [`crate::sketch::CEILING_DBTP`]; a test keeps them equal).
pub const DEFAULT_CEILING_DBTP: f64 = -1.0;

/// The tempo range the grid accepts; outside it the tempo is clamped.
const BPM_RANGE: (f64, f64) = (20.0, 400.0);

/// What the music is aligned to. Times are seconds of the output (the
/// video's time).
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    /// Grid beats per minute (the meter's pulse; `Meter::pulse` converts).
    pub bpm: f64,
    /// A time where a bar starts.
    pub downbeat: f64,
    pub beats_per_bar: u32,
    pub cuts: Vec<f64>,
    /// 0 leaves the music untouched (bit for bit); above 0 it is warped;
    /// above 0.5 each cut also gets an accent, louder with strength.
    pub rhythm_strength: f32,
    /// The accents keep sample peaks 1 dB under this, dBTP.
    pub ceiling_dbtp: f64,
}

impl Target {
    pub fn new(bpm: f64, cuts: Vec<f64>, rhythm_strength: f32) -> Self {
        Self {
            bpm,
            downbeat: 0.0,
            beats_per_bar: 4,
            cuts,
            rhythm_strength,
            ceiling_dbtp: DEFAULT_CEILING_DBTP,
        }
    }

    /// The tempo, finite and within 20–400 BPM.
    pub fn bpm_clamped(&self) -> f64 {
        if self.bpm.is_finite() {
            self.bpm.clamp(BPM_RANGE.0, BPM_RANGE.1)
        } else {
            120.0
        }
    }

    /// How loud the accents are, 0–1: nothing up to strength 0.5, full at 1.
    pub fn accent_gain(&self) -> f32 {
        let s = self.rhythm_strength;
        if s.is_finite() {
            ((s - 0.5) * 2.0).clamp(0.0, 1.0)
        } else {
            0.0
        }
    }

    /// Strength 0 (or not a number): no warp at all.
    fn untouched(&self) -> bool {
        self.rhythm_strength.is_nan() || self.rhythm_strength <= 0.0
    }
}

/// The aligned audio and how it was made.
#[derive(Debug, Clone)]
pub struct Aligned {
    pub audio: Audio,
    pub beats: BeatTrack,
    pub map: TimeMap,
}

/// The music aligned to `target`, as long as `audio` to the frame.
pub fn align(audio: &Audio, target: &Target) -> Audio {
    if target.untouched() {
        return audio.clone();
    }
    align_detailed(audio, target).audio
}

/// [`align`] with the beats found and the map used.
pub fn align_detailed(audio: &Audio, target: &Target) -> Aligned {
    let beats = track_beats(audio, target.bpm_clamped());
    if target.untouched() {
        return Aligned {
            audio: audio.clone(),
            beats,
            map: TimeMap::identity(audio.duration()),
        };
    }
    let map = plan(&beats, target, audio.duration());
    let mut w = Warper::new(audio.sample_rate, audio.channels.len());
    w.set_accents(&target.cuts, target.accent_gain(), target.ceiling_dbtp);
    w.extend_map(&map);
    w.push_source(&audio.channels);
    let channels = w.finish(audio.len());
    Aligned {
        audio: Audio {
            sample_rate: audio.sample_rate,
            channels,
        },
        beats,
        map,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ceiling_is_the_masters() {
        assert_eq!(DEFAULT_CEILING_DBTP, crate::sketch::CEILING_DBTP);
    }
}
