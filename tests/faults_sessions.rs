//! Saved subscriptions under a race (issue 14): 200 `clean_session=0` modules connect and
//! subscribe to their inputs at once, each exactly once (like the Python SDK, decision D9: it
//! never subscribes again); the real hub binary is restarted with SIGTERM right away, then with
//! SIGKILL once the saves settled; the modules reconnect without subscribing, and a message
//! routed to each of them arrives after every restart.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use rumqttc::{AsyncClient, Event, Packet, QoS};
use serde_json::{Value, json};
use tokio::sync::mpsc;

mod common;
use common::hubproc::HubProcess;
use common::wait_until;

/// How many receiving modules.
const MODULES: usize = 200;
/// How long a phase (connecting, subscribing, delivering) may take on a loaded 2-core machine.
const PHASE: Duration = Duration::from_secs(90);

fn module_name(i: usize) -> String {
    format!("m{i:03}")
}

/// What a module's task reports to the test.
#[derive(Debug)]
enum Report {
    /// CONNACK received.
    Connected(usize),
    /// SUBACK received.
    Subscribed(usize),
    /// A message arrived, with its payload.
    Received(usize, Vec<u8>),
}

/// Drives module `index`'s connection for the whole test: subscribes once (queued before the
/// first connection), and after a lost connection reconnects without subscribing again.
async fn run_module(
    index: usize,
    subscribe: Option<String>,
    client: AsyncClient,
    mut eventloop: rumqttc::EventLoop,
    reports: mpsc::Sender<Report>,
) {
    if let Some(filter) = subscribe {
        client.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
    }
    loop {
        let report = match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => Some(Report::Connected(index)),
            Ok(Event::Incoming(Packet::SubAck(_))) => Some(Report::Subscribed(index)),
            Ok(Event::Incoming(Packet::Publish(p))) => {
                Some(Report::Received(index, p.payload.to_vec()))
            }
            Ok(_) => None,
            // The hub is down or restarting: rumqttc reconnects at the next poll.
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                None
            }
        };
        if let Some(report) = report
            && reports.send(report).await.is_err()
        {
            return;
        }
    }
}

struct Modules {
    reports: mpsc::Receiver<Report>,
    /// The sender's client (index [`MODULES`]).
    sender: AsyncClient,
    /// Kept alive: a module whose last client handle is dropped stops its event loop.
    _clients: Vec<AsyncClient>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Modules {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Modules {
    /// Waits until `pick` has named every module in `want`; panics with the missing ones and
    /// the end of the hub's log after [`PHASE`].
    async fn until(
        &mut self,
        hub: &HubProcess,
        what: &str,
        want: &BTreeSet<usize>,
        mut pick: impl FnMut(&Report) -> Option<usize>,
    ) {
        let mut seen = BTreeSet::new();
        let deadline = tokio::time::Instant::now() + PHASE;
        while !want.is_subset(&seen) {
            match tokio::time::timeout_at(deadline, self.reports.recv()).await {
                Ok(Some(report)) => {
                    if let Some(i) = pick(&report) {
                        seen.insert(i);
                    }
                }
                Ok(None) => panic!("the module tasks stopped"),
                Err(_) => {
                    let missing: Vec<_> = want.difference(&seen).take(10).collect();
                    let log = hub.log();
                    let tail = &log[log.len().saturating_sub(3000)..];
                    panic!(
                        "{what}: {} of {} within {PHASE:?}; missing e.g. {missing:?}\n\
                         hub log tail:\n{tail}",
                        seen.intersection(want).count(),
                        want.len()
                    );
                }
            }
        }
    }

    /// Publishes one message to each module's input (through route `r<i>`) and waits until
    /// every module received its own.
    async fn deliver_round(&mut self, hub: &HubProcess, round: u32) {
        for i in 0..MODULES {
            self.sender
                .publish(
                    format!("devices/edge/modules/sender/messages/events/%24.on=o{i}"),
                    QoS::AtLeastOnce,
                    false,
                    payload(round, i),
                )
                .await
                .unwrap();
        }
        let all = (0..MODULES).collect();
        self.until(
            hub,
            &format!("round {round} delivered"),
            &all,
            |r| match r {
                Report::Received(i, p) if *p == payload(round, *i) => Some(*i),
                _ => None,
            },
        )
        .await;
    }

    /// Waits until every module and the sender connected (again).
    async fn all_connected(&mut self, hub: &HubProcess, what: &str) {
        let all = (0..=MODULES).collect();
        self.until(hub, what, &all, |r| match r {
            Report::Connected(i) => Some(*i),
            _ => None,
        })
        .await;
    }
}

fn payload(round: u32, module: usize) -> Vec<u8> {
    format!("round {round} to {}", module_name(module)).into_bytes()
}

/// The saved subscriptions of every module, once the sessions file holds them all.
fn sessions_saved(hub: &HubProcess) -> bool {
    let path = hub.dir.path().join("data/sessions.json");
    let Ok(text) = std::fs::read(&path) else {
        return false;
    };
    let Ok(saved) = serde_json::from_slice::<BTreeMap<String, BTreeMap<String, u8>>>(&text) else {
        return false;
    };
    (0..MODULES).all(|i| {
        let m = module_name(i);
        saved
            .get(&format!("edge/{m}"))
            .is_some_and(|f| f.contains_key(&format!("devices/edge/modules/{m}/inputs/#")))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_persistent_sessions_survive_sigterm_and_sigkill() {
    let routes: serde_json::Map<String, Value> = (0..MODULES)
        .map(|i| {
            (
                format!("r{i}"),
                json!(format!(
                    "FROM /messages/modules/sender/outputs/o{i} INTO BrokeredEndpoint(\"/modules/{}/inputs/in1\")",
                    module_name(i)
                )),
            )
        })
        .collect();
    let names: Vec<String> = (0..MODULES)
        .map(module_name)
        .chain(["sender".to_owned()])
        .collect();
    let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut hub = HubProcess::start_with(&Value::Object(routes), &name_refs);

    // Every module connects and subscribes at once; the sender too (it never subscribes).
    let (report, reports) = mpsc::channel(4 * MODULES);
    let mut clients = Vec::new();
    let mut tasks = Vec::new();
    let mut sender = None;
    for (i, name) in names.iter().enumerate() {
        let options = hub.module("edge", name);
        let (client, eventloop) = AsyncClient::new(options, 2 * MODULES);
        let subscribe = (i < MODULES).then(|| format!("devices/edge/modules/{name}/inputs/#"));
        if i == MODULES {
            sender = Some(client.clone());
        }
        clients.push(client.clone());
        tasks.push((i, subscribe, client, eventloop));
    }
    let tasks = tasks
        .into_iter()
        .map(|(i, subscribe, client, eventloop)| {
            tokio::spawn(run_module(i, subscribe, client, eventloop, report.clone()))
        })
        .collect();
    drop(report);
    let mut modules = Modules {
        reports,
        sender: sender.unwrap(),
        _clients: clients,
        tasks,
    };
    let receivers: BTreeSet<usize> = (0..MODULES).collect();
    modules
        .until(&hub, "subscribed", &receivers, |r| match r {
            Report::Subscribed(i) => Some(*i),
            _ => None,
        })
        .await;
    modules.deliver_round(&hub, 0).await;

    // SIGTERM at once, whatever saves are pending; the modules reconnect and never subscribe.
    hub.terminate();
    hub.spawn();
    modules
        .all_connected(&hub, "reconnected after SIGTERM")
        .await;
    modules.deliver_round(&hub, 1).await;

    // SIGKILL once the sessions file holds every subscription.
    wait_until(
        PHASE,
        "the sessions file holds all 200 subscriptions",
        || sessions_saved(&hub),
    );
    hub.kill();
    hub.spawn();
    modules
        .all_connected(&hub, "reconnected after SIGKILL")
        .await;
    modules.deliver_round(&hub, 2).await;

    let unreadable = std::fs::read_dir(hub.dir.path().join("data"))
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().contains("unreadable"))
        .count();
    assert_eq!(unreadable, 0, "no sessions file was set aside");
    drop(modules);
    hub.terminate();
}
