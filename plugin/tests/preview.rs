//! A long video plays a quick preview of its start within moments, and the
//! full piece replaces it; a bounce is always of the full piece.

mod common;

use common::*;
use vidmusician_engine::video::synth::{SynthSpec, write_video};

const RATE: u32 = 48_000;
const BLOCK: usize = 1024;
/// The plugin's preview length.
const PREVIEW_S: f64 = 8.0;

fn long_video() -> std::path::PathBuf {
    static VIDEO: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    VIDEO
        .get_or_init(|| {
            let video = fixture().0.path().join("long.mp4");
            let cuts = vec![1.5, 3.2, 5.0, 7.4, 9.9, 12.5, 15.1, 17.0];
            write_video(&video, &SynthSpec::new(160, 120, 25, 20.0, cuts)).unwrap();
            video
        })
        .clone()
}

#[test]
fn the_preview_plays_first_and_the_full_piece_replaces_it() {
    let video = long_video();
    let preview = expected_preview(&video, 4, RATE, PREVIEW_S);
    let full = expected(&video, 4, RATE);
    assert_ne!(
        preview.channels[0][..RATE as usize],
        full.channels[0][..RATE as usize]
    );
    let mut inst = instance();
    load_state(&mut inst, &state_json(&video, 4));
    let mut proc = start(&mut inst, f64::from(RATE), BLOCK);
    let mut d = Driver::new(BLOCK);
    // Looping the first second in real time (a host running faster than
    // real time is rendering, and a render waits for the full piece): the
    // first music heard is the preview's.
    let period = std::time::Duration::from_secs_f64(BLOCK as f64 / f64::from(RATE));
    let first = loop {
        let (l, r) = d.block(&mut proc, 0.5, BLOCK, true);
        if l.iter().any(|&x| x != 0.0) {
            break (l.to_vec(), r.to_vec());
        }
        std::thread::sleep(period);
    };
    assert!(assert_plays((&first.0, &first.1), &preview, (RATE / 2) as i64, "preview") > 0);
    // Playing on, the full piece comes in at a bar line and then plays
    // alone, past the preview's end too.
    for _ in 0..2000 {
        let mut all_full = true;
        let mut f = 0usize;
        while f < 20 * RATE as usize {
            let (l, r) = d.block(&mut proc, f as f64 / f64::from(RATE), BLOCK, true);
            let want = |i: usize, c: usize| full.channels[c].get(f + i).copied().unwrap_or(0.0);
            all_full &= l.iter().enumerate().all(|(i, &x)| x == want(i, 0))
                && r.iter().enumerate().all(|(i, &x)| x == want(i, 1));
            f += BLOCK;
        }
        if all_full {
            inst.deactivate(proc.stop_processing());
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    panic!("the full piece never replaced the preview");
}

#[test]
fn a_bounce_is_of_the_full_piece_even_after_a_preview() {
    let video = long_video();
    let full = expected(&video, 6, RATE);
    let mut inst = instance();
    load_state(&mut inst, &state_json(&video, 6));
    // Realtime first (a preview is asked for), then the host bounces.
    let mut proc = start(&mut inst, f64::from(RATE), BLOCK);
    set_offline(&mut inst);
    let mut d = Driver::new(BLOCK);
    let mut f = 0usize;
    let mut sounding = 0;
    while f < 20 * RATE as usize {
        let got = d.block(&mut proc, f as f64 / f64::from(RATE), BLOCK, true);
        sounding += assert_plays(got, &full, f as i64, "bounce");
        f += BLOCK;
    }
    assert!(sounding > 10 * RATE as usize);
    inst.deactivate(proc.stop_processing());
}
