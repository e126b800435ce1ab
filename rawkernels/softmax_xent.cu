// softmax_xent.cu -- softmax cross-entropy over a huge output layer: fused (whole row) and
// chunked (online log-sum-exp over vocabulary chunks, then the gradient chunk by chunk).
//
// NumPy references (the specification): Backend.softmax_xent_fused,
// Backend.logsumexp_chunk_update, Backend.softmax_xent_grad_chunk in
// engine/backend/numpy_backend.py; launchers in engine/backend/cupy_backend.py.
//
// Conventions (common.cuh has the full list): templates on T, float and double instantiated
// through NVRTC name expressions, or by `-DRAWKERNELS_INSTANTIATE` for the compile check;
// grid-stride loops (any grid is correct); row kernels run one block per row, striding over
// rows, and need blockDim.x a multiple of 32; 64-bit offsets; outputs first, then inputs,
// then scalars and sizes; NVRTC-compatible (no system headers).
//
// Shapes: B rows, C columns of the (chunk of the) vocabulary, `ld` the row stride of the
// logits in elements (ld >= C; ld == C when C-contiguous), so a column slice of a wider
// matrix is processed in place without a copy. Targets are int64; a negative target marks an
// ignored row (loss 0, gradient 0). A target >= C in the fused kernel is an error: its loss
// is NaN (detectable without a host sync), and no out-of-range memory is touched.
#include "common.cuh"

// loss_b[b] = logsumexp(logits[b]) - logits[b, t_b];
// logits[b, :] <- scale * (softmax(logits[b]) - onehot(t_b)), in place.
template <typename T>
__global__ void softmax_xent_fused(T* __restrict__ loss_b, T* __restrict__ logits_bc,
                                   const long long* __restrict__ targets_b, const T scale,
                                   const long long B, const long long C, const long long ld) {
    for (long long b = blockIdx.x; b < B; b += gridDim.x) {
        T* __restrict__ row = logits_bc + b * ld;
        const long long t = targets_b[b];
        const bool valid = t >= 0;
        const bool in_range = valid && t < C;
        // Read the target logit before the barriers below: after them the row is overwritten.
        const T x_t = in_range ? row[t] : T(0);

        T m = rk_neg_inf<T>();
        for (long long j = threadIdx.x; j < C; j += blockDim.x) m = rk_max(m, row[j]);
        m = block_reduce_max(m);

        T s = T(0);
        for (long long j = threadIdx.x; j < C; j += blockDim.x) s += rk_exp(row[j] - m);
        s = block_reduce_sum(s);

        if (threadIdx.x == 0) {
            // same association as the reference: log(sum) - (x_t - max)
            loss_b[b] = !valid ? T(0) : (in_range ? rk_log(s) - (x_t - m) : rk_nan<T>());
        }
        for (long long j = threadIdx.x; j < C; j += blockDim.x) {
            T g = rk_exp(row[j] - m) / s;
            if (j == t) g -= T(1);
            row[j] = valid ? g * scale : T(0);
        }
        // No barrier needed before the next row: it touches other memory, and the reductions
        // start with a barrier that protects their scratch space.
    }
}

// Online log-sum-exp over one chunk of columns [col_offset, col_offset + C):
// run_max_b, run_sum_b updated in place (start at -inf and 0); target_logit_b[b] set when the
// row's target falls inside the chunk. Final log-sum-exp = run_max + log(run_sum).
template <typename T>
__global__ void logsumexp_chunk_update(T* __restrict__ run_max_b, T* __restrict__ run_sum_b,
                                       T* __restrict__ target_logit_b,
                                       const T* __restrict__ logits_bc,
                                       const long long* __restrict__ targets_b,
                                       const long long col_offset, const long long B,
                                       const long long C, const long long ld) {
    for (long long b = blockIdx.x; b < B; b += gridDim.x) {
        const T* __restrict__ row = logits_bc + b * ld;
        // Every thread reads the old running max before the barriers; thread 0 writes it after.
        const T old_max = run_max_b[b];

        T m = rk_neg_inf<T>();
        for (long long j = threadIdx.x; j < C; j += blockDim.x) m = rk_max(m, row[j]);
        m = block_reduce_max(m);
        const T new_max = rk_max(old_max, m);

        T s = T(0);
        for (long long j = threadIdx.x; j < C; j += blockDim.x) s += rk_exp(row[j] - new_max);
        s = block_reduce_sum(s);

        if (threadIdx.x == 0) {
            run_sum_b[b] = run_sum_b[b] * rk_exp(old_max - new_max) + s;
            run_max_b[b] = new_max;
            const long long local = targets_b[b] - col_offset;
            if (local >= 0 && local < C) target_logit_b[b] = row[local];
        }
    }
}

// In place: logits[b, j] <- scale * (exp(logits[b, j] - lse[b]) - [j == t_b - col_offset]);
// rows with a negative target get 0. Elementwise over the B*C entries (flat grid-stride).
template <typename T>
__global__ void softmax_xent_grad_chunk(T* __restrict__ logits_bc, const T* __restrict__ lse_b,
                                        const long long* __restrict__ targets_b, const T scale,
                                        const long long col_offset, const long long B,
                                        const long long C, const long long ld) {
    const long long n = B * C;
    for (long long i = grid_start(); i < n; i += grid_stride()) {
        const long long b = i / C;
        const long long j = i - b * C;
        const long long t = targets_b[b];
        T* __restrict__ x = logits_bc + b * ld + j;
        T g = rk_exp(*x - lse_b[b]);
        if (j == t - col_offset) g -= T(1);
        *x = (t >= 0) ? g * scale : T(0);
    }
}

#ifdef RAWKERNELS_INSTANTIATE
#define RK_INSTANTIATE_SOFTMAX_XENT(T)                                                          \
    template __global__ void softmax_xent_fused<T>(T*, T*, const long long*, const T,           \
                                                   const long long, const long long,            \
                                                   const long long);                            \
    template __global__ void logsumexp_chunk_update<T>(T*, T*, T*, const T*, const long long*,  \
                                                       const long long, const long long,        \
                                                       const long long, const long long);       \
    template __global__ void softmax_xent_grad_chunk<T>(T*, const T*, const long long*,         \
                                                        const T, const long long,               \
                                                        const long long, const long long,       \
                                                        const long long);
RK_INSTANTIATE_SOFTMAX_XENT(float)
RK_INSTANTIATE_SOFTMAX_XENT(double)
#endif
