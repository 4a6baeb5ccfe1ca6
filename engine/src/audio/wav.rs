//! WAV files through hound.

use std::path::Path;

use super::{Audio, atomic_output};
use crate::error::{Error, Result};

/// Writes 32-bit float WAV, atomically.
pub fn write_wav(path: &Path, audio: &Audio) -> Result<()> {
    atomic_output(path, |tmp| {
        let spec = hound::WavSpec {
            channels: audio.channels.len() as u16,
            sample_rate: audio.sample_rate,
            bits_per_sample: 32,
            sample_format: hound::SampleFormat::Float,
        };
        let err = |e: hound::Error| Error::output(path, e);
        let mut w = hound::WavWriter::create(tmp, spec).map_err(err)?;
        for i in 0..audio.len() {
            for c in &audio.channels {
                w.write_sample(c[i]).map_err(err)?;
            }
        }
        w.finalize().map_err(err)
    })
}

/// Reads any PCM or float WAV into f32.
pub fn read_wav(path: &Path) -> Result<Audio> {
    let r = hound::WavReader::open(path).map_err(|e| match e {
        hound::Error::IoError(io) => Error::opening(path, io),
        other => Error::Unreadable {
            path: path.to_path_buf(),
            reason: other.to_string(),
        },
    })?;
    let spec = r.spec();
    let nch = usize::from(spec.channels.max(1));
    let bad = |e: hound::Error| Error::Unreadable {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let interleaved: Vec<f32> = match spec.sample_format {
        hound::SampleFormat::Float => r
            .into_samples::<f32>()
            .collect::<Result<_, _>>()
            .map_err(bad)?,
        hound::SampleFormat::Int => {
            let scale = 1.0 / (1u64 << (spec.bits_per_sample - 1)) as f32;
            r.into_samples::<i32>()
                .map(|s| s.map(|v| v as f32 * scale))
                .collect::<Result<_, _>>()
                .map_err(bad)?
        }
    };
    let mut channels = vec![Vec::with_capacity(interleaved.len() / nch); nch];
    for frame in interleaved.chunks_exact(nch) {
        for (c, &s) in channels.iter_mut().zip(frame) {
            c.push(s);
        }
    }
    Ok(Audio {
        sample_rate: spec.sample_rate,
        channels,
    })
}
