//! The text engine in the plugin: MusicGen (the repository's tiny checkpoint,
//! found where users keep models) with 8-bit weights and the Guidance
//! parameter, its music played sample for sample. A test binary of its own:
//! it points `VIDMUSICIAN_MODELS` at the checkpoint for the whole process.

mod common;

use std::path::Path;

use assert_no_alloc::AllocDisabler;
use common::*;
use vidmusician_engine::neural::Precision;
use vidmusician_engine::service::{Engine, EngineChoice, EngineConfig, Request};

#[global_allocator]
static ALLOCATOR: AllocDisabler = AllocDisabler;

#[test]
fn the_text_engine_plays_in_the_plugin() {
    let (dir, video) = fixture();
    // Where a user would keep a downloaded musicgen-small.
    let models = dir.path().join("models");
    let small = models.join("musicgen-small");
    std::fs::create_dir_all(&small).unwrap();
    let tiny = Path::new(env!("CARGO_MANIFEST_DIR")).join("../engine/tests/fixtures/musicgen-tiny");
    for e in std::fs::read_dir(&tiny).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, small.join(p.file_name().unwrap())).unwrap();
    }
    // SAFETY: set before any engine of this process starts.
    unsafe { std::env::set_var("VIDMUSICIAN_MODELS", &models) };

    // What the engine makes for the plugin's request: the video's length of
    // music from the prompt, guidance 5, 8-bit weights.
    let engine = Engine::start(EngineConfig {
        cache_dir: None,
        precision: Precision::Q8,
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
    let want = (*engine.wait(id, |_| {}).unwrap().audio).clone();
    drop(engine);

    let mut inst = instance();
    let state = format!(
        r#"{{"version":1,"video":{:?},"prompt":"warm piano","params":[[1,8],[3,2],[4,0],[6,5]]}}"#,
        video.to_str().unwrap()
    );
    load_state(&mut inst, state.as_bytes());
    set_offline(&mut inst);
    let mut proc = start(&mut inst, 48_000.0, 1024);
    let mut d = Driver::new(1024);
    let mut sounding = 0;
    for k in 0..100 {
        let start = k * 1024;
        let got = d.block(&mut proc, start as f64 / 48_000.0, 1024, true);
        sounding += assert_plays(got, &want, start, "text engine");
    }
    assert!(sounding > 48_000, "{sounding} frames of music compared");
    inst.deactivate(proc.stop_processing());
}
