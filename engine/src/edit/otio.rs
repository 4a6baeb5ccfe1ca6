//! OpenTimelineIO (`.otio`, JSON).
//!
//! `Timeline.1` → `tracks` (`Stack.1`) → `children` (`Track.1`) → children
//! (`Clip.1`/`Clip.2`, `Gap.1`, `Transition.1`, and nested `Track.1`/`Stack.1`).
//! The cuts are the boundaries between consecutive items of each track of
//! kind `"Video"`, summing each item's `source_range.duration` (a
//! `RationalTime.1`, `value / rate` seconds). A clip without a `source_range`
//! lasts its media reference's `available_range`; a nested track or stack
//! without one lasts as long as its content (a track: the sum of its items; a
//! stack: its longest child). Transitions take no time of their own in OTIO
//! and add no boundary. A nested track or stack contributes its own
//! boundaries, placed at its start in the parent and trimmed to its
//! `source_range`. Schema versions are not checked, only names.

use std::path::Path;

use serde_json::Value;

use super::{EditError, Location};

/// Cut times (seconds from the start of the timeline) of the video tracks.
pub fn parse(path: &Path, text: &str) -> Result<Vec<f64>, EditError> {
    let root: Value = serde_json::from_str(text).map_err(|e| {
        EditError::invalid(
            path,
            Location::Line(e.line()),
            format!("not valid JSON: {e}"),
        )
    })?;
    let ctx = Ctx { path };
    ctx.expect_schema(&root, "$", &["Timeline"])?;
    let tracks = root
        .get("tracks")
        .ok_or_else(|| ctx.err("$", "the timeline has no \"tracks\""))?;
    ctx.expect_schema(tracks, "$.tracks", &["Stack"])?;
    let mut cuts = Vec::new();
    for (i, child) in ctx.children(tracks, "$.tracks")?.iter().enumerate() {
        let jp = format!("$.tracks.children[{i}]");
        if schema_name(child) != Some("Track") {
            continue;
        }
        if child.get("kind").and_then(Value::as_str) != Some("Video") {
            continue;
        }
        let (start, dur) = ctx.range(child, &jp)?;
        for c in ctx.local_cuts(child, &jp)? {
            if c > start && c < start + dur {
                cuts.push(c - start);
            }
        }
    }
    Ok(cuts)
}

/// `"Clip.2"` → `"Clip"`.
fn schema_name(v: &Value) -> Option<&str> {
    let s = v.get("OTIO_SCHEMA")?.as_str()?;
    Some(s.split_once('.').map_or(s, |(name, _)| name))
}

struct Ctx<'a> {
    path: &'a Path,
}

impl Ctx<'_> {
    fn err(&self, jp: &str, message: impl Into<String>) -> EditError {
        EditError::invalid(self.path, Location::JsonPath(jp.to_string()), message)
    }

    fn expect_schema(&self, v: &Value, jp: &str, names: &[&str]) -> Result<(), EditError> {
        match schema_name(v) {
            Some(n) if names.contains(&n) => Ok(()),
            Some(n) => Err(self.err(jp, format!("is a {n}, expected {}", names.join(" or ")))),
            None => Err(self.err(
                jp,
                format!("has no OTIO_SCHEMA, expected {}", names.join(" or ")),
            )),
        }
    }

    fn children<'v>(&self, v: &'v Value, jp: &str) -> Result<&'v Vec<Value>, EditError> {
        v.get("children")
            .and_then(Value::as_array)
            .ok_or_else(|| self.err(jp, "has no \"children\" list"))
    }

    /// A `RationalTime` as seconds.
    fn time(&self, v: &Value, jp: &str) -> Result<f64, EditError> {
        let num = |k: &str| v.get(k).and_then(Value::as_f64);
        match (num("value"), num("rate")) {
            (Some(value), Some(rate)) if rate > 0.0 && value.is_finite() => Ok(value / rate),
            _ => Err(self.err(
                jp,
                "is not a RationalTime with a numeric \"value\" and a positive \"rate\"",
            )),
        }
    }

    /// A `TimeRange` as (start, duration) seconds.
    fn time_range(&self, v: &Value, jp: &str) -> Result<(f64, f64), EditError> {
        let start = match v.get("start_time") {
            Some(t) => self.time(t, &format!("{jp}.start_time"))?,
            None => 0.0,
        };
        let djp = format!("{jp}.duration");
        let d = v
            .get("duration")
            .ok_or_else(|| self.err(jp, "has no \"duration\""))?;
        let dur = self.time(d, &djp)?;
        if dur < 0.0 {
            return Err(self.err(&djp, format!("is negative ({dur} s)")));
        }
        Ok((start, dur))
    }

    /// The part of an item's own time that the parent shows: (start, duration).
    fn range(&self, item: &Value, jp: &str) -> Result<(f64, f64), EditError> {
        if let Some(sr) = item.get("source_range").filter(|v| !v.is_null()) {
            return self.time_range(sr, &format!("{jp}.source_range"));
        }
        match schema_name(item) {
            Some("Track") => {
                let mut total = 0.0;
                for (i, c) in self.children(item, jp)?.iter().enumerate() {
                    if schema_name(c) != Some("Transition") {
                        total += self.range(c, &format!("{jp}.children[{i}]"))?.1;
                    }
                }
                Ok((0.0, total))
            }
            Some("Stack") => {
                let mut longest: f64 = 0.0;
                for (i, c) in self.children(item, jp)?.iter().enumerate() {
                    longest = longest.max(self.range(c, &format!("{jp}.children[{i}]"))?.1);
                }
                Ok((0.0, longest))
            }
            Some("Clip") => {
                let (media, mjp) = match item.get("media_references") {
                    Some(refs) => {
                        let key = item
                            .get("active_media_reference_key")
                            .and_then(Value::as_str)
                            .unwrap_or("DEFAULT_MEDIA");
                        (refs.get(key), format!("{jp}.media_references.{key}"))
                    }
                    None => (item.get("media_reference"), format!("{jp}.media_reference")),
                };
                match media
                    .and_then(|m| m.get("available_range"))
                    .filter(|v| !v.is_null())
                {
                    Some(ar) => self.time_range(ar, &format!("{mjp}.available_range")),
                    None => Err(self.err(
                        jp,
                        "the clip has no source_range and its media has no available_range",
                    )),
                }
            }
            Some(n) => Err(self.err(jp, format!("the {n} has no source_range"))),
            None => Err(self.err(jp, "an item without OTIO_SCHEMA")),
        }
    }

    /// Cut times inside a track or stack, in its own time (0 at its first item).
    fn local_cuts(&self, item: &Value, jp: &str) -> Result<Vec<f64>, EditError> {
        let mut out = Vec::new();
        match schema_name(item) {
            Some("Track") => {
                let mut t = 0.0;
                let mut first = true;
                for (i, c) in self.children(item, jp)?.iter().enumerate() {
                    if schema_name(c) == Some("Transition") {
                        continue;
                    }
                    let cjp = format!("{jp}.children[{i}]");
                    if !first {
                        out.push(t);
                    }
                    first = false;
                    let (start, dur) = self.range(c, &cjp)?;
                    for inner in self.local_cuts(c, &cjp)? {
                        if inner > start && inner < start + dur {
                            out.push(t + inner - start);
                        }
                    }
                    t += dur;
                }
            }
            Some("Stack") => {
                for (i, c) in self.children(item, jp)?.iter().enumerate() {
                    let cjp = format!("{jp}.children[{i}]");
                    if schema_name(c) == Some("Track")
                        && c.get("kind").and_then(Value::as_str) == Some("Audio")
                    {
                        continue;
                    }
                    let (start, dur) = self.range(c, &cjp)?;
                    for inner in self.local_cuts(c, &cjp)? {
                        if inner > start && inner < start + dur {
                            out.push(inner - start);
                        }
                    }
                }
            }
            _ => {}
        }
        Ok(out)
    }
}
