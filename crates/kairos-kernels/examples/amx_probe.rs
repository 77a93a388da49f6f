//! What bounds the AMX micro-kernel, on one core: its step (two `A` and two `B` tile loads, four
//! `tdpbf16ps`) with the operands on and off 64-byte boundaries, the products alone, and the step
//! streaming its operands from ever larger footprints (L1, L2, beyond):
//! `cargo run --profile bench-cpu -p kairos-kernels --example amx_probe`. The step is written out
//! here, as in `gemm_bf16`'s kernel, because that kernel is private and only ever sees aligned
//! operands, which is what this probe varies.
//!
//! On the AMX Xeon of 2026-12-07 (48 KiB L1d, 2 MiB L2 per core): 2.6–2.9 TFLOP/s aligned against
//! 1.0 with rows straddling two cache lines, 3.3 for the products alone; 2.0 from 64–256 KiB per
//! operand, 0.8–1.15 from 1 MiB, 0.42–0.46 from 4 MiB and more: the GEMM's 0.9 per core at the
//! UNet's shapes streams from beyond L2.

fn main() {
    #[cfg(target_arch = "x86_64")]
    {
        if kairos_kernels::gemm_bf16::kernel_name() != "amx-bf16" {
            println!("AMX-BF16 does not run here");
            return;
        }
        probe::run();
    }
    #[cfg(not(target_arch = "x86_64"))]
    println!("AMX-BF16 does not run here");
}

#[cfg(target_arch = "x86_64")]
mod probe {
    use std::arch::asm;
    use std::time::Instant;

    /// Palette 1, eight tiles of 16 rows × 64 bytes (as the GEMM's kernel).
    #[repr(C, align(64))]
    struct Config([u8; 64]);

    /// 64-byte lines of bf16 ones, `extra` u32 past a line boundary.
    struct Operand {
        lines: Vec<[u32; 16]>,
        extra: usize,
    }

    impl Operand {
        fn new(bytes: usize, extra: usize) -> Self {
            let lines = vec![[0x3f80_3f80u32; 16]; bytes / 64 + 2];
            let skip = lines.as_ptr().cast::<u32>().align_offset(64);
            Operand { lines, extra: skip + extra }
        }
        fn ptr(&self) -> *const u32 {
            self.lines.as_ptr().cast::<u32>().wrapping_add(self.extra)
        }
    }

    /// GFLOP/s of `iters` steps cycling through `blocks` 2 KiB blocks of each operand.
    fn steps(a: &Operand, b: &Operand, blocks: usize, products_only: bool) -> f64 {
        let iters = 2_000_000usize;
        let start = Instant::now();
        // SAFETY: AMX runs here (checked by the caller) and the tile state was granted; every
        // load reads 16 rows of 64 bytes inside a 2 KiB block of an operand.
        unsafe {
            asm!("tilezero tmm0", "tilezero tmm1", "tilezero tmm2", "tilezero tmm3");
            for i in 0..iters {
                let off = (i % blocks) * 512;
                let (a0, a1, bp) = (a.ptr().add(off), a.ptr().add(off + 256), b.ptr().add(off));
                if products_only {
                    asm!(
                        "tdpbf16ps tmm0, tmm4, tmm6",
                        "tdpbf16ps tmm1, tmm4, tmm7",
                        "tdpbf16ps tmm2, tmm5, tmm6",
                        "tdpbf16ps tmm3, tmm5, tmm7"
                    );
                } else {
                    asm!(
                        "tileloadd tmm4, [{a0} + {sa}]",
                        "tileloadd tmm6, [{b} + {sb}]",
                        "tdpbf16ps tmm0, tmm4, tmm6",
                        "tileloadd tmm7, [{b} + {sb} + 64]",
                        "tdpbf16ps tmm1, tmm4, tmm7",
                        "tileloadd tmm5, [{a1} + {sa}]",
                        "tdpbf16ps tmm2, tmm5, tmm6",
                        "tdpbf16ps tmm3, tmm5, tmm7",
                        a0 = in(reg) a0, a1 = in(reg) a1, sa = in(reg) 64usize, b = in(reg) bp, sb = in(reg) 128usize
                    );
                }
            }
        }
        let flops = iters as f64 * 4.0 * 2.0 * 16.0 * 16.0 * 32.0;
        flops / start.elapsed().as_secs_f64() / 1e9
    }

    pub fn run() {
        let mut config = Config([0; 64]);
        config.0[0] = 1;
        for t in 0..8 {
            config.0[16 + 2 * t] = 64;
            config.0[48 + t] = 16;
        }
        // SAFETY: a valid palette-1 configuration; AMX runs here (checked by the caller).
        unsafe { asm!("ldtilecfg [{}]", in(reg) config.0.as_ptr()) };
        let (a, b) = (Operand::new(16 << 10, 0), Operand::new(16 << 10, 0));
        // Zero the operand tiles once for the products-only loop.
        // SAFETY: as above.
        unsafe { asm!("tilezero tmm4", "tilezero tmm5", "tilezero tmm6", "tilezero tmm7") };
        println!("in L1, 64-byte aligned rows:  {:7.1} GFLOP/s", steps(&a, &b, 8, false));
        let (a4, b4) = (Operand::new(16 << 10, 4), Operand::new(16 << 10, 4));
        println!("in L1, rows 16 bytes off:     {:7.1} GFLOP/s", steps(&a4, &b4, 8, false));
        println!("products alone:               {:7.1} GFLOP/s", steps(&a, &b, 8, true));
        for kib in [16usize, 64, 256, 1024, 4096, 16384] {
            let (a, b) = (Operand::new(kib << 10, 0), Operand::new(kib << 10, 0));
            println!("from {kib:6} KiB per operand:  {:7.1} GFLOP/s", steps(&a, &b, kib / 2, false));
        }
    }
}
