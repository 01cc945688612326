//! The hub under soak: the real `edgehub` binary, started, stopped with SIGTERM, killed with
//! SIGKILL and started again on the same folder; killed when dropped.

use std::fs::OpenOptions;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use thiserror::Error;

/// How long the hub gets to start listening, and to exit after SIGTERM.
const PATIENCE: Duration = Duration::from_secs(60);

/// Why the hub could not be started or stopped.
#[derive(Debug, Error)]
pub enum HubError {
    /// The process could not be started.
    #[error("cannot start {}: {source}", bin.display())]
    Spawn {
        /// The binary.
        bin: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// It did not listen in time, or exited.
    #[error("the hub did not listen on {addr} within {PATIENCE:?} (see {})", log.display())]
    NotReady {
        /// Its MQTT address.
        addr: SocketAddr,
        /// Its log.
        log: PathBuf,
    },
    /// It did not exit in time after SIGTERM (then it was killed).
    #[error("the hub did not exit within {PATIENCE:?} of SIGTERM")]
    Stuck,
    /// Waiting for it failed.
    #[error("waiting for the hub: {0}")]
    Wait(#[from] std::io::Error),
}

/// A hub process on a configuration.
#[derive(Debug)]
pub struct HubProcess {
    bin: PathBuf,
    config: PathBuf,
    log: PathBuf,
    /// Its plain MQTT address.
    pub mqtt: SocketAddr,
    child: Option<Child>,
}

impl HubProcess {
    /// A hub of `bin` on `config`, listening for MQTT on `mqtt`, logging (appending) to `log`;
    /// not started yet.
    #[must_use]
    pub fn new(bin: &Path, config: &Path, log: &Path, mqtt: SocketAddr) -> Self {
        Self {
            bin: bin.to_owned(),
            config: config.to_owned(),
            log: log.to_owned(),
            mqtt,
            child: None,
        }
    }

    /// Starts it and waits until it accepts MQTT connections; how long that took.
    ///
    /// # Errors
    ///
    /// When it cannot be started or does not listen in time.
    pub fn start(&mut self) -> Result<Duration, HubError> {
        let started = Instant::now();
        let spawn_error = |source| HubError::Spawn {
            bin: self.bin.clone(),
            source,
        };
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(spawn_error)?;
        let child = Command::new(&self.bin)
            .args(["run", "--config"])
            .arg(&self.config)
            .env("RUST_LOG", "info,sled=off")
            .env("NO_COLOR", "1")
            .stdout(log.try_clone().map_err(spawn_error)?)
            .stderr(log)
            .spawn()
            .map_err(spawn_error)?;
        self.child = Some(child);
        while TcpStream::connect_timeout(&self.mqtt, Duration::from_secs(1)).is_err() {
            let exited = self
                .child
                .as_mut()
                .is_none_or(|c| matches!(c.try_wait(), Ok(Some(_))));
            if exited || started.elapsed() > PATIENCE {
                self.kill();
                return Err(HubError::NotReady {
                    addr: self.mqtt,
                    log: self.log.clone(),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(started.elapsed())
    }

    /// Its process id while it runs.
    #[must_use]
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGTERM, and waits for it to exit; how long that took.
    ///
    /// # Errors
    ///
    /// When it does not exit in time (it is killed then).
    pub fn terminate(&mut self) -> Result<Duration, HubError> {
        let Some(mut child) = self.child.take() else {
            return Ok(Duration::ZERO);
        };
        let started = Instant::now();
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        loop {
            if child.try_wait()?.is_some() {
                return Ok(started.elapsed());
            }
            if started.elapsed() > PATIENCE {
                let _ = child.kill();
                let _ = child.wait();
                return Err(HubError::Stuck);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: it dies at once, whatever it was doing.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for HubProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
