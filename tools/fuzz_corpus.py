#!/usr/bin/env python3
"""Writes the fuzzers' seed corpora: small real-format files for each target in fuzz/.

    python3 tools/fuzz_corpus.py [OUT]      # OUT defaults to fuzz/corpus; one folder per target

Standard library only. Seeds are made here (safetensors headers with LDM, SGM, diffusers and
LoRA/LyCORIS keys; PNGs with tEXt/zTXt/iTXt infotext; schedule and mixture JSON; request
bodies) or copied from the repository's test fixtures (zip pickles, init images). The hostile
cases of issue 16 (a declared 10^12-element tensor, lying zip sizes, a 100000x100000 PNG header)
are seeds too, so every run starts from them.
"""
import json
import os
import shutil
import struct
import sys
import zlib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "fuzz", "corpus")
DTYPE_BYTES = {"F32": 4, "F16": 2, "BF16": 2, "I64": 8, "U8": 1}


def put(target, name, data):
    d = os.path.join(OUT, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def copy(target, path):
    src = os.path.join(ROOT, path)
    if os.path.isfile(src):
        put(target, os.path.basename(path), open(src, "rb").read())


def safetensors(tensors, metadata=None):
    """tensors: {name: (dtype, shape)}; zero data, offsets in order."""
    header, offset = {}, 0
    for name, (dtype, shape) in tensors.items():
        n = DTYPE_BYTES[dtype]
        for d in shape:
            n *= d
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    if metadata:
        header["__metadata__"] = metadata
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + bytes(offset)


def png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png(w, h, color=2, text=()):
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[color]
    raw = b"".join(b"\x00" + bytes((x * 7 + y * 13) % 256 for x in range(w * channels)) for y in range(h))
    out = b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, color, 0, 0, 0))
    for chunk in text:
        out += chunk
    return out + png_chunk(b"IDAT", zlib.compress(raw)) + png_chunk(b"IEND", b"")


INFOTEXT = (
    "a (red:1.2) fox, [forest], <lora:detail:0.6>\nNegative prompt: blurry\n"
    'Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 42, Size: 512x768, '
    'Model hash: 6ce0161689, Model: v1-5, Lora hashes: "detail: 0123456789ab", Version: kairos'
)


def main():
    sd1_unet = "model.diffusion_model."
    ldm = {
        sd1_unet + "input_blocks.0.0.weight": ("F16", [8, 4, 3, 3]),
        sd1_unet + "input_blocks.0.0.bias": ("F16", [8]),
        sd1_unet + "out.2.weight": ("F16", [4, 8, 3, 3]),
        sd1_unet + "time_embed.0.weight": ("F16", [32, 8]),
        sd1_unet + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": ("F16", [8, 768]),
        "first_stage_model.encoder.conv_in.weight": ("F32", [8, 3, 3, 3]),
        "first_stage_model.decoder.conv_out.weight": ("F32", [3, 8, 3, 3]),
        "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": ("F16", [16, 8]),
        "alphas_cumprod": ("F32", [1000]),
    }
    put("safetensors_load", "sd1_ldm_keys.safetensors", safetensors(ldm, {"format": "pt"}))
    sd2 = dict(ldm)
    del sd2["cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"]
    sd2["cond_stage_model.model.token_embedding.weight"] = ("F16", [16, 8])
    sd2["cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight"] = ("F16", [24, 8])
    put("safetensors_load", "sd2_ldm_keys.safetensors", safetensors(sd2))
    sgm = {k: v for k, v in ldm.items() if not k.startswith("cond_stage")}
    sgm["conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight"] = ("F16", [16, 8])
    sgm["conditioner.embedders.1.model.token_embedding.weight"] = ("F16", [16, 8])
    sgm[sd1_unet + "label_emb.0.0.weight"] = ("F16", [32, 2816])
    put("safetensors_load", "sdxl_sgm_keys.safetensors", safetensors(sgm))
    put("safetensors_load", "empty.safetensors", safetensors({}))
    put("safetensors_load", "huge_shape.safetensors",
        struct.pack("<Q", 80) + b'{"w":{"dtype":"F32","shape":[1000000,1000000],"data_offsets":[0,16]}}'.ljust(80) + bytes(16))
    put("safetensors_load", "long_header.safetensors", struct.pack("<Q", 50_000_000) + b"{}")
    for f in ["sd1_ldm.ckpt", "vae_ldm.pt"]:
        copy("pickle_load", "crates/kairos-models/tests/fixtures/loading/" + f)
    ckpt = os.path.join(ROOT, "crates/kairos-models/tests/fixtures/loading/sd1_ldm.ckpt")
    if os.path.isfile(ckpt):
        data = bytearray(open(ckpt, "rb").read())
        at = data.find(b"PK\x01\x02")
        if at >= 0:
            data[at + 24:at + 28] = struct.pack("<I", 0xFFFFFFF0)  # a data entry claiming 4 GB
            put("pickle_load", "lying_size.ckpt", bytes(data))

    lora_dir = "crates/kairos-models/tests/fixtures/lora"
    for f in sorted(os.listdir(os.path.join(ROOT, lora_dir))):
        if f.endswith(".safetensors") and os.path.getsize(os.path.join(ROOT, lora_dir, f)) < 16384:
            copy("lora_file", os.path.join(lora_dir, f))
    kohya = "lora_unet_down_blocks_0_attentions_0_proj_in"
    put("lora_file", "kohya_small.safetensors", safetensors({
        kohya + ".lora_down.weight": ("F16", [4, 8]), kohya + ".lora_up.weight": ("F16", [8, 4]),
        kohya + ".alpha": ("F16", []),
        "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": ("F16", [4, 8]),
        "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_up.weight": ("F16", [8, 4]),
    }, {"ss_network_module": "networks.lora"}))
    loha = "lora_unet_mid_block_attentions_0_proj_out"
    put("lora_file", "loha.safetensors", safetensors({
        loha + ".hada_w1_a": ("F16", [8, 2]), loha + ".hada_w1_b": ("F16", [2, 8]),
        loha + ".hada_w2_a": ("F16", [8, 2]), loha + ".hada_w2_b": ("F16", [2, 8]), loha + ".alpha": ("F16", []),
    }))
    lokr = "lora_unet_up_blocks_1_attentions_0_proj_out"
    put("lora_file", "lokr.safetensors", safetensors({
        lokr + ".lokr_w1": ("F16", [2, 2]), lokr + ".lokr_w2": ("F16", [4, 4]),
    }))
    put("lora_file", "sdxl_lora.safetensors", safetensors({
        "lora_unet_input_blocks_4_1_proj_in.lora_down.weight": ("F16", [4, 8]),
        "lora_unet_input_blocks_4_1_proj_in.lora_up.weight": ("F16", [8, 4]),
        "lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": ("F16", [4, 8]),
        "lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight": ("F16", [8, 4]),
    }))

    prompts = [
        "a photo of a cat", "(masterpiece:1.2), best quality, [blurry], ((red hat))",
        "a (b (c:1.3) d:0.8) e BREAK second chunk BREAK", "\\(escaped\\) \\[x\\] (unclosed [nested (deep",
        "<lora:detail:0.6> a castle <lora:style:-1> <lora:bad>", "(x:1e308) (y:-inf) (z:nan) (w:.5)",
        "emoji 😀🐈 ünïcödé 中文 テスト", ", , , ," * 40, "BREAKBREAK BREAK\nBREAK", "(" * 100 + "deep" + ")" * 100,
    ]
    for i, p in enumerate(prompts):
        put("prompt_parse", f"prompt_{i}.txt", p)
        put("tokenizer", f"text_{i}.txt", p)
    put("tokenizer", "controls.txt", "\x00\x01 tab\tnew\nline  'll 's 've 123 4.5 <|startoftext|> <|endoftext|>")

    params = INFOTEXT.encode("latin-1", "replace")
    put("png_infotext", "text.png", png(2, 2, text=[png_chunk(b"tEXt", b"parameters\x00" + params)]))
    put("png_infotext", "ztxt.png", png(2, 2, text=[png_chunk(b"zTXt", b"parameters\x00\x00" + zlib.compress(params))]))
    put("png_infotext", "itxt.png", png(2, 2, text=[png_chunk(b"iTXt", b"parameters\x00\x00\x00\x00\x00" + INFOTEXT.encode())]))
    put("png_infotext", "infotext.txt", INFOTEXT)

    put("init_image", "rgb.png", png(8, 8))
    put("init_image", "rgba.png", png(5, 3, color=6))
    put("init_image", "grey.png", png(4, 4, color=0))
    put("init_image", "huge_header.png", png(1, 1)[:33].replace(struct.pack(">II", 1, 1), struct.pack(">II", 100000, 100000))
        + png_chunk(b"IEND", b""))
    for f in ["crates/kairos-pipeline/tests/fixtures/img2img_init.png"]:
        copy("init_image", f)
    # Minimal JPEG and WebP headers (SOI/APP0, RIFF/WEBP VP8L) so the decoders are reached.
    put("init_image", "stub.jpg", b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00\xff\xd9")
    vp8l = b"\x2f" + struct.pack("<I", (3 << 0) | (3 << 14)) + b"\x00" * 8
    put("init_image", "stub.webp", b"RIFF" + struct.pack("<I", 4 + 8 + len(vp8l)) + b"WEBP" + b"VP8L"
        + struct.pack("<I", len(vp8l)) + vp8l)

    copy("schedule_lists", "crates/kairos-ays/tests/fixtures/ays_gaussian.json")
    put("schedule_lists", "sigmas.txt", "14.61,7.49,3.76,1.87,0.92,0.42,0.17,0.03,0")
    put("schedule_lists", "bad_sigmas.txt", "1,2,nan,inf,-1,0")
    put("schedule_lists", "ays_sdxl_timesteps.txt", "999,845,730,587,443,310,193,116,53,13")
    put("schedule_lists", "bad_timesteps.txt", "999,1000,500.5,-1")
    # diffusers_folder: the first byte's high nibble picks the folder, its low nibble the file (their
    # order in the target's FOLDERS).
    folders = {
        "loading/sd1_diffusers": ["model_index.json", "unet/config.json", "vae/config.json", "text_encoder/config.json",
                                  "scheduler/scheduler_config.json", "tokenizer/vocab.json"],
        "sdxl/base": ["model_index.json", "unet/config.json", "vae/config.json", "text_encoder/config.json",
                      "text_encoder_2/config.json", "scheduler/scheduler_config.json",
                      "tokenizer/special_tokens_map.json", "tokenizer_2/tokenizer_config.json"],
    }
    for f, (folder, names) in enumerate(folders.items()):
        for i, name in enumerate(names):
            data = open(os.path.join(ROOT, "crates/kairos-models/tests/fixtures", folder, name), "rb").read()
            put("diffusers_folder", folder.split("/")[-1] + "_" + name.replace("/", "_"), bytes([f * 16 + i]) + data)
    for f in ["toy_mixture.json", "anisotropic_mixture.json"]:
        copy("mixture_file", "crates/kairos-toy/tests/fixtures/" + f)
    put("mixture_file", "one.json", '{"weights":[1],"means":[[0,0]],"covariances":[[[1,0],[0,1]]],"sigma_min":0.01}')

    bodies = [
        {"prompt": "a cat", "negative_prompt": "", "steps": 20, "width": 512, "height": 512, "seed": -1,
         "sampler_name": "DPM++ 2M Karras", "cfg_scale": 7, "batch_size": 1},
        {"prompt": "x <lora:a:1>", "sampler_name": "Euler a", "scheduler": "Karras", "enable_hr": True,
         "hr_scale": 2, "denoising_strength": 0.5, "override_settings": {"CLIP_stop_at_last_layers": 2}},
        {"prompt": "y", "init_images": ["data:image/png;base64,"], "denoising_strength": 0.6, "resize_mode": 1},
        {"prompt": "z", "refiner_checkpoint": "sdxl_refiner", "refiner_switch_at": 0.8, "styles": []},
        {"prompt": 5, "steps": "20", "width": -1, "seed": 1e300, "n_iter": 100000},
    ]
    for i, b in enumerate(bodies):
        put("server_request", f"body_{i}.json", json.dumps(b))
    print(f"seed corpora written to {OUT}")


if __name__ == "__main__":
    main()
