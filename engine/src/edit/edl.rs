//! CMX3600 edit decision lists.
//!
//! Event lines read `NNN  REEL  CHANNEL  TRANS [DUR]  SRC_IN SRC_OUT REC_IN REC_OUT`.
//! The cuts are the record-in times of the video events (channel `V`, `B`,
//! `AA/V`, …) after the first, relative to the first one's record-in; a
//! dissolve, wipe or key gives an edit point at its record-in like a cut.
//! Audio-only events (`A`, `A2`, `AA`) are not picture cuts and are skipped.
//! Comment lines (`*`), `TITLE:`, `M2`, `SPLIT:` and other notes are ignored.
//!
//! Frame rate: `FCM: DROP FRAME`, or a `;` in a timecode, means 29.97
//! drop-frame. Otherwise (`FCM: NON-DROP FRAME` or no `FCM:` line) timecodes
//! count frames at `fps_hint` (e.g. 24, 25, 30, 23.976, 29.97); **without a
//! hint the default is 25 fps**, and a frame number of 25 or more is refused
//! with a message asking for the frame rate.

use std::path::Path;

use super::timecode::{self, Rate};
use super::{EditError, Location};

/// The frame rate of non-drop timecodes when the caller gives none.
pub const DEFAULT_FPS: f64 = 25.0;

/// Whether `text` reads like an EDL (a `TITLE:` or `FCM:` header, or an event line).
pub fn looks_like(text: &str) -> bool {
    text.lines().take(50).any(|l| {
        let l = l.trim_start();
        l.starts_with("TITLE:")
            || l.starts_with("FCM:")
            || event_fields(l).is_some_and(|f| f.len() >= 8)
    })
}

/// The fields of an event line, or `None` for any other line.
fn event_fields(line: &str) -> Option<Vec<&str>> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let first = fields.first()?;
    (first.len() >= 3 && first.bytes().all(|b| b.is_ascii_digit())).then_some(fields)
}

/// Whether a channel field carries picture.
fn is_video(channel: &str) -> bool {
    let c = channel.to_ascii_uppercase();
    c == "B" || c.contains('V')
}

/// Record-in times of the video events, in seconds from the earliest one.
pub fn parse(path: &Path, text: &str, fps_hint: Option<f64>) -> Result<Vec<f64>, EditError> {
    let rate = Rate::from_fps(fps_hint.unwrap_or(DEFAULT_FPS))
        .map_err(|m| EditError::invalid(path, Location::File, m))?;
    let mut drop_frame = false;
    let mut rec_ins = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let at = || Location::Line(i + 1);
        let line = raw.trim();
        if let Some(mode) = line.strip_prefix("FCM:") {
            let mode = mode.trim().to_ascii_uppercase();
            drop_frame = match mode.as_str() {
                "DROP FRAME" => true,
                "NON-DROP FRAME" | "NON DROP FRAME" => false,
                _ => {
                    return Err(EditError::invalid(
                        path,
                        at(),
                        format!(
                            "unknown frame code mode {mode:?} (expected DROP FRAME or NON-DROP FRAME)"
                        ),
                    ));
                }
            };
            continue;
        }
        let Some(fields) = event_fields(line) else {
            continue;
        };
        // NNN REEL CHANNEL TRANS [DUR] + four timecodes.
        if fields.len() < 8 {
            return Err(EditError::invalid(
                path,
                at(),
                format!(
                    "event {} has {} fields; expected NNN REEL CHANNEL TRANS SRC_IN SRC_OUT REC_IN REC_OUT",
                    fields[0],
                    fields.len()
                ),
            ));
        }
        let tcs = &fields[fields.len() - 4..];
        let mut secs = [0.0; 4];
        for (s, tc) in secs.iter_mut().zip(tcs) {
            *s = timecode::smpte_seconds(tc, rate, drop_frame)
                .map_err(|m| EditError::invalid(path, at(), m))?;
        }
        let rec_in = secs[2];
        if secs[3] < rec_in {
            return Err(EditError::invalid(
                path,
                at(),
                format!("record out {} is before record in {}", tcs[3], tcs[2]),
            ));
        }
        if !is_video(fields[2]) {
            continue;
        }
        rec_ins.push(rec_in);
    }
    // The edit starts at the earliest record-in (the first event's, in a
    // list sorted by record time as NLEs write them).
    let origin = rec_ins.iter().copied().fold(f64::INFINITY, f64::min);
    Ok(rec_ins.into_iter().map(|t| t - origin).collect())
}
