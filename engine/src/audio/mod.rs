//! Audio buffers, WAV files, resampling and loudness normalisation.

mod loudness;
mod resample;
mod wav;

pub use loudness::{
    LoudnessReport, StreamMaster, integrated, limit_peaks, measure, normalize, true_peak_db,
};
pub use resample::{StreamResampler, resample};
pub use wav::{read_wav, write_wav};

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Planar f32 audio.
#[derive(Debug, Clone, PartialEq)]
pub struct Audio {
    pub sample_rate: u32,
    pub channels: Vec<Vec<f32>>,
}

impl Audio {
    pub fn silence(sample_rate: u32, channels: usize, frames: usize) -> Self {
        Self {
            sample_rate,
            channels: vec![vec![0.0; frames]; channels],
        }
    }

    /// Frames (samples per channel).
    pub fn len(&self) -> usize {
        self.channels.first().map_or(0, Vec::len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn duration(&self) -> f64 {
        self.len() as f64 / f64::from(self.sample_rate)
    }

    /// Mono mix (mean of the channels).
    pub fn mono(&self) -> Vec<f32> {
        let n = self.channels.len().max(1) as f32;
        (0..self.len())
            .map(|i| self.channels.iter().map(|c| c[i]).sum::<f32>() / n)
            .collect()
    }

    /// The part from `start` to `end` seconds, clipped to the audio.
    pub fn slice_seconds(&self, start: f64, end: f64) -> Audio {
        let r = f64::from(self.sample_rate);
        let a = ((start * r).round().max(0.0) as usize).min(self.len());
        let b = ((end * r).round().max(0.0) as usize).clamp(a, self.len());
        Audio {
            sample_rate: self.sample_rate,
            channels: self.channels.iter().map(|c| c[a..b].to_vec()).collect(),
        }
    }

    /// Cuts the audio to `frames`, or pads it with silence up to them.
    pub fn fit_to(&mut self, frames: usize) {
        for c in &mut self.channels {
            c.resize(frames, 0.0);
        }
    }

    pub fn peak(&self) -> f32 {
        self.channels
            .iter()
            .flat_map(|c| c.iter())
            .fold(0.0f32, |m, &x| m.max(x.abs()))
    }
}

/// Fails early, before any long work, when `path` cannot be written: the
/// directory is missing or read-only, or `path` is a directory.
pub fn check_writable(path: &Path) -> Result<()> {
    if path.is_dir() {
        return Err(Error::output(path, "it is a directory"));
    }
    let dir = parent_dir(path);
    if !dir.is_dir() {
        return Err(Error::output(
            path,
            format!("the folder {} does not exist", dir.display()),
        ));
    }
    let probe = tempfile::Builder::new()
        .prefix(".vidmusician-probe")
        .tempfile_in(&dir)
        .map_err(|e| Error::output(path, e))?;
    drop(probe);
    Ok(())
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Runs `write` on a temporary file beside `path` (same extension, so
/// FFmpeg and hound see the right format) and renames it over `path` only
/// when it succeeded: an existing file is never left half-overwritten. A new
/// file gets the mode any new file gets; a replaced one keeps its own.
pub fn atomic_output(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    check_writable(path)?;
    let dir = parent_dir(path);
    let ext = path
        .extension()
        .map(|e| format!(".{}", e.to_string_lossy()))
        .unwrap_or_default();
    let mut builder = tempfile::Builder::new();
    builder.prefix(".vidmusician-").suffix(&ext);
    // A temporary file is created 0600, and the rename keeps that mode; an
    // output must get what any new file gets: 0666 less the umask (which
    // the kernel applies to the mode asked for at creation).
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        builder.permissions(std::fs::Permissions::from_mode(0o666));
    }
    let tmp = builder
        .tempfile_in(&dir)
        .map_err(|e| Error::output(path, e))?;
    let tmp_path = tmp.path().to_path_buf();
    write(&tmp_path)?;
    // Replacing a file keeps its mode: a private output stays private.
    #[cfg(unix)]
    if let Ok(old) = std::fs::metadata(path) {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = old.permissions().mode() & 0o777;
        std::fs::set_permissions(&tmp_path, std::fs::Permissions::from_mode(mode))
            .map_err(|e| Error::output(path, e))?;
    }
    tmp.persist(path)
        .map_err(|e| Error::output(path, e.error))?;
    Ok(())
}
