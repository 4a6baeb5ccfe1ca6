//! A tempo (and beat phase) for which the video's cuts fall on beats.

use serde::Serialize;

#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct TempoSuggestion {
    pub bpm: f64,
    /// Time of a beat, seconds (the grid is `phase + k · 60 / bpm`).
    pub phase: f64,
    /// Share of cuts within ±60 ms of a beat on this grid.
    pub cut_fit: f64,
}

const TOLERANCE: f64 = 0.06;

/// Share of `cuts` within the tolerance of a beat of the grid.
pub fn grid_fit(cuts: &[f64], bpm: f64, phase: f64) -> f64 {
    if cuts.is_empty() {
        return 1.0;
    }
    let p = 60.0 / bpm;
    let hits = cuts
        .iter()
        .filter(|&&c| {
            let x = (c - phase).rem_euclid(p);
            x.min(p - x) <= TOLERANCE
        })
        .count();
    hits as f64 / cuts.len() as f64
}

/// Like [`grid_fit`] but graded: a cut right on a beat counts more than one
/// at the edge of the tolerance, so exact tempi win over near ones.
fn soft_fit(cuts: &[f64], period: f64, phase: f64) -> f64 {
    let sum: f64 = cuts
        .iter()
        .map(|&c| {
            let x = (c - phase).rem_euclid(period);
            let d = x.min(period - x);
            if d <= TOLERANCE {
                (-(d / (TOLERANCE / 2.0)).powi(2)).exp()
            } else {
                0.0
            }
        })
        .sum();
    sum / cuts.len() as f64
}

/// Picks a tempo in [`min_bpm`, `max_bpm`] and phase that land the most cuts
/// on beats beyond what chance would, nudged towards `preferred_bpm` (from
/// the motion energy) when cuts do not decide.
pub fn suggest_tempo(
    cuts: &[f64],
    preferred_bpm: f64,
    min_bpm: f64,
    max_bpm: f64,
) -> TempoSuggestion {
    let preferred = preferred_bpm.clamp(min_bpm, max_bpm);
    if cuts.len() < 2 {
        let phase = cuts.first().copied().unwrap_or(0.0);
        return TempoSuggestion {
            bpm: preferred.round(),
            phase,
            cut_fit: 1.0,
        };
    }
    let mut best = (f64::NEG_INFINITY, preferred, cuts[0], 0.0);
    let mut bpm = min_bpm;
    while bpm <= max_bpm + 1e-9 {
        let p = 60.0 / bpm;
        let chance = (2.0 * TOLERANCE / p).min(1.0);
        // Anchoring the grid on each cut in turn covers every phase that
        // can put some cut exactly on a beat.
        for &anchor in cuts {
            let fit = soft_fit(cuts, p, anchor);
            let prior = 0.15 * (-((bpm - preferred) / 25.0).powi(2)).exp();
            let score = (fit - chance) / (1.0 - chance) + prior;
            if score > best.0 + 1e-9 {
                best = (score, bpm, anchor, grid_fit(cuts, bpm, anchor));
            }
        }
        bpm += 0.5;
    }
    TempoSuggestion {
        bpm: best.1,
        phase: best.2.rem_euclid(60.0 / best.1),
        cut_fit: best.3,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_tempo_of_regular_cuts() {
        // Cuts every 2 beats at 120 BPM, starting at 0.3 s.
        let cuts: Vec<f64> = (0..12).map(|k| 0.3 + k as f64).collect();
        let s = suggest_tempo(&cuts, 100.0, 70.0, 160.0);
        assert!(s.cut_fit >= 0.99, "{s:?}");
        // Any tempo with a beat every second fits (60, 120); 120 is in range.
        assert!((s.bpm - 120.0).abs() < 0.01, "{s:?}");
        assert!((s.phase - 0.3).abs() < 1e-6, "{s:?}");
    }

    #[test]
    fn few_cuts_use_preference() {
        let s = suggest_tempo(&[1.0], 97.3, 70.0, 160.0);
        assert_eq!(s.bpm, 97.0);
        assert_eq!(s.phase, 1.0);
    }
}
