//! VidMusician as a CLAP plugin, and as VST3 through clap-wrapper.
//!
//! Host glue only: the music comes from `vidmusician-engine`'s service. One
//! type per thread, as CLAP has them:
//!
//! - [`Shared`] (any thread): parameter values as atomics, render mode.
//! - [`MainThread`]: the engine, the video, the saved state; submits
//!   requests and hands finished takes to the audio thread over a ring.
//! - [`Processor`] (audio thread): plays the take as a pure function of the
//!   host's song position, through [`playback::Player`].

pub mod params;
pub mod playback;
pub mod presets;
pub mod reaper;
pub mod state;

use std::ffi::{CStr, CString};
use std::fmt::Write as _;
use std::io::Read as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use clack_extensions::audio_ports::{
    AudioPortFlags, AudioPortInfo, AudioPortInfoWriter, AudioPortType, PluginAudioPorts,
    PluginAudioPortsImpl,
};
use clack_extensions::log::{HostLog, LogSeverity};
use clack_extensions::params::{HostParams, ParamRescanFlags};
use clack_extensions::params::{
    ParamDisplayWriter, ParamInfo, ParamInfoFlags, ParamInfoWriter, PluginAudioProcessorParams,
    PluginMainThreadParams, PluginParams,
};
use clack_extensions::preset_discovery::prelude::{
    HostPresetLoad, Location, PluginPresetLoad, PluginPresetLoadImpl, PresetDiscoveryFactoryWrapper,
};
use clack_extensions::render::{PluginRender, PluginRenderImpl, RenderMode};
use clack_extensions::state::{PluginState, PluginStateImpl};
use clack_extensions::timer::{HostTimer, PluginTimer, PluginTimerImpl, TimerId};
use clack_plugin::entry::prelude::{EntryFactories, EntryLoadError};
use clack_plugin::events::Pckn;
use clack_plugin::events::event_types::{ParamValueEvent, TransportFlags};
use clack_plugin::events::spaces::CoreEventSpace;
use clack_plugin::prelude::*;
use clack_plugin::stream::{InputStream, OutputStream};
use parking_lot::Mutex;

use params::{PARAMS, ParamId, ParamSpec, ParamValues};
use playback::{Grid, MAX_SLOTS, Player, Take};
use reaper::{Reaper, VideoItem};
use state::{MAX_STATE_BYTES, SavedState};
use vidmusician_engine::service::{Engine, EngineChoice, EngineConfig, Request};
use vidmusician_engine::sketch::Meter;

pub const PLUGIN_ID: &str = "com.vidmusician.vidmusician";

/// How long offline rendering waits for music that is still being made,
/// per block.
const OFFLINE_WAIT: Duration = Duration::from_secs(120);
/// A new tempo must hold this long (of processed audio) before the music is
/// made again for it: tempo ramps and automation do not regenerate on
/// every block.
const TEMPO_SETTLE_S: f64 = 0.3;
/// Crossfade from one take to the next, seconds.
const XFADE_S: f64 = 0.05;
/// Length of the quick preview made first for a long video, seconds.
const PREVIEW_S: f64 = 8.0;

pub struct VidMusician;

impl Plugin for VidMusician {
    type AudioProcessor<'a> = Processor<'a>;
    type Shared<'a> = Shared<'a>;
    type MainThread<'a> = MainThread<'a>;

    fn declare_extensions(builder: &mut PluginExtensions<Self>, _shared: Option<&Shared<'_>>) {
        builder
            .register::<PluginAudioPorts>()
            .register::<PluginParams>()
            .register::<PluginState>()
            .register::<PluginRender>()
            .register::<PluginTimer>()
            .register::<PluginPresetLoad>();
    }
}

impl DefaultPluginFactory for VidMusician {
    fn get_descriptor() -> PluginDescriptor {
        use clack_plugin::plugin::features::*;
        PluginDescriptor::new(PLUGIN_ID, "VidMusician")
            .with_vendor("VidMusician")
            .with_version(env!("CARGO_PKG_VERSION"))
            .with_description("Music for the video on your timeline, with its accents on the cuts")
            .with_features([AUDIO_EFFECT, INSTRUMENT, STEREO])
    }

    fn new_shared(host: HostSharedHandle<'_>) -> Result<Shared<'_>, PluginError> {
        Ok(Shared {
            host,
            params: ParamValues::default(),
            offline: AtomicBool::new(false),
            regenerate: AtomicBool::new(false),
            host_tempo: AtomicU64::new(0),
            host_meter: AtomicU32::new(pack_meter(Meter::COMMON)),
            host_downbeat: AtomicU64::new(0f64.to_bits()),
            timeline_offset: AtomicU64::new(0f64.to_bits()),
        })
    }

    fn new_main_thread<'a>(
        host: HostMainThreadHandle<'a>,
        shared: &'a Shared<'a>,
    ) -> Result<MainThread<'a>, PluginError> {
        let reaper = Reaper::new(&host);
        Ok(MainThread {
            shared,
            host,
            inner: Mutex::new(Inner {
                engine: None,
                video: std::env::var_os("VIDMUSICIAN_VIDEO").map(PathBuf::from),
                prompt: String::new(),
                cache_key: None,
                link: None,
                sample_rate: None,
                has_music: false,
                reaper,
                item: None,
                reaper_changes: None,
                timer: None,
            }),
        })
    }
}

pub struct Shared<'a> {
    host: HostSharedHandle<'a>,
    pub params: ParamValues,
    /// Set by the main thread (render extension), read by the audio thread.
    offline: AtomicBool,
    /// Set by the audio thread when a parameter that needs new music
    /// changed; cleared by the main thread when it submits the request.
    regenerate: AtomicBool,
    /// The host's tempo (f64 bits, 0 = not known) and a song time where one
    /// of its bars starts (f64 bits): written by the audio thread once the
    /// tempo has settled, read by the main thread for the next request.
    host_tempo: AtomicU64,
    /// The host's time signature, packed by [`pack_meter`].
    host_meter: AtomicU32,
    host_downbeat: AtomicU64,
    /// Song time (f64 bits) where the video item starts on the host's
    /// timeline, when the host says (REAPER); 0 otherwise. The Video offset
    /// parameter is added to it.
    timeline_offset: AtomicU64,
}

impl Shared<'_> {
    /// Tells the user: through the host's log (CLAP log extension) when it
    /// has one, else on stderr. Never from the audio thread (it allocates).
    fn report(&self, severity: LogSeverity, message: &str) {
        let text = format!("VidMusician: {message}");
        match (
            self.host.get_extension::<HostLog>(),
            CString::new(text.replace('\0', " ")),
        ) {
            (Some(log), Ok(c)) => log.log(&self.host, severity, &c),
            _ => eprintln!("{text}"),
        }
    }

    /// Whether moving the music by `shift` seconds takes its bars off the
    /// host's bar grid (it follows the host's tempo, and the shift is not a
    /// whole number of bars): then it has to be made again.
    fn off_grid(&self, shift: f64) -> bool {
        let tempo = f64::from_bits(self.host_tempo.load(Ordering::Acquire));
        if self.params.get(ParamId::FollowTempo) < 0.5 || tempo <= 0.0 {
            return false;
        }
        let bar = unpack_meter(self.host_meter.load(Ordering::Acquire)).bar(tempo);
        let r = shift.rem_euclid(bar);
        r > 1e-6 && bar - r > 1e-6
    }

    /// Song time at which the music's first frame plays.
    fn offset(&self) -> f64 {
        f64::from_bits(self.timeline_offset.load(Ordering::Acquire))
            + self.params.get(ParamId::VideoOffset)
    }
}

fn pack_meter(m: Meter) -> u32 {
    u32::from(m.beats) << 8 | u32::from(m.unit)
}

fn unpack_meter(v: u32) -> Meter {
    Meter::checked(v >> 8, v & 0xff).unwrap_or(Meter::COMMON)
}

impl<'a> PluginShared<'a> for Shared<'a> {}

/// Main-thread state. The lock is only ever taken on the main thread (CLAP
/// calls `activate` and `deactivate` there too), never by the audio thread.
pub struct MainThread<'a> {
    shared: &'a Shared<'a>,
    host: HostMainThreadHandle<'a>,
    inner: Mutex<Inner>,
}

struct Inner {
    /// Started on the first request; joined when the plugin is destroyed.
    engine: Option<Engine>,
    video: Option<PathBuf>,
    prompt: String,
    cache_key: Option<String>,
    /// The rings to the active audio processor.
    link: Option<Link>,
    sample_rate: Option<f64>,
    /// A take has gone to the active processor: regenerations then keep the
    /// old music playing until the new take is whole, rather than going
    /// through a preview that could run out mid-song.
    has_music: bool,
    /// REAPER's API, when the host is REAPER.
    reaper: Option<Reaper>,
    /// The video item last found on REAPER's timeline.
    item: Option<VideoItem>,
    /// REAPER's project change count when the timeline was last read.
    reaper_changes: Option<i32>,
    /// The host timer that re-reads REAPER's timeline.
    timer: Option<TimerId>,
}

/// Where a take's music comes from.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Source {
    /// The disk cache, whole, at once.
    Cache,
    /// The engine, the first seconds only.
    Preview,
    /// The engine, the whole piece.
    Engine,
}

struct Link {
    takes: rtrb::Producer<Box<Take>>,
    returned: rtrb::Consumer<Box<Take>>,
}

impl<'a> PluginMainThread<'a, Shared<'a>> for MainThread<'a> {
    fn on_main_thread(&self) {
        self.service();
    }
}

impl MainThread<'_> {
    /// Everything the main thread does when the host gives it a turn:
    /// drop returned takes, pick up engine events, regenerate if asked.
    fn service(&self) {
        let mut inner = self.inner.lock();
        if let Some(link) = inner.link.as_mut() {
            while link.returned.pop().is_ok() {}
        }
        let mut key = None;
        if let Some(engine) = inner.engine.as_ref() {
            while let Ok(ev) = engine.events().try_recv() {
                match ev {
                    vidmusician_engine::service::Event::Done { result, .. } => {
                        key = Some(result.cache_key.clone());
                    }
                    vidmusician_engine::service::Event::Failed { error, .. } => {
                        self.shared.report(LogSeverity::Error, &error.to_string());
                    }
                    _ => {}
                }
            }
        }
        if key.is_some() {
            inner.cache_key = key;
        }
        if self.shared.regenerate.swap(false, Ordering::AcqRel) {
            self.request(&mut inner);
        }
    }

    /// Submits a request for the current video and settings and hands its
    /// take to the audio processor. Needs an active processor (the host's
    /// sample rate) and a video.
    fn request(&self, inner: &mut Inner) {
        self.follow_timeline(inner);
        let (Some(rate), Some(video)) = (inner.sample_rate, inner.video.clone()) else {
            return;
        };
        let info = match vidmusician_engine::video::probe(&video) {
            Ok(i) => i,
            Err(e) => {
                self.shared.report(LogSeverity::Error, &e.to_string());
                return;
            }
        };
        // The part of the video the timeline plays, and how fast.
        let (range, playrate) = match &inner.item {
            Some(item) if item.path == video => {
                let (a, b) = item.range();
                (Some((a, b.min(info.duration))), item.playrate)
            }
            _ => (None, 1.0),
        };
        let (start, end) = range.unwrap_or((0.0, info.duration));
        let seconds = (end - start) / playrate;
        if !(seconds.is_finite() && seconds > 0.0) {
            self.shared.report(
                LogSeverity::Error,
                &format!(
                    "the video item starts at {start:.2} s of a {:.2} s video: nothing to score",
                    info.duration
                ),
            );
            return;
        }
        if inner.engine.is_none() {
            // In a session speed matters more than matching the reference
            // bit for bit: neural engines run with 8-bit weights (2.6× faster,
            // half the memory; see the README's benchmarks).
            let config = EngineConfig {
                precision: vidmusician_engine::neural::Precision::Q8,
                ..EngineConfig::default()
            };
            match Engine::start(config) {
                Ok(e) => inner.engine = Some(e),
                Err(e) => {
                    self.shared.report(LogSeverity::Error, &e.to_string());
                    return;
                }
            }
        }
        let total = (seconds * rate).round().max(1.0) as u64;
        let chunk_frames = (total as usize).div_ceil(MAX_SLOTS).max(4096);
        let mut req = Request::new(&video);
        req.range = range;
        req.playrate = playrate;
        req.sample_rate = rate.round() as u32;
        req.seed = self.shared.params.get(ParamId::Seed) as u64;
        req.prompt = inner.prompt.clone();
        let params = &self.shared.params;
        req.rhythm_strength = params.get(ParamId::RhythmStrength) as f32;
        req.semantic_strength = params.get(ParamId::SemanticStrength) as f32;
        req.guidance = Some(params.get(ParamId::Guidance));
        req.engine = match params.get(ParamId::Engine) as usize {
            1 => EngineChoice::Sketch,
            2 => EngineChoice::Text,
            _ => EngineChoice::Auto,
        };
        let tempo = f64::from_bits(self.shared.host_tempo.load(Ordering::Acquire));
        let follow = params.get(ParamId::FollowTempo) >= 0.5;
        let grid = (follow && tempo > 0.0).then(|| Grid {
            bpm: tempo,
            meter: unpack_meter(self.shared.host_meter.load(Ordering::Acquire)),
        });
        if let Some(g) = grid {
            req.tempo = Some(g.bpm);
            req.meter = g.meter;
            // The host's bar grid in piece time, with the offset as it is
            // now (the video may have moved since the tempo was read).
            let bar_song = f64::from_bits(self.shared.host_downbeat.load(Ordering::Acquire));
            req.downbeat = Some(bar_song - self.shared.offset());
        }
        req.chunk_frames = chunk_frames;
        // Music made before (a reopened project) plays at once.
        if self.submit_take(inner, req.clone(), total, grid, Source::Cache) {
            return;
        }
        // A long video gets a quick preview of its start first, so music
        // plays within a second; the full piece replaces it at a bar line.
        // A bounce needs the full piece only, and the text engine sends its
        // piece window by window anyway.
        let offline = self.shared.offline.load(Ordering::Acquire);
        let streams = req.engine == EngineChoice::Text;
        if !offline && !streams && !inner.has_music && seconds > PREVIEW_S * 1.5 {
            let mut preview = req.clone();
            preview.preview_until = Some(start + PREVIEW_S * playrate);
            preview.supersede = true;
            let frames = (PREVIEW_S * rate).round() as u64;
            self.submit_take(inner, preview, frames, grid, Source::Preview);
            req.supersede = false;
        } else {
            req.supersede = true;
        }
        self.submit_take(inner, req, total, grid, Source::Engine);
    }

    /// Gets `req`'s music from `source` and hands its take (`total` frames)
    /// to the audio thread; true when a take was handed over.
    fn submit_take(
        &self,
        inner: &mut Inner,
        mut req: Request,
        total: u64,
        grid: Option<Grid>,
        source: Source,
    ) -> bool {
        let Some(engine) = inner.engine.as_ref() else {
            return false;
        };
        req.max_chunks = (total as usize).div_ceil(req.chunk_frames) + 1;
        let chunk_frames = req.chunk_frames;
        let got = match source {
            Source::Cache => engine.submit_cached(&req),
            Source::Preview | Source::Engine => match engine.submit(req) {
                Ok((id, reader)) => reader.map(|r| (id, r)),
                Err(e) => {
                    self.shared.report(LogSeverity::Error, &e.to_string());
                    None
                }
            },
        };
        let Some((_, reader)) = got else {
            return false;
        };
        let take = Box::new(Take {
            reader,
            chunk_frames,
            total_frames: total,
            grid,
            preview: source == Source::Preview,
        });
        self.hand_over(inner, take)
    }

    fn hand_over(&self, inner: &mut Inner, take: Box<Take>) -> bool {
        let Some(link) = inner.link.as_mut() else {
            return false;
        };
        if link.takes.push(take).is_err() {
            self.shared.report(
                LogSeverity::Warning,
                "the audio thread is not taking new music; try again",
            );
            return false;
        }
        inner.has_music = true;
        true
    }
}

/// How often REAPER's timeline is looked at for changes.
const TIMELINE_CHECK_MS: u32 = 500;

impl MainThread<'_> {
    /// Reads the video item off REAPER's timeline (nothing in other hosts):
    /// the video and where it starts. True when what changed needs new music
    /// (another file, trim or playrate), not just a move along the timeline.
    fn follow_timeline(&self, inner: &mut Inner) -> bool {
        let Some(reaper) = inner.reaper.as_ref() else {
            return false;
        };
        if inner.timer.is_none()
            && let Some(timer) = self.host.get_extension::<HostTimer>()
        {
            inner.timer = timer.register_timer(&self.host, TIMELINE_CHECK_MS).ok();
        }
        inner.reaper_changes = reaper.change_count();
        let (found, others) = reaper::choose(&reaper.items());
        let Some(item) = found else {
            // Deleted or not yet placed: the music stays where it was, and
            // a saved video still plays.
            return false;
        };
        if inner.item.as_ref() == Some(&item) && inner.video.as_ref() == Some(&item.path) {
            return false;
        }
        if others > 0 {
            self.shared.report(
                LogSeverity::Warning,
                &format!(
                    "{} video items on the timeline; scoring the first, {} at {:.2} s",
                    others + 1,
                    item.path.display(),
                    item.position
                ),
            );
        }
        let new_music = inner.item.as_ref().is_none_or(|old| {
            old.needs_new_music(&item) || self.shared.off_grid(item.position - old.position)
        }) || inner.video.as_ref() != Some(&item.path);
        self.shared
            .timeline_offset
            .store(item.position.to_bits(), Ordering::Release);
        inner.video = Some(item.path.clone());
        inner.item = Some(item);
        new_music
    }
}

impl PluginTimerImpl for MainThread<'_> {
    fn on_timer(&self, timer_id: TimerId) {
        let mut inner = self.inner.lock();
        if inner.timer != Some(timer_id) {
            return;
        }
        // The count moves on every edit; unchanged, there is nothing to read.
        if let Some(r) = inner.reaper.as_ref()
            && let Some(now) = r.change_count()
            && inner.reaper_changes == Some(now)
        {
            return;
        }
        if self.follow_timeline(&mut inner) {
            self.request(&mut inner);
        }
    }
}

impl Drop for MainThread<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.inner.get_mut().timer.take()
            && let Some(timer) = self.host.get_extension::<HostTimer>()
        {
            let _ = timer.unregister_timer(&self.host, id);
        }
    }
}

impl PluginAudioPortsImpl for MainThread<'_> {
    fn count(&self, _is_input: bool) -> u32 {
        1
    }

    fn get(&self, index: u32, is_input: bool, writer: &mut AudioPortInfoWriter) {
        if index != 0 {
            return;
        }
        writer.set(&AudioPortInfo {
            id: ClapId::new(if is_input { 0 } else { 1 }),
            name: if is_input { b"Input" } else { b"Music" },
            channel_count: 2,
            flags: AudioPortFlags::IS_MAIN,
            port_type: Some(AudioPortType::STEREO),
            in_place_pair: None,
        });
    }
}

impl PluginMainThreadParams for MainThread<'_> {
    fn count(&self) -> u32 {
        PARAMS.len() as u32
    }

    fn get_info(&self, index: u32, info: &mut ParamInfoWriter) {
        let Some(p) = PARAMS.get(index as usize) else {
            return;
        };
        // A button is not something to automate.
        let mut flags = if p.id == ParamId::Regenerate {
            ParamInfoFlags::empty()
        } else {
            ParamInfoFlags::IS_AUTOMATABLE
        };
        if p.stepped {
            flags |= ParamInfoFlags::IS_STEPPED;
        }
        if p.id == ParamId::Engine {
            flags |= ParamInfoFlags::IS_ENUM;
        }
        info.set(&ParamInfo {
            id: ClapId::new(p.id as u32),
            flags,
            cookie: Default::default(),
            name: p.name.as_bytes(),
            module: b"",
            min_value: p.min,
            max_value: p.max,
            default_value: p.default,
        });
    }

    fn get_value(&self, id: ClapId) -> Option<f64> {
        ParamSpec::by_id(id.get()).map(|p| self.shared.params.get(p.id))
    }

    fn value_to_text(
        &self,
        id: ClapId,
        value: f64,
        writer: &mut ParamDisplayWriter,
    ) -> std::fmt::Result {
        match ParamSpec::by_id(id.get()) {
            Some(p) => write!(writer, "{}", p.format(value)),
            None => Err(std::fmt::Error),
        }
    }

    fn text_to_value(&self, id: ClapId, text: &CStr) -> Option<f64> {
        ParamSpec::by_id(id.get())?.parse(text.to_str().ok()?)
    }

    fn flush(&self, input: &InputEvents, output: &mut OutputEvents) {
        if apply_param_events(self.shared, input, output) {
            self.service_regenerate();
        }
    }
}

impl MainThread<'_> {
    fn service_regenerate(&self) {
        self.shared.regenerate.store(true, Ordering::Release);
        self.service();
    }
}

/// Applies parameter events; true when one that needs new music changed.
/// Regenerate moves the seed on and springs back; the host hears of both
/// through `output`. Allocation-free: the audio thread calls it.
fn apply_param_events(shared: &Shared<'_>, input: &InputEvents, output: &mut OutputEvents) -> bool {
    let mut regen = false;
    for event in input {
        let Some(CoreEventSpace::ParamValue(ev)) = event.as_core_event() else {
            continue;
        };
        let Some(spec) = ev.param_id().and_then(|id| ParamSpec::by_id(id.get())) else {
            continue;
        };
        if spec.id == ParamId::Regenerate {
            if ev.value() >= 0.5 {
                let seed = shared.params.next_seed();
                let time = ev.header().time();
                for (id, v) in [(ParamId::Seed, seed), (ParamId::Regenerate, 0.0)] {
                    // A host whose queue is full still gets the new seed
                    // from the next value query.
                    let _ = output.try_push(ParamValueEvent::new(
                        time,
                        ClapId::new(id as u32),
                        Pckn::match_all(),
                        v,
                    ));
                }
                regen = true;
            }
            shared.params.set(ParamId::Regenerate, 0.0);
        } else {
            let old = shared.params.get(spec.id);
            if shared.params.set(spec.id, ev.value()) {
                let moved = spec.id == ParamId::VideoOffset
                    && shared.off_grid(shared.params.get(spec.id) - old);
                regen |= spec.regenerates || moved;
            }
        }
    }
    regen
}

impl PluginStateImpl for MainThread<'_> {
    fn save(&self, output: &mut OutputStream) -> Result<(), PluginError> {
        let inner = self.inner.lock();
        let s = SavedState::capture(
            &self.shared.params,
            inner.video.clone(),
            inner.prompt.clone(),
            inner.cache_key.clone(),
        );
        std::io::Write::write_all(output, &s.to_bytes())
            .map_err(|_| PluginError::Message("cannot write state"))
    }

    fn load(&self, input: &mut InputStream) -> Result<(), PluginError> {
        let mut bytes = Vec::new();
        // One byte past the limit tells an oversized state from a full one.
        let read = input
            .take(MAX_STATE_BYTES as u64 + 1)
            .read_to_end(&mut bytes);
        let parsed = match read {
            Ok(_) => SavedState::from_bytes(&bytes),
            Err(e) => Err(format!("cannot read state: {e}")),
        };
        let mut inner = self.inner.lock();
        match parsed {
            Ok(s) => {
                s.apply(&self.shared.params);
                inner.video = s
                    .video
                    .or_else(|| std::env::var_os("VIDMUSICIAN_VIDEO").map(PathBuf::from));
                inner.prompt = s.prompt;
                inner.cache_key = s.cache_key;
            }
            Err(e) => {
                // Defaults, and the project still opens.
                self.shared.report(
                    LogSeverity::Error,
                    &format!("ignoring saved state ({e}); using defaults"),
                );
                self.shared.params.reset();
                inner.prompt.clear();
                inner.cache_key = None;
            }
        }
        self.request(&mut inner);
        Ok(())
    }
}

impl PluginPresetLoadImpl for MainThread<'_> {
    fn load_from_location(
        &self,
        location: Location,
        load_key: Option<&CStr>,
    ) -> Result<(), PluginError> {
        let found = match location {
            Location::Plugin => load_key
                .and_then(|k| k.to_str().ok())
                .and_then(presets::FactoryPreset::by_key),
            Location::File { .. } => None,
        };
        let state = found.map(|p| p.state());
        let host_load = self.host.get_extension::<HostPresetLoad>();
        let Some(Ok(state)) = state else {
            let why = match state {
                Some(Err(_)) => c"this factory preset is damaged",
                _ => c"no such VidMusician preset",
            };
            if let Some(h) = host_load {
                h.on_error(&self.host, location, load_key, 0, Some(why));
            }
            return Err(PluginError::Message("no such preset"));
        };
        {
            let mut inner = self.inner.lock();
            state.apply_as_preset(&self.shared.params);
            inner.prompt = state.prompt;
            inner.cache_key = None;
            self.request(&mut inner);
        }
        if let Some(p) = self.host.get_extension::<HostParams>() {
            p.rescan(&self.host, ParamRescanFlags::VALUES);
        }
        if let Some(h) = host_load {
            h.loaded(&self.host, location, load_key);
        }
        Ok(())
    }
}

impl PluginRenderImpl for MainThread<'_> {
    fn has_hard_realtime_requirement(&self) -> bool {
        false
    }

    fn set(&self, mode: RenderMode) -> Result<(), PluginError> {
        self.shared
            .offline
            .store(mode == RenderMode::Offline, Ordering::Release);
        Ok(())
    }
}

pub struct Processor<'a> {
    shared: &'a Shared<'a>,
    player: Player,
    sample_rate: f64,
    /// Gain applied at the end of the last block, for a click-free ramp.
    gain: f32,
    /// Position for hosts without a transport: frames since activation.
    free_running: i64,
    tempo_watch: TempoWatch,
}

/// Debounces the host's tempo on the audio thread.
#[derive(Default)]
struct TempoWatch {
    candidate: Option<Grid>,
    settled_frames: u64,
    /// The grid last asked for, so it is asked for once.
    requested: Option<Grid>,
}

impl<'a> PluginAudioProcessor<'a, Shared<'a>, MainThread<'a>> for Processor<'a> {
    fn activate(
        _host: HostAudioProcessorHandle<'a>,
        main_thread: &MainThread<'a>,
        shared: &'a Shared<'a>,
        config: PluginAudioConfiguration,
    ) -> Result<Self, PluginError> {
        if !(config.sample_rate.is_finite() && (1000.0..=1_536_000.0).contains(&config.sample_rate))
        {
            return Err(PluginError::Message("unsupported sample rate"));
        }
        let (takes_tx, takes_rx) = rtrb::RingBuffer::new(4);
        let (ret_tx, ret_rx) = rtrb::RingBuffer::new(8);
        let xfade = (XFADE_S * config.sample_rate) as usize;
        let player = Player::new(takes_rx, ret_tx, xfade);
        {
            let mut inner = main_thread.inner.lock();
            inner.sample_rate = Some(config.sample_rate);
            inner.link = Some(Link {
                takes: takes_tx,
                returned: ret_rx,
            });
            main_thread.request(&mut inner);
        }
        Ok(Self {
            shared,
            player,
            sample_rate: config.sample_rate,
            gain: db_to_gain(shared.params.get(ParamId::Gain)),
            free_running: 0,
            tempo_watch: TempoWatch::default(),
        })
    }

    fn process(
        &mut self,
        process: Process,
        mut audio: Audio,
        events: Events,
    ) -> Result<ProcessStatus, PluginError> {
        if apply_param_events(self.shared, events.input, events.output) {
            self.shared.regenerate.store(true, Ordering::Release);
            self.shared.host.request_callback();
        }
        self.player.poll();
        let frames = audio.frames_count() as usize;
        let (playing, start) = self.position(&process);
        self.player.catch_up(start, frames);
        self.follow_tempo(&process, frames);
        if let Some(bar) = self.next_bar(&process, start) {
            self.player.schedule(bar);
        }
        if playing && self.shared.offline.load(Ordering::Acquire) && self.player.has_take() {
            // Offline: the bounce must be complete, so wait (bounded) for
            // the full piece's music this block needs.
            self.player.wait_ready_offline(start, frames, OFFLINE_WAIT);
        }
        let target = db_to_gain(self.shared.params.get(ParamId::Gain));
        let Some(mut port) = audio.port_pair(0) else {
            return Ok(ProcessStatus::Continue);
        };
        let Some(channels) = port.channels()?.into_f32() else {
            return Ok(ProcessStatus::Continue);
        };
        let mut outs: [Option<&mut [f32]>; 2] = [None, None];
        for (i, pair) in channels.into_iter().enumerate().take(2) {
            outs[i] = match pair {
                ChannelPair::InputOnly(_) => None,
                ChannelPair::OutputOnly(buf) => {
                    buf.fill(0.0);
                    Some(buf)
                }
                ChannelPair::InputOutput(input, output) => {
                    output.copy_from_slice(input);
                    Some(output)
                }
                ChannelPair::InPlace(buf) => Some(buf),
            };
        }
        if let [Some(l), Some(r)] = outs
            && playing
        {
            self.play(start, target, l, r);
        }
        self.gain = target;
        self.free_running += frames as i64;
        Ok(ProcessStatus::Continue)
    }

    fn deactivate(self, main_thread: &MainThread<'a>) {
        let mut inner = main_thread.inner.lock();
        inner.link = None;
        inner.sample_rate = None;
        inner.has_music = false;
        // `self` (the player and its chunks) is dropped here, on the main
        // thread.
    }
}

impl Processor<'_> {
    /// Adds the music from piece frame `start` into the block, the gain
    /// ramping from the last block's to `target` in steps of 32 frames.
    fn play(&mut self, start: i64, target: f32, l: &mut [f32], r: &mut [f32]) {
        let frames = l.len().min(r.len());
        let steps = frames.div_ceil(32).max(1);
        for s in 0..steps {
            let (a, b) = (s * 32, ((s + 1) * 32).min(frames));
            let g = self.gain + (target - self.gain) * (s + 1) as f32 / steps as f32;
            self.player
                .mix_into(start + a as i64, g, &mut l[a..b], &mut r[a..b]);
        }
    }

    /// Watches the host's tempo and time signature; once a new one has
    /// settled, publishes it (with where a bar starts) and asks the main
    /// thread for music on it.
    fn follow_tempo(&mut self, process: &Process, frames: usize) {
        let Some(t) = process.transport else {
            return;
        };
        if self.shared.params.get(ParamId::FollowTempo) < 0.5
            || !t.flags.contains(TransportFlags::HAS_TEMPO)
            || !(t.tempo.is_finite() && (20.0..=400.0).contains(&t.tempo))
        {
            return;
        }
        // A signature the composer cannot write (or none) is taken as 4/4.
        let meter = if t.flags.contains(TransportFlags::HAS_TIME_SIGNATURE) {
            Meter::checked(
                u32::from(t.time_signature_numerator),
                u32::from(t.time_signature_denominator),
            )
            .unwrap_or(Meter::COMMON)
        } else {
            Meter::COMMON
        };
        let now = Grid {
            bpm: t.tempo,
            meter,
        };
        let same = |a: Option<Grid>| {
            a.is_some_and(|a| (a.bpm - now.bpm).abs() <= 1e-6 && a.meter == now.meter)
        };
        let w = &mut self.tempo_watch;
        if !same(w.candidate) {
            w.candidate = Some(now);
            w.settled_frames = 0;
        }
        w.settled_frames += frames as u64;
        let settled = w.settled_frames as f64 >= TEMPO_SETTLE_S * self.sample_rate;
        if settled && !same(self.player.newest_grid()) && !same(w.requested) {
            w.requested = Some(now);
            // A bar start in song seconds, from the transport's bar and beat
            // positions (without them, song time 0).
            let beat_s = 60.0 / t.tempo;
            let bar_song = if t.flags.contains(TransportFlags::HAS_BEATS_TIMELINE) {
                t.song_pos_seconds.to_float()
                    - (t.song_pos_beats.to_float() - t.bar_start.to_float()) * beat_s
            } else {
                0.0
            };
            self.shared
                .host_downbeat
                .store(bar_song.to_bits(), Ordering::Release);
            self.shared
                .host_meter
                .store(pack_meter(meter), Ordering::Release);
            self.shared
                .host_tempo
                .store(t.tempo.to_bits(), Ordering::Release);
            self.shared.regenerate.store(true, Ordering::Release);
            self.shared.host.request_callback();
        }
    }

    /// The piece frame of the next bar line at or after `start`, from the
    /// transport's bar position; without one, `start` itself.
    fn next_bar(&self, process: &Process, start: i64) -> Option<i64> {
        let Some(t) = process.transport else {
            return Some(start);
        };
        if !t
            .flags
            .contains(TransportFlags::HAS_BEATS_TIMELINE | TransportFlags::HAS_TEMPO)
            || t.tempo <= 0.0
        {
            return Some(start);
        }
        let per_bar = f64::from(t.time_signature_numerator.max(1)) * 4.0
            / f64::from(t.time_signature_denominator.max(1));
        let beats_in = t.song_pos_beats.to_float() - t.bar_start.to_float();
        let mut to_bar = per_bar - beats_in.rem_euclid(per_bar);
        if to_bar >= per_bar - 1e-9 {
            // On a bar line already.
            to_bar = 0.0;
        }
        let secs = to_bar * 60.0 / t.tempo;
        Some(start + (secs * self.sample_rate).round() as i64)
    }

    /// Whether the music sounds, and the frame of the piece at the block's
    /// first sample: the song position minus the video's offset.
    fn position(&self, process: &Process) -> (bool, i64) {
        let offset = self.shared.offset();
        match process.transport {
            Some(t) if t.flags.contains(TransportFlags::HAS_SECONDS_TIMELINE) => {
                let playing = t.flags.contains(TransportFlags::IS_PLAYING);
                let secs = t.song_pos_seconds.to_float() - offset;
                (playing, (secs * self.sample_rate).round() as i64)
            }
            _ => (
                true,
                self.free_running - (offset * self.sample_rate).round() as i64,
            ),
        }
    }
}

impl PluginAudioProcessorParams for Processor<'_> {
    fn flush(&mut self, input: &InputEvents, output: &mut OutputEvents) {
        if apply_param_events(self.shared, input, output) {
            self.shared.regenerate.store(true, Ordering::Release);
            self.shared.host.request_callback();
        }
    }
}

fn db_to_gain(db: f64) -> f32 {
    10f64.powf(db / 20.0) as f32
}

/// The library's entry: the plugin, and the factory presets for hosts'
/// preset browsers.
pub struct VidMusicianEntry {
    plugin: SinglePluginEntry<VidMusician>,
    presets: PresetDiscoveryFactoryWrapper<presets::PresetFactory>,
}

impl Entry for VidMusicianEntry {
    fn new(plugin_path: Option<&CStr>) -> Result<Self, EntryLoadError> {
        Ok(Self {
            plugin: SinglePluginEntry::new(plugin_path)?,
            presets: PresetDiscoveryFactoryWrapper::new(presets::PresetFactory::default()),
        })
    }

    fn declare_factories<'a>(&'a self, builder: &mut EntryFactories<'a>) {
        self.plugin.declare_factories(builder);
        builder.register_factory(&self.presets);
    }
}

clack_export_entry!(VidMusicianEntry);

// The VST3 entry points (GetPluginFactory and friends), wrapping the CLAP
// entry above.
clap_wrapper::export_vst3!();
