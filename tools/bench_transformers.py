"""The reference side of `vidmusician bench neural`: the same musicgen-small shape,
random weights, the same number of CPU threads, through Hugging Face transformers.

Set up once (any folder; `vidmusician bench neural --python PATH` points at it):

    python3 -m venv ~/.venvs/musicgen-bench
    ~/.venvs/musicgen-bench/bin/pip install torch transformers

Prints one JSON object on stdout.
"""

import argparse
import json
import resource
import time

import torch
from transformers import (
    EncodecConfig,
    MusicgenConfig,
    MusicgenDecoderConfig,
    MusicgenForConditionalGeneration,
    T5Config,
)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=250)
    ap.add_argument("--threads", type=int, default=2)
    # `cuda` times the same model on the GPU (the GPU check's reference);
    # --dtype float16 or bfloat16 there as the reference's autocast would.
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    args = ap.parse_args()
    dev = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    config = MusicgenConfig(
        text_encoder=T5Config(
            vocab_size=32128, d_model=768, d_kv=64, d_ff=3072, num_layers=12, num_heads=12
        ),
        audio_encoder=EncodecConfig(
            sampling_rate=32000,
            num_filters=64,
            hidden_size=128,
            codebook_size=2048,
            upsampling_ratios=[8, 5, 4, 4],
            target_bandwidths=[2.2],
            num_lstm_layers=2,
            chunk_length_s=None,
            overlap=None,
            normalize=False,
        ),
        decoder=MusicgenDecoderConfig(
            vocab_size=2048,
            max_position_embeddings=2048,
            num_hidden_layers=24,
            ffn_dim=4096,
            num_attention_heads=16,
            hidden_size=1024,
            num_codebooks=4,
            pad_token_id=2048,
            bos_token_id=2048,
            decoder_start_token_id=2048,
        ),
    )
    model = MusicgenForConditionalGeneration(config).eval().to(dev)
    if args.dtype != "float32":
        model.decoder.to(dtype)
        model.text_encoder.to(dtype)
        if model.enc_to_dec_proj is not None:
            model.enc_to_dec_proj.to(dtype)
    gc = model.generation_config
    gc.pad_token_id = gc.decoder_start_token_id = gc.bos_token_id = 2048
    ids = torch.randint(0, 32128, (1, 12)).to(dev)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()
    frames = args.frames
    steps = frames + 3

    real_decode = model.audio_encoder.decode

    def no_decode(codes, *a, **k):
        return type("Out", (), {"audio_values": torch.zeros(1, 1, 1)})()

    out = {"threads": args.threads, "frames": frames, "steps": steps,
           "torch": torch.__version__, "device": args.device, "dtype": args.dtype}
    import transformers
    out["transformers"] = transformers.__version__
    with torch.no_grad():
        model.audio_encoder.decode = no_decode
        model.generate(input_ids=ids, max_new_tokens=4, do_sample=True, guidance_scale=3.0)
        for name, scale in (("guided", 3.0), ("unguided", 1.0)):
            sync()
            t0 = time.perf_counter()
            model.generate(
                input_ids=ids, max_new_tokens=steps, do_sample=True, top_k=250,
                guidance_scale=scale,
            )
            sync()
            out[f"{name}_steps_per_s"] = steps / (time.perf_counter() - t0)
        model.audio_encoder.decode = real_decode
        codes = torch.randint(0, 2048, (1, 1, 4, 500)).to(dev)
        model.audio_encoder.decode(codes[..., :50], [None])
        sync()
        t0 = time.perf_counter()
        model.audio_encoder.decode(codes, [None])
        sync()
        out["encodec_s_per_10s_audio"] = time.perf_counter() - t0
    out["guided_s_per_10s_audio"] = 503 / out["guided_steps_per_s"]
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(out))


if __name__ == "__main__":
    main()
