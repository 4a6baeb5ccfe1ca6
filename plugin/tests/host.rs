//! The plugin driven the way a host drives it: clack-host, in process.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use assert_no_alloc::{AllocDisabler, assert_no_alloc};
use clack_extensions::render::{PluginRender, RenderMode};
use clack_extensions::state::PluginState;
use clack_host::events::event_types::{TransportEvent, TransportFlags};
use clack_host::prelude::*;
use clack_host::utils::{BeatTime, SecondsTime};
use clack_plugin::entry::SinglePluginEntry;
use vidmusician_engine::audio::Audio;
use vidmusician_engine::service::{Engine, EngineConfig, Request};
use vidmusician_engine::video::synth::{SynthSpec, write_video};
use vidmusician_plugin::{PLUGIN_ID, VidMusician};

#[global_allocator]
static ALLOCATOR: AllocDisabler = AllocDisabler;

struct HostShared {
    callback: AtomicBool,
}

impl SharedHandler<'_> for HostShared {
    fn request_restart(&self) {}
    fn request_process(&self) {}
    fn request_callback(&self) {
        self.callback.store(true, Ordering::Release);
    }
}

struct TestHost;

impl HostHandlers for TestHost {
    type Shared<'a> = HostShared;
    type MainThread<'a> = ();
    type AudioProcessor<'a> = ();
}

/// One cache folder and one video for the whole test binary: the plugin
/// reads `VIDMUSICIAN_CACHE` when its engine starts.
fn fixture() -> &'static (tempfile::TempDir, PathBuf) {
    static F: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    F.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        // SAFETY: set once, before any engine thread of this process reads it.
        unsafe { std::env::set_var("VIDMUSICIAN_CACHE", dir.path().join("cache")) };
        let video = dir.path().join("v.mp4");
        write_video(
            &video,
            &SynthSpec::new(192, 144, 25, 3.0, vec![0.8, 1.7, 2.4]),
        )
        .unwrap();
        (dir, video)
    })
}

fn instance() -> PluginInstance<TestHost> {
    let entry =
        PluginEntry::load_from_clack::<SinglePluginEntry<VidMusician>>(c"/tmp/VidMusician.clap")
            .unwrap();
    let info = HostInfo::new("test host", "VidMusician", "https://example.invalid", "1.0").unwrap();
    let id = std::ffi::CString::new(PLUGIN_ID).unwrap();
    PluginInstance::<TestHost>::new(
        |_| HostShared {
            callback: AtomicBool::new(false),
        },
        |_| (),
        &entry,
        &id,
        &info,
    )
    .unwrap()
}

fn state_json(video: &Path, seed: u32) -> Vec<u8> {
    format!(
        r#"{{"version":1,"video":{:?},"params":[[1,{seed}]]}}"#,
        video.to_str().unwrap()
    )
    .into_bytes()
}

fn load_state(inst: &mut PluginInstance<TestHost>, bytes: &[u8]) {
    let state = inst.plugin_handle().get_extension::<PluginState>().unwrap();
    state.load(&inst.plugin_handle(), &mut &bytes[..]).unwrap();
}

fn save_state(inst: &mut PluginInstance<TestHost>) -> Vec<u8> {
    let state = inst.plugin_handle().get_extension::<PluginState>().unwrap();
    let mut out = Vec::new();
    state.save(&inst.plugin_handle(), &mut out).unwrap();
    out
}

fn set_offline(inst: &mut PluginInstance<TestHost>) {
    let render = inst
        .plugin_handle()
        .get_extension::<PluginRender>()
        .unwrap();
    render
        .set(&inst.plugin_handle(), RenderMode::Offline)
        .unwrap();
}

/// What the engine makes for this video and seed at `rate`, made here
/// independently of the plugin.
fn expected(video: &Path, seed: u64, rate: u32) -> Audio {
    let engine = Engine::start(EngineConfig { cache_dir: None }).unwrap();
    let mut r = Request::new(video);
    r.seed = seed;
    r.sample_rate = rate;
    let (id, _) = engine.submit(r).unwrap();
    (*engine.wait(id, |_| {}).unwrap().audio).clone()
}

fn transport(pos: f64, playing: bool) -> TransportEvent {
    let mut flags = TransportFlags::HAS_SECONDS_TIMELINE
        | TransportFlags::HAS_TEMPO
        | TransportFlags::HAS_BEATS_TIMELINE;
    if playing {
        flags |= TransportFlags::IS_PLAYING;
    }
    TransportEvent {
        header: Default::default(),
        flags,
        song_pos_beats: BeatTime::from_float(pos * 2.0),
        song_pos_seconds: SecondsTime::from_float(pos),
        tempo: 120.0,
        tempo_inc: 0.0,
        loop_start_beats: BeatTime::default(),
        loop_end_beats: BeatTime::default(),
        loop_start_seconds: SecondsTime::default(),
        loop_end_seconds: SecondsTime::default(),
        bar_start: BeatTime::default(),
        bar_number: 0,
        time_signature_numerator: 4,
        time_signature_denominator: 4,
    }
}

/// Drives a started processor: one block of `n` frames at song position
/// `pos` seconds (input silence), the output copied into `out`.
struct Driver {
    ins: [Vec<f32>; 2],
    outs: [Vec<f32>; 2],
    in_ports: AudioPorts,
    out_ports: AudioPorts,
}

impl Driver {
    fn new(max: usize) -> Self {
        Self {
            ins: [vec![0.0; max], vec![0.0; max]],
            outs: [vec![0.0; max], vec![0.0; max]],
            in_ports: AudioPorts::with_capacity(2, 1),
            out_ports: AudioPorts::with_capacity(2, 1),
        }
    }

    fn block(
        &mut self,
        proc: &mut StartedPluginAudioProcessor<TestHost>,
        pos: f64,
        n: usize,
        playing: bool,
    ) -> (&[f32], &[f32]) {
        let t = transport(pos, playing);
        let [il, ir] = &mut self.ins;
        let [ol, or] = &mut self.outs;
        let input = self.in_ports.with_input_buffers([AudioPortBuffer {
            latency: 0,
            channels: AudioPortBufferType::f32_input_only(
                [
                    InputChannel::constant(&mut il[..n]),
                    InputChannel::constant(&mut ir[..n]),
                ]
                .into_iter(),
            ),
        }]);
        let mut output = self.out_ports.with_output_buffers([AudioPortBuffer {
            latency: 0,
            channels: AudioPortBufferType::f32_output_only(
                [&mut ol[..n], &mut or[..n]].into_iter(),
            ),
        }]);
        let ins = InputEvents::empty();
        let mut outs = OutputEvents::void();
        let mut result = None;
        assert_no_alloc(|| {
            result = Some(proc.process(&input, &mut output, &ins, &mut outs, None, Some(&t)));
        });
        result.unwrap().unwrap();
        (&self.outs[0][..n], &self.outs[1][..n])
    }
}

/// Asserts the block is the expected music; returns how many of its frames
/// carry sound, so callers can tell they compared music, not silence.
fn assert_plays(got: (&[f32], &[f32]), want: &Audio, start: i64, ctx: &str) -> usize {
    let mut sounding = 0;
    for (i, (&l, &r)) in got.0.iter().zip(got.1).enumerate() {
        let f = start + i as i64;
        let (el, er) = if f >= 0 && (f as usize) < want.len() {
            (want.channels[0][f as usize], want.channels[1][f as usize])
        } else {
            (0.0, 0.0)
        };
        assert!(
            l == el && r == er,
            "{ctx}: frame {f}: got ({l}, {r}), want ({el}, {er})"
        );
        sounding += usize::from(l != 0.0 || r != 0.0);
    }
    sounding
}

#[test]
fn plays_the_music_at_every_block_size_and_rate_and_after_seeks() {
    let (_, video) = fixture();
    for rate in [44_100u32, 48_000, 96_000] {
        let want = expected(video, 3, rate);
        let mut inst = instance();
        load_state(&mut inst, &state_json(video, 3));
        set_offline(&mut inst);
        let config = PluginAudioConfiguration {
            sample_rate: f64::from(rate),
            min_frames_count: 1,
            max_frames_count: 4096,
        };
        let stopped = inst.activate(|_, _| (), config).unwrap();
        let mut proc = stopped.start_processing().unwrap();
        let mut d = Driver::new(4096);
        assert_no_alloc::reset_violation_count();
        let mut sounding = 0;
        for block in [1usize, 64, 511, 4096] {
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
        let got = d.block(&mut proc, 1.0, 64, false);
        assert!(got.0.iter().chain(got.1).all(|&x| x == 0.0));
        assert_eq!(assert_no_alloc::violation_count(), 0, "process allocated");
        inst.deactivate(proc.stop_processing());
    }
}

#[test]
fn state_round_trips_and_hostile_state_loads_defaults() {
    let (_, video) = fixture();
    let mut a = instance();
    load_state(&mut a, &state_json(video, 42));
    let saved = save_state(&mut a);
    let v: serde_json::Value = serde_json::from_slice(&saved).unwrap();
    assert_eq!(v["video"].as_str(), video.to_str());
    let mut b = instance();
    load_state(&mut b, &saved);
    assert_eq!(save_state(&mut b), saved);

    let defaults = save_state(&mut instance());
    for hostile in [
        &b""[..],
        b"{",
        &[0xffu8; 100][..],
        br#"{"version":7}"#,
        &saved[..saved.len() / 2],
    ] {
        let mut c = instance();
        load_state(&mut c, &saved);
        load_state(&mut c, hostile);
        let after: serde_json::Value = serde_json::from_slice(&save_state(&mut c)).unwrap();
        let d: serde_json::Value = serde_json::from_slice(&defaults).unwrap();
        assert_eq!(
            after["params"], d["params"],
            "hostile state did not reset the parameters"
        );
    }
}

#[test]
fn realtime_playback_never_waits_and_fills_in_as_music_arrives() {
    let (_, video) = fixture();
    let want = expected(video, 5, 48_000);
    let mut inst = instance();
    load_state(&mut inst, &state_json(video, 5));
    let config = PluginAudioConfiguration {
        sample_rate: 48_000.0,
        min_frames_count: 1,
        max_frames_count: 512,
    };
    let stopped = inst.activate(|_, _| (), config).unwrap();
    let mut proc = stopped.start_processing().unwrap();
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
