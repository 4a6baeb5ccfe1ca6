//! The engine thread's loop.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use super::{
    Adopted, AudioCache, AudioChunk, CacheMeta, EngineChoice, EngineConfig, Event, Finished, Job,
    Stage, cache_key,
};
use crate::analysis::{Analysis, StatsEncoder, analyze_until};
use crate::audio::{Audio, resample};
use crate::error::{Error, Result};
use crate::sketch::{SketchSettings, compose};

/// How often retired chunks are collected while idle.
const COLLECT_EVERY: Duration = Duration::from_millis(50);

pub(super) fn run(
    config: EngineConfig,
    jobs: Receiver<Job>,
    events: Sender<Event>,
    adopted: Adopted,
) {
    let cache = config.cache_dir.map(AudioCache::new);
    // Rings of finished requests whose reader may still hand chunks back.
    let mut retired_rings: Vec<rtrb::Consumer<Arc<AudioChunk>>> = Vec::new();
    // The last analysis, reused when the same video is asked again (a
    // tempo change, a new seed): analysis is most of the work.
    let mut last_analysis: Option<(String, Arc<Analysis>)> = None;
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
        let mut job = job;
        let id = job.id;
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            process(
                &mut job,
                cache.as_ref(),
                &mut last_analysis,
                &events,
                &mut retired_rings,
            )
        }));
        let event = match outcome {
            Ok(Ok(result)) => Event::Done {
                id,
                result: Box::new(result),
            },
            Ok(Err(Error::Cancelled)) => Event::Cancelled { id },
            Ok(Err(e)) => Event::Failed {
                id,
                error: Arc::new(e),
            },
            Err(_) => Event::Failed {
                id,
                error: Arc::new(Error::InvalidSetting(
                    "internal error in the engine (panic); please report it".into(),
                )),
            },
        };
        if let Some(r) = job.retired.take() {
            retired_rings.push(r);
        }
        let _ = events.send(event);
        retired_rings.append(&mut adopted.lock());
        collect(&mut retired_rings);
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
    cache: Option<&AudioCache>,
    last_analysis: &mut Option<(String, Arc<Analysis>)>,
    events: &Sender<Event>,
    retired_rings: &mut Vec<rtrb::Consumer<Arc<AudioChunk>>>,
) -> Result<Finished> {
    let cancel = job.cancel.clone();
    if cancel.load(Ordering::Relaxed) {
        return Err(Error::Cancelled);
    }
    let req = job.request.clone();
    // Only the sketch engine exists so far; `auto` resolves to it.
    let engine = EngineChoice::Sketch;
    let key = cache_key(&req, engine.as_str())?;
    if let Some((audio, meta)) = cache.and_then(|c| c.get(&key))
        && audio.sample_rate == req.sample_rate
    {
        let audio = Arc::new(audio);
        publish(job, &audio, &cancel, retired_rings)?;
        return Ok(Finished {
            audio,
            engine,
            bpm: meta.bpm,
            analysis: None,
            loudness: None,
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
    let mut analysis_req = crate::service::Request::new(&req.video);
    analysis_req.preview_until = req.preview_until;
    let video_key = cache_key(&analysis_req, "analysis")?;
    let analysis = match last_analysis {
        Some((k, a)) if *k == video_key => a.clone(),
        _ => {
            let a = Arc::new(analyze_until(
                &req.video,
                &mut StatsEncoder::default(),
                req.preview_until,
                &cancel,
                &mut |f| progress(Stage::Analysing, f),
            )?);
            *last_analysis = Some((video_key, a.clone()));
            a
        }
    };
    let settings = SketchSettings {
        bpm: req.tempo,
        downbeat: req.downbeat,
        style: crate::sketch::Style::from_prompt(&req.prompt),
        rhythm_strength: req.rhythm_strength,
        seed: req.seed,
    };
    let comp = compose(&analysis, &settings, &cancel, &mut |f| {
        progress(Stage::Composing, f)
    })?;
    progress(Stage::Finishing, 0.0);
    let mut audio = resample(&comp.audio, req.sample_rate)?;
    if let Some((a, b)) = req.range {
        audio = slice(&audio, a, b);
    }
    let audio = Arc::new(audio);
    if let Some(c) = cache {
        // A cache that cannot be written costs speed next time, not this
        // result.
        let meta = CacheMeta {
            engine: engine.as_str().to_string(),
            bpm: comp.score.bpm,
        };
        let _ = c.put(&key, &audio, &meta);
    }
    publish(job, &audio, &cancel, retired_rings)?;
    progress(Stage::Finishing, 1.0);
    Ok(Finished {
        audio,
        engine,
        bpm: comp.score.bpm,
        analysis: Some(analysis),
        loudness: Some(comp.loudness),
        cached: false,
        cache_key: key,
    })
}

fn slice(audio: &Audio, start: f64, end: f64) -> Audio {
    let r = f64::from(audio.sample_rate);
    let a = ((start * r).round() as usize).min(audio.len());
    let b = ((end * r).round() as usize).clamp(a, audio.len());
    Audio {
        sample_rate: audio.sample_rate,
        channels: audio.channels.iter().map(|c| c[a..b].to_vec()).collect(),
    }
}

/// Sends the piece as chunks; waits (checking `cancel`) while the ring is
/// full, collecting retired chunks meanwhile.
fn publish(
    job: &mut Job,
    audio: &Audio,
    cancel: &AtomicBool,
    retired_rings: &mut Vec<rtrb::Consumer<Arc<AudioChunk>>>,
) -> Result<()> {
    let Some(tx) = job.chunks.as_mut() else {
        return Ok(());
    };
    let n = job.request.chunk_frames;
    let mut start = 0usize;
    while start < audio.len() {
        let end = (start + n).min(audio.len());
        let mut chunk = AudioChunk::cut(job.id, audio, start, n);
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
        start = end;
    }
    Ok(())
}
