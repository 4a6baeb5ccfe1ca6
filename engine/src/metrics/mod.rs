//! Rhythm metrics: an onset detector, the Beat Coverage / Beat Hit scores of
//! LORIS (Yu et al., 2023), and the share of video cuts the music hits.

mod beats;
mod onset;

pub use beats::{BeatScores, beat_scores, cut_hit_rate};
pub use onset::{OnsetConfig, detect_onsets, onset_envelope};
