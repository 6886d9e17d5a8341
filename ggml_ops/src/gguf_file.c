#include "gguf_file.h"

#include "ggml.h"
#include "gguf_names.h"
#include "ts_error.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define TS_GGUF_DEFAULT_ALIGNMENT 32
#define TS_GGUF_MAX_DIMS 4

/* Bounds-checked cursor over the mapping; the first failure records its message and sticks. */
typedef struct cursor {
    const uint8_t *base;
    size_t size;
    size_t pos;
    const char *path;
    char *err;
    size_t err_size;
    int failed;
} cursor;

static int cursor_fail_truncated(cursor *c, const char *what) {
    if (!c->failed) {
        ts_set_error(c->err, c->err_size, "%s: file truncated or corrupt: %s at byte %zu runs past the end (%zu bytes)",
                     c->path, what, c->pos, c->size);
    }
    c->failed = 1;
    return -1;
}

static int cursor_read(cursor *c, void *out, size_t n, const char *what) {
    if (c->failed) {
        return -1;
    }
    if (n > c->size - c->pos) {
        return cursor_fail_truncated(c, what);
    }
    memcpy(out, c->base + c->pos, n);
    c->pos += n;
    return 0;
}

static int cursor_skip(cursor *c, uint64_t n, const char *what) {
    if (c->failed) {
        return -1;
    }
    if (n > c->size - c->pos) {
        return cursor_fail_truncated(c, what);
    }
    c->pos += (size_t)n;
    return 0;
}

/* Reads a GGUF string; returns a malloc'd NUL-terminated copy or NULL. */
static char *cursor_read_string(cursor *c, const char *what) {
    uint64_t len = 0;
    if (cursor_read(c, &len, sizeof(len), what) != 0) {
        return NULL;
    }
    if (len > c->size - c->pos) {
        cursor_fail_truncated(c, what);
        return NULL;
    }
    if (memchr(c->base + c->pos, 0, (size_t)len) != NULL) {
        ts_set_error(c->err, c->err_size, "%s: corrupt file: %s at byte %zu contains a NUL byte", c->path, what, c->pos);
        c->failed = 1;
        return NULL;
    }
    char *s = malloc((size_t)len + 1);
    if (s == NULL) {
        ts_set_error(c->err, c->err_size, "%s: out of memory reading %s", c->path, what);
        c->failed = 1;
        return NULL;
    }
    memcpy(s, c->base + c->pos, (size_t)len);
    s[len] = '\0';
    c->pos += (size_t)len;
    return s;
}

static size_t value_type_size(uint32_t type) {
    switch (type) {
    case TS_GGUF_U8:
    case TS_GGUF_I8:
    case TS_GGUF_BOOL:
        return 1;
    case TS_GGUF_U16:
    case TS_GGUF_I16:
        return 2;
    case TS_GGUF_U32:
    case TS_GGUF_I32:
    case TS_GGUF_F32:
        return 4;
    case TS_GGUF_U64:
    case TS_GGUF_I64:
    case TS_GGUF_F64:
        return 8;
    default:
        return 0; /* strings and arrays have no fixed size */
    }
}

/* Skips one value of `type` (not an array); strings are length-checked. */
static int cursor_skip_scalar(cursor *c, uint32_t type, const char *key) {
    if (type == TS_GGUF_STRING) {
        uint64_t len = 0;
        if (cursor_read(c, &len, sizeof(len), key) != 0) {
            return -1;
        }
        return cursor_skip(c, len, key);
    }
    size_t sz = value_type_size(type);
    if (sz == 0) {
        ts_set_error(c->err, c->err_size, "%s: corrupt file: key '%s' has unknown value type %u", c->path, key, type);
        c->failed = 1;
        return -1;
    }
    return cursor_skip(c, sz, key);
}

static int read_kv(cursor *c, ts_gguf_kv *kv, int64_t index) {
    kv->key = cursor_read_string(c, "a metadata key");
    if (kv->key == NULL) {
        return -1;
    }
    if (cursor_read(c, &kv->type, sizeof(kv->type), kv->key) != 0) {
        return -1;
    }
    kv->n = 1;
    kv->elem_type = 0;
    if (kv->type == TS_GGUF_ARRAY) {
        if (cursor_read(c, &kv->elem_type, sizeof(kv->elem_type), kv->key) != 0 ||
            cursor_read(c, &kv->n, sizeof(kv->n), kv->key) != 0) {
            return -1;
        }
        if (kv->elem_type == TS_GGUF_ARRAY || kv->elem_type >= TS_GGUF_TYPE_COUNT) {
            ts_set_error(c->err, c->err_size, "%s: corrupt file: array key '%s' has unsupported element type %u",
                         c->path, kv->key, kv->elem_type);
            return -1;
        }
        kv->data = c->base + c->pos;
        size_t esz = value_type_size(kv->elem_type);
        if (esz > 0) {
            if (kv->n > (c->size - c->pos) / esz) {
                return cursor_fail_truncated(c, kv->key);
            }
            c->pos += (size_t)(kv->n * esz);
        } else {
            for (uint64_t i = 0; i < kv->n; i++) {
                if (cursor_skip_scalar(c, kv->elem_type, kv->key) != 0) {
                    return -1;
                }
            }
        }
        return 0;
    }
    if (kv->type >= TS_GGUF_TYPE_COUNT) {
        ts_set_error(c->err, c->err_size, "%s: corrupt file: metadata entry %lld ('%s') has unknown value type %u",
                     c->path, (long long)index, kv->key, kv->type);
        return -1;
    }
    kv->data = c->base + c->pos;
    return cursor_skip_scalar(c, kv->type, kv->key);
}

static int read_tensor_info(cursor *c, ts_gguf_tensor *t, uint64_t *offset) {
    t->name = cursor_read_string(c, "a tensor name");
    if (t->name == NULL) {
        return -1;
    }
    uint32_t n_dims = 0;
    if (cursor_read(c, &n_dims, sizeof(n_dims), t->name) != 0) {
        return -1;
    }
    if (n_dims == 0 || n_dims > TS_GGUF_MAX_DIMS) {
        ts_set_error(c->err, c->err_size, "%s: corrupt file: tensor '%s' has %u dimensions (expected 1..%d)", c->path,
                     t->name, n_dims, TS_GGUF_MAX_DIMS);
        return -1;
    }
    t->n_dims = (int32_t)n_dims;
    for (int i = 0; i < TS_GGUF_MAX_DIMS; i++) {
        t->ne[i] = 1;
    }
    for (uint32_t i = 0; i < n_dims; i++) {
        uint64_t ne = 0;
        if (cursor_read(c, &ne, sizeof(ne), t->name) != 0) {
            return -1;
        }
        if (ne == 0 || ne > (uint64_t)INT64_MAX / 2) {
            ts_set_error(c->err, c->err_size, "%s: corrupt file: tensor '%s' dimension %u is %llu", c->path, t->name, i,
                         (unsigned long long)ne);
            return -1;
        }
        t->ne[i] = (int64_t)ne;
    }
    uint32_t type = 0;
    if (cursor_read(c, &type, sizeof(type), t->name) != 0 || cursor_read(c, offset, sizeof(*offset), t->name) != 0) {
        return -1;
    }
    if (type >= GGML_TYPE_COUNT || ggml_blck_size((enum ggml_type)type) == 0) {
        ts_set_error(c->err, c->err_size, "%s: tensor '%s' has unknown or removed ggml type id %u", c->path, t->name,
                     type);
        return -1;
    }
    t->type = (int32_t)type;
    const int64_t blck = ggml_blck_size((enum ggml_type)type);
    if (t->ne[0] % blck != 0) {
        ts_set_error(c->err, c->err_size,
                     "%s: tensor '%s' of type %s has %lld columns, not a multiple of the type's block size %lld",
                     c->path, t->name, ggml_type_name((enum ggml_type)type), (long long)t->ne[0], (long long)blck);
        return -1;
    }
    /* ggml counts elements in int64 and bytes in size_t: both must fit (bytes = row bytes * rows) */
    const uint64_t row_blocks = (uint64_t)(t->ne[0] / blck), type_size = ggml_type_size((enum ggml_type)type);
    int too_large = row_blocks > SIZE_MAX / type_size;
    uint64_t total = row_blocks * type_size;
    int64_t n_elements = t->ne[0];
    for (int i = 1; i < TS_GGUF_MAX_DIMS && !too_large; i++) {
        too_large = total > SIZE_MAX / (uint64_t)t->ne[i] || n_elements > INT64_MAX / t->ne[i];
        if (!too_large) { /* a product that would overflow is never formed */
            total *= (uint64_t)t->ne[i];
            n_elements *= t->ne[i];
        }
    }
    if (too_large) {
        ts_set_error(c->err, c->err_size, "%s: corrupt file: tensor '%s' of shape [%lld, %lld, %lld, %lld] is too large",
                     c->path, t->name, (long long)t->ne[0], (long long)t->ne[1], (long long)t->ne[2],
                     (long long)t->ne[3]);
        return -1;
    }
    t->nbytes = (size_t)total;
    return 0;
}

static int map_file(const char *path, void **map, size_t *size, char *err, size_t err_size) {
    int fd = open(path, O_RDONLY | O_NONBLOCK); /* a FIFO's open would wait for a writer; refused below instead */
    if (fd < 0) {
        return ts_set_error(err, err_size, "%s: cannot open: %s", path, strerror(errno));
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return ts_set_error(err, err_size, "%s: cannot stat: %s", path, strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return ts_set_error(err, err_size, "%s: not a regular file", path);
    }
    if (st.st_size < 24) {
        close(fd);
        return ts_set_error(err, err_size, "%s: file truncated or not GGUF: only %lld bytes", path,
                            (long long)st.st_size);
    }
    void *m = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED, fd, 0);
    int e = errno;
    close(fd);
    if (m == MAP_FAILED) {
        return ts_set_error(err, err_size, "%s: cannot mmap: %s", path, strerror(e));
    }
    *map = m;
    *size = (size_t)st.st_size;
    return 0;
}

static int parse_header(ts_gguf_file *f, cursor *c) {
    char magic[4] = {0};
    cursor_read(c, magic, 4, "magic");
    if (memcmp(magic, "GGUF", 4) == 0) {
        f->is_powerinfer = 0;
    } else if (memcmp(magic, "PWRI", 4) == 0) {
        f->is_powerinfer = 1;
    } else {
        char shown[5];
        for (int i = 0; i < 4; i++) {
            shown[i] = (magic[i] >= 32 && magic[i] < 127) ? magic[i] : '?';
        }
        shown[4] = '\0';
        return ts_set_error(c->err, c->err_size, "%s: not a GGUF file: magic is '%s', expected 'GGUF' (or PowerInfer 'PWRI')",
                            f->path, shown);
    }
    cursor_read(c, &f->version, sizeof(f->version), "version");
    if (f->version == 1) {
        return ts_set_error(c->err, c->err_size, "%s: GGUF version 1 is not supported (expected 2 or 3)", f->path);
    }
    if (f->version != 2 && f->version != 3) {
        return ts_set_error(c->err, c->err_size, "%s: unsupported GGUF version %u (expected 2 or 3; big-endian files are not supported)",
                            f->path, f->version);
    }
    uint64_t n_tensors = 0, n_kv = 0;
    if (cursor_read(c, &n_tensors, sizeof(n_tensors), "tensor count") != 0 ||
        cursor_read(c, &n_kv, sizeof(n_kv), "metadata count") != 0) {
        return -1;
    }
    /* every entry takes at least 8 bytes: counts beyond that are corrupt, not an allocation to try */
    if (n_tensors > f->size / 8 || n_kv > f->size / 8) {
        return ts_set_error(c->err, c->err_size, "%s: corrupt file: %llu tensors / %llu metadata entries cannot fit in %zu bytes",
                            f->path, (unsigned long long)n_tensors, (unsigned long long)n_kv, f->size);
    }
    f->n_tensors = (int64_t)n_tensors;
    f->n_kv = (int64_t)n_kv;
    return 0;
}

static int compare_names(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Fails naming a name that occurs twice among the n in names (sorted in place): GGUF's keys and tensor names are
 * unique (llama.cpp and gguf-py refuse such files; this reader would have read the first of the two). Sorting, not
 * comparing every pair: a file may hold millions of entries. */
static int check_unique(const ts_gguf_file *f, cursor *c, const char **names, int64_t n, const char *what) {
    qsort(names, (size_t)n, sizeof(*names), compare_names);
    for (int64_t i = 1; i < n; i++) {
        if (strcmp(names[i - 1], names[i]) == 0) {
            return ts_set_error(c->err, c->err_size, "%s: corrupt file: the %s '%s' occurs twice", f->path, what,
                                names[i]);
        }
    }
    return 0;
}

static int parse_body(ts_gguf_file *f, cursor *c) {
    f->kv = calloc((size_t)f->n_kv + 1, sizeof(ts_gguf_kv));
    f->tensors = calloc((size_t)f->n_tensors + 1, sizeof(ts_gguf_tensor));
    uint64_t *offsets = calloc((size_t)f->n_tensors + 1, sizeof(uint64_t));
    const char **names = calloc((size_t)(f->n_kv > f->n_tensors ? f->n_kv : f->n_tensors) + 1, sizeof(char *));
    if (f->kv == NULL || f->tensors == NULL || offsets == NULL || names == NULL) {
        free(offsets);
        free(names);
        return ts_set_error(c->err, c->err_size, "%s: out of memory", f->path);
    }
    int rc = 0;
    for (int64_t i = 0; i < f->n_kv && rc == 0; i++) {
        rc = read_kv(c, &f->kv[i], i);
    }
    for (int64_t i = 0; i < f->n_kv && rc == 0; i++) {
        names[i] = f->kv[i].key;
    }
    if (rc == 0) {
        rc = check_unique(f, c, names, f->n_kv, "key");
    }
    f->alignment = TS_GGUF_DEFAULT_ALIGNMENT;
    const ts_gguf_kv *align = rc == 0 ? ts_gguf_find_kv(f, TS_KEY_ALIGNMENT) : NULL;
    if (align != NULL) {
        uint32_t a = 0;
        if (align->type == TS_GGUF_U32) {
            memcpy(&a, align->data, sizeof(a));
        }
        /* the GGUF spec's rule: a multiple of 8, so that every tensor's data is aligned for its elements (an F32 bias
         * at an odd address is undefined behaviour in every kernel that reads it as floats) */
        if (align->type != TS_GGUF_U32) {
            rc = ts_set_error(c->err, c->err_size, "%s: " TS_KEY_ALIGNMENT " must be a u32, got value type %d", f->path,
                              (int)align->type);
        } else if (a < 8 || (a & (a - 1)) != 0) {
            rc = ts_set_error(c->err, c->err_size,
                              "%s: " TS_KEY_ALIGNMENT " must be a power of two of at least 8, got %u", f->path, a);
        }
        f->alignment = a;
    }
    for (int64_t i = 0; i < f->n_tensors && rc == 0; i++) {
        rc = read_tensor_info(c, &f->tensors[i], &offsets[i]);
        if (rc == 0 && strlen(f->tensors[i].name) >= GGML_MAX_NAME) {
            rc = ts_set_error(c->err, c->err_size, "%s: tensor name '%s' is longer than %d characters", f->path,
                              f->tensors[i].name, GGML_MAX_NAME - 1);
        }
    }
    for (int64_t i = 0; i < f->n_tensors && rc == 0; i++) {
        names[i] = f->tensors[i].name;
    }
    if (rc == 0) {
        rc = check_unique(f, c, names, f->n_tensors, "tensor name");
    }
    if (rc == 0) {
        f->data_offset = (c->pos + f->alignment - 1) / f->alignment * f->alignment;
        for (int64_t i = 0; i < f->n_tensors && rc == 0; i++) {
            ts_gguf_tensor *t = &f->tensors[i];
            if (offsets[i] % f->alignment != 0) {
                rc = ts_set_error(c->err, c->err_size, "%s: corrupt file: tensor '%s' data offset %llu is not aligned to %u",
                                  f->path, t->name, (unsigned long long)offsets[i], f->alignment);
            } else if (f->data_offset > f->size || offsets[i] > f->size - f->data_offset ||
                       t->nbytes > f->size - f->data_offset - offsets[i]) {
                rc = ts_set_error(c->err, c->err_size,
                                  "%s: file truncated: tensor '%s' needs bytes up to %llu but the file has %zu", f->path,
                                  t->name, (unsigned long long)(f->data_offset + offsets[i] + t->nbytes), f->size);
            } else {
                t->data = (uint8_t *)f->map + f->data_offset + offsets[i];
            }
        }
    }
    free(offsets);
    free(names);
    return rc;
}

static ts_gguf_file *open_one(const char *path, char *err, size_t err_size) {
    ts_gguf_file *f = calloc(1, sizeof(*f));
    if (f == NULL) {
        ts_set_error(err, err_size, "%s: out of memory", path);
        return NULL;
    }
    f->path = strdup(path);
    if (f->path == NULL || map_file(path, &f->map, &f->size, err, err_size) != 0) {
        ts_gguf_close(f);
        return NULL;
    }
    cursor c = {.base = f->map, .size = f->size, .pos = 0, .path = f->path, .err = err, .err_size = err_size};
    if (parse_header(f, &c) != 0 || parse_body(f, &c) != 0) {
        ts_gguf_close(f);
        return NULL;
    }
    return f;
}

/* The shards' tensors appended to f's (names copied), every name once over all files, as many as
 * split.tensors.count says. */
static int gather_shard_tensors(ts_gguf_file *f, char *err, size_t err_size) {
    int64_t n_all = f->n_tensors, expected = 0;
    for (int k = 0; k < f->n_shards; k++) {
        n_all += f->shards[k]->n_tensors;
    }
    if (ts_gguf_get_i64(f, TS_KEY_SPLIT_TENSORS_COUNT, &expected, 1, err, err_size) != 0) {
        return -1;
    }
    if (expected != n_all) {
        return ts_set_error(err, err_size, "%s: " TS_KEY_SPLIT_TENSORS_COUNT " is %lld but the %d files hold %lld tensors",
                            f->path, (long long)expected, f->n_shards + 1, (long long)n_all);
    }
    ts_gguf_tensor *all = realloc(f->tensors, sizeof(ts_gguf_tensor) * (size_t)(n_all + 1));
    const char **names = calloc((size_t)n_all + 1, sizeof(char *));
    if (all != NULL) {
        f->tensors = all;
    }
    if (all == NULL || names == NULL) {
        free(names);
        return ts_set_error(err, err_size, "%s: out of memory", f->path);
    }
    for (int k = 0; k < f->n_shards; k++) {
        const ts_gguf_file *s = f->shards[k];
        for (int64_t i = 0; i < s->n_tensors; i++) {
            ts_gguf_tensor *t = &f->tensors[f->n_tensors];
            *t = s->tensors[i];
            t->name = strdup(s->tensors[i].name);
            if (t->name == NULL) {
                free(names);
                return ts_set_error(err, err_size, "%s: out of memory", f->path);
            }
            f->n_tensors++;
        }
    }
    for (int64_t i = 0; i < n_all; i++) {
        names[i] = f->tensors[i].name;
    }
    cursor c = {.path = f->path, .err = err, .err_size = err_size};
    const int rc = check_unique(f, &c, names, n_all, "tensor name (over its split files)");
    free(names);
    return rc;
}

/* how llama.cpp names file k (from 1) of a model split into n: PREFIX + this */
#define SPLIT_SUFFIX "-%05d-of-%05d.gguf"

/* f is the first file of a split model (or a whole one: nothing to do): the others opened, checked and their tensors
 * gathered, as llama.cpp's loader does. */
static int open_shards(ts_gguf_file *f, char *err, size_t err_size) {
    int64_t count = 1, no = 0;
    if (ts_gguf_get_i64(f, TS_KEY_SPLIT_COUNT, &count, 0, err, err_size) < 0) {
        return -1;
    }
    if (count <= 1) {
        return 0;
    }
    if (ts_gguf_get_i64(f, TS_KEY_SPLIT_NO, &no, 1, err, err_size) != 0) {
        return -1;
    }
    if (count > 99999) {
        return ts_set_error(err, err_size, "%s: " TS_KEY_SPLIT_COUNT " %lld is out of range", f->path, (long long)count);
    }
    if (no != 0) {
        return ts_set_error(err, err_size, "%s: file %lld of a model split into %lld files (" TS_KEY_SPLIT_NO "): "
                            "load the first, the file named ...-00001-of-%05lld.gguf", f->path, (long long)no + 1,
                            (long long)count, (long long)count);
    }
    char suffix[40];
    snprintf(suffix, sizeof(suffix), SPLIT_SUFFIX, 1, (int)count);
    const size_t n = strlen(f->path), n_suffix = strlen(suffix);
    if (n <= n_suffix || strcmp(f->path + n - n_suffix, suffix) != 0) {
        return ts_set_error(err, err_size, "%s: the first of %lld split files must be named PREFIX%s (the others are "
                            "found by that name, as llama.cpp finds them)", f->path, (long long)count, suffix);
    }
    f->shards = calloc((size_t)count - 1, sizeof(*f->shards));
    char *path = malloc(n + 1);
    int rc = f->shards != NULL && path != NULL ? 0 : ts_set_error(err, err_size, "%s: out of memory", f->path);
    for (int k = 1; k < count && rc == 0; k++) {
        memcpy(path, f->path, n - n_suffix);
        snprintf(path + n - n_suffix, n_suffix + 1, SPLIT_SUFFIX, k + 1, (int)count);
        ts_gguf_file *s = open_one(path, err, err_size);
        if (s == NULL) {
            rc = -1;
            break;
        }
        f->shards[f->n_shards++] = s;
        int64_t s_no = 0; /* llama.cpp reads split.no in each of the others, and no other key */
        rc = ts_gguf_get_i64(s, TS_KEY_SPLIT_NO, &s_no, 1, err, err_size) != 0 ? -1 : 0;
        if (rc == 0 && s_no != k) {
            rc = ts_set_error(err, err_size, "%s: " TS_KEY_SPLIT_NO " is %lld, expected %d (file %d of the %lld split "
                              "files of %s)", s->path, (long long)s_no, k, k + 1, (long long)count, f->path);
        }
    }
    free(path);
    return rc == 0 ? gather_shard_tensors(f, err, err_size) : -1;
}

ts_gguf_file *ts_gguf_open(const char *path, char *err, size_t err_size) {
    ts_gguf_file *f = open_one(path, err, err_size);
    if (f != NULL && open_shards(f, err, err_size) != 0) {
        ts_gguf_close(f);
        return NULL;
    }
    return f;
}

void ts_gguf_close(ts_gguf_file *f) {
    if (f == NULL) {
        return;
    }
    if (f->kv != NULL) {
        for (int64_t i = 0; i < f->n_kv; i++) {
            free(f->kv[i].key);
        }
    }
    if (f->tensors != NULL) {
        for (int64_t i = 0; i < f->n_tensors; i++) {
            free(f->tensors[i].name);
        }
    }
    free(f->kv);
    free(f->tensors);
    for (int k = 0; k < f->n_shards; k++) {
        ts_gguf_close(f->shards[k]);
    }
    free(f->shards);
    if (f->map != NULL) {
        munmap(f->map, f->size);
    }
    free(f->path);
    free(f);
}

int ts_gguf_mapping_of(const ts_gguf_file *f, const void *data) {
    for (int k = 0; k <= f->n_shards; k++) {
        const ts_gguf_file *file = k == 0 ? f : f->shards[k - 1];
        if ((const char *)data >= (const char *)file->map && (const char *)data < (const char *)file->map + file->size) {
            return k;
        }
    }
    return -1;
}

void ts_gguf_release(const ts_gguf_file *f, const void *data, size_t n) {
    const uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    const uintptr_t start = ((uintptr_t)data + page - 1) / page * page, end = ((uintptr_t)data + n) / page * page;
    const int k = ts_gguf_mapping_of(f, data);
    const ts_gguf_file *file = k > 0 ? f->shards[k - 1] : f;
    if (end > start && k >= 0 && (const char *)data + n <= (const char *)file->map + file->size) {
        madvise((void *)start, end - start, MADV_DONTNEED); /* advice only: a failure leaves the pages mapped */
    }
}

const ts_gguf_kv *ts_gguf_find_kv(const ts_gguf_file *f, const char *key) {
    for (int64_t i = 0; i < f->n_kv; i++) {
        if (f->kv[i].key != NULL && strcmp(f->kv[i].key, key) == 0) {
            return &f->kv[i];
        }
    }
    return NULL;
}

const ts_gguf_tensor *ts_gguf_find_tensor(const ts_gguf_file *f, const char *name) {
    for (int64_t i = 0; i < f->n_tensors; i++) {
        if (strcmp(f->tensors[i].name, name) == 0) {
            return &f->tensors[i];
        }
    }
    return NULL;
}

int ts_gguf_split(ts_gguf_file *f, const char *name, int64_t ne0, int n_parts, const char *const *part_names,
                  const int64_t *part_sizes, char *err, size_t err_size) {
    const ts_gguf_tensor *t = ts_gguf_find_tensor(f, name);
    if (t == NULL) {
        return 1;
    }
    int64_t total = 0;
    for (int k = 0; k < n_parts; k++) {
        total += part_sizes[k];
        if (strcmp(part_names[k], name) != 0 && ts_gguf_find_tensor(f, part_names[k]) != NULL) {
            return ts_set_error(err, err_size, "%s: tensors '%s' and '%s' both: the second holds the first's rows",
                                f->path, part_names[k], name);
        }
    }
    const int matrix = ne0 > 0;
    const int64_t want[4] = {matrix ? ne0 : total, matrix ? total : 1, 1, 1};
    int shape_ok = n_parts <= 8 && (matrix || ggml_blck_size((enum ggml_type)t->type) == 1);
    for (int i = 0; i < 4; i++) {
        shape_ok = shape_ok && t->ne[i] == want[i];
    }
    if (!shape_ok) {
        return ts_set_error(err, err_size, "%s: tensor '%s' has shape [%lld, %lld, %lld, %lld] and type %s, expected "
                            "[%lld, %lld, 1, 1]%s", f->path, name, (long long)t->ne[0], (long long)t->ne[1],
                            (long long)t->ne[2], (long long)t->ne[3], ggml_type_name((enum ggml_type)t->type),
                            (long long)want[0], (long long)want[1], matrix ? "" : " of a type without blocks");
    }
    char *names[8] = {0};
    int ok = 1;
    for (int k = 0; k < n_parts && ok; k++) {
        ok = (names[k] = strdup(part_names[k])) != NULL;
    }
    const int64_t at = t - f->tensors;
    ts_gguf_tensor *grown = ok ? realloc(f->tensors, sizeof(ts_gguf_tensor) * (size_t)(f->n_tensors + n_parts)) : NULL;
    if (grown == NULL) {
        for (int k = 0; k < n_parts; k++) {
            free(names[k]);
        }
        return ts_set_error(err, err_size, "%s: out of memory", f->path);
    }
    f->tensors = grown;
    const ts_gguf_tensor whole = f->tensors[at];
    const size_t unit = whole.nbytes / (size_t)total; /* a row's bytes, or an element's */
    int64_t done = 0;
    for (int k = 0; k < n_parts; k++) {
        ts_gguf_tensor *part = k == 0 ? &f->tensors[at] : &f->tensors[f->n_tensors + k - 1];
        *part = whole;
        part->name = names[k];
        part->ne[matrix ? 1 : 0] = part_sizes[k];
        part->nbytes = unit * (size_t)part_sizes[k];
        part->data = (char *)whole.data + unit * (size_t)done;
        done += part_sizes[k];
    }
    free(whole.name);
    f->n_tensors += n_parts - 1;
    return 0;
}

/* Converts one numeric value; returns 0, or -1 for a non-numeric type. */
static int numeric_value(uint32_t type, const uint8_t *p, double *out) {
    union {
        uint8_t u8;
        int8_t i8;
        uint16_t u16;
        int16_t i16;
        uint32_t u32;
        int32_t i32;
        float f32;
        uint64_t u64;
        int64_t i64;
        double f64;
    } v;
    size_t sz = value_type_size(type);
    if (sz == 0) {
        return -1;
    }
    memcpy(&v, p, sz);
    switch (type) {
    case TS_GGUF_U8: *out = v.u8; break;
    case TS_GGUF_I8: *out = v.i8; break;
    case TS_GGUF_BOOL: *out = v.u8 != 0; break;
    case TS_GGUF_U16: *out = v.u16; break;
    case TS_GGUF_I16: *out = v.i16; break;
    case TS_GGUF_U32: *out = v.u32; break;
    case TS_GGUF_I32: *out = v.i32; break;
    case TS_GGUF_F32: *out = v.f32; break;
    case TS_GGUF_U64: *out = (double)v.u64; break;
    case TS_GGUF_I64: *out = (double)v.i64; break;
    case TS_GGUF_F64: *out = v.f64; break;
    default: return -1;
    }
    return 0;
}

static int is_integer_type(uint32_t type) {
    return type == TS_GGUF_U8 || type == TS_GGUF_I8 || type == TS_GGUF_U16 || type == TS_GGUF_I16 ||
           type == TS_GGUF_U32 || type == TS_GGUF_I32 || type == TS_GGUF_U64 || type == TS_GGUF_I64 ||
           type == TS_GGUF_BOOL;
}

static int missing(const ts_gguf_file *f, const char *key, int required, char *err, size_t err_size) {
    if (required) {
        return ts_set_error(err, err_size, "%s: missing metadata key '%s'", f->path, key);
    }
    return 1;
}

int ts_gguf_get_i64(const ts_gguf_file *f, const char *key, int64_t *out, int required, char *err, size_t err_size) {
    const ts_gguf_kv *kv = ts_gguf_find_kv(f, key);
    if (kv == NULL) {
        return missing(f, key, required, err, err_size);
    }
    double v = 0;
    if (!is_integer_type(kv->type) || numeric_value(kv->type, kv->data, &v) != 0) {
        return ts_set_error(err, err_size, "%s: metadata key '%s' must be an integer (has value type %u)", f->path, key,
                            kv->type);
    }
    if (kv->type == TS_GGUF_U64 || kv->type == TS_GGUF_I64) {
        memcpy(out, kv->data, sizeof(*out)); /* exact, not through double */
        if (kv->type == TS_GGUF_U64 && *out < 0) {
            return ts_set_error(err, err_size, "%s: metadata key '%s' is out of range", f->path, key);
        }
        return 0;
    }
    *out = (int64_t)v;
    return 0;
}

int ts_gguf_get_f32(const ts_gguf_file *f, const char *key, float *out, int required, char *err, size_t err_size) {
    const ts_gguf_kv *kv = ts_gguf_find_kv(f, key);
    if (kv == NULL) {
        return missing(f, key, required, err, err_size);
    }
    double v = 0;
    if (kv->type == TS_GGUF_STRING || kv->type == TS_GGUF_ARRAY || numeric_value(kv->type, kv->data, &v) != 0) {
        return ts_set_error(err, err_size, "%s: metadata key '%s' must be a number (has value type %u)", f->path, key,
                            kv->type);
    }
    *out = (float)v;
    return 0;
}

int ts_gguf_get_str(const ts_gguf_file *f, const char *key, char *buf, size_t buf_size, int required, char *err,
                    size_t err_size) {
    const ts_gguf_kv *kv = ts_gguf_find_kv(f, key);
    if (kv == NULL) {
        return missing(f, key, required, err, err_size);
    }
    if (kv->type != TS_GGUF_STRING) {
        return ts_set_error(err, err_size, "%s: metadata key '%s' must be a string (has value type %u)", f->path, key,
                            kv->type);
    }
    uint64_t len = 0;
    memcpy(&len, kv->data, sizeof(len));
    if (len + 1 > buf_size) {
        return ts_set_error(err, err_size, "%s: metadata key '%s' is longer than %zu characters", f->path, key,
                            buf_size - 1);
    }
    memcpy(buf, kv->data + sizeof(len), (size_t)len);
    buf[len] = '\0';
    return 0;
}

/* Shared body of the numeric array getters: fills out_f64[0..n). */
static int get_numeric_array(const ts_gguf_file *f, const char *key, double *vals, int64_t n, int required, char *err,
                             size_t err_size) {
    const ts_gguf_kv *kv = ts_gguf_find_kv(f, key);
    if (kv == NULL) {
        return missing(f, key, required, err, err_size);
    }
    size_t esz = value_type_size(kv->elem_type);
    if (kv->type != TS_GGUF_ARRAY || esz == 0) {
        return ts_set_error(err, err_size, "%s: metadata key '%s' must be a numeric array", f->path, key);
    }
    if ((int64_t)kv->n != n) {
        return ts_set_error(err, err_size, "%s: metadata key '%s' has %llu elements, expected %lld", f->path, key,
                            (unsigned long long)kv->n, (long long)n);
    }
    for (int64_t i = 0; i < n; i++) {
        numeric_value(kv->elem_type, kv->data + (size_t)i * esz, &vals[i]);
    }
    return 0;
}

/* One integer value of an integer type, exactly (not through double); -1 when it does not fit int64. */
static int integer_value(uint32_t type, const uint8_t *p, int64_t *out) {
    if (type == TS_GGUF_U64) {
        uint64_t u = 0;
        memcpy(&u, p, sizeof(u));
        *out = (int64_t)u;
        return u > (uint64_t)INT64_MAX ? -1 : 0;
    }
    if (type == TS_GGUF_I64) {
        memcpy(out, p, sizeof(*out));
        return 0;
    }
    double v = 0; /* every narrower integer is exact in a double */
    numeric_value(type, p, &v);
    *out = (int64_t)v;
    return 0;
}

int ts_gguf_get_arr_i64(const ts_gguf_file *f, const char *key, int64_t *out, int64_t n, int required, char *err,
                        size_t err_size) {
    const ts_gguf_kv *kv = ts_gguf_find_kv(f, key);
    if (kv == NULL) {
        return missing(f, key, required, err, err_size);
    }
    if (kv->type != TS_GGUF_ARRAY || !is_integer_type(kv->elem_type)) {
        return ts_set_error(err, err_size, "%s: metadata key '%s' must be an integer array", f->path, key);
    }
    if (kv->n != (uint64_t)n) {
        return ts_set_error(err, err_size, "%s: metadata key '%s' has %llu elements, expected %lld", f->path, key,
                            (unsigned long long)kv->n, (long long)n);
    }
    const size_t esz = value_type_size(kv->elem_type);
    for (int64_t i = 0; i < n; i++) {
        if (integer_value(kv->elem_type, kv->data + (size_t)i * esz, &out[i]) != 0) {
            return ts_set_error(err, err_size, "%s: metadata key '%s' element %lld is out of range", f->path, key,
                                (long long)i);
        }
    }
    return 0;
}

int ts_gguf_get_arr_f32(const ts_gguf_file *f, const char *key, float *out, int64_t n, int required, char *err,
                        size_t err_size) {
    double *vals = malloc(sizeof(double) * (size_t)(n > 0 ? n : 1));
    if (vals == NULL) {
        return ts_set_error(err, err_size, "out of memory");
    }
    int rc = get_numeric_array(f, key, vals, n, required, err, err_size);
    for (int64_t i = 0; rc == 0 && i < n; i++) {
        out[i] = (float)vals[i];
        if (!isfinite(out[i])) {
            rc = ts_set_error(err, err_size, "%s: metadata key '%s' element %lld is not finite", f->path, key,
                              (long long)i);
        }
    }
    free(vals);
    return rc;
}

/* FNV-1a: spreads token texts over the duplicate check's table */
static uint64_t text_hash(const uint8_t *p, uint64_t n) {
    uint64_t h = 1469598103934665603ull;
    for (uint64_t i = 0; i < n; i++) {
        h = (h ^ p[i]) * 1099511628211ull;
    }
    return h;
}

/* The string array under key; NULL where the key is absent or holds something else. */
static const ts_gguf_kv *string_array(const ts_gguf_file *f, const char *key) {
    const ts_gguf_kv *kv = ts_gguf_find_kv(f, key);
    return kv != NULL && kv->type == TS_GGUF_ARRAY && kv->elem_type == TS_GGUF_STRING ? kv : NULL;
}

/* A string array's next string: its bytes (*len of them); *p moves past it. Each is a u64 length, then the bytes
 * (bounds checked when the file was opened). */
static const uint8_t *next_string(const uint8_t **p, uint64_t *len) {
    memcpy(len, *p, sizeof(*len));
    const uint8_t *text = *p + sizeof(*len);
    *p = text + *len;
    return text;
}

int ts_gguf_check_unique_strings(const ts_gguf_file *f, const char *key, char *err, size_t err_size) {
    const ts_gguf_kv *kv = string_array(f, key);
    if (kv == NULL || kv->n < 2) {
        return 0;
    }
    /* open addressing, at most half full; a slot holds 1 + the index of the string whose text it keeps */
    uint64_t n_slots = 2;
    while (n_slots < 2 * kv->n) {
        n_slots *= 2;
    }
    uint64_t *slots = calloc(n_slots, sizeof(*slots));
    const uint8_t **texts = malloc(sizeof(*texts) * kv->n);
    uint64_t *lens = malloc(sizeof(*lens) * kv->n);
    int rc = 0;
    if (slots == NULL || texts == NULL || lens == NULL) {
        rc = ts_set_error(err, err_size, "out of memory");
    }
    const uint8_t *p = kv->data;
    for (uint64_t i = 0; rc == 0 && i < kv->n; i++) {
        texts[i] = next_string(&p, &lens[i]);
        uint64_t s = text_hash(texts[i], lens[i]) & (n_slots - 1);
        for (; slots[s] != 0; s = (s + 1) & (n_slots - 1)) {
            const uint64_t j = slots[s] - 1;
            if (lens[j] == lens[i] && memcmp(texts[j], texts[i], (size_t)lens[i]) == 0) {
                rc = ts_set_error(err, err_size,
                                  "%s: %s holds the same text twice (tokens %llu and %llu): llama.cpp's vocabulary "
                                  "needs each token once",
                                  f->path, key, (unsigned long long)j, (unsigned long long)i);
                break;
            }
        }
        slots[s] = i + 1;
    }
    free(slots);
    free(texts);
    free(lens);
    return rc;
}

static int hex_digit(uint8_t c) {
    if (c >= '0' && c <= '9') {
        return c - '0';
    }
    if (c >= 'A' && c <= 'F') {
        return c - 'A' + 10;
    }
    return -1;
}

/* The byte a token's text "<0xHH>" (SentencePiece's spelling, upper-case hex) stands for; -1 for any other text. */
static int byte_token(const uint8_t *text, uint64_t len) {
    if (len != 6 || text[0] != '<' || text[1] != '0' || text[2] != 'x' || text[5] != '>') {
        return -1;
    }
    const int hi = hex_digit(text[3]);
    const int lo = hex_digit(text[4]);
    return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
}

int ts_gguf_check_byte_tokens(const ts_gguf_file *f, const char *key, char *err, size_t err_size) {
    const ts_gguf_kv *kv = string_array(f, key);
    if (kv == NULL) {
        return 0;
    }
    uint8_t seen[256] = {0};
    int n_seen = 0;
    const uint8_t *p = kv->data;
    for (uint64_t i = 0; i < kv->n; i++) {
        uint64_t len = 0;
        const uint8_t *text = next_string(&p, &len);
        const int byte = byte_token(text, len);
        if (byte >= 0 && !seen[byte]) {
            seen[byte] = 1;
            n_seen++;
        }
    }
    if (n_seen == 256) {
        return 0;
    }
    int missing_byte = 0;
    while (seen[missing_byte]) {
        missing_byte++;
    }
    return ts_set_error(err, err_size,
                        "%s: %s has no byte token <0x%02X> (%d of the 256 missing): a SentencePiece vocabulary "
                        "needs <0x00>..<0xFF>, which llama.cpp's tokenizer falls back to for text outside the "
                        "vocabulary (it aborts without them)",
                        f->path, key, missing_byte, 256 - n_seen);
}
