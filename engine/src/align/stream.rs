//! Aligning music while it is generated, so a long piece is heard window by
//! window instead of when it is whole.
//!
//! Every [`STEP_S`] of new music, the beats of the last stretch are tracked
//! again and the map is planned from the last committed anchor to the
//! piece's end, pinned there, so every anchor it keeps leaves the end
//! reachable within the speed bounds (the drift between the music's tempo
//! and the grid's can never pile up past what the last stretch may take
//! up). Only the anchors whose source lies a beat behind the trustworthy
//! edge of the tracked music are committed: a beat found in the last second
//! heard may still move once the music after it is known, and a cut just
//! past the committed map gets its chance again with more music. The
//! warper then plays what the committed map covers.
//!
//! The opening is the exception: no beat in the first second or two can be
//! trusted, and the first sound should not wait for music that can. Once
//! [`OPENING_S`] has arrived, everything heard so far is committed as made
//! (speed 1, which is what reaches the end from the start), stopping
//! [`OPENING_CUT_CLEARANCE_S`] before the first cut so that the cut still
//! gets its beat; the plans take over from there.

use super::Target;
use super::beats::{BeatTrack, track_beats_mono};
use super::plan::{Anchor, AnchorKind, MAX_RATIO, MIN_RATIO, Span, TimeMap, plan_span};
use super::warp::Warper;

/// Seconds of music before the committed map that are tracked again with
/// the new music, so the tracker has context to find the pulse in.
const HISTORY_S: f64 = 10.0;
/// The last second of the music so far: beats found there are not used.
const EDGE_S: f64 = 1.0;
/// Seconds of new music between plans.
const STEP_S: f64 = 2.0;
/// Seconds of music before the first plan, which commits the opening: a
/// little under what the neural engines hand over first (so their first
/// piece is heard at once), at least what the master sets its level from.
const OPENING_S: f64 = 1.5;
/// The opening, played as made, ends at least this long before the first
/// cut, leaving the plan room to bring a beat onto the cut within the
/// speed bounds.
const OPENING_CUT_CLEARANCE_S: f64 = 1.0;
/// An opening shorter than this is not committed: it would gain nothing.
const MIN_OPENING_S: f64 = 0.25;

/// Mono music aligned to a [`Target`] as it arrives.
pub struct StreamAligner {
    target: Target,
    rate: u32,
    /// Frames of the piece, in and out.
    len: usize,
    /// The music so far (at most `len` frames).
    source: Vec<f32>,
    warper: Warper,
    /// The last committed anchor, (output, source) seconds.
    committed: (f64, f64),
    /// Source frames when the map was last planned.
    planned_at: usize,
    /// Frames handed out, when nothing is warped.
    passed: usize,
}

impl StreamAligner {
    /// An aligner for a piece of `len` frames at `sample_rate`.
    pub fn new(sample_rate: u32, len: usize, target: Target) -> Self {
        let rate = sample_rate.max(1);
        let mut warper = Warper::new(rate, 1);
        warper.set_accents(&target.cuts, target.accent_gain(), target.ceiling_dbtp);
        Self {
            target,
            rate,
            len,
            source: Vec::new(),
            warper,
            committed: (0.0, 0.0),
            planned_at: 0,
            passed: 0,
        }
    }

    /// Takes the next music and returns the aligned frames now final.
    pub fn push(&mut self, mono: &[f32]) -> Vec<f32> {
        let room = self.len - self.source.len().min(self.len);
        let mono = &mono[..mono.len().min(room)];
        if self.target.untouched() {
            // Strength 0: the music as it is, bit for bit.
            self.source.extend_from_slice(mono);
            self.passed += mono.len();
            return mono.to_vec();
        }
        self.source.extend_from_slice(mono);
        self.warper.push_source(&[mono.to_vec()]);
        let due = if self.planned_at == 0 {
            OPENING_S
        } else {
            STEP_S
        };
        if self.source.len() >= self.planned_at + (due * f64::from(self.rate)) as usize {
            self.planned_at = self.source.len();
            self.plan(false);
        }
        self.warper.pull().into_iter().next().unwrap_or_default()
    }

    /// Ends the piece: the rest of the aligned music, so that everything
    /// handed out is exactly `len` frames.
    pub fn finish(mut self) -> Vec<f32> {
        if self.target.untouched() {
            return vec![0.0; self.len - self.passed.min(self.len)];
        }
        self.plan(true);
        self.warper
            .finish(self.len)
            .into_iter()
            .next()
            .unwrap_or_default()
    }

    /// Plans the map on from the committed anchor with the beats known now;
    /// `last` plans to the end and commits all of it.
    fn plan(&mut self, last: bool) {
        let rate = f64::from(self.rate);
        let total = self.len as f64 / rate;
        let heard = self.source.len() as f64 / rate;
        let edge = if last { heard } else { heard - EDGE_S };
        let (out0, src0) = self.committed;
        if (!last && edge <= src0) || out0 >= total {
            return;
        }
        let from = ((src0 - HISTORY_S).max(0.0) * rate) as usize;
        let mut beats =
            track_beats_mono(&self.source[from..], self.rate, self.target.bpm_clamped());
        shift(&mut beats, from as f64 / rate, edge);
        let span = Span {
            start: self.committed,
            out_end: total,
            src_end: total,
            pin_end: true,
        };
        let map = plan_span(&beats, &self.target, &span);
        if last {
            self.warper.extend_map(&map);
            return;
        }
        let limit = edge - beats.period();
        let mut commit: Vec<Anchor> = map
            .anchors()
            .iter()
            .filter(|a| a.kind != AnchorKind::End && a.out > out0 && a.src <= limit)
            .copied()
            .collect();
        if commit.is_empty() && self.committed == (0.0, 0.0) {
            // The opening: as made (from 0 → 0, speed 1 is the speed that
            // reaches the end) up to the newest music, and well before the
            // first cut.
            let first_cut = self
                .target
                .cuts
                .iter()
                .copied()
                .filter(|c| c.is_finite() && *c > 0.0)
                .fold(f64::INFINITY, f64::min);
            let out = heard.min(first_cut - OPENING_CUT_CLEARANCE_S);
            if out >= MIN_OPENING_S && out < total {
                commit.push(Anchor {
                    out,
                    src: out,
                    kind: AnchorKind::Start,
                });
            }
        }
        if commit.is_empty() && limit - src0 > 2.0 * STEP_S {
            // No beat to hold on to (music without a pulse): go on at the
            // speed that reaches the end, so the music still streams.
            let speed = ((total - src0) / (total - out0)).clamp(MIN_RATIO, MAX_RATIO);
            let out = out0 + (limit - src0) / speed;
            if out < total {
                commit.push(Anchor {
                    out,
                    src: limit,
                    kind: AnchorKind::Start,
                });
            }
        }
        if let Some(a) = commit.last() {
            self.committed = (a.out, a.src);
            self.warper.extend_map(&TimeMap::new(commit));
        }
    }
}

/// Moves beats tracked from `offset` seconds on into the piece's time,
/// keeping those before `edge`.
fn shift(beats: &mut BeatTrack, offset: f64, edge: f64) {
    let keep = |times: &mut Vec<f64>, strengths: &mut Vec<f32>| {
        let (t, s): (Vec<f64>, Vec<f32>) = times
            .iter()
            .map(|t| t + offset)
            .zip(strengths.iter().copied())
            .filter(|(t, _)| *t < edge)
            .unzip();
        *times = t;
        *strengths = s;
    };
    keep(&mut beats.times, &mut beats.strengths);
    keep(&mut beats.onsets, &mut beats.onset_strengths);
}
