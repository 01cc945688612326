//! The local admin endpoint and the manifest watcher: how an operator manages a running hub
//! without a cloud.
//!
//! The endpoint is HTTP/1.1 on the unix socket `<data_dir>/admin.sock` (mode 0600, in a 0700
//! folder): only the local operator reaches it. Bodies are JSON, at most [`MAX_BODY`] bytes.
//!
//! | Request | Answer |
//! |---|---|
//! | `GET /twins/{clientId}` | 200, the twin (`$edgeHub`: the hub's own twin) |
//! | `PATCH /twins/{clientId}/properties/desired`, body = patch | 200 `{"$version": n}`; 400 invalid patch; 500 storage failure |
//! | `POST /deployment`, body = deployment manifest | 200 `{"lastDesiredVersion", "lastDesiredStatus"}`; 400 `{"message", "errors"}` (the running routes stay) |
//! | `POST /methods/{clientId}/{methodName}`, body = `{"payload", "responseTimeoutInSeconds", "connectTimeoutInSeconds"}` | 200 `{"status": n, "payload": ...}` |
//!
//! Client ids are `device/module` or `device`, percent-encoded in the path (`edge%2Ffilter`);
//! an unencoded `/` between device and module is accepted too. Errors are
//! `{"message": "..."}` with a 4xx status for bad input and 5xx for the hub's own failures.
//!
//! Each job has its file: [`socket`] binds `<data_dir>/admin.sock`; [`server`] answers the
//! requests; [`watcher`] polls the configuration's manifest file and deploys it when it changes;
//! [`client`] is the command line's side of the endpoint. [`Admin`] runs the first three.

pub mod client;
pub mod server;
pub mod socket;
pub mod watcher;

use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;

pub use client::{Client, ClientError, Reply};
pub use server::MAX_BODY;
pub use socket::{SOCKET_NAME, bind, socket_path};
pub use watcher::{MANIFEST_POLL, ManifestStamp, watch_manifest};

use crate::hub::Hub;
use crate::stop::StopSignal;

/// How long connections may finish their requests once the endpoint stops.
const DRAIN: Duration = Duration::from_secs(5);

/// The admin endpoint and the manifest watcher of a running hub.
#[derive(Debug)]
pub struct Admin {
    stop: StopSignal,
    tasks: JoinSet<()>,
}

impl Admin {
    /// Binds `<data_dir>/admin.sock` (see [`bind`]) and starts serving it and watching the
    /// configuration's manifest file for changes since `loaded` (taken before the hub read
    /// it). Call it within the Tokio runtime.
    ///
    /// # Errors
    ///
    /// When the socket cannot be bound.
    pub fn start(
        hub: &Arc<Hub>,
        config: &crate::config::Config,
        loaded: ManifestStamp,
    ) -> io::Result<Self> {
        let socket = socket_path(&config.data_dir);
        let listener = bind(&socket)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", socket.display())))?;
        tracing::info!(socket = %socket.display(), "admin endpoint ready");
        let stop = StopSignal::new();
        let mut tasks = JoinSet::new();
        let server_hub = Arc::clone(hub);
        let serving = crate::listener::serve(
            "admin",
            listener,
            None,
            stop.subscribe(),
            DRAIN,
            move |stream, _peer, stop| {
                server::serve_connection(stream, Arc::clone(&server_hub), stop)
            },
        );
        tasks.spawn(async move {
            serving.await;
            // Requests in progress have finished: nobody is left to answer on the socket.
            let _ = std::fs::remove_file(&socket);
        });
        tasks.spawn(watch_manifest(
            Arc::clone(hub),
            config.clone(),
            loaded,
            MANIFEST_POLL,
            stop.subscribe(),
        ));
        Ok(Self { stop, tasks })
    }

    /// Stops the endpoint (requests in progress get a few seconds) and the watcher; once it
    /// returns, neither holds the hub any more.
    pub async fn stop(mut self) {
        self.stop.fire();
        while self.tasks.join_next().await.is_some() {}
    }
}
