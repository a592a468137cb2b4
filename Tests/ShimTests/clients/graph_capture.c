/* Stream capture and CUDA graphs through libcuda.so.1.
 * argv[1]: PTX of Tests/Kernels/saxpy.cu (y[i] = a * x[i] + y[i]).
 *   1. Capture on a stream: a host-to-device copy of x, a memset of y to 1.0f,
 *      saxpy twice, an event record, a device-to-host copy of y. Nothing runs
 *      while capturing; the captured event cannot be queried (907).
 *   2. Instantiate and launch twice, with new host x between the launches:
 *      each launch reads x and writes y as the graph runs, with the kernel
 *      parameters of capture time; y is checked against the CPU each time.
 *   3. Errors: a synchronous copy while capturing in global mode (900, the
 *      capture is invalidated, cuStreamEndCapture gives 901 and no graph);
 *      cuStreamSynchronize of a capturing stream (900); end capture on a
 *      stream not capturing (401); capture on the NULL stream (900); capture
 *      begun twice (401); launching a destroyed exec (400); a synchronous copy
 *      in relaxed mode is allowed, and so is one from a thread whose interaction
 *      mode is relaxed (cuThreadExchangeStreamCaptureMode); another stream
 *      waiting on an event recorded in the capture (a fork) is refused (801)
 *      and invalidates it.
 *   4. A user object moved to the graph during capture lives until the graph
 *      and both of its instantiations are destroyed; then its destructor runs once.
 * Prints "step result" lines; exits 0 when every expectation held. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client_check.h"

typedef int CUresult;
typedef unsigned long long CUdeviceptr;
typedef unsigned long long cuuint64_t;
typedef struct CUctx_st *CUcontext;
typedef struct CUmod_st *CUmodule;
typedef struct CUfunc_st *CUfunction;
typedef struct CUstream_st *CUstream;
typedef struct CUevent_st *CUevent;
typedef struct CUgraph_st *CUgraph;
typedef struct CUgraphExec_st *CUgraphExec;
typedef struct CUgraphNode_st *CUgraphNode;
typedef struct CUuserObject_st *CUuserObject;
typedef struct {
  cuuint64_t flags;
  CUstream hUploadStream;
  CUgraphNode hErrNode_out;
  int result_out;
} CUDA_GRAPH_INSTANTIATE_PARAMS;

enum { GLOBAL = 0, THREAD_LOCAL = 1, RELAXED = 2 };

CUresult cuInit(unsigned);
CUresult cuCtxCreate_v2(CUcontext *, unsigned, int);
CUresult cuCtxSynchronize(void);
CUresult cuMemAlloc_v2(CUdeviceptr *, size_t);
CUresult cuMemcpyHtoD_v2(CUdeviceptr, const void *, size_t);
CUresult cuMemcpyDtoH_v2(void *, CUdeviceptr, size_t);
CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr, const void *, size_t, CUstream);
CUresult cuMemcpyDtoHAsync_v2(void *, CUdeviceptr, size_t, CUstream);
CUresult cuMemsetD32Async(CUdeviceptr, unsigned, size_t, CUstream);
CUresult cuModuleLoadData(CUmodule *, const void *);
CUresult cuModuleGetFunction(CUfunction *, CUmodule, const char *);
CUresult cuLaunchKernel(CUfunction, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, CUstream,
                        void **, void **);
CUresult cuStreamCreate(CUstream *, unsigned);
CUresult cuStreamSynchronize(CUstream);
CUresult cuStreamIsCapturing(CUstream, int *);
CUresult cuStreamBeginCapture_v2(CUstream, int);
CUresult cuStreamEndCapture(CUstream, CUgraph *);
CUresult cuStreamGetCaptureInfo_v2(CUstream, int *, cuuint64_t *, CUgraph *, const CUgraphNode **, size_t *);
CUresult cuThreadExchangeStreamCaptureMode(int *);
CUresult cuStreamWaitEvent(CUstream, CUevent, unsigned);
CUresult cuEventCreate(CUevent *, unsigned);
CUresult cuEventRecord(CUevent, CUstream);
CUresult cuEventQuery(CUevent);
CUresult cuGraphInstantiateWithFlags(CUgraphExec *, CUgraph, unsigned long long);
CUresult cuGraphInstantiateWithParams(CUgraphExec *, CUgraph, CUDA_GRAPH_INSTANTIATE_PARAMS *);
CUresult cuGraphLaunch(CUgraphExec, CUstream);
CUresult cuGraphExecDestroy(CUgraphExec);
CUresult cuGraphDestroy(CUgraph);
CUresult cuUserObjectCreate(CUuserObject *, void *, void (*)(void *), unsigned, unsigned);
CUresult cuGraphRetainUserObject(CUgraph, CUuserObject, unsigned, unsigned);

enum { N = 1000 };
static float x[N], y[N];

/* A user object's destructor: counts its calls. */
static int destroyed;
static void countDestruction(void *p) { destroyed += p == &destroyed; }

/* Whether y holds saxpy applied twice with `a` to x from y = 1. The values
 * (multiples of 0.25 below 10^4) make every product and sum exact, so the
 * device's fused multiply-add and this reference agree to the bit. */
static int checkY(float a, const char *what) {
  int bad = 0;
  for (int i = 0; i < N; i++) {
    float want = a * x[i] + (a * x[i] + 1.0f);
    if (y[i] != want && bad++ < 3) printf("%s: y[%d] = %g, want %g\n", what, i, (double)y[i], (double)want);
  }
  return bad == 0;
}

int main(int argc, char **argv) {
  if (argc < 2) return 2;
  char *ptx = readFile(argv[1]);
  CUcontext ctx;
  CUmodule m;
  CUfunction saxpy;
  EXPECT(cuInit(0) == 0 && cuCtxCreate_v2(&ctx, 0, 0) == 0, "init");
  EXPECT(cuModuleLoadData(&m, ptx) == 0 && cuModuleGetFunction(&saxpy, m, "saxpy") == 0, "load saxpy");
  CUdeviceptr dx, dy;
  EXPECT(cuMemAlloc_v2(&dx, sizeof x) == 0 && cuMemAlloc_v2(&dy, sizeof y) == 0, "alloc");
  CUstream s;
  CUevent ev;
  EXPECT(cuStreamCreate(&s, 0) == 0 && cuEventCreate(&ev, 0) == 0, "stream, event");

  /* 1. Capture. */
  for (int i = 0; i < N; i++) x[i] = (float)i * 0.5f, y[i] = -1;
  int n = N;
  float a = 2.5f;
  void *args[] = {&n, &a, &dx, &dy};
  float one = 1.0f;
  unsigned oneBits;
  memcpy(&oneBits, &one, sizeof one);
  EXPECT(cuStreamBeginCapture_v2(s, GLOBAL) == 0, "begin capture");
  int status = -1;
  EXPECT(cuStreamIsCapturing(s, &status) == 0 && status == 1, "capturing: status %d", status);
  EXPECT(cuMemcpyHtoDAsync_v2(dx, x, sizeof x, s) == 0, "capture H2D");
  EXPECT(cuMemsetD32Async(dy, oneBits, N, s) == 0, "capture memset");
  EXPECT(cuLaunchKernel(saxpy, (N + 127) / 128, 1, 1, 128, 1, 1, 0, s, args, NULL) == 0, "capture launch 1");
  EXPECT(cuLaunchKernel(saxpy, (N + 127) / 128, 1, 1, 128, 1, 1, 0, s, args, NULL) == 0, "capture launch 2");
  EXPECT(cuEventRecord(ev, s) == 0, "capture event record");
  EXPECT(cuMemcpyDtoHAsync_v2(y, dy, sizeof y, s) == 0, "capture D2H");
  cuuint64_t id = 0;
  CUgraph building = NULL;
  const CUgraphNode *deps = NULL;
  size_t ndeps = 9;
  status = -1;
  EXPECT(cuStreamGetCaptureInfo_v2(s, &status, &id, &building, &deps, &ndeps) == 0, "capture info");
  printf("capture info %d %d %d\n", status, id != 0 && building != NULL, (int)ndeps);
  EXPECT(status == 1 && id != 0 && building != NULL && ndeps == 1 && deps && deps[0], "capture info values");
  CUuserObject uo;
  EXPECT(cuUserObjectCreate(&uo, &destroyed, countDestruction, 1, 1) == 0, "user object");
  EXPECT(cuGraphRetainUserObject(building, uo, 1, 1) == 0, "move the reference to the graph");
  CUresult queried = cuEventQuery(ev);
  printf("captured event query %d\n", queried);
  EXPECT(queried == 907, "cuEventQuery of a captured event gave %d", queried);
  a = -100.0f; /* the launches keep the value of capture time */
  CUgraph graph = NULL;
  EXPECT(cuStreamEndCapture(s, &graph) == 0 && graph == building, "end capture");
  EXPECT(cuStreamIsCapturing(s, &status) == 0 && status == 0, "not capturing: status %d", status);
  int ranNothing = 1;
  for (int i = 0; i < N; i++) ranNothing &= y[i] == -1;
  printf("capture ran nothing %d\n", ranNothing);
  EXPECT(ranNothing, "y changed while capturing");

  /* 2. Instantiate and launch twice. */
  CUgraphExec exec, exec2;
  EXPECT(cuGraphInstantiateWithFlags(&exec, graph, 0) == 0, "instantiate");
  CUDA_GRAPH_INSTANTIATE_PARAMS params = {0, NULL, NULL, -1};
  EXPECT(cuGraphInstantiateWithParams(&exec2, graph, &params) == 0 && params.result_out == 0, "instantiate params");
  EXPECT(cuGraphDestroy(graph) == 0, "destroy graph (the execs stay)");
  int afterGraph = destroyed;
  EXPECT(cuGraphLaunch(exec, s) == 0 && cuStreamSynchronize(s) == 0, "launch 1");
  int first = checkY(2.5f, "launch 1");
  for (int i = 0; i < N; i++) x[i] = 3.0f - (float)i, y[i] = -1;
  EXPECT(cuGraphLaunch(exec2, s) == 0 && cuStreamSynchronize(s) == 0, "launch 2");
  int second = checkY(2.5f, "launch 2");
  printf("graph launches %d %d\n", first, second);
  EXPECT(first && second, "graph results");
  EXPECT(cuEventQuery(ev) == 0, "the graph recorded the event");

  /* 3. Errors. */
  CUresult execDestroyed = cuGraphExecDestroy(exec);
  int afterExec = destroyed;
  CUresult again = cuGraphLaunch(exec, s);
  printf("destroyed exec %d %d\n", execDestroyed, again);
  EXPECT(execDestroyed == 0 && again == 400, "launch of a destroyed exec gave %d", again);
  EXPECT(cuGraphExecDestroy(exec) == 400, "destroy twice");

  EXPECT(cuStreamBeginCapture_v2(s, GLOBAL) == 0, "begin global");
  CUresult twice = cuStreamBeginCapture_v2(s, GLOBAL);
  CUresult sync = cuMemcpyHtoD_v2(dx, x, sizeof x);
  EXPECT(cuStreamIsCapturing(s, &status) == 0, "is capturing");
  CUgraph none = (CUgraph)1;
  CUresult ended = cuStreamEndCapture(s, &none);
  printf("global sync copy %d %d %d %d %d\n", twice, sync, status, ended, none == NULL);
  EXPECT(twice == 401, "begin capture twice gave %d", twice);
  EXPECT(sync == 900 && status == 2 && ended == 901 && none == NULL, "unsafe call in global mode");

  EXPECT(cuStreamBeginCapture_v2(s, THREAD_LOCAL) == 0, "begin thread-local");
  CUresult streamSync = cuStreamSynchronize(s);
  ended = cuStreamEndCapture(s, &none);
  printf("stream sync while capturing %d %d\n", streamSync, ended);
  EXPECT(streamSync == 900 && ended == 901, "stream sync while capturing");

  CUresult notCapturing = cuStreamEndCapture(s, &none);
  CUresult nullStream = cuStreamBeginCapture_v2(NULL, RELAXED);
  printf("not capturing %d, null stream %d\n", notCapturing, nullStream);
  EXPECT(notCapturing == 401, "end capture on a stream not capturing gave %d", notCapturing);
  EXPECT(nullStream == 900, "capture on the NULL stream gave %d", nullStream);

  EXPECT(cuStreamBeginCapture_v2(s, GLOBAL) == 0, "begin global again");
  int mode = RELAXED;
  EXPECT(cuThreadExchangeStreamCaptureMode(&mode) == 0 && mode == GLOBAL, "exchange mode: old %d", mode);
  CUresult threadRelaxed = cuMemcpyHtoD_v2(dx, x, sizeof x);
  EXPECT(cuThreadExchangeStreamCaptureMode(&mode) == 0 && mode == RELAXED, "exchange back: old %d", mode);
  CUstream s2;
  EXPECT(cuStreamCreate(&s2, 0) == 0 && cuEventRecord(ev, s) == 0, "second stream, record");
  CUresult fork = cuStreamWaitEvent(s2, ev, 0);
  ended = cuStreamEndCapture(s, &none);
  printf("thread relaxed %d, fork %d %d\n", threadRelaxed, fork, ended);
  EXPECT(threadRelaxed == 0 && fork == 801 && ended == 901, "thread mode, fork");

  EXPECT(cuStreamBeginCapture_v2(s, RELAXED) == 0, "begin relaxed");
  CUresult relaxed = cuMemcpyHtoD_v2(dx, x, sizeof x);
  graph = NULL;
  ended = cuStreamEndCapture(s, &graph);
  printf("relaxed sync copy %d %d\n", relaxed, ended);
  EXPECT(relaxed == 0 && ended == 0 && graph != NULL, "relaxed mode allows a synchronous copy");
  EXPECT(cuGraphDestroy(graph) == 0 && cuGraphExecDestroy(exec2) == 0, "cleanup");
  printf("user object destroyed %d %d %d\n", afterGraph, afterExec, destroyed);
  EXPECT(afterGraph == 0 && afterExec == 0 && destroyed == 1, "user object lifetime");
  EXPECT(cuCtxSynchronize() == 0, "sync");
  printf(failures ? "failed\n" : "ok\n");
  return failures ? 1 : 0;
}
