//! Final Cut Pro XML (`.fcpxml`).
//!
//! Reads the primary storyline: the `spine` of the first `sequence` (the
//! first project's). Its direct `asset-clip`, `clip`, `gap`, `ref-clip`,
//! `sync-clip`, `mc-clip`, `video` and `title` children are the segments of
//! the edit; each one's `offset` (a rational time such as `3003/30000s` or
//! `5s`) is a cut, except the first one's, which is the start of the edit.
//! Transitions, audio and connected clips (in lanes, nested inside spine
//! items) are not picture cuts of the primary storyline and are skipped. A
//! spine item without `offset` starts where the previous one ended.

use std::path::Path;

use quick_xml::Reader;
use quick_xml::events::{BytesStart, Event};

use super::{EditError, Location};

/// The spine children that are segments of the picture.
const SEGMENTS: &[&str] = &[
    "asset-clip",
    "clip",
    "gap",
    "ref-clip",
    "sync-clip",
    "mc-clip",
    "video",
    "title",
];

/// Cut times (seconds from the start of the spine).
pub fn parse(path: &Path, text: &str) -> Result<Vec<f64>, EditError> {
    let line_at = |pos: u64| {
        let pos = usize::try_from(pos).unwrap_or(usize::MAX).min(text.len());
        text.as_bytes()[..pos]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1
    };
    let mut reader = Reader::from_str(text);
    let mut stack: Vec<String> = Vec::new();
    let mut spine_depth: Option<usize> = None;
    let mut saw_root = false;
    // (offset, duration) of each segment.
    let mut starts: Vec<f64> = Vec::new();
    let mut prev_end: Option<f64> = None;
    loop {
        let pos = reader.buffer_position();
        let event = reader.read_event().map_err(|e| {
            EditError::invalid(
                path,
                Location::Line(line_at(reader.error_position())),
                format!("not well-formed XML: {e}"),
            )
        })?;
        let (e, empty) = match &event {
            Event::Start(e) => (e, false),
            Event::Empty(e) => (e, true),
            Event::End(_) => {
                stack.pop();
                if spine_depth.is_some_and(|d| stack.len() == d) {
                    break;
                }
                continue;
            }
            Event::Eof => break,
            _ => continue,
        };
        let name = String::from_utf8_lossy(e.name().as_ref()).into_owned();
        if !saw_root {
            if name != "fcpxml" {
                return Err(EditError::invalid(
                    path,
                    Location::Element {
                        name,
                        line: line_at(pos),
                    },
                    "the root element is not <fcpxml>",
                ));
            }
            saw_root = true;
        }
        let depth = stack.len();
        match spine_depth {
            None if name == "spine" && stack.last().is_some_and(|p| p == "sequence") => {
                spine_depth = Some(depth);
                if empty {
                    break;
                }
            }
            Some(d) if depth == d + 1 && SEGMENTS.contains(&name.as_str()) => {
                let at = || Location::Element {
                    name: name.clone(),
                    line: line_at(pos),
                };
                let offset = attr_time(path, e, "offset", &at)?;
                let duration = attr_time(path, e, "duration", &at)?;
                let start = match (offset, prev_end) {
                    (Some(o), _) => o,
                    (None, Some(p)) => p,
                    (None, None) if starts.is_empty() => 0.0,
                    (None, None) => {
                        return Err(EditError::invalid(
                            path,
                            at(),
                            "has no offset, and the item before it has no duration",
                        ));
                    }
                };
                prev_end = duration.map(|d| start + d);
                starts.push(start);
            }
            _ => {}
        }
        if !empty {
            stack.push(name);
        }
    }
    if spine_depth.is_none() {
        return Err(EditError::invalid(
            path,
            Location::File,
            "no <spine> inside a <sequence>: not an FCPXML project",
        ));
    }
    let origin = starts.first().copied().unwrap_or(0.0);
    Ok(starts.iter().skip(1).map(|s| s - origin).collect())
}

/// The rational time in attribute `key`, if present.
fn attr_time(
    path: &Path,
    e: &BytesStart<'_>,
    key: &str,
    at: &dyn Fn() -> Location,
) -> Result<Option<f64>, EditError> {
    for attr in e.attributes() {
        let attr =
            attr.map_err(|err| EditError::invalid(path, at(), format!("bad attribute: {err}")))?;
        if attr.key.as_ref() != key.as_bytes() {
            continue;
        }
        let value = String::from_utf8_lossy(&attr.value).into_owned();
        return rational_seconds(&value).map(Some).ok_or_else(|| {
            EditError::invalid(
                path,
                at(),
                format!("{key}=\"{value}\" is not a rational time like 3003/30000s or 5s"),
            )
        });
    }
    Ok(None)
}

/// `3003/30000s` → 0.1001, `5s` → 5.0, `1.5s` → 1.5.
pub fn rational_seconds(s: &str) -> Option<f64> {
    let body = s.trim().strip_suffix('s')?;
    let (num, den) = match body.split_once('/') {
        Some((n, d)) => (n, d),
        None => (body, "1"),
    };
    let ok = |p: &str| {
        !p.is_empty()
            && p.bytes()
                .all(|b| b.is_ascii_digit() || b == b'.' || b == b'-')
    };
    if !ok(num) || !den.bytes().all(|b| b.is_ascii_digit()) || den.is_empty() {
        return None;
    }
    let n: f64 = num.parse().ok()?;
    let d: f64 = den.parse().ok()?;
    (d > 0.0 && n.is_finite()).then(|| n / d)
}
