//! The VidMusician method's modules on the tiny MusicGen: the differentiable
//! decoder against the fast CPU decoder, the modules' initial properties, and
//! their gradients (reaching every trainable tensor, and equal to finite
//! differences).

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::Optimizer;
use rand::{Rng, SeedableRng};
use vidmusician_engine::neural::MusicGen;
use vidmusician_engine::neural::conditioning::rhythm::rhythm_input;
use vidmusician_engine::neural::conditioning::{
    AdapterConfig, Params, RhythmModule, SemanticModule,
};
use vidmusician_engine::neural::decoder::{Decoder, SeqInput};
use vidmusician_engine::neural::models::musicgen::{Conditioning, MusicgenDecoder};
use vidmusician_engine::neural::weights::Weights;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/musicgen-tiny")
}

/// The tiny checkpoint three ways: whole (for its text side), the fast decoder
/// and the differentiable one.
fn models() -> (MusicGen, Decoder, MusicgenDecoder) {
    let dir = fixture();
    let mg = MusicGen::load(&dir).expect("the tiny MusicGen loads");
    let w = Weights::open_dir(&dir).unwrap().pp("decoder");
    let fast = Decoder::load(&w, &mg.config().decoder).unwrap();
    let diff = MusicgenDecoder::load(&w, &mg.config().decoder).unwrap();
    (mg, fast, diff)
}

fn rng(seed: u64) -> rand_chacha::ChaCha8Rng {
    rand_chacha::ChaCha8Rng::seed_from_u64(seed)
}

fn random(seed: u64, shape: &[usize], scale: f32) -> Tensor {
    let mut r = rng(seed);
    let n = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| r.random_range(-scale..scale)).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// Tokens `(batch, codebooks, len)` below `limit`.
fn tokens(seed: u64, batch: usize, k: usize, len: usize, limit: u32) -> Tensor {
    let mut r = rng(seed);
    let v: Vec<u32> = (0..batch * k * len)
        .map(|_| r.random_range(0..limit))
        .collect();
    Tensor::from_vec(v, (batch, k, len), &Device::Cpu).unwrap()
}

/// Adds noise to every trainable tensor, as training would have: a fresh
/// adapter's zeros (LoRA `B`, the Zero-Linear) would hide whatever follows them.
fn perturb(params: &Params, seed: u64, scale: f32) {
    for (i, (_, v)) in params.iter().enumerate() {
        let noise = random(seed + i as u64, v.dims(), scale)
            .to_dtype(v.dtype())
            .unwrap();
        v.set(&(v.as_tensor() + noise).unwrap()).unwrap();
    }
}

fn cfg() -> AdapterConfig {
    AdapterConfig {
        clip_width: 24,
        lora_rank: 4,
        // One layer per block, so that the tiny decoder's four layers make
        // four blocks, three of which take the rhythm input.
        block_size: 1,
        ..AdapterConfig::default()
    }
}

/// Everything a forward pass of the adapted model needs, in `dtype`.
struct Adapted {
    decoder: MusicgenDecoder,
    semantic: SemanticModule,
    rhythm: RhythmModule,
    params: Params,
    text: Tensor,
    text_mask: Tensor,
    features: Tensor,
    feature_mask: Tensor,
    rhythm_in: Tensor,
    tokens: Tensor,
}

const LEN: usize = 12;

fn adapted(dtype: DType) -> Adapted {
    let (mg, _, diff) = models();
    let cfg = cfg();
    let mut params = Params::default();
    let semantic = SemanticModule::new(
        &cfg,
        mg.text_encoder(),
        mg.text_projection(),
        mg.config().decoder.hidden_size,
        &mut params,
        dtype,
    )
    .unwrap();
    let rhythm =
        RhythmModule::new(&cfg, &mg.config().decoder, &mut params, &Device::Cpu, dtype).unwrap();
    let (ids, mask) = mg.tokenize(&["a slow piano"]).unwrap();
    let text = mg.text_states(&ids, &mask).unwrap();
    let curve: Vec<f32> = (0..40).map(|i| ((i * 7) % 5) as f32 / 4.0).collect();
    let rin = rhythm_input(&curve, 3, LEN, cfg.rhythm_context);
    let k = mg.config().decoder.num_codebooks;
    let vocab = mg.config().decoder.vocab_size as u32;
    Adapted {
        decoder: diff.to_dtype(dtype).unwrap(),
        semantic,
        rhythm,
        params,
        text: text.to_dtype(dtype).unwrap(),
        text_mask: mask,
        features: random(7, &[1, 5, cfg.clip_width], 1.0)
            .to_dtype(dtype)
            .unwrap(),
        feature_mask: Tensor::new(&[[1u32, 1, 1, 1, 0]], &Device::Cpu).unwrap(),
        rhythm_in: Tensor::from_vec(rin, (1, LEN, cfg.rhythm_width()), &Device::Cpu)
            .unwrap()
            .to_dtype(dtype)
            .unwrap(),
        tokens: tokens(3, 1, k, LEN, vocab + 1),
    }
}

impl Adapted {
    /// Cross-attention states `[text; visual]` and their mask.
    fn states(&self) -> (Tensor, Tensor) {
        let visual = self
            .semantic
            .forward(&self.features, &self.feature_mask)
            .unwrap();
        (
            Tensor::cat(&[&self.text, &visual], 1).unwrap(),
            Tensor::cat(&[&self.text_mask, &self.feature_mask], 1).unwrap(),
        )
    }

    fn logits(&self, with_rhythm: bool) -> Tensor {
        let (states, mask) = self.states();
        let inputs = if with_rhythm {
            self.rhythm.forward(&self.rhythm_in).unwrap()
        } else {
            Vec::new()
        };
        self.decoder
            .forward(
                &self.tokens,
                &Conditioning {
                    cross: Some((&states, &mask)),
                    layer_inputs: &inputs,
                },
            )
            .unwrap()
    }

    /// Cross-entropy of the logits against the next tokens.
    fn loss(&self) -> Tensor {
        let logits = self.logits(true);
        let (b, k, len, vocab) = logits.dims4().unwrap();
        let targets = tokens(11, b, k, len, vocab as u32);
        candle_nn::loss::cross_entropy(
            &logits.reshape((b * k * len, vocab)).unwrap(),
            &targets.flatten_all().unwrap(),
        )
        .unwrap()
    }
}

fn to_vec(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

#[test]
fn the_differentiable_decoder_equals_the_fast_decoder_with_visual_states_and_rhythm() {
    let (_, fast, _) = models();
    let a = adapted(DType::F32);
    perturb(&a.params, 100, 0.3);
    let (states, mask) = a.states();
    let inputs = a.rhythm.forward(&a.rhythm_in).unwrap();
    // The module feeds three of the four one-layer blocks.
    let fed: Vec<bool> = inputs.iter().map(Option::is_some).collect();
    assert_eq!(fed, [true, true, true, false]);
    assert!(to_vec(&states).iter().any(|v| v.abs() > 0.1));
    let slow = to_vec(
        &a.decoder
            .forward(
                &a.tokens,
                &Conditioning {
                    cross: Some((&states, &mask)),
                    layer_inputs: &inputs,
                },
            )
            .unwrap(),
    );
    let cross = fast.cross_kv(&states, Some(&mask)).unwrap();
    let flat: Vec<Option<Vec<f32>>> = inputs.iter().map(|i| i.as_ref().map(to_vec)).collect();
    let mut cache = fast.new_cache();
    let ids: Vec<u32> = a.tokens.flatten_all().unwrap().to_vec1().unwrap();
    let quick = fast
        .forward(
            &mut [SeqInput {
                tokens: &ids,
                cross: Some(&cross[0]),
                cache: &mut cache,
            }],
            &flat,
        )
        .unwrap();
    assert_eq!(slow.len(), quick.len());
    let worst = slow
        .iter()
        .zip(&quick)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(worst < 1e-4, "logits differ by {worst}");
    // The rhythm input matters: without it the logits move.
    let plain = to_vec(&a.logits(false));
    let moved = plain
        .iter()
        .zip(&slow)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(moved > 1e-3, "the rhythm input changed nothing ({moved})");
}

#[test]
fn the_unconditional_branch_equals_the_fast_decoder_too() {
    let (mg, fast, diff) = models();
    let k = mg.config().decoder.num_codebooks;
    let toks = tokens(5, 2, k, 9, mg.config().decoder.vocab_size as u32 + 1);
    let slow = to_vec(&diff.forward(&toks, &Conditioning::default()).unwrap());
    let ids: Vec<u32> = toks.flatten_all().unwrap().to_vec1().unwrap();
    let (mut c0, mut c1) = (fast.new_cache(), fast.new_cache());
    let half = ids.len() / 2;
    let quick = fast
        .forward(
            &mut [
                SeqInput {
                    tokens: &ids[..half],
                    cross: None,
                    cache: &mut c0,
                },
                SeqInput {
                    tokens: &ids[half..],
                    cross: None,
                    cache: &mut c1,
                },
            ],
            &[],
        )
        .unwrap();
    let worst = slow
        .iter()
        .zip(&quick)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(worst < 1e-4, "logits differ by {worst}");
}

#[test]
fn a_fresh_rhythm_module_leaves_the_logits_bit_identical() {
    let a = adapted(DType::F32);
    // A trained semantic module (noise stands in for training); the rhythm
    // module is then created fresh, as stage 2 does.
    for (name, v) in a.params.iter() {
        if name.starts_with("semantic.") {
            let noise = random(9, v.dims(), 0.2);
            v.set(&(v.as_tensor() + noise).unwrap()).unwrap();
        }
    }
    let before = to_vec(&a.logits(false));
    let after = to_vec(&a.logits(true));
    assert!(
        before
            .iter()
            .zip(&after)
            .all(|(x, y)| x.to_bits() == y.to_bits()),
        "a fresh rhythm module changed the logits"
    );
}

#[test]
fn the_zero_linear_gives_zeros_and_each_identity_linear_is_the_identity() {
    let a = adapted(DType::F32);
    let h = a.decoder.config().hidden_size;
    let zeros = to_vec(&a.rhythm.zero_linear(&a.rhythm_in).unwrap());
    assert_eq!(zeros.len(), LEN * h);
    assert!(zeros.iter().all(|&v| v.to_bits() == 0), "not exact zeros");
    assert_eq!(a.rhythm.chain().len(), 3);
    let x = random(21, &[1, LEN, h], 5.0);
    for link in a.rhythm.chain() {
        let y = to_vec(&link.forward(&x).unwrap());
        let x = to_vec(&x);
        assert!(
            x.iter().zip(&y).all(|(a, b)| a.to_bits() == b.to_bits()),
            "an Identity-Linear changed its input"
        );
    }
}

#[test]
fn every_trainable_tensor_gets_a_gradient_after_a_first_step() {
    let a = adapted(DType::F32);
    // At the start, LoRA's B and the Zero-Linear are zero, so what lies behind
    // them (LoRA's A, the Identity-Linears) gets no gradient yet; one step of
    // the optimiser opens the way.
    let mut opt = candle_nn::AdamW::new(
        a.params.vars(),
        candle_nn::ParamsAdamW {
            lr: 1e-2,
            ..Default::default()
        },
    )
    .unwrap();
    opt.backward_step(&a.loss()).unwrap();
    let grads = a.loss().backward().unwrap();
    for (name, v) in a.params.iter() {
        let g = grads
            .get(v.as_tensor())
            .unwrap_or_else(|| panic!("no gradient reaches {name}"));
        let size = g
            .abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(size > 0.0, "{name}'s gradient is zero");
    }
    assert!(a.params.count() > 0);
}

#[test]
fn gradients_agree_with_finite_differences() {
    let a = adapted(DType::F64);
    perturb(&a.params, 300, 0.2);
    let grads = a.loss().backward().unwrap();
    let loss_at = |a: &Adapted| a.loss().to_scalar::<f64>().unwrap();
    let eps = 1e-6;
    let mut r = rng(77);
    for (name, v) in a.params.iter() {
        let g: Vec<f64> = grads
            .get(v.as_tensor())
            .unwrap_or_else(|| panic!("no gradient reaches {name}"))
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let base: Vec<f64> = v.flatten_all().unwrap().to_vec1().unwrap();
        for _ in 0..3 {
            let i = r.random_range(0..base.len());
            let nudged = |d: f64| {
                let mut p = base.clone();
                p[i] += d;
                set(v, p);
                let l = loss_at(&a);
                set(v, base.clone());
                l
            };
            let fd = (nudged(eps) - nudged(-eps)) / (2.0 * eps);
            let err = (fd - g[i]).abs();
            assert!(
                err <= 1e-6 + 1e-4 * fd.abs().max(g[i].abs()),
                "{name}[{i}]: autograd {} against finite differences {fd}",
                g[i]
            );
        }
    }
}

fn set(v: &Var, values: Vec<f64>) {
    let t = Tensor::from_vec(values, v.dims(), &Device::Cpu).unwrap();
    v.set(&t).unwrap();
}

mod file {
    use super::*;
    use vidmusician_engine::Error;
    use vidmusician_engine::neural::conditioning::{Adapter, AdapterInfo};

    fn stage2(mg: &MusicGen) -> Adapter {
        let mut a = Adapter::new(&cfg(), mg, "test/musicgen-tiny", DType::F32).unwrap();
        a.add_rhythm(mg).unwrap();
        perturb(&a.params, 500, 0.1);
        a
    }

    fn values(p: &Params) -> Vec<(String, Vec<u32>)> {
        p.iter()
            .map(|(n, v)| {
                let bits = to_vec(v.as_tensor()).iter().map(|x| x.to_bits()).collect();
                (n.to_string(), bits)
            })
            .collect()
    }

    #[test]
    fn an_adapter_saves_and_loads_bit_for_bit_with_its_header() {
        let mg = MusicGen::load(&fixture()).unwrap();
        let a = stage2(&mg);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tiny.safetensors");
        a.save(&path).unwrap();
        let info = AdapterInfo::read(&path).unwrap();
        assert_eq!(info, a.info);
        assert_eq!(info.stage, 2);
        assert_eq!(info.base_model, "test/musicgen-tiny");
        let b = Adapter::load(&path, &mg, "test/musicgen-tiny").unwrap();
        assert_eq!(values(&a.params), values(&b.params));
        // The loaded modules compute what the saved ones did.
        let x = random(1, &[1, 3, cfg().clip_width], 1.0);
        let m = Tensor::new(&[[1u32, 1, 1]], &Device::Cpu).unwrap();
        assert_eq!(
            to_vec(&a.visual_states(&x, &m).unwrap()),
            to_vec(&b.visual_states(&x, &m).unwrap())
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_ne!(
                mode & 0o044,
                0,
                "the adapter is private to its owner: {mode:o}"
            );
        }
    }

    #[test]
    fn the_trainable_count_matches_the_modules() {
        let mg = MusicGen::load(&fixture()).unwrap();
        let mut a = Adapter::new(&cfg(), &mg, "t", DType::F32).unwrap();
        assert_eq!(a.params.count(), cfg().trainable_count(mg.config(), 1));
        a.add_rhythm(&mg).unwrap();
        assert_eq!(a.params.count(), cfg().trainable_count(mg.config(), 2));
        assert!(cfg().trainable_count(mg.config(), 2) > cfg().trainable_count(mg.config(), 1));
    }

    #[test]
    fn broken_foreign_and_mismatched_adapters_are_refused_by_name() {
        let mg = MusicGen::load(&fixture()).unwrap();
        let a = stage2(&mg);
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.safetensors");
        a.save(&good).unwrap();
        let bytes = std::fs::read(&good).unwrap();

        // Truncated: the header says more than the file holds.
        let cut = dir.path().join("cut.safetensors");
        std::fs::write(&cut, &bytes[..bytes.len() - 100]).unwrap();
        let e = Adapter::load(&cut, &mg, "test/musicgen-tiny")
            .err()
            .expect("a truncated adapter loads");
        assert!(e.to_string().contains("truncated"), "{e}");

        // A safetensors file that is no adapter: the base checkpoint itself.
        let e = AdapterInfo::read(&fixture().join("model.safetensors")).unwrap_err();
        assert!(e.to_string().contains("not a VidMusician adapter"), "{e}");

        // Not safetensors at all.
        let junk = dir.path().join("junk.safetensors");
        std::fs::write(&junk, b"hello, this is text").unwrap();
        let e = AdapterInfo::read(&junk).unwrap_err();
        assert!(matches!(e, Error::ModelFile { .. }), "{e}");

        // Another base model: named, with the installed one.
        let other = fixture().with_file_name("musicgen-tiny-cb32");
        let other = MusicGen::load(&other).unwrap();
        let e = Adapter::load(&good, &other, "test/musicgen-tiny-cb32")
            .err()
            .expect("an adapter loads on another base");
        let msg = e.to_string();
        assert!(
            msg.contains("test/musicgen-tiny ") && msg.contains("test/musicgen-tiny-cb32"),
            "{msg}"
        );

        // A tensor its config has no place for.
        let mut extra: std::collections::HashMap<String, Tensor> = a
            .params
            .iter()
            .map(|(n, v)| (n.to_string(), v.as_tensor().clone()))
            .collect();
        extra.insert("rhythm.chain.9.weight".into(), random(1, &[2, 2], 1.0));
        let meta = AdapterInfo::read(&good).unwrap();
        let odd = dir.path().join("odd.safetensors");
        let mut header = std::collections::HashMap::new();
        for (k, v) in [
            ("format", "vidmusician-adapter".to_string()),
            ("version", "1".to_string()),
            ("config", serde_json::to_string(&meta.config).unwrap()),
            ("stage", "2".to_string()),
            ("base_model", meta.base_model.clone()),
            ("base_hash", meta.base_hash.clone()),
        ] {
            header.insert(k.to_string(), v);
        }
        safetensors::serialize_to_file(extra.iter(), Some(header), &odd).unwrap();
        let e = Adapter::load(&odd, &mg, "test/musicgen-tiny")
            .err()
            .expect("an adapter with a stray tensor loads");
        assert!(e.to_string().contains("rhythm.chain.9.weight"), "{e}");
    }
}

mod generation {
    use super::*;
    use vidmusician_engine::neural::conditioning::Adapter;
    use vidmusician_engine::neural::generate::Sampling;
    use vidmusician_engine::neural::{WindowInput, WindowSpan};

    fn stage2(mg: &MusicGen) -> Adapter {
        let mut a = Adapter::new(&cfg(), mg, "test/musicgen-tiny", DType::F32).unwrap();
        a.add_rhythm(mg).unwrap();
        perturb(&a.params, 900, 0.3);
        a
    }

    /// Greedy codes of 2 s under `condition`.
    fn codes(
        mg: &MusicGen,
        condition: &mut dyn FnMut(WindowSpan) -> vidmusician_engine::Result<WindowInput>,
    ) -> Vec<f32> {
        let mut audio = Vec::new();
        mg.generate_streaming_with(
            2.0,
            &Sampling::greedy(3.0),
            condition,
            &mut |_| true,
            &mut |a| {
                audio.extend_from_slice(a);
                Ok(())
            },
        )
        .unwrap();
        audio
    }

    #[test]
    fn a_window_reads_its_seconds_and_the_curve_at_its_positions() {
        let mg = MusicGen::load(&fixture()).unwrap();
        let a = stage2(&mg);
        let h = mg.config().decoder.hidden_size;
        let rows: Vec<Vec<f32>> = (0..6)
            .map(|s| vec![s as f32 / 6.0; cfg().clip_width])
            .collect();
        let curve: Vec<f32> = (0..400).map(|f| (f % 25 == 0) as u8 as f32).collect();
        let (ids, mask) = mg.tokenize(&["piano"]).unwrap();
        let text = mg.text_states(&ids, &mask).unwrap();
        // A window from 1 s to 3.2 s: rows of seconds 1, 2 and 3.
        let w = WindowSpan {
            first: 50,
            new_from: 60,
            new_frames: 100,
            positions: 113,
        };
        let input = a
            .window_input(&mg, w, &rows, &curve, Some((&text, &mask)), 1.0)
            .unwrap();
        assert_eq!(input.layer_inputs.len(), 4);
        for (i, l) in input.layer_inputs.iter().enumerate() {
            assert_eq!(l.is_some(), i < 3, "layer {i}");
            if let Some(l) = l {
                assert_eq!(l.len(), 113 * h);
            }
        }
        // The in-attention input moves with the curve: a window one frame
        // later reads other values.
        let later = a
            .window_input(&mg, WindowSpan { first: 51, ..w }, &rows, &curve, None, 1.0)
            .unwrap();
        assert_ne!(input.layer_inputs[0], later.layer_inputs[0]);
        // Too few CLIP rows of the wrong width are refused.
        let narrow = vec![vec![0.0; 3]; 6];
        assert!(a.window_input(&mg, w, &narrow, &curve, None, 1.0).is_err());
    }

    #[test]
    fn the_adapters_conditions_change_the_music() {
        let mg = MusicGen::load(&fixture()).unwrap();
        let a = stage2(&mg);
        let rows: Vec<Vec<f32>> = (0..3)
            .map(|s| vec![(s as f32).sin(); cfg().clip_width])
            .collect();
        let onsets: Vec<f32> = (0..200).map(|f| (f % 20 == 0) as u8 as f32).collect();
        let flat = vec![0.0; 200];
        let with = |curve: &[f32]| {
            codes(&mg, &mut |w| {
                a.window_input(&mg, w, &rows, curve, None, 1.0)
            })
        };
        let text_only = codes(
            &mg,
            &mut mg.text_conditions(&vidmusician_engine::neural::PromptSchedule::one("")),
        );
        let rhythm = with(&onsets);
        assert_ne!(rhythm, text_only, "the adapter changed nothing");
        assert_ne!(rhythm, with(&flat), "the rhythm curve changed nothing");
        // And the same conditions give the same music.
        assert_eq!(rhythm, with(&onsets));
    }
}
