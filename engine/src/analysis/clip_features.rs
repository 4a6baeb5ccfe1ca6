//! The method's hierarchical features from CLIP: global vectors of frames at
//! 1 fps (the pooled embedding, and its projection for scoring against
//! words), and the rhythm curve from the last layer's patch tokens at 25 fps
//! (d_t = 1 − cos over the flattened patches, d_0 = 1).
//!
//! Both are cached on disk under a key made of the video's content, the
//! model and the rates, so the plugin and the CLI compute them once per
//! video. The 25 fps pass runs CLIP 25 times a second of video, which is
//! slow on a CPU; engines use the weight-free curve unless told otherwise.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use candle_core::{Device, Tensor};

use super::rhythm::RhythmCurve;
use super::tags::{self, SectionTags, Vocabulary};
use super::{GLOBAL_FPS, LOCAL_FPS, Progress};
use crate::error::{Error, Result};
use crate::neural::models::clip::{Clip, FrameEncoder, RgbImage};
use crate::video::{Fit, Frame, SampleOptions, sample_frames};

/// Frames encoded in one batch: large enough for the matrix products to run
/// at speed, small enough to keep memory modest at ViT-L size.
const BATCH: usize = 16;

/// How many frames CLIP has encoded in this process (tests check that a
/// cached video is not encoded again).
static FRAMES_ENCODED: AtomicUsize = AtomicUsize::new(0);

/// Frames CLIP has encoded in this process so far.
pub fn frames_encoded() -> usize {
    FRAMES_ENCODED.load(Ordering::Relaxed)
}

/// Global features at [`GLOBAL_FPS`]: one row per frame.
#[derive(Debug, Clone, PartialEq)]
pub struct GlobalFeatures {
    /// The pooled class token (`pooler_output`), what the adapter reads.
    pub pooled: Vec<Vec<f32>>,
    /// The pooled token projected into the space shared with text
    /// (`image_embeds`), what words are scored against.
    pub projected: Vec<Vec<f32>>,
}

/// Runs `f` over the video's frames at `rate`, in batches of [`BATCH`],
/// sized and centre-cropped as CLIP takes them.
fn batched(
    path: &Path,
    clip: &dyn FrameEncoder,
    rate: f64,
    until: Option<f64>,
    cancel: &AtomicBool,
    progress: Progress<'_>,
    f: impl FnMut(&[RgbImage]) -> Result<()>,
) -> Result<()> {
    // Frames come at the size CLIP resizes to, centre-cropped square by the
    // sampler (the resize then has nothing to do; a smaller crop still runs).
    let size = clip.side();
    sample_batches(path, size, rate, until, cancel, progress, f)
}

/// The video's frames at `rate`, `size`×`size` (shortest side scaled, the
/// centre cropped), handed to `f` in batches of up to 16.
pub fn sample_batches(
    path: &Path,
    size: usize,
    rate: f64,
    until: Option<f64>,
    cancel: &AtomicBool,
    progress: Progress<'_>,
    mut f: impl FnMut(&[RgbImage]) -> Result<()>,
) -> Result<()> {
    let opts = SampleOptions {
        rate,
        size: size as u32,
        fit: Fit::CenterCrop,
        until,
    };
    let mut batch: Vec<Vec<u8>> = Vec::with_capacity(BATCH);
    let mut flush = |batch: &mut Vec<Vec<u8>>| -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let images = batch
            .iter()
            .map(|rgb| RgbImage::new(size, size, rgb))
            .collect::<Result<Vec<_>>>()?;
        f(&images)?;
        FRAMES_ENCODED.fetch_add(images.len(), Ordering::Relaxed);
        batch.clear();
        Ok(())
    };
    sample_frames(path, &opts, cancel, |frame| {
        batch.push(frame.rgb.clone());
        if batch.len() == BATCH {
            flush(&mut batch)?;
        }
        let span = until.map_or(frame.duration, |u| u.min(frame.duration));
        if span > 0.0 {
            progress((frame.time / span).min(1.0));
        }
        Ok(())
    })?;
    flush(&mut batch)?;
    progress(1.0);
    Ok(())
}

fn rows(t: &Tensor) -> Result<Vec<Vec<f32>>> {
    Ok(t.to_dtype(candle_core::DType::F32)?.to_vec2::<f32>()?)
}

/// CLIP's global features of frames handed over one at a time, encoded in
/// batches of [`BATCH`]: the one place they are computed, so that every way
/// of reading a video gives the same features.
struct Globals<'c> {
    clip: &'c dyn FrameEncoder,
    /// The side the frames come at (CLIP's resize; centre-cropped square).
    size: usize,
    batch: Vec<Vec<u8>>,
    out: GlobalFeatures,
}

impl<'c> Globals<'c> {
    fn new(clip: &'c dyn FrameEncoder) -> Self {
        Self {
            clip,
            size: clip.side(),
            batch: Vec::with_capacity(BATCH),
            out: GlobalFeatures {
                pooled: Vec::new(),
                projected: Vec::new(),
            },
        }
    }

    fn push(&mut self, frame: &Frame) -> Result<()> {
        if frame.size as usize != self.size {
            return Err(Error::InvalidSetting(format!(
                "a {0}×{0} frame for a CLIP that reads {1}×{1}",
                frame.size, self.size
            )));
        }
        self.push_rgb(&frame.rgb)
    }

    /// A `size`×`size` RGB picture.
    fn push_rgb(&mut self, rgb: &[u8]) -> Result<()> {
        self.batch.push(rgb.to_vec());
        if self.batch.len() == BATCH {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let images = self
            .batch
            .iter()
            .map(|rgb| RgbImage::new(self.size, self.size, rgb))
            .collect::<Result<Vec<_>>>()?;
        let v = self.clip.encode(&images, false)?;
        self.out.pooled.extend(v.pooled);
        self.out.projected.extend(v.projected);
        FRAMES_ENCODED.fetch_add(images.len(), Ordering::Relaxed);
        self.batch.clear();
        Ok(())
    }

    fn finish(mut self) -> Result<GlobalFeatures> {
        self.flush()?;
        Ok(self.out)
    }
}

/// CLIP's global features of the video's frames at 1 fps.
pub fn global_features(
    path: &Path,
    clip: &dyn FrameEncoder,
    until: Option<f64>,
    cancel: &AtomicBool,
    progress: Progress<'_>,
) -> Result<GlobalFeatures> {
    let mut globals = Globals::new(clip);
    let opts = SampleOptions {
        rate: GLOBAL_FPS,
        size: globals.size as u32,
        fit: Fit::CenterCrop,
        until,
    };
    sample_frames(path, &opts, cancel, |frame| {
        globals.push(frame)?;
        let span = until.map_or(frame.duration, |u| u.min(frame.duration));
        if span > 0.0 {
            progress((frame.time / span).min(1.0));
        }
        Ok(())
    })?;
    progress(1.0);
    globals.finish()
}

/// The weight-free analysis (`encoder` at 25 fps) and CLIP's global
/// features at 1 fps from one decode of the video: what
/// [`super::analyze_until`] and [`global_features`] give apart, to the bit,
/// for one decode and scaling pass instead of two (decoding is about half
/// of the weight-free pass's time on an HD video).
pub fn analysis_and_global(
    path: &Path,
    encoder: &mut dyn super::encoder::VisualEncoder,
    clip: &dyn FrameEncoder,
    until: Option<f64>,
    cancel: &AtomicBool,
    progress: Progress<'_>,
) -> Result<(super::Analysis, GlobalFeatures)> {
    let mut globals = Globals::new(clip);
    let size = globals.size as u32;
    let mut each = |frame: &Frame| globals.push(frame);
    let analysis = super::analyze_until_also(
        path,
        encoder,
        until,
        Some((size, &mut each)),
        cancel,
        progress,
    )?;
    Ok((analysis, globals.finish()?))
}

/// The rhythm curve at 25 fps from CLIP's last-layer patch tokens.
pub fn patch_curve(
    path: &Path,
    clip: &dyn FrameEncoder,
    until: Option<f64>,
    cancel: &AtomicBool,
    progress: Progress<'_>,
) -> Result<Vec<f32>> {
    curve_and(path, clip, until, cancel, progress, None)
}

/// CLIP's global features at 1 fps and its rhythm curve at 25 fps from one
/// decode of the video: what [`global_features`] and [`patch_curve`] give
/// apart, to the bit (each frame every second is encoded again among the
/// 1 fps frames, in their own batches as that pass makes them), for one
/// decode and scaling pass instead of two.
pub fn global_and_curve(
    path: &Path,
    clip: &dyn FrameEncoder,
    until: Option<f64>,
    cancel: &AtomicBool,
    progress: Progress<'_>,
) -> Result<(GlobalFeatures, Vec<f32>)> {
    let mut globals = Globals::new(clip);
    let curve = curve_and(path, clip, until, cancel, progress, Some(&mut globals))?;
    Ok((globals.finish()?, curve))
}

/// [`patch_curve`], handing `globals` every frame a 1 fps pass would read.
fn curve_and(
    path: &Path,
    clip: &dyn FrameEncoder,
    until: Option<f64>,
    cancel: &AtomicBool,
    progress: Progress<'_>,
    mut globals: Option<&mut Globals<'_>>,
) -> Result<Vec<f32>> {
    let every = (LOCAL_FPS / GLOBAL_FPS).round() as usize;
    let mut curve = RhythmCurve::default();
    let mut index = 0usize;
    batched(path, clip, LOCAL_FPS, until, cancel, progress, |images| {
        if let Some(g) = globals.as_mut() {
            for (i, image) in images.iter().enumerate() {
                if (index + i).is_multiple_of(every) {
                    g.push_rgb(image.rgb)?;
                }
            }
        }
        index += images.len();
        for row in clip.encode(images, true)?.patches {
            curve.push(&row);
        }
        Ok(())
    })?;
    Ok(curve.values)
}

/// The rhythm curve of a sequence of frames' patch tokens,
/// `(frames, patches, hidden)`: what [`patch_curve`] computes per batch.
pub fn curve_of_tokens(tokens: &Tensor) -> Result<Vec<f32>> {
    let mut curve = RhythmCurve::default();
    for row in rows(&tokens.flatten_from(1)?)? {
        curve.push(&row);
    }
    Ok(curve.values)
}

/// Features on disk, one safetensors file per key.
#[derive(Debug, Clone)]
pub struct FeatureCache {
    dir: PathBuf,
}

/// What a cached entry is of.
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureKey {
    /// The video's content (a hash of its sampled bytes and its size).
    pub content: String,
    /// The model's fingerprint.
    pub model: String,
    /// `global`, `local` or `tags`.
    pub kind: &'static str,
    pub fps: f64,
    pub until: Option<f64>,
}

impl FeatureKey {
    /// The key of `vocab`'s tag embeddings ([`tag_embeddings`]) by the CLIP
    /// of `fingerprint` whose tokenizer is `tokenizer` (the file's bytes):
    /// `content` is what the embeddings depend on, each tag's picture
    /// descriptions in order and how they are cut into tokens.
    pub fn tags(vocab: &Vocabulary, fingerprint: &str, tokenizer: &[u8]) -> Self {
        let mut h = blake3::Hasher::new();
        h.update(tokenizer);
        for (_, tag) in vocab.tags() {
            h.update(&[1]);
            for p in &tag.pictures {
                h.update(p.as_bytes());
                h.update(&[0]);
            }
        }
        Self {
            content: h.finalize().to_hex().to_string(),
            model: fingerprint.to_string(),
            kind: "tags",
            fps: 0.0,
            until: None,
        }
    }

    fn file_name(&self) -> String {
        let mut h = blake3::Hasher::new();
        h.update(b"vidmusician-features-v1\0");
        for part in [&self.content, &self.model, self.kind] {
            h.update(part.as_bytes());
            h.update(&[0]);
        }
        h.update(&self.fps.to_le_bytes());
        h.update(&self.until.unwrap_or(f64::NAN).to_le_bytes());
        format!("{}.safetensors", &h.finalize().to_hex()[..32])
    }
}

impl FeatureCache {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The tensors stored under `key`, if present and readable; a damaged
    /// entry is removed and treated as missing.
    fn get(&self, key: &FeatureKey) -> Option<std::collections::HashMap<String, Tensor>> {
        let p = self.dir.join(key.file_name());
        if !p.is_file() {
            return None;
        }
        match candle_core::safetensors::load(&p, &Device::Cpu) {
            Ok(t) => Some(t),
            Err(_) => {
                let _ = std::fs::remove_file(&p);
                None
            }
        }
    }

    /// Stores `tensors` under `key`, written to a temporary file and renamed,
    /// so a reader never sees half an entry.
    fn put(&self, key: &FeatureKey, tensors: &[(&str, Tensor)]) -> Result<()> {
        std::fs::create_dir_all(&self.dir).map_err(|e| Error::output(&self.dir, e))?;
        let p = self.dir.join(key.file_name());
        crate::audio::atomic_output(&p, |tmp| {
            let map: std::collections::HashMap<String, Tensor> = tensors
                .iter()
                .map(|(n, t)| (n.to_string(), t.clone()))
                .collect();
            candle_core::safetensors::save(&map, tmp).map_err(|e| Error::output(tmp, e))
        })
    }

    /// The global features of `key`'s video, computed by `compute` when not
    /// cached (and stored; a cache that cannot be written only costs time).
    pub fn global(
        &self,
        key: &FeatureKey,
        compute: impl FnOnce() -> Result<GlobalFeatures>,
    ) -> Result<GlobalFeatures> {
        if let Some(f) = self.cached_global(key) {
            return Ok(f);
        }
        let f = compute()?;
        self.store_global(key, &f)?;
        Ok(f)
    }

    /// The global features stored under `key`, if any.
    pub fn cached_global(&self, key: &FeatureKey) -> Option<GlobalFeatures> {
        let t = self.get(key)?;
        let (p, q) = (t.get("pooled")?, t.get("projected")?);
        Some(GlobalFeatures {
            pooled: rows(p).ok()?,
            projected: rows(q).ok()?,
        })
    }

    /// Stores `f` under `key` (nothing for no frames). A cache that cannot
    /// be written only costs time later, so only a failure to lay out the
    /// features is an error.
    pub fn store_global(&self, key: &FeatureKey, f: &GlobalFeatures) -> Result<()> {
        let as_tensor = |r: &[Vec<f32>]| -> Result<Tensor> {
            let w = r.first().map_or(0, Vec::len);
            let flat: Vec<f32> = r.iter().flatten().copied().collect();
            Ok(Tensor::from_vec(flat, (r.len(), w), &Device::Cpu)?)
        };
        if !f.pooled.is_empty() {
            let _ = self.put(
                key,
                &[
                    ("pooled", as_tensor(&f.pooled)?),
                    ("projected", as_tensor(&f.projected)?),
                ],
            );
        }
        Ok(())
    }

    /// The CLIP rhythm curve of `key`'s video, computed by `compute` when not
    /// cached.
    pub fn curve(
        &self,
        key: &FeatureKey,
        compute: impl FnOnce() -> Result<Vec<f32>>,
    ) -> Result<Vec<f32>> {
        if let Some(v) = self.cached_curve(key) {
            return Ok(v);
        }
        let v = compute()?;
        self.store_curve(key, &v)?;
        Ok(v)
    }

    /// The CLIP rhythm curve stored under `key`, if any.
    pub fn cached_curve(&self, key: &FeatureKey) -> Option<Vec<f32>> {
        self.get(key)?.get("curve")?.to_vec1::<f32>().ok()
    }

    /// Stores the curve `v` under `key` (nothing for an empty one; a cache
    /// that cannot be written only costs time later).
    pub fn store_curve(&self, key: &FeatureKey, v: &[f32]) -> Result<()> {
        if !v.is_empty() {
            let _ = self.put(
                key,
                &[(
                    "curve",
                    Tensor::from_vec(v.to_vec(), v.len(), &Device::Cpu)?,
                )],
            );
        }
        Ok(())
    }

    /// Tag embeddings of `shape` (tags, width) under `key` ([`FeatureKey::tags`]),
    /// computed by `compute` when not cached: the text tower's reading of a
    /// vocabulary is the same for every video, so a project opened again, or
    /// the next video, does not wait for it. An entry of another shape is
    /// made again.
    pub fn tags(
        &self,
        key: &FeatureKey,
        shape: (usize, usize),
        compute: impl FnOnce() -> Result<Tensor>,
    ) -> Result<Tensor> {
        if let Some(t) = self.get(key)
            && let Some(e) = t.get("tags")
            && e.dtype() == candle_core::DType::F32
            && e.dims2().is_ok_and(|d| d == shape)
        {
            return Ok(e.clone());
        }
        let e = compute()?;
        let _ = self.put(key, &[("tags", e.clone())]);
        Ok(e)
    }
}

/// Prompts the text tower reads per pass in [`tag_embeddings`]: enough rows
/// for its matmuls to run at speed (a tag's own two or three descriptions,
/// one pass each, left it mostly idle: three times as slow), few enough that a
/// large vocabulary's activations stay small.
const TEXT_BATCH: usize = 64;

/// One embedding per tag: the mean of its picture descriptions' unit-length
/// text embeddings, `(tags, projection)`. The descriptions of all tags are
/// read together; the text tower's attention is causal and pools at each
/// prompt's end token, so a prompt's embedding does not depend on what it is
/// batched with.
pub fn tag_embeddings(clip: &Clip, vocab: &Vocabulary) -> Result<Tensor> {
    let tags: Vec<_> = vocab.tags().map(|(_, tag)| tag).collect();
    if tags.is_empty() {
        return Err(Error::Vocabulary {
            origin: "the vocabulary".into(),
            line: 0,
            reason: "no tags: the vocabulary is empty".into(),
        });
    }
    let texts: Vec<&str> = tags
        .iter()
        .flat_map(|tag| tag.pictures.iter().map(String::as_str))
        .collect();
    let mut units = Vec::with_capacity(texts.len().div_ceil(TEXT_BATCH));
    for batch in texts.chunks(TEXT_BATCH) {
        let e = clip.encode_texts(batch)?.projected;
        units.push(e.broadcast_div(&e.sqr()?.sum_keepdim(1)?.sqrt()?)?);
    }
    let units = Tensor::cat(&units, 0)?;
    let mut rows = Vec::with_capacity(tags.len());
    let mut at = 0;
    for tag in tags {
        let n = tag.pictures.len();
        rows.push(units.narrow(0, at, n)?.mean(0)?);
        at += n;
    }
    Ok(Tensor::stack(&rows, 0)?)
}

/// The tags each section of the video takes: every 1 fps frame's projected
/// embedding scored against every tag (`tags`, from [`tag_embeddings`];
/// CLIP's scaled cosine similarity), then [`tags::choose`]. `bounds` are the
/// sections' starts.
pub fn tag_sections(
    clip: &Clip,
    vocab: &Vocabulary,
    tags: &Tensor,
    global: &GlobalFeatures,
    bounds: &[f64],
    duration: f64,
) -> Result<Vec<SectionTags>> {
    let logits: Vec<Vec<f32>> = if global.projected.is_empty() {
        Vec::new()
    } else {
        let w = global.projected[0].len();
        let flat: Vec<f32> = global.projected.iter().flatten().copied().collect();
        let frames = Tensor::from_vec(flat, (global.projected.len(), w), &Device::Cpu)?;
        clip.similarity(&frames, tags)?.to_vec2::<f32>()?
    };
    Ok(tags::choose(vocab, &logits, GLOBAL_FPS, bounds, duration))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::tags::BUILTIN;

    /// Read together (the built-in vocabulary's descriptions fill more than
    /// one batch), each tag's embedding is what its own descriptions give
    /// read alone.
    #[test]
    fn tag_embeddings_read_together_equal_each_tag_read_alone() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/clip-tiny");
        let clip = Clip::load(&dir).unwrap();
        let vocab = Vocabulary::parse(BUILTIN, "builtin").unwrap();
        let prompts: usize = vocab.tags().map(|(_, t)| t.pictures.len()).sum();
        assert!(
            prompts > TEXT_BATCH,
            "{prompts} descriptions fill one batch"
        );
        let got = tag_embeddings(&clip, &vocab)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        assert_eq!(got.len(), vocab.len());
        for (row, (_, tag)) in got.iter().zip(vocab.tags()) {
            let texts: Vec<&str> = tag.pictures.iter().map(String::as_str).collect();
            let e = clip.encode_texts(&texts).unwrap().projected;
            let unit = e.broadcast_div(&e.sqr().unwrap().sum_keepdim(1).unwrap().sqrt().unwrap());
            let want = unit.unwrap().mean(0).unwrap().to_vec1::<f32>().unwrap();
            let diff = row
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(diff < 1e-5, "{}: {diff}", tag.name);
        }
    }

    /// Kept on disk per vocabulary, tokenizer and model; an entry that is
    /// damaged or of another shape is made again.
    #[test]
    fn tag_embeddings_are_kept_on_disk_per_vocabulary_tokenizer_and_model() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/clip-tiny");
        let clip = Clip::load(&dir).unwrap();
        let vocab = |second: &str| {
            Vocabulary::parse(
                &format!("[mood]\ncalm | a calm scene | calm\ntense | {second} | tense\n"),
                "test",
            )
            .unwrap()
        };
        let tmp = tempfile::tempdir().unwrap();
        let cache = FeatureCache::new(tmp.path());
        let shape = (2, clip.config().projection_dim);
        let runs = std::cell::Cell::new(0);
        let get = |key: &FeatureKey, v: &Vocabulary| {
            cache
                .tags(key, shape, || {
                    runs.set(runs.get() + 1);
                    tag_embeddings(&clip, v)
                })
                .unwrap()
                .to_vec2::<f32>()
                .unwrap()
        };
        let v = vocab("a tense scene");
        let key = FeatureKey::tags(&v, "model", b"tokenizer");
        let made = get(&key, &v);
        assert_eq!(get(&key, &v), made);
        assert_eq!(runs.get(), 1, "read back, not made again");
        // Another description, tokenizer or model is another entry.
        let other = vocab("a tense and dark scene");
        assert_ne!(
            get(&FeatureKey::tags(&other, "model", b"tokenizer"), &other),
            made
        );
        get(&FeatureKey::tags(&v, "model", b"another tokenizer"), &v);
        get(&FeatureKey::tags(&v, "another model", b"tokenizer"), &v);
        assert_eq!(runs.get(), 4);
        // A damaged entry, then one of another shape.
        let file = tmp.path().join(key.file_name());
        std::fs::write(&file, b"not safetensors").unwrap();
        assert_eq!(get(&key, &v), made);
        let wrong = Tensor::zeros((3, shape.1), candle_core::DType::F32, &Device::Cpu).unwrap();
        cache.put(&key, &[("tags", wrong)]).unwrap();
        assert_eq!(get(&key, &v), made);
        assert_eq!(runs.get(), 6);
        assert_eq!(get(&key, &v), made);
        assert_eq!(runs.get(), 6);
    }
}
