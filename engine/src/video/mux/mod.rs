//! A copy of a video with music in its sound: the video stream is copied
//! packet for packet (not re-encoded); the music is encoded to AAC, under the
//! video's own sound (mixed), instead of it, or beside it as a second track.
//!
//! This file holds the muxing itself and its options; the checks made before
//! any work are in `checks`, the reading of the video's own sound in `sound`,
//! and the sound encoder (shared with the synthetic videos) in `encode`.

mod checks;
mod encode;
mod sound;

use std::path::Path;

use ffmpeg_next as ff;

pub use checks::{check_mux_output, check_mux_sound};
pub(super) use encode::SoundEncoder;
pub use sound::read_sound;

use super::probe::{VideoInfo, info_from, open_input};
use crate::audio::{self, Audio, atomic_output};
use crate::error::{Error, Result};
use checks::{guess_format, muxer_name, takes_as_is};
use sound::read_sound_within;

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
}
