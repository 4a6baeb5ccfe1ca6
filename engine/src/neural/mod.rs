//! The neural engine: MusicGen (T5 text encoder, transformer decoder over EnCodec
//! codes, EnCodec decoder) running on candle, loading Hugging Face checkpoints.
//!
//! - [`weights`]: named, shape-checked tensors from safetensors files.
//! - [`config`]: `config.json` / `generation_config.json` as transformers writes them.
//! - [`t5`], [`decoder`], [`encodec`]: the three networks.
//! - [`encodec_encoder`]: EnCodec's encoder, audio to the codes MusicGen reads.
//! - [`generate`]: the delay pattern, guidance and sampling.
//! - [`device`]: where the networks run (the CPU, or CUDA in a `cuda` build).
//! - [`helper`]: the GPU helper process a CPU build reaches CUDA through.
//! - [`model`]: a whole checkpoint, text in, audio out.
//! - [`models`]: other pretrained networks (CLIP).

pub mod bench;
pub mod conditioning;
pub mod config;
pub mod decoder;
pub mod device;
pub mod encodec;
pub mod encodec_encoder;
pub mod generate;
pub mod helper;
pub mod hub;
pub mod kernels;
pub mod model;
pub mod models;
pub mod nn;
pub mod pool;
pub mod t5;
pub mod weights;

pub use decoder::Precision;
pub use generate::{Frames, Progress, Sampling};
pub use model::{Cross, GenerationProgress, MusicGen, PromptSchedule, WindowInput, WindowSpan};
