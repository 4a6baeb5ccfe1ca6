//! The VidMusician method: MusicGen conditioned by a trained adapter on CLIP's
//! global features (1 fps, through cross-attention, after the prompt's text if
//! there is one) and on the rhythm curve of CLIP's patch tokens (25 fps, at
//! the code frame rate, through in-attention), window by window, streaming
//! like the text engine.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::text::{TextSettings, stream_with};
use super::{Made, Pipeline, Work, loaded};
use crate::analysis::clip_features::{FeatureKey, global_and_curve, global_features, patch_curve};
use crate::analysis::{GLOBAL_FPS, LOCAL_FPS, resample_linear};
use crate::error::{Error, Result};
use crate::neural::MusicGen;
use crate::neural::conditioning::Adapter;
use crate::neural::conditioning::rhythm::{START_FRAMES, prepare_curve};
use crate::service::Stage;

/// The engine, holding its models and adapter between requests.
#[derive(Default)]
pub(crate) struct VidMusician {
    musicgen: Option<Arc<MusicGen>>,
    /// What reads the frames: CLIP's vision tower on the engine's device.
    frames: loaded::HeldFrames,
    /// The adapter, its content hash, and the MusicGen folder it was loaded
    /// onto.
    adapter: Option<(String, PathBuf, Arc<Adapter>)>,
}

impl Pipeline for VidMusician {
    fn uses_pools(&self) -> bool {
        true
    }

    fn make(&mut self, work: Work<'_>) -> Result<Made> {
        let (Some(mg_dir), Some(clip_dir), Some(adapter_path), Some((path, _)), Some(pools)) = (
            work.model,
            work.clip,
            work.adapter,
            work.video,
            work.pools.as_deref(),
        ) else {
            return Err(Error::EngineGone);
        };
        let spec = work.spec;
        let precision = work.config.precision;
        let (cancel, progress, sink) = (work.cancel, work.progress, work.sink);
        let cache = work.config.feature_cache();
        let base_id = work.config.text_model.clone();
        pools.run(|| -> Result<Made> {
            progress(Stage::Analysing, 0.0);
            let musicgen = self.musicgen(mg_dir, precision, &work.device)?;
            let clip = self.frames.get(clip_dir, precision, &work.device)?;
            let hash = spec.engine.adapter.clone().unwrap_or_default();
            let adapter = self.adapter(adapter_path, &hash, mg_dir, &musicgen, &base_id)?;
            if adapter.info.config.clip_width != clip.config().vision_config.hidden_size {
                return Err(Error::InvalidSetting(format!(
                    "the adapter {} reads CLIP features {} wide; {} gives {}: use the CLIP it was trained with",
                    adapter_path.display(),
                    adapter.info.config.clip_width,
                    clip_dir.display(),
                    clip.config().vision_config.hidden_size
                )));
            }

            // The pictures: CLIP's pooled features at 1 fps and the patch
            // curve at 25 fps over the whole video, as training read them.
            let id = spec.video.as_ref().ok_or(Error::EngineGone)?;
            let content = format!("{}:{}", id.sample_hash, id.size);
            let clip_model = loaded::clip_features_model(
                spec.engine.clip.as_deref().unwrap_or_default(),
                &*clip,
            );
            let key = |kind, fps| FeatureKey {
                content: content.clone(),
                model: clip_model.clone(),
                kind,
                fps,
                until: None,
            };
            let (global_key, curve_key) = (key("global", GLOBAL_FPS), key("local", LOCAL_FPS));
            let (cached_global, cached_curve) = match &cache {
                Some(c) => (c.cached_global(&global_key), c.cached_curve(&curve_key)),
                None => (None, None),
            };
            // What is not on disk is read from the video: both from one
            // decode when neither is.
            let fresh = (cached_global.is_none(), cached_curve.is_none());
            let analysing = &mut |f| progress(Stage::Analysing, f);
            let (global, patches) = match (cached_global, cached_curve) {
                (Some(g), Some(c)) => (g, c),
                (None, None) => global_and_curve(path, &*clip, None, cancel, analysing)?,
                (Some(g), None) => (g, patch_curve(path, &*clip, None, cancel, analysing)?),
                (None, Some(c)) => (global_features(path, &*clip, None, cancel, analysing)?, c),
            };
            if let Some(cache) = &cache {
                if fresh.0 {
                    cache.store_global(&global_key, &global)?;
                }
                if fresh.1 {
                    cache.store_curve(&curve_key, &patches)?;
                }
            }
            if global.pooled.is_empty() {
                return Err(Error::InvalidSetting(
                    "the video gave no frames to read".into(),
                ));
            }

            // The piece's own time line: music second s is the video's
            // time start + s · playrate.
            let rate = musicgen.frame_rate() as f64;
            let seconds = spec.span.music_seconds(spec.playrate);
            let at_video = |music_s: f64| spec.span.start + music_s * spec.playrate;
            // Over the whole video, as training prepared each piece's curve.
            let duration = patches.len() as f64 / LOCAL_FPS;
            let mut video_curve = prepare_curve(
                &resample_linear(&patches, LOCAL_FPS, rate, duration.max(at_video(seconds) + 1.0)),
                adapter.info.config.rhythm_normalise,
            );
            if let Some(cuts) = &spec.cuts {
                mark_cuts(&mut video_curve, &cuts.times, cuts.merge, rate);
            }
            // Each music frame reads the largest value over the stretch of
            // video it covers, so that no cut falls between two samples at
            // a high playrate; the rhythm strength scales what it reads.
            let frames = (seconds * rate).ceil() as usize + musicgen.config().decoder.num_codebooks;
            let last = video_curve.len() - 1;
            let curve: Vec<f32> = (0..frames)
                .map(|f| {
                    let from = ((at_video(f as f64 / rate) * rate).round() as usize).min(last);
                    let to = ((at_video((f + 1) as f64 / rate) * rate).round() as usize)
                        .clamp(from + 1, last + 1);
                    let v = video_curve[from..to].iter().fold(0f32, |m, &x| m.max(x));
                    v * spec.rhythm_strength
                })
                .collect();
            let rows: Vec<Vec<f32>> = (0..seconds.ceil().max(1.0) as usize)
                .map(|s| {
                    let i = (at_video(s as f64) * GLOBAL_FPS) as usize;
                    global.pooled[i.min(global.pooled.len() - 1)].clone()
                })
                .collect();

            let settings = TextSettings::from(spec);
            let decoding = settings.decoding(musicgen.default_sampling());
            let text = if settings.prompt.trim().is_empty() {
                None
            } else {
                let (ids, mask) = musicgen.tokenize(&[&settings.prompt])?;
                Some((musicgen.text_states(&ids, &mask)?, mask))
            };
            let mut condition = |w| {
                adapter.window_input(
                    &musicgen,
                    w,
                    &rows,
                    &curve,
                    text.as_ref().map(|(s, m)| (s, m)),
                    spec.semantic_strength,
                )
            };
            let (audio, loudness) = stream_with(
                &musicgen,
                &mut condition,
                seconds,
                &decoding,
                spec.sample_rate,
                cancel,
                progress,
                sink,
            )?;
            Ok(Made {
                audio,
                bpm: None,
                downbeat: None,
                analysis: None,
                loudness,
                tags: None,
            })
        })
    }
}

impl VidMusician {
    fn musicgen(
        &mut self,
        dir: &Path,
        precision: crate::neural::Precision,
        device: &crate::neural::device::Chosen,
    ) -> Result<Arc<MusicGen>> {
        if self
            .musicgen
            .as_ref()
            .is_none_or(|m| !loaded::is_musicgen(m, dir, precision, device))
        {
            self.musicgen = None;
            self.adapter = None;
            self.musicgen = Some(loaded::musicgen(dir, precision, device)?);
        }
        self.musicgen.clone().ok_or(Error::EngineGone)
    }

    /// The adapter at `path` (whose content hashes to `hash`) on the
    /// MusicGen of `mg_dir`, loaded once per content (it is checked against
    /// the base's weights as it loads).
    fn adapter(
        &mut self,
        path: &Path,
        hash: &str,
        mg_dir: &Path,
        musicgen: &MusicGen,
        base_id: &str,
    ) -> Result<Arc<Adapter>> {
        if let Some((h, d, a)) = &self.adapter
            && h == hash
            && d == mg_dir
        {
            return Ok(a.clone());
        }
        self.adapter = None;
        let a = Arc::new(Adapter::load(path, musicgen, base_id)?);
        self.adapter = Some((hash.to_string(), mg_dir.to_path_buf(), a.clone()));
        Ok(a)
    }
}

/// The user's cuts (seconds of the video) on a prepared rhythm curve at
/// `rate`: a spike of 1 at each (a half on the frames beside it, as a
/// detected cut's interpolated spike has). Without `merge` they replace the
/// detected ones: elsewhere the curve is held under a fifth of its scale.
fn mark_cuts(curve: &mut [f32], times: &[f64], merge: bool, rate: f64) {
    let frame = |t: f64| (t * rate).round() as i64;
    if !merge {
        for (i, v) in curve.iter_mut().enumerate().skip(START_FRAMES) {
            if !times.iter().any(|&t| (frame(t) - i as i64).abs() <= 2) {
                *v = v.min(0.2);
            }
        }
    }
    for &t in times {
        for (d, level) in [(-1i64, 0.5f32), (0, 1.0), (1, 0.5)] {
            let i = frame(t) + d;
            if let Some(v) = usize::try_from(i).ok().and_then(|i| curve.get_mut(i)) {
                *v = v.max(level);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::mark_cuts;

    #[test]
    fn user_cuts_become_spikes_and_replace_the_detected_ones_unless_merged() {
        let base: Vec<f32> = (0..100).map(|i| if i == 40 { 0.9 } else { 0.05 }).collect();
        let mut merged = base.clone();
        mark_cuts(&mut merged, &[1.0], true, 50.0);
        assert_eq!((merged[49], merged[50], merged[51]), (0.5, 1.0, 0.5));
        assert_eq!(merged[40], 0.9, "merged: the detected cut stays");
        let mut replaced = base.clone();
        mark_cuts(&mut replaced, &[1.0], false, 50.0);
        assert_eq!(replaced[50], 1.0);
        assert_eq!(replaced[40], 0.2, "replaced: the detected cut is held down");
        assert_eq!(replaced[10], 0.05);
        // Cuts outside the curve are ignored, not a panic.
        mark_cuts(&mut replaced, &[-3.0, 99.0], true, 50.0);
    }
}
