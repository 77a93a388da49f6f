#!/usr/bin/env bash
# shellcheck shell=bash
# CUDA toolkit from PyPI wheels, for `cargo build --features cuda` on a machine without a CUDA
# install (a CPU-only build machine included: no GPU and no driver are needed to compile).
#
#   tools/cuda_env.sh cargo build --release -p kairos-cli --features cuda   # run one command in it
#   source tools/cuda_env.sh                                                # or export it here
#
# First use creates a venv ($KAIROS_CUDA_VENV, default .venv-cuda at the repository root) and
# pip-installs the pinned CUDA 13.0 update 2 wheels below (about 1.2 GB unpacked, most of it
# cuBLAS). Later uses only export the environment.
#
# Why CUDA 13 and not 12: the `nvidia-cuda-nvcc-cu12` wheels (12.1 to 12.9) carry ptxas and
# libnvvm but no `nvcc`, `cicc`, `cudafe++` or `fatbinary`, so they cannot compile candle's .cu
# kernels; the CUDA 13 wheels (`nvidia-cuda-nvcc`, `nvidia-cuda-crt`, `nvidia-nvvm`, ...) carry the
# whole compiler under site-packages/nvidia/cu13/{bin,include,lib,nvvm}, a toolkit layout. 13.0 is
# the oldest 13.x, so the binary runs with any driver that supports CUDA 13 (R580 or newer): candle
# loads its kernels as PTX, which the driver JIT-compiles and must be at least as new as nvcc.
#
# Settings (environment):
#   KAIROS_CUDA_VENV   venv to create/use (default: <repo>/.venv-cuda)
#   CUDA_COMPUTE_CAP   GPU architecture to compile for, without the dot (default 90: H100/H200;
#                      80 = A100, 89 = L4/L40/RTX 40xx, 86 = RTX 30xx/A10, 120 = RTX 50xx).
#                      There is no nvidia-smi to ask on a build machine; on a GPU machine run
#                      `nvidia-smi --query-gpu=compute_cap --format=csv` and set it.
#   KAIROS_CUDA_STUB   auto (default): when no NVIDIA driver (libcuda.so.1) is installed, put a
#                      stub libcuda.so.1 on LD_LIBRARY_PATH so the cuda build still starts and runs
#                      on the CPU (`--device cuda` then fails with a clear error); 1 forces it,
#                      0 never does it. The stub is always used for linking (`-lcuda`), as the
#                      toolkit's lib64/stubs is.
#   PYTHON             interpreter for the venv (default python3)
#   KAIROS_CUDA_ROOT   use this CUDA 13 instead of the venv, as it is (no pip, no stub): a toolkit
#                      install (/usr/local/cuda), or to run a binary built elsewhere on a GPU
#                      machine whose PyTorch (cu130) holds the libraries:
#                      KAIROS_CUDA_ROOT=$(python3 -c 'import nvidia, os; print(os.path.join(nvidia.__path__[0], "cu13"))')
#
# The linked binary needs the wheels' libraries (libcudart.so.13, libcublas.so.13, libcublasLt,
# libcurand, libnvrtc) at run time: run it through this script (or after sourcing it), or point
# LD_LIBRARY_PATH at "$CUDA_HOME/lib" yourself.

# Pinned: the component versions of CUDA 13.0.2 (the `cuda-toolkit==13.0.2` meta-package).
KAIROS_CUDA_PACKAGES=(
    nvidia-cuda-nvcc==13.0.88      # nvcc, cudafe++, fatbinary, nvlink, ptxas
    nvidia-cuda-crt==13.0.88       # crt/ headers nvcc includes (host_config.h, ...)
    nvidia-nvvm==13.0.88           # cicc, libnvvm, libdevice
    nvidia-cuda-runtime==13.0.96   # cudart + cuda_runtime.h, cuda_fp16.h, cuda_bf16.h, cuda_fp8.h
    nvidia-cuda-nvrtc==13.0.88     # libnvrtc (cudarc links it)
    nvidia-cuda-cccl==13.0.85      # cub/thrust/libcu++ headers
    nvidia-cublas==13.1.0.3        # cublas + cublasLt
    nvidia-curand==10.4.0.35       # curand
)

# Bumped when the stub's source changes, so that an existing venv gets the new one.
KAIROS_CUDA_STUB_VERSION="kairos libcuda stub v2"

_kairos_cuda_main() {
    local here repo venv py site root
    here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)" || return 1
    repo="$(cd "$here/.." && pwd)" || return 1
    venv="${KAIROS_CUDA_VENV:-$repo/.venv-cuda}"
    py="${PYTHON:-python3}"

    if [ -n "${KAIROS_CUDA_ROOT:-}" ]; then
        # An existing CUDA 13, used as it is (nothing installed or written).
        root="$KAIROS_CUDA_ROOT"
        [ -d "$root" ] || { echo "cuda_env: KAIROS_CUDA_ROOT=$root is not a directory" >&2; return 1; }
        local d libs=""
        for d in "$root/lib64" "$root/lib" "$root/targets/x86_64-linux/lib"; do
            [ -d "$d" ] && libs="${libs:+$libs:}$d"
        done
        export CUDA_HOME="$root" CUDA_PATH="$root" CUDA_ROOT="$root" CUDA_TOOLKIT_ROOT_DIR="$root"
        export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
        [ -d "$root/bin" ] && export PATH="$root/bin:$PATH"
        export LIBRARY_PATH="$libs${LIBRARY_PATH:+:$LIBRARY_PATH}"
        export LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
        export CUDAFORGE_THREADS="${CUDAFORGE_THREADS:-${CARGO_BUILD_JOBS:-1}}"
        return 0
    fi

    if [ ! -x "$venv/bin/python" ]; then
        echo "cuda_env: creating venv $venv" >&2
        "$py" -m venv "$venv" || return 1
    fi
    site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" || return 1
    root="$site/nvidia/cu13"
    # Install when a pinned package is missing or at another version (pip check is too slow to run
    # every time; a stamp file with the list is enough).
    local stamp="$venv/.kairos-cuda-packages" want
    want="$(printf '%s\n' "${KAIROS_CUDA_PACKAGES[@]}")"
    if [ ! -x "$root/bin/nvcc" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
        echo "cuda_env: pip install ${KAIROS_CUDA_PACKAGES[*]} into $venv" >&2
        "$venv/bin/python" -m pip install --disable-pip-version-check --no-cache-dir \
            "${KAIROS_CUDA_PACKAGES[@]}" >&2 || return 1
        printf '%s\n' "$want" > "$stamp"
    fi
    [ -x "$root/bin/nvcc" ] || { echo "cuda_env: no nvcc at $root/bin/nvcc" >&2; return 1; }

    # What a toolkit install has and the wheels lack: the unversioned libX.so names the linker
    # looks for (-lcublas, ...), and lib/stubs/libcuda.so (the driver is not a wheel). The stub is
    # generated from the wheel's cuda.h: every cu* entry point returns CUDA_ERROR_STUB_LIBRARY (34),
    # as NVIDIA's own stub does.
    local lib
    for lib in "$root"/lib/lib*.so.*; do
        [ -e "$lib" ] || continue
        local base="${lib##*/}"
        local dev="$root/lib/${base%%.so.*}.so"
        case "$base" in *.alt.so.*|libnvrtc-builtins*) continue ;; esac
        [ -e "$dev" ] || ln -s "$base" "$dev"
    done
    if ! grep -qs "$KAIROS_CUDA_STUB_VERSION" "$root/lib/stubs/libcuda_stub.c" || [ ! -e "$root/lib/stubs/libcuda.so.1" ]; then
        _kairos_cuda_make_stub "$root" || return 1
    fi

    export CUDA_HOME="$root" CUDA_PATH="$root" CUDA_ROOT="$root" CUDA_TOOLKIT_ROOT_DIR="$root"
    export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
    export PATH="$root/bin:$PATH"
    export CPATH="$root/include${CPATH:+:$CPATH}"
    export LIBRARY_PATH="$root/lib:$root/lib/stubs${LIBRARY_PATH:+:$LIBRARY_PATH}"
    local ld="$root/lib"
    local stub="${KAIROS_CUDA_STUB:-auto}"
    if [ "$stub" = auto ]; then
        if { ldconfig -p || /sbin/ldconfig -p; } 2>/dev/null | grep -q 'libcuda\.so\.1 '; then stub=0; else stub=1; fi
    fi
    if [ "$stub" = 1 ]; then
        ld="$ld:$root/lib/stubs"
    fi
    export LD_LIBRARY_PATH="$ld${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    # Keep the kernel build to one nvcc at a time unless told otherwise (a shared 2-core machine);
    # CUDAFORGE_THREADS=0 or a larger number to use more.
    export CUDAFORGE_THREADS="${CUDAFORGE_THREADS:-${CARGO_BUILD_JOBS:-1}}"
    return 0
}

_kairos_cuda_make_stub() {
    local root="$1" tmp names
    mkdir -p "$root/lib/stubs" || return 1
    tmp="$(mktemp -d)" || return 1
    # Driver entry points: the names cuda.h declares, after its #define cuX cuX_v2 mapping and
    # before it (both are exported by the real libcuda).
    {
        gcc -E -P -x c -I"$root/include" "$root/include/cuda.h"
        gcc -E -P -x c -D__CUDA_API_VERSION_INTERNAL -I"$root/include" "$root/include/cuda.h"
        cat "$root/include/cuda.h"
    } 2>/dev/null | grep -oE '\bcu[A-Z][A-Za-z0-9_]*[[:space:]]*\(' | tr -d '( \t' | sort -u \
        | grep -vxE 'cuGetErrorString|cuGetErrorName' > "$tmp/names"
    names="$(wc -l < "$tmp/names")"
    if [ "$names" -lt 300 ]; then
        echo "cuda_env: found only $names driver entry points in cuda.h; not making the stub" >&2
        rm -rf "$tmp"
        return 1
    fi
    {
        echo "/* Generated by tools/cuda_env.sh ($KAIROS_CUDA_STUB_VERSION): a libcuda for linking and CPU-only runs. */"
        echo 'int cuGetErrorName(int e, const char **s) {'
        echo '    if (s) *s = e == 34 ? "CUDA_ERROR_STUB_LIBRARY" : "CUDA_ERROR_UNKNOWN";'
        echo '    return 0;'
        echo '}'
        echo 'int cuGetErrorString(int e, const char **s) {'
        echo '    if (s) *s = "no NVIDIA driver here: this libcuda.so.1 is the stub of tools/cuda_env.sh";'
        echo '    return 0;'
        echo '}'
        while read -r n; do echo "int $n(void) { return 34; /* CUDA_ERROR_STUB_LIBRARY */ }"; done < "$tmp/names"
    } > "$tmp/libcuda_stub.c"
    gcc -shared -fPIC -O1 -Wl,-soname,libcuda.so.1 -o "$root/lib/stubs/libcuda.so.1" "$tmp/libcuda_stub.c" \
        || { rm -rf "$tmp"; return 1; }
    cp "$tmp/libcuda_stub.c" "$root/lib/stubs/libcuda_stub.c"
    ln -sf libcuda.so.1 "$root/lib/stubs/libcuda.so"
    echo "cuda_env: made $root/lib/stubs/libcuda.so.1 ($names entry points)" >&2
    rm -rf "$tmp"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    # Run as a command: set up, then run the arguments (or print the environment).
    set -e
    _kairos_cuda_main
    if [ "$#" -eq 0 ]; then
        echo "CUDA_HOME=$CUDA_HOME"
        echo "CUDA_COMPUTE_CAP=$CUDA_COMPUTE_CAP"
        echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
        nvcc --version | tail -2
        exit 0
    fi
    exec "$@"
else
    _kairos_cuda_main
fi
