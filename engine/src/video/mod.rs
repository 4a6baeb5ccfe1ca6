//! Video ingest on the system FFmpeg (ffmpeg-next): probe, decode, sample
//! frames at exact rates, scale to a square model input; writing synthetic
//! videos and muxing music into a copy of a video.

mod decode;
mod mux;
mod probe;
pub mod synth;

pub use decode::{
    AlsoAt, Fit, Frame, MIN_DECODED_SHARE, SampleOptions, frames_at, sample_frames,
    sample_frames_also,
};
pub use mux::{
    DEFAULT_MUSIC_GAIN_DB, MIX_CEILING_DB, MuxOptions, MuxReport, SoundMode, check_mux_output,
    check_mux_sound, mux_audio, read_sound,
};
pub use probe::{VideoInfo, probe};

use std::sync::Once;

/// Smallest frame side the analysis accepts: below this a 7×7 patch grid
/// holds less than one pixel per patch and the features mean nothing.
pub const MIN_SIDE: u32 = 16;

/// Side of the square model input (CLIP's 224).
pub const MODEL_SIDE: u32 = 224;

/// CLIP's image normalisation (mean, std per RGB channel).
pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_6, 0.275_777_1];

pub(crate) fn init() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        // PANIC-free: init only fails on FFmpeg builds without any formats,
        // and then every later open fails with a clear error anyway.
        let _ = ffmpeg_next::init();
        ffmpeg_next::util::log::set_level(ffmpeg_next::util::log::Level::Fatal);
    });
}

/// A count in words, as the summaries and the plot say it: "no cuts",
/// "1 cut", "3 cuts".
pub fn count(n: usize, one: &str, many: &str) -> String {
    match n {
        0 => format!("no {many}"),
        1 => format!("1 {one}"),
        n => format!("{n} {many}"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn counts_are_said_in_words() {
        assert_eq!(super::count(0, "cut", "cuts"), "no cuts");
        assert_eq!(super::count(1, "cut", "cuts"), "1 cut");
        assert_eq!(super::count(3, "cut", "cuts"), "3 cuts");
    }
}
