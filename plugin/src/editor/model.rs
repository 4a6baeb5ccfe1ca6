//! What the editor and the rest of the plugin share, across three kinds of
//! thread: the editor's own (baseview runs each window on a thread of its
//! own), the host's main thread and the steward (which publish what there
//! is to see and carry out the editor's commands), and the audio thread
//! (which reports the playhead and applies the editor's parameter edits).
//!
//! Nothing here blocks: the view is an immutable snapshot swapped in whole
//! (`arc-swap`), commands go over an unbounded channel, and parameter edits
//! and the playhead are atomics.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use arc_swap::ArcSwap;
use crossbeam_channel::{Receiver, Sender, unbounded};
use egui_baseview::RepaintNotifier;
use vidmusician_engine::neural::device::DeviceChoice;
use vidmusician_engine::service::{EngineChoice, Meter, MusicOverview, Stage, VideoOverview};

use crate::params::{PARAMS, ParamId, ParamValues};

/// What the editor asks the plugin to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Score this video (picked, dropped or typed).
    SetVideo(PathBuf),
    /// Follow the host's timeline again (REAPER) rather than a picked video.
    FollowTimeline,
    SetPrompt(String),
    /// Make the music with the settings as they are.
    Generate,
    /// A new take: the seed moves on, then [`Command::Generate`].
    NewTake,
    /// Stop the piece being made; what has been made keeps playing.
    Cancel,
    /// Make this stretch (seconds of music) again with a new seed; the
    /// engine puts its ends on bar lines.
    RegenerateSection {
        start: f64,
        end: f64,
    },
    /// Take back the last section made again.
    UndoSection,
    /// Run the neural engines' decoder here from the next piece on.
    SetDevice(DeviceChoice),
}

/// Where the engine is with the current piece.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Status {
    /// Nothing asked yet (or nothing to score).
    #[default]
    Idle,
    /// Queued or working: what it is doing and how far along (0–1).
    Working {
        stage: Option<Stage>,
        fraction: f64,
    },
    /// The piece is whole.
    Finished {
        cached: bool,
    },
    Cancelled,
    /// What went wrong, and what fixes it, in plain words.
    Failed {
        what: String,
        fix: String,
    },
}

/// The host's bar grid as the editor draws it: bars start at `downbeat`
/// (song seconds) every `bar` seconds, and song time `offset` is the
/// music's first frame.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bars {
    pub downbeat: f64,
    pub bar: f64,
    pub offset: f64,
}

/// Everything the editor draws besides the parameters and the playhead:
/// a snapshot, replaced whole whenever something in it changes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct View {
    pub video: Option<PathBuf>,
    /// The video comes from the host's timeline (REAPER), not the editor.
    pub from_timeline: bool,
    /// The editor's choice overrides the timeline's video.
    pub overridden: bool,
    pub prompt: String,
    /// The engine that runs (auto made concrete), and why auto chose it.
    pub engine: Option<EngineChoice>,
    pub why: Option<String>,
    /// The device asked for, and where the piece that plays was made and
    /// why (neural engines; `None` for the composer's or when not known).
    pub device: DeviceChoice,
    pub device_note: Option<String>,
    pub status: Status,
    pub video_overview: Option<Arc<VideoOverview>>,
    /// Why the timeline could not be drawn, when it could not.
    pub overview_error: Option<String>,
    pub music: Option<Arc<MusicOverview>>,
    pub bars: Option<Bars>,
    /// Where the music's first frame is in the video and how fast the video
    /// plays: maps the playhead (seconds of music) onto the video's axis.
    pub start: f64,
    pub playrate: f64,
    /// The meter the music is written in, for the bar labels.
    pub meter: Option<Meter>,
    /// The stretches made again, oldest first (seconds of music).
    pub sections: Vec<vidmusician_engine::service::Section>,
}

/// What the last frame drew, so that a test (or a bug report) can say what
/// the user saw without reading pixels.
#[derive(Debug, Default)]
pub struct DrawReport {
    pub frames: AtomicU64,
    pub thumbnails: AtomicU32,
    pub curve_points: AtomicU32,
    pub cuts: AtomicU32,
    pub waveform_columns: AtomicU32,
    pub onsets: AtomicU32,
    pub bar_lines: AtomicU32,
    pub playhead: AtomicBool,
    /// The status drawn: 0 idle, 1 working, 2 finished, 3 cancelled,
    /// 4 failed.
    pub status: AtomicU32,
    /// The window's size in logical pixels, as last laid out.
    pub width: AtomicU32,
    pub height: AtomicU32,
    /// Where the video's path field and the Generate button are (logical
    /// pixels: left, top, right, bottom).
    pub video_field: RectCell,
    pub generate: RectCell,
    pub again: RectCell,
    pub undo: RectCell,
    pub timeline: RectCell,
    /// Section edits drawn, and whether a selection is.
    pub sections: AtomicU32,
    pub selection: AtomicBool,
    /// Where the selection is drawn (all zero when none is).
    pub selected: RectCell,
}

/// A rectangle shared as four atomics.
#[derive(Debug, Default)]
pub struct RectCell([AtomicU32; 4]);

impl RectCell {
    pub fn set(&self, r: [f32; 4]) {
        for (a, v) in self.0.iter().zip(r) {
            a.store(v.max(0.0).round() as u32, Ordering::Release);
        }
    }

    pub fn get(&self) -> [u32; 4] {
        std::array::from_fn(|i| self.0[i].load(Ordering::Acquire))
    }
}

impl DrawReport {
    pub fn snapshot(&self) -> DrawnFrame {
        let l = |a: &AtomicU32| a.load(Ordering::Acquire);
        DrawnFrame {
            frames: self.frames.load(Ordering::Acquire),
            thumbnails: l(&self.thumbnails),
            curve_points: l(&self.curve_points),
            cuts: l(&self.cuts),
            waveform_columns: l(&self.waveform_columns),
            onsets: l(&self.onsets),
            bar_lines: l(&self.bar_lines),
            playhead: self.playhead.load(Ordering::Acquire),
            status: l(&self.status),
            size: (l(&self.width), l(&self.height)),
            video_field: self.video_field.get(),
            generate: self.generate.get(),
            again: self.again.get(),
            undo: self.undo.get(),
            timeline: self.timeline.get(),
            sections: l(&self.sections),
            selection: self.selection.load(Ordering::Acquire),
            selected: self.selected.get(),
        }
    }
}

/// A copy of a [`DrawReport`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrawnFrame {
    pub frames: u64,
    pub thumbnails: u32,
    pub curve_points: u32,
    pub cuts: u32,
    pub waveform_columns: u32,
    pub onsets: u32,
    pub bar_lines: u32,
    pub playhead: bool,
    pub status: u32,
    pub size: (u32, u32),
    pub video_field: [u32; 4],
    pub generate: [u32; 4],
    pub again: [u32; 4],
    pub undo: [u32; 4],
    pub timeline: [u32; 4],
    pub sections: u32,
    pub selection: bool,
    pub selected: [u32; 4],
}

/// The part of the plugin the editor sees. One per plugin instance; it
/// outlives every editor window of that instance.
pub struct EditorModel {
    pub params: Arc<ParamValues>,
    view: ArcSwap<View>,
    commands: (Sender<Command>, Receiver<Command>),
    /// Parameter values the editor set, not yet applied (f64 bits; NaN
    /// when none): the audio thread (or a flush) applies them and tells the
    /// host, as CLAP wants for edits that come from the plugin's own GUI.
    edits: [AtomicU64; PARAMS.len()],
    /// Gestures (a slider held) begun and ended, not yet told to the host:
    /// bit 0 begun, bit 1 ended.
    gestures: [AtomicU32; PARAMS.len()],
    pub(crate) edits_pending: AtomicBool,
    /// The music's position (seconds of music, f64 bits; NaN when stopped).
    playhead: AtomicU64,
    /// The host's loop as seconds of music (f64 bits; NaN when none).
    loop_range: [AtomicU64; 2],
    /// Whether an editor window is open: overviews are only made then.
    open: AtomicBool,
    /// Set when an editor opened and wants the overview of what is there.
    pub(crate) wants_overview: AtomicBool,
    pub repaint: RepaintNotifier,
    pub drawn: DrawReport,
}

const NONE: u64 = 0x7ff8_dead_0000_0000;
const GESTURE_BEGUN: u32 = 1;
const GESTURE_ENDED: u32 = 2;

/// What the editor did to a parameter, as the host is told it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Edit {
    Begin,
    Value(f64),
    End,
}

static LIVE: parking_lot::Mutex<Vec<std::sync::Weak<EditorModel>>> =
    parking_lot::Mutex::new(Vec::new());

/// The editor models of the plugin instances alive in this process, oldest
/// first: what a diagnostic (or a test host) reads of what each editor
/// drew, and where it sends commands as the editor would.
pub fn live() -> Vec<Arc<EditorModel>> {
    LIVE.lock()
        .iter()
        .filter_map(std::sync::Weak::upgrade)
        .collect()
}

impl EditorModel {
    /// A new model, listed in [`live`] while it lives.
    pub fn new_listed(params: Arc<ParamValues>) -> Arc<Self> {
        let m = Arc::new(Self::new(params));
        let mut list = LIVE.lock();
        list.retain(|w| w.strong_count() > 0);
        list.push(Arc::downgrade(&m));
        m
    }

    pub fn new(params: Arc<ParamValues>) -> Self {
        Self {
            params,
            view: ArcSwap::from_pointee(View::default()),
            commands: unbounded(),
            edits: std::array::from_fn(|_| AtomicU64::new(NONE)),
            gestures: std::array::from_fn(|_| AtomicU32::new(0)),
            edits_pending: AtomicBool::new(false),
            playhead: AtomicU64::new(f64::NAN.to_bits()),
            loop_range: [
                AtomicU64::new(f64::NAN.to_bits()),
                AtomicU64::new(f64::NAN.to_bits()),
            ],
            open: AtomicBool::new(false),
            wants_overview: AtomicBool::new(false),
            repaint: RepaintNotifier::new(),
            drawn: DrawReport::default(),
        }
    }

    pub fn view(&self) -> Arc<View> {
        self.view.load_full()
    }

    /// Replaces the view when `update` changes it, and asks the editor to
    /// draw it. Never on the audio thread (it allocates).
    pub(crate) fn update(&self, update: impl FnOnce(&mut View)) {
        let old = self.view.load_full();
        let mut new = (*old).clone();
        update(&mut new);
        if new != *old {
            self.view.store(Arc::new(new));
            self.repaint.request_repaint();
        }
    }

    pub fn send(&self, command: Command) {
        // The receiver lives as long as the model: this cannot fail.
        let _ = self.commands.0.send(command);
        self.repaint.request_repaint();
    }

    pub(crate) fn next_command(&self) -> Option<Command> {
        self.commands.1.try_recv().ok()
    }

    /// The editor moved a parameter: it takes effect at once for the editor
    /// and reaches the host with the next block or flush.
    pub fn edit(&self, id: ParamId, value: f64) {
        self.params.set(id, value);
        self.edits[id as usize].store(self.params.get(id).to_bits(), Ordering::Release);
        self.edits_pending.store(true, Ordering::Release);
    }

    /// The user took hold of a parameter's control (a slider's drag): the
    /// host hears a gesture begin, so it records what follows as one move.
    pub fn begin_gesture(&self, id: ParamId) {
        self.gestures[id as usize].fetch_or(GESTURE_BEGUN, Ordering::AcqRel);
        self.edits_pending.store(true, Ordering::Release);
    }

    /// … and let go of it.
    pub fn end_gesture(&self, id: ParamId) {
        self.gestures[id as usize].fetch_or(GESTURE_ENDED, Ordering::AcqRel);
        self.edits_pending.store(true, Ordering::Release);
    }

    /// The editor's edits since the last call, in parameter order, each as
    /// a gesture's begin, the value, a gesture's end (whichever happened).
    /// Allocation- and lock-free: the audio thread calls it.
    pub(crate) fn take_edits(&self, mut each: impl FnMut(ParamId, Edit)) {
        if !self.edits_pending.swap(false, Ordering::AcqRel) {
            return;
        }
        for ((spec, slot), gesture) in PARAMS.iter().zip(&self.edits).zip(&self.gestures) {
            let g = gesture.swap(0, Ordering::AcqRel);
            if g & GESTURE_BEGUN != 0 {
                each(spec.id, Edit::Begin);
            }
            let v = slot.swap(NONE, Ordering::AcqRel);
            if v != NONE {
                each(spec.id, Edit::Value(f64::from_bits(v)));
            }
            if g & GESTURE_ENDED != 0 {
                each(spec.id, Edit::End);
            }
        }
    }

    /// Audio thread: where the music is (seconds of music), or `None`.
    pub(crate) fn set_playhead(&self, seconds: Option<f64>) {
        let bits = seconds.unwrap_or(f64::NAN).to_bits();
        if self.playhead.swap(bits, Ordering::Relaxed) != bits {
            self.repaint.request_repaint();
        }
    }

    /// Audio thread: the host's loop (seconds of music), or `None`.
    pub(crate) fn set_loop(&self, range: Option<(f64, f64)>) {
        let (a, b) = range.unwrap_or((f64::NAN, f64::NAN));
        self.loop_range[0].store(a.to_bits(), Ordering::Relaxed);
        self.loop_range[1].store(b.to_bits(), Ordering::Relaxed);
    }

    /// The host's loop, seconds of music. The two ends are stored apart: a
    /// loop read while the host moves it may mix old and new ends, which
    /// only the next block's loop corrects.
    pub fn loop_range(&self) -> Option<(f64, f64)> {
        let a = f64::from_bits(self.loop_range[0].load(Ordering::Relaxed));
        let b = f64::from_bits(self.loop_range[1].load(Ordering::Relaxed));
        (a.is_finite() && b.is_finite() && a < b).then_some((a, b))
    }

    pub fn playhead(&self) -> Option<f64> {
        Some(f64::from_bits(self.playhead.load(Ordering::Relaxed))).filter(|s| s.is_finite())
    }

    pub(crate) fn set_open(&self, open: bool) {
        if open && !self.open.swap(true, Ordering::AcqRel) {
            self.wants_overview.store(true, Ordering::Release);
        } else if !open {
            self.open.store(false, Ordering::Release);
        }
    }

    pub fn is_open(&self) -> bool {
        self.open.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edits_reach_the_taker_once_each_and_in_range() {
        let m = EditorModel::new(Arc::new(ParamValues::default()));
        m.edit(ParamId::RhythmStrength, 2.0);
        m.edit(ParamId::Gain, -6.0);
        let mut got = Vec::new();
        m.take_edits(|id, e| got.push((id, e)));
        assert_eq!(
            got,
            [
                (ParamId::Gain, Edit::Value(-6.0)),
                (ParamId::RhythmStrength, Edit::Value(1.0))
            ]
        );
        m.take_edits(|id, e| got.push((id, e)));
        assert_eq!(got.len(), 2, "edits taken twice");
        assert_eq!(m.params.get(ParamId::RhythmStrength), 1.0);
        // A drag: begin, the value, end, in that order, however the taker's
        // turns fall between them.
        got.clear();
        m.begin_gesture(ParamId::Guidance);
        m.edit(ParamId::Guidance, 4.0);
        m.end_gesture(ParamId::Guidance);
        m.take_edits(|id, e| got.push((id, e)));
        assert_eq!(
            got,
            [
                (ParamId::Guidance, Edit::Begin),
                (ParamId::Guidance, Edit::Value(4.0)),
                (ParamId::Guidance, Edit::End)
            ]
        );
    }

    #[test]
    fn the_view_is_swapped_only_when_it_changes() {
        let m = EditorModel::new(Arc::new(ParamValues::default()));
        let a = m.view();
        m.update(|_| {});
        assert!(Arc::ptr_eq(&a, &m.view()));
        m.update(|v| v.prompt = "calm piano".into());
        assert_eq!(m.view().prompt, "calm piano");
        assert_eq!(a.prompt, "", "a reader's snapshot never changes under it");
    }

    #[test]
    fn opening_asks_for_an_overview_once() {
        let m = EditorModel::new(Arc::new(ParamValues::default()));
        m.set_open(true);
        assert!(m.wants_overview.swap(false, Ordering::AcqRel));
        m.set_open(true);
        assert!(!m.wants_overview.load(Ordering::Acquire));
        m.set_open(false);
        m.set_open(true);
        assert!(m.wants_overview.load(Ordering::Acquire));
    }
}
