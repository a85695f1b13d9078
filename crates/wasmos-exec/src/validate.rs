//! Engine-free validation of a bundle: cheap enough for the master to run on upload, and worded
//! for the person who built the bundle rather than for wasmtime developers.

use wasmparser::{Parser, Validator, WasmFeatures};

use crate::ExecError;

const WASM_MAGIC: &[u8; 4] = b"\0asm";

/// Checks that `bytes` is a well-formed WebAssembly component of at most `max_bytes` bytes
/// that imports only what this cluster provides (WASI 0.2 and `wasmos:task`; the refusal
/// names the import).
///
/// Whether its imports' types and its exports fit is checked by [`crate::Runner::compile`],
/// which links it.
pub fn validate_component(bytes: &[u8], max_bytes: u64) -> Result<(), ExecError> {
    let size = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
    if size > max_bytes {
        return Err(ExecError::TooLarge {
            size,
            max: max_bytes,
        });
    }
    if !bytes.starts_with(WASM_MAGIC) {
        return Err(ExecError::InvalidComponent(
            "not a WebAssembly file (bad magic)".to_string(),
        ));
    }
    if Parser::is_core_wasm(bytes) {
        return Err(ExecError::InvalidComponent(
            "is a core WebAssembly module, not a component; build for wasm32-wasip2".to_string(),
        ));
    }
    if !Parser::is_component(bytes) {
        let header = bytes.get(4..8).map(hex::encode);
        return Err(ExecError::InvalidComponent(match header {
            Some(h) => format!(
                "unsupported WebAssembly version/layer {h} (expected a component, 0d000100)"
            ),
            None => "truncated WebAssembly header".to_string(),
        }));
    }
    // Default features are a superset of what wasmtime enables by default; anything they accept
    // that the engine does not is still rejected, with wasmtime's message, by `compile`.
    Validator::new_with_features(WasmFeatures::default())
        .validate_all(bytes)
        .map_err(|e| {
            ExecError::InvalidComponent(format!(
                "malformed component: {} (at byte offset {:#x})",
                e.message(),
                e.offset()
            ))
        })?;
    wasmos_proto::check_component_imports(bytes).map_err(ExecError::InvalidComponent)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn message(r: Result<(), ExecError>) -> String {
        match r {
            Err(ExecError::InvalidComponent(m)) => m,
            other => panic!("expected InvalidComponent, got {other:?}"),
        }
    }

    #[test]
    fn rejects_empty_and_non_wasm_files() {
        assert!(message(validate_component(b"", 1024)).contains("bad magic"));
        assert!(message(validate_component(b"#!/bin/sh\necho hi\n", 1024)).contains("bad magic"));
    }

    #[test]
    fn rejects_core_modules_with_a_hint() {
        let module = wat::parse_str("(module (func (export \"f\")))").unwrap();
        let m = message(validate_component(&module, 1 << 20));
        assert!(m.contains("core WebAssembly module"), "{m}");
        assert!(m.contains("wasm32-wasip2"), "{m}");
    }

    #[test]
    fn rejects_truncated_components_naming_the_offset() {
        let component = wat::parse_str(
            r#"(component (core module (func (export "f") (result i32) i32.const 7)))"#,
        )
        .unwrap();
        assert!(validate_component(&component, 1 << 20).is_ok());
        let cut = &component[..component.len() - 3];
        let m = message(validate_component(cut, 1 << 20));
        assert!(m.starts_with("malformed component: "), "{m}");
        assert!(m.contains("offset 0x"), "{m}");
        let header_only = &component[..6];
        assert!(message(validate_component(header_only, 1 << 20)).contains("truncated"));
    }

    #[test]
    fn rejects_other_versions() {
        let m = message(validate_component(b"\0asm\x0e\0\x01\0", 1024));
        assert!(m.contains("0e000100"), "{m}");
    }

    #[test]
    fn enforces_the_size_cap_before_parsing() {
        let component = wat::parse_str("(component)").unwrap();
        let size = component.len() as u64;
        assert!(validate_component(&component, size).is_ok());
        assert_eq!(
            validate_component(&component, size - 1),
            Err(ExecError::TooLarge {
                size,
                max: size - 1
            })
        );
    }
}
