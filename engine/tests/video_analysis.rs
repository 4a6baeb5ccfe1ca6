//! Video ingest and analysis on synthetic videos with known cuts.

use std::path::Path;
use std::sync::atomic::AtomicBool;

use vidmusician_engine::analysis::{StatsEncoder, analyze};
use vidmusician_engine::video::synth::{SynthSpec, write_video};
use vidmusician_engine::video::{self, Fit, SampleOptions};

fn no_cancel() -> AtomicBool {
    AtomicBool::new(false)
}

/// Precision and recall of detected against true cut times, matched one to
/// one within `tol` seconds.
fn precision_recall(found: &[f64], truth: &[f64], tol: f64) -> (f64, f64) {
    let mut used = vec![false; truth.len()];
    let mut tp = 0;
    for &f in found {
        if let Some(i) = (0..truth.len()).find(|&i| !used[i] && (truth[i] - f).abs() <= tol) {
            used[i] = true;
            tp += 1;
        }
    }
    let p = if found.is_empty() {
        1.0
    } else {
        tp as f64 / found.len() as f64
    };
    let r = if truth.is_empty() {
        1.0
    } else {
        tp as f64 / truth.len() as f64
    };
    (p, r)
}

fn analyse(path: &Path) -> vidmusician_engine::analysis::Analysis {
    analyze(
        path,
        &mut StatsEncoder::default(),
        &no_cancel(),
        &mut |_| {},
    )
    .unwrap()
}

#[test]
fn cut_detection_precision_and_recall() {
    let dir = tempfile::tempdir().unwrap();
    // Irregular cut spacing, several frame rates, including 30 fps where
    // the video's frames do not coincide with the 25 fps analysis grid.
    let cases = [
        (
            25,
            vec![
                1.0, 2.2, 2.9, 4.4, 5.0, 6.76, 8.3, 9.1, 11.0, 12.5, 13.2, 14.8,
            ],
        ),
        (
            30,
            vec![0.8, 1.9, 3.5, 4.1, 5.9, 7.3, 7.9, 9.6, 11.1, 12.0, 13.7],
        ),
        (
            24,
            vec![1.5, 3.0, 3.8, 6.1, 6.7, 8.0, 10.4, 11.2, 12.9, 14.0],
        ),
    ];
    let (mut all_p, mut all_r, mut n) = (0.0, 0.0, 0.0);
    for (i, (fps, cuts)) in cases.into_iter().enumerate() {
        let path = dir.path().join(format!("cuts{i}.mp4"));
        let mut spec = SynthSpec::new(320, 240, fps, 16.0, cuts);
        spec.seed = 7 + i as u64;
        write_video(&path, &spec).unwrap();
        let a = analyse(&path);
        let truth = spec.cut_frame_times();
        let found: Vec<f64> = a.cuts.iter().map(|c| c.time).collect();
        // Within ±1 analysis frame (40 ms at 25 fps).
        let (p, r) = precision_recall(&found, &truth, 1.0 / 25.0 + 1e-6);
        eprintln!(
            "{fps} fps: precision {p:.3} recall {r:.3}\n  truth {truth:?}\n  found {found:?}"
        );
        all_p += p;
        all_r += r;
        n += 1.0;
    }
    assert!(
        all_p / n >= 0.95 && all_r / n >= 0.95,
        "precision {} recall {}",
        all_p / n,
        all_r / n
    );
}

#[test]
fn sampling_is_exact_and_probe_reports_the_stream() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v.mp4");
    write_video(&path, &SynthSpec::new(160, 120, 30, 2.0, vec![1.0])).unwrap();
    let info = video::probe(&path).unwrap();
    assert_eq!((info.width, info.height), (160, 120));
    assert!((info.frame_rate - 30.0).abs() < 0.01, "{info:?}");
    assert!((info.duration - 2.0).abs() < 0.05, "{}", info.duration);
    let opts = SampleOptions {
        rate: 25.0,
        size: 64,
        fit: Fit::CenterCrop,
        until: None,
    };
    let mut times = Vec::new();
    let (_, n) = video::sample_frames(&path, &opts, &no_cancel(), |f| {
        assert_eq!(f.rgb.len(), 64 * 64 * 3);
        times.push(f.time);
        Ok(())
    })
    .unwrap();
    assert_eq!(n, 50);
    for (k, t) in times.iter().enumerate() {
        assert!((t - k as f64 / 25.0).abs() < 1e-12);
    }
}

#[test]
fn variable_frame_rate_is_sampled_by_timestamp() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vfr.mp4");
    let mut spec = SynthSpec::new(320, 240, 30, 8.0, vec![1.1, 2.5, 3.7, 5.2, 6.6]);
    spec.vfr = true;
    write_video(&path, &spec).unwrap();
    let a = analyse(&path);
    let truth = spec.cut_frame_times();
    let found: Vec<f64> = a.cuts.iter().map(|c| c.time).collect();
    let (p, r) = precision_recall(&found, &truth, 1.0 / 25.0 + 1e-6);
    assert!(p >= 0.95 && r >= 0.95, "truth {truth:?} found {found:?}");
    assert!((a.duration - 8.0).abs() < 0.05, "{}", a.duration);
}

#[test]
fn frames_can_be_clip_normalised() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v.mp4");
    write_video(&path, &SynthSpec::new(160, 120, 25, 0.2, vec![])).unwrap();
    let opts = SampleOptions {
        rate: 25.0,
        size: 32,
        fit: Fit::CenterCrop,
        until: None,
    };
    let mut first = None;
    video::sample_frames(&path, &opts, &no_cancel(), |f| {
        first.get_or_insert_with(|| f.clone());
        Ok(())
    })
    .unwrap();
    let f = first.unwrap();
    let x = f.clip_normalised();
    assert_eq!(x.len(), 3 * 32 * 32);
    // Planar channels, each pixel (v/255 − mean) / std of its channel.
    let pixels = 32 * 32;
    for (c, (m, s)) in video::CLIP_MEAN.iter().zip(video::CLIP_STD).enumerate() {
        for i in 0..pixels {
            let want = (f32::from(f.rgb[i * 3 + c]) / 255.0 - m) / s;
            let got = x[c * pixels + i];
            assert!(
                (got - want).abs() < 1e-6,
                "channel {c}, pixel {i}: {got} ≠ {want}"
            );
        }
    }
    // The frame is not flat, so a mix-up of pixels or channels shows.
    let distinct: std::collections::BTreeSet<u8> = f.rgb.iter().copied().collect();
    assert!(distinct.len() > 8, "a flat frame proves little");
}

#[test]
fn pictures_found_by_seeking_are_those_a_full_pass_sees() {
    let dir = tempfile::tempdir().unwrap();
    for vfr in [false, true] {
        let path = dir.path().join(format!("seek-{vfr}.mp4"));
        // Keyframes every 2 s: most times are reached from an earlier one.
        let mut spec = SynthSpec::new(160, 120, 30, 8.0, vec![1.0, 2.0, 3.3, 5.05, 7.0]);
        spec.vfr = vfr;
        write_video(&path, &spec).unwrap();
        let opts = SampleOptions {
            rate: 10.0,
            size: 48,
            fit: Fit::CenterCrop,
            until: None,
        };
        let mut all = Vec::new();
        video::sample_frames(&path, &opts, &no_cancel(), |f| {
            all.push(f.rgb.clone());
            Ok(())
        })
        .unwrap();
        let times = [0.0, 0.4, 1.9, 2.0, 3.3, 5.0, 5.1, 7.9];
        let found = video::frames_at(&path, &times, &opts, &no_cancel()).unwrap();
        assert_eq!(found.len(), times.len());
        for (f, &t) in found.iter().zip(&times) {
            let k = (t * 10.0f64).round() as usize;
            assert_eq!(f.time, t);
            assert!(f.rgb == all[k], "vfr {vfr}: the picture at {t} s differs");
        }
        // Not all one picture: the seeks landed in different shots.
        assert_ne!(found[0].rgb, found[7].rgb);
    }
    // Times out of order are refused.
    let path = dir.path().join("seek-false.mp4");
    let opts = SampleOptions {
        rate: 1.0,
        size: 48,
        fit: Fit::CenterCrop,
        until: None,
    };
    assert!(video::frames_at(&path, &[2.0, 1.0], &opts, &no_cancel()).is_err());
}
