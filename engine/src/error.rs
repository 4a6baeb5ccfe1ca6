//! Typed errors of the engine. Each variant carries what a user needs to act:
//! which file, what was found, what was expected.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: no such file", .0.display())]
    NotFound(PathBuf),
    #[error("{}: the file is empty (0 bytes)", .0.display())]
    EmptyFile(PathBuf),
    #[error("{}: cannot read: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{}: not a readable video: the file is corrupt, truncated or of an unknown format (FFmpeg: {reason})",
        path.display()
    )]
    Unreadable { path: PathBuf, reason: String },
    #[error("{}: has no video stream (audio-only or data file); VidMusician needs a video", .0.display())]
    NoVideoStream(PathBuf),
    #[error("{}: is a still image ({format}), not a video", path.display())]
    StillImage { path: PathBuf, format: String },
    #[error("{}: the video has no frames (zero length)", .0.display())]
    EmptyVideo(PathBuf),
    #[error(
        "{}: the video is {width}×{height} pixels; at least {min}×{min} is needed to analyse it",
        path.display()
    )]
    TooSmall {
        path: PathBuf,
        width: u32,
        height: u32,
        min: u32,
    },
    #[error(
        "{}: the video stops at {decoded:.2} s but its header says {declared:.2} s: the file looks truncated",
        path.display()
    )]
    Truncated {
        path: PathBuf,
        decoded: f64,
        declared: f64,
    },
    #[error("{}: cannot decode the video stream ({codec}): {reason}", path.display())]
    Decode {
        path: PathBuf,
        codec: String,
        reason: String,
    },
    #[error(
        "{}: cannot decode the video's sound ({codec}): {reason}; `--audio replace` leaves it out",
        path.display()
    )]
    SoundDecode {
        path: PathBuf,
        codec: String,
        reason: String,
    },
    #[error(
        "{}: the file is damaged: {undecodable} of its {frames} frames ({:.0}%) could not be decoded; at least {min_percent}% must decode to score the video",
        path.display(),
        *undecodable as f64 * 100.0 / (*frames).max(1) as f64
    )]
    Damaged {
        path: PathBuf,
        undecodable: usize,
        frames: usize,
        min_percent: u32,
    },
    #[error("{}: cannot write: {reason}", path.display())]
    Output { path: PathBuf, reason: String },
    #[error(
        "{}: not a WAV file{}; VidMusician reads music as WAV (convert it first, e.g. `ffmpeg -i {} music.wav`)",
        path.display(),
        looks_like.map(|k| format!(" (it looks like {k})")).unwrap_or_default(),
        path.display()
    )]
    NotWav {
        path: PathBuf,
        /// What the file looks like instead, when its first bytes say so.
        looks_like: Option<&'static str>,
    },
    #[error("{}: the WAV file is damaged: {reason}", path.display())]
    BadWav { path: PathBuf, reason: String },
    #[error("invalid setting: {0}")]
    InvalidSetting(String),
    /// The network, not the request, failed: the user should check the
    /// connection (or `$HF_ENDPOINT`) and try again.
    #[error("network failure: cannot reach {endpoint} to download {what}: {reason}")]
    Network {
        endpoint: String,
        what: String,
        reason: String,
    },
    /// The server answered, but not with what was asked for.
    #[error("the download of {what} from {endpoint} failed: {reason}")]
    Download {
        endpoint: String,
        what: String,
        reason: String,
    },
    #[error("cancelled")]
    Cancelled,
    #[error("the engine thread has stopped")]
    EngineGone,
    #[error("{}: {reason}", path.display())]
    ModelFile { path: PathBuf, reason: String },
    #[error("{}: the model has no tensor `{name}`", path.display())]
    MissingTensor { path: PathBuf, name: String },
    #[error("{}: tensor `{name}` has shape {found:?}, expected {expected:?}", path.display())]
    TensorShape {
        path: PathBuf,
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("no {model} model is installed (looked in: {searched}); {hint}")]
    NoModel {
        model: String,
        searched: String,
        hint: String,
    },
    #[error("neural engine: {0}")]
    Tensor(#[from] candle_core::Error),
    #[error("device {device}: {reason}")]
    Device { device: String, reason: String },
    /// A vocabulary file the zero-shot engine cannot use.
    #[error(
        "{origin}{}: {reason}",
        if *line > 0 { format!(" line {line}") } else { String::new() }
    )]
    Vocabulary {
        origin: String,
        line: usize,
        reason: String,
    },
    /// A cut list with a cut after the video ends belongs to another video
    /// (or another version of this one).
    #[error(
        "{list}: a cut at {time:.3} s is past the end of the video ({end:.3} s); is it the cut list of {}?",
        video.display()
    )]
    CutPastEnd {
        list: String,
        time: f64,
        end: f64,
        video: PathBuf,
    },
    /// The user's cut list could not be read; the message names the file
    /// and the place in it.
    #[error(transparent)]
    Edit(#[from] crate::edit::EditError),
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// An I/O error while opening `path`: a missing file gets its own
    /// variant, so the message says so plainly.
    pub(crate) fn opening(path: &std::path::Path, e: std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::NotFound(path.to_path_buf())
        } else {
            Error::io(path, e)
        }
    }

    pub(crate) fn model_file(path: impl Into<PathBuf>, reason: impl std::fmt::Display) -> Self {
        Error::ModelFile {
            path: path.into(),
            reason: reason.to_string(),
        }
    }

    pub(crate) fn output(path: impl Into<PathBuf>, reason: impl std::fmt::Display) -> Self {
        Error::Output {
            path: path.into(),
            reason: reason.to_string(),
        }
    }
}
