// topk_rows.cu -- per-row top-k selection: the k largest values (or magnitudes) of each row.
//
// NumPy reference (the specification): Backend.topk in engine/backend/numpy_topk.py (a partition
// for each row's k-th largest key, then the keys above it and the lowest-index ties); launcher:
// CupyBackend._topk_ids in engine/backend/cupy_topk.py. Used by meProp's selection (|dy|, indices
// ascending) and by every output's predict_topk / metrics (signed scores, then ordered best first
// by Backend.topk on the device).
//
// Conventions (common.cuh has the full list): templates on T, float and double instantiated
// through NVRTC name expressions, or by `-DRAWKERNELS_INSTANTIATE` for the compile check;
// outputs first, then inputs, then sizes; 64-bit offsets (b * O); NVRTC-compatible.
//
// Shapes: a_bo (B, O) C-contiguous, idx_bk (B, K) int64, 1 <= K <= O.
//
// Ranking key (an unsigned integer that orders like the numbers): with `magnitude` the bits of
// |a| (sign bit cleared); otherwise the IEEE bits mapped to an order-preserving unsigned key
// (negative numbers: all bits flipped; non-negative: sign bit set), with -0.0 equal to +0.0.
// Every NaN gets the largest key, so NaN ranks above every number (a NaN surfaces in the
// top-k) and NaNs tie with each other. Equal keys are broken towards the lowest index.
//
// One block per row (grid-stride over rows: any grid is correct; blockDim.x a multiple of 32):
//   1. Radix select on the key: 8 bits per pass (4 passes for float, 8 for double), each a
//      shared-memory histogram of the candidates that still match the prefix; it yields the
//      K-th largest key `thr` and how many keys equal to thr must be taken.
//   2. Ordered compaction: every key > thr, and the first `take_eq` keys == thr in index order
//      (ties broken towards the lowest index), written in ascending index order by block-wide
//      exclusive counts (warp ballots), so the output is deterministic.
#include "common.cuh"

template <typename T> struct rk_topk_key;
template <> struct rk_topk_key<float> {
    typedef unsigned int U;
    static const int BITS = 32;
    static __device__ __forceinline__ U of(float v, int magnitude) {
        if (v != v) return 0xffffffffu;                      // NaN: above every number
        U u = __float_as_uint(v);
        if (magnitude) return u & 0x7fffffffu;
        if ((u & 0x7fffffffu) == 0u) u = 0u;                 // -0.0 == +0.0
        return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
    }
};
template <> struct rk_topk_key<double> {
    typedef unsigned long long U;
    static const int BITS = 64;
    static __device__ __forceinline__ U of(double v, int magnitude) {
        if (v != v) return 0xffffffffffffffffULL;            // NaN: above every number
        U u = (unsigned long long)__double_as_longlong(v);
        if (magnitude) return u & 0x7fffffffffffffffULL;
        if ((u & 0x7fffffffffffffffULL) == 0ULL) u = 0ULL;   // -0.0 == +0.0
        return (u & 0x8000000000000000ULL) ? ~u : (u | 0x8000000000000000ULL);
    }
};

// Exclusive count of `flag` over the threads of the block before this one (thread order =
// index order); *total gets the block's count. Every thread must call it.
__device__ __forceinline__ int block_exclusive_count(bool flag, int* s_warp, int* s_total) {
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    const int n_warps = (blockDim.x + 31) >> 5;
    const unsigned int ballot = __ballot_sync(0xffffffffu, flag);
    const int in_warp = __popc(ballot & ((1u << lane) - 1u));
    __syncthreads();                       // earlier readers of s_warp / s_total are done
    if (lane == 0) s_warp[warp] = __popc(ballot);
    __syncthreads();
    if (threadIdx.x == 0) {
        int run = 0;
        for (int w = 0; w < n_warps; ++w) {
            const int c = s_warp[w];
            s_warp[w] = run;
            run += c;
        }
        *s_total = run;
    }
    __syncthreads();
    return s_warp[warp] + in_warp;
}

template <typename T>
__global__ void topk_rows(long long* __restrict__ idx_bk, const T* __restrict__ a_bo,
                          const long long B, const long long O, const long long K,
                          const int magnitude) {
    typedef typename rk_topk_key<T>::U U;
    __shared__ unsigned int hist[256];
    __shared__ U s_prefix;
    __shared__ long long s_remaining;
    __shared__ int s_warp[32];
    __shared__ int s_total[2];
    __shared__ long long s_base[2];        // [0] keys == thr seen so far, [1] indices written
    const int tid = threadIdx.x;

    for (long long b = blockIdx.x; b < B; b += gridDim.x) {
        const T* row = a_bo + b * O;
        long long* out = idx_bk + b * K;

        // 1. radix select of the K-th largest key, most significant digit first
        U prefix = 0, mask = 0;
        long long remaining = K;           // rank of the wanted key among the candidates
        for (int shift = rk_topk_key<T>::BITS - 8; shift >= 0; shift -= 8) {
            for (int i = tid; i < 256; i += blockDim.x) hist[i] = 0u;
            __syncthreads();
            for (long long j = tid; j < O; j += blockDim.x) {
                const U key = rk_topk_key<T>::of(row[j], magnitude);
                if ((key & mask) == prefix) {
                    atomicAdd(&hist[(unsigned int)((key >> shift) & (U)255)], 1u);
                }
            }
            __syncthreads();
            if (tid == 0) {
                long long above = 0;
                int d = 255;
                for (; d > 0; --d) {
                    if (above + (long long)hist[d] >= remaining) break;
                    above += hist[d];
                }
                s_prefix = prefix | ((U)d << shift);
                s_remaining = remaining - above;
            }
            __syncthreads();
            prefix = s_prefix;
            remaining = s_remaining;
            mask |= ((U)255 << shift);
            __syncthreads();               // everyone has read s_prefix before it changes
        }
        // prefix = the K-th largest key; `remaining` keys equal to it belong to the top K

        // 2. ordered compaction
        if (tid == 0) { s_base[0] = 0; s_base[1] = 0; }
        __syncthreads();
        for (long long t0 = 0; t0 < O; t0 += blockDim.x) {
            const long long j = t0 + tid;
            const U key = (j < O) ? rk_topk_key<T>::of(row[j], magnitude) : (U)0;
            const bool gt = (j < O) && key > prefix;
            const bool eq = (j < O) && key == prefix;
            const int r_eq = block_exclusive_count(eq, s_warp, &s_total[0]);
            const int n_eq = s_total[0];
            const bool sel = gt || (eq && s_base[0] + r_eq < remaining);
            const int r_sel = block_exclusive_count(sel, s_warp, &s_total[1]);
            const int n_sel = s_total[1];
            if (sel) out[s_base[1] + r_sel] = j;
            __syncthreads();               // every thread has read s_base
            if (tid == 0) { s_base[0] += n_eq; s_base[1] += n_sel; }
            __syncthreads();
        }
    }
}

#ifdef RAWKERNELS_INSTANTIATE
#define RK_INSTANTIATE_TOPK_ROWS(T)                                                             \
    template __global__ void topk_rows<T>(long long*, const T*, const long long,               \
                                          const long long, const long long, const int);
RK_INSTANTIATE_TOPK_ROWS(float)
RK_INSTANTIATE_TOPK_ROWS(double)
#endif
