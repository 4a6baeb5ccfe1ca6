//! The factory presets in `presets/` load into the plugin as its state, and
//! each asks the composer for what its name says.

mod common;

use common::*;
use vidmusician_engine::sketch::Style;

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
