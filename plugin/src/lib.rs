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
mod steward;

use std::cell::Cell;
use std::ffi::{CStr, CString};
use std::fmt::Write as _;
use std::io::Read as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

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
use state::{HostGrid, MAX_STATE_BYTES, SavedState};
use steward::Steward;
use vidmusician_engine::service::{
    ChunkReader, CutSource, CutsRequest, Engine, EngineChoice, EngineConfig, Request, Resolved,
};
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
            bouncing: AtomicBool::new(false),
            regenerate: AtomicBool::new(false),
            asked: AtomicU64::new(0),
            answered: AtomicU64::new(0),
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
        let inner = Arc::new(Mutex::new(Inner {
            engine: None,
            video: std::env::var_os("VIDMUSICIAN_VIDEO").map(PathBuf::from),
            prompt: String::new(),
            cache_key: None,
            link: None,
            sample_rate: None,
            has_music: false,
            item: None,
            reaper_changes: None,
            marker_cuts: Vec::new(),
        }));
        let steward = Steward::start(shared, Arc::clone(&inner))
            .map_err(|_| PluginError::Message("cannot start a thread"))?;
        Ok(MainThread {
            shared,
            host,
            reaper,
            timer: Cell::new(None),
            inner,
            steward: Some(steward),
        })
    }
}

pub struct Shared<'a> {
    host: HostSharedHandle<'a>,
    pub params: ParamValues,
    /// Set by the main thread (render extension), read by the audio thread.
    offline: AtomicBool,
    /// Set by the audio thread while the host renders faster than real time
    /// without saying so (Ardour's export): read when a request is built, so
    /// a bounce gets no preview.
    bouncing: AtomicBool,
    /// Set (after `asked` moves on) by whoever needs new music: the audio
    /// thread on a parameter or tempo change, the main thread on a flush;
    /// cleared by whichever of the host's main thread and the [`Steward`]
    /// submits the request.
    regenerate: AtomicBool,
    /// How many times new music was asked for, and the count the last
    /// handled request answered: a bounce waits until the take answering
    /// its ask is in. Written with `regenerate` as above; read by the audio
    /// thread.
    asked: AtomicU64,
    answered: AtomicU64,
    /// The host's tempo (f64 bits, 0 = not known) and a song time where one
    /// of its bars starts (f64 bits): written by the audio thread once the
    /// tempo has settled (and on the main thread from a saved state), read
    /// where a request is built (the main thread or the steward).
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
    /// Asks for new music with the settings as they are now. Allocation-
    /// and lock-free: the audio thread calls it. The host's main thread
    /// answers when the host gives it a turn, else the [`Steward`] does.
    fn ask_for_music(&self) {
        self.asked.fetch_add(1, Ordering::AcqRel);
        self.regenerate.store(true, Ordering::Release);
        self.host.request_callback();
    }

    /// Whether the host is bouncing: offline render announced, or audio
    /// processed faster than real time.
    fn bouncing(&self) -> bool {
        self.offline.load(Ordering::Acquire) || self.bouncing.load(Ordering::Acquire)
    }

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

    /// The host's tempo grid as last heard (or restored), if any.
    fn host_grid(&self) -> Option<HostGrid> {
        let bpm = f64::from_bits(self.host_tempo.load(Ordering::Acquire));
        let meter = unpack_meter(self.host_meter.load(Ordering::Acquire));
        (bpm > 0.0).then(|| HostGrid {
            bpm,
            beats: u32::from(meter.beats),
            unit: u32::from(meter.unit),
            downbeat: f64::from_bits(self.host_downbeat.load(Ordering::Acquire)),
        })
    }

    /// Restores a saved grid until the host's transport says otherwise.
    fn set_host_grid(&self, g: HostGrid) {
        let meter = Meter::checked(g.beats, g.unit).unwrap_or(Meter::COMMON);
        self.host_downbeat
            .store(g.downbeat.to_bits(), Ordering::Release);
        self.host_meter.store(pack_meter(meter), Ordering::Release);
        self.host_tempo.store(g.bpm.to_bits(), Ordering::Release);
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

/// Main-thread state: what only the host's main thread touches (the host
/// handle, REAPER's API, the timer), and the request state it shares with
/// the [`Steward`].
pub struct MainThread<'a> {
    shared: &'a Shared<'a>,
    host: HostMainThreadHandle<'a>,
    /// REAPER's API, when the host is REAPER. Main thread only.
    reaper: Option<Reaper>,
    /// The host timer that re-reads REAPER's timeline.
    timer: Cell<Option<TimerId>>,
    /// Taken by the host's main thread and by the steward, never by the
    /// audio thread.
    inner: Arc<Mutex<Inner>>,
    /// Joined (before `inner` and the engine in it drop) on destroy.
    steward: Option<Steward>,
}

/// What a request is made from, and what it leads to. Moves between the
/// host's main thread and the steward under `MainThread::inner`.
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
    /// The video item last found on REAPER's timeline.
    item: Option<VideoItem>,
    /// REAPER's project change count when the timeline was last read.
    reaper_changes: Option<i32>,
    /// The project's markers and region bounds inside the video item, as
    /// times of the video: cuts of the user's edit, marked with the
    /// detected ones.
    marker_cuts: Vec<f64>,
}

/// Where a take's music comes from.
enum Source<'r> {
    /// The disk cache, whole, at once.
    Cache(&'r Resolved),
    /// The engine, the first seconds only.
    Preview,
    /// The engine, the whole piece, as resolved already.
    Engine(Box<Resolved>),
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
    /// Everything the main thread does when the host gives it a turn: the
    /// steward's round, with REAPER's timeline read first.
    fn service(&self) {
        let mut inner = self.inner.lock();
        tidy(self.shared, &mut inner);
        if self.shared.regenerate.load(Ordering::Acquire) {
            self.follow_timeline(&mut inner);
            answer(self.shared, &mut inner);
        }
    }

    /// [`request`] with REAPER's timeline read first.
    fn request(&self, inner: &mut Inner) {
        self.follow_timeline(inner);
        request(self.shared, inner);
    }
}

/// Drops the takes the audio thread let go of and picks up the engine's
/// events. Any thread but the audio thread.
fn tidy(shared: &Shared<'_>, inner: &mut Inner) {
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
                    shared.report(LogSeverity::Error, &error.to_string());
                }
                _ => {}
            }
        }
    }
    if key.is_some() {
        inner.cache_key = key;
    }
}

/// Makes the music asked for with [`Shared::ask_for_music`], if it still
/// is, and records the ask as answered (with a take or without one).
fn answer(shared: &Shared<'_>, inner: &mut Inner) {
    if shared.regenerate.swap(false, Ordering::AcqRel) {
        // Read after the flag: an ask counted before it is answered by this
        // request, one counted after sets the flag again.
        let ask = shared.asked.load(Ordering::Acquire);
        request(shared, inner);
        shared.answered.fetch_max(ask, Ordering::AcqRel);
    }
}

/// Submits a request for the current video and settings and hands its take
/// to the audio processor. Needs an active processor (the host's sample
/// rate) and a video. Any thread but the audio thread.
fn request(shared: &Shared<'_>, inner: &mut Inner) {
    let ask = shared.asked.load(Ordering::Acquire);
    let (Some(rate), Some(video)) = (inner.sample_rate, inner.video.clone()) else {
        return;
    };
    let info = match vidmusician_engine::video::probe(&video) {
        Ok(i) => i,
        Err(e) => {
            shared.report(LogSeverity::Error, &e.to_string());
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
        shared.report(
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
                shared.report(LogSeverity::Error, &e.to_string());
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
    req.seed = shared.params.get(ParamId::Seed) as u64;
    req.prompt = inner.prompt.clone();
    let params = &shared.params;
    req.rhythm_strength = params.get(ParamId::RhythmStrength) as f32;
    req.semantic_strength = params.get(ParamId::SemanticStrength) as f32;
    req.guidance = Some(params.get(ParamId::Guidance));
    req.engine = EngineChoice::from_index(params.get(ParamId::Engine) as usize).unwrap_or_default();
    let tempo = f64::from_bits(shared.host_tempo.load(Ordering::Acquire));
    let follow = params.get(ParamId::FollowTempo) >= 0.5;
    let grid = (follow && tempo > 0.0).then(|| Grid {
        bpm: tempo,
        meter: unpack_meter(shared.host_meter.load(Ordering::Acquire)),
    });
    if let Some(g) = grid {
        req.tempo = Some(g.bpm);
        req.meter = g.meter;
        // The host's bar grid in piece time, with the offset as it is
        // now (the video may have moved since the tempo was read).
        let bar_song = f64::from_bits(shared.host_downbeat.load(Ordering::Acquire));
        req.downbeat = Some(bar_song - shared.offset());
    }
    req.chunk_frames = chunk_frames;
    if !inner.marker_cuts.is_empty() && inner.item.as_ref().is_some_and(|i| i.path == video) {
        req.cuts = Some(CutsRequest {
            source: CutSource::Times(inner.marker_cuts.clone()),
            merge: true,
        });
    }
    let take = TakeSpec { total, grid, ask };
    // Resolved once here: the video is probed and hashed once, and `auto`
    // is made concrete before choosing whether to preview.
    let resolved = match inner.engine.as_ref().map(|e| e.resolve(&req)) {
        Some(Ok(r)) => r,
        Some(Err(e)) => {
            shared.report(LogSeverity::Error, &e.to_string());
            return;
        }
        None => return,
    };
    // Music made before (a reopened project) plays at once.
    if submit_take(shared, inner, req.clone(), take, Source::Cache(&resolved)) {
        return;
    }
    // A long video gets a quick preview of its start first, so music
    // plays within a second; the full piece replaces it at a bar line.
    // A bounce needs the full piece only; the text engine sends its piece
    // window by window anyway, and a neural engine's preview would cost a
    // generation of its own.
    let streams = matches!(
        resolved.spec.engine.choice,
        EngineChoice::Text | EngineChoice::ZeroShot
    );
    if !shared.bouncing() && !streams && !inner.has_music && seconds > PREVIEW_S * 1.5 {
        let mut preview = req.clone();
        preview.preview_until = Some(start + PREVIEW_S * playrate);
        preview.supersede = true;
        let frames = (PREVIEW_S * rate).round() as u64;
        let spec = TakeSpec {
            total: frames,
            ..take
        };
        submit_take(shared, inner, preview, spec, Source::Preview);
        req.supersede = false;
    } else {
        req.supersede = true;
    }
    submit_take(shared, inner, req, take, Source::Engine(Box::new(resolved)));
}

/// What the audio thread is told of a take besides its music.
#[derive(Clone, Copy)]
struct TakeSpec {
    /// Its length, frames.
    total: u64,
    grid: Option<Grid>,
    /// The ask it answers (`Shared::asked` when it was requested).
    ask: u64,
}

/// Gets `req`'s music from `source` and hands its take to the audio thread;
/// true when a take was handed over.
fn submit_take(
    shared: &Shared<'_>,
    inner: &mut Inner,
    mut req: Request,
    spec: TakeSpec,
    source: Source,
) -> bool {
    let Some(engine) = inner.engine.as_ref() else {
        return false;
    };
    req.max_chunks = (spec.total as usize).div_ceil(req.chunk_frames) + 1;
    let chunk_frames = req.chunk_frames;
    let preview = matches!(source, Source::Preview);
    let got = match source {
        Source::Cache(resolved) => engine.submit_cached_resolved(&req, resolved),
        Source::Preview => queued(shared, engine.submit(req)),
        Source::Engine(resolved) => queued(shared, engine.submit_resolved(req, *resolved)),
    };
    let Some((_, reader)) = got else {
        return false;
    };
    let take = Box::new(Take {
        reader,
        chunk_frames,
        total_frames: spec.total,
        grid: spec.grid,
        preview,
        answers: spec.ask,
    });
    hand_over(shared, inner, take)
}

/// The reader of a queued request; an error refusing it is reported.
fn queued(
    shared: &Shared<'_>,
    submitted: vidmusician_engine::Result<(u64, Option<ChunkReader>)>,
) -> Option<(u64, ChunkReader)> {
    match submitted {
        Ok((id, reader)) => reader.map(|r| (id, r)),
        Err(e) => {
            shared.report(LogSeverity::Error, &e.to_string());
            None
        }
    }
}

fn hand_over(shared: &Shared<'_>, inner: &mut Inner, take: Box<Take>) -> bool {
    let Some(link) = inner.link.as_mut() else {
        return false;
    };
    if link.takes.push(take).is_err() {
        shared.report(
            LogSeverity::Warning,
            "the audio thread is not taking new music; try again",
        );
        return false;
    }
    inner.has_music = true;
    true
}

/// How often REAPER's timeline is looked at for changes.
const TIMELINE_CHECK_MS: u32 = 500;

impl MainThread<'_> {
    /// Reads the video item off REAPER's timeline (nothing in other hosts):
    /// the video and where it starts. True when what changed needs new music
    /// (another file, trim or playrate), not just a move along the timeline.
    fn follow_timeline(&self, inner: &mut Inner) -> bool {
        let Some(reaper) = self.reaper.as_ref() else {
            return false;
        };
        if self.timer.get().is_none()
            && let Some(timer) = self.host.get_extension::<HostTimer>()
        {
            self.timer
                .set(timer.register_timer(&self.host, TIMELINE_CHECK_MS).ok());
        }
        inner.reaper_changes = reaper.change_count();
        let (found, others) = reaper::choose(&reaper.items());
        let Some(item) = found else {
            // Deleted or not yet placed: the music stays where it was, and
            // a saved video still plays.
            return false;
        };
        let cuts = reaper::cuts_in_video(&item, &reaper.marker_times());
        let new_cuts = cuts != inner.marker_cuts;
        inner.marker_cuts = cuts;
        if inner.item.as_ref() == Some(&item) && inner.video.as_ref() == Some(&item.path) {
            return new_cuts;
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
        let new_music = new_cuts
            || inner.item.as_ref().is_none_or(|old| {
                old.needs_new_music(&item) || self.shared.off_grid(item.position - old.position)
            })
            || inner.video.as_ref() != Some(&item.path);
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
        if self.timer.get() != Some(timer_id) {
            return;
        }
        let mut inner = self.inner.lock();
        // The count moves on every edit; unchanged, there is nothing to read.
        if let Some(r) = self.reaper.as_ref()
            && let Some(now) = r.change_count()
            && inner.reaper_changes == Some(now)
        {
            return;
        }
        if self.follow_timeline(&mut inner) {
            request(self.shared, &mut inner);
        }
    }
}

impl Drop for MainThread<'_> {
    fn drop(&mut self) {
        // The steward first: it borrows `shared` and holds `inner`.
        drop(self.steward.take());
        if let Some(id) = self.timer.take()
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
            self.shared.ask_for_music();
            self.service();
        }
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
            self.shared.host_grid(),
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
        // A state that cannot be read changes nothing: the host hears that
        // the load failed, and the instance keeps its settings, video and
        // prompt rather than silently falling back to defaults.
        let s = match parsed {
            Ok(s) => s,
            Err(e) => {
                self.shared.report(
                    LogSeverity::Error,
                    &format!("cannot load the saved state ({e}); the settings are unchanged"),
                );
                return Err(PluginError::Message("unreadable VidMusician state"));
            }
        };
        {
            let mut inner = self.inner.lock();
            s.apply(&self.shared.params);
            inner.video = s
                .video
                .or_else(|| std::env::var_os("VIDMUSICIAN_VIDEO").map(PathBuf::from));
            inner.prompt = s.prompt;
            inner.cache_key = s.cache_key;
            if let Some(g) = s.host_grid {
                self.shared.set_host_grid(g);
            }
            self.request(&mut inner);
        }
        // The values the host shows and automates from are now stale.
        if let Some(p) = self.host.get_extension::<HostParams>() {
            p.rescan(&self.host, ParamRescanFlags::VALUES);
        }
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
    pace: Pace,
    /// The last ask for music a bounce waited for (`Shared::asked`).
    waited_for: u64,
}

/// Tells a host that renders faster than real time without announcing
/// offline mode (Ardour's export) from one playing in real time, by the
/// host's own time between our blocks: in real time it adds up to the
/// audio's duration (less our processing), in a render to a small part of
/// it. Over whole windows of audio, so that hosts that process a few
/// hundred milliseconds ahead (REAPER's anticipative processing) still
/// count as real time. Our own waits do not count: they are inside blocks.
#[derive(Default)]
struct Pace {
    last_end: Option<Instant>,
    /// Audio and host time in the window so far, seconds.
    audio: f64,
    host: f64,
    fast: bool,
}

/// Seconds of audio over which the pace is judged, and the share of it in
/// host time below which the host is rendering.
const PACE_WINDOW_S: f64 = 1.0;
const PACE_RENDER_SHARE: f64 = 0.2;

impl Pace {
    /// A block of `frames` starts at `now`; true while the host renders
    /// faster than real time.
    fn block_starts(&mut self, now: Instant, frames: usize, rate: f64) -> bool {
        if let Some(end) = self.last_end {
            self.host += now.saturating_duration_since(end).as_secs_f64();
        }
        self.audio += frames as f64 / rate;
        if self.audio >= PACE_WINDOW_S {
            self.fast = self.host < PACE_RENDER_SHARE * self.audio;
            self.audio = 0.0;
            self.host = 0.0;
        }
        self.fast
    }

    fn block_ends(&mut self, now: Instant) {
        self.last_end = Some(now);
    }
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
            pace: Pace::default(),
            waited_for: shared.asked.load(Ordering::Acquire),
        })
    }

    fn process(
        &mut self,
        process: Process,
        mut audio: Audio,
        events: Events,
    ) -> Result<ProcessStatus, PluginError> {
        if apply_param_events(self.shared, events.input, events.output) {
            self.shared.ask_for_music();
        }
        self.player.poll();
        let frames = audio.frames_count() as usize;
        let fast = self
            .pace
            .block_starts(Instant::now(), frames, self.sample_rate);
        self.shared.bouncing.store(fast, Ordering::Release);
        let (playing, start) = self.position(&process);
        self.player.catch_up(start, frames);
        self.follow_tempo(&process, frames);
        let bar = self.next_bar(&process, start);
        let bounce = playing && self.shared.bouncing();
        if bounce {
            self.wait_for_asked_music(bar.unwrap_or(start));
        }
        if let Some(bar) = bar {
            self.player.schedule(bar);
        }
        if bounce && self.player.has_take() {
            // A bounce must be complete, so wait (bounded) for the full
            // piece's music this block needs.
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
        self.pace.block_ends(Instant::now());
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
    /// Bounces only: when new music was asked for (a tempo or parameter
    /// change) and not yet waited for, waits (bounded) until its take is in
    /// and comes in at `bar`, so the bounce has the new music from that bar
    /// on, however long the engine takes.
    fn wait_for_asked_music(&mut self, bar: i64) {
        let ask = self.shared.asked.load(Ordering::Acquire);
        if ask <= self.waited_for {
            return;
        }
        self.waited_for = ask;
        let answered = &self.shared.answered;
        self.player.wait_for_take(ask, bar, OFFLINE_WAIT, || {
            answered.load(Ordering::Acquire) >= ask
        });
    }

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
            self.shared.ask_for_music();
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
            self.shared.ask_for_music();
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
