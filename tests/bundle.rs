//! The built plugin library loaded from disk as a `.clap` file, the way a
//! host finds it: it exports a working CLAP entry (and the VST3 one).

#[path = "../plugin/tests/common/mod.rs"]
mod common;

use assert_no_alloc::AllocDisabler;
use clack_host::prelude::*;
use common::*;

#[global_allocator]
static ALLOCATOR: AllocDisabler = AllocDisabler;

#[test]
fn the_clap_file_loads_plays_and_keeps_state() {
    let (dir, video) = fixture();
    let clap = dir.path().join("VidMusician.clap");
    std::fs::copy(built_library(), &clap).unwrap();
    // SAFETY: our own plugin library, built by cargo for this test.
    let entry = unsafe { PluginEntry::load(&clap) }.unwrap();
    let want = expected(video, 11, 48_000);

    let mut inst = instance_of(&entry);
    load_state(&mut inst, &state_json(video, 11));
    set_offline(&mut inst);
    let saved = save_state(&mut inst);
    let mut proc = start(&mut inst, 48_000.0, 1024);
    let mut d = Driver::new(1024);
    let mut sounding = 0;
    for k in 0..60 {
        let start = k * 1024;
        let got = d.block(&mut proc, start as f64 / 48_000.0, 1024, true);
        sounding += assert_plays(got, &want, start, "from disk");
    }
    assert!(sounding > 10_000, "{sounding}");
    inst.deactivate(proc.stop_processing());

    let mut again = instance_of(&entry);
    load_state(&mut again, &saved);
    assert_eq!(save_state(&mut again), saved);

    // The file carries its factory presets for hosts' preset browsers.
    let presets = entry
        .get_factory::<clack_extensions::preset_discovery::prelude::PresetDiscoveryFactory>()
        .unwrap();
    assert_eq!(presets.provider_count(), 1);
}

#[test]
fn the_library_exports_clap_and_vst3_entry_points() {
    let lib = built_library();
    // SAFETY: only symbol addresses are looked up; nothing is called.
    unsafe {
        let l = libloading::Library::new(&lib).unwrap();
        for sym in [
            &b"clap_entry\0"[..],
            b"GetPluginFactory\0",
            b"ModuleEntry\0",
            b"ModuleExit\0",
        ] {
            assert!(
                l.get::<*const ()>(sym).is_ok(),
                "{} missing",
                String::from_utf8_lossy(sym)
            );
        }
    }
}
