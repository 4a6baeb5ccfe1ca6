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
    Ok(LoudnessReport {
        integrated_lufs: integrated(audio)?,
        true_peak_dbtp: true_peak_db(audio)?,
    })
}

fn meter(planes: &[&[f32]], rate: u32, mode: Mode) -> Result<EbuR128> {
    let mut m = EbuR128::new(planes.len() as u32, rate, mode)
        .map_err(|e| Error::InvalidSetting(format!("loudness meter: {e}")))?;
    m.add_frames_planar_f32(planes)
        .map_err(|e| Error::InvalidSetting(format!("loudness meter: {e}")))?;
    Ok(m)
}

/// Integrated loudness, LUFS (−∞ for silence).
///
/// Long material is metered in two halves on two threads. The second meter
/// starts 300 ms before the seam (a multiple of the 100 ms hop), so its
/// first 400 ms gating block is exactly the one that follows the first
/// meter's last: together they see the same blocks as one meter would.
pub fn integrated(audio: &Audio) -> Result<f64> {
    let hop = (audio.sample_rate / 10) as usize;
    let n = audio.len();
    let global = |m: &EbuR128| m.loudness_global().unwrap_or(f64::NEG_INFINITY);
    if n < 40 * hop {
        let planes: Vec<&[f32]> = audio.channels.iter().map(Vec::as_slice).collect();
        return Ok(global(&meter(&planes, audio.sample_rate, Mode::I)?));
    }
    let seam = (n / 2 / hop) * hop;
    let first: Vec<&[f32]> = audio.channels.iter().map(|c| &c[..seam]).collect();
    let second: Vec<&[f32]> = audio
        .channels
        .iter()
        .map(|c| &c[seam - 3 * hop..])
        .collect();
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| meter(&first, audio.sample_rate, Mode::I));
        let b = meter(&second, audio.sample_rate, Mode::I);
        (a.join(), b)
    });
    let a = a.map_err(|_| Error::InvalidSetting("loudness meter thread failed".into()))??;
    let b = b?;
    Ok(EbuR128::loudness_global_multiple([&a, &b].into_iter()).unwrap_or(f64::NEG_INFINITY))
}

/// Maximum true (4× oversampled) peak over the channels, dBTP; the
/// channels are metered on their own threads.
pub fn true_peak_db(audio: &Audio) -> Result<f64> {
    let peaks: Vec<Result<f64>> = std::thread::scope(|s| {
        let handles: Vec<_> = audio
            .channels
            .iter()
            .map(|c| {
                s.spawn(move || {
                    let m = meter(&[c.as_slice()], audio.sample_rate, Mode::TRUE_PEAK)?;
                    Ok(m.true_peak(0).unwrap_or(0.0))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(Error::InvalidSetting(
                        "true-peak meter thread failed".into(),
                    ))
                })
            })
            .collect()
    });
    let mut tp = 0.0f64;
    for p in peaks {
        tp = tp.max(p?);
    }
    Ok(20.0 * tp.max(1e-12).log10())
}

/// Brings `audio` to `target_lufs` integrated with true peaks at or below
/// `ceiling_dbtp`. Silence is left as it is.
///
/// The loudness after limiting, L(g), grows with the input gain g but more
/// slowly than 1:1; the gain is found by the secant method on the original
/// signal (a few limiter passes and cheap integrated measures). The costly
/// true-peak measure only confirms the result, and lowers the limiter's
/// sample-peak ceiling when inter-sample peaks still poke through.
pub fn normalize(audio: &mut Audio, target_lufs: f64, ceiling_dbtp: f64) -> Result<LoudnessReport> {
    let lufs0 = integrated(audio)?;
    if !lufs0.is_finite() {
        return Ok(LoudnessReport {
            integrated_lufs: lufs0,
            true_peak_dbtp: true_peak_db(audio)?,
        });
    }
    let original = audio.clone();
    // Sharp synthetic transients overshoot between samples by up to ~0.6
    // dB; a 1 dB margin usually passes the true-peak check first time.
    let mut limit_db = ceiling_dbtp - 1.0;
    let mut g = target_lufs - lufs0;
    let mut tp = f64::INFINITY;
    let mut l = lufs0;
    for _ in 0..4 {
        let mut prev: Option<(f64, f64)> = None;
        for _ in 0..8 {
            render_gain(&original, audio, g, limit_db);
            l = integrated(audio)?;
            let err = target_lufs - l;
            if err.abs() < 0.1 {
                break;
            }
            // Secant step; a slope of 1 (no limiting) until two points exist.
            let slope = match prev {
                Some((pg, pl)) if (g - pg).abs() > 1e-6 => ((l - pl) / (g - pg)).clamp(0.05, 1.0),
                _ => 1.0,
            };
            prev = Some((g, l));
            g += (err / slope).clamp(-12.0, 12.0);
        }
        tp = true_peak_db(audio)?;
        if tp <= ceiling_dbtp {
            return Ok(LoudnessReport {
                integrated_lufs: l,
                true_peak_dbtp: tp,
            });
        }
        limit_db -= tp - ceiling_dbtp + 0.1;
    }
    // Material the limiter cannot tame: give up loudness, never the ceiling.
    apply_gain(audio, db_to_gain(ceiling_dbtp - tp - 0.05));
    measure(audio)
}

/// `out` = `src` × gain `g_db`, limited to sample peaks of `limit_db`.
fn render_gain(src: &Audio, out: &mut Audio, g_db: f64, limit_db: f64) {
    let g = db_to_gain(g_db) as f32;
    for (o, s) in out.channels.iter_mut().zip(&src.channels) {
        for (y, x) in o.iter_mut().zip(s) {
            *y = x * g;
        }
    }
    let ceiling = db_to_gain(limit_db) as f32;
    if out.peak() > ceiling {
        limit(out, ceiling, 0.003, 0.06);
    }
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

    #[test]
    fn split_metering_equals_one_meter() {
        let mut a = noise_bursts(48_000, 30.0);
        // Vary the level over time so gating matters.
        for c in &mut a.channels {
            for (i, x) in c.iter_mut().enumerate() {
                *x *= 0.2 + (i as f32 / 200_000.0).sin().abs();
            }
        }
        let planes: Vec<&[f32]> = a.channels.iter().map(Vec::as_slice).collect();
        let one = meter(&planes, 48_000, Mode::I)
            .unwrap()
            .loudness_global()
            .unwrap();
        let split = integrated(&a).unwrap();
        assert!((one - split).abs() < 1e-3, "{one} vs {split}");
    }

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
