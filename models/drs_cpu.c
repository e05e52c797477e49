/* The DRS activation's memory-bound loops on the CPU (models/drs_kernel.py compiles and loads this file).
 *
 * Activations are contiguous NCHW: `planes` = N * C rows of `hw` = H * W values, one OpenMP task per row. The
 * per-row results (peak, sum, gradient sums) feed the small (N, C) computations done in PyTorch between calls
 * (the gate's linear layer mixes channels, so it needs every row of an image first).
 *
 * The byte code written by drs_clip and read by the backward (bits shared with models/drs.py):
 *   CLIPPED = r > threshold, PEAK = r == the row's max, TIE = r == threshold, DEAD = !(r > 0)
 * where r = relu(x). The backward needs nothing else per position: the output's value is not read.
 */
#include <stdint.h>

enum { CLIPPED = 1, PEAK = 2, TIE = 4, DEAD = 8 };

#define DEFINE_KERNELS(T, ACC, SUFFIX)                                                                         \
/* r = relu(x) written to out (which may be x); peak[p] = max(r) per row. (The mean for the gate is left to     \
 * torch.mean, whose summation order this loop would not reproduce bit for bit.) */                         \
void drs_relu_max_##SUFFIX(const T *x, T *out, T *peak, int64_t planes, int64_t hw, int threads) {           \
    _Pragma("omp parallel for num_threads(threads) schedule(static)")                                        \
    for (int64_t p = 0; p < planes; ++p) {                                                                   \
        const T *xp = x + p * hw;                                                                            \
        T *op = out + p * hw;                                                                                \
        T m = 0;                                                                                             \
        _Pragma("omp simd reduction(max:m)")                                                                 \
        for (int64_t i = 0; i < hw; ++i) {                                                                   \
            T r = xp[i] > 0 ? xp[i] : (T)0;                                                                  \
            op[i] = r;                                                                                       \
            m = r > m ? r : m;                                                                               \
        }                                                                                                    \
        peak[p] = m;                                                                                         \
    }                                                                                                        \
}                                                                                                            \
                                                                                                             \
/* r = min(r, threshold[p]) in place; with code != NULL also the byte code of every position. */             \
void drs_clip_##SUFFIX(T *r, const T *threshold, const T *peak, uint8_t *code, int64_t planes, int64_t hw,  \
                       int threads) {                                                                        \
    _Pragma("omp parallel for num_threads(threads) schedule(static)")                                        \
    for (int64_t p = 0; p < planes; ++p) {                                                                   \
        T *rp = r + p * hw;                                                                                  \
        const T t = threshold[p], m = peak[p];                                                               \
        if (code) {                                                                                          \
            uint8_t *cp = code + p * hw;                                                                     \
            _Pragma("omp simd")                                                                              \
            for (int64_t i = 0; i < hw; ++i) {                                                               \
                T v = rp[i];                                                                                 \
                cp[i] = (uint8_t)((v > t) * CLIPPED + (v == m) * PEAK + (v == t) * TIE + !(v > 0) * DEAD);   \
                rp[i] = v > t ? t : v;                                                                       \
            }                                                                                                \
        } else {                                                                                             \
            _Pragma("omp simd")                                                                              \
            for (int64_t i = 0; i < hw; ++i) rp[i] = rp[i] > t ? t : rp[i];                                  \
        }                                                                                                    \
    }                                                                                                        \
}                                                                                                            \
                                                                                                             \
/* Per row: reach[p] = sum of grad over the positions that reach the threshold, counting a clipped one twice \
 * and a tie once (torch.minimum's tie rule, halved by the caller); peaks[p] = the number of maxima. */        \
void drs_grad_stats_##SUFFIX(const T *grad, const uint8_t *code, T *reach, T *peaks, int64_t planes,        \
                             int64_t hw, int threads) {                                                      \
    _Pragma("omp parallel for num_threads(threads) schedule(static)")                                        \
    for (int64_t p = 0; p < planes; ++p) {                                                                   \
        const T *gp = grad + p * hw;                                                                         \
        const uint8_t *cp = code + p * hw;                                                                   \
        ACC s = 0;                                                                                           \
        int64_t n = 0;                                                                                       \
        _Pragma("omp simd reduction(+:s) reduction(+:n)")                                                    \
        for (int64_t i = 0; i < hw; ++i) {                                                                   \
            uint8_t c = cp[i];                                                                               \
            s += gp[i] * (T)(((c & CLIPPED) ? 2 : 0) + ((c & TIE) && !(c & CLIPPED) ? 1 : 0));               \
            n += (c & PEAK) != 0;                                                                            \
        }                                                                                                    \
        reach[p] = (T)s;                                                                                     \
        peaks[p] = (T)n;                                                                                     \
    }                                                                                                        \
}                                                                                                            \
                                                                                                             \
/* out = relu'(x) * (grad * share + uniform[p] + (peak ? at_peak[p] : 0)) with share 1 below the threshold,   \
 * 1/2 at a tie and 0 when clipped; uniform may be NULL (fixed delta: no gate). */                           \
void drs_grad_input_##SUFFIX(const T *grad, const uint8_t *code, const T *uniform, const T *at_peak, T *out, \
                             int64_t planes, int64_t hw, int threads) {                                      \
    _Pragma("omp parallel for num_threads(threads) schedule(static)")                                        \
    for (int64_t p = 0; p < planes; ++p) {                                                                   \
        const T *gp = grad + p * hw;                                                                         \
        const uint8_t *cp = code + p * hw;                                                                   \
        T *op = out + p * hw;                                                                                \
        const T u = uniform ? uniform[p] : (T)0, a = at_peak[p];                                             \
        _Pragma("omp simd")                                                                                  \
        for (int64_t i = 0; i < hw; ++i) {                                                                   \
            uint8_t c = cp[i];                                                                               \
            T share = (c & CLIPPED) ? (T)0 : ((c & TIE) ? (T)0.5 : (T)1);                                    \
            T g = gp[i] * share + u;                                                                         \
            g = (c & PEAK) ? g + a : g;                                                                      \
            op[i] = (c & DEAD) ? (T)0 : g;                                                                   \
        }                                                                                                    \
    }                                                                                                        \
}

DEFINE_KERNELS(float, double, f32)
DEFINE_KERNELS(double, double, f64)
