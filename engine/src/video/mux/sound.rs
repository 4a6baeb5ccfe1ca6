//! The video's own sound: read from its best (or `nth`) audio stream,
//! decoded, resampled to stereo f32 at the music's rate, and placed on the
//! video's time line frame by frame, so that lost packets stay silences.

use std::path::Path;

use ffmpeg_next as ff;

use crate::audio::Audio;
use crate::error::{Error, Result};
use crate::video::probe::open_input;

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
pub(super) fn read_sound_within(
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
pub(super) struct SoundInput {
    pub(super) index: usize,
    /// Seconds per tick of its time stamps.
    tb: f64,
    path: std::path::PathBuf,
    codec: String,
    pub(super) decoder: ff::decoder::Audio,
}

impl SoundInput {
    /// The best audio stream, or the `nth` (from 0); `None` when there is
    /// no such stream.
    pub(super) fn open(
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

    pub(super) fn error(&self, reason: String) -> Error {
        Error::SoundDecode {
            path: self.path.clone(),
            codec: self.codec.clone(),
            reason,
        }
    }
}

/// Decoders leave the layout unset where the file does not say it: the
/// usual one for the channel count.
pub(super) fn fix_layout(frame: &mut ff::frame::Audio) {
    if frame.channel_layout().is_empty() {
        frame.set_channel_layout(ff::ChannelLayout::default(i32::from(frame.channels())));
    }
}

/// Decoded frames converted to stereo planar f32 at one rate.
pub(super) struct Converter {
    swr: ff::software::resampling::Context,
}

impl Converter {
    const FORMAT: ff::format::Sample = ff::format::Sample::F32(ff::format::sample::Type::Planar);

    /// A converter from `frame`'s format, layout and rate to `rate`.
    pub(super) fn new(frame: &ff::frame::Audio, rate: u32) -> std::result::Result<Self, ff::Error> {
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
    pub(super) fn push(
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

#[cfg(test)]
mod tests {
    use super::*;

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
