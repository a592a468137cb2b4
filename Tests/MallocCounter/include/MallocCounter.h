#ifndef MALLOC_COUNTER_H
#define MALLOC_COUNTER_H
#include <stdint.h>
// Heap allocations made by the calling thread since it started (all kinds:
// malloc, calloc, realloc, aligned). Linked into the test executable, the
// replacements in counter.c see every allocation of the process.
uint64_t malloc_counter_thread_allocations(void);
// The same, made by every thread of the process (for a benchmark whose
// device side runs on a thread of its own).
uint64_t malloc_counter_process_allocations(void);
#endif
