"""Writes a full-size SDXL 1.0 base-architecture checkpoint with random weights as an SGM single
file (`sd_xl_base_1.0.safetensors` key names: model.diffusion_model.*, conditioner.embedders.0
CLIP-L, conditioner.embedders.1 OpenCLIP-bigG with fused in_proj and a transposed
text_projection, first_stage_model.*). Cost and memory do not depend on weight values, so this is
what `kairos generate` is timed and measured on where real weights cannot be downloaded.

    python3 tools/bench/make_sdxl_random.py OUT_DIR [--dtype fp16|fp32]

Writes OUT_DIR/sdxl-random.safetensors (about 6.9 GB in fp16). The key mapping is the one
tools/fixtures/sdxl.py checks against diffusers' own single-file converters.
"""

import argparse
import os
import sys

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "fixtures"))
import checkpoints  # noqa: E402
import sdxl  # noqa: E402

# stabilityai/stable-diffusion-xl-base-1.0's unet/, vae/, text_encoder/ and text_encoder_2/
# config.json values (shared/research/sdxl.md §1).
UNET = dict(
    sample_size=128, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280), cross_attention_dim=2048, attention_head_dim=(5, 10, 20),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 10), use_linear_projection=True,
    addition_embed_type="text_time", addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816,
)
VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=1024,
    block_out_channels=(128, 256, 512, 512), scaling_factor=0.13025,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
)
CLIP_L = dict(
    vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
    num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768,
)
CLIP_G = dict(
    vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
    num_attention_heads=20, max_position_embeddings=77, hidden_act="gelu", projection_dim=1280,
)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--dtype", choices=["fp16", "fp32"], default="fp16")
    args = ap.parse_args()
    dtype = torch.float16 if args.dtype == "fp16" else torch.float32
    torch.manual_seed(0)
    os.makedirs(args.out, exist_ok=True)
    sgm = {}
    unet = UNet2DConditionModel(**UNET).to(dtype)
    sgm.update(sdxl.unet_to_sgm(sdxl.state(unet), UNET["layers_per_block"], len(UNET["block_out_channels"])))
    del unet
    vae = AutoencoderKL(**VAE).to(dtype)
    sgm.update(checkpoints.vae_to_ldm(sdxl.state(vae), len(VAE["block_out_channels"])))
    del vae
    sgm.update(sdxl.clip_l_to_sgm(sdxl.te_state(CLIPTextModel(CLIPTextConfig(**CLIP_L)).to(dtype))))
    te2 = CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_G)).to(dtype)
    sgm.update(sdxl.clip_g_to_sgm(sdxl.te_state(te2), "conditioner.embedders.1.model."))
    del te2
    path = os.path.join(args.out, "sdxl-random.safetensors")
    save_file(sgm, path, metadata={"format": "pt"})
    print(path, sum(t.numel() for t in sgm.values()) / 1e9, "B parameters")


if __name__ == "__main__":
    main()
