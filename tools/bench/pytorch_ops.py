"""Times PyTorch's own ops at the SD1.5 UNet's shapes (batch 2 at 512x512), the counterpart of
`cargo run --profile bench-cpu -p kairos-kernels --example unet_shapes`: same shapes, same
reporting (mean of three runs after two warm-ups), so each kernel can be compared side by side.

    python3 tools/bench/pytorch_ops.py --threads 2
"""

import argparse
import time

import torch
import torch.nn.functional as F


def bench(name, flops, f):
    f()
    f()
    t = time.perf_counter()
    for _ in range(3):
        f()
    s = (time.perf_counter() - t) / 3
    print(f"{name:28} {s * 1e3:8.1f} ms {flops / s / 1e9:7.1f} GFLOP/s")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    with torch.no_grad():
        for c, h in [(320, 64), (640, 32), (1280, 16), (1280, 8)]:
            x = torch.randn(2, c, h, h)
            conv = torch.nn.Conv2d(c, c, 3, padding=1)
            bench(f"conv3x3 {c} {h}", 2 * 2 * c * c * 9 * h * h, lambda: conv(x))
        for tokens, din, dout in [
            (4096, 320, 2560), (4096, 1280, 320), (4096, 320, 320),
            (1024, 640, 5120), (1024, 2560, 640), (1024, 640, 640),
            (256, 1280, 10240), (256, 5120, 1280), (256, 1280, 1280),
        ]:
            x = torch.randn(2, tokens, din)
            lin = torch.nn.Linear(din, dout)
            bench(f"linear {din}->{dout} {tokens}", 2 * 2 * tokens * din * dout, lambda: lin(x))
        for tokens, inner in [(4096, 1280), (1024, 2560), (256, 5120)]:
            x = torch.randn(2, tokens, 2 * inner)

            def geglu():
                value, gate = x.chunk(2, dim=-1)
                return value * F.gelu(gate)

            bench(f"geglu {tokens}x{inner}", 0.0, geglu)
        # Self-attention at each level, and cross-attention to the 77 prompt tokens.
        for tokens, keys, d in [(4096, 4096, 40), (1024, 1024, 80), (256, 256, 160), (4096, 77, 40), (1024, 77, 80), (256, 77, 160)]:
            q = torch.randn(2, 8, tokens, d)
            kv = torch.randn(2, 8, keys, d)
            bench(f"attention {tokens}x{keys} d{d}", 2 * 2 * 16 * tokens * keys * d,
                  lambda: F.scaled_dot_product_attention(q, kv, kv))
        a = torch.randn(4096, 4096)
        bench("gemm 4096", 2 * 4096**3, lambda: a @ a)


if __name__ == "__main__":
    main()
