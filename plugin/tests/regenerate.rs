//! The Regenerate button: a new take with the next seed, the button
//! springing back, and the host told of both.

mod common;

use std::sync::atomic::Ordering;

use assert_no_alloc::AllocDisabler;
use clack_host::events::Pckn;
use clack_host::events::event_types::ParamValueEvent;
use clack_host::prelude::*;
use common::*;
use vidmusician_plugin::params::ParamId;

#[global_allocator]
static ALLOCATOR: AllocDisabler = AllocDisabler;

const RATE: u32 = 48_000;
const BLOCK: usize = 512;

fn plays(out: &[Vec<f32>; 2], want: &vidmusician_engine::audio::Audio, frames: usize) -> bool {
    (0..frames.min(want.len()))
        .all(|i| out[0][i] == want.channels[0][i] && out[1][i] == want.channels[1][i])
}

#[test]
fn regenerate_makes_a_take_with_the_next_seed() {
    let (_, video) = fixture();
    let frames = (2.9 * f64::from(RATE)) as usize;
    let first = expected(video, 5, RATE);
    let second = expected(video, 6, RATE);
    assert!(!plays(
        &[first.channels[0].clone(), first.channels[1].clone()],
        &second,
        frames
    ));

    let mut inst = instance();
    load_state(&mut inst, &state_json(video, 5));
    let mut proc = start(&mut inst, f64::from(RATE), BLOCK);
    let mut d = Driver::new(BLOCK);
    let until = |inst: &mut PluginInstance<TestHost>, d: &mut Driver, proc: &mut _, want| {
        for _ in 0..400 {
            let out = play_from_start(d, proc, frames, BLOCK, RATE);
            if inst.access_shared_handler(|h| h.callback.swap(false, Ordering::AcqRel)) {
                inst.call_on_main_thread_callback();
            }
            if plays(&out, want, frames) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        panic!("the expected take never played");
    };
    until(&mut inst, &mut d, &mut proc, &first);

    // The button is pressed: in the same block the host hears that the seed
    // moved on and the button is back up.
    d.input_events.push(&ParamValueEvent::new(
        0,
        ClapId::new(ParamId::Regenerate as u32),
        Pckn::match_all(),
        1.0,
    ));
    d.block(&mut proc, 0.0, BLOCK, true);
    let sent: Vec<(u32, f64)> = d
        .output_events
        .iter()
        .filter_map(|e| match e.as_core_event() {
            Some(clack_host::events::spaces::CoreEventSpace::ParamValue(p)) => {
                Some((p.param_id()?.get(), p.value()))
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        sent,
        vec![
            (ParamId::Seed as u32, 6.0),
            (ParamId::Regenerate as u32, 0.0)
        ]
    );
    until(&mut inst, &mut d, &mut proc, &second);

    // Saved, the project keeps the new seed (and so this take).
    let saved: serde_json::Value = serde_json::from_slice(&save_state(&mut inst)).unwrap();
    let params = saved["params"].as_array().unwrap();
    let value = |id: ParamId| {
        params
            .iter()
            .find(|p| p[0].as_u64() == Some(id as u64))
            .and_then(|p| p[1].as_f64())
    };
    assert_eq!(value(ParamId::Seed), Some(6.0));
    assert_eq!(value(ParamId::Regenerate), Some(0.0));
    // Letting go of the button (a 0 from the host) makes nothing new.
    d.input_events.push(&ParamValueEvent::new(
        0,
        ClapId::new(ParamId::Regenerate as u32),
        Pckn::match_all(),
        0.0,
    ));
    d.block(&mut proc, 0.0, BLOCK, true);
    assert_eq!(d.output_events.len(), 0);
    inst.deactivate(proc.stop_processing());
}

/// Hosts that give the plugin no main-thread turns (VST3 through
/// clap-wrapper on Linux without the editor, a host busy rendering): the
/// plugin's own thread makes the new take, in real time and in a render.
#[test]
fn the_new_take_comes_without_main_thread_turns() {
    let (_, video) = fixture();
    for realtime in [true, false] {
        let first = expected(video, 11, RATE);
        let second = expected(video, 12, RATE);
        let mut inst = instance();
        load_state(&mut inst, &state_json(video, 11));
        let mut proc = start(&mut inst, f64::from(RATE), BLOCK);
        let mut d = Driver::new(BLOCK);
        let period = std::time::Duration::from_secs_f64(BLOCK as f64 / f64::from(RATE));
        // A host looping its first 20 blocks (longer than the crossfade), in
        // real time or faster, until a whole pass is `want`.
        let heard =
            |d: &mut Driver, proc: &mut _, want: &vidmusician_engine::audio::Audio, press: bool| {
                if press {
                    d.input_events.push(&ParamValueEvent::new(
                        0,
                        ClapId::new(ParamId::Regenerate as u32),
                        Pckn::match_all(),
                        1.0,
                    ));
                }
                for _ in 0..200 {
                    let mut all = true;
                    for k in 0..20 {
                        let f = k * BLOCK;
                        let out = d.block(proc, f as f64 / f64::from(RATE), BLOCK, true);
                        all &= (0..BLOCK).all(|i| {
                            out.0[i] == want.channels[0][f + i]
                                && out.1[i] == want.channels[1][f + i]
                        });
                        if realtime {
                            std::thread::sleep(period);
                        }
                    }
                    if all {
                        return true;
                    }
                }
                false
            };
        assert!(heard(&mut d, &mut proc, &first, false), "no first take");
        assert!(
            heard(&mut d, &mut proc, &second, true),
            "no new take without main-thread turns (real time: {realtime})"
        );
        // The host never called on_main_thread.
        inst.deactivate(proc.stop_processing());
    }
}
