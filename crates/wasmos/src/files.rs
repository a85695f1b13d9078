//! `wasmos run --mount` and `--input`: parsing the flags and packing a local directory into the
//! tar archive an agent unpacks into the task's scratch space.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use wasmos_proto::valid_guest_path;

/// Splits `LOCAL:GUEST` at the last `:/`, so Windows paths like `C:\data` keep their drive.
/// `None` when there is no guest part.
fn guest_separator(value: &str, drive_letters: bool) -> Option<usize> {
    let i = value.rfind(":/")?;
    // `C:/data/a.txt` on Windows is a path with a drive, not `C` mounted at `/data/a.txt`.
    let drive = drive_letters && i == 1 && value.as_bytes()[0].is_ascii_alphabetic();
    (!drive).then_some(i)
}

fn split_local_guest(flag: &str, value: &str) -> Result<(PathBuf, String)> {
    split_local_guest_on(flag, value, cfg!(windows))
}

fn split_local_guest_on(flag: &str, value: &str, drive_letters: bool) -> Result<(PathBuf, String)> {
    let i = guest_separator(value, drive_letters)
        .ok_or_else(|| anyhow!("{flag} `{value}` is not LOCAL:GUEST_PATH (like ./data:/data)"))?;
    let (local, guest) = (&value[..i], &value[i + 1..]);
    if local.is_empty() {
        bail!("{flag} `{value}` has no local path");
    }
    if !valid_guest_path(guest) {
        bail!("{flag} `{value}`: guest path `{guest}` must be absolute and normalized, like /data");
    }
    Ok((PathBuf::from(local), guest.to_string()))
}

/// `--mount LOCAL_DIR:GUEST_PATH`.
pub fn parse_mount(value: &str) -> Result<(PathBuf, String)> {
    let (local, guest) = split_local_guest("--mount", value)?;
    if !local.is_dir() {
        bail!("--mount `{value}`: {} is not a directory", local.display());
    }
    Ok((local, guest))
}

/// `--input FILE[:GUEST_PATH]`; the default guest path is `/input/<file name>`.
pub fn parse_input(value: &str) -> Result<(PathBuf, String)> {
    let (local, guest) = match split_local_guest("--input", value) {
        Ok(pair) => pair,
        Err(_) if guest_separator(value, cfg!(windows)).is_none() => {
            let local = PathBuf::from(value);
            let name = local
                .file_name()
                .and_then(|n| n.to_str())
                .ok_or_else(|| anyhow!("--input `{value}` has no file name"))?;
            (local.clone(), format!("/input/{name}"))
        }
        Err(e) => return Err(e),
    };
    if !local.is_file() {
        bail!("--input `{value}`: {} is not a file", local.display());
    }
    Ok((local, guest))
}

/// A tar archive of the files and directories under `dir`, in sorted order with fixed
/// metadata, so the same tree always packs to the same bytes (and uploads only once).
/// Symbolic links are refused: the copy would differ from what the user sees locally.
pub fn pack_dir(dir: &Path) -> Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let full = dir.join(&rel);
        let mut names: Vec<_> = std::fs::read_dir(&full)
            .with_context(|| format!("cannot read directory {}", full.display()))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()
            .with_context(|| format!("cannot read directory {}", full.display()))?;
        names.sort();
        // Popped in reverse, so children are visited in order.
        let mut subdirs = Vec::new();
        for name in names {
            let rel_child = rel.join(&name);
            let path = dir.join(&rel_child);
            let meta = std::fs::symlink_metadata(&path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            let mut header = tar::Header::new_gnu();
            header.set_mtime(0);
            if meta.is_dir() {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_mode(0o755);
                header.set_size(0);
                builder
                    .append_data(&mut header, &rel_child, std::io::empty())
                    .with_context(|| format!("cannot pack {}", path.display()))?;
                subdirs.push(rel_child);
            } else if meta.is_file() {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(0o644);
                header.set_size(meta.len());
                let file = std::fs::File::open(&path)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                builder
                    .append_data(&mut header, &rel_child, file)
                    .with_context(|| format!("cannot pack {}", path.display()))?;
            } else {
                bail!(
                    "--mount: {} is a symbolic link or special file; only files and directories can be shipped",
                    path.display()
                );
            }
        }
        stack.extend(subdirs.into_iter().rev());
    }
    builder.into_inner().context("cannot finish the archive")
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn flags_split_at_the_guest_path() {
        let d = tempfile::tempdir().unwrap();
        let local = d.path().to_str().unwrap();
        let (l, g) = parse_mount(&format!("{local}:/data")).unwrap();
        assert_eq!((l.as_path(), g.as_str()), (d.path(), "/data"));
        assert!(parse_mount(&format!("{local}:data")).is_err());
        assert!(parse_mount(&format!("{local}:/a/../b")).is_err());
        assert!(
            parse_mount("/no/such/dir:/x")
                .unwrap_err()
                .to_string()
                .contains("not a directory")
        );
        std::fs::write(d.path().join("f.csv"), "x").unwrap();
        let f = d.path().join("f.csv");
        let (_, g) = parse_input(f.to_str().unwrap()).unwrap();
        assert_eq!(g, "/input/f.csv");
        let (_, g) = parse_input(&format!("{}:/in/g.csv", f.display())).unwrap();
        assert_eq!(g, "/in/g.csv");
    }

    #[test]
    fn windows_paths_keep_their_drive() {
        let split = |v: &str| {
            split_local_guest_on("--mount", v, true)
                .map(|(l, g)| (l.to_string_lossy().into_owned(), g))
                .map_err(|e| e.to_string())
        };
        let pair = |l: &str, g: &str| Ok((l.to_string(), g.to_string()));
        assert_eq!(split(r"C:\data:/data"), pair(r"C:\data", "/data"));
        assert_eq!(split("C:/data:/data"), pair("C:/data", "/data"));
        assert_eq!(
            split(r"D:\in\a.txt:/in/a.txt"),
            pair(r"D:\in\a.txt", "/in/a.txt")
        );
        assert_eq!(split(r"\\host\share\d:/d"), pair(r"\\host\share\d", "/d"));
        // A drive alone is a local path with no guest part, on Windows only.
        assert!(
            split("C:/data")
                .unwrap_err()
                .contains("not LOCAL:GUEST_PATH")
        );
        assert_eq!(guest_separator("C:/data/a.txt", true), None);
        assert_eq!(guest_separator("C:/data/a.txt", false), Some(1));
        assert!(
            split(r"C:\data:/a/../b")
                .unwrap_err()
                .contains("must be absolute")
        );
    }

    #[test]
    fn packing_is_deterministic_and_refuses_symlinks() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("a/b")).unwrap();
        std::fs::write(d.path().join("a/b/f"), "hello").unwrap();
        std::fs::write(d.path().join("z"), "zz").unwrap();
        let one = pack_dir(d.path()).unwrap();
        assert_eq!(one, pack_dir(d.path()).unwrap());
        let mut ar = tar::Archive::new(one.as_slice());
        let paths: Vec<String> = ar
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        assert_eq!(paths, ["a", "z", "a/b", "a/b/f"]);
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink("/etc", d.path().join("link")).unwrap();
            let err = pack_dir(d.path()).unwrap_err().to_string();
            assert!(err.contains("symbolic link"), "{err}");
        }
    }
}
