#!/bin/bash
# base = a worktree of 6e64103 (before) at /work/wt-d2h-base, fix = this branch at /work/wt-d2h;
# both built with: swift build -c release --product vgpu-mediator; ... --product vgpu-bench.
# vgpu-bench --only-copies, before (base) and after (fix), alternating.
rounds=${1:-2}; sizes=${2:-4K,16K,64K,256K,1M,64M}
for r in $(seq $rounds); do
 for v in base fix; do
  dir=/work/wt-d2h; [ $v = base ] && dir=/work/wt-d2h-base
  echo "=== $v round $r  $(uptime | sed 's/.*load/load/')"
  $dir/.build/release/vgpu-bench --only-copies --sizes $sizes --out /tmp/d2h/bench-$v-$r 2>/dev/null | grep -E "^(H2D|D2H|D2D) |socket RPC (H2D|D2H)|load average"
 done
done
