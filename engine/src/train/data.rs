//! A training set: a folder of videos whose sound is their music, or videos
//! with a sidecar WAV of the same name (`clip.mp4` + `clip.wav`), each with an
//! optional caption (`clip.txt`). What training reads of each piece — the
//! music's EnCodec codes, CLIP's global features at 1 fps and the rhythm curve
//! at the code frame rate — is extracted once and cached.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use candle_core::{Device, Tensor};
use rand::Rng;

use super::batch::Example;
use crate::analysis::LOCAL_FPS;
use crate::analysis::clip_features::global_and_curve;
use crate::analysis::resample_linear;
use crate::neural::MusicGen;
use crate::neural::encodec_encoder::EncodecEncoder;
use crate::neural::models::clip::FrameEncoder;
use crate::{Error, Result};

/// File extensions taken as videos.
pub const VIDEO_EXTENSIONS: &[&str] = &["mp4", "mov", "mkv", "webm", "avi", "m4v"];

/// Bump when what [`prepare`] stores changes.
const CACHE_VERSION: &str = "train-v1";

/// One video of the set and where its music comes from.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    pub video: PathBuf,
    /// A WAV beside the video; `None`: the video's own sound.
    pub sidecar: Option<PathBuf>,
    pub caption: Option<String>,
}

/// A video left out of training, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Skipped {
    pub video: PathBuf,
    pub reason: String,
}

/// A piece ready for training.
#[derive(Debug, Clone)]
pub struct Piece {
    pub name: String,
    /// `frames × codebooks`.
    pub codes: Vec<Vec<u32>>,
    /// One row per second.
    pub clip: Vec<Vec<f32>>,
    /// One value per code frame.
    pub curve: Vec<f32>,
    pub caption: Option<String>,
    /// The caption as cross-attention states (`tokens × hidden`), once
    /// encoded.
    pub text: Option<std::sync::Arc<Vec<f32>>>,
}

/// The videos in `dir` (not its sub-folders), in name order.
pub fn scan(dir: &Path) -> Result<Vec<Item>> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::opening(dir, e))?;
    let mut videos: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && p.extension()
                    .and_then(|e| e.to_str())
                    .is_some_and(|e| VIDEO_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
        })
        .collect();
    videos.sort();
    if videos.is_empty() {
        return Err(Error::InvalidSetting(format!(
            "{}: no videos to train on (looked for {})",
            dir.display(),
            VIDEO_EXTENSIONS.join(", ")
        )));
    }
    videos
        .into_iter()
        .map(|video| {
            let wav = video.with_extension("wav");
            let txt = video.with_extension("txt");
            let caption = if txt.is_file() {
                let t = std::fs::read_to_string(&txt).map_err(|e| Error::opening(&txt, e))?;
                Some(t.trim().to_string()).filter(|t| !t.is_empty())
            } else {
                None
            };
            Ok(Item {
                sidecar: wav.is_file().then_some(wav),
                video,
                caption,
            })
        })
        .collect()
}

/// Everything [`prepare`] needs.
pub struct Extractor<'a> {
    pub base: &'a MusicGen,
    pub base_hash: String,
    pub encoder: &'a EncodecEncoder,
    pub clip: &'a dyn FrameEncoder,
    /// Identifies the CLIP checkpoint in cache keys.
    pub clip_id: String,
    /// Where extracted pieces are kept; `None`: nowhere.
    pub cache: Option<PathBuf>,
}

impl Extractor<'_> {
    /// The pieces of `items`, each extracted or read from the cache; a video
    /// with no music (no sound and no sidecar) or one that cannot be read is
    /// skipped with the reason. `progress(done, total, name)` after each.
    pub fn prepare(
        &self,
        items: &[Item],
        cancel: &AtomicBool,
        progress: &mut dyn FnMut(usize, usize, &str),
    ) -> Result<(Vec<Piece>, Vec<Skipped>)> {
        let (mut pieces, mut skipped) = (Vec::new(), Vec::new());
        for (i, item) in items.iter().enumerate() {
            if cancel.load(std::sync::atomic::Ordering::Relaxed) {
                return Err(Error::Cancelled);
            }
            let name = item
                .video
                .file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
            match self.piece(item, &name, cancel) {
                Ok(Some(p)) => pieces.push(p),
                Ok(None) => skipped.push(Skipped {
                    video: item.video.clone(),
                    reason: "it has no sound and no WAV of the same name beside it".into(),
                }),
                Err(Error::Cancelled) => return Err(Error::Cancelled),
                Err(e) => skipped.push(Skipped {
                    video: item.video.clone(),
                    reason: e.to_string(),
                }),
            }
            progress(i + 1, items.len(), &name);
        }
        Ok((pieces, skipped))
    }

    fn cache_file(&self, item: &Item) -> Result<Option<PathBuf>> {
        let Some(dir) = &self.cache else {
            return Ok(None);
        };
        let mut h = blake3::Hasher::new();
        h.update(CACHE_VERSION.as_bytes());
        // A file's identity: a hash of its first and last MiB, its size and
        // its modification time (a re-rendered file is extracted again).
        let identity = |p: &Path| -> Result<String> {
            let id = crate::service::video_identity(p)?;
            Ok(format!("{}:{}:{}", id.sample_hash, id.size, id.modified_ns))
        };
        for part in [&self.base_hash, &self.clip_id, &identity(&item.video)?] {
            h.update(part.as_bytes());
            h.update(&[0]);
        }
        if let Some(s) = &item.sidecar {
            h.update(identity(s)?.as_bytes());
        }
        Ok(Some(dir.join(format!(
            "{}.safetensors",
            &h.finalize().to_hex()[..32]
        ))))
    }

    fn piece(&self, item: &Item, name: &str, cancel: &AtomicBool) -> Result<Option<Piece>> {
        let cached = self.cache_file(item)?;
        if let Some(p) = &cached
            && let Some(piece) = read_cached(p, name, item)
        {
            return Ok(Some(piece));
        }
        let rate = self.encoder.sample_rate();
        let sound = match &item.sidecar {
            Some(wav) => Some(crate::audio::resample(&crate::audio::read_wav(wav)?, rate)?),
            None => crate::video::read_sound(&item.video, None, rate)?,
        };
        let Some(sound) = sound else {
            return Ok(None);
        };
        let mono = sound.mono();
        let n = mono.len();
        let audio = Tensor::from_vec(mono, (1, 1, n), &Device::Cpu)?;
        let k = self.base.config().decoder.num_codebooks;
        let codes = self
            .encoder
            .encode_codebooks(&audio, k)?
            .squeeze(0)?
            .t()?
            .to_vec2::<u32>()?;
        let (global, patches) =
            global_and_curve(&item.video, self.clip, None, cancel, &mut |_| {})?;
        let frame_rate = self.base.frame_rate() as f64;
        // Music past the pictures' end (a sidecar longer than its video) has
        // no pictures to learn from.
        let mut codes = codes;
        codes.truncate(((patches.len() as f64 / LOCAL_FPS) * frame_rate).ceil() as usize);
        let curve = resample_linear(
            &patches,
            LOCAL_FPS,
            frame_rate,
            codes.len() as f64 / frame_rate,
        );
        let piece = Piece {
            name: name.to_string(),
            codes,
            clip: global.pooled,
            curve,
            caption: item.caption.clone(),
            text: None,
        };
        if piece.codes.is_empty() || piece.clip.is_empty() {
            return Err(Error::InvalidSetting(format!(
                "{name}: too short to train on"
            )));
        }
        if let Some(p) = cached {
            // A cache that cannot be written costs time, not the run.
            let _ = write_cached(&p, &piece);
        }
        Ok(Some(piece))
    }
}

fn read_cached(path: &Path, name: &str, item: &Item) -> Option<Piece> {
    let t = candle_core::safetensors::load(path, &Device::Cpu).ok()?;
    Some(Piece {
        name: name.to_string(),
        codes: t.get("codes")?.to_vec2::<u32>().ok()?,
        clip: t.get("clip")?.to_vec2::<f32>().ok()?,
        curve: t.get("curve")?.to_vec1::<f32>().ok()?,
        caption: item.caption.clone(),
        text: None,
    })
}

fn write_cached(path: &Path, p: &Piece) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::output(dir, e))?;
    }
    let rows = |r: &[Vec<f32>]| -> Result<Tensor> {
        let w = r.first().map_or(0, Vec::len);
        Ok(Tensor::from_vec(r.concat(), (r.len(), w), &Device::Cpu)?)
    };
    let k = p.codes.first().map_or(0, Vec::len);
    let tensors = std::collections::HashMap::from([
        (
            "codes".to_string(),
            Tensor::from_vec(p.codes.concat(), (p.codes.len(), k), &Device::Cpu)?,
        ),
        ("clip".to_string(), rows(&p.clip)?),
        (
            "curve".to_string(),
            Tensor::from_vec(p.curve.clone(), p.curve.len(), &Device::Cpu)?,
        ),
    ]);
    crate::audio::atomic_output(path, |tmp| {
        candle_core::safetensors::save(&tensors, tmp).map_err(|e| Error::output(tmp, e))
    })
}

/// The pieces split into training and held-out ones: every tenth piece in
/// name order (at least one) is held out. At least two pieces are needed.
pub fn split(mut pieces: Vec<Piece>) -> Result<(Vec<Piece>, Vec<Piece>)> {
    if pieces.len() < 2 {
        return Err(Error::InvalidSetting(format!(
            "{} usable video{} to train on: at least two are needed, one of them held out to measure the model",
            pieces.len(),
            if pieces.len() == 1 { "" } else { "s" }
        )));
    }
    pieces.sort_by(|a, b| a.name.cmp(&b.name));
    let every = 10.min(pieces.len());
    let (mut train, mut held) = (Vec::new(), Vec::new());
    for (i, p) in pieces.into_iter().enumerate() {
        if i % every == every - 1 {
            held.push(p);
        } else {
            train.push(p);
        }
    }
    Ok((train, held))
}

/// Code frames in a training window: `seconds` of music, no more than the
/// shortest piece or the decoder's positions allow.
pub fn window_frames(pieces: &[&Piece], seconds: f64, base: &MusicGen) -> usize {
    let k = base.config().decoder.num_codebooks;
    let max_positions = base.config().decoder.max_position_embeddings;
    let shortest = pieces.iter().map(|p| p.codes.len()).min().unwrap_or(0);
    ((seconds * base.frame_rate() as f64) as usize)
        .min(shortest)
        .min(max_positions.saturating_sub(k))
}

/// A window of `frames` code frames of `piece`, starting at `start`; its
/// rhythm curve starts `context` frames earlier, as generation reads it.
pub fn window(
    piece: &Piece,
    start: usize,
    frames: usize,
    frame_rate: f64,
    context: usize,
) -> Example {
    let codes = piece.codes[start..start + frames].to_vec();
    // The seconds the window overlaps, one CLIP row each.
    let first = ((start as f64 / frame_rate) as usize).min(piece.clip.len() - 1);
    let last =
        (((start + frames) as f64 / frame_rate).ceil() as usize).clamp(first + 1, piece.clip.len());
    let rows = &piece.clip[first..last];
    Example {
        codes,
        clip: rows.concat(),
        clip_frames: rows.len(),
        rhythm: {
            let from = start.saturating_sub(context);
            let mut r = vec![0.0; context - (start - from)];
            r.extend_from_slice(&piece.curve[from.min(piece.curve.len())..]);
            r
        },
        text: piece.text.clone(),
    }
}

/// A window of `frames` frames at a random place in a random piece.
pub fn random_window(
    pieces: &[Piece],
    frames: usize,
    frame_rate: f64,
    context: usize,
    rng: &mut impl Rng,
) -> Example {
    let p = &pieces[rng.random_range(0..pieces.len())];
    let start = rng.random_range(0..=p.codes.len() - frames);
    window(p, start, frames, frame_rate, context)
}

/// The windows a held-out loss is measured on: each held-out piece cut into
/// consecutive windows, the same every time.
pub fn held_out_windows(
    pieces: &[Piece],
    frames: usize,
    frame_rate: f64,
    context: usize,
) -> Vec<Example> {
    pieces
        .iter()
        .flat_map(|p| {
            (0..p.codes.len() / frames.max(1))
                .map(move |i| window(p, i * frames, frames, frame_rate, context))
        })
        .collect()
}
