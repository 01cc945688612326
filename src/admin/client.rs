//! The command line's side of the admin endpoint.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http_body_util::{BodyExt as _, Full, Limited};
use hyper::Request;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde_json::Value;

use super::socket::socket_path;

/// The command line's side of the admin endpoint: one request per connection, blocking.
#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
}

/// A response of the admin endpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    /// The HTTP status.
    pub status: u16,
    /// The JSON body (`null` when empty).
    pub body: Value,
}

impl Reply {
    /// The error message of a refused request (`message` of the body).
    #[must_use]
    pub fn message(&self) -> String {
        match self.body.get("message").and_then(Value::as_str) {
            Some(message) => message.to_owned(),
            None => format!("the hub answered {}: {}", self.status, self.body),
        }
    }
}

/// Why a request did not get an answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing listens on the socket.
    #[error("no hub runs on this data folder: cannot connect to {}", socket.display())]
    NotRunning {
        /// The socket.
        socket: PathBuf,
        /// Why the connection failed.
        source: io::Error,
    },
    /// The connection failed mid-request.
    #[error("talking to the hub at {}", socket.display())]
    Io {
        /// The socket.
        socket: PathBuf,
        /// The failure.
        source: io::Error,
    },
    /// The hub closed the connection without answering (it is stopping).
    #[error("the hub closed the connection without answering (is it stopping?)")]
    Closed,
    /// The answer is not HTTP with a JSON body.
    #[error("the hub's answer is malformed: {0}")]
    Malformed(String),
}

/// The largest answer read (twins are small; this only bounds a broken peer).
const MAX_REPLY: usize = 64 << 20;

impl Client {
    /// A client of the hub whose data folder is `data_dir`.
    #[must_use]
    pub fn new(data_dir: &Path) -> Self {
        Self {
            socket: socket_path(data_dir),
        }
    }

    /// Sends one request (HTTP/1.1 with hyper over the unix socket) and reads its answer,
    /// waiting at most `timeout` for it. Blocking: for the command line.
    ///
    /// # Errors
    ///
    /// When no hub listens, the connection fails, or the answer is not JSON.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        timeout: Duration,
    ) -> Result<Reply, ClientError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|source| self.io_error(source))?;
        runtime.block_on(async {
            tokio::time::timeout(timeout, self.exchange(method, path, body))
                .await
                .map_err(|_| self.io_error(io::ErrorKind::TimedOut.into()))?
        })
    }

    async fn exchange(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Reply, ClientError> {
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(|source| ClientError::NotRunning {
                socket: self.socket.clone(),
                source,
            })?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| self.io_error(io::Error::other(e)))?;
        let driver = tokio::spawn(connection);
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "localhost")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(
                body.map(Value::to_string).unwrap_or_default(),
            )))
            .map_err(|e| ClientError::Malformed(e.to_string()))?;
        let response = sender.send_request(request).await.map_err(|e| {
            if e.is_incomplete_message() || e.is_canceled() {
                ClientError::Closed
            } else {
                self.io_error(io::Error::other(e))
            }
        })?;
        let status = response.status().as_u16();
        let bytes = Limited::new(response.into_body(), MAX_REPLY)
            .collect()
            .await
            .map_err(|e| ClientError::Malformed(e.to_string()))?
            .to_bytes();
        driver.abort();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).map_err(|e| ClientError::Malformed(e.to_string()))?
        };
        Ok(Reply { status, body })
    }

    fn io_error(&self, source: io::Error) -> ClientError {
        ClientError::Io {
            socket: self.socket.clone(),
            source,
        }
    }
}
