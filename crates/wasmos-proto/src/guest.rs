//! What a task tells the platform through the `wasmos:task` interfaces (`wit/task.wit`) and
//! the bounds on it, and which imports a component may have at all: the one list the CLI, the
//! masters (at upload) and the agents (at link time) agree on.

use serde::{Deserialize, Serialize};

/// The platform's own WIT package, and the version of it this cluster provides.
pub const TASK_PACKAGE: &str = "wasmos:task";
pub const TASK_PACKAGE_VERSION: &str = "0.1.0";

/// The `wasmos:task` interfaces a task may import.
pub const TASK_INTERFACES: &[&str] = &["context", "progress", "results", "cancellation", "spawn"];

/// The WASI 0.2 packages a task may import (wasmtime's WASI, with no HTTP).
pub const WASI_PACKAGES: &[&str] = &[
    "wasi:cli",
    "wasi:clocks",
    "wasi:filesystem",
    "wasi:io",
    "wasi:random",
    "wasi:sockets",
];

/// Longest progress message kept (longer ones are cut at a character boundary).
pub const MAX_PROGRESS_MESSAGE_BYTES: usize = 256;
/// Most results one task publishes.
pub const MAX_RESULTS: usize = 64;
/// Longest result name.
pub const MAX_RESULT_NAME_BYTES: usize = 128;
/// Largest result value.
pub const MAX_RESULT_VALUE_BYTES: usize = 16 * 1024;
/// Largest total of one task's result values: they live in the replicated state.
pub const MAX_RESULT_VALUES_BYTES: usize = 64 * 1024;
/// Most files one task publishes by name (`put-file`).
pub const MAX_RESULT_FILES: usize = 64;
/// Longest guest path `put-file` takes.
pub const MAX_RESULT_PATH_BYTES: usize = 1024;
/// How long a task that imports `cancellation` has to stop once asked (a kill, a preemption,
/// its job's end), bounded by its own timeout.
pub const GRACE_MS: u64 = 5_000;

/// How far a running task says it is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskProgress {
    /// From 0 to 1000.
    pub permille: u16,
    pub message: String,
}

impl TaskProgress {
    /// A report as a guest makes it: `fraction` clamped to 0..=1 (not-a-number reads as 0),
    /// the message cut to [`MAX_PROGRESS_MESSAGE_BYTES`].
    pub fn from_guest(fraction: f32, message: &str) -> TaskProgress {
        let fraction = if fraction.is_nan() {
            0.0
        } else {
            fraction.clamp(0.0, 1.0)
        };
        TaskProgress {
            permille: (fraction * 1000.0).round() as u16,
            message: cut(message, MAX_PROGRESS_MESSAGE_BYTES).to_string(),
        }
    }

    /// Whether a report from an agent is within bounds (an agent is not trusted to have cut it).
    pub fn is_valid(&self) -> bool {
        self.permille <= 1000 && self.message.len() <= MAX_PROGRESS_MESSAGE_BYTES
    }
}

/// A named value a task published.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskResult {
    pub name: String,
    pub value: Vec<u8>,
}

/// A file a task published by name (`put-file`), as its agent stored it on the masters: a data
/// blob its task's tenant may read (`wasmos blob get`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResultFile {
    pub name: String,
    pub blob: crate::BundleHash,
    pub size: u64,
}

/// Why a result was refused, as `wasmos:task/results` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ResultError {
    #[error("result names are 1 to {MAX_RESULT_NAME_BYTES} letters, digits, '-', '_' or '.'")]
    InvalidName,
    #[error(
        "a result value is at most {MAX_RESULT_VALUE_BYTES} bytes, and all of a task's at most {MAX_RESULT_VALUES_BYTES}"
    )]
    TooLarge,
    #[error("a task publishes at most {MAX_RESULTS} values and {MAX_RESULT_FILES} files")]
    TooMany,
    #[error(
        "a result file is named by an absolute guest path of at most {MAX_RESULT_PATH_BYTES} bytes, without `.` or `..`"
    )]
    InvalidPath,
}

fn name_ok(name: &str) -> bool {
    // `.` and `..` would read as directories wherever a name becomes a file's (a download).
    !matches!(name, "" | "." | "..")
        && name.len() <= MAX_RESULT_NAME_BYTES
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Whether `path` names a file the way `put-file` takes it: absolute, `/`-separated, with no
/// empty, `.` or `..` part (its agent resolves it inside the task's scratch space, never
/// through a link), and not the root.
pub fn result_path_ok(path: &str) -> bool {
    path.len() <= MAX_RESULT_PATH_BYTES
        && path.strip_prefix('/').is_some_and(|rest| {
            !rest.is_empty() && rest.split('/').all(|part| !matches!(part, "" | "." | ".."))
        })
        && !path.contains(['\\', '\0'])
}

/// Adds or replaces the file result `name` (a guest path, read when the task ends) in `files`;
/// on refusal `files` is unchanged.
pub fn publish_file(
    files: &mut Vec<(String, String)>,
    name: &str,
    path: &str,
) -> Result<(), ResultError> {
    if !name_ok(name) {
        return Err(ResultError::InvalidName);
    }
    if !result_path_ok(path) {
        return Err(ResultError::InvalidPath);
    }
    let full = files.len() >= MAX_RESULT_FILES;
    match files.iter_mut().find(|(n, _)| n == name) {
        Some((_, p)) => *p = path.to_string(),
        None if full => return Err(ResultError::TooMany),
        None => files.push((name.to_string(), path.to_string())),
    }
    Ok(())
}

/// Whether file results reported by an agent are within the bounds a task could have published.
pub fn result_files_valid(files: &[ResultFile]) -> bool {
    let mut names: Vec<&str> = files.iter().map(|f| f.name.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    files.len() <= MAX_RESULT_FILES
        && names.len() == files.len()
        && names.iter().all(|n| name_ok(n))
        && files
            .iter()
            .all(|f| crate::BundleHash::parse(f.blob.as_str()).is_ok())
}

/// Adds or replaces the result `name` in `results`, within the bounds above; on refusal
/// `results` is unchanged.
pub fn publish_result(
    results: &mut Vec<TaskResult>,
    name: &str,
    value: Vec<u8>,
) -> Result<(), ResultError> {
    if !name_ok(name) {
        return Err(ResultError::InvalidName);
    }
    let others: usize = results
        .iter()
        .filter(|r| r.name != name)
        .map(|r| r.value.len())
        .sum();
    if value.len() > MAX_RESULT_VALUE_BYTES || others + value.len() > MAX_RESULT_VALUES_BYTES {
        return Err(ResultError::TooLarge);
    }
    let full = results.len() >= MAX_RESULTS;
    match results.iter_mut().find(|r| r.name == name) {
        Some(r) => r.value = value,
        None if full => return Err(ResultError::TooMany),
        None => results.push(TaskResult {
            name: name.to_string(),
            value,
        }),
    }
    Ok(())
}

/// Whether results reported by an agent are within the bounds a task could have published.
pub fn results_valid(results: &[TaskResult]) -> bool {
    let mut rebuilt = Vec::with_capacity(results.len());
    results
        .iter()
        .all(|r| publish_result(&mut rebuilt, &r.name, r.value.clone()).is_ok())
        && rebuilt.len() == results.len()
}

/// Checks one import name of a component (`wasi:cli/environment@0.2.4`,
/// `wasmos:task/progress@0.1.0`) against what this cluster provides; the refusal names it.
pub fn check_import(name: &str) -> Result<(), String> {
    let (path, version) = match name.split_once('@') {
        Some((p, v)) => (p, Some(v)),
        None => (name, None),
    };
    let (package, interface) = path.split_once('/').unwrap_or((path, ""));
    let major_minor = |v: &str| {
        let mut parts = v.split('.');
        (
            parts.next().map(str::to_string),
            parts.next().map(str::to_string),
        )
    };
    if WASI_PACKAGES.contains(&package) {
        return match version.map(major_minor) {
            Some((Some(major), Some(minor))) if major == "0" && minor == "2" => Ok(()),
            _ => Err(format!(
                "imports `{name}`: this cluster provides WASI 0.2 (wasi:cli, clocks, filesystem, io, random and sockets @0.2.x)"
            )),
        };
    }
    if package == TASK_PACKAGE {
        let (want_major, want_minor) = major_minor(TASK_PACKAGE_VERSION);
        let version_ok = version
            .map(major_minor)
            .is_some_and(|(major, minor)| major == want_major && minor == want_minor);
        if !TASK_INTERFACES.contains(&interface) || !version_ok {
            return Err(format!(
                "imports `{name}`, which this cluster does not provide (it provides {TASK_PACKAGE}/{{{}}}@{TASK_PACKAGE_VERSION})",
                TASK_INTERFACES.join(",")
            ));
        }
        return Ok(());
    }
    Err(format!(
        "imports `{name}`, which this cluster does not provide (tasks may import WASI 0.2 and {TASK_PACKAGE}@{TASK_PACKAGE_VERSION})"
    ))
}

/// The names `component` imports at its top level (`wasi:io/streams@0.2.4`, ...).
pub fn component_imports(component: &[u8]) -> Result<Vec<String>, String> {
    Ok(component_interface(component)?.0)
}

/// The names `component` imports and exports at its top level.
pub fn component_interface(component: &[u8]) -> Result<(Vec<String>, Vec<String>), String> {
    use wasmparser::Payload;
    let mut names = Vec::new();
    let mut exports = Vec::new();
    // Nested modules and components have imports of their own, satisfied inside.
    let mut depth = 0usize;
    for payload in wasmparser::Parser::new(0).parse_all(component) {
        let payload = payload.map_err(|e| {
            format!(
                "malformed component: {} (at byte offset {:#x})",
                e.message(),
                e.offset()
            )
        })?;
        match payload {
            Payload::ModuleSection { .. } | Payload::ComponentSection { .. } => depth += 1,
            Payload::End(_) => depth = depth.saturating_sub(1),
            Payload::ComponentImportSection(section) if depth == 0 => {
                for import in section {
                    let import =
                        import.map_err(|e| format!("malformed import: {}", e.message()))?;
                    names.push(import.name.name.to_string());
                }
            }
            Payload::ComponentExportSection(section) if depth == 0 => {
                for export in section {
                    let export =
                        export.map_err(|e| format!("malformed export: {}", e.message()))?;
                    exports.push(export.name.name.to_string());
                }
            }
            _ => {}
        }
    }
    Ok((names, exports))
}

/// Checks every import of `component` against what this cluster provides.
pub fn check_component_imports(component: &[u8]) -> Result<(), String> {
    component_imports(component)?
        .iter()
        .try_for_each(|name| check_import(name))
}

/// `s` cut to at most `max` bytes, at a character boundary.
fn cut(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn progress_is_clamped_and_cut() {
        assert_eq!(TaskProgress::from_guest(0.5, "half").permille, 500);
        assert_eq!(TaskProgress::from_guest(7.0, "").permille, 1000);
        assert_eq!(TaskProgress::from_guest(-1.0, "").permille, 0);
        assert_eq!(TaskProgress::from_guest(f32::NAN, "").permille, 0);
        let long = "é".repeat(200);
        let p = TaskProgress::from_guest(0.1, &long);
        assert!(p.message.len() <= MAX_PROGRESS_MESSAGE_BYTES && p.is_valid());
        assert!(long.starts_with(&p.message));
        let bad = TaskProgress {
            permille: 1001,
            message: String::new(),
        };
        assert!(!bad.is_valid());
    }

    #[test]
    fn results_are_bounded_and_replaced_by_name() {
        let mut r = Vec::new();
        publish_result(&mut r, "answer", b"42".to_vec()).unwrap();
        publish_result(&mut r, "answer", b"43".to_vec()).unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].value, b"43");
        for bad in [
            "",
            "a/b",
            "../x",
            "..",
            "sp ace",
            &"n".repeat(MAX_RESULT_NAME_BYTES + 1),
        ] {
            assert_eq!(
                publish_result(&mut r, bad, vec![]),
                Err(ResultError::InvalidName),
                "{bad:?}"
            );
        }
        assert_eq!(
            publish_result(&mut r, "big", vec![0; MAX_RESULT_VALUE_BYTES + 1]),
            Err(ResultError::TooLarge)
        );
        for i in 0..3 {
            publish_result(&mut r, &format!("f{i}"), vec![0; MAX_RESULT_VALUE_BYTES]).unwrap();
        }
        // 3 × 16 KiB + 2 bytes: one more full value would pass 64 KiB.
        assert_eq!(
            publish_result(&mut r, "f3", vec![0; MAX_RESULT_VALUE_BYTES]),
            Err(ResultError::TooLarge)
        );
        assert!(results_valid(&r));
        let mut many = Vec::new();
        for i in 0..MAX_RESULTS {
            publish_result(&mut many, &format!("r{i}"), vec![]).unwrap();
        }
        assert_eq!(
            publish_result(&mut many, "one-more", vec![]),
            Err(ResultError::TooMany)
        );
        let dup = vec![
            TaskResult {
                name: "a".into(),
                value: vec![],
            },
            TaskResult {
                name: "a".into(),
                value: vec![],
            },
        ];
        assert!(!results_valid(&dup), "an agent's duplicates are refused");
    }

    #[test]
    fn file_results_name_absolute_plain_paths() {
        let mut f = Vec::new();
        publish_file(&mut f, "model", "/out/model.bin").unwrap();
        publish_file(&mut f, "model", "/out/model-2.bin").unwrap();
        assert_eq!(f, [("model".to_string(), "/out/model-2.bin".to_string())]);
        for bad in [
            "",
            "/",
            "relative/x",
            "/a/../etc/passwd",
            "/a/./b",
            "//a",
            "/a/",
            "/a\\b",
            "/a\0b",
            &format!("/{}", "p".repeat(MAX_RESULT_PATH_BYTES)),
        ] {
            assert_eq!(
                publish_file(&mut f, "x", bad),
                Err(ResultError::InvalidPath),
                "{bad:?}"
            );
        }
        assert_eq!(
            publish_file(&mut f, "a/b", "/x"),
            Err(ResultError::InvalidName)
        );
        for i in 1..MAX_RESULT_FILES {
            publish_file(&mut f, &format!("f{i}"), "/x").unwrap();
        }
        assert_eq!(
            publish_file(&mut f, "one-more", "/x"),
            Err(ResultError::TooMany)
        );
        assert_eq!(f.len(), MAX_RESULT_FILES);
        let file = |name: &str| ResultFile {
            name: name.into(),
            blob: crate::BundleHash::from_digest(&[0; 32]),
            size: 1,
        };
        assert!(result_files_valid(&[file("a"), file("b")]));
        assert!(!result_files_valid(&[file("a"), file("a")]));
        assert!(!result_files_valid(&[file("../a")]));
        assert!(!result_files_valid(&[file("..")]));
        let forged: ResultFile =
            serde_json::from_value(serde_json::json!({"name": "a", "blob": "../x", "size": 1}))
                .unwrap();
        assert!(!result_files_valid(&[forged]), "a blob that is no sha256");
    }

    #[test]
    fn only_top_level_imports_are_the_components() {
        // A nested component's and a core module's imports are satisfied inside it.
        let nested = wat::parse_str(
            r#"(component
                (import "wasi:cli/environment@0.2.3" (instance))
                (component (import "acme:rockets/launch@1.0.0" (func)))
                (core module (import "host" "now" (func)))
                (export "wasi:cli/run@0.2.3" (instance 0)))"#,
        )
        .unwrap();
        let (imports, exports) = component_interface(&nested).unwrap();
        assert_eq!(imports, ["wasi:cli/environment@0.2.3"]);
        assert_eq!(exports, ["wasi:cli/run@0.2.3"]);
        assert_eq!(check_component_imports(&nested), Ok(()));
        let top =
            wat::parse_str(r#"(component (import "acme:rockets/launch@1.0.0" (func)))"#).unwrap();
        assert!(
            check_component_imports(&top)
                .unwrap_err()
                .contains("acme:rockets/launch@1.0.0")
        );
        assert!(component_interface(b"\0asm\x0d\0\x01\0\x99").is_err());
    }

    #[test]
    fn imports_outside_wasi_0_2_and_the_task_package_are_named_in_the_refusal() {
        for ok in [
            "wasi:cli/environment@0.2.0",
            "wasi:io/streams@0.2.12",
            "wasi:sockets/tcp@0.2.3",
            "wasmos:task/progress@0.1.0",
            "wasmos:task/context@0.1.2",
            "wasmos:task/spawn@0.1.0",
        ] {
            assert_eq!(check_import(ok), Ok(()), "{ok}");
        }
        for (bad, says) in [
            ("wasi:http/types@0.2.0", "wasi:http/types@0.2.0"),
            ("wasi:cli/environment@0.3.0", "WASI 0.2"),
            ("wasi:cli/environment", "WASI 0.2"),
            ("wasmos:task/teleport@0.1.0", "does not provide"),
            ("wasmos:task/progress@0.2.0", "wasmos:task/progress@0.2.0"),
            ("wasmos:task/progress", "does not provide"),
            ("acme:rockets/launch@1.0.0", "acme:rockets/launch@1.0.0"),
        ] {
            let e = check_import(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}
