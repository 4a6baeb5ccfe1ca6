"""Build a tiny random MusicGen checkpoint in the Hugging Face layout and record
reference outputs from `transformers` next to it.

The Rust implementation in `engine/src/neural` is tested against these files
(`engine/tests/neural.rs`). Run by hand when a fixture must change:

    python3 -m venv .venv-fixtures
    .venv-fixtures/bin/pip install torch transformers safetensors tokenizers
    .venv-fixtures/bin/python tools/make_musicgen_fixture.py engine/tests/fixtures/musicgen-tiny
    .venv-fixtures/bin/python tools/make_musicgen_fixture.py engine/tests/fixtures/musicgen-tiny-cb32 \
        --codebook-size 32 --bandwidth 1.0

The defaults write `musicgen-tiny` (64 codes, 2.2 kbps). The second one has a codec
whose quantizer count only the current formula of `transformers` gets right
(`1000 * target_bandwidths[-1] // (frame_rate * ceil(log2(codebook_size)))` = 4; the
older `... // (frame_rate * 10)` gives 2, fewer than the decoder's 4 codebooks).

Weights are drawn with a larger spread than the library's own init (std 0.02), and
the EnCodec codebooks are filled: with the default init, guided and unguided greedy
codes come out identical and the codebooks stay zero, and the tests would prove little.
"""

import argparse
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, models, pre_tokenizers, decoders, processors, trainers
from transformers import (
    EncodecConfig,
    MusicgenConfig,
    MusicgenDecoderConfig,
    MusicgenForConditionalGeneration,
    PreTrainedTokenizerFast,
    T5Config,
)

CORPUS = [
    "warm acoustic guitar over soft piano",
    "energetic electronic dance track with heavy drums",
    "calm ambient pads for a nature documentary",
    "upbeat pop song with bright synths and claps",
    "dark cinematic strings building tension",
    "lofi hip hop beat with vinyl crackle",
    "epic orchestral score with brass and choir",
    "funky bass line and tight drums for a food commercial",
    "slow sad piano melody in a minor key",
    "fast drift compilation rock with loud guitars",
]

MAX_NEW_TOKENS = 23

PROMPTS = [
    "upbeat pop song with bright drums",
    "calm piano",
]


def build_tokenizer(out: Path) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(
        vocab_size=160, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>"
    )
    tok.train_from_iterator(CORPUS, trainer)
    # Like T5's own tokenizer: every sequence ends with </s>.
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", tok.token_to_id("</s>"))]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )
    fast.save_pretrained(out)
    return fast


def randomize(model: torch.nn.Module, gen: torch.Generator) -> None:
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "parametrizations.weight.original0" in name or name.endswith("weight_g"):
                # weight-norm magnitude: keep each output channel's gain near 1 so the
                # codec's stack of convolutions neither explodes nor dies out
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            elif p.dim() == 1 and ("norm" in name):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            elif p.dim() == 1:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.2 * torch.randn(p.shape, generator=gen))
        for name, b in model.named_buffers():
            if name.endswith("codebook.embed"):
                b.copy_(torch.randn(b.shape, generator=gen))


def main(out: Path, codebook_size: int, bandwidth: float) -> None:
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1234)
    tokenizer = build_tokenizer(out)

    text = T5Config(
        vocab_size=len(tokenizer),
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=16,
        dropout_rate=0.0,
        feed_forward_proj="relu",
    )
    audio = EncodecConfig(
        sampling_rate=32000,
        audio_channels=1,
        num_filters=4,
        hidden_size=8,
        codebook_size=codebook_size,
        upsampling_ratios=[8, 5, 4, 4],
        target_bandwidths=[bandwidth],
        num_lstm_layers=2,
        norm_type="weight_norm",
        pad_mode="reflect",
        use_causal_conv=False,
        normalize=False,
        chunk_length_s=None,
        overlap=None,
        compress=2,
        residual_kernel_size=3,
        dilation_growth_rate=2,
        num_residual_layers=1,
        use_conv_shortcut=False,
    )
    decoder = MusicgenDecoderConfig(
        vocab_size=codebook_size,
        max_position_embeddings=256,
        num_hidden_layers=4,
        ffn_dim=64,
        num_attention_heads=4,
        hidden_size=48,
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        num_codebooks=4,
        pad_token_id=codebook_size,
        bos_token_id=codebook_size,
        decoder_start_token_id=codebook_size,
    )
    if audio.num_quantizers < decoder.num_codebooks:
        sys.exit(
            f"the codec has {audio.num_quantizers} quantizers, "
            f"fewer than the decoder's {decoder.num_codebooks} codebooks"
        )
    config = MusicgenConfig(text_encoder=text, audio_encoder=audio, decoder=decoder)
    model = MusicgenForConditionalGeneration(config).eval()
    randomize(model, gen)
    gc = model.generation_config
    gc.pad_token_id = codebook_size
    gc.decoder_start_token_id = codebook_size
    gc.bos_token_id = codebook_size
    gc.do_sample = True
    gc.guidance_scale = 3.0
    gc.top_k = 250
    gc.max_length = 1500
    model.save_pretrained(out)

    ref = {}
    with torch.no_grad():
        enc = tokenizer(PROMPTS, padding=True, return_tensors="pt")
        ids, mask = enc["input_ids"], enc["attention_mask"]
        ref["text.input_ids"] = ids.to(torch.int64)
        ref["text.attention_mask"] = mask.to(torch.int64)
        states = model.text_encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        ref["t5.last_hidden_state"] = states

        seq = 10
        codes = torch.randint(0, codebook_size, (len(PROMPTS) * 4, seq), generator=gen)
        codes[:, 0] = codebook_size
        ref["decoder.input_ids"] = codes
        logits = model(
            input_ids=ids, attention_mask=mask, decoder_input_ids=codes
        ).logits
        ref["decoder.logits"] = logits

        one = tokenizer(PROMPTS[:1], return_tensors="pt")
        ref.update(greedy_runs(model, one, MAX_NEW_TOKENS))

        frames = 50
        codec_codes = torch.randint(0, codebook_size, (1, 4, frames), generator=gen)
        ref["encodec.codes"] = codec_codes
        ref["encodec.audio"] = model.audio_encoder.decode(codec_codes[None], [None]).audio_values

    save_file({k: v.contiguous() for k, v in ref.items()}, str(out / "reference.safetensors"))
    (out / "reference.json").write_text(
        json.dumps({"prompts": PROMPTS, "max_new_tokens": MAX_NEW_TOKENS}, indent=2) + "\n"
    )
    print("wrote", out, {k: tuple(v.shape) for k, v in ref.items()})


def greedy_runs(model, inputs, max_new_tokens):
    """Greedy generate() with and without guidance; the codes are caught on their way
    into the audio decoder, after generate() has undone the delay pattern."""
    result = {}
    real_decode = model.audio_encoder.decode
    for name, scale in (("generate.guided", 3.0), ("generate.unguided", 1.0)):
        seen = {}

        def spy(codes, *args, **kwargs):
            seen["codes"] = codes.clone()
            return real_decode(codes, *args, **kwargs)

        model.audio_encoder.decode = spy
        try:
            audio = model.generate(
                **inputs, do_sample=False, guidance_scale=scale, max_new_tokens=max_new_tokens
            )
        finally:
            model.audio_encoder.decode = real_decode
        result[f"{name}.codes"] = seen["codes"][0]
        result[f"{name}.audio"] = audio
    return result


if __name__ == "__main__":
    args = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    args.add_argument(
        "out", nargs="?", type=Path, default=Path("engine/tests/fixtures/musicgen-tiny")
    )
    args.add_argument("--codebook-size", type=int, default=64, help="EnCodec codes per codebook")
    args.add_argument(
        "--bandwidth", type=float, default=2.2, help="EnCodec's (last) target bandwidth, kbps"
    )
    a = args.parse_args()
    main(a.out, a.codebook_size, a.bandwidth)
