//! `vidmusician train` end to end on the tiny MusicGen and CLIP, on a folder
//! of short videos the tests make, and its refusals.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::tiny_models;
use vidmusician_engine::audio::{Audio, write_wav};
use vidmusician_engine::neural::conditioning::AdapterInfo;
use vidmusician_engine::video::synth::{SynthSpec, write_video};

fn bin(dir: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_vidmusician"));
    let none = dir.join("no-models");
    c.env("VIDMUSICIAN_CACHE", dir.join("cache"))
        .env("VIDMUSICIAN_MODELS", &none)
        .env("HF_HOME", &none)
        .env_remove("HF_HUB_CACHE")
        .env_remove("XDG_CACHE_HOME");
    c
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A folder of four 3 s videos: two whose sound is their music (tones), one
/// silent with a WAV beside it, one silent with nothing (to be skipped).
fn dataset(dir: &Path) -> PathBuf {
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    for (i, (name, tone)) in [
        ("a.mp4", Some(330.0)),
        ("b.mp4", Some(550.0)),
        ("c.mp4", None),
        ("silent.mp4", None),
    ]
    .into_iter()
    .enumerate()
    {
        let mut spec = SynthSpec::new(96, 64, 25, 3.0, vec![1.0, 2.0]);
        spec.seed = i as u64 + 1;
        spec.tone = tone;
        write_video(&data.join(name), &spec).unwrap();
    }
    let rate = 32_000;
    let sine: Vec<f32> = (0..3 * rate)
        .map(|i| 0.3 * (i as f32 * 440.0 * std::f32::consts::TAU / rate as f32).sin())
        .collect();
    write_wav(
        &data.join("c.wav"),
        &Audio {
            sample_rate: rate as u32,
            channels: vec![sine],
        },
    )
    .unwrap();
    std::fs::write(data.join("c.txt"), "a calm sine\n").unwrap();
    data
}

fn train(dir: &Path, models: &Path, extra: &[&str]) -> Output {
    bin(dir)
        .args([
            "train",
            "--model-dir",
            s(models),
            "--steps",
            "4",
            "--batch",
            "2",
        ])
        .args([
            "--window",
            "2",
            "--eval-every",
            "2",
            "--checkpoint-every",
            "2",
        ])
        .args(["--warmup", "1", "--lr", "0.01"])
        .args(extra)
        .output()
        .unwrap()
}

/// `compose VIDEO -o OUT --no-cache --model-dir MODELS EXTRA…`.
fn compose(dir: &Path, models: &Path, video: &Path, out: &Path, extra: &[&str]) -> Output {
    bin(dir)
        .args(["compose", s(video), "-o", s(out), "--no-cache"])
        .args(["--model-dir", s(models)])
        .args(extra)
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Fails cleanly (exit 1, not a panic) saying every one of `needles`.
fn refused(o: &Output, needles: &[&str]) {
    let t = text(o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    for n in needles {
        assert!(t.contains(n), "`{n}` not in: {t}");
    }
}

#[test]
fn train_stage_one_then_two_writes_adapters_checkpoints_logs_and_plots() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let models = tiny_models(d);
    let data = dataset(d);
    let s1 = d.join("s1.safetensors");
    let o = train(
        d,
        &models,
        &["--stage", "1", "--data", s(&data), "--out", s(&s1)],
    );
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("trainable parameters"), "{t}");
    if !cfg!(feature = "cuda") {
        assert!(t.contains("running on the CPU (auto: "), "{t}");
    }
    assert!(t.contains("skipped") && t.contains("silent.mp4"), "{t}");
    assert!(t.contains("2 videos to train on, 1 held out"), "{t}");
    let info = AdapterInfo::read(&s1).unwrap();
    assert_eq!(info.stage, 1);
    assert_eq!(info.base_model, "facebook/musicgen-small");
    assert_eq!(info.config.clip_width, 32, "the tiny CLIP's pooled width");
    // The log: the start and four steps, held-out losses at 0, 2 and 4.
    let log = std::fs::read_to_string(d.join("s1.log.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 5, "{log}");
    let held: Vec<u64> = lines
        .iter()
        .filter(|l| l.get("held_out").is_some())
        .map(|l| l["step"].as_u64().unwrap())
        .collect();
    assert_eq!(held, [0, 2, 4]);
    assert!(lines[1]["loss"].as_f64().unwrap().is_finite());
    let png = std::fs::read(d.join("s1.loss.png")).unwrap();
    assert_eq!(&png[..4], b"\x89PNG");
    assert!(d.join("s1.ckpt").is_file());

    // Stage 2 from it; the extraction comes from the cache this time.
    let s2 = d.join("s2.safetensors");
    let o = train(
        d,
        &models,
        &[
            "--stage",
            "2",
            "--data",
            s(&data),
            "--out",
            s(&s2),
            "--init",
            s(&s1),
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let info2 = AdapterInfo::read(&s2).unwrap();
    assert_eq!(info2.stage, 2);
    assert_eq!(info2.base_hash, info.base_hash);

    // The adapter engine scores a video with it: as long as the video.
    let wav = d.join("scored.wav");
    let o = compose(
        d,
        &models,
        &data.join("a.mp4"),
        &wav,
        &["--engine", "vidmusician", "--adapter", s(&s2)],
    );
    assert!(o.status.success(), "{}", text(&o));
    let music = vidmusician_engine::audio::read_wav(&wav).unwrap();
    assert!(
        (music.duration() - 3.0).abs() < 0.01,
        "{} s",
        music.duration()
    );
    assert!(music.peak() > 0.01, "silent music");

    // The rhythm strength reaches the rhythm module: at 0 the music differs.
    let still = d.join("still.wav");
    let o = compose(
        d,
        &models,
        &data.join("a.mp4"),
        &still,
        &[
            "--engine",
            "vidmusician",
            "--adapter",
            s(&s2),
            "--rhythm-strength",
            "0",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let still = vidmusician_engine::audio::read_wav(&still).unwrap();
    assert_ne!(
        still.channels, music.channels,
        "the rhythm strength changed nothing"
    );
    // Through a GPU helper (this build's `gpu-serve` on the CPU, as a `cuda`
    // build's serves a GPU), the engine reads the frames with CLIP in the
    // helper: the features it keeps are the CPU's, to the bit.
    let helper = d.join("vidmusician-cuda");
    std::fs::write(
        &helper,
        format!(
            "#!/bin/sh\nexec {:?} gpu-serve --device cpu\n",
            env!("CARGO_BIN_EXE_vidmusician")
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut kept = Vec::new();
    for device in ["cuda", "cpu"] {
        let cache = d.join(format!("cache-{device}"));
        let o = bin(d)
            .env("VIDMUSICIAN_CACHE", &cache)
            .env("VIDMUSICIAN_CUDA_HELPER", &helper)
            .args(["compose", s(&data.join("a.mp4"))])
            .args(["-o", s(&d.join(format!("{device}.wav")))])
            .args(["--model-dir", s(&models), "--device", device])
            .args(["--engine", "vidmusician", "--adapter", s(&s2)])
            .output()
            .unwrap();
        let t = text(&o);
        assert!(o.status.success(), "{t}");
        assert_eq!(t.contains("in the GPU helper"), device == "cuda", "{t}");
        let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(cache.join("audio/features"))
            .unwrap()
            .map(|f| {
                let f = f.unwrap().path();
                let name = f.file_name().unwrap().to_string_lossy().into_owned();
                (name, std::fs::read(&f).unwrap())
            })
            .collect();
        files.sort();
        assert_eq!(files.len(), 2, "the 1 fps features and the 25 fps curve");
        kept.push(files);
    }
    assert!(
        kept[0] == kept[1],
        "the helper's features are not the CPU's"
    );

    // A named adapter that is not there is an error, also under auto.
    let o = compose(
        d,
        &models,
        &data.join("a.mp4"),
        &d.join("x.wav"),
        &["--adapter", s(&d.join("gone.safetensors"))],
    );
    refused(&o, &["gone.safetensors", "no such file"]);

    // Installed beside the models, `auto` picks it and says so, and
    // `models list` shows it.
    std::fs::create_dir_all(models.join("adapters")).unwrap();
    std::fs::copy(&s2, models.join("adapters/tiny.safetensors")).unwrap();
    let auto = d.join("auto.wav");
    let o = compose(d, &models, &data.join("b.mp4"), &auto, &[]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(
        t.contains("engine: vidmusician (a stage-2 adapter for facebook/musicgen-small"),
        "{t}"
    );
    let o = bin(d)
        .args(["models", "list", "--model-dir", s(&models)])
        .output()
        .unwrap();
    let t = text(&o);
    assert!(
        t.contains("tiny\tadapter (stage 2) for facebook/musicgen-small"),
        "{t}"
    );

    // The same run again is refused: its adapter and checkpoint exist.
    let before = std::fs::read(&s2).unwrap();
    let o = train(
        d,
        &models,
        &[
            "--stage",
            "2",
            "--data",
            s(&data),
            "--out",
            s(&s2),
            "--init",
            s(&s1),
        ],
    );
    refused(&o, &["s2.safetensors exists"]);
    assert_eq!(std::fs::read(&s2).unwrap(), before);

    // A resume with other settings names what differs.
    let o = train(
        d,
        &models,
        &[
            "--stage",
            "2",
            "--data",
            s(&data),
            "--out",
            s(&s2),
            "--resume",
            "--seed",
            "9",
        ],
    );
    refused(&o, &["another training config", "seed"]);
    assert_eq!(std::fs::read(&s2).unwrap(), before);
}

#[test]
fn train_refuses_what_cannot_work_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let models = tiny_models(d);
    let empty = d.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let out = d.join("a.safetensors");

    let o = train(
        d,
        &models,
        &["--stage", "1", "--data", s(&empty), "--out", s(&out)],
    );
    refused(&o, &["no videos to train on"]);
    assert!(!out.exists());

    let o = train(
        d,
        &models,
        &[
            "--stage",
            "1",
            "--data",
            s(&d.join("nowhere")),
            "--out",
            s(&out),
        ],
    );
    refused(&o, &["nowhere", "no such"]);

    let o = train(
        d,
        &models,
        &["--stage", "2", "--data", s(&empty), "--out", s(&out)],
    );
    refused(&o, &["--init"]);

    let o = train(
        d,
        &models,
        &[
            "--stage",
            "1",
            "--data",
            s(&empty),
            "--out",
            s(&out),
            "--resume",
        ],
    );
    refused(&o, &["no checkpoint"]);

    let o = train(
        d,
        &models,
        &[
            "--stage",
            "1",
            "--data",
            s(&empty),
            "--out",
            s(&d.join("a.wav")),
        ],
    );
    refused(&o, &[".safetensors"]);

    // One video is not enough: one must be held out.
    let one = d.join("one");
    std::fs::create_dir_all(&one).unwrap();
    let mut spec = SynthSpec::new(96, 64, 25, 2.0, vec![1.0]);
    spec.tone = Some(440.0);
    write_video(&one.join("x.mp4"), &spec).unwrap();
    let o = train(
        d,
        &models,
        &["--stage", "1", "--data", s(&one), "--out", s(&out)],
    );
    refused(&o, &["at least two"]);
    assert!(!out.exists() && !d.join("a.ckpt").exists());

    // An --init that is no adapter.
    let junk = d.join("junk.safetensors");
    std::fs::write(&junk, b"not an adapter").unwrap();
    let o = train(
        d,
        &models,
        &[
            "--stage",
            "2",
            "--data",
            s(&one),
            "--out",
            s(&out),
            "--init",
            s(&junk),
        ],
    );
    refused(&o, &["junk.safetensors", "not an adapter file"]);

    // A device this build cannot reach is said before the models are looked
    // for or any video is read (the models folder here is empty).
    if !cfg!(feature = "cuda") {
        let o = bin(d)
            .args(["train", "--stage", "1", "--data", s(&one), "--out", s(&out)])
            .args(["--device", "cuda"])
            .output()
            .unwrap();
        refused(
            &o,
            &[
                "device cuda:0",
                "no CUDA support",
                "training runs in this process",
                "--features cuda",
                "--device cpu",
            ],
        );
        assert!(!text(&o).contains("musicgen"), "{}", text(&o));
    }
    let o = train(
        d,
        &models,
        &[
            "--stage",
            "1",
            "--data",
            s(&one),
            "--out",
            s(&out),
            "--device",
            "tpu",
        ],
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("auto, cpu, cuda or cuda:N"),
        "{}",
        text(&o)
    );
    assert!(!out.exists() && !d.join("a.ckpt").exists());
}
