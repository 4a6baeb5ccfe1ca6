//! The EnCodec encoder against transformers: the tiny MusicGen checkpoints' codecs,
//! with embeddings and codes recorded by `tools/make_encodec_reference.py`
//! (`encoder_reference.safetensors`) for one-second signals in a batch of two, an
//! input that is no whole number of hops, and one shorter than two hops.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use vidmusician_engine::Error;
use vidmusician_engine::neural::MusicGen;
use vidmusician_engine::neural::encodec_encoder::EncodecEncoder;

const TOL: f32 = 1e-4;
const FIXTURES: [&str; 2] = ["musicgen-tiny", "musicgen-tiny-cb32"];
const INPUTS: [&str; 3] = ["batch", "odd", "short"];

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn reference(name: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(
        fixture(name).join("encoder_reference.safetensors"),
        &Device::Cpu,
    )
    .expect("encoder reference outputs")
}

fn encoder(name: &str) -> EncodecEncoder {
    EncodecEncoder::open(&fixture(name)).expect("the tiny codec's encoder loads")
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let b = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    a.iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn codes(t: &Tensor) -> Vec<i64> {
    t.to_dtype(DType::I64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

#[test]
fn embeddings_and_codes_match_transformers() {
    for name in FIXTURES {
        let enc = encoder(name);
        let r = reference(name);
        for input in INPUTS {
            let audio = &r[&format!("{input}.audio")];
            let want = &r[&format!("{input}.embeddings")];
            let got = enc.embed(audio).unwrap();
            let d = max_abs_diff(&got, want);
            let want_codes = &r[&format!("{input}.codes")];
            let got_codes = enc.encode(audio).unwrap();
            assert_eq!(got_codes.dtype(), DType::U32);
            assert_eq!(got_codes.dims(), want_codes.dims(), "{name} {input}");
            let (a, b) = (codes(&got_codes), codes(want_codes));
            let same = a.iter().zip(&b).filter(|(x, y)| x == y).count();
            eprintln!(
                "{name} {input} {:?}: embeddings max |Δ| {d:.2e}, codes {same}/{} equal",
                audio.dims(),
                b.len()
            );
            assert!(d < TOL, "{name} {input}: embeddings differ by {d}");
            assert_eq!(a, b, "{name} {input}: codes differ");
        }
    }
}

#[test]
fn the_default_bandwidth_gives_transformers_codebook_count_and_fewer_are_a_prefix() {
    // 64 codes at 2.2 kbps and 50 frames/s: ⌊2200 / 300⌋ = 7; 32 codes at 1 kbps: 4.
    for (name, expected) in [("musicgen-tiny", 7), ("musicgen-tiny-cb32", 4)] {
        let enc = encoder(name);
        assert_eq!(enc.default_codebooks().unwrap(), expected, "{name}");
        let r = reference(name);
        let audio = &r["odd.audio"];
        let all = enc.encode(audio).unwrap();
        assert_eq!(all.dim(1).unwrap(), expected);
        // The language model reads 4: the first 4 of however many the codec makes.
        let four = enc.encode_codebooks(audio, 4).unwrap();
        assert_eq!(codes(&four), codes(&all.narrow(1, 0, 4).unwrap()));
        // Quantizing given embeddings is the same as encoding the audio.
        let emb = enc.embed(audio).unwrap();
        assert_eq!(codes(&enc.quantize(&emb, expected).unwrap()), codes(&all));
    }
}

#[test]
fn encoding_in_chunks_gives_the_embeddings_of_one_pass() {
    let enc = encoder("musicgen-tiny");
    let r = reference("musicgen-tiny");
    for input in ["batch", "odd"] {
        let audio = &r[&format!("{input}.audio")];
        let whole = enc.embed_in_chunks(audio, usize::MAX).unwrap();
        // Chunks of 1, 3 and 7 frames: each far shorter than the margin of context
        // taken on either side, and the odd piece's last chunk ends mid-hop.
        for chunk in [1, 3, 7] {
            let d = max_abs_diff(&enc.embed_in_chunks(audio, chunk).unwrap(), &whole);
            assert!(d < 1e-5, "{input}, chunks of {chunk}: {d}");
        }
        let d = max_abs_diff(&whole, &r[&format!("{input}.embeddings")]);
        assert!(d < TOL, "{input}: {d}");
    }
}

#[test]
fn encoded_audio_decodes_to_whole_frames() {
    let model = MusicGen::load(&fixture("musicgen-tiny")).unwrap();
    let enc = encoder("musicgen-tiny");
    let r = reference("musicgen-tiny");
    for input in INPUTS {
        let audio = &r[&format!("{input}.audio")];
        let (batch, _, samples) = audio.dims3().unwrap();
        let codes = enc.encode_codebooks(audio, 4).unwrap();
        let frames = samples.div_ceil(enc.hop_length());
        assert_eq!(codes.dims(), &[batch, 4, frames]);
        let back = model.codec().decode(&codes).unwrap();
        assert_eq!(back.dims(), &[batch, 1, frames * enc.hop_length()]);
        let values = back.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(values.iter().all(|v| v.is_finite()), "{input}");
    }
}

/// A copy of `name` in a temporary folder without the tensor `drop`.
fn without_tensor(name: &str, drop: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for f in ["config.json", "generation_config.json", "tokenizer.json"] {
        std::fs::copy(fixture(name).join(f), dir.path().join(f)).unwrap();
    }
    let mut tensors =
        candle_core::safetensors::load(fixture(name).join("model.safetensors"), &Device::Cpu)
            .unwrap();
    assert!(tensors.remove(drop).is_some(), "{drop} is in the fixture");
    candle_core::safetensors::save(&tensors, dir.path().join("model.safetensors")).unwrap();
    dir
}

#[test]
fn a_missing_encoder_tensor_is_named_and_generation_does_not_need_it() {
    for drop in [
        "audio_encoder.encoder.layers.6.conv.parametrizations.weight.original1",
        "audio_encoder.encoder.layers.13.lstm.weight_hh_l1",
    ] {
        let dir = without_tensor("musicgen-tiny", drop);
        let msg = match EncodecEncoder::open(dir.path()) {
            Ok(_) => panic!("an encoder without {drop} loaded"),
            Err(e) => e.to_string(),
        };
        assert!(msg.contains(drop), "{msg}");
        assert!(msg.contains("model.safetensors"), "{msg}");
        // The generating model never reads the encoder's weights.
        MusicGen::load(dir.path()).expect("generation loads without the encoder");
    }
    let drop = "audio_encoder.quantizer.layers.5.codebook.embed";
    let dir = without_tensor("musicgen-tiny", drop);
    let msg = EncodecEncoder::open(dir.path()).err().unwrap().to_string();
    assert!(msg.contains(drop), "{msg}");
}

#[test]
fn bad_input_is_an_error() {
    let enc = encoder("musicgen-tiny");
    let zeros = |shape: &[usize]| Tensor::zeros(shape, DType::F32, &Device::Cpu).unwrap();
    for shape in [
        &[2, 2, 640][..],
        &[1, 1, 0],
        &[0, 1, 640],
        &[1, 640],
        &[640],
    ] {
        let err = enc.encode(&zeros(shape)).unwrap_err();
        assert!(matches!(err, Error::InvalidSetting(_)), "{shape:?}: {err}");
    }
    let audio = zeros(&[1, 1, 640]);
    for k in [0, 8] {
        assert!(enc.encode_codebooks(&audio, k).is_err(), "{k} codebooks");
    }
    assert!(enc.codebooks_for_bandwidth(6.0).is_err());
    assert!(enc.quantize(&zeros(&[1, 4, 3]), 4).is_err());
    // A single sample is a frame, as transformers makes it.
    assert_eq!(enc.encode(&zeros(&[1, 1, 1])).unwrap().dims(), &[1, 7, 1]);
}

/// Speed of musicgen-small's encoder (random weights of the real shapes):
/// `cargo test --release --test encodec_encoder -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement, not a check"]
fn musicgen_small_encoder_speed() {
    use vidmusician_engine::neural::bench::musicgen_small;
    use vidmusician_engine::neural::weights::Weights;
    let cfg = musicgen_small().audio_encoder;
    let enc = EncodecEncoder::load(&Weights::random(7).pp("audio_encoder"), &cfg).unwrap();
    let seconds = 10;
    let samples = seconds * cfg.sampling_rate as usize;
    let audio: Vec<f32> = (0..samples)
        .map(|i| (i as f32 * 0.0137).sin() * 0.5)
        .collect();
    let audio = Tensor::from_vec(audio, (1, 1, samples), &Device::Cpu).unwrap();
    enc.encode(&audio.narrow(2, 0, 32_000).unwrap()).unwrap();
    for batch in [1, 4] {
        let audio = audio.repeat((batch, 1, 1)).unwrap();
        let t0 = std::time::Instant::now();
        let codes = enc.encode(&audio).unwrap();
        let s = t0.elapsed().as_secs_f64();
        assert_eq!(codes.dims(), &[batch, 4, seconds * 50]);
        eprintln!(
            "musicgen-small encoder, batch of {batch}: {s:.2} s for {seconds} s of audio each, \
             {:.3} s per second of audio on {} threads",
            s / (batch * seconds) as f64,
            candle_core::utils::get_num_threads()
        );
    }
}
