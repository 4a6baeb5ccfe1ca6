//! Turning the current video and settings into a request, and its music
//! into a take for the audio thread. Run by whichever of the host's main
//! thread and the [`crate::steward::Steward`] holds [`Inner`].

use std::path::PathBuf;
use std::sync::atomic::Ordering;

use clack_extensions::log::LogSeverity;
use vidmusician_engine::neural::device::DeviceChoice;
use vidmusician_engine::service::{
    ChunkReader, CutSource, CutsRequest, Engine, EngineChoice, EngineConfig, Event, MusicSource,
    Precision, Request, Resolved, Section,
};

use crate::PREVIEW_S;
use crate::editor::model::Status;
use crate::params::ParamId;
use crate::playback::{Grid, MAX_SLOTS, Take};
use crate::reaper::VideoItem;
use crate::shared::{Shared, unpack_meter};

/// What a request is made from, and what it leads to. Moves between the
/// host's main thread and the steward under `MainThread::inner`.
pub(crate) struct Inner {
    /// Started on the first request; joined when the plugin is destroyed.
    pub(crate) engine: Option<Engine>,
    pub(crate) video: Option<PathBuf>,
    pub(crate) prompt: String,
    pub(crate) cache_key: Option<String>,
    /// The rings to the active audio processor.
    pub(crate) link: Option<Link>,
    pub(crate) sample_rate: Option<f64>,
    /// A take has gone to the active processor: regenerations then keep the
    /// old music playing until the new take is whole, rather than going
    /// through a preview that could run out mid-song.
    pub(crate) has_music: bool,
    /// The video item last found on REAPER's timeline.
    pub(crate) item: Option<VideoItem>,
    /// REAPER's project change count when the timeline was last read.
    pub(crate) reaper_changes: Option<i32>,
    /// The project's markers and region bounds inside the video item, as
    /// times of the video: cuts of the user's edit, marked with the
    /// detected ones.
    pub(crate) marker_cuts: Vec<f64>,
    /// The video was chosen in the editor and overrides the timeline's.
    pub(crate) video_override: bool,
    /// The last request as resolved: what the editor's overview shows.
    pub(crate) resolved: Option<Resolved>,
    /// The engine's id of the piece being made (not a preview), whose
    /// progress the editor shows and Cancel stops.
    pub(crate) current: Option<u64>,
    /// The overview being made for the editor.
    pub(crate) overview: Option<u64>,
    /// Stretches made again in the editor, oldest first; undo drops the
    /// last.
    pub(crate) sections: Vec<Section>,
    /// Section edits made so far (undone ones too), for their seeds.
    pub(crate) section_seeds: u64,
    /// Where the neural engines' decoder runs.
    pub(crate) device: DeviceChoice,
}

/// Where a take's music comes from.
enum Source<'r> {
    /// The disk cache, whole, at once.
    Cache(&'r Resolved),
    /// The engine, the first seconds only.
    Preview,
    /// The engine, the whole piece, as resolved already.
    Engine(Box<Resolved>),
}

/// [`Source`] without its payload.
enum SourceKind {
    Cache,
    Engine,
}

pub(crate) struct Link {
    pub(crate) takes: rtrb::Producer<Box<Take>>,
    pub(crate) returned: rtrb::Consumer<Box<Take>>,
}

/// Drops the takes the audio thread let go of and picks up the engine's
/// events. Any thread but the audio thread.
pub(crate) fn tidy(shared: &Shared<'_>, inner: &mut Inner) {
    if let Some(link) = inner.link.as_mut() {
        while link.returned.pop().is_ok() {}
    }
    let mut key = None;
    let mut events = Vec::new();
    if let Some(engine) = inner.engine.as_ref() {
        while let Ok(ev) = engine.events().try_recv() {
            match &ev {
                Event::Done { result, .. } => {
                    key = Some(result.cache_key.clone());
                }
                Event::Failed { error, .. } => {
                    shared.report(LogSeverity::Error, &error.to_string());
                }
                _ => {}
            }
            events.push(ev);
        }
    }
    if key.is_some() {
        inner.cache_key = key;
    }
    crate::editor::pump(shared, inner, events);
}

/// Tells the user that a request could not be made: in the host's log, and
/// in the editor with what fixes it.
fn failed(shared: &Shared<'_>, what: &str, error: &vidmusician_engine::Error) {
    shared.report(LogSeverity::Error, what);
    let (_, fix) = crate::editor::explain(error);
    let what = what.to_string();
    shared
        .editor
        .update(|v| v.status = Status::Failed { what, fix });
}

/// Makes the music asked for with [`Shared::ask_for_music`], if it still
/// is, and records the ask as answered (with a take or without one).
pub(crate) fn answer(shared: &Shared<'_>, inner: &mut Inner) {
    if shared.regenerate.swap(false, Ordering::AcqRel) {
        // Read after the flag: an ask counted before it is answered by this
        // request, one counted after sets the flag again.
        let ask = shared.asked.load(Ordering::Acquire);
        request(shared, inner);
        shared.answered.fetch_max(ask, Ordering::AcqRel);
    }
}

/// Submits a request for the current video and settings and hands its take
/// to the audio processor. Needs an active processor (the host's sample
/// rate) and a video. Any thread but the audio thread.
pub(crate) fn request(shared: &Shared<'_>, inner: &mut Inner) {
    let ask = shared.asked.load(Ordering::Acquire);
    shared.editor.update(|v| {
        v.video.clone_from(&inner.video);
        v.prompt.clone_from(&inner.prompt);
        v.sections.clone_from(&inner.sections);
    });
    let (Some(rate), Some(video)) = (inner.sample_rate, inner.video.clone()) else {
        return;
    };
    // The part of the video the timeline plays, and how fast (clipped to
    // the video's end when the request is resolved).
    let (range, playrate) = match &inner.item {
        Some(item) if item.path == video => (Some(item.range()), item.playrate),
        _ => (None, 1.0),
    };
    if inner.engine.is_none() {
        // In a session speed matters more than matching the reference
        // bit for bit: neural engines run with 8-bit weights (2.6× faster,
        // half the memory; see the README's benchmarks).
        let config = EngineConfig {
            precision: Precision::Q8,
            ..EngineConfig::default()
        };
        match Engine::start(config) {
            Ok(e) => inner.engine = Some(e),
            Err(e) => {
                failed(shared, &e.to_string(), &e);
                return;
            }
        }
    }
    let mut req = Request::new(&video);
    req.range = range;
    req.playrate = playrate;
    req.sample_rate = rate.round() as u32;
    req.seed = shared.params.get(ParamId::Seed) as u64;
    req.prompt = inner.prompt.clone();
    req.sections = inner.sections.clone();
    req.device = Some(inner.device);
    let params = &shared.params;
    req.rhythm_strength = params.get(ParamId::RhythmStrength) as f32;
    req.semantic_strength = params.get(ParamId::SemanticStrength) as f32;
    req.guidance = Some(params.get(ParamId::Guidance));
    req.engine = EngineChoice::from_index(params.get(ParamId::Engine) as usize).unwrap_or_default();
    let tempo = f64::from_bits(shared.host_tempo.load(Ordering::Acquire));
    let follow = params.get(ParamId::FollowTempo) >= 0.5;
    let grid = (follow && tempo > 0.0).then(|| Grid {
        bpm: tempo,
        meter: unpack_meter(shared.host_meter.load(Ordering::Acquire)),
    });
    if let Some(g) = grid {
        req.tempo = Some(g.bpm);
        req.meter = g.meter;
        // The host's bar grid in piece time, with the offset as it is
        // now (the video may have moved since the tempo was read).
        let bar_song = f64::from_bits(shared.host_downbeat.load(Ordering::Acquire));
        req.downbeat = Some(bar_song - shared.offset());
    }
    if !inner.marker_cuts.is_empty() && inner.item.as_ref().is_some_and(|i| i.path == video) {
        req.cuts = Some(CutsRequest {
            source: CutSource::Times(inner.marker_cuts.clone()),
            merge: true,
        });
    }
    // Resolved once here, on the caller's thread: the video is probed and
    // hashed once, the range clipped to it, and `auto` made concrete before
    // choosing whether to preview. This and the cache read below are the
    // only synchronous work (a probe, two mebibytes hashed, one file read):
    // the cache key needs the video's identity, and a reopened project must
    // play its cached music from the first block even where the host
    // renders without announcing it (Ardour's export), so the take has to
    // be in hand before the next block.
    let resolved = match inner.engine.as_ref().map(|e| e.resolve(&req)) {
        Some(Ok(r)) => r,
        Some(Err(e)) => {
            let what = match &inner.item {
                Some(item) if item.path == video => format!(
                    "the video item at {:.2} s on the timeline: {e}",
                    item.position
                ),
                _ => e.to_string(),
            };
            failed(shared, &what, &e);
            return;
        }
        None => return,
    };
    inner.resolved = Some(resolved.clone());
    let editor = &shared.editor;
    editor.update(|v| {
        v.engine = Some(resolved.spec.engine.choice);
        v.why = resolved.why.clone();
        v.device = resolved.device;
        v.start = resolved.spec.span.start;
        v.playrate = resolved.spec.playrate;
        v.meter = Some(resolved.spec.meter);
        v.status = Status::Working {
            stage: None,
            fraction: 0.0,
        };
    });
    let span = resolved.spec.span;
    let (start, seconds) = (span.start, span.music_seconds(playrate));
    let total = (seconds * rate).round().max(1.0) as u64;
    // Delivery only: not part of what was resolved.
    req.chunk_frames = (total as usize).div_ceil(MAX_SLOTS).max(4096);
    let take = TakeSpec { total, grid, ask };
    // Music made before (a reopened project) plays at once.
    if submit_take(shared, inner, req.clone(), take, Source::Cache(&resolved)) {
        let key = resolved.spec.key();
        inner.cache_key = Some(key.clone());
        inner.current = None;
        editor.update(|v| v.status = Status::Finished { cached: true });
        if editor.is_open() {
            crate::editor::request_overview(shared, inner, Some(MusicSource::Cached(key)));
        }
        return;
    }
    // A long video gets a quick preview of its start first, so music
    // plays within a second; the full piece replaces it at a bar line.
    // A bounce needs the full piece only; the neural engines hand their
    // piece over as it is made anyway, and their preview would cost a
    // generation of its own.
    let streams = matches!(
        resolved.spec.engine.choice,
        EngineChoice::Text | EngineChoice::ZeroShot | EngineChoice::VidMusician
    );
    if !shared.bouncing() && !streams && !inner.has_music && seconds > PREVIEW_S * 1.5 {
        let mut preview = req.clone();
        preview.preview_until = Some(start + PREVIEW_S * playrate);
        preview.supersede = true;
        let frames = (PREVIEW_S * rate).round() as u64;
        let spec = TakeSpec {
            total: frames,
            ..take
        };
        submit_take(shared, inner, preview, spec, Source::Preview);
        req.supersede = false;
    } else {
        req.supersede = true;
    }
    // The pictures before the full piece, after the preview: the editor
    // shows them while the music is made, and the quick first sound stays
    // quick (queued first, the overview put 3.9 s before it in the
    // benchmark's 60 s video).
    if shared.editor.is_open() {
        crate::editor::request_overview(shared, inner, None);
    }
    submit_take(shared, inner, req, take, Source::Engine(Box::new(resolved)));
}

/// What the audio thread is told of a take besides its music.
#[derive(Clone, Copy)]
struct TakeSpec {
    /// Its length, frames.
    total: u64,
    grid: Option<Grid>,
    /// The ask it answers (`Shared::asked` when it was requested).
    ask: u64,
}

/// Gets `req`'s music from `source` and hands its take to the audio thread;
/// true when a take was handed over.
fn submit_take(
    shared: &Shared<'_>,
    inner: &mut Inner,
    mut req: Request,
    spec: TakeSpec,
    source: Source,
) -> bool {
    let Some(engine) = inner.engine.as_ref() else {
        return false;
    };
    req.max_chunks = (spec.total as usize).div_ceil(req.chunk_frames) + 1;
    let chunk_frames = req.chunk_frames;
    let preview = matches!(source, Source::Preview);
    let got_source = match source {
        Source::Cache(_) => SourceKind::Cache,
        _ => SourceKind::Engine,
    };
    let got = match source {
        Source::Cache(resolved) => {
            engine
                .submit_cached_resolved(&req, resolved)
                .map(|(id, reader, meta)| {
                    // Where the music that now plays was made, not where
                    // the last piece made here was.
                    shared.editor.update(|v| v.device_note = meta.device);
                    (id, reader)
                })
        }
        Source::Preview => queued(shared, engine.submit(req)),
        Source::Engine(resolved) => queued(shared, engine.submit_resolved(req, *resolved)),
    };
    let Some((id, reader)) = got else {
        return false;
    };
    if !preview && !matches!(got_source, SourceKind::Cache) {
        inner.current = Some(id);
    }
    let take = Box::new(Take {
        reader,
        chunk_frames,
        total_frames: spec.total,
        grid: spec.grid,
        preview,
        answers: spec.ask,
    });
    hand_over(shared, inner, take)
}

/// The reader of a queued request; an error refusing it is reported.
fn queued(
    shared: &Shared<'_>,
    submitted: vidmusician_engine::Result<(u64, Option<ChunkReader>)>,
) -> Option<(u64, ChunkReader)> {
    match submitted {
        Ok((id, reader)) => reader.map(|r| (id, r)),
        Err(e) => {
            failed(shared, &e.to_string(), &e);
            None
        }
    }
}

fn hand_over(shared: &Shared<'_>, inner: &mut Inner, take: Box<Take>) -> bool {
    let Some(link) = inner.link.as_mut() else {
        return false;
    };
    if link.takes.push(take).is_err() {
        shared.report(
            LogSeverity::Warning,
            "the audio thread is not taking new music; try again",
        );
        return false;
    }
    inner.has_music = true;
    true
}
