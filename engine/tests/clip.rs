//! CLIP against the reference implementation: tiny random checkpoints written by
//! Hugging Face transformers, with the pixels, embeddings and token ids it made for
//! them (`tools/make_clip_fixture.py`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use vidmusician_engine::Error;
use vidmusician_engine::neural::hub::{self, ModelKind};
use vidmusician_engine::neural::models::clip::{Clip, RgbImage, preprocess, similarity};

/// Embeddings: both towers in f32 against PyTorch's f32.
const TOL: f32 = 1e-4;

const FIXTURES: [&str; 2] = ["clip-tiny", "clip-tiny-gelu"];

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn fixture(name: &str) -> PathBuf {
    fixtures_dir().join(name)
}

fn reference(dir: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(dir.join("reference.safetensors"), &Device::Cpu)
        .expect("reference outputs")
}

fn prompts(dir: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(dir.join("reference.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_string())
        .collect()
}

/// The recorded frames, `(height, width, 3)` u8 each, as `(width, height, bytes)`.
fn images(r: &HashMap<String, Tensor>) -> Vec<(usize, usize, Vec<u8>)> {
    (0..)
        .map_while(|i| r.get(&format!("image.{i}")))
        .map(|t| {
            let (h, w, _) = t.dims3().unwrap();
            (w, h, t.flatten_all().unwrap().to_vec1::<u8>().unwrap())
        })
        .collect()
}

fn views(imgs: &[(usize, usize, Vec<u8>)]) -> Vec<RgbImage<'_>> {
    imgs.iter()
        .map(|(w, h, b)| RgbImage::new(*w, *h, b).unwrap())
        .collect()
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

#[test]
fn preprocessing_equals_pil_pixel_for_pixel() {
    for name in FIXTURES {
        let dir = fixture(name);
        let r = reference(&dir);
        let model = Clip::load(&dir).unwrap();
        let imgs = images(&r);
        assert_eq!(imgs.len(), 4);
        let pixels =
            preprocess::preprocess(&model.preprocess, &views(&imgs), &Device::Cpu).unwrap();
        // One step of a byte is 1/255/std ≈ 0.0146 here: agreeing within 1e-6 means
        // every resampled byte equals PIL's.
        let d = max_abs_diff(&pixels, &r["vision.pixel_values"]);
        assert!(d <= 1e-6, "{name}: pixels differ from PIL's by {d}");
    }
}

/// The fixture script's `test_image`, drawn the same way (integer arithmetic).
fn test_image(width: usize, height: usize) -> Vec<u8> {
    let mut rgb = Vec::with_capacity(width * height * 3);
    for y in 0..height {
        for x in 0..width {
            let r = (x * 255 / (width - 1).max(1)) ^ (y * 7 % 256);
            let g = ((x / 5 + y / 3) % 2) * 200 + y * 50 / height.max(1);
            let b = (x * y * 13 + 40) % 256;
            rgb.extend([r as u8, g as u8, b as u8]);
        }
    }
    rgb
}

#[test]
fn bicubic_resizes_equal_pils_byte_for_byte() {
    let dir = fixture("clip-tiny");
    let r = reference(&dir);
    let text = std::fs::read_to_string(dir.join("reference.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let cases = v["resize_cases"].as_array().unwrap();
    assert!(cases.len() >= 4);
    for (i, c) in cases.iter().enumerate() {
        let [w, h, shortest] = [0, 1, 2].map(|k| c[k].as_u64().unwrap() as usize);
        let src = test_image(w, h);
        let img = RgbImage::new(w, h, &src).unwrap();
        let (ow, oh) = preprocess::resized_size(w, h, shortest);
        let got = preprocess::resize_bicubic(&img, ow, oh).unwrap();
        let want = &r[&format!("resize.{i}")];
        assert_eq!(want.dims(), &[oh, ow, 3], "case {i}: {w}×{h} → {shortest}");
        let want = want.flatten_all().unwrap().to_vec1::<u8>().unwrap();
        let wrong = got.iter().zip(&want).filter(|(a, b)| a != b).count();
        assert_eq!(
            wrong, 0,
            "case {i}: {w}×{h} → {ow}×{oh}: {wrong} bytes differ from PIL's"
        );
    }
    // The frames of the embedding tests are drawn the same way.
    let (w, h, bytes) = &images(&r)[0];
    assert_eq!(&test_image(*w, *h), bytes);
}

#[test]
fn vision_tower_matches_transformers() {
    for name in FIXTURES {
        let dir = fixture(name);
        let r = reference(&dir);
        let model = Clip::load(&dir).unwrap();
        let out = model
            .vision()
            .unwrap()
            .forward(&r["vision.pixel_values"])
            .unwrap();
        for (got, want) in [
            (&out.pooled, "vision.pooler_output"),
            (&out.projected, "vision.image_embeds"),
            (&out.patch_tokens, "vision.patch_tokens"),
        ] {
            let d = max_abs_diff(got, &r[want]);
            assert!(d < TOL, "{name}: {want} differs by {d}");
        }
        // End to end, from the bytes.
        let imgs = images(&r);
        let out = model.encode_images(&views(&imgs)).unwrap();
        let d = max_abs_diff(&out.projected, &r["vision.image_embeds"]);
        assert!(d < TOL, "{name}: image_embeds from bytes differ by {d}");
    }
}

/// Cosine similarity of matching rows of two `(rows, width)` tensors, the smallest.
fn min_cosine(a: &Tensor, b: &Tensor) -> f32 {
    let dot = (a * b).unwrap().sum(1).unwrap();
    let norms = (a.sqr().unwrap().sum(1).unwrap().sqrt().unwrap()
        * b.sqr().unwrap().sum(1).unwrap().sqrt().unwrap())
    .unwrap();
    (dot / norms)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .into_iter()
        .fold(1.0, f32::min)
}

#[test]
fn the_8_bit_vision_tower_stays_close_and_switches_back_exactly() {
    use vidmusician_engine::neural::models::clip::VisionPrecision;
    for name in FIXTURES {
        let dir = fixture(name);
        let r = reference(&dir);
        let mut model = Clip::load(&dir).unwrap();
        assert_eq!(model.vision().unwrap().precision(), VisionPrecision::F32);
        let pixels = &r["vision.pixel_values"];
        if model
            .vision_mut()
            .unwrap()
            .set_precision(VisionPrecision::Int8)
            .unwrap()
            == VisionPrecision::Int8
        {
            let out = model.vision().unwrap().forward(pixels).unwrap();
            for (got, key) in [
                (&out.pooled, "vision.pooler_output"),
                (&out.projected, "vision.image_embeds"),
                (
                    &out.patch_tokens.flatten_from(1).unwrap(),
                    "vision.patch_tokens",
                ),
            ] {
                let c = min_cosine(got, &r[key].flatten_from(1).unwrap());
                println!("{name}: 8-bit {key} at cosine {c}");
                assert!(c > 0.995, "{name}: 8-bit {key} at cosine {c}");
            }
        }
        // Back at f32 the results are transformers' again.
        assert_eq!(
            model
                .vision_mut()
                .unwrap()
                .set_precision(VisionPrecision::F32)
                .unwrap(),
            VisionPrecision::F32
        );
        let out = model.vision().unwrap().forward(pixels).unwrap();
        let d = max_abs_diff(&out.projected, &r["vision.image_embeds"]);
        assert!(
            d < TOL,
            "{name}: image_embeds after switching back differ by {d}"
        );
    }
}

/// A tower loaded straight into 8 bits (as the engines load it, with no f32
/// copy of the encoder kept) gives what loading at f32 and switching gives,
/// exactly; it refuses to go back to f32 in words rather than miscompute.
#[test]
fn the_vision_tower_loaded_in_8_bits_equals_the_one_switched_to_them() {
    use vidmusician_engine::neural::models::clip::VisionPrecision;
    for name in FIXTURES {
        let dir = fixture(name);
        let r = reference(&dir);
        let pixels = &r["vision.pixel_values"];
        let mut switched = Clip::load(&dir).unwrap();
        let precision = switched
            .vision_mut()
            .unwrap()
            .set_precision(VisionPrecision::Int8)
            .unwrap();
        let mut direct = Clip::load_as(&dir, VisionPrecision::Int8).unwrap();
        assert_eq!(direct.vision().unwrap().precision(), precision, "{name}");
        let (a, b) = (
            switched.vision().unwrap().forward(pixels).unwrap(),
            direct.vision().unwrap().forward(pixels).unwrap(),
        );
        for (x, y) in [
            (&a.pooled, &b.pooled),
            (&a.projected, &b.projected),
            (&a.patch_tokens, &b.patch_tokens),
        ] {
            assert_eq!(max_abs_diff(x, y), 0.0, "{name}");
        }
        if precision == VisionPrecision::Int8 {
            let err = direct
                .vision_mut()
                .unwrap()
                .set_precision(VisionPrecision::F32)
                .unwrap_err()
                .to_string();
            assert!(err.contains("load it again for f32"), "{name}: {err}");
            // Still whole, and still 8-bit.
            assert_eq!(direct.vision().unwrap().precision(), VisionPrecision::Int8);
            let c = direct.vision().unwrap().forward(pixels).unwrap();
            assert_eq!(max_abs_diff(&c.projected, &b.projected), 0.0, "{name}");
        }
    }
}

/// The text tower loaded in 8 bits (as the engines load it for the tags)
/// stays close to transformers' f32 embeddings.
#[test]
fn the_8_bit_text_tower_stays_close() {
    use vidmusician_engine::neural::models::clip::VisionPrecision;
    for name in FIXTURES {
        let dir = fixture(name);
        let r = reference(&dir);
        let model = Clip::load_as(&dir, VisionPrecision::Int8).unwrap();
        if model.text.precision() != VisionPrecision::Int8 {
            println!("{name}: no 8-bit kernel on this CPU, the text tower stays f32");
            continue;
        }
        let prompts = prompts(&dir);
        let refs: Vec<&str> = prompts.iter().map(String::as_str).collect();
        let out = model.encode_texts(&refs).unwrap();
        for (got, key) in [
            (&out.pooled, "text.pooler_output"),
            (&out.projected, "text.text_embeds"),
        ] {
            let c = min_cosine(got, &r[key]);
            println!("{name}: 8-bit {key} at cosine {c}");
            assert!(c > 0.995, "{name}: 8-bit {key} at cosine {c}");
        }
    }
}

#[test]
fn text_tower_matches_transformers() {
    for name in FIXTURES {
        let dir = fixture(name);
        let r = reference(&dir);
        let model = Clip::load(&dir).unwrap();
        let prompts = prompts(&dir);
        let ids: Vec<Vec<i64>> = r["text.input_ids"].to_vec2().unwrap();
        let mask: Vec<Vec<i64>> = r["text.attention_mask"].to_vec2().unwrap();
        for ((p, row), m) in prompts.iter().zip(&ids).zip(&mask) {
            let want: Vec<u32> = row
                .iter()
                .zip(m)
                .filter(|(_, m)| **m == 1)
                .map(|(i, _)| *i as u32)
                .collect();
            assert_eq!(model.tokenizer.encode(p).unwrap(), want, "{name}: {p:?}");
        }
        // The long prompt was cut to the tower's 16 positions, its eos kept.
        let long = model.tokenizer.encode(&prompts[2]).unwrap();
        assert_eq!(long.len(), 16);
        let refs: Vec<&str> = prompts.iter().map(String::as_str).collect();
        let out = model.encode_texts(&refs).unwrap();
        for (got, want) in [
            (&out.pooled, "text.pooler_output"),
            (&out.projected, "text.text_embeds"),
        ] {
            let d = max_abs_diff(got, &r[want]);
            assert!(d < TOL, "{name}: {want} differs by {d}");
        }
    }
}

#[test]
fn similarity_is_transformers_logits_per_image() {
    for name in FIXTURES {
        let dir = fixture(name);
        let r = reference(&dir);
        let model = Clip::load(&dir).unwrap();
        let logits = model
            .similarity(&r["vision.image_embeds"], &r["text.text_embeds"])
            .unwrap();
        let d = max_abs_diff(&logits, &r["logits_per_image"]);
        assert!(d < TOL, "{name}: logits differ by {d}");
        // The free function with the scale given is the same thing.
        let again = similarity(
            &r["vision.image_embeds"],
            &r["text.text_embeds"],
            model.logit_scale(),
        )
        .unwrap();
        assert_eq!(max_abs_diff(&logits, &again), 0.0);
        // Embeddings of two models cannot be compared.
        let narrow = r["text.text_embeds"].narrow(1, 0, 8).unwrap();
        assert!(
            model
                .similarity(&r["vision.image_embeds"], &narrow)
                .is_err()
        );
    }
}

#[test]
fn a_batch_gives_what_each_frame_and_prompt_gives_alone() {
    let dir = fixture("clip-tiny");
    let r = reference(&dir);
    let model = Clip::load(&dir).unwrap();
    let imgs = images(&r);
    let all = views(&imgs);
    let batch = model.encode_images(&all).unwrap();
    for (i, img) in all.iter().enumerate() {
        let one = model.encode_images(std::slice::from_ref(img)).unwrap();
        for (b, o) in [
            (&batch.pooled, &one.pooled),
            (&batch.projected, &one.projected),
            (&batch.patch_tokens, &one.patch_tokens),
        ] {
            let d = max_abs_diff(&b.narrow(0, i, 1).unwrap(), o);
            assert!(d < 1e-5, "frame {i}: batch differs by {d}");
        }
    }
    let prompts = prompts(&dir);
    let refs: Vec<&str> = prompts.iter().map(String::as_str).collect();
    let batch = model.encode_texts(&refs).unwrap();
    for (i, p) in refs.iter().enumerate() {
        let one = model.encode_texts(&[p]).unwrap();
        let d = max_abs_diff(&batch.projected.narrow(0, i, 1).unwrap(), &one.projected);
        assert!(d < 1e-5, "prompt {i}: batch (padded) differs by {d}");
    }
}

/// A copy of the fixture in a temporary folder, `edit` applied to it.
fn copy_fixture(edit: impl FnOnce(&Path)) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(fixture("clip-tiny")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), tmp.path().join(e.file_name())).unwrap();
    }
    edit(tmp.path());
    tmp
}

/// The f32 tensors of a safetensors file, read with the safetensors crate directly so
/// that nothing of ours touches the file.
fn read_tensors(path: &Path) -> Vec<(String, Tensor)> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(n, v)| {
            let data: Vec<f32> = v
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            (n, Tensor::from_vec(data, v.shape(), &Device::Cpu).unwrap())
        })
        .collect()
}

fn write_tensors(path: &Path, tensors: &[(String, Tensor)]) {
    let raw: Vec<(String, Vec<u8>, Vec<usize>)> = tensors
        .iter()
        .map(|(n, t)| {
            let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let b = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            (n.clone(), b, t.dims().to_vec())
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = raw
        .iter()
        .map(|(n, b, s)| {
            let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                .unwrap();
            (n.clone(), view)
        })
        .collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}

/// Rewrites `dir/model.safetensors` with `change` applied to its tensors.
fn rewrite_weights(dir: &Path, change: impl FnOnce(&mut Vec<(String, Tensor)>)) {
    let path = dir.join("model.safetensors");
    let mut tensors = read_tensors(&path);
    change(&mut tensors);
    write_tensors(&path, &tensors);
}

#[test]
fn sharded_weights_load_like_one_file() {
    let tmp = copy_fixture(|d| {
        let single = d.join("model.safetensors");
        let (vision, rest): (Vec<_>, Vec<_>) = read_tensors(&single)
            .into_iter()
            .partition(|(n, _)| n.starts_with("vision_model."));
        let mut map = serde_json::Map::new();
        for (file, part) in [
            ("model-00001-of-00002.safetensors", &vision),
            ("model-00002-of-00002.safetensors", &rest),
        ] {
            write_tensors(&d.join(file), part);
            for (n, _) in part {
                map.insert(n.clone(), file.into());
            }
        }
        let index = serde_json::json!({"metadata": {}, "weight_map": map});
        std::fs::write(
            d.join("model.safetensors.index.json"),
            serde_json::to_string(&index).unwrap(),
        )
        .unwrap();
        std::fs::remove_file(single).unwrap();
    });
    let r = reference(tmp.path());
    let model = Clip::load(tmp.path()).unwrap();
    let out = model
        .vision()
        .unwrap()
        .forward(&r["vision.pixel_values"])
        .unwrap();
    assert!(max_abs_diff(&out.projected, &r["vision.image_embeds"]) < TOL);
    let prompts = prompts(tmp.path());
    let refs: Vec<&str> = prompts.iter().map(String::as_str).collect();
    let out = model.encode_texts(&refs).unwrap();
    assert!(max_abs_diff(&out.projected, &r["text.text_embeds"]) < TOL);
}

#[test]
fn a_folder_without_tokenizer_json_is_an_error_naming_it() {
    let tmp = copy_fixture(|d| std::fs::remove_file(d.join("tokenizer.json")).unwrap());
    let err = Clip::load(tmp.path())
        .err()
        .expect("loads without a tokenizer");
    let msg = err.to_string();
    assert!(matches!(err, Error::NotFound(_)), "{msg}");
    assert!(
        msg.contains("tokenizer.json") && msg.contains(&tmp.path().display().to_string()),
        "{msg}"
    );
}

#[test]
fn a_missing_class_embedding_is_an_error_naming_it() {
    let tmp = copy_fixture(|d| {
        rewrite_weights(d, |t| {
            t.retain(|(n, _)| n != "vision_model.embeddings.class_embedding")
        })
    });
    let err = Clip::load(tmp.path())
        .err()
        .expect("loads without a class embedding");
    let msg = err.to_string();
    assert!(matches!(err, Error::MissingTensor { .. }), "{msg}");
    assert!(
        msg.contains("vision_model.embeddings.class_embedding")
            && msg.contains("model.safetensors"),
        "{msg}"
    );
}

#[test]
fn a_misshapen_tensor_is_an_error_naming_both_shapes() {
    let tmp = copy_fixture(|d| {
        rewrite_weights(d, |t| {
            for (n, v) in t.iter_mut() {
                if n == "visual_projection.weight" {
                    *v = v.t().unwrap().contiguous().unwrap();
                }
            }
        })
    });
    let err = Clip::load(tmp.path())
        .err()
        .expect("loads a transposed projection");
    let msg = err.to_string();
    assert!(matches!(err, Error::TensorShape { .. }), "{msg}");
    assert!(
        msg.contains("visual_projection.weight")
            && msg.contains("[32, 16]")
            && msg.contains("[16, 32]"),
        "{msg}"
    );
}

#[test]
fn a_missing_preprocessor_config_means_clips_defaults() {
    let tmp = copy_fixture(|d| std::fs::remove_file(d.join("preprocessor_config.json")).unwrap());
    let model = Clip::load(tmp.path()).unwrap();
    // The fixture's file holds CLIP's defaults for its 40-pixel input, so the
    // pixels are the same either way.
    let with = Clip::load(&fixture("clip-tiny")).unwrap();
    assert_eq!(model.preprocess, with.preprocess);
    assert_eq!(model.preprocess.crop, (40, 40));
}

#[test]
fn bad_frames_are_errors_not_panics() {
    let model = Clip::load(&fixture("clip-tiny")).unwrap();
    assert!(RgbImage::new(10, 10, &[0; 299]).is_err());
    // Pixels of the wrong size for the tower.
    let wrong = Tensor::zeros((1, 3, 32, 32), DType::F32, &Device::Cpu).unwrap();
    assert!(model.vision().unwrap().forward(&wrong).is_err());
    // A very thin frame is resized and cropped like any other.
    let thin = vec![0u8; 1000 * 3];
    let img = RgbImage::new(1000, 1, &thin).unwrap();
    assert!(model.encode_images(&[img]).is_ok());
    assert!(model.encode_images(&[]).is_err());
    // Token ids outside the vocabulary or past the positions.
    let ids = Tensor::new(&[[0u32, 5000]], &Device::Cpu).unwrap();
    assert!(model.text.forward(&ids).is_err());
    let ids = Tensor::zeros((1, 17), DType::U32, &Device::Cpu).unwrap();
    assert!(model.text.forward(&ids).is_err());
}

#[test]
fn the_model_search_finds_and_lists_clip_checkpoints() {
    let root = fixtures_dir();
    let dir = hub::find_model("tiny/clip-tiny", Some(&root)).unwrap();
    assert_eq!(dir, fixture("clip-tiny"));
    Clip::load(&dir).unwrap();
    let listed = hub::list_installed(Some(&root));
    let clip = listed
        .iter()
        .find(|m| m.repo == "clip-tiny")
        .expect("the CLIP fixture is listed");
    assert_eq!(clip.kind, ModelKind::Clip);
    assert!(clip.missing.is_empty(), "{:?}", clip.missing);
    let musicgen = listed
        .iter()
        .find(|m| m.repo == "musicgen-tiny")
        .expect("the MusicGen fixture is listed");
    assert_eq!(musicgen.kind, ModelKind::MusicGen);
}

#[test]
fn models_list_shows_the_kind_of_each_model() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vidmusician"))
        .args(["models", "list", "--model-dir"])
        .arg(fixtures_dir())
        .env_remove("VIDMUSICIAN_MODELS")
        .env("HF_HUB_CACHE", tempfile::tempdir().unwrap().path())
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let line = |repo: &str| {
        text.lines()
            .find(|l| l.starts_with(&format!("{repo}\t")))
            .unwrap_or_else(|| panic!("{repo} not listed: {text}"))
            .to_string()
    };
    assert!(line("clip-tiny").contains("\tCLIP\t"), "{text}");
    assert!(line("clip-tiny-gelu").contains("\tCLIP\t"), "{text}");
    assert!(line("musicgen-tiny").contains("\tMusicGen\t"), "{text}");
}

/// Speed of the vision tower at openai/clip-vit-base-patch32's size on random
/// weights: `cargo test --release --test clip -- --ignored --nocapture`.
#[test]
#[ignore]
fn vision_speed_at_base_patch32_size() {
    use vidmusician_engine::neural::models::clip::{ClipConfig, ClipVision};
    use vidmusician_engine::neural::weights::Weights;
    let cfg = ClipConfig::parse(r#"{"model_type": "clip"}"#).unwrap();
    let vision = ClipVision::load(&Weights::random(0), &cfg).unwrap();
    for batch in [1, 8, 25] {
        let pixels = Tensor::randn(0f32, 1.0, (batch, 3, 224, 224), &Device::Cpu).unwrap();
        vision.forward(&pixels).unwrap();
        let t = std::time::Instant::now();
        let runs = 3;
        for _ in 0..runs {
            vision.forward(&pixels).unwrap();
        }
        let per = t.elapsed().as_secs_f64() / (runs * batch) as f64;
        println!("batch {batch}: {:.1} ms per frame", per * 1e3);
    }
}

/// A CLIP loaded for its words alone (where a GPU reads the pictures) scores
/// them as the whole one does, and refuses frames in words.
#[test]
fn a_clip_loaded_for_its_words_embeds_them_as_the_whole_one() {
    use vidmusician_engine::neural::models::clip::{FrameEncoder, VisionPrecision};
    for name in FIXTURES {
        let dir = fixture(name);
        let whole = Clip::load(&dir).unwrap();
        let words = Clip::load_words(&dir, VisionPrecision::F32).unwrap();
        assert!(whole.has_vision() && !words.has_vision(), "{name}");
        let p = prompts(&dir);
        let p: Vec<&str> = p.iter().map(String::as_str).collect();
        let (a, b) = (
            whole.encode_texts(&p).unwrap(),
            words.encode_texts(&p).unwrap(),
        );
        assert_eq!(max_abs_diff(&a.projected, &b.projected), 0.0, "{name}");
        assert_eq!(words.logit_scale(), whole.logit_scale());
        let side = whole.side();
        let rgb = vec![128u8; side * side * 3];
        let image = [RgbImage::new(side, side, &rgb).unwrap()];
        for err in [
            words.encode_images(&image).err().map(|e| e.to_string()),
            words.encode(&image, false).err().map(|e| e.to_string()),
        ] {
            let err = err.expect("a CLIP without its vision tower read a frame");
            assert!(err.contains("without its vision tower"), "{name}: {err}");
        }
        assert!(whole.encode(&image, false).is_ok());
    }
}
