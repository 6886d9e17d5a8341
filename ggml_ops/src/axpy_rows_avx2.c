/*
 * AVX2 kernels of the sparse down projection (compiled with -mavx2 -mfma -mf16c, CMakeLists.txt; reached only
 * through ts_axpy_rows, which asks the CPU first).
 */
#include "axpy_rows.h"
#include "axpy_q4_k_coefs.h"
#include "axpy_q8_0_sums.h"
#include "axpy_split_coefs.h"
#include "axpy_tile_driver.h"
#include "q4_k_split.h"

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

/*
 * o[0, 32 * n_units) += sum_i coef[i] * row_i, rows taken GROUP at a time (the last group may be shorter): each
 * output unit is loaded and stored once per group, and the next group's row segments are prefetched meanwhile
 * (the driver: axpy_tile_driver.h).
 */
#define DEFINE_AXPY_TILE(name, unit, unit_bytes)                                                                    \
    static inline void add_rows_##name(const uint8_t *const *r, const float *a, int n_rows, int64_t n_units,      \
                                       float *o, ts_row_prefetcher *pf) {                                            \
        for (int64_t u = 0; u < n_units; u++) {                                                                      \
            ts_prefetch_upto(pf, (size_t)(u + 1) * (unit_bytes));                                                   \
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
    TS_DEFINE_FLOAT_TILE(name, unit_bytes, GROUP)

/*
 * Integer kernels (Q4_0, Q4_1, Q8_0, Q4_K): a row's 32 values in a unit are d * code (+ a min), so row r adds
 * c_r * code_r with c_r = coef_r * d_r. The c of INT_ROWS rows are quantized together, per unit, to 8 bits:
 * c_r ~ S * k_r with S = max |c| / 127 (ggml quantizes the dense down projection's input to 8 bits per 32 neurons
 * the same way). Then two rows at a time are multiplied with maddubs (codes x k, summed in pairs) and added in
 * integers; one conversion to float per unit and INT_ROWS rows. The error of a value is at most
 * sum_r S / 2 * |code_r - offset|; the mins (Q4_1, Q4_K) are added in float, exactly.
 */
#define INT_ROWS 16 /* rows sharing S: 8 pairs, whose 4-bit sums stay within int16 (8 * 2 * 15 * 127 < 32768) */

typedef struct {
    __m256i pair[INT_ROWS / 2]; /* k of rows 2p and 2p + 1 as a byte pair, repeated over the register */
    __m256 scale;               /* S in every lane */
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

/* Quantizes c (rows 0-7 in c0, 8-15 in c1); 0 when every c is 0 (no codes to add). */
static inline int quantize_coefs(__m256 c0, __m256 c1, int_coefs *q) {
    const __m256 amax = max_abs_all(c0, c1);
    if (_mm256_cvtss_f32(amax) == 0.0f) {
        return 0;
    }
    const __m256 inv = _mm256_div_ps(_mm256_set1_ps(127.0f), amax);
    const __m256i k0 = _mm256_cvtps_epi32(_mm256_mul_ps(c0, inv)), k1 = _mm256_cvtps_epi32(_mm256_mul_ps(c1, inv));
    q->scale = _mm256_mul_ps(amax, _mm256_set1_ps(1.0f / 127.0f));
    pair_words(k0, q->pair);
    pair_words(k1, q->pair + 4);
    return 1;
}

/* o[0, 8) += s * v + m for 8 int32 v */
static inline void add_scaled(float *o, __m256i v, __m256 s, __m256 m) {
    _mm256_storeu_ps(o, _mm256_add_ps(_mm256_fmadd_ps(_mm256_cvtepi32_ps(v), s, _mm256_loadu_ps(o)), m));
}

/* Widens the 16 int16 sums of outputs {0-15} and adds them scaled (+ m). */
static inline void add_sums16(float *o, __m256i v, __m256 s, __m256 m) {
    add_scaled(o, _mm256_cvtepi16_epi32(_mm256_castsi256_si128(v)), s, m);
    add_scaled(o + 8, _mm256_cvtepi16_epi32(_mm256_extracti128_si256(v, 1)), s, m);
}

/* k_a * qa + k_b * qb per byte pair of x (signed codes: maddubs wants the unsigned operand, so |x| and k with x's sign) */
static inline __m256i signed_pairs(__m256i x, __m256i k) {
    return _mm256_maddubs_epi16(_mm256_abs_epi8(x), _mm256_sign_epi8(k, x));
}

/*
 * Q8_0 {d, 32 int8}: S * sum_r k_r * code_r. A pair's sums fill int16, so two pairs' sums are interleaved and added
 * into int32 with madd. unpack works within 128-bit lanes, so the accumulators hold outputs
 * acc[0] {0-3 | 16-19}, acc[1] {4-7 | 20-23}, acc[2] {8-11 | 24-27}, acc[3] {12-15 | 28-31}.
 */
static inline void int_unit_q8_0(const uint8_t *const *r, size_t at, const int_coefs *q, float *o) {
    const __m256i one = _mm256_set1_epi16(1);
    __m256i acc[4] = {_mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256()};
    for (int p = 0; p < INT_ROWS / 2; p += 2) {
        __m256i lo[2], hi[2];
        for (int h = 0; h < 2; h++) {
            const __m256i qa = _mm256_loadu_si256((const __m256i *)(r[2 * (p + h)] + at));
            const __m256i qb = _mm256_loadu_si256((const __m256i *)(r[2 * (p + h) + 1] + at));
            lo[h] = signed_pairs(_mm256_unpacklo_epi8(qa, qb), q->pair[p + h]); /* outputs 0-7 | 16-23 */
            hi[h] = signed_pairs(_mm256_unpackhi_epi8(qa, qb), q->pair[p + h]); /* outputs 8-15 | 24-31 */
        }
        acc[0] = _mm256_add_epi32(acc[0], _mm256_madd_epi16(_mm256_unpacklo_epi16(lo[0], lo[1]), one));
        acc[1] = _mm256_add_epi32(acc[1], _mm256_madd_epi16(_mm256_unpackhi_epi16(lo[0], lo[1]), one));
        acc[2] = _mm256_add_epi32(acc[2], _mm256_madd_epi16(_mm256_unpacklo_epi16(hi[0], hi[1]), one));
        acc[3] = _mm256_add_epi32(acc[3], _mm256_madd_epi16(_mm256_unpackhi_epi16(hi[0], hi[1]), one));
    }
    ts_add_q8_0_sums(o, acc, q->scale);
}

/* 8 rows' fp16 values at byte `at` of each row (a block's scale) as floats */
static inline __m256 halves_at(const uint8_t *const *r, size_t at) {
#define H(k) (*(const int16_t *)__builtin_assume_aligned(r[k] + at, 2))
    return _mm256_cvtph_ps(_mm_setr_epi16(H(0), H(1), H(2), H(3), H(4), H(5), H(6), H(7)));
#undef H
}

/*
 * Q8_0 reads ggml's layout: c = a * d of the unit's block (scale at byte `at` of each row), one unit at a time. (In
 * the split layout below its kernel computed 1.3x faster from cache but read DRAM 0.8x as fast on a Zen 3.)
 */
static inline int block_coefs(const uint8_t *const *r, const float *a, size_t at, int_coefs *q) {
    return quantize_coefs(_mm256_mul_ps(_mm256_loadu_ps(a), halves_at(r, at)),
                          _mm256_mul_ps(_mm256_loadu_ps(a + 8), halves_at(r + 8, at)), q);
}

static void add_group_q8_0(const uint8_t *const *r, const float *a, int64_t n_units, float *o,
                           ts_row_prefetcher *pf) {
    for (int64_t u = 0; u < n_units; u++) {
        ts_prefetch_upto(pf, (size_t)(u + 1) * 34);
        int_coefs q;
        if (block_coefs(r, a, (size_t)u * 34, &q)) {
            int_unit_q8_0(r, (size_t)u * 34 + 2, &q, o + 32 * u);
        }
    }
}

/*
 * Q4_0 and Q4_1 read rows in the split layout (axpy_rows.h): 8 units' coefficients are quantized at once
 * (axpy_split_coefs.h), then the units add their codes two at a time: in the split layout a row's quants of
 * consecutive units are adjacent, so one 32-byte load per row holds both units' and the byte interleaves keep unit j
 * in the low 128-bit lane and unit j + 1 in the high one - no lane-crossing step per row pair (as the AVX-512 kernel
 * takes four units). Per unit: S * sum_r k_r * (nibble_r - offset) (+ sum_r coef_r * m_r); byte b of a unit holds
 * value b in its low nibble and value b + 16 in its high one.
 */
static inline void split_units(const uint8_t *const *r, size_t at, const split_coefs *q, int j, int two, int offset,
                               int has_min, float *o) {
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    const int j1 = two ? j + 1 : j;
    const __m256i lanes = _mm256_setr_epi32(j, j, j, j, j1, j1, j1, j1);
    /* sum[i]: values 8i .. 8i + 7 of unit j (low lane) and of unit j + 1 (high lane) */
    __m256i sum[4] = {_mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256()};
    for (int p = 0; p < SPLIT_ROWS / 2; p++) {
        const __m256i k = _mm256_permutevar8x32_epi32(_mm256_loadu_si256((const __m256i *)q->pair[p]), lanes);
        const uint8_t *ra = r[2 * p] + at, *rb = r[2 * p + 1] + at;
        const __m256i qa = two ? _mm256_loadu_si256((const __m256i *)ra)
                               : _mm256_zextsi128_si256(_mm_loadu_si128((const __m128i *)ra));
        const __m256i qb = two ? _mm256_loadu_si256((const __m256i *)rb)
                               : _mm256_zextsi128_si256(_mm_loadu_si128((const __m128i *)rb));
        const __m256i lo = _mm256_unpacklo_epi8(qa, qb), hi = _mm256_unpackhi_epi8(qa, qb);
        sum[0] = _mm256_add_epi16(sum[0], _mm256_maddubs_epi16(_mm256_and_si256(lo, m4), k));
        sum[1] = _mm256_add_epi16(sum[1], _mm256_maddubs_epi16(_mm256_and_si256(hi, m4), k));
        sum[2] = _mm256_add_epi16(sum[2], _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(lo, 4), m4), k));
        sum[3] = _mm256_add_epi16(sum[3], _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(hi, 4), m4), k));
    }
    /* the offset taken off in int16: |sum| <= 8 * 15 * 127 and |offset * sum_k| <= 8 * 8 * 127, so the difference fits */
    const __m256i off = _mm256_set_m128i(_mm_set1_epi16((int16_t)split_offset(q, j1, offset)),
                                         _mm_set1_epi16((int16_t)split_offset(q, j, offset)));
    const __m256 s0 = _mm256_set1_ps(q->scale[j]), s1 = _mm256_set1_ps(q->scale[j1]);
    const __m256 m0 = _mm256_set1_ps(q->min_sum[j]), m1 = _mm256_set1_ps(q->min_sum[j1]);
    for (int i = 0; i < 4; i++) {
        const __m256i v = _mm256_sub_epi16(sum[i], off);
        __m256 x = _mm256_cvtepi32_ps(_mm256_cvtepi16_epi32(_mm256_castsi256_si128(v)));
        x = _mm256_fmadd_ps(x, s0, _mm256_loadu_ps(o + 8 * i));
        _mm256_storeu_ps(o + 8 * i, has_min ? _mm256_add_ps(x, m0) : x);
        if (two) {
            x = _mm256_cvtepi32_ps(_mm256_cvtepi16_epi32(_mm256_extracti128_si256(v, 1)));
            x = _mm256_fmadd_ps(x, s1, _mm256_loadu_ps(o + 32 + 8 * i));
            _mm256_storeu_ps(o + 32 + 8 * i, has_min ? _mm256_add_ps(x, m1) : x);
        }
    }
}

/* Units [u0, u0 + n_units) of SPLIT_ROWS split rows of a 4-bit 32-value block type (16 bytes of quants) with
 * `n_heads` header arrays per group of 8 blocks (1: d; 2: d and m) and the codes' offset (Q4_0 8, Q4_1 0). */
static inline void add_split(const uint8_t *const *r, const float *a, int64_t u0, int64_t n_units, int64_t row_units,
                             float *o, ts_row_prefetcher *pf, int n_heads, int offset) {
    const size_t block = (size_t)(2 * n_heads + 16);
    const int64_t start = u0 / TS_SPLIT_GROUP * TS_SPLIT_GROUP, end = u0 + n_units;
    for (int64_t u = u0; u < end;) {
        const ts_split_group g = ts_split_group_at(u, end, row_units);
        const int c = g.c, j0 = g.j0, n = g.n;
        const size_t base = (size_t)g.first * block, quants = base + (size_t)(2 * n_heads * c);
        split_coefs q;
        split_quantize(r, a, SPLIT_ROWS, base + 2 * (size_t)j0, n_heads == 2 ? base + 2 * (size_t)(c + j0) : 0, n, &q);
        for (int j = 0; j < n; j += 2) {
            ts_prefetch_upto(pf, (size_t)(u + j + 2 - start) * block); /* a line at a time: bursts overrun */
            const int two = j + 1 < n;
            if (n_heads == 1 && q.scale[j] == 0.0f && (!two || q.scale[j + 1] == 0.0f)) {
                continue; /* every k is 0 and there are no mins: nothing to add */
            }
            split_units(r, quants + (size_t)(j0 + j) * 16, &q, j, two, offset, n_heads == 2, o + 32 * (u - u0 + j));
        }
        u += n;
    }
}

static void add_split_q4_0(const uint8_t *const *r, const float *a, int64_t u0, int64_t n_units, int64_t row_units,
                           float *o, ts_row_prefetcher *pf) {
    add_split(r, a, u0, n_units, row_units, o, pf, 1, 8);
}

static void add_split_q4_1(const uint8_t *const *r, const float *a, int64_t u0, int64_t n_units, int64_t row_units,
                           float *o, ts_row_prefetcher *pf) {
    add_split(r, a, u0, n_units, row_units, o, pf, 2, 0);
}

/*
 * Q4_K rows in the down layout (q4_k_split.h: ts_q4_k_rows_down): the coefficients of Q4_K_ROWS rows per super-block
 * (axpy_q4_k_coefs.h), then 32 bytes of each row at a time, values 16v .. 16v + 15 of sub-blocks 4h .. 4h + 3 (half h,
 * v = its first or second 32 bytes): a row pair's bytes interleaved (unpacklo, unpackhi) and split into nibbles give
 * them in order, each beside the pair's coefficient of its sub-block (a broadcast).
 */
static inline void quarter_q4_k(const uint8_t *const *r, size_t at, const q4_k_lanes *q, int h, float *o) {
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    __m256i s0 = _mm256_setzero_si256(), s1 = s0, s2 = s0, s3 = s0; /* sub-blocks 4h .. 4h + 3 */
#pragma GCC unroll 1
    for (int p = 0; p < Q4_K_ROWS / 2; p++) {
        const __m256i qa = _mm256_loadu_si256((const __m256i *)(r[2 * p] + at));
        const __m256i qb = _mm256_loadu_si256((const __m256i *)(r[2 * p + 1] + at));
        /* interleaved first, then split into nibbles (the 16-bit shift's bits from the neighbouring byte fall
         * outside the mask) */
        const __m256i il = _mm256_unpacklo_epi8(qa, qb), ih = _mm256_unpackhi_epi8(qa, qb);
        const int32_t *k = &q->pair[p][4 * h];
        s0 = _mm256_add_epi16(s0, _mm256_maddubs_epi16(_mm256_and_si256(il, m4), _mm256_set1_epi32(k[0])));
        s1 = _mm256_add_epi16(s1, _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(il, 4), m4), _mm256_set1_epi32(k[1])));
        s2 = _mm256_add_epi16(s2, _mm256_maddubs_epi16(_mm256_and_si256(ih, m4), _mm256_set1_epi32(k[2])));
        s3 = _mm256_add_epi16(s3, _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(ih, 4), m4), _mm256_set1_epi32(k[3])));
    }
    const __m256i sums[4] = {s0, s1, s2, s3};
    for (int u = 0; u < 4; u++) {
        const int j = 4 * h + u;
        float *ou = o + 32 * u;
        if (q->scale[j] == 0.0f) { /* no codes to add (their k are 0): only the mins */
            for (int k = 0; k < 16; k++) {
                ou[k] += q->min_sum[j];
            }
            continue;
        }
        add_sums16(ou, sums[u], _mm256_set1_ps(q->scale[j]), _mm256_set1_ps(q->min_sum[j]));
    }
}

/* one super-block (q4_k_block_fn): its four quarters, half c / 2 and its 32 bytes c % 2 */
static inline void block_q4_k(const uint8_t *const *r, size_t at, const q4_k_lanes *q, float *o) {
    for (int c = 0; c < 4; c++) {
        quarter_q4_k(r, at + 32 * (size_t)c, q, c / 2, o + 128 * (c / 2) + 16 * (c % 2));
    }
}

static void add_split_q4_k(const uint8_t *const *r, const float *a, int64_t b0, int64_t n_blocks, int64_t row_blocks,
                           float *o, ts_row_prefetcher *pf) {
    q4_k_add_blocks(r, a, b0, n_blocks, row_blocks, o, pf, block_q4_k);
}

/* SPLIT_ROWS or INT_ROWS rows per group, through the shared drivers (axpy_tile_driver.h) */
TS_DEFINE_SPLIT_TILE(q4_0, 18, 1, SPLIT_ROWS)
TS_DEFINE_SPLIT_TILE(q4_1, 20, 1, SPLIT_ROWS)
TS_DEFINE_INT_TILE(q8_0, 34, INT_ROWS)
TS_DEFINE_SPLIT_TILE(q4_k, TS_Q4_K_BYTES, 8, Q4_K_ROWS)

/* unit_bytes: bytes per 32 columns (Q4_K: 144 per 256) */
DEFINE_AXPY_TILE(f16, unit_f16, 64)
DEFINE_AXPY_TILE(bf16, unit_bf16, 64)
DEFINE_AXPY_TILE(f32, unit_f32, 128)

ts_axpy_kernel ts_axpy_kernel_avx2(enum ggml_type type) {
    switch (type) {
    case GGML_TYPE_Q4_0: return (ts_axpy_kernel){axpy_tile_q4_0, TS_ROWS_SPLIT};
    case GGML_TYPE_Q4_1: return (ts_axpy_kernel){axpy_tile_q4_1, TS_ROWS_SPLIT};
    case GGML_TYPE_Q8_0: return (ts_axpy_kernel){axpy_tile_q8_0, TS_ROWS_GGML};
    case GGML_TYPE_Q4_K: return (ts_axpy_kernel){axpy_tile_q4_k, TS_ROWS_Q4_K_DOWN};
    case GGML_TYPE_F16: return (ts_axpy_kernel){axpy_tile_f16, TS_ROWS_GGML};
    case GGML_TYPE_BF16: return (ts_axpy_kernel){axpy_tile_bf16, TS_ROWS_GGML};
    case GGML_TYPE_F32: return (ts_axpy_kernel){axpy_tile_f32, TS_ROWS_GGML};
    default: return (ts_axpy_kernel){NULL, TS_ROWS_GGML};
    }
}

#else /* not compiled for AVX2 (another architecture) */

ts_axpy_kernel ts_axpy_kernel_avx2(enum ggml_type type) {
    (void)type;
    return (ts_axpy_kernel){NULL, TS_ROWS_GGML};
}

#endif
