//! The editor as a host shows it: embedded in a window of a real X server
//! (Xvfb, with Mesa's software OpenGL), driven through CLAP's GUI extension
//! and used with real X input events (XTest): the video's path typed in,
//! Generate clicked. What it drew is checked through its own report and on
//! a screenshot, which is kept in `target/test-artifacts/editor.png`.
//!
//! Needs `Xvfb` (package `xvfb`) and Mesa's OpenGL (`libgl1-mesa-dri`), as
//! `cargo xtask test` installs.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clack_host::prelude::*;
use common::xvfb::*;
use common::*;
use vidmusician_plugin::editor::model::{Command as EditorCommand, EditorModel, Status};

#[global_allocator]
static ALLOCATOR: assert_no_alloc::AllocDisabler = assert_no_alloc::AllocDisabler;

/// What the host's main thread does when asked for a callback.
fn main_thread_turn(inst: &mut PluginInstance<TestHost>) {
    inst.call_on_main_thread_callback();
}

fn artifact(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn save_png(path: &Path, w: u32, h: u32, rgb: &[u8]) {
    let file = std::fs::File::create(path).unwrap();
    let mut enc = png::Encoder::new(std::io::BufWriter::new(file), w, h);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    enc.write_header().unwrap().write_image_data(rgb).unwrap();
}

/// Pixels of `rgb` within 40 of `colour` in every channel.
fn pixels_like(rgb: &[u8], colour: [u8; 3]) -> usize {
    rgb.chunks_exact(3)
        .filter(|p| (0..3).all(|c| p[c].abs_diff(colour[c]) <= 40))
        .count()
}

/// The tests, one after the other (they take turns on the one X server
/// anyway), each on a thread of its own that is waited for. The process then
/// leaves with `_exit`, skipping C's exit handlers: Mesa's OpenGL libraries,
/// loaded for the editor, tear themselves down in those while threads of
/// theirs may still be ending, which crashed this process now and then
/// (a double free in libGLdispatch) after every test had passed.
fn main() {
    let tests: [(&str, fn()); 2] = [
        (
            "the_editor_scores_a_video_typed_in_and_shows_its_cuts_and_music",
            scores_a_video_typed_in,
        ),
        (
            "two_instances_draw_at_once_and_close_in_any_order",
            two_instances_draw_and_close,
        ),
    ];
    // libtest's command line, as far as it picks tests: names (filters),
    // `--exact`, `--skip NAME`, `--ignored` (none of these is); the values
    // of its other flags are passed over, the flags themselves ignored.
    let (mut filters, mut skips) = (Vec::new(), Vec::new());
    let (mut exact, mut ignored_only) = (false, false);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--exact" => exact = true,
            "--ignored" => ignored_only = true,
            "--skip" => skips.extend(args.next()),
            "--test-threads" | "--color" | "--format" | "--logfile" | "--shuffle-seed" | "-Z" => {
                args.next();
            }
            flag if flag.starts_with('-') => {}
            _ => filters.push(a),
        }
    }
    let hit = |name: &str, pattern: &String| {
        if exact {
            name == pattern
        } else {
            name.contains(pattern.as_str())
        }
    };
    println!("\nrunning {} tests", tests.len());
    let mut failed = Vec::new();
    for (name, body) in tests {
        let chosen = !ignored_only
            && (filters.is_empty() || filters.iter().any(|f| hit(name, f)))
            && !skips.iter().any(|s| hit(name, s));
        if !chosen {
            continue;
        }
        let ok = std::thread::spawn(body).join().is_ok();
        println!("test {name} ... {}", if ok { "ok" } else { "FAILED" });
        if !ok {
            failed.push(name);
        }
    }
    println!(
        "\ntest result: {}. {} failed: {failed:?}",
        if failed.is_empty() { "ok" } else { "FAILED" },
        failed.len()
    );
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    // SAFETY: `_exit` ends the process at once; everything this test wrote
    // is flushed above.
    unsafe { libc::_exit(if failed.is_empty() { 0 } else { 101 }) }
}

fn scores_a_video_typed_in() {
    let d = display();
    let _turn = d.turn.lock().unwrap_or_else(|e| e.into_inner());
    let (dir, video) = fixture();
    let mut inst = instance();
    let model = newest_model();
    // Not following a host tempo, with a grid for the bar lines: the
    // music is made once, for this grid.
    let state =
        r#"{"version":1,"params":[[4,0]],"host_grid":{"bpm":120,"beats":4,"unit":4,"downbeat":0}}"#;
    load_state(&mut inst, state.as_bytes());
    let mut proc = start(&mut inst, 48_000.0, 512);
    let (w, h) = (1000u16, 640u16);
    let parent = d.host_window(0, 0, w, h);
    open_editor(&mut inst, parent, (u32::from(w), u32::from(h)));
    assert!(
        wait_for(20, || model.drawn.snapshot().frames > 2),
        "the editor never drew"
    );
    let first = model.drawn.snapshot();
    assert_eq!(first.size, (u32::from(w), u32::from(h)));
    assert_eq!(first.status, 0);
    assert_eq!(first.thumbnails, 0);

    // The user clicks the path field, types the video's path, presses
    // Return.
    let [l, t, r, b] = first.video_field;
    assert!(
        r > l && b > t,
        "no path field drawn: {:?}",
        first.video_field
    );
    d.click(((l + r) / 2) as i16, ((t + b) / 2) as i16);
    d.type_line(video.to_str().unwrap());
    assert!(
        wait_for(10, || model.view().video.as_deref()
            == Some(video.as_path())),
        "the typed path never reached the plugin: {:?}",
        model.view().video
    );
    // The steward makes the request; the engine draws the overview and
    // makes the music.
    let finished = wait_for(120, || {
        main_thread_turn(&mut inst);
        let v = model.view();
        matches!(v.status, Status::Finished { cached: false }) && v.music.is_some()
    });
    assert!(finished, "no music: {:?}", model.view().status);

    // Play from 1 s: the playhead is drawn.
    let mut driver = Driver::new(512);
    for k in 0..8 {
        driver.block(&mut proc, 1.0 + k as f64 * 512.0 / 48_000.0, 512, true);
    }
    // The user clicks Generate: the same settings, served from the cache.
    let [l, t, r, b] = model.drawn.snapshot().generate;
    d.click(((l + r) / 2) as i16, ((t + b) / 2) as i16);
    assert!(
        wait_for(20, || {
            main_thread_turn(&mut inst);
            matches!(model.view().status, Status::Finished { cached: true })
        }),
        "Generate did nothing: {:?}",
        model.view().status
    );
    // The user drags over 1.0–2.0 s and makes that stretch again.
    let [l, t, r, b] = model.drawn.snapshot().timeline;
    let x_at = |secs: f64| (f64::from(l) + secs / 3.0 * f64::from(r - l)) as i16;
    d.drag(x_at(1.0), x_at(2.0), ((t + b) / 2) as i16);
    // Drawn over the whole stretch, the release seen: a frame that took the
    // release and the click below together would act on the drag's middle.
    let near = |px: u32, x: i16| (i64::from(px) - i64::from(x)).abs() <= 2;
    assert!(
        wait_for(10, || {
            let s = model.drawn.snapshot();
            s.selection && near(s.selected[0], x_at(1.0)) && near(s.selected[2], x_at(2.0))
        }),
        "the selection drawn is not the stretch dragged over: {:?}",
        model.drawn.snapshot().selected
    );
    let before = model.view().music.clone();
    let [l, t, r, b] = model.drawn.snapshot().again;
    d.click(((l + r) / 2) as i16, ((t + b) / 2) as i16);
    assert!(
        wait_for(60, || {
            main_thread_turn(&mut inst);
            let v = model.view();
            v.sections.len() == 1
                && matches!(v.status, Status::Finished { cached: false })
                && v.music != before
        }),
        "the section was not made again: {:?}",
        model.view().status
    );
    let section = model.view().sections[0];
    assert!(
        (section.start - 1.0).abs() < 0.1 && (section.end - 2.0).abs() < 0.1,
        "{section:?}"
    );
    for k in 0..8 {
        driver.block(&mut proc, 1.0 + k as f64 * 512.0 / 48_000.0, 512, true);
    }
    let drawn = wait_for(20, || {
        let s = model.drawn.snapshot();
        s.sections == 1
            && s.thumbnails == 24
            && s.cuts == 3
            && s.curve_points > 50
            && s.waveform_columns > 100
            && s.onsets > 0
            && s.bar_lines > 0
            && s.playhead
            && s.status == 2
    });
    let report = model.drawn.snapshot();
    assert!(drawn, "the editor drew {report:?}");
    let frames = report.frames;

    // The screenshot, kept, and what it shows.
    std::thread::sleep(Duration::from_millis(300));
    let rgb = d.grab(0, 0, w, h);
    let shot = artifact("editor.png");
    save_png(&shot, u32::from(w), u32::from(h), &rgb);
    eprintln!("screenshot: {}", shot.display());
    let cut = pixels_like(&rgb, [255, 120, 60]);
    let wave = pixels_like(&rgb, [120, 210, 140]);
    let curve = pixels_like(&rgb, [90, 170, 255]);
    assert!(cut > 3 * 50, "cut lines: {cut} pixels");
    assert!(wave > 500, "waveform: {wave} pixels");
    assert!(curve > 200, "rhythm curve: {curve} pixels");
    // The thumbnails' strip is a picture, not a flat colour: the synthetic
    // shots are coloured, so many distinct colours show there.
    let strip: std::collections::HashSet<[u8; 3]> = rgb[..]
        .chunks_exact(3)
        .skip(usize::from(w) * report_top(&model) as usize)
        .take(usize::from(w) * 40)
        .map(|p| [p[0] & 0xf0, p[1] & 0xf0, p[2] & 0xf0])
        .collect();
    assert!(strip.len() > 8, "thumbnail strip: {} colours", strip.len());
    assert!(model.drawn.snapshot().frames >= frames);

    // Undo: the piece as it was, from the cache.
    let [l, t, r, b] = model.drawn.snapshot().undo;
    d.click(((l + r) / 2) as i16, ((t + b) / 2) as i16);
    assert!(
        wait_for(20, || {
            main_thread_turn(&mut inst);
            let v = model.view();
            v.sections.is_empty() && matches!(v.status, Status::Finished { cached: true })
        }),
        "undo did nothing: {:?}",
        model.view().status
    );

    close_editor(&mut inst);
    d.destroy_window(parent);
    drop(proc);
    let _ = dir;
}

/// The top of the timeline (below the controls), logical pixels: just
/// below the Generate button's row.
fn report_top(model: &EditorModel) -> u32 {
    model.drawn.snapshot().generate[3] + 40
}

fn two_instances_draw_and_close() {
    let d = display();
    let _turn = d.turn.lock().unwrap_or_else(|e| e.into_inner());
    let (_, video) = fixture();
    let mut a = instance();
    let ma = newest_model();
    let mut b = instance();
    let mb = newest_model();
    assert!(!Arc::ptr_eq(&ma, &mb));
    let pa = d.host_window(0, 0, 700, 450);
    let pb = d.host_window(500, 300, 700, 450);
    open_editor(&mut a, pa, (700, 450));
    open_editor(&mut b, pb, (700, 450));
    assert!(
        wait_for(20, || ma.drawn.snapshot().frames > 0
            && mb.drawn.snapshot().frames > 0),
        "both editors draw"
    );
    // A command to one instance changes what its editor shows, and only
    // that: each redraws for its own change.
    let (fa, fb) = (ma.drawn.snapshot().frames, mb.drawn.snapshot().frames);
    ma.send(EditorCommand::SetVideo(video.clone()));
    mb.send(EditorCommand::SetPrompt("slow strings".into()));
    assert!(wait_for(10, || {
        ma.view().video.as_deref() == Some(video.as_path()) && mb.view().prompt == "slow strings"
    }));
    assert!(
        wait_for(20, || ma.drawn.snapshot().frames > fa
            && mb.drawn.snapshot().frames > fb),
        "an editor did not redraw for its change"
    );
    assert_eq!(mb.view().video, None);
    assert_eq!(ma.view().prompt, "");
    // The first opened closes first, then the plugin with its editor
    // still open is destroyed: the window goes with it.
    close_editor(&mut a);
    assert!(!ma.is_open() && mb.is_open());
    drop(a);
    drop(b);
    assert!(!mb.is_open());
    assert_eq!(
        Arc::strong_count(&mb),
        1,
        "the destroyed instance's editor kept its model"
    );
    d.destroy_window(pa);
    d.destroy_window(pb);
}
