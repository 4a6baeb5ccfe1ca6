//! The arrangement: from the analysis, a tempo and a seed, the list of notes
//! every instrument plays. Pure data, so it can be inspected and tested
//! without rendering audio.

use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use super::{Meter, Style};
use crate::analysis::{Analysis, global};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Inst {
    Kick,
    Snare,
    Hat,
    Crash,
    Impact,
    Bass,
    Pad,
    Pluck,
    Lead,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Note {
    pub inst: Inst,
    /// Seconds.
    pub time: f64,
    pub dur: f64,
    /// MIDI note number (drums ignore it).
    pub pitch: f32,
    /// 0..1.
    pub vel: f32,
    /// −1 (left) .. 1 (right).
    pub pan: f32,
}

#[derive(Debug, Clone, Serialize)]
pub struct Section {
    pub start: f64,
    pub end: f64,
    /// 0 (calm) ..= 3 (driving).
    pub intensity: u8,
    /// Scale degrees (0-based) of the chords, one per bar, repeating.
    pub progression: Vec<usize>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Score {
    pub bpm: f64,
    /// Time of the first beat, seconds (a pickup may come before it).
    pub first_beat: f64,
    /// A time where a bar starts, seconds (the bars' phase).
    pub bar_phase: f64,
    /// Pitch class of the tonic, 0 = C.
    pub key: u8,
    pub minor: bool,
    pub sections: Vec<Section>,
    /// Times of the accents placed on cuts.
    pub accents: Vec<f64>,
    pub notes: Vec<Note>,
    pub duration: f64,
}

/// What an arrangement is asked to be.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// Quarter notes per minute.
    pub bpm: f64,
    /// A time (seconds, may be negative or past the end) where a bar starts;
    /// `None` anchors the bars where they land the most cuts on beats.
    pub downbeat: Option<f64>,
    pub seed: u64,
    pub style: Style,
    /// How much the pictures' content decides the mood, the energy and where
    /// sections change: 0 not at all (the prompt and a moderate default
    /// do), 1 fully. Cut accents are the rhythm's, not this.
    pub semantic: f32,
    pub meter: Meter,
}

impl Plan {
    pub fn new(bpm: f64) -> Self {
        Self {
            bpm,
            downbeat: None,
            seed: 0,
            style: Style::default(),
            semantic: 1.0,
            meter: Meter::COMMON,
        }
    }
}

/// The arrangement level (0–3) a section has when the pictures do not set
/// it.
const NEUTRAL_LEVEL: f32 = 1.4;

const MAJOR: [i32; 7] = [0, 2, 4, 5, 7, 9, 11];
const MINOR: [i32; 7] = [0, 2, 3, 5, 7, 8, 10];
const MAJOR_PROGRESSIONS: [[usize; 4]; 5] = [
    [0, 4, 5, 3],
    [0, 5, 3, 4],
    [5, 3, 0, 4],
    [0, 3, 5, 4],
    [0, 3, 0, 4],
];
const MINOR_PROGRESSIONS: [[usize; 4]; 5] = [
    [0, 5, 2, 6],
    [0, 3, 5, 4],
    [0, 6, 5, 6],
    [0, 3, 4, 0],
    [5, 6, 0, 0],
];

/// Key and mood from the picture: the mean hue picks the tonic; brightness,
/// saturation and warmth give a value whose sign picks major (above 0) or
/// minor.
fn key_and_mode(a: &Analysis) -> (u8, f32) {
    let s = &a.summary;
    let (mut hc, mut hs) = (0.0f32, 0.0f32);
    for g in &a.global {
        hc += g[global::HUE_COS];
        hs += g[global::HUE_SIN];
    }
    let angle = hs.atan2(hc).rem_euclid(std::f32::consts::TAU);
    // Circle of fifths around the hue wheel, so nearby hues give related keys.
    let step = ((angle / std::f32::consts::TAU) * 12.0).floor() as u8 % 12;
    let key = (step * 7) % 12;
    let bright = s.brightness - 0.45 + 0.5 * (s.saturation - 0.35) + 0.8 * s.warmth;
    (key, bright)
}

/// A bar grid whose phase is within this of a bar line at the piece's start
/// is taken as on it. A host's beat and seconds positions can disagree by a
/// few samples (Ardour's do, by about 0.1 ms); without this, a downbeat a
/// hair after 0 would begin the piece with a whole pickup bar and shift the
/// arrangement by a bar, and the same session would get other music.
const ON_THE_BAR_S: f64 = 0.002;

/// `phase` moved onto the nearest whole number of bars from 0 when it is
/// within [`ON_THE_BAR_S`] of one.
fn on_the_bar(phase: f64, bar: f64) -> f64 {
    let off = phase.rem_euclid(bar);
    if off < ON_THE_BAR_S {
        phase - off
    } else if bar - off < ON_THE_BAR_S {
        phase + (bar - off)
    } else {
        phase
    }
}

/// Where in `period` the grid through `phase` starts: `phase` modulo
/// `period`, with a grid that is on 0 up to rounding (1 ns) taken as on it,
/// so that equal grids written as different multiples of the period (a
/// downbeat at bar 0 or bar 4) give the same music.
fn offset_in(phase: f64, period: f64) -> f64 {
    let off = phase.rem_euclid(period);
    if off < 1e-9 || period - off < 1e-9 {
        0.0
    } else {
        off
    }
}

/// Writes the score. A `downbeat` in the plan puts the music's bars on a
/// given grid: the plugin passes the host's, so the bars fall on the
/// session's.
pub fn arrange(a: &Analysis, plan: &Plan) -> Score {
    let Plan {
        bpm,
        downbeat,
        seed,
        ref style,
        semantic,
        meter,
    } = *plan;
    let semantic = semantic.clamp(0.0, 1.0);
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x005e_ed0f_5c0e);
    let beat = meter.pulse(bpm);
    let cut_times: Vec<f64> = a.cuts.iter().map(|c| c.time).collect();
    // Phase: the suggestion's when its tempo is used, else the best anchor
    // on a cut for the given tempo.
    let phase = if let Some(d) = downbeat {
        d
    } else if (a.tempo.bpm - bpm).abs() < 1e-6 {
        a.tempo.phase
    } else {
        cut_times
            .iter()
            .copied()
            .max_by(|&x, &y| {
                crate::analysis::grid_fit(&cut_times, bpm, x)
                    .total_cmp(&crate::analysis::grid_fit(&cut_times, bpm, y))
            })
            .unwrap_or(0.0)
    };
    let phase = on_the_bar(phase, meter.bar(bpm));
    let first_beat = offset_in(phase, beat);
    let (key, brightness) = key_and_mode(a);
    // Without the pictures' say, the mood is the prompt's, else major.
    let minor = style.minor.unwrap_or(brightness * semantic < 0.0);
    let scale = if minor { MINOR } else { MAJOR };
    let bar = meter.bar(bpm);
    let (compound, places) = (meter.compound(), meter.places());
    let bounds = a.sections((4.0 * bar).max(6.0), semantic);
    let motion_norm = |t0: f64, t1: f64| {
        let n = ((t1 - t0) * 10.0).ceil().max(1.0) as usize;
        (0..n)
            .map(|i| a.motion_at(t0 + (t1 - t0) * i as f64 / n as f64))
            .sum::<f32>()
            / n as f32
    };
    // How busy the whole video is sets the ceiling of the arrangement.
    let busy = (a.summary.motion / 0.04).min(1.0) * 0.5
        + (a.summary.cuts_per_minute as f32 / 30.0).min(1.0) * 0.5;
    let mut secs = Vec::new();
    for (i, &s) in bounds.iter().enumerate() {
        let e = bounds.get(i + 1).copied().unwrap_or(a.duration);
        let local = motion_norm(s, e);
        // What the pictures say of energy, weighed against a moderate
        // arrangement that does not follow them.
        let picture = busy * 2.0 + local * 1.2;
        let level = (picture * semantic
            + NEUTRAL_LEVEL * (1.0 - semantic)
            + style.energy * 1.2
            + rng.random_range(-0.3..0.3))
        .round()
        .clamp(0.0, 3.0) as u8;
        let progs: &[[usize; 4]] = if minor {
            &MINOR_PROGRESSIONS
        } else {
            &MAJOR_PROGRESSIONS
        };
        secs.push(Section {
            start: s,
            end: e,
            intensity: level,
            progression: progs
                .choose(&mut rng)
                .expect("PANIC: non-empty table")
                .to_vec(),
        });
    }

    let mut notes = Vec::new();
    let chord_tones = |degree: usize| -> [i32; 3] {
        let d = |k: usize| {
            let idx = degree + k;
            scale[idx % 7] + 12 * (idx / 7) as i32
        };
        [d(0), d(2), d(4)]
    };
    let tonic = 48 + i32::from(key);
    let swing = rng.random_range(0.0..0.08);
    let arp_pattern: Vec<usize> = (0..8).map(|_| rng.random_range(0..4)).collect();
    let hat_open = rng.random_bool(0.5);
    let pan_pluck = rng.random_range(-0.5..0.5);
    let mut melody_degree: i32 = 7;

    // Bars from the first downbeat at or before 0 (a pickup bar if needed).
    // Bars start at `phase` + k · bar; the first at or before 0 may be a
    // pickup.
    let first_downbeat = offset_in(phase, bar);
    let mut bar_start = first_downbeat - (first_downbeat / bar).ceil() * bar;
    let mut bar_index = 0usize;
    while bar_start < a.duration {
        let mid = (bar_start + bar / 2.0).max(0.0);
        let sec = secs
            .iter()
            .rev()
            .find(|s| s.start <= mid)
            .unwrap_or(&secs[0]);
        let local = motion_norm(bar_start.max(0.0), (bar_start + bar).min(a.duration));
        let level = (f32::from(sec.intensity) + (local - 0.6) * 0.8 * semantic)
            .round()
            .clamp(0.0, 3.0) as u8;
        let degree = sec.progression[bar_index % sec.progression.len()];
        let tones = chord_tones(degree);
        // Pad: the chord, held for the bar.
        for (k, &t) in tones.iter().enumerate() {
            notes.push(Note {
                inst: Inst::Pad,
                time: bar_start,
                dur: bar,
                pitch: (tonic + 12 + t) as f32,
                vel: 0.35 + 0.05 * f32::from(level),
                pan: [-0.6, 0.0, 0.6][k],
            });
        }
        for (b, &(group, pos, group_len)) in (0u8..).zip(&places) {
            let strong = pos == 0;
            let t = bar_start + f64::from(b) * beat;
            let off = t + beat * (0.5 + swing);
            // Bass: on every pulse of a simple meter, on the strong ones of
            // a compound one (its pulses are fast), the rest when busy.
            let root = (tonic - 12 + tones[0]) as f32;
            if level == 0 {
                if b == 0 {
                    notes.push(Note {
                        inst: Inst::Bass,
                        time: t,
                        dur: bar * 0.9,
                        pitch: root,
                        vel: 0.6,
                        pan: 0.0,
                    });
                }
            } else if strong || !compound || level >= 2 {
                notes.push(Note {
                    inst: Inst::Bass,
                    time: t,
                    dur: beat * 0.45,
                    pitch: root,
                    vel: 0.75,
                    pan: 0.0,
                });
                if level >= 2 && !compound {
                    let p = if strong { root } else { root + 12.0 };
                    notes.push(Note {
                        inst: Inst::Bass,
                        time: off,
                        dur: beat * 0.4,
                        pitch: p,
                        vel: 0.6,
                        pan: 0.0,
                    });
                }
            }
            // Drums: the kick on the groups' strong pulses, the snare on the
            // last pulse of a simple group or the strong pulse of every
            // other compound group.
            let snare_here = if compound {
                strong && group % 2 == 1
            } else {
                pos + 1 == group_len && group_len > 1
            };
            let kick_here = if compound {
                strong && (group % 2 == 0 || level >= 3)
            } else {
                strong || (level >= 3)
            };
            if level >= 1 && kick_here {
                notes.push(Note {
                    inst: Inst::Kick,
                    time: t,
                    dur: 0.4,
                    pitch: 0.0,
                    vel: if b == 0 { 1.0 } else { 0.85 },
                    pan: 0.0,
                });
            }
            if level >= 2 && snare_here {
                notes.push(Note {
                    inst: Inst::Snare,
                    time: t,
                    dur: 0.3,
                    pitch: 0.0,
                    vel: 0.8,
                    pan: 0.05,
                });
            }
            if level >= 1 {
                // Hats between the pulses of a simple meter, on the pulses
                // of a compound one.
                let last = b + 1 == meter.beats;
                notes.push(Note {
                    inst: Inst::Hat,
                    time: if compound { t } else { off },
                    dur: if hat_open && last { 0.25 } else { 0.08 },
                    pitch: 0.0,
                    vel: if compound && !strong { 0.35 } else { 0.45 },
                    pan: 0.3,
                });
                if level >= 3 && !compound {
                    notes.push(Note {
                        inst: Inst::Hat,
                        time: t,
                        dur: 0.05,
                        pitch: 0.0,
                        vel: 0.3,
                        pan: 0.3,
                    });
                }
            }
            // Plucked arpeggio: two notes a pulse, four when driving (one
            // and two for the fast pulses of compound meters).
            let steps = match (compound, level >= 3) {
                (false, false) | (true, true) => 2,
                (false, true) => 4,
                (true, false) => 1,
            };
            for s in 0..steps {
                let st = t + beat * s as f64 / steps as f64;
                let idx = arp_pattern[(usize::from(b) * steps + s) % arp_pattern.len()];
                let pitch = if idx == 3 { tones[0] + 12 } else { tones[idx] };
                notes.push(Note {
                    inst: Inst::Pluck,
                    time: st,
                    dur: beat / steps as f64 * 0.9,
                    pitch: (tonic + 24 + pitch) as f32,
                    vel: 0.35 + 0.1 * (s == 0) as u8 as f32,
                    pan: pan_pluck,
                });
            }
            // Lead: a stepwise line over the chord when the picture is busy.
            if level >= 2 && (strong || rng.random_bool(0.3)) {
                melody_degree = (melody_degree + rng.random_range(-2..=2)).clamp(4, 12);
                let tone = scale[melody_degree as usize % 7] + 12 * (melody_degree / 7);
                let held = if compound { f64::from(group_len) } else { 1.5 };
                notes.push(Note {
                    inst: Inst::Lead,
                    time: t,
                    dur: beat * if strong { held } else { 0.9 },
                    pitch: (tonic + 24 + tone) as f32,
                    vel: 0.5,
                    pan: -0.2,
                });
            }
        }
        bar_start += bar;
        bar_index += 1;
    }
    // Accents exactly on the cuts: a crash and an impact, louder for
    // stronger cuts and at section changes.
    let mut accents = Vec::new();
    for c in a.cuts.iter().filter(|_| style.accents > 0.0) {
        let section_change = bounds.iter().any(|&b| (b - c.time).abs() < 1e-9);
        let vel = style.accents
            * (0.7 + 0.3 * c.strength.min(1.0)).min(1.0)
            * if section_change { 1.0 } else { 0.85 };
        notes.push(Note {
            inst: Inst::Impact,
            time: c.time,
            dur: 1.2,
            pitch: 0.0,
            vel,
            pan: 0.0,
        });
        notes.push(Note {
            inst: Inst::Crash,
            time: c.time,
            dur: 1.8,
            pitch: 0.0,
            vel: vel * 0.8,
            pan: 0.0,
        });
        accents.push(c.time);
    }
    // Held notes of the pickup bar that started before 0 sound from 0 on;
    // short ones are dropped. Those that ring past the end are cut by the
    // renderer.
    for n in notes.iter_mut() {
        if n.time < 0.0 && n.dur >= 1.0 && n.time + n.dur > 0.5 {
            n.dur += n.time;
            n.time = 0.0;
        }
    }
    notes.retain(|n| n.time >= 0.0 && n.time < a.duration);
    notes.sort_by(|x, y| x.time.total_cmp(&y.time));
    Score {
        bpm,
        first_beat,
        bar_phase: phase,
        key,
        minor,
        sections: secs,
        accents,
        notes,
        duration: a.duration,
    }
}
