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
    let mut l;
    for _ in 0..4 {
        (g, l) = fit_gain(&original, audio, target_lufs, g, limit_db)?;
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

/// The gain (dB, from `g` on) that brings `original`, limited to sample peaks
/// of `limit_db`, to `target_lufs` within 0.1 LU (at most 8 tries), and the
/// loudness reached; the last try is left in `out`.
fn fit_gain(
    original: &Audio,
    out: &mut Audio,
    target_lufs: f64,
    mut g: f64,
    limit_db: f64,
) -> Result<(f64, f64)> {
    let mut prev: Option<(f64, f64)> = None;
    let mut l = f64::NEG_INFINITY;
    for _ in 0..8 {
        render_gain(original, out, g, limit_db);
        l = integrated(out)?;
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
    Ok((g, l))
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

/// Keeps `audio`'s sample peaks at or below `ceiling_db` dBFS with the
/// mastering's look-ahead limiter (3 ms look-ahead, 60 ms release), leaving
/// every stretch that stays below it untouched. Returns the most gain
/// reduction applied, dB (0 when nothing was over).
pub fn limit_peaks(audio: &mut Audio, ceiling_db: f32) -> f32 {
    let ceiling = db_to_gain(f64::from(ceiling_db)) as f32;
    let peak = audio.peak();
    if peak <= ceiling {
        return 0.0;
    }
    limit(audio, ceiling, 0.003, 0.06);
    20.0 * (peak / ceiling).log10()
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

/// Mastering for audio made in pieces (a neural engine's windows): a fixed gain
/// set from the first stretch, then the same look-ahead limiter as
/// [`normalize`]'s, run as a stream. Each piece's samples come out once the
/// limiter has seen far enough ahead of them (3 ms); [`StreamMaster::finish`]
/// gives the rest. Fed any way, the output is what one pass over the whole
/// would give.
pub struct StreamMaster {
    target_lufs: f64,
    limit_db: f64,
    /// Gain applied, once known.
    gain: Option<f32>,
    /// Audio held until there is enough to measure for the gain.
    held: Audio,
    limiter: StreamLimiter,
}

/// How much audio the gain is measured on before any is let through, seconds
/// (less if the piece ends first). Nothing is heard until then, so it is
/// short: a neural engine's first sound waits for this much music to be
/// made.
const GAIN_WINDOW_S: f64 = 1.5;

impl StreamMaster {
    pub fn new(sample_rate: u32, channels: usize, target_lufs: f64, ceiling_dbtp: f64) -> Self {
        // Sample peaks 1 dB under the true-peak ceiling, as `normalize` starts.
        let limit_db = ceiling_dbtp - 1.0;
        let ceiling = db_to_gain(limit_db) as f32;
        Self {
            target_lufs,
            limit_db,
            gain: None,
            held: Audio::silence(sample_rate, channels, 0),
            limiter: StreamLimiter::new(sample_rate, channels, ceiling, 0.003, 0.06),
        }
    }

    /// Takes the next piece; returns the mastered samples now final.
    pub fn push(&mut self, piece: &[Vec<f32>]) -> Result<Vec<Vec<f32>>> {
        for (h, p) in self.held.channels.iter_mut().zip(piece) {
            h.extend_from_slice(p);
        }
        if self.gain.is_none() && self.held.duration() < GAIN_WINDOW_S {
            return Ok(vec![Vec::new(); self.held.channels.len()]);
        }
        self.release()
    }

    /// Ends the stream; returns the rest of the mastered samples.
    pub fn finish(&mut self) -> Result<Vec<Vec<f32>>> {
        let mut out = self.release()?;
        for (o, rest) in out.iter_mut().zip(self.limiter.finish()) {
            o.extend(rest);
        }
        Ok(out)
    }

    /// The gain, in dB, once set.
    pub fn gain_db(&self) -> Option<f64> {
        self.gain.map(|g| 20.0 * f64::from(g).log10())
    }

    /// Fixes the gain from `reference` (the music this stream's start is
    /// made from, before whatever changed it on the way here) unless it is
    /// set already: what comes after is let through as it arrives instead of
    /// held until its own first stretch can be measured.
    pub fn set_gain_from(&mut self, reference: &Audio) -> Result<()> {
        if self.gain.is_none() {
            self.gain = Some(self.gain_for(reference)?);
        }
        Ok(())
    }

    /// The gain that brings `audio`, limited, to the target.
    fn gain_for(&self, audio: &Audio) -> Result<f32> {
        let lufs = integrated(audio)?;
        let db = if lufs.is_finite() {
            let mut scratch = audio.clone();
            let first = self.target_lufs - lufs;
            fit_gain(audio, &mut scratch, self.target_lufs, first, self.limit_db)?.0
        } else {
            0.0
        };
        Ok(db_to_gain(db) as f32)
    }

    fn release(&mut self) -> Result<Vec<Vec<f32>>> {
        let g = match self.gain {
            Some(g) => g,
            None => {
                let g = self.gain_for(&self.held)?;
                self.gain = Some(g);
                g
            }
        };
        let mut piece = std::mem::take(&mut self.held.channels);
        self.held.channels = vec![Vec::new(); piece.len()];
        for c in &mut piece {
            c.iter_mut().for_each(|x| *x *= g);
        }
        Ok(self.limiter.push(&piece))
    }
}

/// [`limit`] as a stream: the same gains, computed as the look-ahead fills.
struct StreamLimiter {
    ceiling: f32,
    la: usize,
    release: f32,
    /// Input samples not yet let out, per channel.
    pending: Vec<VecDeque<f32>>,
    /// Samples taken in so far.
    taken: usize,
    /// Gains needed by the samples in the look-ahead, as (index, gain), the
    /// minimum at the front.
    mins: VecDeque<(usize, f32)>,
    /// Envelope values computed so far.
    envs: usize,
    env: f32,
    first_env: f32,
    /// The last `la` envelope values and their sum, for the smoothing.
    recent: VecDeque<f32>,
    sum: f64,
}

impl StreamLimiter {
    fn new(rate: u32, channels: usize, ceiling: f32, lookahead_s: f64, release_s: f64) -> Self {
        Self {
            ceiling,
            la: ((lookahead_s * f64::from(rate)) as usize).max(1),
            release: (1.0 - (-1.0 / (release_s * f64::from(rate))).exp()) as f32,
            pending: vec![VecDeque::new(); channels],
            taken: 0,
            mins: VecDeque::new(),
            envs: 0,
            env: 1.0,
            first_env: 1.0,
            recent: VecDeque::new(),
            sum: 0.0,
        }
    }

    fn push(&mut self, piece: &[Vec<f32>]) -> Vec<Vec<f32>> {
        let mut out = vec![Vec::new(); self.pending.len()];
        let n = piece.first().map_or(0, Vec::len);
        for i in 0..n {
            let peak = piece.iter().fold(0.0f32, |m, c| m.max(c[i].abs()));
            let need = if peak > self.ceiling {
                self.ceiling / peak
            } else {
                1.0
            };
            for (p, c) in self.pending.iter_mut().zip(piece) {
                p.push_back(c[i]);
            }
            let k = self.taken;
            self.taken += 1;
            while self.mins.back().is_some_and(|&(_, v)| v >= need) {
                self.mins.pop_back();
            }
            self.mins.push_back((k, need));
            if k >= self.la {
                self.step(&mut out);
            }
        }
        out
    }

    fn finish(&mut self) -> Vec<Vec<f32>> {
        let mut out = vec![Vec::new(); self.pending.len()];
        while self.envs < self.taken {
            self.step(&mut out);
        }
        out
    }

    /// Computes the next envelope value from the look-ahead and lets its sample out.
    fn step(&mut self, out: &mut [Vec<f32>]) {
        let j = self.envs;
        while self.mins.front().is_some_and(|&(i, _)| i < j) {
            self.mins.pop_front();
        }
        let ahead = self.mins.front().map_or(1.0, |&(_, v)| v);
        self.env = (self.env + self.release * (1.0 - self.env)).min(ahead);
        if j == 0 {
            self.first_env = self.env;
        }
        self.envs += 1;
        self.sum += f64::from(self.env);
        self.recent.push_back(self.env);
        if self.recent.len() > self.la {
            let old = self.recent.pop_front().unwrap_or(0.0);
            self.sum -= f64::from(old);
        }
        let count = (j + 1).min(self.la);
        let smooth = ((self.sum + (self.la - count) as f64 * f64::from(self.first_env))
            / self.la as f64) as f32;
        for (o, p) in out.iter_mut().zip(self.pending.iter_mut()) {
            o.push(p.pop_front().unwrap_or(0.0) * smooth);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_streamed_limiter_is_the_offline_one() {
        let mut a = noise_bursts(48_000, 2.0);
        for c in &mut a.channels {
            c.iter_mut().for_each(|x| *x *= 1.7);
        }
        let ceiling = 0.5f32;
        let mut whole = a.clone();
        limit(&mut whole, ceiling, 0.003, 0.06);
        for piece in [1usize, 100, 144, 4096, 1 << 20] {
            let mut s = StreamLimiter::new(48_000, 2, ceiling, 0.003, 0.06);
            let mut got = vec![Vec::new(), Vec::new()];
            for start in (0..a.len()).step_by(piece) {
                let end = (start + piece).min(a.len());
                let part: Vec<Vec<f32>> =
                    a.channels.iter().map(|c| c[start..end].to_vec()).collect();
                for (g, o) in got.iter_mut().zip(s.push(&part)) {
                    g.extend(o);
                }
            }
            for (g, o) in got.iter_mut().zip(s.finish()) {
                g.extend(o);
            }
            assert_eq!(got, whole.channels, "pieces of {piece}");
        }
        assert!(whole.peak() <= ceiling * 1.0001);
    }

    #[test]
    fn streamed_mastering_sets_the_level_from_the_start() {
        let a = noise_bursts(48_000, 8.0);
        let mut m = StreamMaster::new(48_000, 2, -14.0, -1.0);
        let mut got = vec![Vec::new(), Vec::new()];
        for start in (0..a.len()).step_by(10_000) {
            let end = (start + 10_000).min(a.len());
            let part: Vec<Vec<f32>> = a.channels.iter().map(|c| c[start..end].to_vec()).collect();
            let out = m.push(&part).unwrap();
            if m.gain_db().is_none() {
                assert!(out[0].is_empty(), "nothing before the level is known");
            }
            for (g, o) in got.iter_mut().zip(out) {
                g.extend(o);
            }
        }
        for (g, o) in got.iter_mut().zip(m.finish().unwrap()) {
            g.extend(o);
        }
        let out = Audio {
            sample_rate: 48_000,
            channels: got,
        };
        assert_eq!(out.len(), a.len());
        let r = measure(&out).unwrap();
        // Noise bursts are level over time, so the first seconds set it right.
        assert!((r.integrated_lufs + 14.0).abs() < 0.5, "{r:?}");
        assert!(r.true_peak_dbtp <= -0.9, "{r:?}");
    }

    #[test]
    fn a_level_set_from_a_reference_lets_the_stream_through_at_once() {
        let a = noise_bursts(48_000, 8.0);
        // The reference: the same music at another rate, as the codec makes
        // it before it is warped and resampled.
        let reference = noise_bursts(32_000, 1.6);
        let mut held = StreamMaster::new(48_000, 2, -14.0, -1.0);
        let mut at_once = StreamMaster::new(48_000, 2, -14.0, -1.0);
        at_once.set_gain_from(&reference).unwrap();
        let set = at_once.gain_db().unwrap();
        // Set once: a later reference does not move it.
        at_once
            .set_gain_from(&Audio {
                sample_rate: 32_000,
                channels: vec![vec![0.01; 32_000]; 2],
            })
            .unwrap();
        assert_eq!(at_once.gain_db(), Some(set));
        let part: Vec<Vec<f32>> = a.channels.iter().map(|c| c[..4_800].to_vec()).collect();
        assert!(held.push(&part).unwrap()[0].is_empty());
        let out = at_once.push(&part).unwrap();
        // All but the limiter's 3 ms of look-ahead, at once.
        assert!(out[0].len() >= 4_800 - 200, "{} frames", out[0].len());
        let mut got = out;
        for start in (4_800..a.len()).step_by(10_000) {
            let end = (start + 10_000).min(a.len());
            let part: Vec<Vec<f32>> = a.channels.iter().map(|c| c[start..end].to_vec()).collect();
            for (g, o) in got.iter_mut().zip(at_once.push(&part).unwrap()) {
                g.extend(o);
            }
        }
        for (g, o) in got.iter_mut().zip(at_once.finish().unwrap()) {
            g.extend(o);
        }
        let r = measure(&Audio {
            sample_rate: 48_000,
            channels: got,
        })
        .unwrap();
        assert!((r.integrated_lufs + 14.0).abs() < 0.5, "{r:?}");
        assert!(r.true_peak_dbtp <= -0.9, "{r:?}");
    }

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
