/*
 * AVX2 kernel of the column-group down layout (down_cols.h), compiled with -mavx2 -mfma -mf16c (CMakeLists.txt) and
 * reached only through ts_down_cols_add, which asks the CPU first.
 *
 * Outputs are walked in units of 32. Two kept neurons at a time: their code rows are interleaved byte by byte and
 * multiplied by their quantized activations (q_a, q_b) with maddubs, which sums each pair into int16; the sums
 * go to int32, and one conversion to float per unit scales them by S * scale[i] (plus the min term).
 */
#include "down_cols.h"

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>

#define PAIRS_PER_INT16 8 /* 4-bit pair sums within int16: 8 * 2 * 15 * 127 < 32768 */

/* (q_a, q_b) as a byte pair repeated over the register */
static inline __m256i pair_of(int8_t qa, int8_t qb) {
    return _mm256_set1_epi16((short)(uint16_t)((uint8_t)qa | ((uint16_t)(uint8_t)qb << 8)));
}

/* acc[0..3] (outputs 0-7, 8-15, 16-23, 24-31) += the int16 sums lo (outputs 0-15) and hi (16-31) */
static inline void widen_into(__m256i lo, __m256i hi, __m256i acc[4]) {
    acc[0] = _mm256_add_epi32(acc[0], _mm256_cvtepi16_epi32(_mm256_castsi256_si128(lo)));
    acc[1] = _mm256_add_epi32(acc[1], _mm256_cvtepi16_epi32(_mm256_extracti128_si256(lo, 1)));
    acc[2] = _mm256_add_epi32(acc[2], _mm256_cvtepi16_epi32(_mm256_castsi256_si128(hi)));
    acc[3] = _mm256_add_epi32(acc[3], _mm256_cvtepi16_epi32(_mm256_extracti128_si256(hi, 1)));
}

/*
 * 4-bit codes, unit u: 16 bytes per neuron, low nibbles outputs 0-15, high nibbles 16-31. Interleaving two neurons'
 * bytes keeps that split, so one mask and one shift give both neurons' codes for 16 outputs each.
 * acc: outputs 0-7, 8-15, 16-23, 24-31.
 */
static inline void unit_codes4(const uint8_t *const *rows, const __m256i *pairs, int n_pairs, int64_t u, __m256i acc[4]) {
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    for (int p0 = 0; p0 < n_pairs; p0 += PAIRS_PER_INT16) {
        const int p1 = n_pairs - p0 < PAIRS_PER_INT16 ? n_pairs : p0 + PAIRS_PER_INT16;
        __m256i lo = _mm256_setzero_si256(), hi = _mm256_setzero_si256();
        for (int p = p0; p < p1; p++) {
            const __m128i a = _mm_loadu_si128((const __m128i *)(rows[2 * p] + u * 16));
            const __m128i b = _mm_loadu_si128((const __m128i *)(rows[2 * p + 1] + u * 16));
            const __m256i x = _mm256_set_m128i(_mm_unpackhi_epi8(a, b), _mm_unpacklo_epi8(a, b));
            lo = _mm256_add_epi16(lo, _mm256_maddubs_epi16(_mm256_and_si256(x, m4), pairs[p]));
            hi = _mm256_add_epi16(hi, _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(x, 4), m4), pairs[p]));
        }
        widen_into(lo, hi, acc);
    }
}

/* q_a * a + q_b * b per byte pair of x (signed codes: maddubs wants the unsigned operand: |x|, and q with x's sign) */
static inline __m256i signed_pairs(__m256i x, __m256i q) {
    return _mm256_maddubs_epi16(_mm256_abs_epi8(x), _mm256_sign_epi8(q, x));
}

/*
 * 8-bit codes, unit u: 32 bytes per neuron. A pair's sums fill int16, so each pair's sums go to int32 at once
 * (interleaved with zeros and summed by madd). unpack works within 128-bit lanes: the accumulators hold outputs
 * acc[0] {0-3 | 16-19}, acc[1] {4-7 | 20-23}, acc[2] {8-11 | 24-27}, acc[3] {12-15 | 28-31}.
 */
static inline void unit_codes8(const uint8_t *const *rows, const __m256i *pairs, int n_pairs, int64_t u, __m256i acc[4]) {
    const __m256i one = _mm256_set1_epi16(1), zero = _mm256_setzero_si256();
    for (int p = 0; p < n_pairs; p++) {
        const __m256i a = _mm256_loadu_si256((const __m256i *)(rows[2 * p] + u * 32));
        const __m256i b = _mm256_loadu_si256((const __m256i *)(rows[2 * p + 1] + u * 32));
        const __m256i lo = signed_pairs(_mm256_unpacklo_epi8(a, b), pairs[p]);
        const __m256i hi = signed_pairs(_mm256_unpackhi_epi8(a, b), pairs[p]);
        acc[0] = _mm256_add_epi32(acc[0], _mm256_madd_epi16(_mm256_unpacklo_epi16(lo, zero), one));
        acc[1] = _mm256_add_epi32(acc[1], _mm256_madd_epi16(_mm256_unpackhi_epi16(lo, zero), one));
        acc[2] = _mm256_add_epi32(acc[2], _mm256_madd_epi16(_mm256_unpacklo_epi16(hi, zero), one));
        acc[3] = _mm256_add_epi32(acc[3], _mm256_madd_epi16(_mm256_unpackhi_epi16(hi, zero), one));
    }
    /* into output order 0-7, 8-15, 16-23, 24-31 */
    const __m256i a0 = acc[0], a1 = acc[1], a2 = acc[2], a3 = acc[3];
    acc[0] = _mm256_permute2x128_si256(a0, a1, 0x20);
    acc[1] = _mm256_permute2x128_si256(a2, a3, 0x20);
    acc[2] = _mm256_permute2x128_si256(a0, a1, 0x31);
    acc[3] = _mm256_permute2x128_si256(a2, a3, 0x31);
}

static void add_group_avx2(const ts_down_cols_format *f, const uint8_t *group, const int32_t *k, const int8_t *q,
                           int n, float s, int32_t sum_q, int64_t c0, int64_t len, float *out) {
    const uint16_t *scale = (const uint16_t *)group, *min = scale + f->n_embd;
    const size_t code_row = (size_t)f->n_embd * (size_t)f->code_bits / 8, unit_bytes = (size_t)f->code_bits * 4;
    const uint8_t *codes = group + (size_t)f->n_embd * 2 * (f->has_min ? 2 : 1);
    /* pairs of neurons; an odd count's last pair repeats its neuron with activation 0 */
    const uint8_t *rows[TS_DOWN_COLS_GROUP];
    __m256i pairs[TS_DOWN_COLS_GROUP / 2];
    const int n_pairs = (n + 1) / 2;
    for (int p = 0; p < n_pairs; p++) {
        const int b = 2 * p + 1 < n ? 2 * p + 1 : 2 * p;
        rows[2 * p] = codes + (size_t)k[2 * p] * code_row;
        rows[2 * p + 1] = codes + (size_t)k[b] * code_row;
        pairs[p] = pair_of(q[2 * p], b != 2 * p ? q[b] : 0);
    }
    const __m256 sv = _mm256_set1_ps(s);
    const __m256i offset = _mm256_set1_epi32(f->offset * sum_q);
    const __m256 min_term = _mm256_set1_ps(s * (float)sum_q);
    const int64_t u0 = c0 / 32;
    for (int64_t u = u0; u < u0 + len / 32; u++) {
        for (int r = 0; r < 2 * n_pairs; r++) {
            if ((u * unit_bytes) % 64 == 0) {
                _mm_prefetch((const char *)rows[r] + (u + 8) * unit_bytes, _MM_HINT_T0); /* rows are scattered */
            }
        }
        __m256i acc[4] = {_mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256()};
        if (f->code_bits == 8) {
            unit_codes8(rows, pairs, n_pairs, u, acc);
        } else {
            unit_codes4(rows, pairs, n_pairs, u, acc);
        }
        float *o = out + (u - u0) * 32;
        for (int j = 0; j < 4; j++) {
            const __m256 sc = _mm256_mul_ps(sv, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(scale + u * 32 + 8 * j))));
            __m256 v = _mm256_fmadd_ps(sc, _mm256_cvtepi32_ps(_mm256_sub_epi32(acc[j], offset)), _mm256_loadu_ps(o + 8 * j));
            if (f->has_min) {
                v = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(min + u * 32 + 8 * j))), min_term, v);
            }
            _mm256_storeu_ps(o + 8 * j, v);
        }
    }
}

ts_down_cols_group_fn ts_down_cols_group_avx2(void) {
    return add_group_avx2;
}

#else /* not compiled for AVX2 (another architecture) */

ts_down_cols_group_fn ts_down_cols_group_avx2(void) {
    return NULL;
}

#endif
