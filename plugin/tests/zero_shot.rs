//! The zero-shot engine in the plugin, on two tracks at once: MusicGen and
//! CLIP (the repository's tiny checkpoints, found where users keep models)
//! are loaded once for both instances, both play, and the weights are freed
//! when both are destroyed. A test binary of its own: it points
//! `VIDMUSICIAN_MODELS` at the checkpoints, and the load counts are the
//! process's.

mod common;

use std::path::Path;

use assert_no_alloc::AllocDisabler;
use common::*;
use vidmusician_engine::service::{clip_loads, musicgen_loads};

#[global_allocator]
static ALLOCATOR: AllocDisabler = AllocDisabler;

#[test]
fn two_instances_share_one_copy_of_each_model() {
    let (dir, video) = fixture();
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
