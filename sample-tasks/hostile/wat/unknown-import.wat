;; Imports an interface no agent provides: refused before upload, naming it (and by the
;; masters at upload, and by an agent at link time, for a client that does not check).
(component
  (import "acme:rockets/launch@1.0.0" (instance $rockets (export "fire" (func))))
  (core module $m (func (export "run") (result i32) i32.const 0))
  (core instance $i (instantiate $m))
  (func $run (result (result)) (canon lift (core func $i "run")))
  (instance $inst (export "run" (func $run)))
  (export "wasi:cli/run@0.2.0" (instance $inst)))
