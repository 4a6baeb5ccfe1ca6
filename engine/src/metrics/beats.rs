//! Beat Coverage and Beat Hit (LORIS): onsets of the generated and of the
//! reference music are binned on a grid; coverage is the number of bins with
//! a generated onset over those with a reference onset, hit the number of
//! bins with both over those with a reference onset. LORIS bins at 1 s; a
//! finer 0.2 s grid is also in use.

use serde::Serialize;

#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct BeatScores {
    pub coverage: f64,
    pub hit: f64,
}

fn bins(onsets: &[f64], bin_s: f64, n: usize) -> Vec<bool> {
    let mut b = vec![false; n];
    for &t in onsets {
        let i = (t / bin_s).floor();
        if i >= 0.0 && (i as usize) < n {
            b[i as usize] = true;
        }
    }
    b
}

pub fn beat_scores(generated: &[f64], reference: &[f64], duration: f64, bin_s: f64) -> BeatScores {
    let n = (duration / bin_s).ceil().max(1.0) as usize;
    let g = bins(generated, bin_s, n);
    let r = bins(reference, bin_s, n);
    let total = r.iter().filter(|&&x| x).count();
    if total == 0 {
        return BeatScores {
            coverage: 0.0,
            hit: 0.0,
        };
    }
    let covered = g.iter().filter(|&&x| x).count();
    let hits = g.iter().zip(&r).filter(|(a, b)| **a && **b).count();
    BeatScores {
        coverage: covered as f64 / total as f64,
        hit: hits as f64 / total as f64,
    }
}

/// Share of `cuts` with an onset within ± `tolerance` seconds.
pub fn cut_hit_rate(onsets: &[f64], cuts: &[f64], tolerance: f64) -> f64 {
    if cuts.is_empty() {
        return 1.0;
    }
    let hit = cuts
        .iter()
        .filter(|&&c| onsets.iter().any(|&o| (o - c).abs() <= tolerance))
        .count();
    hit as f64 / cuts.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_on_a_known_case() {
        let reference = [0.1, 1.2, 2.5, 3.9];
        let generated = [0.3, 0.6, 2.1, 4.4, 4.6];
        // 1 s bins: reference in {0, 1, 2, 3}; generated in {0, 2, 4}.
        let s = beat_scores(&generated, &reference, 5.0, 1.0);
        assert_eq!(
            s,
            BeatScores {
                coverage: 0.75,
                hit: 0.5
            }
        );
        assert_eq!(
            cut_hit_rate(&generated, &[0.32, 1.0, 2.14], 0.05),
            2.0 / 3.0
        );
    }
}
