//! Time signatures: how many pulses a bar has, how long a pulse is, and
//! which pulses carry the weight.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A time signature, `beats`/`unit` (3/4, 6/8, 7/8…). Tempos are in quarter
/// notes per minute, as hosts give them, so a pulse lasts `4 / unit` quarters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Meter {
    pub beats: u8,
    pub unit: u8,
}

impl Default for Meter {
    fn default() -> Self {
        Self::COMMON
    }
}

impl Meter {
    pub const COMMON: Meter = Meter { beats: 4, unit: 4 };

    /// A meter the composer can write: 1–16 pulses of a whole, half,
    /// quarter, eighth or sixteenth note.
    pub fn new(beats: u32, unit: u32) -> Result<Self> {
        Self::checked(beats, unit).ok_or_else(|| {
            Error::InvalidSetting(format!(
                "time signature {beats}/{unit} (expected 1–16 beats of 1, 2, 4, 8 or 16)"
            ))
        })
    }

    /// [`Meter::new`] without the error message: it never allocates, so a
    /// real-time thread can check a host's signature with it.
    pub fn checked(beats: u32, unit: u32) -> Option<Self> {
        ((1..=16).contains(&beats) && [1, 2, 4, 8, 16].contains(&unit)).then_some(Self {
            beats: beats as u8,
            unit: unit as u8,
        })
    }

    /// Reads "3/4".
    pub fn parse(text: &str) -> Result<Self> {
        let bad = || Error::InvalidSetting(format!("time signature {text:?} (expected e.g. 3/4)"));
        let (b, u) = text.trim().split_once('/').ok_or_else(bad)?;
        let b = b.trim().parse().map_err(|_| bad())?;
        let u = u.trim().parse().map_err(|_| bad())?;
        Self::new(b, u)
    }

    /// Seconds per pulse at `bpm` quarter notes per minute.
    pub fn pulse(&self, bpm: f64) -> f64 {
        60.0 / bpm * 4.0 / f64::from(self.unit)
    }

    /// Seconds per bar at `bpm` quarter notes per minute.
    pub fn bar(&self, bpm: f64) -> f64 {
        self.pulse(bpm) * f64::from(self.beats)
    }

    /// Compound meters (6/8, 9/8, 12/8) are felt in groups of three fast
    /// pulses; the others in pulses.
    pub fn compound(&self) -> bool {
        self.unit >= 8 && self.beats > 3 && self.beats.is_multiple_of(3)
    }

    /// The groups a bar's pulses fall into: threes in compound meters,
    /// otherwise twos with a three closing an odd bar (5 = 2+3, 7 = 2+2+3).
    /// Each group starts with a strong pulse.
    pub fn groups(&self) -> Vec<u8> {
        let n = self.beats;
        if self.compound() {
            return vec![3; usize::from(n / 3)];
        }
        match n {
            1..=3 => vec![n],
            _ => {
                let mut g = vec![2; usize::from(n / 2)];
                if n % 2 == 1
                    && let Some(last) = g.last_mut()
                {
                    *last = 3;
                }
                g
            }
        }
    }

    /// For each pulse of a bar: (index of its group, position within it,
    /// length of the group).
    pub fn places(&self) -> Vec<(usize, u8, u8)> {
        self.groups()
            .into_iter()
            .enumerate()
            .flat_map(|(i, len)| (0..len).map(move |pos| (i, pos, len)))
            .collect()
    }
}

impl std::fmt::Display for Meter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.beats, self.unit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_cover_the_bar() {
        for unit in [1, 2, 4, 8, 16] {
            for beats in 1..=16 {
                let m = Meter::new(beats, unit).unwrap();
                let g = m.groups();
                assert_eq!(g.iter().map(|&x| u32::from(x)).sum::<u32>(), beats, "{m}");
                assert!(g.iter().all(|&x| (1..=3).contains(&x)), "{m}: {g:?}");
                let places = m.places();
                assert_eq!(places.len(), beats as usize, "{m}");
                for (b, &(i, p, len)) in places.iter().enumerate() {
                    assert!(i < g.len() && p < len && g[i] == len);
                    // Pulses run through the groups in order.
                    let before: u8 = g[..i].iter().sum();
                    assert_eq!(usize::from(before + p), b, "{m}");
                }
            }
        }
        assert_eq!(Meter::parse("4/4").unwrap().groups(), vec![2, 2]);
        assert_eq!(Meter::parse("3/4").unwrap().groups(), vec![3]);
        assert_eq!(Meter::parse("6/8").unwrap().groups(), vec![3, 3]);
        assert_eq!(Meter::parse("7/8").unwrap().groups(), vec![2, 2, 3]);
        assert_eq!(Meter::parse(" 12 / 8 ").unwrap().groups(), vec![3, 3, 3, 3]);
    }

    #[test]
    fn lengths_are_in_quarter_notes() {
        let m = Meter::parse("6/8").unwrap();
        assert!((m.pulse(120.0) - 0.25).abs() < 1e-12);
        assert!((m.bar(120.0) - 1.5).abs() < 1e-12);
        assert!((Meter::COMMON.bar(120.0) - 2.0).abs() < 1e-12);
    }

    #[test]
    fn odd_signatures_are_refused() {
        for s in ["0/4", "17/4", "4/3", "4/0", "4", "a/b", "4/4/4", ""] {
            assert!(Meter::parse(s).is_err(), "{s}");
        }
    }
}
