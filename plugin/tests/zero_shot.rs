//! The zero-shot engine in the plugin. On two tracks at once: MusicGen and
//! CLIP (the repository's tiny checkpoints, found where users keep models)
//! are loaded once for both instances, both play, and the weights are freed
//! when both are destroyed. With the Engine parameter on auto, the models
//! being there, a long video is scored by the zero-shot engine and streamed
//! without a preview piece of its own. A test binary of its own: it points
//! `VIDMUSICIAN_MODELS` at the checkpoints, and the load counts are the
//! process's (its tests run one at a time).

mod common;

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use assert_no_alloc::AllocDisabler;
use common::*;
use vidmusician_engine::audio::read_wav;
use vidmusician_engine::service::{clip_loads, musicgen_loads};
use vidmusician_engine::video::synth::{SynthSpec, write_video};

#[global_allocator]
static ALLOCATOR: AllocDisabler = AllocDisabler;

static SERIAL: Mutex<()> = Mutex::new(());

/// Puts the tiny checkpoints where the plugin looks for models, once, and
/// runs the calling test alone.
fn with_models() -> MutexGuard<'static, ()> {
    static MODELS: OnceLock<()> = OnceLock::new();
    let one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    MODELS.get_or_init(|| {
        let (dir, _) = fixture();
        let models = dir.path().join("models");
        std::fs::create_dir_all(&models).unwrap();
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../engine/tests/fixtures");
        for (from, to) in [
            ("musicgen-tiny", "musicgen-small"),
            ("clip-tiny", "clip-vit-base-patch32"),
        ] {
            std::os::unix::fs::symlink(fixtures.join(from), models.join(to)).unwrap();
        }
        // SAFETY: set before any engine of this process starts.
        unsafe { std::env::set_var("VIDMUSICIAN_MODELS", &models) };
    });
    one
}

#[test]
fn two_instances_share_one_copy_of_each_model() {
    let _one = with_models();
    let (_, video) = fixture();
    let before = (musicgen_loads(), clip_loads());
    assert_eq!((before.0.1, before.1.1), (0, 0));

    // Engine 3 is zero-shot; two seeds, two tracks.
    let state = |seed: u32| {
        format!(
            r#"{{"version":1,"video":{:?},"params":[[1,{seed}],[3,3],[4,0]]}}"#,
            video.to_str().unwrap()
        )
    };
    let mut a = instance();
    let mut b = instance();
    load_state(&mut a, state(1).as_bytes());
    load_state(&mut b, state(2).as_bytes());
    // Offline, so each block waits for its music.
    set_offline(&mut a);
    set_offline(&mut b);
    let mut pa = start(&mut a, 48_000.0, 1024);
    let mut pb = start(&mut b, 48_000.0, 1024);
    let (mut da, mut db) = (Driver::new(1024), Driver::new(1024));
    let (mut la, mut lb) = (0.0f32, 0.0f32);
    for k in 0..100 {
        let t = (k * 1024) as f64 / 48_000.0;
        let (l, _) = da.block(&mut pa, t, 1024, true);
        la = l.iter().fold(la, |m, x| m.max(x.abs()));
        let (l, _) = db.block(&mut pb, t, 1024, true);
        lb = l.iter().fold(lb, |m, x| m.max(x.abs()));
    }
    assert!(la > 0.01 && lb > 0.01, "silent: {la} {lb}");
    let (mg, cl) = (musicgen_loads(), clip_loads());
    assert_eq!(mg, (before.0.0 + 1, 1), "MusicGen loaded more than once");
    assert_eq!(cl, (before.1.0 + 1, 1), "CLIP loaded more than once");

    a.deactivate(pa.stop_processing());
    b.deactivate(pb.stop_processing());
    drop(a);
    assert_eq!(musicgen_loads().1, 1, "the other track still needs it");
    drop(b);
    assert_eq!(musicgen_loads().1, 0, "MusicGen outlived both instances");
    assert_eq!(clip_loads().1, 0, "CLIP outlived both instances");
}

/// The cached pieces' metadata files.
fn cached_pieces(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| Some(e.ok()?.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect()
}

#[test]
fn on_auto_a_long_video_is_scored_by_zero_shot_with_no_preview_piece() {
    let _one = with_models();
    let (dir, _) = fixture();
    let video = dir.path().join("long-zero-shot.mp4");
    let cuts = vec![1.5, 3.2, 5.0, 7.4, 9.9, 12.5, 15.1, 17.0];
    write_video(&video, &SynthSpec::new(160, 120, 25, 20.0, cuts)).unwrap();
    let cache = dir.path().join("cache").join("audio");
    let before = cached_pieces(&cache);

    // The Engine parameter left on auto.
    let state = format!(
        r#"{{"version":1,"video":{:?},"params":[[1,9],[4,0]]}}"#,
        video.to_str().unwrap()
    );
    let mut inst = instance();
    load_state(&mut inst, state.as_bytes());
    let mut proc = start(&mut inst, 48_000.0, 1024);
    let mut d = Driver::new(1024);
    // In real time: music is heard while the piece is still being made.
    let period = Duration::from_secs_f64(1024.0 / 48_000.0);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (l, _) = d.block(&mut proc, 0.5, 1024, true);
        if l.iter().any(|&x| x != 0.0) {
            break;
        }
        assert!(Instant::now() < deadline, "no music within two minutes");
        std::thread::sleep(period);
    }
    // Once the full piece is made and cached, it is the only piece made:
    // the zero-shot engine streams, so no preview was asked for first.
    let full = loop {
        let made: Vec<PathBuf> = cached_pieces(&cache)
            .into_iter()
            .filter(|p| !before.contains(p))
            .collect();
        let whole = made.iter().any(|p| {
            read_wav(&p.with_extension("wav")).is_ok_and(|a| (a.duration() - 20.0).abs() < 0.01)
        });
        if whole {
            break made;
        }
        assert!(Instant::now() < deadline, "the full piece was never cached");
        d.block(&mut proc, 0.5, 1024, true);
        std::thread::sleep(period);
    };
    assert_eq!(full.len(), 1, "pieces made: {full:?}");
    let meta = std::fs::read_to_string(&full[0]).unwrap();
    assert!(meta.contains("zero-shot"), "{meta}");
    inst.deactivate(proc.stop_processing());
}
