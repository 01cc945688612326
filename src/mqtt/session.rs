//! Sessions: the subscriptions of each client and its live connection, if any.
//!
//! One registry owns this state behind a short mutex (never held across an `.await`). The
//! subscriptions of `clean_session = 0` clients are persisted by the sessions file's writer
//! ([`super::session_file`]) and restored at start (decision D9: the Python SDK never
//! subscribes again after a reconnect). Delivery pumps watch a session to learn when its
//! client connects or subscribes; [`Sessions::changes`] tells of any change.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use rumqttc::QoS;
use tokio::sync::{mpsc, oneshot, watch};

use super::session_file::{self, Saved, SessionFile};
use super::topic::filter_matches;

/// The most subscriptions one client may hold (the SDKs use five at most).
pub const MAX_SUBSCRIPTIONS: usize = 32;

/// A message for a client, handed to its connection: the connection picks the packet id and
/// completes `acked` when the client acknowledges it (QoS 1) or when it is written (QoS 0).
#[derive(Debug)]
pub struct Outbound {
    /// Topic to publish on.
    pub topic: String,
    /// Payload.
    pub payload: bytes::Bytes,
    /// QoS of the subscription it matched (at most 1).
    pub qos: QoS,
    /// Set on a redelivery.
    pub dup: bool,
    /// Completed on acknowledgement; dropped if the connection goes first.
    pub acked: oneshot::Sender<()>,
}

impl Outbound {
    /// A first delivery whose acknowledgement nobody waits for (a twin patch, a method
    /// request: their answers come on other topics).
    pub fn unacknowledged(topic: String, payload: bytes::Bytes, qos: QoS) -> Self {
        let (acked, _) = oneshot::channel();
        Self {
            topic,
            payload,
            qos,
            dup: false,
            acked,
        }
    }
}

/// Messages for a connection that it writes together and flushes once.
pub type Burst = Vec<Outbound>;

/// The live connection of a client: where to send it messages.
#[derive(Debug, Clone)]
pub struct Link {
    /// Unique per connection, to tell a takeover from a stale disconnect.
    pub id: u64,
    /// The connection's outbox (bounded, in bursts).
    pub outbox: mpsc::Sender<Burst>,
    /// Closing this tells the connection to close (a second connection took over).
    pub close: watch::Sender<bool>,
}

#[derive(Debug)]
struct Session {
    subscriptions: BTreeMap<String, QoS>,
    persistent: bool,
    link: Option<Link>,
    changes: watch::Sender<u64>,
    last_connected: Option<SystemTime>,
    last_disconnected: Option<SystemTime>,
}

/// What the `$edgeHub` twin reports about a client (protocol spec 4.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientStatus {
    /// `device` or `device/module`.
    pub client_id: String,
    /// Whether it is connected now.
    pub connected: bool,
    /// When it last connected.
    pub last_connected: Option<SystemTime>,
    /// When it last disconnected.
    pub last_disconnected: Option<SystemTime>,
}

impl Session {
    fn new(persistent: bool) -> Self {
        Self {
            subscriptions: BTreeMap::new(),
            persistent,
            link: None,
            changes: watch::Sender::new(0),
            last_connected: None,
            last_disconnected: None,
        }
    }

    fn changed(&self) {
        self.changes.send_modify(|n| *n += 1);
    }
}

type Registry = Arc<Mutex<HashMap<String, Session>>>;

/// The registry of sessions.
#[derive(Debug)]
pub struct Sessions {
    sessions: Registry,
    /// The writer of the sessions file, when subscriptions are persisted.
    file: Option<SessionFile>,
    next_link: AtomicU64,
    /// Bumped at every change of any session.
    changes: watch::Sender<u64>,
}

/// Why a subscription was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubscribeError {
    /// The client holds [`MAX_SUBSCRIPTIONS`] already.
    #[error("more than {MAX_SUBSCRIPTIONS} subscriptions")]
    TooMany,
}

/// What [`Sessions::connect`] returns.
#[derive(Debug)]
pub struct Connected {
    /// Whether a stored session was resumed (CONNACK's session-present flag).
    pub session_present: bool,
    /// The connection this one replaces, already told to close.
    pub replaced: Option<Link>,
}

impl Sessions {
    /// A registry that persists subscriptions to `file` (if given) and restores them from it.
    pub fn new(file: Option<PathBuf>) -> Self {
        let saved = file.as_deref().map(session_file::load).unwrap_or_default();
        let sessions: HashMap<String, Session> = saved
            .into_iter()
            .map(|(client, filters)| {
                let mut session = Session::new(true);
                session.subscriptions = filters
                    .into_iter()
                    .map(|(filter, qos)| {
                        (
                            filter,
                            if qos == 0 {
                                QoS::AtMostOnce
                            } else {
                                QoS::AtLeastOnce
                            },
                        )
                    })
                    .collect();
                (client, session)
            })
            .collect();
        let sessions: Registry = Arc::new(Mutex::new(sessions));
        let file = file.map(|path| {
            let registry = Arc::clone(&sessions);
            SessionFile::start(path, move || snapshot(&registry))
        });
        Self {
            sessions,
            file,
            next_link: AtomicU64::new(1),
            changes: watch::Sender::new(0),
        }
    }

    /// A fresh link id.
    pub fn next_link_id(&self) -> u64 {
        self.next_link.fetch_add(1, Ordering::Relaxed)
    }

    /// Attaches a new connection to `client_id`'s session, replacing (and closing) any other.
    /// A clean session drops what was stored.
    pub fn connect(&self, client_id: &str, clean_session: bool, link: Link) -> Connected {
        let mut sessions = self.lock();
        let existed = sessions
            .get(client_id)
            .is_some_and(|s| !s.subscriptions.is_empty() || s.persistent);
        let session = sessions
            .entry(client_id.to_owned())
            .or_insert_with(|| Session::new(!clean_session));
        if clean_session {
            session.subscriptions.clear();
        }
        session.persistent = !clean_session;
        let replaced = session.link.replace(link);
        session.last_connected = Some(SystemTime::now());
        if let Some(old) = &replaced {
            let _ = old.close.send(true);
        }
        session.changed();
        let session_present = existed && !clean_session;
        drop(sessions);
        self.changed();
        self.save();
        Connected {
            session_present,
            replaced,
        }
    }

    /// Detaches connection `link_id` if it is still the session's connection. A clean
    /// session's subscriptions are forgotten.
    pub fn disconnect(&self, client_id: &str, link_id: u64) {
        let mut sessions = self.lock();
        let Some(session) = sessions.get_mut(client_id) else {
            return;
        };
        if session.link.as_ref().is_some_and(|l| l.id == link_id) {
            session.link = None;
            session.last_disconnected = Some(SystemTime::now());
            if !session.persistent {
                // Forget what a clean session stored, but keep the entry: pumps watch it.
                session.subscriptions.clear();
            }
            session.changed();
            drop(sessions);
            self.changed();
        }
    }

    /// Adds subscriptions; returns the granted QoS of each (never above 1), or the refusal of
    /// a filter that would take the client over [`MAX_SUBSCRIPTIONS`]. Persistent sessions
    /// are saved by the file's writer, coalesced.
    pub fn subscribe(
        &self,
        client_id: &str,
        filters: &[(String, QoS)],
    ) -> Vec<Result<QoS, SubscribeError>> {
        let (granted, persistent) = {
            let mut sessions = self.lock();
            let session = sessions
                .entry(client_id.to_owned())
                .or_insert_with(|| Session::new(false));
            let granted = filters
                .iter()
                .map(|(filter, qos)| {
                    let known = session.subscriptions.contains_key(filter);
                    if !known && session.subscriptions.len() >= MAX_SUBSCRIPTIONS {
                        return Err(SubscribeError::TooMany);
                    }
                    let qos = if *qos == QoS::AtMostOnce {
                        QoS::AtMostOnce
                    } else {
                        QoS::AtLeastOnce
                    };
                    session.subscriptions.insert(filter.clone(), qos);
                    Ok(qos)
                })
                .collect();
            session.changed();
            (granted, session.persistent)
        };
        self.changed();
        if persistent {
            self.save();
        }
        granted
    }

    /// Removes subscriptions.
    pub fn unsubscribe(&self, client_id: &str, filters: &[String]) {
        let persistent = {
            let mut sessions = self.lock();
            let Some(session) = sessions.get_mut(client_id) else {
                return;
            };
            for filter in filters {
                session.subscriptions.remove(filter);
            }
            session.changed();
            session.persistent
        };
        self.changed();
        if persistent {
            self.save();
        }
    }

    /// The connection to deliver `topic` to, and the QoS, if `client_id` is connected and
    /// subscribed to a filter that matches it.
    pub fn route(&self, client_id: &str, topic: &str) -> Option<(Link, QoS)> {
        let sessions = self.lock();
        let session = sessions.get(client_id)?;
        let link = session.link.clone()?;
        let qos = session
            .subscriptions
            .iter()
            .filter(|(filter, _)| filter_matches(filter, topic))
            .map(|(_, qos)| *qos)
            .max_by_key(|q| *q as u8)?;
        Some((link, qos))
    }

    /// A receiver that changes whenever any client connects, disconnects or (un)subscribes
    /// (for a waiter that must not create a session entry, e.g. a method call to any id).
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// A receiver that changes whenever `client_id` connects, disconnects or (un)subscribes.
    pub fn watch(&self, client_id: &str) -> watch::Receiver<u64> {
        self.lock()
            .entry(client_id.to_owned())
            .or_insert_with(|| Session::new(false))
            .changes
            .subscribe()
    }

    /// Every client that connected since the hub started, with its status.
    pub fn clients(&self) -> Vec<ClientStatus> {
        let mut clients: Vec<ClientStatus> = self
            .lock()
            .iter()
            .filter(|(_, s)| s.last_connected.is_some())
            .map(|(id, s)| ClientStatus {
                client_id: id.clone(),
                connected: s.link.is_some(),
                last_connected: s.last_connected,
                last_disconnected: s.last_disconnected,
            })
            .collect();
        clients.sort_by(|a, b| a.client_id.cmp(&b.client_id));
        clients
    }

    /// Whether the registry holds a session for `client_id` (connected, subscribed, or
    /// watched by a pump).
    pub fn is_known(&self, client_id: &str) -> bool {
        self.lock().contains_key(client_id)
    }

    /// How many clients are connected.
    pub fn connected(&self) -> usize {
        self.lock().values().filter(|s| s.link.is_some()).count()
    }

    /// Tells every connection to close.
    pub fn close_all(&self) {
        for session in self.lock().values() {
            if let Some(link) = &session.link {
                let _ = link.close.send(true);
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.sessions.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn changed(&self) {
        self.changes.send_modify(|n| *n += 1);
    }

    /// Asks the file's writer to save the persistent sessions.
    fn save(&self) {
        if let Some(file) = &self.file {
            file.request_save();
        }
    }
}

/// The subscriptions of persistent sessions, as the file keeps them.
fn snapshot(sessions: &Mutex<HashMap<String, Session>>) -> Saved {
    sessions
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .filter(|(_, s)| s.persistent && !s.subscriptions.is_empty())
        .map(|(client, s)| {
            let filters = s
                .subscriptions
                .iter()
                .map(|(f, q)| (f.clone(), *q as u8))
                .collect();
            (client.clone(), filters)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(sessions: &Sessions) -> (Link, mpsc::Receiver<Burst>, watch::Receiver<bool>) {
        let (outbox, rx) = mpsc::channel(4);
        let (close, closed) = watch::channel(false);
        (
            Link {
                id: sessions.next_link_id(),
                outbox,
                close,
            },
            rx,
            closed,
        )
    }

    #[test]
    fn a_second_connection_takes_over_and_closes_the_first() {
        let sessions = Sessions::new(None);
        let (first, _rx1, closed1) = link(&sessions);
        let first_id = first.id;
        assert!(!sessions.connect("d/m", false, first).session_present);
        let (second, _rx2, _closed2) = link(&sessions);
        let second_id = second.id;
        let connected = sessions.connect("d/m", false, second);
        assert!(connected.session_present);
        assert!(*closed1.borrow());
        // The first connection's late disconnect does not detach the second.
        sessions.disconnect("d/m", first_id);
        sessions.subscribe("d/m", &[("devices/d/modules/m/#".into(), QoS::ExactlyOnce)]);
        let (routed, qos) = sessions
            .route("d/m", "devices/d/modules/m/inputs/in1/")
            .unwrap();
        assert_eq!((routed.id, qos), (second_id, QoS::AtLeastOnce));
    }

    #[test]
    fn persistent_subscriptions_survive_a_restart_and_clean_sessions_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("sessions.json");
        {
            let sessions = Sessions::new(Some(file.clone()));
            let (l1, _r1, _c1) = link(&sessions);
            sessions.connect("d/keep", false, l1);
            sessions.subscribe(
                "d/keep",
                &[("devices/d/modules/keep/#".into(), QoS::AtLeastOnce)],
            );
            let (l2, _r2, _c2) = link(&sessions);
            sessions.connect("d/clean", true, l2);
            sessions.subscribe(
                "d/clean",
                &[("devices/d/modules/clean/#".into(), QoS::AtLeastOnce)],
            );
        }
        let sessions = Sessions::new(Some(file));
        let (l, _r, _c) = link(&sessions);
        let connected = sessions.connect("d/keep", false, l);
        assert!(connected.session_present);
        assert!(
            sessions
                .route("d/keep", "devices/d/modules/keep/inputs/x/")
                .is_some()
        );
        let (l, _r, _c) = link(&sessions);
        assert!(!sessions.connect("d/clean", false, l).session_present);
        assert!(
            sessions
                .route("d/clean", "devices/d/modules/clean/inputs/x/")
                .is_none()
        );
    }

    #[test]
    fn two_hundred_clients_subscribing_at_once_are_all_restored() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("sessions.json");
        {
            let sessions = Arc::new(Sessions::new(Some(file.clone())));
            let threads: Vec<_> = (0..200)
                .map(|i| {
                    let sessions = Arc::clone(&sessions);
                    std::thread::spawn(move || {
                        let client = format!("d/m{i}");
                        let (l, _r, _c) = link(&sessions);
                        sessions.connect(&client, false, l);
                        sessions.subscribe(
                            &client,
                            &[(format!("devices/d/modules/m{i}/#"), QoS::AtLeastOnce)],
                        );
                    })
                })
                .collect();
            for thread in threads {
                thread.join().unwrap();
            }
        }
        let sessions = Sessions::new(Some(file));
        for i in 0..200 {
            let client = format!("d/m{i}");
            let (l, _r, _c) = link(&sessions);
            assert!(
                sessions.connect(&client, false, l).session_present,
                "{client}"
            );
            assert!(
                sessions
                    .route(&client, &format!("devices/d/modules/m{i}/inputs/x/"))
                    .is_some(),
                "{client}"
            );
        }
    }

    #[test]
    fn subscriptions_are_capped_per_client() {
        let sessions = Sessions::new(None);
        let filters: Vec<(String, QoS)> = (0..=MAX_SUBSCRIPTIONS)
            .map(|i| (format!("$iothub/methods/POST/{i}"), QoS::AtLeastOnce))
            .collect();
        let granted = sessions.subscribe("d/m", &filters);
        assert!(granted[..MAX_SUBSCRIPTIONS].iter().all(Result::is_ok));
        assert_eq!(granted[MAX_SUBSCRIPTIONS], Err(SubscribeError::TooMany));
        // A filter already held is renewed, not counted again.
        let again = sessions.subscribe("d/m", &filters[..1]);
        assert!(again[0].is_ok());
    }
}
