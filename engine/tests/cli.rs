//! The `vidmusician` command line, end to end, on videos the tests make.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use vidmusician_engine::audio::{Audio, read_wav, write_wav};
use vidmusician_engine::video::synth::{SynthSpec, write_video};

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_vidmusician"));
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
