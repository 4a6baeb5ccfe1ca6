//! The engine service as its clients use it: requests, progress, chunks for
//! a real-time reader, cancel and supersede, the disk cache.

use std::path::Path;

use assert_no_alloc::{AllocDisabler, assert_no_alloc};
use vidmusician_engine::Error;
use vidmusician_engine::service::{Engine, EngineConfig, Event, Request};
use vidmusician_engine::video::synth::{SynthSpec, write_video};

#[global_allocator]
static ALLOCATOR: AllocDisabler = AllocDisabler;

fn video(dir: &Path, name: &str, duration: f64) -> std::path::PathBuf {
    let p = dir.join(name);
    write_video(
        &p,
        &SynthSpec::new(192, 144, 25, duration, vec![1.0, 2.4, 3.3]),
    )
    .unwrap();
    p
}

fn engine(dir: &Path) -> Engine {
    Engine::start(EngineConfig {
        cache_dir: Some(dir.join("cache")),
        ..EngineConfig::default()
    })
    .unwrap()
}

#[test]
fn chunks_reach_a_real_time_reader_without_allocation() {
    let dir = tempfile::tempdir().unwrap();
    let v = video(dir.path(), "v.mp4", 4.0);
    let eng = engine(dir.path());
    let mut req = Request::new(&v);
    req.sample_rate = 44_100;
    req.chunk_frames = 1000;
    // Fewer slots than chunks: the engine must wait for the reader.
    req.max_chunks = 16;
    let (id, reader) = eng.submit(req).unwrap();
    let mut reader = reader.unwrap();
    let total = (4.0 * 44_100.0) as usize;
    let mut left = vec![0.0f32; total];
    let mut got = 0usize;
    let mut done = None;
    let mut progress_seen = false;
    assert_no_alloc::reset_violation_count();
    while done.is_none() || reader.ready() > 0 {
        // What an audio callback would do: take, copy, hand back.
        assert_no_alloc(|| {
            while let Some(chunk) = reader.pop() {
                let s = chunk.start as usize;
                left[s..s + chunk.frames()].copy_from_slice(&chunk.left);
                got += chunk.frames();
                if let Err(c) = reader.retire(chunk) {
                    // Not expected with equal ring sizes; keep it alive
                    // rather than free it here.
                    std::mem::forget(c);
                }
            }
        });
        while let Ok(ev) = eng.events().try_recv() {
            match ev {
                Event::Progress { .. } => progress_seen = true,
                Event::Done { id: i, result } if i == id => done = Some(result),
                Event::Failed { error, .. } => panic!("{error}"),
                _ => {}
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    assert_eq!(
        assert_no_alloc::violation_count(),
        0,
        "the reader allocated"
    );
    let done = done.unwrap();
    assert!(progress_seen);
    assert_eq!(got, total);
    assert_eq!(done.audio.len(), total);
    assert_eq!(&left[..], &done.audio.channels[0][..]);
}

#[test]
fn finished_audio_is_cached_and_keyed_by_its_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let v = video(dir.path(), "v.mp4", 3.0);
    let eng = engine(dir.path());
    let run = |seed| {
        let mut r = Request::new(&v);
        r.seed = seed;
        let (id, _) = eng.submit(r).unwrap();
        eng.wait(id, |_| {}).unwrap()
    };
    let first = run(7);
    assert!(!first.cached);
    let again = run(7);
    assert!(again.cached, "same request was not served from the cache");
    assert_eq!(first.audio, again.audio);
    assert_eq!(first.bpm, again.bpm);
    assert_eq!(first.cache_key, again.cache_key);
    let other = run(8);
    assert!(!other.cached);
    assert_ne!(other.cache_key, first.cache_key);
    // A damaged cache entry is dropped and the music made again.
    std::fs::write(
        dir.path()
            .join("cache")
            .join(format!("{}.wav", first.cache_key)),
        b"junk",
    )
    .unwrap();
    let rebuilt = run(7);
    assert!(!rebuilt.cached);
    assert_eq!(rebuilt.audio, first.audio);
}

#[test]
fn a_superseding_request_cancels_the_running_one() {
    let dir = tempfile::tempdir().unwrap();
    let long = video(dir.path(), "long.mp4", 20.0);
    let short = video(dir.path(), "short.mp4", 2.0);
    let eng = engine(dir.path());
    let (a, _) = eng.submit(Request::new(&long)).unwrap();
    let mut r = Request::new(&short);
    r.supersede = true;
    let (b, _) = eng.submit(r).unwrap();
    let mut a_outcome = None;
    let done = eng.wait(b, |ev| match ev {
        Event::Cancelled { id } if *id == a => a_outcome = Some("cancelled"),
        Event::Done { id, .. } if *id == a => a_outcome = Some("done"),
        _ => {}
    });
    assert!(done.is_ok());
    assert_eq!(a_outcome, Some("cancelled"));
}

#[test]
fn a_reader_says_when_no_more_music_will_come() {
    let dir = tempfile::tempdir().unwrap();
    let long = video(dir.path(), "long.mp4", 20.0);
    let short = video(dir.path(), "short.mp4", 2.0);
    let eng = engine(dir.path());
    let chunked = |v: &Path, supersede: bool| {
        let mut r = Request::new(v);
        r.chunk_frames = 48_000;
        r.max_chunks = 64;
        r.supersede = supersede;
        r
    };
    // A request cancelled while it is made: its reader finishes short.
    let (a, reader) = eng.submit(chunked(&long, false)).unwrap();
    let mut cancelled = reader.unwrap();
    assert!(!cancelled.is_finished(), "finished before it began");
    let (b, reader) = eng.submit(chunked(&short, true)).unwrap();
    let mut done = reader.unwrap();
    eng.wait(b, |ev| {
        if let Event::Done { id, .. } = ev {
            assert_ne!(*id, a, "the long piece was not cancelled");
        }
    })
    .unwrap();
    let mut popped = 0;
    let t0 = std::time::Instant::now();
    while !cancelled.is_finished() {
        popped += usize::from(cancelled.pop().is_some());
        assert!(
            t0.elapsed().as_secs() < 30,
            "a cancelled reader never finished"
        );
    }
    assert!(popped < 20, "{popped} chunks of a cancelled 20 s piece");
    // A finished request: finished once every chunk is taken, not before.
    assert!(!done.is_finished());
    let mut n = 0;
    while done.pop().is_some() {
        n += 1;
    }
    assert_eq!(n, 2);
    assert!(done.is_finished());
    // Served whole from the cache: the same.
    let (_, cached) = eng.submit_cached(&chunked(&short, false)).unwrap();
    let mut cached = cached;
    assert!(!cached.is_finished());
    while cached.pop().is_some() {}
    assert!(cached.is_finished());
}

#[test]
fn errors_come_back_as_events_and_the_engine_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let eng = engine(dir.path());
    let (id, _) = eng
        .submit(Request::new(dir.path().join("missing.mp4")))
        .unwrap();
    let e = eng.wait(id, |_| {}).unwrap_err();
    assert!(matches!(e, Error::NotFound(_)), "{e}");
    let mut bad = Request::new(dir.path().join("x.mp4"));
    bad.sample_rate = 0;
    assert!(eng.submit(bad).is_err());
    let v = video(dir.path(), "v.mp4", 2.0);
    let (id, _) = eng.submit(Request::new(&v)).unwrap();
    assert!(eng.wait(id, |_| {}).is_ok());
}

#[test]
fn dropping_the_engine_cancels_and_joins() {
    // Two minutes of music from the tiny MusicGen: many seconds of work,
    // its chunks handed over as they are made.
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/musicgen-tiny");
    let eng = Engine::start(EngineConfig {
        cache_dir: None,
        model_dir: Some(model),
        ..EngineConfig::default()
    })
    .unwrap();
    let mut r = Request::text("calm", 120.0);
    r.sample_rate = 32_000;
    r.chunk_frames = 4096;
    let count = (120 * 32_000usize).div_ceil(4096);
    r.max_chunks = count + 1;
    let (_, reader) = eng.submit(r).unwrap();
    let mut reader = reader.unwrap();
    let mut got = 0;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while got == 0 {
        assert!(std::time::Instant::now() < deadline, "no music came");
        while reader.pop().is_some() {
            got += 1;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    // Dropped while generating: the work is cancelled, the thread joined,
    // and the reader, which outlives the engine, gets no more of the piece.
    drop(eng);
    while reader.pop().is_some() {
        got += 1;
    }
    assert!(
        got < count,
        "the whole piece was made: {got} chunks of {count}"
    );
    drop(reader);
}

#[test]
fn a_preview_scores_only_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let v = video(dir.path(), "v.mp4", 6.0);
    let eng = engine(dir.path());
    let mut r = Request::new(&v);
    r.preview_until = Some(2.0);
    let (id, _) = eng.submit(r).unwrap();
    let preview = eng.wait(id, |_| {}).unwrap();
    assert_eq!(preview.audio.len(), 2 * 48_000);
    let a = preview.analysis.unwrap();
    assert!(a.cuts.iter().all(|c| c.time < 2.0), "{:?}", a.cuts);
    assert_eq!(a.cuts.len(), 1, "the cut at 1.0 s is in the preview");
    let (id, _) = eng.submit(Request::new(&v)).unwrap();
    let full = eng.wait(id, |_| {}).unwrap();
    assert_eq!(
        full.audio.len(),
        6 * 48_000,
        "a preview's analysis must not stand in for the full one"
    );
}

#[test]
fn cached_music_is_served_at_once_on_the_callers_thread() {
    let dir = tempfile::tempdir().unwrap();
    let v = video(dir.path(), "v.mp4", 3.0);
    let eng = engine(dir.path());
    let mut r = Request::new(&v);
    r.chunk_frames = 4800;
    assert!(eng.submit_cached(&r).is_none(), "nothing is cached yet");
    let (id, _) = eng.submit(r.clone()).unwrap();
    let made = eng.wait(id, |_| {}).unwrap();
    let (_, mut reader) = eng.submit_cached(&r).expect("cached after the first run");
    let mut left = Vec::new();
    while let Some(c) = reader.pop() {
        assert_eq!(c.start as usize, left.len());
        left.extend_from_slice(&c.left);
        reader.retire(c).unwrap();
    }
    assert_eq!(left, made.audio.channels[0]);
    let mut other = r.clone();
    other.seed = 99;
    assert!(eng.submit_cached(&other).is_none());
}

#[test]
fn the_text_engine_runs_on_the_engine_thread_and_is_cached() {
    let dir = tempfile::tempdir().unwrap();
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/musicgen-tiny");
    let engine = Engine::start(EngineConfig {
        cache_dir: Some(dir.path().join("cache")),
        model_dir: Some(model),
        ..EngineConfig::default()
    })
    .unwrap();
    let mut req = Request::text("calm piano", 1.0);
    req.sample_rate = 32_000;
    req.seed = 5;
    let (id, _) = engine.submit(req.clone()).unwrap();
    let mut composing = 0;
    let first = engine
        .wait(id, |ev| {
            if let Event::Progress { stage, .. } = ev
                && *stage == vidmusician_engine::service::Stage::Composing
            {
                composing += 1;
            }
        })
        .unwrap();
    assert_eq!(first.engine.as_str(), "text");
    assert_eq!(first.audio.len(), 32_000);
    assert!(first.bpm.is_none());
    assert!(composing > 10, "progress per decoder step, got {composing}");
    let (id, _) = engine.submit(req.clone()).unwrap();
    let again = engine.wait(id, |_| {}).unwrap();
    assert!(again.cached);
    assert_eq!(again.audio.channels, first.audio.channels);
    // `auto` with no video is the text engine: same key, same music.
    assert!(engine.submit_cached(&req).is_some());

    // A new seed is another piece.
    req.seed = 6;
    let (id, _) = engine.submit(req).unwrap();
    let other = engine.wait(id, |_| {}).unwrap();
    assert!(!other.cached);
    assert_ne!(other.audio.channels, first.audio.channels);

    // A piece of several windows comes through the chunk ring as it is made;
    // the chunks are the finished piece, mastered like the composer's music.
    let mut long = Request::text("calm piano", 12.0);
    long.sample_rate = 48_000;
    long.chunk_frames = 4800;
    long.max_chunks = 200;
    let (id, reader) = engine.submit(long).unwrap();
    let mut reader = reader.unwrap();
    let done = engine.wait(id, |_| {}).unwrap();
    assert_eq!(done.audio.len(), 12 * 48_000);
    let mut got = [Vec::new(), Vec::new()];
    while let Some(c) = reader.pop() {
        assert_eq!(c.start as usize, got[0].len(), "chunks in order");
        got[0].extend_from_slice(&c.left);
        got[1].extend_from_slice(&c.right);
    }
    assert_eq!(got[0], done.audio.channels[0]);
    assert_eq!(got[1], done.audio.channels[1]);
    let l = done.loudness.unwrap();
    assert!((l.integrated_lufs + 14.0).abs() < 1.0, "{l:?}");
    assert!(l.true_peak_dbtp <= -0.5, "{l:?}");

    // The neural engine's worker threads (candle's and the decoder's) are the
    // engine's: they end with it.
    let parallel = std::thread::available_parallelism().map_or(1, |n| n.get());
    if parallel > 1 && std::env::var_os("RAYON_NUM_THREADS").is_none() {
        assert!(step_threads() >= 2, "the model ran on no pools of its own");
    }
    drop(engine);
    // Joined by then; the kernel may take a moment more to reap a thread
    // that has ended, under load.
    let t0 = std::time::Instant::now();
    while step_threads() > 0 && t0.elapsed() < std::time::Duration::from_secs(2) {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert_eq!(step_threads(), 0, "decoder threads outlived the engine");
}

fn step_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|c| {
            let c = c.trim();
            c.starts_with("vidmusician-ste") || c.starts_with("vidmusician-par")
        })
        .count()
}

#[test]
fn a_playrate_retimes_the_music_to_the_video_as_played() {
    let dir = tempfile::tempdir().unwrap();
    let v = video(dir.path(), "v.mp4", 4.0);
    let eng = engine(dir.path());
    let (id, _) = eng.submit(Request::new(&v)).unwrap();
    let normal = eng.wait(id, |_| {}).unwrap().analysis.unwrap();
    let cuts: Vec<f64> = normal.cuts.iter().map(|c| c.time).collect();
    assert_eq!(cuts.len(), 3);
    // An item trimmed to 0.5–4.0 s of the video, played twice as fast:
    // 1.75 s of music whose cuts come at (t − 0.5) / 2.
    let mut r = Request::new(&v);
    r.playrate = 2.0;
    r.range = Some((0.5, 4.0));
    let (id, _) = eng.submit(r.clone()).unwrap();
    let fast = eng.wait(id, |_| {}).unwrap();
    assert_eq!(fast.audio.len(), (1.75f64 * 48_000.0).round() as usize);
    let a = fast.analysis.unwrap();
    assert!((a.duration - 2.0).abs() < 1e-9, "{}", a.duration);
    let got: Vec<f64> = a.cuts.iter().map(|c| c.time).collect();
    for (g, c) in got.iter().zip(&cuts) {
        assert!((g - c / 2.0).abs() < 1e-9, "{got:?} vs {cuts:?}");
    }
    assert_eq!(a.rhythm_50hz.len(), 100);
    // Slow motion: twice as long.
    r.playrate = 0.5;
    r.range = None;
    let (id, _) = eng.submit(r.clone()).unwrap();
    assert_eq!(eng.wait(id, |_| {}).unwrap().audio.len(), 8 * 48_000);
    r.playrate = 0.0;
    assert!(eng.submit(r).is_err());
}

/// Waits for request `id`'s overview (failing on its failure).
fn wait_overview(eng: &Engine, id: u64) -> std::sync::Arc<vidmusician_engine::service::Overview> {
    loop {
        match eng.events().recv().unwrap() {
            Event::Overview { id: got, overview } if got == id => return overview,
            Event::Failed { id: got, error } if got == id => panic!("overview failed: {error}"),
            Event::Cancelled { id: got } if got == id => panic!("overview cancelled"),
            _ => {}
        }
    }
}

#[test]
fn an_overview_shows_the_pictures_the_cuts_and_the_music() {
    use vidmusician_engine::service::{MusicSource, OverviewRequest};
    let dir = tempfile::tempdir().unwrap();
    let v = video(dir.path(), "v.mp4", 4.0);
    let eng = engine(dir.path());
    let mut req = Request::new(&v);
    req.sample_rate = 32_000;
    let resolved = eng.resolve(&req).unwrap();
    // The video alone, before any music.
    let id = eng
        .overview(OverviewRequest {
            resolved: resolved.clone(),
            music: None,
            thumbnails: 8,
        })
        .unwrap();
    let o = wait_overview(&eng, id);
    let video = o.video.as_ref().expect("the video's side");
    assert!(o.music.is_none());
    assert!((video.duration - 4.0).abs() < 0.05, "{}", video.duration);
    assert_eq!(video.thumbnails.len(), 8);
    for (k, t) in video.thumbnails.iter().enumerate() {
        assert!(
            (t.time - k as f64 * 0.5).abs() < 0.05,
            "thumbnail {k} at {}",
            t.time
        );
        assert_eq!(t.rgb.len(), (t.side * t.side * 3) as usize);
    }
    // The synthetic shots differ in colour: thumbnails across a cut do too.
    assert_ne!(video.thumbnails[0].rgb, video.thumbnails[7].rgb);
    assert_eq!(video.curve_rate, 25.0);
    assert!(
        (video.curve.len() as f64 - 100.0).abs() <= 2.0,
        "{}",
        video.curve.len()
    );
    let cuts: Vec<f64> = video.cuts.iter().map(|c| c.time).collect();
    assert_eq!(cuts.len(), 3, "{cuts:?}");
    for (c, want) in cuts.iter().zip([1.0, 2.4, 3.3]) {
        assert!((c - want).abs() < 0.05, "{cuts:?}");
    }

    // The music once made: from the piece in hand and from the cache, the
    // same waveform and onsets.
    let (id, _) = eng.submit(req.clone()).unwrap();
    let done = eng.wait(id, |_| {}).unwrap();
    let from_audio = wait_overview(
        &eng,
        eng.overview(OverviewRequest {
            resolved: resolved.clone(),
            music: Some(MusicSource::Audio {
                audio: done.audio.clone(),
                bpm: done.bpm,
                downbeat: done.downbeat,
            }),
            thumbnails: 8,
        })
        .unwrap(),
    );
    let from_cache = wait_overview(
        &eng,
        eng.overview(OverviewRequest {
            resolved,
            music: Some(MusicSource::Cached(done.cache_key.clone())),
            thumbnails: 8,
        })
        .unwrap(),
    );
    let m = from_audio.music.as_ref().expect("the music's side");
    assert_eq!(from_cache.music, from_audio.music);
    assert_eq!(from_cache.video, o.video);
    assert!((m.seconds - 4.0).abs() < 0.01, "{}", m.seconds);
    assert_eq!(m.peaks.len(), 800);
    assert!(m.peaks.iter().all(|[lo, hi]| lo <= hi));
    assert!(
        m.peaks.iter().any(|[lo, hi]| hi - lo > 0.05),
        "a silent waveform"
    );
    assert!(!m.onsets.is_empty());
    assert!(m.onsets.iter().all(|t| (0.0..4.0).contains(t)));
}

#[test]
fn an_overview_of_a_video_that_is_gone_fails_with_its_reason() {
    use vidmusician_engine::service::OverviewRequest;
    let dir = tempfile::tempdir().unwrap();
    let v = video(dir.path(), "v.mp4", 2.0);
    let eng = engine(dir.path());
    let resolved = eng.resolve(&Request::new(&v)).unwrap();
    std::fs::remove_file(&v).unwrap();
    let id = eng
        .overview(OverviewRequest {
            resolved,
            music: None,
            thumbnails: 4,
        })
        .unwrap();
    loop {
        match eng.events().recv().unwrap() {
            Event::Failed { id: got, error } if got == id => {
                assert!(error.to_string().contains("v.mp4"), "{error}");
                break;
            }
            Event::Overview { id: got, .. } if got == id => panic!("an overview of nothing"),
            _ => {}
        }
    }
    // The engine goes on.
    let (id, _) = eng
        .submit(Request::new(video(dir.path(), "w.mp4", 1.0)))
        .unwrap();
    eng.wait(id, |_| {}).unwrap();
}

#[test]
fn a_section_made_again_changes_only_its_bars_and_undoing_it_restores_the_piece() {
    use vidmusician_engine::service::Section;
    let dir = tempfile::tempdir().unwrap();
    let v = video(dir.path(), "v.mp4", 6.0);
    let eng = engine(dir.path());
    let mut req = Request::new(&v);
    req.sample_rate = 32_000;
    req.seed = 3;
    let (id, _) = eng.submit(req.clone()).unwrap();
    let base = eng.wait(id, |_| {}).unwrap();
    let bpm = base.bpm.expect("the sketch engine chooses a tempo");
    let down = base.downbeat.expect("and places its bars");
    let bar = 4.0 * 60.0 / bpm;
    let rate = 32_000.0;
    let on_bar = |t: f64, up: bool| {
        let k = (t - down) / bar;
        down + if up { k.ceil() } else { k.floor() } * bar
    };

    let mut edited = req.clone();
    edited.sections = vec![Section {
        start: 1.3,
        end: 2.6,
        seed: 11,
    }];
    let (id, _) = eng.submit(edited.clone()).unwrap();
    let once = eng.wait(id, |_| {}).unwrap();
    assert_ne!(once.cache_key, base.cache_key);
    assert_eq!(once.audio.len(), base.audio.len());
    // The edit covers whole bars around the asked stretch, and nothing
    // outside them changed, bit for bit.
    let (lo, hi) = (on_bar(1.3, false).max(0.0), on_bar(2.6, true));
    let changed: Vec<usize> = (0..base.audio.len())
        .filter(|&i| {
            base.audio.channels[0][i] != once.audio.channels[0][i]
                || base.audio.channels[1][i] != once.audio.channels[1][i]
        })
        .collect();
    let (first, last) = (
        changed[0] as f64 / rate,
        *changed.last().unwrap() as f64 / rate,
    );
    assert!(
        first >= lo - 1e-3 && last <= hi + 1e-3,
        "changed {first:.3}–{last:.3} s, bars {lo:.3}–{hi:.3} s"
    );
    // … and most of what is inside did change.
    assert!(
        changed.len() as f64 > 0.5 * (hi.min(6.0) - lo) * rate,
        "{} samples changed",
        changed.len()
    );
    assert!(
        first < lo + 0.1 && last > hi.min(6.0) - 0.1,
        "changed {first:.3}–{last:.3} s"
    );

    // A second edit on top, elsewhere, keeps the first.
    let mut twice_req = edited.clone();
    twice_req.sections.push(Section {
        start: 4.5,
        end: 5.0,
        seed: 12,
    });
    let (id, _) = eng.submit(twice_req).unwrap();
    let twice = eng.wait(id, |_| {}).unwrap();
    let end_first = ((hi * rate) as usize).min(base.audio.len());
    assert_eq!(
        twice.audio.channels[0][..end_first],
        once.audio.channels[0][..end_first]
    );
    assert_ne!(twice.audio.channels[0], once.audio.channels[0]);

    // Undo: the piece without its last edit comes back from the cache, as
    // it was, bit for bit.
    let (id, _) = eng.submit(edited).unwrap();
    let undone = eng.wait(id, |_| {}).unwrap();
    assert!(undone.cached);
    assert_eq!(undone.audio.channels, once.audio.channels);
    let (id, _) = eng.submit(req).unwrap();
    let back = eng.wait(id, |_| {}).unwrap();
    assert!(back.cached);
    assert_eq!(back.audio.channels, base.audio.channels);
}

#[test]
fn a_section_that_is_not_a_stretch_is_refused() {
    use vidmusician_engine::service::Section;
    let dir = tempfile::tempdir().unwrap();
    let v = video(dir.path(), "v.mp4", 2.0);
    let eng = engine(dir.path());
    for (start, end) in [(1.0, 1.0), (1.5, 0.5), (-1.0, 1.0), (f64::NAN, 1.0)] {
        let mut req = Request::new(&v);
        req.sections = vec![Section {
            start,
            end,
            seed: 1,
        }];
        let err = eng.submit(req).err().expect("refused").to_string();
        assert!(err.contains("section"), "{err}");
    }
}

#[test]
fn a_downbeat_is_a_time_of_the_piece_also_for_a_part_of_the_video() {
    // The sketch engine composes the whole video and cuts the part out: a
    // part from 1.5 s with its bars at 0.25 s of the piece is the whole
    // piece with its bars at 1.75 s, cut.
    let dir = tempfile::tempdir().unwrap();
    let v = video(dir.path(), "v.mp4", 6.0);
    let eng = engine(dir.path());
    let make = |range: Option<(f64, f64)>, downbeat: f64| {
        let mut r = Request::new(&v);
        r.sample_rate = 32_000;
        r.tempo = Some(100.0);
        r.downbeat = Some(downbeat);
        r.range = range;
        let (id, _) = eng.submit(r).unwrap();
        eng.wait(id, |_| {}).unwrap()
    };
    let part = make(Some((1.5, 5.0)), 0.25);
    let whole = make(None, 1.75);
    let from = (1.5 * 32_000.0) as usize;
    let n = part.audio.len();
    assert_eq!(n, (3.5 * 32_000.0) as usize);
    assert_eq!(
        part.audio.channels[0][..],
        whole.audio.channels[0][from..from + n]
    );
    // Each says where its bars are, in its own time.
    let bar = 4.0 * 60.0 / 100.0;
    let phase = |d: f64| d.rem_euclid(bar);
    assert!(
        (phase(part.downbeat.unwrap()) - phase(0.25)).abs() < 1e-6,
        "{:?}",
        part.downbeat
    );
    assert!(
        (phase(whole.downbeat.unwrap()) - phase(1.75)).abs() < 1e-6,
        "{:?}",
        whole.downbeat
    );
}
