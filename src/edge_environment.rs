//! The hub as the `edgeHub` module of an IoT Edge runtime (our `edgeagent`, or the legacy
//! security daemon, which offer the same contract): when `edgehub run` has no `--config` and
//! the runtime's variables are set, the configuration comes from the environment and the
//! server certificate and trust bundle from the workload API.
//!
//! | variable | use |
//! |---|---|
//! | `IOTEDGE_WORKLOADURI` | `unix://` path of the workload socket (its presence, with `IOTEDGE_MODULEID=$edgeHub`, turns this on) |
//! | `IOTEDGE_MODULEID` | must be `$edgeHub` |
//! | `IOTEDGE_DEVICEID` | `device_id` |
//! | `IOTEDGE_IOTHUBHOSTNAME` | `iothub_hostname` |
//! | `EdgeDeviceHostName` | `gateway_hostname`, and the server certificate's name |
//! | `IOTEDGE_MODULEGENERATIONID`, `IOTEDGE_APIVERSION` | workload API path and version |
//! | `EDGEHUB_DATA_DIR` | `data_dir` (default `/var/lib/edgehub`) |
//! | `EDGEHUB_MANIFEST` | the deployment manifest file (default `<data_dir>/deployment.json`) |
//!
//! The certificate chain and key are written to `<data_dir>/certs/workload-server.pem` and
//! `workload-server.key.pem` (mode 0600), the trust bundle to `<data_dir>/certs/trust-bundle.pem`;
//! everything else is the embedded default's.

use std::io::{Read as _, Write as _};
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};

use crate::config::{Config, ManifestSource, TlsConfig};

/// The workload API version used when the runtime names none.
const DEFAULT_API_VERSION: &str = "2019-01-30";

/// Why the configuration could not be made from the environment.
#[derive(Debug, thiserror::Error)]
pub enum EdgeEnvironmentError {
    /// A variable is missing or unusable.
    #[error("{0}")]
    Variable(String),
    /// The workload API failed.
    #[error("workload API {uri}: {message}")]
    Workload {
        /// The socket.
        uri: String,
        /// What went wrong.
        message: String,
    },
    /// Writing the certificates.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// The configuration from the environment when the hub runs as `$edgeHub` under an IoT Edge
/// runtime; `None` otherwise.
#[must_use]
pub fn config_from_environment() -> Option<Result<Config, EdgeEnvironmentError>> {
    config_from(&|name| std::env::var(name).ok())
}

/// [`config_from_environment`] reading variables through `var`.
pub fn config_from(
    var: &dyn Fn(&str) -> Option<String>,
) -> Option<Result<Config, EdgeEnvironmentError>> {
    let uri = var("IOTEDGE_WORKLOADURI")?;
    if var("IOTEDGE_MODULEID").as_deref() != Some("$edgeHub") {
        return None;
    }
    Some(build(var, &uri))
}

fn build(var: &dyn Fn(&str) -> Option<String>, uri: &str) -> Result<Config, EdgeEnvironmentError> {
    let required = |name: &str| {
        var(name)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| EdgeEnvironmentError::Variable(format!("{name} is not set")))
    };
    let socket = uri
        .strip_prefix("unix://")
        .map(PathBuf::from)
        .ok_or_else(|| {
            EdgeEnvironmentError::Variable(format!("IOTEDGE_WORKLOADURI {uri:?} is not unix://"))
        })?;
    let gateway = required("EdgeDeviceHostName")?;
    let generation = var("IOTEDGE_MODULEGENERATIONID").unwrap_or_default();
    let version = var("IOTEDGE_APIVERSION").unwrap_or_else(|| DEFAULT_API_VERSION.to_owned());
    let data_dir =
        PathBuf::from(var("EDGEHUB_DATA_DIR").unwrap_or_else(|| "/var/lib/edgehub".to_owned()));
    let mut config = Config::embedded_default(&data_dir);
    config.device_id = required("IOTEDGE_DEVICEID")?;
    config.iothub_hostname = required("IOTEDGE_IOTHUBHOSTNAME")?;
    config.gateway_hostname.clone_from(&gateway);
    config.data_dir.clone_from(&data_dir);
    config.manifest = ManifestSource::File(
        var("EDGEHUB_MANIFEST").map_or_else(|| data_dir.join("deployment.json"), PathBuf::from),
    );
    config.listen.mqtt = None;
    config.listen.metrics = None;

    let workload = |method: &str, path: &str, body: Option<&Value>| {
        request(
            &socket,
            method,
            &format!("{path}?api-version={version}"),
            body,
        )
        .map_err(|message| EdgeEnvironmentError::Workload {
            uri: uri.to_owned(),
            message,
        })
    };
    let certs = data_dir.join("certs");
    std::fs::create_dir_all(&certs).map_err(|source| EdgeEnvironmentError::Io {
        path: certs.clone(),
        source,
    })?;
    let bundle = workload("GET", "/trust-bundle", None)?;
    let bundle = bundle["certificate"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    write(&certs.join("trust-bundle.pem"), &bundle, 0o644)?;
    let path = format!("/modules/%24edgeHub/genid/{generation}/certificate/server");
    let server = workload("POST", &path, Some(&json!({ "commonName": gateway })))?;
    let (Some(chain), Some(key)) = (
        server["certificate"].as_str(),
        server["privateKey"]["bytes"].as_str(),
    ) else {
        return Err(EdgeEnvironmentError::Workload {
            uri: uri.to_owned(),
            message: "the server certificate answer has no certificate or privateKey.bytes".into(),
        });
    };
    let tls = TlsConfig {
        cert: certs.join("workload-server.pem"),
        key: certs.join("workload-server.key.pem"),
    };
    write(&tls.cert, chain, 0o644)?;
    write(&tls.key, key, 0o600)?;
    config.tls = Some(tls);
    Ok(config)
}

fn write(path: &Path, text: &str, mode: u32) -> Result<(), EdgeEnvironmentError> {
    let io = |source| EdgeEnvironmentError::Io {
        path: path.to_owned(),
        source,
    };
    std::fs::write(path, text).map_err(io)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io)
}

/// One HTTP/1.1 request on the unix socket, the answer's body as JSON (2xx only).
fn request(socket: &Path, method: &str, path: &str, body: Option<&Value>) -> Result<Value, String> {
    let mut stream =
        UnixStream::connect(socket).map_err(|e| format!("{}: {e}", socket.display()))?;
    let timeout = Some(Duration::from_secs(30));
    stream
        .set_read_timeout(timeout)
        .map_err(|e| e.to_string())?;
    stream
        .set_write_timeout(timeout)
        .map_err(|e| e.to_string())?;
    let body = body.map(Value::to_string).unwrap_or_default();
    // The request in one write: a server that answers once it has the headers may close the
    // connection before a body written separately arrives (EPIPE).
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: workload\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream
        .write_all(request.as_bytes())
        .map_err(|e| e.to_string())?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).map_err(|e| e.to_string())?;
    let split = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no HTTP answer")?;
    let head = String::from_utf8_lossy(&answer[..split]).to_string();
    let mut payload = answer[split + 4..].to_vec();
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or("no HTTP status")?;
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        payload = dechunk(&payload).ok_or("a malformed chunked body")?;
    }
    if !(200..300).contains(&status) {
        return Err(format!(
            "{method} {path}: status {status}: {}",
            String::from_utf8_lossy(&payload)
        ));
    }
    serde_json::from_slice(&payload).map_err(|e| format!("{method} {path}: not JSON: {e}"))
}

fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line = data.windows(2).position(|w| w == b"\r\n")?;
        let size = usize::from_str_radix(
            std::str::from_utf8(&data[..line])
                .ok()?
                .split(';')
                .next()?
                .trim(),
            16,
        )
        .ok()?;
        data = &data[line + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(data.get(..size)?);
        data = data.get(size + 2..)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::os::unix::net::UnixListener;

    /// A workload API on a socket answering `answers` in order, recording the request lines.
    fn workload(path: &Path, answers: Vec<String>) -> std::thread::JoinHandle<Vec<String>> {
        let listener = UnixListener::bind(path).unwrap();
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            for answer in answers {
                let (mut stream, _) = listener.accept().unwrap();
                let mut buf = [0u8; 4096];
                let n = stream.read(&mut buf).unwrap();
                seen.push(
                    String::from_utf8_lossy(&buf[..n])
                        .lines()
                        .next()
                        .unwrap_or_default()
                        .to_owned(),
                );
                stream.write_all(answer.as_bytes()).unwrap();
            }
            seen
        })
    }

    fn ok(body: &Value) -> String {
        let body = body.to_string();
        format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    }

    #[test]
    fn without_the_runtime_variables_nothing_changes() {
        assert!(config_from(&|_| None).is_none());
        let only_uri = |name: &str| (name == "IOTEDGE_WORKLOADURI").then(|| "unix:///x".to_owned());
        assert!(config_from(&only_uri).is_none(), "not $edgeHub");
    }

    #[test]
    fn the_configuration_comes_from_the_variables_and_the_workload_api() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("workload.sock");
        let chunked = {
            let body = json!({ "certificate": "CHAIN", "privateKey": { "type": "key", "bytes": "KEY" }, "expiration": "x" }).to_string();
            let (a, b) = body.split_at(10);
            format!(
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\n\r\n",
                a.len(),
                b.len()
            )
        };
        let server = workload(
            &socket,
            vec![ok(&json!({ "certificate": "BUNDLE" })), chunked],
        );
        let data = dir.path().join("data");
        let vars: HashMap<&str, String> = HashMap::from([
            (
                "IOTEDGE_WORKLOADURI",
                format!("unix://{}", socket.display()),
            ),
            ("IOTEDGE_MODULEID", "$edgeHub".to_owned()),
            ("IOTEDGE_DEVICEID", "edge".to_owned()),
            ("IOTEDGE_IOTHUBHOSTNAME", "hub.example.net".to_owned()),
            ("IOTEDGE_MODULEGENERATIONID", "g1".to_owned()),
            ("EdgeDeviceHostName", "gateway.local".to_owned()),
            ("EDGEHUB_DATA_DIR", data.display().to_string()),
        ]);
        let config = config_from(&|name| vars.get(name).cloned())
            .unwrap()
            .unwrap();
        assert_eq!(config.device_id, "edge");
        assert_eq!(config.iothub_hostname, "hub.example.net");
        assert_eq!(config.gateway_hostname, "gateway.local");
        assert_eq!(config.data_dir, data);
        assert_eq!(
            config.manifest,
            ManifestSource::File(data.join("deployment.json"))
        );
        let tls = config.tls.unwrap();
        assert_eq!(std::fs::read_to_string(&tls.cert).unwrap(), "CHAIN");
        assert_eq!(std::fs::read_to_string(&tls.key).unwrap(), "KEY");
        assert_eq!(
            std::fs::metadata(&tls.key).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            std::fs::read_to_string(data.join("certs/trust-bundle.pem")).unwrap(),
            "BUNDLE"
        );
        assert_eq!(
            server.join().unwrap(),
            [
                "GET /trust-bundle?api-version=2019-01-30 HTTP/1.1",
                "POST /modules/%24edgeHub/genid/g1/certificate/server?api-version=2019-01-30 HTTP/1.1"
            ]
        );
    }

    #[test]
    fn a_missing_variable_or_a_failing_api_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("workload.sock");
        let data = dir.path().join("d").display().to_string();
        let vars = |gateway: bool| {
            let socket = socket.clone();
            let data = data.clone();
            move |name: &str| match name {
                "IOTEDGE_WORKLOADURI" => Some(format!("unix://{}", socket.display())),
                "IOTEDGE_MODULEID" => Some("$edgeHub".to_owned()),
                "EdgeDeviceHostName" if gateway => Some("g".to_owned()),
                "IOTEDGE_DEVICEID" | "IOTEDGE_IOTHUBHOSTNAME" => Some("x".to_owned()),
                "EDGEHUB_DATA_DIR" => Some(data.clone()),
                _ => None,
            }
        };
        let e = config_from(&vars(false)).unwrap().unwrap_err();
        assert_eq!(e.to_string(), "EdgeDeviceHostName is not set");
        let server = workload(
            &socket,
            vec!["HTTP/1.1 500 Internal\r\nContent-Length: 2\r\n\r\n{}".to_owned()],
        );
        let e = config_from(&vars(true)).unwrap().unwrap_err();
        assert!(e.to_string().contains("status 500"), "{e}");
        server.join().unwrap();
    }
}
