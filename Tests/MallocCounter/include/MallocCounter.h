#ifndef MALLOC_COUNTER_H
#define MALLOC_COUNTER_H
#include <stdint.h>
// Heap allocations made by the calling thread since it started (all kinds:
// malloc, calloc, realloc, aligned). Linked into the test executable, the
// replacements in counter.c see every allocation of the process.
uint64_t malloc_counter_thread_allocations(void);
#endif
