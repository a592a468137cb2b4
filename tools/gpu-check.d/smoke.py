"""What the smoke tests share (tools/gpu-check): one line per check,
"ok NAME facts" or "fail NAME reason"; exit 0 when all passed, 1 when one
failed. A test exits 3 itself when its package cannot be imported (SKIP)."""
import sys

failed = []


def check(name, fn):
    try:
        print(f"ok {name} {fn()}", flush=True)
    except Exception as e:  # the reason goes on one line; the caller reports it
        failed.append(name)
        first = str(e).splitlines()[0] if str(e) else ""
        print(f"fail {name} {type(e).__name__}: {first}", flush=True)


def finish():
    sys.exit(1 if failed else 0)
