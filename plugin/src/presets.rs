//! Factory presets, built into the plugin and listed to hosts through CLAP's
//! preset-discovery factory, so they show in the host's preset browser and
//! load through the preset-load extension. A preset is a sound: a prompt and
//! parameters. Loading one keeps the project's video and its offset.

use std::ffi::{CStr, CString};

use clack_extensions::preset_discovery::indexer::{Indexer, IndexerInfo};
use clack_extensions::preset_discovery::metadata_receiver::MetadataReceiver;
use clack_extensions::preset_discovery::prelude::*;
use clack_extensions::preset_discovery::provider::{ProviderImpl, ProviderInstance};
use clack_plugin::prelude::PluginError;

use crate::PLUGIN_ID;
use crate::state::SavedState;

/// One built-in preset: a stable key (its file's name in `presets/`) and its
/// state.
pub struct FactoryPreset {
    pub key: &'static str,
    json: &'static str,
}

macro_rules! factory {
    ($($key:literal),* $(,)?) => {
        &[$(FactoryPreset {
            key: $key,
            json: include_str!(concat!("../../presets/", $key, ".json")),
        }),*]
    };
}

/// Every file of `presets/` (a test checks the two agree).
pub const FACTORY: &[FactoryPreset] =
    factory!["calm-documentary", "commercial", "compilation", "promo"];

impl FactoryPreset {
    pub fn by_key(key: &str) -> Option<&'static FactoryPreset> {
        FACTORY.iter().find(|p| p.key == key)
    }

    /// The preset's state.
    pub fn state(&self) -> Result<SavedState, String> {
        SavedState::from_bytes(self.json.as_bytes())
    }

    /// "calm-documentary" → "Calm documentary".
    pub fn name(&self) -> String {
        let words = self.key.replace('-', " ");
        let mut c = words.chars();
        c.next()
            .map(|f| f.to_uppercase().chain(c).collect())
            .unwrap_or_default()
    }
}

const PROVIDER_ID: &str = "com.vidmusician.vidmusician.factory-presets";

/// The preset-discovery factory: one provider, for the built-in presets.
pub struct PresetFactory {
    descriptor: ProviderDescriptor,
}

impl Default for PresetFactory {
    fn default() -> Self {
        Self {
            descriptor: ProviderDescriptor::new(PROVIDER_ID, "VidMusician factory presets")
                .with_vendor("VidMusician"),
        }
    }
}

impl PresetDiscoveryFactoryImpl for PresetFactory {
    fn provider_count(&self) -> u32 {
        1
    }

    fn provider_descriptor(&self, index: u32) -> Option<&ProviderDescriptor> {
        (index == 0).then_some(&self.descriptor)
    }

    fn create_provider<'a>(
        &'a self,
        host_info: IndexerInfo<'a>,
        provider_id: &CStr,
    ) -> Option<ProviderInstance<'a>> {
        if provider_id.to_bytes() != PROVIDER_ID.as_bytes() {
            return None;
        }
        Some(ProviderInstance::new(
            host_info,
            &self.descriptor,
            |mut indexer: Indexer<'a>| {
                indexer
                    .declare_location(LocationInfo {
                        name: c"Factory presets",
                        flags: Flags::IS_FACTORY_CONTENT,
                        location: Location::Plugin,
                    })
                    .map_err(|_| PluginError::Message("the host refused the preset location"))?;
                Ok(Provider)
            },
        ))
    }
}

struct Provider;

impl ProviderImpl<'_> for Provider {
    fn get_metadata(
        &mut self,
        location: Location,
        receiver: &mut MetadataReceiver,
    ) -> Result<(), PluginError> {
        if location != Location::Plugin {
            return Ok(());
        }
        let id = CString::new(PLUGIN_ID).map_err(|_| PluginError::Message("plugin id"))?;
        for p in FACTORY {
            let state = p
                .state()
                .map_err(|_| PluginError::Message("a factory preset is broken"))?;
            let (Ok(name), Ok(key), Ok(description)) = (
                CString::new(p.name()),
                CString::new(p.key),
                CString::new(state.prompt),
            ) else {
                continue;
            };
            receiver
                .begin_preset(Some(&name), Some(&key))
                .map_err(|_| PluginError::Message("the host refused a preset"))?
                .add_plugin_id(UniversalPluginId::clap(&id))
                .set_flags(Flags::IS_FACTORY_CONTENT)
                .set_description(&description);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_is_built_in_and_parses() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../presets");
        let mut files: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
            .collect();
        files.sort();
        let built: Vec<&str> = FACTORY.iter().map(|p| p.key).collect();
        assert_eq!(files, built);
        for p in FACTORY {
            let s = p.state().unwrap();
            assert!(s.video.is_none(), "{}: a preset carries no video", p.key);
            assert!(!s.prompt.is_empty(), "{}", p.key);
        }
        assert_eq!(
            FactoryPreset::by_key("calm-documentary").unwrap().name(),
            "Calm documentary"
        );
        assert!(FactoryPreset::by_key("../promo").is_none());
    }
}
