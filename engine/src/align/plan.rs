//! The warp plan: a monotonic piecewise-linear map from output time to
//! source time whose anchors put the music's beats on the target grid and
//! an accent of the music on every cut.
//!
//! Grid beats are matched in order: each is paired with the detected beat
//! nearest where the music's own tempo, from the last match, says it should
//! be (within half a beat), so a slow drift never makes the pairing skip a
//! beat. A cut is paired with the nearest strong beat or onset within half a
//! beat of where the grid pairs put it. Anchors are then kept greedily —
//! cuts first, then downbeats, then the other beats — whenever both
//! segments they make stay within [`MIN_RATIO`]–[`MAX_RATIO`] of source time
//! per output time. The map ends where the span says (the whole piece:
//! length → length, so the output has the input's length); when the music's
//! tempo differs from the grid's, the stretch before that end, where no grid
//! anchor fits, takes up the difference.

use serde::Serialize;

use super::Target;
use super::beats::BeatTrack;

/// Slowest and fastest local playback speed (source seconds per output
/// second): about a fourth down or up in tempo, past which the stretcher's
/// smearing becomes audible.
pub const MIN_RATIO: f64 = 0.75;
pub const MAX_RATIO: f64 = 1.33;
/// Anchors closer than this in output time are one anchor (seconds).
const MIN_GAP: f64 = 0.02;
/// How far (beats) from where the grid puts a cut an accent may be taken
/// for it: a little over half, so a cut exactly between two beats still
/// finds one.
const CUT_REACH: f64 = 0.55;
/// Beats and onsets weaker than this (0–1) do not take a cut.
const MIN_CUT_STRENGTH: f32 = 0.3;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum AnchorKind {
    /// Where the span starts (0 → 0 for a whole piece).
    Start,
    /// A grid beat that starts a bar.
    Downbeat,
    Beat,
    Cut,
    /// Where the span ends (length → length for a whole piece).
    End,
}

/// Output time `out` plays source time `src` (seconds).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Anchor {
    pub out: f64,
    pub src: f64,
    pub kind: AnchorKind,
}

/// Anchors strictly increasing in both times; linear between them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TimeMap {
    anchors: Vec<Anchor>,
}

impl TimeMap {
    /// No warp over `duration` seconds.
    pub fn identity(duration: f64) -> Self {
        let d = if duration.is_finite() {
            duration.max(0.0)
        } else {
            0.0
        };
        let mut anchors = vec![Anchor {
            out: 0.0,
            src: 0.0,
            kind: AnchorKind::Start,
        }];
        if d > 0.0 {
            anchors.push(Anchor {
                out: d,
                src: d,
                kind: AnchorKind::End,
            });
        }
        Self { anchors }
    }

    /// A map from anchors; drops those that are not finite or would not
    /// keep both times increasing.
    pub fn new(anchors: impl IntoIterator<Item = Anchor>) -> Self {
        let mut kept: Vec<Anchor> = Vec::new();
        for a in anchors {
            let fits = a.out.is_finite()
                && a.src.is_finite()
                && kept.last().is_none_or(|l| a.out > l.out && a.src > l.src);
            if fits {
                kept.push(a);
            }
        }
        Self { anchors: kept }
    }

    pub fn anchors(&self) -> &[Anchor] {
        &self.anchors
    }

    /// True when every anchor plays its own time.
    pub fn is_identity(&self) -> bool {
        self.anchors.iter().all(|a| a.out == a.src)
    }

    /// The source time played at output time `out` (held at the ends).
    pub fn src_at(&self, out: f64) -> f64 {
        interpolate(&self.anchors, out, 1.0)
    }
}

/// What a plan covers: from `start` (an anchor already fixed: 0 → 0, or
/// where the previous window's map ended) up to output time `out_end`,
/// using source up to `src_end`. `pin_end` makes the map end exactly at
/// `out_end → src_end` (the last window of a piece); otherwise it ends at
/// its last anchor, and the next window goes on from there.
#[derive(Debug, Clone, Copy)]
pub struct Span {
    pub start: (f64, f64),
    pub out_end: f64,
    pub src_end: f64,
    pub pin_end: bool,
}

impl Span {
    /// A whole piece of `duration` seconds: 0 → 0 to length → length.
    pub fn whole(duration: f64) -> Self {
        Self {
            start: (0.0, 0.0),
            out_end: duration,
            src_end: duration,
            pin_end: true,
        }
    }
}

/// The map for a whole piece of `duration` seconds.
pub fn plan(beats: &BeatTrack, target: &Target, duration: f64) -> TimeMap {
    plan_span(beats, target, &Span::whole(duration))
}

/// The map for one span (see [`Span`]); `beats` in source seconds.
pub fn plan_span(beats: &BeatTrack, target: &Target, span: &Span) -> TimeMap {
    let (o0, s0) = span.start;
    let start = Anchor {
        out: o0,
        src: s0,
        kind: AnchorKind::Start,
    };
    let end = Anchor {
        out: span.out_end,
        src: span.src_end,
        kind: AnchorKind::End,
    };
    let valid = [o0, s0, span.out_end, span.src_end]
        .iter()
        .all(|v| v.is_finite())
        && span.out_end > o0
        && span.src_end > s0;
    let strength = target.rhythm_strength;
    if !valid || strength.is_nan() || strength <= 0.0 || beats.times.is_empty() {
        return TimeMap::new([start].into_iter().chain(span.pin_end.then_some(end)));
    }
    let grid_s = 60.0 / target.bpm_clamped();
    let period = beats.period();
    let speed = (period / grid_s).clamp(MIN_RATIO, MAX_RATIO);
    let inside = |a: &Anchor| {
        a.out > o0 + MIN_GAP && a.out < span.out_end - MIN_GAP && a.src > s0 && a.src < span.src_end
    };

    // Grid beats paired in order with the music's beats.
    let mut grid = Vec::new();
    let mut prev = (o0, s0);
    let bpb = i64::from(target.beats_per_bar.max(1));
    let downbeat = if target.downbeat.is_finite() {
        target.downbeat
    } else {
        0.0
    };
    let first = ((o0 - downbeat) / grid_s).ceil() as i64;
    let last = ((span.out_end - downbeat) / grid_s).floor() as i64;
    for k in first..=last.min(first + 100_000) {
        let g = downbeat + k as f64 * grid_s;
        let expected = prev.1 + (g - prev.0) * speed;
        let Some(b) = nearest(&beats.times, expected, 0.5 * period) else {
            continue;
        };
        let kind = if k.rem_euclid(bpb) == 0 {
            AnchorKind::Downbeat
        } else {
            AnchorKind::Beat
        };
        let a = Anchor {
            out: g,
            src: b,
            kind,
        };
        if inside(&a) && b > prev.1 {
            grid.push(a);
            prev = (g, b);
        }
    }

    let mut kept = vec![start];
    if span.pin_end {
        kept.push(end);
    }

    // Cuts, in time order, each paired with the nearest strong accent of
    // the music around where the grid pairs put it, among the source
    // times the anchors already kept leave reachable within the speed
    // bounds (near a pinned end, that may be a beat earlier than the
    // grid would say: the stretch there takes up the tempo difference).
    let mut guide = vec![start];
    guide.extend(grid.iter().copied());
    let mut cut_times: Vec<f64> = target
        .cuts
        .iter()
        .copied()
        .filter(|c| c.is_finite())
        .collect();
    cut_times.sort_by(f64::total_cmp);
    let accents: Vec<(f64, f32)> = beats
        .times
        .iter()
        .zip(&beats.strengths)
        .chain(beats.onsets.iter().zip(&beats.onset_strengths))
        .filter(|(_, s)| **s >= MIN_CUT_STRENGTH)
        .map(|(t, s)| (*t, *s))
        .collect();
    for c in cut_times {
        let i = kept.partition_point(|k| k.out < c);
        let (lo, hi) = reachable(&kept, i, c);
        let expected = interpolate(&guide, c, speed).clamp(lo, hi.max(lo));
        let best = accents
            .iter()
            .filter(|(t, _)| (t - expected).abs() <= CUT_REACH * period && (lo..=hi).contains(t))
            .min_by(|a, b| {
                let cost = |(t, s): (f64, f32)| (t - expected).abs() / period - 0.2 * f64::from(s);
                cost(**a).total_cmp(&cost(**b))
            });
        if let Some(&(t, _)) = best {
            let a = Anchor {
                out: c,
                src: t,
                kind: AnchorKind::Cut,
            };
            if inside(&a) {
                try_insert(&mut kept, a);
            }
        }
    }

    for kind in [AnchorKind::Downbeat, AnchorKind::Beat] {
        for a in grid.iter().filter(|a| a.kind == kind) {
            try_insert(&mut kept, *a);
        }
    }
    TimeMap::new(kept)
}

/// The source times output time `c` may take between the kept anchors
/// around it (`i` is where it would go) without a segment leaving the
/// speed bounds.
fn reachable(kept: &[Anchor], i: usize, c: f64) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::NEG_INFINITY, f64::INFINITY);
    if let Some(p) = i.checked_sub(1).and_then(|j| kept.get(j)) {
        lo = lo.max(p.src + (c - p.out) * MIN_RATIO);
        hi = hi.min(p.src + (c - p.out) * MAX_RATIO);
    }
    if let Some(n) = kept.get(i) {
        lo = lo.max(n.src - (n.out - c) * MAX_RATIO);
        hi = hi.min(n.src - (n.out - c) * MIN_RATIO);
    }
    (lo, hi)
}

/// Inserts `a` into the sorted `kept` if both segments it makes keep their
/// speed within bounds and it is not too close to an anchor already there.
fn try_insert(kept: &mut Vec<Anchor>, a: Anchor) {
    let i = kept.partition_point(|k| k.out < a.out);
    let fits = |p: &Anchor, q: &Anchor| {
        let d = q.out - p.out;
        d >= MIN_GAP && (MIN_RATIO..=MAX_RATIO).contains(&((q.src - p.src) / d))
    };
    let ok_prev = i == 0 || fits(&kept[i - 1], &a);
    let ok_next = kept.get(i).is_none_or(|n| fits(&a, n));
    if ok_prev && ok_next {
        kept.insert(i, a);
    }
}

/// The time in `times` nearest `t`, if within `tol`.
fn nearest(times: &[f64], t: f64, tol: f64) -> Option<f64> {
    times
        .iter()
        .copied()
        .filter(|x| (x - t).abs() <= tol)
        .min_by(|a, b| (a - t).abs().total_cmp(&(b - t).abs()))
}

/// Source time at output `out` through sorted anchors; past the last one
/// at speed `tail` (before the first, held).
fn interpolate(anchors: &[Anchor], out: f64, tail: f64) -> f64 {
    let i = anchors.partition_point(|a| a.out <= out);
    match (
        i.checked_sub(1).and_then(|j| anchors.get(j)),
        anchors.get(i),
    ) {
        (Some(p), Some(q)) => p.src + (q.src - p.src) * (out - p.out) / (q.out - p.out),
        (Some(p), None) => p.src + (out - p.out) * tail,
        (None, Some(q)) => q.src,
        (None, None) => out,
    }
}
