//! Cuts (peaks of the rhythm curve), motion energy and scene changes.

use serde::Serialize;

#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Cut {
    /// Seconds: the first analysis frame of the new shot.
    pub time: f64,
    /// d_t at the cut.
    pub strength: f32,
}

#[derive(Debug, Clone, Copy)]
pub struct CutConfig {
    /// Frames on each side used for the local baseline.
    pub window: usize,
    /// A cut's d must exceed `ratio` × the local baseline …
    pub ratio: f32,
    /// … and the baseline by at least this much.
    pub min_jump: f32,
    /// Minimum spacing between cuts, seconds.
    pub min_gap: f64,
}

impl Default for CutConfig {
    fn default() -> Self {
        Self {
            window: 12,
            ratio: 3.0,
            min_jump: 0.04,
            min_gap: 0.2,
        }
    }
}

impl CutConfig {
    /// Side (pixels) below which [`CutConfig::for_frame`] raises the jump.
    const SMALL_SIDE: f32 = 32.0;

    /// The defaults for pictures `width × height` pixels. On a small picture
    /// a patch of the 7×7 grid is a few source pixels (2.3 at 16 px), so a
    /// shape moving by one pixel changes a large share of a patch: inside a
    /// shot the curve sits at exactly 0 while nothing crosses a pixel, then
    /// jumps by up to ~0.04 when something does. Against a baseline of 0 the
    /// ratio test passes anything, and such a step passed the default jump as
    /// a cut. That step shrinks as 1/side, so below 32 px the jump a cut needs
    /// grows as 1/side too (0.08 at 16 px); cuts, which change every patch,
    /// measure 0.1 and more at every size.
    pub fn for_frame(width: u32, height: u32) -> Self {
        let side = width.min(height).max(1) as f32;
        let d = Self::default();
        Self {
            min_jump: d.min_jump * (Self::SMALL_SIDE / side).max(1.0),
            ..d
        }
    }
}

fn median(v: &mut [f32]) -> f32 {
    if v.is_empty() {
        return 0.0;
    }
    let mid = v.len() / 2;
    let (_, m, _) = v.select_nth_unstable_by(mid, f32::total_cmp);
    *m
}

/// Local baseline at each frame: the median of its neighbours (itself
/// excluded), so a one-frame spike stands out against it.
fn baseline(d: &[f32], window: usize) -> Vec<f32> {
    let mut buf = Vec::with_capacity(2 * window);
    (0..d.len())
        .map(|t| {
            buf.clear();
            let lo = t.saturating_sub(window).max(1);
            let hi = (t + window + 1).min(d.len());
            buf.extend((lo..hi).filter(|&k| k != t).map(|k| d[k]));
            median(&mut buf)
        })
        .collect()
}

/// Cuts in a rhythm curve sampled at `rate` Hz (d_0, the start, is never a cut).
pub fn detect_cuts(d: &[f32], rate: f64, cfg: &CutConfig) -> Vec<Cut> {
    let base = baseline(d, cfg.window);
    let gap = (cfg.min_gap * rate).ceil() as usize;
    let mut candidates: Vec<(usize, f32)> = (1..d.len())
        .filter(|&t| d[t] > base[t] * cfg.ratio && d[t] - base[t] > cfg.min_jump)
        .map(|t| (t, d[t] - base[t]))
        .collect();
    // Strongest first, so a weaker neighbour within the gap yields.
    candidates.sort_by(|a, b| b.1.total_cmp(&a.1));
    let mut taken: Vec<usize> = Vec::new();
    for (t, _) in candidates {
        if taken.iter().all(|&k| k.abs_diff(t) >= gap.max(1)) {
            taken.push(t);
        }
    }
    taken.sort_unstable();
    taken
        .into_iter()
        .map(|t| Cut {
            time: t as f64 / rate,
            strength: d[t],
        })
        .collect()
}

/// Motion energy: the rhythm curve with cut spikes replaced by their local
/// baseline, smoothed over `smooth_s` seconds.
pub fn motion_energy(d: &[f32], cuts: &[Cut], rate: f64, smooth_s: f64) -> Vec<f32> {
    let base = baseline(d, 6);
    let mut m: Vec<f32> = d.to_vec();
    if let Some(first) = m.first_mut() {
        *first = base.first().copied().unwrap_or(0.0);
    }
    for c in cuts {
        let t = (c.time * rate).round() as usize;
        if t < m.len() {
            m[t] = base[t];
        }
    }
    let half = ((smooth_s * rate) / 2.0).round() as usize;
    let mut prefix = vec![0.0f64; m.len() + 1];
    for (i, &v) in m.iter().enumerate() {
        prefix[i + 1] = prefix[i] + f64::from(v);
    }
    (0..m.len())
        .map(|i| {
            let lo = i.saturating_sub(half);
            let hi = (i + half + 1).min(m.len());
            ((prefix[hi] - prefix[lo]) / (hi - lo) as f64) as f32
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_pixel_steps_on_tiny_pictures_are_not_cuts() {
        // A 16×16 shot: still between pixel crossings, then a one-pixel step
        // of a shape's edge (measured: up to 0.042), and a real cut (≥ 0.1).
        let mut d = vec![0.0f32; 150];
        d[0] = 1.0;
        d[40] = 0.011;
        d[60] = 0.042;
        d[100] = 0.104;
        let times = |cfg: &CutConfig| -> Vec<f64> {
            detect_cuts(&d, 25.0, cfg).iter().map(|c| c.time).collect()
        };
        assert_eq!(
            times(&CutConfig::default()),
            vec![2.4, 4.0],
            "the old false cut"
        );
        assert_eq!(times(&CutConfig::for_frame(16, 16)), vec![4.0]);
        // From 32 px on, the defaults.
        assert_eq!(
            CutConfig::for_frame(1920, 1080).min_jump,
            CutConfig::default().min_jump
        );
        assert_eq!(
            CutConfig::for_frame(64, 32).min_jump,
            CutConfig::default().min_jump
        );
    }

    #[test]
    fn spikes_are_cuts_and_motion_is_not() {
        let mut d = vec![0.01f32; 200];
        d[0] = 1.0;
        // A burst of motion: elevated but sustained.
        for v in &mut d[100..140] {
            *v = 0.08;
        }
        d[50] = 0.6;
        d[120] = 0.5;
        d[170] = 0.3;
        let cuts = detect_cuts(&d, 25.0, &CutConfig::default());
        let times: Vec<f64> = cuts.iter().map(|c| c.time).collect();
        assert_eq!(times, vec![2.0, 4.8, 6.8]);
        let m = motion_energy(&d, &cuts, 25.0, 0.5);
        assert!(m[120] > 0.05 && m[50] < 0.03, "{} {}", m[120], m[50]);
    }
}
