//! Pretrained networks, one folder or file per model, each mirroring its checkpoint.

pub mod clip;
pub mod musicgen;
