//! One accept loop for every listener of the hub: MQTT, MQTT over TLS, HTTPS for direct
//! methods, metrics and the admin socket.
//!
//! [`serve`] accepts connections until its [`Stop`] fires, each handled in a task of its own
//! that it tracks (no connection outlives the loop); once stopped it closes the listener, gives
//! the open connections until a drain deadline to finish (each handler sees the same [`Stop`]
//! and winds down: an HTTP connection finishes its request, an MQTT connection is closed by its
//! session), then aborts what is left.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::stop::Stop;

/// How long an accept error (e.g. out of file descriptors) pauses the loop.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// A listening socket: TCP or unix.
pub trait Accept: Send + 'static {
    /// A connection accepted.
    type Stream: Send + 'static;

    /// Waits for the next connection; gives it and a description of its peer.
    fn accept(&self) -> impl Future<Output = io::Result<(Self::Stream, String)>> + Send;
}

impl Accept for TcpListener {
    type Stream = TcpStream;

    async fn accept(&self) -> io::Result<(TcpStream, String)> {
        let (stream, peer) = TcpListener::accept(self).await?;
        // Small packets (PUBACKs, pings) go out at once.
        let _ = stream.set_nodelay(true);
        Ok((stream, peer.to_string()))
    }
}

impl Accept for UnixListener {
    type Stream = UnixStream;

    async fn accept(&self) -> io::Result<(UnixStream, String)> {
        let (stream, _) = UnixListener::accept(self).await?;
        Ok((stream, "local".to_owned()))
    }
}

/// How often a listener says that it refused connections over the limit.
const LIMIT_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Serves `listener` until `stop`, each connection in a tracked task running
/// `handle(stream, peer, stop)`; then closes the listener and waits up to `drain` for the
/// connections to finish before aborting them. `name` labels the log lines.
///
/// With a `limit`, a connection runs only while it holds one of its permits (shared by the
/// listeners given the same semaphore); one accepted without a free permit is closed at once,
/// which costs the connections already open nothing.
pub async fn serve<L, H, F>(
    name: &'static str,
    listener: L,
    limit: Option<Arc<Semaphore>>,
    mut stop: Stop,
    drain: Duration,
    handle: H,
) where
    L: Accept,
    H: Fn(L::Stream, String, Stop) -> F,
    F: Future<Output = ()> + Send + 'static,
{
    let mut connections = JoinSet::new();
    let mut refused: u64 = 0;
    let mut last_refusal_log: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let permit = match &limit {
                        None => None,
                        Some(limit) => match Arc::clone(limit).try_acquire_owned() {
                            Ok(permit) => Some(permit),
                            Err(_) => {
                                drop(stream);
                                refused += 1;
                                let now = tokio::time::Instant::now();
                                if last_refusal_log.is_none_or(|at| now - at >= LIMIT_LOG_INTERVAL) {
                                    last_refusal_log = Some(now);
                                    tracing::warn!(listener = name, refused, "connection limit reached; new connections are closed at once");
                                }
                                continue;
                            }
                        },
                    };
                    let serving = handle(stream, peer, stop.clone());
                    connections.spawn(async move {
                        let _permit = permit;
                        serving.await;
                    });
                }
                Err(e) => {
                    tracing::warn!(listener = name, error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            () = stop.stopped() => break,
        }
    }
    drop(listener);
    let drained = tokio::time::timeout(drain, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            listener = name,
            open = connections.len(),
            "connections still open at the drain deadline; closing them"
        );
        connections.abort_all();
        while connections.join_next().await.is_some() {}
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;
    use crate::stop::StopSignal;

    /// Counts the handlers alive: incremented when one starts, decremented when it is dropped
    /// (finished or aborted).
    #[derive(Debug, Default)]
    struct Alive(AtomicUsize);

    struct Guard(Arc<Alive>);

    impl Drop for Guard {
        fn drop(&mut self) {
            self.0.0.fetch_sub(1, Ordering::SeqCst);
        }
    }

    fn enter(alive: &Arc<Alive>) -> Guard {
        alive.0.fetch_add(1, Ordering::SeqCst);
        Guard(Arc::clone(alive))
    }

    async fn bound() -> (TcpListener, std::net::SocketAddr) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        (listener, addr)
    }

    #[tokio::test]
    async fn connections_are_served_until_stop_and_drained_after() {
        let (listener, addr) = bound().await;
        let signal = StopSignal::new();
        let alive = Arc::new(Alive::default());
        let handler_alive = Arc::clone(&alive);
        let server = tokio::spawn(serve(
            "test",
            listener,
            None,
            signal.subscribe(),
            Duration::from_secs(10),
            move |mut stream: TcpStream, _peer, mut stop: Stop| {
                let guard = enter(&handler_alive);
                async move {
                    let _guard = guard;
                    // Echo one byte, then wait for the stop and wind down.
                    let mut byte = [0];
                    stream.read_exact(&mut byte).await.unwrap();
                    stream.write_all(&byte).await.unwrap();
                    stop.stopped().await;
                }
            },
        ));
        let mut client = TcpStream::connect(addr).await.unwrap();
        client.write_all(b"x").await.unwrap();
        let mut echoed = [0];
        client.read_exact(&mut echoed).await.unwrap();
        assert_eq!(&echoed, b"x");
        assert_eq!(alive.0.load(Ordering::SeqCst), 1);

        signal.fire();
        server.await.unwrap();
        assert_eq!(alive.0.load(Ordering::SeqCst), 0, "the handler wound down");
        assert!(
            TcpStream::connect(addr).await.is_err(),
            "the listener is closed once serve returns"
        );
    }

    #[tokio::test]
    async fn connections_that_ignore_the_stop_are_aborted_at_the_drain_deadline() {
        let (listener, addr) = bound().await;
        let signal = StopSignal::new();
        let alive = Arc::new(Alive::default());
        let handler_alive = Arc::clone(&alive);
        let server = tokio::spawn(serve(
            "test",
            listener,
            None,
            signal.subscribe(),
            Duration::from_millis(50),
            move |stream: TcpStream, _peer, _stop| {
                let guard = enter(&handler_alive);
                async move {
                    let _held = (guard, stream);
                    std::future::pending::<()>().await;
                }
            },
        ));
        let _client = TcpStream::connect(addr).await.unwrap();
        while alive.0.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        signal.fire();
        server.await.unwrap();
        assert_eq!(
            alive.0.load(Ordering::SeqCst),
            0,
            "no connection task outlives the loop"
        );
    }

    #[tokio::test]
    async fn a_stop_fired_before_serving_returns_at_once() {
        let (listener, _) = bound().await;
        let signal = StopSignal::new();
        signal.fire();
        assert!(signal.subscribe().is_stopped());
        serve(
            "test",
            listener,
            None,
            signal.subscribe(),
            Duration::from_secs(10),
            |_stream: TcpStream, _peer, _stop| async {},
        )
        .await;
    }

    #[tokio::test]
    async fn connections_over_the_limit_are_closed_and_the_others_served() {
        let (listener, addr) = bound().await;
        let signal = StopSignal::new();
        let limit = Arc::new(Semaphore::new(2));
        let server = tokio::spawn(serve(
            "test",
            listener,
            Some(Arc::clone(&limit)),
            signal.subscribe(),
            Duration::from_secs(10),
            |mut stream: TcpStream, _peer, mut stop: Stop| async move {
                // Echo bytes until the client closes or the stop.
                let mut byte = [0];
                loop {
                    tokio::select! {
                        read = stream.read(&mut byte) => match read {
                            Ok(1) => stream.write_all(&byte).await.unwrap(),
                            _ => return,
                        },
                        () = stop.stopped() => return,
                    }
                }
            },
        ));
        let mut first = TcpStream::connect(addr).await.unwrap();
        let mut second = TcpStream::connect(addr).await.unwrap();
        for client in [&mut first, &mut second] {
            client.write_all(b"a").await.unwrap();
            let mut echoed = [0];
            client.read_exact(&mut echoed).await.unwrap();
        }
        assert_eq!(limit.available_permits(), 0);

        let mut third = TcpStream::connect(addr).await.unwrap();
        let mut buf = [0];
        assert_eq!(third.read(&mut buf).await.unwrap(), 0, "closed at once");

        first.write_all(b"b").await.unwrap();
        first.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"b", "the connections already open are served");

        drop(second);
        let mut fourth = loop {
            // The second's permit comes back once its task has seen the close.
            let mut candidate = TcpStream::connect(addr).await.unwrap();
            candidate.write_all(b"c").await.unwrap();
            if candidate.read(&mut buf).await.unwrap_or(0) == 1 {
                break candidate;
            }
            tokio::task::yield_now().await;
        };
        fourth.write_all(b"d").await.unwrap();
        fourth.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"d");
        signal.fire();
        server.await.unwrap();
    }
}
