//! Benchmark (not a test): time from activation to first sound in the
//! plugin with the neural engines on the CPU, 8-bit as the plugin runs them,
//! at musicgen-small's and clip-vit-base-patch32's sizes (random weights:
//! no checkpoint can be downloaded where it runs), for a 20 s 640×360
//! video. The text and the zero-shot engines, each cold (the models loaded
//! from disk on the way, as when a project opens) and warm (another
//! instance holds them, as for a new take); for the zero-shot engine also
//! cold again on another video once every instance has gone (the models
//! loaded from disk again, the vocabulary's text embeddings read from the
//! cache the first run left: a project opened in a later session). Run with
//! `cargo bench -p vidmusician-plugin --bench first_sound`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use vidmusician_engine::service::EngineChoice;
use vidmusician_engine::video::synth::{SynthSpec, write_video};
use vidmusician_plugin::editor::model::{EditorModel, Status};

fn main() {
    let (dir, _) = fixture();
    let models = dir.path().join("models");
    let (mg, clip) = (
        models.join("musicgen-small"),
        models.join("clip-vit-base-patch32"),
    );
    std::fs::create_dir_all(&mg).unwrap();
    std::fs::create_dir_all(&clip).unwrap();
    eprintln!("writing random checkpoints…");
    vidmusician_engine::neural::bench::write_random_checkpoint(&mg).unwrap();
    vidmusician_engine::neural::models::clip::bench::write_random_checkpoint(&clip).unwrap();
    // SAFETY: set before any engine of this process starts.
    unsafe { std::env::set_var("VIDMUSICIAN_MODELS", &models) };
    let video = dir.path().join("bench-20s.mp4");
    let cuts: Vec<f64> = (1..7).map(|k| f64::from(k) * 2.9).collect();
    write_video(&video, &SynthSpec::new(640, 360, 25, 20.0, cuts)).unwrap();
    let other_video = dir.path().join("bench-20s-other.mp4");
    let cuts: Vec<f64> = (1..9).map(|k| f64::from(k) * 2.2).collect();
    write_video(&other_video, &SynthSpec::new(640, 360, 25, 20.0, cuts)).unwrap();
    for engine in [EngineChoice::Text, EngineChoice::ZeroShot] {
        eprintln!("{}: cold…", engine.as_str());
        let (cold, holder) = first_sound(&video, engine, 1);
        // The first instance made its whole piece; it holds the models.
        wait_finished(&holder.1, Duration::from_secs(600));
        eprintln!("{}: warm…", engine.as_str());
        let (warm, other) = first_sound(&video, engine, 2);
        drop(other);
        drop(holder);
        let again = if engine == EngineChoice::ZeroShot {
            let held = (
                vidmusician_engine::service::musicgen_loads().1,
                vidmusician_engine::service::clip_loads().1,
            );
            assert_eq!(held, (0, 0), "models outlived every instance: not cold");
            eprintln!("{}: cold again, another video…", engine.as_str());
            let (again, held) = first_sound(&other_video, engine, 3);
            drop(held);
            format!(",\"cold_again_s\":{}", secs(again))
        } else {
            String::new()
        };
        println!(
            "{{\"bench\":\"plugin: activation to first sound, {} engine, 20 s 640x360 video, \
             musicgen-small{} shapes, random weights, 8-bit, CPU\",\"cold_s\":{},\"warm_s\":{}{again}}}",
            engine.as_str(),
            if engine == EngineChoice::ZeroShot {
                " + clip-vit-base-patch32"
            } else {
                ""
            },
            secs(cold),
            secs(warm),
        );
    }
}

fn secs(t: Option<Duration>) -> String {
    t.map_or("null".into(), |t| format!("{:.2}", t.as_secs_f64()))
}

type Held = (
    clack_host::prelude::PluginInstance<TestHost>,
    std::sync::Arc<EditorModel>,
);

/// A new instance of `engine` on `video` with `seed`, activated and played
/// at real-time pace over the video's first second again and again (as a
/// user loops the start while the music comes: the engines make music
/// slower than real time on 2 cores, so a playhead running on would stay
/// ahead of it) until it sounds: the time that took, and the instance
/// (deactivated, its engine still making the piece).
fn first_sound(video: &Path, engine: EngineChoice, seed: u32) -> (Option<Duration>, Held) {
    let rate = 48_000.0;
    let block = 512usize;
    let mut inst = instance();
    let model = common::xvfb::newest_model();
    let state = format!(
        r#"{{"version":2,"video":{:?},"params":[[1,{seed}],[3,{}],[4,0]]}}"#,
        video.to_str().unwrap(),
        engine.index()
    );
    load_state(&mut inst, state.as_bytes());
    let t0 = Instant::now();
    let mut proc = start(&mut inst, rate, block);
    let mut d = Driver::new(block);
    let period = Duration::from_secs_f64(block as f64 / rate);
    let mut first = None;
    let mut frame = 0usize;
    while first.is_none() && t0.elapsed() < Duration::from_secs(300) {
        let start = Instant::now();
        let at = (frame % rate as usize) as f64 / rate;
        let (l, _) = d.block(&mut proc, at, block, true);
        if l.iter().any(|&x| x != 0.0) {
            first = Some(t0.elapsed());
        }
        frame += block;
        if let Some(rest) = period.checked_sub(start.elapsed()) {
            std::thread::sleep(rest);
        }
    }
    inst.deactivate(proc.stop_processing());
    (first, (inst, model))
}

fn wait_finished(model: &EditorModel, limit: Duration) {
    let t0 = Instant::now();
    while !matches!(model.view().status, Status::Finished { .. }) && t0.elapsed() < limit {
        std::thread::sleep(Duration::from_millis(200));
    }
}
