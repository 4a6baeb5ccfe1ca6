//! VidMusician as a CLAP plugin (and VST3 through clap-wrapper).
//!
//! The host glue lives here; all model and composition code lives in
//! `vidmusician-engine`, which this crate drives through its service API.

pub use vidmusician_engine::service;
