//! Section edits: a piece with stretches made again with seeds of their
//! own. Each stretch comes from a piece made for just that stretch (the
//! same spec with the section's seed and span), its ends moved out to the
//! music's bar lines, and is joined inside its ends with short crossfades,
//! so the music outside it is bit for bit the piece without the edit.
//! Every piece on the way is cached, so undoing an edit (the spec without
//! its last section) is served from the cache as it was.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use super::super::engines::{Engines, Work};
use super::super::{
    AudioCache, CacheMeta, EngineConfig, MusicSpec, Resolved, Section, Span, Stage,
};
use crate::audio::Audio;
use crate::error::{Error, Result};

/// Length of the crossfades at a section's ends, seconds.
pub const SECTION_XFADE_S: f64 = 0.03;

/// A piece's bars: its tempo and where one of its bars starts (seconds of
/// the piece), each when known.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Grid {
    pub bpm: Option<f64>,
    pub downbeat: Option<f64>,
}

/// The piece of `resolved` with its sections, and its bars.
pub(super) fn make(
    resolved: &Resolved,
    config: &EngineConfig,
    cache: Option<&AudioCache>,
    engines: &mut Engines,
    cancel: &AtomicBool,
    progress: &(dyn Fn(Stage, f64) + Sync),
) -> Result<(Arc<Audio>, Grid)> {
    let spec = &resolved.spec;
    // Made before (an undo, or an edit made again): as it was.
    if let Some((audio, meta)) = cache.and_then(|c| c.get(&spec.key()))
        && audio.sample_rate == spec.sample_rate
    {
        let grid = Grid {
            bpm: meta.bpm,
            downbeat: meta.downbeat,
        };
        return Ok((Arc::new(audio), grid));
    }
    let Some((&last, earlier)) = spec.sections.split_last() else {
        return plain(resolved, config, cache, engines, cancel, progress);
    };
    // The piece as it was before this edit (itself cached).
    let mut before = resolved.clone();
    before.spec.sections = earlier.to_vec();
    let (base, grid) = make(&before, config, cache, engines, cancel, progress)?;
    let rate = f64::from(spec.sample_rate);
    let (start, end) = on_bars(
        last,
        spec,
        grid.bpm,
        grid.downbeat,
        base.len() as f64 / rate,
    );
    if end - start < 1.0 / rate {
        return Ok((base, grid));
    }
    // The stretch made again: the same music, other seed, that span only.
    let mut again = resolved.clone();
    again.spec.sections.clear();
    again.spec.seed = last.seed;
    let video_at = |t: f64| spec.span.start + t * spec.playrate;
    again.spec.span = Span {
        start: video_at(start),
        end: video_at(end),
    };
    let (fresh, _) = make(&again, config, cache, engines, cancel, progress)?;
    let from = (start * rate).round() as usize;
    let to = ((end * rate).round() as usize).min(base.len());
    let audio = splice(&base, &fresh, from, to, (SECTION_XFADE_S * rate) as usize);
    let audio = Arc::new(audio);
    store(cache, spec, &audio, grid, engines);
    Ok((audio, grid))
}

/// Caches the piece of `spec`. A cache that cannot be written costs speed
/// next time, not this result.
fn store(
    cache: Option<&AudioCache>,
    spec: &MusicSpec,
    audio: &Audio,
    grid: Grid,
    engines: &Engines,
) {
    if let Some(c) = cache {
        let meta = CacheMeta {
            engine: spec.engine.choice.as_str().to_string(),
            bpm: grid.bpm,
            downbeat: grid.downbeat,
            device: engines.device_note(spec.engine.choice),
        };
        let _ = c.put(&spec.key(), audio, &meta);
    }
}

/// A section's ends moved out to the bar lines of the music (the tempo and
/// bar start it was made with, else the spec's; the spec's meter), within
/// the piece's `seconds`.
pub(crate) fn on_bars(
    s: Section,
    spec: &MusicSpec,
    bpm: Option<f64>,
    downbeat: Option<f64>,
    seconds: f64,
) -> (f64, f64) {
    let (mut start, mut end) = (s.start.max(0.0), s.end.min(seconds));
    if let Some(bpm) = bpm.or(spec.tempo).filter(|b| *b > 0.0) {
        let bar = spec.meter.bar(bpm);
        let down = downbeat.or(spec.downbeat).unwrap_or(0.0);
        // A hair of slack so an end already on a bar stays there.
        start = down + ((start - down) / bar + 1e-9).floor() * bar;
        end = down + ((end - down) / bar - 1e-9).ceil() * bar;
    }
    (start.max(0.0), end.min(seconds))
}

/// `base` with frames `from..to` taken from `fresh` (which starts at
/// `from`), faded in over `xfade` frames after `from` and out over the
/// `xfade` before `to`.
pub(crate) fn splice(base: &Audio, fresh: &Audio, from: usize, to: usize, xfade: usize) -> Audio {
    let mut out = base.clone();
    let n = to.saturating_sub(from);
    let xfade = xfade.min(n / 2);
    let ramp = |k: usize| ((k as f64 + 0.5) / xfade as f64 * std::f64::consts::FRAC_PI_2).sin();
    for (o, f) in out.channels.iter_mut().zip(&fresh.channels) {
        for (i, &new) in f.iter().take(n).enumerate() {
            // Equal-power crossfades, inside the section: the new music's
            // weight is sin θ, the old one's cos θ.
            let w = if i < xfade {
                ramp(i)
            } else if i >= n - xfade {
                ramp(n - 1 - i)
            } else {
                1.0
            };
            let old = f64::from(o[from + i]);
            o[from + i] = if w >= 1.0 {
                new
            } else {
                (old * (1.0 - w * w).sqrt() + f64::from(new) * w) as f32
            };
        }
    }
    out
}

/// A piece without sections, made (not streamed) and cached.
fn plain(
    resolved: &Resolved,
    config: &EngineConfig,
    cache: Option<&AudioCache>,
    engines: &mut Engines,
    cancel: &AtomicBool,
    progress: &(dyn Fn(Stage, f64) + Sync),
) -> Result<(Arc<Audio>, Grid)> {
    let spec = &resolved.spec;
    let mut sink = |_: &Audio, _: bool| -> Result<()> { Ok(()) };
    let made = engines.make(Work::new(resolved, config, cancel, progress, &mut sink))?;
    let mut audio = made.audio;
    let seconds = spec.span.music_seconds(spec.playrate);
    if !seconds.is_finite() {
        return Err(Error::InvalidSetting(format!("a piece of {seconds} s")));
    }
    audio.fit_to((seconds * f64::from(spec.sample_rate)).round() as usize);
    let audio = Arc::new(audio);
    let grid = Grid {
        bpm: made.bpm,
        downbeat: made.downbeat,
    };
    store(cache, spec, &audio, grid, engines);
    Ok((audio, grid))
}
