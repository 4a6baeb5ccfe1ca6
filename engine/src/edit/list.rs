//! A plain list of cut times (`.csv`, `.txt`): one time per line, in the
//! first column (columns separated by `,`, `;` or tabs).
//!
//! A time is seconds (`12.5`), `MM:SS.sss`, `HH:MM:SS.sss`, or a timecode
//! `HH:MM:SS:FF` (frames at `fps_hint`; refused without one). Blank lines and
//! `#` comments are skipped; the first line may be a header (any text that is
//! not a time, such as `time,label`).

use std::path::Path;

use super::timecode::{self, Rate};
use super::{EditError, Location};

/// Whether every content line (but a header) starts with something that reads as a time.
pub fn looks_like(text: &str) -> bool {
    let mut any = false;
    let lines = text.lines().map(content).filter(|l| !l.is_empty());
    for (i, line) in lines.take(20).enumerate() {
        match clock_or_tc(first_column(line), Some(25.0)) {
            Ok(_) => any = true,
            // The first line may be a header.
            Err(_) if i == 0 => {}
            Err(_) => return false,
        }
    }
    any
}

fn content(line: &str) -> &str {
    line.split('#').next().unwrap_or("").trim()
}

fn first_column(line: &str) -> &str {
    line.split([',', ';', '\t'])
        .next()
        .unwrap_or("")
        .trim()
        .trim_matches('"')
}

fn clock_or_tc(field: &str, fps_hint: Option<f64>) -> Result<f64, String> {
    if field.matches(':').count() == 3 {
        let fps = fps_hint.ok_or_else(|| {
            format!("{field} is a timecode (HH:MM:SS:FF): give the frame rate to read it")
        })?;
        let rate = Rate::from_fps(fps)?;
        return timecode::smpte_seconds(field, rate, false);
    }
    timecode::clock_seconds(field)
}

/// The times listed, in seconds.
pub fn parse(path: &Path, text: &str, fps_hint: Option<f64>) -> Result<Vec<f64>, EditError> {
    let mut cuts = Vec::new();
    let mut first = true;
    for (i, raw) in text.lines().enumerate() {
        let line = content(raw);
        if line.is_empty() {
            continue;
        }
        let field = first_column(line);
        let header = std::mem::replace(&mut first, false);
        match clock_or_tc(field, fps_hint) {
            Ok(t) => cuts.push(t),
            Err(_) if header && field.bytes().any(|b| b.is_ascii_alphabetic()) => {}
            Err(m) => return Err(EditError::invalid(path, Location::Line(i + 1), m)),
        }
    }
    Ok(cuts)
}
