//! What a video file holds, and the checks every input passes before decoding.

use std::path::{Path, PathBuf};

use ffmpeg_next as ff;
use serde::Serialize;

use crate::error::{Error, Result};

/// Facts about a video file, as FFmpeg reports them.
#[derive(Debug, Clone, Serialize)]
pub struct VideoInfo {
    pub path: PathBuf,
    pub container: String,
    pub codec: String,
    #[serde(skip)]
    pub(crate) codec_id: ff::codec::Id,
    /// Coded size, before rotation.
    pub width: u32,
    pub height: u32,
    /// Clockwise rotation (0, 90, 180 or 270) to apply for display.
    pub rotation: u32,
    /// Average frame rate in frames per second.
    pub frame_rate: f64,
    /// Duration in seconds.
    pub duration: f64,
    pub has_audio: bool,
    /// Frames (video packets) read by a full decode; 0 from a probe alone.
    pub video_packets: usize,
    /// Of those, frames that could not be decoded or came out damaged.
    pub undecodable_frames: usize,
    #[serde(skip)]
    pub(crate) stream_index: usize,
}

impl VideoInfo {
    /// Size as displayed, after rotation.
    pub fn display_size(&self) -> (u32, u32) {
        if self.rotation % 180 == 90 {
            (self.height, self.width)
        } else {
            (self.width, self.height)
        }
    }
}

/// Opens `path` with FFmpeg and checks it is a video we can analyse.
pub fn probe(path: &Path) -> Result<VideoInfo> {
    let ictx = open_input(path)?;
    info_from(path, &ictx)
}

pub(crate) fn open_input(path: &Path) -> Result<ff::format::context::Input> {
    super::init();
    let meta = std::fs::metadata(path).map_err(|e| Error::opening(path, e))?;
    if meta.is_dir() {
        return Err(Error::io(
            path,
            std::io::Error::other("it is a directory, not a file"),
        ));
    }
    if meta.len() == 0 {
        return Err(Error::EmptyFile(path.to_path_buf()));
    }
    ff::format::input(path).map_err(|e| Error::Unreadable {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

pub(crate) fn info_from(path: &Path, ictx: &ff::format::context::Input) -> Result<VideoInfo> {
    let container = ictx.format().name().to_string();
    // MP4 and MOV drop tracks without samples: a recording stopped before
    // its first frame opens with no streams at all.
    if ictx.nb_streams() == 0 {
        return Err(Error::EmptyVideo(path.to_path_buf()));
    }
    let has_audio = ictx.streams().best(ff::media::Type::Audio).is_some();
    let stream = ictx
        .streams()
        .best(ff::media::Type::Video)
        .ok_or_else(|| Error::NoVideoStream(path.to_path_buf()))?;
    let params = stream.parameters();
    let codec_id = params.id();
    let codec = codec_id.name().to_string();
    if is_still_image_container(&container)
        || stream
            .disposition()
            .contains(ff::format::stream::Disposition::ATTACHED_PIC)
    {
        return Err(Error::StillImage {
            path: path.to_path_buf(),
            format: container,
        });
    }
    // SAFETY: `params` wraps the stream's live AVCodecParameters; reading
    // plain integer fields is sound while `ictx` is borrowed.
    let (width, height) = unsafe {
        let p = params.as_ptr();
        ((*p).width.max(0) as u32, (*p).height.max(0) as u32)
    };
    if width < super::MIN_SIDE || height < super::MIN_SIDE {
        return Err(Error::TooSmall {
            path: path.to_path_buf(),
            width,
            height,
            min: super::MIN_SIDE,
        });
    }
    let tb = f64::from(stream.time_base());
    let mut duration = if stream.duration() > 0 {
        stream.duration() as f64 * tb
    } else {
        0.0
    };
    if duration <= 0.0 && ictx.duration() > 0 {
        duration = ictx.duration() as f64 / f64::from(ff::ffi::AV_TIME_BASE);
    }
    let mut frame_rate = f64::from(stream.avg_frame_rate());
    if !frame_rate.is_finite() || frame_rate <= 0.0 {
        frame_rate = f64::from(stream.rate());
    }
    if !frame_rate.is_finite() || frame_rate <= 0.0 {
        frame_rate = 25.0;
    }
    // Neither a frame count nor a length: an empty track, or a live
    // recording (MediaRecorder's WebM), which states neither. Its packets
    // tell which.
    if stream.frames() == 0 && duration <= 0.0 && !has_packets(path, stream.index())? {
        return Err(Error::EmptyVideo(path.to_path_buf()));
    }
    Ok(VideoInfo {
        path: path.to_path_buf(),
        container,
        codec,
        codec_id,
        width,
        height,
        rotation: rotation_of(&stream),
        frame_rate,
        duration,
        has_audio,
        video_packets: 0,
        undecodable_frames: 0,
        stream_index: stream.index(),
    })
}

/// Whether stream `index` of `path` has a packet at all.
fn has_packets(path: &Path, index: usize) -> Result<bool> {
    let mut ictx = open_input(path)?;
    Ok(ictx.packets().any(|(s, _)| s.index() == index))
}

fn is_still_image_container(name: &str) -> bool {
    name == "image2" || name.ends_with("_pipe")
}

/// Clockwise display rotation from the stream's display matrix, snapped to a
/// multiple of 90° (what phones write).
fn rotation_of(stream: &ff::format::stream::Stream) -> u32 {
    for sd in stream.side_data() {
        if sd.kind() != ff::codec::packet::side_data::Type::DisplayMatrix {
            continue;
        }
        let data = sd.data();
        if data.len() < 36 {
            continue;
        }
        // SAFETY: the display matrix is 9 native-endian i32 values (checked
        // length above); av_display_rotation_get only reads them.
        let ccw = unsafe { ff::ffi::av_display_rotation_get(data.as_ptr() as *const i32) };
        if !ccw.is_finite() {
            return 0;
        }
        let cw = (-ccw).rem_euclid(360.0);
        return ((cw / 90.0).round() as u32 % 4) * 90;
    }
    0
}
