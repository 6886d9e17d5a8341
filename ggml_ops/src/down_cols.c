#include "down_cols.h"
#include "q4_k_scales.h"

#include "cpu_features.h"
#include "ggml-cpu.h"
#include "ts_error.h"
#include "turbosparse.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---- format ------------------------------------------------------------------------------------ */

/* ggml's 32-value block types (ggml-common.h): the f16 scale d first, then (Q4_1, Q5_1) the f16 min m. K-quant
 * super-blocks of 256 (Q4_K, Q5_K) hold 32-value sub-blocks with value = d * sc * q - dmin * mn: each becomes a group
 * entry with scale d * sc and min -dmin * mn in fp16 (rounded: relative error <= 2^-11; the codes are the file's). */
int ts_down_cols_format_for(enum ggml_type type, int64_t n_embd, ts_down_cols_format *f) {
    memset(f, 0, sizeof(*f));
    f->source = type;
    switch (type) {
    case GGML_TYPE_Q4_0:
        f->code_bits = 4;
        f->offset = 8;
        break;
    case GGML_TYPE_Q4_1:
    case GGML_TYPE_Q4_K:
        f->code_bits = 4;
        f->has_min = 1;
        break;
    case GGML_TYPE_Q5_0:
    case GGML_TYPE_Q8_0:
        f->code_bits = 8;
        break;
    case GGML_TYPE_Q5_1:
    case GGML_TYPE_Q5_K:
        f->code_bits = 8;
        f->has_min = 1;
        break;
    default:
        return 0;
    }
    if (n_embd % TS_DOWN_COLS_GROUP != 0) {
        return 0;
    }
    f->n_embd = n_embd;
    const size_t code_row = (size_t)n_embd * (size_t)f->code_bits / 8;
    f->group_bytes = (size_t)n_embd * 2 * (f->has_min ? 2 : 1) + TS_DOWN_COLS_GROUP * code_row;
    return 1;
}

int64_t ts_down_cols_groups_per_block(const ts_down_cols_format *f) {
    return ggml_blck_size(f->source) / TS_DOWN_COLS_GROUP;
}

static size_t code_row_bytes(const ts_down_cols_format *f) {
    return (size_t)f->n_embd * (size_t)f->code_bits / 8;
}

static size_t codes_offset(const ts_down_cols_format *f) {
    return (size_t)f->n_embd * 2 * (f->has_min ? 2 : 1);
}

/* ---- building the layout ---------------------------------------------------------------------- */

/* The integer code of value v in a block with scale d and min m (the quantizer's own code: exact). */
static int code_of(const ts_down_cols_format *f, float v, float d, float m) {
    if (d == 0.0f) {
        return f->offset; /* every value of the block is m */
    }
    return (int)lrintf((v - m) / d) + f->offset;
}

static void put_code(const ts_down_cols_format *f, uint8_t *row, int64_t i, int code) {
    if (f->code_bits == 8) {
        row[i] = (uint8_t)(int8_t)code;
        return;
    }
    uint8_t *byte = row + (i / 32) * 16 + (i % 16);
    *byte = i % 32 < 16 ? (uint8_t)((*byte & 0xF0) | (code & 15)) : (uint8_t)((*byte & 0x0F) | ((code & 15) << 4));
}

/* The exact scale and min of each 32-value run of a block (K-quants: of each sub-block). */
static void block_scales(const ts_down_cols_format *f, const uint8_t *block, float *d, float *m) {
    uint16_t h[2];
    memcpy(h, block, f->has_min ? 4 : 2);
    if (f->source != GGML_TYPE_Q4_K && f->source != GGML_TYPE_Q5_K) {
        d[0] = ggml_fp16_to_fp32(h[0]);
        m[0] = f->has_min ? ggml_fp16_to_fp32(h[1]) : 0.0f;
        return;
    }
    const float dk = ggml_fp16_to_fp32(h[0]), dmin = ggml_fp16_to_fp32(h[1]);
    uint8_t sm[16];
    ts_k_scales_mins(block + 4, sm);
    for (int j = 0; j < 8; j++) {
        d[j] = dk * (float)sm[j];
        m[j] = -dmin * (float)sm[8 + j];
    }
}

void ts_down_cols_fill(const ts_down_cols_format *f, const void *down, int64_t n_ff, int64_t b0, int64_t b1, void *dst) {
    const size_t row_bytes = ggml_row_size(f->source, n_ff), block_bytes = ggml_type_size(f->source);
    const ggml_to_float_t to_float = ggml_get_type_traits(f->source)->to_float;
    const size_t code_row = code_row_bytes(f);
    const int64_t per_block = ts_down_cols_groups_per_block(f);
    for (int64_t b = b0; b < b1; b++) {
        for (int64_t i = 0; i < f->n_embd; i++) {
            const uint8_t *block = (const uint8_t *)down + (size_t)i * row_bytes + (size_t)b * block_bytes;
            float v[8 * TS_DOWN_COLS_GROUP], d[8], m[8];
            to_float(block, v, per_block * TS_DOWN_COLS_GROUP);
            block_scales(f, block, d, m);
            for (int64_t j = 0; j < per_block; j++) {
                uint8_t *group = (uint8_t *)dst + (size_t)(b * per_block + j) * f->group_bytes;
                uint16_t *scale = (uint16_t *)group, *min = scale + f->n_embd;
                uint8_t *codes = group + codes_offset(f);
                scale[i] = ggml_fp32_to_fp16(d[j]);
                if (f->has_min) {
                    min[i] = ggml_fp32_to_fp16(m[j]);
                }
                for (int k = 0; k < TS_DOWN_COLS_GROUP; k++) {
                    put_code(f, codes + (size_t)k * code_row, i, code_of(f, v[j * TS_DOWN_COLS_GROUP + k], d[j], m[j]));
                }
            }
        }
    }
}

/* ---- adding kept neurons ---------------------------------------------------------------------- */

/* Reference path: one value at a time. */
static void add_group_generic(const ts_down_cols_format *f, const uint8_t *group, const int32_t *k, const int8_t *q,
                              int n, float s, int32_t sum_q, int64_t c0, int64_t len, float *out) {
    const uint16_t *scale = (const uint16_t *)group, *min = scale + f->n_embd;
    const uint8_t *codes = group + codes_offset(f);
    const size_t code_row = code_row_bytes(f);
    for (int64_t c = 0; c < len; c++) {
        const int64_t i = c0 + c;
        int32_t acc = 0;
        for (int r = 0; r < n; r++) {
            const uint8_t *row = codes + (size_t)k[r] * code_row;
            int code;
            if (f->code_bits == 8) {
                code = (int8_t)row[i];
            } else {
                const uint8_t byte = row[(i / 32) * 16 + (i % 16)];
                code = i % 32 < 16 ? byte & 15 : byte >> 4;
            }
            acc += q[r] * code;
        }
        float v = ggml_fp16_to_fp32(scale[i]) * (float)(acc - f->offset * sum_q);
        if (f->has_min) {
            v += ggml_fp16_to_fp32(min[i]) * (float)sum_q;
        }
        out[c] += s * v;
    }
}

/* q_r = round(a_r / S), S = max |a| / 127 (ggml's Q8_0 rounding); the sum of the q; 0 when every a is 0. */
static float quantize_group(const float *a, int n, int8_t *q, int32_t *sum_q) {
    float amax = 0.0f;
    for (int r = 0; r < n; r++) {
        amax = fmaxf(amax, fabsf(a[r]));
    }
    if (amax == 0.0f) {
        return 0.0f;
    }
    const float inv = 127.0f / amax;
    int32_t sum = 0;
    for (int r = 0; r < n; r++) {
        q[r] = (int8_t)lrintf(a[r] * inv);
        sum += q[r];
    }
    *sum_q = sum;
    return amax / 127.0f;
}

/* Runs of kept neurons by group, their activations quantized, each added by add_group. */
static void add_groups(ts_down_cols_group_fn add_group, const ts_down_cols_format *f, const void *cols,
                       const int32_t *idx, const float *coef, int64_t n_idx, int64_t c0, int64_t n, float *out) {
    for (int64_t i = 0; i < n_idx;) {
        const int64_t g = idx[i] / TS_DOWN_COLS_GROUP;
        int32_t k[TS_DOWN_COLS_GROUP];
        int run = 0;
        for (; i + run < n_idx && idx[i + run] / TS_DOWN_COLS_GROUP == g; run++) {
            k[run] = idx[i + run] - (int32_t)(g * TS_DOWN_COLS_GROUP);
        }
        int8_t q[TS_DOWN_COLS_GROUP];
        int32_t sum_q = 0;
        const float s = quantize_group(coef + i, run, q, &sum_q);
        if (s != 0.0f) {
            add_group(f, (const uint8_t *)cols + (size_t)g * f->group_bytes, k, q, run, s, sum_q, c0, n, out);
        }
        i += run;
    }
}

void ts_down_cols_add(const ts_down_cols_format *f, const void *cols, const int32_t *idx, const float *coef,
                      int64_t n_idx, int64_t c0, int64_t n, float *out) {
    /* the CPU is asked first: the AVX2 table itself is compiled for AVX2 */
    ts_down_cols_group_fn fast = ts_isa_supported(TS_ISA_AVX2)   ? ts_down_cols_group_avx2()
                                 : ts_isa_supported(TS_ISA_NEON) ? ts_down_cols_group_neon()
                                                                 : NULL;
    add_groups(fast != NULL ? fast : add_group_generic, f, cols, idx, coef, n_idx, c0, n, out);
}

void ts_down_cols_add_reference(const ts_down_cols_format *f, const void *cols, const int32_t *idx, const float *coef,
                                int64_t n_idx, int64_t c0, int64_t n, float *out) {
    add_groups(add_group_generic, f, cols, idx, coef, n_idx, c0, n, out);
}

/* ---- the kernel entry for tests ------------------------------------------------------------------ */

static int check_kernel_args(int32_t type, int64_t n_embd, int64_t n_ff, const int32_t *idx, int64_t n_idx,
                             int64_t col0, int64_t n, ts_down_cols_format *f, char *err, size_t err_size) {
    if (type < 0 || type >= GGML_TYPE_COUNT || !ts_down_cols_format_for((enum ggml_type)type, n_embd, f)) {
        return ts_set_error(err, err_size, "down_cols: no exact column layout for ggml type id %d with %lld rows", type,
                            (long long)n_embd);
    }
    if (n_ff <= 0 || n_ff % ggml_blck_size((enum ggml_type)type) || col0 < 0 || n < 0 || col0 % 32 || n % 32 || col0 + n > n_embd) {
        return ts_set_error(err, err_size, "down_cols: n_ff %lld or columns [%lld, %lld) of %lld are not whole 32-blocks",
                            (long long)n_ff, (long long)col0, (long long)(col0 + n), (long long)n_embd);
    }
    for (int64_t i = 0; i < n_idx; i++) {
        if (idx[i] < 0 || idx[i] >= n_ff || (i > 0 && idx[i] <= idx[i - 1])) {
            return ts_set_error(err, err_size, "down_cols: neuron index %d at %lld is out of [0, %lld) or not ascending",
                                idx[i], (long long)i, (long long)n_ff);
        }
    }
    return 0;
}

int32_t ts_kernel_down_cols(int32_t type, const void *down, int64_t n_embd, int64_t n_ff, const int32_t *idx,
                            const float *coef, int64_t n_idx, int64_t col0, int64_t n, int32_t reference, float *out,
                            char *err, size_t err_size) {
    ts_down_cols_format f;
    if (check_kernel_args(type, n_embd, n_ff, idx, n_idx, col0, n, &f, err, err_size) != 0) {
        return -1;
    }
    void *cols = malloc(f.group_bytes * (size_t)(n_ff / TS_DOWN_COLS_GROUP));
    if (cols == NULL) {
        return ts_set_error(err, err_size, "out of memory");
    }
    ggml_cpu_init(); /* F16 tables used by the dequantizers */
    ts_down_cols_fill(&f, down, n_ff, 0, n_ff / TS_DOWN_COLS_GROUP / ts_down_cols_groups_per_block(&f), cols);
    if (reference) {
        ts_down_cols_add_reference(&f, cols, idx, coef, n_idx, col0, n, out);
    } else {
        ts_down_cols_add(&f, cols, idx, coef, n_idx, col0, n, out);
    }
    free(cols);
    return 0;
}
