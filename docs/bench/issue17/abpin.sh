#!/bin/bash
# base = a worktree of 6e64103 (before) at /work/wt-d2h-base, fix = this branch at /work/wt-d2h;
# both built with: swift build -c release --product vgpu-mediator; ... --product vgpu-bench.
# Pinned A/B: mediator on CPU $1, client on CPU $2; base (before) then fix (after), alternating.
mc=$1; cc=$2; ms=${3:-200}; rounds=${4:-1}
export VGPU_SWEEP_SIZES=${SIZES:-4096,16384,65536,262144,1048576}
for r in $(seq $rounds); do
 for v in base fix; do
  dir=/work/wt-d2h; [ $v = base ] && dir=/work/wt-d2h-base
  bar=/dev/shm/d2h-ab-$v; rm -f $bar
  taskset -c $mc $dir/.build/release/vgpu-mediator --shared-bar --path $bar --memory 4G --log-level warning >/dev/null 2>&1 &
  mp=$!; sleep 0.7
  echo "=== $v mediator cpu$mc client cpu$cc round $r  $(uptime | sed 's/.*load/load/')"
  taskset -c $cc $dir/.build/release/vgpu-bench _copy-sweep shm:$bar $ms | tail -n +2
  kill $mp; wait $mp 2>/dev/null; rm -f $bar
 done
done
