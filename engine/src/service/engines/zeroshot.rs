//! The zero-shot video engine: MusicGen and CLIP from public weights alone.
//!
//! The pictures choose the words (CLIP scores each 1 fps frame against a
//! vocabulary; the tags are smoothed and chosen per section, and each 30 s
//! window of MusicGen is made under its section's prompt), the cuts and the
//! motion choose the tempo (the analysis' suggestion, unless the user or the
//! host gives one), and the music's accents are moved onto the cuts: the
//! generated audio is beat-tracked and time-warped so that its beats land
//! on the tempo's grid and on the cuts ([`crate::align`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::{Made, Pipeline, Work, loaded};
use crate::align::{StreamAligner, Target};
use crate::analysis::clip_features::{
    FeatureKey, analysis_and_global, global_features, patch_curve, tag_sections,
};
use crate::analysis::{Analysis, GLOBAL_FPS, LOCAL_FPS, StatsEncoder, analyze_until, from_curve};
use crate::error::{Error, Result};
use crate::neural::models::clip::Clip;
use crate::neural::{MusicGen, PromptSchedule};
use crate::service::{MusicSpec, Stage, VideoId};

use super::text::{Finisher, TextSettings, generate, stream};

/// Sections shorter than this do not get a prompt of their own: a window of
/// MusicGen is 30 s, and a prompt that changes every few seconds would only
/// make the windows disagree.
const MIN_SECTION_S: f64 = 10.0;

/// The gain on the generated music before accents are added (−12 dB):
/// MusicGen's decoder peaks near full scale, and an accent may not push a
/// peak past the ceiling, so music left that loud would get none. The
/// master sets the level after.
const ACCENT_HEADROOM: f32 = 0.25;

/// The zero-shot engine, keeping its models and the last analysis between
/// requests (the vocabulary's text embeddings are kept with the models,
/// [`loaded::tag_embeddings`]).
#[derive(Default)]
pub(crate) struct ZeroShot {
    musicgen: Option<Arc<MusicGen>>,
    /// CLIP for the tags' words (its text tower, on the CPU; without its
    /// vision tower where a device reads the frames).
    clip: Option<Arc<Clip>>,
    /// The precision `clip` was asked for.
    clip_precision: crate::neural::Precision,
    /// What reads the frames: CLIP's vision tower on the engine's device
    /// (on the CPU, `clip` itself).
    frames: loaded::HeldFrames,
    analysis: Option<(VideoId, Option<f64>, bool, Arc<Analysis>)>,
}

/// What the zero-shot engine reads of a spec beyond the text engine's.
pub(crate) struct ZeroShotSettings {
    pub text: TextSettings,
    pub rhythm_strength: f32,
    /// How many of the vocabulary's categories the prompt takes, in order:
    /// all at semantic strength 1, none at 0.
    pub semantic_strength: f32,
    pub tempo: Option<f64>,
    pub downbeat: Option<f64>,
    pub beats_per_bar: u32,
}

impl From<&MusicSpec> for ZeroShotSettings {
    fn from(spec: &MusicSpec) -> Self {
        Self {
            text: TextSettings::from(spec),
            rhythm_strength: spec.rhythm_strength,
            semantic_strength: spec.semantic_strength,
            tempo: spec.tempo,
            downbeat: spec.downbeat,
            beats_per_bar: u32::from(spec.meter.beats),
        }
    }
}

impl Pipeline for ZeroShot {
    fn uses_pools(&self) -> bool {
        true
    }

    fn make(&mut self, work: Work<'_>) -> Result<Made> {
        let spec = work.spec;
        let (Some((path, _)), Some(id)) = (work.video, spec.video.as_ref()) else {
            return Err(Error::InvalidSetting(
                "the zero-shot engine scores a video: give one".into(),
            ));
        };
        let (Some(mg_dir), Some(clip_dir), Some(vocab), Some(pools)) = (
            work.model,
            work.clip,
            work.vocabulary,
            work.pools.as_deref(),
        ) else {
            return Err(Error::EngineGone);
        };
        let (cancel, progress, sink) = (work.cancel, work.progress, work.sink);
        let settings = ZeroShotSettings::from(spec);
        let precision = work.config.precision;
        let cache = work.config.feature_cache();
        pools.run(|| -> Result<Made> {
            progress(Stage::Analysing, 0.0);
            let stale = self
                .musicgen
                .as_ref()
                .is_none_or(|m| !loaded::is_musicgen(m, mg_dir, precision, &work.device));
            if stale {
                self.musicgen = None;
            }
            let device = &work.device;
            std::thread::scope(|s| -> Result<Made> {
                // MusicGen loads (gigabytes read and quantised: seconds) on
                // the engine's pools while CLIP reads the pictures; it is
                // first needed for the music.
                let loading = stale.then(|| {
                    s.spawn(move || pools.run(|| loaded::musicgen(mg_dir, precision, device)))
                });
                // The words' CLIP: on the CPU it reads the frames too; where
                // a device reads them, its vision tower is not loaded here.
                let words_only = !device.is_cpu();
                if self.clip.as_ref().is_none_or(|c| {
                    c.dir() != clip_dir
                        || self.clip_precision != precision
                        || (!words_only && !c.has_vision())
                }) {
                    self.clip = None;
                    self.clip = Some(if words_only {
                        loaded::clip_words(clip_dir, precision)?
                    } else {
                        loaded::clip(clip_dir, precision)?
                    });
                    self.clip_precision = precision;
                }
                let Some(clip) = self.clip.clone() else {
                    return Err(Error::EngineGone);
                };
                let frames = self.frames.get(clip_dir, precision, device)?;
                // The vocabulary's text embeddings do not depend on the video:
                // made (or read from the cache) while the pictures are read,
                // whose decoding leaves a core idle much of the time.
                let tagging = {
                    let (clip, cache) = (clip.clone(), cache.as_ref());
                    s.spawn(move || pools.run(|| loaded::tag_embeddings(&clip, vocab, cache)))
                };
                let clip_model = loaded::clip_features_model(
                    spec.engine.clip.as_deref().unwrap_or_default(),
                    &*frames,
                );
                let content = format!("{}:{}", id.sample_hash, id.size);
                // CLIP's global features, when this video's are on disk.
                let global_key = FeatureKey {
                    content: content.clone(),
                    model: clip_model.clone(),
                    kind: "global",
                    fps: GLOBAL_FPS,
                    until: spec.preview_until,
                };
                let mut global = cache.as_ref().and_then(|c| c.cached_global(&global_key));

                // The analysis: cuts, sections and a tempo, from the weight-free
                // curve or from CLIP's patch tokens.
                let analysis = match &self.analysis {
                    Some((v, p, c, a))
                        if v == id && *p == spec.preview_until && *c == spec.clip_rhythm =>
                    {
                        a.clone()
                    }
                    _ => {
                        let stats = if global.is_none() {
                            // Neither is known: one decode of the video
                            // gives both (the same features as two passes).
                            let (stats, g) = analysis_and_global(
                                path,
                                &mut StatsEncoder::default(),
                                &*frames,
                                spec.preview_until,
                                cancel,
                                // The 1 fps pass's share of the stage too.
                                &mut |f| {
                                    let share = if spec.clip_rhythm { 0.3 } else { 0.9 };
                                    progress(Stage::Analysing, share * f)
                                },
                            )?;
                            if let Some(c) = &cache {
                                c.store_global(&global_key, &g)?;
                            }
                            global = Some(g);
                            stats
                        } else {
                            analyze_until(
                                path,
                                &mut StatsEncoder::default(),
                                spec.preview_until,
                                cancel,
                                &mut |f| progress(Stage::Analysing, 0.3 * f),
                            )?
                        };
                        let a = if spec.clip_rhythm {
                            let key = FeatureKey {
                                content: content.clone(),
                                model: clip_model.clone(),
                                kind: "local",
                                fps: LOCAL_FPS,
                                until: spec.preview_until,
                            };
                            let compute = || {
                                patch_curve(path, &*frames, spec.preview_until, cancel, &mut |f| {
                                    progress(Stage::Analysing, 0.3 + 0.4 * f)
                                })
                            };
                            let d = match &cache {
                                Some(c) => c.curve(&key, compute)?,
                                None => compute()?,
                            };
                            from_curve(stats.video.clone(), "clip-patches", d, stats.global.clone())
                        } else {
                            stats
                        };
                        let a = Arc::new(a);
                        self.analysis =
                            Some((id.clone(), spec.preview_until, spec.clip_rhythm, a.clone()));
                        a
                    }
                };
                let analysis = match &spec.cuts {
                    Some(c) => Arc::new(analysis.with_cuts(&c.times, c.merge)),
                    None => analysis,
                };

                // What the pictures show, in the vocabulary's words (read
                // with the analysis above unless that was already known).
                let global = match global {
                    Some(g) => g,
                    None => {
                        let g = global_features(
                            path,
                            &*frames,
                            spec.preview_until,
                            cancel,
                            &mut |f| progress(Stage::Analysing, 0.7 + 0.3 * f),
                        )?;
                        if let Some(c) = &cache {
                            c.store_global(&global_key, &g)?;
                        }
                        g
                    }
                };
                check(cancel)?;
                let tag_embeds = tagging
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))?;
                let bounds = analysis.sections(MIN_SECTION_S, 1.0);
                let mut sections = tag_sections(
                    &clip,
                    vocab,
                    &tag_embeds,
                    &global,
                    &bounds,
                    analysis.duration,
                )?;
                let keep =
                    (settings.semantic_strength * vocab.categories.len() as f32).ceil() as usize;
                let kept: Vec<&str> = vocab
                    .categories
                    .iter()
                    .take(keep)
                    .map(|c| c.name.as_str())
                    .collect();
                for s in &mut sections {
                    s.tags.retain(|t| kept.contains(&t.category.as_str()));
                }
                progress(Stage::Analysing, 1.0);

                // The tempo and the bar grid, on the music's clock.
                let rate = spec.playrate;
                let played = if rate == 1.0 {
                    analysis.clone()
                } else {
                    Arc::new(analysis.retimed(rate))
                };
                let start = spec.span.start / rate;
                let bpm = settings.tempo.unwrap_or(played.tempo.bpm);
                let downbeat = settings.downbeat.map_or(played.tempo.phase - start, |d| d);
                let cuts: Vec<f64> = played
                    .cuts
                    .iter()
                    .map(|c| c.time - start)
                    .filter(|t| *t > 0.0 && *t < settings.text.seconds)
                    .collect();
                let schedule = PromptSchedule::new(
                    sections
                        .iter()
                        .map(|s| {
                            (
                                (s.start / rate - start).max(0.0),
                                s.prompt(&settings.text.prompt, Some(bpm)),
                            )
                        })
                        .collect(),
                );

                if let Some(loading) = loading {
                    let m = loading
                        .join()
                        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))?;
                    self.musicgen = Some(m);
                }
                let Some(musicgen) = self.musicgen.clone() else {
                    return Err(Error::EngineGone);
                };

                // The music, then its accents on the cuts.
                let decoding = settings.text.decoding(musicgen.default_sampling());
                let seconds = settings.text.seconds;
                if settings.rhythm_strength == 0.0 {
                    // Nothing to move: the music is heard as it is made, exactly
                    // as the text engine would make it for these prompts.
                    let (audio, loudness) = stream(
                        &musicgen,
                        &schedule,
                        seconds,
                        &decoding,
                        spec.sample_rate,
                        cancel,
                        progress,
                        sink,
                    )?;
                    return Ok(Made {
                        audio,
                        bpm: Some(bpm),
                        downbeat: Some(downbeat),
                        analysis: Some(played),
                        loudness,
                        tags: Some(sections),
                    });
                }
                // Aligned as it is made: each stretch is heard once its beats
                // are placed, while the rest is generated.
                let mut target = Target::new(bpm, cuts, settings.rhythm_strength);
                target.downbeat = downbeat;
                target.beats_per_bar = settings.beats_per_bar;
                let len = (seconds * f64::from(musicgen.sample_rate())).round() as usize;
                let mut aligner = StreamAligner::new(musicgen.sample_rate(), len, target);
                let mut finisher = Finisher::new(musicgen.sample_rate(), spec.sample_rate)?;
                generate(
                    &musicgen,
                    &schedule,
                    seconds,
                    &decoding,
                    cancel,
                    progress,
                    &mut |mono| {
                        let quieter: Vec<f32> = mono.iter().map(|x| x * ACCENT_HEADROOM).collect();
                        // The level from the music's first hand-over (1.6 s), so
                        // the aligned music is heard as soon as its opening is
                        // placed rather than once 1.5 s of it are.
                        finisher.level_from(&quieter)?;
                        let aligned = aligner.push(&quieter);
                        if aligned.is_empty() {
                            return Ok(());
                        }
                        finisher.push(&aligned)?;
                        sink(finisher.audio(), false)
                    },
                )?;
                check(cancel)?;
                finisher.push(&aligner.finish())?;
                let (audio, loudness) = finisher.finish()?;
                Ok(Made {
                    audio,
                    bpm: Some(bpm),
                    downbeat: Some(downbeat),
                    analysis: Some(played),
                    loudness,
                    tags: Some(sections),
                })
            })
        })
    }
}

fn check(cancel: &AtomicBool) -> Result<()> {
    if cancel.load(Ordering::Relaxed) {
        Err(Error::Cancelled)
    } else {
        Ok(())
    }
}

/// The tags the zero-shot engine would choose for `video` (whose `analysis`
/// is given), per section, with the CLIP of `config` and `vocabulary` (the
/// built-in one when `None`): what `vidmusician analyze --tags` prints.
pub fn video_tags(
    config: &crate::service::EngineConfig,
    video: &std::path::Path,
    vocabulary: Option<&std::path::Path>,
    analysis: &Analysis,
    cancel: &AtomicBool,
    progress: crate::analysis::Progress<'_>,
) -> Result<Vec<crate::analysis::tags::SectionTags>> {
    use crate::neural::hub::{ModelKind, find_model_of};
    let vocab = match vocabulary {
        Some(p) => crate::analysis::tags::Vocabulary::load(p)?,
        None => crate::analysis::tags::Vocabulary::parse(
            crate::analysis::tags::BUILTIN,
            "the built-in vocabulary",
        )?,
    };
    let dir = find_model_of(
        &config.clip_model,
        Some(ModelKind::Clip),
        config.model_dir.as_deref(),
    )?;
    let clip = loaded::clip(&dir, config.precision)?;
    let id = crate::service::video_identity(video)?;
    let key = FeatureKey {
        content: format!("{}:{}", id.sample_hash, id.size),
        model: loaded::clip_features_model(&crate::service::spec::model_fingerprint(&dir), &*clip),
        kind: "global",
        fps: GLOBAL_FPS,
        until: None,
    };
    let mut compute = || global_features(video, &*clip, None, cancel, progress);
    let cache = config.feature_cache();
    let global = match &cache {
        Some(c) => c.global(&key, compute)?,
        None => compute()?,
    };
    let bounds = analysis.sections(MIN_SECTION_S, 1.0);
    let embeds = loaded::tag_embeddings(&clip, &vocab, cache.as_ref())?;
    tag_sections(&clip, &vocab, &embeds, &global, &bounds, analysis.duration)
}
