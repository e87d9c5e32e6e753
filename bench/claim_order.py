"""Which Redis structure orders a queue's ready runs by priority: the measurement.

Three layouts of one queue's ready runs, each pushed and claimed the way the broker does
(one Lua script per pushed batch, one per claimed batch, claimed ids recorded in a lease
zset), on a private `redis-server` started for the run, so that nothing else on the box
uses its CPU:

  list   one FIFO list (the layout before priorities: no order but arrival)
  zset   one sorted set, score = -priority (exact in a double for any 32-bit
         priority), member = zero-padded sequence number + run id, so that equal
         scores pop in member order, which is arrival order
  bands  one FIFO list per priority, plus a sorted set of the priorities that have a
         non-empty list; priority 0 is the `ready` list itself

For each layout and priority mix it prints the server's CPU per run (push + claim, from
INFO's used_cpu_user + used_cpu_sys), the wall time, and the memory per waiting run.
Candidates, not the broker's own scripts: the chosen one (bands) lives in
distasks/broker/*.lua.

Usage: .venv/bin/python bench/claim_order.py [--runs N] [--push-batch P] [--claim-batch C]
"""

from __future__ import annotations

import argparse
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import redis

LIST_PUSH = """
local ready = KEYS[1]
for i = 1, #ARGV, 2 do redis.call('RPUSH', ready, ARGV[i + 1]) end
return 1
"""
LIST_CLAIM = """
local ready, leases = KEYS[1], KEYS[2]
local items = redis.call('LPOP', ready, tonumber(ARGV[1]))
if not items then return {} end
for _, item in ipairs(items) do redis.call('ZADD', leases, ARGV[2], item) end
return items
"""
ZSET_PUSH = """
local ready, seq = KEYS[1], KEYS[2]
local last = redis.call('INCRBY', seq, #ARGV / 2)
local first = last - #ARGV / 2
for i = 1, #ARGV, 2 do
  local n = first + (i + 1) / 2
  redis.call('ZADD', ready, -tonumber(ARGV[i]), string.format('%016x', n) .. ARGV[i + 1])
end
return 1
"""
ZSET_CLAIM = """
local ready, leases = KEYS[1], KEYS[2]
local popped = redis.call('ZPOPMIN', ready, tonumber(ARGV[1]))
local items = {}
for i = 1, #popped, 2 do
  local item = string.sub(popped[i], 17)
  items[#items + 1] = item
  redis.call('ZADD', leases, ARGV[2], item)
end
return items
"""
BANDS_PUSH = """
local ready, bands = KEYS[1], KEYS[2]
for i = 1, #ARGV, 2 do
  local p = ARGV[i]
  if p == '0' then
    redis.call('RPUSH', ready, ARGV[i + 1])
  else
    redis.call('RPUSH', ready .. ':' .. p, ARGV[i + 1])
    redis.call('ZADD', bands, p, p)
  end
end
return 1
"""
BANDS_CLAIM = """
local ready, leases, bands = KEYS[1], KEYS[2], KEYS[3]
local need, deadline = tonumber(ARGV[1]), ARGV[2]
local out = {}
local function take(p)
  local key = p == '0' and ready or ready .. ':' .. p
  local items = redis.call('LPOP', key, need)
  if items then
    for _, item in ipairs(items) do
      out[#out + 1] = item
      redis.call('ZADD', leases, deadline, item)
    end
    need = need - #items
  end
  if p ~= '0' and need > 0 then redis.call('ZREM', bands, p) end
end
local function band_range(from, to)
  while need > 0 do
    local ps = redis.call('ZRANGE', bands, from, to, 'BYSCORE', 'REV', 'LIMIT', 0, need)
    if #ps == 0 then return end
    for _, p in ipairs(ps) do
      take(p)
      if need == 0 then return end
    end
  end
end
if redis.call('EXISTS', bands) == 1 then band_range('+inf', '(0') end
if need > 0 then take('0') end
if need > 0 and redis.call('EXISTS', bands) == 1 then band_range('(0', '-inf') end
return out
"""

#: layout -> (push script, claim script, keys of push, keys of claim)
LAYOUTS: dict[str, tuple[str, str, Callable[[str], list[str]], Callable[[str], list[str]]]] = {
    "list": (LIST_PUSH, LIST_CLAIM, lambda k: [f"{k}:ready"],
             lambda k: [f"{k}:ready", f"{k}:leases"]),
    "zset": (ZSET_PUSH, ZSET_CLAIM, lambda k: [f"{k}:ready", f"{k}:seq"],
             lambda k: [f"{k}:ready", f"{k}:leases"]),
    "bands": (BANDS_PUSH, BANDS_CLAIM, lambda k: [f"{k}:ready", f"{k}:bands"],
              lambda k: [f"{k}:ready", f"{k}:leases", f"{k}:bands"]),
}
#: priority mix -> a run's priority
MIXES: dict[str, Callable[[random.Random], int]] = {
    "all 0": lambda rnd: 0,
    "10 levels": lambda rnd: rnd.randrange(10),
    "1000 levels": lambda rnd: rnd.randrange(-500, 500),
}


@contextmanager
def private_redis() -> Iterator[redis.Redis]:
    """A redis-server of our own on a free port, without persistence, for the block."""
    server = shutil.which("redis-server")
    if server is None:
        sys.exit("claim_order: redis-server is not on PATH")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory(prefix="distasks-claim-order-") as tmp:
        proc = subprocess.Popen([server, "--port", str(port), "--bind", "127.0.0.1",
                                 "--save", "", "--appendonly", "no", "--dir", tmp],
                                stdout=subprocess.DEVNULL)
        try:
            client = redis.Redis(port=port, decode_responses=True)
            deadline = time.monotonic() + 10
            while True:
                try:
                    client.ping()
                    break
                except redis.ConnectionError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            yield client
        finally:
            proc.terminate()
            proc.wait(timeout=10)


def server_cpu_s(r: redis.Redis) -> float:
    info: dict[str, Any] = r.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def measure(r: redis.Redis, layout: str, mix: str, *, runs: int, push_batch: int,
            claim_batch: int) -> dict[str, Any]:
    """Push `runs` run ids of the mix's priorities, then claim them all; check the order."""
    push_src, claim_src, push_keys, claim_keys = LAYOUTS[layout]
    push, claim = r.register_script(push_src), r.register_script(claim_src)
    key = f"bench:{{q:{layout}-{mix.replace(' ', '')}}}"
    rnd = random.Random(7)
    jobs = [(MIXES[mix](rnd), str(uuid.uuid4())) for _ in range(runs)]
    mem0 = int(r.info("memory")["used_memory"])
    cpu0, wall0 = server_cpu_s(r), time.perf_counter()
    for i in range(0, runs, push_batch):
        args = [x for p, run_id in jobs[i:i + push_batch] for x in (str(p), run_id)]
        push(keys=push_keys(key), args=args)
    mem1 = int(r.info("memory")["used_memory"])
    claimed: list[str] = []
    while True:
        items = claim(keys=claim_keys(key), args=[claim_batch, 1])
        if not items:
            break
        claimed.extend(items)
    cpu1, wall1 = server_cpu_s(r), time.perf_counter()
    # Stable sort: the order a priority-ordered FIFO must give.
    want = [run_id for _, run_id in sorted(jobs, key=lambda j: -j[0])]
    if layout == "list":
        want = [run_id for _, run_id in jobs]
    r.delete(*claim_keys(key), *push_keys(key))
    return {"cpu_us_per_run": (cpu1 - cpu0) / runs * 1e6, "wall_s": wall1 - wall0,
            "bytes_per_run": (mem1 - mem0) / runs, "ordered": claimed == want}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=100_000, help="runs per measurement (100000)")
    p.add_argument("--push-batch", type=int, default=100, help="runs per push script (100)")
    p.add_argument("--claim-batch", type=int, default=50, help="runs per claim script (50)")
    a = p.parse_args(argv)
    print(f"claim_order: runs={a.runs} push_batch={a.push_batch} claim_batch={a.claim_batch} "
          f"server={subprocess.run(['redis-server', '--version'], capture_output=True, text=True).stdout.split()[2]}")
    with private_redis() as r:
        for mix in MIXES:
            for layout in LAYOUTS:
                if layout == "list" and mix != "all 0":
                    continue  # the list has no order but arrival: nothing to compare
                m = measure(r, layout, mix, runs=a.runs, push_batch=a.push_batch,
                            claim_batch=a.claim_batch)
                print(f"  {mix:12} {layout:6} server cpu {m['cpu_us_per_run']:6.2f} us/run  "
                      f"wall {m['wall_s']:6.2f} s  memory {m['bytes_per_run']:6.1f} B/run  "
                      f"order {'ok' if m['ordered'] else 'WRONG'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
