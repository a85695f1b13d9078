;; Grows a funcref table by 1M elements at a time (8 MB of host memory each) until refused,
;; then traps: tables count against the task's memory limit.
(component
  (core module $m
    (table 1 funcref)
    (func (export "run") (result i32)
      (loop $l
        ref.null func
        i32.const 1000000
        table.grow
        i32.const -1
        i32.ne
        br_if $l)
      unreachable))
  (core instance $i (instantiate $m))
  (func $run (result (result)) (canon lift (core func $i "run")))
  (instance $inst (export "run" (func $run)))
  (export "wasi:cli/run@0.2.0" (instance $inst)))
