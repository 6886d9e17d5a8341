/* Q4_K rows into the split layout and the activation its kernels take (q4_k_split.h): plain C, run once per model
 * load (rows) and once per token (activation). */
#include "q4_k_split.h"

#include <string.h>

/* one super-block's 128 quant bytes (ggml's order) -> the transposed order, 8 bytes at a time: sub-block s's values
 * [16v, 16v + 8) and [16v + 8, 16v + 16) are the low (s even) or high (s odd) nibbles of two runs of 8 bytes */
static void transpose_quants(const uint8_t *qs, uint8_t *out) {
    const uint64_t low = 0x0F0F0F0F0F0F0F0FULL;
    for (int s = 0; s < 8; s++) {
        const uint8_t *src = qs + 32 * (s / 2);
        const int shift = 4 * (s % 2);
        for (int v = 0; v < 2; v++) {
            uint64_t a, b;
            memcpy(&a, src + 16 * v, 8);
            memcpy(&b, src + 16 * v + 8, 8);
            const uint64_t packed = ((a >> shift) & low) | (((b >> shift) & low) << 4);
            memcpy(out + 64 * v + 8 * s, &packed, 8);
        }
    }
}

/* gate and up rows: the block's header where ggml has it, its quants transposed */
static void place_split(const uint8_t *block, uint8_t *group, int c, int j) {
    memcpy(group + TS_Q4_K_HEAD * j, block, TS_Q4_K_HEAD);
    transpose_quants(block + TS_Q4_K_HEAD, group + (size_t)TS_Q4_K_HEAD * c + (size_t)TS_Q4_K_QUANTS * j);
}

/* one super-block's 128 quant bytes (ggml's order) -> the down rows' order: the 8-byte runs of each 64-byte half's
 * two 32-byte halves interleaved */
static void interleave_runs(const uint8_t *qs, uint8_t *out) {
    for (int h = 0; h < 2; h++) {
        for (int l = 0; l < 4; l++) {
            memcpy(out + 64 * h + 16 * l, qs + 64 * h + 8 * l, 8);
            memcpy(out + 64 * h + 16 * l + 8, qs + 64 * h + 32 + 8 * l, 8);
        }
    }
}

/* transposed down rows: d and dmin, the 12 scale bytes and the quants each beside the group's others */
static void place_down(const uint8_t *block, uint8_t *group, int c, int j) {
    memcpy(group + 4 * j, block, 4);
    memcpy(group + 4 * c + 12 * j, block + 4, 12);
    interleave_runs(block + TS_Q4_K_HEAD, group + (size_t)TS_Q4_K_HEAD * c + (size_t)TS_Q4_K_QUANTS * j);
}

/* rows grouped as the split layouts group them, each block placed in its group by `place` */
static void rows_grouped(const void *src, void *dst, int64_t n_rows, size_t row_bytes,
                         void (*place)(const uint8_t *block, uint8_t *group, int c, int j)) {
    const int64_t nb = (int64_t)(row_bytes / TS_Q4_K_BYTES);
    for (int64_t r = 0; r < n_rows; r++) {
        const uint8_t *row = (const uint8_t *)src + (size_t)r * row_bytes;
        uint8_t *out = (uint8_t *)dst + (size_t)r * row_bytes;
        for (int64_t b = 0; b < nb; b++) {
            const ts_split_group g = ts_split_group_at(b, b + 1, nb);
            place(row + (size_t)b * TS_Q4_K_BYTES, out + (size_t)g.first * TS_Q4_K_BYTES, g.c, g.j0);
        }
    }
}

void ts_q4_k_rows_split(const void *src, void *dst, int64_t n_rows, size_t row_bytes) {
    rows_grouped(src, dst, n_rows, row_bytes, place_split);
}

void ts_q4_k_rows_down(const void *src, void *dst, int64_t n_rows, size_t row_bytes) {
    rows_grouped(src, dst, n_rows, row_bytes, place_down);
}

const void *ts_prepare_q8_k_split(const void *xq, int64_t n, void *buf) {
    int8_t *x = buf;
    float *dd = (float *)(x + n);
    const int64_t nb = n / 256;
    int16_t *xs = (int16_t *)(dd + (2 * nb + 15) / 16 * 16);
    memset(dd, 0, sizeof(float) * (size_t)((2 * nb + 15) / 16 * 16));
    for (int64_t i = 0; i < nb; i++) {
        const uint8_t *blk = (const uint8_t *)xq + i * TS_Q8_K_BYTES;
        const int8_t *qs = (const int8_t *)(blk + 4);
        int16_t bsums[16];
        memcpy(&dd[2 * i], blk, sizeof(float));
        dd[2 * i + 1] = dd[2 * i];
        memcpy(bsums, blk + 260, sizeof(bsums));
        for (int s = 0; s < 8; s++) { /* 8 values at a time: sub-block s's values [8k, 8k + 8) into quarter k */
            for (int k = 0; k < 4; k++) {
                memcpy(x + 256 * i + 64 * k + 8 * s, qs + 32 * s + 8 * k, 8);
            }
        }
        for (int s = 0; s < 8; s++) {
            xs[16 * i + s] = 0;
            xs[16 * i + 8 + s] = (int16_t)-(bsums[2 * s] + bsums[2 * s + 1]);
        }
    }
    return buf;
}

const void *ts_prepare_q8_k_prompt(const void *xq, int64_t n, void *buf) {
    static const int piece[4] = {0, 2, 1, 3}; /* a sub-block's 8-value pieces in the order its nibble bytes hold them */
    int8_t *x = buf;
    float *dx = (float *)(x + n);
    int32_t *sums = (int32_t *)(dx + n / 256);
    for (int64_t i = 0; i < n / 256; i++) {
        const uint8_t *blk = (const uint8_t *)xq + i * TS_Q8_K_BYTES;
        int16_t bsums[16];
        memcpy(&dx[i], blk, sizeof(float));
        memcpy(bsums, blk + 260, sizeof(bsums));
        for (int b = 0; b < 8; b++) {
            for (int p = 0; p < 4; p++) {
                memcpy(x + 256 * i + 32 * b + 8 * p, blk + 4 + 32 * b + 8 * piece[p], 8);
            }
        }
        for (int p = 0; p < 4; p++) { /* sub-blocks 2p and 2p + 1: 16 values' sums twice each */
            const int16_t lo = (int16_t)(bsums[4 * p] + bsums[4 * p + 1]);
            const int16_t hi = (int16_t)(bsums[4 * p + 2] + bsums[4 * p + 3]);
            sums[4 * i + p] = (int32_t)((uint32_t)(uint16_t)lo | ((uint32_t)(uint16_t)hi << 16));
        }
    }
    return buf;
}
