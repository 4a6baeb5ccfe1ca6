//! Decoding and frame sampling at exact rates.
//!
//! The decoder runs on FFmpeg's own threads. Only decoded frames that are
//! actually sampled are scaled, so sampling a 30 fps video at 25 fps scales
//! 25 frames a second, and sampling at 1 fps scales one.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use ff::format::Pixel;
use ff::software::scaling;
use ffmpeg_next as ff;

use super::probe::{VideoInfo, info_from, open_input};
use crate::error::{Error, Result};

/// Share of a video's frames that must decode for it to be analysed: below
/// half, most of what the music would follow is a frozen picture.
pub const MIN_DECODED_SHARE: f64 = 0.5;

/// How a frame is made square.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fit {
    /// Shortest side scaled to the target, the centre cropped (CLIP's way).
    #[default]
    CenterCrop,
    /// The whole frame squeezed into the square.
    Squash,
}

#[derive(Debug, Clone)]
pub struct SampleOptions {
    /// Frames per second to sample; frame `k` shows the picture on screen at
    /// `k / rate` seconds.
    pub rate: f64,
    /// Side of the square RGB output.
    pub size: u32,
    pub fit: Fit,
    /// Stop after this many seconds (a preview); the returned facts then
    /// give this as the duration.
    pub until: Option<f64>,
}

/// One sampled frame: tightly packed RGB24, `size × size`, already rotated
/// for display.
#[derive(Debug, Clone)]
pub struct Frame {
    pub index: usize,
    /// Seconds from the start of the video.
    pub time: f64,
    /// Duration of the whole video, seconds (for progress).
    pub duration: f64,
    pub size: u32,
    pub rgb: Vec<u8>,
}

impl Frame {
    /// The frame as CLIP-normalised planar f32 (3 × size × size).
    pub fn clip_normalised(&self) -> Vec<f32> {
        let n = (self.size * self.size) as usize;
        let mut out = vec![0.0; 3 * n];
        for (i, px) in self.rgb.chunks_exact(3).enumerate() {
            for c in 0..3 {
                out[c * n + i] =
                    (f32::from(px[c]) / 255.0 - super::CLIP_MEAN[c]) / super::CLIP_STD[c];
            }
        }
        out
    }
}

/// A second picture of some samples: every `every`-th sample (sample 0 among
/// them) also at `size`×`size` by `fit`, scaled from the same decoded frame.
/// One decode then serves two passes: sampling at 25 fps with `every` 25
/// gives, beside each sample, the pictures a pass at 1 fps would.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AlsoAt {
    pub every: usize,
    pub size: u32,
    pub fit: Fit,
}

/// Decodes `path` and calls `on_frame` for each sampled frame, in order.
/// Returns the probe facts and the number of frames delivered. `cancel` is
/// polled between packets.
pub fn sample_frames(
    path: &Path,
    opts: &SampleOptions,
    cancel: &AtomicBool,
    mut on_frame: impl FnMut(&Frame) -> Result<()>,
) -> Result<(VideoInfo, usize)> {
    sample_frames_also(path, opts, None, cancel, |f, _| on_frame(f))
}

/// [`sample_frames`], with the second picture `also` asks for beside the
/// samples it names (`None` beside the others). The second picture's
/// `index` and `time` are those of a pass at `opts.rate / every`: sample
/// `k · every` comes with picture `k`.
pub fn sample_frames_also(
    path: &Path,
    opts: &SampleOptions,
    also: Option<AlsoAt>,
    cancel: &AtomicBool,
    mut on_frame: impl FnMut(&Frame, Option<&Frame>) -> Result<()>,
) -> Result<(VideoInfo, usize)> {
    if let Some(a) = also
        && (a.every == 0 || a.size < super::MIN_SIDE)
    {
        return Err(Error::InvalidSetting(format!(
            "a second picture every {} samples at {} px",
            a.every, a.size
        )));
    }
    if opts.until.is_some_and(|u| !(u.is_finite() && u > 0.0)) {
        return Err(Error::InvalidSetting(format!(
            "analyse until {:?} s",
            opts.until
        )));
    }
    if !(opts.rate.is_finite() && opts.rate > 0.0 && opts.rate <= 1000.0) {
        return Err(Error::InvalidSetting(format!(
            "sample rate {} fps (expected 0 < rate ≤ 1000)",
            opts.rate
        )));
    }
    if opts.size < super::MIN_SIDE {
        return Err(Error::InvalidSetting(format!("frame size {}", opts.size)));
    }
    let Opened {
        input: mut ictx,
        info,
        time_base,
        start_pts,
        mut decoder,
    } = Opened::new(path, true)?;
    let decode_err = |reason: String| opened_err(path, &info, reason);

    let mut state = Sampler::new(opts.clone(), &info, 0.0);
    if let Some(a) = also {
        state.also = Some((a.every, Target::new(a.size, a.fit, &info, 0.0)));
    }
    let mut bad_packets = 0usize;
    let mut good_frames = 0usize;
    let mut packets = 0usize;
    for (s, packet) in ictx.packets() {
        if cancel.load(Ordering::Relaxed) {
            return Err(Error::Cancelled);
        }
        if s.index() != info.stream_index {
            continue;
        }
        packets += 1;
        if decoder.send_packet(&packet).is_err() {
            bad_packets += 1;
            continue;
        }
        good_frames += state.drain(&mut decoder, time_base, start_pts, &mut on_frame)?;
        if let (Some(u), Some(h)) = (opts.until, state.held_time)
            && h >= u
        {
            // Every sample before `until` is out.
            let mut info = info.clone();
            info.duration = info.duration.min(u);
            info.video_packets = packets;
            // Frames still in the decoder's threads are not lost: only what
            // it said it could not decode counts.
            info.undecodable_frames = (bad_packets + state.damaged).min(packets);
            return Ok((info, state.next_index));
        }
    }
    let _ = decoder.send_eof();
    good_frames += state.drain(&mut decoder, time_base, start_pts, &mut on_frame)?;
    if good_frames == 0 {
        return Err(if bad_packets > 0 {
            decode_err(format!("none of {bad_packets} packets could be decoded"))
        } else {
            Error::EmptyVideo(path.to_path_buf())
        });
    }
    // Damaged data (a zeroed or overwritten stretch) fails to decode or comes
    // out concealed; the analysis holds the last good picture over it. A
    // little is reported; when most is lost there is nothing to score.
    let undecodable = undecodable_frames(bad_packets, state.damaged, packets, good_frames);
    if packets > 0 && undecodable as f64 > packets as f64 * (1.0 - MIN_DECODED_SHARE) {
        return Err(Error::Damaged {
            path: path.to_path_buf(),
            undecodable: undecodable.min(packets),
            frames: packets,
            min_percent: (MIN_DECODED_SHARE * 100.0).round() as u32,
        });
    }
    let last_time = state.held_time.unwrap_or(0.0);
    // A stream that ends well before its declared duration was cut short;
    // analysing the rest as silence would misplace every later cut.
    let frame_period = 1.0 / info.frame_rate.max(1.0);
    if info.duration > 1.0 && last_time + frame_period < info.duration * 0.9 - 0.5 {
        return Err(Error::Truncated {
            path: path.to_path_buf(),
            decoded: last_time + frame_period,
            declared: info.duration,
        });
    }
    let mut info = info.clone();
    info.video_packets = packets;
    info.undecodable_frames = undecodable.min(packets);
    let mut end = info.duration.max(last_time + frame_period);
    if let Some(u) = opts.until {
        end = end.min(u);
        info.duration = info.duration.min(u);
    }
    state.flush_until(end, &mut on_frame)?;
    Ok((info, state.next_index))
}

/// A video's stream opened for decoding.
struct Opened {
    input: ff::format::context::Input,
    info: VideoInfo,
    /// Seconds per timestamp unit, and the stream's first timestamp.
    time_base: f64,
    start_pts: i64,
    decoder: ff::decoder::Video,
}

impl Opened {
    /// Opens `path`'s video stream; `threaded` decodes on FFmpeg's frame
    /// threads (a whole pass), which a seek to a single picture does not want.
    fn new(path: &Path, threaded: bool) -> Result<Self> {
        let input = open_input(path)?;
        let info = info_from(path, &input)?;
        let stream = input
            .stream(info.stream_index)
            .ok_or_else(|| Error::NoVideoStream(path.to_path_buf()))?;
        let time_base = f64::from(stream.time_base());
        let start_pts = stream.start_time();
        let mut ctx = ff::codec::context::Context::from_parameters(stream.parameters())
            .map_err(|e| opened_err(path, &info, e.to_string()))?;
        if threaded {
            ctx.set_threading(ff::codec::threading::Config {
                kind: ff::codec::threading::Type::Frame,
                count: 0,
                ..Default::default()
            });
        }
        let decoder = ctx
            .decoder()
            .video()
            .map_err(|e| opened_err(path, &info, e.to_string()))?;
        Ok(Self {
            input,
            info,
            time_base,
            start_pts,
            decoder,
        })
    }
}

fn opened_err(path: &Path, info: &VideoInfo, reason: String) -> Error {
    Error::Decode {
        path: path.to_path_buf(),
        codec: info.codec.clone(),
        reason,
    }
}

/// The pictures on screen at `times` (seconds, ascending), each found by
/// seeking to the keyframe before it and decoding from there: for a few
/// pictures of a long video this reads a small part of it, where
/// [`sample_frames`] decodes all of it. Streams without a start time fall
/// back to one sequential pass. `opts.rate` and `opts.until` are not used.
pub fn frames_at(
    path: &Path,
    times: &[f64],
    opts: &SampleOptions,
    cancel: &AtomicBool,
) -> Result<Vec<Frame>> {
    if opts.size < super::MIN_SIDE {
        return Err(Error::InvalidSetting(format!("frame size {}", opts.size)));
    }
    if times.iter().any(|t| !t.is_finite()) || times.windows(2).any(|w| w[0] > w[1]) {
        return Err(Error::InvalidSetting("frame times out of order".into()));
    }
    let Opened {
        input: mut ictx,
        info,
        time_base,
        start_pts,
        mut decoder,
    } = Opened::new(path, false)?;
    if start_pts == ff::ffi::AV_NOPTS_VALUE {
        return sequential_frames_at(path, times, opts, cancel);
    }
    let decode_err = |reason: String| opened_err(path, &info, reason);
    let mut out = Vec::with_capacity(times.len());
    for &t in times {
        if cancel.load(Ordering::Relaxed) {
            return Err(Error::Cancelled);
        }
        // The container's seek takes AV_TIME_BASE units and lands on the
        // keyframe at or before the time; the stream's start is added back.
        let start_s = start_pts as f64 * time_base;
        let target = ((t + start_s) * f64::from(ff::ffi::AV_TIME_BASE)) as i64;
        if ictx.seek(target, ..target + 1).is_err() {
            // A file that cannot seek still plays from the start.
            return sequential_frames_at(path, times, opts, cancel);
        }
        decoder.flush();
        // A sampler whose one sample is at `t`: it emits the picture on
        // screen then, once a later one (or the end) shows up.
        let mut state = Sampler::new(
            SampleOptions {
                rate: 1.0,
                ..opts.clone()
            },
            &info,
            t,
        );
        let got: std::cell::RefCell<Option<Frame>> = std::cell::RefCell::new(None);
        let mut keep = |f: &Frame, _: Option<&Frame>| {
            got.borrow_mut().get_or_insert_with(|| f.clone());
            Ok(())
        };
        // Sample times are `next_index / rate` = 0, 1, …: the clock is moved
        // so that `t` is sample 0.
        for (s, packet) in ictx.packets() {
            if s.index() != info.stream_index {
                continue;
            }
            if decoder.send_packet(&packet).is_err() {
                continue;
            }
            state.drain_shifted(&mut decoder, time_base, start_pts, t, &mut keep)?;
            if got.borrow().is_some() {
                break;
            }
        }
        if got.borrow().is_none() {
            let _ = decoder.send_eof();
            state.drain_shifted(&mut decoder, time_base, start_pts, t, &mut keep)?;
            // The last picture stays on screen to the end.
            state.flush_until(1.0, &mut keep)?;
        }
        let mut frame = got
            .into_inner()
            .ok_or_else(|| decode_err(format!("no picture at {t:.3} s")))?;
        frame.index = out.len();
        frame.time = t;
        out.push(frame);
    }
    Ok(out)
}

/// [`frames_at`] by one pass over the whole video.
fn sequential_frames_at(
    path: &Path,
    times: &[f64],
    opts: &SampleOptions,
    cancel: &AtomicBool,
) -> Result<Vec<Frame>> {
    let mut out = Vec::with_capacity(times.len());
    // Sampled finely enough to hold each time's picture: the first sample at
    // or after each time.
    let rate = 25.0;
    let seq = SampleOptions {
        rate,
        ..opts.clone()
    };
    let mut next = 0usize;
    sample_frames(path, &seq, cancel, |f| {
        while next < times.len() && f.time + 1e-9 >= times[next] {
            let mut frame = f.clone();
            frame.index = next;
            frame.time = times[next];
            out.push(frame);
            next += 1;
        }
        Ok(())
    })?;
    Ok(out)
}

/// Frames lost to damage, once the decoder is drained: those it refused or
/// flagged as damaged, or — when more — those that never came out. A
/// frame-threaded decoder drops a frame it fails on without a word.
fn undecodable_frames(
    bad_packets: usize,
    damaged: usize,
    packets: usize,
    good_frames: usize,
) -> usize {
    (bad_packets + damaged).max(packets.saturating_sub(good_frames))
}

struct Sampler<'a> {
    opts: SampleOptions,
    info: &'a VideoInfo,
    next_index: usize,
    /// The most recent decoded frame, on screen from `held_time` on.
    held: ff::frame::Video,
    held_time: Option<f64>,
    incoming: ff::frame::Video,
    main: Target,
    /// Every so many samples, a second picture ([`AlsoAt`]).
    also: Option<(usize, Target)>,
    first_pts: Option<i64>,
    /// Decoded frames the decoder flagged as damaged (concealed errors).
    damaged: usize,
}

impl<'a> Sampler<'a> {
    /// A sampler with nothing decoded yet; its frames say `time` until
    /// sampled.
    fn new(opts: SampleOptions, info: &'a VideoInfo, time: f64) -> Self {
        let main = Target::new(opts.size, opts.fit, info, time);
        Sampler {
            opts,
            info,
            next_index: 0,
            held: ff::frame::Video::empty(),
            held_time: None,
            incoming: ff::frame::Video::empty(),
            main,
            also: None,
            first_pts: None,
            damaged: 0,
        }
    }

    /// [`Self::drain`] with the clock moved back by `shift` seconds, so a
    /// sampler seeking to `shift` takes its sample 0 there.
    fn drain_shifted(
        &mut self,
        decoder: &mut ff::decoder::Video,
        time_base: f64,
        start_pts: i64,
        shift: f64,
        on_frame: &mut impl FnMut(&Frame, Option<&Frame>) -> Result<()>,
    ) -> Result<usize> {
        let shift_pts = (shift / time_base).round() as i64;
        self.drain(decoder, time_base, start_pts + shift_pts, on_frame)
    }

    fn drain(
        &mut self,
        decoder: &mut ff::decoder::Video,
        time_base: f64,
        start_pts: i64,
        on_frame: &mut impl FnMut(&Frame, Option<&Frame>) -> Result<()>,
    ) -> Result<usize> {
        let mut n = 0;
        while decoder.receive_frame(&mut self.incoming).is_ok() {
            let pts = self
                .incoming
                .timestamp()
                .or(self.incoming.pts())
                .unwrap_or(0);
            let origin = if start_pts != ff::ffi::AV_NOPTS_VALUE {
                start_pts
            } else {
                *self.first_pts.get_or_insert(pts)
            };
            let t = ((pts - origin) as f64 * time_base).max(0.0);
            // Out-of-order or duplicate timestamps (broken VFR muxes): the
            // later frame simply replaces the one on screen.
            let t = self.held_time.map_or(t, |h| t.max(h));
            self.flush_until(t, on_frame)?;
            // SAFETY: reading plain integer fields of the decoded frame.
            let (errs, flags) = unsafe {
                let f = self.incoming.as_ptr();
                ((*f).decode_error_flags, (*f).flags)
            };
            if errs != 0 || i64::from(flags) & i64::from(ff::ffi::AV_FRAME_FLAG_CORRUPT) != 0 {
                self.damaged += 1;
            }
            std::mem::swap(&mut self.held, &mut self.incoming);
            self.held_time = Some(t);
            n += 1;
        }
        Ok(n)
    }

    /// Emits every sample time before `t` using the frame on screen.
    fn flush_until(
        &mut self,
        t: f64,
        on_frame: &mut impl FnMut(&Frame, Option<&Frame>) -> Result<()>,
    ) -> Result<()> {
        if self.held_time.is_none() {
            return Ok(());
        }
        let (mut scaled_this, mut also_scaled_this) = (false, false);
        loop {
            let ts = self.next_index as f64 / self.opts.rate;
            // Tolerance for float rounding of exact frame times.
            if ts >= t - 1e-9 {
                break;
            }
            if !scaled_this {
                self.main.scale(&self.held, self.info)?;
                scaled_this = true;
            }
            self.main.out.index = self.next_index;
            self.main.out.time = ts;
            match &mut self.also {
                Some((every, also)) if self.next_index.is_multiple_of(*every) => {
                    if !also_scaled_this {
                        also.scale(&self.held, self.info)?;
                        also_scaled_this = true;
                    }
                    also.out.index = self.next_index / *every;
                    also.out.time = ts;
                    on_frame(&self.main.out, Some(&also.out))?;
                }
                _ => on_frame(&self.main.out, None)?,
            }
            self.next_index += 1;
        }
        Ok(())
    }
}

/// One size a sampler scales its pictures to, and its scaler.
struct Target {
    size: u32,
    fit: Fit,
    scaler: Option<(scaling::Context, (Pixel, u32, u32))>,
    scaled: ff::frame::Video,
    out: Frame,
}

impl Target {
    fn new(size: u32, fit: Fit, info: &VideoInfo, time: f64) -> Self {
        Self {
            size,
            fit,
            scaler: None,
            scaled: ff::frame::Video::empty(),
            out: Frame {
                index: 0,
                time,
                duration: info.duration,
                size,
                rgb: vec![0; (size * size * 3) as usize],
            },
        }
    }

    /// Scales `held` into `self.out`.
    fn scale(&mut self, held: &ff::frame::Video, info: &VideoInfo) -> Result<()> {
        let (w, h, fmt) = (held.width(), held.height(), held.format());
        let side = self.size;
        let rot = info.rotation;
        // Dimensions of the scaled (unrotated) picture before cropping.
        let (dw, dh) = match self.fit {
            Fit::Squash => (side, side),
            Fit::CenterCrop => {
                let (disp_w, disp_h) = if rot % 180 == 90 { (h, w) } else { (w, h) };
                let s = f64::from(side) / f64::from(disp_w.min(disp_h));
                let (sw, sh) = (
                    ((f64::from(disp_w) * s).round() as u32).max(side),
                    ((f64::from(disp_h) * s).round() as u32).max(side),
                );
                if rot % 180 == 90 { (sh, sw) } else { (sw, sh) }
            }
        };
        let key = (fmt, w, h);
        if self.scaler.as_ref().map(|(_, k)| *k) != Some(key) {
            let ctx = scaling::Context::get(fmt, w, h, Pixel::RGB24, dw, dh, scaling::Flags::AREA)
                .map_err(|e| Error::Decode {
                    path: info.path.clone(),
                    codec: info.codec.clone(),
                    reason: format!("cannot scale {w}×{h} {fmt:?}: {e}"),
                })?;
            self.scaler = Some((ctx, key));
            self.scaled = ff::frame::Video::empty();
        }
        let (scaler, _) = self.scaler.as_mut().expect("PANIC: set just above");
        scaler
            .run(held, &mut self.scaled)
            .map_err(|e| Error::Decode {
                path: info.path.clone(),
                codec: info.codec.clone(),
                reason: format!("scaling failed: {e}"),
            })?;
        crop_rotate(&self.scaled, rot, side, &mut self.out.rgb);
        Ok(())
    }
}

/// Copies the centred `side × side` window of an RGB24 frame into `dst`,
/// rotated clockwise by `rot` degrees, honouring the source row stride.
fn crop_rotate(src: &ff::frame::Video, rot: u32, side: u32, dst: &mut [u8]) {
    let (w, h) = (src.width() as usize, src.height() as usize);
    let stride = src.stride(0);
    let data = src.data(0);
    let s = side as usize;
    let (x0, y0) = ((w - s) / 2, (h - s) / 2);
    for y in 0..s {
        for x in 0..s {
            // (x, y) in the output comes from (sx, sy) in the source window.
            let (sx, sy) = match rot {
                90 => (y, s - 1 - x),
                180 => (s - 1 - x, s - 1 - y),
                270 => (s - 1 - y, x),
                _ => (x, y),
            };
            let si = (y0 + sy) * stride + (x0 + sx) * 3;
            let di = (y * s + x) * 3;
            dst[di..di + 3].copy_from_slice(&data[si..si + 3]);
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn frames_dropped_without_a_word_count_as_undecodable() {
        use super::undecodable_frames as u;
        // Refused and flagged.
        assert_eq!(u(3, 2, 100, 97), 5);
        // 10 frames never came out, none refused or flagged.
        assert_eq!(u(0, 0, 100, 90), 10);
        // Some flagged, more missing.
        assert_eq!(u(1, 2, 100, 92), 8);
        assert_eq!(u(0, 0, 100, 100), 0);
    }
}
