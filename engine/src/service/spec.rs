//! What determines the music, apart from how it is delivered.
//!
//! A [`Request`] says what a client wants, in its terms (a video path, a
//! delivery ring). [`resolve`] turns it, once per request, into a
//! [`MusicSpec`]: the video probed and identified, the engine chosen and
//! pinned to its checkpoint, the user's cut list read, every value checked.
//! Everything the music depends on is a field of the spec and the cache key
//! is a hash of the whole spec serialised, so a field added later cannot be
//! forgotten by the key and serve stale audio. Chunk size, ring capacity and
//! supersede are delivery and stay in the request.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{EngineChoice, EngineConfig, MAX_DURATION, MAX_PROMPT_BYTES, Request};
use crate::error::{Error, Result};
use crate::sketch::Meter;
use crate::video::VideoInfo;

/// Bumped whenever an engine's output for the same spec changes, so stale
/// audio is never served.
const FORMAT: &str = "vidmusician-audio-v6";

/// Everything that determines the music. Serialised whole for the cache key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MusicSpec {
    /// The video scored, or `None` for music from the prompt alone.
    pub video: Option<VideoId>,
    /// The part of the source the music covers, seconds of the video (or of
    /// the prompt's piece): the asked range clipped to the video's end and
    /// to a preview's end.
    pub span: Span,
    /// A preview covers the start of the video only; the analysis stops at
    /// its end, which changes what the composer sees.
    pub preview_until: Option<f64>,
    /// How fast the video plays where the music goes.
    pub playrate: f64,
    /// Tempo in BPM; `None` lets the engine choose.
    pub tempo: Option<f64>,
    /// A time of the piece (seconds from its first frame, not from the
    /// video's start) where a bar starts.
    pub downbeat: Option<f64>,
    pub meter: Meter,
    pub prompt: String,
    pub rhythm_strength: f32,
    pub semantic_strength: f32,
    /// The engine that runs, resolved, with the checkpoint it runs.
    pub engine: EngineId,
    pub seed: u64,
    pub sampling: Sampling,
    pub sample_rate: u32,
    /// The user's cuts, when given: they replace the detected ones, or join
    /// them.
    pub cuts: Option<UserCuts>,
    /// A hash of the vocabulary the pictures are tagged with (the zero-shot
    /// engine; `None` for the others).
    pub vocabulary: Option<String>,
    /// The rhythm curve from CLIP's patch tokens rather than the weight-free
    /// encoder (the zero-shot engine).
    pub clip_rhythm: bool,
    /// Stretches made again with seeds of their own, in the order they were
    /// made (a later one over an earlier one wins). Left out of the key when
    /// empty, so a piece without them keeps the key it always had.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sections: Vec<Section>,
}

/// A stretch of a piece made again with another seed: seconds of the
/// music. The engine moves its ends out to the music's bar lines (when it
/// has a tempo) and joins it to the music around it with a short crossfade
/// inside the stretch, so nothing outside it changes.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Section {
    pub start: f64,
    pub end: f64,
    pub seed: u64,
}

/// Most section edits a piece takes.
pub const MAX_SECTIONS: usize = 64;

/// What identifies a video file cheaply but safely: its canonical path,
/// size, modification time and a hash of its first and last mebibyte (so a
/// file replaced in place with the same size and time still changes key).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VideoId {
    pub path: PathBuf,
    pub size: u64,
    pub modified_ns: u128,
    pub sample_hash: String,
}

/// Seconds of the source, start < end.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Span {
    pub start: f64,
    pub end: f64,
}

impl Span {
    /// The music's length at `playrate`, seconds.
    pub fn music_seconds(&self, playrate: f64) -> f64 {
        (self.end - self.start) / playrate
    }
}

/// The engine and what pins its output: the checkpoint's fingerprint and the
/// precision its weights run at.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineId {
    pub choice: EngineChoice,
    /// The MusicGen checkpoint's fingerprint; `None` for engines without one.
    pub model: Option<String>,
    pub precision: Option<crate::neural::Precision>,
    /// The CLIP checkpoint's fingerprint, for engines that read the pictures
    /// with it.
    pub clip: Option<String>,
    /// The adapter file's content hash, for the vidmusician engine. Left out
    /// of the key when absent, so other engines' keys are what they were.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adapter: Option<String>,
}

/// The neural engines' sampling settings; `None` is the model's default.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sampling {
    pub guidance: Option<f64>,
    pub temperature: Option<f64>,
    pub top_k: Option<usize>,
}

/// Cut times the user gave, seconds of the video, sorted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserCuts {
    pub times: Vec<f64>,
    /// Join the detected cuts rather than replace them.
    pub merge: bool,
}

/// Where a request's cuts come from.
#[derive(Debug, Clone, PartialEq)]
pub enum CutSource {
    /// A cut list file (EDL, OTIO, FCPXML, CSV/TXT), read when the request
    /// is resolved, with the video's frame rate for timecodes.
    File(PathBuf),
    /// Times already known (a host's markers), seconds of the video; those
    /// past the video's end are dropped.
    Times(Vec<f64>),
}

/// The user's cuts as a request carries them.
#[derive(Debug, Clone, PartialEq)]
pub struct CutsRequest {
    pub source: CutSource,
    pub merge: bool,
}

/// A request made concrete: the spec, and what the engines need to make it
/// that is not part of the music's identity.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub spec: MusicSpec,
    /// The video's file and what a probe found, read once per request.
    pub video: Option<(PathBuf, VideoInfo)>,
    /// The MusicGen folder, for neural engines.
    pub model: Option<PathBuf>,
    /// The CLIP folder, for engines that read the pictures with it.
    pub clip: Option<PathBuf>,
    /// The vidmusician engine's adapter file.
    pub adapter: Option<PathBuf>,
    /// The zero-shot engine's vocabulary, read and checked.
    pub vocabulary: Option<std::sync::Arc<crate::analysis::tags::Vocabulary>>,
    /// Why `auto` chose the engine it chose, and what a better one needs.
    pub why: Option<String>,
    /// Where a neural engine's decoder runs.
    pub device: crate::neural::device::DeviceChoice,
}

impl MusicSpec {
    /// The cache key: a hash of the format and the whole spec.
    pub fn key(&self) -> String {
        let mut h = blake3::Hasher::new();
        h.update(FORMAT.as_bytes());
        h.update(&[0]);
        // Serialising a struct of plain numbers, strings and options
        // cannot fail; a failure would still change the key, not reuse one.
        match serde_json::to_vec(self) {
            Ok(json) => h.update(&json),
            Err(e) => h.update(e.to_string().as_bytes()),
        };
        h.finalize().to_hex()[..32].to_string()
    }
}

/// Turns `request` into the spec of its music: probes the video once,
/// identifies it, picks the engine, reads the user's cut list and checks
/// every value. Nothing slow happens here beyond a probe and reading the
/// first and last mebibyte of the video.
pub fn resolve(config: &EngineConfig, request: &Request) -> Result<Resolved> {
    validate(request)?;
    let video = match &request.video {
        Some(p) => Some((p.clone(), crate::video::probe(p)?)),
        None => None,
    };
    let video_id = match &request.video {
        Some(p) => Some(video_identity(p)?),
        None => None,
    };
    let picked = pick_engine(config, request)?;
    let choice = picked.choice;
    let engine = EngineId {
        choice,
        model: picked.model.as_deref().map(model_fingerprint),
        precision: picked.model.is_some().then_some(config.precision),
        clip: picked.clip.as_deref().map(model_fingerprint),
        adapter: match &picked.adapter {
            Some(p) => Some(file_hash(p)?),
            None => None,
        },
    };
    // The vocabulary is read and checked now, before any work.
    let (vocabulary, vocabulary_hash) = if choice == EngineChoice::ZeroShot {
        let (text, origin) = match &request.vocabulary {
            Some(p) => (
                std::fs::read_to_string(p).map_err(|e| Error::opening(p, e))?,
                p.display().to_string(),
            ),
            None => (
                crate::analysis::tags::BUILTIN.to_string(),
                "the built-in vocabulary".to_string(),
            ),
        };
        let v = crate::analysis::tags::Vocabulary::parse(&text, &origin)?;
        (
            Some(std::sync::Arc::new(v)),
            Some(blake3::hash(text.as_bytes()).to_hex()[..16].to_string()),
        )
    } else {
        (None, None)
    };
    let known_length = video
        .as_ref()
        .map(|(_, info)| info.duration)
        .filter(|d| *d > 0.0);
    let span = span(request, known_length)?;
    let cuts = match &request.cuts {
        Some(c) => Some(read_user_cuts(c, video.as_ref(), known_length)?),
        None => None,
    };
    let spec = MusicSpec {
        video: video_id,
        span,
        preview_until: request.preview_until,
        playrate: request.playrate,
        tempo: request.tempo,
        downbeat: request.downbeat,
        meter: request.meter,
        prompt: request.prompt.clone(),
        rhythm_strength: request.rhythm_strength,
        semantic_strength: request.semantic_strength,
        engine,
        seed: request.seed,
        sampling: Sampling {
            guidance: request.guidance,
            temperature: request.temperature,
            top_k: request.top_k,
        },
        sample_rate: request.sample_rate,
        cuts,
        vocabulary: vocabulary_hash,
        clip_rhythm: choice == EngineChoice::ZeroShot && request.clip_rhythm,
        sections: request.sections.clone(),
    };
    Ok(Resolved {
        spec,
        video,
        model: picked.model,
        clip: picked.clip,
        adapter: picked.adapter,
        vocabulary,
        why: picked.why,
        device: request.device.unwrap_or(config.device),
    })
}

/// An engine picked for a request, with the model folders it runs.
struct Picked {
    choice: EngineChoice,
    model: Option<PathBuf>,
    clip: Option<PathBuf>,
    adapter: Option<PathBuf>,
    why: Option<String>,
}

/// A hash of a file's whole content (adapters are a few to a hundred MB),
/// kept per path, size and modification time: the plugin resolves on the
/// host's main thread, and hashing a large adapter there on every request
/// would cost a tenth of a second each time.
fn file_hash(path: &Path) -> Result<String> {
    type Seen = (PathBuf, u64, Option<std::time::SystemTime>);
    static HASHES: parking_lot::Mutex<Vec<(Seen, String)>> = parking_lot::Mutex::new(Vec::new());
    let meta = std::fs::metadata(path).map_err(|e| Error::opening(path, e))?;
    let seen: Seen = (path.to_path_buf(), meta.len(), meta.modified().ok());
    if let Some((_, h)) = HASHES.lock().iter().find(|(s, _)| *s == seen) {
        return Ok(h.clone());
    }
    let mut h = blake3::Hasher::new();
    let f = std::fs::File::open(path).map_err(|e| Error::opening(path, e))?;
    h.update_reader(f).map_err(|e| Error::io(path, e))?;
    let hash = h.finalize().to_hex()[..32].to_string();
    let mut cache = HASHES.lock();
    // A few adapters at most in a session; an old entry for the same path
    // is replaced.
    cache.retain(|(s, _)| s.0 != seen.0);
    cache.push((seen, hash.clone()));
    Ok(hash)
}

/// The engine for `request`. `auto` scores a video with the best engine
/// installed (vidmusician when MusicGen, CLIP and an adapter for them are
/// there, else zero-shot when MusicGen and CLIP are, else the embedded
/// composer, saying what a better one needs) and turns text alone into music
/// with MusicGen.
fn pick_engine(config: &EngineConfig, request: &Request) -> Result<Picked> {
    use crate::neural::hub::{ModelKind, find_model_of};
    let dir = config.model_dir.as_deref();
    let musicgen = || find_model_of(&config.text_model, Some(ModelKind::MusicGen), dir);
    let clip = || find_model_of(&config.clip_model, Some(ModelKind::Clip), dir);
    let has_video = request.video.is_some();
    let picked = |choice, model, clip, why| Picked {
        choice,
        model,
        clip,
        adapter: None,
        why,
    };
    // The adapter named, or the one found for the MusicGen and CLIP in use.
    let adapter = || -> Result<(PathBuf, String)> {
        if let Some(p) = &config.adapter {
            if !p.is_file() {
                return Err(Error::NotFound(p.clone()));
            }
            return Ok((p.clone(), format!("the adapter {} was named", p.display())));
        }
        let width = crate::neural::models::clip::ClipConfig::load(&clip()?.join("config.json"))?
            .vision_config
            .hidden_size;
        crate::neural::hub::pick_adapter(&config.text_model, width, dir)
            .map(|a| {
                let why = format!(
                    "a stage-{} adapter for {} is installed ({})",
                    a.info.stage,
                    config.text_model,
                    a.path.display()
                );
                (a.path, why)
            })
            .ok_or_else(|| {
                Error::InvalidSetting(format!(
                    "no adapter for {} and {} in the model folders: train one with `vidmusician train`, or name one with --adapter",
                    config.text_model, config.clip_model
                ))
            })
    };
    let with_adapter = |(path, why): (PathBuf, String), auto: bool| -> Result<Picked> {
        Ok(Picked {
            adapter: Some(path),
            ..picked(
                EngineChoice::VidMusician,
                Some(musicgen()?),
                Some(clip()?),
                auto.then_some(why),
            )
        })
    };
    // Auto scores a video with an adapter when one is there with its models;
    // a named one must be there.
    if request.engine == EngineChoice::Auto && has_video {
        if config.adapter.is_some() {
            return with_adapter(adapter()?, true);
        }
        if musicgen().is_ok()
            && clip().is_ok()
            && let Ok(found) = adapter()
        {
            return with_adapter(found, true);
        }
    }
    match request.engine {
        EngineChoice::VidMusician => {
            if !has_video {
                return Err(Error::InvalidSetting(
                    "the vidmusician engine scores a video: give one, or use the text engine"
                        .into(),
                ));
            }
            with_adapter(adapter()?, false)
        }
        EngineChoice::Auto if has_video => match (musicgen(), clip()) {
            (Ok(m), Ok(c)) => Ok(picked(
                EngineChoice::ZeroShot,
                Some(m),
                Some(c),
                Some(format!(
                    "{} and {} are installed",
                    config.text_model, config.clip_model
                )),
            )),
            (m, c) => {
                let missing: Vec<&str> = [
                    m.is_err().then_some(config.text_model.as_str()),
                    c.is_err().then_some(config.clip_model.as_str()),
                ]
                .into_iter()
                .flatten()
                .collect();
                let pulls: Vec<String> = missing
                    .iter()
                    .map(|r| format!("vidmusician models pull {r}"))
                    .collect();
                Ok(picked(
                    EngineChoice::Sketch,
                    None,
                    None,
                    Some(format!(
                        "the zero-shot engine needs {} (get {}: {})",
                        missing.join(" and "),
                        if missing.len() == 1 { "it" } else { "them" },
                        pulls.join(" and ")
                    )),
                ))
            }
        },
        EngineChoice::Auto | EngineChoice::Text => {
            let m = musicgen()?;
            let why = (request.engine == EngineChoice::Auto)
                .then(|| "music from the prompt alone: there is no video".to_string());
            Ok(picked(EngineChoice::Text, Some(m), None, why))
        }
        EngineChoice::ZeroShot => {
            if !has_video {
                return Err(Error::InvalidSetting(
                    "the zero-shot engine scores a video: give one, or use the text engine".into(),
                ));
            }
            let m = musicgen()?;
            let c = clip()?;
            Ok(picked(EngineChoice::ZeroShot, Some(m), Some(c), None))
        }
        EngineChoice::Sketch => {
            if !has_video {
                return Err(Error::InvalidSetting(
                    "the sketch engine scores a video: give one, or use the text engine".into(),
                ));
            }
            Ok(picked(EngineChoice::Sketch, None, None, None))
        }
    }
}

/// The part of the source the music covers: the range (all of it when
/// none), clipped to the video's known length and to a preview's end.
fn span(request: &Request, video_length: Option<f64>) -> Result<Span> {
    let (start, mut end) = match (request.range, video_length, request.duration) {
        (Some((a, b)), _, _) => (a, b),
        (None, Some(d), _) => (0.0, d),
        // A video of unstated length: as far as it goes.
        (None, None, _) if request.video.is_some() => (0.0, f64::INFINITY),
        (None, None, Some(d)) => (0.0, d),
        (None, None, None) => {
            return Err(Error::InvalidSetting(
                "no video and no duration: say how long the music should be".into(),
            ));
        }
    };
    if let Some(d) = video_length {
        if start >= d {
            return Err(Error::InvalidSetting(format!(
                "the range starts at {start:.2} s, at or past the end of the video ({d:.2} s)"
            )));
        }
        end = end.min(d);
    }
    if let Some(p) = request.preview_until {
        end = end.min(p);
    }
    if end <= start {
        return Err(Error::InvalidSetting(format!(
            "nothing to compose: the piece would last {:.2} s",
            ((end - start) / request.playrate).max(0.0)
        )));
    }
    Ok(Span { start, end })
}

/// Reads the user's cuts and checks them against the video: a cut past its
/// end means the list belongs to another video (or another cut of it).
fn read_user_cuts(
    request: &CutsRequest,
    video: Option<&(PathBuf, VideoInfo)>,
    length: Option<f64>,
) -> Result<UserCuts> {
    let Some((_, info)) = video else {
        return Err(Error::InvalidSetting(
            "a cut list needs a video: the cuts are times of the video".into(),
        ));
    };
    let (mut times, origin) = match &request.source {
        CutSource::File(path) => {
            let fps =
                (info.frame_rate.is_finite() && info.frame_rate > 0.0).then_some(info.frame_rate);
            let list = crate::edit::read_cuts(path, fps)?;
            (list.cuts, path.display().to_string())
        }
        CutSource::Times(t) => (t.clone(), "the cut list".to_string()),
    };
    if let Some(bad) = times.iter().find(|t| !(t.is_finite() && **t >= 0.0)) {
        return Err(Error::InvalidSetting(format!(
            "{origin}: a cut at {bad} s; cut times must be 0 or more"
        )));
    }
    // A host's markers may run past a video shorter than its item: those
    // are simply not in the video. A file's cut past the end means the
    // file is another video's.
    if let (Some(d), CutSource::Times(_)) = (length, &request.source) {
        times.retain(|t| *t <= d);
    }
    if let Some(d) = length
        && let Some(last) = times.iter().copied().filter(|t| *t > d).reduce(f64::max)
    {
        return Err(Error::CutPastEnd {
            list: origin,
            time: last,
            end: d,
            video: info.path.clone(),
        });
    }
    times.sort_by(f64::total_cmp);
    times.dedup_by(|a, b| (*a - *b).abs() < crate::edit::DEDUP_S);
    // A cut at the very start is the first shot beginning, not a cut.
    times.retain(|t| *t > crate::edit::DEDUP_S);
    Ok(UserCuts {
        times,
        merge: request.merge,
    })
}

/// The identity of the video file at `path`.
pub fn video_identity(path: &Path) -> Result<VideoId> {
    use std::io::Read;
    let canon = std::fs::canonicalize(path).map_err(|e| Error::opening(path, e))?;
    let meta = std::fs::metadata(&canon).map_err(|e| Error::io(path, e))?;
    let modified_ns = meta
        .modified()
        .ok()
        .and_then(|m| m.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    let mut h = blake3::Hasher::new();
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
    Ok(VideoId {
        path: canon,
        size: meta.len(),
        modified_ns,
        sample_hash: h.finalize().to_hex()[..32].to_string(),
    })
}

/// Identifies a checkpoint cheaply: its folder, its config and the size and time of
/// its weight files, so replaced weights never serve stale audio.
pub(crate) fn model_fingerprint(dir: &Path) -> String {
    let mut h = blake3::Hasher::new();
    h.update(dir.to_string_lossy().as_bytes());
    if let Ok(c) = std::fs::read(dir.join("config.json")) {
        h.update(&c);
    }
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    names.sort();
    for p in names {
        if p.extension().is_some_and(|e| e == "safetensors")
            && let Ok(m) = std::fs::metadata(&p)
        {
            h.update(p.to_string_lossy().as_bytes());
            h.update(&m.len().to_le_bytes());
            if let Ok(t) = m.modified()
                && let Ok(d) = t.duration_since(std::time::UNIX_EPOCH)
            {
                h.update(&d.as_nanos().to_le_bytes());
            }
        }
    }
    h.finalize().to_hex()[..16].to_string()
}

/// Checks a request's values, before anything is read.
pub(crate) fn validate(r: &Request) -> Result<()> {
    if !(8_000..=384_000).contains(&r.sample_rate) {
        return Err(Error::InvalidSetting(format!(
            "sample rate {} Hz (expected 8000–384000)",
            r.sample_rate
        )));
    }
    if r.chunk_frames == 0 || r.chunk_frames > 1 << 20 {
        return Err(Error::InvalidSetting(format!(
            "chunk size {} frames",
            r.chunk_frames
        )));
    }
    if let Some(t) = r.tempo
        && !(t.is_finite() && (20.0..=400.0).contains(&t))
    {
        return Err(Error::InvalidSetting(format!(
            "tempo {t} BPM (expected 20–400)"
        )));
    }
    if let Some(u) = r.preview_until
        && !(u.is_finite() && u > 0.0)
    {
        return Err(Error::InvalidSetting(format!("preview of {u} s")));
    }
    if !(0.0..=1.0).contains(&r.rhythm_strength) {
        return Err(Error::InvalidSetting(format!(
            "rhythm strength {} (expected 0–1)",
            r.rhythm_strength
        )));
    }
    if !(0.0..=1.0).contains(&r.semantic_strength) {
        return Err(Error::InvalidSetting(format!(
            "semantic strength {} (expected 0–1)",
            r.semantic_strength
        )));
    }
    Meter::new(r.meter.beats.into(), r.meter.unit.into())?;
    if r.sections.len() > MAX_SECTIONS {
        return Err(Error::InvalidSetting(format!(
            "{} section edits (at most {MAX_SECTIONS})",
            r.sections.len()
        )));
    }
    for s in &r.sections {
        if !(s.start.is_finite() && s.end.is_finite() && 0.0 <= s.start && s.start < s.end) {
            return Err(Error::InvalidSetting(format!(
                "section {:.3}–{:.3} s (expected 0 ≤ start < end)",
                s.start, s.end
            )));
        }
    }
    if r.prompt.len() > MAX_PROMPT_BYTES {
        return Err(Error::InvalidSetting(format!(
            "prompt of {} bytes (at most {MAX_PROMPT_BYTES})",
            r.prompt.len()
        )));
    }
    if let Some(d) = r.downbeat
        && !d.is_finite()
    {
        return Err(Error::InvalidSetting(format!("downbeat at {d} s")));
    }
    if let Some((a, b)) = r.range
        && !(a.is_finite() && b.is_finite() && a >= 0.0 && b > a)
    {
        return Err(Error::InvalidSetting(format!("time range {a}–{b} s")));
    }
    if !(r.playrate.is_finite() && (0.05..=20.0).contains(&r.playrate)) {
        return Err(Error::InvalidSetting(format!(
            "playrate {} (expected 0.05–20)",
            r.playrate
        )));
    }
    match (r.video.is_some(), r.duration) {
        (false, None) => {
            return Err(Error::InvalidSetting(
                "no video and no duration: say how long the music should be".into(),
            ));
        }
        (_, Some(d)) if !(d.is_finite() && d > 0.0 && d <= MAX_DURATION) => {
            return Err(Error::InvalidSetting(format!(
                "duration {d} s (expected above 0 and at most {MAX_DURATION} s)"
            )));
        }
        _ => {}
    }
    if let Some(g) = r.guidance
        && !(g.is_finite() && (0.0..=100.0).contains(&g))
    {
        return Err(Error::InvalidSetting(format!(
            "guidance {g} (expected 0–100)"
        )));
    }
    if let Some(t) = r.temperature
        && !(t.is_finite() && t > 0.0 && t <= 100.0)
    {
        return Err(Error::InvalidSetting(format!(
            "temperature {t} (expected above 0 and at most 100)"
        )));
    }
    if let Some(k) = r.top_k
        && k == 0
    {
        return Err(Error::InvalidSetting(
            "top-k of 0 (sample among at least 1 token)".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    /// A spec with every optional field present, so every leaf can be moved.
    fn full_spec() -> MusicSpec {
        MusicSpec {
            video: Some(VideoId {
                path: PathBuf::from("/videos/a.mp4"),
                size: 1234,
                modified_ns: 5678,
                sample_hash: "abc".into(),
            }),
            span: Span {
                start: 1.0,
                end: 9.5,
            },
            preview_until: Some(20.0),
            playrate: 1.0,
            tempo: Some(120.0),
            downbeat: Some(0.25),
            meter: Meter::COMMON,
            prompt: "warm strings".into(),
            rhythm_strength: 0.5,
            semantic_strength: 0.75,
            engine: EngineId {
                choice: EngineChoice::Text,
                model: Some("0123abcd".into()),
                precision: Some(crate::neural::Precision::Q8),
                clip: Some("4567cdef".into()),
                adapter: Some("fedcba98".into()),
            },
            seed: 7,
            sampling: Sampling {
                guidance: Some(3.0),
                temperature: Some(1.0),
                top_k: Some(250),
            },
            sample_rate: 48_000,
            cuts: Some(UserCuts {
                times: vec![1.5, 3.0],
                merge: false,
            }),
            vocabulary: Some("89ab".into()),
            clip_rhythm: false,
            sections: vec![Section {
                start: 2.0,
                end: 4.0,
                seed: 9,
            }],
        }
    }

    /// Every leaf of a JSON value, as a JSON pointer.
    fn leaves(v: &Value, at: String, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                for (k, x) in m {
                    leaves(x, format!("{at}/{k}"), out);
                }
            }
            Value::Array(a) => {
                for (i, x) in a.iter().enumerate() {
                    leaves(x, format!("{at}/{i}"), out);
                }
            }
            _ => out.push(at),
        }
    }

    /// Another value of the same kind that still reads back as a spec.
    fn moved(v: &Value, spec: &Value, pointer: &str) -> Value {
        match v {
            Value::Bool(b) => Value::Bool(!b),
            Value::Number(n) if n.is_u64() => Value::from(n.as_u64().unwrap_or(0) ^ 1),
            Value::Number(n) => Value::from(n.as_f64().unwrap_or(0.0) + 0.5),
            Value::String(s) => {
                // An enum's variant: another of its variants.
                let mut other = spec.clone();
                for candidate in EngineChoice::ALL
                    .iter()
                    .map(|e| e.as_str().to_string())
                    .chain(["F32".to_string(), format!("{s}x")])
                {
                    if candidate != *s {
                        *other.pointer_mut(pointer).unwrap() = Value::String(candidate.clone());
                        if serde_json::from_value::<MusicSpec>(other.clone()).is_ok() {
                            return Value::String(candidate);
                        }
                    }
                }
                Value::String(format!("{s}x"))
            }
            other => panic!("unexpected leaf {other} at {pointer}"),
        }
    }

    #[test]
    fn changing_any_field_changes_the_key() {
        let spec = full_spec();
        let base = spec.key();
        let json = serde_json::to_value(&spec).unwrap();
        let mut pointers = Vec::new();
        leaves(&json, String::new(), &mut pointers);
        assert!(pointers.len() >= 20, "{pointers:?}");
        for p in &pointers {
            let mut changed = json.clone();
            let leaf = changed.pointer(p).unwrap().clone();
            *changed.pointer_mut(p).unwrap() = moved(&leaf, &json, p);
            let other: MusicSpec = serde_json::from_value(changed)
                .unwrap_or_else(|e| panic!("{p}: the moved spec does not read: {e}"));
            assert_ne!(other, spec, "{p}");
            assert_ne!(other.key(), base, "changing {p} kept the cache key");
        }
        // Each optional field, absent.
        if let Value::Object(top) = &json {
            for (k, v) in top {
                let mut changed = json.clone();
                changed[k] = Value::Null;
                if let Ok(other) = serde_json::from_value::<MusicSpec>(changed) {
                    assert!(!v.is_null());
                    assert_ne!(other.key(), base, "dropping {k} kept the cache key");
                }
            }
        }
    }

    #[test]
    fn an_adapter_rewritten_in_place_gets_a_new_hash() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.safetensors");
        std::fs::write(&p, b"first").unwrap();
        let first = file_hash(&p).unwrap();
        assert_eq!(
            file_hash(&p).unwrap(),
            first,
            "the same file, the same hash"
        );
        std::fs::write(&p, b"second!").unwrap();
        assert_ne!(file_hash(&p).unwrap(), first, "a stale hash was kept");
    }

    #[test]
    fn engines_without_an_adapter_keep_the_keys_they_had() {
        // Music cached before adapters existed is still found.
        let mut spec = full_spec();
        spec.engine.adapter = None;
        let json = serde_json::to_value(&spec).unwrap();
        assert!(json["engine"].get("adapter").is_none(), "{json}");
        let old = serde_json::json!({
            "choice": "text", "model": "0123abcd", "precision": "Q8", "clip": "4567cdef"
        });
        assert_eq!(json["engine"], old);
    }

    #[test]
    fn the_key_is_stable_for_the_same_spec() {
        assert_eq!(full_spec().key(), full_spec().key());
        let back: MusicSpec =
            serde_json::from_slice(&serde_json::to_vec(&full_spec()).unwrap()).unwrap();
        assert_eq!(back.key(), full_spec().key());
    }

    #[test]
    fn spans_follow_the_range_the_video_and_the_preview() {
        let mut r = Request::new("v.mp4");
        assert_eq!(
            span(&r, Some(10.0)).unwrap(),
            Span {
                start: 0.0,
                end: 10.0
            }
        );
        r.range = Some((2.0, 30.0));
        assert_eq!(
            span(&r, Some(10.0)).unwrap(),
            Span {
                start: 2.0,
                end: 10.0
            }
        );
        r.preview_until = Some(5.0);
        assert_eq!(
            span(&r, Some(10.0)).unwrap(),
            Span {
                start: 2.0,
                end: 5.0
            }
        );
        r.range = Some((12.0, 30.0));
        r.preview_until = None;
        let e = span(&r, Some(10.0)).unwrap_err().to_string();
        assert!(e.contains("past the end of the video"), "{e}");
        let t = Request::text("x", 8.0);
        assert_eq!(
            span(&t, None).unwrap(),
            Span {
                start: 0.0,
                end: 8.0
            }
        );
    }
}
