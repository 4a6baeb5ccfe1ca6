//! The plugin reaching a GPU through the GPU helper: the plugin itself links
//! no CUDA and loads everywhere; a `vidmusician-cuda` process holds the
//! device and ends with the instance. Here the helper is this workspace's
//! `vidmusician gpu-serve --device cpu` (the same code a `cuda` build runs
//! on a GPU); with `VIDMUSICIAN_TEST_CUDA_HELPER` naming a real `cuda` build
//! (as `cargo xtask test` does), that one is tried too, which on a machine
//! without the NVIDIA driver cannot start: the plugin then plays on the CPU
//! and says why. A test binary of its own: it sets `VIDMUSICIAN_MODELS` and
//! `VIDMUSICIAN_CUDA_HELPER` for the whole process.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use assert_no_alloc::AllocDisabler;
use common::*;
use vidmusician_engine::neural::Precision;
use vidmusician_engine::neural::device::DeviceChoice;
use vidmusician_engine::service::{Engine, EngineChoice, EngineConfig, Request};
use vidmusician_plugin::editor::model::{Status, live};

#[global_allocator]
static ALLOCATOR: AllocDisabler = AllocDisabler;

/// The workspace's `vidmusician`, which `cargo test --workspace` builds.
fn vidmusician() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().unwrap().parent().unwrap().join("vidmusician");
    assert!(
        bin.is_file(),
        "{} is not built: run `cargo build -p vidmusician-engine --bin vidmusician` (cargo \
         xtask test builds it)",
        bin.display()
    );
    bin
}

/// This process's children serving as GPU helpers.
fn helpers_running() -> usize {
    let me = std::process::id().to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| {
            let p = e.ok()?.path();
            let stat = std::fs::read_to_string(p.join("stat")).ok()?;
            let ppid = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(1)?
                .to_string();
            let cmd = std::fs::read_to_string(p.join("cmdline")).ok()?;
            (ppid == me && cmd.contains("gpu-serve")).then_some(())
        })
        .count()
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !done() {
        assert!(t0.elapsed() < Duration::from_secs(20), "waited for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn state(video: &Path, device: &str, seed: u32) -> String {
    format!(
        r#"{{"version":2,"video":{:?},"prompt":"warm piano","params":[[1,{seed}],[3,2],[4,0],[6,5]],"device":"{device}"}}"#,
        video.to_str().unwrap()
    )
}

/// Plays 100 blocks offline of the take of `seed` against `want` (all
/// sounding music), or checks only that music sounds when `want` is `None`;
/// returns the frames heard. The editor's device note, and whether the take
/// came from the cache, go to [`NOTES`].
fn play(
    video: &Path,
    device: &str,
    seed: u32,
    want: Option<&vidmusician_engine::audio::Audio>,
) -> usize {
    let mut inst = instance();
    load_state(&mut inst, state(video, device, seed).as_bytes());
    set_offline(&mut inst);
    let mut proc = start(&mut inst, 48_000.0, 1024);
    let mut d = Driver::new(1024);
    let mut sounding = 0;
    for k in 0..100 {
        let start = k * 1024;
        let got = d.block(&mut proc, start as f64 / 48_000.0, 1024, true);
        sounding += match want {
            Some(w) => assert_plays(got, w, start, device),
            None => got.0.iter().filter(|x| **x != 0.0).count(),
        };
    }
    // The engine's last word reaches the editor's view on the plugin's own
    // schedule (the steward's tick).
    let model = live().pop().expect("the instance's editor model");
    wait_until("the piece to be reported finished", || {
        matches!(model.view().status, Status::Finished { .. })
    });
    let cached = matches!(model.view().status, Status::Finished { cached: true });
    let note = model.view().device_note.clone().unwrap_or_default();
    drop(model);
    inst.deactivate(proc.stop_processing());
    drop(inst);
    eprintln!("{device}: {note}");
    NOTES.lock().unwrap().push((note, cached));
    sounding
}

/// Each take's device note in the editor, and whether it came from the cache.
static NOTES: std::sync::Mutex<Vec<(String, bool)>> = std::sync::Mutex::new(Vec::new());

fn last_note() -> (String, bool) {
    NOTES.lock().unwrap().last().cloned().unwrap_or_default()
}

#[test]
fn the_plugin_drives_a_gpu_helper_and_ends_it_with_the_instance() {
    let (dir, video) = fixture();
    let models = dir.path().join("models");
    let small = models.join("musicgen-small");
    std::fs::create_dir_all(&small).unwrap();
    let tiny = Path::new(env!("CARGO_MANIFEST_DIR")).join("../engine/tests/fixtures/musicgen-tiny");
    for e in std::fs::read_dir(&tiny).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, small.join(p.file_name().unwrap())).unwrap();
    }
    let helper = dir.path().join("vidmusician-cuda");
    std::fs::write(
        &helper,
        format!(
            "#!/bin/sh\nexec {:?} gpu-serve --device cpu\n",
            vidmusician()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
    // SAFETY: set before any engine of this process starts.
    unsafe {
        std::env::set_var("VIDMUSICIAN_MODELS", &models);
        std::env::set_var("VIDMUSICIAN_CUDA_HELPER", &helper);
    }

    // What the engine makes for the plugin's request through the helper.
    let engine = Engine::start(EngineConfig {
        cache_dir: None,
        precision: Precision::Q8,
        device: DeviceChoice::Cuda(0),
        ..EngineConfig::default()
    })
    .unwrap();
    let mut r = Request::new(video);
    r.engine = EngineChoice::Text;
    r.prompt = "warm piano".into();
    r.guidance = Some(5.0);
    r.seed = 8;
    r.sample_rate = 48_000;
    let (id, _) = engine.submit(r).unwrap();
    let done = engine.wait(id, |_| {}).unwrap();
    let want = (*done.audio).clone();
    let note = done.device.clone().unwrap_or_default();
    assert!(note.contains("GPU helper"), "{note}");
    drop(engine);
    assert_eq!(helpers_running(), 0);

    // The plugin asked for the GPU by its saved state plays that music, and
    // its editor says where it was made.
    let sounding = play(video, "cuda:0", 8, Some(&want));
    assert!(sounding > 48_000, "{sounding} frames of music compared");
    let (seen, cached) = last_note();
    assert!(seen.contains("GPU helper") && !cached, "{seen}");
    // Destroying the instance ended its helper, and so freed the device.
    wait_until("the helper to end with the instance", || {
        helpers_running() == 0
    });
    // The same take again, in an instance asked for the CPU, comes from
    // the cache and says where it was made.
    let sounding = play(video, "cpu", 8, Some(&want));
    assert!(sounding > 48_000, "{sounding} frames of music compared");
    let (seen, cached) = last_note();
    assert!(
        seen.contains("GPU helper") && cached,
        "{seen} (cached: {cached})"
    );

    // A real `cuda` build of the helper, where the test run has one: on a
    // machine without the NVIDIA driver it cannot start (the loader names
    // what is missing) and the plugin plays on the CPU.
    match std::env::var_os("VIDMUSICIAN_TEST_CUDA_HELPER") {
        Some(real) => {
            // SAFETY: every engine of this process has ended.
            unsafe { std::env::set_var("VIDMUSICIAN_CUDA_HELPER", &real) };
            let sounding = play(video, "auto", 9, None);
            assert!(sounding > 48_000, "the plugin played {sounding} frames");
            let (seen, _) = last_note();
            let gpu_here = seen.starts_with("running on CUDA");
            assert!(
                gpu_here
                    || (seen.starts_with("running on the CPU (auto: ") && seen.contains("lib")),
                "{seen}"
            );
            wait_until("the real helper to end", || helpers_running() == 0);
        }
        None => eprintln!(
            "skipped the real CUDA helper: VIDMUSICIAN_TEST_CUDA_HELPER is not set \
             (cargo xtask test sets it)"
        ),
    }
}
