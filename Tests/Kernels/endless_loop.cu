// Spins on memory nobody changes: the device must end the launch by its
// budget (a timeout), not hang. `volatile` keeps the load inside the loop.
extern "C" __global__ void endless_loop(volatile int* flag) {
  while (flag[0] == 0) {
  }
}
