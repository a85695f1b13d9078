"""A WASI command component written in Python, built with componentize-py (about 18 MB: the
whole CPython interpreter is inside). `cargo xtask python-sample` builds it into
sample-tasks/target/python/hello-py.wasm; tests/python.rs runs it."""

import sys


class Run:
    def run(self) -> None:
        print("hello from python", sys.argv[1:])
        total = sum(i * i for i in range(100_000))
        print("sum of squares below 100000:", total)
