//! Whole-buffer resampling (rubato's FFT resampler), delay compensated so
//! that sample 0 stays at time 0.

use rubato::{FftFixedIn, Resampler};

use super::Audio;
use crate::error::{Error, Result};

pub fn resample(audio: &Audio, rate: u32) -> Result<Audio> {
    if audio.sample_rate == rate || audio.is_empty() {
        return Ok(Audio {
            sample_rate: rate,
            channels: audio.channels.clone(),
        });
    }
    let mut s = StreamResampler::new(audio.sample_rate, rate, audio.channels.len())?;
    let mut channels = s.push(&audio.channels)?;
    for (c, rest) in channels.iter_mut().zip(s.finish()?) {
        c.extend(rest);
    }
    Ok(Audio {
        sample_rate: rate,
        channels,
    })
}

/// Resampling as a stream: the FFT resampler fed 1024 samples at a time, so
/// that pieces pushed in any sizes, then [`StreamResampler::finish`], give the
/// same samples as the whole at once ([`resample`]); its delay is taken out,
/// and the length is the input's at the new rate.
pub struct StreamResampler {
    rs: Option<FftFixedIn<f32>>,
    chunk: usize,
    from: u32,
    to: u32,
    /// Input not yet resampled, per channel.
    pending: Vec<Vec<f32>>,
    taken: usize,
    /// Output samples still to drop (the resampler's delay).
    delay: usize,
    given: usize,
}

impl StreamResampler {
    pub fn new(from: u32, to: u32, channels: usize) -> Result<Self> {
        let chunk = 1024;
        let rs = if from == to {
            None
        } else {
            Some(
                FftFixedIn::<f32>::new(from as usize, to as usize, chunk, 2, channels).map_err(
                    |e| Error::InvalidSetting(format!("resampling {from} → {to} Hz: {e}")),
                )?,
            )
        };
        Ok(Self {
            delay: rs.as_ref().map_or(0, |r| r.output_delay()),
            rs,
            chunk,
            from,
            to,
            pending: vec![Vec::new(); channels],
            taken: 0,
            given: 0,
        })
    }

    /// Takes the next piece; returns the samples now ready.
    pub fn push(&mut self, piece: &[Vec<f32>]) -> Result<Vec<Vec<f32>>> {
        self.taken += piece.first().map_or(0, Vec::len);
        for (p, c) in self.pending.iter_mut().zip(piece) {
            p.extend_from_slice(c);
        }
        let Some(rs) = self.rs.as_mut() else {
            self.given += self.pending[0].len();
            return Ok(std::mem::replace(
                &mut self.pending,
                vec![Vec::new(); piece.len()],
            ));
        };
        let mut out = vec![Vec::new(); self.pending.len()];
        let full = self.pending[0].len() / self.chunk * self.chunk;
        for pos in (0..full).step_by(self.chunk) {
            let input: Vec<&[f32]> = self
                .pending
                .iter()
                .map(|c| &c[pos..pos + self.chunk])
                .collect();
            let block = rs.process(&input, None).map_err(fail)?;
            for (o, b) in out.iter_mut().zip(block) {
                o.extend(b);
            }
        }
        for p in &mut self.pending {
            p.drain(..full);
        }
        Ok(self.trim(out, usize::MAX))
    }

    /// Ends the stream; returns the rest.
    pub fn finish(&mut self) -> Result<Vec<Vec<f32>>> {
        let want = (self.taken as f64 * f64::from(self.to) / f64::from(self.from)).round() as usize;
        let Some(rs) = self.rs.as_mut() else {
            return Ok(std::mem::take(&mut self.pending));
        };
        let mut out = vec![Vec::new(); self.pending.len()];
        let append = |out: &mut Vec<Vec<f32>>, block: Vec<Vec<f32>>| {
            for (o, b) in out.iter_mut().zip(block) {
                o.extend(b);
            }
        };
        if !self.pending[0].is_empty() {
            let input: Vec<&[f32]> = self.pending.iter().map(Vec::as_slice).collect();
            append(
                &mut out,
                rs.process_partial(Some(&input), None).map_err(fail)?,
            );
        }
        while self.given + out[0].len().saturating_sub(self.delay) < want {
            append(
                &mut out,
                rs.process_partial::<&[f32]>(None, None).map_err(fail)?,
            );
        }
        Ok(self.trim(out, want))
    }

    /// Drops what is left of the delay from `out` and stops the total at `want`.
    fn trim(&mut self, mut out: Vec<Vec<f32>>, want: usize) -> Vec<Vec<f32>> {
        let drop = self.delay.min(out[0].len());
        let keep = (out[0].len() - drop).min(want.saturating_sub(self.given));
        for c in &mut out {
            c.drain(..drop);
            c.truncate(keep);
        }
        self.delay -= drop;
        self.given += keep;
        out
    }
}

fn fail(e: rubato::ResampleError) -> Error {
    Error::InvalidSetting(format!("resampling failed: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_resamples_as_the_whole() {
        let n = 32_000 * 3 + 517;
        let tone: Vec<f32> = (0..n).map(|i| (i as f32 * 0.031).sin() * 0.5).collect();
        let a = Audio {
            sample_rate: 32_000,
            channels: vec![tone.clone(), tone.iter().map(|x| -x).collect()],
        };
        for rate in [48_000, 44_100, 32_000] {
            let whole = resample(&a, rate).unwrap();
            let want = (n as f64 * f64::from(rate) / 32_000.0).round() as usize;
            assert_eq!(whole.len(), want);
            // Sample 0 stays at time 0: the tone is where it was.
            for j in (rate as usize / 2..2 * rate as usize).step_by(97) {
                let t = j as f64 / f64::from(rate);
                let truth = ((0.031 * 32_000.0 * t).sin() * 0.5) as f32;
                assert!(
                    (whole.channels[0][j] - truth).abs() < 2e-3,
                    "{rate} Hz at {j}"
                );
            }
            for piece in [1000usize, 1024, 4096, 33_333, n] {
                let mut s = StreamResampler::new(32_000, rate, 2).unwrap();
                let mut got = vec![Vec::new(), Vec::new()];
                for start in (0..n).step_by(piece) {
                    let end = (start + piece).min(n);
                    let part: Vec<Vec<f32>> =
                        a.channels.iter().map(|c| c[start..end].to_vec()).collect();
                    for (g, o) in got.iter_mut().zip(s.push(&part).unwrap()) {
                        g.extend(o);
                    }
                }
                for (g, o) in got.iter_mut().zip(s.finish().unwrap()) {
                    g.extend(o);
                }
                assert_eq!(got, whole.channels, "{rate} Hz in pieces of {piece}");
            }
        }
    }
}
