//! The engine service: one thread that owns the models and does the work,
//! driven over channels by the CLI and the plugin alike.
//!
//! A [`Request`] goes in; [`Event`]s (progress, done, errors) come back on
//! a crossbeam channel for the control side, and the music comes back in
//! [`AudioChunk`]s on a lock-free SPSC ring ([`ChunkReader`]) that a
//! real-time thread can drain without allocating, freeing or locking: it
//! hands each chunk back with [`ChunkReader::retire`] so the last reference
//! is dropped on the engine thread, not the audio thread.
//!
//! Finished audio is cached on disk under a hash of everything that
//! determines it, so the same request is answered at once next time.

mod cache;
mod chunks;
mod engines;
pub mod overview;
pub(crate) mod spec;
mod worker;

pub use cache::{AudioCache, CacheMeta, cache_root};
pub use chunks::{AudioChunk, ChunkReader};
// What a client builds a request from, so it needs no other module.
pub use crate::neural::Precision;
pub use crate::sketch::Meter;
pub use engines::{clip_loads, clip_vision_loads, musicgen_loads, video_tags};
pub use overview::{
    CutMark, MusicOverview, MusicSource, Overview, OverviewRequest, Thumbnail, VideoOverview,
};
pub use spec::{
    CutSource, CutsRequest, EngineId, MAX_SECTIONS, MusicSpec, Resolved, Sampling, Section, Span,
    UserCuts, VideoId, resolve, video_identity,
};

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender, unbounded};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::analysis::Analysis;
use crate::audio::{Audio, LoudnessReport};
use crate::error::{Error, Result};

/// The longest prompt a request takes.
pub const MAX_PROMPT_BYTES: usize = 4096;

/// The longest piece a request asks for without a video, seconds.
pub const MAX_DURATION: f64 = 3600.0;

/// Which engine writes the music.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum EngineChoice {
    /// The best engine installed.
    #[default]
    Auto,
    /// The embedded composer (no weights).
    Sketch,
    /// MusicGen from the text prompt alone (the pictures are not read).
    Text,
    /// MusicGen prompted with what CLIP sees in the pictures, its accents
    /// moved onto the cuts.
    ZeroShot,
    /// MusicGen with a trained VidMusician adapter: CLIP's view of the
    /// pictures through cross-attention, their rhythm through in-attention.
    #[serde(rename = "vidmusician")]
    VidMusician,
}

impl EngineChoice {
    /// Every choice, in the order the plugin's Engine parameter numbers
    /// them (saved projects store that number: only ever append).
    pub const ALL: [EngineChoice; 5] = [
        EngineChoice::Auto,
        EngineChoice::Sketch,
        EngineChoice::Text,
        EngineChoice::ZeroShot,
        EngineChoice::VidMusician,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EngineChoice::Auto => "auto",
            EngineChoice::Sketch => "sketch",
            EngineChoice::Text => "text",
            EngineChoice::ZeroShot => "zero-shot",
            EngineChoice::VidMusician => "vidmusician",
        }
    }

    /// What the engine does, in a few words.
    pub fn describe(self) -> &'static str {
        match self {
            EngineChoice::Auto => "the best engine installed",
            EngineChoice::Sketch => "the embedded composer, driven by the pictures (no weights)",
            EngineChoice::Text => "MusicGen from the prompt alone (the pictures are not read)",
            EngineChoice::ZeroShot => {
                "MusicGen prompted with what CLIP sees in the pictures, its accents moved onto the cuts"
            }
            EngineChoice::VidMusician => {
                "MusicGen with a trained adapter (vidmusician train): the pictures' meaning and rhythm condition the music"
            }
        }
    }

    /// The choice numbered `index` in [`Self::ALL`].
    pub fn from_index(index: usize) -> Option<Self> {
        Self::ALL.get(index).copied()
    }

    /// This choice's number in [`Self::ALL`].
    pub fn index(self) -> usize {
        Self::ALL.iter().position(|e| *e == self).unwrap_or(0)
    }
}

impl std::fmt::Display for EngineChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for EngineChoice {
    type Err = Error;

    /// Reads an engine's name, in any case.
    fn from_str(s: &str) -> Result<Self> {
        let t = s.trim();
        Self::ALL
            .iter()
            .copied()
            .find(|e| e.as_str().eq_ignore_ascii_case(t))
            .ok_or_else(|| {
                let names: Vec<&str> = Self::ALL.iter().map(|e| e.as_str()).collect();
                Error::InvalidSetting(format!(
                    "engine {t:?} (expected one of: {})",
                    names.join(", ")
                ))
            })
    }
}

#[derive(Debug, Clone)]
pub struct Request {
    /// The video to score; `None` for text-to-music, which then needs `duration`.
    pub video: Option<PathBuf>,
    /// Length of the piece, seconds, when there is no video to take it from.
    pub duration: Option<f64>,
    /// Part of the video to score, seconds of the video; `None` is all of it.
    pub range: Option<(f64, f64)>,
    /// How fast the video plays where the music goes (a timeline item's
    /// playrate): 2 plays it in half the time, so the music is half as long
    /// and its accents fall at the video's times divided by 2.
    pub playrate: f64,
    /// Tempo in BPM; `None` lets the engine choose one that fits the cuts.
    pub tempo: Option<f64>,
    /// A time of the piece (seconds) where a bar starts, to put the music's
    /// bars on the host's; `None` lets the engine place them.
    pub downbeat: Option<f64>,
    /// What the music should be like, in words.
    pub prompt: String,
    /// How strongly the music marks the cuts, 0–1.
    pub rhythm_strength: f32,
    /// How much the pictures' content decides the music's mood, energy and
    /// sections, 0–1 (the prompt and moderate defaults decide the rest).
    pub semantic_strength: f32,
    /// The time signature the music's bars are written in.
    pub meter: crate::sketch::Meter,
    /// Analyse and score only up to this time of the video (seconds): a
    /// quick preview of a long video, to be replaced by the full piece.
    pub preview_until: Option<f64>,
    pub engine: EngineChoice,
    pub seed: u64,
    /// Neural engines: classifier-free guidance; `None` is the model's default.
    pub guidance: Option<f64>,
    /// Neural engines: sampling temperature; `None` is the model's default.
    pub temperature: Option<f64>,
    /// Neural engines: sample among this many most likely tokens; `None` is the
    /// model's default.
    pub top_k: Option<usize>,
    /// Output sample rate.
    pub sample_rate: u32,
    /// The user's cuts (their edit's cut list, a host's markers), used
    /// instead of or with the detected ones.
    pub cuts: Option<CutsRequest>,
    /// The zero-shot engine's vocabulary file; `None` is the built-in one.
    pub vocabulary: Option<PathBuf>,
    /// The zero-shot engine's rhythm curve from CLIP's patch tokens at 25 fps
    /// rather than the weight-free encoder (much slower on a CPU).
    pub clip_rhythm: bool,
    /// Stretches of the piece made again with other seeds (an editor's
    /// "regenerate this section"), oldest first.
    pub sections: Vec<Section>,
    /// Where the neural decoder runs for this request; `None`: the engine's
    /// [`EngineConfig::device`]. Not part of the cache key.
    pub device: Option<crate::neural::device::DeviceChoice>,
    /// Frames per chunk handed to the [`ChunkReader`].
    pub chunk_frames: usize,
    /// Capacity of the chunk ring; `0` sends no chunks (the whole piece
    /// still arrives with [`Event::Done`]).
    pub max_chunks: usize,
    /// Cancel every earlier request that has not finished.
    pub supersede: bool,
}

impl Request {
    pub fn new(video: impl Into<PathBuf>) -> Self {
        Self {
            video: Some(video.into()),
            duration: None,
            ..Self::text("", 0.0)
        }
    }

    /// Text to music: `seconds` of music for `prompt`, no video.
    pub fn text(prompt: &str, seconds: f64) -> Self {
        Self {
            video: None,
            duration: Some(seconds),
            range: None,
            playrate: 1.0,
            tempo: None,
            downbeat: None,
            prompt: prompt.to_string(),
            rhythm_strength: 1.0,
            semantic_strength: 1.0,
            meter: crate::sketch::Meter::COMMON,
            preview_until: None,
            engine: EngineChoice::Auto,
            seed: 0,
            guidance: None,
            temperature: None,
            top_k: None,
            sample_rate: crate::sketch::SAMPLE_RATE,
            cuts: None,
            vocabulary: None,
            clip_rhythm: false,
            sections: Vec::new(),
            device: None,
            chunk_frames: 4096,
            max_chunks: 0,
            supersede: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Stage {
    Analysing,
    Composing,
    Finishing,
}

/// What a finished request produced.
#[derive(Debug, Clone)]
pub struct Finished {
    pub audio: Arc<Audio>,
    /// The engine that actually ran (`auto` resolved).
    pub engine: EngineChoice,
    /// The tempo the music was written in, when the engine chose one.
    pub bpm: Option<f64>,
    /// A time of the piece (seconds) where one of its bars starts, when it
    /// has bars.
    pub downbeat: Option<f64>,
    pub analysis: Option<Arc<Analysis>>,
    pub loudness: Option<LoudnessReport>,
    /// The tags the pictures chose, per section (the zero-shot engine).
    pub tags: Option<Vec<crate::analysis::tags::SectionTags>>,
    /// Why `auto` chose this engine, and what a better one needs.
    pub why: Option<String>,
    /// Where a neural engine ran, and why there (`auto`'s choice, or the
    /// CPU after a device failed); for a piece from the cache, where it was
    /// made then. `None` for the composer.
    pub device: Option<String>,
    /// True when the audio came from the disk cache.
    pub cached: bool,
    pub cache_key: String,
}

#[derive(Debug, Clone)]
pub enum Event {
    Progress {
        id: u64,
        stage: Stage,
        fraction: f64,
    },
    Done {
        id: u64,
        result: Box<Finished>,
    },
    Failed {
        id: u64,
        error: Arc<Error>,
    },
    Cancelled {
        id: u64,
    },
    /// An overview asked for with [`Engine::overview`] (its failure is
    /// [`Event::Failed`], its cancellation [`Event::Cancelled`]).
    Overview {
        id: u64,
        overview: Arc<Overview>,
    },
}

impl Event {
    pub fn id(&self) -> u64 {
        match self {
            Event::Progress { id, .. }
            | Event::Done { id, .. }
            | Event::Failed { id, .. }
            | Event::Overview { id, .. }
            | Event::Cancelled { id } => *id,
        }
    }
}

#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Where finished audio is cached; `None` disables the disk cache.
    pub cache_dir: Option<PathBuf>,
    /// Looked in first for models (then `$VIDMUSICIAN_MODELS`, then the Hugging
    /// Face cache).
    pub model_dir: Option<PathBuf>,
    /// The MusicGen checkpoint of the neural engines, as a hub id.
    pub text_model: String,
    /// The CLIP checkpoint of the engines that read the pictures, as a hub id.
    pub clip_model: String,
    /// How the neural decoder holds its weights.
    pub precision: crate::neural::Precision,
    /// The vidmusician engine's adapter; `None`: the one found in the model
    /// folders for `text_model` (see [`crate::neural::hub::pick_adapter`]).
    pub adapter: Option<PathBuf>,
    /// Where the neural decoder runs. The engine thread opens it on first
    /// use and lets it go when it stops; a device that cannot be opened or
    /// holds no model leaves the work on the CPU, said in
    /// [`Finished::device`]. Where a piece was made is not part of its
    /// cache key: a take made on a GPU is served again on the CPU.
    pub device: crate::neural::device::DeviceChoice,
    /// The GPU helper a build without CUDA reaches the GPU through; `None`:
    /// looked for (see [`crate::neural::helper::find`]).
    pub gpu_helper: Option<PathBuf>,
}

impl EngineConfig {
    /// Where CLIP's features and the tags' text embeddings are kept: beside
    /// the audio cache, and only when it is on.
    pub(crate) fn feature_cache(&self) -> Option<crate::analysis::clip_features::FeatureCache> {
        self.cache_dir
            .as_ref()
            .map(|d| crate::analysis::clip_features::FeatureCache::new(d.join("features")))
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            cache_dir: AudioCache::default_dir(),
            model_dir: None,
            text_model: crate::neural::hub::DEFAULT_MODEL.to_string(),
            clip_model: crate::neural::hub::DEFAULT_CLIP.to_string(),
            precision: crate::neural::Precision::default(),
            adapter: None,
            device: crate::neural::device::DeviceChoice::default(),
            gpu_helper: None,
        }
    }
}

/// Return rings of takes served from the cache on a client's thread,
/// handed to the engine thread to drain: it frees what readers retire.
pub(crate) type Adopted = Arc<Mutex<Vec<rtrb::Consumer<Arc<AudioChunk>>>>>;

/// Cancel flags of overviews not yet made, shared with the engine thread.
pub(crate) type Overviews = Arc<Mutex<Vec<(u64, Arc<AtomicBool>)>>>;

/// What the engine thread is asked to do.
pub(crate) enum Task {
    Music(Box<Job>),
    Overview {
        id: u64,
        request: Box<OverviewRequest>,
        cancel: Arc<AtomicBool>,
    },
}

pub(crate) struct Job {
    pub id: u64,
    pub request: Request,
    /// The request already resolved by the caller, so the video is not
    /// probed and hashed again.
    pub resolved: Option<Box<Resolved>>,
    pub cancel: Arc<AtomicBool>,
    pub chunks: Option<rtrb::Producer<Arc<AudioChunk>>>,
    pub retired: Option<rtrb::Consumer<Arc<AudioChunk>>>,
}

/// Handle to the engine thread. Dropping it cancels outstanding work and
/// joins the thread.
pub struct Engine {
    jobs: Option<Sender<Task>>,
    events: Receiver<Event>,
    thread: Option<JoinHandle<()>>,
    next_id: AtomicU64,
    /// Cancel flags of requests not yet known to be finished. Written by
    /// `submit`/`cancel` on the control thread, read by the worker through
    /// its own `Arc`; the lock is never taken on a real-time thread.
    pending: Mutex<Vec<(u64, Arc<AtomicBool>)>>,
    /// The same for overviews, which a new piece does not supersede; the
    /// engine thread drops each when it is done.
    overviews: Overviews,
    cache: Option<AudioCache>,
    adopted: Adopted,
    config: EngineConfig,
}

impl Engine {
    pub fn start(config: EngineConfig) -> Result<Self> {
        let (job_tx, job_rx) = unbounded::<Task>();
        let (ev_tx, ev_rx) = unbounded::<Event>();
        let cache = config.cache_dir.clone().map(AudioCache::new);
        let adopted: Adopted = Arc::default();
        let worker_adopted = adopted.clone();
        let worker_config = config.clone();
        let overviews: Overviews = Arc::default();
        let worker_overviews = overviews.clone();
        let thread = std::thread::Builder::new()
            .name("vidmusician-engine".into())
            .spawn(move || {
                worker::run(
                    worker_config,
                    job_rx,
                    ev_tx,
                    worker_adopted,
                    worker_overviews,
                )
            })
            .map_err(|e| Error::InvalidSetting(format!("cannot start the engine thread: {e}")))?;
        Ok(Self {
            jobs: Some(job_tx),
            events: ev_rx,
            thread: Some(thread),
            next_id: AtomicU64::new(1),
            pending: Mutex::new(Vec::new()),
            overviews,
            cache,
            adopted,
            config,
        })
    }

    /// Turns `request` into the spec of its music, as the engine thread
    /// would: probes and identifies the video, picks the engine (`auto`
    /// made concrete) and checks every value. A caller that wants to know
    /// which engine will run, or to try the cache before queueing, resolves
    /// once and passes the result to [`Self::submit_cached_resolved`] and
    /// [`Self::submit_resolved`].
    pub fn resolve(&self, request: &Request) -> Result<Resolved> {
        resolve(&self.config, request)
    }

    /// Serves `request` from the disk cache on the calling thread, when the
    /// piece is there: the reader comes back already holding every chunk,
    /// so a reopened project (or a host that bounces without saying so)
    /// plays at once. `None` when it is not cached; then [`Self::submit`].
    pub fn submit_cached(&self, request: &Request) -> Option<(u64, ChunkReader)> {
        let resolved = resolve(&self.config, request).ok()?;
        self.submit_cached_resolved(request, &resolved)
            .map(|(id, reader, _)| (id, reader))
    }

    /// [`Self::submit_cached`] for a request already resolved; with what
    /// the cache kept beside the piece (its bars, where it was made).
    pub fn submit_cached_resolved(
        &self,
        request: &Request,
        resolved: &Resolved,
    ) -> Option<(u64, ChunkReader, CacheMeta)> {
        let cache = self.cache.as_ref()?;
        let (audio, meta) = cache.get(&resolved.spec.key())?;
        if audio.sample_rate != request.sample_rate || audio.is_empty() {
            return None;
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let n = request.chunk_frames;
        let count = audio.len().div_ceil(n);
        let (mut tx, rx) = rtrb::RingBuffer::new(count + 1);
        let (rtx, rrx) = rtrb::RingBuffer::new(count + 1);
        for k in 0..count {
            // Cannot be full: the ring has a slot per chunk.
            let _ = tx.push(AudioChunk::cut(id, &audio, k * n, n));
        }
        self.adopted.lock().push(rrx);
        Some((id, ChunkReader::new(rx, rtx), meta))
    }

    /// Queues a request. Returns its id and, when `max_chunks > 0`, the
    /// reader its audio chunks arrive on.
    pub fn submit(&self, request: Request) -> Result<(u64, Option<ChunkReader>)> {
        spec::validate(&request)?;
        self.queue(request, None)
    }

    /// [`Self::submit`] for a request already resolved with
    /// [`Self::resolve`]: the engine thread makes `resolved` as it is.
    pub fn submit_resolved(
        &self,
        request: Request,
        resolved: Resolved,
    ) -> Result<(u64, Option<ChunkReader>)> {
        self.queue(request, Some(Box::new(resolved)))
    }

    fn queue(
        &self,
        request: Request,
        resolved: Option<Box<Resolved>>,
    ) -> Result<(u64, Option<ChunkReader>)> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let cancel = Arc::new(AtomicBool::new(false));
        {
            let mut pending = self.pending.lock();
            if request.supersede {
                for (_, flag) in pending.iter() {
                    flag.store(true, Ordering::Relaxed);
                }
                pending.clear();
            }
            pending.push((id, cancel.clone()));
        }
        let (chunks, retired, reader) = if request.max_chunks > 0 {
            let (ctx, crx) = rtrb::RingBuffer::new(request.max_chunks);
            let (rtx, rrx) = rtrb::RingBuffer::new(request.max_chunks);
            (Some(ctx), Some(rrx), Some(ChunkReader::new(crx, rtx)))
        } else {
            (None, None, None)
        };
        let job = Job {
            id,
            request,
            resolved,
            cancel,
            chunks,
            retired,
        };
        self.send(Task::Music(Box::new(job)))?;
        Ok((id, reader))
    }

    /// Queues an overview of `request` (thumbnails, curve and cuts, the
    /// music's waveform and onsets) for an editor. It comes back as
    /// [`Event::Overview`] with the returned id; [`Self::cancel`] stops it.
    pub fn overview(&self, request: OverviewRequest) -> Result<u64> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let cancel = Arc::new(AtomicBool::new(false));
        // Kept apart from the music's flags: a new piece superseding the
        // old ones does not stop the pictures being drawn.
        self.overviews.lock().push((id, cancel.clone()));
        self.send(Task::Overview {
            id,
            request: Box::new(request),
            cancel,
        })?;
        Ok(id)
    }

    fn send(&self, task: Task) -> Result<()> {
        self.jobs
            .as_ref()
            .ok_or(Error::EngineGone)?
            .send(task)
            .map_err(|_| Error::EngineGone)
    }

    pub fn cancel(&self, id: u64) {
        for list in [&self.pending, &self.overviews] {
            list.lock().retain(|(pid, flag)| {
                if *pid == id {
                    flag.store(true, Ordering::Relaxed);
                }
                *pid != id
            });
        }
    }

    /// Events from the engine thread, in order.
    pub fn events(&self) -> &Receiver<Event> {
        &self.events
    }

    /// Blocks until request `id` ends, passing every event to `on_event`.
    pub fn wait(&self, id: u64, mut on_event: impl FnMut(&Event)) -> Result<Finished> {
        loop {
            let ev = self.events.recv().map_err(|_| Error::EngineGone)?;
            on_event(&ev);
            if ev.id() != id {
                continue;
            }
            match ev {
                Event::Done { result, .. } => {
                    self.forget(id);
                    return Ok(*result);
                }
                Event::Failed { error, .. } => {
                    self.forget(id);
                    return Err(Arc::try_unwrap(error)
                        .unwrap_or_else(|e| Error::InvalidSetting(e.to_string())));
                }
                Event::Cancelled { .. } => {
                    self.forget(id);
                    return Err(Error::Cancelled);
                }
                Event::Overview { .. } => {
                    self.forget(id);
                    return Err(Error::InvalidSetting(format!(
                        "request {id} is an overview, not music"
                    )));
                }
                Event::Progress { .. } => {}
            }
        }
    }

    fn forget(&self, id: u64) {
        self.pending.lock().retain(|(pid, _)| *pid != id);
        self.overviews.lock().retain(|(pid, _)| *pid != id);
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        for list in [&self.pending, &self.overviews] {
            for (_, flag) in list.lock().drain(..) {
                flag.store(true, Ordering::Relaxed);
            }
        }
        // Closing the job channel ends the worker's loop.
        self.jobs = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_engine_reads_back_from_its_name_and_its_number() {
        for (i, e) in EngineChoice::ALL.iter().enumerate() {
            assert_eq!(e.as_str().parse::<EngineChoice>().unwrap(), *e);
            assert_eq!(
                e.as_str().to_uppercase().parse::<EngineChoice>().unwrap(),
                *e
            );
            assert_eq!(EngineChoice::from_index(i), Some(*e));
            assert_eq!(e.index(), i);
            let json = serde_json::to_string(e).unwrap();
            assert_eq!(json, format!("\"{}\"", e.as_str()));
            assert_eq!(serde_json::from_str::<EngineChoice>(&json).unwrap(), *e);
        }
        assert_eq!(EngineChoice::from_index(EngineChoice::ALL.len()), None);
        let e = "neural".parse::<EngineChoice>().unwrap_err().to_string();
        assert!(e.contains("auto, sketch, text, zero-shot"), "{e}");
    }
}
