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
    let nch = audio.channels.len();
    let chunk = 1024;
    let mut rs = FftFixedIn::<f32>::new(audio.sample_rate as usize, rate as usize, chunk, 2, nch)
        .map_err(|e| {
        Error::InvalidSetting(format!("resampling {} → {rate} Hz: {e}", audio.sample_rate))
    })?;
    let delay = rs.output_delay();
    let want =
        (audio.len() as f64 * f64::from(rate) / f64::from(audio.sample_rate)).round() as usize;
    let mut out: Vec<Vec<f32>> = vec![Vec::with_capacity(want + delay + chunk * 4); nch];
    let mut pos = 0;
    let push = |out: &mut Vec<Vec<f32>>, block: Vec<Vec<f32>>| {
        for (o, b) in out.iter_mut().zip(block) {
            o.extend_from_slice(&b);
        }
    };
    let fail = |e: rubato::ResampleError| Error::InvalidSetting(format!("resampling failed: {e}"));
    while pos + chunk <= audio.len() {
        let input: Vec<&[f32]> = audio
            .channels
            .iter()
            .map(|c| &c[pos..pos + chunk])
            .collect();
        push(&mut out, rs.process(&input, None).map_err(fail)?);
        pos += chunk;
    }
    if pos < audio.len() {
        let input: Vec<&[f32]> = audio.channels.iter().map(|c| &c[pos..]).collect();
        push(
            &mut out,
            rs.process_partial(Some(&input), None).map_err(fail)?,
        );
    }
    while out[0].len() < want + delay {
        push(
            &mut out,
            rs.process_partial::<&[f32]>(None, None).map_err(fail)?,
        );
    }
    for c in &mut out {
        c.drain(..delay);
        c.truncate(want);
    }
    Ok(Audio {
        sample_rate: rate,
        channels: out,
    })
}
