//! Cut lists from the user's edit: the times (seconds from the start of the
//! edit) at which the picture cuts, read from the files editors export.
//!
//! - [`edl`]: CMX3600 EDL, drop-frame (`;`, `FCM: DROP FRAME`) and non-drop.
//! - [`otio`]: OpenTimelineIO `.otio` JSON (`Timeline.1` → `Stack.1` → `Track.1`).
//! - [`fcpxml`]: Final Cut Pro `.fcpxml` (the primary spine of the first project).
//! - [`list`]: a plain `.csv`/`.txt` list of times, one per line.
//!
//! [`read_cuts`] picks the format by extension, then by content. A cut at the
//! very start of the edit (time 0) is not a cut and is dropped; the rest are
//! sorted and deduplicated within [`DEDUP_S`].

pub mod edl;
pub mod fcpxml;
pub mod list;
pub mod otio;
pub mod timecode;

use std::fmt;
use std::path::{Path, PathBuf};

/// Cuts closer together than this (seconds) are one cut.
pub const DEDUP_S: f64 = 1e-3;

/// The format a cut list was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// CMX3600 edit decision list.
    Cmx3600,
    /// OpenTimelineIO JSON.
    Otio,
    /// Final Cut Pro XML (FCPXML).
    Fcpxml,
    /// A plain list of times (`.csv`, `.txt`).
    PlainList,
}

/// The cuts of an edit.
#[derive(Debug, Clone, PartialEq)]
pub struct CutList {
    /// Seconds from the start of the edit, sorted ascending, no two within
    /// [`DEDUP_S`] of each other, all > 0.
    pub cuts: Vec<f64>,
    /// Where they came from.
    pub source: Format,
}

/// Where in a file a problem was found.
#[derive(Debug, Clone, PartialEq)]
pub enum Location {
    /// A 1-based line of a text file.
    Line(usize),
    /// An XML element, and the 1-based line it starts on.
    Element { name: String, line: usize },
    /// A JSON path such as `$.tracks.children[0].children[3]`.
    JsonPath(String),
    /// The file as a whole.
    File,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Line(n) => write!(f, " line {n}"),
            Location::Element { name, line } => write!(f, " element <{name}> (line {line})"),
            Location::JsonPath(p) => write!(f, " at {p}"),
            Location::File => Ok(()),
        }
    }
}

/// Why a cut list could not be read. Each names the file and, for content
/// errors, the line, element or JSON path at fault.
#[derive(Debug, thiserror::Error)]
pub enum EditError {
    #[error("{}: cannot read: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{}: not a cut list VidMusician reads (expected a CMX3600 .edl, an .otio, an .fcpxml, or a .csv/.txt list of times)",
        path.display()
    )]
    UnknownFormat { path: PathBuf },
    #[error("{}{at}: {message}", path.display())]
    Invalid {
        path: PathBuf,
        at: Location,
        message: String,
    },
}

impl EditError {
    pub(crate) fn invalid(path: &Path, at: Location, message: impl Into<String>) -> Self {
        EditError::Invalid {
            path: path.to_path_buf(),
            at,
            message: message.into(),
        }
    }
}

/// Reads the cuts of the edit at `path`.
///
/// The format is chosen by extension (`.edl`, `.otio`, `.fcpxml`, `.xml`
/// holding FCPXML, `.csv`, `.txt`; an `.fcpxmld` bundle is read through its
/// `Info.fcpxml`), and by content when the extension is missing or unknown.
/// `fps_hint` is the frame rate of non-drop timecodes (EDL, and `HH:MM:SS:FF`
/// in a plain list); see [`edl`] for the default.
pub fn read_cuts(path: &Path, fps_hint: Option<f64>) -> Result<CutList, EditError> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    let file = if ext == "fcpxmld" && path.is_dir() {
        path.join("Info.fcpxml")
    } else {
        path.to_path_buf()
    };
    let text = std::fs::read_to_string(&file).map_err(|source| EditError::Io {
        path: file.clone(),
        source,
    })?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let format = match ext.as_str() {
        "edl" => Format::Cmx3600,
        "otio" => Format::Otio,
        "fcpxml" | "fcpxmld" => Format::Fcpxml,
        "csv" => Format::PlainList,
        "txt" if edl::looks_like(text) => Format::Cmx3600,
        "txt" => Format::PlainList,
        _ => sniff(text).ok_or_else(|| EditError::UnknownFormat { path: file.clone() })?,
    };
    let raw = match format {
        Format::Cmx3600 => edl::parse(&file, text, fps_hint)?,
        Format::Otio => otio::parse(&file, text)?,
        Format::Fcpxml => fcpxml::parse(&file, text)?,
        Format::PlainList => list::parse(&file, text, fps_hint)?,
    };
    Ok(CutList {
        cuts: normalize(raw),
        source: format,
    })
}

/// Guesses the format from the content alone.
fn sniff(text: &str) -> Option<Format> {
    let head = text.trim_start();
    if head.starts_with('{') {
        Some(Format::Otio)
    } else if head.starts_with('<') {
        text.contains("<fcpxml").then_some(Format::Fcpxml)
    } else if edl::looks_like(text) {
        Some(Format::Cmx3600)
    } else if list::looks_like(text) {
        Some(Format::PlainList)
    } else {
        None
    }
}

/// Sorts, drops cuts at or before the start, and merges cuts within [`DEDUP_S`].
pub fn normalize(mut cuts: Vec<f64>) -> Vec<f64> {
    cuts.retain(|t| t.is_finite() && *t >= DEDUP_S);
    cuts.sort_by(f64::total_cmp);
    let mut out: Vec<f64> = Vec::with_capacity(cuts.len());
    for t in cuts {
        match out.last() {
            Some(last) if t - last < DEDUP_S => {}
            _ => out.push(t),
        }
    }
    out
}
