/*
 * What sparse decoding reads of the down projection, built in memory for files that store only the standard
 * down matrix (plain llama.cpp SwiGLU files, calibrated by `turbosparse calibrate` without touching a tensor):
 *
 *   down  ggml ne {n_ff, n_embd}: row i = output i over the n_ff neurons, quantized along the neurons
 *
 * Decoding adds the kept neurons' columns. Two layouts give it whole columns, chosen per layer (a file may mix
 * types, as llama.cpp's Q4_K_M mixes Q4_K and Q6_K down matrices):
 *   - Q4_0, Q4_1, Q5_0, Q5_1, Q8_0: the neuron-major groups of down_cols.h, an exact re-layout of the same
 *     codes and scales (same bytes per value, the values ggml dequantizes); Q4_K, Q5_K: the same groups with each
 *     sub-block's scale and min in fp16 (rounded, 2^-11 relative; the codes are the file's);
 *   - other types: the transposed matrix down_t (ne {n_embd, n_ff}, row j = neuron j's output vector), exact for
 *     F32, F16 and BF16, else quantized again along the hidden dimension as Q8_0 (F16 where 32 does not divide
 *     n_embd): a second rounding, with a sixteenth of a 4-bit type's step.
 *
 * Threads take whole work units (ith/nth): column groups, or tiles of neurons for the transpose, so each writes
 * only its own bytes of the result.
 */
#include "axpy_rows.h"
#include "down_cols.h"
#include "model.h"

#include "ggml-cpu.h"
#include "gguf_names.h"
#include "ts_error.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct down_job {
    const char *down;       /* the file's bytes: n_embd rows of n_ff values of type src */
    enum ggml_type src;
    char *out;              /* the layout being written */
    enum ggml_type dst;     /* transpose: down_t's type */
    const ts_down_cols_format *cols; /* NULL: transpose */
    int64_t n_embd, n_ff;
    int64_t width;          /* transpose: neurons per tile */
    float *scratch;         /* transpose, per thread: width * n_embd floats (the tile) + width floats (a slice) */
    int64_t scratch_stride; /* floats per thread */
} down_job;

static int is_float_type(enum ggml_type type) {
    return type == GGML_TYPE_F32 || type == GGML_TYPE_F16 || type == GGML_TYPE_BF16;
}

/* The type of down_t: the file's own for float types (an exact transpose), else Q8_0 (F16 where 32 does not
 * divide n_embd). */
static enum ggml_type down_t_type(enum ggml_type src, int64_t n_embd) {
    if (is_float_type(src)) {
        return src;
    }
    return n_embd % 32 == 0 ? GGML_TYPE_Q8_0 : GGML_TYPE_F16;
}

/* ---- transpose ---------------------------------------------------------------------------------- */

/* down's values of neurons [j0, j0 + n) in row i, as floats */
static void read_slice(const down_job *job, int64_t i, int64_t j0, int64_t n, float *out) {
    const char *p = job->down + (size_t)i * ggml_row_size(job->src, job->n_ff) + ggml_row_size(job->src, j0);
    if (job->src == GGML_TYPE_F32) {
        memcpy(out, p, (size_t)n * sizeof(float));
    } else {
        ggml_get_type_traits(job->src)->to_float(p, out, n);
    }
}

static void transpose_tiles(const down_job *job, int ith, int nth) {
    const int64_t w = job->width, n_embd = job->n_embd, n_tiles = job->n_ff / w;
    float *tile = job->scratch + (size_t)ith * (size_t)job->scratch_stride; /* [w][n_embd] */
    float *slice = tile + w * n_embd;                                       /* [w] */
    const size_t dst_row = ggml_row_size(job->dst, n_embd);
    for (int64_t b = n_tiles * ith / nth; b < n_tiles * (ith + 1) / nth; b++) {
        for (int64_t i = 0; i < n_embd; i++) {
            read_slice(job, i, b * w, w, slice);
            for (int64_t k = 0; k < w; k++) {
                tile[k * n_embd + i] = slice[k];
            }
        }
        ggml_quantize_chunk(job->dst, tile, job->out + (size_t)(b * w) * dst_row, 0, w, n_embd, NULL);
    }
}

/* Neurons per tile: whole blocks of down's type, at least 32 where n_ff allows (float types have blocks of 1). */
static int64_t tile_width(enum ggml_type src, int64_t n_ff) {
    const int64_t blck = ggml_blck_size(src);
    return blck < 32 && n_ff % 32 == 0 ? 32 : blck;
}

/* ---- the jobs, one graph node per layer ------------------------------------------------------------ */

static void down_job_op(struct ggml_tensor *dst, int ith, int nth, void *userdata) {
    const down_job *job = userdata;
    if (job->cols == NULL) {
        transpose_tiles(job, ith, nth);
        return;
    }
    const int64_t n_blocks = job->n_ff / ggml_blck_size(job->src);
    ts_down_cols_fill(job->cols, job->down, job->n_ff, n_blocks * ith / nth, n_blocks * (ith + 1) / nth, job->out);
}

static int run_jobs(down_job *jobs, int n_layer, int n_threads, char *err, size_t err_size) {
    struct ggml_init_params ip = {.mem_size = (size_t)(n_layer + 8) * ggml_tensor_overhead() + ggml_graph_overhead(),
                                  .mem_buffer = NULL,
                                  .no_alloc = false};
    struct ggml_context *ctx = ggml_init(ip);
    if (ctx == NULL) {
        return ts_set_error(err, err_size, "out of memory");
    }
    struct ggml_cgraph *gf = ggml_new_graph(ctx);
    for (int il = 0; il < n_layer; il++) {
        ggml_build_forward_expand(gf, ggml_custom_4d(ctx, GGML_TYPE_I8, 1, 1, 1, 1, NULL, 0, down_job_op,
                                                     GGML_N_TASKS_MAX, &jobs[il]));
    }
    struct ggml_cplan plan = ggml_graph_plan(gf, n_threads, NULL);
    void *work = plan.work_size > 0 ? malloc(plan.work_size) : NULL;
    int rc = plan.work_size > 0 && work == NULL ? ts_set_error(err, err_size, "out of memory") : 0;
    if (rc == 0) {
        plan.work_data = work;
        if (ggml_graph_compute(gf, &plan) != GGML_STATUS_SUCCESS) {
            rc = ts_set_error(err, err_size, "building the sparse down layout failed");
        }
    }
    free(work);
    ggml_free(ctx);
    return rc;
}

/* One job per layer over the file's down matrix (its own bytes, even where the loader repacked a copy). */
static int plan_jobs(ts_model *m, down_job *jobs, char *err, size_t err_size) {
    const ts_model_info *in = &m->info;
    for (int il = 0; il < in->n_layer; il++) {
        char name[GGML_MAX_NAME];
        snprintf(name, sizeof(name), TS_TENSOR_FFN_DOWN, il);
        const ts_gguf_tensor *t = ts_gguf_find_tensor(m->file, name);
        if (t == NULL) {
            return ts_set_error(err, err_size, "%s: missing tensor '%s'", m->file->path, name);
        }
        const enum ggml_type src = (enum ggml_type)t->type;
        ts_down_cols_format *f = &m->layers[il].down_cols;
        const int cols = ts_down_cols_format_for(src, in->n_embd, f) && in->n_ff % ggml_blck_size(src) == 0;
        jobs[il] = (down_job){.down = t->data, .src = src, .dst = down_t_type(src, in->n_embd), .cols = cols ? f : NULL,
                              .n_embd = in->n_embd, .n_ff = in->n_ff, .width = tile_width(src, in->n_ff)};
    }
    return 0;
}

/* The result tensors: per layer the column groups (I8 rows of group_bytes) or down_t. */
static int alloc_layout(ts_model *m, const down_job *jobs, char *err, size_t err_size) {
    const ts_model_info *in = &m->info;
    struct ggml_init_params ip = {
        .mem_size = (size_t)(in->n_layer + 1) * ggml_tensor_overhead(), .mem_buffer = NULL, .no_alloc = true};
    m->ctx_down_rows = ggml_init(ip);
    if (m->ctx_down_rows == NULL) {
        return ts_set_error(err, err_size, "out of memory");
    }
    for (int il = 0; il < in->n_layer; il++) {
        const down_job *job = &jobs[il];
        struct ggml_tensor *t =
            job->cols != NULL
                ? ggml_new_tensor_2d(m->ctx_down_rows, GGML_TYPE_I8, (int64_t)job->cols->group_bytes, in->n_ff / TS_DOWN_COLS_GROUP)
                : ggml_new_tensor_2d(m->ctx_down_rows, job->dst, in->n_embd, in->n_ff);
        ggml_format_name(t, job->cols != NULL ? "blk.%d.ffn_down_cols" : TS_TENSOR_FFN_DOWN_T, il);
    }
    m->buf_down_rows = ggml_backend_alloc_ctx_tensors_from_buft(m->ctx_down_rows, ggml_backend_cpu_buffer_type());
    if (m->buf_down_rows == NULL) {
        return ts_set_error(err, err_size, "%s: out of memory for the sparse down layout", m->file->path);
    }
    ggml_backend_buffer_set_usage(m->buf_down_rows, GGML_BACKEND_BUFFER_USAGE_WEIGHTS);
    return 0;
}

/* Fills the allocated tensors, n_threads threads (a transpose shares one scratch block between them). */
static int fill_layout(ts_model *m, down_job *jobs, int n_threads, char *err, size_t err_size) {
    const int n_layer = m->info.n_layer;
    int64_t stride = 0;
    for (int il = 0; il < n_layer; il++) {
        if (jobs[il].cols == NULL && jobs[il].width * (m->info.n_embd + 1) > stride) {
            stride = jobs[il].width * (m->info.n_embd + 1);
        }
    }
    float *scratch = stride > 0 ? malloc(sizeof(float) * (size_t)stride * (size_t)n_threads) : NULL;
    if (stride > 0 && scratch == NULL) {
        return ts_set_error(err, err_size, "out of memory");
    }
    struct ggml_tensor *t = ggml_get_first_tensor(m->ctx_down_rows);
    for (int il = 0; il < n_layer; il++, t = ggml_get_next_tensor(m->ctx_down_rows, t)) {
        jobs[il].out = t->data;
        jobs[il].scratch = scratch;
        jobs[il].scratch_stride = stride;
    }
    ggml_cpu_init(); /* F16 conversion tables */
    const int rc = run_jobs(jobs, n_layer, n_threads, err, err_size);
    free(scratch);
    return rc;
}

static void free_layout(ts_model *m) {
    if (m->buf_down_rows != NULL) {
        ggml_backend_buffer_free(m->buf_down_rows);
    }
    if (m->ctx_down_rows != NULL) {
        ggml_free(m->ctx_down_rows);
    }
    m->buf_down_rows = NULL;
    m->ctx_down_rows = NULL;
}

int ts_model_build_down_rows(ts_model *m, int n_threads, char *err, size_t err_size) {
    if (m->layers[0].ffn_down_t != NULL || m->layers[0].ffn_down_cols != NULL) {
        return 0;
    }
    down_job *jobs = calloc((size_t)m->info.n_layer, sizeof(*jobs));
    if (jobs == NULL) {
        return ts_set_error(err, err_size, "out of memory");
    }
    int rc = plan_jobs(m, jobs, err, err_size);
    if (rc == 0) {
        rc = alloc_layout(m, jobs, err, err_size);
    }
    if (rc == 0) {
        rc = fill_layout(m, jobs, n_threads > 0 ? n_threads : 1, err, err_size);
    }
    if (rc == 0) {
        struct ggml_tensor *t = ggml_get_first_tensor(m->ctx_down_rows);
        for (int il = 0; il < m->info.n_layer; il++, t = ggml_get_next_tensor(m->ctx_down_rows, t)) {
            if (jobs[il].cols != NULL) {
                m->layers[il].ffn_down_cols = t;
            } else {
                /* written in ggml's layout: what the down kernels read for down_t's types (axpy_rows.h) */
                GGML_ASSERT(ts_axpy_rows_layout(t->type) == TS_ROWS_GGML);
                m->layers[il].ffn_down_t = t;
            }
        }
    }
    free(jobs);
    if (rc != 0) {
        free_layout(m);
        return -1;
    }
    return 0;
}
