"""A Python task on the `wasmos:task` world, built with componentize-py against target/wit
(`cargo xtask python-sample` builds it into sample-tasks/target/python/platform-py.wasm): it
reads its context, reports progress and publishes results (a value and a file).
`platform-py.wasm N` takes N steps of a second each."""

import sys
import time

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import context, progress, results


class Run(exports.Run):
    def run(self) -> None:
        me = context.get()
        print(f"python task t-{me.task_id} role {me.role} attempt {me.attempt} job {me.job_id}")
        n = int(sys.argv[1]) if len(sys.argv) > 1 else 3
        for i in range(1, n + 1):
            time.sleep(1.0)
            progress.report(i / n, f"python step {i} of {n}")
            print(f"python step {i} of {n}", flush=True)
        results.put_value("language", b"python")
        # A file result: the agent stores it once the task has ended.
        with open("/report.txt", "w") as f:
            f.write(f"python took {n} steps\n")
        results.put_file("report", "/report.txt")
        try:
            results.put_value("bad name!", b"x")
        except Err as e:
            print("result refused:", e.value)
