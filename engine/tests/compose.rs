//! The embedded composer on synthetic videos: length, loudness, cut hits,
//! determinism.

use std::sync::atomic::AtomicBool;

use vidmusician_engine::analysis::{Analysis, StatsEncoder, analyze};
use vidmusician_engine::audio::measure;
use vidmusician_engine::metrics::{OnsetConfig, cut_hit_rate, detect_onsets};
use vidmusician_engine::sketch::{
    Inst, Meter, Plan, SAMPLE_RATE, Score, SketchSettings, arrange, compose,
};
use vidmusician_engine::video::synth::{SynthSpec, write_video};

fn analysed(duration: f64, fps: u32, cuts: Vec<f64>, seed: u64) -> (Analysis, Vec<f64>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v.mp4");
    let mut spec = SynthSpec::new(320, 240, fps, duration, cuts);
    spec.seed = seed;
    write_video(&path, &spec).unwrap();
    let a = analyze(
        &path,
        &mut StatsEncoder::default(),
        &AtomicBool::new(false),
        &mut |_| {},
    )
    .unwrap();
    (a, spec.cut_frame_times())
}

#[test]
fn music_fits_the_video() {
    let cases = [
        (12.0, 25, vec![1.3, 2.9, 4.0, 5.7, 7.2, 8.1, 9.9, 11.0]),
        (9.5, 30, vec![0.7, 2.2, 3.1, 5.5, 6.3, 8.8]),
    ];
    for (i, (duration, fps, cuts)) in cases.into_iter().enumerate() {
        let (a, truth) = analysed(duration, fps, cuts, 11 + i as u64);
        let c = compose(
            &a,
            &SketchSettings {
                bpm: None,
                downbeat: None,
                seed: 3,
                ..Default::default()
            },
            &AtomicBool::new(false),
            &mut |_| {},
        )
        .unwrap();
        let audio = &c.audio;
        assert_eq!(audio.sample_rate, SAMPLE_RATE);
        assert_eq!(audio.channels.len(), 2);
        // As long as the video, within one 10 ms block.
        let want = duration * f64::from(SAMPLE_RATE);
        assert!(
            (audio.len() as f64 - want).abs() <= 480.0,
            "{} vs {want}",
            audio.len()
        );
        assert!(audio.peak() > 0.1, "silent");
        let l = measure(audio).unwrap();
        assert!((l.integrated_lufs + 14.0).abs() <= 1.0, "{l:?}");
        assert!(l.true_peak_dbtp <= -1.0 + 1e-6, "{l:?}");
        let onsets = detect_onsets(&audio.mono(), audio.sample_rate, &OnsetConfig::default());
        let rate = cut_hit_rate(&onsets, &truth, 0.05);
        eprintln!(
            "case {i}: cut hit rate {rate:.3}, {} onsets, {l:?}",
            onsets.len()
        );
        assert!(rate >= 0.9, "cut hit rate {rate}");
    }
}

#[test]
fn a_seed_gives_one_piece_and_another_seed_another() {
    let (a, _) = analysed(6.0, 25, vec![1.5, 3.2, 4.4], 5);
    let run = |seed| {
        compose(
            &a,
            &SketchSettings {
                bpm: Some(110.0),
                downbeat: None,
                seed,
                ..Default::default()
            },
            &AtomicBool::new(false),
            &mut |_| {},
        )
        .unwrap()
        .audio
    };
    let (x, y, z) = (run(1), run(1), run(2));
    assert_eq!(x, y, "same seed, different samples");
    let diff: f32 = x.channels[0]
        .iter()
        .zip(&z.channels[0])
        .map(|(p, q)| (p - q).abs())
        .sum();
    assert!(
        diff / x.len() as f32 > 1e-3,
        "another seed gave the same piece"
    );
}

#[test]
fn given_tempo_is_used_and_bad_tempo_is_refused() {
    let (a, _) = analysed(4.0, 25, vec![2.0], 9);
    let c = compose(
        &a,
        &SketchSettings {
            bpm: Some(128.0),
            downbeat: None,
            seed: 0,
            ..Default::default()
        },
        &AtomicBool::new(false),
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(c.score.bpm, 128.0);
    for bad in [0.0, -5.0, f64::NAN, 1000.0] {
        let e = compose(
            &a,
            &SketchSettings {
                bpm: Some(bad),
                downbeat: None,
                seed: 0,
                ..Default::default()
            },
            &AtomicBool::new(false),
            &mut |_| {},
        );
        assert!(e.is_err(), "tempo {bad} accepted");
    }
}

#[test]
fn cancel_stops_composing() {
    let (a, _) = analysed(4.0, 25, vec![2.0], 9);
    let e = compose(
        &a,
        &SketchSettings {
            bpm: None,
            downbeat: None,
            seed: 0,
            ..Default::default()
        },
        &AtomicBool::new(true),
        &mut |_| {},
    );
    assert!(
        matches!(e, Err(vidmusician_engine::Error::Cancelled)),
        "{e:?}"
    );
}

#[test]
fn bars_follow_a_given_downbeat() {
    let (a, _) = analysed(8.0, 25, vec![1.1, 3.3, 6.0], 4);
    let bar = 4.0 * 60.0 / 90.0;
    for downbeat in [0.37, -5.0, 100.0] {
        let score = arrange(
            &a,
            &Plan {
                downbeat: Some(downbeat),
                seed: 1,
                ..Plan::new(90.0)
            },
        );
        let pads: Vec<f64> = score
            .notes
            .iter()
            .filter(|n| n.inst == vidmusician_engine::sketch::Inst::Pad)
            .map(|n| n.time)
            .collect();
        assert!(!pads.is_empty());
        // A held chord from the pickup bar may start at 0; every other
        // starts on a bar.
        for t in pads.into_iter().filter(|&t| t > 0.0) {
            let k = (t - downbeat) / bar;
            assert!(
                (k - k.round()).abs() < 1e-9,
                "bar at {t} not on the grid of {downbeat}"
            );
        }
    }
}

#[test]
fn a_downbeat_a_few_samples_off_a_bar_line_gives_the_music_of_the_bar_line() {
    // Hosts' beat and seconds positions can disagree by a few samples: a
    // downbeat that close to a bar line must not start a pickup bar and
    // shift the whole arrangement.
    let (a, _) = analysed(8.0, 25, vec![1.1, 3.3, 6.0], 4);
    let bar = 4.0 * 60.0 / 90.0;
    let score = |downbeat: f64| {
        arrange(
            &a,
            &Plan {
                downbeat: Some(downbeat),
                seed: 1,
                ..Plan::new(90.0)
            },
        )
    };
    let on = score(2.0 * bar);
    let times = |s: &vidmusician_engine::sketch::Score| -> Vec<f64> {
        s.notes.iter().map(|n| n.time).collect()
    };
    for (bars, off) in [
        (2.0, 0.000125),
        (2.0, -0.000167),
        (2.0, 0.0015),
        (2.0, -0.0015),
        (0.0, 0.0),
        (3.0, 0.0),
        (4.0, -0.000167),
        (-7.0, 0.0),
    ] {
        let near = score(bars * bar + off);
        assert_eq!(near.notes.len(), on.notes.len(), "{bars} bars {off}");
        for (x, y) in times(&near).iter().zip(times(&on)) {
            assert!(
                (x - y).abs() < 1e-9,
                "{bars} bars {off}: note at {x} against {y}"
            );
        }
    }
    // Further off, the bars move with the downbeat.
    let moved = score(2.0 * bar + 0.01);
    assert!(
        times(&moved)
            .iter()
            .zip(times(&on))
            .any(|(x, y)| (x - y).abs() > 0.005)
    );
}

#[test]
fn the_prompt_steers_energy_and_mood() {
    let (a, _) = analysed(16.0, 25, vec![2.1, 4.4, 7.0, 9.3, 12.2, 14.0], 6);
    let score = |prompt: &str| {
        let style = vidmusician_engine::sketch::Style::from_prompt(prompt);
        arrange(
            &a,
            &Plan {
                seed: 2,
                style,
                ..Plan::new(100.0)
            },
        )
    };
    let count = |s: &vidmusician_engine::sketch::Score, inst| {
        s.notes.iter().filter(|n| n.inst == inst).count()
    };
    use vidmusician_engine::sketch::Inst;
    let calm = score("calm gentle documentary");
    let hype = score("energetic driving promo");
    let drums = |s| count(s, Inst::Kick) + count(s, Inst::Snare) + count(s, Inst::Hat);
    assert!(
        drums(&hype) > drums(&calm),
        "promo {} vs calm {} drum hits",
        drums(&hype),
        drums(&calm)
    );
    let intensity = |s: &vidmusician_engine::sketch::Score| {
        s.sections
            .iter()
            .map(|x| u32::from(x.intensity))
            .sum::<u32>()
    };
    assert!(intensity(&hype) > intensity(&calm));
    assert!(score("dark and tense").minor);
    assert!(!score("bright happy commercial").minor);
}

#[test]
fn rhythm_strength_scales_the_accents_on_cuts() {
    let (a, _) = analysed(6.0, 25, vec![1.2, 2.6, 4.1], 8);
    use vidmusician_engine::sketch::{Inst, Style};
    let impacts = |strength: f32| {
        let style = Style {
            accents: strength,
            ..Style::default()
        };
        let s = arrange(
            &a,
            &Plan {
                seed: 1,
                style,
                ..Plan::new(100.0)
            },
        );
        s.notes
            .iter()
            .filter(|n| n.inst == Inst::Impact)
            .map(|n| n.vel)
            .collect::<Vec<f32>>()
    };
    let full = impacts(1.0);
    assert_eq!(full.len(), a.cuts.len());
    let half = impacts(0.5);
    for (h, f) in half.iter().zip(&full) {
        assert!((h - f * 0.5).abs() < 1e-6);
    }
    assert!(impacts(0.0).is_empty());
    let bad = compose(
        &a,
        &SketchSettings {
            rhythm_strength: 1.5,
            ..Default::default()
        },
        &AtomicBool::new(false),
        &mut |_| {},
    );
    assert!(bad.is_err());
}

#[test]
fn rhythm_strength_reaches_the_composition() {
    let (a, _) = analysed(5.0, 25, vec![1.5, 3.2], 9);
    let impacts = |rhythm_strength: f32| {
        let c = compose(
            &a,
            &SketchSettings {
                bpm: Some(100.0),
                rhythm_strength,
                ..Default::default()
            },
            &AtomicBool::new(false),
            &mut |_| {},
        )
        .unwrap();
        c.score
            .notes
            .iter()
            .filter(|n| n.inst == Inst::Impact)
            .map(|n| n.vel)
            .collect::<Vec<f32>>()
    };
    let full = impacts(1.0);
    assert_eq!(full.len(), 2);
    for (q, f) in impacts(0.25).iter().zip(&full) {
        assert!((q - f * 0.25).abs() < 1e-6, "{q} vs {f}");
    }
    assert!(impacts(0.0).is_empty());
}

/// Two analyses of the same cuts whose pictures differ: one dark, cold and
/// still, one bright, warm and busy.
fn dark_and_bright() -> (Analysis, Analysis) {
    let (a, _) = analysed(16.0, 25, vec![2.1, 4.4, 7.0, 9.3, 12.2, 14.0], 6);
    let mut dark = a.clone();
    dark.summary.brightness = 0.1;
    dark.summary.saturation = 0.1;
    dark.summary.warmth = -0.3;
    dark.summary.motion = 0.0;
    dark.summary.cuts_per_minute = 0.0;
    dark.motion.iter_mut().for_each(|m| *m = 0.0);
    let mut bright = a;
    bright.summary.brightness = 0.9;
    bright.summary.saturation = 0.8;
    bright.summary.warmth = 0.3;
    bright.summary.motion = 0.08;
    bright.summary.cuts_per_minute = 60.0;
    bright
        .motion
        .iter_mut()
        .for_each(|m| *m = 3.0 * bright.motion_p90);
    (dark, bright)
}

fn intensities(s: &Score) -> Vec<u8> {
    s.sections.iter().map(|x| x.intensity).collect()
}

#[test]
fn semantic_strength_sets_how_much_the_pictures_decide() {
    let (dark, bright) = dark_and_bright();
    let plan = |semantic: f32| Plan {
        seed: 4,
        semantic,
        ..Plan::new(100.0)
    };
    let (d, b) = (arrange(&dark, &plan(1.0)), arrange(&bright, &plan(1.0)));
    assert!(d.minor && !b.minor);
    let sum = |s: &Score| intensities(s).iter().map(|&x| u32::from(x)).sum::<u32>();
    assert!(
        sum(&b) > sum(&d),
        "{:?} vs {:?}",
        intensities(&b),
        intensities(&d)
    );
    // Without the pictures' say, both get the same mood and energy.
    let (d, b) = (arrange(&dark, &plan(0.0)), arrange(&bright, &plan(0.0)));
    assert_eq!(d.minor, b.minor);
    assert!(!d.minor, "no prompt and no picture: major");
    assert_eq!(intensities(&d), intensities(&b));
    // The prompt still speaks.
    let dark_prompt = Plan {
        style: vidmusician_engine::sketch::Style::from_prompt("dark and tense"),
        ..plan(0.0)
    };
    assert!(arrange(&bright, &dark_prompt).minor);
    let bad = compose(
        &dark,
        &SketchSettings {
            semantic_strength: -0.1,
            ..Default::default()
        },
        &AtomicBool::new(false),
        &mut |_| {},
    );
    assert!(bad.is_err());
}

#[test]
fn bars_follow_the_time_signature() {
    let (a, _) = analysed(12.0, 25, vec![1.1, 3.3, 6.0, 9.2], 4);
    for (sig, downbeat) in [("3/4", 0.4), ("6/8", -1.0), ("7/8", 2.0), ("5/4", 0.0)] {
        let meter = Meter::parse(sig).unwrap();
        let plan = Plan {
            downbeat: Some(downbeat),
            meter,
            seed: 3,
            style: vidmusician_engine::sketch::Style::from_prompt("energetic"),
            ..Plan::new(120.0)
        };
        let score = arrange(&a, &plan);
        let bar = meter.bar(120.0);
        let pulse = meter.pulse(120.0);
        let on_grid = |t: f64, step: f64| {
            let k = (t - downbeat) / step;
            (k - k.round()).abs() < 1e-9
        };
        let pads: Vec<f64> = score
            .notes
            .iter()
            .filter(|n| n.inst == Inst::Pad && n.time > 0.0)
            .map(|n| n.time)
            .collect();
        assert!(pads.len() >= 3, "{sig}");
        assert!(
            pads.iter().all(|&t| on_grid(t, bar)),
            "{sig}: pads off the bars"
        );
        // Kicks fall on pulses; the bar's first pulse always has one.
        let kicks: Vec<f64> = score
            .notes
            .iter()
            .filter(|n| n.inst == Inst::Kick)
            .map(|n| n.time)
            .collect();
        assert!(!kicks.is_empty(), "{sig}");
        assert!(kicks.iter().all(|&t| on_grid(t, pulse)), "{sig}");
        for &p in pads.iter().filter(|&&t| t < a.duration - bar) {
            let bar_kicks = kicks
                .iter()
                .filter(|&&k| k >= p - 1e-9 && k < p + bar - 1e-9);
            let first = bar_kicks.clone().next().copied();
            if score
                .sections
                .iter()
                .any(|s| s.intensity >= 1 && s.start <= p && p < s.end)
            {
                assert!(
                    first.is_some_and(|k| (k - p).abs() < 1e-9),
                    "{sig}: no kick on the bar at {p}"
                );
            }
        }
        // Compound meters are felt in threes: kicks only on group starts.
        if meter.compound() {
            assert!(kicks.iter().all(|&t| on_grid(t, 3.0 * pulse)), "{sig}");
        }
    }
}
