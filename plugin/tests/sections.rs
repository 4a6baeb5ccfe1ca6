//! Making a stretch of the music again, as the editor asks for it: the
//! plugin plays the engine's piece with the section edit, which differs
//! from the take before only within the section's bars, and undo brings
//! that take back bit for bit. The edits are part of the saved state.

mod common;

use std::sync::atomic::Ordering;

use assert_no_alloc::AllocDisabler;
use clack_host::prelude::*;
use common::*;
use vidmusician_engine::audio::Audio;
use vidmusician_engine::service::{Engine, EngineConfig, Request};
use vidmusician_plugin::editor::model::{Command, live};

#[global_allocator]
static ALLOCATOR: AllocDisabler = AllocDisabler;

const RATE: u32 = 48_000;
const BLOCK: usize = 512;

fn plays(out: &[Vec<f32>; 2], want: &Audio, frames: usize) -> bool {
    (0..frames.min(want.len()))
        .all(|i| out[0][i] == want.channels[0][i] && out[1][i] == want.channels[1][i])
}

/// Plays from the start until `want` is what plays (the host's main thread
/// answering callbacks meanwhile).
fn until(
    inst: &mut PluginInstance<TestHost>,
    d: &mut Driver,
    proc: &mut StartedPluginAudioProcessor<TestHost>,
    want: &Audio,
    frames: usize,
    what: &str,
) -> [Vec<f32>; 2] {
    for _ in 0..600 {
        let out = play_from_start(d, proc, frames, BLOCK, RATE);
        if inst.access_shared_handler(|h| h.callback.swap(false, Ordering::AcqRel)) {
            inst.call_on_main_thread_callback();
        }
        if plays(&out, want, frames) {
            return out;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    panic!("{what} never played");
}

/// The tempo the engine writes this video's music in, and where one of
/// its bars starts.
fn grid_of(video: &std::path::Path, seed: u64) -> (f64, f64) {
    let engine = Engine::start(EngineConfig {
        cache_dir: None,
        ..EngineConfig::default()
    })
    .unwrap();
    let mut r = Request::new(video);
    r.seed = seed;
    r.sample_rate = RATE;
    let (id, _) = engine.submit(r).unwrap();
    let done = engine.wait(id, |_| {}).unwrap();
    (done.bpm.unwrap(), done.downbeat.unwrap())
}

#[test]
fn a_section_made_again_plays_with_the_rest_untouched_and_undo_restores_it() {
    let (_, video) = fixture();
    let frames = (2.9 * f64::from(RATE)) as usize;
    let base = expected(video, 5, RATE);
    let mut inst = instance();
    let model = live().pop().unwrap();
    load_state(&mut inst, &state_json(video, 5));
    let mut proc = start(&mut inst, f64::from(RATE), BLOCK);
    let mut d = Driver::new(BLOCK);
    until(
        &mut inst,
        &mut d,
        &mut proc,
        &base,
        frames,
        "the first take",
    );

    model.send(Command::RegenerateSection {
        start: 1.2,
        end: 1.9,
    });
    let t0 = std::time::Instant::now();
    while model.view().sections.is_empty() && t0.elapsed().as_secs() < 10 {
        inst.call_on_main_thread_callback();
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let sections = model.view().sections.clone();
    assert_eq!(sections.len(), 1);
    assert_ne!(sections[0].seed, 5);
    let mut r = Request::new(video);
    r.sections = sections.clone();
    let edited = expected_for(r, 5, RATE);
    let out = until(
        &mut inst,
        &mut d,
        &mut proc,
        &edited,
        frames,
        "the edited take",
    );

    // What plays differs from the first take only inside the section's
    // bars.
    let (bpm, down) = grid_of(video, 5);
    let bar = 4.0 * 60.0 / bpm;
    let (lo, hi) = (
        down + ((1.2 - down) / bar).floor() * bar,
        down + ((1.9 - down) / bar).ceil() * bar,
    );
    let rate = f64::from(RATE);
    let changed: Vec<usize> = (0..frames)
        .filter(|&i| out[0][i] != base.channels[0][i] || out[1][i] != base.channels[1][i])
        .collect();
    assert!(!changed.is_empty(), "the section sounds as before");
    let (first, last) = (
        changed[0] as f64 / rate,
        *changed.last().unwrap() as f64 / rate,
    );
    assert!(
        first >= lo - 1e-3 && last <= hi + 1e-3,
        "changed {first:.3}–{last:.3} s; the section's bars are {lo:.3}–{hi:.3} s"
    );

    // The edit is saved with the project (taken here, before the undo).
    let saved = String::from_utf8(save_state(&mut inst)).unwrap();
    let state: serde_json::Value = serde_json::from_str(&saved).unwrap();
    assert_eq!(state["version"], 2);
    assert_eq!(state["sections"][0]["seed"], sections[0].seed);

    // Undo: the first take, bit for bit.
    model.send(Command::UndoSection);
    until(
        &mut inst,
        &mut d,
        &mut proc,
        &base,
        frames,
        "the take before the edit",
    );
    assert!(model.view().sections.is_empty());
    // The same stretch made again after the undo is new music, not the
    // undone edit from the cache.
    model.send(Command::RegenerateSection {
        start: 1.2,
        end: 1.9,
    });
    let t0 = std::time::Instant::now();
    while model.view().sections.is_empty() && t0.elapsed().as_secs() < 10 {
        inst.call_on_main_thread_callback();
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert_ne!(model.view().sections[0].seed, sections[0].seed);
    model.send(Command::UndoSection);
    until(
        &mut inst,
        &mut d,
        &mut proc,
        &base,
        frames,
        "the take after a second undo",
    );

    // A reopened project with the edit plays it.
    drop(proc);
    let mut again = instance();
    load_state(&mut again, saved.as_bytes());
    let mut proc = start(&mut again, f64::from(RATE), BLOCK);
    until(
        &mut again,
        &mut d,
        &mut proc,
        &edited,
        frames,
        "the reopened edit",
    );
}
