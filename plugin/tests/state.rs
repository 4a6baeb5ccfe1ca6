//! Saving and loading the plugin's state the way a host does: parameters
//! set through `process` events, state streams read and written a few bytes
//! at a time, a values rescan expected after a load, and states that cannot
//! be read refused without touching the instance.

mod common;

use std::io::{Read, Write};

use assert_no_alloc::AllocDisabler;
use clack_extensions::params::{ParamInfoBuffer, ParamInfoFlags, ParamRescanFlags, PluginParams};
use clack_extensions::state::PluginState;
use clack_host::events::Pckn;
use clack_host::events::event_types::ParamValueEvent;
use clack_host::prelude::*;
use common::*;

#[global_allocator]
static ALLOCATOR: AllocDisabler = AllocDisabler;

const RATE: f64 = 48_000.0;
const BLOCK: usize = 256;

/// A host stream that moves at most 7 bytes per call, as hosts may.
struct Trickle<T> {
    inner: T,
}

impl<R: Read> Read for Trickle<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(7);
        self.inner.read(&mut buf[..n])
    }
}

impl<W: Write> Write for Trickle<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.inner.write(&buf[..buf.len().min(7)])
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

struct Param {
    id: ClapId,
    min: f64,
    max: f64,
    stepped: bool,
}

/// The parameters as the host learns them, through the params extension.
fn params(inst: &mut PluginInstance<TestHost>) -> Vec<Param> {
    let handle = inst.plugin_handle();
    let ext = handle.get_extension::<PluginParams>().unwrap();
    let mut buf = ParamInfoBuffer::new();
    (0..ext.count(&handle))
        .map(|i| {
            let info = ext.get_info(&handle, i, &mut buf).unwrap();
            Param {
                id: info.id,
                min: info.min_value,
                max: info.max_value,
                stepped: info.flags.contains(ParamInfoFlags::IS_STEPPED),
            }
        })
        .collect()
}

/// Every parameter's value as the host reads it.
fn values(inst: &mut PluginInstance<TestHost>) -> Vec<(u32, f64)> {
    let ids: Vec<ClapId> = params(inst).iter().map(|p| p.id).collect();
    let handle = inst.plugin_handle();
    let ext = handle.get_extension::<PluginParams>().unwrap();
    ids.iter()
        .map(|&id| (id.get(), ext.get_value(&handle, id).unwrap()))
        .collect()
}

fn rescans(inst: &mut PluginInstance<TestHost>) -> Vec<ParamRescanFlags> {
    inst.access_handler(|h| h.rescans.borrow().clone())
}

fn save_trickled(inst: &mut PluginInstance<TestHost>) -> Vec<u8> {
    let state = inst.plugin_handle().get_extension::<PluginState>().unwrap();
    let mut out = Trickle { inner: Vec::new() };
    state.save(&inst.plugin_handle(), &mut out).unwrap();
    out.inner
}

fn load_trickled(inst: &mut PluginInstance<TestHost>, bytes: &[u8]) -> bool {
    let state = inst.plugin_handle().get_extension::<PluginState>().unwrap();
    let mut input = Trickle { inner: bytes };
    state.load(&inst.plugin_handle(), &mut input).is_ok()
}

/// An instance whose every parameter a host has set to a value of its own
/// through `process` events, with a video and a prompt in its state.
fn randomised(seed: u64) -> PluginInstance<TestHost> {
    let (_, video) = fixture();
    let mut inst = instance();
    let state = format!(
        r#"{{"version":1,"video":{:?},"prompt":"calm strings at dusk","params":[[1,3],[4,0]]}}"#,
        video.to_str().unwrap()
    );
    load_state(&mut inst, state.as_bytes());
    let mut proc = start(&mut inst, RATE, BLOCK);
    let mut d = Driver::new(BLOCK);
    let mut x = seed;
    let mut random = move || {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (x >> 11) as f64 / (1u64 << 53) as f64
    };
    for p in params(&mut inst) {
        let mut v = p.min + (p.max - p.min) * random();
        if p.stepped {
            v = v.round();
        }
        d.input_events
            .push(&ParamValueEvent::new(0, p.id, Pckn::match_all(), v));
    }
    d.block(&mut proc, 0.0, BLOCK, true);
    inst.deactivate(proc.stop_processing());
    inst
}

#[test]
fn a_loaded_state_has_every_value_asks_for_a_rescan_and_saves_the_same_bytes() {
    for seed in [1, 2, 3] {
        let mut a = randomised(seed);
        let before = values(&mut a);
        let defaults = values(&mut instance());
        let changed = before
            .iter()
            .zip(&defaults)
            .filter(|(x, y)| x.1 != y.1)
            .count();
        // Buttons and switches may land on their defaults by chance.
        assert!(
            changed * 2 >= before.len(),
            "only {changed} of {} parameters moved off their defaults",
            before.len()
        );
        let saved = save_state(&mut a);
        // Plain and trickled streams give the same state.
        assert_eq!(save_trickled(&mut a), saved);

        for trickle in [false, true] {
            let mut b = instance();
            assert!(rescans(&mut b).is_empty());
            if trickle {
                assert!(load_trickled(&mut b, &saved));
            } else {
                load_state(&mut b, &saved);
            }
            assert!(
                rescans(&mut b)
                    .iter()
                    .any(|f| f.contains(ParamRescanFlags::VALUES)),
                "no values rescan after state.load"
            );
            assert_eq!(values(&mut b), before, "seed {seed}, trickled: {trickle}");
            // A project saved again right after opening is unchanged.
            let again = if trickle {
                save_trickled(&mut b)
            } else {
                save_state(&mut b)
            };
            assert_eq!(
                String::from_utf8_lossy(&again),
                String::from_utf8_lossy(&saved)
            );
        }
    }
}

#[test]
fn a_state_that_cannot_be_read_is_refused_and_changes_nothing() {
    let mut a = randomised(9);
    let saved = save_state(&mut a);
    let mut future: serde_json::Value = serde_json::from_slice(&saved).unwrap();
    future["version"] = serde_json::json!(vidmusician_plugin::state::STATE_VERSION + 1);
    let future = serde_json::to_vec(&future).unwrap();
    let mut noise = vec![0u8; 1 << 20];
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for b in &mut noise {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let cases: [(&str, &[u8]); 7] = [
        ("empty", b""),
        ("an open brace", b"{"),
        ("100 bytes of 0xff", &[0xff; 100]),
        ("a version no build wrote", br#"{"version":7}"#),
        ("1 MB of random bytes", &noise),
        ("a truncated state", &saved[..saved.len() * 2 / 3]),
        ("a state from a future version", &future),
    ];
    for (what, bytes) in cases {
        for trickle in [false, true] {
            let before_values = values(&mut a);
            let before_state = save_state(&mut a);
            let logged = a.access_shared_handler(|h| h.log.lock().unwrap().len());
            let ok = if trickle {
                load_trickled(&mut a, bytes)
            } else {
                let state = a.plugin_handle().get_extension::<PluginState>().unwrap();
                state.load(&a.plugin_handle(), &mut &bytes[..]).is_ok()
            };
            assert!(!ok, "{what} loaded");
            assert_eq!(values(&mut a), before_values, "{what}: parameters changed");
            // The video, the prompt and the rest of the state as before.
            assert_eq!(save_state(&mut a), before_state, "{what}: state changed");
            let log = a.access_shared_handler(|h| h.log.lock().unwrap()[logged..].to_vec());
            assert!(
                log.iter()
                    .any(|l| l.contains("Error") && l.contains("cannot load the saved state")),
                "{what}: nothing logged: {log:?}"
            );
        }
    }
    // And the instance still takes a good state afterwards.
    let mut b = instance();
    load_state(&mut b, &saved);
    assert_eq!(save_state(&mut b), saved);
}
