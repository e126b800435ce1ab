// ffi.cu -- the fixed fan-in (FFI) sparse layer (engine/layers/fixed_fanin.py).
//
// NumPy reference (the specification): Backend.ffi_forward / Backend.ffi_backward with
// method="reference" in engine/backend/numpy_ffi.py; launchers in engine/backend/cupy_ffi.py
// (whose cuSPARSE path also uses ffi_backward, without its dx part, for the weight gradient).
//
//   out[b, l]  = sum_k w[l, k] x[b, idx[l, k]] + bias[l]
//   dw[l, k]   = sum_b dy[b, l] x[b, idx[l, k]]
//   dx[b, i]   = sum over (l, k) with idx[l, k] = i of w[l, k] dy[b, l]
//
// Shapes: B batch, L labels (outputs), K fan-in, I inputs. idx (L, K) int32, w (L, K), bias (L,).
// The input is read TRANSPOSED, xt (I, B) (the launcher makes it once per forward and keeps it
// for backward): a gathered input column x[:, i] is then B adjacent elements, so the 32 lanes of
// a warp (lanes = examples) read one 128-byte line per gathered index instead of 32 lines.
// The input gradient is likewise produced transposed, dxt (I, B), and transposed by the launcher.
//
// Conventions (common.cuh has the full list): templates on T, float and double instantiated
// through NVRTC name expressions, or by `-DRAWKERNELS_INSTANTIATE` for the compile check; grid
// strides over label tiles / warps (any grid is correct); 64-bit offsets (l * K and i * B
// overflow 32 bits at Amazon-3M scale); outputs first, then inputs, then sizes; blockDim.x a
// multiple of 32 (the launchers use 256). atomicAdd on double needs sm_60 or newer.
#include "common.cuh"

#define FFI_TILE 32
#define FFI_FULL 0xffffffffu

// Forward. A block takes a tile of 32 labels; for each chunk of 32 examples its warps take the
// tile's labels in turn, lane = example. The 32 (index, weight) pairs of a fan-in chunk are
// loaded coalesced, one per lane, and broadcast with shuffles. The 32 x 32 result goes through
// shared memory so that the write of out (B, L) is coalesced along the labels.
template <typename T>
__global__ void ffi_forward(T* __restrict__ out_bl, const T* __restrict__ xt_ib,
                            const int* __restrict__ idx_lk, const T* __restrict__ w_lk,
                            const T* __restrict__ bias_l, const long long B, const long long L,
                            const long long K, const long long I, const int has_bias) {
    __shared__ T tile[FFI_TILE][FFI_TILE + 1];                 // [label][example], padded
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    const int n_warps = blockDim.x >> 5;
    const long long n_tiles = (L + FFI_TILE - 1) / FFI_TILE;
    for (long long t = blockIdx.x; t < n_tiles; t += gridDim.x) {
        const long long l0 = t * FFI_TILE;
        for (long long b0 = 0; b0 < B; b0 += FFI_TILE) {
            const long long b = b0 + lane;
            for (int ll = warp; ll < FFI_TILE; ll += n_warps) {
                const long long l = l0 + ll;
                T acc = T(0);
                if (l < L) {                                   // uniform across the warp
                    const int* ip = idx_lk + l * K;
                    const T* wp = w_lk + l * K;
                    for (long long j0 = 0; j0 < K; j0 += 32) {
                        const int n = (K - j0 < 32) ? (int)(K - j0) : 32;
                        const int my_i = (lane < n) ? ip[j0 + lane] : 0;
                        const T my_w = (lane < n) ? wp[j0 + lane] : T(0);
                        for (int jj = 0; jj < n; ++jj) {
                            const long long i = (long long)__shfl_sync(FFI_FULL, my_i, jj);
                            const T wv = __shfl_sync(FFI_FULL, my_w, jj);
                            if (b < B && i >= 0 && i < I) acc += wv * xt_ib[i * B + b];
                        }
                    }
                    if (has_bias) acc += bias_l[l];
                }
                tile[ll][lane] = acc;
            }
            __syncthreads();
            for (int r = warp; r < FFI_TILE; r += n_warps) {
                const long long bb = b0 + r;
                const long long l = l0 + lane;
                if (bb < B && l < L) out_bl[bb * L + l] = tile[lane][r];
            }
            __syncthreads();
        }
    }
}

// Backward to the weights (and, when atomic_dx, to the input through atomicAdd into dxt).
// Same tiling as the forward: the dy tile (32 examples x 32 labels) is read coalesced along the
// labels into shared memory; a warp takes one label, lane = example; dw[l, k] is a warp sum.
// The first example chunk writes dw, later chunks add to it (the same lane of the same warp
// owns dw[l, k] across chunks, so no race). With skip_zero, a label whose dy is zero on the
// whole chunk (common under the squared hinge) costs one vote: dw gets 0 (first chunk) and
// nothing is scattered. Atomic dx: the order of the additions is not deterministic.
template <typename T>
__global__ void ffi_backward(T* __restrict__ dw_lk, T* __restrict__ dxt_ib,
                             const T* __restrict__ dy_bl, const T* __restrict__ xt_ib,
                             const int* __restrict__ idx_lk, const T* __restrict__ w_lk,
                             const long long B, const long long L, const long long K,
                             const long long I, const int skip_zero, const int atomic_dx) {
    __shared__ T dys[FFI_TILE][FFI_TILE + 1];                  // [example][label], padded
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    const int n_warps = blockDim.x >> 5;
    const long long n_tiles = (L + FFI_TILE - 1) / FFI_TILE;
    for (long long t = blockIdx.x; t < n_tiles; t += gridDim.x) {
        const long long l0 = t * FFI_TILE;
        for (long long b0 = 0; b0 < B; b0 += FFI_TILE) {
            const bool first = (b0 == 0);
            for (int r = warp; r < FFI_TILE; r += n_warps) {
                const long long bb = b0 + r;
                const long long l = l0 + lane;
                dys[r][lane] = (bb < B && l < L) ? dy_bl[bb * L + l] : T(0);
            }
            __syncthreads();
            const long long b = b0 + lane;
            for (int ll = warp; ll < FFI_TILE; ll += n_warps) {
                const long long l = l0 + ll;
                if (l >= L) continue;                          // uniform across the warp
                const T d = dys[lane][ll];
                if (skip_zero && !__any_sync(FFI_FULL, d != T(0))) {
                    if (first) {
                        for (long long j = lane; j < K; j += 32) dw_lk[l * K + j] = T(0);
                    }
                    continue;
                }
                const int* ip = idx_lk + l * K;
                const T* wp = w_lk + l * K;
                for (long long j0 = 0; j0 < K; j0 += 32) {
                    const int n = (K - j0 < 32) ? (int)(K - j0) : 32;
                    const int my_i = (lane < n) ? ip[j0 + lane] : 0;
                    const T my_w = (lane < n) ? wp[j0 + lane] : T(0);
                    T my_g = T(0);
                    for (int jj = 0; jj < n; ++jj) {
                        const long long i = (long long)__shfl_sync(FFI_FULL, my_i, jj);
                        const T wv = __shfl_sync(FFI_FULL, my_w, jj);
                        const bool ok = (b < B && i >= 0 && i < I);
                        const T xv = ok ? xt_ib[i * B + b] : T(0);
                        const T g = warp_reduce_sum(d * xv);
                        if (lane == jj) my_g = g;
                        if (atomic_dx && ok && d != T(0)) atomicAdd(dxt_ib + i * B + b, wv * d);
                    }
                    if (lane < n) {
                        const long long p = l * K + j0 + lane;
                        dw_lk[p] = first ? my_g : dw_lk[p] + my_g;
                    }
                }
            }
            __syncthreads();
        }
    }
}

// Deterministic backward to the input over the transposed index (CSC): the slots (l * K + k)
// that read input i are slot_n[colptr[i] .. colptr[i + 1]), sorted by slot, so every dxt[i, b]
// is summed in one fixed order whatever the launch. One warp per (input, chunk of 32 examples),
// lane = example; dy is read transposed, dyt (L, B), so the lanes read adjacent elements.
template <typename T>
__global__ void ffi_grad_input_csc(T* __restrict__ dxt_ib, const long long* __restrict__ colptr_i,
                                   const int* __restrict__ slot_n, const T* __restrict__ w_lk,
                                   const T* __restrict__ dyt_lb, const long long B,
                                   const long long I, const long long K) {
    const int lane = threadIdx.x & 31;
    const long long n_chunks = (B + 31) / 32;
    const long long total = I * n_chunks;
    const long long warp0 = ((long long)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    const long long n_warps = ((long long)gridDim.x * blockDim.x) >> 5;
    for (long long wid = warp0; wid < total; wid += n_warps) {
        const long long i = wid / n_chunks;
        const long long b = (wid - i * n_chunks) * 32 + lane;
        T acc = T(0);
        if (b < B) {
            const long long end = colptr_i[i + 1];
            for (long long p = colptr_i[i]; p < end; ++p) {
                const long long s = slot_n[p];
                acc += w_lk[s] * dyt_lb[(s / K) * B + b];
            }
            dxt_ib[i * B + b] = acc;
        }
    }
}

#ifdef RAWKERNELS_INSTANTIATE
#define RK_INSTANTIATE_FFI(T)                                                                   \
    template __global__ void ffi_forward<T>(T*, const T*, const int*, const T*, const T*,       \
                                            const long long, const long long, const long long,  \
                                            const long long, const int);                        \
    template __global__ void ffi_backward<T>(T*, T*, const T*, const T*, const int*, const T*,  \
                                             const long long, const long long, const long long, \
                                             const long long, const int, const int);            \
    template __global__ void ffi_grad_input_csc<T>(T*, const long long*, const int*, const T*,  \
                                                   const T*, const long long, const long long,  \
                                                   const long long);
RK_INSTANTIATE_FFI(float)
RK_INSTANTIATE_FFI(double)
#endif
