//! CLIP's features of a video: the rhythm curve from patch tokens, the
//! global features and the tags, and the cache that keeps them. (Its own
//! test binary: the count of encoded frames is per process.)

mod common;

use common::tiny_models;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use candle_core::{Device, Tensor};
use vidmusician_engine::analysis::clip_features::{
    FeatureCache, FeatureKey, curve_of_tokens, frames_encoded, global_features, patch_curve,
};
use vidmusician_engine::neural::models::clip::Clip;
use vidmusician_engine::video::synth::{SynthSpec, write_video};

/// Tests that count encoded frames run one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn clip() -> Clip {
    Clip::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/clip-tiny")).unwrap()
}

fn video(dir: &Path, seconds: f64, cuts: Vec<f64>) -> PathBuf {
    let p = dir.join("v.mp4");
    write_video(&p, &SynthSpec::new(96, 64, 25, seconds, cuts)).unwrap();
    p
}

#[test]
fn the_curve_of_patch_tokens_is_one_minus_the_cosine_of_neighbours() {
    // Three frames of two patches of two values, flattened per frame:
    // f0 = (1,0,0,1), f1 = (1,0,0,1) (the same), f2 = (0,1,1,0) (orthogonal
    // to f1), so d = [1 (the start), 0, 1].
    let t = Tensor::from_vec(
        vec![1f32, 0., 0., 1., 1., 0., 0., 1., 0., 1., 1., 0.],
        (3, 2, 2),
        &Device::Cpu,
    )
    .unwrap();
    let d = curve_of_tokens(&t).unwrap();
    assert_eq!(d.len(), 3);
    for (got, want) in d.iter().zip([1.0, 0.0, 1.0]) {
        assert!((got - want).abs() < 1e-6, "{d:?}");
    }
    // f1 at 60 degrees from f0: cos = 0.5 over the flattened patches.
    let t = Tensor::from_vec(
        vec![1f32, 0., 0., 0., 0.5, 0.75f32.sqrt(), 0., 0.],
        (2, 2, 2),
        &Device::Cpu,
    )
    .unwrap();
    let d = curve_of_tokens(&t).unwrap();
    assert!((d[1] - 0.5).abs() < 1e-6, "{d:?}");
}

#[test]
fn features_are_computed_once_per_video_and_model() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let v = video(dir.path(), 3.0, vec![1.4]);
    let clip = clip();
    let cancel = AtomicBool::new(false);
    let cache = FeatureCache::new(dir.path().join("features"));
    let key = |kind: &'static str, fps: f64| FeatureKey {
        content: "v".into(),
        model: "tiny".into(),
        kind,
        fps,
        until: None,
    };

    let before = frames_encoded();
    let first = cache
        .global(&key("global", 1.0), || {
            global_features(&v, &clip, None, &cancel, &mut |_| {})
        })
        .unwrap();
    assert_eq!(frames_encoded() - before, 3, "one frame a second");
    assert_eq!(first.pooled.len(), 3);
    assert_eq!(first.projected[0].len(), clip.config().projection_dim);

    // Again: from the cache, no frame encoded, the same numbers.
    let before = frames_encoded();
    let again = cache
        .global(&key("global", 1.0), || panic!("computed twice"))
        .unwrap();
    assert_eq!(frames_encoded(), before);
    assert_eq!(again, first);

    // The 25 fps curve: a cut shows as a peak at its frame.
    let before = frames_encoded();
    let curve = cache
        .curve(&key("local", 25.0), || {
            patch_curve(&v, &clip, None, &cancel, &mut |_| {})
        })
        .unwrap();
    assert_eq!(frames_encoded() - before, 75);
    assert_eq!(curve.len(), 75);
    assert_eq!(curve[0], 1.0);
    let peak = (1..curve.len())
        .max_by(|&a, &b| curve[a].total_cmp(&curve[b]))
        .unwrap();
    assert_eq!(peak, 35, "{curve:?}");
    let cached = cache
        .curve(&key("local", 25.0), || panic!("computed twice"))
        .unwrap();
    assert_eq!(cached, curve);

    // Another model is another entry.
    let mut other = key("global", 1.0);
    other.model = "other".into();
    let mut called = false;
    cache
        .global(&other, || {
            called = true;
            Ok(first.clone())
        })
        .unwrap();
    assert!(called);

    // A damaged entry is recomputed, not an error.
    for e in std::fs::read_dir(dir.path().join("features")).unwrap() {
        std::fs::write(e.unwrap().path(), b"not a safetensors file").unwrap();
    }
    let mut called = false;
    cache
        .global(&key("global", 1.0), || {
            called = true;
            Ok(first.clone())
        })
        .unwrap();
    assert!(called);
}

#[test]
fn one_decode_gives_what_two_passes_give_to_the_bit() {
    use vidmusician_engine::analysis::clip_features::{analysis_and_global, global_and_curve};
    use vidmusician_engine::analysis::{StatsEncoder, analyze_until};
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    // Wider than tall: CLIP's pictures are centre crops, the analysis'
    // are not, so the two sizes are scaled apart from the same frame.
    let v = video(dir.path(), 3.5, vec![1.2, 2.6]);
    let clip = clip();
    let cancel = AtomicBool::new(false);
    for (until, seconds) in [(None, 4), (Some(2.2), 3)] {
        let apart = analyze_until(
            &v,
            &mut StatsEncoder::default(),
            until,
            &cancel,
            &mut |_| {},
        )
        .unwrap();
        let global = global_features(&v, &clip, until, &cancel, &mut |_| {}).unwrap();
        assert_eq!(global.pooled.len(), seconds, "{until:?}");
        let before = frames_encoded();
        let mut seen = Vec::new();
        let (together, g) = analysis_and_global(
            &v,
            &mut StatsEncoder::default(),
            &clip,
            until,
            &cancel,
            &mut |f| seen.push(f),
        )
        .unwrap();
        assert_eq!(frames_encoded() - before, seconds, "each 1 fps frame once");
        assert_eq!(g, global, "{until:?}");
        assert_eq!(
            serde_json::to_string(&together).unwrap(),
            serde_json::to_string(&apart).unwrap(),
            "{until:?}"
        );
        assert!(seen.windows(2).all(|w| w[0] <= w[1]), "{seen:?}");
        assert_eq!(seen.last(), Some(&1.0));

        // CLIP's 1 fps features and 25 fps curve, as the VidMusician engine
        // and training read a video.
        let curve = patch_curve(&v, &clip, until, &cancel, &mut |_| {}).unwrap();
        let before = frames_encoded();
        let (g, c) = global_and_curve(&v, &clip, until, &cancel, &mut |_| {}).unwrap();
        assert_eq!(frames_encoded() - before, seconds + curve.len());
        assert_eq!(g, global, "{until:?}");
        assert_eq!(c, curve, "{until:?}");
    }
}

#[test]
fn two_zero_shot_engines_share_models_and_features() {
    use vidmusician_engine::service::{
        Engine, EngineChoice, EngineConfig, Request, clip_loads, musicgen_loads,
    };
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let v = video(dir.path(), 3.0, vec![1.4]);
    let config = EngineConfig {
        cache_dir: Some(dir.path().join("cache")),
        model_dir: Some(tiny_models(dir.path())),
        ..EngineConfig::default()
    };
    let (mg0, clip0) = (musicgen_loads().0, clip_loads().0);
    let a = Engine::start(config.clone()).unwrap();
    let b = Engine::start(config).unwrap();
    let mut req = Request::new(&v);
    req.engine = EngineChoice::ZeroShot;
    req.sample_rate = 32_000;
    let (ia, _) = a.submit(req.clone()).unwrap();
    let ra = a.wait(ia, |_| {}).unwrap();
    let encoded = frames_encoded();
    req.seed = 1;
    let (ib, _) = b.submit(req).unwrap();
    let rb = b.wait(ib, |_| {}).unwrap();
    assert_eq!(ra.engine, EngineChoice::ZeroShot);
    assert_eq!(rb.audio.len(), 3 * 32_000);
    assert!(ra.tags.as_ref().is_some_and(|t| !t.is_empty()));
    assert_ne!(ra.audio.channels, rb.audio.channels);
    // The second engine read the pictures from the cache and the weights
    // from the first.
    assert_eq!(frames_encoded(), encoded, "features computed twice");
    assert_eq!(musicgen_loads(), (mg0 + 1, 1));
    assert_eq!(clip_loads(), (clip0 + 1, 1));
    drop(a);
    drop(b);
    assert_eq!(musicgen_loads().1, 0);
    assert_eq!(clip_loads().1, 0);
}

/// An engine on the tiny models and a zero-shot request for a video of
/// `seconds` with `cuts`, aligned at full strength and read in 0.1 s chunks
/// at 48 kHz as a player takes them.
fn streamed_zero_shot(
    dir: &Path,
    seconds: f64,
    cuts: Vec<f64>,
) -> (
    vidmusician_engine::service::Engine,
    vidmusician_engine::service::Request,
) {
    use vidmusician_engine::service::{Engine, EngineChoice, EngineConfig, Request};
    let v = video(dir, seconds, cuts);
    let engine = Engine::start(EngineConfig {
        cache_dir: None,
        model_dir: Some(tiny_models(dir)),
        ..EngineConfig::default()
    })
    .unwrap();
    let mut req = Request::new(&v);
    req.engine = EngineChoice::ZeroShot;
    req.rhythm_strength = 1.0;
    req.sample_rate = 48_000;
    req.chunk_frames = 4800;
    req.max_chunks = 400;
    (engine, req)
}

#[test]
fn aligned_zero_shot_music_is_heard_while_it_is_made() {
    use vidmusician_engine::service::{Event, Stage};
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let (engine, req) = streamed_zero_shot(dir.path(), 16.0, vec![2.3, 5.1, 9.6, 13.2]);
    let (id, reader) = engine.submit(req).unwrap();
    let mut reader = reader.unwrap();
    let mut got = [Vec::new(), Vec::new()];
    // Frames in hand while MusicGen had made less than 80 % of the piece.
    let mut early = 0;
    let done = engine
        .wait(id, |ev| {
            while let Some(c) = reader.pop() {
                assert_eq!(c.start as usize, got[0].len(), "chunks in order");
                got[0].extend_from_slice(&c.left);
                got[1].extend_from_slice(&c.right);
            }
            if let Event::Progress {
                stage, fraction, ..
            } = ev
                && *stage == Stage::Composing
                && *fraction < 0.8
            {
                early = got[0].len();
            }
        })
        .unwrap();
    while let Some(c) = reader.pop() {
        got[0].extend_from_slice(&c.left);
        got[1].extend_from_slice(&c.right);
    }
    assert_eq!(done.audio.len(), 16 * 48_000);
    assert_eq!(got[0], done.audio.channels[0]);
    assert_eq!(got[1], done.audio.channels[1]);
    // The aligned music came window by window, not all at the end.
    assert!(
        early >= 4 * 48_000,
        "{:.2} s heard before 80 % was made",
        early as f64 / 48_000.0
    );
}

/// The aligned music is heard from MusicGen's first hand-over (about 1.6 s
/// of music): its opening is placed at once and the level is set from the
/// music as made, so neither waits for the next hand-over 2 s later.
#[test]
fn aligned_zero_shot_music_is_heard_from_the_first_hand_over() {
    use vidmusician_engine::service::{Event, Stage};
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let (engine, req) = streamed_zero_shot(dir.path(), 10.0, vec![3.4, 6.6]);
    let (id, reader) = engine.submit(req).unwrap();
    let mut reader = reader.unwrap();
    let mut composed = 0.0;
    let mut first = None;
    let done = engine
        .wait(id, |ev| {
            if let Event::Progress {
                stage: Stage::Composing,
                fraction,
                ..
            } = ev
            {
                composed = *fraction;
            }
            if first.is_none() && reader.pop().is_some() {
                first = Some(composed * 10.0);
            }
        })
        .unwrap();
    assert_eq!(done.audio.len(), 10 * 48_000);
    let at = first.expect("chunks while the piece was made");
    // The first hand-over comes at 1.6 s settled (1.8 s with the tiny
    // codec's look-ahead); the second would be 2 s later.
    assert!(at < 3.0, "first chunk after {at:.2} s of music");
}

/// CLIP's vision tower in a half type, as a GPU runs it, reads a video as
/// the CPU's f32 tower does within that type's rounding; in f32 it gives
/// the same rows to the bit. Run here on the CPU, where half types take
/// candle's generic ops and not the fused f32 kernels: the code a GPU runs.
#[test]
fn the_vision_tower_in_half_types_reads_a_video_as_f32_does() {
    use candle_core::DType;
    use vidmusician_engine::analysis::clip_features::global_and_curve;
    use vidmusician_engine::neural::models::clip::{ClipFrames, FrameEncoder};
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let v = video(dir.path(), 2.0, vec![1.0]);
    let cancel = AtomicBool::new(false);
    let (g, c) = global_and_curve(&v, &clip(), None, &cancel, &mut |_| {}).unwrap();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/clip-tiny");
    let cosine = |a: &[f32], b: &[f32]| {
        let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
        let n = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
        dot / (n(a) * n(b))
    };
    // The frame of the cut (1.0 s at 25 fps) stands out of the curve.
    let peak = |c: &[f32]| (1..c.len()).max_by(|&a, &b| c[a].total_cmp(&c[b])).unwrap();
    assert_eq!(peak(&c), 25, "{c:?}");
    for (dtype, name, floor, slack) in [
        (DType::F32, "f32", 1.0, 0.0),
        (DType::F16, "f16", 0.999, 1e-3),
        (DType::BF16, "bf16", 0.99, 1e-2),
    ] {
        let frames = ClipFrames::load(&fixture, &Device::Cpu, dtype).unwrap();
        assert_eq!(frames.arithmetic(), name);
        let (g2, c2) = global_and_curve(&v, &frames, None, &cancel, &mut |_| {}).unwrap();
        if dtype == DType::F32 {
            assert_eq!((&g2, &c2), (&g, &c), "f32 off the CPU's own tower");
            continue;
        }
        assert_eq!((g2.pooled.len(), c2.len()), (g.pooled.len(), c.len()));
        for (a, b) in g
            .pooled
            .iter()
            .zip(&g2.pooled)
            .chain(g.projected.iter().zip(&g2.projected))
        {
            let cos = cosine(a, b);
            assert!(cos >= floor, "{name}: a global row at cosine {cos}");
        }
        let worst = c
            .iter()
            .zip(&c2)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(worst <= slack, "{name}: the curve off by {worst}");
        assert_eq!(peak(&c2), 25, "{name}: {c2:?}");
    }
}
