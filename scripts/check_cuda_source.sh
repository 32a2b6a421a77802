#!/usr/bin/env bash
# Parses crates/engine/src/cuda/kernels.cu with the host C++ compiler, CUDA's keywords and
# built-ins stubbed out: without a GPU or NVRTC this is the only check that the kernels are
# well-formed (undeclared names, typos, wrong argument counts of device functions). It checks
# syntax and names, not CUDA semantics; the parity test on a GPU is the real check.
set -euo pipefail
cd "$(dirname "$0")/.."
cxx="${CXX:-c++}"
command -v "$cxx" >/dev/null || { echo "no C++ compiler: kernels.cu NOT parsed"; exit 0; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cat > "$tmp/kernels.cpp" <<'SHIM'
#include <cmath>
#define __global__
#define __device__
#define __forceinline__
#define __shared__
struct dim3 { unsigned x, y, z; };
extern dim3 blockIdx, blockDim, threadIdx, gridDim;
using std::isnan; using std::isinf; using std::min; using std::max;
inline void __syncthreads() {}
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
SHIM
echo "#line 1 \"crates/engine/src/cuda/kernels.cu\"" >> "$tmp/kernels.cpp"
cat crates/engine/src/cuda/kernels.cu >> "$tmp/kernels.cpp"
"$cxx" -std=c++17 -fsyntax-only -Wall -Wno-unused -Wno-sign-compare "$tmp/kernels.cpp"
echo "kernels.cu parses (host compiler, CUDA built-ins stubbed)"
