//! Helpers shared by the plugin's host tests: a minimal clack host, a
//! block driver, expected music from the engine.
#![allow(dead_code)]

use std::ffi::{CStr, CString};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use assert_no_alloc::assert_no_alloc;
use clack_extensions::log::{HostLog, HostLogImpl, LogSeverity};
use clack_extensions::params::{
    HostParams, HostParamsImplMainThread, HostParamsImplShared, ParamClearFlags, ParamRescanFlags,
};
use clack_extensions::preset_discovery::HostPresetLoadImpl;
use clack_extensions::preset_discovery::prelude::{HostPresetLoad, Location};
use clack_extensions::render::{PluginRender, RenderMode};
use clack_extensions::state::PluginState;
use clack_extensions::timer::{HostTimer, HostTimerImpl, PluginTimer, TimerId};
use clack_host::events::event_types::{TransportEvent, TransportFlags};
use clack_host::prelude::*;
use clack_host::utils::{BeatTime, SecondsTime};

use std::cell::RefCell;
use vidmusician_engine::audio::Audio;
use vidmusician_engine::service::{Engine, EngineConfig, Request};
use vidmusician_engine::video::synth::{SynthSpec, write_video};
use vidmusician_plugin::{PLUGIN_ID, VidMusicianEntry};

pub mod reaper;
pub mod xvfb;

pub struct HostShared {
    pub callback: AtomicBool,
    /// Offer REAPER's API (the fake one in [`reaper`]).
    pub reaper: bool,
    /// What the plugin logged.
    pub log: std::sync::Mutex<Vec<String>>,
}

impl HostLogImpl for HostShared {
    fn log(&self, severity: LogSeverity, message: &str) {
        self.log
            .lock()
            .unwrap()
            .push(format!("{severity:?}: {message}"));
    }
}

impl HostParamsImplShared for HostShared {
    fn request_flush(&self) {}
}

impl SharedHandler<'_> for HostShared {
    fn request_restart(&self) {}
    fn request_process(&self) {}
    fn request_callback(&self) {
        self.callback.store(true, Ordering::Release);
    }
}

pub struct TestHost;

impl HostHandlers for TestHost {
    type Shared<'a> = HostShared;
    type MainThread<'a> = HostMain;
    type AudioProcessor<'a> = ();

    fn declare_extensions(builder: &mut HostExtensions<Self>, shared: &Self::Shared<'_>) {
        builder
            .register::<HostTimer>()
            .register::<HostLog>()
            .register::<HostParams>()
            .register::<HostPresetLoad>();
        if shared.reaper {
            builder.register::<vidmusician_plugin::reaper::ReaperExtension>();
        }
    }
}

/// The host's main thread: timers the plugin registered, presets it said
/// it loaded (load key, or the error), parameter rescans it asked for.
#[derive(Default)]
pub struct HostMain {
    pub timers: RefCell<Vec<(TimerId, u32)>>,
    pub presets: RefCell<Vec<Result<String, String>>>,
    pub rescans: RefCell<Vec<ParamRescanFlags>>,
}

impl HostParamsImplMainThread for HostMain {
    fn rescan(&self, flags: ParamRescanFlags) {
        self.rescans.borrow_mut().push(flags);
    }

    fn clear(&self, _: ClapId, _: ParamClearFlags) {}
}

impl HostPresetLoadImpl for HostMain {
    fn on_error(&self, _: Location, key: Option<&CStr>, _: i32, message: Option<&CStr>) {
        let text = |c: Option<&CStr>| {
            c.map(|c| c.to_string_lossy().into_owned())
                .unwrap_or_default()
        };
        self.presets
            .borrow_mut()
            .push(Err(format!("{}: {}", text(key), text(message))));
    }

    fn loaded(&self, _: Location, key: Option<&CStr>) {
        self.presets.borrow_mut().push(Ok(key
            .map(|c| c.to_string_lossy().into_owned())
            .unwrap_or_default()));
    }
}

impl MainThreadHandler<'_> for HostMain {}

impl HostTimerImpl for HostMain {
    fn register_timer(&self, period_ms: u32) -> Result<TimerId, HostError> {
        let mut t = self.timers.borrow_mut();
        let id = TimerId(t.len() as u32 + 7);
        t.push((id, period_ms));
        Ok(id)
    }

    fn unregister_timer(&self, timer_id: TimerId) -> Result<(), HostError> {
        let mut t = self.timers.borrow_mut();
        let before = t.len();
        t.retain(|(id, _)| *id != timer_id);
        if t.len() == before {
            return Err(HostError::Message("no such timer"));
        }
        Ok(())
    }
}

/// Fires every timer the plugin has registered, as the host's clock would.
pub fn fire_timers(inst: &mut PluginInstance<TestHost>) -> usize {
    let ids: Vec<TimerId> =
        inst.access_handler(|h| h.timers.borrow().iter().map(|t| t.0).collect());
    let timer = inst.plugin_handle().get_extension::<PluginTimer>().unwrap();
    for &id in &ids {
        timer.on_timer(&inst.plugin_handle(), id);
    }
    ids.len()
}

/// One cache folder and one video for the whole test binary: the plugin
/// reads `VIDMUSICIAN_CACHE` when its engine starts. A static is never
/// dropped, so the folder lives in cargo's temporary folder under the test
/// binary's name, and what an earlier run of the binary left is removed
/// first (rather than piling up in the system's `/tmp`).
pub fn fixture() -> &'static (tempfile::TempDir, PathBuf) {
    static F: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    F.get_or_init(|| {
        let exe = std::env::current_exe().unwrap();
        let stem = exe.file_stem().unwrap().to_string_lossy().into_owned();
        // `host-0123abcd…`: the name without cargo's hash.
        let name = stem.rsplit_once('-').map_or(stem.as_str(), |(n, _)| n);
        let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        let dir = tempfile::tempdir_in(&root).unwrap();
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

/// The plugin's cdylib, which cargo builds beside the test executables.
pub fn built_library() -> PathBuf {
    let deps = std::env::current_exe()
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf();
    let lib = deps.join("libvidmusician_plugin.so");
    assert!(lib.exists(), "{} not built", lib.display());
    lib
}

/// The plugin compiled into this test binary.
pub fn in_process_entry() -> PluginEntry {
    PluginEntry::load_from_clack::<VidMusicianEntry>(c"/tmp/VidMusician.clap").unwrap()
}

pub fn instance() -> PluginInstance<TestHost> {
    instance_of(&in_process_entry())
}

pub fn instance_of(entry: &PluginEntry) -> PluginInstance<TestHost> {
    host_instance(entry, false)
}

/// An instance in a host that offers REAPER's API.
pub fn instance_in_reaper() -> PluginInstance<TestHost> {
    host_instance(&in_process_entry(), true)
}

fn host_instance(entry: &PluginEntry, reaper: bool) -> PluginInstance<TestHost> {
    let info = HostInfo::new("test host", "VidMusician", "https://example.invalid", "1.0").unwrap();
    let id = CString::new(PLUGIN_ID).unwrap();
    PluginInstance::<TestHost>::new(
        |_| HostShared {
            callback: AtomicBool::new(false),
            reaper,
            log: Default::default(),
        },
        |_| HostMain::default(),
        entry,
        &id,
        &info,
    )
    .unwrap()
}

/// A state with `video` and `seed`, not following the host's tempo.
/// Activates the plugin at `rate` for blocks of 1 to `max_block` frames
/// and starts processing, as a host does before its first block.
pub fn start(
    inst: &mut PluginInstance<TestHost>,
    rate: f64,
    max_block: usize,
) -> StartedPluginAudioProcessor<TestHost> {
    let config = PluginAudioConfiguration {
        sample_rate: rate,
        min_frames_count: 1,
        max_frames_count: max_block as u32,
    };
    inst.activate(|_, _| (), config)
        .unwrap()
        .start_processing()
        .unwrap()
}

pub fn state_json(video: &Path, seed: u32) -> Vec<u8> {
    format!(
        r#"{{"version":1,"video":{:?},"params":[[1,{seed}],[4,0]]}}"#,
        video.to_str().unwrap()
    )
    .into_bytes()
}

pub fn load_state(inst: &mut PluginInstance<TestHost>, bytes: &[u8]) {
    let state = inst.plugin_handle().get_extension::<PluginState>().unwrap();
    state.load(&inst.plugin_handle(), &mut &bytes[..]).unwrap();
}

pub fn save_state(inst: &mut PluginInstance<TestHost>) -> Vec<u8> {
    let state = inst.plugin_handle().get_extension::<PluginState>().unwrap();
    let mut out = Vec::new();
    state.save(&inst.plugin_handle(), &mut out).unwrap();
    out
}

pub fn set_offline(inst: &mut PluginInstance<TestHost>) {
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
pub fn expected(video: &Path, seed: u64, rate: u32) -> Audio {
    expected_with(video, seed, rate, None, None)
}

/// Like [`expected`], at a given tempo and bar grid.
pub fn expected_with(
    video: &Path,
    seed: u64,
    rate: u32,
    bpm: Option<f64>,
    downbeat: Option<f64>,
) -> Audio {
    let mut r = Request::new(video);
    r.tempo = bpm;
    r.downbeat = downbeat;
    expected_request(r, seed, rate)
}

/// What the engine makes for `request` (its seed and rate set here).
pub fn expected_for(r: Request, seed: u64, rate: u32) -> Audio {
    expected_request(r, seed, rate)
}

/// The quick preview of the first `until` seconds.
pub fn expected_preview(video: &Path, seed: u64, rate: u32, until: f64) -> Audio {
    let mut r = Request::new(video);
    r.preview_until = Some(until);
    expected_request(r, seed, rate)
}

fn expected_request(mut r: Request, seed: u64, rate: u32) -> Audio {
    let engine = Engine::start(EngineConfig {
        cache_dir: None,
        ..EngineConfig::default()
    })
    .unwrap();
    r.seed = seed;
    r.sample_rate = rate;
    let (id, _) = engine.submit(r).unwrap();
    (*engine.wait(id, |_| {}).unwrap().audio).clone()
}

pub fn transport(pos: f64, playing: bool) -> TransportEvent {
    transport_at(pos, playing, 120.0)
}

/// A transport at `pos` seconds of a song in 4/4 at a constant `tempo`.
pub fn transport_at(pos: f64, playing: bool, tempo: f64) -> TransportEvent {
    transport_in(pos, playing, tempo, (4, 4))
}

/// A transport at `pos` seconds of a song in `signature` (numerator,
/// denominator) at a constant `tempo` in quarter notes, bars from song time 0.
pub fn transport_in(pos: f64, playing: bool, tempo: f64, signature: (u16, u16)) -> TransportEvent {
    let mut flags = TransportFlags::HAS_SECONDS_TIMELINE
        | TransportFlags::HAS_TEMPO
        | TransportFlags::HAS_BEATS_TIMELINE
        | TransportFlags::HAS_TIME_SIGNATURE;
    let beats = pos * tempo / 60.0;
    let per_bar = f64::from(signature.0) * 4.0 / f64::from(signature.1);
    if playing {
        flags |= TransportFlags::IS_PLAYING;
    }
    TransportEvent {
        header: Default::default(),
        flags,
        song_pos_beats: BeatTime::from_float(beats),
        song_pos_seconds: SecondsTime::from_float(pos),
        tempo,
        tempo_inc: 0.0,
        loop_start_beats: BeatTime::default(),
        loop_end_beats: BeatTime::default(),
        loop_start_seconds: SecondsTime::default(),
        loop_end_seconds: SecondsTime::default(),
        bar_start: BeatTime::from_float((beats / per_bar).floor() * per_bar),
        bar_number: (beats / per_bar).floor() as i32,
        time_signature_numerator: signature.0,
        time_signature_denominator: signature.1,
    }
}

/// Drives a started processor: one block of `n` frames at song position
/// `pos` seconds (input silence unless [`Driver::feed`] set one), the
/// output copied into `out`.
pub struct Driver {
    ins: [Vec<f32>; 2],
    /// The input is a signal (not constant silence).
    live: bool,
    outs: [Vec<f32>; 2],
    in_ports: AudioPorts,
    out_ports: AudioPorts,
    /// Events for the next block (cleared after it).
    pub input_events: EventBuffer,
    /// Events the plugin sent in the last block.
    pub output_events: EventBuffer,
}

impl Driver {
    pub fn new(max: usize) -> Self {
        Self {
            ins: [vec![0.0; max], vec![0.0; max]],
            live: false,
            outs: [vec![0.0; max], vec![0.0; max]],
            in_ports: AudioPorts::with_capacity(2, 1),
            out_ports: AudioPorts::with_capacity(2, 1),
            input_events: EventBuffer::with_capacity(64),
            output_events: EventBuffer::with_capacity(64),
        }
    }

    /// Feeds every block from now on `signal(channel, frame of the block)`.
    pub fn feed(&mut self, signal: impl Fn(usize, usize) -> f32) {
        for (c, buf) in self.ins.iter_mut().enumerate() {
            for (i, x) in buf.iter_mut().enumerate() {
                *x = signal(c, i);
            }
        }
        self.live = true;
    }

    /// The input of a block of `n` frames.
    pub fn input(&self, n: usize) -> (&[f32], &[f32]) {
        (&self.ins[0][..n], &self.ins[1][..n])
    }

    pub fn block(
        &mut self,
        proc: &mut StartedPluginAudioProcessor<TestHost>,
        pos: f64,
        n: usize,
        playing: bool,
    ) -> (&[f32], &[f32]) {
        self.block_at(proc, pos, n, playing, 120.0)
    }

    pub fn block_at(
        &mut self,
        proc: &mut StartedPluginAudioProcessor<TestHost>,
        pos: f64,
        n: usize,
        playing: bool,
        tempo: f64,
    ) -> (&[f32], &[f32]) {
        self.block_with(proc, &transport_at(pos, playing, tempo), n)
    }

    /// One block of `n` frames under transport `t`, with the queued
    /// `input_events`.
    pub fn block_with(
        &mut self,
        proc: &mut StartedPluginAudioProcessor<TestHost>,
        t: &TransportEvent,
        n: usize,
    ) -> (&[f32], &[f32]) {
        let [il, ir] = &mut self.ins;
        let [ol, or] = &mut self.outs;
        let (il, ir) = (&mut il[..n], &mut ir[..n]);
        let channels = if self.live {
            [InputChannel::variable(il), InputChannel::variable(ir)]
        } else {
            [InputChannel::constant(il), InputChannel::constant(ir)]
        };
        let input = self.in_ports.with_input_buffers([AudioPortBuffer {
            latency: 0,
            channels: AudioPortBufferType::f32_input_only(channels.into_iter()),
        }]);
        let mut output = self.out_ports.with_output_buffers([AudioPortBuffer {
            latency: 0,
            channels: AudioPortBufferType::f32_output_only(
                [&mut ol[..n], &mut or[..n]].into_iter(),
            ),
        }]);
        self.output_events.clear();
        let ins = InputEvents::from_buffer(&self.input_events);
        let mut outs = OutputEvents::from_buffer(&mut self.output_events);
        let mut result = None;
        // The checker counts violations only where the dependency is built
        // with debug assertions (tests); in benchmarks (release) it is off.
        #[cfg(debug_assertions)]
        let violations = assert_no_alloc::violation_count();
        assert_no_alloc(|| {
            result = Some(proc.process(&input, &mut output, &ins, &mut outs, None, Some(t)));
        });
        #[cfg(debug_assertions)]
        assert_eq!(
            assert_no_alloc::violation_count(),
            violations,
            "process allocated or freed"
        );
        result.unwrap().unwrap();
        self.input_events.clear();
        (&self.outs[0][..n], &self.outs[1][..n])
    }
}

/// Plays song frames `0..frames` at `rate` in blocks of `block`, as a host
/// playing from the start; the output by song frame (whole blocks).
pub fn play_from_start(
    d: &mut Driver,
    proc: &mut StartedPluginAudioProcessor<TestHost>,
    frames: usize,
    block: usize,
    rate: u32,
) -> [Vec<f32>; 2] {
    let mut out = [Vec::new(), Vec::new()];
    let mut f = 0;
    while f < frames {
        let (l, r) = d.block(proc, f as f64 / f64::from(rate), block, true);
        out[0].extend_from_slice(l);
        out[1].extend_from_slice(r);
        f += block;
    }
    out
}

/// Asserts the block is the expected music; returns how many of its frames
/// carry sound, so callers can tell they compared music, not silence.
pub fn assert_plays(got: (&[f32], &[f32]), want: &Audio, start: i64, ctx: &str) -> usize {
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
