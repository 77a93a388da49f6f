"""Writes a random LoRA in the layout of latent-consistency/lcm-lora-sdv1-5 over the full-size
SD1.5 UNet: kohya key names (`lora_unet_<diffusers path>.lora_down.weight` / `.lora_up.weight` /
`.alpha`), every layer that LCM-LoRA trains (attention projections, proj_in/out, feed-forward,
resnet convs and time_emb_proj, down/upsampler convs), rank 64, fp16. Its merge cost and memory
are those of the real file (about 67M parameters), so `kairos generate --lora` can be timed on it
next to the random checkpoint of make_sd15_random.py.

    python3 tools/bench/make_lcm_lora_random.py OUT.safetensors [--rank 64]
"""

import argparse
import os
import sys

import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(__file__))
from make_sd15_random import UNET  # noqa: E402

TARGETS = (
    "to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2",
    "conv1", "conv2", "conv_shortcut", "time_emb_proj", "downsamplers.0.conv", "upsamplers.0.conv",
)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--rank", type=int, default=64)
    args = ap.parse_args()
    if os.path.exists(args.out):
        sys.exit(f"{args.out} exists; not overwriting it")
    with torch.device("meta"):
        unet = UNet2DConditionModel(**UNET)
    gen = torch.Generator().manual_seed(0)
    tensors, params = {}, 0
    for name, module in unet.named_modules():
        if not name.endswith(TARGETS) or not isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
            continue
        w = module.weight
        key = "lora_unet_" + name.replace(".", "_")
        down_shape = (args.rank, *w.shape[1:])
        up_shape = (w.shape[0], args.rank, *([1, 1] if w.dim() == 4 else []))
        tensors[f"{key}.lora_down.weight"] = (torch.randn(down_shape, generator=gen) * 0.01).half()
        tensors[f"{key}.lora_up.weight"] = (torch.randn(up_shape, generator=gen) * 0.01).half()
        tensors[f"{key}.alpha"] = torch.tensor(float(args.rank)).half()
        params += tensors[f"{key}.lora_down.weight"].numel() + tensors[f"{key}.lora_up.weight"].numel()
    save_file(tensors, args.out)
    print(f"wrote {args.out}: {len(tensors) // 3} layers, rank {args.rank}, {params / 1e6:.1f}M parameters")


if __name__ == "__main__":
    main()
