//! The `process` runtime: each module is a native process, for devices without Docker.
//!
//! A module names its executable in `settings.path` and its arguments in `settings.args`
//! (extensions of `settings` that the reference agent ignores, so the same manifest stays
//! valid for it). A module without `settings.path` whose image is `edgehub:local` (or any
//! image the agent was told to map, see [`ProcessRuntime::map_image`]) runs that executable
//! instead. The environment is the agent's own plus the module's (`createOptions.Env`,
//! `KEY=value` strings, wins last as in Docker). Output goes to `<log_dir>/<module>.log`.
//! `stop` sends SIGTERM, then SIGKILL after the grace period.

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt as _;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rustix::process::{Pid, Signal, kill_process};
use time::OffsetDateTime;
use tokio::sync::watch;

use super::{CreateRequest, ModuleState, RawStatus, Runtime, RuntimeError};
use crate::manifest::RegistryCredential;

#[derive(Debug)]
struct Entry {
    request: CreateRequest,
    program: PathBuf,
    args: Vec<String>,
    state: ModuleState,
    pid: Option<u32>,
    exited: Option<watch::Receiver<bool>>,
}

#[derive(Debug, Default)]
struct Inner {
    modules: BTreeMap<String, Entry>,
}

/// Runs modules as child processes of the agent.
#[derive(Debug, Clone)]
pub struct ProcessRuntime {
    inner: Arc<Mutex<Inner>>,
    log_dir: PathBuf,
    images: Arc<BTreeMap<String, (PathBuf, Vec<String>)>>,
    grace: Duration,
}

impl ProcessRuntime {
    /// A runtime writing module output to `log_dir`.
    #[must_use]
    pub fn new(log_dir: PathBuf) -> Self {
        Self {
            inner: Arc::default(),
            log_dir,
            images: Arc::default(),
            grace: Duration::from_secs(10),
        }
    }

    /// Runs `program` with `args` (unless the module gives `settings.args`) for modules of
    /// image `image` that name no `settings.path` (the hub: `edgehub:local`).
    #[must_use]
    pub fn map_image(mut self, image: &str, program: PathBuf, args: Vec<String>) -> Self {
        let image = crate::manifest::normalise_image(image).unwrap_or_else(|_| image.to_owned());
        Arc::make_mut(&mut self.images).insert(image, (program, args));
        self
    }

    /// How long `stop` waits after SIGTERM before SIGKILL (default 10 s).
    #[must_use]
    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn program_of(&self, request: &CreateRequest) -> Result<(PathBuf, Vec<String>), RuntimeError> {
        let settings = &request.spec.settings;
        if let Some(path) = &settings.path {
            return Ok((PathBuf::from(path), settings.args.clone()));
        }
        let mapped = self
            .images
            .get(&settings.image)
            .cloned()
            .map(|(program, args)| {
                if settings.args.is_empty() {
                    (program, args)
                } else {
                    (program, settings.args.clone())
                }
            });
        mapped.ok_or_else(|| {
            RuntimeError(format!(
                "creating {}: the process runtime runs an executable: set settings.path (image {} is not mapped to one)",
                request.spec.name, settings.image
            ))
        })
    }
}

/// `createOptions.Env` (`["KEY=value", …]`).
fn create_options_env(request: &CreateRequest) -> Vec<(String, String)> {
    request
        .spec
        .settings
        .create_options
        .as_ref()
        .and_then(|o| o.get("Env"))
        .and_then(|e| e.as_array())
        .map(|items| {
            items
                .iter()
                .filter_map(|i| i.as_str())
                .filter_map(|i| i.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect()
        })
        .unwrap_or_default()
}

fn exit_code(status: std::process::ExitStatus) -> i64 {
    status
        .code()
        .map(i64::from)
        .or_else(|| status.signal().map(|s| 128 + i64::from(s)))
        .unwrap_or(-1)
}

impl Runtime for ProcessRuntime {
    fn kind(&self) -> &'static str {
        "process"
    }

    async fn list(&self) -> Result<Vec<ModuleState>, RuntimeError> {
        Ok(self
            .lock()
            .modules
            .values()
            .map(|e| e.state.clone())
            .collect())
    }

    async fn pull(&self, _: &str, _: Option<&RegistryCredential>) -> Result<(), RuntimeError> {
        Ok(())
    }

    async fn create(&self, request: &CreateRequest) -> Result<(), RuntimeError> {
        let name = request.spec.name.clone();
        let (program, args) = self.program_of(request)?;
        if !program.is_file() {
            return Err(RuntimeError(format!(
                "creating {name}: {} is not a file",
                program.display()
            )));
        }
        let mut inner = self.lock();
        if inner.modules.contains_key(&name) {
            return Err(RuntimeError(format!("creating {name}: the name is in use")));
        }
        let state = ModuleState {
            name: name.clone(),
            id: String::new(),
            raw: RawStatus::Stopped,
            description: "created".into(),
            exit_code: 0,
            started_at: None,
            exited_at: None,
            image: request.spec.settings.image.clone(),
            image_hash: String::new(),
        };
        inner.modules.insert(
            name,
            Entry {
                request: request.clone(),
                program,
                args,
                state,
                pid: None,
                exited: None,
            },
        );
        Ok(())
    }

    async fn start(&self, name: &str) -> Result<(), RuntimeError> {
        let (program, args, request) = {
            let inner = self.lock();
            let entry = inner
                .modules
                .get(name)
                .ok_or_else(|| RuntimeError(format!("starting {name}: no such module")))?;
            if entry.state.raw == RawStatus::Running {
                return Ok(());
            }
            (
                entry.program.clone(),
                entry.args.clone(),
                entry.request.clone(),
            )
        };
        std::fs::create_dir_all(&self.log_dir).map_err(|e| {
            RuntimeError(format!("starting {name}: {}: {e}", self.log_dir.display()))
        })?;
        let log_path = self.log_dir.join(format!("{name}.log"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| RuntimeError(format!("starting {name}: {}: {e}", log_path.display())))?;
        let log2 = log
            .try_clone()
            .map_err(|e| RuntimeError(format!("starting {name}: {e}")))?;
        let mut command = tokio::process::Command::new(&program);
        command
            .args(&args)
            .envs(request.env.iter().map(|(k, v)| (k, v)))
            .envs(create_options_env(&request))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .process_group(0);
        let mut child = command
            .spawn()
            .map_err(|e| RuntimeError(format!("starting {name}: {}: {e}", program.display())))?;
        let pid = child.id();
        let (exited_tx, exited_rx) = watch::channel(false);
        {
            let mut inner = self.lock();
            let Some(entry) = inner.modules.get_mut(name) else {
                let _ = child.start_kill();
                return Err(RuntimeError(format!("starting {name}: removed meanwhile")));
            };
            entry.pid = pid;
            entry.exited = Some(exited_rx);
            entry.state.raw = RawStatus::Running;
            entry.state.description = "running".into();
            entry.state.started_at = Some(OffsetDateTime::now_utc());
            entry.state.id = pid.map(|p| p.to_string()).unwrap_or_default();
        }
        let inner = Arc::clone(&self.inner);
        let module = name.to_owned();
        tokio::spawn(async move {
            let status = child.wait().await;
            let code = status.map_or(-1, exit_code);
            let mut inner = inner
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(entry) = inner.modules.get_mut(&module)
                && entry.pid == pid
            {
                entry.pid = None;
                entry.state.raw = if code == 0 {
                    RawStatus::Stopped
                } else {
                    RawStatus::Failed
                };
                entry.state.exit_code = code;
                entry.state.exited_at = Some(OffsetDateTime::now_utc());
                entry.state.description = format!("exited ({code})");
                tracing::info!(module = %module, exit_code = code, "module exited");
            }
            let _ = exited_tx.send(true);
        });
        Ok(())
    }

    async fn stop(&self, name: &str) -> Result<(), RuntimeError> {
        let (pid, exited) = {
            let inner = self.lock();
            let entry = inner
                .modules
                .get(name)
                .ok_or_else(|| RuntimeError(format!("stopping {name}: no such module")))?;
            (entry.pid, entry.exited.clone())
        };
        let (Some(pid), Some(mut exited)) = (pid, exited) else {
            return Ok(());
        };
        let Some(target) = i32::try_from(pid).ok().and_then(Pid::from_raw) else {
            return Ok(());
        };
        let _ = kill_process(target, Signal::TERM);
        let gone = tokio::time::timeout(self.grace, exited.wait_for(|e| *e))
            .await
            .is_ok();
        if !gone {
            tracing::warn!(module = %name, "did not stop after SIGTERM: killing it");
            let _ = kill_process(target, Signal::KILL);
            let _ = exited.wait_for(|e| *e).await.is_ok();
        }
        Ok(())
    }

    async fn remove(&self, name: &str) -> Result<(), RuntimeError> {
        self.stop(name).await?;
        self.lock().modules.remove(name);
        Ok(())
    }
}
