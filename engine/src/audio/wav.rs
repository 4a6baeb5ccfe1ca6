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

/// Reads any PCM or float WAV into f32. A file that is not a WAV at all is
/// told apart from a damaged one, and named by what it looks like, so the
/// message speaks of files, not of the decoder's internals.
pub fn read_wav(path: &Path) -> Result<Audio> {
    sniff(path)?;
    let r = hound::WavReader::open(path).map_err(|e| damaged(path, e))?;
    let spec = r.spec();
    let nch = usize::from(spec.channels.max(1));
    let bad = |e: hound::Error| damaged(path, e);
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

/// Checks the RIFF/WAVE header before hound reads it: hound reports a file
/// of another kind as a short read or a missing tag, which tells a user
/// nothing.
fn sniff(path: &Path) -> Result<()> {
    use std::io::Read as _;
    let mut head = [0u8; 12];
    let mut f = std::fs::File::open(path).map_err(|e| Error::opening(path, e))?;
    if f.metadata().map_err(|e| Error::io(path, e))?.is_dir() {
        return Err(Error::io(
            path,
            std::io::Error::other("it is a directory, not a file"),
        ));
    }
    let mut n = 0;
    while n < head.len() {
        match f.read(&mut head[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io(path, e)),
        }
    }
    if n == 0 {
        return Err(Error::EmptyFile(path.to_path_buf()));
    }
    let head = &head[..n];
    if head.len() == 12 && &head[..4] == b"RIFF" && &head[8..12] == b"WAVE" {
        return Ok(());
    }
    Err(Error::NotWav {
        path: path.to_path_buf(),
        looks_like: looks_like(head),
    })
}

/// What a file's first bytes say it is, for the few kinds people mistake
/// for WAV.
fn looks_like(head: &[u8]) -> Option<&'static str> {
    let at = |i: usize, magic: &[u8]| head.get(i..i + magic.len()) == Some(magic);
    if at(0, b"ID3") || (head.len() >= 2 && head[0] == 0xFF && head[1] & 0xE0 == 0xE0) {
        Some("MP3")
    } else if at(0, b"fLaC") {
        Some("FLAC")
    } else if at(0, b"OggS") {
        Some("Ogg (Vorbis or Opus)")
    } else if at(4, b"ftyp") {
        Some("MP4/M4A")
    } else if at(0, b"FORM") {
        Some("AIFF")
    } else if at(0, &[0x1A, 0x45, 0xDF, 0xA3]) {
        Some("Matroska/WebM")
    } else if at(0, b"RF64") {
        Some("RF64, the large-file WAV this reader does not support")
    } else if at(0, b"RIFF") {
        Some("a RIFF file of another kind (AVI?)")
    } else if head
        .iter()
        .all(|&b| b.is_ascii_graphic() || b.is_ascii_whitespace())
    {
        Some("text")
    } else {
        None
    }
}

/// A hound error on a file whose header said WAV, in a user's words.
fn damaged(path: &Path, e: hound::Error) -> Error {
    let reason = match e {
        // hound reports a short read as an error of its own making (kind
        // Other, no OS error code), not as UnexpectedEof.
        hound::Error::IoError(io)
            if io.kind() == std::io::ErrorKind::UnexpectedEof || io.raw_os_error().is_none() =>
        {
            "it ends early (truncated)".to_string()
        }
        hound::Error::IoError(io) => return Error::io(path, io),
        hound::Error::Unsupported => "its sample format is not supported".to_string(),
        other => other.to_string(),
    };
    Error::BadWav {
        path: path.to_path_buf(),
        reason,
    }
}
