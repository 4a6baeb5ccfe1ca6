//! The neural engine against the reference implementation: a tiny random MusicGen
//! checkpoint written by Hugging Face transformers, with outputs it recorded
//! (`tools/make_musicgen_fixture.py`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use vidmusician_engine::Error;
use vidmusician_engine::neural::decoder::{CrossKv, SelfCache, SeqInput};
use vidmusician_engine::neural::encodec::{EncodecDecoder, SpanDecoder};
use vidmusician_engine::neural::{MusicGen, PromptSchedule, Sampling};

const TOL: f32 = 1e-4;

fn fixture() -> PathBuf {
    fixture_named("musicgen-tiny")
}

fn fixture_named(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn reference() -> HashMap<String, Tensor> {
    reference_in(&fixture())
}

fn reference_in(dir: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(dir.join("reference.safetensors"), &Device::Cpu)
        .expect("reference outputs")
}

fn prompts() -> Vec<String> {
    prompts_in(&fixture())
}

fn prompts_in(dir: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(dir.join("reference.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_string())
        .collect()
}

fn model() -> MusicGen {
    MusicGen::load(&fixture()).expect("tiny checkpoint loads")
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let b = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    max_diff(&a, &b)
}

/// The largest difference between two equally long signals.
fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "lengths differ");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// A recorded integer tensor (ids, masks, codes) as the u32 the model takes.
fn u32s(r: &HashMap<String, Tensor>, name: &str) -> Tensor {
    r[name].to_dtype(candle_core::DType::U32).unwrap()
}

fn ids(t: &Tensor) -> Vec<i64> {
    t.to_dtype(candle_core::DType::I64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

#[test]
fn tokenizer_matches_the_reference_ids_and_padding() {
    let m = model();
    let r = reference();
    let p = prompts();
    let refs: Vec<&str> = p.iter().map(String::as_str).collect();
    let (got_ids, got_mask) = m.tokenize(&refs).unwrap();
    assert_eq!(ids(&got_ids), ids(&r["text.input_ids"]));
    assert_eq!(ids(&got_mask), ids(&r["text.attention_mask"]));
}

#[test]
fn t5_encoder_states_match_the_reference() {
    let m = model();
    let r = reference();
    let ids = u32s(&r, "text.input_ids");
    let mask = u32s(&r, "text.attention_mask");
    let got = m.text_encoder().forward(&ids, &mask).unwrap();
    let d = max_abs_diff(&got, &r["t5.last_hidden_state"]);
    assert!(d < TOL, "T5 states differ by {d}");
}

/// The reference's fixed codes as `(batch, codebooks × positions)` tokens, with the
/// cross-attention states of the padded text batch.
fn decoder_inputs(m: &MusicGen) -> (Vec<Vec<u32>>, Vec<CrossKv>, usize) {
    let r = reference();
    let ids = u32s(&r, "text.input_ids");
    let mask = u32s(&r, "text.attention_mask");
    let states = m.text_states(&ids, &mask).unwrap();
    let cross = m.decoder().unwrap().cross_kv(&states, Some(&mask)).unwrap();
    let codes = u32s(&r, "decoder.input_ids");
    let (rows, seq) = codes.dims2().unwrap();
    let k = m.decoder().unwrap().config().num_codebooks;
    let flat: Vec<u32> = codes.flatten_all().unwrap().to_vec1().unwrap();
    let tokens = flat.chunks(k * seq).map(|c| c.to_vec()).collect();
    assert_eq!(rows / k, 2);
    (tokens, cross, seq)
}

fn as_tensor(v: Vec<f32>, shape: &[usize]) -> Tensor {
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// One decoder call for every sequence, each with its tokens, states and cache.
fn forward_all(
    m: &MusicGen,
    tokens: &[Vec<u32>],
    cross: &[CrossKv],
    caches: &mut [SelfCache],
) -> Vec<f32> {
    let mut seqs: Vec<SeqInput> = caches
        .iter_mut()
        .zip(tokens)
        .zip(cross)
        .map(|((cache, t), c)| SeqInput {
            tokens: t,
            cross: Some(c),
            cache,
        })
        .collect();
    m.decoder().unwrap().forward(&mut seqs, &[]).unwrap()
}

#[test]
fn decoder_logits_match_the_reference_for_fixed_codes_and_padded_text() {
    let m = model();
    let r = reference();
    let (tokens, cross, seq) = decoder_inputs(&m);
    let mut caches: Vec<_> = (0..2).map(|_| m.decoder().unwrap().new_cache()).collect();
    let logits = forward_all(&m, &tokens, &cross, &mut caches);
    let d = max_abs_diff(&as_tensor(logits, &[8, seq, 64]), &r["decoder.logits"]);
    assert!(d < TOL, "logits differ by {d}");
}

#[test]
fn decoding_step_by_step_with_the_cache_equals_one_pass() {
    let m = model();
    let r = reference();
    let (tokens, cross, seq) = decoder_inputs(&m);
    let k = m.decoder().unwrap().config().num_codebooks;
    let mut caches: Vec<_> = (0..2).map(|_| m.decoder().unwrap().new_cache()).collect();
    // (sequence, codebook, position, vocab), filled one position at a time
    let mut all = vec![0f32; 2 * k * seq * 64];
    for t in 0..seq {
        let step: Vec<Vec<u32>> = tokens
            .iter()
            .map(|tk| (0..k).map(|c| tk[c * seq + t]).collect())
            .collect();
        let out = forward_all(&m, &step, &cross, &mut caches);
        for s in 0..2 {
            for c in 0..k {
                let src = &out[(s * k + c) * 64..(s * k + c + 1) * 64];
                let dst = ((s * k + c) * seq + t) * 64;
                all[dst..dst + 64].copy_from_slice(src);
            }
        }
    }
    assert!(caches.iter().all(|c| c.len() == seq));
    let d = max_abs_diff(&as_tensor(all, &[8, seq, 64]), &r["decoder.logits"]);
    assert!(d < TOL, "cached steps differ from the reference by {d}");
}

fn frames_as_tensor(frames: &[Vec<u32>]) -> Tensor {
    let k = frames[0].len();
    let mut v = Vec::new();
    for c in 0..k {
        v.extend(frames.iter().map(|f| f[c] as i64));
    }
    Tensor::from_vec(v, (1, k, frames.len()), &Device::Cpu).unwrap()
}

#[test]
fn greedy_generation_matches_the_reference_with_and_without_guidance() {
    assert_greedy_generation_matches(&model(), &reference(), &prompts()[0]);
}

/// Greedy codes equal to the reference's and their audio within [`TOL`], guided and
/// not, and guidance changing the codes.
fn assert_greedy_generation_matches(m: &MusicGen, r: &HashMap<String, Tensor>, prompt: &str) {
    for (name, guidance) in [("generate.guided", 3.0), ("generate.unguided", 1.0)] {
        let want = &r[&format!("{name}.codes")];
        let frames = want.dim(2).unwrap();
        let got = m
            .generate_frames(prompt, frames, &Sampling::greedy(guidance), &mut |_| true)
            .unwrap();
        assert_eq!(
            ids(&frames_as_tensor(&got)),
            ids(want),
            "{name}: codes differ"
        );
        let audio = m.decode(&got).unwrap();
        let audio = Tensor::from_vec(audio.clone(), (1, 1, audio.len()), &Device::Cpu).unwrap();
        let d = max_abs_diff(&audio, &r[&format!("{name}.audio")]);
        assert!(d < TOL, "{name}: audio differs by {d}");
    }
    let guided = ids(&r["generate.guided.codes"]);
    let unguided = ids(&r["generate.unguided.codes"]);
    assert_ne!(guided, unguided, "the fixture must make guidance matter");
}

#[test]
fn encodec_decoding_matches_the_reference_and_trims_exactly() {
    assert_encodec_decoding_matches(&model(), &reference());
}

/// The recorded 50 frames of codes decode to the reference's second of audio.
fn assert_encodec_decoding_matches(m: &MusicGen, r: &HashMap<String, Tensor>) {
    let codes = u32s(r, "encodec.codes");
    let audio = m.codec().decode(&codes).unwrap();
    assert_eq!(
        audio.dims(),
        &[1, 1, 32_000],
        "50 frames are one second at 32 kHz"
    );
    let d = max_abs_diff(&audio, &r["encodec.audio"]);
    assert!(d < TOL, "audio differs by {d}");
}

#[test]
fn sampling_is_deterministic_per_seed_and_cancellable() {
    let m = model();
    let s = |seed| Sampling {
        seed,
        ..m.default_sampling()
    };
    let a = m
        .generate_frames("calm piano", 12, &s(7), &mut |_| true)
        .unwrap();
    let b = m
        .generate_frames("calm piano", 12, &s(7), &mut |_| true)
        .unwrap();
    let c = m
        .generate_frames("calm piano", 12, &s(8), &mut |_| true)
        .unwrap();
    assert_eq!(a, b);
    assert_ne!(a, c);
    let mut calls = 0;
    let err = m
        .generate_frames("calm piano", 12, &s(7), &mut |_| {
            calls += 1;
            calls < 3
        })
        .unwrap_err();
    assert!(matches!(err, Error::Cancelled), "{err}");
    assert_eq!(calls, 3);
}

/// A copy of the tiny checkpoint in a temporary folder with its tensors rewritten.
fn altered_checkpoint(edit: impl FnOnce(&mut HashMap<String, Tensor>)) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for f in ["config.json", "generation_config.json", "tokenizer.json"] {
        std::fs::copy(fixture().join(f), dir.path().join(f)).unwrap();
    }
    let mut tensors =
        candle_core::safetensors::load(fixture().join("model.safetensors"), &Device::Cpu).unwrap();
    edit(&mut tensors);
    candle_core::safetensors::save(&tensors, dir.path().join("model.safetensors")).unwrap();
    dir
}

fn load_error(dir: &Path) -> String {
    match MusicGen::load(dir) {
        Ok(_) => panic!("a broken checkpoint loaded"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn a_missing_tensor_is_named() {
    let name = "decoder.model.decoder.layers.2.fc1.weight";
    let dir = altered_checkpoint(|t| {
        t.remove(name);
    });
    let msg = load_error(dir.path());
    assert!(msg.contains(name), "{msg}");
    assert!(msg.contains("model.safetensors"), "{msg}");
}

#[test]
fn a_mis_shaped_tensor_is_named_with_both_shapes() {
    let name = "text_encoder.encoder.block.1.layer.0.SelfAttention.q.weight";
    let dir = altered_checkpoint(|t| {
        t.insert(
            name.into(),
            Tensor::zeros((32, 16), candle_core::DType::F32, &Device::Cpu).unwrap(),
        );
    });
    let msg = load_error(dir.path());
    assert!(msg.contains(name), "{msg}");
    assert!(
        msg.contains("[32, 16]") && msg.contains("[32, 32]"),
        "{msg}"
    );
}

#[test]
fn older_weight_norm_names_load_to_the_same_audio() {
    let dir = altered_checkpoint(|t| {
        let names: Vec<String> = t.keys().cloned().collect();
        for n in names {
            for (new, old) in [
                ("parametrizations.weight.original0", "weight_g"),
                ("parametrizations.weight.original1", "weight_v"),
            ] {
                if n.ends_with(new) {
                    let v = t.remove(&n).unwrap();
                    t.insert(n.replace(new, old), v);
                }
            }
        }
    });
    let old = MusicGen::load(dir.path()).unwrap();
    let r = reference();
    let codes = u32s(&r, "encodec.codes");
    let d = max_abs_diff(&old.codec().decode(&codes).unwrap(), &r["encodec.audio"]);
    assert!(d < TOL, "{d}");
}

#[test]
fn broken_model_files_are_clear_errors() {
    // truncated weights
    let dir = altered_checkpoint(|_| {});
    let path = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let msg = load_error(dir.path());
    assert!(
        msg.contains("model.safetensors") && msg.contains("safetensors"),
        "{msg}"
    );

    // no weights at all
    std::fs::remove_file(&path).unwrap();
    let msg = load_error(dir.path());
    assert!(msg.contains("no model.safetensors"), "{msg}");

    // a config that is not a MusicGen config
    let dir = altered_checkpoint(|_| {});
    std::fs::write(dir.path().join("config.json"), "{\"model_type\": \"bert\"}").unwrap();
    let msg = load_error(dir.path());
    assert!(
        msg.contains("config.json") && msg.contains("MusicGen"),
        "{msg}"
    );

    // a config whose sizes cannot work
    let dir = altered_checkpoint(|_| {});
    let cfg_path = dir.path().join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg["decoder"]["num_attention_heads"] = 5.into();
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let msg = load_error(dir.path());
    assert!(msg.contains("num_attention_heads"), "{msg}");

    // ... or that asks for a position table no machine holds
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture().join("config.json")).unwrap())
            .unwrap();
    cfg["decoder"]["max_position_embeddings"] = 1_000_000_000_000u64.into();
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let msg = load_error(dir.path());
    assert!(msg.contains("max_position_embeddings"), "{msg}");

    // a tokenizer that is not one
    let dir = altered_checkpoint(|_| {});
    std::fs::write(dir.path().join("tokenizer.json"), "not json").unwrap();
    let msg = load_error(dir.path());
    assert!(msg.contains("tokenizer.json"), "{msg}");
}

#[test]
fn sharded_checkpoints_load() {
    let dir = tempfile::tempdir().unwrap();
    for f in ["config.json", "generation_config.json", "tokenizer.json"] {
        std::fs::copy(fixture().join(f), dir.path().join(f)).unwrap();
    }
    let tensors =
        candle_core::safetensors::load(fixture().join("model.safetensors"), &Device::Cpu).unwrap();
    let (mut a, mut b) = (HashMap::new(), HashMap::new());
    let mut map = serde_json::Map::new();
    for (name, t) in tensors {
        let shard = if name.starts_with("decoder.") {
            a.insert(name.clone(), t);
            "model-00001-of-00002.safetensors"
        } else {
            b.insert(name.clone(), t);
            "model-00002-of-00002.safetensors"
        };
        map.insert(name, shard.into());
    }
    candle_core::safetensors::save(&a, dir.path().join("model-00001-of-00002.safetensors"))
        .unwrap();
    candle_core::safetensors::save(&b, dir.path().join("model-00002-of-00002.safetensors"))
        .unwrap();
    let index = serde_json::json!({ "metadata": {}, "weight_map": map });
    std::fs::write(
        dir.path().join("model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();
    let m = MusicGen::load(dir.path()).unwrap();
    let r = reference();
    let codes = u32s(&r, "encodec.codes");
    let d = max_abs_diff(&m.codec().decode(&codes).unwrap(), &r["encodec.audio"]);
    assert!(d < TOL, "{d}");

    // A shard name that leaves the model folder is refused.
    let index = serde_json::json!({ "weight_map": { "x": "../elsewhere.safetensors" } });
    std::fs::write(
        dir.path().join("model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();
    std::fs::remove_file(dir.path().join("model-00001-of-00002.safetensors")).unwrap();
    std::fs::remove_file(dir.path().join("model-00002-of-00002.safetensors")).unwrap();
    let msg = load_error(dir.path());
    assert!(msg.contains("not a file name"), "{msg}");
}

#[test]
fn long_pieces_run_in_windows_that_continue_the_previous_one() {
    let m = model();
    // The tiny decoder has 256 positions: windows of 251 frames with 125 of context.
    let s = Sampling::greedy(3.0);
    let mut seen = Vec::new();
    let long = m
        .generate_frames("calm piano", 400, &s, &mut |p| {
            seen.push(p.frames_done);
            assert_eq!(p.frames_total, 400);
            true
        })
        .unwrap();
    assert_eq!(long.len(), 400);
    assert!(
        seen.windows(2).all(|w| w[0] <= w[1]),
        "progress goes forward"
    );
    assert_eq!(*seen.last().unwrap(), 400);
    let first = m
        .generate_frames("calm piano", 251, &s, &mut |_| true)
        .unwrap();
    assert_eq!(
        &long[..251],
        &first[..],
        "the first window is a plain generation"
    );
    assert!(long.iter().flatten().all(|&c| c < 64));
}

#[test]
fn eight_bit_weights_stay_close_to_f32() {
    use vidmusician_engine::neural::Precision;
    use vidmusician_engine::neural::config::DecoderConfig;
    use vidmusician_engine::neural::decoder::Decoder;
    use vidmusician_engine::neural::weights::Weights;
    let cfg: DecoderConfig = serde_json::from_value(serde_json::json!({
        "vocab_size": 128, "max_position_embeddings": 64, "num_hidden_layers": 2,
        "ffn_dim": 256, "num_attention_heads": 4, "hidden_size": 64, "num_codebooks": 4
    }))
    .unwrap();
    let mut d = Decoder::load(&Weights::random(3).pp("decoder"), &cfg).unwrap();
    let states = Tensor::randn(0f32, 1.0, (1, 5, 64), &Device::Cpu).unwrap();
    let cross = d.cross_kv(&states, None).unwrap().pop().unwrap();
    let tokens: Vec<u32> = (0..4 * 3).map(|i| (i * 37 % 128) as u32).collect();
    let run = |d: &Decoder| {
        let mut cache = d.new_cache();
        let mut seqs = [SeqInput {
            tokens: &tokens,
            cross: Some(&cross),
            cache: &mut cache,
        }];
        d.forward(&mut seqs, &[]).unwrap()
    };
    // One position at a time too: the 8-bit kernel serves single steps.
    let step = |d: &Decoder| {
        let mut cache = d.new_cache();
        let mut seqs = [SeqInput {
            tokens: &tokens[..4],
            cross: Some(&cross),
            cache: &mut cache,
        }];
        d.forward(&mut seqs, &[]).unwrap()
    };
    let (f32_all, f32_step) = (run(&d), step(&d));
    d.set_precision(Precision::Q8);
    let (q8_all, q8_step) = (run(&d), step(&d));
    for (a, b) in [(&f32_all, &q8_all), (&f32_step, &q8_step)] {
        let max = max_diff(a, b);
        let spread = a.iter().map(|v| v * v).sum::<f32>() / a.len() as f32;
        assert!(max > 0.0, "the weights were quantised");
        assert!(
            max < 0.05 * spread.sqrt().max(1e-3),
            "{max} vs rms {}",
            spread.sqrt()
        );
    }
    // Loading straight into 8 bits (layer by layer) is the same decoder.
    let direct = Decoder::load_as(&Weights::random(3).pp("decoder"), &cfg, Precision::Q8).unwrap();
    assert_eq!(run(&direct), q8_all);
    assert_eq!(step(&direct), q8_step);
}

#[test]
fn a_tensor_read_twice_is_the_same_after_its_pages_are_released() {
    // Reading a tensor hands its pages of the mapping back to the page cache; a second
    // read must fault the same bytes back in.
    use vidmusician_engine::neural::weights::Weights;
    let w = Weights::open_dir(&fixture()).unwrap();
    let name = "decoder.model.decoder.layers.0.fc1.weight";
    let read = || -> Vec<f32> {
        let t = w.get(&[64, 48], name).unwrap();
        t.flatten_all().unwrap().to_vec1().unwrap()
    };
    let (a, b) = (read(), read());
    assert_eq!(a, b);
    assert!(a.iter().any(|&v| v != 0.0), "the tensor holds data");
}

/// Pseudo-random codes below the tiny codebook size, `(1, books, frames)`.
fn pseudo_codes(m: &MusicGen, frames: usize) -> Tensor {
    let books = m.codec().num_codebooks();
    let codes: Vec<u32> = (0..books * frames)
        .map(|i| ((i as u64 * 2_654_435_761) % 64) as u32)
        .collect();
    Tensor::from_vec(codes, (1, books, frames), &Device::Cpu).unwrap()
}

#[test]
fn decoding_in_chunks_gives_the_audio_of_one_pass() {
    let m = model();
    let frames = 61;
    let codes = pseudo_codes(&m, frames);
    let whole = m.codec().decode_in_chunks(&codes, frames).unwrap();
    assert_eq!(whole.dims()[2], frames * m.codec().hop_length());
    for chunk in [1, 4, 16, 60] {
        let parts = m.codec().decode_in_chunks(&codes, chunk).unwrap();
        assert_eq!(parts.dims(), whole.dims(), "chunk {chunk}");
        let d = max_abs_diff(&parts, &whole);
        assert!(d < 1e-5, "chunk {chunk}: {d}");
    }
}

/// The audio of the whole piece `codes`, decoded at once.
fn whole_audio(m: &MusicGen, codes: &Tensor) -> Vec<f32> {
    m.codec()
        .decode(codes)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

#[test]
fn audio_of_a_piece_still_being_generated_is_final_once_settled() {
    let m = model();
    let frames = 61;
    let codes = pseudo_codes(&m, frames);
    let whole = whole_audio(&m, &codes);
    let hop = m.codec().hop_length();
    // Frames arrive 7 at a time; after each arrival the settled audio is
    // decoded from what is known so far.
    let mut sent = 0;
    let mut streamed = Vec::new();
    for known in (7..=frames).step_by(7).chain([frames]) {
        let settled = m.codec().settled(known, known == frames);
        assert!(settled <= known);
        if settled > sent {
            let prefix = codes.narrow(2, 0, known).unwrap();
            let part = m.codec().decode_span(&prefix, sent, settled).unwrap();
            streamed.extend(part.flatten_all().unwrap().to_vec1::<f32>().unwrap());
            sent = settled;
        }
    }
    let d = max_diff(&streamed, &whole);
    assert!(d < 1e-5, "streamed audio differs by {d}");
    // Without the settling margin the last frames' audio would still change:
    // decoding right up to the known end differs from the whole piece.
    let prefix = codes.narrow(2, 0, 30).unwrap();
    let early: Vec<f32> = m
        .codec()
        .decode_span(&prefix, 0, 30)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let tail = max_diff(&early[28 * hop..30 * hop], &whole[28 * hop..30 * hop]);
    assert!(
        tail > 1e-4,
        "the end of a prefix should not be final yet ({tail})"
    );
    assert!(m.codec().decode_span(&prefix, 5, 5).is_err());
    assert!(m.codec().decode_span(&prefix, 0, 31).is_err());
}

/// The audio `spans` gives for the piece `codes` whose frames arrive
/// `arrivals` at a time (cycling), each span checked to be whole frames.
fn stream_spans(
    codec: &EncodecDecoder,
    codes: &Tensor,
    arrivals: &[usize],
    spans: &mut SpanDecoder,
) -> Vec<f32> {
    let frames = codes.dim(2).unwrap();
    let mut streamed = Vec::new();
    let (mut known, mut k) = (0, 0);
    while known < frames {
        known = (known + arrivals[k % arrivals.len()]).min(frames);
        k += 1;
        let prefix = codes.narrow(2, 0, known).unwrap();
        if let Some(a) = spans.next(codec, &prefix, known == frames).unwrap() {
            streamed.extend(a.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        }
        assert_eq!(
            streamed.len(),
            spans.sent() * codec.hop_length(),
            "{arrivals:?}"
        );
    }
    streamed
}

#[test]
fn a_span_decoder_gives_the_whole_pieces_audio_whatever_the_arrivals() {
    let m = model();
    let frames = 97;
    let codes = pseudo_codes(&m, frames);
    let whole = whole_audio(&m, &codes);
    // One frame at a time, a hand-over's worth at a time, and irregularly:
    // the LSTM's state is carried across every kind of boundary.
    for arrivals in [vec![1usize], vec![7], vec![3, 11, 1, 20, 2]] {
        let mut spans = SpanDecoder::default();
        let streamed = stream_spans(m.codec(), &codes, &arrivals, &mut spans);
        assert_eq!(spans.sent(), frames, "{arrivals:?}");
        let d = max_diff(&streamed, &whole);
        assert!(d < 1e-5, "{arrivals:?}: streamed audio differs by {d}");
        // Nothing more to give; a piece that comes back shorter is refused.
        let prefix = codes.narrow(2, 0, frames).unwrap();
        assert!(spans.next(m.codec(), &prefix, true).unwrap().is_none());
        let shorter = codes.narrow(2, 0, 50).unwrap();
        let err = spans.next(m.codec(), &shorter, true).unwrap_err();
        assert!(
            err.to_string().contains("came back with 50 frames"),
            "{err}"
        );
    }
}

/// The codec as candle ops on a device (here the CPU device, where the same
/// code runs as on a GPU) decodes as the hand-written CPU kernels do: the
/// reference's audio, a whole piece, and a piece streamed span by span with
/// the LSTM's state carried.
#[test]
fn the_codec_on_a_device_decodes_as_the_cpu_kernels_do() {
    let m = model();
    let on = m.codec().to_device(&Device::Cpu).unwrap();
    let r = reference();
    let audio = on.decode(&u32s(&r, "encodec.codes")).unwrap();
    let d = max_abs_diff(&audio, &r["encodec.audio"]);
    assert!(d < TOL, "the reference's audio differs by {d}");
    let frames = 97;
    let codes = pseudo_codes(&m, frames);
    let whole = whole_audio(&m, &codes);
    let got: Vec<f32> = on
        .decode(&codes)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let d = max_diff(&got, &whole);
    assert!(d < 1e-5, "a whole piece differs by {d}");
    for arrivals in [vec![7usize], vec![3, 11, 1, 20, 2]] {
        let streamed = stream_spans(&on, &codes, &arrivals, &mut SpanDecoder::default());
        let d = max_diff(&streamed, &whole);
        assert!(d < 1e-5, "{arrivals:?}: streamed audio differs by {d}");
    }
}

#[test]
fn streamed_generation_hands_over_the_piece_window_by_window() {
    let m = model();
    // Long enough for several of the tiny model's windows.
    let seconds = 12.3;
    let sampling = Sampling {
        seed: 9,
        ..m.default_sampling()
    };
    let mut pieces = Vec::new();
    m.generate_streaming("calm piano", seconds, &sampling, &mut |_| true, &mut |a| {
        pieces.push(a.to_vec());
        Ok(())
    })
    .unwrap();
    assert!(pieces.len() >= 3, "{} pieces", pieces.len());
    let streamed: Vec<f32> = pieces.concat();
    // The same as generating every frame first and decoding them at once.
    let frames = (seconds * m.frame_rate() as f64).ceil() as usize;
    let codes = m
        .generate_frames("calm piano", frames, &sampling, &mut |_| true)
        .unwrap();
    let mut whole = m.decode(&codes).unwrap();
    whole.truncate((seconds * f64::from(m.sample_rate())).round() as usize);
    let d = max_diff(&streamed, &whole);
    assert!(d < 1e-5, "{d}");
    assert_eq!(
        m.generate("calm piano", seconds, &sampling, &mut |_| true)
            .unwrap(),
        streamed
    );
}

#[test]
fn music_is_handed_over_every_two_seconds_while_a_window_is_made() {
    let m = model();
    // Under one of the tiny model's windows (about 5 s).
    let seconds = 4.5;
    let sampling = Sampling {
        seed: 4,
        ..m.default_sampling()
    };
    let frames = (seconds * m.frame_rate() as f64).ceil() as usize;
    let mut done = 0usize;
    // (frames generated when a piece came, its samples)
    let mut pieces: Vec<(usize, usize)> = Vec::new();
    let mut audio = Vec::new();
    let progress = std::cell::Cell::new(0usize);
    m.generate_streaming(
        "calm piano",
        seconds,
        &sampling,
        &mut |p| {
            progress.set(p.frames_done);
            true
        },
        &mut |a| {
            done = progress.get();
            pieces.push((done, a.len()));
            audio.extend_from_slice(a);
            Ok(())
        },
    )
    .unwrap();
    // The first sound came before the window was half made, and more than
    // one piece came out of a single window.
    assert!(pieces.len() >= 2, "{pieces:?}");
    assert!(pieces[0].0 < frames / 2, "{pieces:?} of {frames} frames");
    assert!(pieces.iter().all(|(_, n)| *n > 0), "{pieces:?}");
    // Handed over in pieces, it is the piece made whole.
    assert_eq!(
        m.generate("calm piano", seconds, &sampling, &mut |_| true)
            .unwrap(),
        audio
    );
}

#[test]
fn a_codec_whose_quantizers_only_the_current_formula_counts_loads_and_matches() {
    // 32 codes a codebook at 1.0 kbps: transformers 5.x builds 1000 × 1.0 // (50 × 5)
    // = 4 quantizers; the older formula, 1000 × 1.0 // (50 × 10) = 2, fewer than the 4
    // codebooks the decoder writes, refused this checkpoint.
    let dir = fixture_named("musicgen-tiny-cb32");
    let m = MusicGen::load(&dir).expect("the 32-code checkpoint loads");
    let r = reference_in(&dir);
    assert_eq!(m.codec().num_codebooks(), 4);
    assert_eq!(m.decoder().unwrap().config().vocab_size, 32);
    let p = prompts_in(&dir);
    let refs: Vec<&str> = p.iter().map(String::as_str).collect();
    let (got_ids, got_mask) = m.tokenize(&refs).unwrap();
    assert_eq!(ids(&got_ids), ids(&r["text.input_ids"]));
    assert_eq!(ids(&got_mask), ids(&r["text.attention_mask"]));
    assert_greedy_generation_matches(&m, &r, &p[0]);
    assert!(
        ids(&r["generate.guided.codes"]).iter().all(|&c| c < 32),
        "codes of a 32-code codebook"
    );
    assert_encodec_decoding_matches(&m, &r);
}

/// The audio of `prompts` over `seconds`, through the streaming path.
fn stream(m: &MusicGen, prompts: &PromptSchedule, seconds: f64) -> Vec<f32> {
    let mut audio = Vec::new();
    let sampling = Sampling {
        seed: 3,
        ..m.default_sampling()
    };
    m.generate_streaming_scheduled(prompts, seconds, &sampling, &mut |_| true, &mut |a| {
        audio.extend_from_slice(a);
        Ok(())
    })
    .unwrap();
    audio
}

#[test]
fn a_window_takes_the_prompt_of_the_stretch_it_covers() {
    let m = model();
    let rate = m.sample_rate() as usize;
    let calm = stream(&m, &PromptSchedule::one("calm piano"), 12.0);
    let changing = stream(
        &m,
        &PromptSchedule::new(vec![
            (6.0, "loud drums".to_string()),
            (0.0, "calm piano".to_string()),
        ]),
        12.0,
    );
    assert_eq!(calm.len(), 12 * rate);
    assert_eq!(changing.len(), calm.len());
    // The first window (about 5 s of this checkpoint) is under the first
    // prompt in both; what follows 6 s is under the second.
    assert_eq!(calm[..4 * rate], changing[..4 * rate]);
    assert_ne!(calm[8 * rate..], changing[8 * rate..]);
    // One prompt given as a schedule is the plain path.
    let mut plain = Vec::new();
    let sampling = Sampling {
        seed: 3,
        ..m.default_sampling()
    };
    m.generate_streaming("calm piano", 12.0, &sampling, &mut |_| true, &mut |a| {
        plain.extend_from_slice(a);
        Ok(())
    })
    .unwrap();
    assert_eq!(plain, calm);
}

#[test]
fn a_prompt_schedule_picks_the_prompt_covering_most_of_a_span() {
    let s = PromptSchedule::new(vec![
        (10.0, "b".to_string()),
        (0.0, "a".to_string()),
        (f64::NAN, "x".to_string()),
        (25.0, "c".to_string()),
    ]);
    assert_eq!(s.entries().len(), 3);
    assert_eq!(s.for_span(0.0, 15.0), "a");
    // 10 s of "a", 15 s of "b", 5 s of "c".
    assert_eq!(s.for_span(0.0, 30.0), "b");
    assert_eq!(s.for_span(8.0, 30.0), "b");
    assert_eq!(s.for_span(20.0, 40.0), "c");
    assert_eq!(s.for_span(-5.0, 1.0), "a");
    assert_eq!(PromptSchedule::new(Vec::new()).for_span(0.0, 1.0), "");
}
