/*
 * A strict, read-only GGUF reader over a memory-mapped file.
 *
 * Our own rather than ggml's gguf.h because it also reads PowerInfer's PWRI files (GGUF with
 * another magic), and because every inconsistency (truncation, bad counts, misaligned or
 * out-of-bounds tensor data) must become an error message naming the file and the key or
 * tensor, never an abort.
 */
#ifndef TS_GGUF_FILE_H
#define TS_GGUF_FILE_H

#include <stddef.h>
#include <stdint.h>

enum ts_gguf_value_type {
    TS_GGUF_U8 = 0,
    TS_GGUF_I8 = 1,
    TS_GGUF_U16 = 2,
    TS_GGUF_I16 = 3,
    TS_GGUF_U32 = 4,
    TS_GGUF_I32 = 5,
    TS_GGUF_F32 = 6,
    TS_GGUF_BOOL = 7,
    TS_GGUF_STRING = 8,
    TS_GGUF_ARRAY = 9,
    TS_GGUF_U64 = 10,
    TS_GGUF_I64 = 11,
    TS_GGUF_F64 = 12,
    TS_GGUF_TYPE_COUNT
};

typedef struct ts_gguf_kv {
    char *key;
    uint32_t type;       /* enum ts_gguf_value_type */
    uint32_t elem_type;  /* element type when type == TS_GGUF_ARRAY */
    uint64_t n;          /* number of elements for arrays, 1 otherwise */
    const uint8_t *data; /* first value byte in the mapping (strings: their u64 length prefix) */
} ts_gguf_kv;

typedef struct ts_gguf_tensor {
    char *name;
    int32_t n_dims;
    int64_t ne[4];
    int32_t type;   /* ggml type id */
    size_t nbytes;
    void *data;     /* in the mapping */
} ts_gguf_tensor;

typedef struct ts_gguf_file {
    char *path;
    void *map;
    size_t size;
    int is_powerinfer; /* magic PWRI */
    uint32_t version;
    uint32_t alignment;
    size_t data_offset;
    int64_t n_kv;
    ts_gguf_kv *kv;
    int64_t n_tensors;
    ts_gguf_tensor *tensors;
    /* a model split into several files (split.count > 1; this file the first): the others, opened with it, whose
     * tensors are in `tensors` too, their data in the others' mappings; their keys are not read (llama.cpp's rule) */
    int32_t n_shards;
    struct ts_gguf_file **shards;
} ts_gguf_file;

/* Opens and maps a GGUF file, and the other files of a split model when it is the first of them (named as llama.cpp
 * names them: PREFIX-00001-of-0000N.gguf, then -00002-of-, ...). */
ts_gguf_file *ts_gguf_open(const char *path, char *err, size_t err_size);
void ts_gguf_close(ts_gguf_file *file);

/* The mapped bytes [data, data + n) are not read any more (a copy of them is): their whole pages leave the
 * process's memory; the file keeps them, and reading them again would page them back in. */
void ts_gguf_release(const ts_gguf_file *file, const void *data, size_t n);

/* Which mapping holds the byte at data: 0 the file's own, k its shards[k - 1]'s (a split model), -1 none. */
int ts_gguf_mapping_of(const ts_gguf_file *file, const void *data);

const ts_gguf_kv *ts_gguf_find_kv(const ts_gguf_file *file, const char *key);
const ts_gguf_tensor *ts_gguf_find_tensor(const ts_gguf_file *file, const char *name);

/* Replaces the tensor `name` by n_parts (<= 8) tensors over its memory, in order: part k is named part_names[k] (one
 * may keep `name`) and holds part_sizes[k] of its rows, where ne0 > 0 and it is a matrix of ne0 columns, or of its
 * elements, where ne0 == 0 and it is a vector of a type without blocks (F32). 0; 1 when the file has no `name`; -1
 * (err set) where its shape is not that or another tensor already has a part's name. */
int ts_gguf_split(ts_gguf_file *file, const char *name, int64_t ne0, int n_parts, const char *const *part_names,
                  const int64_t *part_sizes, char *err, size_t err_size);

/*
 * Typed getters. Return 0 when found and converted, 1 when the key is absent and not required,
 * -1 (err filled) when absent but required or of an incompatible type / out of range.
 */
int ts_gguf_get_i64(const ts_gguf_file *file, const char *key, int64_t *out, int required, char *err,
                    size_t err_size);
int ts_gguf_get_f32(const ts_gguf_file *file, const char *key, float *out, int required, char *err,
                    size_t err_size);
int ts_gguf_get_str(const ts_gguf_file *file, const char *key, char *buf, size_t buf_size, int required,
                    char *err, size_t err_size);
/* Numeric array of exactly n elements, converted to int64 / float. */
int ts_gguf_get_arr_i64(const ts_gguf_file *file, const char *key, int64_t *out, int64_t n, int required,
                        char *err, size_t err_size);
/* -1 (err set) where the string array under key holds one text twice (llama.cpp's vocabulary loader aborts on a
 * repeated token); 0 otherwise, also where the key is absent or not a string array. */
int ts_gguf_check_unique_strings(const ts_gguf_file *file, const char *key, char *err, size_t err_size);
/* -1 (err set) where the string array under key lacks one of the 256 byte tokens <0x00>..<0xFF> that llama.cpp's
 * SentencePiece tokenizer falls back to for text outside the vocabulary (it aborts where one is missing); 0 otherwise,
 * also where the key is absent or not a string array. */
int ts_gguf_check_byte_tokens(const ts_gguf_file *file, const char *key, char *err, size_t err_size);
int ts_gguf_get_arr_f32(const ts_gguf_file *file, const char *key, float *out, int64_t n, int required,
                        char *err, size_t err_size);

#endif
