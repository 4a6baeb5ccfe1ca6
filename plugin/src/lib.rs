//! VidMusician as a CLAP plugin, and as VST3 through clap-wrapper.
//!
//! Host glue only: the music comes from `vidmusician-engine`'s service. One
//! type per thread, as CLAP has them:
//!
//! - [`Shared`] (any thread, `shared.rs`): parameter values as atomics,
//!   render mode, the asks for music, the host's tempo grid.
//! - [`MainThread`] (`main_thread.rs`): the host's extensions, the saved
//!   state, REAPER's timeline. With the steward (`steward.rs`, a thread of
//!   the plugin's own for hosts that give the main thread no turn) it
//!   builds requests for the engine and hands takes to the audio thread
//!   (`requests.rs`).
//! - The editor (`editor/`, its own thread): draws a snapshot the other
//!   threads publish and sends them commands.
//! - [`Processor`] (audio thread, `processor.rs`): plays the take as a pure
//!   function of the host's song position through [`playback::Player`],
//!   reading the transport through `transport.rs`.

pub mod editor;
mod main_thread;
pub mod params;
pub mod playback;
pub mod presets;
mod processor;
pub mod reaper;
mod requests;
mod shared;
pub mod state;
mod steward;
mod transport;

use std::cell::{Cell, RefCell};
use std::ffi::CStr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64};
use std::time::Duration;

use clack_extensions::audio_ports::PluginAudioPorts;
use clack_extensions::gui::PluginGui;
use clack_extensions::params::PluginParams;
use clack_extensions::preset_discovery::prelude::{
    PluginPresetLoad, PresetDiscoveryFactoryWrapper,
};
use clack_extensions::render::PluginRender;
use clack_extensions::state::PluginState;
use clack_extensions::timer::PluginTimer;
use clack_plugin::entry::prelude::{EntryFactories, EntryLoadError};
use clack_plugin::prelude::*;
use parking_lot::Mutex;
use vidmusician_engine::service::Meter;

pub use main_thread::MainThread;
pub use processor::Processor;
pub use shared::Shared;

use editor::model::EditorModel;
use params::ParamValues;
use reaper::Reaper;
use requests::Inner;
use shared::pack_meter;
use steward::Steward;

pub const PLUGIN_ID: &str = "com.vidmusician.vidmusician";

/// How long offline rendering waits for music that is still being made,
/// per block.
const OFFLINE_WAIT: Duration = Duration::from_secs(120);
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
            .register::<PluginPresetLoad>()
            .register::<PluginGui>();
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
        let params = Arc::new(ParamValues::default());
        Ok(Shared {
            host,
            editor: EditorModel::new_listed(params.clone()),
            params,
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
            video_override: false,
            resolved: None,
            current: None,
            overview: None,
            sections: Vec::new(),
            section_seeds: 0,
            device: Default::default(),
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
            editor: RefCell::default(),
        })
    }
}

/// The library's entry: the plugin, and the factory presets for hosts'
/// preset browsers.
pub struct VidMusicianEntry {
    plugin: SinglePluginEntry<VidMusician>,
    presets: PresetDiscoveryFactoryWrapper<presets::PresetFactory>,
}

impl Entry for VidMusicianEntry {
    fn new(plugin_path: Option<&CStr>) -> Result<Self, EntryLoadError> {
        // The GPU helper is looked for beside the plugin's file.
        if let Some(dir) = plugin_path
            .and_then(|p| p.to_str().ok())
            .and_then(|p| std::path::Path::new(p).parent())
        {
            vidmusician_engine::neural::helper::set_plugin_dir(dir);
        }
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
