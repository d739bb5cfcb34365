/* The served model's CPU kernels, built and loaded by kernels/cpu_kernels.py; inference only
 * (training takes PyTorch's ops, which autograd differentiates).
 *
 * attnsum_range_attention: masked heads in one call, softmax attention of each query over the
 * keys of its range (the range form of a pattern: attnsum/attention/patterns.py, `Ranges`).
 * q, k, v, out: (heads, B, N, D) contiguous, bf16 (as uint16) or fp32. Query p of the ordering
 * of document b is token perm[b, p] (p itself when perm is NULL); it attends the tokens
 * perm[b, lo[b, p]:hi[b, p]], minus its own when exclude[b, p]; a row with no key gets zeros.
 * Rows with full[b, p] set (full may be NULL) are left as they are: rows that attend every key
 * run faster as the caller's batched products (attnsum/attention/torch_path.py).
 * Scores, softmax and the weighted sum run in fp32; the output is rounded once to its dtype.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static inline float from_bf16(uint16_t x) {
    uint32_t u = (uint32_t)x << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline uint16_t to_bf16(float f) { /* round to nearest even, as torch does */
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u); /* NaN */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

static inline void load_row(const void *base, int bf16, int64_t row, int64_t D, float *dst) {
    if (bf16) {
        const uint16_t *p = (const uint16_t *)base + row * D;
        for (int64_t d = 0; d < D; d++) dst[d] = from_bf16(p[d]);
    } else {
        memcpy(dst, (const float *)base + row * D, (size_t)D * sizeof(float));
    }
}

static inline void store_row(void *base, int bf16, int64_t row, int64_t D, const float *src) {
    if (bf16) {
        uint16_t *p = (uint16_t *)base + row * D;
        for (int64_t d = 0; d < D; d++) p[d] = to_bf16(src[d]);
    } else {
        memcpy((float *)base + row * D, src, (size_t)D * sizeof(float));
    }
}

/* e^x for x <= 0 (underflows to 0 below -87), to about 2 ulp: x = n ln 2 + r with |r| <= ln 2 / 2,
 * e^r by its Taylor polynomial to degree 6, 2^n into the exponent bits. Written so that the
 * compiler vectorizes the loops that call it (libm's expf is a call per element). */
static inline float exp_neg(float x) {
    x = x < -87.f ? -87.f : x;
    const float n = floorf(x * 1.44269504f + 0.5f);
    const float r = x - n * 0.693145752f - n * 1.42860677e-06f;
    float p = 1.f / 720.f;
    p = p * r + 1.f / 120.f;
    p = p * r + 1.f / 24.f;
    p = p * r + 1.f / 6.f;
    p = p * r + 0.5f;
    p = p * r + 1.f;
    p = p * r + 1.f;
    const int32_t bits = ((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

/* Keys are handled in blocks of LANES (one vector register of fp32 on AVX-512, two on AVX2). */
#define LANES 16

/* One query row against the nk keys of its range, loaded in fp32: kt (D x nkp, keys
 * transposed, nkp = nk rounded up to LANES, zero beyond nk) and vs (nk x D). Key `own` (or none
 * when -1) is left out. `s` holds nkp scores; the result goes to acc (D). Inlined with D a
 * constant where the caller dispatches on it, so that the compiler keeps a row in registers. */
static inline __attribute__((always_inline)) void attend(const float *qv, const float *kt,
                                                         const float *vs, int64_t nk, int64_t nkp,
                                                         int64_t own, float *s, float *acc,
                                                         const int64_t D) {
    for (int64_t j0 = 0; j0 < nkp; j0 += LANES) {
        float t[LANES] = {0.f};
        for (int64_t d = 0; d < D; d++) {
            const float qd = qv[d], *kd = kt + d * nkp + j0;
#pragma omp simd
            for (int64_t j = 0; j < LANES; j++) t[j] += qd * kd[j];
        }
        for (int64_t j = 0; j < LANES; j++) s[j0 + j] = t[j];
    }
    float m = -INFINITY;
#pragma omp simd reduction(max : m)
    for (int64_t j = 0; j < nkp; j++) {
        const float x = (j < nk && j != own) ? s[j] : -INFINITY;
        m = x > m ? x : m;
    }
    float total = 0.f;
#pragma omp simd reduction(+ : total)
    for (int64_t j = 0; j < nkp; j++) {
        const float w = exp_neg(s[j] - m);
        s[j] = (j < nk && j != own) ? w : 0.f;
        total += s[j];
    }
    const float inv = total > 0.f ? 1.f / total : 0.f;
    for (int64_t d = 0; d < D; d++) acc[d] = 0.f;
    for (int64_t j = 0; j < nk; j++) {
        const float w = s[j] * inv, *vj = vs + j * D;
#pragma omp simd
        for (int64_t d = 0; d < D; d++) acc[d] += w * vj[d];
    }
}

/* Queries are taken in chunks of CHUNK ordered positions (the units of parallel work); within a
 * chunk, consecutive queries with the same range (a sentence, a group of equal tokens) share
 * one copy of their keys and values in fp32. */
#define CHUNK 64

/* Returns 0, or 1 when a scratch buffer could not be allocated. */
int attnsum_range_attention(const void *q, const void *k, const void *v, void *out, int bf16,
                            int64_t heads, int64_t B, int64_t N, int64_t D, float scale,
                            const int32_t *lo, const int32_t *hi, const int64_t *perm,
                            const uint8_t *exclude, const uint8_t *full, int threads) {
    const int64_t chunks = (N + CHUNK - 1) / CHUNK, np = (N + LANES - 1) / LANES * LANES;
    int failed = 0;
#pragma omp parallel num_threads(threads) reduction(| : failed)
    {
        /* per thread: keys transposed (D x np), values (N x D), a query, its scores, its output */
        float *buf = malloc((size_t)(D * np + D * N + np + 2 * D) * sizeof(float));
        if (!buf) {
            failed = 1;
        } else {
            float *kt = buf, *vs = kt + D * np, *s = vs + D * N, *qv = s + np, *acc = qv + D;
#pragma omp for schedule(dynamic, 1)
            for (int64_t item = 0; item < heads * B * chunks; item++) {
                const int64_t hb = item / chunks, b = hb % B;
                const int64_t doc = hb * N; /* row of token 0 of (head, document) */
                const int64_t *order = perm ? perm + b * N : NULL;
                const int64_t p_end = (item % chunks + 1) * CHUNK < N ? (item % chunks + 1) * CHUNK : N;
                int64_t run_lo = -1, run_hi = -1; /* the range whose keys are loaded */
                for (int64_t p = (item % chunks) * CHUNK; p < p_end; p++) {
                    const int64_t bp = b * N + p;
                    if (full && full[bp]) continue;
                    const int64_t self = order ? order[p] : p;
                    const int64_t first = lo[bp], nk = hi[bp] - first;
                    const int64_t nkp = (nk + LANES - 1) / LANES * LANES;
                    if (first != run_lo || first + nk != run_hi) {
                        for (int64_t j = 0; j < nkp; j++) {
                            if (j < nk) {
                                const int64_t row = doc + (order ? order[first + j] : first + j);
                                load_row(v, bf16, row, D, vs + j * D);
                                load_row(k, bf16, row, D, qv);
                            } else {
                                for (int64_t d = 0; d < D; d++) qv[d] = 0.f;
                            }
                            for (int64_t d = 0; d < D; d++) kt[d * nkp + j] = qv[d];
                        }
                        run_lo = first;
                        run_hi = first + nk;
                    }
                    load_row(q, bf16, doc + self, D, qv);
                    for (int64_t d = 0; d < D; d++) qv[d] *= scale;
                    const int64_t own = exclude[bp] ? p - first : -1;
                    if (D == 32)
                        attend(qv, kt, vs, nk, nkp, own, s, acc, 32);
                    else if (D == 64)
                        attend(qv, kt, vs, nk, nkp, own, s, acc, 64);
                    else
                        attend(qv, kt, vs, nk, nkp, own, s, acc, D);
                    store_row(out, bf16, doc + self, D, acc);
                }
            }
            free(buf);
        }
    }
    return failed;
}

/* out = LayerNorm(y + x) row by row (BERT's residual add and the LayerNorm after it, one pass
 * instead of two): y (rows x cols) bf16 or fp32, the product; x fp32, the residual stream;
 * weight, bias (cols) fp32; out fp32 and, unless NULL, its bf16 copy out16 (the next product's
 * input, cast in the same pass). Mean and variance in fp32 over the row, as torch does. */
void attnsum_add_layer_norm(const void *y, int bf16, const float *x, const float *weight,
                            const float *bias, float eps, float *out, uint16_t *out16,
                            int64_t rows, int64_t cols, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t r = 0; r < rows; r++) {
        float *o = out + r * cols;
        const float *xr = x + r * cols;
        if (bf16) {
            const uint16_t *yr = (const uint16_t *)y + r * cols;
#pragma omp simd
            for (int64_t c = 0; c < cols; c++) o[c] = from_bf16(yr[c]) + xr[c];
        } else {
            const float *yr = (const float *)y + r * cols;
#pragma omp simd
            for (int64_t c = 0; c < cols; c++) o[c] = yr[c] + xr[c];
        }
        float sum = 0.f, sq = 0.f;
#pragma omp simd reduction(+ : sum)
        for (int64_t c = 0; c < cols; c++) sum += o[c];
        const float mean = sum / (float)cols;
#pragma omp simd reduction(+ : sq)
        for (int64_t c = 0; c < cols; c++) sq += (o[c] - mean) * (o[c] - mean);
        const float inv = 1.f / sqrtf(sq / (float)cols + eps);
#pragma omp simd
        for (int64_t c = 0; c < cols; c++) o[c] = (o[c] - mean) * inv * weight[c] + bias[c];
        if (out16) {
            uint16_t *o16 = out16 + r * cols;
#pragma omp simd
            for (int64_t c = 0; c < cols; c++) o16[c] = to_bf16(o[c]);
        }
    }
}
