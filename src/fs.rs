//! File helpers shared by the hub's small state files (identities, certificates, sessions,
//! twins), and the hub's file-creation policy: its data folder is private (0700) and, once
//! `edgehub run` starts, so is every file it creates (umask 0o077).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// What every temporary file of [`write_atomically`] has in its name:
/// `.<name>.edgehub-<pid>-<n>.tmp`.
const TEMP_MARKER: &str = ".edgehub-";
const TEMP_SUFFIX: &str = ".tmp";

/// A temporary file older than this is a leftover of a crash: [`remove_leftovers`] removes it.
pub const LEFTOVER_AGE: Duration = Duration::from_secs(60);

/// Numbers the temporary files of this process.
static NEXT_TEMP: AtomicU64 = AtomicU64::new(0);

/// Replaces `path` with `contents` so that a crash leaves the old file or the new one, never a
/// mix: a new temporary file beside it, created with `mode`, fsync, rename, fsync of the
/// folder.
///
/// The temporary file has a name of its own (`.<name>.edgehub-<pid>-<n>.tmp`) and is created
/// with `O_CREAT | O_EXCL | O_NOFOLLOW`: a file (or a symbolic link) left or planted at that
/// name is never opened, let alone written through. A failed write removes its temporary file;
/// a crash may leave one, which [`remove_leftovers`] removes later. One writer at a time per
/// path (callers hold a lock or run once).
///
/// # Errors
///
/// The first failing file operation.
pub fn write_atomically(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    let (temp, mut file) = create_temp(path, mode)?;
    let written = file
        .write_all(contents)
        .and_then(|()| file.sync_all())
        .and_then(|()| {
            drop(file);
            fs::rename(&temp, path)
        });
    if let Err(e) = written {
        // The temporary file is ours (O_EXCL): removing it cannot touch anyone else's.
        let _ = fs::remove_file(&temp);
        return Err(e);
    }
    let folder = path.parent().filter(|p| !p.as_os_str().is_empty());
    File::open(folder.unwrap_or(Path::new(".")))?.sync_all()
}

/// Creates a temporary file beside `path` under a name no other writer uses.
fn create_temp(path: &Path, mode: u32) -> io::Result<(PathBuf, File)> {
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a file path", path.display()),
        )
    })?;
    let pid = std::process::id();
    // A name taken (a leftover of a process that had our pid) is skipped, never reused.
    for _ in 0..64 {
        let n = NEXT_TEMP.fetch_add(1, Ordering::Relaxed);
        let mut temp_name = std::ffi::OsString::from(".");
        temp_name.push(name);
        temp_name.push(format!("{TEMP_MARKER}{pid}-{n}{TEMP_SUFFIX}"));
        let temp = path.with_file_name(temp_name);
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(nofollow())
            .mode(mode)
            .open(&temp)
        {
            Ok(file) => return Ok((temp, file)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        format!("no free temporary name beside {}", path.display()),
    ))
}

fn nofollow() -> i32 {
    // The flag's bits fit an i32 (`open(2)` takes an int).
    i32::try_from(rustix::fs::OFlags::NOFOLLOW.bits()).expect("O_NOFOLLOW fits an int")
}

/// Removes the temporary files of [`write_atomically`] older than [`LEFTOVER_AGE`] (left by a
/// crash) from `dir` and its subfolders, one level deep; symbolic links are not followed
/// (a link that has a temporary file's name is removed itself, never its target). Returns how
/// many it removed.
///
/// # Errors
///
/// When `dir` cannot be listed (a missing `dir` is not an error).
pub fn remove_leftovers(dir: &Path) -> io::Result<usize> {
    let mut removed = remove_leftovers_in(dir)?;
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(removed),
        Err(e) => return Err(e),
    };
    for entry in entries.flatten() {
        // `file_type` does not follow links: only real subfolders are visited.
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            removed += remove_leftovers_in(&entry.path()).unwrap_or(0);
        }
    }
    Ok(removed)
}

fn remove_leftovers_in(dir: &Path) -> io::Result<usize> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !(name.starts_with('.') && name.contains(TEMP_MARKER) && name.ends_with(TEMP_SUFFIX)) {
            continue;
        }
        // `DirEntry::metadata` does not follow links either.
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|modified| modified.elapsed().ok())
            .is_some_and(|age| age >= LEFTOVER_AGE);
        if old && fs::remove_file(entry.path()).is_ok() {
            tracing::info!(file = %entry.path().display(), "removed a leftover temporary file");
            removed += 1;
        }
    }
    Ok(removed)
}

/// Creates the folder `dir` (and its parents) with mode 0700, or makes an existing one 0700
/// when group or others have access to it: the hub's data folder holds keys.
///
/// # Errors
///
/// When the folder cannot be created, read or changed.
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let mode = fs::metadata(dir)?.permissions().mode();
    if mode & 0o077 != 0 {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
        tracing::warn!(
            folder = %dir.display(),
            was = format_args!("{:o}", mode & 0o777),
            "the data folder was open to other users; it is now 0700"
        );
    }
    Ok(())
}

/// Sets the process's file-creation mask to 0o077: every file and folder the process creates
/// from then on is private to its owner, whatever the mask it was started with. Returns the
/// previous mask.
pub fn restrict_umask() -> u32 {
    let previous = rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    previous.as_raw_mode()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn writes_replace_the_file_with_the_mode_and_leave_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        write_atomically(&path, b"one", 0o600).unwrap();
        write_atomically(&path, b"two", 0o600).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert_eq!(mode(&path), 0o600);
        assert_eq!(names(dir.path()), ["state.json"]);
    }

    #[test]
    fn a_stale_temporary_file_is_never_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("identities.json");
        let victim = dir.path().join("victim");
        fs::write(&victim, b"untouched").unwrap();
        // The old fixed temporary name, and every name this process could pick next, hold a
        // symbolic link to the victim (what an attacker with write access to the folder, or a
        // crash, could leave).
        symlink(&victim, dir.path().join("identities.json.tmp")).unwrap();
        let next = NEXT_TEMP.load(Ordering::Relaxed);
        for n in next..next + 8 {
            let name = format!(
                ".identities.json{TEMP_MARKER}{}-{n}{TEMP_SUFFIX}",
                std::process::id()
            );
            symlink(&victim, dir.path().join(name)).unwrap();
        }
        write_atomically(&path, b"{}", 0o600).unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"untouched");
        assert_eq!(fs::read(&path).unwrap(), b"{}");
        assert!(
            !fs::symlink_metadata(&path)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(mode(&path), 0o600);
    }

    #[test]
    fn a_failed_write_removes_its_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        // Renaming onto a non-empty folder fails after the temporary file was written.
        let path = dir.path().join("busy");
        fs::create_dir(&path).unwrap();
        fs::write(path.join("inside"), b"x").unwrap();
        assert!(write_atomically(&path, b"data", 0o600).is_err());
        assert_eq!(names(dir.path()), ["busy"]);
    }

    #[test]
    fn leftovers_are_removed_when_old_and_only_they() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("twins");
        fs::create_dir(&sub).unwrap();
        let old = |path: &Path| {
            let file = File::options().write(true).open(path).unwrap();
            let past = std::time::SystemTime::now() - LEFTOVER_AGE - Duration::from_secs(5);
            file.set_modified(past).unwrap();
        };
        let leftover = dir.path().join(".identities.json.edgehub-1-0.tmp");
        let nested = sub.join(".d%2Fm.json.edgehub-7-3.tmp");
        let fresh = dir.path().join(".sessions.json.edgehub-1-1.tmp");
        let other = dir.path().join("notes.tmp");
        for file in [&leftover, &nested, &fresh, &other] {
            fs::write(file, b"x").unwrap();
        }
        old(&leftover);
        old(&nested);
        old(&other);
        // A link named like a leftover is removed itself; its target stays.
        let target = dir.path().join("target");
        fs::write(&target, b"keep").unwrap();
        old(&target);
        let link = dir.path().join(".x.edgehub-2-2.tmp");
        symlink(&target, &link).unwrap();
        let removed = remove_leftovers(dir.path()).unwrap();
        assert!(!leftover.exists() && !nested.exists());
        assert!(fresh.exists(), "a write in progress keeps its file");
        assert!(other.exists(), "not ours");
        assert_eq!(fs::read(&target).unwrap(), b"keep");
        // The link is as old as its creation (now): it stays until it is old, then goes.
        assert_eq!(removed, 2);
        assert_eq!(remove_leftovers(&dir.path().join("absent")).unwrap(), 0);
    }

    #[test]
    fn the_data_folder_is_made_private() {
        let dir = tempfile::tempdir().unwrap();
        let fresh = dir.path().join("a/b/data");
        create_private_dir(&fresh).unwrap();
        assert_eq!(mode(&fresh), 0o700);
        let open = dir.path().join("open");
        fs::create_dir(&open).unwrap();
        fs::set_permissions(&open, fs::Permissions::from_mode(0o755)).unwrap();
        create_private_dir(&open).unwrap();
        assert_eq!(mode(&open), 0o700);
    }
}
