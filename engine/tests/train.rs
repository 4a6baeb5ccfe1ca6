//! Training the adapters on the tiny MusicGen, from windows the tests make:
//! the music's tokens follow the pictures' CLIP features (which of two token
//! ranges) and the rhythm curve (a token only onsets use). Stage 1 learns the
//! first, stage 2 the second; resuming is exact; the base stays frozen.

mod common;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};
use vidmusician_engine::neural::MusicGen;
use vidmusician_engine::neural::conditioning::{Adapter, AdapterConfig};
use vidmusician_engine::neural::models::musicgen::Conditioning;
use vidmusician_engine::train::{Example, TrainConfig, Trainer};

const CLIP: usize = 24;
const FRAMES: usize = 16;
/// The token every codebook plays on an onset.
const ONSET: u32 = 60;

fn base() -> MusicGen {
    MusicGen::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/musicgen-tiny"))
        .expect("the tiny MusicGen loads")
}

fn adapter_cfg() -> AdapterConfig {
    AdapterConfig {
        clip_width: CLIP,
        lora_rank: 4,
        block_size: 1,
        condition_dropout: 0.1,
        ..AdapterConfig::default()
    }
}

fn train_cfg(steps: usize) -> TrainConfig {
    TrainConfig {
        steps,
        batch_size: 4,
        lr: 3e-2,
        warmup: 2,
        seed: 5,
        ..TrainConfig::default()
    }
}

/// A window of class 0 or 1: its pictures are that class's CLIP prototype
/// plus noise, its music that class's eight tokens, except on onsets (a
/// quarter of the frames, where the rhythm curve is 1) where it is `ONSET`.
fn example(rng: &mut rand_chacha::ChaCha8Rng) -> Example {
    let class = rng.random_range(0..2u32);
    let proto = |i: usize| {
        if (i * 7 + class as usize * 3) % 5 < 2 {
            1.0
        } else {
            -1.0
        }
    };
    let clip: Vec<f32> = (0..2 * CLIP)
        .map(|i| proto(i % CLIP) + rng.random_range(-0.1..0.1))
        .collect();
    let onsets: Vec<bool> = (0..FRAMES).map(|_| rng.random_bool(0.25)).collect();
    let codes = onsets
        .iter()
        .map(|&on| {
            (0..4)
                .map(|_| {
                    if on {
                        ONSET
                    } else {
                        class * 32 + rng.random_range(0..8)
                    }
                })
                .collect()
        })
        .collect();
    Example {
        codes,
        clip,
        clip_frames: 2,
        // The rhythm input's context (2 frames) before the window: none.
        rhythm: [0.0, 0.0]
            .into_iter()
            .chain(onsets.iter().map(|&o| if o { 1.0 } else { 0.0 }))
            .collect(),
        text: None,
    }
}

fn data(seed: u64, n: usize) -> Vec<Example> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| example(&mut rng)).collect()
}

/// Runs `trainer` to its configured end over `train`, four windows a step in
/// order.
fn run(trainer: &mut Trainer, train: &[Example]) {
    while trainer.steps_done() < trainer.config().steps {
        let s = trainer.steps_done();
        let batch: Vec<&Example> = (0..4).map(|i| &train[(s * 4 + i) % train.len()]).collect();
        let stats = trainer.step(&batch).unwrap();
        assert!(stats.loss.is_finite() && stats.grad_norm.is_finite());
    }
}

/// `held` with each window's pictures taken from a window of the other class.
fn mismatched(held: &[Example]) -> Vec<Example> {
    let class = |e: &Example| e.codes.iter().flatten().any(|&c| (32..ONSET).contains(&c));
    held.iter()
        .map(|e| {
            let other = held
                .iter()
                .find(|o| class(o) != class(e))
                .expect("both classes are held out");
            Example {
                clip: other.clip.clone(),
                ..e.clone()
            }
        })
        .collect()
}

fn held_out_loss(trainer: &Trainer, held: &[Example]) -> f64 {
    let all: Vec<&Example> = held.iter().collect();
    trainer.eval(&all).unwrap()
}

fn param_bits(t: &Trainer) -> Vec<(String, Vec<u32>)> {
    t.adapter()
        .params
        .iter()
        .map(|(n, v)| {
            let bits = v
                .as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
                .iter()
                .map(|x| x.to_bits())
                .collect();
            (n.to_string(), bits)
        })
        .collect()
}

fn tmp(dir: &tempfile::TempDir, name: &str) -> PathBuf {
    dir.path().join(name)
}

#[test]
fn stage_one_learns_from_the_pictures_and_stage_two_from_the_rhythm() {
    let mg = base();
    let (train, held) = (data(1, 64), data(2, 16));
    let fresh = Adapter::new(&adapter_cfg(), &mg, "test/tiny", DType::F32).unwrap();
    let mut s1 = Trainer::new(&mg, fresh, train_cfg(80)).unwrap();
    let untrained = held_out_loss(&s1, &held);
    run(&mut s1, &train);
    let stage1 = held_out_loss(&s1, &held);
    assert!(
        stage1 < untrained - 0.5,
        "stage 1: held-out loss {stage1:.3}, untrained {untrained:.3}"
    );
    // It learnt from the pictures, not only which tokens are common: given
    // the other class's pictures, the same music is less likely.
    let swapped = held_out_loss(&s1, &mismatched(&held));
    assert!(
        swapped > stage1 + 0.5,
        "stage 1 with the pictures swapped: {swapped:.3}, matched {stage1:.3}"
    );
    let dir = tempfile::tempdir().unwrap();
    s1.adapter().save(&tmp(&dir, "s1.safetensors")).unwrap();

    // Stage 2 from the stage-1 adapter, and as a control the same number of
    // further steps without the rhythm module.
    let mut with_rhythm = Adapter::load(&tmp(&dir, "s1.safetensors"), &mg, "test/tiny").unwrap();
    with_rhythm.add_rhythm(&mg).unwrap();
    let mut s2 = Trainer::new(&mg, with_rhythm, train_cfg(40)).unwrap();
    assert_eq!(
        held_out_loss(&s2, &held).to_bits(),
        stage1.to_bits(),
        "a fresh rhythm module changed the stage-1 model"
    );
    run(&mut s2, &train);
    let stage2 = held_out_loss(&s2, &held);
    let control = Adapter::load(&tmp(&dir, "s1.safetensors"), &mg, "test/tiny").unwrap();
    let mut more = Trainer::new(&mg, control, train_cfg(40)).unwrap();
    run(&mut more, &train);
    let stage1_more = held_out_loss(&more, &held);
    eprintln!(
        "held-out loss: untrained {untrained:.3}, stage 1 {stage1:.3} (pictures swapped {swapped:.3}), \
         stage 1 again as long {stage1_more:.3}, stage 2 {stage2:.3}"
    );
    assert!(
        stage2 < stage1_more - 0.1,
        "stage 2: {stage2:.3}; stage 1 trained as long: {stage1_more:.3} (after stage 1: {stage1:.3})"
    );
}

#[test]
fn a_resumed_run_reaches_the_same_parameters_bit_for_bit() {
    let mg = base();
    let train = data(3, 32);
    let start = || {
        let mut a = Adapter::new(&adapter_cfg(), &mg, "test/tiny", DType::F32).unwrap();
        a.add_rhythm(&mg).unwrap();
        a
    };
    let mut whole = Trainer::new(&mg, start(), train_cfg(6)).unwrap();
    run(&mut whole, &train);

    let dir = tempfile::tempdir().unwrap();
    let ckpt = tmp(&dir, "step3.ckpt");
    let mut first = Trainer::new(&mg, start(), train_cfg(6)).unwrap();
    while first.steps_done() < 3 {
        let s = first.steps_done();
        let batch: Vec<&Example> = (0..4).map(|i| &train[(s * 4 + i) % train.len()]).collect();
        first.step(&batch).unwrap();
    }
    first.save_checkpoint(&ckpt).unwrap();
    drop(first);
    let mut resumed = Trainer::resume(&ckpt, &mg, train_cfg(6)).unwrap();
    assert_eq!(resumed.steps_done(), 3);
    run(&mut resumed, &train);
    assert_eq!(param_bits(&whole), param_bits(&resumed));
}

#[test]
fn training_leaves_every_base_weight_as_it_was() {
    let mg = base();
    let k = mg.config().decoder.num_codebooks;
    let tokens = Tensor::from_vec(
        (0..k * 10).map(|i| (i * 5 % 64) as u32).collect::<Vec<_>>(),
        (1, k, 10),
        &Device::Cpu,
    )
    .unwrap();
    let (ids, mask) = mg.tokenize(&["drums"]).unwrap();
    let text = mg.text_states(&ids, &mask).unwrap();
    let logits = |t: &Trainer| {
        t.decoder()
            .forward(
                &tokens,
                &Conditioning {
                    cross: Some((&text, &mask)),
                    layer_inputs: &[],
                },
            )
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .map(|x| x.to_bits())
            .collect::<Vec<_>>()
    };
    let mut a = Adapter::new(&adapter_cfg(), &mg, "test/tiny", DType::F32).unwrap();
    a.add_rhythm(&mg).unwrap();
    // Only the adapter's own tensors are trainable.
    assert!(
        a.params
            .iter()
            .all(|(n, _)| n.starts_with("semantic.") || n.starts_with("rhythm."))
    );
    let mut t = Trainer::new(&mg, a, train_cfg(5)).unwrap();
    let before = logits(&t);
    let text_before = mg
        .text_states(&ids, &mask)
        .unwrap()
        .to_vec3::<f32>()
        .unwrap();
    let hash = mg.weights_hash().unwrap();
    run(&mut t, &data(4, 20));
    assert_eq!(before, logits(&t), "the decoder's weights moved");
    assert_eq!(
        text_before,
        mg.text_states(&ids, &mask)
            .unwrap()
            .to_vec3::<f32>()
            .unwrap(),
        "the text encoder moved"
    );
    assert_eq!(hash, mg.weights_hash().unwrap());
}

#[test]
fn a_checkpoint_of_another_config_or_no_checkpoint_is_refused() {
    let mg = base();
    let dir = tempfile::tempdir().unwrap();
    let ckpt = tmp(&dir, "run.ckpt");
    let a = Adapter::new(&adapter_cfg(), &mg, "test/tiny", DType::F32).unwrap();
    let mut t = Trainer::new(&mg, a, train_cfg(4)).unwrap();
    run(&mut t, &data(5, 8));
    t.save_checkpoint(&ckpt).unwrap();
    let saved = std::fs::read(&ckpt).unwrap();

    let other = TrainConfig {
        lr: 1e-3,
        ..train_cfg(4)
    };
    let e = Trainer::resume(&ckpt, &mg, other)
        .err()
        .expect("resumed with another lr");
    assert!(e.to_string().contains("lr"), "{e}");

    // An adapter file is not a checkpoint.
    let adapter = tmp(&dir, "a.safetensors");
    t.adapter().save(&adapter).unwrap();
    let e = Trainer::resume(&adapter, &mg, train_cfg(4))
        .err()
        .expect("resumed from an adapter file");
    assert!(
        e.to_string()
            .contains("not a VidMusician training checkpoint"),
        "{e}"
    );

    // A truncated checkpoint.
    let cut = tmp(&dir, "cut.ckpt");
    std::fs::write(&cut, &saved[..saved.len() / 2]).unwrap();
    let e = Trainer::resume(&cut, &mg, train_cfg(4))
        .err()
        .expect("resumed a cut file");
    assert!(e.to_string().contains("truncated"), "{e}");
    // Nothing was written over.
    assert_eq!(std::fs::read(&ckpt).unwrap(), saved);
}

#[test]
fn stage_two_can_train_the_rhythm_module_alone_and_resume_exactly() {
    let mg = base();
    let train = data(6, 16);
    let cfg = TrainConfig {
        stage2_semantic: false,
        ..train_cfg(4)
    };
    let start = || {
        let mut a = Adapter::new(&adapter_cfg(), &mg, "test/tiny", DType::F32).unwrap();
        a.add_rhythm(&mg).unwrap();
        a
    };
    let mut whole = Trainer::new(&mg, start(), cfg.clone()).unwrap();
    let before = param_bits(&whole);
    assert!(whole.trained_count() < whole.adapter().params.count());
    run(&mut whole, &train);
    let after = param_bits(&whole);
    for ((name, b), (_, a)) in before.iter().zip(&after) {
        if name.starts_with("rhythm.") {
            continue;
        }
        assert_eq!(b, a, "{name} moved with stage2_semantic off");
    }
    assert_ne!(before, after, "nothing trained");

    let dir = tempfile::tempdir().unwrap();
    let ckpt = tmp(&dir, "half.ckpt");
    let mut first = Trainer::new(&mg, start(), cfg.clone()).unwrap();
    while first.steps_done() < 2 {
        let s = first.steps_done();
        let batch: Vec<&Example> = (0..4).map(|i| &train[(s * 4 + i) % train.len()]).collect();
        first.step(&batch).unwrap();
    }
    first.save_checkpoint(&ckpt).unwrap();
    let mut resumed = Trainer::resume(&ckpt, &mg, cfg).unwrap();
    run(&mut resumed, &train);
    assert_eq!(param_bits(&resumed), after);
}

/// A folder of 4 s videos of two looks, each with its music beside it as a
/// WAV: warm pictures get a low tone and cold ones a high tone, and every cut
/// gets a click.
fn colour_and_cut_videos(dir: &Path, n: usize) -> PathBuf {
    use vidmusician_engine::audio::{Audio, write_wav};
    use vidmusician_engine::video::synth::{SynthSpec, write_video};
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(42);
    let rate = 32_000usize;
    for i in 0..n {
        let warm = i % 2 == 0;
        // Six cuts about 0.55 s apart, jittered, on the video's frames.
        let on_frames = |t: f64| (t * 25.0).round() / 25.0;
        let cuts: Vec<f64> = (0..6)
            .map(|k| on_frames(0.4 + 0.55 * k as f64 + rng.random_range(-0.1..0.1)))
            .collect();
        let mut spec = SynthSpec::new(64, 48, 25, 4.0, cuts.clone());
        spec.seed = i as u64 + 1;
        spec.tint = Some(if warm { (90, 200) } else { (200, 90) });
        write_video(&data.join(format!("v{i:02}.mp4")), &spec).unwrap();
        let pitch = if warm { 220.0 } else { 880.0 };
        let mut music: Vec<f32> = (0..4 * rate)
            .map(|t| 0.2 * (t as f32 * pitch * std::f32::consts::TAU / rate as f32).sin())
            .collect();
        // The same click every time, 60 ms of a 1.5 kHz square wave in
        // place of the tone.
        for c in &cuts {
            let at = (c * rate as f64).round() as usize;
            for (k, m) in music[at..].iter_mut().take(rate * 6 / 100).enumerate() {
                let phase = (k as f32 * 1500.0 / rate as f32).fract();
                *m = if phase < 0.5 { 0.5 } else { -0.5 };
            }
        }
        write_wav(
            &data.join(format!("v{i:02}.wav")),
            &Audio {
                sample_rate: rate as u32,
                channels: vec![music],
            },
        )
        .unwrap();
    }
    data
}

#[test]
fn videos_whose_music_follows_colour_and_cuts_teach_both_stages() {
    use std::sync::atomic::AtomicBool;
    use vidmusician_engine::neural::conditioning::rhythm::prepare_curve;
    use vidmusician_engine::neural::encodec_encoder::EncodecEncoder;
    use vidmusician_engine::neural::models::clip::Clip;
    use vidmusician_engine::train::data::{self, Extractor};
    use vidmusician_engine::train::run::{RunOptions, run as train_run};
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let models = common::tiny_models(d);
    let data = colour_and_cut_videos(d, 20);
    let options = |stage: u8, init: Option<PathBuf>| RunOptions {
        stage,
        data: data.clone(),
        out: d.join(format!("s{stage}.safetensors")),
        init,
        resume: false,
        train: TrainConfig {
            steps: if stage == 1 { 60 } else { 300 },
            batch_size: 4,
            window_seconds: 2.0,
            lr: if stage == 1 { 1e-2 } else { 3e-2 },
            warmup: 5,
            seed: 3,
            // Stage 2 trains the rhythm module alone.
            stage2_semantic: stage == 1,
            ..TrainConfig::default()
        },
        adapter: AdapterConfig {
            lora_rank: 4,
            block_size: 1,
            ..AdapterConfig::default()
        },
        eval_every: 1000,
        checkpoint_every: 1000,
        musicgen_dir: models.join("musicgen-small"),
        musicgen_id: "facebook/musicgen-small".into(),
        clip_dir: models.join("clip-vit-base-patch32"),
        cache_dir: Some(d.join("cache")),
        device: candle_core::Device::Cpu,
    };
    let no = AtomicBool::new(false);
    let s1 = train_run(&options(1, None), &no, &mut |_| {}).unwrap();
    let s2 = train_run(
        &options(2, Some(d.join("s1.safetensors"))),
        &no,
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(s2.held_out_start.to_bits(), s1.held_out_end.to_bits());

    // The held-out windows again, to measure the stage-2 model with the
    // rhythm curve as it is and moved by half a second.
    let mg = MusicGen::load(&models.join("musicgen-small")).unwrap();
    let encoder = EncodecEncoder::open(&models.join("musicgen-small")).unwrap();
    let clip = Clip::load(&models.join("clip-vit-base-patch32")).unwrap();
    let extractor = Extractor {
        base: &mg,
        base_hash: mg.weights_hash().unwrap(),
        encoder: &encoder,
        clip: &clip,
        clip_id: String::new(),
        cache: None,
    };
    let (pieces, _) = extractor
        .prepare(&data::scan(&data).unwrap(), &no, &mut |_, _, _| {})
        .unwrap();
    let pieces = pieces
        .into_iter()
        .map(|p| data::Piece {
            curve: prepare_curve(&p.curve, true),
            ..p
        })
        .collect();
    let (_, held) = data::split(pieces).unwrap();
    let moved: Vec<data::Piece> = held
        .iter()
        .map(|p| {
            let mut curve = p.curve.clone();
            curve.rotate_right(25);
            data::Piece { curve, ..p.clone() }
        })
        .collect();
    let adapter = Adapter::load(&d.join("s2.safetensors"), &mg, "facebook/musicgen-small").unwrap();
    let t = Trainer::new(&mg, adapter, TrainConfig::default()).unwrap();
    let loss = |pieces: &[data::Piece]| {
        let w = data::held_out_windows(pieces, 100, 50.0, 2);
        t.eval(&w.iter().collect::<Vec<_>>()).unwrap()
    };
    let (aligned, misaligned) = (loss(&held), loss(&moved));
    eprintln!(
        "held-out loss: untrained {:.3}, stage 1 {:.3}, stage 2 (rhythm alone) {:.3}; \
         stage 2 with the curve moved by 0.5 s {misaligned:.3}",
        s1.held_out_start, s1.held_out_end, s2.held_out_end
    );
    assert!(
        (aligned - s2.held_out_end).abs() < 1e-6,
        "{aligned} against the run's {}",
        s2.held_out_end
    );
    // Stage 1 learns from the pictures (the tone follows the colour).
    assert!(s1.held_out_end < s1.held_out_start - 0.5);
    // Stage 2 lowers it further with the rhythm module alone...
    assert!(s2.held_out_end < s1.held_out_end - 0.1);
    // ... by reading the curve: moved off the cuts, it does worse.
    assert!(
        misaligned > aligned + 0.08,
        "the curve moved: {misaligned:.3}; in place: {aligned:.3}"
    );
}

#[test]
fn a_caption_reaches_the_model_and_pads_cleanly_in_a_batch() {
    let mg = base();
    let mut a = Adapter::new(&adapter_cfg(), &mg, "test/tiny", DType::F32).unwrap();
    a.add_rhythm(&mg).unwrap();
    let t = Trainer::new(&mg, a, train_cfg(1)).unwrap();
    let caption = |words: &str| {
        let (ids, mask) = mg.tokenize(&[words]).unwrap();
        let s = mg.text_states(&ids, &mask).unwrap();
        Some(std::sync::Arc::new(
            s.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        ))
    };
    let plain = data(9, 2);
    let mut said = plain[0].clone();
    said.text = caption("a slow piano with soft strings");
    let alone = |e: &Example| t.eval(&[e]).unwrap();
    assert_ne!(
        alone(&said),
        alone(&plain[0]),
        "the caption changed nothing"
    );
    // Batched with a window without a caption (padded to its length, all
    // masked), each counts as it does alone.
    let together = t.eval(&[&said, &plain[1]]).unwrap();
    let apart = (alone(&said) + alone(&plain[1])) / 2.0;
    assert!(
        (together - apart).abs() < 1e-5,
        "{together} against {apart}"
    );
}
