//! The saved state: parameters, the video, the prompt and the section
//! edits, versioned. An old state migrates (version 1 had no section
//! edits); a truncated or hostile one is refused whole, never a crash.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::params::{PARAMS, ParamId, ParamValues};
use vidmusician_engine::neural::device::DeviceChoice;
use vidmusician_engine::service::{MAX_SECTIONS, Section};

pub const STATE_VERSION: u32 = 2;
/// Larger states are not ours: refuse them before parsing.
pub const MAX_STATE_BYTES: usize = 1 << 20;
/// The engine takes prompts up to this length; a longer saved one is cut.
pub use vidmusician_engine::service::MAX_PROMPT_BYTES;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct SavedState {
    pub version: u32,
    pub video: Option<PathBuf>,
    #[serde(default)]
    pub prompt: String,
    /// Parameter values by stable id.
    #[serde(default)]
    pub params: Vec<(u32, f64)>,
    /// Key of the cached music of the last take, so a reopened project
    /// plays without regenerating.
    #[serde(default)]
    pub cache_key: Option<String>,
    /// The host's tempo and bar grid the music last followed: a reopened
    /// project asks for that music on activation, before the host's tempo
    /// has been heard, and so plays it from the first block.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_grid: Option<HostGrid>,
    /// Stretches made again in the editor, oldest first (version 2 on).
    #[serde(default)]
    pub sections: Vec<Section>,
    /// Section edits made so far, undone ones included: the next one's seed
    /// comes from it, so an edit made after an undo is not the undone one.
    #[serde(default)]
    pub section_seeds: u64,
    /// The video was chosen in the editor over the host timeline's.
    #[serde(default)]
    pub video_override: bool,
    /// Where the neural engines' decoder runs (auto, cpu, cuda, cuda:N);
    /// one this build does not know reads as `auto`.
    #[serde(default, deserialize_with = "lenient_device")]
    pub device: DeviceChoice,
}

/// A saved device, or `auto` for one this build cannot read: a state from
/// a newer build keeps everything else.
fn lenient_device<'de, D: serde::Deserializer<'de>>(d: D) -> Result<DeviceChoice, D::Error> {
    let v = serde_json::Value::deserialize(d)?;
    Ok(v.as_str().and_then(|s| s.parse().ok()).unwrap_or_default())
}

/// A host tempo, time signature and a song time where a bar starts.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct HostGrid {
    pub bpm: f64,
    pub beats: u32,
    pub unit: u32,
    pub downbeat: f64,
}

impl HostGrid {
    /// A grid the plugin could have followed (hostile states hold others).
    pub fn is_valid(&self) -> bool {
        (20.0..=400.0).contains(&self.bpm)
            && vidmusician_engine::service::Meter::checked(self.beats, self.unit).is_some()
            && self.downbeat.is_finite()
            && self.downbeat.abs() < 1e9
    }
}

/// What the editor adds to a saved state.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Edits {
    pub sections: Vec<Section>,
    pub section_seeds: u64,
    pub video_override: bool,
    pub device: DeviceChoice,
}

impl SavedState {
    pub fn capture(
        values: &ParamValues,
        video: Option<PathBuf>,
        prompt: String,
        cache_key: Option<String>,
        host_grid: Option<HostGrid>,
        edits: Edits,
    ) -> Self {
        Self {
            version: STATE_VERSION,
            video,
            prompt,
            params: PARAMS
                .iter()
                .map(|p| (p.id as u32, values.get(p.id)))
                .collect(),
            cache_key,
            host_grid: host_grid.filter(HostGrid::is_valid),
            sections: edits.sections,
            section_seeds: edits.section_seeds,
            video_override: edits.video_override,
            device: edits.device,
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        // PANIC-free: a struct of strings, paths and numbers always serialises.
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }

    /// Parses a saved state, or says why it cannot be used.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, String> {
        if bytes.len() > MAX_STATE_BYTES {
            return Err(format!(
                "state is {} bytes (at most {MAX_STATE_BYTES})",
                bytes.len()
            ));
        }
        let s: SavedState =
            serde_json::from_slice(bytes).map_err(|e| format!("state is not readable: {e}"))?;
        if s.version == 0 || s.version > STATE_VERSION {
            return Err(format!(
                "state version {} (this build reads 1–{STATE_VERSION})",
                s.version
            ));
        }
        let mut s = s;
        s.host_grid = s.host_grid.filter(HostGrid::is_valid);
        // Edits the engine would refuse are dropped, not the whole state.
        s.sections.retain(|x| {
            x.start.is_finite() && x.end.is_finite() && 0.0 <= x.start && x.start < x.end
        });
        s.sections.truncate(MAX_SECTIONS);
        if s.prompt.len() > MAX_PROMPT_BYTES {
            let mut cut = MAX_PROMPT_BYTES;
            while !s.prompt.is_char_boundary(cut) {
                cut -= 1;
            }
            s.prompt.truncate(cut);
        }
        Ok(s)
    }

    /// Applies the parameters (unknown ids are ignored, values sanitised).
    pub fn apply(&self, values: &ParamValues) {
        values.reset();
        for &(id, v) in &self.params {
            if let Some(spec) = crate::params::ParamSpec::by_id(id) {
                values.set(spec.id, v);
            }
        }
    }
}

impl SavedState {
    /// Applies a preset's parameters: a sound, so every parameter but the
    /// video offset (the project's timing) takes the preset's value or its
    /// default.
    pub fn apply_as_preset(&self, values: &ParamValues) {
        let offset = values.get(ParamId::VideoOffset);
        self.apply(values);
        values.set(ParamId::VideoOffset, offset);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let v = ParamValues::default();
        v.set(ParamId::Seed, 42.0);
        v.set(ParamId::VideoOffset, 1.5);
        let grid = HostGrid {
            bpm: 96.5,
            beats: 6,
            unit: 8,
            downbeat: 1.25,
        };
        let s = SavedState::capture(
            &v,
            Some("/v.mp4".into()),
            "calm".into(),
            Some("abc".into()),
            Some(grid),
            Edits {
                sections: vec![Section {
                    start: 1.0,
                    end: 2.5,
                    seed: 17,
                }],
                section_seeds: 3,
                video_override: true,
                device: DeviceChoice::Cpu,
            },
        );
        let back = SavedState::from_bytes(&s.to_bytes()).unwrap();
        assert_eq!(back, s);
        let w = ParamValues::default();
        back.apply(&w);
        assert_eq!(w.get(ParamId::Seed), 42.0);
        assert_eq!(w.get(ParamId::VideoOffset), 1.5);
    }

    #[test]
    fn hostile_states_are_refused() {
        let good = SavedState::capture(
            &ParamValues::default(),
            None,
            String::new(),
            None,
            None,
            Edits::default(),
        )
        .to_bytes();
        assert!(SavedState::from_bytes(&good[..good.len() / 2]).is_err());
        assert!(SavedState::from_bytes(b"").is_err());
        assert!(SavedState::from_bytes(&[0xff; 64]).is_err());
        assert!(SavedState::from_bytes(br#"{"version": 99}"#).is_err());
        assert!(SavedState::from_bytes(&vec![b' '; MAX_STATE_BYTES + 1]).is_err());
        // An overlong prompt is cut to what the engine takes, on a
        // character boundary.
        let long = format!(
            r#"{{"version":1,"video":null,"prompt":"{}"}}"#,
            "é".repeat(5000)
        );
        let s = SavedState::from_bytes(long.as_bytes()).unwrap();
        assert!(s.prompt.len() <= MAX_PROMPT_BYTES && s.prompt.len() > MAX_PROMPT_BYTES - 4);
        // Out-of-range and unknown parameters are tamed, not trusted.
        let s = SavedState::from_bytes(
            br#"{"version":1,"video":null,"params":[[0,1e300],[77,1.0],[1,-5]]}"#,
        )
        .unwrap();
        let v = ParamValues::default();
        s.apply(&v);
        assert_eq!(v.get(ParamId::Gain), 12.0);
        assert_eq!(v.get(ParamId::Seed), 0.0);
        // A grid no host could have had is dropped, not followed.
        for grid in [
            r#"{"bpm":1e9,"beats":4,"unit":4,"downbeat":0}"#,
            r#"{"bpm":120,"beats":4,"unit":3,"downbeat":0}"#,
            r#"{"bpm":120,"beats":4,"unit":4,"downbeat":1e300}"#,
        ] {
            let text = format!(r#"{{"version":1,"video":null,"host_grid":{grid}}}"#);
            assert_eq!(
                SavedState::from_bytes(text.as_bytes()).unwrap().host_grid,
                None
            );
        }
        // Section edits the engine would refuse are dropped, the rest kept.
        let s = SavedState::from_bytes(
            br#"{"version":2,"video":null,"sections":[
                {"start":1,"end":1,"seed":1},{"start":-1,"end":2,"seed":2},
                {"start":0.5,"end":1.5,"seed":3}]}"#,
        )
        .unwrap();
        assert_eq!(
            s.sections,
            [Section {
                start: 0.5,
                end: 1.5,
                seed: 3
            }]
        );
        assert!(SavedState::from_bytes(br#"{"version":2,"sections":[{"start":"x"}]}"#).is_err());
    }

    #[test]
    fn a_version_1_state_migrates_with_no_section_edits() {
        let s = SavedState::from_bytes(
            br#"{"version":1,"video":"/v.mp4","prompt":"calm","params":[[1,7]],"cache_key":"k"}"#,
        )
        .unwrap();
        assert_eq!(s.video.as_deref(), Some(std::path::Path::new("/v.mp4")));
        assert_eq!(s.prompt, "calm");
        assert!(s.sections.is_empty());
        let v = ParamValues::default();
        s.apply(&v);
        assert_eq!(v.get(ParamId::Seed), 7.0);
        // Saved again, it is a version 2 state.
        assert!(!s.video_override && s.section_seeds == 0);
        let again = SavedState::capture(&v, s.video, s.prompt, s.cache_key, None, Edits::default());
        assert_eq!(again.version, STATE_VERSION);
        assert_eq!(STATE_VERSION, 2);
        assert_eq!(s.device, DeviceChoice::Auto);
    }

    #[test]
    fn the_device_is_saved_and_one_unknown_reads_as_auto() {
        let v = ParamValues::default();
        let edits = Edits {
            device: DeviceChoice::Cuda(1),
            ..Edits::default()
        };
        let s = SavedState::capture(&v, None, String::new(), None, None, edits);
        let text = String::from_utf8(s.to_bytes()).unwrap();
        assert!(text.contains(r#""device": "cuda:1""#), "{text}");
        assert_eq!(
            SavedState::from_bytes(text.as_bytes()).unwrap().device,
            DeviceChoice::Cuda(1)
        );
        // A device a later build knows, or junk, keeps the rest of the state.
        for odd in [r#""metal:0""#, "7", "null", r#"{"x":1}"#] {
            let bytes = format!(r#"{{"version":2,"prompt":"calm","device":{odd}}}"#);
            let s = SavedState::from_bytes(bytes.as_bytes()).unwrap();
            assert_eq!(
                (s.device, s.prompt.as_str()),
                (DeviceChoice::Auto, "calm"),
                "{odd}"
            );
        }
    }
}
