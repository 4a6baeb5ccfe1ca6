//! The vidmusician engine in the plugin: with the tiny MusicGen, CLIP and an
//! adapter for that MusicGen where users keep models, the Engine parameter on
//! auto scores the video with it, and the music plays. A test binary of its
//! own: its models folder holds an adapter, which would change what auto
//! picks in the other binaries.

mod common;

use std::path::Path;

use assert_no_alloc::AllocDisabler;
use common::*;
use vidmusician_engine::audio::read_wav;
use vidmusician_engine::neural::MusicGen;
use vidmusician_engine::neural::conditioning::{Adapter, AdapterConfig};

#[global_allocator]
static ALLOCATOR: AllocDisabler = AllocDisabler;

#[test]
fn on_auto_an_installed_adapter_scores_the_video() {
    let (dir, video) = fixture();
    let models = dir.path().join("models");
    std::fs::create_dir_all(models.join("adapters")).unwrap();
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../engine/tests/fixtures");
    for (from, to) in [
        ("musicgen-tiny", "musicgen-small"),
        ("clip-tiny", "clip-vit-base-patch32"),
    ] {
        std::os::unix::fs::symlink(fixtures.join(from), models.join(to)).unwrap();
    }
    let mg = MusicGen::load(&models.join("musicgen-small")).unwrap();
    let cfg = AdapterConfig {
        clip_width: 32,
        ..AdapterConfig::default()
    };
    let mut adapter = Adapter::new(
        &cfg,
        &mg,
        "facebook/musicgen-small",
        candle_core::DType::F32,
    )
    .unwrap();
    adapter.add_rhythm(&mg).unwrap();
    adapter
        .save(&models.join("adapters/tiny.safetensors"))
        .unwrap();
    // SAFETY: set before any engine of this process starts.
    unsafe { std::env::set_var("VIDMUSICIAN_MODELS", &models) };

    // The Engine parameter left on auto; offline, so each block waits.
    let state = format!(
        r#"{{"version":1,"video":{:?},"params":[[1,5],[4,0]]}}"#,
        video.to_str().unwrap()
    );
    let mut inst = instance();
    load_state(&mut inst, state.as_bytes());
    set_offline(&mut inst);
    let mut proc = start(&mut inst, 48_000.0, 1024);
    let mut d = Driver::new(1024);
    let mut loudest = 0f32;
    for k in 0..100 {
        let t = (k * 1024) as f64 / 48_000.0;
        let (l, _) = d.block(&mut proc, t, 1024, true);
        loudest = l.iter().fold(loudest, |m, x| m.max(x.abs()));
    }
    assert!(loudest > 0.01, "silent: {loudest}");
    // The music streams as it is made: the player can have what it needs
    // before the piece is whole and cached. Wait for the whole piece.
    let model = vidmusician_plugin::editor::model::live()
        .pop()
        .expect("the instance's editor model");
    let t0 = std::time::Instant::now();
    while !matches!(
        model.view().status,
        vidmusician_plugin::editor::model::Status::Finished { .. }
    ) {
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(60),
            "{:?}",
            model.view().status
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    inst.deactivate(proc.stop_processing());

    // What was made and cached is the vidmusician engine's, the video's length.
    let cache = dir.path().join("cache").join("audio");
    let metas: Vec<_> = std::fs::read_dir(&cache)
        .unwrap()
        .filter_map(|e| Some(e.ok()?.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    assert_eq!(metas.len(), 1, "{metas:?}");
    let meta = std::fs::read_to_string(&metas[0]).unwrap();
    assert!(meta.contains("vidmusician"), "{meta}");
    let audio = read_wav(&metas[0].with_extension("wav")).unwrap();
    assert!(
        (audio.duration() - 3.0).abs() < 0.01,
        "{} s",
        audio.duration()
    );
}
