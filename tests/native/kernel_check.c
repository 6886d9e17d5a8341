/*
 * The sparse FFN kernels of every instruction set this CPU runs, against ggml's own results, for every type that
 * set has a kernel for: the C twin of tests/test_dot_rows.py and test_axpy_rows.py, with their shapes and error
 * bounds, for targets without Python (scripts/test_neon.sh runs it under qemu-aarch64).
 *
 *   dot_rows   rows . x with the fast kernel, against double sums over ggml's dequantized rows (bound: what
 *              quantizing x can move them) and against ggml's own vec_dot (same quantized x: float rounding)
 *   axpy_rows  out + sum coef * row, against double sums over ggml's dequantized rows (integer kernels: plus the
 *              8-bit rounding of coef * d)
 *   row_sums   a batch's down (row_sums_batch.c) against axpy_rows token by token: bit for bit (err/bound: the
 *              share of values that differ)
 *   lists      the neuron lists of a decoded token (neuron_list.h: the compare-and-move-mask scans) against plain C
 *              comparisons, NaN, signed zeros and infinities included (err/bound: twice the lists that differ)
 *
 * Prints one line per (kernel, type, instruction set) with the worst error as a fraction of its bound; exits 1 on
 * any value over its bound or any kernel that is not the one decoding would run.
 */
#include "ggml.h"
#include "turbosparse.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_N 16384                   /* TS_DOT_MAX_N */
#define SAME_ACTIVATION_TOLERANCE 1e-5 /* x sum|w||x|: a fast dot kernel and ggml's vec_dot see one quantized x */
#define TOLERANCE 1e-5                 /* relative float32 rounding of the down kernels */

/* The types each instruction set has its own kernels for (tests' FAST_TYPES), most specialised set first. */
#define MAX_TYPES 8
typedef struct {
    int32_t isa;
    enum ggml_type dot[MAX_TYPES];
    enum ggml_type axpy[MAX_TYPES];
} fast_types;

#define Q(t) GGML_TYPE_##t
#define NONE GGML_TYPE_COUNT
static const fast_types FAST_TYPES[] = {
    {TS_ISA_AVX512_VNNI, {Q(Q4_0), Q(Q8_0), Q(Q4_K), NONE}, {Q(Q4_0), Q(Q8_0), Q(Q4_K), NONE}},
    {TS_ISA_AVX2, {Q(Q4_0), Q(Q8_0), Q(Q4_1), Q(Q4_K), NONE}, {Q(F32), Q(F16), Q(BF16), Q(Q8_0), Q(Q4_0), Q(Q4_1), Q(Q4_K), NONE}},
    {TS_ISA_NEON_DOTPROD, {Q(Q4_0), Q(Q8_0), Q(Q4_1), Q(Q4_K), NONE}, {NONE}},
    {TS_ISA_NEON, {Q(Q4_0), Q(Q8_0), Q(Q4_1), Q(Q4_K), NONE}, {Q(F32), Q(F16), Q(BF16), Q(Q8_0), Q(Q4_0), Q(Q4_1), Q(Q4_K), NONE}},
};
#undef Q

/* ---- random numbers (xorshift64*, normal by Box-Muller) ------------------------------------------------ */

static uint64_t rng_state;

static double uniform(void) {
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return ((double)((rng_state * 2685821657736338717ULL) >> 11) + 0.5) / 9007199254740992.0;
}

static float normal(void) {
    return (float)(sqrt(-2.0 * log(uniform())) * cos(6.283185307179586 * uniform()));
}

static void fill_normal(float *v, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        v[i] = normal();
    }
}

static void *xmalloc(size_t bytes) {
    void *p = malloc(bytes > 0 ? bytes : 1);
    if (p == NULL) {
        fprintf(stderr, "kernel_check: out of memory\n");
        exit(2);
    }
    return p;
}

/* ---- matrices as ggml stores and decodes them ---------------------------------------------------------- */

typedef struct {
    enum ggml_type type;
    int64_t n_rows, n_cols;
    void *raw;   /* the stored bytes */
    float *deq;  /* what ggml's to_float decodes them to */
} matrix;

static char err[512];

static matrix random_matrix(enum ggml_type type, int64_t n_rows, int64_t n_cols) {
    matrix m = {type, n_rows, n_cols, NULL, NULL};
    float *values = xmalloc(sizeof(float) * (size_t)(n_rows * n_cols));
    fill_normal(values, n_rows * n_cols);
    m.raw = xmalloc(ggml_row_size(type, n_cols) * (size_t)n_rows);
    m.deq = xmalloc(sizeof(float) * (size_t)(n_rows * n_cols));
    if (type == GGML_TYPE_F32) { /* stored as is */
        memcpy(m.raw, values, sizeof(float) * (size_t)(n_rows * n_cols));
        memcpy(m.deq, values, sizeof(float) * (size_t)(n_rows * n_cols));
    } else if (ts_quantize(type, values, m.raw, n_rows, n_cols, NULL, err, sizeof(err)) < 0 ||
               ts_dequantize(type, m.raw, m.deq, n_rows * n_cols, err, sizeof(err)) != 0) {
        fprintf(stderr, "kernel_check: %s\n", err);
        exit(2);
    }
    free(values);
    return m;
}

static void free_matrix(matrix *m) {
    free(m->raw), free(m->deq);
}

static float half_at(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, sizeof(h));
    return ggml_fp16_to_fp32(h);
}

/* The scale d and min m of the 32 values around column `col` of row r (value = d * code + m): the block's fp16 d and m
 * (Q4_0, Q8_0: m = 0), a Q4_K sub-block's d * sc and -dmin * mn (6-bit scales and mins packed as ggml-common.h says). */
static void unit_scale_min(const matrix *m, int64_t r, int64_t col, double *d, double *min) {
    const uint8_t *row = (const uint8_t *)m->raw + (size_t)r * ggml_row_size(m->type, m->n_cols);
    const uint8_t *p = row + (size_t)(col / ggml_blck_size(m->type)) * ggml_type_size(m->type);
    *d = half_at(p);
    *min = m->type == GGML_TYPE_Q4_1 ? half_at(p + 2) : 0.0;
    if (m->type == GGML_TYPE_Q4_K) {
        const uint8_t *sc = p + 4;
        const int j = (int)(col % 256 / 32);
        const int s = j < 4 ? sc[j] & 63 : (sc[j + 4] & 0x0F) | ((sc[j - 4] >> 6) << 4);
        const int mn = j < 4 ? sc[j + 4] & 63 : (sc[j + 4] >> 4) | ((sc[j] >> 6) << 4);
        *min = -half_at(p + 2) * mn;
        *d *= s;
    }
}

/* ---- results ------------------------------------------------------------------------------------------- */

typedef struct {
    const char *kernel;
    enum ggml_type type;
    const char *path; /* the instruction set, or which path */
    int cases;
    double worst;  /* max |error| / bound over every value */
    int failures;  /* values over their bound, wrong kernels */
} tally;

static void note(tally *t, double error, double bound) {
    const double ratio = error / bound;
    if (!(ratio <= 1.0)) { /* NaN fails too */
        t->failures++;
    }
    if (ratio > t->worst || ratio != ratio) {
        t->worst = ratio;
    }
}

static int report(const tally *t) {
    printf("%-10s %-6s %-13s %5d %12.3g   %s\n", t->kernel, ggml_type_name(t->type), t->path, t->cases, t->worst,
           t->failures ? "FAIL" : "ok");
    return t->failures != 0;
}

/* ---- dot_rows ------------------------------------------------------------------------------------------ */


typedef struct {
    int64_t n_cols, n_rows, n_idx;
    int32_t idx[64];
} dot_case;

/* groups of 4 rows with tails, one row, none, a repeated row; one block, the Mistral-7B width, the longest row, the
 * default model's width */
static const dot_case DOT_CASES[] = {
    {32, 3, 3, {2, 0, 1}},
    {256, 9, 7, {8, 0, 3, 5, 1, 2, 7}},
    {4096, 40, 16, {0, 3, 6, 9, 12, 15, 18, 21, 24, 27, 30, 33, 36, 39, 4, 4}},
    {512, 6, 1, {5}},
    {512, 6, 0, {0}},
    {576, 7, 5, {6, 0, 3, 5, 1}}, /* 18 blocks: the split layout's last group holds 2 */
    {2816, 5, 3, {4, 0, 2}},      /* 11 super-blocks: Q4_K's split layout's last group holds 3 */
    {MAX_N, 5, 4, {4, 1, 3, 0}},
};

/* Most that quantizing x to 8-bit blocks (step max|x| / 127, fp16 step) moves row . x, plus float rounding. */
static double activation_bound(const float *row, const float *x, int64_t n, int64_t block) {
    double bound = 0.0, scale = 0.0;
    for (int64_t b = 0; b < n; b += block) {
        double xmax = 0.0, wsum = 0.0;
        for (int64_t c = b; c < b + block; c++) {
            xmax = fmax(xmax, fabs(x[c]));
            wsum += fabs(row[c]);
            scale += fabs(row[c]) * fabs(x[c]);
        }
        bound += wsum * xmax / 127.0 * (0.5 + 127 * pow(2.0, -11));
    }
    return bound + 1e-5 * scale;
}

/* split: the kernel for rows held in the split layout (AVX-512 VNNI and AVX2: Q4_0 rows of whole block pairs, Q4_K) */
static int check_dot(enum ggml_type type, int32_t isa, int32_t split) {
    tally t = {split ? "dot_split" : "dot_rows", type, ts_kernel_isa_name(isa), 0, 0.0, 0};
    const int64_t block = ggml_blck_size(type) == 256 ? 256 : 32;
    for (size_t c = 0; c < sizeof(DOT_CASES) / sizeof(DOT_CASES[0]); c++) {
        const dot_case *dc = &DOT_CASES[c];
        /* the AVX-512 kernels take rows of whole 64-value steps (shorter ones run the AVX2 kernel) */
        if (dc->n_cols % ggml_blck_size(type) != 0 || (isa == TS_ISA_AVX512_VNNI && dc->n_cols % 64 != 0) ||
            (split && dc->n_cols % 64 != 0)) {
            continue;
        }
        matrix m = random_matrix(type, dc->n_rows, dc->n_cols);
        float *x = xmalloc(sizeof(float) * (size_t)dc->n_cols);
        fill_normal(x, dc->n_cols);
        float fast[64], generic[64];
        if (ts_kernel_dot_rows(isa, type, m.raw, m.n_rows, m.n_cols, dc->idx, dc->n_idx, x, split, fast, err,
                               sizeof(err)) ||
            ts_kernel_dot_rows(TS_ISA_GENERIC, type, m.raw, m.n_rows, m.n_cols, dc->idx, dc->n_idx, x, 0, generic, err,
                               sizeof(err))) {
            fprintf(stderr, "kernel_check: %s\n", err);
            t.failures++;
        } else {
            for (int64_t i = 0; i < dc->n_idx; i++) {
                const float *row = m.deq + (size_t)dc->idx[i] * (size_t)m.n_cols;
                double exact = 0.0, scale = 0.0;
                for (int64_t k = 0; k < m.n_cols; k++) {
                    exact += (double)row[k] * x[k];
                    scale += fabs(row[k]) * fabs(x[k]);
                }
                note(&t, fabs(fast[i] - exact), activation_bound(row, x, m.n_cols, block));
                note(&t, fabs((double)fast[i] - generic[i]), SAME_ACTIVATION_TOLERANCE * scale);
            }
        }
        t.cases++;
        free(x);
        free_matrix(&m);
    }
    return report(&t);
}

/* ---- axpy_rows ----------------------------------------------------------------------------------------- */


typedef struct {
    int64_t n_cols, n_rows, n_idx, col0, n;
} axpy_case;

/* whole row groups and tails, several 1024-column tiles, no rows at all, a column range, rows of 40 (floats only),
 * rows of 13 blocks of 32 (the split layout's last group holds 5) whole and from inside their first group */
static const axpy_case AXPY_CASES[] = {
    {256, 7, 3, 0, 256},     {768, 40, 40, 0, 768},       {512, 100, 0, 0, 512},
    {2304, 50, 7, 0, 2304},  {4096, 300, 150, 2048, 2048}, {40, 9, 5, 0, 40},
    {416, 20, 17, 0, 416},   {416, 20, 17, 96, 320},
};

/* The down kernels that quantize each row's coefficient times its scale to 8 bits (AVX2 and NEON alike). */
static int integer_kernel(enum ggml_type type) {
    return type == GGML_TYPE_Q4_0 || type == GGML_TYPE_Q8_0 || type == GGML_TYPE_Q4_1 || type == GGML_TYPE_Q4_K;
}

static int check_axpy(enum ggml_type type, int32_t isa) {
    tally t = {"axpy_rows", type, ts_kernel_isa_name(isa), 0, 0.0, 0};
    for (size_t c = 0; c < sizeof(AXPY_CASES) / sizeof(AXPY_CASES[0]); c++) {
        const axpy_case *ac = &AXPY_CASES[c];
        if (ac->n_cols % ggml_blck_size(type) != 0) {
            continue;
        }
        matrix m = random_matrix(type, ac->n_rows, ac->n_cols);
        int32_t *idx = xmalloc(sizeof(int32_t) * (size_t)ac->n_idx);
        float *coef = xmalloc(sizeof(float) * (size_t)ac->n_idx), *out = xmalloc(sizeof(float) * (size_t)ac->n);
        for (int64_t i = 0; i < ac->n_idx; i++) { /* distinct rows: a stride coprime to n_rows */
            idx[i] = (int32_t)((i * 37 + 5) % ac->n_rows);
        }
        fill_normal(coef, ac->n_idx);
        fill_normal(out, ac->n);
        double *expected = xmalloc(sizeof(double) * (size_t)ac->n);
        double coef_sum = 0.0, deq_max = 0.0;
        for (int64_t i = 0; i < ac->n_idx; i++) {
            coef_sum += fabs(coef[i]);
        }
        for (int64_t k = 0; k < m.n_rows * m.n_cols; k++) {
            deq_max = fmax(deq_max, fabs(m.deq[k]));
        }
        const double base = TOLERANCE * fmax(1.0, coef_sum * deq_max);
        for (int64_t j = 0; j < ac->n; j++) {
            expected[j] = out[j];
            for (int64_t i = 0; i < ac->n_idx; i++) {
                expected[j] += (double)coef[i] * m.deq[(size_t)idx[i] * (size_t)m.n_cols + (size_t)(ac->col0 + j)];
            }
        }
        if (ts_kernel_axpy_rows(isa, type, m.raw, m.n_rows, m.n_cols, idx, coef, ac->n_idx, ac->col0, ac->n, out, err,
                                sizeof(err))) {
            fprintf(stderr, "kernel_check: %s\n", err);
            t.failures++;
        } else {
            for (int64_t j = 0; j < ac->n; j++) {
                double bound = base;
                if (integer_kernel(type) && ac->n_idx > 0) {
                    /* c_max / 254 * sum_r |code_r|, code_r = (value_r - m_r) / d_r */
                    const int64_t col = ac->col0 + j;
                    double c_max = 0.0, codes = 0.0;
                    for (int64_t i = 0; i < ac->n_idx; i++) {
                        double d, mn;
                        unit_scale_min(&m, idx[i], col, &d, &mn);
                        const double v = m.deq[(size_t)idx[i] * (size_t)m.n_cols + (size_t)col];
                        c_max = fmax(c_max, fabs(coef[i] * d));
                        codes += d != 0.0 ? fabs((v - mn) / d) : 0.0;
                    }
                    bound += c_max / 254 * codes * (1 + 1e-5);
                }
                note(&t, fabs(out[j] - expected[j]), bound);
            }
        }
        t.cases++;
        free(idx), free(coef), free(out), free(expected);
        free_matrix(&m);
    }
    return report(&t);
}

/* ---- a batch's down ------------------------------------------------------------------------------------- */

/* Rows in several blocks and columns in several tiles; tokens from dense to all-zero. */
static int check_batch(enum ggml_type type, int32_t isa) {
    tally t = {"row_sums", type, ts_kernel_isa_name(isa), 0, 0.0, 0};
    enum { N_TOKENS = 4 };
    static const double zero_share[N_TOKENS] = {0.9, 0.5, 1.0, 0.0};
    const int64_t n_rows = 2100, n_cols = 2560, col0 = 256, n = 2048;
    matrix m = random_matrix(type, n_rows, n_cols);
    float *act = xmalloc(sizeof(float) * (size_t)(N_TOKENS * n_rows)), *got = xmalloc(sizeof(float) * (size_t)(N_TOKENS * n));
    float *one = xmalloc(sizeof(float) * (size_t)n), *coef = xmalloc(sizeof(float) * (size_t)n_rows);
    int32_t *idx = xmalloc(sizeof(int32_t) * (size_t)n_rows);
    for (int64_t i = 0; i < N_TOKENS * n_rows; i++) {
        act[i] = uniform() < zero_share[i / n_rows] ? 0.0f : normal();
    }
    if (ts_kernel_row_sums_batch(type, m.raw, n_rows, n_cols, act, N_TOKENS, col0, n, got, err, sizeof(err))) {
        fprintf(stderr, "kernel_check: %s\n", err);
        t.failures++;
    }
    for (int64_t tok = 0; tok < N_TOKENS && t.failures == 0; tok++) {
        int64_t n_idx = 0;
        for (int64_t j = 0; j < n_rows; j++) {
            if (act[tok * n_rows + j] != 0.0f) {
                idx[n_idx] = (int32_t)j;
                coef[n_idx++] = act[tok * n_rows + j];
            }
        }
        memset(one, 0, sizeof(float) * (size_t)n);
        if (ts_kernel_axpy_rows(isa, type, m.raw, n_rows, n_cols, idx, coef, n_idx, col0, n, one, err, sizeof(err))) {
            fprintf(stderr, "kernel_check: %s\n", err);
            t.failures++;
            break;
        }
        int64_t differ = 0;
        for (int64_t c = 0; c < n; c++) {
            differ += memcmp(&got[tok * n + c], &one[c], sizeof(float)) != 0;
        }
        t.worst = fmax(t.worst, (double)differ / (double)n);
        t.failures += differ != 0;
        t.cases++;
    }
    free(act), free(got), free(one), free(coef), free(idx);
    free_matrix(&m);
    return report(&t);
}

/* ---- which kernels decoding runs ------------------------------------------------------------------------- */

/* The most specialised set this CPU runs with a kernel of that kind for `type` (TS_ISA_GENERIC: none). */
static int32_t best_isa(int axpy, enum ggml_type type) {
    for (size_t s = 0; s < sizeof(FAST_TYPES) / sizeof(FAST_TYPES[0]); s++) {
        const enum ggml_type *types = axpy ? FAST_TYPES[s].axpy : FAST_TYPES[s].dot;
        for (int i = 0; i < MAX_TYPES && types[i] != NONE; i++) {
            if (types[i] == type && ts_kernel_isa_supported(FAST_TYPES[s].isa)) {
                return FAST_TYPES[s].isa;
            }
        }
    }
    return TS_ISA_GENERIC;
}

static int check_choice(const fast_types *set) {
    int failures = 0;
    for (int i = 0; i < MAX_TYPES && set->dot[i] != NONE; i++) {
        const enum ggml_type type = set->dot[i];
        const int32_t used = ts_kernel_isa_used(TS_KERNEL_DOT_ROWS, type, 4096);
        const int32_t longest = ts_kernel_isa_used(TS_KERNEL_DOT_ROWS, type, MAX_N + 256);
        if (used != best_isa(0, type) || longest != TS_ISA_GENERIC) {
            printf("decoding runs the %s dot_rows kernel for %s (%s for rows over %d): expected %s\n",
                   ts_kernel_isa_name(used), ggml_type_name(type), ts_kernel_isa_name(longest), MAX_N,
                   ts_kernel_isa_name(best_isa(0, type)));
            failures++;
        }
    }
    for (int i = 0; i < MAX_TYPES && set->axpy[i] != NONE; i++) {
        const enum ggml_type type = set->axpy[i];
        const int32_t used = ts_kernel_isa_used(TS_KERNEL_AXPY_ROWS, type, 4096);
        if (used != best_isa(1, type)) {
            printf("decoding runs the %s axpy_rows kernel for %s: expected %s\n", ts_kernel_isa_name(used),
                   ggml_type_name(type), ts_kernel_isa_name(best_isa(1, type)));
            failures++;
        }
    }
    return failures;
}

/* A value for the list checks: mostly normal, about 1 in 6 one where a comparison can go wrong. */
static float list_value(void) {
    static const float special[] = {NAN, -0.0f, 0.0f, INFINITY, -INFINITY, 1e-45f, -1e-45f, 1.0f};
    const double u = uniform();
    return u < 1.0 / 6 ? special[(int)(u * 6 * 8) % 8] : normal();
}

/* ts_kernel_pick_list in lists of several caps and ts_kernel_nonzero_list, over lengths around the 4-value vectors
 * and 64-neuron words, from unaligned starts, against plain comparisons. */
static int check_lists(void) {
    static const int64_t lengths[] = {1, 3, 4, 5, 63, 64, 65, 129, 1000};
    static const float thresholds[] = {0.0f, -0.0f, 1.0f, -INFINITY, NAN};
    static float x[1000], val[1000];
    static int32_t list[1000], idx[1000];
    int cases = 0, wrong = 0;
    for (size_t l = 0; l < sizeof(lengths) / sizeof(lengths[0]); l++) {
        const int64_t n = lengths[l];
        for (int64_t j = 0; j < n; j++) {
            x[j] = list_value();
        }
        for (int32_t kind = 0; kind < 2; kind++) {
            for (size_t ti = 0; ti < sizeof(thresholds) / sizeof(thresholds[0]); ti++) {
                const float t = thresholds[ti];
                for (int32_t cap = 1; cap <= 1000; cap *= 7) {
                    int64_t at = n / 3, expect = n / 3;
                    int ok = 1;
                    while (ok && at < n) {
                        const int32_t got = ts_kernel_pick_list(kind, t, x, &at, n, list, cap);
                        for (int32_t k = 0; k < got && ok; k++) {
                            while (expect < n && !(kind ? x[expect] > t : x[expect] >= t)) {
                                expect++;
                            }
                            ok = expect < n && list[k] == expect;
                            expect++;
                        }
                        ok = ok && (got == cap || at == n);
                    }
                    while (ok && expect < n) { /* nothing picked after the last list */
                        ok = !(kind ? x[expect] > t : x[expect] >= t);
                        expect++;
                    }
                    cases++;
                    wrong += !ok;
                }
            }
        }
        int64_t at = 0;
        cases++;
        wrong += ts_kernel_pick_list(0, 0.0f, x, &at, n, list, 0) != -1 || at != 0; /* a cap of 0: refused */
        const int64_t got = ts_kernel_nonzero_list(x, n, idx, val);
        int64_t m = 0;
        int ok = 1;
        for (int64_t j = 0; j < n; j++) {
            if (x[j] != 0.0f) {
                ok = ok && m < got && idx[m] == j && memcmp(&val[m], &x[j], sizeof(float)) == 0;
                m++;
            }
        }
        cases++;
        wrong += !ok || m != got;
    }
    tally t = {.kernel = "lists", .type = GGML_TYPE_F32, .path = "this build", .cases = cases};
    note(&t, wrong, 0.5); /* one wrong list is over the bound */
    return report(&t);
}

int main(void) {
    printf("instruction sets this CPU runs:");
    for (int32_t isa = 0; isa < TS_ISA_COUNT; isa++) {
        if (ts_kernel_isa_supported(isa)) {
            printf(" %s", ts_kernel_isa_name(isa));
        }
    }
    printf("\n\n%-10s %-6s %-13s %5s %12s   %s\n", "kernel", "type", "isa", "cases", "err/bound", "result");
    int failures = 0;
    rng_state = 0x9E3779B97F4A7C15ULL;
    for (size_t s = 0; s < sizeof(FAST_TYPES) / sizeof(FAST_TYPES[0]); s++) {
        const fast_types *set = &FAST_TYPES[s];
        if (!ts_kernel_isa_supported(set->isa)) {
            continue;
        }
        failures += check_choice(set);
        for (int i = 0; i < MAX_TYPES && set->dot[i] != NONE; i++) {
            failures += check_dot(set->dot[i], set->isa, 0);
            if ((set->isa == TS_ISA_AVX512_VNNI || set->isa == TS_ISA_AVX2) &&
                (set->dot[i] == GGML_TYPE_Q4_0 || set->dot[i] == GGML_TYPE_Q4_K)) {
                failures += check_dot(set->dot[i], set->isa, 1);
            }
        }
        for (int i = 0; i < MAX_TYPES && set->axpy[i] != NONE; i++) {
            failures += check_axpy(set->axpy[i], set->isa);
            if (best_isa(1, set->axpy[i]) == set->isa) { /* a batch runs the kernel decoding runs */
                failures += check_batch(set->axpy[i], set->isa);
            }
        }
    }
    failures += check_lists();
    printf("\n%s\n", failures ? "FAILED" : "all kernels within their bounds");
    return failures ? 1 : 0;
}
