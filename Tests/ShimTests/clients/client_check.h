/* What the PTX-driven C clients share: reading a file the test wrote, and
 * EXPECT, which prints a FAIL line and counts instead of stopping, so that
 * one run shows every broken expectation. */
#ifndef CLIENT_CHECK_H
#define CLIENT_CHECK_H
#include <stdio.h>
#include <stdlib.h>

/* The whole file, NUL-terminated (PTX is text), or NULL. */
static char *readFile(const char *path) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  char *p = calloc((size_t)n + 1, 1);
  if (fread(p, 1, (size_t)n, f) != (size_t)n) n = 0;
  fclose(f);
  return p;
}

static int failures;
#define EXPECT(cond, ...)                 \
  do {                                    \
    if (!(cond)) {                        \
      printf("FAIL line %d: ", __LINE__); \
      printf(__VA_ARGS__);                \
      printf("\n");                       \
      failures++;                         \
    }                                     \
  } while (0)

#endif
