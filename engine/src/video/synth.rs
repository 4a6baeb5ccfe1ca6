//! Synthetic videos with known cuts: the demo's input, the tests' fixtures
//! and the benchmarks' clips. Each shot has its own palette, gradient and
//! moving shapes, so a cut changes every part of the picture while motion
//! inside a shot changes only where shapes move.

use std::path::Path;

use ff::format::Pixel;
use ffmpeg_next as ff;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::mux::SoundEncoder;
use crate::error::{Error, Result};

#[derive(Debug, Clone)]
pub struct SynthSpec {
    pub width: u32,
    pub height: u32,
    /// Frames per second (an integer rate keeps frame times exact).
    pub fps: u32,
    pub duration: f64,
    /// Times of the cuts in seconds; a cut at `t` shows the new shot from
    /// the first frame at or after `t`.
    pub cuts: Vec<f64>,
    pub seed: u64,
    /// FFmpeg encoder name; `None` picks libx264, else mpeg4.
    pub codec: Option<String>,
    /// Clockwise display rotation written into the container (0/90/180/270).
    pub rotation: u32,
    /// Variable frame rate: frame durations alternate between 0.5× and 1.5×
    /// the nominal period (same average rate), as phones record.
    pub vfr: bool,
    /// A sound track: a sine of this frequency (Hz) at [`TONE_AMPLITUDE`],
    /// stereo, as long as the video. `None`: no sound.
    pub tone: Option<f32>,
    /// Sample rate of the sound, Hz ([`TONE_RATE`] unless set).
    pub tone_rate: u32,
    /// Codec of the sound.
    pub tone_codec: ToneCodec,
    /// Written as a live recording is (MediaRecorder's WebM): the container
    /// states no length. Matroska and WebM only; other containers ignore it.
    pub unstated_length: bool,
    /// Every shot's background colour (chroma `u`, `v`) instead of a random
    /// one: videos of one look (training sets whose music follows colour).
    pub tint: Option<(u8, u8)>,
}

/// The codec of a synthetic video's sound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ToneCodec {
    #[default]
    Aac,
    /// 16-bit PCM, which MP4 cannot hold.
    Pcm16,
}

/// Peak of the synthetic sound's sine (−12 dBFS).
pub const TONE_AMPLITUDE: f32 = 0.25;
/// Sample rate of the synthetic sound, unless [`SynthSpec::tone_rate`] says
/// otherwise.
pub const TONE_RATE: u32 = 48_000;

impl SynthSpec {
    pub fn new(width: u32, height: u32, fps: u32, duration: f64, cuts: Vec<f64>) -> Self {
        Self {
            width,
            height,
            fps,
            duration,
            cuts,
            seed: 1,
            codec: None,
            rotation: 0,
            vfr: false,
            tone: None,
            tone_rate: TONE_RATE,
            tone_codec: ToneCodec::Aac,
            unstated_length: false,
            tint: None,
        }
    }

    /// Presentation time of every frame, in ticks of [`Self::TICK`].
    fn frame_ticks(&self) -> Vec<i64> {
        let period = Self::TICK_HZ / i64::from(self.fps);
        let n = (self.duration * f64::from(self.fps)).round() as i64;
        (0..n)
            .map(|i| {
                if self.vfr {
                    // Durations 0.5, 1.5, 0.5, 1.5 … periods.
                    i * period + if i % 2 == 1 { -period / 2 } else { 0 }
                } else {
                    i * period
                }
            })
            .collect()
    }

    const TICK_HZ: i64 = 90_000;

    /// The time at which each cut becomes visible: the first frame at or
    /// after the cut's time.
    pub fn cut_frame_times(&self) -> Vec<f64> {
        let ticks = self.frame_ticks();
        self.cuts
            .iter()
            .filter_map(|&c| {
                ticks
                    .iter()
                    .map(|&t| t as f64 / Self::TICK_HZ as f64)
                    .find(|&t| t >= c - 1e-9)
            })
            .collect()
    }
}

struct Shot {
    y_base: f32,
    y_slope: (f32, f32),
    u: u8,
    v: u8,
    shapes: Vec<Shape>,
}

struct Shape {
    x: f32,
    y: f32,
    vx: f32,
    vy: f32,
    w: f32,
    h: f32,
    luma: u8,
    u: u8,
    v: u8,
}

fn make_shot(rng: &mut ChaCha8Rng, w: f32, h: f32) -> Shot {
    let n = rng.random_range(2..5);
    Shot {
        y_base: rng.random_range(40.0..200.0),
        y_slope: (rng.random_range(-80.0..80.0), rng.random_range(-80.0..80.0)),
        u: rng.random_range(40..216),
        v: rng.random_range(40..216),
        shapes: (0..n)
            .map(|_| Shape {
                x: rng.random_range(0.0..w),
                y: rng.random_range(0.0..h),
                vx: rng.random_range(-0.15..0.15) * w,
                vy: rng.random_range(-0.15..0.15) * h,
                w: rng.random_range(0.08..0.3) * w,
                h: rng.random_range(0.08..0.3) * h,
                luma: rng.random_range(16..236),
                u: rng.random_range(16..240),
                v: rng.random_range(16..240),
            })
            .collect(),
    }
}

/// Writes the synthetic video described by `spec` to `path` (container from
/// the extension), atomically, as every output.
pub fn write_video(path: &Path, spec: &SynthSpec) -> Result<()> {
    crate::audio::atomic_output(path, |tmp| write_to(tmp, path, spec))
}

/// Writes to `tmp`; errors name `path`.
fn write_to(tmp: &Path, path: &Path, spec: &SynthSpec) -> Result<()> {
    super::init();
    let err = |e: ff::Error| Error::output(path, e);
    let mut octx = ff::format::output(&tmp).map_err(err)?;
    let codec = match &spec.codec {
        Some(name) => ff::encoder::find_by_name(name),
        None => ff::encoder::find_by_name("libx264").or_else(|| ff::encoder::find_by_name("mpeg4")),
    }
    .ok_or_else(|| Error::output(path, "no suitable video encoder in this FFmpeg"))?;
    let global_header = octx
        .format()
        .flags()
        .contains(ff::format::Flags::GLOBAL_HEADER);
    let mut enc = ff::codec::context::Context::new_with_codec(codec)
        .encoder()
        .video()
        .map_err(err)?;
    let tb = ff::Rational(1, SynthSpec::TICK_HZ as i32);
    enc.set_width(spec.width);
    enc.set_height(spec.height);
    enc.set_format(Pixel::YUV420P);
    enc.set_time_base(tb);
    enc.set_frame_rate(Some(ff::Rational(spec.fps as i32, 1)));
    enc.set_gop(spec.fps * 2);
    enc.set_bit_rate(2_000_000);
    if global_header {
        enc.set_flags(ff::codec::Flags::GLOBAL_HEADER);
    }
    let mut opts = ff::Dictionary::new();
    if codec.name() == "libx264" {
        opts.set("preset", "ultrafast");
        opts.set("crf", "23");
    }
    let mut enc = enc.open_as_with(codec, opts).map_err(err)?;
    {
        let mut ost = octx.add_stream(codec).map_err(err)?;
        ost.set_parameters(&enc);
        ost.set_time_base(tb);
        if !spec.rotation.is_multiple_of(360) {
            // SAFETY: the stream is owned by `octx`; FFmpeg allocates the
            // 36-byte side data buffer that av_display_rotation_set fills.
            unsafe {
                let st = ost.as_mut_ptr();
                let sd = ff::ffi::av_stream_new_side_data(
                    st,
                    ff::ffi::AVPacketSideDataType::AV_PKT_DATA_DISPLAYMATRIX,
                    36,
                );
                if !sd.is_null() {
                    // The matrix built for angle `a` reads back from
                    // av_display_rotation_get as `-a`, which players (and
                    // the probe) take as a clockwise display rotation of `a`.
                    ff::ffi::av_display_rotation_set(sd as *mut i32, f64::from(spec.rotation));
                }
            }
        }
    }
    let mut sound = match spec.tone {
        Some(hz) => Some(Tone::add(&mut octx, hz, spec.tone_rate, spec.tone_codec).map_err(err)?),
        None => None,
    };
    let mut muxer_opts = ff::Dictionary::new();
    if spec.unstated_length {
        // Matroska's: no length, no index, as a stream being recorded.
        muxer_opts.set("live", "1");
    }
    octx.write_header_with(muxer_opts).map_err(err)?;
    let ost_tb = octx.stream(0).map(|s| s.time_base()).unwrap_or(tb);
    let sound_end = (spec.duration * f64::from(spec.tone_rate)).round() as usize;

    let mut rng = ChaCha8Rng::seed_from_u64(spec.seed);
    let (w, h) = (spec.width as f32, spec.height as f32);
    let shots: Vec<Shot> = (0..=spec.cuts.len())
        .map(|_| {
            let mut shot = make_shot(&mut rng, w, h);
            if let Some((u, v)) = spec.tint {
                (shot.u, shot.v) = (u, v);
            }
            shot
        })
        .collect();
    let ticks = spec.frame_ticks();
    // Frame durations by presentation time, for the packets that come out
    // (in decode order with B-frames; but libx264's ultrafast and mpeg4 emit
    // none, so the order is the same).
    let mut durations = std::collections::VecDeque::new();
    let cut_times = spec.cut_frame_times();
    let mut frame = ff::frame::Video::new(Pixel::YUV420P, spec.width, spec.height);
    let mut packet = ff::Packet::empty();
    for (i, &tick) in ticks.iter().enumerate() {
        let time = tick as f64 / SynthSpec::TICK_HZ as f64;
        let shot_idx = cut_times.iter().filter(|&&c| c <= time + 1e-9).count();
        let shot_start = if shot_idx > 0 {
            cut_times[shot_idx - 1]
        } else {
            0.0
        };
        draw(&mut frame, &shots[shot_idx], (time - shot_start) as f32);
        frame.set_pts(Some(tick));
        // Each frame lasts until the next one.
        let end = (spec.duration * SynthSpec::TICK_HZ as f64).round() as i64;
        let next = ticks.get(i + 1).copied().unwrap_or(end.max(tick + 1));
        durations.push_back(next - tick);
        enc.send_frame(&frame).map_err(err)?;
        write_packets(&mut enc, &mut octx, &mut packet, tb, ost_tb, &mut durations).map_err(err)?;
        if let Some(t) = sound.as_mut() {
            // Sound up to this frame's time keeps the streams interleaved.
            let upto = ((time * f64::from(spec.tone_rate)) as usize).min(sound_end);
            t.write_until(&mut octx, upto, false).map_err(err)?;
        }
    }
    enc.send_eof().map_err(err)?;
    write_packets(&mut enc, &mut octx, &mut packet, tb, ost_tb, &mut durations).map_err(err)?;
    if let Some(t) = sound.as_mut() {
        t.write_until(&mut octx, sound_end, true).map_err(err)?;
        t.finish(&mut octx).map_err(err)?;
    }
    octx.write_trailer().map_err(err)?;
    Ok(())
}

fn write_packets(
    enc: &mut ff::encoder::Video,
    octx: &mut ff::format::context::Output,
    packet: &mut ff::Packet,
    tb: ff::Rational,
    ost_tb: ff::Rational,
    durations: &mut std::collections::VecDeque<i64>,
) -> std::result::Result<(), ff::Error> {
    while enc.receive_packet(packet).is_ok() {
        packet.set_stream(0);
        // Without a duration the muxer drops the last frame's from the
        // stream's length.
        let d = durations.pop_front().unwrap_or(0);
        if packet.duration() == 0 {
            packet.set_duration(d);
        }
        packet.rescale_ts(tb, ost_tb);
        packet.write_interleaved(octx)?;
    }
    Ok(())
}

fn draw(frame: &mut ff::frame::Video, shot: &Shot, t: f32) {
    let (w, h) = (frame.width() as usize, frame.height() as usize);
    let ys = frame.stride(0);
    {
        let y_plane = frame.data_mut(0);
        for y in 0..h {
            let fy = y as f32 / h as f32;
            let row = &mut y_plane[y * ys..y * ys + w];
            for (x, px) in row.iter_mut().enumerate() {
                let fx = x as f32 / w as f32;
                let v = shot.y_base + shot.y_slope.0 * (fx - 0.5) + shot.y_slope.1 * (fy - 0.5);
                // Fine texture so that gradients are not empty.
                let tex = if (x / 8 + y / 8) % 2 == 0 { 6.0 } else { -6.0 };
                *px = (v + tex).clamp(16.0, 235.0) as u8;
            }
        }
    }
    let (cw, ch) = (w.div_ceil(2), h.div_ceil(2));
    for (plane, val) in [(1, shot.u), (2, shot.v)] {
        let s = frame.stride(plane);
        let p = frame.data_mut(plane);
        for y in 0..ch {
            p[y * s..y * s + cw].fill(val);
        }
    }
    for sh in &shot.shapes {
        // Shapes bounce around the frame.
        let x = bounce(sh.x + sh.vx * t, w as f32 - sh.w);
        let y = bounce(sh.y + sh.vy * t, h as f32 - sh.h);
        let (x0, y0) = (x as usize, y as usize);
        let (x1, y1) = (((x + sh.w) as usize).min(w), ((y + sh.h) as usize).min(h));
        let ys = frame.stride(0);
        let yp = frame.data_mut(0);
        for yy in y0..y1 {
            yp[yy * ys + x0..yy * ys + x1].fill(sh.luma);
        }
        for (plane, val) in [(1, sh.u), (2, sh.v)] {
            let s = frame.stride(plane);
            let p = frame.data_mut(plane);
            for yy in y0 / 2..y1.div_ceil(2).min(ch) {
                p[yy * s + x0 / 2..yy * s + x1.div_ceil(2).min(cw)].fill(val);
            }
        }
    }
}

fn bounce(p: f32, span: f32) -> f32 {
    if span <= 0.0 {
        return 0.0;
    }
    let period = 2.0 * span;
    let m = p.rem_euclid(period);
    if m > span { period - m } else { m }
}

/// The synthetic sound: a sine, encoded as the video is written.
struct Tone {
    enc: SoundEncoder,
    hz: f32,
    rate: u32,
    /// Samples sent to the encoder so far.
    pos: usize,
}

impl Tone {
    fn add(
        octx: &mut ff::format::context::Output,
        hz: f32,
        rate: u32,
        codec: ToneCodec,
    ) -> std::result::Result<Self, ff::Error> {
        let codec = match codec {
            ToneCodec::Aac => ff::codec::Id::AAC,
            ToneCodec::Pcm16 => ff::codec::Id::PCM_S16LE,
        };
        Ok(Self {
            enc: SoundEncoder::add(octx, codec, rate, 128_000, None)?,
            hz,
            rate,
            pos: 0,
        })
    }

    /// Encodes the sine up to sample `upto` in whole encoder frames; at the
    /// `last` call, the short frame that ends it too (the encoder takes a
    /// short frame only as its last).
    fn write_until(
        &mut self,
        octx: &mut ff::format::context::Output,
        upto: usize,
        last: bool,
    ) -> std::result::Result<(), ff::Error> {
        let size = self.enc.frame_size();
        let w = std::f64::consts::TAU * f64::from(self.hz) / f64::from(self.rate);
        while self.pos < upto {
            let n = size.min(upto - self.pos);
            if n < size && !last {
                break;
            }
            let pos = self.pos;
            self.enc.send(octx, pos as i64, n, |_, buf| {
                for (i, x) in buf.iter_mut().enumerate() {
                    *x = TONE_AMPLITUDE * ((pos + i) as f64 * w).sin() as f32;
                }
            })?;
            self.pos += n;
        }
        Ok(())
    }

    fn finish(
        &mut self,
        octx: &mut ff::format::context::Output,
    ) -> std::result::Result<(), ff::Error> {
        self.enc.finish(octx)
    }
}
