//! Checks made before any work, so that a wrong output name or an
//! unreadable sound fails at once instead of after the analysis: which
//! containers hold a video stream, the video's codec and AAC sound (from
//! FFmpeg's muxer descriptions), and whether the video's own sound decodes.

use std::ffi::CString;
use std::path::Path;

use ffmpeg_next as ff;

use super::SoundMode;
use super::sound::{Converter, SoundInput, fix_layout};
use crate::error::{Error, Result};
use crate::video::probe::{VideoInfo, open_input};

/// Checks, before any work, that `out` names a container that holds a video
/// stream and AAC sound, and — given the video — its video codec, so that a
/// wrong name fails at once instead of after the analysis.
pub fn check_mux_output(out: &Path, video: Option<&VideoInfo>) -> Result<()> {
    crate::video::init();
    let ext = out
        .extension()
        .map(|e| format!(".{}", e.to_string_lossy()))
        .unwrap_or_default();
    let refuse = |why: String| {
        Error::output(
            out,
            format!(
                "{why}; a copy of the video with the music needs a video container: name it .mp4, .mov or .mkv"
            ),
        )
    };
    let Some(fmt) = guess_format(out) else {
        return Err(refuse(if ext.is_empty() {
            "the name has no extension to tell the container".to_string()
        } else {
            format!("FFmpeg knows no container for {ext}")
        }));
    };
    let name = muxer_name(fmt);
    // SAFETY: `fmt` is one of FFmpeg's static muxer descriptions.
    let (vcodec, acodec) = unsafe { ((*fmt).video_codec, (*fmt).audio_codec) };
    // MP3 and FLAC name PNG as their video codec: a cover picture, not video.
    if vcodec == ff::ffi::AVCodecID::AV_CODEC_ID_NONE
        || vcodec == ff::ffi::AVCodecID::AV_CODEC_ID_PNG
        || is_image_muxer(&name)
    {
        return Err(refuse(format!("{ext} ({name}) holds no video")));
    }
    // Only a muxer that says it takes AAC is trusted with it: one that cannot
    // tell (Ogg, MXF, MPEG-PS) would fail when the header is written, after
    // all the work. MPEG-TS cannot tell either, and carries AAC.
    let takes_aac = match query_codec(fmt, ff::codec::Id::AAC) {
        Some(ok) => ok,
        None => AAC_WITHOUT_SAYING.contains(&name.as_str()),
    };
    if acodec == ff::ffi::AVCodecID::AV_CODEC_ID_NONE || !takes_aac {
        return Err(refuse(format!("{ext} ({name}) cannot hold AAC sound")));
    }
    // The video codec only where the muxer can tell: the stream is copied,
    // and a muxer that does not list codecs (MPEG-TS) takes most.
    if let Some(v) = video
        && query_codec(fmt, v.codec_id) == Some(false)
    {
        return Err(refuse(format!(
            "{ext} ({name}) cannot hold the video's {} stream, which is copied as it is",
            v.codec
        )));
    }
    Ok(())
}

/// Muxers that carry AAC though `avformat_query_codec` cannot tell.
const AAC_WITHOUT_SAYING: &[&str] = &["mpegts"];

fn is_image_muxer(name: &str) -> bool {
    name == "image2" || name.ends_with("_pipe") || name == "apng" || name == "gif"
}

/// The muxer FFmpeg would pick for `path`'s name. Unlike
/// `ff::format::output`, this opens nothing: that one creates (truncates) the
/// file it is given.
pub(super) fn guess_format(path: &Path) -> Option<*const ff::ffi::AVOutputFormat> {
    let name = CString::new(path.file_name()?.to_string_lossy().as_bytes()).ok()?;
    // SAFETY: a NUL-terminated name; FFmpeg returns a static description or
    // null.
    let fmt =
        unsafe { ff::ffi::av_guess_format(std::ptr::null(), name.as_ptr(), std::ptr::null()) };
    (!fmt.is_null()).then_some(fmt)
}

/// The short name of a muxer (`mp4`, `matroska`).
pub(super) fn muxer_name(fmt: *const ff::ffi::AVOutputFormat) -> String {
    // SAFETY: `fmt` comes from `guess_format`: a static muxer description,
    // whose name is a static NUL-terminated string.
    unsafe { std::ffi::CStr::from_ptr((*fmt).name) }
        .to_string_lossy()
        .into_owned()
}

/// Whether the muxer can store `codec`: `None` when it cannot tell.
fn query_codec(fmt: *const ff::ffi::AVOutputFormat, codec: ff::codec::Id) -> Option<bool> {
    // SAFETY: `fmt` is a static muxer description; the call only reads it.
    let r = unsafe { ff::ffi::avformat_query_codec(fmt, codec.into(), 0) };
    match r {
        1 => Some(true),
        0 => Some(false),
        _ => None,
    }
}

/// Whether `out`'s container takes a sound stream of `codec` as it is (else
/// tracks mode re-encodes the original sound).
pub(super) fn takes_as_is(out: &Path, codec: ff::codec::Id) -> bool {
    guess_format(out).is_some_and(|f| query_codec(f, codec) == Some(true))
}

/// Checks, before any work, that the sound `mode` needs decoded can be: in a
/// mix, and in tracks mode when `out`'s container does not take the original
/// as it is. The decoder is opened and the first packets decoded and
/// converted to `rate`, so that a sound FFmpeg cannot read fails now, not
/// after the music is made. A video without sound passes.
pub fn check_mux_sound(video: &Path, out: &Path, mode: SoundMode, rate: u32) -> Result<()> {
    let mut ictx = open_input(video)?;
    let Some(codec) = ictx
        .streams()
        .best(ff::media::Type::Audio)
        .map(|s| s.parameters().id())
    else {
        return Ok(());
    };
    let needs_decoding = match mode {
        SoundMode::Replace => false,
        SoundMode::Mix => true,
        SoundMode::Tracks => !takes_as_is(out, codec),
    };
    if !needs_decoding {
        return Ok(());
    }
    let Some(mut sound) = SoundInput::open(&ictx, video, None)? else {
        return Ok(());
    };
    let mut frame = ff::frame::Audio::empty();
    let mut tried = 0usize;
    let mut failed = 0usize;
    let mut decoded = false;
    for (s, packet) in ictx.packets() {
        if s.index() != sound.index {
            continue;
        }
        tried += 1;
        if sound.decoder.send_packet(&packet).is_err() {
            failed += 1;
        } else if sound.decoder.receive_frame(&mut frame).is_ok() && frame.samples() > 0 {
            decoded = true;
            break;
        }
        if tried == CHECK_PACKETS {
            break;
        }
    }
    let whole_stream = tried < CHECK_PACKETS;
    if !decoded && whole_stream {
        // All of it was sent: what the decoder still holds.
        let _ = sound.decoder.send_eof();
        decoded = sound.decoder.receive_frame(&mut frame).is_ok() && frame.samples() > 0;
    }
    if !decoded {
        if failed == 0 && whole_stream {
            // Nothing to decode (a track without samples): nothing to mix.
            return Ok(());
        }
        let first = if whole_stream { "" } else { "first " };
        return Err(sound.error(format!(
            "none of its {first}{tried} packets could be decoded"
        )));
    }
    // And it converts (a rate of 0 is refused with the other settings).
    if rate > 0 {
        fix_layout(&mut frame);
        let mut conv = Converter::new(&frame, rate).map_err(|e| sound.error(e.to_string()))?;
        conv.push(Some(&frame), &mut [Vec::new(), Vec::new()])
            .map_err(|e| sound.error(e.to_string()))?;
    }
    Ok(())
}

/// Sound packets [`check_mux_sound`] decodes at most to find one frame.
const CHECK_PACKETS: usize = 64;
