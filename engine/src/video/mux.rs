//! A copy of a video with music in its sound: the video stream is copied
//! packet for packet (not re-encoded); the music is encoded to AAC, under the
//! video's own sound (mixed), instead of it, or beside it as a second track.

use std::ffi::CString;
use std::path::Path;

use ffmpeg_next as ff;

use super::probe::{VideoInfo, info_from, open_input};
use crate::audio::{self, Audio, atomic_output};
use crate::error::{Error, Result};

/// What becomes of the video's own sound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SoundMode {
    /// The original sound with the music mixed beneath it.
    #[default]
    Mix,
    /// The music alone.
    Replace,
    /// Two audio streams: the original sound (first, the default one) and the
    /// music.
    Tracks,
}

/// The music's level under the original sound, dB. The music is mastered to
/// −14 LUFS; −12 dB puts it near −26 LUFS, 8–10 LU beneath speech mastered
/// for the web (−16 to −18 LUFS), which is where a music bed under dialogue
/// usually sits. Raw camera sound is often quieter: the summary says both
/// levels, and `--music-gain` moves the music.
pub const DEFAULT_MUSIC_GAIN_DB: f32 = -12.0;

/// Sample peak the mix is limited to, dBFS: below full scale so that the
/// AAC encoder's own overshoot does not clip.
pub const MIX_CEILING_DB: f32 = -1.0;

#[derive(Debug, Clone, Copy)]
pub struct MuxOptions {
    pub sound: SoundMode,
    /// Gain of the music in [`SoundMode::Mix`], dB.
    pub music_gain_db: f32,
    /// Where the music starts in the video, seconds (the start of a
    /// `--start/--end` range).
    pub music_start: f64,
}

impl Default for MuxOptions {
    fn default() -> Self {
        Self {
            sound: SoundMode::Mix,
            music_gain_db: DEFAULT_MUSIC_GAIN_DB,
            music_start: 0.0,
        }
    }
}

/// What [`mux_audio`] did with the sound.
#[derive(Debug, Clone, Default)]
pub struct MuxReport {
    /// The video had a sound track.
    pub had_sound: bool,
    /// What was done: [`SoundMode::Replace`] for a video without sound,
    /// whatever was asked.
    pub sound: SoundMode,
    /// Integrated loudness of the original sound, LUFS (mix only).
    pub original_lufs: Option<f64>,
    /// Integrated loudness of the music after its gain, LUFS (mix only).
    pub music_lufs: Option<f64>,
    /// Most gain reduction the limiter applied to the mix, dB (0: none).
    pub limited_db: f32,
    /// Tracks mode: the original sound was copied packet for packet (else it
    /// was re-encoded to AAC, the container not taking its codec).
    pub original_copied: bool,
}

/// Checks, before any work, that `out` names a container that holds a video
/// stream and AAC sound, and — given the video — its video codec, so that a
/// wrong name fails at once instead of after the analysis.
pub fn check_mux_output(out: &Path, video: Option<&VideoInfo>) -> Result<()> {
    super::init();
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
    // SAFETY: `fmt` is one of FFmpeg's static muxer descriptions.
    let (name, vcodec, acodec) = unsafe {
        (
            std::ffi::CStr::from_ptr((*fmt).name)
                .to_string_lossy()
                .into_owned(),
            (*fmt).video_codec,
            (*fmt).audio_codec,
        )
    };
    if vcodec == ff::ffi::AVCodecID::AV_CODEC_ID_NONE || is_image_muxer(&name) {
        return Err(refuse(format!("{ext} ({name}) holds no video")));
    }
    if acodec == ff::ffi::AVCodecID::AV_CODEC_ID_NONE
        || query_codec(fmt, ff::codec::Id::AAC) == Some(false)
    {
        return Err(refuse(format!("{ext} ({name}) cannot hold AAC sound")));
    }
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

fn is_image_muxer(name: &str) -> bool {
    name == "image2" || name.ends_with("_pipe") || name == "apng" || name == "gif"
}

/// The muxer FFmpeg would pick for `path`'s name. Unlike
/// `ff::format::output`, this opens nothing: that one creates (truncates) the
/// file it is given.
fn guess_format(path: &Path) -> Option<*const ff::ffi::AVOutputFormat> {
    let name = CString::new(path.file_name()?.to_string_lossy().as_bytes()).ok()?;
    // SAFETY: a NUL-terminated name; FFmpeg returns a static description or
    // null.
    let fmt =
        unsafe { ff::ffi::av_guess_format(std::ptr::null(), name.as_ptr(), std::ptr::null()) };
    (!fmt.is_null()).then_some(fmt)
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

/// Writes `out`: `video`'s picture, copied packet for packet, with `music`
/// (starting at `opts.music_start` of the video) in its sound as
/// `opts.sound` says. Everything is cut to the video's length. `out` is
/// replaced atomically, so a failure never leaves a half-written file.
pub fn mux_audio(video: &Path, music: &Audio, out: &Path, opts: &MuxOptions) -> Result<MuxReport> {
    let mut ictx = open_input(video)?;
    let info = info_from(video, &ictx)?;
    check_mux_output(out, Some(&info))?;
    let rate = music.sample_rate;
    let sound_index = ictx
        .streams()
        .best(ff::media::Type::Audio)
        .map(|s| s.index());
    let mut report = MuxReport {
        had_sound: sound_index.is_some(),
        sound: if sound_index.is_some() {
            opts.sound
        } else {
            SoundMode::Replace
        },
        ..MuxReport::default()
    };
    let frames = (info.duration * f64::from(rate)).round() as usize;
    // The music on the video's time line, silent before its start.
    let placed = place(music, opts.music_start, frames, rate);
    let copy_original = match (report.sound, sound_index) {
        (SoundMode::Tracks, Some(i)) => {
            let codec = ictx
                .stream(i)
                .map(|s| s.parameters().id())
                .unwrap_or(ff::codec::Id::None);
            guess_format(out).is_some_and(|f| query_codec(f, codec) == Some(true))
        }
        _ => false,
    };
    report.original_copied = copy_original;
    // Sound tracks to encode, in order.
    let mut tracks: Vec<Audio> = Vec::new();
    match report.sound {
        SoundMode::Replace => tracks.push(placed),
        SoundMode::Mix => {
            let original = read_sound(video, None, rate)?
                .ok_or_else(|| Error::NoVideoStream(video.to_path_buf()))?;
            let original = fit_length(original, frames);
            report.original_lufs = finite(audio::integrated(&original)?);
            let gain = 10f32.powf(opts.music_gain_db / 20.0);
            let mut mix = original;
            for (m, p) in mix.channels.iter_mut().zip(&placed.channels) {
                for (x, y) in m.iter_mut().zip(p) {
                    *x += gain * y;
                }
            }
            let mut music_only = placed;
            for c in &mut music_only.channels {
                c.iter_mut().for_each(|x| *x *= gain);
            }
            report.music_lufs = finite(audio::integrated(&music_only)?);
            report.limited_db = audio::limit_peaks(&mut mix, MIX_CEILING_DB);
            tracks.push(mix);
        }
        SoundMode::Tracks => {
            if !copy_original {
                let original = read_sound(video, None, rate)?
                    .ok_or_else(|| Error::NoVideoStream(video.to_path_buf()))?;
                tracks.push(fit_length(original, frames));
            }
            tracks.push(placed);
        }
    }
    atomic_output(out, |tmp| {
        write_mux(
            &mut ictx,
            &info,
            if copy_original { sound_index } else { None },
            &tracks,
            rate,
            tmp,
            out,
        )
    })?;
    Ok(report)
}

fn finite(x: f64) -> Option<f64> {
    x.is_finite().then_some(x)
}

/// `music` as stereo from `start` seconds of a `frames`-long time line.
fn place(music: &Audio, start: f64, frames: usize, rate: u32) -> Audio {
    let mut out = Audio::silence(rate, 2, frames);
    let offset = (start.max(0.0) * f64::from(rate)).round() as usize;
    if music.channels.is_empty() {
        return out;
    }
    for (ch, o) in out.channels.iter_mut().enumerate() {
        let src = &music.channels[ch.min(music.channels.len() - 1)];
        for (y, x) in o.iter_mut().skip(offset).zip(src) {
            *y = *x;
        }
    }
    out
}

fn fit_length(mut a: Audio, frames: usize) -> Audio {
    for c in &mut a.channels {
        c.resize(frames, 0.0);
    }
    a
}

/// Decodes a file's sound — the best audio stream, or the `nth` (from 0) —
/// as stereo f32 at `rate`, on the video's time line: sample 0 is the
/// moment the video starts. `None` when the file has no such stream.
pub fn read_sound(path: &Path, nth: Option<usize>, rate: u32) -> Result<Option<Audio>> {
    let mut ictx = open_input(path)?;
    let stream = match nth {
        None => ictx.streams().best(ff::media::Type::Audio),
        Some(n) => ictx
            .streams()
            .filter(|s| s.parameters().medium() == ff::media::Type::Audio)
            .nth(n),
    };
    let Some(stream) = stream else {
        return Ok(None);
    };
    let index = stream.index();
    let tb = f64::from(stream.time_base());
    let codec = stream.parameters().id().name().to_string();
    // The video's first moment, on which sample 0 is placed.
    let origin = ictx
        .streams()
        .best(ff::media::Type::Video)
        .filter(|v| v.start_time() != ff::ffi::AV_NOPTS_VALUE)
        .map_or(0.0, |v| v.start_time() as f64 * f64::from(v.time_base()));
    let bad = |reason: String| Error::SoundDecode {
        path: path.to_path_buf(),
        codec: codec.clone(),
        reason,
    };
    let mut decoder = ff::codec::context::Context::from_parameters(stream.parameters())
        .and_then(|c| c.decoder().audio())
        .map_err(|e| bad(e.to_string()))?;
    let mut out = Audio::silence(rate, 2, 0);
    let mut first: Option<f64> = None;
    let mut resampler: Option<ff::software::resampling::Context> = None;
    let mut frame = ff::frame::Audio::empty();
    let mut bad_packets = 0usize;
    let mut packets = 0usize;
    let mut take = |decoder: &mut ff::decoder::Audio,
                    resampler: &mut Option<ff::software::resampling::Context>,
                    first: &mut Option<f64>,
                    out: &mut Audio|
     -> Result<()> {
        while decoder.receive_frame(&mut frame).is_ok() {
            if frame.samples() == 0 {
                continue;
            }
            if frame.channel_layout().is_empty() {
                frame.set_channel_layout(ff::ChannelLayout::default(i32::from(frame.channels())));
            }
            if first.is_none() {
                let pts = frame.timestamp().or(frame.pts());
                *first = Some(pts.map_or(0.0, |p| p as f64 * tb));
            }
            let r = match resampler {
                Some(r) => r,
                None => resampler.insert(
                    ff::software::resampling::Context::get(
                        frame.format(),
                        frame.channel_layout(),
                        frame.rate(),
                        ff::format::Sample::F32(ff::format::sample::Type::Planar),
                        ff::ChannelLayout::STEREO,
                        rate,
                    )
                    .map_err(|e| bad(e.to_string()))?,
                ),
            };
            let mut converted = ff::frame::Audio::empty();
            r.run(&frame, &mut converted)
                .map_err(|e| bad(e.to_string()))?;
            append(out, &converted);
        }
        Ok(())
    };
    for (s, packet) in ictx.packets() {
        if s.index() != index {
            continue;
        }
        packets += 1;
        if decoder.send_packet(&packet).is_err() {
            bad_packets += 1;
            continue;
        }
        take(&mut decoder, &mut resampler, &mut first, &mut out)?;
    }
    let _ = decoder.send_eof();
    take(&mut decoder, &mut resampler, &mut first, &mut out)?;
    if let Some(r) = resampler.as_mut() {
        loop {
            let mut rest = ff::frame::Audio::empty();
            if r.flush(&mut rest).is_err() || rest.samples() == 0 {
                break;
            }
            append(&mut out, &rest);
        }
    }
    if out.is_empty() && bad_packets > 0 {
        return Err(bad(format!(
            "none of its {packets} packets could be decoded"
        )));
    }
    // Align with the video: drop what plays before it, pad what starts after.
    let shift = ((first.unwrap_or(origin) - origin) * f64::from(rate)).round() as i64;
    if shift > 0 {
        for c in &mut out.channels {
            c.splice(0..0, std::iter::repeat_n(0.0, shift as usize));
        }
    } else if shift < 0 {
        let cut = (-shift) as usize;
        for c in &mut out.channels {
            c.drain(..cut.min(c.len()));
        }
    }
    Ok(Some(out))
}

fn append(out: &mut Audio, frame: &ff::frame::Audio) {
    let n = frame.samples();
    if n == 0 {
        return;
    }
    for (ch, c) in out.channels.iter_mut().enumerate() {
        c.extend_from_slice(&frame.plane::<f32>(ch)[..n]);
    }
}

fn write_mux(
    ictx: &mut ff::format::context::Input,
    info: &VideoInfo,
    copied_sound: Option<usize>,
    tracks: &[Audio],
    rate: u32,
    tmp: &Path,
    out: &Path,
) -> Result<()> {
    let err = |e: ff::Error| Error::output(out, e);
    let format_name = guess_format(out)
        // SAFETY: a static muxer description.
        .map(|f| {
            unsafe { std::ffi::CStr::from_ptr((*f).name) }
                .to_string_lossy()
                .into_owned()
        })
        .ok_or_else(|| Error::output(out, "unknown container for this extension"))?;
    let mut octx = ff::format::output_as(&tmp, &format_name).map_err(err)?;
    let vindex = info.stream_index;
    // Input streams copied as they are, and the output stream each goes to.
    let mut copied: Vec<(usize, usize, ff::Rational)> = Vec::new();
    for index in std::iter::once(vindex).chain(copied_sound) {
        let ist = ictx
            .stream(index)
            .ok_or_else(|| Error::NoVideoStream(out.to_path_buf()))?;
        let mut ost = octx
            .add_stream(ff::encoder::find(ff::codec::Id::None))
            .map_err(err)?;
        ost.set_parameters(ist.parameters());
        ost.set_metadata(ist.metadata().to_owned());
        // SAFETY: plain field write on the stream's own parameters; a zero tag
        // lets the muxer choose the tag its container uses.
        unsafe {
            (*ost.parameters().as_mut_ptr()).codec_tag = 0;
        }
        copied.push((index, ost.index(), ist.time_base()));
    }

    let mut encoders = Vec::new();
    for (k, _) in tracks.iter().enumerate() {
        let music_track = k + 1 == tracks.len() && (tracks.len() > 1 || copied_sound.is_some());
        encoders.push(AacTrack::add(&mut octx, rate, music_track).map_err(err)?);
    }
    octx.write_header().map_err(err)?;
    let start = ictx
        .stream(vindex)
        .map(|s| (s.start_time(), s.time_base()))
        .filter(|(t, _)| *t != ff::ffi::AV_NOPTS_VALUE)
        .map_or(0, |(t, tb)| {
            (t as f64 * f64::from(tb) * f64::from(rate)).round() as i64
        });
    // Audio first: the muxer interleaves by timestamp.
    for (enc, audio) in encoders.iter_mut().zip(tracks) {
        enc.write(&mut octx, audio, start).map_err(err)?;
    }
    let out_tbs: Vec<ff::Rational> = copied
        .iter()
        .map(|&(_, o, itb)| octx.stream(o).map_or(itb, |s| s.time_base()))
        .collect();
    for (stream, mut p) in ictx.packets() {
        let Some(k) = copied.iter().position(|&(i, _, _)| i == stream.index()) else {
            continue;
        };
        let (_, o, itb) = copied[k];
        p.rescale_ts(itb, out_tbs[k]);
        p.set_position(-1);
        p.set_stream(o);
        p.write_interleaved(&mut octx).map_err(err)?;
    }
    octx.write_trailer().map_err(err)?;
    Ok(())
}

/// One AAC sound stream being written.
struct AacTrack {
    enc: ff::encoder::Audio,
    index: usize,
    rate: i32,
}

impl AacTrack {
    /// Adds the stream (before the header is written).
    fn add(
        octx: &mut ff::format::context::Output,
        rate: u32,
        is_music: bool,
    ) -> std::result::Result<Self, ff::Error> {
        let codec = ff::encoder::find(ff::codec::Id::AAC).ok_or(ff::Error::EncoderNotFound)?;
        let global_header = octx
            .format()
            .flags()
            .contains(ff::format::Flags::GLOBAL_HEADER);
        let mut enc = ff::codec::context::Context::new_with_codec(codec)
            .encoder()
            .audio()?;
        let rate = rate as i32;
        enc.set_rate(rate);
        enc.set_channel_layout(ff::ChannelLayout::STEREO);
        enc.set_format(ff::format::Sample::F32(ff::format::sample::Type::Planar));
        enc.set_bit_rate(192_000);
        enc.set_time_base(ff::Rational(1, rate));
        if global_header {
            enc.set_flags(ff::codec::Flags::GLOBAL_HEADER);
        }
        let enc = enc.open_as(codec)?;
        let mut ost = octx.add_stream(codec)?;
        ost.set_parameters(&enc);
        ost.set_time_base(ff::Rational(1, rate));
        if is_music {
            // A second sound track says what it is in players' track menus.
            let mut meta = ff::Dictionary::new();
            meta.set("title", "Music (VidMusician)");
            meta.set("handler_name", "Music (VidMusician)");
            ost.set_metadata(meta);
        }
        Ok(Self {
            enc,
            index: ost.index(),
            rate,
        })
    }

    /// Encodes `audio` (stereo) from sample time `start` and writes it.
    fn write(
        &mut self,
        octx: &mut ff::format::context::Output,
        audio: &Audio,
        start: i64,
    ) -> std::result::Result<(), ff::Error> {
        let ost_tb = octx
            .stream(self.index)
            .map(|s| s.time_base())
            .unwrap_or(ff::Rational(1, self.rate));
        let total = audio.len();
        let frame_size = (self.enc.frame_size() as usize).max(1);
        let mut packet = ff::Packet::empty();
        let mut pos = 0;
        while pos < total {
            let n = frame_size.min(total - pos);
            let mut frame = ff::frame::Audio::new(
                ff::format::Sample::F32(ff::format::sample::Type::Planar),
                n,
                ff::ChannelLayout::STEREO,
            );
            frame.set_rate(self.rate as u32);
            for ch in 0..2 {
                let src = &audio.channels[ch.min(audio.channels.len() - 1)][pos..pos + n];
                frame.plane_mut::<f32>(ch)[..n].copy_from_slice(src);
            }
            frame.set_pts(Some(start + pos as i64));
            self.enc.send_frame(&frame)?;
            self.drain(octx, &mut packet, ost_tb)?;
            pos += n;
        }
        self.enc.send_eof()?;
        self.drain(octx, &mut packet, ost_tb)
    }

    fn drain(
        &mut self,
        octx: &mut ff::format::context::Output,
        packet: &mut ff::Packet,
        ost_tb: ff::Rational,
    ) -> std::result::Result<(), ff::Error> {
        while self.enc.receive_packet(packet).is_ok() {
            packet.set_stream(self.index);
            packet.rescale_ts(ff::Rational(1, self.rate), ost_tb);
            packet.write_interleaved(octx)?;
        }
        Ok(())
    }
}
