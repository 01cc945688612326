//! The values that cross the API: targets of an enqueue, time to live, delivered entries.

use std::time::Duration;

use bytes::Bytes;

use crate::endpoint::EndpointHandle;

/// Expiry stored for an entry that never expires.
pub(crate) const NEVER: u64 = u64::MAX;

/// How long an entry may wait in its queue, fixed at enqueue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Ttl {
    /// The entry never expires.
    Never,
    /// The entry expires this long after it was enqueued.
    After(Duration),
}

impl Ttl {
    /// The TTL edgeHub derives from a `timeToLiveSecs` setting: a negative value means
    /// "never expires" (spec section 5.4). Zero means "expires at once": the hub substitutes the
    /// global setting for a route's zero before it calls the store.
    pub fn from_secs(secs: i64) -> Self {
        u64::try_from(secs).map_or(Self::Never, |s| Self::After(Duration::from_secs(s)))
    }

    /// The deadline in milliseconds since the Unix epoch for an entry enqueued at `now_ms`.
    pub(crate) fn deadline(self, now_ms: u64) -> u64 {
        match self {
            Self::Never => NEVER,
            Self::After(d) => {
                let ms = u64::try_from(d.as_millis()).unwrap_or(NEVER);
                now_ms.saturating_add(ms)
            }
        }
    }
}

/// One destination of an enqueued message. The targets of one enqueue name distinct endpoints.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    /// The endpoint, as handed out by [`Store::add_endpoint`](crate::Store::add_endpoint).
    pub endpoint: &'a EndpointHandle,
    /// Queue priority: 0 is delivered first; edgeHub's default is 2,000,000,000.
    pub priority: u32,
    /// Time to live of this copy.
    pub ttl: Ttl,
}

impl<'a> Target<'a> {
    /// A target with priority and TTL.
    pub fn new(endpoint: &'a EndpointHandle, priority: u32, ttl: Ttl) -> Self {
        Self {
            endpoint,
            priority,
            ttl,
        }
    }
}

/// Identifies an entry handed out by a [`Reader`](crate::Reader), for [`Reader::ack`](crate::Reader::ack).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EntryId {
    /// Priority of the queue the entry is in.
    pub priority: u32,
    /// The message's store-wide sequence number (increasing in enqueue order).
    pub seq: u64,
}

/// A message handed out by a reader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// What to acknowledge once the message is delivered.
    pub id: EntryId,
    /// The message bytes exactly as enqueued.
    pub payload: Bytes,
    /// When the store accepted the message, in milliseconds since the Unix epoch, in the
    /// store's time: the wall clock at open, advanced by a monotonic clock (it does not follow
    /// jumps of the wall clock; see `StoreConfig::max_downtime`).
    pub enqueued_at_ms: u64,
    /// When the entry expires, in the same time; `None` if never.
    pub expires_at_ms: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negative_seconds_never_expire() {
        assert_eq!(Ttl::from_secs(-1), Ttl::Never);
        assert_eq!(Ttl::from_secs(7200), Ttl::After(Duration::from_secs(7200)));
    }

    #[test]
    fn deadline_adds_ttl_and_never_is_max() {
        assert_eq!(Ttl::After(Duration::from_millis(5)).deadline(10), 15);
        assert_eq!(Ttl::Never.deadline(10), NEVER);
    }
}
