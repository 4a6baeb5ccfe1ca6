//! Finished audio on disk, keyed by a hash of everything that determines it
//! ([`super::MusicSpec::key`]).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::audio::{Audio, atomic_output, read_wav, write_wav};
use crate::error::{Error, Result};

/// What is stored beside the audio.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CacheMeta {
    pub engine: String,
    #[serde(default)]
    pub bpm: Option<f64>,
    /// A time of the piece where one of its bars starts.
    #[serde(default)]
    pub downbeat: Option<f64>,
    /// Where a neural engine made it, as its result said
    /// ([`super::Finished::device`]); `None` for the composer, and for
    /// entries written before this was kept.
    #[serde(default)]
    pub device: Option<String>,
}

/// The folder VidMusician caches in: `$VIDMUSICIAN_CACHE`, else
/// `vidmusician` in the user's cache folder.
pub fn cache_root() -> Option<PathBuf> {
    std::env::var_os("VIDMUSICIAN_CACHE")
        .map(PathBuf::from)
        .or_else(|| dirs::cache_dir().map(|d| d.join("vidmusician")))
}

#[derive(Debug, Clone)]
pub struct AudioCache {
    dir: PathBuf,
}

impl AudioCache {
    /// `audio` in [`cache_root`].
    pub fn default_dir() -> Option<PathBuf> {
        cache_root().map(|d| d.join("audio"))
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
