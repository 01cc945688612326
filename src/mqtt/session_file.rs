//! The sessions file: the subscriptions of `clean_session = 0` clients, kept across restarts
//! (decision D9: the Python SDK never subscribes again after a reconnect).
//!
//! One thread owns the file and is its only writer: a change asks it to save, requests made
//! while a save is pending are coalesced into that save, and every save writes a snapshot taken
//! after the request, so the last change always lands last. A file that cannot be read at start
//! is moved aside (`sessions.json.unreadable-<unix seconds>`) and logged, never silently
//! replaced.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Filters and their QoS (0 or 1) by client id, as saved.
pub type Saved = BTreeMap<String, BTreeMap<String, u8>>;

/// Reads the sessions file; a missing file is no sessions, an unreadable one is moved aside.
pub fn load(path: &Path) -> Saved {
    let text = match std::fs::read(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Saved::new(),
        Err(e) => {
            tracing::error!(path = %path.display(), error = %e, "sessions file unreadable; starting without saved subscriptions");
            return Saved::new();
        }
    };
    match serde_json::from_slice(&text) {
        Ok(saved) => saved,
        Err(e) => {
            let aside = set_aside(path);
            tracing::error!(
                path = %path.display(),
                kept_as = %aside.display(),
                error = %e,
                "sessions file unreadable; kept aside, starting without saved subscriptions"
            );
            Saved::new()
        }
    }
}

/// Moves an unreadable file out of the way (keeping it for a post-mortem); gives its new name.
fn set_aside(path: &Path) -> PathBuf {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(format!(".unreadable-{secs}"));
    let aside = path.with_file_name(name);
    if let Err(e) = std::fs::rename(path, &aside) {
        tracing::error!(path = %path.display(), error = %e, "could not move the unreadable sessions file aside");
    }
    aside
}

/// The writer of the sessions file.
#[derive(Debug)]
pub struct SessionFile {
    requests: Option<SyncSender<()>>,
    writer: Option<JoinHandle<()>>,
}

impl SessionFile {
    /// Starts the writer of `path`; each save writes what `snapshot` gives at that moment.
    ///
    /// # Panics
    ///
    /// When the operating system cannot start a thread.
    pub fn start(path: PathBuf, snapshot: impl Fn() -> Saved + Send + 'static) -> Self {
        // One slot: a request made while another waits is the same save.
        let (requests, pending) = sync_channel(1);
        let writer = std::thread::Builder::new()
            .name("sessions-file".into())
            .spawn(move || write_on_request(&path, &pending, &snapshot))
            .expect("starting the sessions file writer");
        Self {
            requests: Some(requests),
            writer: Some(writer),
        }
    }

    /// Asks for a save of the current state (returns at once; coalesced with a pending one).
    pub fn request_save(&self) {
        if let Some(requests) = &self.requests {
            match requests.try_send(()) {
                Ok(()) | Err(TrySendError::Full(())) => {}
                Err(TrySendError::Disconnected(())) => {
                    tracing::error!(
                        "the sessions file writer stopped; subscriptions are not saved"
                    );
                }
            }
        }
    }
}

impl Drop for SessionFile {
    /// Lets the writer finish the save still requested, then stops it.
    fn drop(&mut self) {
        self.requests = None;
        if let Some(writer) = self.writer.take()
            && writer.join().is_err()
        {
            tracing::error!("the sessions file writer panicked");
        }
    }
}

/// How long after a failed save the next try comes.
const RETRY_AFTER: Duration = Duration::from_secs(1);

fn write_on_request(path: &Path, pending: &Receiver<()>, snapshot: &dyn Fn() -> Saved) {
    // After a failed save (a full disk fails every one until space returns) the save is retried
    // every RETRY_AFTER, also without a new request; the failure is logged once per episode.
    let mut failing = false;
    loop {
        let requested = if failing {
            match pending.recv_timeout(RETRY_AFTER) {
                Ok(()) | Err(RecvTimeoutError::Timeout) => true,
                Err(RecvTimeoutError::Disconnected) => false,
            }
        } else {
            pending.recv().is_ok()
        };
        if !requested {
            return;
        }
        let text = serde_json::to_vec(&snapshot()).expect("subscriptions serialise");
        match crate::fs::write_atomically(path, &text, 0o600) {
            Ok(()) if failing => {
                failing = false;
                tracing::info!(path = %path.display(), "subscriptions saved again");
            }
            Ok(()) => {}
            Err(e) if failing => {
                tracing::debug!(path = %path.display(), error = %e, "could not save subscriptions");
            }
            Err(e) => {
                failing = true;
                tracing::error!(
                    path = %path.display(), error = %e,
                    "could not save subscriptions; retrying every second"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[test]
    fn every_request_is_covered_by_a_later_save_and_the_last_state_lands_last() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sessions.json");
        let state = Arc::new(Mutex::new(Saved::new()));
        let file = {
            let state = Arc::clone(&state);
            SessionFile::start(path.clone(), move || state.lock().unwrap().clone())
        };
        for i in 0..500 {
            state
                .lock()
                .unwrap()
                .insert(format!("d/m{i}"), BTreeMap::from([("f".to_owned(), 1)]));
            file.request_save();
        }
        drop(file);
        assert_eq!(load(&path).len(), 500);
    }

    #[test]
    fn a_failed_save_is_retried_without_a_new_request() {
        let dir = tempfile::tempdir().unwrap();
        // The folder is missing at first: the save fails as on a full disk.
        let folder = dir.path().join("later");
        let path = folder.join("sessions.json");
        let saved = Saved::from([("d/m".to_owned(), BTreeMap::from([("f".to_owned(), 1)]))]);
        let file = SessionFile::start(path.clone(), move || saved.clone());
        file.request_save();
        std::thread::sleep(RETRY_AFTER / 2);
        assert!(!path.exists());
        std::fs::create_dir(&folder).unwrap();
        let deadline = std::time::Instant::now() + RETRY_AFTER * 10;
        while !path.exists() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(load(&path).len(), 1, "the retry saved the state");
        drop(file);
    }

    #[test]
    fn an_unreadable_file_is_kept_aside_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sessions.json");
        std::fs::write(&path, b"{\"d/m\": {\"f\": 1").unwrap();
        assert!(load(&path).is_empty());
        assert!(!path.exists());
        let kept: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with("sessions.json.unreadable-"))
            .collect();
        assert_eq!(kept.len(), 1);
        let text = std::fs::read(dir.path().join(&kept[0])).unwrap();
        assert_eq!(text, b"{\"d/m\": {\"f\": 1");
    }
}
