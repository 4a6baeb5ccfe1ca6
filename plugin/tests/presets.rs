//! The factory presets in `presets/` load into the plugin as its state, and
//! each asks the composer for what its name says. Hosts find them through
//! the preset-discovery factory and load them through preset-load.

mod common;

use std::ffi::CStr;

use clack_extensions::preset_discovery::indexer::IndexerImpl;
use clack_extensions::preset_discovery::metadata_receiver::MetadataReceiverImpl;
use clack_extensions::preset_discovery::prelude::*;
use clack_extensions::preset_discovery::provider::Provider;
use clack_host::prelude::*;
use common::*;
use vidmusician_engine::sketch::Style;
use vidmusician_plugin::PLUGIN_ID;
use vidmusician_plugin::params::ParamId;

fn presets() -> Vec<(String, Vec<u8>)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../presets");
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|p| {
            (
                p.file_stem().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    out.sort();
    out
}

#[test]
fn factory_presets_load_and_say_what_they_are() {
    let all = presets();
    assert!(all.len() >= 4, "{} presets", all.len());
    for (name, bytes) in all {
        let mut inst = instance();
        load_state(&mut inst, &bytes);
        let saved: serde_json::Value = serde_json::from_slice(&save_state(&mut inst)).unwrap();
        let preset: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(saved["prompt"], preset["prompt"], "{name}: prompt not kept");
        for p in preset["params"].as_array().unwrap() {
            let id = p[0].as_u64().unwrap();
            let got = saved["params"]
                .as_array()
                .unwrap()
                .iter()
                .find(|q| q[0].as_u64() == Some(id))
                .unwrap();
            assert_eq!(got[1].as_f64(), p[1].as_f64(), "{name}: parameter {id}");
        }
        let style = Style::from_prompt(preset["prompt"].as_str().unwrap());
        let want_energy = match name.as_str() {
            "calm-documentary" => -1.0..0.0,
            "promo" | "compilation" => 0.01..1.01,
            _ => -1.0..1.01,
        };
        assert!(
            want_energy.contains(&style.energy),
            "{name}: energy {}",
            style.energy
        );
    }
}

#[derive(Default)]
struct Indexer {
    locations: Vec<(String, bool)>,
}

impl IndexerImpl for Indexer {
    fn declare_filetype(&mut self, _: FileType) -> Result<(), HostError> {
        Ok(())
    }

    fn declare_location(&mut self, l: LocationInfo) -> Result<(), HostError> {
        self.locations.push((
            l.name.to_string_lossy().into_owned(),
            l.location == Location::Plugin && l.flags.contains(Flags::IS_FACTORY_CONTENT),
        ));
        Ok(())
    }

    fn declare_soundpack(&mut self, _: Soundpack) -> Result<(), HostError> {
        Ok(())
    }
}

/// What a host's preset browser would list: (name, load key, plugin ids,
/// description).
#[derive(Default)]
struct Listing {
    presets: Vec<(String, String, Vec<String>, String)>,
    errors: Vec<String>,
}

impl MetadataReceiverImpl for Listing {
    fn on_error(&mut self, _: i32, message: Option<&CStr>) {
        self.errors.push(format!("{message:?}"));
    }

    fn begin_preset(&mut self, name: Option<&CStr>, key: Option<&CStr>) -> Result<(), HostError> {
        let s = |c: Option<&CStr>| c.unwrap().to_string_lossy().into_owned();
        self.presets
            .push((s(name), s(key), Vec::new(), String::new()));
        Ok(())
    }

    fn add_plugin_id(&mut self, id: UniversalPluginId) {
        if let Some(p) = self.presets.last_mut() {
            p.2.push(id.id.to_string_lossy().into_owned());
        }
    }

    fn set_soundpack_id(&mut self, _: &CStr) {}
    fn set_flags(&mut self, _: Flags) {}
    fn add_creator(&mut self, _: &CStr) {}

    fn set_description(&mut self, d: &CStr) {
        if let Some(p) = self.presets.last_mut() {
            p.3 = d.to_string_lossy().into_owned();
        }
    }

    fn set_timestamps(&mut self, _: Option<Timestamp>, _: Option<Timestamp>) {}
    fn add_feature(&mut self, _: &CStr) {}
    fn add_extra_info(&mut self, _: &CStr, _: &CStr) {}
}

/// The presets as a host's preset browser finds them in `entry`.
fn browse(entry: &PluginEntry) -> (Vec<(String, bool)>, Listing) {
    let factory = entry.get_factory::<PresetDiscoveryFactory>().unwrap();
    assert_eq!(factory.provider_count(), 1);
    let id = factory
        .get_provider_descriptor(0)
        .unwrap()
        .id()
        .unwrap()
        .to_owned();
    let info = HostInfo::new("test host", "VidMusician", "https://example.invalid", "1.0").unwrap();
    let mut provider = Provider::instantiate(Indexer::default(), entry, &id, &info).unwrap();
    let mut listing = Listing::default();
    provider.get_metadata(Location::Plugin, &mut listing);
    (provider.indexer().locations.clone(), listing)
}

#[test]
fn hosts_find_the_factory_presets() {
    let (locations, listing) = browse(&in_process_entry());
    assert_eq!(locations, vec![("Factory presets".to_string(), true)]);
    assert!(listing.errors.is_empty(), "{:?}", listing.errors);
    let files: Vec<String> = presets().into_iter().map(|(name, _)| name).collect();
    let keys: Vec<String> = listing.presets.iter().map(|p| p.1.clone()).collect();
    assert_eq!(keys, files);
    for (name, key, ids, description) in &listing.presets {
        assert_eq!(ids, &vec![PLUGIN_ID.to_string()], "{key}");
        assert!(!description.is_empty() && !name.is_empty(), "{key}");
    }
    assert!(listing.presets.iter().any(|p| p.0 == "Calm documentary"));
}

#[test]
fn a_preset_loads_as_a_sound_and_keeps_the_video() {
    let (_, video) = fixture();
    let mut inst = instance();
    let state = format!(
        r#"{{"version":1,"video":{:?},"prompt":"mine","params":[[2,1.5],[5,0.3],[1,77]]}}"#,
        video.to_str().unwrap()
    );
    load_state(&mut inst, state.as_bytes());
    let load = inst
        .plugin_handle()
        .get_extension::<PluginPresetLoad>()
        .unwrap();
    load.load_from_location(&inst.plugin_handle(), Location::Plugin, Some(c"promo"))
        .unwrap();
    assert_eq!(
        inst.access_handler(|h| h.presets.borrow().clone()),
        vec![Ok("promo".to_string())]
    );
    let saved: serde_json::Value = serde_json::from_slice(&save_state(&mut inst)).unwrap();
    let promo: serde_json::Value =
        serde_json::from_slice(&presets().into_iter().find(|p| p.0 == "promo").unwrap().1).unwrap();
    assert_eq!(
        saved["video"].as_str(),
        video.to_str(),
        "the video is the project's"
    );
    assert_eq!(saved["prompt"], promo["prompt"]);
    let param = |id: ParamId| {
        saved["params"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p[0].as_u64() == Some(id as u64))
            .and_then(|p| p[1].as_f64())
            .unwrap()
    };
    assert_eq!(
        param(ParamId::VideoOffset),
        1.5,
        "the offset is the project's"
    );
    assert_eq!(param(ParamId::RhythmStrength), 1.0, "unlisted: the default");
    assert_eq!(param(ParamId::Seed), 0.0, "listed: the preset's");

    // Unknown keys and files are refused, and the host hears why.
    let before = save_state(&mut inst);
    for (location, key) in [
        (Location::Plugin, Some(c"no-such-preset")),
        (Location::Plugin, None),
        (
            Location::File {
                path: c"/tmp/promo.json",
            },
            Some(c"promo"),
        ),
    ] {
        assert!(
            load.load_from_location(&inst.plugin_handle(), location, key)
                .is_err()
        );
    }
    assert_eq!(save_state(&mut inst), before);
    let reported = inst.access_handler(|h| h.presets.borrow().clone());
    assert_eq!(
        reported.iter().filter(|r| r.is_err()).count(),
        3,
        "{reported:?}"
    );
}
