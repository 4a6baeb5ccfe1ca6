//! In REAPER the plugin finds the video on the project's timeline through
//! `cockos.reaper_extension`, with no user action, and follows edits to it:
//! a move along the timeline moves the music at once; a trim or a playrate
//! change brings new music.

mod common;

use std::sync::atomic::Ordering;

use assert_no_alloc::AllocDisabler;
use clack_host::prelude::*;
use common::reaper::{FakeItem, set_markers, set_project};
use common::*;
use vidmusician_engine::audio::Audio;
use vidmusician_engine::service::{CutSource, CutsRequest, Request};
use vidmusician_engine::video::synth::{SynthSpec, write_video};
use vidmusician_plugin::editor::model::Command;

#[global_allocator]
static ALLOCATOR: AllocDisabler = AllocDisabler;

const RATE: u32 = 48_000;
const BLOCK: usize = 512;
const SONG: usize = 6 * RATE as usize;

/// The song from 0 to `SONG`, as the host plays it; output by song frame.
fn pass(d: &mut Driver, proc: &mut StartedPluginAudioProcessor<TestHost>) -> [Vec<f32>; 2] {
    play_from_start(d, proc, SONG, BLOCK, RATE)
}

/// Whether the song is `want` from `at` seconds on, silent before and after.
fn plays_at(out: &[Vec<f32>; 2], want: &Audio, at: f64) -> bool {
    let start = (at * f64::from(RATE)).round() as usize;
    (0..SONG).all(|i| {
        let w = |c: usize| {
            i.checked_sub(start)
                .and_then(|k| want.channels[c].get(k))
                .copied()
                .unwrap_or(0.0)
        };
        out[0][i] == w(0) && out[1][i] == w(1)
    })
}

fn until(
    inst: &mut PluginInstance<TestHost>,
    d: &mut Driver,
    proc: &mut StartedPluginAudioProcessor<TestHost>,
    want: &Audio,
    at: f64,
) {
    for _ in 0..400 {
        let out = pass(d, proc);
        if inst.access_shared_handler(|h| h.callback.swap(false, Ordering::AcqRel)) {
            inst.call_on_main_thread_callback();
        }
        if plays_at(&out, want, at) {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    panic!("the music never played at {at} s");
}

fn item(path: &str, position: f64, length: f64, start_offset: f64, playrate: f64) -> FakeItem {
    FakeItem {
        source_type: "VIDEO",
        path: path.to_string(),
        position,
        length,
        start_offset,
        playrate,
        muted: false,
    }
}

#[test]
fn the_video_on_reapers_timeline_is_scored_and_followed() {
    let (dir, _) = fixture();
    let video = dir.path().join("timeline.mp4");
    write_video(
        &video,
        &SynthSpec::new(192, 144, 25, 4.0, vec![1.1, 2.3, 3.2]),
    )
    .unwrap();
    let path = video.to_str().unwrap();
    let music = |range: (f64, f64), playrate: f64| {
        let mut r = Request::new(&video);
        r.range = Some(range);
        r.playrate = playrate;
        expected_for(r, 0, RATE)
    };
    let trimmed = music((0.5, 3.5), 1.0);
    assert_eq!(trimmed.len(), 3 * RATE as usize);

    // An audio item, a muted video and the video, trimmed to 0.5–3.5 s of
    // the file, at 2 s on the timeline.
    let audio = FakeItem {
        source_type: "WAVE",
        ..item("/music/track.wav", 0.0, 10.0, 0.0, 1.0)
    };
    let muted = FakeItem {
        muted: true,
        ..item("/other.mp4", 0.5, 5.0, 0.0, 1.0)
    };
    set_project(vec![
        audio.clone(),
        muted.clone(),
        item(path, 2.0, 3.0, 0.5, 1.0),
    ]);

    // No video in the state: the timeline's is used. The host's tempo is
    // not followed, so the music is the engine's own.
    let mut inst = instance_in_reaper();
    load_state(&mut inst, br#"{"version":1,"video":null,"params":[[4,0]]}"#);
    let mut proc = start(&mut inst, f64::from(RATE), BLOCK);
    let mut d = Driver::new(BLOCK);
    until(&mut inst, &mut d, &mut proc, &trimmed, 2.0);
    let saved: serde_json::Value = serde_json::from_slice(&save_state(&mut inst)).unwrap();
    assert_eq!(saved["video"].as_str(), Some(path));

    // Moved to 1 s: the next timer tick moves the music, at once.
    set_project(vec![
        audio.clone(),
        muted.clone(),
        item(path, 1.0, 3.0, 0.5, 1.0),
    ]);
    assert_eq!(fire_timers(&mut inst), 1, "the plugin watches the timeline");
    assert!(plays_at(&pass(&mut d, &mut proc), &trimmed, 1.0));

    // Nothing changed: a tick reads nothing and changes nothing.
    fire_timers(&mut inst);
    assert!(plays_at(&pass(&mut d, &mut proc), &trimmed, 1.0));

    // Played twice as fast over the same part of the file: new music,
    // half as long.
    set_project(vec![audio.clone(), item(path, 1.0, 1.5, 0.5, 2.0)]);
    fire_timers(&mut inst);
    until(&mut inst, &mut d, &mut proc, &music((0.5, 3.5), 2.0), 1.0);

    // The item is deleted: the music stays as it was.
    set_project(vec![audio.clone()]);
    fire_timers(&mut inst);
    assert!(plays_at(
        &pass(&mut d, &mut proc),
        &music((0.5, 3.5), 2.0),
        1.0
    ));

    // Markers and a region on the timeline: inside the item they are cuts of
    // the edit, marked with the detected ones; outside it they are not.
    set_project(vec![audio.clone(), item(path, 1.0, 3.0, 0.5, 1.0)]);
    set_markers(vec![
        (0.5, None),
        (2.2, None),
        (2.6, Some(3.4)),
        (9.0, None),
    ]);
    fire_timers(&mut inst);
    let in_video = |t: f64| 0.5 + (t - 1.0);
    let mut r = Request::new(&video);
    r.range = Some((0.5, 3.5));
    r.cuts = Some(CutsRequest {
        source: CutSource::Times(vec![in_video(2.2), in_video(2.6), in_video(3.4)]),
        merge: true,
    });
    let marked = expected_for(r, 0, RATE);
    assert_ne!(
        marked.channels, trimmed.channels,
        "the markers changed nothing"
    );
    until(&mut inst, &mut d, &mut proc, &marked, 1.0);
    // A marker removed: the detected cuts alone again.
    set_markers(Vec::new());
    fire_timers(&mut inst);
    until(&mut inst, &mut d, &mut proc, &trimmed, 1.0);

    // The user picks another video in the editor: it overrides the
    // timeline's (at the item's place), and edits on the timeline leave it
    // alone until Follow timeline.
    let model = vidmusician_plugin::editor::model::live()
        .into_iter()
        .find(|m| m.view().from_timeline)
        .expect("the instance in REAPER shows the timeline's video");
    let (_, picked_video) = fixture();
    model.send(Command::SetVideo(picked_video.clone()));
    let picked = expected(picked_video, 0, RATE);
    until(&mut inst, &mut d, &mut proc, &picked, 1.0);
    assert!(model.view().overridden && !model.view().from_timeline);
    set_project(vec![audio.clone(), item(path, 1.0, 2.0, 0.5, 1.0)]);
    fire_timers(&mut inst);
    assert!(plays_at(&pass(&mut d, &mut proc), &picked, 1.0));
    model.send(Command::FollowTimeline);
    let followed = music((0.5, 2.5), 1.0);
    let mut back = false;
    for _ in 0..400 {
        fire_timers(&mut inst);
        let out = pass(&mut d, &mut proc);
        if inst.access_shared_handler(|h| h.callback.swap(false, Ordering::AcqRel)) {
            inst.call_on_main_thread_callback();
        }
        if plays_at(&out, &followed, 1.0) {
            back = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert!(
        back,
        "Follow timeline did not bring the timeline's video back"
    );
    assert!(model.view().from_timeline && !model.view().overridden);

    // An item that starts past the video's end: nothing to score, the last
    // music stays, no crash.
    set_project(vec![item(path, 0.0, 2.0, 30.0, 1.0)]);
    fire_timers(&mut inst);
    let logged = inst.access_shared_handler(|h| h.log.lock().unwrap().clone());
    assert!(
        logged
            .iter()
            .any(|m| m.contains("video item at 0.00 s") && m.contains("past the end of the video")),
        "{logged:?}"
    );
    inst.deactivate(proc.stop_processing());
}

#[test]
fn other_hosts_get_no_timer_and_no_timeline() {
    let (_, video) = fixture();
    let mut inst = instance();
    load_state(&mut inst, &state_json(video, 1));
    let proc = start(&mut inst, f64::from(RATE), BLOCK);
    assert_eq!(fire_timers(&mut inst), 0);
    inst.deactivate(proc.stop_processing());
}
