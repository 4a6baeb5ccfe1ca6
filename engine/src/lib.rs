//! VidMusician engine: everything but the host glue.
//!
//! - [`video`]: probe, decode and sample frames (FFmpeg); mux music into a copy.
//! - [`analysis`]: the hierarchical visual features of the VidMusician method
//!   (global at 1 fps, patch-level at 25 fps), the rhythm curve, cuts, tempo.
//! - [`sketch`]: the embedded composer, driven by the analysis, no weights.
//! - [`audio`]: WAV, resampling, loudness.
//! - [`metrics`]: onsets, Beat Coverage / Beat Hit, cut hit rate.
//! - [`align`]: generated music's beats moved onto the tempo grid and the
//!   cuts by a pitch-keeping time warp.
//! - [`neural`]: MusicGen on candle, loading Hugging Face checkpoints.
//! - [`train`]: training the adapters of the VidMusician method.
//! - [`service`]: the engine thread that the CLI and the plugin both drive.

pub mod align;
pub mod analysis;
pub mod audio;
pub mod edit;
pub mod error;
pub mod metrics;
pub mod neural;
pub mod service;
pub mod sketch;
pub mod train;
pub mod video;

pub use error::{Error, Result};
