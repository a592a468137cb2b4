import subprocess, time, statistics, os
def run(cmd, env):
    t=time.perf_counter(); subprocess.run(cmd, env=env, stderr=subprocess.DEVNULL, check=True); return (time.perf_counter()-t)*1e3
base=dict(os.environ, VGPU_DEVICE='shm:/dev/shm/disc-test')
new=dict(base, LD_LIBRARY_PATH='/work/main/.build/shims/release/lib')
old=dict(base, LD_LIBRARY_PATH='/tmp/oldshims')
r={'empty':[], 'old':[], 'new':[]}
for i in range(40):
    r['empty'].append(run(['/tmp/disc/e'], base))
    r['old'].append(run(['/tmp/disc/d'], old))
    r['new'].append(run(['/tmp/disc/d'], new))
m={k:statistics.median(v) for k,v in r.items()}
print({k:round(v,3) for k,v in m.items()}, 'beyond empty: old %.2f ms, new %.2f ms'%(m['old']-m['empty'], m['new']-m['empty']))
