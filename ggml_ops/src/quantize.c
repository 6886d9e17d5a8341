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
    const struct ggml_type_traits *t = ggml_get_type_traits((enum ggml_type)type);
    if (type != GGML_TYPE_F32 && t->from_float_ref == NULL) {
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
