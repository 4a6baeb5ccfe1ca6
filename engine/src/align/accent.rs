//! The accent on a cut: a soft percussive hit (a falling low thump under a
//! short breath of noise) mixed in at the cut, as loud as the music around
//! it times the gain, and never louder than the master's ceiling allows.
//!
//! The ceiling rule is per sample: the hit never takes a sample's magnitude
//! above the larger of its own and the ceiling less 1 dB (sample peaks 1 dB
//! under the true-peak ceiling, as `audio::StreamMaster` keeps them), so an
//! accent can make nothing clip that did not already.

/// Seconds of music before the cut whose level sets the hit's level.
const LEVEL_S: f64 = 0.2;
/// The hit's length, seconds.
const HIT_S: f64 = 0.25;
/// The hit's peak relative to the music's peak around it, at gain 1.
const RELATIVE: f32 = 0.6;

/// Accents pending on a stream of output frames.
pub(crate) struct Accents {
    /// Cut frames, ascending.
    cuts: Vec<usize>,
    /// The first cut not yet written.
    next: usize,
    gain: f32,
    /// Sample-peak ceiling, linear.
    ceiling: f32,
    pre: usize,
    shape: Vec<f32>,
    ended: bool,
}

impl Accents {
    pub(crate) fn none() -> Self {
        Self {
            cuts: Vec::new(),
            next: 0,
            gain: 0.0,
            ceiling: 1.0,
            pre: 0,
            shape: Vec::new(),
            ended: false,
        }
    }

    pub(crate) fn new(cuts: &[f64], gain: f32, ceiling_dbtp: f64, rate: u32) -> Self {
        let gain = if gain.is_finite() {
            gain.clamp(0.0, 1.0)
        } else {
            0.0
        };
        if gain <= 0.0 {
            return Self::none();
        }
        let r = f64::from(rate);
        let mut frames: Vec<usize> = cuts
            .iter()
            .filter(|c| c.is_finite() && **c >= 0.0)
            .map(|c| (c * r).round() as usize)
            .collect();
        frames.sort_unstable();
        frames.dedup();
        let ceiling_db = if ceiling_dbtp.is_finite() {
            ceiling_dbtp.min(0.0)
        } else {
            -1.0
        };
        Self {
            cuts: frames,
            next: 0,
            gain,
            ceiling: 10f64.powf((ceiling_db - 1.0) / 20.0) as f32,
            pre: (LEVEL_S * r) as usize,
            shape: hit(rate),
            ended: false,
        }
    }

    pub(crate) fn finish(&mut self) {
        self.ended = true;
    }

    /// Writes every accent whose frames `ready` (output frames
    /// `[start, made)`) holds whole, or all that are left once ended.
    /// Returns the first output frame that must still be held.
    pub(crate) fn apply(&mut self, ready: &mut [Vec<f32>], start: usize, made: usize) -> usize {
        while let Some(&cut) = self.cuts.get(self.next) {
            let from = cut.saturating_sub(self.pre);
            let to = cut + self.shape.len();
            if to > made && !self.ended {
                return from.max(start).min(made);
            }
            self.next += 1;
            if cut >= made || cut < start {
                continue;
            }
            self.write(ready, start, from.max(start), cut, to.min(made));
        }
        made
    }

    fn write(&self, ready: &mut [Vec<f32>], start: usize, from: usize, cut: usize, to: usize) {
        let level = ready
            .iter()
            .flat_map(|c| c[from - start..to - start].iter())
            .fold(0.0f32, |m, &x| m.max(x.abs()));
        let mut g = RELATIVE * self.gain * level;
        for c in ready.iter() {
            for (&x, &h) in c[cut - start..to - start].iter().zip(&self.shape) {
                if h != 0.0 {
                    let bound = self.ceiling.max(x.abs());
                    g = g.min((bound - x * h.signum()) / h.abs());
                }
            }
        }
        let g = g.max(0.0);
        for c in ready.iter_mut() {
            for (x, &h) in c[cut - start..to - start].iter_mut().zip(&self.shape) {
                *x += g * h;
            }
        }
    }
}

/// The hit, peak 1: a thump falling from 110 to 55 Hz (70 ms decay) under
/// noise (12 ms decay), with a 0.5 ms attack so it starts without a click
/// but still reads as an onset. Deterministic (a fixed LCG).
fn hit(rate: u32) -> Vec<f32> {
    let r = f64::from(rate);
    let n = (HIT_S * r) as usize;
    let mut seed = 0x9e37_79b9u32;
    let mut phase = 0.0f64;
    let mut out: Vec<f32> = (0..n)
        .map(|i| {
            let t = i as f64 / r;
            let f = 55.0 + 55.0 * (-t / 0.03).exp();
            phase += std::f64::consts::TAU * f / r;
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let noise = f64::from(seed >> 8) / f64::from(1u32 << 24) * 2.0 - 1.0;
            let attack = (t / 0.0005).min(1.0);
            (attack * (phase.sin() * (-t / 0.07).exp() + 0.5 * noise * (-t / 0.012).exp())) as f32
        })
        .collect();
    let peak = out.iter().fold(0.0f32, |m, &x| m.max(x.abs()));
    if peak > 0.0 {
        out.iter_mut().for_each(|x| *x /= peak);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_accent_never_takes_a_sample_over_the_ceiling() {
        let rate = 48_000;
        // Loud music just under the ceiling (0.79): the hit must fit in.
        let mut x: Vec<f32> = (0..rate).map(|i| 0.7 * (i as f32 * 0.05).sin()).collect();
        let before = x.clone();
        let mut acc = Accents::new(&[0.5], 1.0, -1.0, rate);
        acc.finish();
        let mut ready = vec![std::mem::take(&mut x)];
        acc.apply(&mut ready, 0, rate as usize);
        let ceiling = 10f32.powf(-2.0 / 20.0);
        let changed = ready[0].iter().zip(&before).filter(|(a, b)| a != b).count();
        assert!(changed > 1000, "the hit was written ({changed} samples)");
        let peak = ready[0].iter().fold(0.0f32, |m, &x| m.max(x.abs()));
        assert!(peak > 0.75 && peak <= ceiling + 1e-6, "{peak}");
    }

    #[test]
    fn a_quiet_stretch_gets_a_quiet_hit() {
        let rate = 48_000;
        let mut ready = vec![vec![0.01f32; rate as usize]];
        let mut acc = Accents::new(&[0.5], 1.0, -1.0, rate);
        acc.finish();
        acc.apply(&mut ready, 0, rate as usize);
        let peak = ready[0].iter().fold(0.0f32, |m, &x| m.max(x.abs()));
        assert!(
            peak > 0.012 && peak <= 0.01 * (1.0 + RELATIVE) + 1e-6,
            "{peak}"
        );
    }
}
