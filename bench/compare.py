#!/usr/bin/env python3
"""Wasmos against Ray on the same workloads, in one run on one machine (issue 16).

Run by `cargo xtask bench` (or `cargo xtask bench compare` for this script alone), which builds
`target/release/wasmos` and the sample tasks first. Ray comes from PyPI into a venv under
`target/bench-venv` (created on first use). Each workload runs on both systems in this run and
the script prints the figures and their ratio, so a noisy machine affects both alike.

Workloads:
  noop       10,000 no-op tasks as one batch job on `wasmos dev --agents 1` (after a 1,000-task
             job to warm up), against 10,000 `@ray.remote` no-ops with `ray.init(num_cpus=2)`.
  wordcount  40 files of 2.5 MB generated with a fixed seed, 40 map tasks and 8 reducers on
             2 cores each (one agent of 2 cores; `num_cpus=2`), the inputs already uploaded
             (Wasmos: the job's time from submission to its end, as the master recorded them;
             Ray: from the first `.remote()` to the last result).
  spawn      nested tasks (issue 20): one parent task starts no-op children, first one at a
             time (start, wait: the latency from asking for a child to seeing it finished),
             then 500 at once (children finished per second). Wasmos: the `fanout` sample's
             `bench` mode through `wasmos:task/spawn`, timed inside the parent, on one agent
             of 2 cores; Ray: a remote task calling `ray.get(leaf.remote())`, then
             `ray.get([leaf.remote() ...])`, with `num_cpus=2`, timed inside it too.

Ray's no-op tasks take its default of one CPU each, so two run at a time; Wasmos' take 2
millicores, so the agent runs hundreds at once: each system as its users would run it.

Usage: compare.py [--only noop|wordcount|spawn] [--keep DIR]
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WASMOS = ROOT / "target" / "release" / "wasmos"
SAMPLES = ROOT / "sample-tasks" / "target" / "wasm32-wasip2" / "release"
VENV = ROOT / "target" / "bench-venv"
RAY_VERSION = "2.60.0"

WORDS = [
    "the", "of", "and", "to", "a", "in", "is", "it", "you", "that", "he", "was", "for", "on",
    "are", "with", "as", "his", "they", "be", "at", "one", "have", "this", "from", "or", "had",
    "by", "word", "but", "what", "some", "we", "can", "out", "other", "were", "all", "there",
    "when", "up", "use", "your", "how", "said", "an", "each", "she", "which", "do", "Wasm",
    "agent", "master", "offer", "task", "job", "raft", "quic", "Mesos", "fuel",
]


def log(msg):
    print(msg, flush=True)


def ensure_ray():
    """Returns the venv's python with Ray installed, installing it on first use."""
    py = VENV / "bin" / "python"
    probe = [str(py), "-c", "import ray; print(ray.__version__)"]
    if py.exists():
        have = subprocess.run(probe, capture_output=True, text=True)
        if have.returncode == 0 and have.stdout.strip() == RAY_VERSION:
            return py
    log(f"installing ray=={RAY_VERSION} into {VENV} (first run only)")
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    subprocess.run([str(py), "-m", "pip", "install", "-q", f"ray=={RAY_VERSION}"], check=True)
    return py


def write_corpus(dir_, files, total):
    """The corpus of tests/lib.rs `write_corpus`: the same xorshift, so the same bytes."""
    x = 0x2545_F491_4F6C_DD1D
    mask = (1 << 64) - 1
    paths = []
    per_file = total // files
    for f in range(files):
        parts = []
        size = 0
        n = 0
        while size < per_file:
            x ^= (x << 13) & mask
            x ^= x >> 7
            x ^= (x << 17) & mask
            r = x % 1000
            w = WORDS[(r * r // 1000) * len(WORDS) // 1000]
            n += 1
            sep = "\n" if n % 12 == 0 else " "
            parts.append(w + sep)
            size += len(w) + 1
        path = dir_ / f"part-{f:03}.txt"
        path.write_text("".join(parts))
        paths.append(path)
    return paths


class Dev:
    """A `wasmos dev` cluster in a directory of its own, stopped on exit."""

    def __init__(self, work, args):
        self.dir = work / "dev"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log = open(work / "dev.log", "w")
        self.proc = subprocess.Popen(
            [str(WASMOS), "dev", "--data-dir", str(self.dir), "--listen", "127.0.0.1:0", *args],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        self.env = dict(os.environ, WASMOS_CONFIG=str(self.dir / "client.toml"))
        deadline = time.time() + 60
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"wasmos dev exited; see {work / 'dev.log'}")
            if (self.dir / "client.toml").exists():
                r = self.cli(["agent", "list", "-o", "json"], check=False)
                if r.returncode == 0 and json.loads(r.stdout or "[]"):
                    break
            if time.time() > deadline:
                raise SystemExit("wasmos dev did not come up within 60 s")
            time.sleep(0.2)

    def cli(self, args, check=True, cwd=None):
        r = subprocess.run([str(WASMOS), *args], env=self.env, capture_output=True, text=True,
                           cwd=cwd)
        if check and r.returncode != 0:
            raise SystemExit(f"wasmos {' '.join(args)} failed: {r.stderr}")
        return r

    def job(self, toml, cwd):
        """Submits a job and waits for it; returns (its id, master-recorded seconds, client
        seconds)."""
        t = time.perf_counter()
        out = self.cli(["job", "submit", str(toml)], cwd=cwd).stdout.strip().split()[-1]
        while True:
            info = json.loads(self.cli(["job", "status", out, "-o", "json"]).stdout)
            state = info["state"]
            if state != "Running":
                break
            time.sleep(0.02)
        client = time.perf_counter() - t
        if state != "Finished":
            raise SystemExit(f"job {out} ended {state}")
        return out, (info["ended_ms"] - info["submitted_ms"]) / 1000, client

    def stop(self):
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=20)
        except Exception:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.log.close()


NOOP_JOB = """
name = "noop-{count}"
[[group]]
name = "n"
bundle = "{wasm}"
count = {count}
cpu = "2m"
mem = "4MiB"
disk = "1MiB"
"""

RAY_NOOP = r"""
import time, ray
ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
@ray.remote
def noop():
    return None
ray.get([noop.remote() for _ in range(1000)])
t = time.perf_counter()
ray.get([noop.remote() for _ in range(10000)])
print(time.perf_counter() - t)
"""


def bench_noop(work, ray_py):
    wasm = SAMPLES / "noop.wasm"
    for count in (1000, 10000):
        (work / f"noop{count}.toml").write_text(NOOP_JOB.format(count=count, wasm=wasm))
    dev = Dev(work, ["--agents", "1"])
    try:
        dev.job(work / "noop1000.toml", work)
        _, master_s, client_s = dev.job(work / "noop10000.toml", work)
    finally:
        dev.stop()
    ray_s = float(subprocess.run([str(ray_py), "-c", RAY_NOOP], capture_output=True, text=True,
                                 check=True).stdout.strip().splitlines()[-1])
    w_rate, w_client_rate, r_rate = 10000 / master_s, 10000 / client_s, 10000 / ray_s
    log(f"bench compare noop 10,000 tasks: wasmos {client_s:.2f} s from submitting to seeing "
        f"it finished ({w_client_rate:,.0f} tasks/s; {master_s:.2f} s, {w_rate:,.0f} tasks/s "
        f"as the master recorded it), ray {ray_s:.2f} s ({r_rate:,.0f} tasks/s)")
    log(f"bench compare noop ratio wasmos/ray rate: {w_client_rate / r_rate:.2f} "
        f"(master-recorded {w_rate / r_rate:.2f}); target >= 10")


WORDCOUNT_JOB = """
name = "wordcount"
[[group]]
name = "map"
bundle = "{wasm}"
inputs = ["part-*.txt"]
args = ["map", "--reducers", "8", "--out", "/out", "/in/input"]
cpu = "1"
mem = "256MiB"
disk = "64MiB"
timeout = "10m"
[[group]]
name = "reduce"
bundle = "{wasm}"
depends_on = ["map"]
count = 8
input_pattern = "part-{{index}}"
args = ["reduce", "--part", "{{index}}", "--out", "/out", "/in/map"]
cpu = "1"
mem = "256MiB"
timeout = "10m"
"""

RAY_WORDCOUNT = r"""
import sys, time, zlib, ray
from collections import Counter
files = sys.argv[1:]
ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
@ray.remote(num_returns=8)
def mapper(path):
    # The corpus separates words by spaces and newlines only, so str.split finds the same
    # words as the Wasm task's split on non-alphanumerics, and is Python's fastest way.
    counts = Counter(open(path).read().lower().split())
    parts = [dict() for _ in range(8)]
    for w, n in counts.items():
        parts[zlib.crc32(w.encode()) % 8][w] = n
    return parts
@ray.remote
def reducer(*parts):
    total = Counter()
    for p in parts:
        total.update(p)
    return sum(total.values())
ray.get(reducer.remote(*mapper.remote(files[0])[:1]))  # warm-up: workers started
t = time.perf_counter()
maps = [mapper.remote(f) for f in files]
words = sum(ray.get([reducer.remote(*[m[i] for m in maps]) for i in range(8)]))
print(time.perf_counter() - t, words)
"""


def bench_wordcount(work, ray_py):
    data = work / "data"
    data.mkdir(exist_ok=True)
    files = write_corpus(data, 40, 100 << 20)
    (data / "job.toml").write_text(WORDCOUNT_JOB.format(wasm=SAMPLES / "wordcount.wasm"))
    # As many cores as Ray is given (num_cpus=2): one agent of 2, tasks of 1 core each.
    dev = Dev(work, ["--agents", "1", "--agent-cpu", "2", "--agent-mem", "4GiB"])
    try:
        # The first run uploads the inputs and compiles the bundle; the second is measured.
        dev.job(data / "job.toml", data)
        job, master_s, client_s = dev.job(data / "job.toml", data)
        results = dev.cli(["job", "results", job]).stdout
        w_words = sum(int(l.rsplit("\t", 1)[1]) for l in results.splitlines() if "\t" in l)
    finally:
        dev.stop()
    out = subprocess.run([str(ray_py), "-c", RAY_WORDCOUNT, *map(str, files)],
                         capture_output=True, text=True, check=True).stdout.split()
    ray_s, r_words = float(out[-2]), int(out[-1])
    if w_words != r_words:
        raise SystemExit(f"the counts differ: wasmos {w_words} words, ray {r_words}")
    log(f"bench compare wordcount 100 MB, 40 maps, 8 reducers: wasmos {master_s:.2f} s "
        f"({client_s:.2f} s as the client saw it), ray {ray_s:.2f} s; {w_words:,} words each")
    log(f"bench compare wordcount ratio ray/wasmos time: {ray_s / master_s:.2f} "
        f"(client-side {ray_s / client_s:.2f}); target > 1")


SPAWN_SEQUENTIAL = 200
SPAWN_FANOUT = 500

RAY_SPAWN = r"""
import sys, time, ray
ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
@ray.remote
def leaf():
    return None
@ray.remote
def parent(sequential, fanout):
    t = time.perf_counter()
    for _ in range(sequential):
        ray.get(leaf.remote())
    per_child_ms = (time.perf_counter() - t) * 1000 / sequential
    t = time.perf_counter()
    ray.get([leaf.remote() for _ in range(fanout)])
    return per_child_ms, fanout / (time.perf_counter() - t)
ray.get(parent.remote(20, 20))  # warm-up: workers started
print(*ray.get(parent.remote(int(sys.argv[1]), int(sys.argv[2]))))
"""


def bench_spawn(work, ray_py):
    wasm = SAMPLES / "fanout.wasm"
    dev = Dev(work, ["--agents", "1", "--agent-cpu", "2", "--agent-mem", "8GiB"])

    def run(sequential, fanout):
        out = dev.cli(["run", "-d", "--cpu", "20m", "--mem", "24Mi", "--timeout", "10m",
                       str(wasm), "--", "bench", str(sequential), str(fanout)])
        task = out.stdout.strip()
        while True:
            info = json.loads(dev.cli(["task", "show", task, "-o", "json"]).stdout)
            if info["status"]["state"] not in ("Staging", "Starting", "Running"):
                break
            time.sleep(0.1)
        if info["status"]["exit_code"] != 0:
            raise SystemExit(f"the fanout bench task ended {info['status']}")
        got = {r["name"]: bytes(r["value"]).decode() for r in info["status"]["results"]}
        return float(got["sequential_ms"]), float(got["fanout_per_s"])

    try:
        run(20, 20)  # warm-up: the bundle compiled
        w_ms, w_rate = run(SPAWN_SEQUENTIAL, SPAWN_FANOUT)
    finally:
        dev.stop()
    out = subprocess.run([str(ray_py), "-c", RAY_SPAWN, str(SPAWN_SEQUENTIAL), str(SPAWN_FANOUT)],
                         capture_output=True, text=True, check=True).stdout.split()
    r_ms, r_rate = float(out[-2]), float(out[-1])
    log(f"bench compare spawn: start-to-finished per child, one at a time ({SPAWN_SEQUENTIAL}): "
        f"wasmos {w_ms:.2f} ms, ray {r_ms:.2f} ms; {SPAWN_FANOUT} children at once: "
        f"wasmos {w_rate:,.0f}/s, ray {r_rate:,.0f}/s")
    log(f"bench compare spawn ratio ray/wasmos latency: {r_ms / w_ms:.2f}; "
        f"wasmos/ray children per second: {w_rate / r_rate:.2f}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", choices=["noop", "wordcount", "spawn"])
    ap.add_argument("--keep", help="work in this directory and keep it")
    args = ap.parse_args()
    if not WASMOS.exists():
        raise SystemExit(f"{WASMOS} is missing: run `cargo xtask bench` (it builds it)")
    ray_py = ensure_ray()
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="wasmos-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        for name, fn in (("noop", bench_noop), ("wordcount", bench_wordcount),
                         ("spawn", bench_spawn)):
            if args.only in (None, name):
                sub = work / name
                sub.mkdir(exist_ok=True)
                fn(sub, ray_py)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
