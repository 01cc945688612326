//! Tickets: how an enqueue learns that its message is durable, blocking or as a future.
//!
//! Runtime-agnostic: built on `std::task::Waker`, so a tokio task awaits a [`Ticket`] without
//! blocking its thread, and a plain thread calls [`Ticket::wait`].

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use crate::error::EnqueueError;

#[derive(Debug)]
enum State {
    /// Not complete yet: the task to wake, and whether a thread blocks on the condition
    /// variable (notifying it costs a system call, so only when somebody waits there).
    Pending {
        waker: Option<Waker>,
        thread_waits: bool,
    },
    Done(Result<(), EnqueueError>),
    Taken,
}

impl State {
    /// Marks a pending ticket as waited for by a thread.
    fn thread_waits(&mut self) {
        if let State::Pending { thread_waits, .. } = self {
            *thread_waits = true;
        }
    }
}

#[derive(Debug)]
struct Inner {
    state: Mutex<State>,
    done: Condvar,
}

/// Completes when the enqueued message is durable as the store's
/// [`Durability`](crate::Durability) defines, or failed.
///
/// `await` it from async code, or call [`wait`](Ticket::wait) from a thread.
#[derive(Debug)]
#[must_use = "a message is not acknowledged before its ticket completes"]
pub struct Ticket {
    inner: Arc<Inner>,
}

/// The writer's side of a ticket; dropping it unresolved fails the ticket with `Closed`.
#[derive(Debug)]
pub(crate) struct Completer {
    inner: Option<Arc<Inner>>,
}

/// A new pending ticket and the means to complete it.
pub(crate) fn ticket() -> (Ticket, Completer) {
    let inner = Arc::new(Inner {
        state: Mutex::new(State::Pending {
            waker: None,
            thread_waits: false,
        }),
        done: Condvar::new(),
    });
    (
        Ticket {
            inner: Arc::clone(&inner),
        },
        Completer { inner: Some(inner) },
    )
}

impl Completer {
    pub fn complete(mut self, result: Result<(), EnqueueError>) {
        if let Some(inner) = self.inner.take() {
            finish(&inner, result);
        }
    }
}

impl Drop for Completer {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.take() {
            finish(&inner, Err(EnqueueError::Closed));
        }
    }
}

fn finish(inner: &Inner, result: Result<(), EnqueueError>) {
    let (waker, thread_waits) = {
        let mut state = inner.state.lock().unwrap_or_else(PoisonError::into_inner);
        match std::mem::replace(&mut *state, State::Done(result)) {
            State::Pending {
                waker,
                thread_waits,
            } => (waker, thread_waits),
            other => {
                *state = other;
                (None, false)
            }
        }
    };
    if thread_waits {
        inner.done.notify_all();
    }
    if let Some(waker) = waker {
        waker.wake();
    }
}

impl Ticket {
    /// Blocks until the message is durable.
    ///
    /// # Errors
    ///
    /// The reason the message was not stored; it must then be treated as not acknowledged.
    pub fn wait(self) -> Result<(), EnqueueError> {
        let mut state = self
            .inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        loop {
            match std::mem::replace(&mut *state, State::Taken) {
                State::Done(result) => return result,
                pending => *state = pending,
            }
            state.thread_waits();
            state = self
                .inner
                .done
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Like [`wait`](Self::wait) for at most `timeout`; gives the ticket back on time-out.
    ///
    /// # Errors
    ///
    /// `Err(Ok(ticket))` on time-out; `Err(Err(e))` if the message was not stored.
    pub fn wait_timeout(self, timeout: Duration) -> Result<(), Result<Self, EnqueueError>> {
        let result = {
            let mut state = self
                .inner
                .state
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            state.thread_waits();
            let (mut state, _) = self
                .inner
                .done
                .wait_timeout_while(state, timeout, |s| matches!(s, State::Pending { .. }))
                .unwrap_or_else(PoisonError::into_inner);
            match std::mem::replace(&mut *state, State::Taken) {
                State::Done(result) => Some(result),
                pending => {
                    *state = pending;
                    None
                }
            }
        };
        match result {
            Some(Ok(())) => Ok(()),
            Some(Err(e)) => Err(Err(e)),
            None => Err(Ok(self)),
        }
    }

    /// Whether the ticket has completed (successfully or not).
    pub fn is_done(&self) -> bool {
        !matches!(
            *self
                .inner
                .state
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
            State::Pending { .. }
        )
    }
}

impl Future for Ticket {
    type Output = Result<(), EnqueueError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self
            .inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match &mut *state {
            State::Pending { waker, .. } => {
                match waker {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    _ => *waker = Some(cx.waker().clone()),
                }
                Poll::Pending
            }
            State::Done(_) => match std::mem::replace(&mut *state, State::Taken) {
                State::Done(result) => Poll::Ready(result),
                _ => unreachable!("matched Done above"),
            },
            State::Taken => Poll::Ready(Err(EnqueueError::Closed)),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;

    /// A waker that counts its wake-ups.
    #[derive(Default)]
    pub(crate) struct CountingWaker(pub AtomicUsize);

    impl Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn wait_returns_the_completion_from_another_thread() {
        let (ticket, completer) = ticket();
        let t = std::thread::spawn(move || completer.complete(Ok(())));
        assert!(ticket.wait().is_ok());
        t.join().expect("completer thread");
    }

    #[test]
    fn dropped_completer_fails_the_ticket() {
        let (ticket, completer) = ticket();
        drop(completer);
        assert!(matches!(ticket.wait(), Err(EnqueueError::Closed)));
    }

    #[test]
    fn future_is_woken_once_complete() {
        let (mut ticket, completer) = ticket();
        let counter = Arc::new(CountingWaker::default());
        let waker = Waker::from(Arc::clone(&counter));
        let mut cx = Context::from_waker(&waker);
        assert!(Pin::new(&mut ticket).poll(&mut cx).is_pending());
        completer.complete(Err(EnqueueError::QuotaExceeded));
        assert_eq!(counter.0.load(Ordering::SeqCst), 1);
        let polled = Pin::new(&mut ticket).poll(&mut cx);
        assert!(matches!(
            polled,
            Poll::Ready(Err(EnqueueError::QuotaExceeded))
        ));
    }

    #[test]
    fn wait_timeout_gives_the_ticket_back() {
        let (ticket, completer) = ticket();
        let ticket = match ticket.wait_timeout(Duration::from_millis(5)) {
            Err(Ok(ticket)) => ticket,
            other => panic!("expected a time-out, got {other:?}"),
        };
        completer.complete(Ok(()));
        assert!(ticket.is_done());
        assert!(ticket.wait_timeout(Duration::from_millis(5)).is_ok());
    }
}
