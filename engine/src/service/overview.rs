//! What an editor shows of a request: the video's thumbnails, the rhythm
//! curve and the cuts the music follows, and the music's waveform and
//! onsets, on one time axis (seconds of the video).
//!
//! Made on the engine thread ([`super::Engine::overview`]): thumbnails and
//! the analysis decode the video, and onset detection reads the whole
//! piece, none of which belongs on a host's main or GUI thread. The
//! analysis is the sketch engine's own (one decode serves both).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use super::spec::Resolved;
use crate::analysis::Analysis;
use crate::audio::Audio;
use crate::error::{Error, Result};
use crate::metrics::{OnsetConfig, detect_onsets};
use crate::video::{Fit, SampleOptions, frames_at};

/// The most thumbnails one overview makes.
pub const MAX_THUMBNAILS: usize = 64;
/// Side of a thumbnail, pixels.
pub const THUMBNAIL_SIDE: u32 = 96;
/// Waveform columns per second of music.
pub const PEAKS_PER_SECOND: f64 = 200.0;

/// Where an overview's music comes from.
#[derive(Debug, Clone)]
pub enum MusicSource {
    /// A piece in hand (a finished request's audio), and its tempo and a
    /// bar start (seconds of the piece) when it has bars.
    Audio {
        audio: Arc<Audio>,
        bpm: Option<f64>,
        downbeat: Option<f64>,
    },
    /// A piece in the disk cache, by its key.
    Cached(String),
}

/// What to draw an overview of.
#[derive(Debug, Clone)]
pub struct OverviewRequest {
    /// The request the music was (or will be) made for.
    pub resolved: Resolved,
    pub music: Option<MusicSource>,
    /// How many thumbnails across the video (at most [`MAX_THUMBNAILS`]).
    pub thumbnails: usize,
}

/// One picture of the video, square RGB24.
#[derive(Debug, Clone, PartialEq)]
pub struct Thumbnail {
    /// Seconds of the video.
    pub time: f64,
    pub side: u32,
    pub rgb: Vec<u8>,
}

/// A cut the music follows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CutMark {
    /// Seconds of the video.
    pub time: f64,
    /// How strongly the picture changes there (the curve's value).
    pub strength: f32,
}

/// The video's side of an overview.
#[derive(Debug, Clone, PartialEq)]
pub struct VideoOverview {
    /// Seconds.
    pub duration: f64,
    pub thumbnails: Vec<Thumbnail>,
    /// The rhythm curve, `curve_rate` values a second from 0 s.
    pub curve: Vec<f32>,
    pub curve_rate: f64,
    /// The cuts in use: detected, or the user's edit with them.
    pub cuts: Vec<CutMark>,
}

/// The music's side of an overview.
#[derive(Debug, Clone, PartialEq)]
pub struct MusicOverview {
    /// Where the music's first frame is, seconds of the video, and how
    /// many seconds of video one second of music covers.
    pub start: f64,
    pub playrate: f64,
    /// Seconds of music.
    pub seconds: f64,
    /// Smallest and largest sample of the mono mix per column,
    /// [`PEAKS_PER_SECOND`] columns a second of music.
    pub peaks: Vec<[f32; 2]>,
    /// Onsets, seconds of music.
    pub onsets: Vec<f64>,
    /// The stretches section edits changed, seconds of music (their ends on
    /// bar lines), oldest first.
    pub sections: Vec<(f64, f64)>,
}

impl MusicOverview {
    /// Reads `audio`: its peaks and onsets.
    pub fn of(audio: &Audio, start: f64, playrate: f64) -> Self {
        let mono = audio.mono();
        let rate = audio.sample_rate.max(1);
        let per = (f64::from(rate) / PEAKS_PER_SECOND).round().max(1.0) as usize;
        let peaks = mono
            .chunks(per)
            .map(|c| {
                c.iter()
                    .fold([f32::INFINITY, f32::NEG_INFINITY], |[lo, hi], &x| {
                        [lo.min(x), hi.max(x)]
                    })
            })
            .collect();
        Self {
            start,
            playrate,
            seconds: mono.len() as f64 / f64::from(rate),
            peaks,
            onsets: detect_onsets(&mono, rate, &OnsetConfig::default()),
            sections: Vec::new(),
        }
    }

    /// The video time of a time of the music.
    pub fn video_time(&self, music: f64) -> f64 {
        self.start + music * self.playrate
    }
}

/// An overview: either side may be missing (no video; no music yet).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Overview {
    pub video: Option<Arc<VideoOverview>>,
    pub music: Option<Arc<MusicOverview>>,
}

/// Samples `count` thumbnails spread evenly over the video, the first at
/// its start.
pub(crate) fn thumbnails(
    path: &Path,
    duration: f64,
    count: usize,
    cancel: &AtomicBool,
) -> Result<Vec<Thumbnail>> {
    let count = count.clamp(1, MAX_THUMBNAILS);
    if !(duration.is_finite() && duration > 0.0) {
        return Err(Error::InvalidSetting(format!(
            "a video of {duration} s has no pictures to show"
        )));
    }
    let step = duration / count as f64;
    let times: Vec<f64> = (0..count).map(|k| k as f64 * step).collect();
    let opts = SampleOptions {
        rate: 1.0,
        size: THUMBNAIL_SIDE,
        fit: Fit::CenterCrop,
        until: None,
    };
    // Seeking to each picture reads a small part of a long video, where a
    // pass at the thumbnails' rate would decode all of it.
    let out = frames_at(path, &times, &opts, cancel)?
        .into_iter()
        .map(|f| Thumbnail {
            time: f.time,
            side: f.size,
            rgb: f.rgb,
        })
        .collect();
    Ok(out)
}

/// The video side of an overview from its analysis (cuts already applied).
pub(crate) fn video_overview(analysis: &Analysis, thumbnails: Vec<Thumbnail>) -> VideoOverview {
    VideoOverview {
        duration: analysis.duration,
        thumbnails,
        curve: analysis.rhythm_25fps.clone(),
        curve_rate: crate::analysis::LOCAL_FPS,
        cuts: analysis
            .cuts
            .iter()
            .map(|c| CutMark {
                time: c.time,
                strength: c.strength,
            })
            .collect(),
    }
}
