//! Destroying the plugin joins its engine thread and its steward. A test binary of its own,
//! so no other test's engine threads are counted.

mod common;

use clack_host::prelude::*;
use common::*;
use vidmusician_engine::video::synth::{SynthSpec, write_video};

fn threads_named(name: &str) -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        // Thread names are cut to 15 bytes.
        .filter(|c| c.trim() == name)
        .count()
}

fn engine_threads() -> usize {
    threads_named("vidmusician-eng")
}

/// The thread that stands in for the host's main thread.
fn steward_threads() -> usize {
    threads_named("vidmusician-stw")
}

#[test]
fn destroying_the_plugin_joins_its_engine_thread() {
    let (dir, _) = fixture();
    let video = dir.path().join("long.mp4");
    write_video(&video, &SynthSpec::new(192, 144, 25, 20.0, vec![5.0, 11.0])).unwrap();
    assert_eq!(engine_threads(), 0);
    assert_eq!(steward_threads(), 0);
    {
        let mut inst = instance();
        // The thread names itself once it runs.
        let t0 = std::time::Instant::now();
        while steward_threads() == 0 && t0.elapsed().as_secs() < 10 {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(steward_threads(), 1);
        load_state(&mut inst, &state_json(&video, 1));
        let config = PluginAudioConfiguration {
            sample_rate: 48_000.0,
            min_frames_count: 1,
            max_frames_count: 512,
        };
        let stopped = inst.activate(|_, _| (), config).unwrap();
        // Activation with a video starts generating on the engine thread
        // (which names itself once it runs; threads it starts, FFmpeg's
        // decoders among them, inherit the name).
        let t0 = std::time::Instant::now();
        while engine_threads() == 0 && t0.elapsed().as_secs() < 10 {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(engine_threads() >= 1, "no engine thread started");
        inst.deactivate(stopped);
        // Destroyed here, while the 20 s piece is most likely still being
        // made: the engine must cancel and be joined.
    }
    // A thread that was joined can still be listed for a moment: the
    // kernel wakes the joiner before it has finished tearing the thread
    // down (seen here for the loudness meter's threads, started and joined
    // in the engine's last milliseconds). A leaked thread stays.
    let t0 = std::time::Instant::now();
    while engine_threads() > 0 && t0.elapsed().as_millis() < 500 {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    assert_eq!(engine_threads(), 0, "engine thread outlived the plugin");
    assert_eq!(steward_threads(), 0, "steward thread outlived the plugin");
}
