//! File operations that a hostile local user cannot turn against the rig.
//!
//! A bench box is shared (CI runners, several engineers' accounts), and the
//! rig often runs with more rights than the people who can write to `/tmp`.
//! So: files are opened without following symlinks and created exclusively,
//! nothing is truncated in place (replacements are written beside and
//! renamed over), folders the rig creates are not writable by others
//! whatever the umask, and a folder someone else created is refused unless
//! its owner and mode say it can be trusted.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Why a path cannot be trusted or created.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path} is a symbolic link; refusing to follow it (someone may have planted it)")]
    Symlink { path: PathBuf },
    #[error("{path} is not a {what}")]
    NotA { path: PathBuf, what: &'static str },
    #[error(
        "{path} belongs to uid {owner}, not to this user (uid {me}) or root; refusing to use it (remove it, or set the folder explicitly)"
    )]
    Owner { path: PathBuf, owner: u32, me: u32 },
    #[error("{path} is writable by other users (mode {mode:o}); refusing to use it (chmod o-w)")]
    WorldWritable { path: PathBuf, mode: u32 },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> FsError + '_ {
    move |source| FsError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The effective user id of this process.
pub fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Creates `dir` (and missing parents) with `mode`, whatever the umask, and
/// checks what is there: a real folder (not a link), owned by this user or
/// root, not writable by others. `mode` 0o700 for private folders.
pub fn ensure_dir(dir: &Path, mode: u32) -> Result<(), FsError> {
    match std::fs::symlink_metadata(dir) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(parent) = dir.parent()
                && !parent.as_os_str().is_empty()
                && !parent.exists()
            {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o755)
                    .create(parent)
                    .map_err(io(parent))?;
            }
            match std::fs::DirBuilder::new().mode(mode).create(dir) {
                Ok(()) => {
                    // The umask may have taken bits away; never add any.
                    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode)).map_err(io(dir))?;
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io(dir)(e)),
            }
        }
        Err(e) => return Err(io(dir)(e)),
    }
    check_dir(dir)
}

/// A folder may be trusted: not a link, owned by this user or root, and not
/// writable by others (a group-writable folder of the bench's users is fine).
pub fn check_dir(dir: &Path) -> Result<(), FsError> {
    check_dir_with(dir, false)
}

/// [`check_dir`], also accepting a sticky world-writable folder such as
/// `/tmp`: fine as the parent of folders created exclusively inside it.
pub fn check_parent_dir(dir: &Path) -> Result<(), FsError> {
    check_dir_with(dir, true)
}

fn check_dir_with(dir: &Path, sticky_ok: bool) -> Result<(), FsError> {
    let m = std::fs::symlink_metadata(dir).map_err(io(dir))?;
    if m.file_type().is_symlink() {
        return Err(FsError::Symlink { path: dir.to_owned() });
    }
    if !m.is_dir() {
        return Err(FsError::NotA {
            path: dir.to_owned(),
            what: "folder",
        });
    }
    let me = euid();
    if m.uid() != me && m.uid() != 0 {
        return Err(FsError::Owner {
            path: dir.to_owned(),
            owner: m.uid(),
            me,
        });
    }
    if m.mode() & 0o002 != 0 && !(sticky_ok && m.mode() & 0o1000 != 0) {
        return Err(FsError::WorldWritable {
            path: dir.to_owned(),
            mode: m.mode() & 0o7777,
        });
    }
    Ok(())
}

/// Opens (creating if missing, never truncating) a regular file without
/// following a symlink at its path.
pub fn open_rw_nofollow(path: &Path, mode: u32) -> Result<File, FsError> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => FsError::Symlink { path: path.to_owned() },
            _ => io(path)(e),
        })?;
    let m = f.metadata().map_err(io(path))?;
    if !m.is_file() {
        return Err(FsError::NotA {
            path: path.to_owned(),
            what: "regular file",
        });
    }
    Ok(f)
}

/// Creates a new file with `mode` (exclusive: an existing file or a planted
/// link is an error, never overwritten).
pub fn create_new(path: &Path, mode: u32) -> Result<File, FsError> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(io(path))
}

/// Opens an existing regular file for reading without following a link.
pub fn open_read_nofollow(path: &Path) -> Result<File, FsError> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => FsError::Symlink { path: path.to_owned() },
            _ => io(path)(e),
        })
}

/// Replaces `path` with `data`: written to a new file beside it (exclusive,
/// `mode`) and renamed over it, so a reader never sees half a file, a link
/// at `path` is replaced rather than followed, and a failed write leaves
/// nothing behind.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<(), FsError> {
    let (tmp, mut f) = temp_beside(path, mode)?;
    let r = f
        .write_all(data)
        .and_then(|_| f.flush())
        .and_then(|_| std::fs::rename(&tmp, path));
    if let Err(e) = r {
        let _ = std::fs::remove_file(&tmp);
        return Err(io(path)(e));
    }
    Ok(())
}

/// A new file with a random hidden name beside `path` (created, never
/// opened through a link), for a write that is renamed over `path` once
/// complete.
pub fn temp_beside(path: &Path, mode: u32) -> Result<(PathBuf, File), FsError> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    for _ in 0..16 {
        let mut r = [0u8; 6];
        let _ = getrandom::fill(&mut r);
        let cand = dir.join(format!(
            ".{name}.{}.tmp",
            r.iter().map(|b| format!("{b:02x}")).collect::<String>()
        ));
        match create_new(&cand, mode) {
            Ok(f) => return Ok((cand, f)),
            Err(FsError::Io { source, .. }) if source.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io(path)(std::io::Error::other("no free temporary name")))
}

/// Appends to a file this process created (a [`temp_beside`] file), never
/// through a link.
pub fn append_nofollow(path: &Path, data: &[u8]) -> Result<(), FsError> {
    let mut f = OpenOptions::new()
        .append(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(io(path))?;
    f.write_all(data).map_err(io(path))
}

/// Reads at most `limit` bytes of a regular file, without following links.
pub fn read_bounded(path: &Path, limit: u64) -> Result<Vec<u8>, FsError> {
    use std::io::Read;
    let f = open_read_nofollow(path)?;
    let mut out = Vec::new();
    f.take(limit).read_to_end(&mut out).map_err(io(path))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_planted_symlink_is_never_followed_nor_the_file_behind_it_truncated() {
        let d = tempfile::tempdir().unwrap();
        let victim = d.path().join("victim");
        std::fs::write(&victim, "precious").unwrap();
        let link = d.path().join("x.lock");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        assert!(matches!(open_rw_nofollow(&link, 0o600), Err(FsError::Symlink { .. })));
        assert!(create_new(&link, 0o600).is_err());
        // Replacing the path replaces the link, not the file it points at.
        write_atomic(&link, b"new", 0o644).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        assert_eq!(std::fs::read_to_string(&link).unwrap(), "new");
        assert!(!std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
    }

    #[test]
    fn folders_are_created_private_whatever_the_umask_and_others_are_checked() {
        let d = tempfile::tempdir().unwrap();
        // SAFETY: umask only changes this process's file creation mask.
        let old = unsafe { libc::umask(0) };
        let private = d.path().join("p");
        let r = ensure_dir(&private, 0o700);
        unsafe { libc::umask(old) };
        r.unwrap();
        assert_eq!(std::fs::metadata(&private).unwrap().mode() & 0o777, 0o700);
        let open = d.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(matches!(check_dir(&open), Err(FsError::WorldWritable { .. })));
        let link = d.path().join("link");
        std::os::unix::fs::symlink(&private, &link).unwrap();
        assert!(matches!(check_dir(&link), Err(FsError::Symlink { .. })));
    }
}
