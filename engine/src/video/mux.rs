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
fn guess_format(path: &Path) -> Option<*const ff::ffi::AVOutputFormat> {
    let name = CString::new(path.file_name()?.to_string_lossy().as_bytes()).ok()?;
    // SAFETY: a NUL-terminated name; FFmpeg returns a static description or
    // null.
    let fmt =
        unsafe { ff::ffi::av_guess_format(std::ptr::null(), name.as_ptr(), std::ptr::null()) };
    (!fmt.is_null()).then_some(fmt)
}

/// The short name of a muxer (`mp4`, `matroska`).
fn muxer_name(fmt: *const ff::ffi::AVOutputFormat) -> String {
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
fn takes_as_is(out: &Path, codec: ff::codec::Id) -> bool {
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

/// Writes `out`: `video`'s picture, copied packet for packet, with `music`
/// (starting at `opts.music_start` of the video) in its sound as
/// `opts.sound` says. The music, and the original sound wherever it is
/// decoded (mixed, or re-encoded as a track), are cut to the video's length;
/// an original sound copied packet for packet (tracks mode, in a container
/// that takes its codec) keeps every packet, so it ends where it ended in
/// the source. `out` is replaced atomically, so a failure never leaves a
/// half-written file.
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
    let seconds = timeline_seconds(
        info.duration,
        || stream_length(video, &info),
        opts.music_start + music.duration(),
    )?;
    let frames = (seconds * f64::from(rate)).round() as usize;
    // The music on the video's time line, silent before its start.
    let placed = place(music, opts.music_start, frames, rate);
    let copy_original = match (report.sound, sound_index) {
        (SoundMode::Tracks, Some(i)) => ictx
            .stream(i)
            .is_some_and(|s| takes_as_is(out, s.parameters().id())),
        _ => false,
    };
    report.original_copied = copy_original;
    // The original sound on the same time line.
    let original = || {
        read_sound_within(video, None, rate, Some(frames))?
            .ok_or_else(|| Error::NoVideoStream(video.to_path_buf()))
    };
    // Sound tracks to encode, in order.
    let mut tracks: Vec<Audio> = Vec::new();
    match report.sound {
        SoundMode::Replace => tracks.push(placed),
        SoundMode::Mix => {
            let original = original()?;
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
                tracks.push(original()?);
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

/// Length of the time line the sound is made on, seconds: the length the
/// container states; else (a live recording, MediaRecorder's WebM) the
/// length of its video packets, from `measured`; else the music's end.
fn timeline_seconds(
    stated: f64,
    measured: impl FnOnce() -> Result<f64>,
    music_end: f64,
) -> Result<f64> {
    if stated > 0.0 {
        return Ok(stated);
    }
    let measured = measured()?;
    Ok(if measured > 0.0 {
        measured
    } else {
        music_end.max(0.0)
    })
}

/// Seconds from the first video packet's time to the end of the last one,
/// read off the packets (nothing is decoded).
fn stream_length(video: &Path, info: &VideoInfo) -> Result<f64> {
    let mut ictx = open_input(video)?;
    let Some(stream) = ictx.stream(info.stream_index) else {
        return Ok(0.0);
    };
    let tb = f64::from(stream.time_base());
    let declared_start = stream.start_time();
    let period = 1.0 / info.frame_rate.max(1.0);
    let mut first: Option<f64> = None;
    let mut end = f64::NEG_INFINITY;
    for (s, p) in ictx.packets() {
        if s.index() != info.stream_index {
            continue;
        }
        let Some(t) = p.pts().or(p.dts()) else {
            continue;
        };
        let t = t as f64 * tb;
        first = Some(first.map_or(t, |f: f64| f.min(t)));
        let d = if p.duration() > 0 {
            p.duration() as f64 * tb
        } else {
            period
        };
        end = end.max(t + d);
    }
    let start = if declared_start != ff::ffi::AV_NOPTS_VALUE {
        declared_start as f64 * tb
    } else {
        first.unwrap_or(0.0)
    };
    Ok(first.map_or(0.0, |_| (end - start).max(0.0)))
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

/// Decodes a file's sound — the best audio stream, or the `nth` (from 0) —
/// as stereo f32 at `rate`, on the video's time line: sample 0 is the
/// moment the video starts, and every decoded frame is placed at its own
/// time, so a stretch of lost packets stays a silence instead of pulling
/// what follows early. The time line is as long as the file (the length it
/// states, or its video's end). `None` when the file has no such stream.
pub fn read_sound(path: &Path, nth: Option<usize>, rate: u32) -> Result<Option<Audio>> {
    read_sound_within(path, nth, rate, None)
}

/// A gap or overlap between a sound frame's time and the end of the frames
/// before it up to which they are taken as one run: containers round times
/// (Matroska to 1 ms) and recorders' clocks drift a little, while a lost
/// frame of the usual codecs at the usual rates lasts longer (AAC at 48 kHz
/// 21 ms, MP3 24 ms, Opus 20 ms).
const JUMP_TOLERANCE_S: f64 = 0.015;

/// [`read_sound`] on a time line of `frames` samples (`None`: the file's own
/// length). Sound placed outside it is left out, so a stray time stamp cannot
/// make it huge.
fn read_sound_within(
    path: &Path,
    nth: Option<usize>,
    rate: u32,
    frames: Option<usize>,
) -> Result<Option<Audio>> {
    let mut ictx = open_input(path)?;
    let Some(mut sound) = SoundInput::open(&ictx, path, nth)? else {
        return Ok(None);
    };
    let video = ictx
        .streams()
        .best(ff::media::Type::Video)
        .map(|v| (v.index(), f64::from(v.time_base()), v.start_time()));
    // The video's first moment, on which sample 0 is placed.
    let origin = video
        .filter(|&(_, _, start)| start != ff::ffi::AV_NOPTS_VALUE)
        .map_or(0.0, |(_, tb, start)| start as f64 * tb);
    let stated = if ictx.duration() > 0 {
        ictx.duration() as f64 / f64::from(ff::ffi::AV_TIME_BASE)
    } else {
        0.0
    };
    let mut video_end = 0.0f64;
    let mut line = Timeline::new(rate);
    let mut frame = ff::frame::Audio::empty();
    let mut bad_packets = 0usize;
    let mut packets = 0usize;
    let tb = sound.tb;
    let mut take = |decoder: &mut ff::decoder::Audio, line: &mut Timeline| {
        while decoder.receive_frame(&mut frame).is_ok() {
            if frame.samples() == 0 {
                continue;
            }
            fix_layout(&mut frame);
            let t = frame
                .timestamp()
                .or(frame.pts())
                .map(|p| p as f64 * tb - origin);
            line.take(&frame, t)?;
        }
        Ok::<(), ff::Error>(())
    };
    for (s, packet) in ictx.packets() {
        if let Some((vi, vtb, _)) = video
            && s.index() == vi
            && let Some(t) = packet.pts().or(packet.dts())
        {
            video_end = video_end.max((t + packet.duration().max(0)) as f64 * vtb - origin);
        }
        if s.index() != sound.index {
            continue;
        }
        packets += 1;
        if sound.decoder.send_packet(&packet).is_err() {
            bad_packets += 1;
            continue;
        }
        take(&mut sound.decoder, &mut line).map_err(|e| sound.error(e.to_string()))?;
    }
    let _ = sound.decoder.send_eof();
    take(&mut sound.decoder, &mut line).map_err(|e| sound.error(e.to_string()))?;
    line.end_run().map_err(|e| sound.error(e.to_string()))?;
    if line.decoded == 0 && bad_packets > 0 {
        return Err(sound.error(format!("none of its {packets} packets could be decoded")));
    }
    let length = frames.unwrap_or_else(|| {
        let file = (stated.max(video_end) * f64::from(rate)).round() as usize;
        // Nothing tells the file's length: as much as was decoded.
        if file > 0 { file } else { line.decoded }
    });
    Ok(Some(line.into_audio(length)))
}

/// An audio stream of an input, with its decoder open.
struct SoundInput {
    index: usize,
    /// Seconds per tick of its time stamps.
    tb: f64,
    path: std::path::PathBuf,
    codec: String,
    decoder: ff::decoder::Audio,
}

impl SoundInput {
    /// The best audio stream, or the `nth` (from 0); `None` when there is
    /// no such stream.
    fn open(
        ictx: &ff::format::context::Input,
        path: &Path,
        nth: Option<usize>,
    ) -> Result<Option<Self>> {
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
        let codec = stream.parameters().id().name().to_string();
        let error = |e: ff::Error| Error::SoundDecode {
            path: path.to_path_buf(),
            codec: codec.clone(),
            reason: e.to_string(),
        };
        let mut decoder = ff::codec::context::Context::from_parameters(stream.parameters())
            .map_err(error)?
            .decoder();
        // Frames' times (and the samples a decoder skips at the start) in
        // the stream's own ticks.
        decoder.set_packet_time_base(stream.time_base());
        let decoder = decoder.audio().map_err(error)?;
        Ok(Some(Self {
            index: stream.index(),
            tb: f64::from(stream.time_base()),
            path: path.to_path_buf(),
            codec,
            decoder,
        }))
    }

    fn error(&self, reason: String) -> Error {
        Error::SoundDecode {
            path: self.path.clone(),
            codec: self.codec.clone(),
            reason,
        }
    }
}

/// Decoders leave the layout unset where the file does not say it: the
/// usual one for the channel count.
fn fix_layout(frame: &mut ff::frame::Audio) {
    if frame.channel_layout().is_empty() {
        frame.set_channel_layout(ff::ChannelLayout::default(i32::from(frame.channels())));
    }
}

/// Decoded frames converted to stereo planar f32 at one rate.
struct Converter {
    swr: ff::software::resampling::Context,
}

impl Converter {
    const FORMAT: ff::format::Sample = ff::format::Sample::F32(ff::format::sample::Type::Planar);

    /// A converter from `frame`'s format, layout and rate to `rate`.
    fn new(frame: &ff::frame::Audio, rate: u32) -> std::result::Result<Self, ff::Error> {
        Ok(Self {
            swr: ff::software::resampling::Context::get(
                frame.format(),
                frame.channel_layout(),
                frame.rate(),
                Self::FORMAT,
                ff::ChannelLayout::STEREO,
                rate,
            )?,
        })
    }

    /// Whether `frame` has the format, layout and rate this converts from.
    fn accepts(&self, frame: &ff::frame::Audio) -> bool {
        let i = self.swr.input();
        i.format == frame.format()
            && i.channel_layout == frame.channel_layout()
            && i.rate == frame.rate()
    }

    /// Converts `frame` (`None`: the samples the resampler still holds) and
    /// appends the result to `out`; returns how many samples it appended.
    ///
    /// The output frame is sized for the rate change plus what the resampler
    /// holds back: `run` would size it like the input, and an upsampling
    /// resampler then keeps the rest to itself.
    fn push(
        &mut self,
        frame: Option<&ff::frame::Audio>,
        out: &mut [Vec<f32>; 2],
    ) -> std::result::Result<usize, ff::Error> {
        let (in_rate, out_rate) = (
            u64::from(self.swr.input().rate.max(1)),
            u64::from(self.swr.output().rate),
        );
        let held = ff::software::resampling::Delay::from(&self.swr)
            .output
            .max(0) as u64;
        let coming = frame.map_or(0, |f| (f.samples() as u64 * out_rate).div_ceil(in_rate));
        let mut converted = ff::frame::Audio::new(
            Self::FORMAT,
            (held + coming + 3) as usize,
            ff::ChannelLayout::STEREO,
        );
        converted.set_rate(out_rate as u32);
        match frame {
            Some(f) => self.swr.run(f, &mut converted)?,
            None => self.swr.flush(&mut converted)?,
        };
        let n = converted.samples();
        for (ch, c) in out.iter_mut().enumerate() {
            c.extend_from_slice(&converted.plane::<f32>(ch)[..n]);
        }
        Ok(n)
    }

    /// Appends everything the resampler still holds to `out`.
    fn finish(&mut self, out: &mut [Vec<f32>; 2]) -> std::result::Result<(), ff::Error> {
        while self.push(None, out)? > 0 {}
        Ok(())
    }
}

/// Decoded sound placed on a time line: runs of frames that follow each other
/// without a gap, each at the time of its first frame.
struct Timeline {
    rate: u32,
    /// Finished runs: the sample of the time line each starts at, and its
    /// samples.
    runs: Vec<(i64, [Vec<f32>; 2])>,
    run: Option<Run>,
    /// Samples decoded in all.
    decoded: usize,
}

/// The run being decoded.
struct Run {
    at: i64,
    /// Time of its first sample, seconds on the video's time line.
    t0: f64,
    /// Input samples it has taken, at `in_rate`.
    taken: u64,
    in_rate: u32,
    conv: Converter,
    samples: [Vec<f32>; 2],
}

impl Timeline {
    fn new(rate: u32) -> Self {
        Self {
            rate,
            runs: Vec::new(),
            run: None,
            decoded: 0,
        }
    }

    /// Takes a decoded frame whose first sample plays at `t` seconds
    /// (`None`: right after the frame before it). A frame that does not
    /// follow the one before it (a gap: lost packets, a jump in the times;
    /// or an overlap), or that changes format, starts a new run.
    fn take(
        &mut self,
        frame: &ff::frame::Audio,
        t: Option<f64>,
    ) -> std::result::Result<(), ff::Error> {
        let expected = self
            .run
            .as_ref()
            .map(|r| r.t0 + r.taken as f64 / f64::from(r.in_rate.max(1)));
        let follows = match (t, expected) {
            (_, None) => false,
            (None, Some(_)) => true,
            (Some(t), Some(e)) => (t - e).abs() <= JUMP_TOLERANCE_S,
        };
        let same_kind = self.run.as_ref().is_some_and(|r| r.conv.accepts(frame));
        if !(follows && same_kind) {
            self.end_run()?;
            let t0 = t.or(expected).unwrap_or(0.0);
            self.run = Some(Run {
                at: (t0 * f64::from(self.rate)).round() as i64,
                t0,
                taken: 0,
                in_rate: frame.rate(),
                conv: Converter::new(frame, self.rate)?,
                samples: [Vec::new(), Vec::new()],
            });
        }
        let run = self.run.as_mut().expect("PANIC: a run was started above");
        self.decoded += run.conv.push(Some(frame), &mut run.samples)?;
        run.taken += frame.samples() as u64;
        Ok(())
    }

    /// Ends the run being decoded, with what its resampler still holds.
    fn end_run(&mut self) -> std::result::Result<(), ff::Error> {
        if let Some(mut run) = self.run.take() {
            let before = run.samples[0].len();
            run.conv.finish(&mut run.samples)?;
            self.decoded += run.samples[0].len() - before;
            self.runs.push((run.at, run.samples));
        }
        Ok(())
    }

    /// The time line's first `length` samples: each run at its place (a later
    /// run over an earlier one where they overlap), silence between them.
    fn into_audio(self, length: usize) -> Audio {
        let mut out = Audio::silence(self.rate, 2, length);
        for (at, samples) in self.runs {
            if at >= length as i64 {
                continue;
            }
            let len = samples[0].len();
            let skip = usize::try_from(at.min(0).unsigned_abs()).map_or(len, |s| s.min(len));
            let from = at.max(0) as usize;
            let n = (len - skip).min(length - from);
            for (o, s) in out.channels.iter_mut().zip(&samples) {
                o[from..from + n].copy_from_slice(&s[skip..skip + n]);
            }
        }
        out
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
        .map(muxer_name)
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
        // A second sound track says what it is in players' track menus.
        let title = music_track.then_some("Music (VidMusician)");
        encoders.push(
            SoundEncoder::add(&mut octx, ff::codec::Id::AAC, rate, 192_000, title).map_err(err)?,
        );
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
        enc.write_all(&mut octx, audio, start).map_err(err)?;
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

/// One stereo sound stream of a file being written, with its encoder: AAC
/// for the music and the mix, and for the synthetic videos' sound, which
/// can also be 16-bit PCM.
pub(super) struct SoundEncoder {
    enc: ff::encoder::Audio,
    index: usize,
    rate: u32,
    format: ff::format::Sample,
}

impl SoundEncoder {
    /// Adds the stream (before the header is written): `codec` at `rate`,
    /// `bit_rate` where the codec has one, with `title` in its metadata.
    pub(super) fn add(
        octx: &mut ff::format::context::Output,
        codec: ff::codec::Id,
        rate: u32,
        bit_rate: usize,
        title: Option<&str>,
    ) -> std::result::Result<Self, ff::Error> {
        let encoder = ff::encoder::find(codec).ok_or(ff::Error::EncoderNotFound)?;
        let format = if codec == ff::codec::Id::AAC {
            ff::format::Sample::F32(ff::format::sample::Type::Planar)
        } else {
            ff::format::Sample::I16(ff::format::sample::Type::Packed)
        };
        let global_header = octx
            .format()
            .flags()
            .contains(ff::format::Flags::GLOBAL_HEADER);
        let mut enc = ff::codec::context::Context::new_with_codec(encoder)
            .encoder()
            .audio()?;
        let tb = ff::Rational(1, rate as i32);
        enc.set_rate(rate as i32);
        enc.set_channel_layout(ff::ChannelLayout::STEREO);
        enc.set_format(format);
        enc.set_bit_rate(bit_rate);
        enc.set_time_base(tb);
        if global_header {
            enc.set_flags(ff::codec::Flags::GLOBAL_HEADER);
        }
        let enc = enc.open_as(encoder)?;
        let mut ost = octx.add_stream(encoder)?;
        ost.set_parameters(&enc);
        ost.set_time_base(tb);
        if let Some(title) = title {
            let mut meta = ff::Dictionary::new();
            meta.set("title", title);
            meta.set("handler_name", title);
            ost.set_metadata(meta);
        }
        Ok(Self {
            enc,
            index: ost.index(),
            rate,
            format,
        })
    }

    /// Samples per channel of each frame the encoder takes (only the last
    /// may be shorter).
    pub(super) fn frame_size(&self) -> usize {
        match self.enc.frame_size() {
            // PCM takes frames of any size.
            0 => 1024,
            n => n as usize,
        }
    }

    /// Encodes `n` samples per channel from sample time `pts` and writes
    /// what comes out; `fill(ch, buf)` puts channel `ch`'s samples in `buf`.
    pub(super) fn send(
        &mut self,
        octx: &mut ff::format::context::Output,
        pts: i64,
        n: usize,
        mut fill: impl FnMut(usize, &mut [f32]),
    ) -> std::result::Result<(), ff::Error> {
        let mut frame = ff::frame::Audio::new(self.format, n, ff::ChannelLayout::STEREO);
        frame.set_rate(self.rate);
        if self.format.is_planar() {
            for ch in 0..2 {
                fill(ch, &mut frame.plane_mut::<f32>(ch)[..n]);
            }
        } else {
            // 16-bit, the channels interleaved.
            let mut buf = vec![0.0f32; n];
            for ch in 0..2 {
                fill(ch, &mut buf);
                let data = frame.data_mut(0);
                for (i, x) in buf.iter().enumerate() {
                    let v = (x.clamp(-1.0, 1.0) * 32767.0).round() as i16;
                    let o = (2 * i + ch) * 2;
                    data[o..o + 2].copy_from_slice(&v.to_ne_bytes());
                }
            }
        }
        frame.set_pts(Some(pts));
        self.enc.send_frame(&frame)?;
        self.drain(octx)
    }

    /// Encodes `audio` (stereo) from sample time `start`, and ends the
    /// stream.
    fn write_all(
        &mut self,
        octx: &mut ff::format::context::Output,
        audio: &Audio,
        start: i64,
    ) -> std::result::Result<(), ff::Error> {
        let size = self.frame_size();
        let last = audio.channels.len().saturating_sub(1);
        let mut pos = 0;
        while pos < audio.len() {
            let n = size.min(audio.len() - pos);
            self.send(octx, start + pos as i64, n, |ch, buf| {
                buf.copy_from_slice(&audio.channels[ch.min(last)][pos..pos + n]);
            })?;
            pos += n;
        }
        self.finish(octx)
    }

    /// Ends the stream: writes what the encoder still holds.
    pub(super) fn finish(
        &mut self,
        octx: &mut ff::format::context::Output,
    ) -> std::result::Result<(), ff::Error> {
        self.enc.send_eof()?;
        self.drain(octx)
    }

    fn drain(
        &mut self,
        octx: &mut ff::format::context::Output,
    ) -> std::result::Result<(), ff::Error> {
        let tb = ff::Rational(1, self.rate as i32);
        let ost_tb = octx.stream(self.index).map_or(tb, |s| s.time_base());
        let mut packet = ff::Packet::empty();
        while self.enc.receive_packet(&mut packet).is_ok() {
            packet.set_stream(self.index);
            packet.rescale_ts(tb, ost_tb);
            packet.write_interleaved(octx)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_length_the_container_does_not_state_is_measured() {
        let never = || -> Result<f64> { panic!("measured although stated") };
        assert_eq!(timeline_seconds(4.0, never, 9.0).unwrap(), 4.0);
        assert_eq!(timeline_seconds(0.0, || Ok(3.5), 2.0).unwrap(), 3.5);
        // Nothing measured either: as long as the music.
        assert_eq!(timeline_seconds(0.0, || Ok(0.0), 2.0).unwrap(), 2.0);
    }

    fn run(at: i64, n: usize, v: f32) -> (i64, [Vec<f32>; 2]) {
        (at, [vec![v; n], vec![v; n]])
    }

    #[test]
    fn runs_are_placed_at_their_times_and_cut_to_the_time_line() {
        let mut line = Timeline::new(100);
        line.runs = vec![
            run(-5, 10, 1.0),
            // A gap of 5 samples, then an overlap of 2.
            run(10, 5, 2.0),
            run(13, 4, 3.0),
            // Far past the end (a stray time stamp): left out.
            run(i64::MAX / 2, 8, 4.0),
            run(i64::MIN / 2, 8, 5.0),
        ];
        let a = line.into_audio(20);
        let want = [
            1., 1., 1., 1., 1., 0., 0., 0., 0., 0., 2., 2., 2., 3., 3., 3., 3., 0., 0., 0.,
        ];
        assert_eq!(a.channels[0], want);
        assert_eq!(a.channels[1], want);
    }
}
