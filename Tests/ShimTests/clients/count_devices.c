/* What a program finds when there is no device: dlopen libcuda.so.1, cuInit,
 * cuDeviceGetCount. Prints "cuInit <result> count <n>"; the library says why
 * on stderr, once. */
#include <dlfcn.h>
#include <stdio.h>

int main(void) {
  void *lib = dlopen("libcuda.so.1", RTLD_NOW);
  if (!lib) {
    printf("dlopen failed: %s\n", dlerror());
    return 1;
  }
  int (*cuInit)(unsigned int) = (int (*)(unsigned int))dlsym(lib, "cuInit");
  int (*cuDeviceGetCount)(int *) = (int (*)(int *))dlsym(lib, "cuDeviceGetCount");
  int (*cuDeviceGet)(int *, int) = (int (*)(int *, int))dlsym(lib, "cuDeviceGet");
  int init = cuInit(0);
  int count = -1;
  int r = cuDeviceGetCount(&count);
  int dev = -1;
  int get = cuDeviceGet(&dev, 0);
  /* Asking again says nothing more. */
  cuInit(0);
  cuDeviceGetCount(&count);
  printf("cuInit %d count %d (%d) cuDeviceGet %d\n", init, count, r, get);
  return 0;
}
