//! Following the host's tempo: a new tempo brings a new take, made at that
//! tempo on the host's bar grid, in at the next bar with a short crossfade.

mod common;

use assert_no_alloc::AllocDisabler;
use clack_host::prelude::*;
use common::*;
use vidmusician_engine::audio::Audio;
use vidmusician_engine::service::Request;
use vidmusician_engine::sketch::Meter;
use vidmusician_engine::video::synth::{SynthSpec, write_video};

#[global_allocator]
static ALLOCATOR: AllocDisabler = AllocDisabler;

const RATE: u32 = 48_000;
const BLOCK: usize = 480;

/// Where each pass starts: 1 s, which is not on a bar line at 90 BPM, so
/// the old take plays for a while before the next bar.
const LOOP_START: usize = RATE as usize;

/// One pass from `LOOP_START` to `frames` at `tempo`, as a host looping that
/// region plays it; the output is indexed by piece frame (zero before the
/// loop start).
fn pass(
    d: &mut Driver,
    proc: &mut StartedPluginAudioProcessor<TestHost>,
    frames: usize,
    (tempo, signature): (f64, (u16, u16)),
) -> [Vec<f32>; 2] {
    let mut out = [vec![0.0; LOOP_START], vec![0.0; LOOP_START]];
    let mut f = LOOP_START;
    while f < frames {
        let t = transport_in(f as f64 / f64::from(RATE), true, tempo, signature);
        let (l, r) = d.block_with(proc, &t, BLOCK);
        out[0].extend_from_slice(l);
        out[1].extend_from_slice(r);
        f += BLOCK;
    }
    out
}

fn same(out: &[Vec<f32>; 2], want: &Audio, range: std::ops::Range<usize>) -> bool {
    range.into_iter().all(|i| {
        let w = |c: usize| want.channels[c].get(i).copied().unwrap_or(0.0);
        out[0][i] == w(0) && out[1][i] == w(1)
    })
}

/// Loops passes, giving the plugin main-thread turns when it asks, until
/// `done` says so (at most `limit` passes).
fn loop_until(
    inst: &mut PluginInstance<TestHost>,
    d: &mut Driver,
    proc: &mut StartedPluginAudioProcessor<TestHost>,
    frames: usize,
    grid: (f64, (u16, u16)),
    mut done: impl FnMut(&[Vec<f32>; 2]) -> bool,
) -> [Vec<f32>; 2] {
    for _ in 0..400 {
        let out = pass(d, proc, frames, grid);
        if inst
            .access_shared_handler(|h| h.callback.swap(false, std::sync::atomic::Ordering::AcqRel))
        {
            inst.call_on_main_thread_callback();
        }
        if done(&out) {
            return out;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    panic!("the plugin never got there");
}

/// An instance playing `video` with `seed` and following the host's tempo,
/// active at `RATE`, and a driver for it.
fn following(
    video: &std::path::Path,
    seed: u32,
) -> (
    PluginInstance<TestHost>,
    StartedPluginAudioProcessor<TestHost>,
    Driver,
) {
    let mut inst = instance();
    let state = format!(
        r#"{{"version":1,"video":{:?},"params":[[1,{seed}],[4,1]]}}"#,
        video.to_str().unwrap()
    );
    load_state(&mut inst, state.as_bytes());
    let proc = start(&mut inst, f64::from(RATE), BLOCK);
    (inst, proc, Driver::new(BLOCK))
}

#[test]
fn a_tempo_change_brings_a_new_take_in_on_the_next_bar() {
    let (dir, _) = fixture();
    let video = dir.path().join("tempo.mp4");
    write_video(
        &video,
        &SynthSpec::new(192, 144, 25, 8.0, vec![1.3, 3.1, 5.6]),
    )
    .unwrap();
    let frames = 8 * RATE as usize;
    // Bars of the host's 4/4 start at song time 0 (the video's offset is 0).
    let at120 = expected_with(&video, 2, RATE, Some(120.0), Some(0.0));
    let at90 = expected_with(&video, 2, RATE, Some(90.0), Some(0.0));

    let (mut inst, mut proc, mut d) = following(&video, 2);

    // The host plays at 120 BPM: soon the whole pass is the 120 BPM take.
    let played = LOOP_START..frames;
    loop_until(
        &mut inst,
        &mut d,
        &mut proc,
        frames,
        (120.0, (4, 4)),
        |out| same(out, &at120, played.clone()),
    );

    // The tempo changes to 90. In the pass where the new take comes in,
    // the old one plays up to a bar line of the new tempo, the crossfade
    // starts there, and after it the 90 BPM take plays alone.
    let bar90 = (4.0 * 60.0 / 90.0 * f64::from(RATE)).round() as usize;
    let xfade = (0.05 * f64::from(RATE)) as usize;
    let out = loop_until(
        &mut inst,
        &mut d,
        &mut proc,
        frames,
        (90.0, (4, 4)),
        |out| !same(out, &at120, played.clone()),
    );
    let first_diff = played
        .clone()
        .find(|&i| !same(&out, &at120, i..i + 1))
        .unwrap();
    // The crossfade starts on the bar line at or before the first frame
    // that differs (its first frames may round to the old take's values).
    let switch = first_diff / bar90 * bar90;
    assert!(
        switch > LOOP_START,
        "switched at {switch}, before the loop's first bar line"
    );
    assert!(
        first_diff - switch <= xfade,
        "the new take came in at frame {first_diff}, not at a bar line ({bar90} frames a bar)"
    );
    assert!(
        same(&out, &at120, LOOP_START..switch),
        "before the bar the old take must play"
    );
    // After it the 90 BPM take plays alone; in this pass, music the engine
    // is still handing over may be silent (real time never waits).
    let pending_or_same = (switch + xfade..frames).all(|i| {
        let silent = out[0][i] == 0.0 && out[1][i] == 0.0;
        silent || same(&out, &at90, i..i + 1)
    });
    assert!(
        pending_or_same,
        "after the crossfade the 90 BPM take must play alone"
    );
    // From then on, every pass is the new take.
    let next = pass(&mut d, &mut proc, frames, (90.0, (4, 4)));
    assert!(same(&next, &at90, played));
    inst.deactivate(proc.stop_processing());
}

#[test]
fn the_music_takes_the_hosts_time_signature() {
    let (dir, _) = fixture();
    let video = dir.path().join("waltz.mp4");
    write_video(&video, &SynthSpec::new(192, 144, 25, 6.0, vec![1.7, 4.2])).unwrap();
    let frames = 6 * RATE as usize;
    let played = LOOP_START..frames;
    let want = |meter: &str| {
        let mut r = Request::new(&video);
        r.tempo = Some(120.0);
        r.downbeat = Some(0.0);
        r.meter = Meter::parse(meter).unwrap();
        expected_for(r, 3, RATE)
    };
    let (in_4, in_3, in_6) = (want("4/4"), want("3/4"), want("6/8"));
    assert!(!same(
        &[in_3.channels[0].clone(), in_3.channels[1].clone()],
        &in_4,
        played.clone()
    ));

    let (mut inst, mut proc, mut d) = following(&video, 3);
    // The host is in 3/4: the music's bars are three beats long. Then the
    // signature changes to 6/8: a new take, in 6/8. Then to one the composer
    // cannot write: taken as 4/4.
    for (signature, want) in [((3, 4), &in_3), ((6, 8), &in_6), ((4, 3), &in_4)] {
        loop_until(
            &mut inst,
            &mut d,
            &mut proc,
            frames,
            (120.0, signature),
            |out| same(out, want, played.clone()),
        );
    }
    inst.deactivate(proc.stop_processing());
}

#[test]
fn moving_the_video_off_the_bar_grid_brings_music_on_it() {
    let (dir, _) = fixture();
    let video = dir.path().join("moved.mp4");
    write_video(&video, &SynthSpec::new(192, 144, 25, 5.0, vec![1.2, 3.4])).unwrap();
    let frames = 7 * RATE as usize;
    // At offset 0 the bars of the host's 4/4 at 120 BPM start at piece time
    // 0; moved by half a bar (1 s), they start at piece time −1 s.
    let on_grid = |downbeat: f64| {
        let mut r = Request::new(&video);
        r.tempo = Some(120.0);
        r.downbeat = Some(downbeat);
        expected_for(r, 4, RATE)
    };
    let (at0, moved) = (on_grid(0.0), on_grid(-1.0));
    // Song frame i plays piece frame i − offset.
    let shifted = |a: &Audio, offset: usize| {
        let pad = |c: &Vec<f32>| {
            let mut v = vec![0.0; offset];
            v.extend_from_slice(c);
            v
        };
        Audio {
            sample_rate: a.sample_rate,
            channels: a.channels.iter().map(pad).collect(),
        }
    };
    let played = LOOP_START..frames;

    let (mut inst, mut proc, mut d) = following(&video, 4);
    loop_until(
        &mut inst,
        &mut d,
        &mut proc,
        frames,
        (120.0, (4, 4)),
        |out| same(out, &at0, played.clone()),
    );
    // The video moves to song time 1 s (automation, or the editor).
    d.input_events
        .push(&clack_host::events::event_types::ParamValueEvent::new(
            0,
            ClapId::new(vidmusician_plugin::params::ParamId::VideoOffset as u32),
            clack_host::events::Pckn::match_all(),
            1.0,
        ));
    d.block_with(&mut proc, &transport_in(0.0, false, 120.0, (4, 4)), BLOCK);
    let want = shifted(&moved, RATE as usize);
    loop_until(
        &mut inst,
        &mut d,
        &mut proc,
        frames,
        (120.0, (4, 4)),
        |out| same(out, &want, played.clone()),
    );
    inst.deactivate(proc.stop_processing());
}
