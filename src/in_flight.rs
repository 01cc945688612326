//! Messages handed to a receiver and not yet acknowledged, for the pumps that deliver in
//! order (a module input's [`crate::delivery`] pump): each holds the store entry, the receiver
//! of its acknowledgement and its deadline.

/// A message sent and not yet acknowledged.
#[derive(Debug)]
pub struct InFlight {
    /// The store entry, acknowledged to the store once this one is.
    pub id: store::EntryId,
    /// Completed when the receiver acknowledged it; `None` for a record that was dropped
    /// (unreadable, undeliverable), acknowledged in its turn.
    pub ack: Option<tokio::sync::oneshot::Receiver<()>>,
    /// When the receiver's time to acknowledge runs out.
    pub deadline: tokio::time::Instant,
}

/// Waits for the front message's acknowledgement until its deadline: `true` if acknowledged
/// (or dropped, which counts as done); `false` at the deadline, when its sender went away, or
/// without a front message.
pub async fn front_ack(front: Option<&mut InFlight>) -> bool {
    let Some(front) = front else {
        return false;
    };
    match front.ack.as_mut() {
        None => true,
        Some(ack) => matches!(
            tokio::time::timeout_at(front.deadline, ack).await,
            Ok(Ok(()))
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::sync::oneshot;

    use super::*;

    fn in_flight(ack: Option<oneshot::Receiver<()>>, after: Duration) -> InFlight {
        InFlight {
            id: store::EntryId {
                priority: 0,
                seq: 1,
            },
            ack,
            deadline: tokio::time::Instant::now() + after,
        }
    }

    #[tokio::test]
    async fn the_front_is_done_when_acknowledged_dropped_or_not_by_its_deadline() {
        assert!(!front_ack(None).await);
        assert!(front_ack(Some(&mut in_flight(None, Duration::ZERO))).await);
        let (acked, ack) = oneshot::channel();
        acked.send(()).unwrap();
        assert!(front_ack(Some(&mut in_flight(Some(ack), Duration::from_secs(60)))).await);
        let (gone, ack) = oneshot::channel::<()>();
        drop(gone);
        assert!(!front_ack(Some(&mut in_flight(Some(ack), Duration::from_secs(60)))).await);
        let (_silent, ack) = oneshot::channel::<()>();
        assert!(!front_ack(Some(&mut in_flight(Some(ack), Duration::from_millis(10)))).await);
    }
}
