//! A real DAW: Debian's Ardour builds a session with the VST3 build of the
//! plugin on a track (`ardour7-lua`) and renders it headless
//! (`ardour7-export`); the rendered file is the plugin's music. Ardour's
//! export does not switch plugins to offline mode, so this also shows that
//! music made before (the disk cache) plays from the first block. The
//! session's tempo changes mid-way, and the VST3 build gets no main-thread
//! callbacks here: the render has new music in the new tempo after the
//! change all the same.

#[path = "../plugin/tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::built_library;
use vidmusician_engine::audio::Audio;
use vidmusician_engine::service::{Engine, EngineConfig, Request};
use vidmusician_engine::video::synth::{SynthSpec, write_video};

const RATE: u32 = 48_000;
const SECONDS: u32 = 16;
/// The session's tempo, and where (seconds, a bar line: bar 5) it changes
/// to the second one.
const TEMPO: f64 = 120.0;
const CHANGE_S: f64 = 8.0;
const NEW_TEMPO: f64 = 90.0;

/// Ardour's VST3 scanner (not on PATH; Debian keeps it with the libraries).
fn scanner() -> Option<PathBuf> {
    std::fs::read_dir("/usr/lib")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("ardour"))
        })
        .map(|p| p.join("ardour-vst3-scanner"))
        .find(|p| p.exists())
}

fn run(cmd: &mut Command, what: &str) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e} (cargo xtask setup installs Ardour)"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{what} failed:\n{text}");
    text
}

fn correlation(a: &[f32], b: &[f32]) -> f64 {
    let (mut ab, mut aa, mut bb) = (0.0f64, 0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        ab += f64::from(x) * f64::from(y);
        aa += f64::from(x) * f64::from(x);
        bb += f64::from(y) * f64::from(y);
    }
    ab / (aa * bb).sqrt().max(1e-30)
}

/// Correlation of `got` and `want` over seconds `a..b` of both channels,
/// the render `lag` frames late.
fn correlation_over(got: &Audio, want: &Audio, a: f64, b: f64, lag: usize) -> f64 {
    let (a, b) = (
        (a * f64::from(RATE)) as usize,
        (b * f64::from(RATE)) as usize,
    );
    let b = b.min(got.len() - lag).min(want.len());
    (0..2)
        .map(|c| correlation(&got.channels[c][a + lag..b + lag], &want.channels[c][a..b]))
        .fold(f64::INFINITY, f64::min)
}

/// The best correlation within `MAX_LAG` frames of the render running
/// late, and that lag. Ardour's transport gives beat and seconds positions
/// that disagree by a few samples, and the plugin puts its bars where the
/// beats say.
fn best_correlation(got: &Audio, want: &Audio, a: f64, b: f64) -> (f64, usize) {
    (0..=MAX_LAG)
        .map(|lag| (correlation_over(got, want, a, b, lag), lag))
        .fold((f64::NEG_INFINITY, 0), |x, y| if y.0 > x.0 { y } else { x })
}

/// 1 ms.
const MAX_LAG: usize = 48;

#[test]
fn ardour_renders_the_vst3_on_a_track_through_a_tempo_change() {
    let scanner =
        scanner().expect("Ardour's VST3 scanner not found (cargo xtask setup installs Ardour)");
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let cache = dir.path().join("cache");
    let bundle = home.join(".vst3/VidMusician.vst3/Contents/x86_64-linux");
    std::fs::create_dir_all(&bundle).unwrap();
    let so = bundle.join("VidMusician.so");
    std::fs::copy(built_library(), &so).unwrap();
    // Ardour trusts its scan cache only when the cache is newer than the
    // library, at whole-second resolution: date the copy a minute back.
    let past = std::time::SystemTime::now() - std::time::Duration::from_secs(60);
    std::fs::File::options()
        .write(true)
        .open(&so)
        .unwrap()
        .set_modified(past)
        .unwrap();
    let video = dir.path().join("clip.mp4");
    write_video(
        &video,
        &SynthSpec::new(
            192,
            144,
            25,
            f64::from(SECONDS),
            vec![0.9, 2.1, 3.2, 5.3, 7.1, 9.4, 11.2, 13.9],
        ),
    )
    .unwrap();

    // The music the plugin asks for when activated (no host tempo known
    // yet), made once by the engine into the cache the plugin reads; and
    // what it makes on the session's tempo and, after the change, on the
    // new one, bars from the change.
    let make = |tempo: Option<f64>, downbeat: Option<f64>, cache_dir: Option<PathBuf>| {
        let engine = Engine::start(EngineConfig {
            cache_dir,
            ..EngineConfig::default()
        })
        .unwrap();
        let mut req = Request::new(&video);
        req.sample_rate = RATE;
        req.tempo = tempo;
        req.downbeat = downbeat;
        let (id, _) = engine.submit(req).unwrap();
        engine.wait(id, |_| {}).unwrap().audio
    };
    let cached = make(None, None, Some(cache.join("audio")));
    // Not cached: the plugin makes these while Ardour renders.
    let on_tempo = make(Some(TEMPO), Some(0.0), None);
    let on_new_tempo = make(Some(NEW_TEMPO), Some(CHANGE_S), None);

    let ardour = |cmd: &str| {
        let mut c = Command::new(cmd);
        c.env("HOME", &home)
            .env("VIDMUSICIAN_VIDEO", &video)
            .env("VIDMUSICIAN_CACHE", &cache)
            .current_dir(dir.path());
        c
    };
    // Index the freshly built plugin ahead of Ardour: its own scan from
    // within the Lua interpreter fails here and leaves the plugin out.
    let lib_dir = scanner.parent().unwrap();
    run(
        ardour(scanner.to_str().unwrap())
            .env("LD_LIBRARY_PATH", lib_dir)
            .arg("-q")
            .arg(home.join(".vst3/VidMusician.vst3")),
        "ardour-vst3-scanner",
    );
    let session = dir.path().join("session");
    let script = dir.path().join("make.lua");
    std::fs::write(&script, lua_script(&session)).unwrap();
    let made = run(ardour("ardour7-lua").arg(&script), "ardour7-lua");
    assert!(made.contains("inserted VidMusician"), "{made}");
    set_session_range(&session.join("session.ardour"), f64::from(SECONDS));

    let out = dir.path().join("render.wav");
    run(
        ardour("ardour7-export")
            .args(["-b", "float", "-s", "48000", "-o"])
            .arg(&out)
            .arg(&session)
            .arg("session"),
        "ardour7-export",
    );
    let got = vidmusician_engine::audio::read_wav(&out).unwrap();
    assert_eq!(got.sample_rate, RATE);
    assert!(
        got.len() as u32 >= SECONDS * RATE - RATE / 100,
        "{} frames rendered",
        got.len()
    );
    // The three pieces differ, so each check below tells them apart.
    for (x, y) in [(&cached, &on_tempo), (&on_tempo, &on_new_tempo)] {
        assert!(best_correlation(x, y, 0.0, f64::from(SECONDS)).0 < 0.9);
    }
    let bar = |tempo: f64| 4.0 * 60.0 / tempo;
    // Before the render starts, Ardour runs the session for a moment: the
    // plugin hears the session's tempo and asks for music on it, which may
    // or may not be made before the first block is rendered. So the first
    // bars are the cached music or already the music on the session's
    // tempo; from the third bar (the render is seen to run faster than real
    // time within two seconds of audio, and then waits for the music asked
    // for) the session's tempo;
    // from the first bar after the change has settled (0.3 s), the new
    // tempo. Each switch has a 50 ms crossfade.
    for (a, b) in [
        (0.0, bar(TEMPO) - 0.01),
        (bar(TEMPO) + 0.06, 2.0 * bar(TEMPO) - 0.01),
    ] {
        let (c, t) = (
            best_correlation(&got, &cached, a, b),
            best_correlation(&got, &on_tempo, a, b),
        );
        assert!(
            c.0.max(t.0) >= 0.99,
            "neither the cached music nor the session's tempo from {a:.2} s to {b:.2} s: \
             correlations {c:?} and {t:?}"
        );
    }
    let spans = [
        (
            "the session's tempo",
            &on_tempo,
            2.0 * bar(TEMPO) + 0.06,
            CHANGE_S - 0.01,
        ),
        (
            "the new tempo",
            &on_new_tempo,
            CHANGE_S + bar(NEW_TEMPO) + 0.06,
            f64::from(SECONDS),
        ),
    ];
    for (what, want, a, b) in spans {
        let (r, lag) = best_correlation(&got, want, a, b);
        assert!(
            r >= 0.99,
            "{what} from {a:.2} s to {b:.2} s: correlation {r} (at {lag} frames)"
        );
    }
}

fn lua_script(session: &Path) -> String {
    format!(
        r#"AudioEngine:set_backend("None (Dummy)", "", "")
local s = create_session("{dir}", "session", {RATE})
assert(s, "cannot create the session")
-- The tempo changes at bar 5 ({change} s).
local tm = Temporal.TempoMap.write_copy()
tm:set_tempo(Temporal.Tempo({new}, {new}, 4), Temporal.timepos_t({change_samples}))
Temporal.TempoMap.update(tm)
local tracks = s:new_audio_track(2, 2, nil, 1, "Music", ARDOUR.PresentationInfo.max_order, ARDOUR.TrackMode.Normal, true)
local plugin = ARDOUR.LuaAPI.new_plugin(s, "VidMusician", ARDOUR.PluginType.VST3, "")
assert(not plugin:isnil(), "VidMusician not found among Ardour's VST3 plugins")
assert(tracks:front():add_processor_by_index(plugin, 0, nil, true) == 0, "cannot insert the plugin")
print("inserted VidMusician")
s:save_state("", false, false, false, false, false)
close_session()
"#,
        dir = session.display(),
        change = CHANGE_S,
        new = NEW_TEMPO,
        change_samples = (CHANGE_S * f64::from(RATE)) as i64,
    )
}

/// Ardour's Lua has no way to set the session range of an empty session;
/// the saved session gets one here (Ardour 7 counts audio time in
/// superclock ticks, 282 240 000 a second).
fn set_session_range(file: &Path, seconds: f64) {
    let xml = std::fs::read_to_string(file).unwrap();
    let end = (seconds * 282_240_000.0).round() as i64;
    let range = format!(
        r#"<Locations>
    <Location id="9001" name="session" start="a0" end="a{end}" flags="IsSessionRange" locked="0" timestamp="0" cue="0"/>
  </Locations>"#
    );
    assert!(
        xml.contains("<Locations/>"),
        "unexpected session file layout"
    );
    std::fs::write(file, xml.replacen("<Locations/>", &range, 1)).unwrap();
}
