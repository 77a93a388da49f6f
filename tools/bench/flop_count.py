#!/usr/bin/env python3
"""An independent FLOP count for `kairos bench`'s architecture count (crates/kairos-bench/src/flops.rs):
torch.utils.flop_counter.FlopCounterMode (2 FLOPs per multiply-add of every matmul, convolution and
attention product) over the diffusers / transformers networks built from the presets in
crates/kairos-bench/src/presets.rs, on the meta device (shapes only: nothing is computed or
allocated, so the full-size SDXL UNet is counted in seconds), with the math attention processor
so that attention is counted as its two batched matmuls.

Writes tools/bench/flop_counts.json, which crates/kairos-bench's tests compare with flops.rs:

    /work/venv/bin/python tools/bench/flop_count.py
"""
import json
import pathlib
import re

import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = pathlib.Path(__file__).resolve().parents[2]
OUT = ROOT / "tools/bench/flop_counts.json"


def presets():
    """The presets by name, and the tiny SDXL of the tests (tools/bench/tiny_sdxl) as TINY_SDXL_*."""
    text = (ROOT / "crates/kairos-bench/src/presets.rs").read_text()
    out = {name: json.loads(body) for name, body in re.findall(r'pub const (\w+): &str = r#"(.*?)"#;', text, re.S)}
    for f in sorted((ROOT / "tools/bench/tiny_sdxl").glob("*.json")):
        out[f"TINY_SDXL_{f.stem.upper()}"] = json.loads(f.read_text())
    return out


def count(fn):
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def main():
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.models.attention_processor import AttnProcessor
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfg = presets()
    meta = torch.device("meta")
    out = {"tool": f"torch {torch.__version__} FlopCounterMode, meta device", "unet": [], "vae_decode": [], "text_encoder": []}
    with torch.device(meta), torch.inference_mode():
        for family in ["SD15", "SDXL", "TINY_SDXL"]:
            unet = UNet2DConditionModel.from_config(cfg[f"{family}_UNET"]).eval()
            unet.set_attn_processor(AttnProcessor())
            ctx_dim = unet.config.cross_attention_dim
            for res, batch in [(64, 1), (256, 2), (512, 1), (1024, 2)]:
                lat = res // 8
                sample = torch.empty(batch, 4, lat, lat)
                context = torch.empty(batch, 77, ctx_dim)
                kwargs = {}
                if unet.config.addition_embed_type == "text_time":
                    ids = 6
                    pooled = unet.config.projection_class_embeddings_input_dim - ids * unet.config.addition_time_embed_dim
                    kwargs["added_cond_kwargs"] = {"text_embeds": torch.empty(batch, pooled), "time_ids": torch.empty(batch, ids)}
                flops = count(lambda: unet(sample, torch.tensor(500.0), context, **kwargs))
                out["unet"].append(dict(preset=f"{family}_UNET", resolution=res, batch=batch, flops=flops))
                print(f"{family} unet b{batch} {res}: {flops / 1e9:.3f} GFLOP", flush=True)
            del unet

            vae = AutoencoderKL.from_config(cfg[f"{family}_VAE"]).eval()
            vae.set_attn_processor(AttnProcessor())
            for res in [64, 512]:
                z = torch.empty(1, 4, res // 8, res // 8)
                flops = count(lambda: vae.decode(z))
                out["vae_decode"].append(dict(preset=f"{family}_VAE", resolution=res, batch=1, flops=flops))
                print(f"{family} vae_decode b1 {res}: {flops / 1e9:.3f} GFLOP", flush=True)
            del vae

        for name in ["SD15_TEXT_ENCODER", "SDXL_TEXT_ENCODER", "SDXL_TEXT_ENCODER_2", "TINY_SDXL_TEXT_ENCODER", "TINY_SDXL_TEXT_ENCODER_2"]:
            cls = CLIPTextModelWithProjection if name.endswith("_2") else CLIPTextModel
            model = cls(CLIPTextConfig(**{k: v for k, v in cfg[name].items() if k != "architectures"})).eval()
            ids = torch.zeros(2, 77, dtype=torch.long)
            flops = count(lambda: model(ids))
            out["text_encoder"].append(dict(preset=name, batch=2, tokens=77, flops=flops))
            print(f"{name} b2: {flops / 1e9:.3f} GFLOP", flush=True)
            del model
    OUT.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
