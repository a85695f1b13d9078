;; A core module, not a component: refused before upload.
(module (func (export "_start")))
