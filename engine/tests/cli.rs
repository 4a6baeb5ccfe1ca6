//! The `vidmusician` command line, end to end, on videos the tests make.

mod common;

use common::tiny_models;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use vidmusician_engine::audio::{Audio, read_wav, write_wav};
use vidmusician_engine::video::synth::{SynthSpec, ToneCodec, write_video};

fn bin() -> Command {
    test_env(Command::new(env!("CARGO_BIN_EXE_vidmusician")))
}

/// `vidmusician` run by a shell that first sets `umask`.
#[cfg(unix)]
fn bin_under_umask(umask: &str) -> Command {
    let mut c = Command::new("sh");
    c.args(["-c", "umask \"$0\" && exec \"$@\"", umask])
        .arg(env!("CARGO_BIN_EXE_vidmusician"));
    test_env(c)
}

fn test_env(mut c: Command) -> Command {
    // Keep the user's cache out of tests.
    c.env(
        "VIDMUSICIAN_CACHE",
        std::env::temp_dir().join("vidmusician-test-cache"),
    );
    // ... and the user's models: only what a test names is found.
    let none = std::env::temp_dir().join("vidmusician-test-no-models");
    c.env("VIDMUSICIAN_MODELS", &none)
        .env("HF_HOME", &none)
        .env_remove("HF_HUB_CACHE")
        .env_remove("XDG_CACHE_HOME");
    c
}

fn tiny_model() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/musicgen-tiny")
}

fn run(args: &[&str]) -> Output {
    bin().args(args).output().unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `compose VIDEO [-o WAV] --mux OUT --audio MODE --no-cache EXTRA…`.
fn compose_mux(video: &Path, wav: Option<&Path>, out: &Path, mode: &str, extra: &[&str]) -> Output {
    let mut args = vec!["compose", s(video)];
    if let Some(w) = wav {
        args.extend(["-o", s(w)]);
    }
    args.extend(["--mux", s(out), "--audio", mode, "--no-cache"]);
    args.extend(extra);
    run(&args)
}

fn make_video(dir: &Path, name: &str, spec: &SynthSpec) -> PathBuf {
    let p = dir.join(name);
    write_video(&p, spec).unwrap();
    p
}

/// Fails (exit 1, not a panic's 101) with one line on stderr that contains
/// every one of `needles`.
fn assert_clean_failure(out: &Output, needles: &[&str]) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {err}");
    assert!(!err.contains("panicked"), "panic: {err}");
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(lines.len(), 1, "stderr: {err}");
    for n in needles {
        assert!(
            lines[0].to_lowercase().contains(&n.to_lowercase()),
            "{n:?} not in {}",
            lines[0]
        );
    }
}

#[test]
fn compose_writes_wav_and_muxed_copy() {
    let dir = tempfile::tempdir().unwrap();
    let v = make_video(
        dir.path(),
        "in.mp4",
        &SynthSpec::new(320, 240, 30, 6.0, vec![1.5, 3.0, 4.2]),
    );
    let wav = dir.path().join("out.wav");
    let muxed = dir.path().join("out.mp4");
    let out = run(&[
        "compose",
        s(&v),
        "-o",
        s(&wav),
        "--mux",
        s(&muxed),
        "--seed",
        "4",
        "--no-cache",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("engine: sketch"),
        "auto must say which engine it picked: {err}"
    );
    let a = read_wav(&wav).unwrap();
    assert_eq!(a.sample_rate, 48_000);
    assert!((a.duration() - 6.0).abs() <= 0.01);

    // The copy: the same video packets, plus an AAC track as long as the video.
    let src = packets(&v);
    let dst = packets(&muxed);
    assert_eq!(src.video, dst.video, "video stream was not copied as is");
    assert!(
        dst.audio_codec.as_deref() == Some("aac"),
        "{:?}",
        dst.audio_codec
    );
    assert!(
        (dst.audio_seconds - 6.0).abs() < 0.1,
        "audio {} s",
        dst.audio_seconds
    );
}

struct Packets {
    video: Vec<(i64, usize)>,
    audio_codec: Option<String>,
    audio_seconds: f64,
}

fn packets(path: &Path) -> Packets {
    use ffmpeg_next as ff;
    ff::init().unwrap();
    let mut ictx = ff::format::input(&path).unwrap();
    let vi = ictx.streams().best(ff::media::Type::Video).unwrap().index();
    let (ai, atb, codec) = match ictx.streams().best(ff::media::Type::Audio) {
        Some(a) => (
            Some(a.index()),
            f64::from(a.time_base()),
            Some(a.parameters().id().name().to_string()),
        ),
        None => (None, 0.0, None),
    };
    let vtb = f64::from(ictx.stream(vi).unwrap().time_base());
    let mut video = Vec::new();
    let mut audio_end = 0.0f64;
    for (st, p) in ictx.packets() {
        if st.index() == vi {
            // Size and presentation time in seconds (as microseconds).
            video.push((
                (p.pts().unwrap_or(0) as f64 * vtb * 1e6).round() as i64,
                p.size(),
            ));
        } else if Some(st.index()) == ai {
            audio_end = audio_end.max((p.pts().unwrap_or(0) + p.duration()) as f64 * atb);
        }
    }
    Packets {
        video,
        audio_codec: codec,
        audio_seconds: audio_end,
    }
}

#[test]
fn analyze_prints_json_and_plots() {
    let dir = tempfile::tempdir().unwrap();
    let v = make_video(
        dir.path(),
        "in.mp4",
        &SynthSpec::new(320, 240, 25, 5.0, vec![1.0, 2.6, 3.8]),
    );
    let png = dir.path().join("curve.png");
    let out = run(&["analyze", s(&v), "--json", "--plot", s(&png)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let cuts: Vec<f64> = j["cuts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["time"].as_f64().unwrap())
        .collect();
    assert_eq!(cuts.len(), 3, "{cuts:?}");
    for (c, t) in cuts.iter().zip([1.0, 2.6, 3.8]) {
        assert!((c - t).abs() <= 0.04 + 1e-9, "{cuts:?}");
    }
    assert_eq!(j["rhythm_50hz"].as_array().unwrap().len(), 250);
    assert_eq!(j["rhythm_25fps"][0].as_f64().unwrap(), 1.0);
    let png_bytes = std::fs::read(&png).unwrap();
    assert_eq!(&png_bytes[..8], b"\x89PNG\r\n\x1a\n");
}

#[test]
fn eval_scores_music_against_cuts() {
    let dir = tempfile::tempdir().unwrap();
    let v = make_video(
        dir.path(),
        "in.mp4",
        &SynthSpec::new(320, 240, 25, 6.0, vec![1.2, 2.7, 4.5]),
    );
    let wav = dir.path().join("m.wav");
    assert!(
        run(&["compose", s(&v), "-o", s(&wav), "--no-cache"])
            .status
            .success()
    );
    let out = run(&["eval", s(&wav), "--video", s(&v), "--reference", s(&wav)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(j["cut_hit_rate"].as_f64().unwrap() >= 0.9, "{j}");
    // Music against itself covers and hits every bin.
    assert_eq!(j["beat_coverage"].as_f64().unwrap(), 1.0);
    assert_eq!(j["beat_hit"].as_f64().unwrap(), 1.0);
}

#[test]
fn bad_inputs_get_specific_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let wav_out = d.join("out.wav");
    let compose = |input: &Path| run(&["compose", s(input), "-o", s(&wav_out), "--no-cache"]);

    assert_clean_failure(
        &compose(&d.join("missing.mp4")),
        &["missing.mp4", "no such file"],
    );

    let empty = d.join("empty.mp4");
    std::fs::write(&empty, b"").unwrap();
    assert_clean_failure(&compose(&empty), &["empty.mp4", "empty"]);

    let text = d.join("notes.mp4");
    std::fs::write(&text, "these are my notes, not a video\n".repeat(50)).unwrap();
    assert_clean_failure(&compose(&text), &["notes.mp4", "not a readable video"]);

    let good = make_video(d, "good.mp4", &SynthSpec::new(320, 240, 25, 4.0, vec![2.0]));
    let bytes = std::fs::read(&good).unwrap();
    let truncated = d.join("truncated.mp4");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    assert_clean_failure(&compose(&truncated), &["truncated.mp4", "truncated"]);

    let audio_only = d.join("voice.wav");
    write_wav(&audio_only, &Audio::silence(48_000, 2, 48_000)).unwrap();
    assert_clean_failure(&compose(&audio_only), &["voice.wav", "no video stream"]);

    let still = d.join("photo.ppm");
    let mut ppm = b"P6\n64 48\n255\n".to_vec();
    ppm.extend((0..64 * 48 * 3).map(|i| (i % 251) as u8));
    std::fs::write(&still, ppm).unwrap();
    assert_clean_failure(&compose(&still), &["photo.ppm", "still image"]);

    let mut tiny = SynthSpec::new(1, 1, 25, 1.0, vec![]);
    tiny.codec = Some("ffv1".into());
    let tiny = make_video(d, "tiny.mkv", &tiny);
    assert_clean_failure(&compose(&tiny), &["tiny.mkv", "1×1"]);

    let zero = make_video(d, "zero.mp4", &SynthSpec::new(320, 240, 25, 0.0, vec![]));
    assert_clean_failure(&compose(&zero), &["zero.mp4", "no frames"]);

    // Unwritable outputs fail before any work, and name the path.
    let nodir = d.join("no-such-folder").join("out.wav");
    assert_clean_failure(
        &run(&["compose", s(&good), "-o", s(&nodir)]),
        &["out.wav", "does not exist"],
    );
    assert_clean_failure(&run(&["compose", s(&good), "-o", s(d)]), &["directory"]);
    let under_file = good.join("out.wav");
    assert_clean_failure(
        &run(&["compose", s(&good), "-o", s(&under_file)]),
        &["out.wav"],
    );
    assert!(!wav_out.exists(), "a failed run left an output file");
}

#[test]
fn a_failed_run_keeps_the_existing_output() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("keep.wav");
    std::fs::write(&out, b"precious").unwrap();
    let missing = dir.path().join("missing.mp4");
    assert_eq!(
        run(&["compose", s(&missing), "-o", s(&out)]).status.code(),
        Some(1)
    );
    assert_eq!(std::fs::read(&out).unwrap(), b"precious");
}

fn analyze_json(video: &Path) -> serde_json::Value {
    let out = run(&["analyze", s(video), "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn rotated_and_odd_sized_videos_are_analysed() {
    let dir = tempfile::tempdir().unwrap();
    let mut rot = SynthSpec::new(320, 240, 25, 3.0, vec![1.4]);
    rot.rotation = 90;
    let j = analyze_json(&make_video(dir.path(), "rot.mp4", &rot));
    assert_eq!(j["video"]["rotation"].as_u64(), Some(90));
    assert_eq!(j["cuts"].as_array().unwrap().len(), 1);

    let mut odd = SynthSpec::new(333, 199, 30, 3.0, vec![1.1, 2.2]);
    odd.codec = Some("ffv1".into());
    let j = analyze_json(&make_video(dir.path(), "odd.mkv", &odd));
    assert_eq!(j["video"]["width"].as_u64(), Some(333));
    assert_eq!(j["cuts"].as_array().unwrap().len(), 2);
}

#[test]
fn compose_text_engine_writes_music_from_the_prompt_alone() {
    let dir = tempfile::tempdir().unwrap();
    let audio = compose_text(
        dir.path(),
        "text.wav",
        &[
            "--prompt",
            "calm piano",
            "--duration",
            "1.5",
            "--sample-rate",
            "44100",
        ],
    );
    assert_eq!(audio.sample_rate, 44_100);
    assert!(
        (audio.len() as i64 - 66_150).abs() <= 2,
        "1.5 s at 44.1 kHz, got {} frames",
        audio.len()
    );
    assert!(audio.channels.iter().flatten().all(|x| x.is_finite()));
    assert!(audio.peak() > 0.01, "not silent");

    // With a video and no --duration, the music lasts as long as the video.
    let v = make_video(
        dir.path(),
        "in.mp4",
        &SynthSpec::new(160, 120, 25, 2.0, vec![1.0]),
    );
    let audio = compose_text(dir.path(), "video.wav", &[s(&v)]);
    assert!(
        (audio.duration() - 2.0).abs() < 0.01,
        "{}",
        audio.duration()
    );

    // 8-bit decoder weights.
    let audio = compose_text(
        dir.path(),
        "q8.wav",
        &[
            "--prompt",
            "calm piano",
            "--duration",
            "1",
            "--precision",
            "q8",
        ],
    );
    assert!((audio.duration() - 1.0).abs() < 0.01);
    assert!(audio.channels.iter().flatten().all(|x| x.is_finite()));
}

/// `compose --engine text` on the tiny checkpoint with `args`, into `dir/name`;
/// asserts success and returns the music.
fn compose_text(dir: &Path, name: &str, args: &[&str]) -> Audio {
    let wav = dir.join(name);
    let model = tiny_model();
    let mut all = vec!["compose", "--engine", "text", "--model-dir", s(&model)];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--no-cache", "-o", s(&wav)]);
    let out = run(&all);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    read_wav(&wav).unwrap()
}

/// `--device cuda` where this build has no CUDA is refused before any work,
/// naming what is missing; `--device auto` makes the music on the CPU and
/// says so; a device that is no device is refused by the parser.
#[test]
fn a_device_is_taken_or_refused_with_its_reason() {
    if vidmusician_engine::neural::device::cuda_built()
        || vidmusician_engine::neural::helper::find().is_some()
    {
        eprintln!("skipped: a CUDA build (the GPU check runs it with a device)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let wav = dir.path().join("x.wav");
    let model = tiny_model();
    let base = ["compose", "--engine", "text", "--model-dir", s(&model)];
    let with = |more: &[&str]| {
        let mut all = base.to_vec();
        all.extend_from_slice(&["--duration", "1", "--no-cache", "-o", s(&wav)]);
        all.extend_from_slice(more);
        run(&all)
    };
    let out = with(&["--device", "cuda"]);
    assert_clean_failure(
        &out,
        &[
            "device cuda:0",
            "no CUDA support",
            "cargo xtask gpu-helper",
            "--device cpu",
        ],
    );
    assert!(!wav.exists(), "nothing written for a refused device");
    let out = with(&["--device", "tpu"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("auto, cpu, cuda or cuda:N"),
        "{err}"
    );
    let out = with(&["--device", "auto"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("device: running on the CPU (auto: ") && err.contains("no CUDA support"),
        "{err}"
    );
    assert!(wav.exists());
}

#[test]
fn text_engine_without_a_model_says_how_to_get_one() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(&[
        "compose",
        "--engine",
        "text",
        "--prompt",
        "x",
        "--duration",
        "2",
        "-o",
        s(&dir.path().join("x.wav")),
    ]);
    assert_clean_failure(
        &out,
        &[
            "no facebook/musicgen-small model",
            "vidmusician models pull",
            "--model-dir",
        ],
    );
    assert!(!dir.path().join("x.wav").exists());

    // Without a video or a duration there is nothing to size the music by.
    let out = run(&[
        "compose",
        "--prompt",
        "x",
        "-o",
        s(&dir.path().join("y.wav")),
    ]);
    assert_clean_failure(&out, &["--duration"]);
}

#[test]
fn models_list_shows_installed_models() {
    let out = run(&["models", "list", "--model-dir", s(&tiny_model())]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        text.contains("musicgen-tiny") && text.contains("ready"),
        "{text}"
    );
    let empty = tempfile::tempdir().unwrap();
    let out = run(&["models", "list", "--model-dir", s(empty.path())]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("models pull facebook/musicgen-small"),
        "{text}"
    );
}

/// The error line of a failed run (asserting there is exactly one).
fn error_line(out: &Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(lines.len(), 1, "stderr: {err}");
    lines[0].to_string()
}

/// No part of an error line (between ": ") is said twice.
fn assert_no_repeats(line: &str) {
    let parts: Vec<&str> = line.split(": ").map(str::trim).collect();
    for (i, p) in parts.iter().enumerate() {
        assert!(!parts[i + 1..].contains(p), "{p:?} is repeated in {line:?}");
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn assert_success(out: &Output) {
    assert!(out.status.success(), "{}", stderr(out));
}

#[test]
fn an_output_that_is_an_input_is_refused_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let v = make_video(d, "clip.mp4", &SynthSpec::new(160, 120, 25, 2.0, vec![1.0]));
    let original = std::fs::read(&v).unwrap();
    let unchanged = || {
        assert_eq!(
            std::fs::read(&v).unwrap(),
            original,
            "the input was damaged"
        )
    };

    // The very same name, for the WAV and for the muxed copy.
    let out = run(&["compose", s(&v), "-o", s(&v), "--no-cache"]);
    assert_clean_failure(&out, &["clip.mp4", "same file", "input video"]);
    unchanged();
    let out = run(&["compose", s(&v), "--mux", s(&v), "--no-cache"]);
    assert_clean_failure(&out, &["clip.mp4", "same file", "input video"]);
    unchanged();
    // Through another spelling of the path.
    let dotted = d.join(".").join("clip.mp4");
    let out = run(&["compose", s(&v), "--mux", s(&dotted), "--no-cache"]);
    assert_clean_failure(&out, &["same file"]);
    unchanged();
    // Through a symbolic link and a hard link, under names that pass the
    // format checks.
    let sym = d.join("music.wav");
    std::os::unix::fs::symlink(&v, &sym).unwrap();
    let out = run(&["compose", s(&v), "-o", s(&sym), "--no-cache"]);
    assert_clean_failure(&out, &["music.wav", "same file", "clip.mp4"]);
    let hard = d.join("scored.mp4");
    std::fs::hard_link(&v, &hard).unwrap();
    let out = run(&["compose", s(&v), "--mux", s(&hard), "--no-cache"]);
    assert_clean_failure(&out, &["scored.mp4", "same file", "clip.mp4"]);
    unchanged();
    assert!(
        std::fs::symlink_metadata(&sym)
            .unwrap()
            .file_type()
            .is_symlink()
    );

    // -o and --mux naming one file (a link from one to the other).
    let wav = d.join("out.wav");
    std::fs::write(&wav, b"old").unwrap();
    let mux_link = d.join("out.mp4");
    std::os::unix::fs::symlink(&wav, &mux_link).unwrap();
    let out = run(&[
        "compose",
        s(&v),
        "-o",
        s(&wav),
        "--mux",
        s(&mux_link),
        "--no-cache",
    ]);
    assert_clean_failure(&out, &["out.mp4", "same file", "-o output"]);
    assert_eq!(std::fs::read(&wav).unwrap(), b"old");

    // The plot of `analyze`.
    let png = d.join("plot.png");
    std::os::unix::fs::symlink(&v, &png).unwrap();
    let out = run(&["analyze", s(&v), "--plot", s(&png)]);
    assert_clean_failure(&out, &["plot.png", "same file"]);
    unchanged();
    // No analysis ran: the refusals print nothing else.
    for args in [
        vec!["compose", s(&v), "-o", s(&v)],
        vec!["analyze", s(&v), "--plot", s(&png)],
    ] {
        let out = run(&args);
        assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));
    }
}

/// Amplitude of the sine at `hz` in `x` (Goertzel over the whole signal).
fn tone_amplitude(x: &[f32], rate: u32, hz: f64) -> f64 {
    let w = std::f64::consts::TAU * hz / f64::from(rate);
    let (mut re, mut im) = (0.0, 0.0);
    for (n, &v) in x.iter().enumerate() {
        re += f64::from(v) * (w * n as f64).cos();
        im -= f64::from(v) * (w * n as f64).sin();
    }
    2.0 * (re * re + im * im).sqrt() / x.len().max(1) as f64
}

/// Least-squares weight of `part` in `mix`: 1 when `mix` holds `part` as it
/// is, 0 when it does not hold it at all.
fn weight_of(mix: &[f32], part: &[f32]) -> f64 {
    let n = mix.len().min(part.len());
    let dot: f64 = (0..n).map(|i| f64::from(mix[i]) * f64::from(part[i])).sum();
    let pp: f64 = (0..n).map(|i| f64::from(part[i]).powi(2)).sum();
    dot / pp.max(1e-12)
}

fn sound_of(path: &Path, nth: usize) -> Option<Vec<f32>> {
    vidmusician_engine::video::read_sound(path, Some(nth), 48_000)
        .unwrap()
        .map(|a| a.mono())
}

#[test]
fn mux_keeps_the_videos_sound_beneath_the_music() {
    const HZ: f64 = 1234.5;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut spec = SynthSpec::new(160, 120, 25, 4.0, vec![1.0, 2.5]);
    spec.tone = Some(HZ as f32);
    let v = make_video(d, "dialogue.mp4", &spec);
    let original = sound_of(&v, 0).unwrap();
    assert!(tone_amplitude(&original, 48_000, HZ) > 0.2);

    let wav = d.join("music.wav");
    let mix = d.join("mix.mp4");
    let out = run(&[
        "compose",
        s(&v),
        "-o",
        s(&wav),
        "--mux",
        s(&mix),
        "--seed",
        "3",
        "--no-cache",
    ]);
    assert_success(&out);
    assert!(
        stderr(&out).contains("video's own sound") && stderr(&out).contains("-12.0 dB"),
        "{}",
        stderr(&out)
    );
    let music = read_wav(&wav).unwrap().mono();
    let m = sound_of(&mix, 0).unwrap();
    assert!(sound_of(&mix, 1).is_none(), "a mix is one audio stream");
    // The original sine is still there at its level, and the music is mixed
    // in at −12 dB (a weight of 0.25).
    let tone = tone_amplitude(&m, 48_000, HZ);
    assert!((0.2..0.3).contains(&tone), "tone amplitude {tone}");
    let w = weight_of(&m, &music);
    assert!((0.18..0.32).contains(&w), "music weight {w}");
    assert_eq!(
        packets(&v).video,
        packets(&mix).video,
        "video not copied as is"
    );

    // A quieter mix with --music-gain.
    let quiet = d.join("quiet.mp4");
    let out = run(&[
        "compose",
        s(&v),
        "--mux",
        s(&quiet),
        "--seed",
        "3",
        "--no-cache",
        "--music-gain",
        "-24",
    ]);
    assert_success(&out);
    let w = weight_of(&sound_of(&quiet, 0).unwrap(), &music);
    assert!((0.04..0.09).contains(&w), "music weight at -24 dB: {w}");

    // replace: the music alone.
    let rep = d.join("replace.mp4");
    let out = compose_mux(&v, None, &rep, "replace", &["--seed", "3"]);
    assert_success(&out);
    let r = sound_of(&rep, 0).unwrap();
    assert!(
        tone_amplitude(&r, 48_000, HZ) < 0.05,
        "the original sound is still there"
    );
    let w = weight_of(&r, &music);
    assert!((0.85..1.15).contains(&w), "music weight {w}");

    // tracks: the original first, then the music.
    let tr = d.join("tracks.mp4");
    let out = compose_mux(&v, None, &tr, "tracks", &["--seed", "3"]);
    assert_success(&out);
    assert!(
        stderr(&out).contains("two audio streams"),
        "{}",
        stderr(&out)
    );
    let first = sound_of(&tr, 0).unwrap();
    let second = sound_of(&tr, 1).unwrap();
    assert!(sound_of(&tr, 2).is_none());
    assert!(tone_amplitude(&first, 48_000, HZ) > 0.2);
    assert!(weight_of(&first, &music).abs() < 0.1);
    assert!(tone_amplitude(&second, 48_000, HZ) < 0.05);
    assert!((0.85..1.15).contains(&weight_of(&second, &music)));

    // A video without sound gets the music alone, and is told so.
    let silent = make_video(
        d,
        "silent.mp4",
        &SynthSpec::new(160, 120, 25, 4.0, vec![1.0, 2.5]),
    );
    let only = d.join("only.mp4");
    let out = run(&[
        "compose",
        s(&silent),
        "--mux",
        s(&only),
        "--seed",
        "3",
        "--no-cache",
    ]);
    assert_success(&out);
    assert!(stderr(&out).contains("has none"), "{}", stderr(&out));
    // One sound stream, and it is the music as it is.
    let o = sound_of(&only, 0).expect("the copy has no sound stream");
    assert!(sound_of(&only, 1).is_none());
    let w = weight_of(&o, &music);
    assert!((0.85..1.15).contains(&w), "music weight {w}");

    // Settings for the sound without --mux, or that do not apply, are refused.
    let out = run(&["compose", s(&v), "-o", s(&wav), "--audio", "tracks"]);
    assert_clean_failure(&out, &["--mux"]);
    let out = run(&[
        "compose",
        s(&v),
        "--mux",
        s(&rep),
        "--audio",
        "replace",
        "--music-gain",
        "-6",
    ]);
    assert_clean_failure(&out, &["--music-gain"]);
}

#[test]
fn a_loud_mix_is_limited_not_clipped() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut spec = SynthSpec::new(160, 120, 25, 3.0, vec![1.0, 2.0]);
    spec.tone = Some(440.0);
    let v = make_video(d, "loud.mp4", &spec);
    let mix = d.join("mix.mp4");
    // Music at full level over a −12 dBFS sine sums past full scale.
    let out = run(&[
        "compose",
        s(&v),
        "--mux",
        s(&mix),
        "--music-gain",
        "+6",
        "--no-cache",
    ]);
    assert_success(&out);
    assert!(stderr(&out).contains("limited"), "{}", stderr(&out));
    let a = vidmusician_engine::video::read_sound(&mix, None, 48_000)
        .unwrap()
        .unwrap();
    // −1 dBFS, and what the AAC coding adds on top.
    assert!(a.peak() < 1.0, "peak {}", a.peak());
}

#[cfg(unix)]
#[test]
fn outputs_get_the_mode_of_a_new_file() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let v = make_video(d, "in.mp4", &SynthSpec::new(160, 120, 25, 2.0, vec![1.0]));
    for (umask, mode) in [("022", 0o644), ("002", 0o664), ("077", 0o600)] {
        let wav = d.join(format!("m{umask}.wav"));
        let mux = d.join(format!("m{umask}.mp4"));
        let png = d.join(format!("p{umask}.png"));
        let synth = d.join(format!("s{umask}.mp4"));
        let under_umask = |args: &[&str]| {
            assert_success(&bin_under_umask(umask).args(args).output().unwrap());
        };
        under_umask(&[
            "compose",
            s(&v),
            "-o",
            s(&wav),
            "--mux",
            s(&mux),
            "--no-cache",
        ]);
        under_umask(&["analyze", s(&v), "--plot", s(&png)]);
        under_umask(&[
            "synth-video",
            s(&synth),
            "--duration",
            "1",
            "--width",
            "64",
            "--height",
            "64",
        ]);
        for p in [&wav, &mux, &png, &synth] {
            let got = std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(got, mode, "{} under umask {umask}: {got:o}", p.display());
        }
    }
}

#[test]
fn a_range_reports_scores_and_places_only_its_own_cuts() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let v = make_video(
        d,
        "in.mp4",
        &SynthSpec::new(320, 240, 25, 8.0, vec![1.0, 2.0, 3.0, 5.2]),
    );
    // 4–7 s holds one cut (5.2 s), 6–8 s none.
    let wav = d.join("range.wav");
    let mux = d.join("range.mp4");
    let out = compose_mux(
        &v,
        Some(&wav),
        &mux,
        "replace",
        &["--start", "4", "--end", "7"],
    );
    assert_success(&out);
    assert!(stderr(&out).contains(", 1 cut,"), "{}", stderr(&out));
    let out = run(&[
        "compose",
        s(&v),
        "-o",
        s(&d.join("none.wav")),
        "--start",
        "6",
        "--end",
        "8",
        "--no-cache",
    ]);
    assert_success(&out);
    assert!(stderr(&out).contains(", no cuts,"), "{}", stderr(&out));

    // eval of the range's music against the range's cuts, on the music's
    // clock: the cut at 5.2 s is at 1.2 s of the music, and it is hit.
    let out = run(&[
        "eval",
        s(&wav),
        "--video",
        s(&v),
        "--start",
        "4",
        "--end",
        "7",
    ]);
    assert_success(&out);
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["cuts"].as_u64(), Some(1), "{j}");
    assert!(j["cut_hit_rate"].as_f64().unwrap() >= 0.99, "{j}");
    // Without the range, eval counts the other cuts too.
    let out = run(&["eval", s(&wav), "--video", s(&v)]);
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["cuts"].as_u64(), Some(4), "{j}");
    // A range with no cuts has no hit rate (not 100%).
    let out = run(&["eval", s(&wav), "--video", s(&v), "--start", "6"]);
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["cuts"].as_u64(), Some(0), "{j}");
    assert!(j["cut_hit_rate"].is_null(), "{j}");
    assert_clean_failure(&run(&["eval", s(&wav), "--start", "4"]), &["--video"]);

    // The muxed copy has the music where the range is: silent before 4 s.
    let a = vidmusician_engine::video::read_sound(&mux, None, 48_000)
        .unwrap()
        .unwrap();
    let before = a.channels[0][..48_000 * 39 / 10]
        .iter()
        .fold(0f32, |m, x| m.max(x.abs()));
    let during = a.channels[0][48_000 * 4..48_000 * 7]
        .iter()
        .fold(0f32, |m, x| m.max(x.abs()));
    assert!(
        before < 0.01 && during > 0.1,
        "before {before}, during {during}"
    );
}

#[test]
fn outputs_of_the_wrong_kind_are_refused_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // The input does not exist: a refusal that names the format shows the
    // check came first.
    let missing = d.join("missing.mp4");
    let out = run(&["compose", s(&missing), "-o", s(&d.join("x.txt"))]);
    assert_clean_failure(&out, &["x.txt", ".wav"]);
    let out = run(&["compose", s(&missing), "--mux", s(&d.join("x.wav"))]);
    assert_clean_failure(&out, &["x.wav", "holds no video", ".mp4", ".mkv"]);
    let out = run(&["compose", s(&missing), "--mux", s(&d.join("x.webm"))]);
    assert_clean_failure(&out, &["x.webm", "AAC", ".mp4"]);
    // Audio files whose muxers name PNG as their video codec (cover art).
    for ext in ["mp3", "flac"] {
        let name = format!("x.{ext}");
        let out = run(&["compose", s(&missing), "--mux", s(&d.join(&name))]);
        assert_clean_failure(&out, &[&name, "holds no video", ".mp4"]);
    }
    // Ogg holds video (Theora) but cannot say whether it takes AAC: it does not.
    let out = run(&["compose", s(&missing), "--mux", s(&d.join("x.ogg"))]);
    assert_clean_failure(&out, &["x.ogg", "AAC", ".mp4"]);
    let out = run(&["compose", s(&missing), "--mux", s(&d.join("noext"))]);
    assert_clean_failure(&out, &["noext", "extension"]);
    let out = run(&["analyze", s(&missing), "--plot", s(&d.join("x.mp4"))]);
    assert_clean_failure(&out, &["x.mp4", ".png"]);
    assert_eq!(std::fs::read_dir(d).unwrap().count(), 0, "nothing written");
}

#[test]
fn music_that_is_not_a_wav_is_named_as_such() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mp3 = d.join("song.mp3");
    let mut bytes = b"ID3\x04\x00\x00\x00\x00\x00\x00".to_vec();
    bytes.extend([0xFF, 0xFB, 0x90, 0x64].repeat(100));
    std::fs::write(&mp3, bytes).unwrap();
    let out = run(&["eval", s(&mp3)]);
    assert_clean_failure(&out, &["song.mp3", "not a WAV file", "MP3"]);
    assert!(!error_line(&out).contains("enough bytes"));

    let tiny = d.join("x.mp3");
    std::fs::write(&tiny, b"x\n").unwrap();
    let out = run(&["eval", s(&tiny)]);
    assert_clean_failure(&out, &["x.mp3", "not a WAV file"]);
    assert_no_repeats(&error_line(&out));

    // A WAV cut short is called truncated.
    let good = d.join("good.wav");
    write_wav(&good, &Audio::silence(48_000, 2, 48_000)).unwrap();
    let bytes = std::fs::read(&good).unwrap();
    let cut = d.join("cut.wav");
    std::fs::write(&cut, &bytes[..30]).unwrap();
    let out = run(&["eval", s(&cut)]);
    assert_clean_failure(&out, &["cut.wav", "truncated"]);
    assert_no_repeats(&error_line(&out));

    // An error quoting its cause is said once (it used to print the cause a
    // second time from the error chain).
    let out = run(&["eval", s(d)]);
    assert_clean_failure(&out, &["directory"]);
    let line = error_line(&out);
    assert_no_repeats(&line);
    assert_eq!(line.matches("directory").count(), 1, "{line}");
}

#[test]
fn models_pull_reports_network_failures_and_the_licence() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens on port 9 of the loopback: the connection is refused.
    let out = bin()
        .env("HF_ENDPOINT", "http://127.0.0.1:9")
        .args(["models", "pull", "facebook/musicgen-small", "--cache-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_clean_failure(&out, &["network failure", "127.0.0.1:9", "connection"]);
    let line = error_line(&out);
    assert!(!line.contains("invalid setting"), "{line}");
    assert_no_repeats(&line);
    // The licence is said before the download starts.
    let err = stderr(&out);
    let licence = err.find("CC-BY-NC 4.0").expect("licence not stated");
    assert!(err[licence..].contains("not for commercial use"), "{err}");
    assert!(licence < err.find("error:").unwrap());

    // `models list` says it for an installed MusicGen.
    let snap = dir
        .path()
        .join("models--facebook--musicgen-small/snapshots/abc");
    std::fs::create_dir_all(&snap).unwrap();
    for f in ["config.json", "tokenizer.json", "model.safetensors"] {
        std::os::unix::fs::symlink(tiny_model().join(f), snap.join(f)).unwrap();
    }
    let out = bin()
        .env("HF_HUB_CACHE", dir.path())
        .args(["models", "list"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("facebook/musicgen-small")
            && text.contains("CC-BY-NC 4.0: not for commercial use"),
        "{text}"
    );
}

/// `good` with `share` of its media data overwritten by zeros, mid-file.
fn zero_stretch(good: &Path, out: &Path, share: f64) {
    let mut b = std::fs::read(good).unwrap();
    let mdat = b.windows(4).position(|w| w == b"mdat").unwrap() + 4;
    let moov = b.windows(4).position(|w| w == b"moov").unwrap();
    assert!(moov > mdat, "media data before the index");
    let len = ((moov - mdat) as f64 * share) as usize;
    let start = mdat + (moov - mdat - len) / 2;
    b[start..start + len].fill(0);
    std::fs::write(out, b).unwrap();
}

#[test]
fn damaged_videos_are_reported_and_refused_when_mostly_lost() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let good = make_video(
        d,
        "good.mp4",
        &SynthSpec::new(320, 240, 25, 6.0, vec![2.0, 4.0]),
    );
    let wav = d.join("out.wav");

    let some = d.join("some.mp4");
    zero_stretch(&good, &some, 0.15);
    let out = run(&["compose", s(&some), "-o", s(&wav), "--no-cache"]);
    assert_success(&out);
    let err = stderr(&out);
    assert!(
        err.contains("warning: ")
            && err.contains("could not be decoded")
            && err.contains("of 150 frames"),
        "{err}"
    );
    let out = run(&["analyze", s(&some)]);
    assert!(
        stderr(&out).contains("could not be decoded"),
        "{}",
        stderr(&out)
    );

    let most = d.join("most.mp4");
    zero_stretch(&good, &most, 0.7);
    let out = run(&[
        "compose",
        s(&most),
        "-o",
        s(&d.join("no.wav")),
        "--no-cache",
    ]);
    assert_clean_failure(
        &out,
        &[
            "most.mp4",
            "damaged",
            "could not be decoded",
            "at least 50%",
        ],
    );
    assert!(!d.join("no.wav").exists());

    // The intact file says nothing of the kind.
    let out = run(&["compose", s(&good), "-o", s(&wav), "--no-cache"]);
    assert_success(&out);
    assert!(!stderr(&out).contains("could not be decoded"));
}

#[test]
fn music_too_short_to_score_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let one = make_video(d, "one.mp4", &SynthSpec::new(64, 64, 25, 0.04, vec![]));
    let wav = d.join("out.wav");
    let out = run(&["compose", s(&one), "-o", s(&wav), "--no-cache"]);
    assert_clean_failure(&out, &["one.mp4", "too short", "0.04 s", "at least 1 s"]);
    let v = make_video(d, "in.mp4", &SynthSpec::new(64, 64, 25, 3.0, vec![]));
    let out = run(&[
        "compose",
        s(&v),
        "-o",
        s(&wav),
        "--start",
        "1",
        "--end",
        "1.5",
        "--no-cache",
    ]);
    assert_clean_failure(&out, &["1.00–1.50 s", "too short", "at least 1 s"]);
    let out = run(&[
        "compose",
        s(&v),
        "-o",
        s(&wav),
        "--start",
        "5",
        "--no-cache",
    ]);
    assert_clean_failure(&out, &["--start", "past the end"]);
    let out = run(&[
        "compose",
        "--engine",
        "text",
        "--duration",
        "0.5",
        "-o",
        s(&wav),
    ]);
    assert_clean_failure(&out, &["too short", "at least 1 s"]);
    assert!(!wav.exists());
}

#[test]
fn no_cuts_and_one_cut_are_said_in_words() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let none = make_video(d, "none.mp4", &SynthSpec::new(160, 120, 25, 3.0, vec![]));
    let out = run(&["analyze", s(&none)]);
    assert_success(&out);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("cuts: none"), "{text}");
    assert!(
        text.contains("no cuts to fit") && !text.contains('%'),
        "{text}"
    );
    let out = run(&["compose", s(&none), "-o", s(&d.join("a.wav")), "--no-cache"]);
    assert!(stderr(&out).contains(", no cuts,"), "{}", stderr(&out));

    let one = make_video(d, "one.mp4", &SynthSpec::new(160, 120, 25, 3.0, vec![1.5]));
    let out = run(&["compose", s(&one), "-o", s(&d.join("b.wav")), "--no-cache"]);
    assert!(stderr(&out).contains(", 1 cut,"), "{}", stderr(&out));
    let out = run(&["analyze", s(&one)]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("1 cuts") && !text.contains("100%"), "{text}");
}

#[test]
fn tiny_pictures_give_no_false_cuts() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // A 16×16 shot whose shapes step a whole pixel at 4.32 s: that step used
    // to be taken for a cut.
    let mut still = SynthSpec::new(16, 16, 25, 6.0, vec![]);
    still.seed = 2;
    let j = analyze_json(&make_video(d, "still.mp4", &still));
    assert_eq!(j["cuts"].as_array().unwrap().len(), 0, "{}", j["cuts"]);
    // Real cuts at that size are still found.
    for seed in [1, 6] {
        let mut cut = SynthSpec::new(16, 16, 25, 12.0, vec![2.0, 4.5, 7.0, 9.5]);
        cut.seed = seed;
        let j = analyze_json(&make_video(d, &format!("cuts{seed}.mp4"), &cut));
        let times: Vec<f64> = j["cuts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["time"].as_f64().unwrap())
            .collect();
        assert_eq!(times.len(), 4, "seed {seed}: {times:?}");
        for (t, want) in times.iter().zip([2.0, 4.5, 7.0, 9.5]) {
            assert!((t - want).abs() <= 0.04 + 1e-9, "seed {seed}: {times:?}");
        }
    }
}

#[test]
fn an_original_the_container_cannot_take_is_re_encoded_as_a_track() {
    const HZ: f64 = 987.0;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // 16-bit PCM, which MP4 cannot hold: tracks mode re-encodes it to AAC.
    let mut spec = SynthSpec::new(160, 120, 25, 3.0, vec![1.5]);
    spec.tone = Some(HZ as f32);
    spec.tone_codec = ToneCodec::Pcm16;
    let v = make_video(d, "pcm.mkv", &spec);
    let wav = d.join("music.wav");
    let tr = d.join("tracks.mp4");
    let out = compose_mux(&v, Some(&wav), &tr, "tracks", &["--seed", "3"]);
    assert_success(&out);
    assert!(stderr(&out).contains("re-encoded"), "{}", stderr(&out));
    let music = read_wav(&wav).unwrap().mono();
    let first = sound_of(&tr, 0).unwrap();
    let second = sound_of(&tr, 1).unwrap();
    assert!(sound_of(&tr, 2).is_none());
    let tone = tone_amplitude(&first, 48_000, HZ);
    assert!((0.2..0.3).contains(&tone), "original's tone {tone}");
    assert!(weight_of(&first, &music).abs() < 0.1);
    assert!(tone_amplitude(&second, 48_000, HZ) < 0.05);
    assert!((0.85..1.15).contains(&weight_of(&second, &music)));
    assert_eq!(packets(&tr).audio_codec.as_deref(), Some("aac"));
    assert_eq!(
        packets(&v).video,
        packets(&tr).video,
        "video not copied as is"
    );
}

/// The samples of `x` (48 kHz) from `from` to `to` seconds.
fn window(x: &[f32], from: f64, to: f64) -> &[f32] {
    let (a, b) = ((from * 48_000.0) as usize, (to * 48_000.0) as usize);
    assert!(
        b <= x.len(),
        "the sound ends at {:.3} s",
        x.len() as f64 / 48_000.0
    );
    &x[a..b]
}

#[test]
fn a_sound_at_another_rate_keeps_its_end_in_the_mix() {
    const HZ: f64 = 1234.5;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for rate in [44_100, 16_000] {
        let mut spec = SynthSpec::new(160, 120, 25, 3.0, vec![1.5]);
        spec.tone = Some(HZ as f32);
        spec.tone_rate = rate;
        let v = make_video(d, &format!("in{rate}.mp4"), &spec);
        let mix = d.join(format!("mix{rate}.mp4"));
        // The music far beneath, so the tone is measured alone.
        let out = run(&[
            "compose",
            s(&v),
            "--mux",
            s(&mix),
            "--music-gain",
            "-60",
            "--no-cache",
        ]);
        assert_success(&out);
        let m = sound_of(&mix, 0).unwrap();
        assert!(
            (m.len() as f64 / 48_000.0 - 3.0).abs() < 0.05,
            "{rate} Hz: {} samples",
            m.len()
        );
        // Resampled to 48 kHz up to its end: the last tenths of a second
        // used to be lost in the resampler.
        for (from, to) in [(0.5, 1.0), (2.6, 2.8), (2.8, 2.95)] {
            let tone = tone_amplitude(window(&m, from, to), 48_000, HZ);
            assert!(
                (0.2..0.3).contains(&tone),
                "{rate} Hz: tone {tone} at {from}–{to} s"
            );
        }
    }
}

/// Copies `src` to `dst` packet for packet, leaving out the packets `keep`
/// refuses (given whether it is sound, and its time in seconds), and letting
/// `edit` change each output stream's parameters (given whether it is sound).
fn remux(
    src: &Path,
    dst: &Path,
    keep: impl Fn(bool, f64) -> bool,
    edit: impl Fn(bool, *mut ffmpeg_next::ffi::AVCodecParameters),
) {
    use ffmpeg_next as ff;
    ff::init().unwrap();
    let mut ictx = ff::format::input(&src).unwrap();
    let mut octx = ff::format::output(&dst).unwrap();
    let mut kinds = Vec::new();
    for ist in ictx.streams() {
        let sound = ist.parameters().medium() == ff::media::Type::Audio;
        let mut ost = octx
            .add_stream(ff::encoder::find(ff::codec::Id::None))
            .unwrap();
        ost.set_parameters(ist.parameters());
        // SAFETY: the output stream's own parameters, before the header.
        unsafe {
            let p = ost.parameters().as_mut_ptr();
            (*p).codec_tag = 0;
            edit(sound, p);
        }
        kinds.push((sound, ist.time_base()));
    }
    octx.write_header().unwrap();
    for (st, mut p) in ictx.packets() {
        let (sound, itb) = kinds[st.index()];
        let t = p.pts().or(p.dts()).unwrap_or(0) as f64 * f64::from(itb);
        if !keep(sound, t) {
            continue;
        }
        let otb = octx.stream(st.index()).unwrap().time_base();
        p.rescale_ts(itb, otb);
        p.set_position(-1);
        p.write_interleaved(&mut octx).unwrap();
    }
    octx.write_trailer().unwrap();
}

#[test]
fn sound_after_lost_packets_stays_in_its_place() {
    const HZ: f64 = 1234.5;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut spec = SynthSpec::new(160, 120, 25, 3.0, vec![1.5]);
    spec.tone = Some(HZ as f32);
    let v = make_video(d, "in.mp4", &spec);
    // Matroska keeps each packet's time (to the millisecond).
    let whole = d.join("whole.mkv");
    remux(&v, &whole, |_, _| true, |_, _| {});
    let gap = d.join("gap.mkv");
    remux(
        &v,
        &gap,
        |sound, t| !(sound && (1.0..1.5).contains(&t)),
        |_, _| {},
    );
    let full = sound_of(&whole, 0).unwrap();
    let holed = sound_of(&gap, 0).unwrap();
    let peak = |x: &[f32]| x.iter().fold(0f32, |m, v| m.max(v.abs()));
    assert!(
        peak(window(&holed, 1.1, 1.4)) < 0.01,
        "the gap is not silent"
    );
    // What follows the gap plays when it did: it used to come 0.5 s early,
    // and the sound end 0.5 s before the picture.
    let w = weight_of(window(&holed, 1.8, 2.9), window(&full, 1.8, 2.9));
    assert!((0.95..1.05).contains(&w), "after the gap: weight {w}");
    let w = weight_of(window(&holed, 0.2, 0.9), window(&full, 0.2, 0.9));
    assert!((0.95..1.05).contains(&w), "before the gap: weight {w}");
    assert_eq!(holed.len(), full.len());

    // The mix puts it there too.
    let mix = d.join("mix.mp4");
    let out = run(&[
        "compose",
        s(&gap),
        "--mux",
        s(&mix),
        "--music-gain",
        "-60",
        "--no-cache",
    ]);
    assert_success(&out);
    let m = sound_of(&mix, 0).unwrap();
    assert!(tone_amplitude(window(&m, 1.1, 1.4), 48_000, HZ) < 0.02);
    let w = weight_of(window(&m, 1.8, 2.9), window(&full, 1.8, 2.9));
    assert!((0.9..1.1).contains(&w), "mix after the gap: weight {w}");
}

#[test]
fn a_video_that_states_no_length_gets_its_music() {
    const HZ: f64 = 1234.5;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut spec = SynthSpec::new(160, 120, 25, 3.0, vec![1.0, 2.0]);
    spec.tone = Some(HZ as f32);
    spec.unstated_length = true;
    let v = make_video(d, "live.mkv", &spec);
    assert_eq!(
        vidmusician_engine::video::probe(&v).unwrap().duration,
        0.0,
        "the container states a length: the test tests nothing"
    );
    let wav = d.join("music.wav");
    for mode in ["mix", "replace"] {
        let mux = d.join(format!("{mode}.mp4"));
        let out = compose_mux(&v, Some(&wav), &mux, mode, &["--seed", "3"]);
        assert_success(&out);
        let music = read_wav(&wav).unwrap();
        assert!(
            (music.duration() - 3.0).abs() < 0.05,
            "{}",
            music.duration()
        );
        let p = packets(&mux);
        assert!(
            (p.audio_seconds - 3.0).abs() < 0.1,
            "{mode}: {} s of sound",
            p.audio_seconds
        );
        let m = sound_of(&mux, 0).unwrap();
        let want = if mode == "mix" { 0.25 } else { 1.0 };
        let w = weight_of(&m, &music.mono());
        assert!(
            (want * 0.75..want * 1.25).contains(&w),
            "{mode}: music weight {w}"
        );
    }
}

#[test]
fn a_sound_that_cannot_be_decoded_is_refused_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut spec = SynthSpec::new(160, 120, 25, 3.0, vec![1.5]);
    spec.tone = Some(440.0);
    let v = make_video(d, "in.mp4", &spec);
    // AAC whose decoder configuration names an object type no decoder has.
    let broken = d.join("broken.mkv");
    remux(
        &v,
        &broken,
        |_, _| true,
        |sound, p| {
            if !sound {
                return;
            }
            use ffmpeg_next::ffi;
            let bad = [0xF8u8, 0x00, 0x00, 0x00];
            // SAFETY: the stream's own parameters; the new buffer is
            // FFmpeg's, with the padding it reads past the end.
            unsafe {
                ffi::av_freep(std::ptr::addr_of_mut!((*p).extradata).cast());
                let buf = ffi::av_mallocz(bad.len() + ffi::AV_INPUT_BUFFER_PADDING_SIZE as usize)
                    .cast::<u8>();
                std::ptr::copy_nonoverlapping(bad.as_ptr(), buf, bad.len());
                (*p).extradata = buf;
                (*p).extradata_size = bad.len() as i32;
            }
        },
    );
    let wav = d.join("music.wav");
    for mode in ["mix", "tracks"] {
        let mux = d.join(format!("{mode}.mp4"));
        let out = compose_mux(&broken, Some(&wav), &mux, mode, &[]);
        if mode == "tracks" {
            // MP4 takes the AAC as it is: nothing to decode.
            assert_success(&out);
            assert!(
                stderr(&out).contains("copied as it was"),
                "{}",
                stderr(&out)
            );
            continue;
        }
        assert_clean_failure(
            &out,
            &[
                "broken.mkv",
                "cannot decode the video's sound",
                "--audio replace",
            ],
        );
        // Refused before the music was made: not even -o was written.
        assert!(!wav.exists() && !mux.exists());
        assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));
    }
    let rep = d.join("replace.mp4");
    let out = compose_mux(&broken, None, &rep, "replace", &[]);
    assert_success(&out);
}

#[cfg(unix)]
#[test]
fn a_replaced_output_keeps_its_mode() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let v = make_video(d, "in.mp4", &SynthSpec::new(160, 120, 25, 2.0, vec![1.0]));
    let wav = d.join("m.wav");
    let mux = d.join("m.mp4");
    let png = d.join("p.png");
    for (p, mode) in [(&wav, 0o600), (&mux, 0o640), (&png, 0o604)] {
        std::fs::write(p, b"old").unwrap();
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    let ok = |args: &[&str]| assert_success(&bin_under_umask("022").args(args).output().unwrap());
    ok(&[
        "compose",
        s(&v),
        "-o",
        s(&wav),
        "--mux",
        s(&mux),
        "--no-cache",
    ]);
    ok(&["analyze", s(&v), "--plot", s(&png)]);
    for (p, mode) in [(&wav, 0o600), (&mux, 0o640), (&png, 0o604)] {
        assert_ne!(
            std::fs::read(p).unwrap(),
            b"old",
            "{} not replaced",
            p.display()
        );
        let got = std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(got, mode, "{}: {got:o}", p.display());
    }
}

/// A hub that answers each file's size, then breaks off every download after
/// 100 bytes.
fn serve_breaking_hub() -> String {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut range = String::new();
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some((k, v)) = line.split_once(':')
                        && k.eq_ignore_ascii_case("range")
                    {
                        range = v.trim().to_string();
                    }
                }
                const SIZE: usize = 1000;
                let from: usize = range
                    .strip_prefix("bytes=")
                    .and_then(|r| r.split('-').next())
                    .and_then(|a| a.parse().ok())
                    .unwrap_or(0);
                let len = if range == "bytes=0-0" {
                    1
                } else {
                    SIZE - from.min(SIZE)
                };
                let head = format!(
                    "HTTP/1.1 206 Partial Content\r\nContent-Length: {len}\r\n\
                     Content-Range: bytes {from}-{}/{SIZE}\r\nETag: \"{}\"\r\n\
                     X-Repo-Commit: {}\r\nConnection: close\r\n\r\n",
                    from + len - 1,
                    "0".repeat(40),
                    "1".repeat(40),
                );
                let _ = stream.write_all(head.as_bytes());
                let _ = stream.write_all(&vec![b'x'; len.min(100)]);
                let _ = stream.shutdown(std::net::Shutdown::Both);
            });
        }
    });
    addr
}

#[test]
fn a_download_broken_off_is_a_network_failure() {
    let dir = tempfile::tempdir().unwrap();
    let endpoint = serve_breaking_hub();
    let out = bin()
        .env("HF_ENDPOINT", &endpoint)
        .args(["models", "pull", "facebook/musicgen-small", "--cache-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_clean_failure(
        &out,
        &["network failure", &endpoint, "broke off", "pull again"],
    );
    let line = error_line(&out);
    assert!(!line.contains("cannot read"), "{line}");
    assert_no_repeats(&line);
}

/// Onsets of a WAV, and the share of `cuts` with one within 50 ms.
fn hit_rate(wav: &Path, cuts: &[f64]) -> f64 {
    hit_rate_within(wav, cuts, 0.05)
}

/// The share of `cuts` with an onset of the WAV within `tolerance` seconds.
fn hit_rate_within(wav: &Path, cuts: &[f64], tolerance: f64) -> f64 {
    let a = read_wav(wav).unwrap();
    let onsets = vidmusician_engine::metrics::detect_onsets(
        &a.mono(),
        a.sample_rate,
        &vidmusician_engine::metrics::OnsetConfig::default(),
    );
    vidmusician_engine::metrics::cut_hit_rate(&onsets, cuts, tolerance)
}

#[test]
fn the_cuts_of_the_users_edit_replace_or_join_the_detected_ones() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let detected = [1.0, 2.4, 3.3];
    let v = make_video(
        d,
        "in.mp4",
        &SynthSpec::new(320, 240, 25, 5.0, detected.to_vec()),
    );
    // Cuts of the edit that the pictures do not show, off any common grid.
    let mine = [0.77, 1.73, 2.91, 4.13];
    let list = d.join("cuts.txt");
    std::fs::write(
        &list,
        mine.iter().map(|t| format!("{t}\n")).collect::<String>(),
    )
    .unwrap();

    let plain = d.join("plain.wav");
    assert_success(&run(&["compose", s(&v), "-o", s(&plain), "--no-cache"]));
    let replaced = d.join("replaced.wav");
    let out = run(&[
        "compose",
        s(&v),
        "-o",
        s(&replaced),
        "--cuts",
        s(&list),
        "--no-cache",
    ]);
    assert_success(&out);
    assert!(
        stderr(&out).contains("4 cuts (from cuts.txt)"),
        "{}",
        stderr(&out)
    );
    let merged = d.join("merged.wav");
    let out = run(&[
        "compose",
        s(&v),
        "-o",
        s(&merged),
        "--cuts",
        s(&list),
        "--cuts-merge",
        "--no-cache",
    ]);
    assert_success(&out);
    assert!(
        stderr(&out).contains("7 cuts (from cuts.txt and the pictures)"),
        "{}",
        stderr(&out)
    );

    assert!(
        hit_rate(&plain, &mine) < 1.0,
        "the plain piece already hits every cut of the list: the test proves nothing"
    );
    assert_eq!(hit_rate(&replaced, &mine), 1.0);
    assert_eq!(hit_rate(&merged, &mine), 1.0);
    assert_eq!(hit_rate(&merged, &detected), 1.0);
    assert_eq!(hit_rate(&plain, &detected), 1.0);
}

#[test]
fn a_cut_list_that_cannot_be_this_videos_is_refused_and_nothing_written() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let v = make_video(d, "in.mp4", &SynthSpec::new(160, 120, 25, 3.0, vec![1.0]));
    let wav = d.join("out.wav");
    let mux = d.join("out.mp4");

    let late = d.join("late.csv");
    std::fs::write(&late, "1.0\n2.0\n7.5\n").unwrap();
    let out = compose_mux(&v, Some(&wav), &mux, "mix", &["--cuts", s(&late)]);
    assert_clean_failure(&out, &["late.csv", "7.500 s", "past the end of the video"]);
    assert!(!wav.exists() && !mux.exists());

    let broken = d.join("broken.txt");
    std::fs::write(&broken, "1.0\nsoon\n").unwrap();
    let out = compose_mux(&v, Some(&wav), &mux, "mix", &["--cuts", s(&broken)]);
    assert_clean_failure(&out, &["broken.txt", "line 2"]);
    assert!(!wav.exists() && !mux.exists());

    let out = run(&[
        "compose",
        s(&v),
        "-o",
        s(&wav),
        "--cuts",
        s(&d.join("none.edl")),
    ]);
    assert_clean_failure(&out, &["none.edl"]);
    let out = run(&[
        "compose",
        "-o",
        s(&wav),
        "--duration",
        "4",
        "--cuts",
        s(&late),
    ]);
    assert_clean_failure(&out, &["--cuts", "video"]);
    assert!(!wav.exists());
}

#[test]
fn the_zero_shot_engine_scores_a_video_with_its_accents_on_the_cuts() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let models = tiny_models(d);
    let cuts = [1.2, 2.6, 3.7, 5.9, 7.1, 8.3];
    let v = make_video(
        d,
        "in.mp4",
        &SynthSpec::new(160, 120, 25, 9.0, cuts.to_vec()),
    );
    let compose = |name: &str, extra: &[&str]| {
        let wav = d.join(name);
        let mut args = vec![
            "compose",
            s(&v),
            "-o",
            s(&wav),
            "--model-dir",
            s(&models),
            "--prompt",
            "calm",
            "--no-cache",
        ];
        args.extend(extra);
        let out = run(&args);
        assert_success(&out);
        (wav, stderr(&out))
    };
    let (wav, err) = compose("zs.wav", &[]);
    // `auto` takes zero-shot when both models are there, and says why.
    assert!(err.contains("engine: zero-shot"), "{err}");
    // The tags chosen per section are shown.
    assert!(err.contains("0.00–"), "{err}");
    let a = read_wav(&wav).unwrap();
    assert!((a.duration() - 9.0).abs() <= 0.01, "{} s", a.duration());
    assert!(a.peak() > 0.01, "silent");
    let rate = hit_rate(&wav, &cuts);
    assert!(rate >= 0.9, "cut hit rate {rate}");
    // (The tiny model's audio is dense with onsets, so ±50 ms is hit often
    // by chance too; engine/tests/align.rs proves the alignment itself on
    // clicks and drum loops whose cuts are missed before it.)
}

#[test]
fn without_rhythm_strength_the_zero_shot_music_is_the_generation_unmoved() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let models = tiny_models(d);
    let v = make_video(
        d,
        "in.mp4",
        &SynthSpec::new(160, 120, 25, 4.0, vec![1.3, 2.9]),
    );
    let zs = d.join("zs.wav");
    let out = run(&[
        "compose",
        s(&v),
        "-o",
        s(&zs),
        "--model-dir",
        s(&models),
        "--engine",
        "zero-shot",
        "--prompt",
        "calm",
        "--rhythm-strength",
        "0",
        "--semantic-strength",
        "0",
        "--no-cache",
    ]);
    assert_success(&out);
    // With no tags, the prompt is the user's words and the tempo.
    let err = stderr(&out);
    let bpm: f64 = err
        .split(" at ")
        .nth(1)
        .and_then(|r| r.split(" BPM").next())
        .and_then(|b| b.parse().ok())
        .unwrap_or_else(|| panic!("no tempo in {err}"));
    let text = d.join("text.wav");
    let prompt = format!("calm, {} bpm", bpm.round());
    let out = run(&[
        "compose",
        s(&v),
        "-o",
        s(&text),
        "--model-dir",
        s(&models),
        "--engine",
        "text",
        "--prompt",
        &prompt,
        "--no-cache",
    ]);
    assert_success(&out);
    let (a, b) = (read_wav(&zs).unwrap(), read_wav(&text).unwrap());
    assert_eq!(a.channels, b.channels, "rhythm strength 0 moved the music");

    // With rhythm strength, the same generation is moved: another signal
    // of the same length.
    let moved = d.join("moved.wav");
    let out = run(&[
        "compose",
        s(&v),
        "-o",
        s(&moved),
        "--model-dir",
        s(&models),
        "--engine",
        "zero-shot",
        "--prompt",
        "calm",
        "--rhythm-strength",
        "0.3",
        "--semantic-strength",
        "0",
        "--no-cache",
    ]);
    assert_success(&out);
    let m = read_wav(&moved).unwrap();
    assert_eq!(m.len(), a.len());
    assert_ne!(m.channels, a.channels);
}

#[test]
fn the_zero_shot_engine_refuses_what_cannot_work_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let models = tiny_models(d);
    let v = make_video(d, "in.mp4", &SynthSpec::new(160, 120, 25, 3.0, vec![1.0]));
    let wav = d.join("out.wav");
    let empty = d.join("empty.txt");
    std::fs::write(&empty, "# nothing here\n").unwrap();
    let out = run(&[
        "compose",
        s(&v),
        "-o",
        s(&wav),
        "--model-dir",
        s(&models),
        "--engine",
        "zero-shot",
        "--vocabulary",
        s(&empty),
        "--no-cache",
    ]);
    assert_clean_failure(&out, &["empty.txt", "empty"]);
    assert!(!wav.exists());

    // Without CLIP, zero-shot says what is missing; auto falls back and
    // says how to get it.
    let only_musicgen = d.join("mg");
    std::fs::create_dir_all(&only_musicgen).unwrap();
    std::os::unix::fs::symlink(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/musicgen-tiny"),
        only_musicgen.join("musicgen-small"),
    )
    .unwrap();
    let out = run(&[
        "compose",
        s(&v),
        "-o",
        s(&wav),
        "--model-dir",
        s(&only_musicgen),
        "--engine",
        "zero-shot",
        "--no-cache",
    ]);
    assert_clean_failure(&out, &["openai/clip-vit-base-patch32", "models pull"]);
    assert!(!wav.exists());
    let out = run(&[
        "compose",
        s(&v),
        "-o",
        s(&wav),
        "--model-dir",
        s(&only_musicgen),
        "--no-cache",
    ]);
    assert_success(&out);
    let err = stderr(&out);
    assert!(
        err.contains("engine: sketch")
            && err.contains("vidmusician models pull openai/clip-vit-base-patch32"),
        "{err}"
    );
}

#[test]
fn analyze_tags_each_section_with_the_vocabulary() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let models = tiny_models(d);
    let v = make_video(d, "in.mp4", &SynthSpec::new(160, 120, 25, 4.0, vec![1.5]));
    let out = run(&["analyze", s(&v), "--tags", "--model-dir", s(&models)]);
    assert_success(&out);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("tags 0.00–4.00 s:"), "{text}");
    for category in ["mood", "genre", "instruments", "setting", "energy"] {
        assert!(text.contains(category), "{category} missing: {text}");
    }
    let out = run(&[
        "analyze",
        s(&v),
        "--tags",
        "--json",
        "--model-dir",
        s(&models),
    ]);
    assert_success(&out);
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let tags = j["tags"][0]["tags"].as_array().unwrap();
    // One tag of each category, two instruments.
    assert_eq!(tags.len(), 6, "{j}");
    assert!(tags.iter().all(|t| t["score"].as_f64().unwrap() > 0.0));

    // A vocabulary of the user's own: its categories and tags.
    let vocab = d.join("mine.txt");
    std::fs::write(
        &vocab,
        "[light]\nday | a bright day | bright\nnight | a dark night | nocturnal\n",
    )
    .unwrap();
    let out = run(&[
        "analyze",
        s(&v),
        "--tags",
        "--json",
        "--model-dir",
        s(&models),
        "--vocabulary",
        s(&vocab),
    ]);
    assert_success(&out);
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let t = &j["tags"][0]["tags"][0];
    assert_eq!(t["category"], "light");
    assert!(t["tag"] == "day" || t["tag"] == "night", "{t}");

    // Without CLIP: what to install.
    let out = run(&["analyze", s(&v), "--tags", "--model-dir", s(d)]);
    assert_clean_failure(&out, &["openai/clip-vit-base-patch32", "models pull"]);
    std::fs::write(&vocab, "").unwrap();
    let out = run(&[
        "analyze",
        s(&v),
        "--tags",
        "--model-dir",
        s(&models),
        "--vocabulary",
        s(&vocab),
    ]);
    assert_clean_failure(&out, &["mine.txt", "empty"]);
}
