/*
 * AVX2 kernels of the sparse down projection (compiled with -mavx2 -mfma -mf16c, CMakeLists.txt; reached only
 * through ts_axpy_rows, which asks the CPU first).
 */
#include "axpy_rows.h"

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>
#include <string.h>

/*
 * Float kernels (Q4_1, Q4_K and the float types). Every supported type is walked in units of 32 columns; a unit function
 * adds coef * (the unit's 32 dequantized values) into four 8-float accumulators. Rows are taken GROUP at a
 * time so each output unit is loaded and stored once per group, and the next group's row segments are
 * prefetched: the rows of active neurons are scattered, so the hardware prefetcher cannot guess them.
 * Block layouts are ggml's (ggml-common.h): a fp16 scale (and min) followed by the packed quants.
 */
#define GROUP 4

static float half_at(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, sizeof(h));
    return _cvtsh_ss(h);
}

/* 16 int8 values (low 8 then high 8) into acc[k], acc[k+1]: acc += s * v */
static inline void fma_i8x16(__m128i v, __m256 s, __m256 *acc) {
    acc[0] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(v)), s, acc[0]);
    acc[1] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(v, 8))), s, acc[1]);
}

/* Q4_1: 20-byte blocks {d, m, 16 bytes}: value = d * nibble + m */
static inline void unit_q4_1(const uint8_t *row, int64_t u, float a, __m256 acc[4]) {
    const uint8_t *p = row + u * 20;
    const __m256 s = _mm256_set1_ps(a * half_at(p));
    const __m256 c = _mm256_set1_ps(a * half_at(p + 2));
    const __m128i q = _mm_loadu_si128((const __m128i *)(p + 4));
    const __m128i m4 = _mm_set1_epi8(0x0F);
    __m256 v[4] = {c, c, c, c};
    fma_i8x16(_mm_and_si128(q, m4), s, v); /* nibbles are < 16: signed and unsigned widening agree */
    fma_i8x16(_mm_and_si128(_mm_srli_epi16(q, 4), m4), s, v + 2);
    for (int k = 0; k < 4; k++) {
        acc[k] = _mm256_add_ps(acc[k], v[k]);
    }
}

/*
 * Q4_K: 144-byte super-blocks of 256 {d, dmin, 12 bytes of 6-bit scales and mins, 128 bytes of nibbles}.
 * Sub-block j (32 values) = d * sc_j * nibble - dmin * m_j; sub-blocks 2i and 2i+1 are the low and high
 * nibbles of bytes [32i, 32i + 32).
 */
static inline void scale_min_q4_k(const uint8_t *sc, int j, int *scale, int *min) {
    if (j < 4) {
        *scale = sc[j] & 63;
        *min = sc[j + 4] & 63;
    } else {
        *scale = (sc[j + 4] & 0x0F) | ((sc[j - 4] >> 6) << 4);
        *min = (sc[j + 4] >> 4) | ((sc[j] >> 6) << 4);
    }
}

static inline void unit_q4_k(const uint8_t *row, int64_t u, float a, __m256 acc[4]) {
    const uint8_t *p = row + (u >> 3) * 144;
    const int j = (int)(u & 7);
    int sc, mn;
    scale_min_q4_k(p + 4, j, &sc, &mn);
    const __m256 s = _mm256_set1_ps(a * half_at(p) * (float)sc);
    const __m256 c = _mm256_set1_ps(-a * half_at(p + 2) * (float)mn);
    __m256i q = _mm256_loadu_si256((const __m256i *)(p + 16 + (j >> 1) * 32));
    if (j & 1) {
        q = _mm256_srli_epi16(q, 4);
    }
    q = _mm256_and_si256(q, _mm256_set1_epi8(0x0F));
    __m256 v[4] = {c, c, c, c};
    fma_i8x16(_mm256_castsi256_si128(q), s, v);
    fma_i8x16(_mm256_extracti128_si256(q, 1), s, v + 2);
    for (int k = 0; k < 4; k++) {
        acc[k] = _mm256_add_ps(acc[k], v[k]);
    }
}

static inline void unit_f16(const uint8_t *row, int64_t u, float a, __m256 acc[4]) {
    const __m128i *p = (const __m128i *)(row + u * 64);
    const __m256 s = _mm256_set1_ps(a);
    for (int k = 0; k < 4; k++) {
        acc[k] = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128(p + k)), s, acc[k]);
    }
}

static inline void unit_bf16(const uint8_t *row, int64_t u, float a, __m256 acc[4]) {
    const __m128i *p = (const __m128i *)(row + u * 64);
    const __m256 s = _mm256_set1_ps(a);
    for (int k = 0; k < 4; k++) {
        const __m256i x = _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(p + k)), 16);
        acc[k] = _mm256_fmadd_ps(_mm256_castsi256_ps(x), s, acc[k]);
    }
}

static inline void unit_f32(const uint8_t *row, int64_t u, float a, __m256 acc[4]) {
    const float *p = (const float *)(row + u * 128);
    const __m256 s = _mm256_set1_ps(a);
    for (int k = 0; k < 4; k++) {
        acc[k] = _mm256_fmadd_ps(_mm256_loadu_ps(p + 8 * k), s, acc[k]);
    }
}

static void prefetch_rows(const char *w, size_t row_bytes, size_t offset, const int32_t *idx, int64_t n,
                          size_t seg_bytes) {
    for (int64_t i = 0; i < n; i++) {
        const char *p = w + (size_t)idx[i] * row_bytes + offset;
        for (size_t b = 0; b < seg_bytes; b += 64) {
            _mm_prefetch(p + b, _MM_HINT_T0);
        }
    }
}

/*
 * o[0, 32 * n_units) += sum_i coef[i] * row_i, rows taken GROUP at a time (the last group may be shorter): each
 * output unit is loaded and stored once per group, and the next group's row segments are prefetched meanwhile.
 */
#define DEFINE_AXPY_TILE(name, unit, unit_bytes)                                                                    \
    static inline void add_rows_##name(const uint8_t *const *r, const float *a, int n_rows, int64_t n_units,      \
                                       float *o) {                                                                   \
        for (int64_t u = 0; u < n_units; u++) {                                                                      \
            __m256 acc[4];                                                                                           \
            for (int k = 0; k < 4; k++) {                                                                            \
                acc[k] = _mm256_loadu_ps(o + 32 * u + 8 * k);                                                        \
            }                                                                                                        \
            for (int k = 0; k < n_rows; k++) {                                                                       \
                unit(r[k], u, a[k], acc);                                                                            \
            }                                                                                                        \
            for (int k = 0; k < 4; k++) {                                                                            \
                _mm256_storeu_ps(o + 32 * u + 8 * k, acc[k]);                                                       \
            }                                                                                                        \
        }                                                                                                            \
    }                                                                                                                \
    static void axpy_tile_##name(const char *w, size_t row_bytes, size_t offset, const int32_t *idx,              \
                                 const float *coef, int64_t n_idx, int64_t n_units, float *o) {                     \
        const size_t seg_bytes = (size_t)(n_units * (unit_bytes));                                                   \
        prefetch_rows(w, row_bytes, offset, idx, n_idx < GROUP ? n_idx : GROUP, seg_bytes);                          \
        for (int64_t i = 0; i < n_idx; i += GROUP) {                                                                 \
            const int n = n_idx - i < GROUP ? (int)(n_idx - i) : GROUP;                                              \
            const int64_t next = i + n, ahead = n_idx - next < GROUP ? n_idx - next : GROUP;                         \
            prefetch_rows(w, row_bytes, offset, idx + next, ahead, seg_bytes);                                       \
            const uint8_t *r[GROUP];                                                                                 \
            for (int k = 0; k < n; k++) {                                                                            \
                r[k] = (const uint8_t *)w + (size_t)idx[i + k] * row_bytes + offset;                                 \
            }                                                                                                        \
            if (n == GROUP) {                                                                                        \
                add_rows_##name(r, coef + i, GROUP, n_units, o); /* a constant count the compiler unrolls */         \
            } else {                                                                                                 \
                add_rows_##name(r, coef + i, n, n_units, o);                                                         \
            }                                                                                                        \
        }                                                                                                            \
    }

/*
 * Integer kernels (Q4_0, Q8_0): a row's 32 values in a unit are d * code, so row r adds c_r * code_r with
 * c_r = coef_r * d_r. The c of INT_ROWS rows are quantized together, per unit, to 8 bits: c_r ~ S * k_r with
 * S = max |c| / 127 (ggml quantizes the dense down projection's input to 8 bits per 32 neurons the same way). Then
 * two rows at a time are multiplied with maddubs (codes x k, summed in pairs) and added in integers; one
 * conversion to float per unit and INT_ROWS rows. The error of a value is at most sum_r S / 2 * |code_r|.
 */
#define INT_ROWS 16 /* rows sharing S: 8 pairs, whose 4-bit sums stay within int16 (8 * 2 * 15 * 127 < 32768) */

typedef struct {
    __m256i pair[INT_ROWS / 2]; /* k of rows 2p and 2p + 1 as a byte pair, repeated over the register */
    __m256 scale;               /* S in every lane */
    int32_t sum_k;              /* sum of the k */
} int_coefs;

/* max |v| in every lane */
static inline __m256 max_abs_all(__m256 v0, __m256 v1) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 m = _mm256_max_ps(_mm256_andnot_ps(sign, v0), _mm256_andnot_ps(sign, v1));
    m = _mm256_max_ps(m, _mm256_permute2f128_ps(m, m, 0x01));
    m = _mm256_max_ps(m, _mm256_shuffle_ps(m, m, 0x4E));
    return _mm256_max_ps(m, _mm256_shuffle_ps(m, m, 0xB1));
}

/* int32 k of rows 0-7 -> the byte pairs (k0, k1), (k2, k3), ... each repeated over a register */
static inline void pair_words(__m256i k, __m256i *pair) {
    const __m256i byte = _mm256_set1_epi32(0xFF);
    __m256i w = _mm256_or_si256(_mm256_and_si256(k, byte), _mm256_slli_epi32(_mm256_and_si256(_mm256_srli_epi64(k, 32), byte), 8));
    w = _mm256_or_si256(w, _mm256_slli_epi32(w, 16)); /* lanes 0, 2, 4, 6: the pair's 16 bits twice */
    for (int p = 0; p < 4; p++) {
        pair[p] = _mm256_permutevar8x32_epi32(w, _mm256_set1_epi32(2 * p));
    }
}

/* Quantizes c_r = a_r * d_r (d0, d1: rows 0-7 and 8-15's fp16 bits) of INT_ROWS rows; 0 when every c is 0 (nothing to add). */
static inline int quantize_coefs(const float *a, __m128i d0, __m128i d1, int_coefs *q) {
    const __m256 c0 = _mm256_mul_ps(_mm256_loadu_ps(a), _mm256_cvtph_ps(d0));
    const __m256 c1 = _mm256_mul_ps(_mm256_loadu_ps(a + 8), _mm256_cvtph_ps(d1));
    const __m256 amax = max_abs_all(c0, c1);
    if (_mm256_cvtss_f32(amax) == 0.0f) {
        return 0;
    }
    const __m256 inv = _mm256_div_ps(_mm256_set1_ps(127.0f), amax);
    const __m256i k0 = _mm256_cvtps_epi32(_mm256_mul_ps(c0, inv)), k1 = _mm256_cvtps_epi32(_mm256_mul_ps(c1, inv));
    __m256i sum = _mm256_add_epi32(k0, k1);
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(sum), _mm256_extracti128_si256(sum, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
    q->sum_k = _mm_cvtsi128_si32(s);
    q->scale = _mm256_mul_ps(amax, _mm256_set1_ps(1.0f / 127.0f));
    pair_words(k0, q->pair);
    pair_words(k1, q->pair + 4);
    return 1;
}

/* The fp16 scale bits of 8 rows' unit u (the block's first two bytes) */
static inline __m128i unit_scales(const uint8_t *const *r, int64_t u, size_t block_bytes) {
#define D(k) (*(const int16_t *)__builtin_assume_aligned(r[k] + (size_t)u * block_bytes, 2))
    return _mm_setr_epi16(D(0), D(1), D(2), D(3), D(4), D(5), D(6), D(7));
#undef D
}

/* o[0, 8) += s * v for 8 int32 v */
static inline void add_scaled(float *o, __m256i v, __m256 s) {
    _mm256_storeu_ps(o, _mm256_fmadd_ps(_mm256_cvtepi32_ps(v), s, _mm256_loadu_ps(o)));
}

/* Q4_0 unit of INT_ROWS rows: S * sum_r k_r * (nibble_r - 8); the pairs interleave two rows' bytes, so one mask and
 * one shift give both rows' low nibbles (columns 0-15) and high nibbles (columns 16-31). */
static inline void int_unit_q4_0(const uint8_t *const *r, int64_t u, const int_coefs *q, float *o) {
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    __m256i lo = _mm256_setzero_si256(), hi = _mm256_setzero_si256();
    for (int p = 0; p < INT_ROWS / 2; p++) {
        const __m128i qa = _mm_loadu_si128((const __m128i *)(r[2 * p] + u * 18 + 2));
        const __m128i qb = _mm_loadu_si128((const __m128i *)(r[2 * p + 1] + u * 18 + 2));
        const __m256i x = _mm256_set_m128i(_mm_unpackhi_epi8(qa, qb), _mm_unpacklo_epi8(qa, qb));
        lo = _mm256_add_epi16(lo, _mm256_maddubs_epi16(_mm256_and_si256(x, m4), q->pair[p]));
        hi = _mm256_add_epi16(hi, _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(x, 4), m4), q->pair[p]));
    }
    const __m256i offset = _mm256_set1_epi32(8 * q->sum_k);
    add_scaled(o, _mm256_sub_epi32(_mm256_cvtepi16_epi32(_mm256_castsi256_si128(lo)), offset), q->scale);
    add_scaled(o + 8, _mm256_sub_epi32(_mm256_cvtepi16_epi32(_mm256_extracti128_si256(lo, 1)), offset), q->scale);
    add_scaled(o + 16, _mm256_sub_epi32(_mm256_cvtepi16_epi32(_mm256_castsi256_si128(hi)), offset), q->scale);
    add_scaled(o + 24, _mm256_sub_epi32(_mm256_cvtepi16_epi32(_mm256_extracti128_si256(hi, 1)), offset), q->scale);
}

/* k_a * qa + k_b * qb per byte pair of x (signed codes: maddubs wants the unsigned operand, so |x| and k with x's sign) */
static inline __m256i signed_pairs(__m256i x, __m256i k) {
    return _mm256_maddubs_epi16(_mm256_abs_epi8(x), _mm256_sign_epi8(k, x));
}

/*
 * Q8_0 unit of INT_ROWS rows: S * sum_r k_r * code_r. A pair's sums fill int16, so two pairs' sums are interleaved
 * and added into int32 with madd. unpack works within 128-bit lanes, so the accumulators hold columns
 * acc[0] {0-3 | 16-19}, acc[1] {4-7 | 20-23}, acc[2] {8-11 | 24-27}, acc[3] {12-15 | 28-31}.
 */
static inline void int_unit_q8_0(const uint8_t *const *r, int64_t u, const int_coefs *q, float *o) {
    const __m256i one = _mm256_set1_epi16(1);
    __m256i acc[4] = {_mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256()};
    for (int p = 0; p < INT_ROWS / 2; p += 2) {
        __m256i lo[2], hi[2];
        for (int h = 0; h < 2; h++) {
            const __m256i qa = _mm256_loadu_si256((const __m256i *)(r[2 * (p + h)] + u * 34 + 2));
            const __m256i qb = _mm256_loadu_si256((const __m256i *)(r[2 * (p + h) + 1] + u * 34 + 2));
            lo[h] = signed_pairs(_mm256_unpacklo_epi8(qa, qb), q->pair[p + h]); /* columns 0-7 | 16-23 */
            hi[h] = signed_pairs(_mm256_unpackhi_epi8(qa, qb), q->pair[p + h]); /* columns 8-15 | 24-31 */
        }
        acc[0] = _mm256_add_epi32(acc[0], _mm256_madd_epi16(_mm256_unpacklo_epi16(lo[0], lo[1]), one));
        acc[1] = _mm256_add_epi32(acc[1], _mm256_madd_epi16(_mm256_unpackhi_epi16(lo[0], lo[1]), one));
        acc[2] = _mm256_add_epi32(acc[2], _mm256_madd_epi16(_mm256_unpacklo_epi16(hi[0], hi[1]), one));
        acc[3] = _mm256_add_epi32(acc[3], _mm256_madd_epi16(_mm256_unpackhi_epi16(hi[0], hi[1]), one));
    }
    add_scaled(o, _mm256_permute2x128_si256(acc[0], acc[1], 0x20), q->scale);
    add_scaled(o + 8, _mm256_permute2x128_si256(acc[2], acc[3], 0x20), q->scale);
    add_scaled(o + 16, _mm256_permute2x128_si256(acc[0], acc[1], 0x31), q->scale);
    add_scaled(o + 24, _mm256_permute2x128_si256(acc[2], acc[3], 0x31), q->scale);
}

/* INT_ROWS rows at a time (a short last group padded with coefficient 0), the next group prefetched meanwhile. */
#define DEFINE_INT_TILE(name, unit, block_bytes)                                                                     \
    static void axpy_tile_##name(const char *w, size_t row_bytes, size_t offset, const int32_t *idx,               \
                                 const float *coef, int64_t n_idx, int64_t n_units, float *o) {                      \
        const size_t seg_bytes = (size_t)n_units * (block_bytes);                                                   \
        prefetch_rows(w, row_bytes, offset, idx, n_idx < INT_ROWS ? n_idx : INT_ROWS, seg_bytes);                   \
        for (int64_t i = 0; i < n_idx; i += INT_ROWS) {                                                              \
            const int n = n_idx - i < INT_ROWS ? (int)(n_idx - i) : INT_ROWS;                                        \
            const int64_t next = i + n, ahead = n_idx - next < INT_ROWS ? n_idx - next : INT_ROWS;                   \
            prefetch_rows(w, row_bytes, offset, idx + next, ahead, seg_bytes);                                       \
            const uint8_t *r[INT_ROWS];                                                                              \
            float a[INT_ROWS];                                                                                       \
            for (int k = 0; k < INT_ROWS; k++) {                                                                     \
                r[k] = (const uint8_t *)w + (size_t)idx[i + (k < n ? k : 0)] * row_bytes + offset;                   \
                a[k] = k < n ? coef[i + k] : 0.0f;                                                                   \
            }                                                                                                        \
            for (int64_t u = 0; u < n_units; u++) {                                                                  \
                int_coefs q;                                                                                         \
                if (quantize_coefs(a, unit_scales(r, u, (block_bytes)), unit_scales(r + 8, u, (block_bytes)), &q)) {  \
                    unit(r, u, &q, o + 32 * u);                                                                      \
                }                                                                                                    \
            }                                                                                                        \
        }                                                                                                            \
    }

DEFINE_INT_TILE(q4_0, int_unit_q4_0, 18)
DEFINE_INT_TILE(q8_0, int_unit_q8_0, 34)

/* unit_bytes: bytes per 32 columns (Q4_K: 144 per 256) */
DEFINE_AXPY_TILE(q4_1, unit_q4_1, 20)
DEFINE_AXPY_TILE(q4_k, unit_q4_k, 18)
DEFINE_AXPY_TILE(f16, unit_f16, 64)
DEFINE_AXPY_TILE(bf16, unit_bf16, 64)
DEFINE_AXPY_TILE(f32, unit_f32, 128)

ts_axpy_tile_fn ts_axpy_tile_avx2(enum ggml_type type) {
    switch (type) {
    case GGML_TYPE_Q4_0: return axpy_tile_q4_0;
    case GGML_TYPE_Q4_1: return axpy_tile_q4_1;
    case GGML_TYPE_Q8_0: return axpy_tile_q8_0;
    case GGML_TYPE_Q4_K: return axpy_tile_q4_k;
    case GGML_TYPE_F16: return axpy_tile_f16;
    case GGML_TYPE_BF16: return axpy_tile_bf16;
    case GGML_TYPE_F32: return axpy_tile_f32;
    default: return NULL;
    }
}

#else /* not compiled for AVX2 (another architecture) */

ts_axpy_tile_fn ts_axpy_tile_avx2(enum ggml_type type) {
    (void)type;
    return NULL;
}

#endif
