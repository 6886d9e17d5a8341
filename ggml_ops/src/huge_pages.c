#include "huge_pages.h"
#include "turbosparse.h"

#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define TS_HUGE_PAGE ((size_t)2 << 20)

int ts_huge_pages_available(void) {
#ifdef MADV_HUGEPAGE
    /* e.g. "always [madvise] never": the bracketed word is the setting */
    FILE *f = fopen("/sys/kernel/mm/transparent_hugepage/enabled", "r");
    if (f == NULL) {
        return 0;
    }
    char line[128] = {0};
    const int ok = fgets(line, sizeof(line), f) != NULL && strstr(line, "[never]") == NULL;
    fclose(f);
    return ok;
#else
    return 0;
#endif
}

uint64_t ts_memory_available(void) {
    FILE *f = fopen("/proc/meminfo", "r");
    if (f != NULL) {
        char line[256];
        unsigned long long kib = 0;
        int found = 0;
        while (!found && fgets(line, sizeof(line), f) != NULL) {
            found = sscanf(line, "MemAvailable: %llu kB", &kib) == 1;
        }
        fclose(f);
        if (found) {
            return (uint64_t)kib * 1024;
        }
    }
#ifdef _SC_AVPHYS_PAGES
    const long pages = sysconf(_SC_AVPHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    return pages > 0 && page > 0 ? (uint64_t)pages * (uint64_t)page : 0;
#else
    return 0;
#endif
}

void ts_huge_advise(void *p, size_t n) {
#ifdef MADV_HUGEPAGE
    const uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    const uintptr_t start = ((uintptr_t)p + page - 1) / page * page, end = ((uintptr_t)p + n) / page * page;
    if (end > start) {
        madvise((void *)start, end - start, MADV_HUGEPAGE); /* advice only: a kernel without THP keeps small pages */
    }
#else
    (void)p;
    (void)n;
#endif
}

/* Map n + 2 MiB, keep the 2 MiB-aligned n bytes inside, unmap the rest. */
void *ts_huge_alloc(size_t n) {
    if (n == 0) {
        return NULL;
    }
    const size_t len = (n + TS_HUGE_PAGE - 1) / TS_HUGE_PAGE * TS_HUGE_PAGE;
    char *raw = mmap(NULL, len + TS_HUGE_PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (raw == MAP_FAILED) {
        return NULL;
    }
    char *p = (char *)(((uintptr_t)raw + TS_HUGE_PAGE - 1) & ~(uintptr_t)(TS_HUGE_PAGE - 1));
    if (p > raw) {
        munmap(raw, (size_t)(p - raw));
    }
    const size_t tail = (size_t)(raw + TS_HUGE_PAGE - p); /* what the aligned start left after p + len */
    if (tail > 0) {
        munmap(p + len, tail);
    }
    ts_huge_advise(p, len);
    return p;
}

void ts_huge_free(void *p, size_t n) {
    if (p != NULL) {
        munmap(p, (n + TS_HUGE_PAGE - 1) / TS_HUGE_PAGE * TS_HUGE_PAGE);
    }
}
