//! The engine thread's loop.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use std::path::{Path, PathBuf};

use super::{
    Adopted, AudioCache, AudioChunk, CacheMeta, EngineChoice, EngineConfig, Event, Finished, Job,
    Request, Stage, cache_key, resolve,
};
use crate::analysis::{Analysis, StatsEncoder, analyze_until};
use crate::audio::{Audio, LoudnessReport, StreamMaster, StreamResampler, measure, resample};
use crate::error::{Error, Result};
use crate::neural::pool::Pool;
use crate::neural::{MusicGen, Precision};
use crate::sketch::{CEILING_DBTP, SketchSettings, TARGET_LUFS, compose};

/// What the engine thread keeps between requests.
#[derive(Default)]
struct State {
    /// The last analysis, reused when the same video is asked again (a tempo
    /// change, a new seed): analysis is most of the sketch engine's work.
    last_analysis: Option<(String, Arc<Analysis>)>,
    /// The loaded text model: loading takes seconds, so it stays.
    text_model: Option<(PathBuf, Precision, MusicGen)>,
    /// The neural engines' threads, started on first use; joined when the
    /// engine thread ends.
    pools: Option<Pools>,
}

/// The threads neural work runs on, owned by the engine thread rather than
/// global: candle's rayon work and the decoder's step pool. A plugin that is
/// destroyed so leaves no thread of its own running.
struct Pools {
    step: Arc<Pool>,
    rayon: Option<rayon::ThreadPool>,
    threads: usize,
    exited: Arc<std::sync::atomic::AtomicUsize>,
}

impl Pools {
    fn new() -> Self {
        let exited = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = exited.clone();
        let rayon = rayon::ThreadPoolBuilder::new()
            .thread_name(|i| format!("vidmusician-par-{i}"))
            .exit_handler(move |_| {
                count.fetch_add(1, Ordering::AcqRel);
            })
            .build()
            .ok();
        Self {
            step: Arc::new(Pool::sized_like_global()),
            threads: rayon.as_ref().map_or(0, |r| r.current_num_threads()),
            rayon,
            exited,
        }
    }

    /// Runs `f` with both pools as this work's.
    fn run<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        match &self.rayon {
            Some(r) => r.install(|| Pool::scoped(&self.step, f)),
            None => Pool::scoped(&self.step, f),
        }
    }
}

impl Drop for Pools {
    fn drop(&mut self) {
        // rayon ends its threads without waiting for them: wait here (bounded,
        // so a stuck thread cannot hang a host's unload).
        drop(self.rayon.take());
        let t0 = std::time::Instant::now();
        while self.exited.load(Ordering::Acquire) < self.threads
            && t0.elapsed() < Duration::from_secs(10)
        {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// How often retired chunks are collected while idle.
const COLLECT_EVERY: Duration = Duration::from_millis(50);

pub(super) fn run(
    config: EngineConfig,
    jobs: Receiver<Job>,
    events: Sender<Event>,
    adopted: Adopted,
) {
    let cache = config.cache_dir.clone().map(AudioCache::new);
    // Rings of finished requests whose reader may still hand chunks back.
    let mut retired_rings: Vec<rtrb::Consumer<Arc<AudioChunk>>> = Vec::new();
    let mut state = State::default();
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
                &config,
                cache.as_ref(),
                &mut state,
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
    config: &EngineConfig,
    cache: Option<&AudioCache>,
    state: &mut State,
    events: &Sender<Event>,
    retired_rings: &mut Vec<rtrb::Consumer<Arc<AudioChunk>>>,
) -> Result<Finished> {
    let cancel = job.cancel.clone();
    if cancel.load(Ordering::Relaxed) {
        return Err(Error::Cancelled);
    }
    let req = job.request.clone();
    let resolved = resolve(config, &req)?;
    let engine = resolved.engine;
    let key = cache_key(&req, &resolved.key_engine)?;
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
    // Engines that make music in windows send it as it comes.
    let mut streamed = false;
    let (audio, bpm, analysis, loudness) = match (engine, &resolved.model) {
        (EngineChoice::Text, Some(dir)) => {
            let pools = state.pools.take().unwrap_or_else(Pools::new);
            let mut sent = 0usize;
            let made = {
                let (job, rings) = (&mut *job, &mut *retired_rings);
                let mut sink = |audio: &Audio, complete: bool| {
                    publish_from(job, audio, &mut sent, complete, &cancel, rings)
                };
                pools.run(|| {
                    text_music(
                        &req,
                        dir,
                        config.precision,
                        state,
                        &cancel,
                        &progress,
                        &mut sink,
                    )
                })
            };
            state.pools = Some(pools);
            let (audio, loudness) = made?;
            streamed = true;
            (audio, None, None, loudness)
        }
        _ => {
            let video = req.video.as_deref().ok_or_else(|| {
                Error::InvalidSetting("the sketch engine scores a video: give one".into())
            })?;
            let mut analysis_req = Request::new(video);
            analysis_req.preview_until = req.preview_until;
            let video_key = cache_key(&analysis_req, "analysis")?;
            let analysis = match &state.last_analysis {
                Some((k, a)) if *k == video_key => a.clone(),
                _ => {
                    let a = Arc::new(analyze_until(
                        video,
                        &mut StatsEncoder::default(),
                        req.preview_until,
                        &cancel,
                        &mut |f| progress(Stage::Analysing, f),
                    )?);
                    state.last_analysis = Some((video_key, a.clone()));
                    a
                }
            };
            let analysis = if req.playrate == 1.0 {
                analysis
            } else {
                Arc::new(analysis.retimed(req.playrate))
            };
            let settings = SketchSettings {
                bpm: req.tempo,
                downbeat: req.downbeat,
                style: crate::sketch::Style::from_prompt(&req.prompt),
                rhythm_strength: req.rhythm_strength,
                semantic_strength: req.semantic_strength,
                meter: req.meter,
                seed: req.seed,
            };
            let comp = compose(&analysis, &settings, &cancel, &mut |f| {
                progress(Stage::Composing, f)
            })?;
            progress(Stage::Finishing, 0.0);
            let mut audio = resample(&comp.audio, req.sample_rate)?;
            if let Some((a, b)) = req.range {
                audio = slice(&audio, a / req.playrate, b / req.playrate);
            }
            (audio, Some(comp.score.bpm), Some(analysis), comp.loudness)
        }
    };
    let audio = Arc::new(audio);
    if let Some(c) = cache {
        // A cache that cannot be written costs speed next time, not this
        // result.
        let meta = CacheMeta {
            engine: engine.as_str().to_string(),
            bpm,
        };
        let _ = c.put(&key, &audio, &meta);
    }
    if !streamed {
        publish(job, &audio, &cancel, retired_rings)?;
    }
    progress(Stage::Finishing, 1.0);
    Ok(Finished {
        audio,
        engine,
        bpm,
        analysis,
        loudness: Some(loudness),
        cached: false,
        cache_key: key,
    })
}

/// How long the text engine's piece is: the asked range, else the video's length,
/// else the asked duration, at the asked playrate; a preview is cut short.
fn text_duration(req: &Request) -> Result<f64> {
    let (start, end) = match (req.range, &req.video, req.duration) {
        (Some((a, b)), Some(v), _) => (a, b.min(crate::video::probe(v)?.duration)),
        (Some((a, b)), None, _) => (a, b),
        (None, Some(v), _) => (0.0, crate::video::probe(v)?.duration),
        (None, None, Some(d)) => (0.0, d),
        (None, None, None) => {
            return Err(Error::InvalidSetting("no video and no duration".into()));
        }
    };
    let end = match req.preview_until {
        Some(p) => end.min(p),
        None => end,
    };
    let d = (end - start) / req.playrate;
    if !(d.is_finite() && d > 0.0) {
        return Err(Error::InvalidSetting(format!(
            "nothing to compose: the piece would last {d:.2} s"
        )));
    }
    Ok(d)
}

/// MusicGen from the prompt: generated at the codec's rate, resampled, and
/// mastered to the same loudness as the embedded composer's music.
fn text_music(
    req: &Request,
    dir: &Path,
    precision: Precision,
    state: &mut State,
    cancel: &AtomicBool,
    progress: &(dyn Fn(Stage, f64) + Sync),
    sink: &mut (dyn FnMut(&Audio, bool) -> Result<()> + Send),
) -> Result<(Audio, LoudnessReport)> {
    let seconds = text_duration(req)?;
    if state
        .text_model
        .as_ref()
        .is_none_or(|(d, p, _)| d != dir || *p != precision)
    {
        progress(Stage::Analysing, 0.0);
        // Free the old model before loading the next: two may not fit.
        state.text_model = None;
        let model = MusicGen::load_as(dir, precision)?;
        state.text_model = Some((dir.to_path_buf(), precision, model));
        progress(Stage::Analysing, 1.0);
    }
    let Some((_, _, model)) = state.text_model.as_ref() else {
        return Err(Error::EngineGone);
    };
    let mut sampling = model.default_sampling();
    sampling.seed = req.seed;
    if let Some(g) = req.guidance {
        sampling.guidance = g;
    }
    if let Some(t) = req.temperature {
        sampling.temperature = Some(t);
    }
    if let Some(k) = req.top_k {
        sampling.top_k = k;
    }
    // Resampled and mastered as it comes, so each window can be heard while
    // the next is generated; the level is set from the start of the piece.
    let mut resampler = StreamResampler::new(model.sample_rate(), req.sample_rate, 2)?;
    let mut master = StreamMaster::new(req.sample_rate, 2, TARGET_LUFS, CEILING_DBTP);
    let mut audio = Audio::silence(req.sample_rate, 2, 0);
    let append = |audio: &mut Audio, piece: Vec<Vec<f32>>| {
        for (c, p) in audio.channels.iter_mut().zip(piece) {
            c.extend(p);
        }
    };
    model.generate_streaming(
        &req.prompt,
        seconds,
        &sampling,
        &mut |p| {
            progress(
                Stage::Composing,
                p.frames_done as f64 / p.frames_total.max(1) as f64,
            );
            !cancel.load(Ordering::Relaxed)
        },
        &mut |mono| {
            let piece = resampler.push(&[mono.to_vec(), mono.to_vec()])?;
            append(&mut audio, master.push(&piece)?);
            sink(&audio, false)
        },
    )?;
    progress(Stage::Finishing, 0.0);
    let rest = resampler.finish()?;
    append(&mut audio, master.push(&rest)?);
    append(&mut audio, master.finish()?);
    sink(&audio, true)?;
    let loudness = measure(&audio)?;
    Ok((audio, loudness))
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
    publish_from(job, audio, &mut 0, true, cancel, retired_rings)
}

/// Sends the chunks of `audio` from frame `*start` on: every whole chunk, and
/// the last partial one too once the piece is `complete`; moves `*start` on.
/// Music still being made is so sent as it grows.
fn publish_from(
    job: &mut Job,
    audio: &Audio,
    start: &mut usize,
    complete: bool,
    cancel: &AtomicBool,
    retired_rings: &mut Vec<rtrb::Consumer<Arc<AudioChunk>>>,
) -> Result<()> {
    let Some(tx) = job.chunks.as_mut() else {
        return Ok(());
    };
    let n = job.request.chunk_frames;
    while *start + n <= audio.len() || (complete && *start < audio.len()) {
        let end = (*start + n).min(audio.len());
        let mut chunk = AudioChunk::cut(job.id, audio, *start, n);
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
