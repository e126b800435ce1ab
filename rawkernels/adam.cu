// adam.cu -- fused Adam(W) steps: dense over a whole parameter, and lazy over given rows.
//
// NumPy references (the specification): Backend.adam_step, Backend.adam_step_rows in
// engine/backend/numpy_backend.py; launchers in engine/backend/cupy_backend.py.
//
// Conventions (common.cuh has the full list): templates on T, float and double instantiated
// through NVRTC name expressions, or by `-DRAWKERNELS_INSTANTIATE` for the compile check;
// flat grid-stride loops (any grid is correct) with 64-bit index math; outputs (updated in
// place) first, then inputs, then scalars and sizes; NVRTC-compatible (no system headers).
//
// The host precomputes every scalar in double precision and rounds it once to T, exactly as
// NumPy does with Python-float scalars on a T array:
//   one_minus_beta1 = 1 - beta1, one_minus_beta2 = 1 - beta2,
//   step_size = lr / (1 - beta1^t)   (bias correction of m folded in),
//   c2 = 1 - beta2^t                 (bias correction of v),
//   decay = 1 - lr * weight_decay    (decoupled weight decay; exactly 1 when there is none).
// Update, per element:
//   m <- beta1 m + (1 - beta1) g;  v <- beta2 v + (1 - beta2) g^2;
//   p <- p * decay - step_size * m / (sqrt(v / c2) + eps)
#include "common.cuh"

template <typename T>
__device__ __forceinline__ void adam_update(T& p, T& m, T& v, const T g, const T beta1,
                                            const T one_minus_beta1, const T beta2,
                                            const T one_minus_beta2, const T step_size,
                                            const T c2, const T eps, const T decay) {
    m = beta1 * m + one_minus_beta1 * g;
    v = beta2 * v + one_minus_beta2 * (g * g);
    p = p * decay;
    p = p - step_size * m / (rk_sqrt(v / c2) + eps);
}

// Dense: every one of the n elements (any shape, flattened).
template <typename T>
__global__ void adam_step(T* __restrict__ param_n, T* __restrict__ m_n, T* __restrict__ v_n,
                          const T* __restrict__ grad_n, const T beta1, const T one_minus_beta1,
                          const T beta2, const T one_minus_beta2, const T step_size, const T c2,
                          const T eps, const T decay, const long long n) {
    for (long long i = grid_start(); i < n; i += grid_stride()) {
        T p = param_n[i], m = m_n[i], v = v_n[i];
        adam_update(p, m, v, grad_n[i], beta1, one_minus_beta1, beta2, one_minus_beta2,
                    step_size, c2, eps, decay);
        param_n[i] = p;
        m_n[i] = m;
        v_n[i] = v;
    }
}

// Lazy row-sparse: only rows rows_n[k] of the (V, D) param/m/v are updated, with grad row k.
// rows_n must be unique (a repeated row would race); out-of-range rows are skipped.
template <typename T>
__global__ void adam_step_rows(T* __restrict__ param_vd, T* __restrict__ m_vd,
                               T* __restrict__ v_vd, const long long* __restrict__ rows_n,
                               const T* __restrict__ grad_nd, const T beta1,
                               const T one_minus_beta1, const T beta2, const T one_minus_beta2,
                               const T step_size, const T c2, const T eps, const T decay,
                               const long long N, const long long D, const long long V) {
    const long long total = N * D;
    for (long long i = grid_start(); i < total; i += grid_stride()) {
        const long long k = i / D;
        const long long d = i - k * D;
        const long long r = rows_n[k];
        if (r < 0 || r >= V) continue;
        const long long off = r * D + d;
        T p = param_vd[off], m = m_vd[off], v = v_vd[off];
        adam_update(p, m, v, grad_nd[i], beta1, one_minus_beta1, beta2, one_minus_beta2,
                    step_size, c2, eps, decay);
        param_vd[off] = p;
        m_vd[off] = m;
        v_vd[off] = v;
    }
}

#ifdef RAWKERNELS_INSTANTIATE
#define RK_INSTANTIATE_ADAM(T)                                                                  \
    template __global__ void adam_step<T>(T*, T*, T*, const T*, const T, const T, const T,      \
                                          const T, const T, const T, const T, const T,          \
                                          const long long);                                     \
    template __global__ void adam_step_rows<T>(T*, T*, T*, const long long*, const T*, const T, \
                                               const T, const T, const T, const T, const T,     \
                                               const T, const T, const long long,               \
                                               const long long, const long long);
RK_INSTANTIATE_ADAM(float)
RK_INSTANTIATE_ADAM(double)
#endif
