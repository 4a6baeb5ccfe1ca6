//! What a text prompt asks of the embedded composer. The sketch engine has
//! no language model: it reads a few kinds of words (energy, mood, pace)
//! and leaves the rest to the picture.

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Style {
    /// −1 (calm) … 1 (driving): shifts the arrangement's intensity.
    pub energy: f32,
    /// Some(true) for minor, Some(false) for major, None: from the picture.
    pub minor: Option<bool>,
    /// BPM added to the preferred tempo when the engine picks it.
    pub tempo_shift: f64,
    /// Strength of the accents on cuts, 0–1.
    pub accents: f32,
}

impl Default for Style {
    fn default() -> Self {
        Self {
            energy: 0.0,
            minor: None,
            tempo_shift: 0.0,
            accents: 1.0,
        }
    }
}

const CALM: &[&str] = &[
    "calm",
    "gentle",
    "soft",
    "ambient",
    "relaxed",
    "relaxing",
    "peaceful",
    "quiet",
    "slow",
    "documentary",
    "meditative",
    "dreamy",
    "tender",
    "minimal",
];
const ENERGETIC: &[&str] = &[
    "energetic",
    "upbeat",
    "driving",
    "action",
    "hype",
    "intense",
    "fast",
    "promo",
    "sport",
    "sports",
    "drift",
    "powerful",
    "epic",
    "dance",
    "party",
    "aggressive",
    "high-energy",
];
const DARK: &[&str] = &[
    "dark",
    "sad",
    "tense",
    "melancholic",
    "moody",
    "sombre",
    "somber",
    "suspense",
    "minor",
    "eerie",
];
const BRIGHT: &[&str] = &[
    "bright",
    "happy",
    "uplifting",
    "cheerful",
    "joyful",
    "sunny",
    "positive",
    "major",
    "commercial",
    "playful",
];

impl Style {
    pub fn from_prompt(prompt: &str) -> Self {
        let words: Vec<String> = prompt
            .split(|c: char| !(c.is_alphanumeric() || c == '-'))
            .filter(|w| !w.is_empty())
            .map(str::to_lowercase)
            .collect();
        let count =
            |set: &[&str]| words.iter().filter(|w| set.contains(&w.as_str())).count() as f32;
        let (calm, energetic) = (count(CALM), count(ENERGETIC));
        let (dark, bright) = (count(DARK), count(BRIGHT));
        let energy = ((energetic - calm) / 2.0).clamp(-1.0, 1.0);
        Self {
            energy,
            minor: match dark.total_cmp(&bright) {
                std::cmp::Ordering::Greater => Some(true),
                std::cmp::Ordering::Less => Some(false),
                std::cmp::Ordering::Equal => None,
            },
            tempo_shift: f64::from(energy) * 25.0,
            accents: 1.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_energy_mood_and_pace() {
        let calm = Style::from_prompt("Calm, gentle documentary");
        assert_eq!(calm.energy, -1.0);
        assert!(calm.tempo_shift < 0.0);
        assert_eq!(calm.minor, None);
        let promo = Style::from_prompt("energetic upbeat promo, bright and happy");
        assert_eq!(promo.energy, 1.0);
        assert_eq!(promo.minor, Some(false));
        assert_eq!(Style::from_prompt("a dark, tense chase").minor, Some(true));
        assert_eq!(Style::from_prompt(""), Style::default());
        assert_eq!(Style::from_prompt("🎬 ∆∆∆ \u{0}"), Style::default());
    }
}
