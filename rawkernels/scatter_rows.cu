// scatter_rows.cu -- row gather and row scatter-add on a (V, D) table (embeddings, sparse
// output rows, coalescing of row-sparse gradients).
//
// NumPy references (the specification): Backend.gather_rows, Backend.scatter_add_rows in
// engine/backend/numpy_backend.py; launchers in engine/backend/cupy_backend.py.
//
// Conventions (common.cuh has the full list): templates on T, float and double instantiated
// through NVRTC name expressions, or by `-DRAWKERNELS_INSTANTIATE` for the compile check;
// flat grid-stride loops over the N*D elements (any grid is correct) with 64-bit index math
// (id * D overflows 32 bits for large tables); outputs first, then inputs, then sizes;
// NVRTC-compatible (no system headers). atomicAdd on double needs sm_60 or newer.
//
// Shapes: V table rows, D row width, N rows gathered/scattered; ids are int64.
// Out-of-range ids cannot raise on the device: scatter_add_rows skips them (no memory outside
// the table is touched) and gather_rows writes NaN rows for them. Negative ids in gather wrap
// once, like NumPy fancy indexing (-1 is the last row).
#include "common.cuh"

// out[ids[n], :] += rows[n, :]; duplicate ids accumulate every contribution (atomicAdd, so the
// order of the additions, and the float rounding, is not deterministic).
template <typename T>
__global__ void scatter_add_rows(T* __restrict__ out_vd, const long long* __restrict__ ids_n,
                                 const T* __restrict__ rows_nd, const long long N,
                                 const long long D, const long long V) {
    const long long total = N * D;
    for (long long i = grid_start(); i < total; i += grid_stride()) {
        const long long n = i / D;
        const long long d = i - n * D;
        const long long id = ids_n[n];
        if (id < 0 || id >= V) continue;
        atomicAdd(out_vd + id * D + d, rows_nd[i]);
    }
}

// out[n, :] = table[ids[n], :]
template <typename T>
__global__ void gather_rows(T* __restrict__ out_nd, const T* __restrict__ table_vd,
                            const long long* __restrict__ ids_n, const long long N,
                            const long long D, const long long V) {
    const long long total = N * D;
    for (long long i = grid_start(); i < total; i += grid_stride()) {
        const long long n = i / D;
        const long long d = i - n * D;
        long long id = ids_n[n];
        if (id < 0) id += V;
        out_nd[i] = (id >= 0 && id < V) ? table_vd[id * D + d] : rk_nan<T>();
    }
}

#ifdef RAWKERNELS_INSTANTIATE
#define RK_INSTANTIATE_SCATTER_ROWS(T)                                                          \
    template __global__ void scatter_add_rows<T>(T*, const long long*, const T*,                \
                                                 const long long, const long long,              \
                                                 const long long);                              \
    template __global__ void gather_rows<T>(T*, const T*, const long long*, const long long,    \
                                            const long long, const long long);
RK_INSTANTIATE_SCATTER_ROWS(float)
RK_INSTANTIATE_SCATTER_ROWS(double)
#endif
