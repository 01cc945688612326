//! The hub's upstream links, one per identity (D8), shared by the forwarder (telemetry) and
//! the [`super::mirror`] (twins and methods): whoever needs an identity's link first starts
//! it, and the same connection then carries everything of that identity.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{mpsc, watch};

use super::link::{Inbound, Link};
use super::settings::UpstreamSettings;
use super::status::UpstreamStatus;
use crate::identity::ClientIdentity;
use crate::stop::Stop;

/// What upstream sends down that waits for its handler, at most (more is dropped and logged).
pub const INBOUND: usize = 1024;

/// The links by identity.
#[derive(Debug)]
pub struct Links {
    settings: Arc<UpstreamSettings>,
    status: Arc<UpstreamStatus>,
    /// Bumped every time a link connects.
    link_up: watch::Sender<u64>,
    /// Where every link hands what upstream publishes to it.
    inbound: mpsc::Sender<Inbound>,
    stop: Stop,
    links: Mutex<HashMap<ClientIdentity, Link>>,
}

impl Links {
    /// No links yet; gives the receiver of what upstream will send down them.
    #[must_use]
    pub fn new(
        settings: Arc<UpstreamSettings>,
        status: Arc<UpstreamStatus>,
        stop: Stop,
    ) -> (Self, mpsc::Receiver<Inbound>) {
        let (inbound, receiver) = mpsc::channel(INBOUND);
        let links = Self {
            settings,
            status,
            link_up: watch::channel(0).0,
            inbound,
            stop,
            links: Mutex::default(),
        };
        (links, receiver)
    }

    /// The link of `identity`, started if it has none (or its last one closed when idle).
    pub fn get(&self, identity: &ClientIdentity) -> Link {
        let mut links = self.links.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(link) = links.get(identity).filter(|link| link.is_alive()) {
            return link.clone();
        }
        links.retain(|_, link| link.is_alive());
        let link = Link::start(
            identity.clone(),
            Arc::clone(&self.settings),
            Arc::clone(&self.status),
            self.link_up.clone(),
            self.inbound.clone(),
            self.stop.clone(),
        );
        links.insert(identity.clone(), link.clone());
        link
    }

    /// The link of `identity` if one runs.
    pub fn find(&self, identity: &ClientIdentity) -> Option<Link> {
        self.links
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(identity)
            .filter(|link| link.is_alive())
            .cloned()
    }

    /// Changes every time a link connects.
    #[must_use]
    pub fn link_up(&self) -> watch::Receiver<u64> {
        self.link_up.subscribe()
    }
}
