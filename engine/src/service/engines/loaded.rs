//! One copy of each model per process. A plugin on several tracks runs one
//! engine thread per instance; they share the loaded weights, which are
//! freed when the last engine holding them lets go.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;

use crate::error::Result;
use crate::neural::models::clip::Clip;
use crate::neural::{MusicGen, Precision};

type Key = (PathBuf, Precision);

static MUSICGEN: Mutex<Vec<(Key, Weak<MusicGen>)>> = Mutex::new(Vec::new());
static MUSICGEN_LOADS: AtomicUsize = AtomicUsize::new(0);

/// The MusicGen of `dir` at `precision`: the copy another engine of this
/// process holds, or a fresh load.
pub(crate) fn musicgen(dir: &Path, precision: Precision) -> Result<Arc<MusicGen>> {
    // Held while loading, so two engines asking at once load it once.
    let mut loaded = MUSICGEN.lock();
    loaded.retain(|(_, w)| w.strong_count() > 0);
    if let Some(m) = loaded
        .iter()
        .find(|((d, p), _)| d == dir && *p == precision)
        .and_then(|(_, w)| w.upgrade())
    {
        return Ok(m);
    }
    let model = Arc::new(MusicGen::load_as(dir, precision)?);
    MUSICGEN_LOADS.fetch_add(1, Ordering::Relaxed);
    loaded.push(((dir.to_path_buf(), precision), Arc::downgrade(&model)));
    Ok(model)
}

/// How many MusicGen models this process has loaded from disk, and how many
/// are loaded now.
pub fn musicgen_loads() -> (usize, usize) {
    let loaded = MUSICGEN.lock();
    let live = loaded.iter().filter(|(_, w)| w.strong_count() > 0).count();
    (MUSICGEN_LOADS.load(Ordering::Relaxed), live)
}

static CLIP: Mutex<Vec<(PathBuf, Weak<Clip>)>> = Mutex::new(Vec::new());
static CLIP_LOADS: AtomicUsize = AtomicUsize::new(0);

/// The CLIP of `dir`: the copy another engine of this process holds, or a
/// fresh load.
pub(crate) fn clip(dir: &Path) -> Result<Arc<Clip>> {
    let mut loaded = CLIP.lock();
    loaded.retain(|(_, w)| w.strong_count() > 0);
    if let Some(m) = loaded
        .iter()
        .find(|(d, _)| d == dir)
        .and_then(|(_, w)| w.upgrade())
    {
        return Ok(m);
    }
    let model = Arc::new(Clip::load(dir)?);
    CLIP_LOADS.fetch_add(1, Ordering::Relaxed);
    loaded.push((dir.to_path_buf(), Arc::downgrade(&model)));
    Ok(model)
}

/// How many CLIP models this process has loaded from disk, and how many are
/// loaded now.
pub fn clip_loads() -> (usize, usize) {
    let loaded = CLIP.lock();
    let live = loaded.iter().filter(|(_, w)| w.strong_count() > 0).count();
    (CLIP_LOADS.load(Ordering::Relaxed), live)
}
