/*
 * Software prefetching of scattered rows, shared by the sparse kernels of every instruction set. The rows a sparse
 * kernel reads (the active neurons') are scattered, so the hardware prefetcher cannot guess them. A kernel asks for
 * the next pass's rows a cache line at a time while it reads the current pass's, at the offset it is reading: a
 * whole pass of lead time, far more than a memory latency. Asking for a whole pass in one burst instead overruns
 * the core's queue of outstanding misses, and the rest of the burst stalls or is dropped (the sparse down kernels
 * ran 10-40 % slower that way on a Zen 3).
 * The lines go to the L2 cache, not L1 (prefetcht1 on x86, PRFM PLDL2KEEP on ARM): an L1 prefetch holds one of the
 * core's few L1 miss buffers until its line arrives, which caps the misses in flight; an L2 one does not, and the
 * L1 then fills from L2 in a few cycles. On an AMD EPYC Zen 4 (2 threads) the sparse FFN of `bench --ffn-layer` read
 * Q4_0 / Q8_0 / Q4_K at 25 / 28 / 25 -> 29 / 31 / 28 GB/s so, and the Mixtral twin decoded 1.01-1.14x faster (the
 * Intel Xeon kind measured no difference; the pass sizes were tuned with L1 prefetches, on Zen 3).
 */
#ifndef TS_ROW_PREFETCH_H
#define TS_ROW_PREFETCH_H

#include <stddef.h>

typedef struct {
    const void *const *rows; /* the next pass's rows, at the byte the pass starts reading */
    int n;                   /* how many (0: nothing to prefetch) */
    size_t done;             /* bytes of each already asked for */
} ts_row_prefetcher;

/* Asks for the cache line at p (into L2, see above). */
static inline __attribute__((always_inline)) void ts_prefetch_line(const void *p) {
    __builtin_prefetch(p, 0, 2);
}

/* Asks for the rows' lines up to byte `upto` of each (past a row's end is harmless: prefetches never fault). */
static inline __attribute__((always_inline)) void ts_prefetch_upto(ts_row_prefetcher *pf, size_t upto) {
    for (; pf->done < upto; pf->done += 64) {
        for (int k = 0; k < pf->n; k++) {
            ts_prefetch_line((const char *)pf->rows[k] + pf->done);
        }
    }
}

/* Asks for the first `bytes` of each row at once (a first pass, which has nothing to overlap with). */
static inline void ts_prefetch_rows(const void *const *rows, int n, size_t bytes) {
    ts_row_prefetcher pf = {rows, n, 0};
    ts_prefetch_upto(&pf, bytes + 64);
}

#endif
