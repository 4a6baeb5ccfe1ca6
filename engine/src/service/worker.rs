//! The engine thread's loop.

#[path = "sections.rs"]
pub(super) mod sections;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use super::engines::{Engines, Work};
use super::{
    Adopted, AudioCache, AudioChunk, CacheMeta, EngineConfig, Event, Finished, Job, Stage, Task,
    resolve,
};
use crate::audio::Audio;
use crate::error::{Error, Result};

/// How often retired chunks are collected while idle.
const COLLECT_EVERY: Duration = Duration::from_millis(50);

pub(super) fn run(
    config: EngineConfig,
    jobs: Receiver<Task>,
    events: Sender<Event>,
    adopted: Adopted,
    overviews: super::Overviews,
) {
    let cache = config.cache_dir.clone().map(AudioCache::new);
    // Rings of finished requests whose reader may still hand chunks back.
    let mut retired_rings: Vec<rtrb::Consumer<Arc<AudioChunk>>> = Vec::new();
    let mut engines = Engines::default();
    loop {
        let job = match jobs.recv_timeout(COLLECT_EVERY) {
            Ok(job) => job,
            Err(RecvTimeoutError::Timeout) => {
                retired_rings.append(&mut adopted.lock());
                collect(&mut retired_rings);
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => break,
        };
        let mut job = match job {
            Task::Music(job) => *job,
            Task::Overview {
                id,
                request,
                cancel,
            } => {
                let ended = overview(id, &request, cache.as_ref(), &mut engines, &cancel, &events);
                overviews.lock().retain(|(o, _)| *o != id);
                let _ = events.send(ended);
                continue;
            }
        };
        let id = job.id;
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            process(
                &mut job,
                &config,
                cache.as_ref(),
                &mut engines,
                &events,
                &mut retired_rings,
            )
        }));
        let event = ending(id, outcome, "in the engine", |result| Event::Done {
            id,
            result: Box::new(result),
        });
        if let Some(r) = job.retired.take() {
            retired_rings.push(r);
        }
        let _ = events.send(event);
        retired_rings.append(&mut adopted.lock());
        collect(&mut retired_rings);
    }
}

/// Makes an overview; its event (done, failed or cancelled).
fn overview(
    id: u64,
    request: &super::OverviewRequest,
    cache: Option<&AudioCache>,
    engines: &mut Engines,
    cancel: &AtomicBool,
    events: &Sender<Event>,
) -> Event {
    if cancel.load(Ordering::Relaxed) {
        return Event::Cancelled { id };
    }
    let progress = |f: f64| {
        let _ = events.send(Event::Progress {
            id,
            stage: Stage::Analysing,
            fraction: f,
        });
    };
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        engines.overview(request, cache, cancel, &progress)
    }));
    ending(id, outcome, "while drawing the overview", |o| {
        Event::Overview {
            id,
            overview: Arc::new(o),
        }
    })
}

/// The event that ends task `id`: `done` with its result, cancelled, its
/// error, or a panic `where` it ran, reported rather than taking the engine
/// thread down.
fn ending<T>(
    id: u64,
    outcome: std::thread::Result<Result<T>>,
    place: &str,
    done: impl FnOnce(T) -> Event,
) -> Event {
    match outcome {
        Ok(Ok(result)) => done(result),
        Ok(Err(Error::Cancelled)) => Event::Cancelled { id },
        Ok(Err(e)) => Event::Failed {
            id,
            error: Arc::new(e),
        },
        Err(_) => Event::Failed {
            id,
            error: Arc::new(Error::InvalidSetting(format!(
                "internal error {place} (panic); please report it"
            ))),
        },
    }
}

fn collect(rings: &mut Vec<rtrb::Consumer<Arc<AudioChunk>>>) {
    for r in rings.iter_mut() {
        while r.pop().is_ok() {}
    }
    rings.retain(|r| !r.is_abandoned());
}

fn process(
    job: &mut Job,
    config: &EngineConfig,
    cache: Option<&AudioCache>,
    engines: &mut Engines,
    events: &Sender<Event>,
    retired_rings: &mut Vec<rtrb::Consumer<Arc<AudioChunk>>>,
) -> Result<Finished> {
    let cancel = job.cancel.clone();
    if cancel.load(Ordering::Relaxed) {
        return Err(Error::Cancelled);
    }
    let resolved = match job.resolved.take() {
        Some(r) => *r,
        None => resolve(config, &job.request)?,
    };
    let spec = &resolved.spec;
    let engine = spec.engine.choice;
    let key = spec.key();
    if let Some((audio, meta)) = cache.and_then(|c| c.get(&key))
        && audio.sample_rate == spec.sample_rate
    {
        let audio = Arc::new(audio);
        publish(job, &audio, &cancel, retired_rings)?;
        return Ok(Finished {
            audio,
            engine,
            bpm: meta.bpm,
            downbeat: meta.downbeat,
            analysis: None,
            loudness: None,
            tags: None,
            why: resolved.why.clone(),
            device: meta.device,
            cached: true,
            cache_key: key,
        });
    }

    let id = job.id;
    let progress = |stage: Stage, fraction: f64| {
        let _ = events.send(Event::Progress {
            id,
            stage,
            fraction,
        });
    };
    if !spec.sections.is_empty() {
        let (audio, grid) = sections::make(&resolved, config, cache, engines, &cancel, &progress)?;
        publish(job, &audio, &cancel, retired_rings)?;
        progress(Stage::Finishing, 1.0);
        return Ok(Finished {
            audio,
            engine,
            bpm: grid.bpm,
            downbeat: grid.downbeat,
            analysis: None,
            loudness: None,
            tags: None,
            why: resolved.why.clone(),
            device: engines.device_note(engine),
            cached: false,
            cache_key: key,
        });
    }
    // Every engine's piece is exactly as long as the span plays: what an
    // engine makes past it is never sent, what it falls short by is silence.
    let seconds = spec.span.music_seconds(spec.playrate);
    let frames = seconds
        .is_finite()
        .then(|| (seconds * f64::from(spec.sample_rate)).round() as usize);
    let mut sent = 0usize;
    let made = {
        let (job, rings) = (&mut *job, &mut *retired_rings);
        let mut sink = |audio: &Audio, complete: bool| {
            publish_from(job, audio, frames, &mut sent, complete, &cancel, rings)
        };
        engines.make(Work::new(&resolved, config, &cancel, &progress, &mut sink))?
    };
    let mut audio = made.audio;
    if let Some(n) = frames {
        audio.fit_to(n);
    }
    let audio = Arc::new(audio);
    if let Some(c) = cache {
        // A cache that cannot be written costs speed next time, not this
        // result.
        let meta = CacheMeta {
            engine: engine.as_str().to_string(),
            bpm: made.bpm,
            downbeat: made.downbeat,
            device: engines.device_note(engine),
        };
        let _ = c.put(&key, &audio, &meta);
    }
    // The rest of a streamed piece, or all of it.
    publish_from(job, &audio, frames, &mut sent, true, &cancel, retired_rings)?;
    progress(Stage::Finishing, 1.0);
    Ok(Finished {
        audio,
        engine,
        bpm: made.bpm,
        downbeat: made.downbeat,
        analysis: made.analysis,
        loudness: Some(made.loudness),
        tags: made.tags,
        why: resolved.why.clone(),
        device: engines.device_note(engine),
        cached: false,
        cache_key: key,
    })
}

/// Sends the piece as chunks; waits (checking `cancel`) while the ring is
/// full, collecting retired chunks meanwhile.
fn publish(
    job: &mut Job,
    audio: &Audio,
    cancel: &AtomicBool,
    retired_rings: &mut Vec<rtrb::Consumer<Arc<AudioChunk>>>,
) -> Result<()> {
    publish_from(job, audio, None, &mut 0, true, cancel, retired_rings)
}

/// Sends the chunks of `audio` (up to `limit` frames) from frame `*start`
/// on: every whole chunk, and the last partial one too once the piece is
/// `complete`; moves `*start` on. Music still being made is so sent as it
/// grows.
fn publish_from(
    job: &mut Job,
    audio: &Audio,
    limit: Option<usize>,
    start: &mut usize,
    complete: bool,
    cancel: &AtomicBool,
    retired_rings: &mut Vec<rtrb::Consumer<Arc<AudioChunk>>>,
) -> Result<()> {
    let Some(tx) = job.chunks.as_mut() else {
        return Ok(());
    };
    let n = job.request.chunk_frames;
    let len = limit.map_or(audio.len(), |l| l.min(audio.len()));
    while *start + n <= len || (complete && *start < len) {
        let end = (*start + n).min(len);
        let mut chunk = AudioChunk::cut(job.id, audio, *start, end - *start);
        loop {
            if cancel.load(Ordering::Relaxed) {
                return Err(Error::Cancelled);
            }
            if tx.is_abandoned() {
                // Nobody is listening any more; the result still stands.
                return Ok(());
            }
            match tx.push(chunk) {
                Ok(()) => break,
                Err(rtrb::PushError::Full(c)) => {
                    chunk = c;
                    if let Some(r) = job.retired.as_mut() {
                        while r.pop().is_ok() {}
                    }
                    collect(retired_rings);
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
        }
        *start = end;
    }
    Ok(())
}
