//! Parameters as data: stable ids, ranges, defaults and formatting declared
//! once; values shared across threads as atomics.

use std::sync::atomic::{AtomicU64, Ordering};

use vidmusician_engine::service::EngineChoice;

/// Stable parameter ids: saved by hosts in projects and automation, so an
/// id is never reused or renumbered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum ParamId {
    Gain = 0,
    Seed = 1,
    VideoOffset = 2,
    Engine = 3,
    FollowTempo = 4,
    RhythmStrength = 5,
    Guidance = 6,
    SemanticStrength = 7,
    Regenerate = 8,
}

pub struct ParamSpec {
    pub id: ParamId,
    pub name: &'static str,
    pub min: f64,
    pub max: f64,
    pub default: f64,
    /// Integer steps (seed, engine choice).
    pub stepped: bool,
    pub unit: &'static str,
    /// Changing it needs new music (not just a different playback).
    pub regenerates: bool,
}

pub const PARAMS: [ParamSpec; 9] = [
    ParamSpec {
        id: ParamId::Gain,
        name: "Output gain",
        min: -60.0,
        max: 12.0,
        default: 0.0,
        stepped: false,
        unit: "dB",
        regenerates: false,
    },
    ParamSpec {
        id: ParamId::Seed,
        name: "Seed",
        min: 0.0,
        max: 9999.0,
        default: 0.0,
        stepped: true,
        unit: "",
        regenerates: true,
    },
    ParamSpec {
        id: ParamId::VideoOffset,
        name: "Video offset",
        min: -3600.0,
        max: 3600.0,
        default: 0.0,
        stepped: false,
        unit: "s",
        regenerates: false,
    },
    ParamSpec {
        id: ParamId::Engine,
        name: "Engine",
        min: 0.0,
        max: (EngineChoice::ALL.len() - 1) as f64,
        default: 0.0,
        stepped: true,
        unit: "",
        regenerates: true,
    },
    ParamSpec {
        id: ParamId::FollowTempo,
        name: "Follow host tempo",
        min: 0.0,
        max: 1.0,
        default: 1.0,
        stepped: true,
        unit: "",
        regenerates: true,
    },
    ParamSpec {
        id: ParamId::RhythmStrength,
        name: "Rhythm strength",
        min: 0.0,
        max: 1.0,
        default: 1.0,
        stepped: false,
        unit: "",
        regenerates: true,
    },
    // Classifier-free guidance of the neural engines: how closely the music
    // follows its conditioning (MusicGen's default is 3).
    ParamSpec {
        id: ParamId::Guidance,
        name: "Guidance",
        min: 1.0,
        max: 10.0,
        default: 3.0,
        stepped: false,
        unit: "",
        regenerates: true,
    },
    ParamSpec {
        id: ParamId::SemanticStrength,
        name: "Semantic strength",
        min: 0.0,
        max: 1.0,
        default: 1.0,
        stepped: false,
        unit: "",
        regenerates: true,
    },
    // A button: setting it makes a new take with the next seed, and it
    // springs back to 0.
    ParamSpec {
        id: ParamId::Regenerate,
        name: "Regenerate",
        min: 0.0,
        max: 1.0,
        default: 0.0,
        stepped: true,
        unit: "",
        regenerates: false,
    },
];

impl ParamSpec {
    pub fn by_id(id: u32) -> Option<&'static ParamSpec> {
        PARAMS.iter().find(|p| p.id as u32 == id)
    }

    /// Clamps (and rounds, when stepped) a host value into range; a NaN
    /// becomes the default.
    pub fn sanitize(&self, v: f64) -> f64 {
        if !v.is_finite() {
            return self.default;
        }
        let v = v.clamp(self.min, self.max);
        if self.stepped { v.round() } else { v }
    }

    pub fn format(&self, v: f64) -> String {
        match self.id {
            ParamId::Engine => EngineChoice::from_index(v.round() as usize)
                .map_or("?", EngineChoice::as_str)
                .to_string(),
            ParamId::Seed => format!("{}", v.round() as i64),
            ParamId::FollowTempo => (if v >= 0.5 { "on" } else { "off" }).to_string(),
            ParamId::Regenerate => (if v >= 0.5 { "now" } else { "-" }).to_string(),
            _ if self.unit.is_empty() => format!("{v:.2}"),
            _ => format!("{v:.2} {}", self.unit),
        }
    }

    pub fn parse(&self, text: &str) -> Option<f64> {
        let t = text.trim();
        if self.id == ParamId::Engine {
            return t.parse::<EngineChoice>().ok().map(|e| e.index() as f64);
        }
        if matches!(self.id, ParamId::FollowTempo | ParamId::Regenerate) {
            return match t.to_ascii_lowercase().as_str() {
                "on" | "now" | "1" => Some(1.0),
                "off" | "-" | "0" => Some(0.0),
                _ => None,
            };
        }
        let t = t.strip_suffix(self.unit).unwrap_or(t).trim();
        t.parse::<f64>().ok().map(|v| self.sanitize(v))
    }
}

/// Current parameter values. Written by the audio thread (automation
/// events) and the main thread (flush, state load); read by both. Each value
/// is one f64 in an atomic, so no lock is ever taken.
pub struct ParamValues {
    values: [AtomicU64; PARAMS.len()],
}

impl Default for ParamValues {
    fn default() -> Self {
        Self {
            values: PARAMS.map(|p| AtomicU64::new(p.default.to_bits())),
        }
    }
}

impl ParamValues {
    pub fn get(&self, id: ParamId) -> f64 {
        f64::from_bits(self.values[id as usize].load(Ordering::Relaxed))
    }

    /// Stores a sanitised value; returns true when it changed.
    pub fn set(&self, id: ParamId, v: f64) -> bool {
        let spec = &PARAMS[id as usize];
        let v = spec.sanitize(v).to_bits();
        self.values[id as usize].swap(v, Ordering::Relaxed) != v
    }

    /// Moves the seed on by one (wrapping within its range) and returns it:
    /// what the Regenerate button does.
    pub fn next_seed(&self) -> f64 {
        let spec = &PARAMS[ParamId::Seed as usize];
        let next = self.get(ParamId::Seed) + 1.0;
        let next = if next > spec.max { spec.min } else { next };
        self.set(ParamId::Seed, next);
        next
    }

    pub fn reset(&self) {
        for p in &PARAMS {
            self.set(p.id, p.default);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_index_the_table() {
        for (i, p) in PARAMS.iter().enumerate() {
            assert_eq!(p.id as usize, i);
            assert!(p.min <= p.default && p.default <= p.max);
        }
    }

    #[test]
    fn hostile_values_are_sanitised() {
        let v = ParamValues::default();
        v.set(ParamId::Gain, f64::NAN);
        assert_eq!(v.get(ParamId::Gain), 0.0);
        v.set(ParamId::Gain, 1e9);
        assert_eq!(v.get(ParamId::Gain), 12.0);
        v.set(ParamId::Seed, 3.7);
        assert_eq!(v.get(ParamId::Seed), 4.0);
        let engine = ParamSpec::by_id(ParamId::Engine as u32).unwrap();
        assert_eq!(engine.parse("Sketch"), Some(1.0));
        assert_eq!(engine.format(1.0), "sketch");
        let gain = ParamSpec::by_id(0).unwrap();
        assert_eq!(gain.parse("-6 dB"), Some(-6.0));
        assert_eq!(engine.parse("text"), Some(2.0));
        assert_eq!(engine.parse("neural"), None);
    }

    #[test]
    fn the_seed_moves_on_and_wraps() {
        let v = ParamValues::default();
        assert_eq!(v.next_seed(), 1.0);
        v.set(ParamId::Seed, 9999.0);
        assert_eq!(v.next_seed(), 0.0);
        assert_eq!(v.get(ParamId::Seed), 0.0);
    }
}
