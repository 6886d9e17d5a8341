/*
 * Anonymous memory for the weights the sparse FFN reads row by row, backed by transparent huge pages where the OS
 * has them (Linux, THP "madvise" or "always"). A token's sparse FFN gathers rows scattered over the whole matrix:
 * with 4 KiB pages nearly every row starts in a page whose translation is not in the TLB; 2 MiB pages cover a
 * Mistral-7B gate matrix with 17 entries. Where huge pages are unavailable the memory is ordinary pages.
 */
#ifndef TS_HUGE_PAGES_H
#define TS_HUGE_PAGES_H

#include <stddef.h>

/* 1 when the OS backs ts_huge_alloc's memory with huge pages (Linux with transparent huge pages not "never"). */
int ts_huge_pages_available(void);

/* n bytes, 2 MiB aligned, not yet touched; NULL when out of memory. Free with ts_huge_free(p, n). */
void *ts_huge_alloc(size_t n);
void ts_huge_free(void *p, size_t n);

/* Ask for huge pages on memory someone else allocated, before it is first written (advice only). */
void ts_huge_advise(void *p, size_t n);

#endif
