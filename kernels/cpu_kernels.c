/* The served model's CPU kernels, built and loaded by kernels/cpu_kernels.py; inference only
 * (training takes PyTorch's ops, which autograd differentiates).
 *
 * attnsum_range_attention: masked heads in one call, softmax attention of each query over the
 * keys of its range (the range form of a pattern: attnsum/attention/patterns.py, `Ranges`).
 * q, k, v, out: (B, N, heads, D), bf16 (as uint16) or fp32, D contiguous; `strides` (12, in
 * elements) gives for q, k, v and out in turn the steps of B, N and heads. Query p of the ordering
 * of document b is token perm[b, p] (p itself when perm is NULL); it attends the tokens
 * perm[b, lo[b, p]:hi[b, p]], minus its own when exclude[b, p]; a row with no key gets zeros.
 * Scores, softmax and the weighted sum run in fp32; the output is rounded once to its dtype.
 */
#include <math.h>
#include <stdint.h>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif
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

/* D values at element offset `at` of base, in fp32 */
static inline void load_row(const void *base, int bf16, int64_t at, int64_t D, float *dst) {
    if (bf16) {
        const uint16_t *p = (const uint16_t *)base + at;
        for (int64_t d = 0; d < D; d++) dst[d] = from_bf16(p[d]);
    } else {
        memcpy(dst, (const float *)base + at, (size_t)D * sizeof(float));
    }
}

static inline void store_row(void *base, int bf16, int64_t at, int64_t D, const float *src) {
    if (bf16) {
        uint16_t *p = (uint16_t *)base + at;
        for (int64_t d = 0; d < D; d++) p[d] = to_bf16(src[d]);
    } else {
        memcpy((float *)base + at, src, (size_t)D * sizeof(float));
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

#if defined(__AVX512F__)
/* exp_neg on LANES values: 2^n by vscalefps instead of exponent bits. */
static inline __m512 exp_neg16(__m512 x) {
    x = _mm512_max_ps(x, _mm512_set1_ps(-87.f));
    const __m512 n = _mm512_roundscale_ps(
        _mm512_fmadd_ps(x, _mm512_set1_ps(1.44269504f), _mm512_set1_ps(0.5f)),
        _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
    const __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.42860677e-06f),
                                      _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145752f), x));
    __m512 p = _mm512_set1_ps(1.f / 720.f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 120.f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 24.f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 6.f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f));
    return _mm512_scalef_ps(p, n);
}
#endif

/* Keys are scored LANES at a time (one vector register of fp32 on AVX-512, two on AVX2), in
 * blocks of KB with an online softmax (a running maximum and sum per query); queries are taken
 * QT at a time, so that every key and value read serves QT of them. */
#define LANES 16
#define KB 128
#define QT 8

/* One block of nb scores per query (s, fp32, scaled; keys j0.. of the range) folded into the
 * running maximum m, sum l and output acc (QT x D) of each query: the block's weights are left
 * in s (zero at keys past nk and at the query's own key when it leaves it out). */
static inline __attribute__((always_inline)) void online_softmax(float s[QT][KB], int64_t nb,
                                                                 int64_t j0, int64_t nk,
                                                                 const int64_t *own, float *m,
                                                                 float *l, float *acc,
                                                                 const int64_t D) {
#if defined(__AVX512F__)
    for (int i = 0; i < QT; i++) {
        const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        __mmask16 keep[KB / LANES];
        __m512 top = _mm512_set1_ps(-INFINITY);
        for (int64_t jv = 0; jv < nb; jv += LANES) {
            const __m512i idx = _mm512_add_epi32(iota, _mm512_set1_epi32((int)(j0 + jv)));
            keep[jv / LANES] = _mm512_cmplt_epi32_mask(idx, _mm512_set1_epi32((int)nk))
                               & _mm512_cmpneq_epi32_mask(idx, _mm512_set1_epi32((int)own[i]));
            top = _mm512_mask_max_ps(top, keep[jv / LANES], top, _mm512_loadu_ps(&s[i][jv]));
        }
        const float bm = _mm512_reduce_max_ps(top), mnew = bm > m[i] ? bm : m[i];
        if (mnew == -INFINITY) { /* no key of this query so far */
            for (int64_t j = 0; j < nb; j++) s[i][j] = 0.f;
            continue;
        }
        const float rescale = exp_neg(m[i] - mnew); /* 0 while m[i] is -inf: l, acc are 0 */
        __m512 sum = _mm512_setzero_ps();
        for (int64_t jv = 0; jv < nb; jv += LANES) {
            const __m512 w = _mm512_maskz_mov_ps(keep[jv / LANES], exp_neg16(_mm512_sub_ps(
                _mm512_loadu_ps(&s[i][jv]), _mm512_set1_ps(mnew))));
            _mm512_storeu_ps(&s[i][jv], w);
            sum = _mm512_add_ps(sum, w);
        }
        l[i] = l[i] * rescale + _mm512_reduce_add_ps(sum);
        m[i] = mnew;
        for (int64_t d = 0; d < D; d++) acc[i * D + d] *= rescale;
    }
#else
    for (int i = 0; i < QT; i++) {
        float bm = -INFINITY;
#pragma omp simd reduction(max : bm)
        for (int64_t j = 0; j < nb; j++) {
            const float x = (j0 + j < nk && j0 + j != own[i]) ? s[i][j] : -INFINITY;
            bm = x > bm ? x : bm;
        }
        const float mnew = bm > m[i] ? bm : m[i];
        if (mnew == -INFINITY) { /* no key of this query so far */
            for (int64_t j = 0; j < nb; j++) s[i][j] = 0.f;
            continue;
        }
        const float rescale = exp_neg(m[i] - mnew); /* 0 while m[i] is -inf: l, acc are 0 */
        float sum = 0.f;
#pragma omp simd reduction(+ : sum)
        for (int64_t j = 0; j < nb; j++) {
            const float w = exp_neg(s[i][j] - mnew);
            s[i][j] = (j0 + j < nk && j0 + j != own[i]) ? w : 0.f;
            sum += s[i][j];
        }
        l[i] = l[i] * rescale + sum;
        m[i] = mnew;
        for (int64_t d = 0; d < D; d++) acc[i * D + d] *= rescale;
    }
#endif
}

/* QT queries (qt: QT x D, scaled; rows past the real ones are zeros and never stored) against
 * the nk keys of their range, loaded in fp32: kt (D x nkp, keys transposed, nkp = nk rounded
 * up to LANES, zeros past nk) and vs (nkp x D). own[i]: query i's own key, left out (-1: none).
 * Results to acc (QT x D). Inlined with D a constant where the caller dispatches on it. */
static inline __attribute__((always_inline)) void attend(const float *qt, const float *kt,
                                                         const float *vs, int64_t nk, int64_t nkp,
                                                         const int64_t *own, float *acc,
                                                         const int64_t D) {
    float m[QT], l[QT], s[QT][KB];
    for (int i = 0; i < QT; i++) {
        m[i] = -INFINITY;
        l[i] = 0.f;
    }
    for (int64_t x = 0; x < QT * D; x++) acc[x] = 0.f;
    for (int64_t j0 = 0; j0 < nkp; j0 += KB) {
        const int64_t nb = nkp - j0 < KB ? nkp - j0 : KB;
        for (int64_t jv = 0; jv < nb; jv += LANES) {
#if defined(__AVX512F__)
            __m512 t[QT];
            for (int i = 0; i < QT; i++) t[i] = _mm512_setzero_ps();
            for (int64_t d = 0; d < D; d++) {
                const __m512 kd = _mm512_loadu_ps(kt + d * nkp + j0 + jv);
                for (int i = 0; i < QT; i++)
                    t[i] = _mm512_fmadd_ps(_mm512_set1_ps(qt[i * D + d]), kd, t[i]);
            }
            for (int i = 0; i < QT; i++) _mm512_storeu_ps(&s[i][jv], t[i]);
#else
            float t[QT][LANES] = {{0.f}};
            for (int64_t d = 0; d < D; d++) {
                const float *kd = kt + d * nkp + j0 + jv;
                for (int i = 0; i < QT; i++) {
                    const float qd = qt[i * D + d];
#pragma omp simd
                    for (int j = 0; j < LANES; j++) t[i][j] += qd * kd[j];
                }
            }
            for (int i = 0; i < QT; i++)
                for (int j = 0; j < LANES; j++) s[i][jv + j] = t[i][j];
#endif
        }
        online_softmax(s, nb, j0, nk, own, m, l, acc, D);
        const int64_t nv = nk - j0 < nb ? nk - j0 : nb;
#if defined(__AVX512F__)
        if (D % LANES == 0) { /* the accumulators of QT queries in registers, LANES values at a time */
            for (int64_t dv = 0; dv < D; dv += LANES) {
                __m512 a[QT];
                for (int i = 0; i < QT; i++) a[i] = _mm512_loadu_ps(acc + i * D + dv);
                for (int64_t j = 0; j < nv; j++) {
                    const __m512 vj = _mm512_loadu_ps(vs + (j0 + j) * D + dv);
                    for (int i = 0; i < QT; i++)
                        a[i] = _mm512_fmadd_ps(_mm512_set1_ps(s[i][j]), vj, a[i]);
                }
                for (int i = 0; i < QT; i++) _mm512_storeu_ps(acc + i * D + dv, a[i]);
            }
            continue;
        }
#endif
        for (int64_t j = 0; j < nv; j++) {
            const float *vj = vs + (j0 + j) * D;
            for (int i = 0; i < QT; i++) {
                const float w = s[i][j];
#pragma omp simd
                for (int64_t d = 0; d < D; d++) acc[i * D + d] += w * vj[d];
            }
        }
    }
    for (int i = 0; i < QT; i++) {
        const float inv = l[i] > 0.f ? 1.f / l[i] : 0.f;
        for (int64_t d = 0; d < D; d++) acc[i * D + d] *= inv;
    }
}

#if defined(__AVX512BF16__)
/* `attend` for bf16 inputs with AVX512-BF16's dot products (two products a lane and
 * instruction): qb (QT x D bf16, unscaled; zero rows past the real ones), keys as pairs of
 * their dimensions (ktp: D/2 x nkp pairs) and values as pairs of keys (vp: nkp/2 x D pairs),
 * zeros past nk. Scores and the softmax in fp32; the weights are rounded to bf16 for the
 * product with the values, as a bf16 batched product of the PyTorch path rounds them. */
static inline __attribute__((always_inline)) void attend_bf16(const uint16_t *qb,
                                                              const uint32_t *ktp,
                                                              const uint32_t *vp, int64_t nk,
                                                              int64_t nkp, const int64_t *own,
                                                              float scale, float *acc,
                                                              const int64_t D) {
    float m[QT], l[QT], s[QT][KB];
    uint16_t w[QT][KB];
    for (int i = 0; i < QT; i++) {
        m[i] = -INFINITY;
        l[i] = 0.f;
    }
    for (int64_t x = 0; x < QT * D; x++) acc[x] = 0.f;
    const uint32_t *q32 = (const uint32_t *)qb;
    for (int64_t j0 = 0; j0 < nkp; j0 += KB) {
        const int64_t nb = nkp - j0 < KB ? nkp - j0 : KB;
        for (int64_t jv = 0; jv < nb; jv += LANES) {
            __m512 t[QT];
            for (int i = 0; i < QT; i++) t[i] = _mm512_setzero_ps();
            for (int64_t dp = 0; dp < D / 2; dp++) {
                const __m512bh kd = (__m512bh)_mm512_loadu_si512(ktp + dp * nkp + j0 + jv);
                for (int i = 0; i < QT; i++)
                    t[i] = _mm512_dpbf16_ps(t[i], (__m512bh)_mm512_set1_epi32((int)q32[i * D / 2 + dp]), kd);
            }
            for (int i = 0; i < QT; i++)
                _mm512_storeu_ps(&s[i][jv], _mm512_mul_ps(t[i], _mm512_set1_ps(scale)));
        }
        online_softmax(s, nb, j0, nk, own, m, l, acc, D);
        for (int i = 0; i < QT; i++)
            for (int64_t jv = 0; jv < nb; jv += LANES)
                _mm256_storeu_si256((__m256i *)&w[i][jv], (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(&s[i][jv])));
        for (int64_t dv = 0; dv < D; dv += LANES) {
            __m512 a[QT];
            for (int i = 0; i < QT; i++) a[i] = _mm512_loadu_ps(acc + i * D + dv);
            for (int64_t jp = 0; jp < nb / 2; jp++) { /* nb is even: weights past nk are 0 */
                const __m512bh vv = (__m512bh)_mm512_loadu_si512(vp + (j0 / 2 + jp) * D + dv);
                for (int i = 0; i < QT; i++) {
                    uint32_t pair;
                    memcpy(&pair, &w[i][2 * jp], sizeof pair);
                    a[i] = _mm512_dpbf16_ps(a[i], (__m512bh)_mm512_set1_epi32((int)pair), vv);
                }
            }
            for (int i = 0; i < QT; i++) _mm512_storeu_ps(acc + i * D + dv, a[i]);
        }
    }
    for (int i = 0; i < QT; i++) {
        const float inv = l[i] > 0.f ? 1.f / l[i] : 0.f;
        for (int64_t d = 0; d < D; d++) acc[i * D + d] *= inv;
    }
}
#endif

/* One tile of QT queries of a run: with `dots` (bf16 inputs on AVX512-BF16), qt holds their raw
 * bf16 rows and kt, vs the run's keys and values in pairs (`attend_bf16`), else their fp32 rows,
 * already scaled, and the keys and values in fp32 (`attend`). D is made a constant where it is
 * the model's. */
static inline void attend_tile(int dots, const float *qt, const float *kt, const float *vs,
                               int64_t nk, int64_t nkp, const int64_t *own, float scale,
                               float *acc, int64_t D) {
#if defined(__AVX512BF16__)
    if (dots) {
        const uint16_t *qb = (const uint16_t *)qt;
        const uint32_t *ktp = (const uint32_t *)kt, *vp = (const uint32_t *)vs;
        if (D == 32)
            attend_bf16(qb, ktp, vp, nk, nkp, own, scale, acc, 32);
        else
            attend_bf16(qb, ktp, vp, nk, nkp, own, scale, acc, D);
        return;
    }
#else
    (void)dots;
    (void)scale;
#endif
    if (D == 32)
        attend(qt, kt, vs, nk, nkp, own, acc, 32);
    else if (D == 64)
        attend(qt, kt, vs, nk, nkp, own, acc, 64);
    else
        attend(qt, kt, vs, nk, nkp, own, acc, D);
}

/* Queries are taken in chunks of CHUNK ordered positions (the units of parallel work); within a
 * chunk, consecutive queries with the same range (a sentence, a group of equal tokens, the rows
 * that attend every key) share one copy of their keys and values. */
#define CHUNK 256

/* Returns 0, or 1 when a scratch buffer could not be allocated. */
int attnsum_range_attention(const void *q, const void *k, const void *v, void *out, int bf16,
                            int64_t heads, int64_t B, int64_t N, int64_t D, float scale,
                            const int64_t *strides, const int32_t *lo, const int32_t *hi,
                            const int64_t *perm, const uint8_t *exclude, int threads) {
    const int64_t *sq = strides, *sk = strides + 3, *sv = strides + 6, *so = strides + 9;
    const int64_t chunks = (N + CHUNK - 1) / CHUNK, np = (N + LANES - 1) / LANES * LANES;
#if defined(__AVX512BF16__)
    const int dots = bf16 && D % LANES == 0;
#else
    const int dots = 0;
#endif
    int failed = 0;
#pragma omp parallel num_threads(threads) reduction(| : failed)
    {
        /* per thread: keys transposed (D x np), values (np x D), QT queries, their outputs (the
         * dot products' pairs take half of the first three) */
        float *buf = malloc((size_t)(2 * D * np + 2 * QT * D) * sizeof(float));
        if (!buf) {
            failed = 1;
        } else {
            float *kt = buf, *vs = kt + D * np, *qt = vs + D * np, *acc = qt + QT * D;
            uint32_t *ktp = (uint32_t *)kt;
            uint16_t *vp16 = (uint16_t *)vs, *qb = (uint16_t *)qt;
#pragma omp for schedule(dynamic, 1)
            for (int64_t item = 0; item < heads * B * chunks; item++) {
                const int64_t hb = item / chunks, h = hb / B, b = hb % B;
                /* where token 0 of (document, head) is in q, k, v and out; token t: + t * s[1] */
                const int64_t q0 = b * sq[0] + h * sq[2], k0 = b * sk[0] + h * sk[2];
                const int64_t v0 = b * sv[0] + h * sv[2], o0 = b * so[0] + h * so[2];
                const int64_t *order = perm ? perm + b * N : NULL;
                const int32_t *lo_b = lo + b * N, *hi_b = hi + b * N;
                const int64_t p_end = (item % chunks + 1) * CHUNK < N ? (item % chunks + 1) * CHUNK : N;
                for (int64_t p = (item % chunks) * CHUNK; p < p_end;) {
                    /* the run of queries from p that share p's range */
                    const int64_t first = lo_b[p], nk = hi_b[p] - first;
                    const int64_t nkp = (nk + LANES - 1) / LANES * LANES;
                    int64_t run = p + 1;
                    while (run < p_end && lo_b[run] == first && hi_b[run] == first + nk) run++;
                    for (int64_t j = 0; j < nkp; j++) { /* its keys and values, zeros past nk */
                        const int64_t t = j < nk ? (order ? order[first + j] : first + j) : -1;
                        if (dots) { /* keys as pairs of dimensions, values as pairs of keys */
                            const uint16_t *kr = t < 0 ? NULL : (const uint16_t *)k + k0 + t * sk[1];
                            const uint16_t *vr = t < 0 ? NULL : (const uint16_t *)v + v0 + t * sv[1];
                            for (int64_t dp = 0; dp < D / 2; dp++) {
                                uint32_t pair = 0;
                                if (kr) memcpy(&pair, kr + 2 * dp, sizeof pair);
                                ktp[dp * nkp + j] = pair;
                            }
                            for (int64_t d = 0; d < D; d++)
                                vp16[((j / 2) * D + d) * 2 + (j & 1)] = vr ? vr[d] : 0;
                        } else { /* fp32, keys transposed */
                            float *vj = vs + j * D;
                            if (t >= 0) {
                                load_row(v, bf16, v0 + t * sv[1], D, vj);
                                load_row(k, bf16, k0 + t * sk[1], D, qt);
                            } else {
                                for (int64_t d = 0; d < D; d++) qt[d] = vj[d] = 0.f;
                            }
                            for (int64_t d = 0; d < D; d++) kt[d * nkp + j] = qt[d];
                        }
                    }
                    for (; p < run; p += QT) {
                        int64_t own[QT];
                        for (int i = 0; i < QT; i++) { /* zero rows past the run */
                            const int64_t at = p + i < run ? q0 + (order ? order[p + i] : p + i) * sq[1] : -1;
                            own[i] = at >= 0 && exclude[b * N + p + i] ? p + i - first : -1;
                            if (dots) {
                                if (at >= 0)
                                    memcpy(qb + i * D, (const uint16_t *)q + at, (size_t)D * 2);
                                else
                                    memset(qb + i * D, 0, (size_t)D * 2);
                            } else {
                                float *qi = qt + i * D;
                                if (at >= 0)
                                    load_row(q, bf16, at, D, qi);
                                for (int64_t d = 0; d < D; d++) qi[d] = at >= 0 ? qi[d] * scale : 0.f;
                            }
                        }
                        attend_tile(dots, qt, kt, vs, nk, nkp, own, scale, acc, D);
                        for (int i = 0; i < QT && p + i < run; i++)
                            store_row(out, bf16, o0 + (order ? order[p + i] : p + i) * so[1], D, acc + i * D);
                    }
                    p = run;
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
