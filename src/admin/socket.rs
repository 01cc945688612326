//! Where the admin endpoint listens: `<data_dir>/admin.sock`, mode 0600 from the start.

use std::io;
use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use tokio::net::UnixListener;

/// The socket's file name in the data folder.
pub const SOCKET_NAME: &str = "admin.sock";

/// The admin socket of the hub whose data folder is `data_dir`.
#[must_use]
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join(SOCKET_NAME)
}

/// Binds the admin socket at `path` with mode 0600, replacing a stale socket file.
///
/// The socket is never reachable by others, not even for an instant: it is bound inside a new
/// folder of mode 0700 beside `path` (whatever the process's umask), made 0600 there, and only
/// then renamed to `path`.
///
/// # Errors
///
/// When another hub answers on `path`, or the socket cannot be created.
pub fn bind(path: &Path) -> io::Result<UnixListener> {
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!("another hub answers on {}", path.display()),
        ));
    }
    match std::fs::remove_file(path) {
        Ok(()) => tracing::info!(socket = %path.display(), "removed a stale admin socket"),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    bind_privately(path, |_| {})
}

/// [`bind`] after the check for another hub: `before_rename` sees the bound socket in its
/// private folder (tests look at it there).
fn bind_privately(path: &Path, before_rename: impl FnOnce(&Path)) -> io::Result<UnixListener> {
    let private = private_folder(path)?;
    let result = bind_in(&private, path, before_rename);
    let _ = std::fs::remove_dir_all(&private);
    result
}

/// Binds in `private` (a 0700 folder), sets the socket's mode, moves it to `path`.
fn bind_in(
    private: &Path,
    path: &Path,
    before_rename: impl FnOnce(&Path),
) -> io::Result<UnixListener> {
    let inside = private.join(SOCKET_NAME);
    let listener = UnixListener::bind(&inside)?;
    std::fs::set_permissions(&inside, std::fs::Permissions::from_mode(0o600))?;
    before_rename(&inside);
    std::fs::rename(&inside, path)?;
    Ok(listener)
}

/// A new folder of mode 0700 beside `path`, named after it and this process.
fn private_folder(path: &Path) -> io::Result<PathBuf> {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let pid = std::process::id();
    for n in 0..64 {
        let folder = path.with_file_name(format!(".{name}.{pid}-{n}.bind"));
        // The mode is applied under the umask, which can only remove bits: 0700 at most.
        match std::fs::DirBuilder::new().mode(0o700).create(&folder) {
            Ok(()) => return Ok(folder),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        format!("no free folder name beside {}", path.display()),
    ))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::FileTypeExt as _;

    use super::*;

    #[tokio::test]
    async fn the_socket_is_private_and_nothing_is_left_beside_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = socket_path(dir.path());
        let listener = bind(&path).unwrap();
        let metadata = std::fs::symlink_metadata(&path).unwrap();
        assert!(metadata.file_type().is_socket());
        assert_eq!(metadata.permissions().mode() & 0o777, 0o600);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [SOCKET_NAME]);
        // The renamed socket still answers, and a second hub is refused.
        std::os::unix::net::UnixStream::connect(&path).unwrap();
        assert_eq!(bind(&path).unwrap_err().kind(), io::ErrorKind::AddrInUse);
        drop(listener);
        // A stale socket file (the hub was killed) is replaced.
        let again = bind(&path).unwrap();
        std::os::unix::net::UnixStream::connect(&path).unwrap();
        drop(again);
    }

    #[tokio::test]
    async fn until_it_is_private_the_socket_is_out_of_reach() {
        let dir = tempfile::tempdir().unwrap();
        let path = socket_path(dir.path());
        let mut seen = None;
        let _listener = bind_privately(&path, |inside| {
            // Bound, and not yet at its path: only its owner can reach the folder it is in.
            assert!(!path.exists());
            let folder = inside.parent().unwrap();
            let folder_mode = std::fs::metadata(folder).unwrap().permissions().mode();
            let socket_mode = std::fs::metadata(inside).unwrap().permissions().mode();
            seen = Some((folder_mode & 0o077, socket_mode & 0o777));
        })
        .unwrap();
        assert_eq!(seen, Some((0, 0o600)));
        std::os::unix::net::UnixStream::connect(&path).unwrap();
    }

    #[test]
    fn the_socket_is_bound_in_a_folder_only_its_owner_can_enter() {
        let dir = tempfile::tempdir().unwrap();
        let path = socket_path(dir.path());
        let folder = private_folder(&path).unwrap();
        let mode = std::fs::metadata(&folder).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "{mode:o}");
        let second = private_folder(&path).unwrap();
        assert_ne!(folder, second, "a taken name is never reused");
    }
}
