//! Spectral-flux onset detection: log-compressed magnitude spectra (Hann
//! window, realfft), half-wave rectified frame-to-frame increase summed over
//! bins, then librosa-style peak picking on the normalised envelope.

use realfft::RealFftPlanner;

#[derive(Debug, Clone, Copy)]
pub struct OnsetConfig {
    /// Window, seconds.
    pub window_s: f64,
    /// Hop, seconds.
    pub hop_s: f64,
    /// A peak must be the maximum within ± this many seconds …
    pub max_s: f64,
    /// … exceed the local mean within ± this many seconds by `delta` …
    pub avg_s: f64,
    pub delta: f32,
    /// … and follow the previous onset by at least this much.
    pub wait_s: f64,
}

impl Default for OnsetConfig {
    fn default() -> Self {
        Self {
            window_s: 0.021,
            hop_s: 0.005,
            max_s: 0.03,
            avg_s: 0.1,
            delta: 0.07,
            wait_s: 0.03,
        }
    }
}

/// Onset strength at each hop, and the hop in seconds. Value `n` describes
/// the window that ends at `n · hop + window`.
pub fn onset_envelope(mono: &[f32], rate: u32, cfg: &OnsetConfig) -> (Vec<f32>, f64) {
    let win = ((cfg.window_s * f64::from(rate)) as usize)
        .next_power_of_two()
        .max(64);
    let hop = ((cfg.hop_s * f64::from(rate)).round() as usize).max(1);
    let hop_s = hop as f64 / f64::from(rate);
    if mono.len() < win {
        return (Vec::new(), hop_s);
    }
    let mut planner = RealFftPlanner::<f32>::new();
    let fft = planner.plan_fft_forward(win);
    let hann: Vec<f32> = (0..win)
        .map(|i| 0.5 - 0.5 * (std::f32::consts::TAU * i as f32 / win as f32).cos())
        .collect();
    let mut input = fft.make_input_vec();
    let mut spec = fft.make_output_vec();
    let mut prev = vec![0.0f32; spec.len()];
    let mut cur = vec![0.0f32; spec.len()];
    let frames = (mono.len() - win) / hop + 1;
    let mut env = Vec::with_capacity(frames);
    for n in 0..frames {
        let s = &mono[n * hop..n * hop + win];
        for ((x, &v), &w) in input.iter_mut().zip(s).zip(&hann) {
            *x = v * w;
        }
        // PANIC-free: buffers come from the plan itself, so lengths match.
        let _ = fft.process(&mut input, &mut spec);
        let mut flux = 0.0f32;
        for (c, (p, z)) in cur.iter_mut().zip(prev.iter().zip(&spec)) {
            *c = (1.0 + 100.0 * z.norm()).ln();
            flux += (*c - p).max(0.0);
        }
        std::mem::swap(&mut prev, &mut cur);
        env.push(if n == 0 { 0.0 } else { flux });
    }
    (env, hop_s)
}

/// Onset times in seconds.
pub fn detect_onsets(mono: &[f32], rate: u32, cfg: &OnsetConfig) -> Vec<f64> {
    let (mut env, hop_s) = onset_envelope(mono, rate, cfg);
    let win = ((cfg.window_s * f64::from(rate)) as usize)
        .next_power_of_two()
        .max(64);
    let max_v = env.iter().fold(0.0f32, |m, &v| m.max(v));
    if max_v <= 0.0 {
        return Vec::new();
    }
    env.iter_mut().for_each(|v| *v /= max_v);
    let k_max = (cfg.max_s / hop_s).round() as usize;
    let k_avg = (cfg.avg_s / hop_s).round() as usize;
    let wait = (cfg.wait_s / hop_s).round() as usize;
    let mut prefix = vec![0.0f64; env.len() + 1];
    for (i, &v) in env.iter().enumerate() {
        prefix[i + 1] = prefix[i] + f64::from(v);
    }
    let mut onsets = Vec::new();
    let mut last: Option<usize> = None;
    for n in 1..env.len() {
        let lo = n.saturating_sub(k_max);
        let hi = (n + k_max + 1).min(env.len());
        if env[lo..hi].iter().any(|&v| v > env[n]) {
            continue;
        }
        let (alo, ahi) = (n.saturating_sub(k_avg), (n + k_avg + 1).min(env.len()));
        let mean = ((prefix[ahi] - prefix[alo]) / (ahi - alo) as f64) as f32;
        if env[n] < mean + cfg.delta {
            continue;
        }
        if last.is_some_and(|l| n - l < wait.max(1)) {
            continue;
        }
        last = Some(n);
        // The flux jumps when the attack enters the window's right half
        // (Hann weighting); place the onset there.
        onsets.push(n as f64 * hop_s + 0.75 * win as f64 / f64::from(rate));
    }
    onsets
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_clicks_within_ten_ms() {
        let rate = 48_000;
        let times = [0.25, 0.61, 1.0, 1.37, 1.9];
        let mut x = vec![0.0f32; rate as usize * 2];
        let mut s = 1u32;
        for (i, v) in x.iter_mut().enumerate() {
            s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let noise = (s >> 8) as f32 / (1u32 << 24) as f32 - 0.5;
            *v = 0.002 * noise;
            for &t in &times {
                let start = (t * f64::from(rate)) as usize;
                if i >= start && i < start + 4800 {
                    let k = (i - start) as f32 / rate as f32;
                    *v += 0.8 * (-k / 0.02).exp() * (std::f32::consts::TAU * 200.0 * k).sin()
                        + 0.4 * noise * (-k / 0.01).exp();
                }
            }
        }
        let onsets = detect_onsets(&x, rate, &OnsetConfig::default());
        assert_eq!(onsets.len(), times.len(), "{onsets:?}");
        for (o, t) in onsets.iter().zip(times) {
            assert!((o - t).abs() < 0.01, "onset {o} for {t}");
        }
    }
}
