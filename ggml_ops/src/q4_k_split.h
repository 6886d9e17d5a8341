/*
 * Q4_K gate and up rows in the split layout (gate_up_dot.h: ts_gate_up_split), and the activation its kernels take.
 *
 * ggml's Q4_K super-block (256 values, 144 bytes): fp16 d, fp16 dmin, 12 bytes of 6-bit scales sc_j and mins m_j of
 * its 8 sub-blocks of 32, then 128 bytes whose byte 32i + e holds sub-block 2i's value e in its low nibble and
 * sub-block 2i+1's in its high nibble; value = d * sc_j * nibble - dmin * m_j. A kernel reading it spends a lane
 * permute per 64 values putting the right sub-block's scale beside them, and its 64-byte loads straddle cache lines
 * (144 is not a multiple of 64).
 *
 * The split layout holds the same bytes of a row reordered, in groups of up to 8 consecutive super-blocks (the groups
 * of the 32-value types' split layout, axpy_rows.h: ts_split_group_at; a row's last group may hold fewer): the
 * group's 16-byte headers (d, dmin, the 12 scale bytes, as ggml has them), then each
 * block's 128 quant bytes transposed: byte 64v + b (v < 2, b < 64) holds, of sub-block b / 8, value 16v + b % 8 in its
 * low nibble and value 16v + 8 + b % 8 in its high nibble. So each 64 values a kernel takes, the low or high nibbles
 * of one 64-byte load ("quarter" k = 2v + high), hold 8 values of every sub-block, the same 8 int16 lanes of a
 * maddubs result belonging to the same sub-block in every quarter: a block's four quarters add up in int16 (at most
 * 4 x 2 x 15 x 128 = 15360) and meet one vector of scales, made once per block. A row of 4096 values is two groups
 * of 1152 bytes, whose quants start 64-byte aligned.
 *
 * The activation (ggml's Q8_K: float d, 256 int8, int16 sums of 16) prepared for the decoding kernels (at most
 * 1.16 n bytes):
 *   x   int8[n], per super-block its quarters k = 0..3 of 64 bytes, byte b = the value 8k + b % 8 of sub-block b / 8
 *   dd  float[2 * n / 256 rounded up to 16]: each super-block's d twice (beside a weight block's d and dmin)
 *   xs  int16[16 * n / 256]: per super-block 8 zeros, then minus the sums of its 8 sub-blocks (beside its 8 scales
 *       and 8 mins: one int16 multiply-add gives minus the sum over m_j * sum_j)
 */
#ifndef TS_Q4_K_SPLIT_H
#define TS_Q4_K_SPLIT_H

#include "axpy_rows.h"
#include "gate_up_dot.h"

#include <stddef.h>
#include <stdint.h>

enum { TS_Q4_K_BYTES = 144, TS_Q4_K_HEAD = 16, TS_Q4_K_QUANTS = 128 };
/* groups of the split layout's (axpy_rows.h: ts_split_group_at); the AVX-512 kernel loads a group's headers as two
 * vectors of four */
_Static_assert(TS_SPLIT_GROUP == 8, "a Q4_K group's headers are two 64-byte loads");

typedef struct {
    const int8_t *x;
    const float *dd;
    const int16_t *xs;
} ts_q4_k_split_view;

static inline ts_q4_k_split_view ts_view_q4_k_split(const void *prepared, int64_t n) {
    const int8_t *x = prepared;
    const float *dd = (const float *)(x + n);
    const int64_t nb = n / 256;
    return (ts_q4_k_split_view){x, dd, (const int16_t *)(dd + (2 * nb + 15) / 16 * 16)};
}

/* whether the split kernels take rows of n values: whole super-blocks, the prepared activation within
 * TS_DOT_PREPARED_MAX (1.16 n bytes) */
static inline int ts_q4_k_split_takes(int64_t n) {
    return n > 0 && n % 256 == 0 && n <= TS_DOT_MAX_N;
}

/* Asks for super-block i's bytes (its share of its group: a prefetch past them is harmless) of rows [0, count) from
 * rows, row_bytes apart: a prompt kernel's next pass while it unpacks this one. A group's headers and quants are two
 * streams per row, more than the hardware prefetchers follow for a pass's rows (the AVX-512 prompt kernel's
 * 128-token prompts on Zen 4: 1265 -> 1189 ms without and with). */
static inline void ts_q4_k_prefetch_rows(const uint8_t *rows, size_t row_bytes, int count, int64_t i) {
    for (int r = 0; r < count; r++) {
        const uint8_t *at = rows + (size_t)r * row_bytes + (size_t)i * TS_Q4_K_BYTES;
        for (int line = 0; line < TS_Q4_K_BYTES; line += 64) {
            __builtin_prefetch(at + line, 0, 2);
        }
        __builtin_prefetch(at + TS_Q4_K_BYTES - 1, 0, 2);
    }
}

/* ggml's Q4_K rows -> the split layout (an exact reordering into other memory) */
void ts_q4_k_rows_split(const void *src, void *dst, int64_t n_rows, size_t row_bytes);

/*
 * Transposed down rows (axpy_rows.h: TS_ROWS_Q4_K_DOWN), grouped as above, have a layout of their own, for kernels
 * that add a block's values into outputs in order and dequantize a group's factors at once. A group of c blocks
 * holds their d and dmin (4 bytes each), then their 12 scale bytes each, then their quants (16 c + 128 c bytes). The
 * quants keep ggml's pairing (sub-blocks 2i and 2i + 1 in the low and high nibbles of the same 32 bytes) and only
 * their 8-byte runs move: in each half h of 64 bytes (sub-blocks 4h to 4h + 3), bytes [16L, 16L + 8) hold ggml's
 * [64h + 8L, 64h + 8L + 8) and bytes [16L + 8, 16L + 16) ggml's [64h + 32 + 8L, 64h + 40 + 8L), L < 4. A row pair's
 * 64-byte loads interleaved byte by byte (unpacklo: each 128-bit lane's first 8 bytes; unpackhi: its last 8) then
 * hold values 0-31 of one sub-block, in order, in each nibble (a 32-byte load: 16 of them): a kernel multiplies each
 * by the pair's one coefficient of that sub-block, a broadcast, and adds them into its outputs as they lie.
 */
void ts_q4_k_rows_down(const void *src, void *dst, int64_t n_rows, size_t row_bytes);

/* ggml's Q8_K activation of n values (a multiple of 256) -> the prepared layout above in buf; returns buf */
const void *ts_prepare_q8_k_split(const void *xq, int64_t n, void *buf);

/*
 * For the prompt kernels, which take a sub-block s as a block of 32 values: its 16 nibble bytes are bytes [8s, 8s + 8)
 * and [64 + 8s, 64 + 8s + 8) of its super-block's quants, which read as a Q4_0 block is read (byte k: value k in its
 * low nibble, value k + 16 in its high) hold its values in the order 0-7, 16-23, 8-15, 24-31. The token in that
 * order: x int8[n] | dx float[n / 256] (each super-block's d) | sums int32[n / 256][4] (the sums of sub-blocks 2p and
 * 2p + 1 as an int16 pair, beside a row's mins of those sub-blocks): n + 20 n / 256 bytes.
 */
const void *ts_prepare_q8_k_prompt(const void *xq, int64_t n, void *buf);

typedef struct {
    const int8_t *x;
    const float *dx;
    const int32_t *sums;
} ts_q8_k_prompt_view;

static inline ts_q8_k_prompt_view ts_view_q8_k_prompt(const void *prepared, int64_t n) {
    const int8_t *x = prepared;
    const float *dx = (const float *)(x + n);
    return (ts_q8_k_prompt_view){x, dx, (const int32_t *)(dx + n / 256)};
}

/* A prompt kernel's pass of `rows` rows (nb sub-blocks each): the nibbles [nb][8 chunks][rows][4 values] as the
 * kernel interleaves them, the 6-bit scales [nb][rows] as int32 (the kernel's packing), the mins [nb / 8][4][rows] as
 * int16 pairs (sub-blocks 2p, 2p + 1), d and dmin [nb / 8][rows] */
typedef struct {
    uint8_t *nib;
    int32_t *sc;
    int32_t *mins;
    float *d, *dmin;
} ts_q4_k_pass;

static inline ts_q4_k_pass ts_q4_k_pass_at(const uint8_t *pass, int64_t nb, int rows) {
    ts_q4_k_pass k;
    k.nib = (uint8_t *)pass;
    k.sc = (int32_t *)(k.nib + (size_t)nb * 32 * (size_t)rows);
    k.mins = k.sc + nb * rows;
    k.d = (float *)(k.mins + nb / 8 * 4 * rows);
    k.dmin = k.d + nb / 8 * rows;
    return k;
}

static inline size_t ts_q4_k_pass_bytes(int64_t nb, int rows) {
    return (size_t)nb * (32 + sizeof(int32_t)) * (size_t)rows +
           (size_t)(nb / 8) * (4 * sizeof(int32_t) + 2 * sizeof(float)) * (size_t)rows;
}

#endif
