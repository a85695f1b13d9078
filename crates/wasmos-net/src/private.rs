//! Files only their owner may read: keys, the replicated state, task logs. Created restricted
//! from the start, never widened later, so no other user can open them in between: mode 0600
//! (directories 0700) on Unix, a protected DACL on Windows.

use std::io::Write;
use std::path::Path;

/// Creates (or truncates) `path`, readable and writable by its owner only, and writes `bytes`.
/// On Windows "its owner only" is the process's user, SYSTEM and Administrators, with nothing
/// inherited from the directory.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    #[cfg(windows)]
    let mut f = acl::create_file(path)?;
    #[cfg(not(windows))]
    let mut f = {
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        opts.open(path)?
    };
    // A file that already existed keeps the permissions it had; narrow them before writing.
    restrict(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// Creates `dir` and its missing parents; `dir` itself ends up private (mode 0700 on Unix, the
/// protected DACL on Windows, inherited by what is created in it).
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(windows)]
    {
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)?;
        }
        acl::create_dir(dir)
    }
    #[cfg(not(windows))]
    {
        std::fs::create_dir_all(dir)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        }
        Ok(())
    }
}

/// Narrows an existing file to its owner only (a file created before this rule).
pub fn restrict(path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    #[cfg(windows)]
    acl::set(path, false)?;
    #[cfg(not(any(unix, windows)))]
    let _ = path;
    Ok(())
}

/// The DACL, in SDDL, that `path` has (`D:P(A;;FA;;;SY)...`).
#[cfg(all(windows, test))]
fn windows_dacl(path: &Path) -> std::io::Result<String> {
    acl::read(path)
}

// Win32's security API has no safe wrapper in a well-kept crate; the second (Windows-only)
// exception to the workspace's unsafe_code rule, listed in ARCHITECTURE.md.
#[cfg(windows)]
#[allow(unsafe_code)]
mod acl {
    //! The Windows half: one protected DACL granting full control to the process's user,
    //! SYSTEM and Administrators (the service account, or the user running `wasmos`; and the
    //! machine's administrators, who can take ownership of any file anyway). "Protected" cuts
    //! the ACEs a parent directory would pass down, such as `Users: read` under ProgramData.

    use std::fs::File;
    use std::io;
    use std::os::windows::ffi::OsStrExt;
    use std::os::windows::io::FromRawHandle;
    use std::path::Path;
    use windows_sys::Win32::Foundation::{
        CloseHandle, ERROR_ACCESS_DENIED, ERROR_ALREADY_EXISTS, GENERIC_READ, GENERIC_WRITE,
        HANDLE, INVALID_HANDLE_VALUE, LocalFree,
    };
    use windows_sys::Win32::Security::Authorization::{
        ConvertSidToStringSidW, ConvertStringSecurityDescriptorToSecurityDescriptorW,
        SDDL_REVISION_1, SE_FILE_OBJECT, SetNamedSecurityInfoW,
    };
    use windows_sys::Win32::Security::{
        ACL, DACL_SECURITY_INFORMATION, GetSecurityDescriptorDacl, GetTokenInformation,
        PROTECTED_DACL_SECURITY_INFORMATION, PSECURITY_DESCRIPTOR, SECURITY_ATTRIBUTES,
        TOKEN_QUERY, TOKEN_USER, TokenUser,
    };
    use windows_sys::Win32::Storage::FileSystem::{
        CREATE_ALWAYS, CreateDirectoryW, CreateFileW, FILE_ATTRIBUTE_NORMAL, FILE_SHARE_DELETE,
        FILE_SHARE_READ, FILE_SHARE_WRITE,
    };
    use windows_sys::Win32::System::Threading::{GetCurrentProcess, OpenProcessToken};

    fn wide(s: &std::ffi::OsStr) -> Vec<u16> {
        s.encode_wide().chain(Some(0)).collect()
    }

    /// A UTF-16 string the system allocated with LocalAlloc.
    fn take_local_string(p: *mut u16) -> String {
        if p.is_null() {
            return String::new();
        }
        // SAFETY: the system wrote a NUL-terminated UTF-16 string at `p`; freed right after.
        unsafe {
            let len = (0..).take_while(|&i| *p.add(i) != 0).count();
            let s = String::from_utf16_lossy(std::slice::from_raw_parts(p, len));
            LocalFree(p.cast());
            s
        }
    }

    /// The process's user as a SID string (`S-1-5-...`).
    fn user_sid() -> io::Result<String> {
        // SAFETY: plain Win32 calls on a token handle this function owns and closes; the
        // buffer is sized by the first call and aligned for TOKEN_USER.
        unsafe {
            let mut token: HANDLE = std::ptr::null_mut();
            if OpenProcessToken(GetCurrentProcess(), TOKEN_QUERY, &mut token) == 0 {
                return Err(io::Error::last_os_error());
            }
            let mut len = 0u32;
            GetTokenInformation(token, TokenUser, std::ptr::null_mut(), 0, &mut len);
            let mut buf = vec![0u64; (len as usize).div_ceil(8).max(1)];
            let ok = GetTokenInformation(token, TokenUser, buf.as_mut_ptr().cast(), len, &mut len);
            let err = io::Error::last_os_error();
            CloseHandle(token);
            if ok == 0 {
                return Err(err);
            }
            let user = &*(buf.as_ptr() as *const TOKEN_USER);
            let mut s: *mut u16 = std::ptr::null_mut();
            if ConvertSidToStringSidW(user.User.Sid, &mut s) == 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(take_local_string(s))
        }
    }

    /// A self-relative security descriptor from SDDL, freed on drop.
    struct Descriptor(PSECURITY_DESCRIPTOR);

    impl Drop for Descriptor {
        fn drop(&mut self) {
            // SAFETY: allocated by ConvertStringSecurityDescriptorToSecurityDescriptorW.
            unsafe { LocalFree(self.0) };
        }
    }

    /// Directories pass the same ACEs down to what is created in them (OICI).
    fn descriptor(dir: bool) -> io::Result<Descriptor> {
        let sid = user_sid()?;
        let inherit = if dir { "OICI" } else { "" };
        let sddl = format!("D:P(A;{inherit};FA;;;SY)(A;{inherit};FA;;;BA)(A;{inherit};FA;;;{sid})");
        let sddl = wide(std::ffi::OsStr::new(&sddl));
        let mut sd: PSECURITY_DESCRIPTOR = std::ptr::null_mut();
        // SAFETY: `sddl` is NUL-terminated; `sd` receives a LocalAlloc'd descriptor.
        let ok = unsafe {
            ConvertStringSecurityDescriptorToSecurityDescriptorW(
                sddl.as_ptr(),
                SDDL_REVISION_1,
                &mut sd,
                std::ptr::null_mut(),
            )
        };
        if ok == 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Descriptor(sd))
    }

    fn attributes(sd: &Descriptor) -> SECURITY_ATTRIBUTES {
        SECURITY_ATTRIBUTES {
            nLength: std::mem::size_of::<SECURITY_ATTRIBUTES>() as u32,
            lpSecurityDescriptor: sd.0,
            bInheritHandle: 0,
        }
    }

    /// Creates or truncates `path` for writing; a new file gets the private DACL as it is made.
    pub fn create_file(path: &Path) -> io::Result<File> {
        let sd = descriptor(false)?;
        let sa = attributes(&sd);
        let name = wide(path.as_os_str());
        // SAFETY: `name` is NUL-terminated and `sa` points at `sd`, alive for the call. The
        // returned handle is owned by the File made from it.
        unsafe {
            let h = CreateFileW(
                name.as_ptr(),
                GENERIC_READ | GENERIC_WRITE,
                FILE_SHARE_READ | FILE_SHARE_WRITE | FILE_SHARE_DELETE,
                &sa,
                CREATE_ALWAYS,
                FILE_ATTRIBUTE_NORMAL,
                std::ptr::null_mut(),
            );
            if h == INVALID_HANDLE_VALUE {
                return Err(io::Error::last_os_error());
            }
            Ok(File::from_raw_handle(h))
        }
    }

    /// Creates `dir` with the private, inheritable DACL; an existing one is narrowed to it.
    pub fn create_dir(dir: &Path) -> io::Result<()> {
        let sd = descriptor(true)?;
        let sa = attributes(&sd);
        let name = wide(dir.as_os_str());
        // SAFETY: as in create_file.
        if unsafe { CreateDirectoryW(name.as_ptr(), &sa) } != 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(ERROR_ALREADY_EXISTS as i32) || !dir.is_dir() {
            return Err(err);
        }
        match set(dir, true) {
            // Made for this account by an administrator who kept the right to change its
            // permissions: used as it is, saying so.
            Err(e) if e.raw_os_error() == Some(ERROR_ACCESS_DENIED as i32) => {
                tracing::warn!(
                    "cannot set the permissions of {} (this account does not own it); \
                     leaving them as they are",
                    dir.display()
                );
                Ok(())
            }
            r => r,
        }
    }

    /// Replaces the DACL of `path` with the private one, protected from inheritance.
    pub fn set(path: &Path, dir: bool) -> io::Result<()> {
        let sd = descriptor(dir)?;
        let name = wide(path.as_os_str());
        // SAFETY: `sd` is a valid descriptor for the whole block; the DACL pointer points into
        // it; `name` is NUL-terminated.
        unsafe {
            let (mut present, mut defaulted) = (0, 0);
            let mut dacl: *mut ACL = std::ptr::null_mut();
            if GetSecurityDescriptorDacl(sd.0, &mut present, &mut dacl, &mut defaulted) == 0 {
                return Err(io::Error::last_os_error());
            }
            let err = SetNamedSecurityInfoW(
                name.as_ptr(),
                SE_FILE_OBJECT,
                DACL_SECURITY_INFORMATION | PROTECTED_DACL_SECURITY_INFORMATION,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                dacl,
                std::ptr::null(),
            );
            if err != 0 {
                return Err(io::Error::from_raw_os_error(err as i32));
            }
        }
        Ok(())
    }

    /// The DACL of `path`, in SDDL.
    #[cfg(test)]
    pub fn read(path: &Path) -> io::Result<String> {
        let name = wide(path.as_os_str());
        let mut sd: PSECURITY_DESCRIPTOR = std::ptr::null_mut();
        // SAFETY: out-pointers are valid; the descriptor is LocalAlloc'd, freed by Descriptor.
        let err = unsafe {
            windows_sys::Win32::Security::Authorization::GetNamedSecurityInfoW(
                name.as_ptr(),
                SE_FILE_OBJECT,
                DACL_SECURITY_INFORMATION,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                &mut sd,
            )
        };
        if err != 0 {
            return Err(io::Error::from_raw_os_error(err as i32));
        }
        sddl(&Descriptor(sd))
    }

    #[cfg(test)]
    fn sddl(sd: &Descriptor) -> io::Result<String> {
        let mut s: *mut u16 = std::ptr::null_mut();
        // SAFETY: `sd` is a valid descriptor; `s` receives a LocalAlloc'd string.
        let ok = unsafe {
            windows_sys::Win32::Security::Authorization::ConvertSecurityDescriptorToStringSecurityDescriptorW(
                sd.0,
                SDDL_REVISION_1,
                DACL_SECURITY_INFORMATION,
                &mut s,
                std::ptr::null_mut(),
            )
        };
        if ok == 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(take_local_string(s))
    }

    /// The DACL this module gives files (`dir` false) or directories, in SDDL.
    #[cfg(test)]
    pub fn intended(dir: bool) -> io::Result<String> {
        sddl(&descriptor(dir)?)
    }

    /// Whether this runs under Wine, whose files keep Unix mode bits, not DACLs.
    #[cfg(test)]
    pub fn under_wine() -> bool {
        use windows_sys::Win32::System::LibraryLoader::{GetModuleHandleA, GetProcAddress};
        // SAFETY: looks up an export by NUL-terminated name; nothing is called.
        unsafe {
            let ntdll = GetModuleHandleA(c"ntdll.dll".as_ptr().cast());
            !ntdll.is_null() && GetProcAddress(ntdll, c"wine_get_version".as_ptr().cast()).is_some()
        }
    }

    #[cfg(test)]
    pub fn sid() -> String {
        user_sid().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    fn mode(p: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn private_files_and_dirs_are_their_owners_alone() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("state").join("pki");
        create_private_dir(&dir).unwrap();
        // Again on an existing directory: narrowed, not an error.
        create_private_dir(&dir).unwrap();
        let key = dir.join("agent.key");
        write_private(&key, b"secret").unwrap();
        // Rewriting keeps it private and replaces the contents.
        write_private(&key, b"other").unwrap();
        assert_eq!(std::fs::read(&key).unwrap(), b"other");
        let old = d.path().join("old.key");
        std::fs::write(&old, b"x").unwrap();
        restrict(&old).unwrap();
        #[cfg(unix)]
        {
            assert_eq!(mode(&dir), 0o700);
            assert_eq!(mode(&key), 0o600);
            assert_eq!(mode(&old), 0o600);
        }
        #[cfg(windows)]
        {
            let sid = acl::sid();
            assert!(sid.starts_with("S-1-"), "{sid}");
            // Protected ("P"): nothing inherited from above; full control for SYSTEM,
            // Administrators and this user, nobody else; directories pass it down (OICI).
            for (dir, inherit) in [(false, ""), (true, "OICI")] {
                let want = format!(
                    "D:P(A;{inherit};FA;;;SY)(A;{inherit};FA;;;BA)(A;{inherit};FA;;;{sid})"
                );
                assert_eq!(acl::intended(dir).unwrap(), want);
            }
            if acl::under_wine() {
                // Wine turns a DACL into Unix mode bits and reads back a made-up one, so
                // what the files got can only be read back on Windows itself.
                eprintln!("under Wine: the DACLs set are not read back");
                return;
            }
            for (p, dir) in [(&dir, true), (&key, false), (&old, false)] {
                // SetNamedSecurityInfoW marks the DACL auto-inherited ("AI"); the ACEs are
                // what counts.
                let got = windows_dacl(p).unwrap().replacen("D:PAI", "D:P", 1);
                assert_eq!(got, acl::intended(dir).unwrap(), "{}", p.display());
            }
            // A file made in the private dir inherits its ACEs and nothing else.
            let made = dir.join("made-later");
            std::fs::write(&made, b"y").unwrap();
            let dacl = windows_dacl(&made).unwrap();
            assert_eq!(dacl.matches("(A;").count(), 3, "{dacl}");
            assert!(
                !dacl.contains(";;;WD)") && !dacl.contains(";;;BU)"),
                "{dacl}"
            );
        }
    }
}
