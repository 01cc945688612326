//! Where the admin endpoint listens: `<data_dir>/admin.sock`, mode 0600.

use std::io;
use std::os::unix::fs::PermissionsExt as _;
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
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}
