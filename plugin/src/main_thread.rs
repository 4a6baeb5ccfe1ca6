//! The host's main thread: the plugin's extensions (ports, parameters,
//! state, presets, render mode, timer) and REAPER's timeline. Requests for
//! music are built in [`crate::requests`].

use std::cell::{Cell, RefCell};
use std::ffi::CStr;
use std::fmt::Write as _;
use std::io::Read as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use clack_extensions::audio_ports::{
    AudioPortFlags, AudioPortInfo, AudioPortInfoWriter, AudioPortType, PluginAudioPortsImpl,
};
use clack_extensions::log::LogSeverity;
use clack_extensions::params::{HostParams, ParamRescanFlags};
use clack_extensions::params::{
    ParamDisplayWriter, ParamInfo, ParamInfoFlags, ParamInfoWriter, PluginMainThreadParams,
};
use clack_extensions::preset_discovery::prelude::{HostPresetLoad, Location, PluginPresetLoadImpl};
use clack_extensions::render::{PluginRenderImpl, RenderMode};
use clack_extensions::state::PluginStateImpl;
use clack_extensions::timer::{HostTimer, PluginTimerImpl, TimerId};
use clack_plugin::prelude::*;
use clack_plugin::stream::{InputStream, OutputStream};
use parking_lot::Mutex;

use crate::editor::EditorWindow;
use crate::params::{PARAMS, ParamId, ParamSpec};
use crate::presets;
use crate::reaper::{self, Reaper};
use crate::requests::{Inner, answer, request, tidy};
use crate::shared::{Shared, apply_param_events};
use crate::state::{Edits, MAX_STATE_BYTES, SavedState};
use crate::steward::Steward;

/// Main-thread state: what only the host's main thread touches (the host
/// handle, REAPER's API, the timer), and the request state it shares with
/// the [`Steward`].
pub struct MainThread<'a> {
    pub(crate) shared: &'a Shared<'a>,
    pub(crate) host: HostMainThreadHandle<'a>,
    /// REAPER's API, when the host is REAPER. Main thread only.
    pub(crate) reaper: Option<Reaper>,
    /// The host timer that re-reads REAPER's timeline.
    pub(crate) timer: Cell<Option<TimerId>>,
    /// Taken by the host's main thread and by the steward, never by the
    /// audio thread.
    pub(crate) inner: Arc<Mutex<Inner>>,
    /// Joined (before `inner` and the engine in it drop) on destroy.
    pub(crate) steward: Option<Steward>,
    /// The editor's window while it is open.
    pub(crate) editor: RefCell<EditorWindow>,
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
    pub(crate) fn request(&self, inner: &mut Inner) {
        self.follow_timeline(inner);
        request(self.shared, inner);
    }
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
        if inner.video_override {
            // The user chose a video in the editor.
            return false;
        }
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
        if inner.video.as_ref() != Some(&item.path) {
            // Edits of another video's music mean nothing for this one.
            inner.sections.clear();
        }
        inner.video = Some(item.path.clone());
        let sections = inner.sections.clone();
        self.shared.editor.update(|v| {
            v.sections = sections;
            if v.video.as_ref() != Some(&item.path) {
                v.video_overview = None;
                v.music = None;
            }
            v.video = Some(item.path.clone());
            v.from_timeline = true;
        });
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
        // A host that destroys the plugin with its editor open: the window
        // (and its thread) goes first.
        drop(self.editor.get_mut().take_window());
        self.shared.editor.set_open(false);
        // The steward next: it borrows `shared` and holds `inner`.
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

impl PluginStateImpl for MainThread<'_> {
    fn save(&self, output: &mut OutputStream) -> Result<(), PluginError> {
        let inner = self.inner.lock();
        let s = SavedState::capture(
            &self.shared.params,
            inner.video.clone(),
            inner.prompt.clone(),
            inner.cache_key.clone(),
            self.shared.host_grid(),
            Edits {
                sections: inner.sections.clone(),
                section_seeds: inner.section_seeds,
                video_override: inner.video_override,
                device: inner.device,
            },
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
            inner.sections = s.sections;
            inner.section_seeds = s.section_seeds;
            inner.video_override = s.video_override;
            inner.device = s.device;
            // What was being made and drawn was for the old settings.
            inner.current = None;
            inner.resolved = None;
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
