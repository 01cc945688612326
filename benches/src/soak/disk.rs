//! The soak's data folder: a small ext4 filesystem in an image file, attached to a loop device
//! and mounted (root only), so that a filler file can fill it; unmounted, detached and removed
//! when dropped, also when the soak fails. And what the soak samples: a process's RSS, a
//! folder's allocated bytes, a filesystem's used bytes.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use thiserror::Error;

/// Why the filesystem could not be set up.
#[derive(Debug, Error)]
pub enum DiskError {
    /// A command (mkfs.ext4, losetup, mount) failed.
    #[error("{command} failed: {output}")]
    Command {
        /// The command line.
        command: String,
        /// Its stderr, or why it did not run.
        output: String,
    },
    /// A file operation failed.
    #[error("{action} {}: {source}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

fn run(program: &str, args: &[&str]) -> Result<String, DiskError> {
    let command = format!("{program} {}", args.join(" "));
    let output = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| DiskError::Command {
            command: command.clone(),
            output: e.to_string(),
        })?;
    if !output.status.success() {
        return Err(DiskError::Command {
            command,
            output: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// A mounted loop filesystem; unmounted, detached and its image removed on drop.
#[derive(Debug)]
pub struct LoopFs {
    image: PathBuf,
    device: Option<String>,
    mount: PathBuf,
    mounted: bool,
}

impl LoopFs {
    /// Makes an ext4 image of `mib` MiB at `image`, attaches it and mounts it on `mount`
    /// (created if missing).
    ///
    /// # Errors
    ///
    /// When a step fails (not root, no loop device, no mkfs.ext4); what was done is undone.
    pub fn create(image: &Path, mount: &Path, mib: u64) -> Result<Self, DiskError> {
        let io = |action, path: &Path| {
            let path = path.to_owned();
            move |source| DiskError::Io {
                action,
                path,
                source,
            }
        };
        fs::create_dir_all(mount).map_err(io("create", mount))?;
        let file = fs::File::create(image).map_err(io("create", image))?;
        file.set_len(mib * 1024 * 1024).map_err(io("size", image))?;
        drop(file);
        let mut fs = Self {
            image: image.to_owned(),
            device: None,
            mount: mount.to_owned(),
            mounted: false,
        };
        let image_arg = image.to_string_lossy().into_owned();
        run("mkfs.ext4", &["-q", "-F", "-m", "0", &image_arg])?;
        fs.device = Some(run("losetup", &["--find", "--show", &image_arg])?);
        let device = fs.device.clone().unwrap_or_default();
        run("mount", &[&device, &mount.to_string_lossy()])?;
        fs.mounted = true;
        Ok(fs)
    }

    /// The mount point.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.mount
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        if self.mounted
            && let Err(e) = run("umount", &[&self.mount.to_string_lossy()])
        {
            eprintln!("soak: {e}; trying a lazy unmount");
            if let Err(e) = run("umount", &["-l", &self.mount.to_string_lossy()]) {
                eprintln!("soak: {e}");
            }
        }
        if let Some(device) = &self.device
            && let Err(e) = run("losetup", &["-d", device])
        {
            eprintln!("soak: {e}");
        }
        let _ = fs::remove_file(&self.image);
    }
}

/// Writes zeros to `path` until the filesystem is full; returns how many bytes it took.
///
/// # Errors
///
/// When the file cannot be created, or a write fails for another reason than a full disk.
pub fn fill(path: &Path) -> Result<u64, DiskError> {
    let mut file = fs::File::create(path).map_err(|source| DiskError::Io {
        action: "create",
        path: path.to_owned(),
        source,
    })?;
    let chunk = vec![0u8; 1024 * 1024];
    let mut written = 0u64;
    loop {
        match file.write(&chunk) {
            Ok(0) => break,
            Ok(n) => written += n as u64,
            Err(e) if e.kind() == std::io::ErrorKind::StorageFull => break,
            Err(source) => {
                return Err(DiskError::Io {
                    action: "fill",
                    path: path.to_owned(),
                    source,
                });
            }
        }
    }
    // Smaller writes take the last blocks.
    for size in [64 * 1024, 4096, 512] {
        while let Ok(n) = file.write(&chunk[..size]) {
            if n == 0 {
                break;
            }
            written += n as u64;
        }
    }
    let _ = file.sync_all();
    Ok(written)
}

/// The resident set of process `pid` in bytes (`VmRSS`), if it runs.
#[must_use]
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The bytes allocated to the files under `dir` (what `du` counts), skipping `skip`.
#[must_use]
pub fn allocated_bytes(dir: &Path, skip: &Path) -> u64 {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .filter(|e| e.path() != skip)
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => m.blocks() * 512 + allocated_bytes(&e.path(), skip),
            Ok(m) => m.blocks() * 512,
            Err(_) => 0,
        })
        .sum()
}

/// The used bytes of the filesystem holding `path` (`df`).
#[must_use]
pub fn fs_used_bytes(path: &Path) -> Option<u64> {
    let out = run("df", &["-B1", "--output=used", &path.to_string_lossy()]).ok()?;
    out.lines().nth(1)?.trim().parse().ok()
}
