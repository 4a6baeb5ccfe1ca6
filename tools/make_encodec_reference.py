"""Record what the EnCodec *encoder* of a tiny MusicGen checkpoint makes of a fixed
test signal, with Hugging Face `transformers`, next to the checkpoint.

The Rust encoder (`engine/src/neural/encodec_encoder.rs`) is tested against these
files (`engine/tests/encodec_encoder.rs`). The checkpoints written by
`tools/make_musicgen_fixture.py` already hold the encoder's weights; this script
only reads them. Run by hand when a fixture or the signal must change:

    python3 -m venv .venv-fixtures
    .venv-fixtures/bin/pip install torch transformers safetensors
    .venv-fixtures/bin/python tools/make_encodec_reference.py \
        engine/tests/fixtures/musicgen-tiny engine/tests/fixtures/musicgen-tiny-cb32

Each folder gets `encoder_reference.safetensors` holding, for three inputs:

- `<name>.audio`: the input `(batch, 1, samples)`;
- `<name>.embeddings`: `audio_encoder.encoder(audio)`, the continuous embeddings
  before quantization `(batch, hidden, frames)`;
- `<name>.codes`: `audio_encoder.encode(audio).audio_codes[0]`, the codes MusicGen
  itself takes from audio `(batch, quantizers, frames)`, at the codec's default
  bandwidth (`target_bandwidths[0]`, what MusicGen passes by not passing one).

The inputs: `batch`, two different one-second signals (sines and seeded noise) at
the codec's rate; `odd`, a length that is not a multiple of the hop, so every
strided convolution needs transformers' extra right padding; `short`, shorter than
two hops, so the last convolutions see fewer samples than they pad by and take the
zero-extended reflect padding.
"""

import argparse
import math
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import MusicgenForConditionalGeneration


def signal(rate: int, samples: int, seed: int) -> torch.Tensor:
    """Three sines (different per seed) plus seeded noise, peak about 0.8."""
    gen = torch.Generator().manual_seed(seed)
    t = torch.arange(samples, dtype=torch.float64) / rate
    x = torch.zeros(samples, dtype=torch.float64)
    for k, (freq, amp) in enumerate([(110.0, 0.35), (440.0, 0.25), (1870.0, 0.1)]):
        phase = 2 * math.pi * torch.rand((), generator=gen, dtype=torch.float64)
        x += amp * torch.sin(2 * math.pi * freq * (1 + 0.07 * seed) * t + phase + k)
    x += 0.05 * torch.randn(samples, generator=gen, dtype=torch.float64)
    return x.to(torch.float32)


def main(folder: Path) -> None:
    model = MusicgenForConditionalGeneration.from_pretrained(folder).eval()
    codec = model.audio_encoder
    cfg = codec.config
    # The Rust encoder covers MusicGen's codec only: no input normalisation, the
    # whole piece in one chunk. Refuse to record anything else.
    assert not cfg.normalize and cfg.chunk_length_s is None, "not MusicGen's codec"
    rate, hop = cfg.sampling_rate, cfg.hop_length

    inputs = {
        "batch": torch.stack([signal(rate, rate, 1), signal(rate, rate, 2)])[:, None, :],
        "odd": signal(rate, 13 * hop + 337, 3)[None, None, :],
        "short": signal(rate, hop + 360, 4)[None, None, :],
    }
    ref = {}
    with torch.no_grad():
        for name, audio in inputs.items():
            embeddings = codec.encoder(audio)
            out = codec.encode(audio)
            assert len(out.audio_codes) == 1, "one chunk expected"
            codes = out.audio_codes[0]
            assert codes.shape[-1] == math.ceil(audio.shape[-1] / hop), codes.shape
            assert embeddings.shape[-1] == codes.shape[-1]
            ref[f"{name}.audio"] = audio
            ref[f"{name}.embeddings"] = embeddings
            ref[f"{name}.codes"] = codes.to(torch.int64)

    out = folder / "encoder_reference.safetensors"
    save_file({k: v.contiguous() for k, v in ref.items()}, str(out))
    print("wrote", out, {k: tuple(v.shape) for k, v in ref.items()})


if __name__ == "__main__":
    args = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    args.add_argument("folders", nargs="+", type=Path, help="tiny MusicGen checkpoints")
    for f in args.parse_args().folders:
        main(f)
