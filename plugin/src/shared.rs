//! The plugin's thread-safe part: parameter values as atomics, the render
//! mode, the asks for new music and the host's tempo grid, read and written
//! from every thread (the audio thread included, so nothing here allocates
//! or locks on its paths).

use std::ffi::CString;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use clack_extensions::log::{HostLog, LogSeverity};
use clack_plugin::events::Pckn;
use clack_plugin::events::event_types::{
    ParamGestureBeginEvent, ParamGestureEndEvent, ParamValueEvent,
};
use clack_plugin::events::spaces::CoreEventSpace;
use clack_plugin::prelude::*;
use vidmusician_engine::service::Meter;

use crate::editor::model::{Edit, EditorModel};
use crate::params::{ParamId, ParamSpec, ParamValues};
use crate::state::HostGrid;

pub struct Shared<'a> {
    pub(crate) host: HostSharedHandle<'a>,
    /// Shared with the editor, which reads and edits them on its thread.
    pub params: Arc<ParamValues>,
    pub(crate) editor: Arc<EditorModel>,
    /// Set by the main thread (render extension), read by the audio thread.
    pub(crate) offline: AtomicBool,
    /// Set by the audio thread while the host renders faster than real time
    /// without saying so (Ardour's export): read when a request is built, so
    /// a bounce gets no preview.
    pub(crate) bouncing: AtomicBool,
    /// Set (after `asked` moves on) by whoever needs new music: the audio
    /// thread on a parameter or tempo change, the main thread on a flush;
    /// cleared by whichever of the host's main thread and the [`Steward`]
    /// submits the request.
    pub(crate) regenerate: AtomicBool,
    /// How many times new music was asked for, and the count the last
    /// handled request answered: a bounce waits until the take answering
    /// its ask is in. Written with `regenerate` as above; read by the audio
    /// thread.
    pub(crate) asked: AtomicU64,
    pub(crate) answered: AtomicU64,
    /// The host's tempo (f64 bits, 0 = not known) and a song time where one
    /// of its bars starts (f64 bits): written by the audio thread once the
    /// tempo has settled (and on the main thread from a saved state), read
    /// where a request is built (the main thread or the steward).
    pub(crate) host_tempo: AtomicU64,
    /// The host's time signature, packed by [`pack_meter`].
    pub(crate) host_meter: AtomicU32,
    pub(crate) host_downbeat: AtomicU64,
    /// Song time (f64 bits) where the video item starts on the host's
    /// timeline, when the host says (REAPER); 0 otherwise. The Video offset
    /// parameter is added to it.
    pub(crate) timeline_offset: AtomicU64,
}

impl Shared<'_> {
    /// Asks for new music with the settings as they are now. Allocation-
    /// and lock-free: the audio thread calls it. The host's main thread
    /// answers when the host gives it a turn, else the [`Steward`] does.
    pub(crate) fn ask_for_music(&self) {
        self.asked.fetch_add(1, Ordering::AcqRel);
        self.regenerate.store(true, Ordering::Release);
        self.host.request_callback();
    }

    /// Whether the host is bouncing: offline render announced, or audio
    /// processed faster than real time.
    pub(crate) fn bouncing(&self) -> bool {
        self.offline.load(Ordering::Acquire) || self.bouncing.load(Ordering::Acquire)
    }

    /// Tells the user: through the host's log (CLAP log extension) when it
    /// has one, else on stderr. Never from the audio thread (it allocates).
    pub(crate) fn report(&self, severity: LogSeverity, message: &str) {
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
    pub(crate) fn off_grid(&self, shift: f64) -> bool {
        let tempo = f64::from_bits(self.host_tempo.load(Ordering::Acquire));
        if self.params.get(ParamId::FollowTempo) < 0.5 || tempo <= 0.0 {
            return false;
        }
        let bar = unpack_meter(self.host_meter.load(Ordering::Acquire)).bar(tempo);
        let r = shift.rem_euclid(bar);
        r > 1e-6 && bar - r > 1e-6
    }

    /// The host's tempo grid as last heard (or restored), if any.
    pub(crate) fn host_grid(&self) -> Option<HostGrid> {
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
    pub(crate) fn set_host_grid(&self, g: HostGrid) {
        let meter = Meter::checked(g.beats, g.unit).unwrap_or(Meter::COMMON);
        self.host_downbeat
            .store(g.downbeat.to_bits(), Ordering::Release);
        self.host_meter.store(pack_meter(meter), Ordering::Release);
        self.host_tempo.store(g.bpm.to_bits(), Ordering::Release);
    }

    /// Song time at which the music's first frame plays.
    pub(crate) fn offset(&self) -> f64 {
        f64::from_bits(self.timeline_offset.load(Ordering::Acquire))
            + self.params.get(ParamId::VideoOffset)
    }
}

pub(crate) fn pack_meter(m: Meter) -> u32 {
    u32::from(m.beats) << 8 | u32::from(m.unit)
}

pub(crate) fn unpack_meter(v: u32) -> Meter {
    Meter::checked(v >> 8, v & 0xff).unwrap_or(Meter::COMMON)
}

impl<'a> PluginShared<'a> for Shared<'a> {}

/// Applies parameter events; true when one that needs new music changed.
/// Regenerate moves the seed on and springs back; the host hears of both
/// through `output`. Allocation-free: the audio thread calls it.
pub(crate) fn apply_param_events(
    shared: &Shared<'_>,
    input: &InputEvents,
    output: &mut OutputEvents,
) -> bool {
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
    regen | apply_editor_edits(shared, output)
}

/// Tells the host of the parameters the editor moved (CLAP wants the
/// plugin's own edits sent as output events); true when one needs new
/// music. Allocation- and lock-free: the audio thread calls it.
fn apply_editor_edits(shared: &Shared<'_>, output: &mut OutputEvents) -> bool {
    let mut regen = false;
    shared.editor.take_edits(|id, edit| {
        let param = ClapId::new(id as u32);
        // A host whose queue is full still reads the value on its next
        // query.
        let _ = match edit {
            Edit::Begin => output.try_push(ParamGestureBeginEvent::new(0, param)),
            Edit::Value(v) => {
                regen |= ParamSpec::by_id(id as u32).is_some_and(|s| s.regenerates);
                output.try_push(ParamValueEvent::new(0, param, Pckn::match_all(), v))
            }
            Edit::End => output.try_push(ParamGestureEndEvent::new(0, param)),
        };
    });
    regen
}
