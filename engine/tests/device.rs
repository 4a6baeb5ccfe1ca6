//! The decoder as candle tensors with a key/value cache (what runs on a GPU)
//! against transformers' recorded outputs and the CPU decoder, run here on
//! the CPU device: the same code runs on CUDA in a `cuda` build.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use vidmusician_engine::neural::device::{self, DeviceChoice};
use vidmusician_engine::neural::generate::{self, Sampling};
use vidmusician_engine::neural::models::musicgen::MusicgenDecoder;
use vidmusician_engine::neural::weights::Weights;
use vidmusician_engine::neural::{Cross, MusicGen};

const TOL: f32 = 1e-4;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/musicgen-tiny")
}

fn reference() -> std::collections::HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture().join("reference.safetensors"), &Device::Cpu).unwrap()
}

fn prompt() -> String {
    let text = std::fs::read_to_string(fixture().join("reference.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["prompts"][0].as_str().unwrap().to_string()
}

fn u32s(r: &std::collections::HashMap<String, Tensor>, name: &str) -> Tensor {
    r[name].to_dtype(DType::U32).unwrap()
}

fn device_decoder(m: &MusicGen) -> MusicgenDecoder {
    let w = Weights::open_dir(&fixture()).unwrap();
    MusicgenDecoder::load(&w.pp("decoder"), &m.config().decoder)
        .unwrap()
        .to_device(&Device::Cpu, DType::F32)
        .unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Each of the reference's two sequences, read by a session of its own, one
/// position per step and, again, the first half in one step: every
/// position's logits are transformers' (padded text, fixed codes).
#[test]
fn a_cached_session_gives_the_reference_logits_step_by_step_and_in_one_read() {
    let m = MusicGen::load(&fixture()).unwrap();
    let dec = device_decoder(&m);
    let r = reference();
    let ids = u32s(&r, "text.input_ids");
    let mask = u32s(&r, "text.attention_mask");
    let states = m.text_states(&ids, &mask).unwrap();
    let codes = u32s(&r, "decoder.input_ids");
    let k = dec.config().num_codebooks;
    let vocab = dec.config().vocab_size;
    let seq = codes.dim(1).unwrap();
    // (sequence · codebook, position, vocab)
    let want: Vec<f32> = r["decoder.logits"]
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let want_at = |s: usize, c: usize, t: usize| {
        let at = ((s * k + c) * seq + t) * vocab;
        &want[at..at + vocab]
    };
    for s in 0..2 {
        let st = states.narrow(0, s, 1).unwrap();
        let ma = mask.narrow(0, s, 1).unwrap();
        let tokens: Vec<Vec<u32>> = (0..k)
            .map(|c| codes.get(s * k + c).unwrap().to_vec1().unwrap())
            .collect();
        let at = |t0: usize, t1: usize| -> Vec<u32> {
            (0..k).flat_map(|c| tokens[c][t0..t1].to_vec()).collect()
        };
        let mut one = dec.session(Some((&st, &ma)), 1, seq).unwrap();
        for t in 0..seq {
            let logits = one.step(&at(t, t + 1), 1, &[]).unwrap();
            for c in 0..k {
                let d = max_diff(&logits[c * vocab..(c + 1) * vocab], want_at(s, c, t));
                assert!(d < TOL, "sequence {s}, position {t}, codebook {c}: {d}");
            }
        }
        assert_eq!(one.len(), seq);
        assert!(
            one.step(&at(0, 1), 1, &[]).is_err(),
            "past the session's capacity"
        );
        let half = seq / 2;
        let mut two = dec.session(Some((&st, &ma)), 1, seq).unwrap();
        let logits = two.step(&at(0, half), half, &[]).unwrap();
        for c in 0..k {
            let d = max_diff(&logits[c * vocab..(c + 1) * vocab], want_at(s, c, half - 1));
            assert!(d < TOL, "sequence {s}, read at once, codebook {c}: {d}");
        }
        let logits = two.step(&at(half, half + 1), 1, &[]).unwrap();
        let d = max_diff(&logits[..vocab], want_at(s, 0, half));
        assert!(d < TOL, "sequence {s}, the step after a read at once: {d}");
        // Several positions at once after some already read: the causal
        // bias counts from the cache's end.
        let mut three = dec.session(Some((&st, &ma)), 1, seq).unwrap();
        three.step(&at(0, 2), 2, &[]).unwrap();
        let logits = three.step(&at(2, half + 1), half - 1, &[]).unwrap();
        for c in 0..k {
            let d = max_diff(&logits[c * vocab..(c + 1) * vocab], want_at(s, c, half));
            assert!(
                d < TOL,
                "sequence {s}, a read at once after two, codebook {c}: {d}"
            );
        }
        let logits = three.step(&at(half + 1, half + 2), 1, &[]).unwrap();
        let d = max_diff(&logits[..vocab], want_at(s, 0, half + 1));
        assert!(d < TOL, "sequence {s}, the step after that: {d}");
    }
}

/// Greedy generation through the device path gives transformers' codes,
/// guided (both rows as one batch) and not.
#[test]
fn greedy_generation_on_the_device_path_gives_the_reference_codes() {
    let mut m = MusicGen::load(&fixture()).unwrap();
    let cpu_cross = m.condition(&prompt()).unwrap();
    assert!(matches!(cpu_cross, Cross::Cpu(_)));
    m.use_device_decoder(device_decoder(&m)).unwrap();
    assert!(matches!(m.condition(&prompt()).unwrap(), Cross::States(..)));
    let r = reference();
    for (name, guidance) in [("generate.guided", 3.0), ("generate.unguided", 1.0)] {
        let want: Vec<u32> = u32s(&r, &format!("{name}.codes"))
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let frames = r[&format!("{name}.codes")].dim(2).unwrap();
        let got = m
            .generate_frames(&prompt(), frames, &Sampling::greedy(guidance), &mut |_| {
                true
            })
            .unwrap();
        let k = got[0].len();
        let got: Vec<u32> = (0..k).flat_map(|c| got.iter().map(move |f| f[c])).collect();
        assert_eq!(got, want, "{name}: codes differ");
    }
}

/// Sampled generation with in-attention inputs and a prompt to continue:
/// the device path draws the same tokens as the CPU decoder.
#[test]
fn sampling_with_layer_inputs_and_a_prompt_matches_the_cpu_decoder() {
    let m = MusicGen::load(&fixture()).unwrap();
    let dec = device_decoder(&m);
    let cfg = dec.config().clone();
    let (k, h) = (cfg.num_codebooks, cfg.hidden_size);
    let (ids, mask) = m.tokenize(&[&prompt()]).unwrap();
    let states = m.text_states(&ids, &mask).unwrap();
    let Cross::Cpu(kv) = m.cross(&states, &mask).unwrap() else {
        panic!("a CPU model gives CPU conditions");
    };
    let prompt_frames: Vec<Vec<u32>> = (0..5)
        .map(|f| {
            (0..k)
                .map(|c| ((f * 7 + c * 3) % cfg.vocab_size) as u32)
                .collect()
        })
        .collect();
    let frames = 9;
    let positions = prompt_frames.len() + frames + k - 1;
    let inputs: Vec<Option<Vec<f32>>> = (0..cfg.num_hidden_layers)
        .map(|l| {
            (l % 2 == 0).then(|| {
                (0..positions * h)
                    .map(|i| ((i * 31 + l * 7) % 17) as f32 / 17.0 - 0.5)
                    .collect()
            })
        })
        .collect();
    let s = Sampling {
        seed: 11,
        ..Sampling::default()
    };
    let mut steps_cpu = 0;
    let cpu = generate::generate_with(
        m.decoder().unwrap(),
        Some(&kv),
        &inputs,
        &prompt_frames,
        frames,
        &s,
        &mut |_, _| {
            steps_cpu += 1;
            true
        },
    )
    .unwrap();
    let mut steps_dev = 0;
    let dev = generate::generate_on(
        &dec,
        Some((&states, &mask)),
        &inputs,
        &prompt_frames,
        frames,
        &s,
        &mut |_, _| {
            steps_dev += 1;
            true
        },
    )
    .unwrap();
    assert_eq!(cpu.len(), frames);
    assert_eq!(dev, cpu);
    assert_eq!(steps_dev, steps_cpu);
    // The inputs matter: without them the tokens differ.
    let plain = generate::generate_on(
        &dec,
        Some((&states, &mask)),
        &[],
        &prompt_frames,
        frames,
        &s,
        &mut |_, _| true,
    )
    .unwrap();
    assert_ne!(plain, dev, "the layer inputs must change the draw");
    // Inputs too short for the window are refused.
    let short = vec![Some(vec![0.0; h])];
    let err = generate::generate_on(
        &dec,
        Some((&states, &mask)),
        &short,
        &prompt_frames,
        frames,
        &s,
        &mut |_, _| true,
    )
    .unwrap_err();
    assert!(err.to_string().contains("in-attention inputs"), "{err}");
}

/// Without a CUDA build, asking for CUDA by name is refused with what is
/// missing, and `auto` settles on the CPU saying why; the CLI does the same.
#[test]
fn cuda_without_a_cuda_build_is_refused_and_auto_takes_the_cpu() {
    if device::cuda_built() || vidmusician_engine::neural::helper::find().is_some() {
        eprintln!("skipped: this is a CUDA build; the GPU check covers it");
        return;
    }
    let e = device::choose(DeviceChoice::Cuda(0))
        .unwrap_err()
        .to_string();
    assert!(e.contains("no CUDA support"), "{e}");
    let a = device::choose(DeviceChoice::Auto).unwrap();
    assert!(a.is_cpu() && a.note.contains("CPU"), "{}", a.note);
}

// The GPU helper: this build's `vidmusician gpu-serve --device cpu` runs the
// device path on the CPU in a process of its own, which is how a CPU build
// drives a `cuda` build's helper.

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use vidmusician_engine::Error;
use vidmusician_engine::neural::helper::Helper;

/// Tests that start helper processes run one at a time, so that counting
/// the process's helpers counts one test's.
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    ONE.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn vidmusician() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_vidmusician"))
}

/// An executable shell script in `dir`.
fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

/// A window to generate: states, mask, in-attention inputs, prompt frames.
type TestWindow = (Tensor, Tensor, Vec<Option<Vec<f32>>>, Vec<Vec<u32>>);

fn window(m: &MusicGen) -> TestWindow {
    let cfg = &m.config().decoder;
    let (k, h) = (cfg.num_codebooks, cfg.hidden_size);
    let (ids, mask) = m.tokenize(&[&prompt()]).unwrap();
    let states = m.text_states(&ids, &mask).unwrap();
    let prompt_frames: Vec<Vec<u32>> = (0..4)
        .map(|f| {
            (0..k)
                .map(|c| ((f * 5 + c) % cfg.vocab_size) as u32)
                .collect()
        })
        .collect();
    let positions = prompt_frames.len() + 30 + k - 1;
    let inputs = vec![
        None,
        Some(
            (0..positions * h)
                .map(|i| (i % 13) as f32 / 13.0 - 0.5)
                .collect(),
        ),
    ];
    (states, mask, inputs, prompt_frames)
}

#[test]
fn the_helper_process_draws_the_cpu_decoders_tokens_and_can_be_cancelled() {
    let _one = one_at_a_time();
    let m = MusicGen::load(&fixture()).unwrap();
    let (states, mask, inputs, prompt_frames) = window(&m);
    let Cross::Cpu(kv) = m.cross(&states, &mask).unwrap() else {
        panic!("a CPU model gives CPU conditions");
    };
    let s = Sampling {
        seed: 4,
        ..Sampling::default()
    };
    let want = generate::generate_with(
        m.decoder().unwrap(),
        Some(&kv),
        &inputs,
        &prompt_frames,
        30,
        &s,
        &mut |_, _| true,
    )
    .unwrap();

    let h = Helper::start(vidmusician(), "cpu").unwrap();
    assert_eq!(h.device(), "cpu");
    let err = h
        .generate(Some((&states, &mask)), &[], &[], 3, &s, &mut |_, _| true)
        .unwrap_err();
    assert!(err.to_string().contains("holds no model"), "{err}");
    h.load(&fixture(), DType::F32).unwrap();
    let mut seen = Vec::new();
    let got = h
        .generate(
            Some((&states, &mask)),
            &inputs,
            &prompt_frames,
            30,
            &s,
            &mut |p, complete| {
                assert_eq!(complete.len(), p.complete);
                seen.push(p.step);
                true
            },
        )
        .unwrap();
    assert_eq!(got, want, "the helper's tokens are the CPU decoder's");
    assert_eq!(
        seen,
        (1..=seen.len()).collect::<Vec<_>>(),
        "every step reported"
    );
    // The frames final at each step are the window's, in order.
    let mut last = Vec::new();
    h.generate(
        Some((&states, &mask)),
        &inputs,
        &prompt_frames,
        30,
        &s,
        &mut |_, complete| {
            last = complete.to_vec();
            true
        },
    )
    .unwrap();
    assert_eq!(last, want);

    // Cancelled at the fifth step: the helper stops and serves the next.
    let mut steps = 0;
    let err = h
        .generate(
            Some((&states, &mask)),
            &inputs,
            &prompt_frames,
            30,
            &s,
            &mut |_, _| {
                steps += 1;
                steps < 5
            },
        )
        .unwrap_err();
    assert!(matches!(err, Error::Cancelled), "{err}");
    assert_eq!(steps, 5, "no step is reported after the cancel");
    // A wrong request is refused and leaves the helper working.
    let bad = vec![vec![9999u32; 4]];
    let err = h
        .generate(Some((&states, &mask)), &[], &bad, 3, &s, &mut |_, _| true)
        .unwrap_err();
    assert!(matches!(err, Error::InvalidSetting(_)), "{err}");
    let again = h
        .generate(
            Some((&states, &mask)),
            &inputs,
            &prompt_frames,
            30,
            &s,
            &mut |_, _| true,
        )
        .unwrap();
    assert_eq!(again, want);
    // Unconditional, and a checkpoint that is not there.
    h.generate(None, &[], &[], 3, &Sampling::greedy(1.0), &mut |_, _| true)
        .unwrap();
    let err = h
        .load(Path::new("/nonexistent/model"), DType::F32)
        .unwrap_err();
    assert!(err.to_string().contains("/nonexistent/model"), "{err}");

    // Letting go of the helper ends its process (and frees its device).
    let pid = h.pid();
    drop(h);
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "the helper outlived its owner"
    );
}

#[test]
fn a_helper_that_cannot_start_names_what_is_missing_and_auto_takes_the_cpu() {
    let _one = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    // What the loader says where a `cuda` build meets a machine without the
    // NVIDIA driver.
    let missing = script(
        dir.path(),
        "vidmusician-cuda",
        "echo \"$0: error while loading shared libraries: libcuda.so.1: cannot open shared object file: No such file or directory\" >&2\nexit 127",
    );
    let err = Helper::start(&missing, "cuda:0").err().unwrap().to_string();
    assert!(err.contains("libcuda.so.1") && err.contains("127"), "{err}");
    let e = device::choose_with(DeviceChoice::Cuda(0), Some(&missing))
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.starts_with("device cuda:0:") && e.contains("libcuda.so.1"),
        "{e}"
    );
    let auto = device::choose_with(DeviceChoice::Auto, Some(&missing)).unwrap();
    assert!(auto.is_cpu());
    assert!(auto.note.contains("libcuda.so.1"), "{}", auto.note);
    // A helper that is not there, and one that says nothing and ends.
    let err = Helper::start(&dir.path().join("absent"), "cuda:0")
        .err()
        .unwrap();
    assert!(
        err.to_string().contains("cannot start the GPU helper"),
        "{err}"
    );
    let mute = script(dir.path(), "mute", "exit 0");
    let err = Helper::start(&mute, "cuda:0").err().unwrap().to_string();
    assert!(err.contains("could not start"), "{err}");
    // A helper that asks for an unknown device is refused by it.
    let err = Helper::start(vidmusician(), "tpu:0")
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("could not start") && err.contains("tpu"),
        "{err}"
    );
}

#[test]
fn a_helper_slow_to_start_holds_up_only_those_asking_for_it() {
    let _one = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    // Says nothing until told to go (or for 60 s at most, so that a failed
    // test leaves nothing running), then ends without being ready.
    let go = dir.path().join("go");
    let slow = script(
        dir.path(),
        "slow-helper",
        &format!(
            "i=0\nwhile [ ! -e {go:?} ] && [ $i -lt 1200 ]; do sleep 0.05; i=$((i+1)); done\nexit 0"
        ),
    );
    let working = script(
        dir.path(),
        "cpu-helper",
        &format!("exec {:?} gpu-serve --device cpu", vidmusician()),
    );
    let starting = {
        let slow = slow.clone();
        std::thread::spawn(move || device::choose_with(DeviceChoice::Cuda(0), Some(&slow)))
    };
    // The slow helper's start is under way (its process runs) before the
    // other is asked for.
    while !std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(Result::ok)
        .any(|e| {
            std::fs::read_to_string(e.path().join("cmdline"))
                .is_ok_and(|c| c.contains("slow-helper"))
        })
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    let other = device::choose_with(DeviceChoice::Cuda(0), Some(&working)).unwrap();
    assert!(!other.is_cpu(), "{}", other.note);
    assert!(
        !starting.is_finished(),
        "the other helper waited for the slow one's start"
    );
    std::fs::write(&go, b"").unwrap();
    let e = starting.join().unwrap().err().unwrap().to_string();
    assert!(e.contains("could not start"), "{e}");
    // The same program asked for again is the same helper.
    let again = device::choose_with(DeviceChoice::Cuda(0), Some(&working)).unwrap();
    match (&other.backend, &again.backend) {
        (device::Backend::Helper(a), device::Backend::Helper(b)) => {
            assert_eq!(a.pid(), b.pid())
        }
        _ => panic!("not helpers"),
    }
}

#[test]
fn a_helper_that_dies_in_a_window_is_an_error_at_once_not_a_hang() {
    let _one = one_at_a_time();
    let m = MusicGen::load(&fixture()).unwrap();
    let (states, mask, inputs, prompt_frames) = window(&m);
    let h = Helper::start(vidmusician(), "cpu").unwrap();
    h.load(&fixture(), DType::F32).unwrap();
    let pid = h.pid();
    let t0 = Instant::now();
    let mut steps = 0;
    let err = h
        .generate(
            Some((&states, &mask)),
            &inputs,
            &prompt_frames,
            30,
            &Sampling::default(),
            &mut |_, _| {
                steps += 1;
                if steps == 2 {
                    // As a GPU fault ends it.
                    std::process::Command::new("kill")
                        .args(["-9", &pid.to_string()])
                        .status()
                        .unwrap();
                }
                true
            },
        )
        .unwrap_err();
    assert!(
        t0.elapsed() < Duration::from_secs(30),
        "took {:?}",
        t0.elapsed()
    );
    let text = err.to_string();
    assert!(matches!(err, Error::Device { .. }), "{text}");
    assert!(
        text.contains("the GPU helper stopped") && text.contains("SIGKILL"),
        "{text}"
    );
    // Every later call says the same at once.
    let again = h.load(&fixture(), DType::F16).unwrap_err().to_string();
    assert!(again.contains("the GPU helper stopped"), "{again}");
}

/// The real `cuda` build of the helper, where the test run has one
/// (`cargo xtask test` builds it): on a machine without the NVIDIA driver
/// and the CUDA libraries it cannot start, and the error says which library
/// is missing; with a GPU it opens the device and serves a window.
#[test]
fn the_cuda_build_of_the_helper_starts_only_where_cuda_is() {
    let _one = one_at_a_time();
    let Some(real) = std::env::var_os("VIDMUSICIAN_TEST_CUDA_HELPER") else {
        eprintln!("skipped: VIDMUSICIAN_TEST_CUDA_HELPER is not set (cargo xtask test sets it)");
        return;
    };
    let real = PathBuf::from(real);
    match Helper::start(&real, "cuda:0") {
        Ok(h) => {
            // A GPU machine: the tiny model's window comes back.
            assert!(h.device().starts_with("cuda:"), "{}", h.device());
            h.load(&fixture(), DType::F32).unwrap();
            let got = h
                .generate(None, &[], &[], 8, &Sampling::greedy(1.0), &mut |_, _| true)
                .unwrap();
            assert_eq!(got.len(), 8);
            // CLIP's vision tower on the GPU reads a frame as the CPU's does.
            use vidmusician_engine::neural::models::clip::{Clip, FrameEncoder, RgbImage};
            let clip_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/clip-tiny");
            let cpu = Clip::load(&clip_dir).unwrap();
            let side = cpu.side();
            let rgb: Vec<u8> = (0..side * side * 3).map(|i| (i * 7 % 251) as u8).collect();
            let image = [RgbImage::new(side, side, &rgb).unwrap()];
            let want = cpu.encode(&image, true).unwrap();
            let on = h.encode_for(&clip_dir, DType::F32, &image, true).unwrap();
            let worst = want
                .pooled
                .iter()
                .chain(&want.patches)
                .flatten()
                .zip(on.pooled.iter().chain(&on.patches).flatten())
                .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(worst < 1e-3, "CLIP on the GPU differs by {worst}");
        }
        Err(e) => {
            let text = e.to_string();
            assert!(matches!(e, Error::Device { .. }), "{text}");
            assert!(
                text.contains("could not start") && text.contains(".so"),
                "names the missing library: {text}"
            );
            eprintln!("as expected without a GPU: {text}");
        }
    }
}

// The engine service with devices: in this binary, not the service tests',
// where a test counts the process's decoder threads.

use vidmusician_engine::service::{Engine, EngineConfig, Event, Request};

/// A neural piece is heard early: its first chunk reaches the player once
/// about 1.6 s of its music is made (the mastering's level is set from the
/// first 1.5 s), not at the next hand-over.
#[test]
fn the_first_neural_chunk_comes_once_the_level_can_be_set() {
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/musicgen-tiny");
    let engine = Engine::start(EngineConfig {
        cache_dir: None,
        model_dir: Some(model),
        ..EngineConfig::default()
    })
    .unwrap();
    let mut req = Request::text("calm piano", 8.0);
    req.sample_rate = 48_000;
    req.chunk_frames = 4800;
    req.max_chunks = 200;
    let (id, reader) = engine.submit(req).unwrap();
    let mut reader = reader.unwrap();
    let mut fraction = 0.0;
    let mut first = None;
    engine
        .wait(id, |ev| {
            if let Event::Progress { fraction: f, .. } = ev {
                fraction = *f;
            }
            if first.is_none() && reader.pop().is_some() {
                first = Some(fraction);
            }
        })
        .unwrap();
    let at = first.expect("chunks while the piece was made") * 8.0;
    // 1.6 s settled and the codec's few frames of look-ahead (1.8 s with
    // the tiny checkpoint); the next hand-over would be 2 s later.
    assert!(
        (1.6..2.0).contains(&at),
        "first chunk after {at:.2} s of music"
    );
}

/// An engine asked for a CUDA device in a build or on a machine without one
/// makes the piece on the CPU, the same piece as asked there, and says why.
#[test]
fn a_device_that_cannot_be_had_leaves_the_work_on_the_cpu_and_says_so() {
    let _one = one_at_a_time();
    use vidmusician_engine::neural::device::{self, DeviceChoice};
    let make = |device: DeviceChoice| text_piece(&tiny_engine(device, None), 3);
    let cpu = make(DeviceChoice::Cpu);
    assert_eq!(
        cpu.device.as_deref(),
        Some("running on the CPU (asked for)")
    );
    if device::cuda_built() && device::choose(DeviceChoice::Cuda(0)).is_ok() {
        eprintln!("skipped the fallback: a CUDA device is here (the GPU check covers it)");
        return;
    }
    for choice in [DeviceChoice::Cuda(0), DeviceChoice::Auto] {
        let other = make(choice);
        let note = other.device.clone().unwrap_or_default();
        assert!(note.starts_with("running on the CPU"), "{choice}: {note}");
        assert!(
            note.contains("CUDA"),
            "{choice}: says what is missing: {note}"
        );
        assert_eq!(other.audio.channels, cpu.audio.channels, "{choice}");
    }
    // Through a GPU helper (here this build's `gpu-serve` on the CPU, as a
    // `cuda` build's serves a GPU): the same piece, made in the helper,
    // which ends with the engine.
    let dir = tempfile::tempdir().unwrap();
    let helper = dir.path().join("vidmusician-cuda");
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
    let decoded = vidmusician_engine::neural::helper::samples_decoded();
    let through = tiny_engine(DeviceChoice::Cuda(0), Some(&helper));
    let done = text_piece(&through, 3);
    assert!(
        vidmusician_engine::neural::helper::samples_decoded() > decoded,
        "the piece's audio was decoded in the helper"
    );
    let note = done.device.clone().unwrap_or_default();
    assert!(
        note.contains("in the GPU helper") && note.contains("vidmusician-cuda"),
        "{note}"
    );
    assert_eq!(done.audio.channels, cpu.audio.channels);
    assert_eq!(helpers_running(), 1, "one helper for the engine");
    // A second engine of the process (another plugin instance) shares it.
    let second = tiny_engine(DeviceChoice::Cuda(0), Some(&helper));
    let note = text_piece(&second, 4).device.unwrap_or_default();
    assert!(note.contains("in the GPU helper"), "{note}");
    assert_eq!(helpers_running(), 1, "one helper for the process");
    drop(through);
    assert_eq!(helpers_running(), 1, "the second engine still holds it");
    drop(second);
    assert_eq!(helpers_running(), 0, "the helper outlived the engine");

    // The composer reads no device.
    let eng = Engine::start(EngineConfig {
        cache_dir: None,
        device: DeviceChoice::Cuda(0),
        gpu_helper: Some(helper),
        ..EngineConfig::default()
    })
    .unwrap();
    let v = dir.path().join("a.mp4");
    vidmusician_engine::video::synth::write_video(
        &v,
        &vidmusician_engine::video::synth::SynthSpec::new(192, 144, 25, 2.0, vec![1.0]),
    )
    .unwrap();
    let (id, _) = eng.submit(Request::new(&v)).unwrap();
    assert_eq!(eng.wait(id, |_| {}).unwrap().device, None);
    assert_eq!(helpers_running(), 0, "the composer started no helper");
}

/// An engine on the tiny checkpoint, without a disk cache.
fn tiny_engine(device: DeviceChoice, gpu_helper: Option<&Path>) -> Engine {
    Engine::start(EngineConfig {
        cache_dir: None,
        model_dir: Some(fixture()),
        device,
        gpu_helper: gpu_helper.map(Path::to_path_buf),
        ..EngineConfig::default()
    })
    .unwrap()
}

/// A piece served from the cache says where it was made then.
#[test]
fn a_piece_from_the_cache_says_where_it_was_made() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::start(EngineConfig {
        cache_dir: Some(dir.path().join("cache")),
        model_dir: Some(fixture()),
        device: DeviceChoice::Cpu,
        ..EngineConfig::default()
    })
    .unwrap();
    let made = text_piece(&engine, 5);
    assert!(!made.cached);
    let note = made
        .device
        .clone()
        .expect("a neural piece says where it ran");
    let again = text_piece(&engine, 5);
    assert!(again.cached, "the same piece again comes from the cache");
    assert_eq!(again.audio.channels, made.audio.channels);
    assert_eq!(again.device.as_deref(), Some(note.as_str()));
}

/// One second of the text engine's music for a seed.
fn text_piece(engine: &Engine, seed: u64) -> vidmusician_engine::service::Finished {
    let mut req = Request::text("calm piano", 1.0);
    req.sample_rate = 32_000;
    req.seed = seed;
    let (id, _) = engine.submit(req).unwrap();
    engine.wait(id, |_| {}).unwrap()
}

/// This process's children serving as GPU helpers.
fn helpers_running() -> usize {
    let me = std::process::id().to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| {
            let p = e.ok()?.path();
            let stat = std::fs::read_to_string(p.join("stat")).ok()?;
            // pid (comm) state ppid …
            let after = stat.rsplit_once(')')?.1;
            let ppid = after.split_whitespace().nth(1)?;
            let cmd = std::fs::read_to_string(p.join("cmdline")).ok()?;
            (ppid == me && cmd.contains("gpu-serve")).then_some(())
        })
        .count()
}

/// CLIP's vision tower in the helper reads a video's frames as this
/// process's CPU tower does (here the helper's `cpu` mode, f32: to the
/// bit); what it cannot take is an error in words, and the helper goes on.
#[test]
fn the_helper_reads_frames_with_clip_as_this_process_does() {
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;
    use vidmusician_engine::analysis::clip_features::global_and_curve;
    use vidmusician_engine::neural::helper::HelperFrames;
    use vidmusician_engine::neural::models::clip::{Clip, RgbImage};
    let _one = one_at_a_time();
    let clip_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/clip-tiny");
    let dir = tempfile::tempdir().unwrap();
    let v = dir.path().join("v.mp4");
    vidmusician_engine::video::synth::write_video(
        &v,
        &vidmusician_engine::video::synth::SynthSpec::new(96, 64, 25, 2.0, vec![1.0]),
    )
    .unwrap();
    let cancel = AtomicBool::new(false);
    let local = Clip::load(&clip_dir).unwrap();
    let want = global_and_curve(&v, &local, None, &cancel, &mut |_| {}).unwrap();

    let h = Arc::new(Helper::start(vidmusician(), "cpu").unwrap());
    let side = local.preprocess.shortest_edge;
    let frame = vec![7u8; side * side * 3];
    let image = RgbImage::new(side, side, &frame).unwrap();
    let e = h.encode(&[image], false).unwrap_err();
    assert!(e.to_string().contains("holds no CLIP"), "{e}");
    // A checkpoint whose weights are missing: the helper says so.
    let broken = dir.path().join("broken-clip");
    std::fs::create_dir(&broken).unwrap();
    std::fs::copy(clip_dir.join("config.json"), broken.join("config.json")).unwrap();
    let e = HelperFrames::new(h.clone(), &broken, DType::F32)
        .err()
        .unwrap();
    assert!(
        matches!(e, Error::Device { .. }) && e.to_string().contains("broken-clip"),
        "{e}"
    );

    let frames = HelperFrames::new(h.clone(), &clip_dir, DType::F32).unwrap();
    let got = global_and_curve(&v, &frames, None, &cancel, &mut |_| {}).unwrap();
    assert_eq!(got, want, "the helper's features are not this process's");
    // Frames of two sizes in a batch, or none, are refused; the helper
    // still answers after.
    let small = vec![0u8; 4 * 4 * 3];
    let e = h
        .encode(&[image, RgbImage::new(4, 4, &small).unwrap()], false)
        .unwrap_err();
    assert!(e.to_string().contains("one size"), "{e}");
    let e = h.encode(&[], false).unwrap_err();
    assert!(matches!(e, Error::InvalidSetting(_)), "{e}");
    assert!(!h.is_broken());
    let one = h.encode(&[image], true).unwrap();
    assert_eq!((one.pooled.len(), one.patches.len()), (1, 1));
}

/// The VidMusician and zero-shot engines driving a GPU helper read the
/// video's frames with CLIP in the helper; for the VidMusician engine this
/// process loads no CLIP at all (an engine on the CPU does, which shows the
/// count sees it).
#[test]
fn the_neural_engines_read_frames_in_the_helper_and_load_no_clip_for_it_here() {
    use vidmusician_engine::neural::conditioning::{Adapter, AdapterConfig};
    use vidmusician_engine::service::{EngineChoice, clip_loads};
    let _one = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let models = d.join("models");
    std::fs::create_dir(&models).unwrap();
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    std::os::unix::fs::symlink(
        fixtures.join("musicgen-tiny"),
        models.join("musicgen-small"),
    )
    .unwrap();
    std::os::unix::fs::symlink(
        fixtures.join("clip-tiny"),
        models.join("clip-vit-base-patch32"),
    )
    .unwrap();
    let mg = MusicGen::load(&fixture()).unwrap();
    let cfg = AdapterConfig {
        clip_width: 32,
        block_size: 1,
        ..AdapterConfig::default()
    };
    let mut adapter = Adapter::new(&cfg, &mg, "facebook/musicgen-small", DType::F32).unwrap();
    adapter.add_rhythm(&mg).unwrap();
    let adapter_path = d.join("tiny.safetensors");
    adapter.save(&adapter_path).unwrap();
    let v = d.join("v.mp4");
    vidmusician_engine::video::synth::write_video(
        &v,
        &vidmusician_engine::video::synth::SynthSpec::new(96, 64, 25, 2.0, vec![1.0]),
    )
    .unwrap();
    let helper = script(
        d,
        "vidmusician-cuda",
        &format!("exec {:?} gpu-serve --device cpu", vidmusician()),
    );
    let piece = |device: DeviceChoice, engine_choice: EngineChoice| {
        let before = clip_loads().0;
        let engine = Engine::start(EngineConfig {
            cache_dir: None,
            model_dir: Some(models.clone()),
            adapter: Some(adapter_path.clone()),
            device,
            gpu_helper: Some(helper.clone()),
            ..EngineConfig::default()
        })
        .unwrap();
        let mut req = Request::new(&v);
        req.engine = engine_choice;
        // The zero-shot engine's rhythm from CLIP too: its 25 fps pass.
        req.clip_rhythm = true;
        let (id, _) = engine.submit(req).unwrap();
        let done = engine.wait(id, |_| {}).unwrap();
        (done, clip_loads().0 - before)
    };
    use vidmusician_engine::neural::helper::frames_sent;
    let sent = frames_sent();
    let (done, loads) = piece(DeviceChoice::Cuda(0), EngineChoice::VidMusician);
    let note = done.device.clone().unwrap_or_default();
    assert!(note.contains("in the GPU helper"), "{note}");
    assert!((done.audio.duration() - 2.0).abs() < 0.01);
    assert_eq!(loads, 0, "the engine loaded CLIP here beside the helper's");
    // 2 s: 50 frames at 25 fps for the curve, 2 at 1 fps.
    assert_eq!(frames_sent() - sent, 52, "frames not read in the helper");
    let (_, loads) = piece(DeviceChoice::Cpu, EngineChoice::VidMusician);
    assert_eq!(loads, 1, "the CPU engine's CLIP load went uncounted");
    assert_eq!(frames_sent() - sent, 52, "the CPU engine used the helper");
    // The zero-shot engine reads its pictures in the helper too: its
    // words' CLIP stays here, without a vision tower.
    let towers = vidmusician_engine::service::clip_vision_loads();
    let (done, _) = piece(DeviceChoice::Cuda(0), EngineChoice::ZeroShot);
    assert_eq!(
        vidmusician_engine::service::clip_vision_loads(),
        towers,
        "zero-shot on a device loaded a vision tower here"
    );
    assert!(
        done.device
            .unwrap_or_default()
            .contains("in the GPU helper")
    );
    assert_eq!(
        frames_sent() - sent,
        104,
        "zero-shot: frames not read in the helper"
    );
    assert_eq!(helpers_running(), 0, "the helper outlived the engine");
}

/// The decoder's copy for a device holds its weights in the forms steps
/// take (the queries' scale folded in, the heads side by side): it runs
/// sessions, and refuses what would need the original forms.
#[test]
fn the_inference_copy_runs_sessions_only() {
    use vidmusician_engine::neural::models::musicgen::Conditioning;
    let m = MusicGen::load(&fixture()).unwrap();
    let dec = device_decoder(&m);
    let k = m.config().decoder.num_codebooks;
    let tokens = Tensor::zeros((1, k, 3), DType::U32, &Device::Cpu).unwrap();
    let e = dec.forward(&tokens, &Conditioning::default()).unwrap_err();
    assert!(e.to_string().contains("inference sessions only"), "{e}");
    assert!(dec.to_device(&Device::Cpu, DType::F32).is_err());
    // The original decoder runs both.
    let w = Weights::open_dir(&fixture()).unwrap();
    let original = MusicgenDecoder::load(&w.pp("decoder"), &m.config().decoder).unwrap();
    original.forward(&tokens, &Conditioning::default()).unwrap();
    let e = original.session(None, 1, 8).err().unwrap();
    assert!(e.to_string().contains("inference copy"), "{e}");
}

/// A copy of the fixture `from` in `to` whose tensors named with `part` are
/// negated: another model of the same shape.
fn altered_copy(from: &Path, to: &Path, part: &str) {
    std::fs::create_dir_all(to).unwrap();
    for f in std::fs::read_dir(from).unwrap() {
        let f = f.unwrap().path();
        let name = f.file_name().unwrap();
        if name != "model.safetensors" {
            std::fs::copy(&f, to.join(name)).unwrap();
        }
    }
    let mut t =
        candle_core::safetensors::load(from.join("model.safetensors"), &Device::Cpu).unwrap();
    for (name, v) in t.iter_mut() {
        if name.contains(part) {
            *v = v.neg().unwrap();
        }
    }
    candle_core::safetensors::save(&t, to.join("model.safetensors")).unwrap();
}

/// Two engines of one process on two models share a helper: each request
/// is served by its own model, however the two interleave (the helper is
/// made to hold the asked model under the same lock as the request).
#[test]
fn a_shared_helper_serves_each_request_by_its_own_model() {
    use vidmusician_engine::neural::helper::HelperFrames;
    use vidmusician_engine::neural::models::clip::{FrameEncoder, RgbImage};
    let _one = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let (clip_a, clip_b) = (fixtures.join("clip-tiny"), dir.path().join("clip-b"));
    altered_copy(&clip_a, &clip_b, "visual_projection");
    let (mg_a, mg_b) = (fixture(), dir.path().join("musicgen-b"));
    altered_copy(&mg_a, &mg_b, "lm_heads");
    let h = std::sync::Arc::new(Helper::start(vidmusician(), "cpu").unwrap());

    // Two engines' frame readers: the second's load comes after the first's.
    let frames_a = HelperFrames::new(h.clone(), &clip_a, DType::F32).unwrap();
    let frames_b = HelperFrames::new(h.clone(), &clip_b, DType::F32).unwrap();
    let side = frames_a.side();
    let rgb: Vec<u8> = (0..side * side * 3).map(|i| (i * 7 % 251) as u8).collect();
    let image = [RgbImage::new(side, side, &rgb).unwrap()];
    let read = |f: &HelperFrames| f.encode(&image, false).unwrap().projected;
    let a = read(&frames_a);
    let b = read(&frames_b);
    assert_ne!(a, b, "the two CLIPs should differ");
    assert_eq!(
        read(&frames_a),
        a,
        "the first CLIP's frames were read by the second"
    );

    let make = |d: &Path| {
        h.generate_piece(
            d,
            DType::F32,
            None,
            &[],
            &[],
            6,
            &Sampling::greedy(1.0),
            None,
            &mut |_, _, _| true,
        )
        .unwrap()
        .0
    };
    let first = make(&mg_a);
    let other = make(&mg_b);
    assert_ne!(first, other, "the two decoders should differ");
    assert_eq!(
        make(&mg_a),
        first,
        "the first model's window was made by the second"
    );
}

/// A piece made on a helper is decoded there too, beside the decoder: the
/// same stretches, to the sample, as this process's own decoding of the
/// same frames, window after window. Pieces interleaved on one helper keep
/// their own codec state, and a window that goes on from frames the helper
/// does not hold is refused in words.
#[test]
fn a_piece_made_in_the_helper_is_decoded_there_as_here() {
    use std::sync::Arc;
    use vidmusician_engine::neural::Precision;
    use vidmusician_engine::neural::device::{Backend, Chosen};
    use vidmusician_engine::neural::helper::{self, AudioPlan};
    let _one = one_at_a_time();
    let h = Arc::new(Helper::start(vidmusician(), "cpu").unwrap());

    // Through MusicGen: 12 s are four windows of the tiny checkpoint
    // (251 frames, then 126 after 125 of context).
    let s = Sampling {
        seed: 9,
        ..Sampling::default()
    };
    let stretches = |m: &MusicGen| {
        let mut got = Vec::new();
        m.generate_streaming("calm piano", 12.0, &s, &mut |_| true, &mut |a| {
            got.push(a.to_vec());
            Ok(())
        })
        .unwrap();
        got
    };
    let cpu = MusicGen::load(&fixture()).unwrap();
    let want = stretches(&cpu);
    // The model an engine loads for a device reads no CPU decoder.
    let mut on = MusicGen::load_without_decoder(&fixture(), Precision::F32).unwrap();
    assert!(!on.holds_cpu_decoder());
    let err = on
        .generate("calm piano", 1.0, &s, &mut |_| true)
        .unwrap_err();
    assert!(err.to_string().contains("without its CPU decoder"), "{err}");
    let chosen = Chosen {
        backend: Backend::Helper(h.clone()),
        name: "cpu".into(),
        note: String::new(),
    };
    on.use_device(&chosen, DType::F32).unwrap();
    assert!(!on.holds_cpu_decoder());
    let before = helper::samples_decoded();
    let got = stretches(&on);
    let total: usize = want.iter().map(Vec::len).sum();
    assert_eq!(total, 12 * 32_000);
    assert!(want.len() > 6, "{} stretches", want.len());
    assert_eq!(got.len(), want.len(), "the same hand-overs");
    assert!(got == want, "the helper's audio is this process's");
    assert_eq!(
        helper::samples_decoded() - before,
        total,
        "the audio was decoded in the helper"
    );
    // Back on the CPU, it reads its decoder then.
    on.use_device(&Chosen::cpu(String::new()), DType::F32)
        .unwrap();
    assert!(on.holds_cpu_decoder());
    assert!(
        stretches(&on) == want,
        "the CPU decoder read late is the CPU's"
    );

    // Window by window: a piece alone, then interleaved with another.
    let hop = cpu.codec().hop_length();
    let window = |id: u64, so_far: &[Vec<u32>], n: usize, seed: u64| {
        let plan = AudioPlan {
            piece: id,
            codec: fixture(),
            before: so_far.len(),
            total: 200,
            first_settled: 80,
            every: 100,
        };
        let prompt = &so_far[so_far.len().saturating_sub(20)..];
        let mut audio = Vec::new();
        let sampling = Sampling {
            seed,
            ..Sampling::default()
        };
        let (frames, last) = h.generate_piece(
            &fixture(),
            DType::F32,
            None,
            &[],
            prompt,
            n,
            &sampling,
            Some(plan),
            &mut |_, _, a| {
                audio.extend(a.unwrap_or_default());
                true
            },
        )?;
        audio.extend(last.expect("a window's audio with its frames"));
        Ok::<_, vidmusician_engine::Error>((frames, audio))
    };
    let piece = |id: u64, seeds: (u64, u64)| {
        let (a, mut audio) = window(id, &[], 120, seeds.0).unwrap();
        let (b, more) = window(id, &a, 80, seeds.1).unwrap();
        audio.extend(more);
        ([a, b].concat(), audio)
    };
    let (frames, alone) = piece(100, (1, 2));
    assert_eq!(alone.len(), 200 * hop, "the whole piece");
    let whole = cpu.decode(&frames).unwrap();
    let peak = whole.iter().fold(0f32, |m, v| m.max(v.abs()));
    assert!(
        max_diff(&alone, &whole) <= 1e-5 * peak.max(1e-3),
        "{} of {peak}",
        max_diff(&alone, &whole)
    );

    let (a1, mut a_audio) = window(101, &[], 120, 1).unwrap();
    let (b1, mut b_audio) = window(102, &[], 120, 3).unwrap();
    // Errors between: frames the helper does not hold, or other frames
    // than those it holds.
    let err = window(103, &a1, 80, 2).unwrap_err();
    assert!(err.to_string().contains("not held"), "{err}");
    let mut wrong = a1.clone();
    wrong[119][0] = (wrong[119][0] + 1) % 64;
    let err = window(101, &wrong, 80, 2).unwrap_err();
    assert!(err.to_string().contains("other frames"), "{err}");
    // That refusal let go of piece 101: it starts again.
    let (again, restart) = window(101, &[], 120, 1).unwrap();
    assert_eq!((&again, &restart), (&a1, &a_audio));
    let (_, more) = window(101, &a1, 80, 2).unwrap();
    a_audio.extend(more);
    let (_, more) = window(102, &b1, 80, 4).unwrap();
    b_audio.extend(more);
    assert!(
        a_audio == alone,
        "interleaved, piece 101 is decoded as alone"
    );
    assert_eq!(b_audio.len(), 200 * hop);
    assert_ne!(b_audio, a_audio);
    // A finished piece is let go.
    let err = window(101, &frames, 80, 2).unwrap_err();
    assert!(err.to_string().contains("not held"), "{err}");
}
