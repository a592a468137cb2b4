#define _GNU_SOURCE
#include "trampoline.h"

#include <dlfcn.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static pthread_once_t once = PTHREAD_ONCE_INIT;
static void *core;

static void say(const char *a, const char *b) {
  char line[PATH_MAX + 512];
  int n = snprintf(line, sizeof line, "vgpu: %s%s\n", a, b ? b : "");
  if (n > 0) (void)!write(2, line, (size_t)(n < (int)sizeof line ? n : (int)sizeof line - 1));
}

/* dladdr on one of our own functions names the file this library was loaded
 * from; the core sits beside it. */
static void load_core(void) {
  Dl_info info;
  char path[PATH_MAX];
  if (!dladdr((void *)&vgpu_core_symbol, &info) || !info.dli_fname) {
    say("cannot find where this library was loaded from", NULL);
    return;
  }
  const char *slash = strrchr(info.dli_fname, '/');
  size_t dir = slash ? (size_t)(slash - info.dli_fname + 1) : 0;
  if (dir + sizeof "libvgpucore.so" > sizeof path) return;
  memcpy(path, info.dli_fname, dir);
  strcpy(path + dir, "libvgpucore.so");
  core = dlopen(path, RTLD_NOW | RTLD_LOCAL);
  if (!core) say("cannot load the vgpu core: ", dlerror());
}

void *vgpu_core_symbol(const char *name) {
  pthread_once(&once, load_core);
  if (!core) return NULL;
  char full[256];
  snprintf(full, sizeof full, "vgpucore_%s", name);
  void *p = dlsym(core, full);
  return p;
}
