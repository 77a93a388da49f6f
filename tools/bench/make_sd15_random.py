"""Writes a full-size SD1.5-architecture model with random weights, in the two layouts people
share: a single-file LDM checkpoint (`v1-5-pruned-emaonly.safetensors` key names) and a diffusers
folder. Cost does not depend on weight values, so this is what `kairos generate` is timed on where
real weights cannot be downloaded.

    python3 tools/bench/make_sd15_random.py OUT_DIR [--dtype fp16|fp32]

Writes OUT_DIR/sd15-random.safetensors and OUT_DIR/sd15-random-diffusers/. The LDM key mapping is
the one tools/fixtures/checkpoints.py checks against diffusers' own single-file converters.
"""

import argparse
import json
import os
import sys

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "fixtures"))
from checkpoints import clip_to_ldm, unet_to_ldm, vae_to_ldm  # noqa: E402

# stable-diffusion-v1-5's unet/, vae/ and text_encoder/ config.json values.
UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
)
VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=512,
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
)
CLIP = dict(
    vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
    num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
    projection_dim=768, bos_token_id=0, eos_token_id=2, pad_token_id=1,
)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--dtype", choices=["fp16", "fp32"], default="fp16")
    args = ap.parse_args()
    dtype = torch.float16 if args.dtype == "fp16" else torch.float32
    torch.manual_seed(0)
    unet, vae, te = UNet2DConditionModel(**UNET), AutoencoderKL(**VAE), CLIPTextModel(CLIPTextConfig(**CLIP))
    os.makedirs(args.out, exist_ok=True)
    folder = os.path.join(args.out, "sd15-random-diffusers")
    unet.to(dtype).save_pretrained(os.path.join(folder, "unet"))
    vae.to(dtype).save_pretrained(os.path.join(folder, "vae"))
    te.to(dtype).save_pretrained(os.path.join(folder, "text_encoder"))
    with open(os.path.join(folder, "model_index.json"), "w") as f:
        json.dump({"_class_name": "StableDiffusionPipeline", "text_encoder": ["transformers", "CLIPTextModel"],
                   "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
                   "scheduler": ["diffusers", "PNDMScheduler"], "tokenizer": ["transformers", "CLIPTokenizer"]}, f)
    ldm = {}
    ldm.update(unet_to_ldm(unet.state_dict(), 2, 4))
    ldm.update(vae_to_ldm(vae.state_dict(), 4))
    te_sd = {k if k.startswith("text_model.") else "text_model." + k: v for k, v in te.state_dict().items()}
    ldm.update(clip_to_ldm(te_sd))
    ldm = {k: (v.to(dtype) if v.is_floating_point() else v).contiguous() for k, v in ldm.items()}
    save_file(ldm, os.path.join(args.out, "sd15-random.safetensors"))
    print("wrote", args.out)


if __name__ == "__main__":
    main()
