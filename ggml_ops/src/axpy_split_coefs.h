/*
 * The coefficients of the split-layout integer down kernels (axpy_rows.h's TS_ROWS_SPLIT: Q4_0, Q4_1), shared by the
 * x86 kernels (axpy_rows_avx2.c, axpy_rows_avx512.c; AVX2 code, which both compile). A group's row r adds
 * c_r * code_r with c_r = coef_r * d_r (d_r: the unit's block scale); the c of a group's rows are quantized
 * together, per unit, to 8 bits: c_r ~ S * k_r with S = max |c| / 127. In the split layout the block scales (and
 * mins) of each aligned group of 8 blocks are an array of their own, so those of a group's units load as one vector
 * and its units are quantized at once, units in the lanes (the same S and k, bit for bit, as one unit at a time); a
 * tile that starts or ends inside a group takes the part it needs.
 */
#ifndef TS_AXPY_SPLIT_COEFS_H
#define TS_AXPY_SPLIT_COEFS_H

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* The AVX2 kernels take 8 rows per group for Q4_0 and Q4_1 (Q8_0 and Q4_K 16): a group's rows are read as that many
 * concurrent streams, the next group's prefetched as as many more, and for these two types 8 streams read DRAM
 * faster than 16 on a Zen 3 (10 and 50 % of 14336 rows of 4096: 1.08-1.26x on one thread, 1.02-1.27x with two
 * splitting the columns; 4 rows were slower again; with the prefetches into L2 since, on a Zen 4, 16 rows decode
 * the Mixtral twin no faster); from cache they run 2-15 % slower (more work per group). Q8_0 and Q4_K ran 0.86-1.08x
 * with 8 and keep 16. The AVX-512 Q4_0 kernel takes 16 (axpy_rows_avx512.c): its output conversion, a fixed cost per
 * group, was a third of its work. */
#define SPLIT_ROWS 8
#define SPLIT_ROWS_AVX512 16

typedef struct {
    int32_t pair[SPLIT_ROWS_AVX512 / 2][8]; /* [p][unit]: k of rows 2p and 2p + 1 as a byte pair, twice (one broadcast) */
    float scale[8];                /* S */
    int32_t sum_k[8];
    float min_sum[8];              /* sum_r coef_r * m_r (types with a min) */
} split_coefs;

/* offset * sum_k of unit j, as the kernels take it off their integer sums. Computed in unsigned arithmetic: a
 * coefficient that is not finite (a file's NaN or infinite scale) converts to INT_MIN, and its garbage k must not
 * make this product undefined behaviour (the unit's output is then as undefined as its input, but nothing else). */
static inline int32_t split_offset(const split_coefs *q, int j, int offset) {
    return (int32_t)((uint32_t)offset * (uint32_t)q->sum_k[j]);
}

/* the fp16 values [0, n) at p as floats (n < 8: a tile's last units; the other lanes 0) */
static inline __m256 halves8(const uint8_t *p, int n) {
    if (n == 8) {
        return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
    }
    uint16_t h[8] = {0};
    memcpy(h, p, (size_t)n * sizeof(uint16_t));
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)h));
}

/* The coefficients of units [u, u + n) (n <= 8) of `rows` rows (a constant once inlined): the d arrays at byte
 * `d_at` of each row, the m arrays at `m_at` (0: none). */
static inline __attribute__((always_inline)) void split_quantize(const uint8_t *const *r, const float *a, int rows,
                                                                 size_t d_at, size_t m_at, int n, split_coefs *q) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 c[SPLIT_ROWS_AVX512];
    __m256 amax = _mm256_setzero_ps();
    for (int k = 0; k < rows; k++) {
        c[k] = _mm256_mul_ps(_mm256_set1_ps(a[k]), halves8(r[k] + d_at, n));
        amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign, c[k]));
    }
    /* units whose c are all 0 get k = 0 and S = 0 (the kernel skips them) */
    const __m256 inv = _mm256_and_ps(_mm256_cmp_ps(amax, _mm256_setzero_ps(), _CMP_GT_OQ),
                                     _mm256_div_ps(_mm256_set1_ps(127.0f), amax));
    const __m256i byte = _mm256_set1_epi32(0xFF);
    __m256i sum = _mm256_setzero_si256();
    for (int p = 0; p < rows / 2; p++) {
        const __m256i k0 = _mm256_cvtps_epi32(_mm256_mul_ps(c[2 * p], inv));
        const __m256i k1 = _mm256_cvtps_epi32(_mm256_mul_ps(c[2 * p + 1], inv));
        sum = _mm256_add_epi32(sum, _mm256_add_epi32(k0, k1));
        const __m256i w = _mm256_or_si256(_mm256_and_si256(k0, byte), _mm256_slli_epi32(_mm256_and_si256(k1, byte), 8));
        _mm256_storeu_si256((__m256i *)q->pair[p], _mm256_or_si256(w, _mm256_slli_epi32(w, 16)));
    }
    _mm256_storeu_ps(q->scale, _mm256_mul_ps(amax, _mm256_set1_ps(1.0f / 127.0f)));
    _mm256_storeu_si256((__m256i *)q->sum_k, sum);
    __m256 mins = _mm256_setzero_ps();
    for (int k = 0; k < rows && m_at != 0; k++) {
        mins = _mm256_fmadd_ps(_mm256_set1_ps(a[k]), halves8(r[k] + m_at, n), mins);
    }
    _mm256_storeu_ps(q->min_sum, mins);
}

#endif

#endif
