// common.cuh -- device helpers shared by the kernels of rawkernels/ (no kernels here).
//
// Conventions of every file in rawkernels/ (see also the header of each .cu):
//   * NVRTC-compatible: no #include of system or host headers; only quoted includes of files in
//     this folder, so the compiler needs -I<this folder> (engine/backend/kernels.py passes it).
//     Math functions (expf, exp, logf, log, sqrtf, sqrt, fmaxf, fmax), warp shuffles and
//     atomicAdd are compiler built-ins under both NVRTC and nvcc.
//   * Kernels are templates on the element type T; float and double are instantiated by the
//     loader through NVRTC name expressions ("name<float>", "name<double>"). For a compile check
//     without NVRTC name expressions, each .cu ends with explicit instantiations guarded by
//     `#ifdef RAWKERNELS_INSTANTIATE` (tests/backend/test_kernels_compile.py passes
//     -DRAWKERNELS_INSTANTIATE to `nvcc --ptx`).
//   * Grid-stride loops everywhere: any grid size is correct. Row kernels (one block per row)
//     use block reductions and need blockDim.x to be a multiple of 32 (at most 1024); the
//     launchers use 256.
//   * 64-bit (long long) sizes and offsets wherever an index multiplies a row width
//     (vocabulary, label or feature dimension).
//   * Argument names carry their shapes (B batch, C chunk columns, V table rows, D features,
//     N gathered rows); outputs first, then inputs, then scalars and sizes.
//   * Integer index arrays (targets, ids, rows) are int64 (`const long long*`).
#pragma once

// ------------------------------------------------------------------ math overloads
template <typename T> __device__ __forceinline__ T rk_exp(T x);
template <> __device__ __forceinline__ float rk_exp<float>(float x) { return expf(x); }
template <> __device__ __forceinline__ double rk_exp<double>(double x) { return exp(x); }

template <typename T> __device__ __forceinline__ T rk_log(T x);
template <> __device__ __forceinline__ float rk_log<float>(float x) { return logf(x); }
template <> __device__ __forceinline__ double rk_log<double>(double x) { return log(x); }

template <typename T> __device__ __forceinline__ T rk_sqrt(T x);
template <> __device__ __forceinline__ float rk_sqrt<float>(float x) { return sqrtf(x); }
template <> __device__ __forceinline__ double rk_sqrt<double>(double x) { return sqrt(x); }

// max that propagates NaN like numpy.maximum (a NaN logit must surface as a NaN loss)
template <typename T> __device__ __forceinline__ T rk_max(T a, T b) {
    return (a != a || a > b) ? a : b;
}

template <typename T> __device__ __forceinline__ T rk_neg_inf();
template <> __device__ __forceinline__ float rk_neg_inf<float>() {
    return __int_as_float((int)0xff800000u);
}
template <> __device__ __forceinline__ double rk_neg_inf<double>() {
    return __longlong_as_double((long long)0xfff0000000000000ULL);
}

template <typename T> __device__ __forceinline__ T rk_nan();
template <> __device__ __forceinline__ float rk_nan<float>() {
    return __int_as_float((int)0x7fc00000u);
}
template <> __device__ __forceinline__ double rk_nan<double>() {
    return __longlong_as_double((long long)0x7ff8000000000000ULL);
}

// ------------------------------------------------------------------ reductions
// Warp reductions: every lane of a full warp must call them; every lane gets the result.
template <typename T> __device__ __forceinline__ T warp_reduce_sum(T v) {
    for (int offset = 16; offset > 0; offset >>= 1) {
        v += __shfl_xor_sync(0xffffffffu, v, offset);
    }
    return v;
}

template <typename T> __device__ __forceinline__ T warp_reduce_max(T v) {
    for (int offset = 16; offset > 0; offset >>= 1) {
        v = rk_max(v, __shfl_xor_sync(0xffffffffu, v, offset));
    }
    return v;
}

// Block reductions: every thread of the block must call them (they contain __syncthreads),
// blockDim.x a multiple of 32; every thread gets the result. They may be called several times
// in a row: the leading __syncthreads protects the scratch array from the previous call's
// readers.
template <typename T> __device__ T block_reduce_sum(T v) {
    __shared__ T scratch[32];
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    const int n_warps = (blockDim.x + 31) >> 5;
    v = warp_reduce_sum(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    if (warp == 0) {
        T w = (lane < n_warps) ? scratch[lane] : T(0);
        w = warp_reduce_sum(w);
        if (lane == 0) scratch[0] = w;
    }
    __syncthreads();
    return scratch[0];
}

template <typename T> __device__ T block_reduce_max(T v) {
    __shared__ T scratch[32];
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    const int n_warps = (blockDim.x + 31) >> 5;
    v = warp_reduce_max(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    if (warp == 0) {
        T w = (lane < n_warps) ? scratch[lane] : rk_neg_inf<T>();
        w = warp_reduce_max(w);
        if (lane == 0) scratch[0] = w;
    }
    __syncthreads();
    return scratch[0];
}

// Index of the first element handled by this thread and the grid stride, both 64-bit.
__device__ __forceinline__ long long grid_start() {
    return (long long)blockIdx.x * (long long)blockDim.x + (long long)threadIdx.x;
}
__device__ __forceinline__ long long grid_stride() {
    return (long long)gridDim.x * (long long)blockDim.x;
}
