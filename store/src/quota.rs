//! Disk quota (decision D10): measuring the store's size and the free space, and deciding
//! whether a limit is exceeded. The writer acts on the verdict (reject or evict).

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::config::Quota;

/// Allocated size of everything under `path`, like `du` (sparse and pre-allocated files are
/// counted by their blocks, not their length).
pub(crate) fn disk_usage(path: &Path) -> io::Result<u64> {
    let meta = fs::symlink_metadata(path)?;
    let mut total = meta.blocks() * 512;
    if meta.is_dir() {
        for entry in fs::read_dir(path)? {
            match disk_usage(&entry?.path()) {
                Ok(n) => total += n,
                // A file deleted while we walk (an epoch being removed) is simply not counted.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(total)
}

/// Free bytes on the file system holding `path`.
pub(crate) fn free_space(path: &Path) -> io::Result<u64> {
    fs2::available_space(path)
}

/// Whether the store, using `disk_bytes` with `free_bytes` left on its file system, is over
/// quota. An unknown free space (the check failed) does not count as exceeded.
pub(crate) fn exceeded(quota: &Quota, disk_bytes: u64, free_bytes: Option<u64>) -> bool {
    let over_size = quota.max_store_bytes.is_some_and(|max| disk_bytes > max);
    let under_floor = match (quota.min_free_disk_bytes, free_bytes) {
        (Some(floor), Some(free)) => free < floor,
        _ => false,
    };
    over_size || under_floor
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::QuotaPolicy;

    #[test]
    fn either_limit_exceeds_the_quota() {
        let quota = Quota {
            max_store_bytes: Some(100),
            min_free_disk_bytes: Some(50),
            policy: QuotaPolicy::Reject,
        };
        assert!(!exceeded(&quota, 100, Some(50)));
        assert!(exceeded(&quota, 101, Some(50)));
        assert!(exceeded(&quota, 10, Some(49)));
        assert!(!exceeded(&quota, 10, None));
        assert!(!exceeded(&Quota::default(), u64::MAX, Some(0)));
    }

    #[test]
    fn disk_usage_counts_allocated_blocks_recursively() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::create_dir(dir.path().join("sub")).expect("mkdir");
        fs::write(dir.path().join("sub/file"), vec![1u8; 64 * 1024]).expect("write");
        let used = disk_usage(dir.path()).expect("du");
        assert!(used >= 64 * 1024, "{used}");
        assert!(free_space(dir.path()).expect("statvfs") > 0);
    }
}
