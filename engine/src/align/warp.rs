//! Applying a time map: one Signalsmith Stretch phase vocoder (MIT, Geraint
//! Luff; the `signalsmith-stretch` crate's C++ binding) fed continuously,
//! its speed changed per block, so phases run on across segments and the
//! pitch is kept.
//!
//! Latency, as the library's own `exact()` handles it: the stretcher first
//! gets `input_latency` frames of pre-roll (`seek`), which puts its analysis
//! centre on source frame 0. From then on, a `process` call that takes `i`
//! input and gives `o` output frames moves the centre linearly over those
//! `i` frames; what is analysed at stream frame `k` comes out at stream frame
//! `k + output_latency`. So to make output frame `n` sound source frame
//! `S(n)`, stream frame `k` is driven to `S(k)` (input up to
//! `S(k) + input_latency`), the first `output_latency` stream frames are
//! dropped (folded back onto the start, as `exact()` does) and `flush`
//! gives the last ones. Blocks end at every anchor, where the speed
//! changes, so each anchor lands on its frame (± the rounding to whole
//! input frames).
//!
//! Block boundaries depend only on the map (multiples of [`BLOCK`] and the
//! anchors), never on how the source arrives, so the streamed output is
//! bit for bit the whole-piece output.

use signalsmith_stretch::Stretch;

use super::accent::Accents;
use super::plan::TimeMap;
use crate::audio::Audio;

/// Output frames per `process` call at most.
const BLOCK: usize = 1024;

/// Below this many frames a piece is passed through unwarped: the
/// stretcher's two latencies (≈ 0.12 s at the settings here) would be most
/// of it, and no beat fits in it anyway.
fn min_frames(rate: u32) -> usize {
    (0.25 * f64::from(rate)) as usize
}

/// The stretcher's settings: a 60 ms window every 15 ms. The library's
/// default (120 ms / 30 ms) sounds smoother on pads but smears a drum hit
/// over ±60 ms, and accents placed on cuts are the point here.
fn stretcher(channels: usize, rate: u32) -> Stretch {
    let block = ((0.06 * f64::from(rate)) as usize).max(64);
    let interval = (block / 4).max(16);
    Stretch::new(channels as u32, block, interval)
}

/// Streaming time warp. Feed it the map ([`Warper::extend_map`]) and the
/// source ([`Warper::push_source`]) in any order and pieces; [`Warper::pull`]
/// returns the output frames that are final; [`Warper::finish`] ends the
/// piece at an exact length.
pub struct Warper {
    rate: u32,
    channels: usize,
    /// `None` for audio with no channels.
    stretch: Option<Stretch>,
    lin: usize,
    lout: usize,
    /// (output frame, source frame), output frames strictly increasing.
    map: Vec<(usize, f64)>,
    /// Source frames `[src_base, src_base + src[0].len())`; frames before
    /// `fed` are dropped once handed over.
    src: Vec<Vec<f32>>,
    src_base: usize,
    src_done: bool,
    /// Source frames handed to the stretcher, the pre-roll included.
    fed: usize,
    started: bool,
    /// Stream frames produced so far.
    k: usize,
    /// The first `lout` stream frames (before output frame 0), kept for
    /// the fold-back.
    head: Vec<Vec<f32>>,
    /// Output frames handed to `ready` so far.
    made: usize,
    /// Total output frames, once known.
    len: Option<usize>,
    /// Output frames final but not yet pulled.
    ready: Vec<Vec<f32>>,
    accents: Accents,
    inter_in: Vec<f32>,
    inter_out: Vec<f32>,
}

impl Warper {
    pub fn new(sample_rate: u32, channels: usize) -> Self {
        let rate = sample_rate.max(1);
        let stretch = (channels > 0).then(|| stretcher(channels, rate));
        let (lin, lout) = stretch
            .as_ref()
            .map_or((0, 0), |s| (s.input_latency(), s.output_latency()));
        Self {
            rate,
            channels,
            stretch,
            lin,
            lout,
            map: vec![(0, 0.0)],
            src: vec![Vec::new(); channels],
            src_base: 0,
            src_done: false,
            fed: 0,
            started: false,
            k: 0,
            head: vec![Vec::new(); channels],
            made: 0,
            len: None,
            ready: vec![Vec::new(); channels],
            accents: Accents::none(),
            inter_in: Vec::new(),
            inter_out: Vec::new(),
        }
    }

    /// Output frames the stretcher needs beyond what it gives back: how far
    /// the map and the source must reach past the last frame pulled.
    pub fn lookahead_frames(&self) -> usize {
        self.lin + self.lout + BLOCK
    }

    /// Adds accents at these output times (seconds), `gain` 0–1, kept under
    /// `ceiling_dbtp` (see [`super::accent`]). Output around each accent is
    /// held until the whole accent can be written.
    pub fn set_accents(&mut self, cuts: &[f64], gain: f32, ceiling_dbtp: f64) {
        self.accents = Accents::new(cuts, gain, ceiling_dbtp, self.rate);
    }

    /// Appends anchors of the map (`out`, `src` in seconds). The map starts
    /// at 0 → 0; anchors not after the last one in output time are ignored,
    /// and a source time before the last one is held at it (the map never
    /// runs backwards).
    pub fn extend_map(&mut self, map: &TimeMap) {
        let rate = f64::from(self.rate);
        for a in map.anchors() {
            let out = (a.out * rate).round();
            let (last_out, last_src) = *self.map.last().expect("PANIC: starts with 0 → 0");
            if !out.is_finite() || out <= last_out as f64 || !a.src.is_finite() {
                continue;
            }
            self.map.push((out as usize, (a.src * rate).max(last_src)));
        }
    }

    /// Appends source frames (planar, one slice per channel).
    pub fn push_source(&mut self, chunk: &[Vec<f32>]) {
        for (s, c) in self.src.iter_mut().zip(chunk) {
            s.extend_from_slice(c);
        }
    }

    /// Output frames that are final now (planar).
    pub fn pull(&mut self) -> Vec<Vec<f32>> {
        self.run();
        self.release()
    }

    /// Ends the piece at exactly `len` output frames and returns the rest.
    /// If the map stops short of `len`, it goes on at speed 1. (A map that
    /// reached past `len` may have let frames past it be pulled already;
    /// end the map at `len`.)
    pub fn finish(&mut self, len: usize) -> Vec<Vec<f32>> {
        self.len = Some(len);
        self.src_done = true;
        let (last_out, last_src) = *self.map.last().expect("PANIC: starts with 0 → 0");
        if last_out < len {
            self.map.push((len, last_src + (len - last_out) as f64));
        }
        self.run();
        if self.made < len && self.stretch.is_some() {
            let mut tail = vec![0.0f32; self.lout * self.channels];
            if let Some(s) = self.stretch.as_mut() {
                s.flush(&mut tail);
            }
            self.emit_interleaved(&tail);
        }
        // Short of frames only if the stretcher could not run at all.
        for r in &mut self.ready {
            r.resize(len.saturating_sub(self.made) + r.len(), 0.0);
        }
        self.made = self.made.max(len);
        self.accents.finish();
        // Frames made past `len` before it was known are not output.
        let extra = self.made - len.max(self.made - self.ready.first().map_or(0, Vec::len));
        for r in &mut self.ready {
            r.truncate(r.len() - extra);
        }
        self.made -= extra;
        self.release()
    }

    /// Source frame the map gives for stream frame `k`, if the map reaches it.
    fn src_at(&self, k: usize) -> Option<f64> {
        let i = self.map.partition_point(|&(o, _)| o <= k);
        if i == 0 {
            return Some(0.0);
        }
        let (o0, s0) = self.map[i - 1];
        if o0 == k {
            return Some(s0);
        }
        let &(o1, s1) = self.map.get(i)?;
        Some(s0 + (s1 - s0) * (k - o0) as f64 / (o1 - o0) as f64)
    }

    /// The end of the block starting at stream frame `k`.
    fn block_end(&self, k: usize) -> Option<usize> {
        let next_anchor = self.map.iter().map(|&(o, _)| o).find(|&o| o > k)?;
        let mut end = (k / BLOCK + 1) * BLOCK;
        end = end.min(next_anchor);
        if let Some(len) = self.len {
            end = end.min(len);
        }
        Some(end)
    }

    /// Source frames available (or known to be silence past the end) up to.
    fn src_avail(&self) -> usize {
        if self.src_done {
            usize::MAX
        } else {
            self.src_base + self.src.first().map_or(0, Vec::len)
        }
    }

    /// Source frame `i` of channel `c` (zero past the end).
    fn src_frame(&self, c: usize, i: usize) -> f32 {
        i.checked_sub(self.src_base)
            .and_then(|j| self.src[c].get(j))
            .copied()
            .unwrap_or(0.0)
    }

    fn run(&mut self) {
        if self.channels == 0 {
            return;
        }
        let total = self.len.unwrap_or(usize::MAX);
        // Too short to warp: pass through once the length is known.
        if self.len.is_some_and(|l| l < min_frames(self.rate)) {
            return self.pass_through();
        }
        if self.src_avail() < self.lin {
            return;
        }
        if !self.started {
            self.started = true;
            let pre = self.interleave_src(0, self.lin);
            // The speed of the first segment, for the stretcher's start.
            let rate = self.map.get(1).map_or(1.0, |&(o, s)| s / o.max(1) as f64);
            if let Some(s) = self.stretch.as_mut() {
                s.seek(&pre, rate);
            }
            self.fed = self.lin;
        }
        while self.k < total {
            let Some(end) = self.block_end(self.k) else {
                break;
            };
            let Some(src_end) = self.src_at(end) else {
                break;
            };
            let want = (src_end.round().max(0.0) as usize + self.lin).max(self.fed);
            if want > self.src_avail() {
                break;
            }
            let input = self.interleave_src(self.fed, want);
            self.fed = want;
            self.drop_fed();
            let mut output = std::mem::take(&mut self.inter_out);
            output.clear();
            output.resize((end - self.k) * self.channels, 0.0);
            if let Some(s) = self.stretch.as_mut() {
                s.process(&input, &mut output);
            }
            self.inter_in = input;
            self.emit_interleaved(&output);
            self.inter_out = output;
        }
    }

    /// Copies the (zero-padded) source frames `[from, to)` interleaved into
    /// the reused input buffer.
    fn interleave_src(&mut self, from: usize, to: usize) -> Vec<f32> {
        let mut buf = std::mem::take(&mut self.inter_in);
        buf.clear();
        buf.reserve((to - from) * self.channels);
        for i in from..to {
            for c in 0..self.channels {
                buf.push(self.src_frame(c, i));
            }
        }
        buf
    }

    /// Forgets the source the stretcher already holds.
    fn drop_fed(&mut self) {
        let n = self.fed.saturating_sub(self.src_base);
        let n = n.min(self.src.first().map_or(0, Vec::len));
        if n > 0 {
            for s in &mut self.src {
                s.drain(..n);
            }
            self.src_base += n;
        }
    }

    /// Takes stream frames in order: the first `lout` are held back and
    /// folded (subtracted, mirrored) onto the next `lout`, as `exact()`
    /// does; the rest become output frames until `len`.
    fn emit_interleaved(&mut self, frames: &[f32]) {
        let ch = self.channels;
        for f in frames.chunks_exact(ch) {
            let s = self.k;
            self.k += 1;
            if s < self.lout {
                for (h, &v) in self.head.iter_mut().zip(f) {
                    h.push(v);
                }
                continue;
            }
            if self.len.is_some_and(|l| self.made >= l) {
                continue;
            }
            for (c, (r, &v)) in self.ready.iter_mut().zip(f).enumerate() {
                let fold = if s < 2 * self.lout {
                    self.head[c][2 * self.lout - 1 - s]
                } else {
                    0.0
                };
                r.push(v - fold);
            }
            self.made += 1;
        }
    }

    fn pass_through(&mut self) {
        let len = self.len.unwrap_or(0);
        while self.made < len {
            let i = self.made;
            for c in 0..self.channels {
                let v = self.src_frame(c, i);
                self.ready[c].push(v);
            }
            self.made += 1;
        }
        self.k = len;
    }

    /// Hands over the ready frames, after the accents, except those an
    /// accent still needs to see whole.
    fn release(&mut self) -> Vec<Vec<f32>> {
        let start = self.made - self.ready.first().map_or(0, Vec::len);
        let keep_from = self.accents.apply(&mut self.ready, start, self.made);
        let n = keep_from
            .saturating_sub(start)
            .min(self.ready.first().map_or(0, Vec::len));
        self.ready
            .iter_mut()
            .map(|r| r.drain(..n).collect())
            .collect()
    }
}

/// Warps a whole piece; the output has exactly as many frames as `audio`.
pub fn warp(audio: &Audio, map: &TimeMap) -> Audio {
    let channels = audio.channels.len();
    let mut w = Warper::new(audio.sample_rate, channels);
    w.extend_map(map);
    w.push_source(&audio.channels);
    Audio {
        sample_rate: audio.sample_rate,
        channels: w.finish(audio.len()),
    }
}
