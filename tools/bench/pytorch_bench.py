#!/usr/bin/env python3
"""Side-by-side PyTorch numbers for `kairos bench`: the same SD1.5 or SDXL base architecture
(diffusers UNet2DConditionModel / AutoencoderKL, transformers CLIPTextModel and, for SDXL,
CLIPTextModelWithProjection; StableDiffusionPipeline / StableDiffusionXLPipeline for whole runs)
with random weights, the same shapes and cases, the same thread count, the same FLOP counts (read
from `kairos bench --json` with --gflop-from), printed in the same table.

The configs are read from crates/kairos-bench/src/presets.rs so both sides run one architecture;
--config-dir replaces them with the unet.json / vae.json / text_encoder.json / text_encoder_2.json
found there, as `kairos bench --config-dir` does.

    python3 tools/bench/pytorch_bench.py --threads 2 --resolutions 256,512 --batches 1,2
    python3 tools/bench/pytorch_bench.py --family sdxl --threads 2 --resolutions 768,1024 --batches 1,2

--device cuda[:N] runs on an NVIDIA GPU (each case ends with torch.cuda.synchronize(), as kairos
bench synchronizes its device); --dtype f16/bf16 casts the modules and inputs to that dtype (as
`kairos bench --dtype` on a GPU, where activations are in the weights' dtype).
"""
import argparse
import json
import pathlib
import re
import sys
import time

import torch

ROOT = pathlib.Path(__file__).resolve().parents[2]


def presets():
    text = (ROOT / "crates/kairos-bench/src/presets.rs").read_text()
    return {name: json.loads(body) for name, body in re.findall(r'pub const (\w+): &str = r#"(.*?)"#;', text, re.S)}


def configs(family, config_dir):
    """The family's configs by network (as kairos_bench::Configs), with --config-dir's files over them."""
    p = presets()
    prefix = {"sd15": "SD15", "sdxl": "SDXL"}[family]
    names = ["unet", "vae", "text_encoder"] + (["text_encoder_2"] if family == "sdxl" else [])
    out = {n: p[f"{prefix}_{n.upper()}"] for n in names}
    if config_dir:
        d = pathlib.Path(config_dir)
        if not d.is_dir():
            sys.exit(f"--config-dir {d}: not a directory")
        for n in names:
            if (d / f"{n}.json").exists():
                out[n] = json.loads((d / f"{n}.json").read_text())
    return out


def clip_config(cfg):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(**{k: v for k, v in cfg.items() if k != "architectures"})


def peak_rss_mib():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return None


def clip_tokenizer(cls, tmp, pad_token="<|endoftext|>"):
    """transformers' CLIPTokenizer on kairos' bundled OpenAI merges (no download): the vocabulary
    is rebuilt from them as OpenAI's simple_tokenizer does (bytes, bytes + </w>, merges, specials)."""
    merges_path = ROOT / "crates/kairos-models/src/tokenizer/clip_merges.txt"
    merges = [tuple(l.split()) for l in merges_path.read_text().splitlines()[1:] if l]
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    chars = [chr(c) for c in cs]
    tokens = chars + [c + "</w>" for c in chars] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    vocab = pathlib.Path(tmp) / "vocab.json"
    vocab.write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    return cls(vocab_file=str(vocab), merges_file=str(merges_path), model_max_length=77, pad_token=pad_token)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--family", choices=["sd15", "sdxl"], default="sd15", help="architecture (as kairos bench --family)")
    ap.add_argument("--config-dir", help="unet.json, vae.json, text_encoder.json, text_encoder_2.json replacing the presets (as kairos bench --config-dir)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--resolutions", help="default 256,512 (sd15), 768,1024 (sdxl)")
    ap.add_argument("--components", default="text-encoder,unet,vae", help="networks timed on their own (as kairos bench --components)")
    ap.add_argument("--batches", default="1,2")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--gemm", type=int, default=4096, help="side of the reference f32 matmul (0 skips)")
    ap.add_argument("--txt2img-steps", type=int, default=0, help="whole txt2img, DPM++ 2M Karras, CFG 7.5 (0 skips)")
    ap.add_argument("--lcm-steps", type=int, default=0, help="whole txt2img, LCMScheduler, guidance 1 (0 skips)")
    ap.add_argument("--gflop-from", help="kairos bench --json report, to print GFLOP/s with the same counts")
    ap.add_argument("--json", help="write the report here")
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]")
    ap.add_argument("--dtype", choices=["f32", "f16", "bf16"], default="f32", help="dtype of the weights and activations (the GEMM stays f32)")
    args = ap.parse_args()

    import diffusers
    import transformers
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    dtype = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.set_device(device)
        # f32 as candle computes it on the GPU (cuBLAS without TF32): cuDNN's convolutions would
        # otherwise round their inputs to TF32 (PyTorch's default for cuDNN, not for matmul).
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False

    def on(module):
        """A module (or pipeline) on the device in the dtype."""
        return module.to(device=device, dtype=dtype)

    def randn(*shape):
        return torch.randn(*shape).to(device=device, dtype=dtype)
    gflop = {}
    if args.gflop_from:
        gflop = {c["name"]: c["gflop"] for c in json.load(open(args.gflop_from))["cases"]}
    cfg = configs(args.family, args.config_dir)
    sdxl = args.family == "sdxl"
    resolutions = list(map(int, (args.resolutions or {"sd15": "256,512", "sdxl": "768,1024"}[args.family]).split(",")))
    cases = []
    where = f"{torch.cuda.get_device_name(device)}, CUDA {torch.version.cuda}" if cuda else f"threads {torch.get_num_threads()}"
    print(f"torch {torch.__version__}, diffusers {diffusers.__version__}, transformers {transformers.__version__}, {where}, {args.dtype}")
    print(f"{'case':<22} {'min s':>10} {'mean s':>10} {'GFLOP':>10} {'GFLOP/s':>10}")

    def timed(name, fn, flop=None):
        times = []
        for _ in range(max(1, args.repeats)):
            t0 = time.perf_counter()
            fn()
            if cuda:
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - t0)
        g = flop if flop is not None else gflop.get(name, float("nan"))
        c = dict(name=name, seconds_min=min(times), seconds_mean=sum(times) / len(times), gflop=g, gflops_per_s=g / min(times))
        cases.append(c)
        print(f"{name:<22} {c['seconds_min']:>10.3f} {c['seconds_mean']:>10.3f} {g:>10.1f} {c['gflops_per_s']:>10.1f}", flush=True)

    with torch.inference_mode():
        if args.gemm:
            n = args.gemm
            a, b = torch.ones(n, n, device=device), torch.full((n, n), 0.5, device=device)
            timed(f"gemm f32 {n}x{n}", lambda: a @ b, 2 * n**3 / 1e9)

        components = args.components.split(",")
        unknown = set(components) - {"text-encoder", "unet", "vae"}
        if unknown:
            sys.exit(f"unknown component {sorted(unknown)}: use text-encoder, unet or vae")
        if "text-encoder" in components:
            clip = on(CLIPTextModel(clip_config(cfg["text_encoder"])).eval())
            ids = (torch.arange(2 * 77) * 7919 % clip.config.vocab_size).reshape(2, 77).to(device)
            timed("text_encoder b2", lambda: clip(ids))
            del clip
            if sdxl:
                clip = on(CLIPTextModelWithProjection(clip_config(cfg["text_encoder_2"])).eval())
                ids = (torch.arange(2 * 77) * 7919 % clip.config.vocab_size).reshape(2, 77).to(device)
                timed("text_encoder_2 b2", lambda: clip(ids))
                del clip

        if "unet" in components:
            unet = on(UNet2DConditionModel.from_config(cfg["unet"]).eval())
            ctx_dim = unet.config.cross_attention_dim
            for res in resolutions:
                for batch in map(int, args.batches.split(",")):
                    sample = randn(batch, unet.config.in_channels, res // 8, res // 8)
                    context = randn(batch, 77, ctx_dim)
                    kwargs = {}
                    if unet.config.addition_embed_type == "text_time":
                        # A random pooled text embedding and a res² txt2img's size ids, as kairos bench.
                        width = unet.config.projection_class_embeddings_input_dim
                        pooled = min(cfg["text_encoder_2"]["projection_dim"] if sdxl else 1280, width)
                        n_ids = (width - pooled) // unet.config.addition_time_embed_dim
                        ids = torch.tensor(([res, res, 0, 0, res, res] * 2)[:n_ids], dtype=dtype, device=device).repeat(batch, 1)
                        kwargs["added_cond_kwargs"] = {"text_embeds": randn(batch, pooled), "time_ids": ids}
                    timed(f"unet b{batch} {res}", lambda: unet(sample, 500, context, **kwargs))
            del unet

        # The whole-run cases below reuse this VAE.
        vae = on(AutoencoderKL.from_config(cfg["vae"]).eval()) if "vae" in components or args.txt2img_steps or args.lcm_steps else None
        if "vae" in components:
            # SDXL: the largest resolution only, as kairos bench.
            for res in [max(resolutions)] if sdxl else resolutions:
                z = randn(1, vae.config.latent_channels, res // 8, res // 8)
                timed(f"vae_decode b1 {res}", lambda: vae.decode(z))

        # Whole runs at the largest resolution, as `kairos bench --txt2img-steps/--lcm-steps`.
        if args.txt2img_steps or args.lcm_steps:
            from diffusers import DPMSolverMultistepScheduler, LCMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline
            from transformers import CLIPTokenizer

            import tempfile

            res = max(resolutions)
            tmp = tempfile.TemporaryDirectory()
            scheduler = DPMSolverMultistepScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", use_karras_sigmas=True)
            if sdxl:
                # The base model's pipeline: negative_prompt None with force_zeros_for_empty_prompt
                # gives zero negative embeddings (kairos: the empty negative prompt, zeroed); no
                # watermark (it changes pixels after decoding, kairos has none).
                pipe = StableDiffusionXLPipeline(
                    vae=vae,
                    text_encoder=CLIPTextModel(clip_config(cfg["text_encoder"])).eval(),
                    text_encoder_2=CLIPTextModelWithProjection(clip_config(cfg["text_encoder_2"])).eval(),
                    tokenizer=clip_tokenizer(CLIPTokenizer, tmp.name),
                    tokenizer_2=clip_tokenizer(CLIPTokenizer, tmp.name, pad_token="!"),
                    unet=UNet2DConditionModel.from_config(cfg["unet"]).eval(),
                    scheduler=scheduler,
                    force_zeros_for_empty_prompt=True,
                    add_watermarker=False,
                )
            else:
                pipe = StableDiffusionPipeline(
                    vae=vae,
                    text_encoder=CLIPTextModel(clip_config(cfg["text_encoder"])).eval(),
                    tokenizer=clip_tokenizer(CLIPTokenizer, tmp.name),
                    unet=UNet2DConditionModel.from_config(cfg["unet"]).eval(),
                    scheduler=scheduler,
                    safety_checker=None, feature_extractor=None, requires_safety_checker=False,
                )
            pipe = on(pipe)
            pipe.set_progress_bar_config(disable=True)
            run = lambda steps, cfg_scale: pipe("a photo of a cat", height=res, width=res, num_inference_steps=steps, guidance_scale=cfg_scale, output_type="np")
            if args.txt2img_steps:
                n = args.txt2img_steps
                timed(f"txt2img {res} cfg {n} steps", lambda: run(n, 7.5))
            if args.lcm_steps:
                n = args.lcm_steps
                pipe.scheduler = LCMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
                timed(f"txt2img {res} lcm {n} steps", lambda: run(n, 1.0))

    rss = peak_rss_mib()
    print(f"threads: {torch.get_num_threads()}\npeak RSS: {rss:.0f} MiB")
    report = dict(threads=torch.get_num_threads(), cases=cases, peak_rss_mib=rss, device=str(device), dtype=args.dtype)
    if cuda:
        report["peak_gpu_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
        print(f"peak GPU memory (allocated): {report['peak_gpu_mib']:.0f} MiB")
    if args.json:
        json.dump(report, open(args.json, "w"), indent=1)


if __name__ == "__main__":
    main()
