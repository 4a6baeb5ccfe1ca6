//! One copy of each model per process. A plugin on several tracks runs one
//! engine thread per instance; they share the loaded weights, which are
//! freed when the last engine holding them lets go.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;

use crate::error::Result;
use crate::neural::models::clip::{Clip, VisionPrecision};
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

static CLIP: Mutex<Vec<(Key, Weak<Clip>)>> = Mutex::new(Vec::new());
static CLIP_LOADS: AtomicUsize = AtomicUsize::new(0);

/// The CLIP of `dir` for engines at `precision`: the copy another engine of
/// this process holds, or a fresh load. At [`Precision::Q8`] (what the plugin
/// runs, trading exactness for speed as with MusicGen) the vision tower runs
/// in 8 bits where the CPU has AVX-512 VNNI (about 3× faster; cosine ≥ 0.9998
/// to f32 on the fixtures and a random ViT-B/32), else in f32.
pub(crate) fn clip(dir: &Path, precision: Precision) -> Result<Arc<Clip>> {
    let mut loaded = CLIP.lock();
    loaded.retain(|(_, w)| w.strong_count() > 0);
    if let Some(m) = loaded
        .iter()
        .find(|((d, p), _)| d == dir && *p == precision)
        .and_then(|(_, w)| w.upgrade())
    {
        return Ok(m);
    }
    let mut model = Clip::load(dir)?;
    if precision == Precision::Q8 {
        model.vision.set_precision(VisionPrecision::Int8)?;
    }
    let model = Arc::new(model);
    CLIP_LOADS.fetch_add(1, Ordering::Relaxed);
    loaded.push(((dir.to_path_buf(), precision), Arc::downgrade(&model)));
    Ok(model)
}

/// What the features of `clip` are keyed under besides the video: the
/// checkpoint's fingerprint and the arithmetic its vision tower ran in.
pub(crate) fn clip_features_model(fingerprint: &str, clip: &Clip) -> String {
    match clip.vision.precision() {
        VisionPrecision::F32 => fingerprint.to_string(),
        VisionPrecision::Int8 => format!("{fingerprint}:int8"),
    }
}

/// How many CLIP models this process has loaded from disk, and how many are
/// loaded now.
pub fn clip_loads() -> (usize, usize) {
    let loaded = CLIP.lock();
    let live = loaded.iter().filter(|(_, w)| w.strong_count() > 0).count();
    (CLIP_LOADS.load(Ordering::Relaxed), live)
}
