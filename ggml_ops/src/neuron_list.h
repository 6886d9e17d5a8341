/*
 * Lists of the neurons one token picks, gathered from its values by comparison masks: 64 neurons' comparisons become
 * one word of bits (4 per vector compare and move-mask, SSE2 on x86-64, NEON on AArch64, a plain loop elsewhere),
 * and the set bits are taken out one by one. Decoding runs the selection over every neuron of a layer for each token
 * (14,336 for Mistral-7B) while the selected ones are ~10 %; a loop that looks at each value in turn cost ~2 ns a
 * neuron, ~29 microseconds a layer (~15 on each of 2 threads), during which no row was read.
 *
 * The comparisons are those of C: x >= t and x > t are false for a NaN, x != 0 is true for one.
 */
#ifndef TS_NEURON_LIST_H
#define TS_NEURON_LIST_H

#include <stdint.h>

typedef enum {
    TS_PICK_AT_LEAST = 0, /* x >= t */
    TS_PICK_ABOVE = 1,    /* x > t */
} ts_pick_kind;

typedef struct {
    ts_pick_kind kind;
    float t;
} ts_pick;

/*
 * The next neurons j in [*j, j1) that p picks from x[j], in order, at most cap (>= 1) of them, into list; *j moves past
 * the last neuron looked at (to the first picked one left out when the list filled). Returns how many.
 */
int ts_pick_next(const float *x, int64_t *j, int64_t j1, ts_pick p, int32_t *list, int cap);

/* The neurons j < n with a[j] != 0 in order, their indices into idx and their values into val; returns how many. */
int64_t ts_nonzero_list(const float *a, int64_t n, int32_t *idx, float *val);

#endif
