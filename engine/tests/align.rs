//! Aligning generated music to a tempo grid and cuts: timing of the warped
//! accents, exact length, untouched audio at strength 0, pitch, streaming,
//! and inputs that must not break it.

use vidmusician_engine::align::{
    AnchorKind, BeatSource, Span, StreamAligner, Target, TimeMap, Warper, align, align_detailed,
    plan_span, track_beats, warp,
};
use vidmusician_engine::audio::{Audio, true_peak_db};
use vidmusician_engine::metrics::{OnsetConfig, cut_hit_rate, detect_onsets};

const RATE: u32 = 48_000;

fn lcg(s: &mut u32) -> f32 {
    *s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
    (*s >> 8) as f32 / (1u32 << 24) as f32 - 0.5
}

/// Adds a short click (a decaying 200 Hz burst with a noise attack) at `t`.
fn click(x: &mut [f32], rate: u32, t: f64, amp: f32, seed: &mut u32) {
    let start = (t * f64::from(rate)).round() as usize;
    for i in 0..(rate as usize / 10) {
        let Some(v) = x.get_mut(start + i) else { break };
        let k = i as f32 / rate as f32;
        *v += amp
            * ((-k / 0.02).exp() * (std::f32::consts::TAU * 200.0 * k).sin()
                + 0.5 * lcg(seed) * (-k / 0.01).exp());
    }
}

fn stereo(mono: Vec<f32>) -> Audio {
    Audio {
        sample_rate: RATE,
        channels: vec![mono.clone(), mono],
    }
}

/// Clicks every beat at `bpm` from `first`, `secs` long.
fn click_track(bpm: f64, first: f64, secs: f64) -> (Audio, Vec<f64>) {
    let mut x = vec![0.0f32; (secs * f64::from(RATE)) as usize];
    let mut seed = 3;
    let mut times = Vec::new();
    let mut t = first;
    while t < secs - 0.1 {
        click(&mut x, RATE, t, 0.5, &mut seed);
        times.push(t);
        t += 60.0 / bpm;
    }
    (stereo(x), times)
}

fn onsets(audio: &Audio) -> Vec<f64> {
    detect_onsets(&audio.mono(), audio.sample_rate, &OnsetConfig::default())
}

/// Signed distance from `t` to the nearest of `times`.
fn offset(times: &[f64], t: f64) -> f64 {
    times
        .iter()
        .map(|o| o - t)
        .min_by(|a, b| a.abs().total_cmp(&b.abs()))
        .unwrap_or(f64::INFINITY)
}

/// The beats of a 120 BPM grid over `secs`, and the cuts.
fn grid_and_cuts(secs: f64, cuts: &[f64]) -> Vec<f64> {
    (0..(secs * 2.0) as usize)
        .map(|k| k as f64 * 0.5)
        .chain(cuts.iter().copied())
        .collect()
}

/// How many of `found` lie within 10 ms of one of `targets`.
fn on_target(found: &[f64], targets: &[f64]) -> usize {
    found
        .iter()
        .filter(|&&t| offset(targets, t).abs() <= 0.01)
        .count()
}

#[test]
fn the_tracker_finds_a_click_tracks_beats_within_ten_ms() {
    let (audio, truth) = click_track(120.0, 0.3, 12.0);
    let b = track_beats(&audio, 120.0);
    assert_eq!(b.source, BeatSource::Tracked, "confidence {}", b.confidence);
    assert!((b.bpm - 120.0).abs() < 1.5, "{}", b.bpm);
    // Every click is found, and nothing else.
    assert!(
        b.times.len() + 1 >= truth.len(),
        "{} of {}",
        b.times.len(),
        truth.len()
    );
    let worst = truth
        .iter()
        .map(|&t| offset(&b.times, t).abs())
        .fold(0.0f64, f64::max);
    eprintln!(
        "tracker: {} beats, worst offset {:.1} ms; {:?}",
        b.times.len(),
        worst * 1e3,
        truth
            .iter()
            .map(|&t| (offset(&b.times, t) * 1e4).round() / 10.0)
            .collect::<Vec<_>>()
    );
    assert!(worst < 0.01, "worst {worst}");
    for &t in &b.times {
        assert!(offset(&truth, t).abs() < 0.01, "beat {t} is on no click");
    }
}

#[test]
fn clicks_at_117_land_on_a_120_grid_and_on_the_cuts() {
    let (audio, _) = click_track(117.0, 0.2, 20.0);
    let cuts = vec![3.0, 7.5, 12.25];
    let target = Target::new(120.0, cuts.clone(), 0.4);
    let a = align_detailed(&audio, &target);
    assert_eq!(a.audio.len(), audio.len());
    assert_eq!(a.audio.channels.len(), 2);
    let found = onsets(&a.audio);

    let cut_offsets: Vec<f64> = cuts.iter().map(|&c| offset(&found, c)).collect();
    eprintln!(
        "cut offsets, ms: {:?}",
        cut_offsets
            .iter()
            .map(|o| (o * 1e4).round() / 10.0)
            .collect::<Vec<_>>()
    );
    for (c, o) in cuts.iter().zip(&cut_offsets) {
        assert!(o.abs() <= 0.01, "cut {c}: nearest onset {o:+.4} s away");
    }
    let grid_anchors: Vec<f64> = a
        .map
        .anchors()
        .iter()
        .filter(|x| matches!(x.kind, AnchorKind::Beat | AnchorKind::Downbeat))
        .map(|x| x.out)
        .collect();
    assert!(
        grid_anchors.len() >= 25,
        "{} grid beats anchored",
        grid_anchors.len()
    );
    let grid_offsets: Vec<f64> = grid_anchors.iter().map(|&g| offset(&found, g)).collect();
    let worst = grid_offsets.iter().fold(0.0f64, |m, o| m.max(o.abs()));
    let mean = grid_offsets.iter().map(|o| o.abs()).sum::<f64>() / grid_offsets.len() as f64;
    eprintln!(
        "{} grid beats anchored: mean |offset| {:.1} ms, worst {:.1} ms",
        grid_offsets.len(),
        mean * 1e3,
        worst * 1e3
    );
    assert!(worst <= 0.01, "worst grid offset {worst}");

    // Most clicks now sit on a target; the rest are where the tempo
    // difference is taken up before the end.
    let targets = grid_and_cuts(20.0, &cuts);
    let on = on_target(&found, &targets);
    eprintln!(
        "{on} of {} onsets on a target; off: {:?}",
        found.len(),
        found
            .iter()
            .filter(|&&t| offset(&targets, t).abs() > 0.01)
            .collect::<Vec<_>>()
    );
    assert!(
        on as f64 >= 0.75 * found.len() as f64,
        "{on} of {}",
        found.len()
    );
    // Wherever the map holds anchors a beat apart, every click is on a
    // target: the ones off lie in the few stretches no anchor could fit
    // (the start, around the off-grid cut, the end).
    let anchors = a.map.anchors();
    for &t in found.iter().filter(|&&t| offset(&targets, t).abs() > 0.01) {
        let i = anchors.partition_point(|x| x.out <= t);
        let gap = anchors[i].out - anchors[i - 1].out;
        assert!(
            gap > 0.51,
            "onset {t} off target between anchors {gap} s apart"
        );
    }
    // Before the warp, the clicks drift off the grid.
    let before = onsets(&audio);
    let on_before = on_target(&before, &targets);
    assert!(
        on_before * 2 < before.len(),
        "{on_before} of {} already on",
        before.len()
    );
}

#[test]
fn strength_zero_gives_the_input_bit_for_bit() {
    let (audio, _) = click_track(117.0, 0.2, 5.0);
    let out = align(&audio, &Target::new(120.0, vec![1.3, 2.7], 0.0));
    assert_eq!(out, audio);
    let out = align(&audio, &Target::new(120.0, vec![1.3], f32::NAN));
    assert_eq!(out, audio);
}

/// Kick, snare and hats at `bpm` over a held chord, with a little noise.
fn drum_loop(bpm: f64, secs: f64) -> Audio {
    let n = (secs * f64::from(RATE)) as usize;
    let mut x: Vec<f32> = (0..n)
        .map(|i| {
            let t = i as f32 / RATE as f32;
            0.08 * ((std::f32::consts::TAU * 220.0 * t).sin()
                + (std::f32::consts::TAU * 277.2 * t).sin()
                + (std::f32::consts::TAU * 329.6 * t).sin())
        })
        .collect();
    let mut seed = 11;
    for v in x.iter_mut() {
        *v += 0.003 * lcg(&mut seed);
    }
    let beat = 60.0 / bpm;
    let mut k = 0;
    loop {
        let t = 0.15 + k as f64 * beat;
        if t > secs - 0.2 {
            break;
        }
        let amp = if k % 2 == 0 { 0.6 } else { 0.45 };
        click(&mut x, RATE, t, amp, &mut seed);
        // A softer hat on the off-beat.
        let start = ((t + beat / 2.0) * f64::from(RATE)) as usize;
        for i in 0..(RATE as usize / 40) {
            if let Some(v) = x.get_mut(start + i) {
                *v += 0.12 * lcg(&mut seed) * (-(i as f32) / (0.004 * RATE as f32)).exp();
            }
        }
        k += 1;
    }
    stereo(x)
}

#[test]
fn music_at_112_hits_the_cuts_after_the_warp() {
    let audio = drum_loop(112.0, 20.0);
    let cuts = vec![2.1, 4.37, 6.8, 9.05, 11.6, 13.33, 15.9];
    // Tolerance as the metrics' tests use it.
    let tol = 0.05;
    let before = cut_hit_rate(&onsets(&audio), &cuts, tol);
    let a = align_detailed(&audio, &Target::new(120.0, cuts.clone(), 0.4));
    let out = a.audio;
    assert_eq!(out.len(), audio.len());
    let found = onsets(&out);
    eprintln!(
        "cuts: {:?}",
        cuts.iter().map(|&c| offset(&found, c)).collect::<Vec<_>>()
    );
    let after = cut_hit_rate(&found, &cuts, tol);
    eprintln!("cut hit rate: before {before:.2}, after {after:.2}");
    assert!(after >= 0.9, "after {after}");
    assert!(after > before, "before {before}, after {after}");
}

#[test]
fn accents_at_full_strength_stay_under_the_ceiling() {
    let audio = drum_loop(112.0, 8.0);
    let cuts = vec![1.9, 4.4, 6.1];
    let soft = align(&audio, &Target::new(120.0, cuts.clone(), 0.4));
    let hard = align(&audio, &Target::new(120.0, cuts.clone(), 1.0));
    assert_eq!(hard.len(), audio.len());
    // The accents change the music at the cuts and only there.
    let rate = f64::from(RATE);
    let diff_at = |t: f64| {
        let i = (t * rate) as usize;
        (i..i + 2400)
            .map(|j| (hard.channels[0][j] - soft.channels[0][j]).abs())
            .fold(0.0f32, f32::max)
    };
    for &c in &cuts {
        assert!(diff_at(c) > 0.01, "no accent at {c}");
    }
    assert_eq!(diff_at(3.2), 0.0);
    let tp = true_peak_db(&hard).unwrap();
    let tp_in = true_peak_db(&audio).unwrap();
    assert!(
        tp <= (-1.0f64).max(tp_in) + 0.3,
        "true peak {tp} dBTP (input {tp_in})"
    );
}

/// Frequency from the upward zero crossings between `from` and `to` s.
fn frequency(x: &[f32], from: f64, to: f64) -> f64 {
    let (a, b) = (
        (from * f64::from(RATE)) as usize,
        (to * f64::from(RATE)) as usize,
    );
    let ups: Vec<f64> = (a..b)
        .filter(|&i| x[i - 1] < 0.0 && x[i] >= 0.0)
        .map(|i| (i - 1) as f64 + f64::from(x[i - 1] / (x[i - 1] - x[i])))
        .collect();
    (ups.len() - 1) as f64 / ((ups[ups.len() - 1] - ups[0]) / f64::from(RATE))
}

#[test]
fn a_sine_keeps_its_pitch_through_a_ten_percent_stretch() {
    let secs = 6.0;
    let x: Vec<f32> = (0..(secs * f64::from(RATE)) as usize)
        .map(|i| 0.5 * (std::f64::consts::TAU * 440.0 * i as f64 / f64::from(RATE)).sin() as f32)
        .collect();
    let audio = stereo(x);
    // Source runs 1.1× faster than the output for 4 s, then slower.
    let map = TimeMap::new([anchor(0.0, 0.0), anchor(4.0, 4.4), anchor(secs, secs)]);
    let out = warp(&audio, &map);
    assert_eq!(out.len(), audio.len());
    for (from, to) in [(0.5, 3.5), (4.5, 5.5)] {
        let f = frequency(&out.channels[0], from, to);
        eprintln!("sine through the warp, {from}–{to} s: {f:.2} Hz");
        assert!((f / 440.0 - 1.0).abs() < 0.01, "{f} Hz");
    }
}

fn anchor(out: f64, src: f64) -> vidmusician_engine::align::Anchor {
    vidmusician_engine::align::Anchor {
        out,
        src,
        kind: AnchorKind::Beat,
    }
}

#[test]
fn streamed_in_pieces_equals_whole() {
    let (audio, _) = click_track(117.0, 0.2, 9.0);
    let target = Target::new(120.0, vec![2.0, 5.25], 0.4);
    let whole = align_detailed(&audio, &target);
    let map = whole.map.clone();

    let mut w = Warper::new(RATE, 2);
    let mut out = vec![Vec::new(), Vec::new()];
    let mut take = |piece: Vec<Vec<f32>>| {
        for (o, p) in out.iter_mut().zip(piece) {
            o.extend(p);
        }
    };
    // The map in two halves, the source in uneven chunks, pulling between.
    let anchors = map.anchors();
    let half = anchors.len() / 2;
    w.extend_map(&TimeMap::new(anchors[..half].iter().copied()));
    let mut pos = 0;
    for (i, size) in [7_000usize, 50_000, 1, 123_457, 90_000]
        .iter()
        .cycle()
        .enumerate()
    {
        if pos >= audio.len() {
            break;
        }
        let end = (pos + size).min(audio.len());
        let chunk: Vec<Vec<f32>> = audio
            .channels
            .iter()
            .map(|c| c[pos..end].to_vec())
            .collect();
        w.push_source(&chunk);
        pos = end;
        if i == 3 {
            w.extend_map(&TimeMap::new(anchors[half - 1..].iter().copied()));
        }
        take(w.pull());
    }
    take(w.finish(audio.len()));
    assert_eq!(out[0].len(), audio.len());
    assert!(out == whole.audio.channels, "streamed output differs");
}

#[test]
fn window_by_window_plans_continue_each_other() {
    let (audio, _) = click_track(117.0, 0.2, 16.0);
    let target = Target::new(120.0, vec![3.0, 11.0], 0.4);
    let beats = track_beats(&audio, 120.0);
    let first = plan_span(
        &beats,
        &target,
        &Span {
            start: (0.0, 0.0),
            out_end: 8.0,
            src_end: 8.0,
            pin_end: false,
        },
    );
    let last = *first.anchors().last().unwrap();
    assert!(last.out > 6.0 && last.out <= 8.0, "{last:?}");
    let second = plan_span(
        &beats,
        &target,
        &Span {
            start: (last.out, last.src),
            out_end: 16.0,
            src_end: 16.0,
            pin_end: true,
        },
    );
    assert_eq!(second.anchors()[0].out, last.out);
    assert_eq!(second.anchors().last().unwrap().out, 16.0);
    let mut w = Warper::new(RATE, 2);
    w.extend_map(&first);
    w.extend_map(&second);
    w.push_source(&audio.channels);
    let out = w.finish(audio.len());
    assert_eq!(out[0].len(), audio.len());
    let found = onsets(&Audio {
        sample_rate: RATE,
        channels: out,
    });
    for c in [3.0, 11.0] {
        assert!(offset(&found, c).abs() <= 0.01, "cut {c}");
    }
}

#[test]
fn degenerate_inputs_give_audio_of_the_right_length() {
    let (clicks, _) = click_track(117.0, 0.2, 4.0);
    let cases: Vec<(&str, Audio, Target)> = vec![
        (
            "silence",
            Audio::silence(RATE, 2, RATE as usize * 3),
            Target::new(120.0, vec![1.0], 1.0),
        ),
        (
            "empty",
            Audio::silence(RATE, 2, 0),
            Target::new(120.0, vec![1.0], 1.0),
        ),
        (
            "one sample",
            Audio::silence(RATE, 1, 1),
            Target::new(120.0, vec![0.0], 1.0),
        ),
        (
            "under a beat",
            click_track(120.0, 0.05, 0.3).0,
            Target::new(120.0, vec![0.1], 1.0),
        ),
        (
            "no channels",
            Audio {
                sample_rate: RATE,
                channels: vec![],
            },
            Target::new(120.0, vec![1.0], 1.0),
        ),
        ("no cuts", clicks.clone(), Target::new(120.0, vec![], 1.0)),
        (
            "cuts outside",
            clicks.clone(),
            Target::new(120.0, vec![-3.0, 4.0, 99.0, f64::NAN], 1.0),
        ),
        ("20 BPM", clicks.clone(), Target::new(20.0, vec![1.0], 1.0)),
        (
            "400 BPM",
            clicks.clone(),
            Target::new(400.0, vec![1.0], 1.0),
        ),
        ("0 BPM", clicks.clone(), Target::new(0.0, vec![1.0], 1.0)),
        (
            "NaN BPM",
            clicks.clone(),
            Target::new(f64::NAN, vec![1.0], 1.0),
        ),
        (
            "rate 0",
            Audio {
                sample_rate: 0,
                channels: vec![vec![0.1; 100]],
            },
            Target::new(120.0, vec![1.0], 1.0),
        ),
        (
            "8 kHz mono",
            Audio {
                sample_rate: 8_000,
                channels: vec![clicks.mono()[..32_000].to_vec()],
            },
            Target::new(120.0, vec![1.0], 1.0),
        ),
    ];
    for (name, audio, target) in cases {
        let out = align(&audio, &target);
        assert_eq!(out.channels.len(), audio.channels.len(), "{name}");
        assert_eq!(out.len(), audio.len(), "{name}");
        assert!(
            out.channels.iter().flatten().all(|v| v.is_finite()),
            "{name}"
        );
        if name == "silence" {
            assert!(out.peak() < 1e-6, "silence stays silent: {}", out.peak());
        }
    }
}

/// Feeds `mono` through a [`StreamAligner`] in MusicGen-sized pieces (one
/// decoder step, 20 ms). Returns the output and, per piece, how many
/// frames had come in and gone out.
fn stream_align(mono: &[f32], target: Target) -> (Vec<f32>, Vec<(usize, usize)>) {
    let mut a = StreamAligner::new(RATE, mono.len(), target);
    let mut out = Vec::new();
    let mut progress = Vec::new();
    for (i, piece) in mono.chunks(RATE as usize / 50).enumerate() {
        out.extend(a.push(piece));
        progress.push(((i + 1) * (RATE as usize / 50), out.len()));
    }
    out.extend(a.finish());
    (out, progress)
}

/// The onsets of `out`, after asserting that one lies within 10 ms of each
/// cut.
fn cuts_land(out: Vec<f32>, cuts: &[f64]) -> Vec<f64> {
    let found = onsets(&Audio {
        sample_rate: RATE,
        channels: vec![out],
    });
    for c in cuts {
        let o = offset(&found, *c);
        assert!(o.abs() <= 0.01, "cut {c}: nearest onset {o:+.4} s away");
    }
    found
}

/// How much was out once `secs` of music had come in.
fn out_after(progress: &[(usize, usize)], secs: f64) -> f64 {
    let at = (secs * f64::from(RATE)) as usize;
    progress
        .iter()
        .find(|(i, _)| *i >= at)
        .map_or(0.0, |(_, o)| *o as f64 / f64::from(RATE))
}

#[test]
fn aligned_while_it_arrives_the_clicks_land_on_the_grid_and_the_cuts() {
    let (audio, _) = click_track(117.0, 0.2, 30.0);
    let mono = audio.channels[0].clone();
    let cuts = vec![3.0, 7.5, 12.25, 21.0];
    let (out, progress) = stream_align(&mono, Target::new(120.0, cuts.clone(), 0.4));
    assert_eq!(out.len(), mono.len());
    // Heard while it is made: a few seconds behind the music, not at the end.
    let behind = 20.0 - out_after(&progress, 20.0);
    eprintln!("{behind:.2} s behind the music at 20 s");
    assert!(behind < 5.0, "{behind:.2} s behind at 20 s");
    let found = cuts_land(out, &cuts);
    let targets = grid_and_cuts(30.0, &cuts);
    let on = on_target(&found, &targets);
    eprintln!("{on} of {} onsets on a target", found.len());
    assert!(
        on as f64 >= 0.75 * found.len() as f64,
        "{on} of {} onsets on a target",
        found.len()
    );
}

#[test]
fn the_opening_is_heard_once_a_second_and_a_half_has_come() {
    let (audio, _) = click_track(117.0, 0.2, 12.0);
    let mono = audio.channels[0].clone();
    // First cut at 4 s: the opening (as made) may run to 3 s.
    let cuts = vec![4.0, 8.5];
    let (out, progress) = stream_align(&mono, Target::new(120.0, cuts.clone(), 0.4));
    assert_eq!(out.len(), mono.len());
    let heard = out_after(&progress, 1.5);
    eprintln!("{heard:.3} s out after 1.5 s in");
    // All of it but the stretcher's latency (about 0.1 s).
    assert!(heard >= 1.3, "{heard:.3} s out after 1.5 s in");
    // The opening is as made: its clicks where the music had them.
    for k in 0..2 {
        let t = 0.2 + f64::from(k) * 60.0 / 117.0;
        let i = (t * f64::from(RATE)) as usize;
        let peak_at = |x: &[f32]| {
            (i - 400..i + 400)
                .max_by(|&a, &b| x[a].abs().total_cmp(&x[b].abs()))
                .unwrap()
        };
        let moved = peak_at(&out).abs_diff(peak_at(&mono));
        assert!(moved <= 64, "click {k} moved {moved} frames");
    }
    // The cuts still land.
    cuts_land(out, &cuts);
}

#[test]
fn an_early_cut_keeps_the_opening_to_what_the_plan_can_still_move() {
    let (audio, _) = click_track(117.0, 0.2, 12.0);
    let mono = audio.channels[0].clone();
    // A cut at 1.2 s: the opening would have to end by 0.2 s, too short to
    // be worth it, so the beats decide from the start and the cut lands.
    let cuts = vec![1.2, 6.0];
    let (out, progress) = stream_align(&mono, Target::new(120.0, cuts.clone(), 0.4));
    assert_eq!(out_after(&progress, 1.5), 0.0);
    cuts_land(out, &cuts);
}

#[test]
fn music_without_a_pulse_still_streams_and_keeps_its_length() {
    let mut seed = 11;
    let mono: Vec<f32> = (0..30 * RATE as usize)
        .map(|_| 0.2 * lcg(&mut seed))
        .collect();
    let (out, progress) = stream_align(&mono, Target::new(120.0, vec![4.0, 13.0], 0.8));
    assert_eq!(out.len(), mono.len());
    let behind = 20.0 - out_after(&progress, 20.0);
    eprintln!("{behind:.2} s behind the music at 20 s");
    assert!(behind < 8.0, "{behind:.2} s behind at 20 s");
    assert!(out.iter().all(|x| x.is_finite()));
}

#[test]
fn streamed_at_strength_zero_is_the_input_bit_for_bit() {
    let (audio, _) = click_track(117.0, 0.2, 6.0);
    let mono = audio.channels[0].clone();
    let (out, _) = stream_align(&mono, Target::new(120.0, vec![2.0], 0.0));
    assert!(out == mono);
}
