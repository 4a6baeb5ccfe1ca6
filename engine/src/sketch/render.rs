//! Synthesis of a [`Score`] with fundsp: every instrument is a small fundsp
//! graph, rendered per note with envelopes computed here, mixed to stereo
//! with equal-power panning and a shared reverb send.

use std::sync::atomic::{AtomicBool, Ordering};

use fundsp::prelude32::{
    An, AudioNode, AudioUnit, BigBlockAdapter, Frame, U2, U8, U16, bandpass_hz, db_amp, delay, fdn,
    fir, fir3, highpass_hz, lowpass, lowpass_hz, midi_hz, multisplit, noise, pan, pass, saw_hz,
    sine, sine_hz, square_hz, stacki, sumf, triangle_hz,
};

use super::score::{Inst, Note, Score};

/// Renders one mono note of `inst` into `out` (its length is the note's).
fn render_note(note: &Note, rate: f64, seed: u64, out: &mut [f32]) {
    let n = out.len();
    let f = midi_hz(note.pitch);
    let v = note.vel;
    let mut unit: Box<dyn AudioUnit> = match note.inst {
        Inst::Kick => {
            Box::new((pass() >> sine()) + (noise().seed(seed) >> highpass_hz(3000.0, 0.7)) * pass())
        }
        Inst::Impact => {
            Box::new((pass() >> sine()) + (noise().seed(seed) >> lowpass_hz(400.0, 0.7)) * pass())
        }
        Inst::Snare => Box::new(
            (noise().seed(seed) >> bandpass_hz(1800.0, 0.8)) * pass() + sine_hz(190.0) * pass(),
        ),
        Inst::Hat => Box::new((noise().seed(seed) >> highpass_hz(7500.0, 0.7)) * pass()),
        Inst::Crash => Box::new((noise().seed(seed) >> highpass_hz(4500.0, 0.5)) * pass()),
        Inst::Bass => {
            Box::new(((saw_hz(f) * 0.6 + square_hz(f * 0.5) * 0.4) | pass() | pass()) >> lowpass())
        }
        // One slightly detuned saw per chord tone: the voices beat against
        // each other like an ensemble, at a third of the cost of stacking.
        Inst::Pad => {
            Box::new((saw_hz(f * (1.0 + 0.002 * note.pan)) * 0.6) >> lowpass_hz(1400.0, 0.6))
        }
        Inst::Pluck => Box::new((square_hz(f) | pass() | pass()) >> lowpass()),
        Inst::Lead => {
            Box::new((triangle_hz(f) * 0.7 + saw_hz(f * 1.002) * 0.3) >> lowpass_hz(2500.0, 0.5))
        }
    };
    unit.set_sample_rate(rate);
    let inputs = unit.inputs();
    let mut ctl: Vec<Vec<f32>> = vec![vec![0.0; n]; inputs];
    let mut amp = vec![0.0f32; n];
    let dt = 1.0 / rate as f32;
    for i in 0..n {
        let t = i as f32 * dt;
        // Filter sweeps move in steps of 32 samples: fundsp recomputes the
        // filter's coefficients only when its cutoff input changes.
        let tq = (i & !31) as f32 * dt;
        let dur = note.dur as f32;
        match note.inst {
            Inst::Kick => {
                ctl[0][i] = 48.0 + 110.0 * (-t / 0.035).exp();
                ctl[1][i] = 0.25 * (-t / 0.004).exp();
                amp[i] = v * (-t / 0.28).exp();
            }
            Inst::Impact => {
                ctl[0][i] = 36.0 + 90.0 * (-t / 0.07).exp();
                ctl[1][i] = 0.8 * (-t / 0.05).exp();
                amp[i] = v * (-t / 0.5).exp();
            }
            Inst::Snare => {
                ctl[0][i] = 0.9 * (-t / 0.11).exp();
                ctl[1][i] = 0.6 * (-t / 0.04).exp();
                amp[i] = v;
            }
            Inst::Hat => {
                let tau = if dur > 0.15 { 0.12 } else { 0.025 };
                ctl[0][i] = (-t / tau).exp();
                amp[i] = v * 0.6;
            }
            Inst::Crash => {
                ctl[0][i] = (-t / 0.7).exp();
                amp[i] = v * 0.5;
            }
            Inst::Bass => {
                ctl[0][i] = 180.0 + 1400.0 * (-tq / 0.09).exp();
                ctl[1][i] = 0.7;
                amp[i] = v * adsr(t, dur, 0.005, 0.2, 0.7, 0.05);
            }
            Inst::Pad => amp[i] = v * adsr(t, dur, 0.25, 0.5, 0.8, 0.35),
            Inst::Pluck => {
                ctl[0][i] = 600.0 + 4000.0 * (-tq / 0.06).exp();
                ctl[1][i] = 0.8;
                amp[i] = v * (-t / 0.25).exp() * adsr(t, dur, 0.002, 0.0, 1.0, 0.03);
            }
            Inst::Lead => {
                amp[i] = v * adsr(t, dur, 0.02, 0.2, 0.7, 0.12);
            }
        }
    }
    let ins: Vec<&[f32]> = ctl.iter().map(Vec::as_slice).collect();
    let mut adapter = BigBlockAdapter::new(unit);
    adapter.process_big(n, &ins, &mut [&mut out[..]]);
    for (o, a) in out.iter_mut().zip(&amp) {
        *o *= a;
    }
}

/// Attack–decay–sustain–release, the release starting at `dur`.
fn adsr(t: f32, dur: f32, a: f32, d: f32, s: f32, r: f32) -> f32 {
    let level = |t: f32| {
        if t < a {
            t / a
        } else if t < a + d {
            1.0 - (1.0 - s) * (t - a) / d
        } else {
            s
        }
    };
    if t < dur {
        level(t)
    } else if t < dur + r {
        level(dur) * (1.0 - (t - dur) / r)
    } else {
        0.0
    }
}

/// Mix bus gain per instrument and how much goes to the reverb.
fn bus(inst: Inst) -> (f32, f32) {
    match inst {
        Inst::Kick => (0.9, 0.0),
        Inst::Impact => (0.9, 0.1),
        Inst::Snare => (0.45, 0.25),
        Inst::Hat => (0.18, 0.05),
        Inst::Crash => (0.3, 0.3),
        Inst::Bass => (0.45, 0.0),
        Inst::Pad => (0.12, 0.5),
        Inst::Pluck => (0.16, 0.4),
        Inst::Lead => (0.2, 0.35),
    }
}

/// Tail rendered past a note's end: releases and decays.
fn tail(inst: Inst) -> f64 {
    match inst {
        Inst::Pad => 0.4,
        Inst::Lead => 0.15,
        Inst::Bass | Inst::Pluck => 0.06,
        _ => 0.0,
    }
}

/// The reverb runs at a quarter of the sample rate: its tail is damped far
/// below 6 kHz anyway, and the full-rate FDN would cost more than all the
/// instruments together.
const REVERB_DECIMATION: usize = 4;

/// Renders the score to stereo at `rate`, exactly `frames` long. `tick` is
/// called with the share done and stops the render when it returns false.
///
/// The timeline is split into one segment per core; each thread renders the
/// notes that sound in its segment and adds the samples that fall inside
/// it, in score order, so the result is the same bits whatever the number
/// of cores.
pub fn render(
    score: &Score,
    rate: u32,
    frames: usize,
    seed: u64,
    tick: &mut dyn FnMut(f64) -> bool,
) -> Option<[Vec<f32>; 2]> {
    let mut dry = [vec![0.0f32; frames], vec![0.0f32; frames]];
    let mut send = [vec![0.0f32; frames], vec![0.0f32; frames]];
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 8);
    let seg = frames.div_ceil(threads).max(1);
    let stop = AtomicBool::new(false);
    {
        let [dl, dr] = &mut dry;
        let [sl, sr] = &mut send;
        let mut parts: Vec<Segment<'_>> = dl
            .chunks_mut(seg)
            .zip(dr.chunks_mut(seg))
            .zip(sl.chunks_mut(seg).zip(sr.chunks_mut(seg)))
            .enumerate()
            .map(|(p, ((dl, dr), (sl, sr)))| Segment {
                lo: p * seg,
                dry: [dl, dr],
                send: [sl, sr],
            })
            .collect();
        let first = if parts.is_empty() {
            None
        } else {
            Some(parts.remove(0))
        };
        let job = RenderJob {
            score,
            rate: f64::from(rate),
            frames,
            seed,
            stop: &stop,
        };
        std::thread::scope(|scope| {
            let handles: Vec<_> = parts
                .into_iter()
                .map(|part| {
                    let job = &job;
                    scope.spawn(move || job.run(part, &mut |_| true))
                })
                .collect();
            // The calling thread takes the first segment and reports
            // progress from it.
            if let Some(part) = first {
                job.run(part, tick);
            }
            // Joined by hand: the scope's own wait ends when the closures
            // return, before the threads are gone, and a plugin destroyed
            // right after must leave no thread behind.
            for h in handles {
                let _ = h.join();
            }
        });
    }
    if stop.load(Ordering::Relaxed) {
        return None;
    }
    let wet = reverb(&send, f64::from(rate));
    for c in 0..2 {
        for (d, w) in dry[c].iter_mut().zip(&wet[c]) {
            *d += 0.35 * w;
        }
    }
    Some(dry)
}

/// A stretch of the output owned by one thread.
struct Segment<'a> {
    /// First frame of the stretch.
    lo: usize,
    dry: [&'a mut [f32]; 2],
    send: [&'a mut [f32]; 2],
}

struct RenderJob<'a> {
    score: &'a Score,
    rate: f64,
    frames: usize,
    seed: u64,
    /// Set when `tick` asks to stop; every thread polls it between notes.
    stop: &'a AtomicBool,
}

impl RenderJob<'_> {
    fn run(&self, seg: Segment<'_>, tick: &mut dyn FnMut(f64) -> bool) {
        let Segment {
            lo,
            dry: [dl, dr],
            send: [sl, sr],
        } = seg;
        let hi = lo + dl.len();
        let mut buf = Vec::new();
        for (k, note) in self.score.notes.iter().enumerate() {
            if self.stop.load(Ordering::Relaxed) {
                return;
            }
            let start = (note.time * self.rate).round() as usize;
            if start >= hi {
                break;
            }
            let len =
                (((note.dur + tail(note.inst)) * self.rate) as usize).min(self.frames - start);
            if start + len <= lo {
                continue;
            }
            // Render up to the end of this stretch only.
            buf.clear();
            buf.resize(len.min(hi - start), 0.0);
            let note_seed = self.seed.wrapping_mul(0x9e37_79b9).wrapping_add(k as u64);
            render_note(note, self.rate, note_seed, &mut buf);
            let (gain, rev) = bus(note.inst);
            let angle = (note.pan.clamp(-1.0, 1.0) + 1.0) * std::f32::consts::FRAC_PI_4;
            let (gl, gr) = (angle.cos() * gain, angle.sin() * gain);
            let skip = lo.saturating_sub(start);
            for (i, &x) in buf.iter().enumerate().skip(skip) {
                let j = start + i - lo;
                dl[j] += x * gl;
                dr[j] += x * gr;
                sl[j] += x * gl * rev;
                sr[j] += x * gr * rev;
            }
            if k % 32 == 0 && !tick((start.saturating_sub(lo)) as f64 / (hi - lo) as f64) {
                self.stop.store(true, Ordering::Relaxed);
            }
        }
    }
}

/// A 16-line feedback delay network (Hadamard mixing, damped lines), half
/// the lines of fundsp's `reverb_stereo` and half its cost.
fn ambience(time: f32, damping: f32) -> An<impl AudioNode<Inputs = U2, Outputs = U2>> {
    // Mutually prime-ish delays (seconds), 31–79 ms.
    const DELAYS: [f32; 16] = [
        0.0311, 0.0373, 0.0419, 0.0457, 0.0499, 0.0521, 0.0563, 0.0587, 0.0613, 0.0647, 0.0673,
        0.0701, 0.0727, 0.0751, 0.0769, 0.0787,
    ];
    let mean = DELAYS.iter().sum::<f32>() / DELAYS.len() as f32;
    // Per pass through a line, the loss that makes the tail fall 60 dB in `time`.
    let a = db_amp(-60.0f32).powf(mean / time);
    let weights = fir3(1.0 - damping).weights() * Frame::splat(a);
    let lines = stacki::<U16, _, _>(|i| delay(DELAYS[i as usize]) >> fir(weights));
    multisplit::<U2, U8>() >> fdn::<U16, _>(lines) >> sumf::<U16, _, _>(|x| pan(x * 2.0 - 1.0))
}

/// Stereo reverb of `send` at a reduced rate: block means down, linear
/// interpolation back up.
fn reverb(send: &[Vec<f32>; 2], rate: f64) -> [Vec<f32>; 2] {
    let frames = send[0].len();
    let d = REVERB_DECIMATION;
    let small = frames.div_ceil(d);
    let down = |c: &[f32]| -> Vec<f32> {
        c.chunks(d)
            .map(|b| b.iter().sum::<f32>() / b.len() as f32)
            .collect()
    };
    let (il, ir) = (down(&send[0]), down(&send[1]));
    let mut verb = ambience(2.2, 0.6);
    verb.set_sample_rate(rate / d as f64);
    let mut adapter = BigBlockAdapter::new(Box::new(verb));
    let (mut ol, mut or) = (vec![0.0f32; small], vec![0.0f32; small]);
    adapter.process_big(small, &[&il, &ir], &mut [&mut ol[..], &mut or[..]]);
    let up = |c: &[f32]| -> Vec<f32> {
        (0..frames)
            .map(|i| {
                // Block k's mean sits at the block's centre.
                let pos = ((i as f32 + 0.5) / d as f32 - 0.5).max(0.0);
                let k = pos as usize;
                let frac = pos - k as f32;
                let a = c[k.min(small - 1)];
                let b = c[(k + 1).min(small - 1)];
                a + (b - a) * frac
            })
            .collect()
    };
    [up(&ol), up(&or)]
}
