//! One copy of each model per process. A plugin on several tracks runs one
//! engine thread per instance; they share the loaded weights, which are
//! freed when the last engine holding them lets go.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;

use candle_core::Tensor;

use crate::analysis::clip_features::{FeatureCache, FeatureKey};
use crate::analysis::tags::Vocabulary;
use crate::error::{Error, Result};
use crate::neural::device::{self, Backend, Chosen};
use crate::neural::helper::HelperFrames;
use crate::neural::models::clip::{Clip, ClipFrames, FrameEncoder, VisionPrecision};
use crate::neural::{MusicGen, Precision};

/// A model's folder, the precision it runs at, and the device its decoder
/// runs on (`cpu`, `cuda:0`).
type Key = (PathBuf, Precision, String);

/// The models of one kind this process holds, by folder and precision, and
/// how many it has loaded from disk.
struct Registry<T> {
    held: Mutex<Vec<(Key, Weak<T>)>>,
    loads: AtomicUsize,
}

impl<T> Registry<T> {
    const fn new() -> Self {
        Self {
            held: Mutex::new(Vec::new()),
            loads: AtomicUsize::new(0),
        }
    }

    /// The model of `dir` at `precision`: the copy another engine holds, or
    /// what `load` makes.
    fn get(
        &self,
        dir: &Path,
        precision: Precision,
        device: &str,
        load: impl FnOnce() -> Result<T>,
    ) -> Result<Arc<T>> {
        // Held while loading, so two engines asking at once load it once.
        let mut held = self.held.lock();
        held.retain(|(_, w)| w.strong_count() > 0);
        if let Some(m) = find_held(&held, dir, precision, device) {
            return Ok(m);
        }
        let model = Arc::new(load()?);
        self.loads.fetch_add(1, Ordering::Relaxed);
        held.push((
            (dir.to_path_buf(), precision, device.to_string()),
            Arc::downgrade(&model),
        ));
        Ok(model)
    }

    /// The model of `dir` at `precision` on `device` when an engine holds
    /// it now.
    fn live(&self, dir: &Path, precision: Precision, device: &str) -> Option<Arc<T>> {
        find_held(&self.held.lock(), dir, precision, device)
    }

    /// Loads from disk so far, and models loaded now.
    fn counts(&self) -> (usize, usize) {
        let held = self.held.lock();
        let live = held.iter().filter(|(_, w)| w.strong_count() > 0).count();
        (self.loads.load(Ordering::Relaxed), live)
    }
}

/// The live model of `held` for this folder, precision and device.
fn find_held<T>(
    held: &[(Key, Weak<T>)],
    dir: &Path,
    precision: Precision,
    device: &str,
) -> Option<Arc<T>> {
    held.iter()
        .find(|((d, p, on), _)| d == dir && *p == precision && on == device)
        .and_then(|(_, w)| w.upgrade())
}

static MUSICGEN: Registry<MusicGen> = Registry::new();
static CLIP: Registry<Clip> = Registry::new();

/// The MusicGen of `dir` at `precision`, its decoder on `device`: the copy
/// another engine of this process holds, or a fresh load. A device that
/// cannot take the decoder is an [`Error::Device`] (the engines then go on
/// on the CPU).
pub(crate) fn musicgen(dir: &Path, precision: Precision, device: &Chosen) -> Result<Arc<MusicGen>> {
    MUSICGEN.get(dir, precision, &device.key(), || {
        if device.is_cpu() {
            return MusicGen::load_as(dir, precision);
        }
        // The device holds its own decoder: none is read for the CPU (a
        // device failing later sends the work to the CPU's own model).
        let mut model = MusicGen::load_without_decoder(dir, precision)?;
        let dtype = device::dtype_for(device)?;
        model
            .use_device(device, dtype)
            .map_err(|e| on_device(device, "the decoder", e))?;
        Ok(model)
    })
}

/// `e`, met while putting `what` on `device`, as the device's failure (the
/// engines then go on on the CPU); a device failure stays as it is.
fn on_device(device: &Chosen, what: &str, e: Error) -> Error {
    match e {
        e @ Error::Device { .. } => e,
        e => Error::Device {
            device: device.name.clone(),
            reason: format!("cannot hold {what} ({e})"),
        },
    }
}

/// Whether `model` is the one [`musicgen`] gives for these settings.
pub(crate) fn is_musicgen(
    model: &MusicGen,
    dir: &Path,
    precision: Precision,
    device: &Chosen,
) -> bool {
    model.dir() == dir && model.precision() == precision && model.device_name() == device.key()
}

/// How many MusicGen models this process has loaded from disk, and how many
/// are loaded now.
pub fn musicgen_loads() -> (usize, usize) {
    MUSICGEN.counts()
}

/// The CLIP of `dir` for engines at `precision`: the copy another engine of
/// this process holds, or a fresh load. At [`Precision::Q8`] (what the plugin
/// runs, trading exactness for speed as with MusicGen) both towers' encoders
/// run in 8 bits where the CPU has AVX-512 VNNI or AVX-VNNI (about 3×
/// faster; cosine ≥ 0.9998 to f32 on the fixtures and a random ViT-B/32),
/// loaded so straight from the checkpoint; else in f32.
pub(crate) fn clip(dir: &Path, precision: Precision) -> Result<Arc<Clip>> {
    CLIP.get(dir, precision, "cpu", || {
        VISION_LOADS.fetch_add(1, Ordering::Relaxed);
        Clip::load_as(dir, clip_precision(precision))
    })
}

/// [`clip`] for scoring words alone, where the frames are read on a device:
/// the whole CLIP when an engine of this process holds it already, else one
/// without its vision tower (most of its weights, which the device holds).
pub(crate) fn clip_words(dir: &Path, precision: Precision) -> Result<Arc<Clip>> {
    if let Some(whole) = CLIP.live(dir, precision, "cpu") {
        return Ok(whole);
    }
    CLIP.get(dir, precision, "words", || {
        Clip::load_words(dir, clip_precision(precision))
    })
}

/// The arithmetic of CLIP's encoders for engines at `precision`.
fn clip_precision(precision: Precision) -> VisionPrecision {
    if precision == Precision::Q8 {
        VisionPrecision::Int8
    } else {
        VisionPrecision::F32
    }
}

static VISION_LOADS: AtomicUsize = AtomicUsize::new(0);

/// How many CLIP vision towers this process has loaded on the CPU (for
/// its engines: not those read by a device).
pub fn clip_vision_loads() -> usize {
    VISION_LOADS.load(Ordering::Relaxed)
}

/// An engine's frame reader ([`frames`]), kept while the CLIP folder,
/// precision and device stay the same.
#[derive(Default)]
pub(crate) struct HeldFrames(Option<(Key, Arc<dyn FrameEncoder>)>);

impl HeldFrames {
    pub(crate) fn get(
        &mut self,
        dir: &Path,
        precision: Precision,
        device: &Chosen,
    ) -> Result<Arc<dyn FrameEncoder>> {
        let key = (dir.to_path_buf(), precision, device.key());
        match &self.0 {
            Some((k, f)) if *k == key => Ok(f.clone()),
            _ => {
                self.0 = None;
                let f = frames(dir, precision, device)?;
                self.0 = Some((key, f.clone()));
                Ok(f)
            }
        }
    }
}

/// The tags' text embeddings of `vocab` by `clip` ([`tag_embeddings`]:
/// CLIP's text tower over every tag's pictures, about a second), kept
/// while `clip` is loaded and shared by the engines of this process as the
/// models are: a second instance, or the next piece on another vocabulary
/// and back, finds them made. With a `cache` they are also kept on disk,
/// for the next process: a project opened again does not wait for them.
pub(crate) fn tag_embeddings(
    clip: &Arc<Clip>,
    vocab: &Vocabulary,
    cache: Option<&FeatureCache>,
) -> Result<Tensor> {
    /// Vocabularies kept per process; the oldest goes first.
    const KEPT: usize = 8;
    // Held while computing, so two engines asking at once compute once.
    let mut held = TAGS.lock();
    held.retain(|(c, _, _)| c.strong_count() > 0);
    if let Some((_, _, t)) = held
        .iter()
        .find(|(c, v, _)| c.upgrade().is_some_and(|c| Arc::ptr_eq(&c, clip)) && v == vocab)
    {
        return Ok(t.clone());
    }
    let compute = || {
        TAG_RUNS.fetch_add(1, Ordering::Relaxed);
        crate::analysis::clip_features::tag_embeddings(clip, vocab)
    };
    let t = match cache {
        Some(cache) => {
            // Clip::load read it; a failure now only weakens the key to the
            // checkpoint's fingerprint, which names the folder and its files.
            let tokenizer = std::fs::read(clip.dir().join("tokenizer.json")).unwrap_or_default();
            // The text tower's arithmetic is part of the model: 8-bit
            // embeddings are not f32's.
            let text = match clip.text.precision() {
                VisionPrecision::Int8 => "int8",
                VisionPrecision::F32 => "f32",
            };
            let model = keyed(&crate::service::spec::model_fingerprint(clip.dir()), text);
            let key = FeatureKey::tags(vocab, &model, &tokenizer);
            cache.tags(&key, (vocab.len(), clip.config().projection_dim), compute)?
        }
        None => compute()?,
    };
    if held.len() >= KEPT {
        held.remove(0);
    }
    held.push((Arc::downgrade(clip), vocab.clone(), t.clone()));
    Ok(t)
}

/// Tag embeddings made so far: by which CLIP, of which vocabulary.
type TagEmbeddings = Vec<(Weak<Clip>, Vocabulary, Tensor)>;
static TAGS: Mutex<TagEmbeddings> = Mutex::new(Vec::new());
static TAG_RUNS: AtomicUsize = AtomicUsize::new(0);

/// How many times this process has run CLIP's text tower over a vocabulary
/// (not counting embeddings read from a disk cache).
#[cfg(test)]
fn tag_embedding_runs() -> usize {
    TAG_RUNS.load(Ordering::Relaxed)
}

/// How many CLIP models this process has loaded from disk, and how many are
/// loaded now.
pub fn clip_loads() -> (usize, usize) {
    CLIP.counts()
}

/// What the features `frames` reads are keyed under besides the video: the
/// checkpoint's fingerprint and the arithmetic its vision tower runs in
/// (f32 on any device is one model: the same within rounding).
pub(crate) fn clip_features_model(fingerprint: &str, frames: &dyn FrameEncoder) -> String {
    keyed(fingerprint, frames.arithmetic())
}

static CLIP_FRAMES: Registry<ClipFrames> = Registry::new();

/// What reads a video's frames through the CLIP of `dir` for engines at
/// `precision` on `device`: on the CPU the engines' [`clip`] (8 bits at
/// [`Precision::Q8`] where the CPU can); on a GPU in this process (a `cuda`
/// build) the vision tower alone, shared by the engines as the models are;
/// through a GPU helper, the tower in the helper. On a device, in the type
/// [`device::dtype_for`] gives. A device that cannot take it is an
/// [`Error::Device`] (the engines then go on on the CPU).
pub(crate) fn frames(
    dir: &Path,
    precision: Precision,
    device: &Chosen,
) -> Result<Arc<dyn FrameEncoder>> {
    let on_device = |e| on_device(device, "CLIP", e);
    match &device.backend {
        _ if device.is_cpu() => Ok(clip(dir, precision)?),
        Backend::Candle(dev) => {
            let dtype = device::dtype_for(device)?;
            let frames = CLIP_FRAMES.get(dir, precision, &device.key(), || {
                ClipFrames::load(dir, dev, dtype).map_err(on_device)
            })?;
            Ok(frames)
        }
        Backend::Helper(h) => {
            let dtype = device::dtype_for(device)?;
            Ok(Arc::new(
                HelperFrames::new(h.clone(), dir, dtype).map_err(on_device)?,
            ))
        }
    }
}

/// A CLIP checkpoint's fingerprint with the arithmetic a tower ran in
/// (`f32`, `int8`, `f16`, `bf16`).
fn keyed(fingerprint: &str, arithmetic: &str) -> String {
    match arithmetic {
        "f32" => fingerprint.to_string(),
        other => format!("{fingerprint}:{other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::tags::BUILTIN;

    #[test]
    fn tag_embeddings_are_made_once_per_clip_and_vocabulary() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/clip-tiny");
        let clip = clip(&dir, Precision::F32).unwrap();
        let builtin = Vocabulary::parse(BUILTIN, "builtin").unwrap();
        let small = Vocabulary::parse(
            "[mood]\ncalm | a calm scene | calm\ntense | a tense scene | tense\n",
            "small",
        )
        .unwrap();
        let runs = tag_embedding_runs();
        let a = tag_embeddings(&clip, &builtin, None).unwrap();
        let direct = crate::analysis::clip_features::tag_embeddings(&clip, &builtin).unwrap();
        assert_eq!(
            a.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            direct.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
        let s = tag_embeddings(&clip, &small, None).unwrap();
        assert_eq!(s.dims()[0], 2);
        // Back to the first: served, not made again.
        let again = tag_embeddings(&clip, &builtin, None).unwrap();
        assert_eq!(again.dims(), a.dims());
        assert_eq!(tag_embedding_runs(), runs + 2);
        // Another CLIP (another precision is another model) makes its own.
        let other = super::clip(&dir, Precision::Q8);
        if let Ok(other) = other {
            tag_embeddings(&other, &small, None).unwrap();
            assert_eq!(tag_embedding_runs(), runs + 3);
        }
    }

    /// On disk, the embeddings of a text tower in 8 bits are kept apart from
    /// f32's, and each is read back by its own; the two stay close.
    #[test]
    fn tag_embeddings_on_disk_are_kept_per_text_tower_arithmetic() {
        // A checkpoint of its own, so that no other test's CLIP (and the
        // embeddings it keeps in memory) is shared with this one.
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/clip-tiny");
        let own = tempfile::tempdir().unwrap();
        for f in std::fs::read_dir(&fixture).unwrap() {
            let f = f.unwrap().path();
            std::fs::copy(&f, own.path().join(f.file_name().unwrap())).unwrap();
        }
        let dir = own.path();
        let vocab = Vocabulary::parse(BUILTIN, "builtin").unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let cache = FeatureCache::new(tmp.path());
        let files = || std::fs::read_dir(tmp.path()).unwrap().count();
        let f32_clip = clip(dir, Precision::F32).unwrap();
        let q8_clip = clip(dir, Precision::Q8).unwrap();
        let a = tag_embeddings(&f32_clip, &vocab, Some(&cache)).unwrap();
        assert_eq!(files(), 1);
        let b = tag_embeddings(&q8_clip, &vocab, Some(&cache)).unwrap();
        let apart = q8_clip.text.precision() == VisionPrecision::Int8;
        assert_eq!(files(), if apart { 2 } else { 1 });
        let rows = |t: &Tensor| t.to_vec2::<f32>().unwrap();
        let (a, b) = (rows(&a), rows(&b));
        for (x, y) in a.iter().zip(&b) {
            let dot: f32 = x.iter().zip(y).map(|(p, q)| p * q).sum();
            let n = |v: &[f32]| v.iter().map(|p| p * p).sum::<f32>().sqrt();
            let cos = dot / (n(x) * n(y));
            assert!(cos > 0.99, "8-bit tag embedding at cosine {cos}");
        }
        if apart {
            assert_ne!(
                a, b,
                "the 8-bit tower's embeddings were read from f32's entry"
            );
        }
    }
}
