//! Cut lists read from the user's edit: EDL, OTIO, FCPXML, plain lists.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use tempfile::TempDir;
use vidmusician_engine::edit::timecode::{Rate, smpte_frames};
use vidmusician_engine::edit::{Format, read_cuts};

fn write(dir: &TempDir, name: &str, text: &str) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn assert_cuts(got: &[f64], want: &[f64]) {
    assert_eq!(got.len(), want.len(), "got {got:?}, want {want:?}");
    for (g, w) in got.iter().zip(want) {
        assert!((g - w).abs() < 1e-6, "got {got:?}, want {want:?}");
    }
}

fn refused(path: &Path, fps: Option<f64>) -> String {
    read_cuts(path, fps)
        .expect_err("must be refused")
        .to_string()
}

#[test]
fn drop_frame_timecode_formula() {
    let (frames, rate) = smpte_frames("00:01:00;02", Rate::from_fps(25.0).unwrap(), false).unwrap();
    assert_eq!(frames, 1800);
    assert!((rate.seconds(frames) - 60.06).abs() < 1e-6);
    // Ten minutes hold 17982 frames; every tenth minute keeps frames 0 and 1.
    assert_eq!(
        smpte_frames("00:10:00;00", Rate::NTSC_30, true).unwrap().0,
        17982
    );
    assert_eq!(
        smpte_frames("00:00:59;29", Rate::NTSC_30, true).unwrap().0,
        1799
    );
    assert_eq!(
        smpte_frames("01:00:00;00", Rate::NTSC_30, true).unwrap().0,
        107_892
    );
    let err = smpte_frames("00:01:00;00", Rate::NTSC_30, true).unwrap_err();
    assert!(err.contains("does not exist in drop-frame"), "{err}");
}

const DF_EDL: &str = "TITLE: DROP FRAME TEST
FCM: DROP FRAME

001  AX       V     C        00:00:00;00 00:00:05;00 01:00:00;00 01:00:05;00
* FROM CLIP NAME: a.mov
002  AX       V     C        00:00:00;00 00:00:55;02 01:00:05;00 01:01:00;02
003  AX       V     C        00:00:00;00 00:00:00;00 01:01:00;02 01:01:00;02
003  BX       V     D    030 00:00:10;00 00:00:20;00 01:01:00;02 01:10:00;00
M2   BX       000.0          00:00:10;00
004  AX       A     C        00:00:00;00 00:00:01;00 01:00:02;00 01:00:03;00
005  CX       AA/V  C        00:00:00;00 00:00:01;00 01:10:00;00 01:10:01;00
";

#[test]
fn edl_drop_frame() {
    let dir = TempDir::new().unwrap();
    let path = write(&dir, "edit.edl", DF_EDL);
    let list = read_cuts(&path, None).unwrap();
    assert_eq!(list.source, Format::Cmx3600);
    // 150, 1800 and 17982 frames after 01:00:00;00, at 1001/30000 s each;
    // the audio-only event 004 is not a picture cut.
    assert_cuts(&list.cuts, &[5.005, 60.06, 599.9994]);
    // A hint does not change drop-frame timecode.
    assert_eq!(read_cuts(&path, Some(24.0)).unwrap(), list);
}

const NDF_EDL: &str = "TITLE: NON DROP
FCM: NON-DROP FRAME

001  A001     V     C        00:00:00:00 00:00:02:12 10:00:00:00 10:00:02:12
002  A002     V     W001 012 00:00:01:00 00:00:03:12 10:00:02:12 10:00:05:00
003  A003     B     C        00:00:00:00 00:00:01:00 10:00:05:00 10:00:06:00
";

#[test]
fn edl_non_drop_uses_hint_or_25() {
    let dir = TempDir::new().unwrap();
    let path = write(&dir, "cut.edl", NDF_EDL);
    assert_cuts(&read_cuts(&path, Some(24.0)).unwrap().cuts, &[2.5, 5.0]);
    assert_cuts(&read_cuts(&path, None).unwrap().cuts, &[2.48, 5.0]);
    // 29.97 non-drop: 72 frames at 1001/30000 s.
    assert_cuts(
        &read_cuts(&path, Some(29.97)).unwrap().cuts,
        &[72.0 * 1001.0 / 30000.0, 150.0 * 1001.0 / 30000.0],
    );
}

#[test]
fn edl_malformed_names_the_line() {
    let dir = TempDir::new().unwrap();
    let text = "TITLE: BAD\nFCM: NON-DROP FRAME\n\n\
001  A001     V     C        00:00:00:00 00:00:02:00 01:00:00:00 01:00:02:00\n\
* comment\n\
002  A002     V     C        00:00:00:00 00:00:02:00 01:00:02:00 01:00:04:00\n\
003  A003     V     C        00:00:00:00 00:00:02:00 01:00:6x:00 01:00:08:00\n";
    let path = write(&dir, "edit.edl", text);
    let msg = refused(&path, None);
    assert!(
        msg.contains("edit.edl line 7: timecode 01:00:6x:00 is not HH:MM:SS:FF"),
        "{msg}"
    );

    let short = write(
        &dir,
        "short.edl",
        "001  A001  V  C  00:00:00:00 00:00:01:00\n",
    );
    let msg = refused(&short, None);
    assert!(msg.contains("short.edl line 1:"), "{msg}");

    // Frame 27 does not exist at the default 25 fps: the message asks for the rate.
    let fast = write(
        &dir,
        "fast.edl",
        "001  A  V  C  00:00:00:00 00:00:01:00 00:00:00:00 00:00:01:00\n\
002  A  V  C  00:00:00:00 00:00:01:00 00:00:01:27 00:00:02:00\n",
    );
    let msg = refused(&fast, None);
    assert!(
        msg.contains("fast.edl line 2:") && msg.contains("frame rate"),
        "{msg}"
    );
    assert_cuts(&read_cuts(&fast, Some(30.0)).unwrap().cuts, &[1.9]);
}

fn rt(value: f64, rate: f64) -> Value {
    json!({"OTIO_SCHEMA": "RationalTime.1", "value": value, "rate": rate})
}

fn range(start: f64, dur: f64, rate: f64) -> Value {
    json!({"OTIO_SCHEMA": "TimeRange.1", "start_time": rt(start, rate), "duration": rt(dur, rate)})
}

fn clip(seconds: f64) -> Value {
    json!({
        "OTIO_SCHEMA": "Clip.2",
        "name": "c",
        "source_range": range(0.0, seconds * 24.0, 24.0),
        "media_references": {"DEFAULT_MEDIA": {"OTIO_SCHEMA": "MissingReference.1", "available_range": null}},
        "active_media_reference_key": "DEFAULT_MEDIA"
    })
}

fn track(kind: &str, children: Vec<Value>) -> Value {
    json!({"OTIO_SCHEMA": "Track.1", "kind": kind, "source_range": null, "children": children})
}

fn timeline(tracks: Vec<Value>) -> Value {
    json!({
        "OTIO_SCHEMA": "Timeline.1",
        "name": "t",
        "global_start_time": rt(86400.0, 24.0),
        "tracks": {"OTIO_SCHEMA": "Stack.1", "name": "tracks", "source_range": null, "children": tracks}
    })
}

#[test]
fn otio_with_nested_track_and_stack() {
    let transition = json!({
        "OTIO_SCHEMA": "Transition.1",
        "in_offset": rt(6.0, 24.0),
        "out_offset": rt(6.0, 24.0)
    });
    let gap = json!({"OTIO_SCHEMA": "Gap.1", "source_range": range(0.0, 30.0, 30.0)});
    // A nested stack showing 1 s..4 s of a track that cuts at 2 s (its own
    // time): it adds a cut 1 s after its start; the cut at 5 s is trimmed away.
    let nested_stack = json!({
        "OTIO_SCHEMA": "Stack.1",
        "source_range": range(24.0, 72.0, 24.0),
        "children": [track("Video", vec![clip(2.0), clip(3.0), clip(1.0)])]
    });
    // A nested track without source_range lasts its content: 1 s + 1 s.
    let nested_track = track("Video", vec![clip(1.0), clip(1.0)]);
    let last = json!({
        "OTIO_SCHEMA": "Clip.1",
        "media_reference": {"OTIO_SCHEMA": "ExternalReference.1", "available_range": range(0.0, 45.0, 30.0)}
    });
    let main = track(
        "Video",
        vec![
            clip(2.0),
            transition,
            gap,
            nested_stack,
            nested_track,
            last,
            clip(1.0),
        ],
    );
    let overlay = track("Video", vec![clip(0.5), clip(1.5), clip(1.0)]);
    let music = track("Audio", vec![clip(1.25), clip(1.0)]);
    let dir = TempDir::new().unwrap();
    let text = serde_json::to_string_pretty(&timeline(vec![main, overlay, music])).unwrap();
    let path = write(&dir, "edit.otio", &text);
    let list = read_cuts(&path, None).unwrap();
    assert_eq!(list.source, Format::Otio);
    // main: clip [0,2) gap [2,3) stack [3,6) (inner cut at 4) track [6,8)
    // (inner cut at 7) clip [8,9.5) clip [9.5,10.5); overlay: 0.5 and 2 (a
    // duplicate); the audio track's 1.25 is not a picture cut.
    assert_cuts(&list.cuts, &[0.5, 2.0, 3.0, 4.0, 6.0, 7.0, 8.0, 9.5]);

    // Found by content under another extension.
    let other = write(&dir, "edit.json", &text);
    assert_eq!(read_cuts(&other, None).unwrap(), list);
}

#[test]
fn otio_malformed_names_the_json_path() {
    let mut bad = clip(1.0);
    bad["source_range"]["duration"]["rate"] = json!(0.0);
    let tl = timeline(vec![track("Video", vec![clip(2.0), bad])]);
    let dir = TempDir::new().unwrap();
    let path = write(&dir, "bad.otio", &tl.to_string());
    let msg = refused(&path, None);
    assert!(
        msg.contains("bad.otio at $.tracks.children[0].children[1].source_range.duration:"),
        "{msg}"
    );

    let broken = write(
        &dir,
        "broken.otio",
        "{\n  \"OTIO_SCHEMA\": \"Timeline.1\",\n  \"tracks\": [\n}",
    );
    let msg = refused(&broken, None);
    assert!(msg.contains("broken.otio line 4: not valid JSON"), "{msg}");
}

const FCPXML: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE fcpxml>
<fcpxml version="1.10">
    <resources>
        <format id="r1" frameDuration="1001/30000s" width="1920" height="1080"/>
        <asset id="r2" name="a" start="0s" duration="100s" hasVideo="1"/>
    </resources>
    <library>
        <event name="Event">
            <project name="Cut">
                <sequence format="r1" tcStart="3600s" duration="11s">
                    <spine>
                        <asset-clip ref="r2" offset="3600s" duration="3003/1000s" name="one"/>
                        <transition offset="3602/1s" duration="2s"/>
                        <clip offset="3603003/1000s" duration="5s" name="two">
                            <video ref="r2" offset="0s" duration="5s"/>
                            <asset-clip ref="r2" lane="1" offset="3605s" duration="1s"/>
                        </clip>
                        <gap offset="3608003/1000s" duration="1s"/>
                        <sync-clip offset="3609003/1000s" duration="1001/30000s"/>
                        <mc-clip duration="2s"/>
                    </spine>
                </sequence>
            </project>
            <project name="Other">
                <sequence format="r1"><spine><gap offset="0s" duration="1s"/><gap offset="1s" duration="1s"/></spine></sequence>
            </project>
        </event>
    </library>
</fcpxml>
"#;

#[test]
fn fcpxml_spine() {
    let dir = TempDir::new().unwrap();
    let path = write(&dir, "edit.fcpxml", FCPXML);
    let list = read_cuts(&path, None).unwrap();
    assert_eq!(list.source, Format::Fcpxml);
    // Offsets after the first, less the first; the connected clip in lane 1
    // and the transition are not cuts; the mc-clip without offset follows the
    // sync-clip (3609.003 + 1001/30000).
    assert_cuts(&list.cuts, &[3.003, 8.003, 9.003, 9.003 + 1001.0 / 30000.0]);
    // An .xml holding FCPXML is read too.
    let xml = write(&dir, "edit.xml", FCPXML);
    assert_eq!(read_cuts(&xml, None).unwrap(), list);
}

#[test]
fn fcpxml_malformed_names_the_element() {
    let dir = TempDir::new().unwrap();
    let bad = FCPXML.replace(r#"<gap offset="3608003/1000s""#, r#"<gap offset="12/x0s""#);
    let path = write(&dir, "bad.fcpxml", &bad);
    let msg = refused(&path, None);
    assert!(
        msg.contains(
            r#"bad.fcpxml element <gap> (line 19): offset="12/x0s" is not a rational time"#
        ),
        "{msg}"
    );

    let unclosed = write(
        &dir,
        "unclosed.fcpxml",
        "<fcpxml>\n<library>\n<event></library>\n",
    );
    let msg = refused(&unclosed, None);
    assert!(
        msg.contains("unclosed.fcpxml line 3: not well-formed XML"),
        "{msg}"
    );

    let no_spine = write(
        &dir,
        "empty.fcpxml",
        "<fcpxml version=\"1.10\"><library/></fcpxml>",
    );
    let msg = refused(&no_spine, None);
    assert!(msg.contains("empty.fcpxml: no <spine>"), "{msg}");
}

#[test]
fn plain_lists() {
    let dir = TempDir::new().unwrap();
    let csv = "time,label\n# cut times\n12.5,a\n01:02.25;b\n\n00:01:00.5, c # trailing comment\n12.5004\n00:00:10:12\t d\n";
    let path = write(&dir, "cuts.csv", csv);
    let list = read_cuts(&path, Some(24.0)).unwrap();
    assert_eq!(list.source, Format::PlainList);
    assert_cuts(&list.cuts, &[10.5, 12.5, 60.5, 62.25]);

    let txt = write(&dir, "cuts.txt", "0\n3\n1.25\n");
    assert_cuts(&read_cuts(&txt, None).unwrap().cuts, &[1.25, 3.0]);

    // A timecode needs a frame rate.
    let msg = refused(&path, None);
    assert!(
        msg.contains("cuts.csv line 8:") && msg.contains("frame rate"),
        "{msg}"
    );
}

#[test]
fn plain_list_malformed_names_the_line() {
    let dir = TempDir::new().unwrap();
    let path = write(&dir, "cuts.txt", "seconds\n1.0\n# note\nabc\n2.0\n");
    let msg = refused(&path, None);
    assert!(msg.contains("cuts.txt line 4: abc is not a time"), "{msg}");
    let minutes = write(&dir, "m.csv", "1:75.0\n");
    let msg = refused(&minutes, None);
    assert!(msg.contains("m.csv line 1:"), "{msg}");
}

#[test]
fn missing_and_unknown_files() {
    let dir = TempDir::new().unwrap();
    let msg = refused(&dir.path().join("nope.edl"), None);
    assert!(msg.contains("nope.edl: cannot read"), "{msg}");
    let odd = write(&dir, "notes.bin", "<html><body>hi</body></html>");
    let msg = refused(&odd, None);
    assert!(msg.contains("notes.bin: not a cut list"), "{msg}");
}

#[test]
fn plain_numbers_in_txt_are_not_an_edl() {
    let dir = TempDir::new().unwrap();
    let txt = write(&dir, "cuts.txt", "100\n200.5\n");
    let list = read_cuts(&txt, None).unwrap();
    assert_eq!(list.source, Format::PlainList);
    assert_cuts(&list.cuts, &[100.0, 200.5]);
    let edl_txt = write(&dir, "edl.txt", NDF_EDL);
    assert_eq!(read_cuts(&edl_txt, None).unwrap().source, Format::Cmx3600);
    let unnamed = write(&dir, "cuts", "time\n1.5\n2.5\n");
    assert_cuts(&read_cuts(&unnamed, None).unwrap().cuts, &[1.5, 2.5]);
}
