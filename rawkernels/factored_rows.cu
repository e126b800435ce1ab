// factored_rows.cu -- target-row gather and row-update scatter of the factored output layer
// (engine/outputs/factored.py).
//
// NumPy references (the specification): Backend.factored_gather_rows /
// Backend.factored_scatter_rows in engine/backend/numpy_factored.py (V[ids] with invalid slots
// -> zero rows; V[ids[n]] += coef[n] * rows[n / K]); launchers in engine/backend/cupy_factored.py.
//
// Conventions (common.cuh has the full list): templates on T, float and double instantiated
// through NVRTC name expressions, or by `-DRAWKERNELS_INSTANTIATE` for the compile check;
// grid-stride loops with 64-bit index math (id * d overflows 32 bits for large tables);
// outputs first, then inputs, then sizes.
//
// Shapes: V (Dv, d) the factored table (Dv = D outputs), N = B K target slots, rows (B, d) the
// per-example vectors (U_new^{-T} h_j), ids (N,) int64 (negative or >= Dv: skipped / zero row).
#include "common.cuh"

// out[n, :] = V[ids[n], :], or 0 when ids[n] is out of range (a -1 padded target).
template <typename T>
__global__ void factored_gather_rows(T* __restrict__ out_nd, const T* __restrict__ v_dd,
                                     const long long* __restrict__ ids_n, const long long N,
                                     const long long d, const long long Dv) {
    const long long total = N * d;
    for (long long i = grid_start(); i < total; i += grid_stride()) {
        const long long n = i / d;
        const long long c = i - n * d;
        const long long id = ids_n[n];
        out_nd[i] = (id >= 0 && id < Dv) ? v_dd[id * d + c] : T(0);
    }
}

// Atomic mode: V[ids[n], :] += coef[n] * rows[n / K, :]. Rows named several times accumulate
// every contribution; the order of the additions (and the float rounding) is not deterministic.
template <typename T>
__global__ void factored_scatter_atomic(T* __restrict__ v_dd, const long long* __restrict__ ids_n,
                                        const T* __restrict__ coef_n, const T* __restrict__ rows_bd,
                                        const long long N, const long long K, const long long d,
                                        const long long Dv) {
    const long long total = N * d;
    for (long long i = grid_start(); i < total; i += grid_stride()) {
        const long long n = i / d;
        const long long c = i - n * d;
        const long long id = ids_n[n];
        const T w = coef_n[n];
        if (id < 0 || id >= Dv || w == T(0)) continue;
        atomicAdd(v_dd + id * d + c, w * rows_bd[(n / K) * d + c]);
    }
}

// Deterministic mode: `order_n` sorts the slots by (id, n) (the launcher sorts the unique keys
// id * N + n, so any sort gives the same order). Block b handles the slots starting at sorted
// position b when that position begins a run of equal ids: its threads sum the run's
// contributions column by column in sorted order and write the row once. No atomics, and the
// result does not depend on the launch.
template <typename T>
__global__ void factored_scatter_sorted(T* __restrict__ v_dd, const long long* __restrict__ ids_n,
                                        const long long* __restrict__ order_n,
                                        const T* __restrict__ coef_n, const T* __restrict__ rows_bd,
                                        const long long N, const long long K, const long long d,
                                        const long long Dv) {
    for (long long p = blockIdx.x; p < N; p += gridDim.x) {
        const long long id = ids_n[order_n[p]];
        if (id < 0 || id >= Dv) continue;
        if (p > 0 && ids_n[order_n[p - 1]] == id) continue;     // not the head of its run
        long long end = p + 1;
        while (end < N && ids_n[order_n[end]] == id) ++end;
        for (long long c = threadIdx.x; c < d; c += blockDim.x) {
            T acc = T(0);
            for (long long r = p; r < end; ++r) {
                const long long n = order_n[r];
                acc += coef_n[n] * rows_bd[(n / K) * d + c];
            }
            v_dd[id * d + c] += acc;
        }
    }
}

#ifdef RAWKERNELS_INSTANTIATE
#define RK_INSTANTIATE_FACTORED_ROWS(T)                                                         \
    template __global__ void factored_gather_rows<T>(T*, const T*, const long long*,            \
                                                     const long long, const long long,          \
                                                     const long long);                          \
    template __global__ void factored_scatter_atomic<T>(T*, const long long*, const T*,         \
                                                        const T*, const long long,              \
                                                        const long long, const long long,       \
                                                        const long long);                       \
    template __global__ void factored_scatter_sorted<T>(T*, const long long*, const long long*, \
                                                        const T*, const T*, const long long,    \
                                                        const long long, const long long,       \
                                                        const long long);
RK_INSTANTIATE_FACTORED_ROWS(float)
RK_INSTANTIATE_FACTORED_ROWS(double)
#endif
