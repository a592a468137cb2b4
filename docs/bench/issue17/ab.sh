#!/bin/bash
# base = a worktree of 6e64103 (before) at /work/wt-d2h-base, fix = this branch at /work/wt-d2h;
# both built with: swift build -c release --product vgpu-mediator; ... --product vgpu-bench.
# A/B: base (before) and fix (after) sweeps, alternating, each with its own mediator.
ms=${1:-200}; rounds=${2:-2}
for r in $(seq $rounds); do
 for v in base fix; do
  dir=/work/wt-d2h; [ $v = base ] && dir=/work/wt-d2h-base
  bar=/dev/shm/d2h-ab-$v; rm -f $bar
  $dir/.build/release/vgpu-mediator --shared-bar --path $bar --memory 4G --log-level warning >/dev/null 2>&1 &
  mp=$!; sleep 0.7
  echo "=== $v round $r  $(uptime | sed 's/.*load/load/')"
  $dir/.build/release/vgpu-bench _copy-sweep shm:$bar $ms
  kill $mp; wait $mp 2>/dev/null; rm -f $bar
 done
done
echo "end $(uptime | sed 's/.*load/load/')"
