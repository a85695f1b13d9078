;; Declares a 4 GiB initial linear memory: refused at instantiation by the memory limit.
(component
  (core module $m
    (memory 65536)
    (func (export "run") (result i32) i32.const 0))
  (core instance $i (instantiate $m))
  (func $run (result (result)) (canon lift (core func $i "run")))
  (instance $inst (export "run" (func $run)))
  (export "wasi:cli/run@0.2.0" (instance $inst)))
