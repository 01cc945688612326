//! A small file system mounted for a test (a loop-mounted ext4 image, or tmpfs where loop
//! devices are missing), unmounted when dropped, also when the test fails. The tests run as
//! root; where mounting is impossible, [`SmallFs::mount_at`] says why and the test skips.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// A mounted file system.
pub struct SmallFs {
    mountpoint: PathBuf,
    _image: tempfile::TempDir,
}

impl SmallFs {
    /// Mounts a fresh file system of `mib` MiB at `mountpoint` (created if missing); `Err`
    /// says why it cannot be done here.
    pub fn mount_at(mountpoint: &Path, mib: u64) -> Result<Self, String> {
        std::fs::create_dir_all(mountpoint).map_err(|e| format!("mkdir: {e}"))?;
        let image_dir = tempfile::tempdir().map_err(|e| format!("tempdir: {e}"))?;
        let image = image_dir.path().join("fs.img");
        let target = text(mountpoint)?;
        let ext4 = (|| {
            let file = std::fs::File::create(&image).map_err(|e| format!("image: {e}"))?;
            file.set_len(mib << 20).map_err(|e| format!("image: {e}"))?;
            // No blocks reserved for root: the hub, running as root, sees ENOSPC when the free
            // space df shows is gone.
            run("mkfs.ext4", &["-F", "-q", "-m", "0", text(&image)?])?;
            run("mount", &["-o", "loop", text(&image)?, target])
        })();
        if let Err(ext4) = ext4 {
            let size = format!("size={mib}m");
            run("mount", &["-t", "tmpfs", "-o", &size, "tmpfs", target])
                .map_err(|tmpfs| format!("ext4 on a loop device: {ext4}; tmpfs: {tmpfs}"))?;
            eprintln!("loop-mounted ext4 unavailable ({ext4}); using tmpfs");
        }
        Ok(Self {
            mountpoint: mountpoint.to_owned(),
            _image: image_dir,
        })
    }

    /// Bytes free on it.
    pub fn free_bytes(&self) -> u64 {
        let out = Command::new("df")
            .args(["--output=avail", "-B1"])
            .arg(&self.mountpoint)
            .output()
            .expect("df runs");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .and_then(|line| line.trim().parse().ok())
            .expect("df prints the free bytes")
    }

    /// Writes the file `name` of zeros, leaving about `leave` bytes free (written and synced,
    /// not sparse); gives its path.
    pub fn fill(&self, name: &str, leave: u64) -> PathBuf {
        let path = self.mountpoint.join(name);
        let mut left = self.free_bytes().saturating_sub(leave);
        let mut file = std::fs::File::create(&path).expect("filler");
        let chunk = vec![0u8; 1 << 20];
        while left > 0 {
            let n = usize::try_from(left.min(chunk.len() as u64)).expect("small");
            if file.write_all(&chunk[..n]).is_err() {
                break;
            }
            left -= n as u64;
        }
        let _ = file.sync_all();
        path
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let path = self.mountpoint.display().to_string();
        // A process may still hold files for a moment: retry, then detach it anyway.
        for _ in 0..50 {
            if run("umount", &[&path]).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if let Err(e) = run("umount", &["-l", &path]) {
            eprintln!("cannot unmount the test file system: {e}");
        }
    }
}

fn text(path: &Path) -> Result<&str, String> {
    path.to_str().ok_or_else(|| "non-UTF-8 path".to_owned())
}

fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}
