//! Benchmark (not a test): the plugin's `process` time per 512-frame block
//! at 48 kHz while the engine is generating, and the time from activation
//! (the generate request) to first sound for a 60 s video with the sketch
//! engine; then the same with the editor open and drawing (in Xvfb, when
//! it is installed: the playhead moves every block, so it redraws at its
//! full rate, and the thumbnails and overview are made meanwhile). Run
//! with `cargo bench -p vidmusician-plugin`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::*;
use vidmusician_engine::video::synth::{SynthSpec, write_video};

/// Runs this thread at real-time priority, as hosts run their audio
/// threads, when the system allows it.
fn realtime_priority() -> bool {
    let param = libc::sched_param { sched_priority: 80 };
    // SAFETY: sets this thread's scheduling policy; `param` outlives the call.
    unsafe { libc::pthread_setschedparam(libc::pthread_self(), libc::SCHED_FIFO, &param) == 0 }
}

fn main() {
    let rt = realtime_priority();
    let (dir, _) = fixture();
    let seconds = 60.0;
    let cuts: Vec<f64> = (1..30).map(|k| f64::from(k) * 2.03).collect();
    // One video per run, so the second does not find the first's music in
    // the cache.
    for (editor, name) in [(false, "bench-60s.mp4"), (true, "bench-60s-editor.mp4")] {
        let video = dir.path().join(name);
        write_video(
            &video,
            &SynthSpec::new(1280, 720, 30, seconds, cuts.clone()),
        )
        .unwrap();
        if editor
            && std::process::Command::new("Xvfb")
                .arg("-help")
                .output()
                .is_err()
        {
            println!("{{\"bench\":\"editor open\",\"skipped\":\"Xvfb is not installed\"}}");
            continue;
        }
        run(&video, rt, editor);
    }
}

fn run(video: &std::path::Path, rt: bool, editor: bool) {
    let rate = 48_000.0;
    let block = 512usize;
    let mut inst = instance();
    let model = common::xvfb::newest_model();
    load_state(&mut inst, &state_json(video, 1));
    let parent = editor.then(|| {
        let d = common::xvfb::display();
        let parent = d.host_window(0, 0, 1000, 640);
        common::xvfb::open_editor(&mut inst, parent, (1000, 640));
        parent
    });
    // Activation asks for the music: first sound is timed from here.
    let t0 = Instant::now();
    let mut proc = start(&mut inst, rate, block);
    let mut d = Driver::new(block);
    let period = Duration::from_secs_f64(block as f64 / rate);
    let mut times = Vec::new();
    let mut stamps = Vec::new();
    let mut first_sound = None;
    let mut frame = 0usize;
    // Real-time pacing: one block per block period, playing from 0, for
    // 8 s (the preview and the whole 60 s piece are made meanwhile) and at
    // least 2 s of music.
    let run_for = |first: Option<Duration>| {
        first
            .is_none_or(|t| t0.elapsed() < (t + Duration::from_secs(2)).max(Duration::from_secs(8)))
    };
    while run_for(first_sound) {
        let start = Instant::now();
        let (l, _) = d.block(&mut proc, frame as f64 / rate, block, true);
        let took = start.elapsed();
        let sounding = l.iter().any(|&x| x != 0.0);
        times.push(took);
        stamps.push(t0.elapsed());
        if sounding && first_sound.is_none() {
            first_sound = Some(t0.elapsed());
        }
        frame += block;
        if t0.elapsed() > Duration::from_secs(120) {
            break;
        }
        if let Some(rest) = period.checked_sub(start.elapsed()) {
            std::thread::sleep(rest);
        }
    }
    let frames_drawn = model.drawn.snapshot().frames;
    inst.deactivate(proc.stop_processing());
    if let Some(parent) = parent {
        common::xvfb::close_editor(&mut inst);
        common::xvfb::display().destroy_window(parent);
    }
    if std::env::var_os("BENCH_DETAIL").is_some() {
        let mut idx: Vec<usize> = (0..times.len()).collect();
        idx.sort_by_key(|&i| std::cmp::Reverse(times[i]));
        for &i in idx.iter().take(8) {
            eprintln!(
                "block {i} at {:.3} s: {:?}",
                stamps[i].as_secs_f64(),
                times[i]
            );
        }
    }
    let n = times.len() as f64;
    let mean = times.iter().map(Duration::as_secs_f64).sum::<f64>() / n;
    let mut sorted = times.clone();
    sorted.sort();
    let p999 = sorted[((n * 0.999) as usize).min(sorted.len() - 1)];
    let worst = sorted[sorted.len() - 1];
    let what = if editor {
        ", editor open and drawing"
    } else {
        ""
    };
    println!(
        "{{\"bench\":\"plugin process, 512 frames at 48 kHz, engine generating a 60 s take{what}\",\
         \"editor_frames\":{frames_drawn},\"blocks\":{},\"mean_us\":{:.1},\"p99.9_us\":{:.1},\"worst_us\":{:.1},\
         \"first_sound_s\":{},\"realtime_priority\":{rt}}}",
        times.len(),
        mean * 1e6,
        p999.as_secs_f64() * 1e6,
        worst.as_secs_f64() * 1e6,
        first_sound.map_or("null".to_string(), |t| format!("{:.2}", t.as_secs_f64())),
    );
}
