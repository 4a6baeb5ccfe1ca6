//! What the editor asks of the plugin, without a window: its commands go
//! over the same channel the editor's buttons use, and what it would show
//! is read from the same snapshot it draws.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use assert_no_alloc::AllocDisabler;
use clack_host::prelude::*;
use common::*;
use vidmusician_engine::video::synth::{SynthSpec, write_video};
use vidmusician_plugin::editor::model::{Command, EditorModel, Status, live};

#[global_allocator]
static ALLOCATOR: AllocDisabler = AllocDisabler;

/// Tests take turns: each finds its instance's model as the newest.
static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn wait_status(
    inst: &mut PluginInstance<TestHost>,
    model: &EditorModel,
    secs: u64,
    ok: impl Fn(&Status) -> bool,
) -> Status {
    let t0 = Instant::now();
    loop {
        inst.call_on_main_thread_callback();
        let s = model.view().status.clone();
        if ok(&s) || t0.elapsed() > Duration::from_secs(secs) {
            return s;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn newest() -> Arc<EditorModel> {
    live().pop().unwrap()
}

#[test]
fn a_video_that_is_not_there_is_said_with_what_fixes_it() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let mut inst = instance();
    let model = newest();
    let mut proc = start(&mut inst, 48_000.0, 512);
    model.send(Command::SetVideo("/nowhere/holiday.mp4".into()));
    let s = wait_status(&mut inst, &model, 10, |s| {
        matches!(s, Status::Failed { .. })
    });
    let Status::Failed { what, fix } = s else {
        panic!("no error shown: {s:?}");
    };
    assert!(what.contains("holiday.mp4"), "{what}");
    assert!(fix.contains("Choose the video again"), "{fix}");
    // The host's log has it too.
    let log = inst.access_shared_handler(|h| h.log.lock().unwrap().clone());
    assert!(log.iter().any(|m| m.contains("holiday.mp4")), "{log:?}");
    // A video that is there then plays.
    let (_, video) = fixture();
    model.send(Command::SetVideo(video.clone()));
    let s = wait_status(&mut inst, &model, 60, |s| {
        matches!(s, Status::Finished { .. })
    });
    assert!(matches!(s, Status::Finished { .. }), "{s:?}");
    let mut d = Driver::new(512);
    let out = play_from_start(&mut d, &mut proc, 48_000, 512, 48_000);
    assert!(out[0].iter().any(|&x| x != 0.0), "silence after the error");
}

#[test]
fn cancel_stops_the_piece_being_made_and_a_prompt_asks_for_new_music() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let (dir, _) = fixture();
    let video = dir.path().join("long-cancel.mp4");
    write_video(
        &video,
        &SynthSpec::new(192, 144, 25, 40.0, vec![10.0, 20.0]),
    )
    .unwrap();
    let mut inst = instance();
    let model = newest();
    let _proc = start(&mut inst, 48_000.0, 512);
    model.send(Command::SetVideo(video.clone()));
    let s = wait_status(&mut inst, &model, 10, |s| {
        matches!(s, Status::Working { .. })
    });
    assert!(matches!(s, Status::Working { .. }), "{s:?}");
    model.send(Command::Cancel);
    let s = wait_status(&mut inst, &model, 30, |s| {
        !matches!(s, Status::Working { .. })
    });
    assert_eq!(s, Status::Cancelled);
    // A new prompt is new music, made to the end.
    model.send(Command::SetPrompt("slow strings".into()));
    let s = wait_status(&mut inst, &model, 120, |s| {
        matches!(s, Status::Finished { .. })
    });
    assert_eq!(s, Status::Finished { cached: false });
    let saved: serde_json::Value = serde_json::from_slice(&save_state(&mut inst)).unwrap();
    assert_eq!(saved["prompt"], "slow strings");
    assert_eq!(saved["video"].as_str(), video.to_str());
}

#[test]
fn the_hosts_loop_reaches_the_editor_in_seconds_of_music() {
    use clack_host::events::event_types::TransportFlags;
    use clack_host::utils::SecondsTime;
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let mut inst = instance();
    let model = newest();
    // The music starts 1.5 s into the song.
    load_state(
        &mut inst,
        br#"{"version":2,"video":null,"params":[[2,1.5],[4,0]]}"#,
    );
    let mut proc = start(&mut inst, 48_000.0, 512);
    let mut d = Driver::new(512);
    let mut t = transport(3.0, true);
    d.block_with(&mut proc, &t, 512);
    assert_eq!(model.loop_range(), None);
    assert_eq!(model.playhead(), Some(1.5));
    t.flags |= TransportFlags::IS_LOOP_ACTIVE;
    t.loop_start_seconds = SecondsTime::from_float(4.0);
    t.loop_end_seconds = SecondsTime::from_float(6.0);
    d.block_with(&mut proc, &t, 512);
    assert_eq!(model.loop_range(), Some((2.5, 4.5)));
    t.flags.remove(TransportFlags::IS_PLAYING);
    d.block_with(&mut proc, &t, 512);
    assert_eq!(
        model.playhead(),
        None,
        "a stopped transport shows no playhead"
    );
}

#[test]
fn a_drag_in_the_editor_reaches_the_host_as_one_gesture() {
    use clack_host::events::spaces::CoreEventSpace;
    use vidmusician_plugin::params::ParamId;
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let mut inst = instance();
    let model = newest();
    let mut proc = start(&mut inst, 48_000.0, 512);
    let mut d = Driver::new(512);
    // What the editor does for a slider dragged from 3 to 5.5.
    model.begin_gesture(ParamId::Guidance);
    model.edit(ParamId::Guidance, 5.5);
    model.end_gesture(ParamId::Guidance);
    d.block(&mut proc, 0.0, 512, true);
    let id = ParamId::Guidance as u32;
    let told: Vec<String> = d
        .output_events
        .iter()
        .filter_map(|e| match e.as_core_event()? {
            CoreEventSpace::ParamGestureBegin(g) => Some(format!("begin {}", g.param_id()?.get())),
            CoreEventSpace::ParamValue(v) => {
                Some(format!("value {} {}", v.param_id()?.get(), v.value()))
            }
            CoreEventSpace::ParamGestureEnd(g) => Some(format!("end {}", g.param_id()?.get())),
            _ => None,
        })
        .collect();
    assert_eq!(
        told,
        [
            format!("begin {id}"),
            format!("value {id} 5.5"),
            format!("end {id}")
        ]
    );
    // Told once.
    d.block(&mut proc, 512.0 / 48_000.0, 512, true);
    assert_eq!(d.output_events.len(), 0);
}
