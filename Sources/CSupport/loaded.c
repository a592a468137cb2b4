#define _GNU_SOURCE
#include "CSupport.h"

#include <dlfcn.h>

const char *vgpu_loaded_file(const void *address) {
  Dl_info info;
  if (!dladdr(address, &info)) return NULL;
  return info.dli_fname;
}
