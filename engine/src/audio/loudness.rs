//! Loudness normalisation to an integrated target (EBU R128, measured with
//! `ebur128`) under a true-peak ceiling, with a look-ahead peak limiter for
//! the peaks that the gain would push past it.

use std::collections::VecDeque;

use ebur128::{EbuR128, Mode};
use serde::Serialize;

use super::Audio;
use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, Serialize)]
pub struct LoudnessReport {
    /// Integrated loudness, LUFS.
    pub integrated_lufs: f64,
    /// Maximum true peak over the channels, dBTP.
    pub true_peak_dbtp: f64,
}

pub fn measure(audio: &Audio) -> Result<LoudnessReport> {
    let mut m = EbuR128::new(
        audio.channels.len() as u32,
        audio.sample_rate,
        Mode::I | Mode::TRUE_PEAK,
    )
    .map_err(|e| Error::InvalidSetting(format!("loudness meter: {e}")))?;
    let planes: Vec<&[f32]> = audio.channels.iter().map(Vec::as_slice).collect();
    m.add_frames_planar_f32(&planes)
        .map_err(|e| Error::InvalidSetting(format!("loudness meter: {e}")))?;
    let integrated_lufs = m.loudness_global().unwrap_or(f64::NEG_INFINITY);
    let mut tp = 0.0f64;
    for c in 0..audio.channels.len() {
        tp = tp.max(m.true_peak(c as u32).unwrap_or(0.0));
    }
    Ok(LoudnessReport {
        integrated_lufs,
        true_peak_dbtp: 20.0 * tp.max(1e-12).log10(),
    })
}

/// Brings `audio` to `target_lufs` integrated with true peaks at or below
/// `ceiling_dbtp`. Silence is left as it is.
pub fn normalize(audio: &mut Audio, target_lufs: f64, ceiling_dbtp: f64) -> Result<LoudnessReport> {
    let mut report = measure(audio)?;
    if !report.integrated_lufs.is_finite() {
        return Ok(report);
    }
    let ceiling = db_to_gain(ceiling_dbtp);
    for round in 0..12 {
        apply_gain(audio, db_to_gain(target_lufs - report.integrated_lufs));
        report = measure(audio)?;
        if report.true_peak_dbtp <= ceiling_dbtp {
            return Ok(report);
        }
        // Sample peaks under a margin that grows each round, since the
        // true (inter-sample) peak can exceed the sample peak.
        let margin_db = 0.3 + 0.1 * f64::from(round);
        limit(
            audio,
            (ceiling * db_to_gain(-margin_db)) as f32,
            0.003,
            0.06,
        );
        report = measure(audio)?;
    }
    if report.true_peak_dbtp > ceiling_dbtp {
        apply_gain(
            audio,
            db_to_gain(ceiling_dbtp - report.true_peak_dbtp - 0.05),
        );
        report = measure(audio)?;
    }
    Ok(report)
}

fn db_to_gain(db: f64) -> f64 {
    10f64.powf(db / 20.0)
}

fn apply_gain(audio: &mut Audio, g: f64) {
    let g = g as f32;
    for c in &mut audio.channels {
        c.iter_mut().for_each(|x| *x *= g);
    }
}

/// Offline look-ahead limiter: the gain reaches its target before each peak
/// (no overshoot) and recovers exponentially with `release_s`.
fn limit(audio: &mut Audio, ceiling: f32, lookahead_s: f64, release_s: f64) {
    let n = audio.len();
    let la = ((lookahead_s * f64::from(audio.sample_rate)) as usize).max(1);
    let required: Vec<f32> = (0..n)
        .map(|i| {
            let p = audio.channels.iter().fold(0.0f32, |m, c| m.max(c[i].abs()));
            if p > ceiling { ceiling / p } else { 1.0 }
        })
        .collect();
    // Minimum of `required` over [i, i + la]: a monotone deque.
    let mut ahead = vec![1.0f32; n];
    let mut dq: VecDeque<usize> = VecDeque::new();
    for j in (0..n).rev() {
        while dq.back().is_some_and(|&k| required[k] >= required[j]) {
            dq.pop_back();
        }
        dq.push_back(j);
        while dq.front().is_some_and(|&k| k > j + la) {
            dq.pop_front();
        }
        ahead[j] = required[*dq.front().expect("PANIC: j was just pushed")];
    }
    let r = (1.0 - (-1.0 / (release_s * f64::from(audio.sample_rate))).exp()) as f32;
    let mut env = 1.0f32;
    for g in ahead.iter_mut() {
        env = (env + r * (1.0 - env)).min(*g);
        *g = env;
    }
    // A moving average over the look-ahead turns the instant attack into a
    // ramp; every value averaged at a peak is already at or below its need.
    let mut sum = 0.0f64;
    let mut smooth = vec![1.0f32; n];
    for i in 0..n {
        sum += f64::from(ahead[i]);
        if i >= la {
            sum -= f64::from(ahead[i - la]);
        }
        let count = (i + 1).min(la);
        // Before `la` samples the window is padded with the first gain, which
        // covers every peak in the first look-ahead.
        smooth[i] = ((sum + (la - count) as f64 * f64::from(ahead[0])) / la as f64) as f32;
    }
    for c in &mut audio.channels {
        for (x, g) in c.iter_mut().zip(&smooth) {
            *x *= g;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noise_bursts(rate: u32, secs: f64) -> Audio {
        let n = (secs * f64::from(rate)) as usize;
        let mut s = 12345u32;
        let mut ch = vec![0.0f32; n];
        for (i, x) in ch.iter_mut().enumerate() {
            s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let white = (s >> 8) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0;
            // A loud click every half second over quiet noise: peaky material.
            let click = if i % (rate as usize / 2) < 40 {
                0.9
            } else {
                0.0
            };
            *x = 0.05 * white + click;
        }
        Audio {
            sample_rate: rate,
            channels: vec![ch.clone(), ch],
        }
    }

    #[test]
    fn normalises_peaky_material_to_target_under_ceiling() {
        let mut a = noise_bursts(48_000, 6.0);
        let r = normalize(&mut a, -14.0, -1.0).unwrap();
        assert!((r.integrated_lufs + 14.0).abs() < 0.5, "{r:?}");
        assert!(r.true_peak_dbtp <= -1.0, "{r:?}");
    }

    #[test]
    fn silence_stays_silent() {
        let mut a = Audio::silence(48_000, 2, 48_000);
        let r = normalize(&mut a, -14.0, -1.0).unwrap();
        assert!(!r.integrated_lufs.is_finite());
        assert_eq!(a.peak(), 0.0);
    }
}
