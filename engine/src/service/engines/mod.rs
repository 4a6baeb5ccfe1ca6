//! One pipeline per engine, behind one small trait: the worker resolves a
//! request, looks in the cache, and otherwise asks the chosen engine to make
//! the spec's music, then publishes and stores what it made.

mod loaded;
mod pools;
mod sketch;
mod text;
mod vidmusician;
mod zeroshot;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

pub use loaded::{clip_loads, clip_vision_loads, musicgen_loads};
pub(crate) use pools::Pools;
pub use zeroshot::video_tags;

use super::{EngineChoice, EngineConfig, MusicSpec, Resolved, Stage};
use crate::analysis::Analysis;
use crate::analysis::tags::{SectionTags, Vocabulary};
use crate::audio::{Audio, LoudnessReport};
use crate::error::{Error, Result};
use crate::neural::device::{self, Chosen, DeviceChoice};
use crate::video::VideoInfo;

/// What an engine is given to make one piece.
pub(crate) struct Work<'a> {
    pub spec: &'a MusicSpec,
    /// The video's file and its probe, when the spec has a video.
    pub video: Option<(&'a Path, &'a VideoInfo)>,
    /// The MusicGen folder of a neural engine.
    pub model: Option<&'a Path>,
    /// The CLIP folder of an engine that reads the pictures with it.
    pub clip: Option<&'a Path>,
    /// The vidmusician engine's adapter.
    pub adapter: Option<&'a Path>,
    /// The vocabulary the zero-shot engine tags the pictures with.
    pub vocabulary: Option<&'a Vocabulary>,
    pub config: &'a EngineConfig,
    pub cancel: &'a AtomicBool,
    pub progress: &'a (dyn Fn(Stage, f64) + Sync),
    /// Takes the piece as it grows (`complete` once it is whole), for
    /// engines that make music window by window; others never call it.
    pub sink: &'a mut (dyn FnMut(&Audio, bool) -> Result<()> + Send),
    /// The threads neural work runs on; `None` for engines that say they
    /// need none.
    pub pools: Option<Arc<Pools>>,
    /// Where the neural decoder runs (given with the pools).
    pub device: Chosen,
    /// The device asked for.
    pub device_choice: DeviceChoice,
}

impl<'a> Work<'a> {
    pub fn new(
        resolved: &'a Resolved,
        config: &'a EngineConfig,
        cancel: &'a AtomicBool,
        progress: &'a (dyn Fn(Stage, f64) + Sync),
        sink: &'a mut (dyn FnMut(&Audio, bool) -> Result<()> + Send),
    ) -> Self {
        Self {
            spec: &resolved.spec,
            video: resolved.video.as_ref().map(|(p, i)| (p.as_path(), i)),
            model: resolved.model.as_deref(),
            clip: resolved.clip.as_deref(),
            adapter: resolved.adapter.as_deref(),
            vocabulary: resolved.vocabulary.as_deref(),
            config,
            cancel,
            progress,
            sink,
            pools: None,
            device: Chosen::cpu(String::new()),
            device_choice: resolved.device,
        }
    }
}

/// What an engine made.
pub(crate) struct Made {
    /// The music of the spec's span, at its sample rate.
    pub audio: Audio,
    /// The tempo it is written in, when the engine chose or followed one.
    pub bpm: Option<f64>,
    /// A time of the piece (seconds, may be negative) where one of its bars
    /// starts, when it has bars.
    pub downbeat: Option<f64>,
    pub analysis: Option<Arc<Analysis>>,
    pub loudness: LoudnessReport,
    /// The tags the pictures chose, per section (the zero-shot engine).
    pub tags: Option<Vec<SectionTags>>,
}

/// An engine: makes the music of a spec. It may keep what it loaded or
/// computed between requests (models, the last analysis).
pub(crate) trait Pipeline {
    /// Whether it runs on the neural thread pools.
    fn uses_pools(&self) -> bool {
        false
    }

    fn make(&mut self, work: Work<'_>) -> Result<Made>;
}

/// Every engine of one engine thread, each started on first use.
#[derive(Default)]
pub(crate) struct Engines {
    sketch: sketch::Sketch,
    text: text::Text,
    zero_shot: zeroshot::ZeroShot,
    vidmusician: vidmusician::VidMusician,
    pools: Option<Arc<Pools>>,
    /// The device asked for and the one opened, on first neural use; the
    /// CPU after the device failed. Dropped with the engine thread, which
    /// lets the device's context go.
    device: Option<(DeviceChoice, Chosen)>,
    /// The last overview's thumbnails: a new take of the same video needs
    /// no new pictures.
    thumbnails: Option<(super::VideoId, usize, Vec<super::Thumbnail>)>,
}

impl Engines {
    /// The overview of `req`'s video (thumbnails, curve, cuts in use) and
    /// music, on the engine thread. The analysis is the sketch engine's,
    /// so a sketch piece of the same video decodes it once.
    pub fn overview(
        &mut self,
        req: &super::OverviewRequest,
        cache: Option<&super::AudioCache>,
        cancel: &AtomicBool,
        progress: &dyn Fn(f64),
    ) -> Result<super::Overview> {
        use super::overview::{MusicOverview, MusicSource, thumbnails, video_overview};
        let spec = &req.resolved.spec;
        let video = match (&req.resolved.video, &spec.video) {
            (Some((path, info)), Some(id)) => {
                let analysis = self
                    .sketch
                    .analysis(path, id, None, cancel, &|f| progress(0.8 * f))?;
                let analysis = match &spec.cuts {
                    Some(c) => analysis.with_cuts(&c.times, c.merge),
                    None => (*analysis).clone(),
                };
                let thumbs = match &self.thumbnails {
                    Some((v, n, t)) if v == id && *n == req.thumbnails => t.clone(),
                    _ => {
                        let t = thumbnails(path, info.duration, req.thumbnails, cancel)?;
                        self.thumbnails = Some((id.clone(), req.thumbnails, t.clone()));
                        t
                    }
                };
                Some(Arc::new(video_overview(&analysis, thumbs)))
            }
            _ => None,
        };
        progress(0.9);
        let audio = match &req.music {
            Some(MusicSource::Audio {
                audio,
                bpm,
                downbeat,
            }) => Some((audio.clone(), *bpm, *downbeat)),
            Some(MusicSource::Cached(key)) => cache
                .and_then(|c| c.get(key))
                .map(|(a, meta)| (Arc::new(a), meta.bpm, meta.downbeat)),
            None => None,
        };
        let music = audio.map(|(a, bpm, downbeat)| {
            let mut m = MusicOverview::of(&a, spec.span.start, spec.playrate);
            // Where each section edit changed the music: on the bar lines
            // the engine moved its ends to.
            m.sections = spec
                .sections
                .iter()
                .map(|s| super::worker::sections::on_bars(*s, spec, bpm, downbeat, m.seconds))
                .collect();
            Arc::new(m)
        });
        progress(1.0);
        Ok(super::Overview { video, music })
    }

    /// Makes `work`'s music with the engine its spec names.
    pub fn make(&mut self, mut work: Work<'_>) -> Result<Made> {
        let choice = work.spec.engine.choice;
        if !self.pipeline(choice).uses_pools() {
            return self.pipeline(choice).make(work);
        }
        work.pools = Some(
            self.pools
                .get_or_insert_with(|| Arc::new(Pools::new()))
                .clone(),
        );
        work.device = self.device(work.device_choice, work.config.gpu_helper.as_deref());
        if work.device.is_cpu() {
            return self.pipeline(choice).make(work);
        }
        // A device that fails before any music is handed over (no memory
        // for the model or the window) leaves this piece, and the ones
        // after it, to the CPU.
        let mut handed = false;
        let sink = &mut *work.sink;
        let mut counting = |a: &Audio, complete: bool| {
            handed |= !a.is_empty();
            sink(a, complete)
        };
        let on_device = Work {
            sink: &mut counting,
            pools: work.pools.clone(),
            device: work.device.clone(),
            ..work
        };
        match self.pipeline(choice).make(on_device) {
            Err(e) if is_device_failure(&e) && !handed => {
                let name = work.device.name.clone();
                let cpu = Chosen::cpu(format!("running on the CPU: {name} failed ({e})"));
                self.device = Some((work.device_choice, cpu.clone()));
                let again = Work {
                    sink: &mut *sink,
                    device: cpu,
                    ..work
                };
                self.pipeline(choice).make(again)
            }
            other => other,
        }
    }

    fn pipeline(&mut self, choice: EngineChoice) -> &mut dyn Pipeline {
        match choice {
            EngineChoice::Text => &mut self.text,
            EngineChoice::ZeroShot => &mut self.zero_shot,
            EngineChoice::VidMusician => &mut self.vidmusician,
            // `resolve` never leaves `auto`; the composer is the safe answer.
            EngineChoice::Sketch | EngineChoice::Auto => &mut self.sketch,
        }
    }

    /// The device for `choice`, opened on first use (or when the choice
    /// changed). One that cannot be opened leaves the CPU, saying why.
    fn device(&mut self, choice: DeviceChoice, helper: Option<&std::path::Path>) -> Chosen {
        match &self.device {
            Some((c, chosen)) if *c == choice => chosen.clone(),
            _ => {
                let chosen = device::choose_with(choice, helper)
                    .unwrap_or_else(|e| Chosen::cpu(format!("running on the CPU: {e}")));
                self.device = Some((choice, chosen.clone()));
                chosen
            }
        }
    }

    /// Where the last piece of `engine` ran and why, for neural engines.
    pub fn device_note(&self, engine: EngineChoice) -> Option<String> {
        match engine {
            EngineChoice::Text | EngineChoice::ZeroShot | EngineChoice::VidMusician => {
                self.device.as_ref().map(|(_, c)| c.note.clone())
            }
            EngineChoice::Sketch | EngineChoice::Auto => None,
        }
    }
}

/// Whether `e` is the device's failing (it could not take the model or a
/// window) rather than the request's.
fn is_device_failure(e: &Error) -> bool {
    matches!(e, Error::Device { .. })
}
