;; A core start function that never returns: the task is stuck in instantiation, which the
;; wall-clock limit still interrupts.
(component
  (core module $m
    (func $forever (loop $l br $l))
    (start $forever)
    (func (export "run") (result i32) i32.const 0))
  (core instance $i (instantiate $m))
  (func $run (result (result)) (canon lift (core func $i "run")))
  (instance $inst (export "run" (func $run)))
  (export "wasi:cli/run@0.2.0" (instance $inst)))
