/*
 * Software prefetching of scattered rows, shared by the sparse kernels of every instruction set. The rows a sparse
 * kernel reads (the active neurons') are scattered, so the hardware prefetcher cannot guess them. A kernel asks for
 * the next pass's rows a cache line at a time while it reads the current pass's, at the offset it is reading: a
 * whole pass of lead time, far more than a memory latency. Asking for a whole pass in one burst instead overruns
 * the core's queue of outstanding misses, and the rest of the burst stalls or is dropped (the sparse down kernels
 * ran 10-40 % slower that way on a Zen 3).
 */
#ifndef TS_ROW_PREFETCH_H
#define TS_ROW_PREFETCH_H

#include <stddef.h>

typedef struct {
    const void *const *rows; /* the next pass's rows, at the byte the pass starts reading */
    int n;                   /* how many (0: nothing to prefetch) */
    size_t done;             /* bytes of each already asked for */
} ts_row_prefetcher;

/* Asks for the rows' lines up to byte `upto` of each (past a row's end is harmless: prefetches never fault). */
static inline __attribute__((always_inline)) void ts_prefetch_upto(ts_row_prefetcher *pf, size_t upto) {
    for (; pf->done < upto; pf->done += 64) {
        for (int k = 0; k < pf->n; k++) {
            __builtin_prefetch((const char *)pf->rows[k] + pf->done);
        }
    }
}

/* Asks for the first `bytes` of each row at once (a first pass, which has nothing to overlap with). */
static inline void ts_prefetch_rows(const void *const *rows, int n, size_t bytes) {
    ts_row_prefetcher pf = {rows, n, 0};
    ts_prefetch_upto(&pf, bytes + 64);
}

#endif
