/*
 * AVX-512 kernels of the sparse down projection for Q4_0 rows in the split layout (axpy_rows.h), Q4_K rows in the
 * down layout (q4_k_split.h) and Q8_0 rows in ggml's (below), compiled with -mavx512f -mavx512bw -mavx512vnni
 * (CMakeLists.txt) and reached only through ts_axpy_rows, which asks the CPU first. The same arithmetic as the AVX2
 * kernels (axpy_rows_avx2.c: a group's rows' coefficients quantized to 8 bits per unit of 32 columns,
 * axpy_split_coefs.h; codes summed in int16 in row pairs with maddubs), four units per instruction: in the split
 * layout a row's quants of consecutive units are adjacent. Q4_0 takes SPLIT_ROWS_AVX512 = 16 rows per group, twice
 * the AVX2 kernel's: a group's conversion of its int16 sums to float outputs then serves twice the rows (Zen 4, one
 * thread, rows in L2: 19.7 -> 24.8 GB/s; the Mixtral twin decoded 0.94-1.09x as fast in 6 alternating pairs, median
 * 58.6 -> 59.6 tok/s). Q4_1 keeps the AVX2 kernel: the Q4_0 kernel here extended by the mins ran its FFN layer's down
 * 0.72-0.77x as fast on a Zen 5 (docs/speed.md, 2026-12-07).
 */
#include "axpy_rows.h"

#include "axpy_q4_k_coefs.h"
#include "axpy_q8_0_sums.h"
#include "axpy_split_coefs.h"
#include "axpy_tile_driver.h"
#include "q4_k_split.h"

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>

_Static_assert(SPLIT_ROWS_AVX512 / 2 * 2 * 15 * 127 < 32768, "a group's int16 sums of 4-bit codes times k would overflow");

/* o[0, 16) += s * (v - off) for 16 int16 v */
static inline void add_scaled16(float *o, __m256i v, __m512i off, __m512 s) {
    const __m512i w = _mm512_sub_epi32(_mm512_cvtepi16_epi32(v), off);
    _mm512_storeu_ps(o, _mm512_fmadd_ps(_mm512_cvtepi32_ps(w), s, _mm512_loadu_ps(o)));
}

/*
 * Units j .. j + n - 1 (n <= 4) of the group's SPLIT_ROWS_AVX512 rows, quants at byte `at` of each row: sum_r k_r *
 * (nibble_r - 8), times S, into the units' 32 n outputs. In the split layout a row's 4 units are 64 adjacent bytes;
 * a row pair's two loads interleaved byte by byte give, in 128-bit lane L, unit j + L: its bytes 0-7 (unpacklo) or
 * 8-15 (unpackhi), the two rows' byte k side by side. Byte k holds value k (low nibble) and k + 16 (high), so the
 * four sums hold, in lane L, the unit's values 0-7, 8-15, 16-23 and 24-31 as int16. Loads, interleaves and each pair's
 * k take no lane-crossing step per unit (2 units per instruction before 2026-12-02 built them from 128-bit halves).
 */
static inline void four_units_q4_0(const uint8_t *const *r, size_t at, const split_coefs *q, int j, int n, float *o) {
    const __mmask64 bytes = n == 4 ? ~(__mmask64)0 : ((__mmask64)1 << (16 * n)) - 1;
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    const __m512i unit_of_lane = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
    __m512i v0 = _mm512_setzero_si512(), v8 = v0, v16 = v0, v24 = v0;
    for (int p = 0; p < SPLIT_ROWS_AVX512 / 2; p++) {
        const __m512i qa = _mm512_maskz_loadu_epi8(bytes, r[2 * p] + at);
        const __m512i qb = _mm512_maskz_loadu_epi8(bytes, r[2 * p + 1] + at);
        const __m512i lo = _mm512_unpacklo_epi8(qa, qb), hi = _mm512_unpackhi_epi8(qa, qb);
        /* the pair's k of units j .. j + 3, one per lane (split_quantize fills 8 units: j + 3 < 8) */
        const __m512i k = _mm512_permutexvar_epi32(unit_of_lane,
                                                   _mm512_castsi128_si512(_mm_loadu_si128((const __m128i *)&q->pair[p][j])));
        v0 = _mm512_add_epi16(v0, _mm512_maddubs_epi16(_mm512_and_si512(lo, m4), k));
        v16 = _mm512_add_epi16(v16, _mm512_maddubs_epi16(_mm512_and_si512(_mm512_srli_epi16(lo, 4), m4), k));
        v8 = _mm512_add_epi16(v8, _mm512_maddubs_epi16(_mm512_and_si512(hi, m4), k));
        v24 = _mm512_add_epi16(v24, _mm512_maddubs_epi16(_mm512_and_si512(_mm512_srli_epi16(hi, 4), m4), k));
    }
    /* [unit L values 0-15 | unit L+1 values 0-15] (and 16-31) for L = 0 and 2 */
    const __m512i pick01 = _mm512_setr_epi64(0, 1, 8, 9, 2, 3, 10, 11), pick23 = _mm512_setr_epi64(4, 5, 12, 13, 6, 7, 14, 15);
    const __m512i first[2] = {_mm512_permutex2var_epi64(v0, pick01, v8), _mm512_permutex2var_epi64(v0, pick23, v8)};
    const __m512i second[2] = {_mm512_permutex2var_epi64(v16, pick01, v24), _mm512_permutex2var_epi64(v16, pick23, v24)};
    for (int u = 0; u < n; u++) {
        const int jj = j + u;
        if (q->scale[jj] == 0.0f) {
            continue; /* no codes to add */
        }
        const __m512i off = _mm512_set1_epi32(split_offset(q, jj, 8));
        const __m512 s = _mm512_set1_ps(q->scale[jj]);
        const __m512i a = first[u / 2], b = second[u / 2];
        add_scaled16(o + 32 * u, u & 1 ? _mm512_extracti64x4_epi64(a, 1) : _mm512_castsi512_si256(a), off, s);
        add_scaled16(o + 32 * u + 16, u & 1 ? _mm512_extracti64x4_epi64(b, 1) : _mm512_castsi512_si256(b), off, s);
    }
}

/* Units [u0, u0 + n_units) of SPLIT_ROWS_AVX512 split Q4_0 rows (per group of 8 blocks: their d, then their quants). */
static void add_split_q4_0(const uint8_t *const *r, const float *a, int64_t u0, int64_t n_units, int64_t row_units,
                           float *o, ts_row_prefetcher *pf) {
    const int64_t start = u0 / TS_SPLIT_GROUP * TS_SPLIT_GROUP, end = u0 + n_units;
    for (int64_t u = u0; u < end;) {
        const ts_split_group g = ts_split_group_at(u, end, row_units);
        const int j0 = g.j0, n = g.n;
        const size_t base = (size_t)g.first * 18, quants = base + 2 * (size_t)g.c;
        split_coefs q;
        split_quantize(r, a, SPLIT_ROWS_AVX512, base + 2 * (size_t)j0, 0, n, &q);
        for (int j = 0; j < n; j += 4) {
            ts_prefetch_upto(pf, (size_t)(u + j + 4 - start) * 18); /* a line at a time: bursts overrun */
            four_units_q4_0(r, quants + (size_t)(j0 + j) * 16, &q, j, n - j < 4 ? n - j : 4, o + 32 * (u - u0 + j));
        }
        u += n;
    }
}

/* o[0, 32) += s * v + m for 32 int16 v */
static inline void add_scaled32(float *o, __m512i v, __m512 s, __m512 m) {
    const __m512 lo = _mm512_cvtepi32_ps(_mm512_cvtepi16_epi32(_mm512_castsi512_si256(v)));
    const __m512 hi = _mm512_cvtepi32_ps(_mm512_cvtepi16_epi32(_mm512_extracti64x4_epi64(v, 1)));
    _mm512_storeu_ps(o, _mm512_add_ps(_mm512_fmadd_ps(lo, s, _mm512_loadu_ps(o)), m));
    _mm512_storeu_ps(o + 16, _mm512_add_ps(_mm512_fmadd_ps(hi, s, _mm512_loadu_ps(o + 16)), m));
}

/*
 * Q4_K rows in the down layout (q4_k_split.h: ts_q4_k_rows_down), Q4_K_ROWS rows per group with the AVX2 kernel's
 * coefficients (axpy_q4_k_coefs.h). Each 64 bytes of a super-block's quants hold sub-blocks 4h to 4h + 3: a row
 * pair's bytes interleaved (unpacklo, unpackhi) and split into nibbles give each of them, values 0-31 in order, beside
 * the pair's coefficient of that sub-block broadcast from memory.
 */
static inline void half_q4_k(const uint8_t *const *r, size_t at, const q4_k_lanes *q, int h, float *o) {
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    __m512i s0 = _mm512_setzero_si512(), s1 = s0, s2 = s0, s3 = s0; /* sub-blocks 4h .. 4h + 3 */
    for (int p = 0; p < Q4_K_ROWS / 2; p++) {
        const __m512i qa = _mm512_loadu_si512((const void *)(r[2 * p] + at));
        const __m512i qb = _mm512_loadu_si512((const void *)(r[2 * p + 1] + at));
        /* interleaved first, then split into nibbles (the 16-bit shift's bits from the neighbouring byte fall
         * outside the mask) */
        const __m512i il = _mm512_unpacklo_epi8(qa, qb), ih = _mm512_unpackhi_epi8(qa, qb);
        const int32_t *k = &q->pair[p][4 * h];
        s0 = _mm512_add_epi16(s0, _mm512_maddubs_epi16(_mm512_and_si512(il, m4), _mm512_set1_epi32(k[0])));
        s1 = _mm512_add_epi16(s1, _mm512_maddubs_epi16(_mm512_and_si512(_mm512_srli_epi16(il, 4), m4), _mm512_set1_epi32(k[1])));
        s2 = _mm512_add_epi16(s2, _mm512_maddubs_epi16(_mm512_and_si512(ih, m4), _mm512_set1_epi32(k[2])));
        s3 = _mm512_add_epi16(s3, _mm512_maddubs_epi16(_mm512_and_si512(_mm512_srli_epi16(ih, 4), m4), _mm512_set1_epi32(k[3])));
    }
    const __m512i sums[4] = {s0, s1, s2, s3};
    for (int u = 0; u < 4; u++) {
        const int j = 4 * h + u;
        float *ou = o + 32 * u;
        if (q->scale[j] == 0.0f) { /* no codes to add: only the mins */
            for (int k = 0; k < 32; k++) {
                ou[k] += q->min_sum[j];
            }
            continue;
        }
        add_scaled32(ou, sums[u], _mm512_set1_ps(q->scale[j]), _mm512_set1_ps(q->min_sum[j]));
    }
}

/* one super-block (q4_k_block_fn): its two halves */
static inline void block_q4_k(const uint8_t *const *r, size_t at, const q4_k_lanes *q, float *o) {
    for (int h = 0; h < 2; h++) {
        half_q4_k(r, at + 64 * (size_t)h, q, h, o + 128 * h);
    }
}

static void add_split_q4_k(const uint8_t *const *r, const float *a, int64_t b0, int64_t n_blocks, int64_t row_blocks,
                           float *o, ts_row_prefetcher *pf) {
    q4_k_add_blocks(r, a, b0, n_blocks, row_blocks, o, pf, block_q4_k);
}

/*
 * Q8_0 rows in ggml's layout, Q8_ROWS = 16 rows per group, one unit at a time, with the AVX2 kernel's coefficients
 * (axpy_rows_avx2.c: c_r = coef_r * d_r quantized to S * k_r, S = max |c| / 127), so the same integer sums and the
 * same outputs, bit for bit. Where the AVX2 kernel multiplies row pairs with maddubs (codes made unsigned by the sign
 * trick, int16 pairs widened by madd), dpbusd adds four rows' products into int32 at once: four rows' bytes of a
 * column are interleaved into one 32-bit lane, the codes read as unsigned by offsetting them by 128 (a flipped top
 * bit), which adds 128 * sum_r k_r to every column, subtracted in the accumulators' start value. A register holds
 * rows 4q .. 4q + 3 in its low 256 bits and rows 4q + 8 .. 4q + 11 in its high ones, added together at the end.
 * (Zen 5, one thread, rows from cache: 18.6 GB/s with the AVX2 kernel, see docs/speed.md's 2026-12-07 entry.)
 */
#define Q8_ROWS 16

typedef struct {
    __m512i quad[2]; /* [q]: k of rows 4q .. 4q + 3 in each 32-bit lane of the low half, rows 4q + 8 .. 4q + 11 high */
    __m512i start;   /* -128 * (sum of the half's k) in each lane of a half: the two halves add up to -128 sum_r k_r */
    __m256 scale;    /* S in every lane */
} q8_coefs;

/* The 16 rows' c_r = a_r * d_r of the unit whose block starts at byte `at`, quantized; 0 when every c is 0. */
static inline int q8_0_coefs(const uint8_t *const *r, const float *a, size_t at, q8_coefs *q) {
#define H(k) (*(const int16_t *)__builtin_assume_aligned(r[k] + at, 2))
    const __m256i halves = _mm256_setr_epi16(H(0), H(1), H(2), H(3), H(4), H(5), H(6), H(7), H(8), H(9), H(10),
                                             H(11), H(12), H(13), H(14), H(15));
#undef H
    const __m512 c = _mm512_mul_ps(_mm512_loadu_ps(a), _mm512_cvtph_ps(halves));
    const float amax = _mm512_reduce_max_ps(_mm512_abs_ps(c));
    if (amax == 0.0f) {
        return 0;
    }
    const __m512i k = _mm512_cvtps_epi32(_mm512_mul_ps(c, _mm512_set1_ps(127.0f / amax)));
    const __m512i bytes = _mm512_castsi128_si512(_mm512_cvtepi32_epi8(k)); /* |k| <= 127 */
    q->quad[0] = _mm512_permutexvar_epi32(_mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 2, 2, 2, 2, 2, 2, 2, 2), bytes);
    q->quad[1] = _mm512_permutexvar_epi32(_mm512_setr_epi32(1, 1, 1, 1, 1, 1, 1, 1, 3, 3, 3, 3, 3, 3, 3, 3), bytes);
    const __m512i offset = _mm512_set1_epi8((char)0x80);
    const __m512i zero = _mm512_setzero_si512();
    q->start = _mm512_sub_epi32(zero, _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(zero, offset, q->quad[0]), offset,
                                                          q->quad[1]));
    q->scale = _mm256_set1_ps(amax * (1.0f / 127.0f));
    return 1;
}

/*
 * One unit (codes at byte `at` of each row): S * sum_r k_r * code_r into o[0, 32). Within each 128-bit lane L of a
 * half, the byte interleaves give sums[x] columns 16 L + 4 x .. 16 L + 4 x + 3, the AVX2 kernel's order
 * (axpy_q8_0_sums.h).
 */
static inline void unit_q8_0(const uint8_t *const *r, size_t at, const q8_coefs *q, float *o) {
    const __m512i offset = _mm512_set1_epi8((char)0x80);
    __m512i sums[4] = {q->start, q->start, q->start, q->start};
    for (int h = 0; h < 2; h++) {
        __m512i z[4];
        for (int i = 0; i < 4; i++) {
            const int row = 4 * h + i;
            z[i] = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)(r[row] + at))),
                                      _mm256_loadu_si256((const __m256i *)(r[row + 8] + at)), 1);
        }
        const __m512i lo01 = _mm512_unpacklo_epi8(z[0], z[1]), hi01 = _mm512_unpackhi_epi8(z[0], z[1]);
        const __m512i lo23 = _mm512_unpacklo_epi8(z[2], z[3]), hi23 = _mm512_unpackhi_epi8(z[2], z[3]);
        const __m512i quads[4] = {_mm512_unpacklo_epi16(lo01, lo23), _mm512_unpackhi_epi16(lo01, lo23),
                                  _mm512_unpacklo_epi16(hi01, hi23), _mm512_unpackhi_epi16(hi01, hi23)};
        for (int x = 0; x < 4; x++) {
            sums[x] = _mm512_dpbusd_epi32(sums[x], _mm512_xor_si512(quads[x], offset), q->quad[h]);
        }
    }
    __m256i s[4];
    for (int x = 0; x < 4; x++) {
        s[x] = _mm256_add_epi32(_mm512_castsi512_si256(sums[x]), _mm512_extracti64x4_epi64(sums[x], 1));
    }
    ts_add_q8_0_sums(o, s, q->scale);
}

static void add_group_q8_0(const uint8_t *const *r, const float *a, int64_t n_units, float *o,
                           ts_row_prefetcher *pf) {
    for (int64_t u = 0; u < n_units; u++) {
        ts_prefetch_upto(pf, (size_t)(u + 1) * 34);
        q8_coefs q;
        if (q8_0_coefs(r, a, (size_t)u * 34, &q)) {
            unit_q8_0(r, (size_t)u * 34 + 2, &q, o + 32 * u);
        }
    }
}

TS_DEFINE_SPLIT_TILE(q4_0, 18, 1, SPLIT_ROWS_AVX512)
TS_DEFINE_SPLIT_TILE(q4_k, TS_Q4_K_BYTES, 8, Q4_K_ROWS)
TS_DEFINE_INT_TILE(q8_0, 34, Q8_ROWS)

ts_axpy_kernel ts_axpy_kernel_avx512(enum ggml_type type) {
    switch (type) {
    case GGML_TYPE_Q4_0: return (ts_axpy_kernel){axpy_tile_q4_0, TS_ROWS_SPLIT};
    case GGML_TYPE_Q4_K: return (ts_axpy_kernel){axpy_tile_q4_k, TS_ROWS_Q4_K_DOWN};
    case GGML_TYPE_Q8_0: return (ts_axpy_kernel){axpy_tile_q8_0, TS_ROWS_GGML};
    default: return (ts_axpy_kernel){NULL, TS_ROWS_GGML};
    }
}

#else /* not compiled for AVX-512 (another architecture) */

ts_axpy_kernel ts_axpy_kernel_avx512(enum ggml_type type) {
    (void)type;
    return (ts_axpy_kernel){NULL, TS_ROWS_GGML};
}

#endif
