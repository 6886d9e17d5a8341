/* ggml's own quantizers and dequantizers, for the converter and the tests. */
#include "ggml-cpu.h"
#include "ggml.h"
#include "ts_error.h"
#include "turbosparse.h"

int32_t ts_type_info(int32_t type, const char **name, int64_t *blck_size, int64_t *type_size) {
    if (type < 0 || type >= GGML_TYPE_COUNT || ggml_blck_size((enum ggml_type)type) == 0) {
        return -1;
    }
    *name = ggml_type_name((enum ggml_type)type);
    *blck_size = ggml_blck_size((enum ggml_type)type);
    *type_size = (int64_t)ggml_type_size((enum ggml_type)type);
    return 0;
}

static int check_type(int32_t type, int64_t n_per_row, char *err, size_t err_size) {
    const char *name = NULL;
    int64_t blck = 0, size = 0;
    if (ts_type_info(type, &name, &blck, &size) != 0) {
        return ts_set_error(err, err_size, "unknown ggml type id %d", type);
    }
    if (n_per_row <= 0 || n_per_row % blck != 0) {
        return ts_set_error(err, err_size, "row length %lld is not a positive multiple of %s's block size %lld",
                            (long long)n_per_row, name, (long long)blck);
    }
    return 0;
}

/* The types ggml_quantize_chunk writes: it aborts the process on any other (Q8_1 and Q8_K have quantizers of their
 * own, for activations, but not there). */
static int chunk_quantizable(enum ggml_type type) {
    switch (type) {
    case GGML_TYPE_F32:
    case GGML_TYPE_F16:
    case GGML_TYPE_BF16:
    case GGML_TYPE_Q1_0:
    case GGML_TYPE_Q2_0:
    case GGML_TYPE_Q4_0:
    case GGML_TYPE_Q4_1:
    case GGML_TYPE_Q5_0:
    case GGML_TYPE_Q5_1:
    case GGML_TYPE_Q8_0:
    case GGML_TYPE_MXFP4:
    case GGML_TYPE_NVFP4:
    case GGML_TYPE_Q2_K:
    case GGML_TYPE_Q3_K:
    case GGML_TYPE_Q4_K:
    case GGML_TYPE_Q5_K:
    case GGML_TYPE_Q6_K:
    case GGML_TYPE_TQ1_0:
    case GGML_TYPE_TQ2_0:
    case GGML_TYPE_IQ2_XXS:
    case GGML_TYPE_IQ2_XS:
    case GGML_TYPE_IQ3_XXS:
    case GGML_TYPE_IQ3_S:
    case GGML_TYPE_IQ2_S:
    case GGML_TYPE_IQ1_S:
    case GGML_TYPE_IQ1_M:
    case GGML_TYPE_IQ4_NL:
    case GGML_TYPE_IQ4_XS:
        return 1;
    default:
        return 0;
    }
}

int64_t ts_quantize(int32_t type, const float *src, void *dst, int64_t nrows, int64_t n_per_row, const float *imatrix,
                    char *err, size_t err_size) {
    if (check_type(type, n_per_row, err, err_size) != 0) {
        return -1;
    }
    if (nrows < 0) {
        return ts_set_error(err, err_size, "negative row count %lld", (long long)nrows);
    }
    if (imatrix == NULL && ggml_quantize_requires_imatrix((enum ggml_type)type)) {
        return ts_set_error(err, err_size, "quantizing to %s needs an importance matrix",
                            ggml_type_name((enum ggml_type)type));
    }
    if (!chunk_quantizable((enum ggml_type)type)) {
        return ts_set_error(err, err_size, "ggml cannot quantize to %s", ggml_type_name((enum ggml_type)type));
    }
    ggml_cpu_init(); /* F16 conversion tables */
    return (int64_t)ggml_quantize_chunk((enum ggml_type)type, src, dst, 0, nrows, n_per_row, imatrix);
}

int32_t ts_dequantize(int32_t type, const void *src, float *dst, int64_t n, char *err, size_t err_size) {
    if (check_type(type, n, err, err_size) != 0) {
        return -1;
    }
    const struct ggml_type_traits *t = ggml_get_type_traits((enum ggml_type)type);
    if (t->to_float == NULL) {
        return ts_set_error(err, err_size, "ggml cannot dequantize %s", ggml_type_name((enum ggml_type)type));
    }
    t->to_float(src, dst, n);
    return 0;
}
