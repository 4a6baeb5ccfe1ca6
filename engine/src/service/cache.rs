//! Finished audio on disk, keyed by a hash of everything that determines it.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::audio::{Audio, atomic_output, read_wav, write_wav};
use crate::error::{Error, Result};

use super::Request;

/// Bumped whenever the composer's output for the same inputs changes, so
/// stale audio is never served.
const FORMAT: &str = "vidmusician-audio-v5";

/// What is stored beside the audio.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CacheMeta {
    pub engine: String,
    #[serde(default)]
    pub bpm: Option<f64>,
}

#[derive(Debug, Clone)]
pub struct AudioCache {
    dir: PathBuf,
}

impl AudioCache {
    /// `$VIDMUSICIAN_CACHE`, else the user's cache folder.
    pub fn default_dir() -> Option<PathBuf> {
        std::env::var_os("VIDMUSICIAN_CACHE")
            .map(PathBuf::from)
            .or_else(|| dirs::cache_dir().map(|d| d.join("vidmusician")))
            .map(|d| d.join("audio"))
    }

    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.wav"))
    }

    fn meta_path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.json"))
    }

    /// A cached piece, if present and readable. A damaged entry is removed
    /// and treated as missing.
    pub fn get(&self, key: &str) -> Option<(Audio, CacheMeta)> {
        let p = self.path(key);
        let m = self.meta_path(key);
        if !p.exists() || !m.exists() {
            return None;
        }
        let meta = std::fs::read(&m)
            .ok()
            .and_then(|b| serde_json::from_slice::<CacheMeta>(&b).ok());
        match (read_wav(&p), meta) {
            (Ok(a), Some(meta)) if !a.is_empty() => Some((a, meta)),
            _ => {
                let _ = std::fs::remove_file(&p);
                let _ = std::fs::remove_file(&m);
                None
            }
        }
    }

    /// Stores a piece; the metadata is written last, so an entry without it
    /// (an interrupted write) is never served.
    pub fn put(&self, key: &str, audio: &Audio, meta: &CacheMeta) -> Result<PathBuf> {
        std::fs::create_dir_all(&self.dir).map_err(|e| Error::output(&self.dir, e))?;
        let p = self.path(key);
        write_wav(&p, audio)?;
        let m = self.meta_path(key);
        let json = serde_json::to_vec(meta).map_err(|e| Error::output(&m, e))?;
        atomic_output(&m, |tmp| {
            std::fs::write(tmp, &json).map_err(|e| Error::output(&m, e))
        })?;
        Ok(p)
    }
}

/// What identifies a video file cheaply but safely: its canonical path,
/// size, modification time and a hash of its first and last mebibyte (so a
/// file replaced in place with the same size and time still changes key).
fn video_identity(path: &Path, h: &mut blake3::Hasher) -> Result<()> {
    let canon = std::fs::canonicalize(path).map_err(|e| Error::opening(path, e))?;
    let meta = std::fs::metadata(&canon).map_err(|e| Error::io(path, e))?;
    h.update(canon.to_string_lossy().as_bytes());
    h.update(&meta.len().to_le_bytes());
    if let Ok(m) = meta.modified()
        && let Ok(d) = m.duration_since(std::time::UNIX_EPOCH)
    {
        h.update(&d.as_nanos().to_le_bytes());
    }
    let mut f = std::fs::File::open(&canon).map_err(|e| Error::io(path, e))?;
    const MIB: u64 = 1 << 20;
    let mut buf = vec![0u8; MIB as usize];
    let n = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
    h.update(&buf[..n]);
    if meta.len() > 2 * MIB {
        use std::io::{Seek, SeekFrom};
        f.seek(SeekFrom::End(-(MIB as i64)))
            .map_err(|e| Error::io(path, e))?;
        let n = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
        h.update(&buf[..n]);
    }
    Ok(())
}

/// The cache key of `request` once its engine is resolved.
pub fn cache_key(request: &Request, engine: &str) -> Result<String> {
    let mut h = blake3::Hasher::new();
    h.update(FORMAT.as_bytes());
    h.update(engine.as_bytes());
    match &request.video {
        Some(v) => video_identity(v, &mut h)?,
        None => {
            h.update(b"no video");
            h.update(&request.duration.unwrap_or(0.0).to_le_bytes());
        }
    }
    h.update(&request.guidance.unwrap_or(f64::NAN).to_le_bytes());
    h.update(&request.temperature.unwrap_or(f64::NAN).to_le_bytes());
    h.update(&(request.top_k.map_or(u64::MAX, |k| k as u64)).to_le_bytes());
    let range = request.range.unwrap_or((0.0, f64::INFINITY));
    h.update(&range.0.to_le_bytes());
    h.update(&range.1.to_le_bytes());
    h.update(&request.playrate.to_le_bytes());
    h.update(&request.tempo.unwrap_or(0.0).to_le_bytes());
    h.update(&request.downbeat.unwrap_or(f64::NAN).to_le_bytes());
    h.update(&request.preview_until.unwrap_or(f64::NAN).to_le_bytes());
    h.update(&request.seed.to_le_bytes());
    h.update(&request.rhythm_strength.to_le_bytes());
    h.update(&request.semantic_strength.to_le_bytes());
    h.update(&[request.meter.beats, request.meter.unit]);
    h.update(&(request.prompt.len() as u64).to_le_bytes());
    h.update(request.prompt.as_bytes());
    h.update(&request.sample_rate.to_le_bytes());
    Ok(h.finalize().to_hex()[..32].to_string())
}
