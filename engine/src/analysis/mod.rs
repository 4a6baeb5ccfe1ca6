//! Hierarchical visual analysis: global (semantic) vectors at 1 fps, patch
//! (rhythmic) vectors at 25 fps, the rhythm curve at 50 Hz, and what the
//! composer reads off them: cuts, motion energy, scene changes, a tempo.

pub mod clip_features;
mod cuts;
mod encoder;
mod plot;
mod rhythm;
pub mod tags;
mod tempo;

pub use cuts::{Cut, CutConfig, detect_cuts, motion_energy};
pub use encoder::{PATCH_DIM, StatsEncoder, VisualEncoder, global};
pub use plot::plot_analysis;
pub use rhythm::{RhythmCurve, cosine_distance, resample_linear};
pub use tempo::{TempoSuggestion, grid_fit, suggest_tempo};

use std::path::Path;
use std::sync::atomic::AtomicBool;

use serde::Serialize;

use crate::error::Result;
use crate::video::{AlsoAt, Fit, Frame, SampleOptions, VideoInfo, sample_frames_also};

/// Local (rhythm) frame rate of the method.
pub const LOCAL_FPS: f64 = 25.0;
/// Global (semantic) frame rate of the method.
pub const GLOBAL_FPS: f64 = 1.0;
/// Token rate of the music model; the rhythm curve is resampled to it.
pub const CURVE_HZ: f64 = 50.0;

#[derive(Debug, Clone, Serialize)]
pub struct Analysis {
    pub video: VideoInfo,
    pub encoder: String,
    /// Seconds.
    pub duration: f64,
    /// d_t at 25 fps (d_0 = 1).
    pub rhythm_25fps: Vec<f32>,
    /// d interpolated to 50 Hz.
    pub rhythm_50hz: Vec<f32>,
    /// Motion energy at 25 fps (rhythm curve without cut spikes, smoothed).
    pub motion: Vec<f32>,
    /// The motion energy's 90th percentile, which [`Analysis::motion_at`]
    /// scales to 1.
    pub motion_p90: f32,
    pub cuts: Vec<Cut>,
    /// One global vector per second.
    pub global: Vec<Vec<f32>>,
    pub summary: Summary,
    pub tempo: TempoSuggestion,
}

/// What the whole video looks like, in numbers the composer reads.
#[derive(Debug, Clone, Copy, Serialize, Default)]
pub struct Summary {
    pub brightness: f32,
    pub contrast: f32,
    pub saturation: f32,
    pub colourfulness: f32,
    pub warmth: f32,
    /// Mean motion energy.
    pub motion: f32,
    pub cuts_per_minute: f64,
}

impl Analysis {
    /// Motion energy at `t` seconds, normalised so that the video's own
    /// 90th percentile is 1.
    pub fn motion_at(&self, t: f64) -> f32 {
        let i = ((t * LOCAL_FPS) as usize).min(self.motion.len().saturating_sub(1));
        let m = self.motion.get(i).copied().unwrap_or(0.0);
        m / self.motion_p90
    }

    /// The analysis of the video played `rate` times as fast (2: twice
    /// as fast, 0.5: slow motion): every time divided by `rate`, curves
    /// sampled at the same rates over the new length, the tempo suggested
    /// again for the moved cuts. What a timeline plays at a playrate.
    pub fn retimed(&self, rate: f64) -> Analysis {
        if !(rate.is_finite() && rate > 0.0) || (rate - 1.0).abs() < 1e-12 {
            return self.clone();
        }
        let duration = self.duration / rate;
        // Each new sample takes the source sample playing at its time; a
        // cut's spike, one frame long, is kept by the cut list itself.
        fn pick<T: Clone>(v: &[T], hz: f64, rate: f64, duration: f64) -> Vec<T> {
            let Some(last) = v.len().checked_sub(1) else {
                return Vec::new();
            };
            let n = (duration * hz).round().max(1.0) as usize;
            (0..n)
                .map(|i| v[((i as f64 * rate) as usize).min(last)].clone())
                .collect()
        }
        let cuts: Vec<Cut> = self
            .cuts
            .iter()
            .map(|c| Cut {
                time: c.time / rate,
                strength: c.strength,
            })
            .collect();
        let cut_times: Vec<f64> = cuts.iter().map(|c| c.time).collect();
        let mut summary = self.summary;
        summary.cuts_per_minute *= rate;
        Analysis {
            video: self.video.clone(),
            encoder: self.encoder.clone(),
            duration,
            rhythm_25fps: pick(&self.rhythm_25fps, LOCAL_FPS, rate, duration),
            rhythm_50hz: pick(&self.rhythm_50hz, CURVE_HZ, rate, duration),
            motion: pick(&self.motion, LOCAL_FPS, rate, duration),
            motion_p90: self.motion_p90,
            global: pick(&self.global, GLOBAL_FPS, rate, duration),
            summary,
            tempo: suggest_tempo(&cut_times, self.tempo.bpm, 70.0, 160.0),
            cuts,
        }
    }

    /// The analysis with the user's cuts (from their edit, or a host's
    /// markers; seconds of the video): in place of the detected cuts, or
    /// joined with them when `merge` (a detected cut within two frames of
    /// a user's gives way to it). Motion, the summary and the suggested
    /// tempo follow the new cuts. A user's cut is as strong as the rhythm
    /// curve is at its frame: a cut the pictures show is marked harder than
    /// a marker where nothing changes.
    pub fn with_cuts(&self, times: &[f64], merge: bool) -> Analysis {
        let last = self.rhythm_25fps.len().saturating_sub(1);
        let user: Vec<Cut> = times
            .iter()
            .filter(|t| t.is_finite() && **t > 0.0 && **t <= self.duration)
            .map(|&time| {
                let i = ((time * LOCAL_FPS).round() as usize).min(last);
                let near = self
                    .rhythm_25fps
                    .get(i.saturating_sub(1)..=i)
                    .unwrap_or(&[]);
                let strength = near.iter().copied().fold(0.0f32, f32::max);
                Cut { time, strength }
            })
            .collect();
        let mut cuts = user.clone();
        if merge {
            let near = 2.0 / LOCAL_FPS;
            cuts.extend(
                self.cuts
                    .iter()
                    .filter(|c| user.iter().all(|u| (u.time - c.time).abs() > near)),
            );
        }
        cuts.sort_by(|a, b| a.time.total_cmp(&b.time));
        with_cut_list(
            self.video.clone(),
            &self.encoder,
            self.duration,
            self.rhythm_25fps.clone(),
            self.global.clone(),
            cuts,
        )
    }

    /// Starts of sections (the first is 0), split at the biggest scene changes: cuts after which the global
    /// (semantic) picture differs most, at least `min_len` seconds apart. With
    /// less `semantic` weight, the strongest cuts count more than what changes.
    pub fn sections(&self, min_len: f64, semantic: f32) -> Vec<f64> {
        let a = self;
        let mut changes: Vec<(f64, f32)> = a
            .cuts
            .iter()
            .filter_map(|c| {
                let before = a.global_at((c.time - 0.5).max(0.0))?;
                let after = a.global_at(c.time + 0.5)?;
                Some((
                    c.time,
                    semantic * cosine_distance(before, after) + 0.1 * c.strength,
                ))
            })
            .collect();
        changes.sort_by(|x, y| y.1.total_cmp(&x.1));
        let mut bounds = vec![0.0];
        for (t, _) in changes {
            if t > min_len * 0.5
                && a.duration - t > min_len * 0.5
                && bounds.iter().all(|&b: &f64| (b - t).abs() >= min_len)
            {
                bounds.push(t);
            }
        }
        bounds.sort_by(f64::total_cmp);
        bounds
    }

    /// Global vector of the second containing `t`.
    pub fn global_at(&self, t: f64) -> Option<&[f32]> {
        if self.global.is_empty() {
            return None;
        }
        let i = ((t * GLOBAL_FPS) as usize).min(self.global.len() - 1);
        Some(&self.global[i])
    }
}

/// Progress of a long operation, in [0, 1].
pub type Progress<'a> = &'a mut dyn FnMut(f64);

/// Decodes `path` once at 25 fps and runs the encoder: patch vectors on every
/// frame, the global vector on every 25th (1 fps).
pub fn analyze(
    path: &Path,
    encoder: &mut dyn VisualEncoder,
    cancel: &AtomicBool,
    progress: Progress<'_>,
) -> Result<Analysis> {
    analyze_until(path, encoder, None, cancel, progress)
}

/// [`analyze`], stopping after `until` seconds when given (a preview of the
/// start of a long video).
pub fn analyze_until(
    path: &Path,
    encoder: &mut dyn VisualEncoder,
    until: Option<f64>,
    cancel: &AtomicBool,
    progress: Progress<'_>,
) -> Result<Analysis> {
    analyze_until_also(path, encoder, until, None, cancel, progress)
}

/// A side and what is handed each picture at that side ([`analyze_until_also`]).
pub type AlsoEach<'a> = (u32, &'a mut dyn FnMut(&Frame) -> Result<()>);

/// [`analyze_until`], handing `also.1` the picture at `also.0` pixels
/// (centre-cropped, as CLIP takes it) of every frame a pass at
/// [`GLOBAL_FPS`] would sample, from the same decode.
pub fn analyze_until_also(
    path: &Path,
    encoder: &mut dyn VisualEncoder,
    until: Option<f64>,
    mut also: Option<AlsoEach<'_>>,
    cancel: &AtomicBool,
    progress: Progress<'_>,
) -> Result<Analysis> {
    let opts = SampleOptions {
        rate: LOCAL_FPS,
        size: encoder.input_size(),
        fit: encoder.fit(),
        until,
    };
    let every = (LOCAL_FPS / GLOBAL_FPS).round() as usize;
    let at = also.as_ref().map(|(size, _)| AlsoAt {
        every,
        size: *size,
        fit: Fit::CenterCrop,
    });
    let mut curve = RhythmCurve::default();
    let mut globals = Vec::new();
    let mut local = Vec::new();
    let mut g = Vec::new();
    let (info, _) = sample_frames_also(path, &opts, at, cancel, |frame, second| {
        if let (Some(picture), Some((_, each))) = (second, also.as_mut()) {
            each(picture)?;
        }
        encoder.encode_local(frame, &mut local);
        curve.push(&local);
        if frame.index % every == 0 {
            encoder.encode_global(frame, &mut g);
            globals.push(g.clone());
        }
        let span = until.map_or(frame.duration, |u| u.min(frame.duration));
        if frame.index % every == 0 && span > 0.0 {
            progress((frame.time / span).min(1.0));
        }
        Ok(())
    })?;
    progress(1.0);
    Ok(from_curve(info, encoder.name(), curve.values, globals))
}

/// Everything derived from the sampled features.
pub fn from_curve(info: VideoInfo, encoder: &str, d: Vec<f32>, global: Vec<Vec<f32>>) -> Analysis {
    let duration = if info.duration > 0.0 {
        info.duration
    } else {
        d.len() as f64 / LOCAL_FPS
    };
    let (w, h) = info.display_size();
    let cuts = detect_cuts(&d, LOCAL_FPS, &CutConfig::for_frame(w, h));
    with_cut_list(info, encoder, duration, d, global, cuts)
}

/// Everything derived from the sampled features once the cuts are known.
fn with_cut_list(
    info: VideoInfo,
    encoder: &str,
    duration: f64,
    d: Vec<f32>,
    global: Vec<Vec<f32>>,
    cuts: Vec<Cut>,
) -> Analysis {
    let motion = motion_energy(&d, &cuts, LOCAL_FPS, 0.5);
    let motion_p90 = {
        let mut v = motion.clone();
        let k = (v.len() * 9 / 10).min(v.len().saturating_sub(1));
        if v.is_empty() {
            1.0
        } else {
            v.select_nth_unstable_by(k, f32::total_cmp).1.max(1e-4)
        }
    };
    let rhythm_50hz = resample_linear(&d, LOCAL_FPS, CURVE_HZ, duration);
    let mean = |k: usize| {
        if global.is_empty() {
            0.0
        } else {
            global.iter().map(|g| g[k]).sum::<f32>() / global.len() as f32
        }
    };
    let motion_mean = if motion.is_empty() {
        0.0
    } else {
        motion.iter().sum::<f32>() / motion.len() as f32
    };
    let summary = Summary {
        brightness: mean(global::BRIGHTNESS),
        contrast: mean(global::CONTRAST),
        saturation: mean(global::SATURATION),
        colourfulness: mean(global::COLOURFULNESS),
        warmth: mean(global::WARMTH),
        motion: motion_mean,
        cuts_per_minute: if duration > 0.0 {
            cuts.len() as f64 * 60.0 / duration
        } else {
            0.0
        },
    };
    // Busier pictures suggest faster music: 80 BPM for a still picture,
    // up to 140 for constant motion and frequent cutting.
    let busy = (motion_mean / 0.05).min(1.0) as f64 * 0.6
        + (summary.cuts_per_minute / 40.0).min(1.0) * 0.4;
    let cut_times: Vec<f64> = cuts.iter().map(|c| c.time).collect();
    let tempo = suggest_tempo(&cut_times, 80.0 + 60.0 * busy, 70.0, 160.0);
    Analysis {
        video: info,
        encoder: encoder.to_string(),
        duration,
        rhythm_25fps: d,
        rhythm_50hz,
        motion,
        motion_p90,
        cuts,
        global,
        summary,
        tempo,
    }
}
