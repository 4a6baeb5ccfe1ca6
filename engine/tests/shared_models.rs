//! Loaded models are shared by every engine of a process: a plugin on two
//! tracks holds one copy of the weights, loaded once, freed with the last.
//! (Its own test binary: the load counter is per process.)

use std::path::Path;

use vidmusician_engine::service::{Engine, EngineConfig, Request, musicgen_loads};

fn engine(cache: &Path) -> Engine {
    Engine::start(EngineConfig {
        cache_dir: Some(cache.to_path_buf()),
        model_dir: Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/musicgen-tiny")),
        ..EngineConfig::default()
    })
    .unwrap()
}

#[test]
fn two_engines_load_a_model_once_and_free_it_with_the_last() {
    let dir = tempfile::tempdir().unwrap();
    let (loads_before, live_before) = musicgen_loads();
    assert_eq!(live_before, 0);
    let a = engine(&dir.path().join("a"));
    let b = engine(&dir.path().join("b"));
    let mut req = Request::text("calm piano", 1.0);
    req.sample_rate = 32_000;
    // Both at once: the second waits for the first's load, not loads again.
    let (ia, _) = a.submit(req.clone()).unwrap();
    req.seed = 1;
    let (ib, _) = b.submit(req.clone()).unwrap();
    let ra = a.wait(ia, |_| {}).unwrap();
    let rb = b.wait(ib, |_| {}).unwrap();
    assert_eq!((ra.cached, rb.cached), (false, false));
    assert_eq!(ra.audio.len(), 32_000);
    assert_eq!(rb.audio.len(), 32_000);
    assert_ne!(
        ra.audio.channels, rb.audio.channels,
        "two seeds, two pieces"
    );
    assert_eq!(musicgen_loads(), (loads_before + 1, 1));

    // The first engine gone, the second still holds the model.
    drop(a);
    assert_eq!(musicgen_loads().1, 1);
    req.seed = 2;
    let (ib, _) = b.submit(req.clone()).unwrap();
    b.wait(ib, |_| {}).unwrap();
    assert_eq!(musicgen_loads(), (loads_before + 1, 1));
    drop(b);
    assert_eq!(musicgen_loads().1, 0, "the weights outlived every engine");

    // A new engine loads it again.
    let c = engine(&dir.path().join("c"));
    req.seed = 3;
    let (ic, _) = c.submit(req).unwrap();
    c.wait(ic, |_| {}).unwrap();
    assert_eq!(musicgen_loads(), (loads_before + 2, 1));
}
