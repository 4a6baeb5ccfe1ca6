//! The plugin driven the way a host drives it: clack-host, in process.

mod common;

use assert_no_alloc::AllocDisabler;
use common::*;

#[global_allocator]
static ALLOCATOR: AllocDisabler = AllocDisabler;

#[test]
fn plays_the_music_at_every_block_size_and_rate_and_after_seeks() {
    let (_, video) = fixture();
    for rate in [22_050u32, 44_100, 48_000, 96_000, 192_000] {
        let want = expected(video, 3, rate);
        let mut inst = instance();
        load_state(&mut inst, &state_json(video, 3));
        set_offline(&mut inst);
        let mut proc = start(&mut inst, f64::from(rate), 8192);
        let mut d = Driver::new(8192);
        assert_no_alloc::reset_violation_count();
        let mut sounding = 0;
        for block in [1usize, 64, 511, 4096, 8192] {
            // Straight playback over 0.25 s starting just before the video.
            let span = (rate / 4) as usize;
            let mut frame: i64 = -(block as i64) / 2 - 3;
            while frame < span as i64 {
                let pos = frame as f64 / f64::from(rate);
                let got = d.block(&mut proc, pos, block, true);
                sounding += assert_plays(got, &want, frame, &format!("{rate} Hz, block {block}"));
                frame += block as i64;
            }
        }
        // Seeks and a loop: jumps back and forth play what straight
        // playback plays at those positions.
        for &pos_s in &[2.5, 0.1, 2.9, 1.2, 1.2, 0.0, 2.99] {
            let start = (pos_s * f64::from(rate)).round() as i64;
            let got = d.block(&mut proc, pos_s, 511, true);
            sounding += assert_plays(got, &want, start, &format!("{rate} Hz, seek to {pos_s}"));
        }
        assert!(
            sounding > rate as usize / 10,
            "only {sounding} frames of music were compared"
        );
        // Stopped transport: the input passes, no music.
        d.feed(|c, i| ((i * (c + 3)) % 17) as f32 / 17.0 - 0.5);
        let input = {
            let (l, r) = d.input(64);
            (l.to_vec(), r.to_vec())
        };
        let got = d.block(&mut proc, 1.0, 64, false);
        assert_eq!((got.0, got.1), (&input.0[..], &input.1[..]));
        assert!(input.0.iter().any(|&x| x != 0.0));
        assert_eq!(assert_no_alloc::violation_count(), 0, "process allocated");
        inst.deactivate(proc.stop_processing());
    }
}

#[test]
fn state_round_trips() {
    let (_, video) = fixture();
    let mut a = instance();
    load_state(&mut a, &state_json(video, 42));
    let saved = save_state(&mut a);
    let v: serde_json::Value = serde_json::from_slice(&saved).unwrap();
    assert_eq!(v["video"].as_str(), video.to_str());
    let mut b = instance();
    load_state(&mut b, &saved);
    assert_eq!(save_state(&mut b), saved);
    // States that cannot be read: tests/state.rs.
}

#[test]
fn realtime_playback_never_waits_and_fills_in_as_music_arrives() {
    let (_, video) = fixture();
    let want = expected(video, 5, 48_000);
    let mut inst = instance();
    load_state(&mut inst, &state_json(video, 5));
    let mut proc = start(&mut inst, 48_000.0, 512);
    let mut d = Driver::new(512);
    // A host plays on while the engine works: blocks come back at once,
    // silent until their music has arrived, then exactly the music.
    let start = 48_000i64;
    let mut waited = 0;
    loop {
        let got = d.block(&mut proc, 1.0, 512, true);
        let sounding = got.0.iter().any(|&x| x != 0.0);
        if sounding {
            assert!(assert_plays(got, &want, start, "realtime") > 0);
            break;
        }
        waited += 1;
        assert!(waited < 30_000, "no music after 30 s");
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    inst.deactivate(proc.stop_processing());
}

#[test]
fn a_reopened_project_plays_at_once_from_the_cache() {
    let (_, video) = fixture();
    let want = expected(video, 21, 48_000);
    // The first session makes the music (a bounce waits for it).
    let mut first = instance();
    load_state(&mut first, &state_json(video, 21));
    set_offline(&mut first);
    let mut proc = start(&mut first, 48_000.0, 512);
    let mut d = Driver::new(512);
    d.block(&mut proc, 2.5, 512, true);
    first.deactivate(proc.stop_processing());
    let saved = save_state(&mut first);
    drop(first);

    // Reopened, realtime: the very first block, deep into the piece,
    // already plays the music.
    let mut again = instance();
    load_state(&mut again, &saved);
    let mut proc = start(&mut again, 48_000.0, 512);
    let got = d.block(&mut proc, 2.5, 512, true);
    assert!(
        assert_plays(got, &want, 120_000, "reopened") > 0,
        "silent after reopening"
    );
    again.deactivate(proc.stop_processing());
}

#[test]
fn a_rate_the_engine_cannot_make_is_reported_and_passes_the_input() {
    let (_, video) = fixture();
    let mut inst = instance();
    load_state(&mut inst, &state_json(video, 3));
    set_offline(&mut inst);
    let mut proc = start(&mut inst, 4_000.0, 256);
    let mut d = Driver::new(256);
    d.feed(|c, i| ((i * (c + 5)) % 13) as f32 / 13.0 - 0.5);
    let input = {
        let (l, r) = d.input(256);
        (l.to_vec(), r.to_vec())
    };
    assert!(input.0.iter().any(|&x| x != 0.0));
    for k in 0..20 {
        let got = d.block(&mut proc, k as f64 * 256.0 / 4_000.0, 256, true);
        assert_eq!((got.0, got.1), (&input.0[..], &input.1[..]), "block {k}");
    }
    inst.deactivate(proc.stop_processing());
    let logged = inst.access_shared_handler(|h| h.log.lock().unwrap().clone());
    assert!(
        logged
            .iter()
            .any(|m| m.starts_with("Error") && m.contains("sample rate")),
        "{logged:?}"
    );
    // A rate no host runs at is refused at activation.
    let mut other = instance();
    let config = clack_host::prelude::PluginAudioConfiguration {
        sample_rate: 10.0,
        min_frames_count: 1,
        max_frames_count: 256,
    };
    assert!(other.activate(|_, _| (), config).is_err());
}
