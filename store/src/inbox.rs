//! The writer's inbox: a bounded queue of commands from the store handle to the writer thread.
//!
//! A `VecDeque` behind a mutex, with a condition variable for each side. A sender wakes the
//! writer only when the writer is parked, and after it released the lock, so a hand-off costs
//! one wake-up and the woken writer finds the lock free. crossbeam's channels, used before,
//! wake the receiver while holding their waker's lock and the receiver, waking at once on the
//! other core, blocks on that lock: two wake-ups (and a context switch more) per message at a
//! modest rate, where every message is a hand-off of its own (BENCHMARKS.md, issue 15). The
//! blocking receive parks at once: no spinning, no `sched_yield`.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// Why a send failed; the message comes back.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum TrySendError<T> {
    /// The inbox holds `capacity` messages.
    Full(T),
    /// The writer is gone.
    Disconnected(T),
}

/// Why a receive returned no message.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum RecvError {
    /// Nothing came in time.
    Timeout,
    /// The sender is gone and the inbox is empty.
    Disconnected,
}

#[derive(Debug)]
struct State<T> {
    queue: VecDeque<T>,
    /// The writer waits for a message.
    receiver_parked: bool,
    /// Senders wait for room.
    senders_parked: usize,
    sender_gone: bool,
    receiver_gone: bool,
}

#[derive(Debug)]
struct Shared<T> {
    state: Mutex<State<T>>,
    capacity: usize,
    not_empty: Condvar,
    not_full: Condvar,
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The sending side (the store handle's). Dropping it disconnects the writer once it has
/// taken what is queued.
#[derive(Debug)]
pub(crate) struct Sender<T>(Arc<Shared<T>>);

/// The receiving side (the writer's).
#[derive(Debug)]
pub(crate) struct Receiver<T>(Arc<Shared<T>>);

/// An inbox holding at most `capacity` messages (at least 1).
pub(crate) fn bounded<T>(capacity: usize) -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            queue: VecDeque::new(),
            receiver_parked: false,
            senders_parked: 0,
            sender_gone: false,
            receiver_gone: false,
        }),
        capacity: capacity.max(1),
        not_empty: Condvar::new(),
        not_full: Condvar::new(),
    });
    (Sender(Arc::clone(&shared)), Receiver(shared))
}

impl<T> Sender<T> {
    /// Queues `message`, waiting for room while the inbox is full; fails (giving it back) once
    /// the writer is gone.
    pub fn send(&self, message: T) -> Result<(), T> {
        let shared = &self.0;
        let mut state = shared.lock();
        while state.queue.len() >= shared.capacity && !state.receiver_gone {
            state.senders_parked += 1;
            state = shared
                .not_full
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
            state.senders_parked -= 1;
        }
        if state.receiver_gone {
            return Err(message);
        }
        Self::push(shared, state, message);
        Ok(())
    }

    /// Queues `message` if there is room.
    pub fn try_send(&self, message: T) -> Result<(), TrySendError<T>> {
        let shared = &self.0;
        let state = shared.lock();
        if state.receiver_gone {
            return Err(TrySendError::Disconnected(message));
        }
        if state.queue.len() >= shared.capacity {
            return Err(TrySendError::Full(message));
        }
        Self::push(shared, state, message);
        Ok(())
    }

    fn push(shared: &Shared<T>, mut state: MutexGuard<'_, State<T>>, message: T) {
        state.queue.push_back(message);
        let wake = state.receiver_parked;
        drop(state);
        if wake {
            shared.not_empty.notify_one();
        }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.sender_gone = true;
        drop(state);
        self.0.not_empty.notify_one();
    }
}

impl<T> Receiver<T> {
    /// Takes the oldest message, waiting up to `timeout` for one.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<T, RecvError> {
        let shared = &self.0;
        let deadline = Instant::now() + timeout;
        let mut state = shared.lock();
        loop {
            if let Some(message) = state.queue.pop_front() {
                Self::made_room(shared, state);
                return Ok(message);
            }
            if state.sender_gone {
                return Err(RecvError::Disconnected);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(RecvError::Timeout);
            }
            state.receiver_parked = true;
            state = shared
                .not_empty
                .wait_timeout(state, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
            state.receiver_parked = false;
        }
    }

    /// Takes the oldest message if there is one.
    pub fn try_recv(&self) -> Option<T> {
        let shared = &self.0;
        let mut state = shared.lock();
        let message = state.queue.pop_front()?;
        Self::made_room(shared, state);
        Some(message)
    }

    fn made_room(shared: &Shared<T>, state: MutexGuard<'_, State<T>>) {
        let wake = state.senders_parked > 0;
        drop(state);
        if wake {
            shared.not_full.notify_one();
        }
    }
}

impl<T> Drop for Receiver<T> {
    /// Senders waiting for room fail; what is queued is dropped (its tickets fail as `Closed`).
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.receiver_gone = true;
        let queued = std::mem::take(&mut state.queue);
        drop(state);
        self.0.not_full.notify_all();
        drop(queued);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_come_in_order_and_a_full_inbox_refuses_or_waits() {
        let (tx, rx) = bounded(2);
        tx.send(1).unwrap();
        tx.try_send(2).unwrap();
        assert_eq!(tx.try_send(3), Err(TrySendError::Full(3)));
        let sender = std::thread::spawn(move || {
            tx.send(3).unwrap();
            tx
        });
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(rx.recv_timeout(Duration::from_secs(1)), Ok(1));
        let tx = sender.join().unwrap();
        assert_eq!(rx.try_recv(), Some(2));
        assert_eq!(rx.recv_timeout(Duration::from_secs(1)), Ok(3));
        assert_eq!(rx.try_recv(), None);
        assert_eq!(
            rx.recv_timeout(Duration::from_millis(10)),
            Err(RecvError::Timeout)
        );
        drop(tx);
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(1)),
            Err(RecvError::Disconnected)
        );
    }

    #[test]
    fn a_parked_receiver_is_woken_and_the_last_messages_outlive_the_sender() {
        let (tx, rx) = bounded(16);
        let receiver = std::thread::spawn(move || {
            let mut got = Vec::new();
            while let Ok(m) = rx.recv_timeout(Duration::from_secs(10)) {
                got.push(m);
            }
            got
        });
        for i in 0..1000 {
            tx.send(i).unwrap();
            if i % 100 == 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        drop(tx);
        assert_eq!(receiver.join().unwrap(), (0..1000).collect::<Vec<_>>());
    }

    #[test]
    fn senders_fail_once_the_receiver_is_gone() {
        let (tx, rx) = bounded(1);
        tx.send(1).unwrap();
        let sender = std::thread::spawn(move || tx.send(2));
        std::thread::sleep(Duration::from_millis(20));
        drop(rx);
        assert_eq!(sender.join().unwrap(), Err(2));
    }
}
