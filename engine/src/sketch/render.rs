//! Synthesis of a [`Score`] with fundsp: every instrument is a small fundsp
//! graph, rendered per note with envelopes computed here, mixed to stereo
//! with equal-power panning and a shared reverb send.

use fundsp::prelude32::{
    AudioUnit, BigBlockAdapter, bandpass_hz, highpass_hz, lowpass, lowpass_hz, midi_hz, noise,
    pass, pulse, reverb_stereo, saw_hz, sine, sine_hz, square_hz, triangle_hz,
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
        Inst::Pad => Box::new(
            ((saw_hz(f * 0.997) + saw_hz(f * 1.003) + saw_hz(f * 0.5) * 0.5) * 0.4)
                >> lowpass_hz(1400.0, 0.6),
        ),
        Inst::Pluck => Box::new((pulse() | pass() | pass()) >> lowpass()),
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
                ctl[0][i] = 180.0 + 1400.0 * (-t / 0.09).exp();
                ctl[1][i] = 0.7;
                amp[i] = v * adsr(t, dur, 0.005, 0.2, 0.7, 0.05);
            }
            Inst::Pad => amp[i] = v * adsr(t, dur, 0.25, 0.5, 0.8, 0.35),
            Inst::Pluck => {
                ctl[0][i] = f;
                ctl[1][i] = 0.35;
                ctl[2][i] = 600.0 + 4000.0 * (-t / 0.06).exp();
                ctl[3][i] = 0.8;
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

/// Renders the score to stereo at `rate`, exactly `frames` long. `tick` is
/// called after each note with the share done, and stops the render when it
/// returns false.
pub fn render(
    score: &Score,
    rate: u32,
    frames: usize,
    seed: u64,
    tick: &mut dyn FnMut(f64) -> bool,
) -> Option<[Vec<f32>; 2]> {
    let mut dry = [vec![0.0f32; frames], vec![0.0f32; frames]];
    let mut send = [vec![0.0f32; frames], vec![0.0f32; frames]];
    let mut buf = Vec::new();
    let r = f64::from(rate);
    for (k, note) in score.notes.iter().enumerate() {
        let start = (note.time * r).round() as usize;
        if start >= frames {
            continue;
        }
        let len = (((note.dur + tail(note.inst)) * r) as usize).min(frames - start);
        buf.clear();
        buf.resize(len, 0.0);
        render_note(
            note,
            r,
            seed.wrapping_mul(0x9e37_79b9).wrapping_add(k as u64),
            &mut buf,
        );
        let (gain, rev) = bus(note.inst);
        let angle = (note.pan.clamp(-1.0, 1.0) + 1.0) * std::f32::consts::FRAC_PI_4;
        let (gl, gr) = (angle.cos() * gain, angle.sin() * gain);
        for (i, &x) in buf.iter().enumerate() {
            dry[0][start + i] += x * gl;
            dry[1][start + i] += x * gr;
            send[0][start + i] += x * gl * rev;
            send[1][start + i] += x * gr * rev;
        }
        if k % 32 == 0 && !tick(k as f64 / score.notes.len().max(1) as f64) {
            return None;
        }
    }
    let mut verb = reverb_stereo(18.0, 2.2, 0.6);
    verb.set_sample_rate(r);
    let mut adapter = BigBlockAdapter::new(Box::new(verb));
    let mut wet = [vec![0.0f32; frames], vec![0.0f32; frames]];
    {
        let [wl, wr] = &mut wet;
        adapter.process_big(
            frames,
            &[&send[0], &send[1]],
            &mut [&mut wl[..], &mut wr[..]],
        );
    }
    for c in 0..2 {
        for (d, w) in dry[c].iter_mut().zip(&wet[c]) {
            *d += 0.35 * w;
        }
    }
    Some(dry)
}
