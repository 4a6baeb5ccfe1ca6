"""Build a tiny random CLIP checkpoint in the Hugging Face layout and record reference
outputs from `transformers` next to it.

The Rust implementation in `engine/src/neural/models/clip` is tested against these
files (`engine/tests/clip.rs`). Run by hand when a fixture must change:

    python3 -m venv .venv-fixtures
    .venv-fixtures/bin/pip install torch transformers safetensors tokenizers pillow
    .venv-fixtures/bin/python tools/make_clip_fixture.py engine/tests/fixtures/clip-tiny
    .venv-fixtures/bin/python tools/make_clip_fixture.py engine/tests/fixtures/clip-tiny-gelu \
        --hidden-act gelu --legacy-eos --no-resize-cases

The second one uses the exact (erf) GELU and a config whose `eos_token_id` is 2, as
checkpoints written before transformers PR #24773 have it: the text tower then pools
at the argmax of the ids (the tokenizer's eos is its highest id, as in CLIP's own).

`CLIPImageProcessor` needs torchvision in transformers 5.x, which has no wheel for this
torch, so its steps are done here by hand exactly as its PIL path does them: resize the
shortest edge with PIL's bicubic filter (`int(size * long / short)` for the other
edge), centre crop at `(h - crop) // 2`, rescale by 1/255 in float64 then cast to
float32, normalise with the mean and std in float32. `preprocessor_config.json` is
written by hand with the same values.

Weights are drawn with a larger spread than the library's own init (std 0.02), so that
every layer changes the result and a wrong one shows.
"""

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
from transformers import CLIPConfig, CLIPModel, PreTrainedTokenizerFast

CORPUS = [
    "a photo of a cat",
    "a photo of a dog on the beach",
    "a dark rainy street at night",
    "people dancing at a party",
    "a bowl of fresh food in a kitchen",
    "cars drifting on a race track",
    "a calm lake with mountains",
    "an epic battle scene with fire",
]

# The third is longer than the text tower's 16 positions: truncation must keep the eos.
PROMPTS = [
    "a photo of a cat",
    "Cars   DRIFTING at night",
    "a calm lake with mountains and a dark rainy street at night with people dancing "
    "at a party on the beach",
]

# (width, height): a downscale, an image already at the shortest edge (crop only),
# a square downscale, and an upscale.
IMAGE_SIZES = [(57, 43), (40, 64), (100, 100), (30, 22)]

# (width, height, shortest edge) of PIL bicubic resizes checked byte for byte: large
# downscales (wide antialiasing supports), an upscale, a tall image.
RESIZE_CASES = [(640, 360, 40), (960, 540, 60), (37, 23, 64), (50, 500, 33)]

IMAGE_SIZE = 40
MEAN = [0.48145466, 0.4578275, 0.40821073]
STD = [0.26862954, 0.26130258, 0.27577711]
RESCALE = 1 / 255


def build_tokenizer(out: Path) -> PreTrainedTokenizerFast:
    # Like CLIP's own: lowercased, words end in `</w>`, bos and eos around every
    # sequence, the special tokens last (so the eos has the highest id).
    tok = Tokenizer(models.BPE(end_of_word_suffix="</w>", unk_token="<|endoftext|>"))
    tok.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(r"\s+", " "), normalizers.Lowercase()]
    )
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    # Every lowercase letter, digit and common punctuation mark is in the
    # alphabet, so any English phrase (the zero-shot engine's vocabulary)
    # tokenises without an unknown token, as with CLIP's byte-level one.
    trainer = trainers.BpeTrainer(
        vocab_size=160,
        end_of_word_suffix="</w>",
        special_tokens=[],
        initial_alphabet=list("abcdefghijklmnopqrstuvwxyz0123456789.,;:!?'\"-()&/"),
    )
    # Each character also once as a word of its own, so it has its word-final
    # form (`x</w>`) too.
    singles = " ".join("abcdefghijklmnopqrstuvwxyz0123456789")
    tok.train_from_iterator(CORPUS + [singles], trainer)
    tok.add_special_tokens(["<|startoftext|>", "<|endoftext|>"])
    bos, eos = tok.token_to_id("<|startoftext|>"), tok.token_to_id("<|endoftext|>")
    tok.post_processor = processors.TemplateProcessing(
        single="<|startoftext|> $A <|endoftext|>",
        special_tokens=[("<|startoftext|>", bos), ("<|endoftext|>", eos)],
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|startoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )
    fast.save_pretrained(out)
    return fast


def randomize(model: torch.nn.Module, gen: torch.Generator) -> None:
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name == "logit_scale":
                continue
            if p.dim() == 1 and "norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            elif p.dim() == 1 and name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.2 * torch.randn(p.shape, generator=gen))


def test_image(width: int, height: int) -> np.ndarray:
    """A deterministic RGB image with edges and gradients, so resampling matters.
    Integer arithmetic only, so the Rust tests can draw the same image."""
    y, x = np.mgrid[0:height, 0:width]
    r = (x * 255 // max(width - 1, 1)) ^ (y * 7 % 256)
    g = ((x // 5 + y // 3) % 2) * 200 + (y * 50 // max(height, 1))
    b = (x * y * 13 + 40) % 256
    return np.stack([r, g, b], axis=-1).astype(np.uint8)


def resize_shortest(img: np.ndarray, shortest: int) -> np.ndarray:
    h, w = img.shape[:2]
    short, long = (w, h) if w <= h else (h, w)
    new_long = int(shortest * long / short)
    size = (shortest, new_long) if w <= h else (new_long, shortest)  # PIL: (w, h)
    return np.asarray(Image.fromarray(img).resize(size, resample=Image.BICUBIC))


def preprocess(img: np.ndarray, shortest: int, crop: int) -> np.ndarray:
    resized = resize_shortest(img, shortest)
    rh, rw = resized.shape[:2]
    top, left = (rh - crop) // 2, (rw - crop) // 2
    cropped = resized[top : top + crop, left : left + crop]
    x = (cropped.astype(np.float64) * RESCALE).astype(np.float32)
    x = (x - np.array(MEAN, dtype=np.float32)) / np.array(STD, dtype=np.float32)
    return x.transpose(2, 0, 1).copy()


def main(out: Path, hidden_act: str, legacy_eos: bool, resize_cases: bool) -> None:
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(4321)
    tokenizer = build_tokenizer(out)
    eos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    bos = tokenizer.convert_tokens_to_ids("<|startoftext|>")

    text = dict(
        vocab_size=len(tokenizer),
        hidden_size=24,
        intermediate_size=48,
        projection_dim=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=16,
        hidden_act=hidden_act,
        bos_token_id=bos,
        eos_token_id=2 if legacy_eos else eos,
        pad_token_id=eos,
    )
    vision = dict(
        hidden_size=32,
        intermediate_size=64,
        projection_dim=16,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=IMAGE_SIZE,
        patch_size=8,
        hidden_act=hidden_act,
    )
    config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)
    model = CLIPModel(config).eval()
    randomize(model, gen)
    model.save_pretrained(out, safe_serialization=True)
    (out / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "crop_size": {"height": IMAGE_SIZE, "width": IMAGE_SIZE},
                "do_center_crop": True,
                "do_convert_rgb": True,
                "do_normalize": True,
                "do_rescale": True,
                "do_resize": True,
                "image_mean": MEAN,
                "image_processor_type": "CLIPImageProcessor",
                "image_std": STD,
                "resample": 3,
                "rescale_factor": RESCALE,
                "size": {"shortest_edge": IMAGE_SIZE},
            },
            indent=2,
        )
        + "\n"
    )

    ref = {}
    images = [test_image(w, h) for w, h in IMAGE_SIZES]
    for i, img in enumerate(images):
        ref[f"image.{i}"] = torch.from_numpy(img)
    pixels = torch.from_numpy(np.stack([preprocess(img, IMAGE_SIZE, IMAGE_SIZE) for img in images]))
    ref["vision.pixel_values"] = pixels
    cases = RESIZE_CASES if resize_cases else []
    for i, (w, h, shortest) in enumerate(cases):
        ref[f"resize.{i}"] = torch.from_numpy(resize_shortest(test_image(w, h), shortest).copy())
    with torch.no_grad():
        v = model.vision_model(pixel_values=pixels)
        ref["vision.pooler_output"] = v.pooler_output
        ref["vision.image_embeds"] = model.visual_projection(v.pooler_output)
        ref["vision.patch_tokens"] = v.last_hidden_state[:, 1:, :]

        enc = tokenizer(
            PROMPTS,
            padding=True,
            truncation=True,
            max_length=text["max_position_embeddings"],
            return_tensors="pt",
        )
        ref["text.input_ids"] = enc["input_ids"].to(torch.int64)
        ref["text.attention_mask"] = enc["attention_mask"].to(torch.int64)
        t = model.text_model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
        ref["text.pooler_output"] = t.pooler_output
        ref["text.text_embeds"] = model.text_projection(t.pooler_output)
        both = model(
            input_ids=enc["input_ids"],
            attention_mask=enc["attention_mask"],
            pixel_values=pixels,
        )
        ref["logits_per_image"] = both.logits_per_image

    save_file({k: v.contiguous() for k, v in ref.items()}, str(out / "reference.safetensors"))
    (out / "reference.json").write_text(
        json.dumps(
            {"prompts": PROMPTS, "image_sizes": IMAGE_SIZES, "resize_cases": cases}, indent=2
        )
        + "\n"
    )
    print("wrote", out, {k: tuple(v.shape) for k, v in ref.items()})


if __name__ == "__main__":
    args = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    args.add_argument("out", nargs="?", type=Path, default=Path("engine/tests/fixtures/clip-tiny"))
    args.add_argument("--hidden-act", default="quick_gelu", help="quick_gelu, gelu, gelu_new …")
    args.add_argument(
        "--legacy-eos", action="store_true", help="eos_token_id 2 in the config (argmax pooling)"
    )
    args.add_argument(
        "--no-resize-cases", action="store_true", help="leave out the PIL resize references"
    )
    a = args.parse_args()
    main(a.out, a.hidden_act, a.legacy_eos, not a.no_resize_cases)
