#!/usr/bin/env python3
"""Side-by-side OpenVINO numbers for `kairos bench`: the same random SD1.5 networks as
pytorch_bench.py (its configs and seeds), converted in-process with `openvino.convert_model` and
compiled for the CPU with --threads inference threads and the LATENCY hint, as FastSD CPU and
optimum-intel run them. Same case names and FLOP counts as the other two tools.

    python3 tools/bench/openvino_bench.py --components unet --resolutions 512 --batches 2
    python3 tools/bench/openvino_bench.py --precision f32 --components unet --resolutions 512 --batches 2
    python3 tools/bench/openvino_bench.py --components text-encoder --batches 2
    python3 tools/bench/openvino_bench.py --components text-encoder --resolutions 512 --txt2img-steps 20

--precision default leaves OpenVINO's INFERENCE_PRECISION_HINT alone (bf16 on CPUs with
AVX512-BF16 or AMX, f32 elsewhere; the run prints which); f32 / bf16 force it.
--txt2img-steps N runs the whole 512² txt2img as optimum-intel's OVStableDiffusionPipeline does:
the OpenVINO text encoder, UNet (batch 2, CFG 7.5) and VAE decoder around diffusers'
DPMSolverMultistepScheduler with Karras sigmas (DPM++ 2M Karras, as the other two tools).
--perf-count prints OpenVINO's per-layer-type counters (PERF_COUNT) of the last UNet call.
"""
import argparse
import collections
import json
import pathlib
import sys
import time

import numpy as np
import openvino as ov
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from pytorch_bench import clip_config, configs, peak_rss_mib  # noqa: E402  (the sibling tool's configs)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config-dir", help="unet.json, vae.json, text_encoder.json replacing the presets (as kairos bench --config-dir)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--resolutions", default="512")
    ap.add_argument("--components", default="text-encoder,unet,vae")
    ap.add_argument("--batches", default="2")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--gemm", type=int, default=0, help="side of a reference matmul in the chosen precision (0 skips)")
    ap.add_argument("--txt2img-steps", type=int, default=0, help="whole txt2img, DPM++ 2M Karras, CFG 7.5 (0 skips)")
    ap.add_argument("--precision", choices=["default", "f32", "bf16"], default="default")
    ap.add_argument("--perf-count", action="store_true", help="print the per-layer-type time of the last UNet call")
    ap.add_argument("--gflop-from", help="kairos bench --json report, to print GFLOP/s with the same counts")
    ap.add_argument("--json", help="write the report here")
    args = ap.parse_args()

    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    core = ov.Core()
    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": args.threads, "NUM_STREAMS": 1}
    if args.precision != "default":
        config["INFERENCE_PRECISION_HINT"] = {"f32": "f32", "bf16": "bf16"}[args.precision]
    if args.perf_count:
        config["PERF_COUNT"] = True

    def compile(module, example):
        with torch.inference_mode():
            model = ov.convert_model(module, example_input=example)
        return core.compile_model(model, "CPU", config)

    gflop = {}
    if args.gflop_from:
        gflop = {c["name"]: c["gflop"] for c in json.load(open(args.gflop_from))["cases"]}
    cfg = configs("sd15", args.config_dir)
    resolutions = list(map(int, args.resolutions.split(",")))
    batches = list(map(int, args.batches.split(",")))
    cases = []
    probe = None

    def timed(name, fn, flop=None):
        times = []
        for _ in range(max(1, args.repeats)):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        g = flop if flop is not None else gflop.get(name, float("nan"))
        c = dict(name=name, seconds_min=min(times), seconds_mean=sum(times) / len(times), gflop=g, gflops_per_s=g / min(times))
        cases.append(c)
        print(f"{name:<22} {c['seconds_min']:>10.3f} {c['seconds_mean']:>10.3f} {g:>10.1f} {c['gflops_per_s']:>10.1f}", flush=True)

    def header(compiled):
        nonlocal probe
        if probe is None:
            probe = str(compiled.get_property("INFERENCE_PRECISION_HINT"))
            print(f"openvino {ov.__version__}, threads {args.threads}, inference precision {probe} ({args.precision})")
            print(f"{'case':<22} {'min s':>10} {'mean s':>10} {'GFLOP':>10} {'GFLOP/s':>10}")

    if args.gemm:
        n = args.gemm

        class MatMul(torch.nn.Module):
            def forward(self, a, b):
                return a @ b

        a, b = torch.ones(n, n), torch.full((n, n), 0.5)
        mm = compile(MatMul(), (a, b))
        header(mm)
        req = mm.create_infer_request()
        timed(f"gemm {n}x{n}", lambda: req.infer([a.numpy(), b.numpy()]), 2 * n**3 / 1e9)

    components = args.components.split(",")
    unknown = set(components) - {"text-encoder", "unet", "vae"}
    if unknown:
        sys.exit(f"unknown component {sorted(unknown)}: use text-encoder, unet or vae")
    clip = CLIPTextModel(clip_config(cfg["text_encoder"])).eval()
    ids = (torch.arange(2 * 77) * 7919 % clip.config.vocab_size).reshape(2, 77)
    text_encoder = compile(clip, {"input_ids": ids}) if "text-encoder" in components or args.txt2img_steps else None
    if "text-encoder" in components:
        header(text_encoder)
        req = text_encoder.create_infer_request()
        timed("text_encoder b2", lambda: req.infer({0: ids.numpy()}))
    del clip

    unet_module = UNet2DConditionModel.from_config(cfg["unet"]).eval()
    unets = {}

    def unet_for(batch, res):
        """One compiled UNet per input shape (static shapes, as FastSD CPU reshapes its model)."""
        if (batch, res) not in unets:
            example = (torch.randn(batch, 4, res // 8, res // 8), torch.tensor(500.0), torch.randn(batch, 77, unet_module.config.cross_attention_dim))
            unets[batch, res] = compile(unet_module, example)
        return unets[batch, res]

    last_unet_req = None
    if "unet" in components:
        for res in resolutions:
            for batch in batches:
                compiled = unet_for(batch, res)
                header(compiled)
                req = compiled.create_infer_request()
                inputs = [np.random.randn(batch, 4, res // 8, res // 8).astype(np.float32), np.array(500.0, dtype=np.float32), np.random.randn(batch, 77, unet_module.config.cross_attention_dim).astype(np.float32)]
                timed(f"unet b{batch} {res}", lambda: req.infer(inputs))
                last_unet_req = req

    vae = AutoencoderKL.from_config(cfg["vae"]).eval()

    class Decoder(torch.nn.Module):
        def __init__(self, vae):
            super().__init__()
            self.vae = vae

        def forward(self, z):
            return self.vae.decode(z).sample

    decoders = {}

    def decoder_for(res):
        if res not in decoders:
            decoders[res] = compile(Decoder(vae), (torch.randn(1, 4, res // 8, res // 8),))
        return decoders[res]

    if "vae" in components:
        for res in resolutions:
            compiled = decoder_for(res)
            header(compiled)
            req = compiled.create_infer_request()
            z = np.random.randn(1, 4, res // 8, res // 8).astype(np.float32)
            timed(f"vae_decode b1 {res}", lambda: req.infer([z]))

    if args.txt2img_steps:
        from diffusers import DPMSolverMultistepScheduler

        res = max(resolutions)
        steps = args.txt2img_steps
        scheduler = DPMSolverMultistepScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", use_karras_sigmas=True)
        te_req = text_encoder.create_infer_request()
        unet_req = unet_for(2, res).create_infer_request()
        dec_req = decoder_for(res).create_infer_request()
        header(text_encoder)
        # Any two token rows: the text encoder's cost does not depend on the ids.
        prompt_ids = ids.numpy()

        def txt2img():
            context = te_req.infer({0: prompt_ids})[0]  # [uncond; cond], one batch-2 call
            scheduler.set_timesteps(steps)
            latents = torch.randn(1, 4, res // 8, res // 8, generator=torch.Generator().manual_seed(0)) * scheduler.init_noise_sigma
            for t in scheduler.timesteps:
                x = scheduler.scale_model_input(torch.cat([latents] * 2), t)
                eps = torch.from_numpy(unet_req.infer([x.numpy(), np.array(float(t), dtype=np.float32), context])[0])
                uncond, cond = eps.chunk(2)
                latents = scheduler.step(uncond + 7.5 * (cond - uncond), t, latents).prev_sample
            image = dec_req.infer([(latents / 0.18215).numpy()])[0]
            return np.clip(image / 2 + 0.5, 0, 1)

        timed(f"txt2img {res} cfg {steps} steps", txt2img)
        last_unet_req = unet_req

    if args.perf_count and last_unet_req is not None:
        by_type = collections.defaultdict(float)
        for p in last_unet_req.profiling_info:
            by_type[f"{p.node_type} ({p.exec_type})"] += p.real_time.total_seconds()
        total = sum(by_type.values())
        print(f"PERF_COUNT of the last UNet call, {total:.3f} s in all:")
        for k, v in sorted(by_type.items(), key=lambda kv: -kv[1])[:25]:
            print(f"  {k:<48} {v:>8.3f} s {100 * v / total:>5.1f} %")

    rss = peak_rss_mib()
    print(f"threads: {args.threads}\npeak RSS: {rss:.0f} MiB")
    if args.json:
        json.dump(dict(threads=args.threads, cases=cases, peak_rss_mib=rss, precision=probe), open(args.json, "w"), indent=1)


if __name__ == "__main__":
    main()
