//! The editor: CLAP's GUI extension (and through clap-wrapper the VST3
//! build's editor), drawn with egui in a baseview window embedded in the
//! host's window.
//!
//! baseview runs each window's event loop on a thread of its own (on X11),
//! so the editor shares nothing with the plugin but an
//! [`model::EditorModel`]: it reads a snapshot of what to show and sends
//! commands. What it shows is made on the engine thread (overviews) and
//! published by whichever of the host's main thread and the steward holds
//! the request state ([`pump`]). Nothing the plugin needs depends on the
//! editor being open: closing it stops only the drawing.

pub mod model;
mod view;

use std::sync::atomic::Ordering;

use clack_extensions::gui::{
    AspectRatioStrategy, GuiApiType, GuiConfiguration, GuiResizeHints, GuiSize, PluginGuiImpl,
    Window as ClapWindow,
};
use clack_extensions::log::LogSeverity;
use clack_plugin::prelude::*;
use egui_baseview::baseview::dpi::{LogicalSize, PhysicalSize};
use egui_baseview::{EguiWindow, EguiWindowSettings};
use vidmusician_engine::Error;
use vidmusician_engine::service::{Event, MAX_SECTIONS, MusicSource, OverviewRequest, Section};

use crate::main_thread::MainThread;
use crate::params::ParamId;
use crate::requests::Inner;
use crate::shared::{Shared, unpack_meter};
use model::{Bars, Command, Status};

/// The editor's size when it opens, logical pixels.
pub const DEFAULT_SIZE: (u32, u32) = (960, 600);
/// The smallest it can be made.
pub const MIN_SIZE: (u32, u32) = (640, 420);
/// Thumbnails across the video.
const THUMBNAILS: usize = 24;

/// The open editor window of one plugin instance (main thread only).
#[derive(Default)]
pub(crate) struct EditorWindow {
    window: Option<egui_baseview::baseview::Window>,
    /// The host's scale factor (CLAP `set_scale`); 1 until told.
    scale: f64,
    /// The size asked for before the window exists, physical pixels.
    size: Option<(u32, u32)>,
}

impl EditorWindow {
    pub(crate) fn take_window(&mut self) -> Option<egui_baseview::baseview::Window> {
        self.window.take()
    }
}

fn physical(size: (u32, u32), scale: f64) -> (u32, u32) {
    (
        (f64::from(size.0) * scale).round() as u32,
        (f64::from(size.1) * scale).round() as u32,
    )
}

impl MainThread<'_> {
    fn window(&self) -> std::cell::RefMut<'_, EditorWindow> {
        self.editor.borrow_mut()
    }
}

impl PluginGuiImpl for MainThread<'_> {
    fn is_api_supported(&self, configuration: GuiConfiguration) -> bool {
        // Embedded only: baseview parents its window to the host's.
        Some(configuration.api_type) == GuiApiType::default_for_current_platform()
            && !configuration.is_floating
    }

    fn get_preferred_api(&self) -> Option<GuiConfiguration<'_>> {
        Some(GuiConfiguration {
            api_type: GuiApiType::default_for_current_platform()?,
            is_floating: false,
        })
    }

    fn create(&self, configuration: GuiConfiguration) -> Result<(), PluginError> {
        if !self.is_api_supported(configuration) {
            return Err(PluginError::Message("only an embedded editor is offered"));
        }
        let mut w = self.window();
        if w.window.is_some() {
            return Err(PluginError::Message("the editor is already open"));
        }
        if w.scale <= 0.0 {
            w.scale = 1.0;
        }
        let size = w.size.unwrap_or_else(|| physical(DEFAULT_SIZE, w.scale));
        let model = self.shared.editor.clone();
        let settings = EguiWindowSettings::new()
            .with_title("VidMusician")
            .with_size(PhysicalSize::new(size.0, size.1))
            .with_min_size(Some(LogicalSize::new(
                f64::from(MIN_SIZE.0),
                f64::from(MIN_SIZE.1),
            )))
            .with_resizable(true)
            .with_fallback_scale_factor(w.scale)
            .with_repaint_notifier(model.repaint.clone())
            // CLAP calls `create` before `set_parent`.
            .wait_for_parent();
        let app = view::EditorApp::new(model.clone(), self.reaper.is_some());
        let window = EguiWindow::create(settings, app).map_err(|e| {
            self.shared
                .report(LogSeverity::Error, &format!("cannot open the editor: {e}"));
            PluginError::Message("cannot open the editor")
        })?;
        w.window = Some(window);
        model.set_open(true);
        // The main thread's next turn (or the steward's) sends what there
        // is to draw.
        self.shared.host.request_callback();
        Ok(())
    }

    fn destroy(&self) {
        // Dropping the window closes it and joins its thread.
        let window = self.window().window.take();
        drop(window);
        self.shared.editor.set_open(false);
        give_back_memory();
    }

    fn set_scale(&self, scale: f64) -> Result<(), PluginError> {
        if !(scale.is_finite() && (0.25..=8.0).contains(&scale)) {
            return Err(PluginError::Message("unusable scale factor"));
        }
        let mut w = self.window();
        w.scale = scale;
        if let Some(win) = &w.window {
            // X11 gives baseview a scale only through Xft.dpi: the host's
            // answers where that is missing.
            let _ = win.suggest_fallback_scale_factor(scale);
        }
        Ok(())
    }

    fn get_size(&self) -> Option<GuiSize> {
        let w = self.window();
        let (width, height) = match &w.window {
            Some(win) => {
                let s = win.size().physical;
                (s.width, s.height)
            }
            None => w
                .size
                .unwrap_or_else(|| physical(DEFAULT_SIZE, w.scale.max(1.0))),
        };
        Some(GuiSize { width, height })
    }

    fn can_resize(&self) -> bool {
        true
    }

    fn get_resize_hints(&self) -> Option<GuiResizeHints> {
        Some(GuiResizeHints {
            can_resize_horizontally: true,
            can_resize_vertically: true,
            strategy: AspectRatioStrategy::Disregard,
        })
    }

    fn adjust_size(&self, size: GuiSize) -> Option<GuiSize> {
        let w = self.window();
        let min = physical(MIN_SIZE, w.scale.max(1.0));
        Some(GuiSize {
            width: size.width.clamp(min.0, 16_384),
            height: size.height.clamp(min.1, 16_384),
        })
    }

    fn set_size(&self, size: GuiSize) -> Result<(), PluginError> {
        let size = self.adjust_size(size).unwrap_or(size);
        let mut w = self.window();
        w.size = Some((size.width, size.height));
        if let Some(win) = &w.window {
            win.resize(PhysicalSize::new(size.width, size.height))
                .map_err(|_| PluginError::Message("cannot resize the editor"))?;
        }
        Ok(())
    }

    fn set_parent(&self, parent: ClapWindow) -> Result<(), PluginError> {
        let w = self.window();
        let win = w
            .window
            .as_ref()
            .ok_or(PluginError::Message("the editor is not created"))?;
        win.set_parent(&parent)
            .map_err(|_| PluginError::Message("cannot embed the editor in that window"))
    }

    fn set_transient(&self, _window: ClapWindow) -> Result<(), PluginError> {
        Err(PluginError::Message("the editor is embedded, not floating"))
    }

    fn show(&self) -> Result<(), PluginError> {
        let w = self.window();
        if let Some(win) = &w.window {
            win.show()
                .map_err(|_| PluginError::Message("cannot show the editor"))?;
        }
        self.shared.editor.set_open(true);
        Ok(())
    }

    fn hide(&self) -> Result<(), PluginError> {
        let w = self.window();
        if let Some(win) = &w.window {
            win.hide()
                .map_err(|_| PluginError::Message("cannot hide the editor"))?;
        }
        self.shared.editor.set_open(false);
        Ok(())
    }
}

/// Returns the memory the closed window freed to the system. Each window
/// draws on a thread of its own, and glibc gives each thread's allocations
/// an arena of its own that keeps what was freed in it: without this, a
/// host's memory grows by a few megabytes at every opening of the editor
/// (about 3 MB a time here, over 50 openings), though nothing leaks.
fn give_back_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free pages of the allocator's arenas.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The editor's side of a main-thread or steward round: carries out its
/// commands, turns the engine's events into what it shows, and asks for
/// overviews while it is open. Any thread but the audio thread.
pub(crate) fn pump(shared: &Shared<'_>, inner: &mut Inner, events: Vec<Event>) {
    let model = &shared.editor;
    while let Some(command) = model.next_command() {
        carry_out(shared, inner, command);
    }
    for ev in events {
        follow(shared, inner, ev);
    }
    if model.is_open() {
        let bars = shared.host_grid().map(|g| Bars {
            downbeat: g.downbeat,
            bar: unpack_meter(shared.host_meter.load(Ordering::Acquire)).bar(g.bpm),
            offset: shared.offset(),
        });
        if model.view().bars != bars {
            model.update(|v| v.bars = bars);
        }
        if model.wants_overview.swap(false, Ordering::AcqRel) {
            let music = inner.cache_key.clone().map(MusicSource::Cached);
            request_overview(shared, inner, music);
        }
    }
}

fn carry_out(shared: &Shared<'_>, inner: &mut Inner, command: Command) {
    let model = &shared.editor;
    match command {
        Command::SetVideo(path) => {
            if inner.video.as_ref() == Some(&path) {
                return;
            }
            // On a timeline host, a chosen file overrides the item until
            // the user follows the timeline again.
            inner.video_override = inner.item.is_some();
            inner.video = Some(path.clone());
            inner.resolved = None;
            // Edits of another video's music mean nothing for this one.
            inner.sections.clear();
            model.update(|v| {
                v.video = Some(path);
                v.overridden = inner.video_override;
                v.from_timeline = false;
                v.video_overview = None;
                v.music = None;
                v.status = Status::Idle;
            });
            shared.ask_for_music();
        }
        Command::FollowTimeline => {
            inner.video_override = false;
            // Read again at the next look at the timeline, changed or not.
            inner.item = None;
            inner.reaper_changes = None;
            model.update(|v| v.overridden = false);
            shared.ask_for_music();
        }
        Command::SetPrompt(prompt) => {
            if prompt != inner.prompt {
                inner.prompt = prompt.clone();
                model.update(|v| v.prompt = prompt);
                shared.ask_for_music();
            }
        }
        Command::Generate => shared.ask_for_music(),
        // The piece in hand stays: a device changes how fast music is made,
        // not which (the cache serves it wherever it was made).
        Command::SetDevice(device) => {
            inner.device = device;
            model.update(|v| v.device = device);
        }
        Command::NewTake => {
            let seed = shared.params.next_seed();
            // The host hears of the new seed like any edit of the editor's,
            // and the seed asks for the new music when it is applied.
            model.edit(ParamId::Seed, seed);
        }
        Command::RegenerateSection { start, end } => {
            if !(start.is_finite() && end.is_finite() && 0.0 <= start && start < end)
                || inner.sections.len() >= MAX_SECTIONS
            {
                return;
            }
            // A seed of its own for each edit, from the piece's seed and
            // how many edits were made before (undone ones too, so an edit
            // after an undo is new music): the same edits of the same piece
            // make the same music.
            inner.section_seeds += 1;
            let base = shared.params.get(ParamId::Seed) as u64;
            let seed = base
                .wrapping_mul(0x9e37_79b9_7f4a_7c15)
                .wrapping_add(inner.section_seeds)
                % 1_000_000_007;
            inner.sections.push(Section { start, end, seed });
            let sections = inner.sections.clone();
            model.update(|v| v.sections = sections);
            shared.ask_for_music();
        }
        Command::UndoSection => {
            if inner.sections.pop().is_some() {
                let sections = inner.sections.clone();
                model.update(|v| v.sections = sections);
                shared.ask_for_music();
            }
        }
        Command::Cancel => {
            if let (Some(engine), Some(id)) = (inner.engine.as_ref(), inner.current) {
                engine.cancel(id);
            }
        }
    }
}

/// Turns one engine event into what the editor shows.
fn follow(shared: &Shared<'_>, inner: &mut Inner, ev: Event) {
    let model = &shared.editor;
    let id = ev.id();
    if Some(id) == inner.overview {
        match ev {
            Event::Overview { overview, .. } => {
                inner.overview = None;
                model.update(|v| {
                    v.overview_error = None;
                    v.video_overview = overview.video.clone();
                    if overview.music.is_some() {
                        v.music = overview.music.clone();
                    }
                });
            }
            Event::Failed { error, .. } => {
                // The pictures could not be drawn; the music may be fine.
                inner.overview = None;
                let what = format!("cannot draw the timeline: {error}");
                model.update(|v| v.overview_error = Some(what));
            }
            Event::Cancelled { .. } => inner.overview = None,
            _ => {}
        }
        return;
    }
    if Some(id) != inner.current {
        return;
    }
    match ev {
        Event::Progress {
            stage, fraction, ..
        } => model.update(|v| {
            v.status = Status::Working {
                stage: Some(stage),
                fraction: fraction.clamp(0.0, 1.0),
            }
        }),
        Event::Done { result, .. } => {
            model.update(|v| {
                v.status = Status::Finished {
                    cached: result.cached,
                };
                v.engine = Some(result.engine);
                v.why = result.why.clone();
                // Where this piece was made (for one from the cache, where
                // it was made then; none for the composer's).
                v.device_note = result.device.clone();
            });
            if model.is_open() {
                request_overview(
                    shared,
                    inner,
                    Some(MusicSource::Audio {
                        audio: result.audio.clone(),
                        bpm: result.bpm,
                        downbeat: result.downbeat,
                    }),
                );
            }
        }
        Event::Failed { error, .. } => {
            let (what, fix) = explain(&error);
            model.update(|v| v.status = Status::Failed { what, fix });
        }
        Event::Cancelled { .. } => model.update(|v| v.status = Status::Cancelled),
        Event::Overview { .. } => {}
    }
}

/// Asks the engine thread for the overview of the last resolved request
/// (replacing one not yet made).
pub(crate) fn request_overview(shared: &Shared<'_>, inner: &mut Inner, music: Option<MusicSource>) {
    let (Some(engine), Some(resolved)) = (inner.engine.as_ref(), inner.resolved.as_ref()) else {
        return;
    };
    if let Some(old) = inner.overview.take() {
        engine.cancel(old);
    }
    match engine.overview(OverviewRequest {
        resolved: resolved.clone(),
        music,
        thumbnails: THUMBNAILS,
    }) {
        Ok(id) => inner.overview = Some(id),
        Err(e) => shared.report(LogSeverity::Error, &e.to_string()),
    }
}

/// An error in plain words, and what the user can do about it.
pub(crate) fn explain(error: &Error) -> (String, String) {
    let what = error.to_string();
    let fix = match error {
        Error::NotFound(_) | Error::EmptyFile(_) => {
            "Choose the video again: the file has moved, been deleted or is empty."
        }
        Error::Unreadable { .. }
        | Error::NoVideoStream(_)
        | Error::StillImage { .. }
        | Error::EmptyVideo(_)
        | Error::TooSmall { .. }
        | Error::Truncated { .. }
        | Error::Decode { .. }
        | Error::Damaged { .. } => {
            "Choose another video, or export this one again (H.264 in MP4 reads everywhere)."
        }
        Error::NoModel { .. } => {
            "Install the model with the command above, or choose the sketch engine, which needs none."
        }
        Error::ModelFile { .. } | Error::MissingTensor { .. } | Error::TensorShape { .. } => {
            "The model files are damaged or of another kind: download the model again."
        }
        Error::CutPastEnd { .. } | Error::Edit(_) => {
            "Check the cut list: it must belong to this video."
        }
        Error::EngineGone | Error::Tensor(_) => {
            "The engine failed: try again, or choose the sketch engine."
        }
        Error::Io { .. } => "Check that the disk is not full and the folder can be written.",
        _ => "Change the setting named above and generate again.",
    };
    (what, fix.to_string())
}
