//! A module pair of the soak: a publisher module sending QoS 1 messages at a steady rate to
//! its output, routed to its subscriber module's input; both reconnect whatever happens to the
//! hub, like modules do, and every message is accounted for: published, acknowledged,
//! delivered, duplicated.
//!
//! The publisher keeps its unacknowledged messages (at most a window) and sends them again on
//! every new connection, as the SDKs do; the subscriber subscribes once (`clean_session=0`, as
//! the Python SDK: decision D9) and counts a reconnection whose session is gone.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::{BufMut as _, Bytes, BytesMut};
use rumqttc::mqttbytes::QoS;
use rumqttc::mqttbytes::v4::{Packet, PubAck, Subscribe};
use tokio::sync::watch;

use super::wire::{self, Credentials, Reader, Writer};

/// Every soak payload starts with these bytes.
const MAGIC: &[u8; 4] = b"SOAK";
/// The header: magic, pair index (u32), sequence number (u64).
const HEADER: usize = 16;
/// How long a client waits before it tries to connect again.
const RETRY: Duration = Duration::from_millis(200);
/// How long a restarted module stays away.
const RESTART_PAUSE: Duration = Duration::from_secs(1);
/// How often an idle subscriber pings.
const PING: Duration = Duration::from_secs(20);
/// How often the publisher's rate is topped up.
const TICK: Duration = Duration::from_millis(10);

/// Sequence numbers seen, as a growable bit set.
#[derive(Debug, Default, Clone)]
pub struct SeqBits {
    words: Vec<u64>,
    count: u64,
}

impl SeqBits {
    /// Adds `seq`; whether it was new.
    pub fn insert(&mut self, seq: u64) -> bool {
        let (word, bit) = (usize::try_from(seq / 64).unwrap_or(usize::MAX), seq % 64);
        if word >= self.words.len() {
            self.words.resize(word + 1, 0);
        }
        let new = self.words[word] & (1 << bit) == 0;
        self.words[word] |= 1 << bit;
        self.count += u64::from(new);
        new
    }

    /// Whether `seq` was added.
    #[must_use]
    pub fn contains(&self, seq: u64) -> bool {
        usize::try_from(seq / 64)
            .ok()
            .and_then(|w| self.words.get(w))
            .is_some_and(|w| w & (1 << (seq % 64)) != 0)
    }

    /// How many were added.
    #[must_use]
    pub fn len(&self) -> u64 {
        self.count
    }

    /// Whether none was added.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The members, in order.
    pub fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.words.iter().enumerate().flat_map(|(w, bits)| {
            (0..64u64)
                .filter(move |b| bits & (1 << b) != 0)
                .map(move |b| w as u64 * 64 + b)
        })
    }
}

/// What happened to one pair's messages.
#[derive(Debug, Default)]
pub struct PairStats {
    /// Messages sent at least once.
    pub published: AtomicU64,
    /// PUBLISH packets written, resends included.
    pub sent: AtomicU64,
    /// Messages the hub acknowledged.
    pub acked: Mutex<SeqBits>,
    /// Messages the subscriber received.
    pub delivered: Mutex<SeqBits>,
    /// Deliveries of a message received before.
    pub duplicates: AtomicU64,
    /// Deliveries that are not this pair's messages.
    pub foreign: AtomicU64,
    /// Connections the publisher opened.
    pub publisher_connections: AtomicU64,
    /// Connections the subscriber opened.
    pub subscriber_connections: AtomicU64,
    /// Reconnections of the subscriber whose session (subscription) the hub had lost.
    pub sessions_lost: AtomicU64,
    /// When every `ACK_TIME_EVERY`th message was acknowledged (index `seq / ACK_TIME_EVERY`):
    /// places a lost message in time, next to the faults.
    pub ack_times: Mutex<Vec<Option<Instant>>>,
}

/// One acknowledgement time is kept per this many messages.
pub const ACK_TIME_EVERY: u64 = 64;

impl PairStats {
    /// Messages acknowledged so far.
    pub fn acked_count(&self) -> u64 {
        self.acked
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Messages delivered so far (once each).
    pub fn delivered_count(&self) -> u64 {
        self.delivered
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Acknowledged messages not delivered (yet).
    pub fn missing(&self) -> u64 {
        let acked = self.acked.lock().unwrap_or_else(PoisonError::into_inner);
        let delivered = self
            .delivered
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        acked.iter().filter(|s| !delivered.contains(*s)).count() as u64
    }

    /// The first `limit` acknowledged messages not delivered (yet), with about when they
    /// were acknowledged (the acknowledgement of the nearest kept message at or before them).
    pub fn missing_seqs(&self, limit: usize) -> Vec<(u64, Option<Instant>)> {
        let acked = self.acked.lock().unwrap_or_else(PoisonError::into_inner);
        let delivered = self
            .delivered
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let times = self
            .ack_times
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        acked
            .iter()
            .filter(|s| !delivered.contains(*s))
            .take(limit)
            .map(|seq| {
                let slot = usize::try_from(seq / ACK_TIME_EVERY).unwrap_or(usize::MAX);
                (seq, times.get(slot).copied().flatten())
            })
            .collect()
    }

    fn record_ack(&self, seq: u64) {
        self.acked
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(seq);
        if seq.is_multiple_of(ACK_TIME_EVERY) {
            let slot = usize::try_from(seq / ACK_TIME_EVERY).unwrap_or(usize::MAX);
            let mut times = self
                .ack_times
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if slot >= times.len() {
                times.resize(slot + 1, None);
            }
            times[slot].get_or_insert_with(Instant::now);
        }
    }

    /// Delivered messages the hub never acknowledged (sent, then refused or cut off).
    pub fn delivered_unacked(&self) -> u64 {
        let acked = self.acked.lock().unwrap_or_else(PoisonError::into_inner);
        let delivered = self
            .delivered
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        delivered.iter().filter(|s| !acked.contains(*s)).count() as u64
    }
}

/// How a pair's clients are told what to do.
#[derive(Debug, Clone)]
pub struct Control {
    /// Set when publishers stop sending new messages (they still resend the unacknowledged).
    pub stop_publishing: watch::Receiver<bool>,
    /// Set when every client disconnects for good.
    pub stop: watch::Receiver<bool>,
    /// Bumped to restart this pair's modules (both drop their connections and come back).
    pub restart: watch::Receiver<u64>,
}

/// One pair's plan.
#[derive(Debug, Clone)]
pub struct PairPlan {
    /// The pair's index (in every payload).
    pub index: u32,
    /// The hub's MQTT address.
    pub addr: SocketAddr,
    /// The edge device.
    pub device: String,
    /// The publisher module's id and credentials.
    pub publisher: (String, Credentials),
    /// The subscriber module's id and credentials.
    pub subscriber: (String, Credentials),
    /// Messages per second; `None`: as fast as the window allows.
    pub rate: Option<f64>,
    /// Most unacknowledged messages.
    pub window: usize,
    /// Payload size in bytes (at least the header's 16).
    pub payload_bytes: usize,
}

fn payload(pair: u32, seq: u64, size: usize) -> Bytes {
    let mut buffer = BytesMut::with_capacity(size.max(HEADER));
    buffer.put_slice(MAGIC);
    buffer.put_u32(pair);
    buffer.put_u64(seq);
    buffer.resize(size.max(HEADER), b'.');
    buffer.freeze()
}

fn parse(payload: &[u8]) -> Option<(u32, u64)> {
    if payload.len() < HEADER || &payload[..4] != MAGIC {
        return None;
    }
    let pair = u32::from_be_bytes(payload[4..8].try_into().ok()?);
    let seq = u64::from_be_bytes(payload[8..16].try_into().ok()?);
    Some((pair, seq))
}

/// How a connection ended.
enum Ended {
    /// Lost (the hub went away, refused a message, ...): reconnect.
    Lost,
    /// The module restarts: stay away a moment, then reconnect.
    Restart,
    /// Done for good.
    Done,
}

/// Runs the publisher until it is stopped, or told to stop publishing and every message it
/// sent is acknowledged.
pub async fn publisher(plan: PairPlan, stats: Arc<PairStats>, mut control: Control) {
    let topic = format!(
        "devices/{}/modules/{}/messages/events/%24.on=out",
        plan.device, plan.publisher.0
    );
    let mut unacked: BTreeSet<u64> = BTreeSet::new();
    let mut next_seq = 0u64;
    loop {
        if *control.stop.borrow() || (*control.stop_publishing.borrow() && unacked.is_empty()) {
            return;
        }
        let Ok((reader, writer, _)) = wire::connect(plan.addr, &plan.publisher.1, false).await
        else {
            tokio::time::sleep(RETRY).await;
            continue;
        };
        stats.publisher_connections.fetch_add(1, Ordering::Relaxed);
        let mut session = Publishing {
            plan: &plan,
            topic: &topic,
            stats: &stats,
            unacked: &mut unacked,
            next_seq: &mut next_seq,
            in_flight: HashMap::new(),
            next_pkid: 0,
        };
        match session.run(reader, writer, &mut control).await {
            Ended::Done => return,
            Ended::Restart => tokio::time::sleep(RESTART_PAUSE).await,
            Ended::Lost => tokio::time::sleep(RETRY).await,
        }
    }
}

struct Publishing<'a> {
    plan: &'a PairPlan,
    topic: &'a str,
    stats: &'a PairStats,
    unacked: &'a mut BTreeSet<u64>,
    next_seq: &'a mut u64,
    in_flight: HashMap<u16, u64>,
    next_pkid: u16,
}

impl Publishing<'_> {
    fn send(&mut self, writer: &mut Writer, seq: u64) {
        loop {
            self.next_pkid = self.next_pkid.wrapping_add(1).max(1);
            if !self.in_flight.contains_key(&self.next_pkid) {
                break;
            }
        }
        self.in_flight.insert(self.next_pkid, seq);
        writer.publish(
            self.topic,
            self.next_pkid,
            payload(self.plan.index, seq, self.plan.payload_bytes),
        );
        self.stats.sent.fetch_add(1, Ordering::Relaxed);
    }

    async fn run(
        &mut self,
        mut reader: Reader,
        mut writer: Writer,
        control: &mut Control,
    ) -> Ended {
        // What the previous connections left unacknowledged goes first, in order.
        let pending: Vec<u64> = self.unacked.iter().copied().collect();
        for seq in pending {
            self.send(&mut writer, seq);
        }
        if writer.flush().await.is_err() {
            return Ended::Lost;
        }
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut tokens = 0.0f64;
        let mut last = Instant::now();
        loop {
            tokio::select! {
                packet = reader.next() => match packet {
                    Ok(Packet::PubAck(ack)) => {
                        if let Some(seq) = self.in_flight.remove(&ack.pkid) {
                            self.unacked.remove(&seq);
                            self.stats.record_ack(seq);
                        }
                    }
                    Ok(_) => {}
                    Err(_) => return Ended::Lost,
                },
                _ = tick.tick() => {
                    let stopping = *control.stop_publishing.borrow();
                    if stopping && self.unacked.is_empty() {
                        writer.queue(&Packet::Disconnect);
                        let _ = writer.flush().await;
                        return Ended::Done;
                    }
                    let now = Instant::now();
                    let room = self.plan.window.saturating_sub(self.unacked.len());
                    let allowed = match self.plan.rate {
                        Some(rate) => {
                            tokens = (tokens + rate * (now - last).as_secs_f64())
                                .min(rate.mul_add(0.1, 1.0));
                            tokens as usize
                        }
                        None => room,
                    };
                    last = now;
                    let count = if stopping { 0 } else { allowed.min(room) };
                    for _ in 0..count {
                        let seq = *self.next_seq;
                        *self.next_seq += 1;
                        self.unacked.insert(seq);
                        self.stats.published.fetch_add(1, Ordering::Relaxed);
                        self.send(&mut writer, seq);
                    }
                    #[allow(clippy::cast_precision_loss)]
                    if self.plan.rate.is_some() {
                        tokens -= count as f64;
                    }
                    if writer.flush().await.is_err() {
                        return Ended::Lost;
                    }
                }
                _ = control.restart.changed() => return Ended::Restart,
                _ = control.stop.changed() => return Ended::Done,
            }
        }
    }
}

/// Runs the subscriber until it is stopped.
pub async fn subscriber(plan: PairPlan, stats: Arc<PairStats>, mut control: Control) {
    let filter = format!(
        "devices/{}/modules/{}/inputs/#",
        plan.device, plan.subscriber.0
    );
    let mut subscribed = false;
    loop {
        if *control.stop.borrow() {
            return;
        }
        let Ok((mut reader, mut writer, session_present)) =
            wire::connect(plan.addr, &plan.subscriber.1, false).await
        else {
            tokio::time::sleep(RETRY).await;
            continue;
        };
        stats.subscriber_connections.fetch_add(1, Ordering::Relaxed);
        if subscribed && !session_present {
            stats.sessions_lost.fetch_add(1, Ordering::Relaxed);
            subscribed = false;
        }
        if !subscribed {
            let mut subscribe = Subscribe::new(filter.clone(), QoS::AtLeastOnce);
            subscribe.pkid = 1;
            writer.queue(&Packet::Subscribe(subscribe));
            subscribed = true;
        }
        let ended = receive(&plan, &stats, &mut control, &mut reader, &mut writer).await;
        match ended {
            Ended::Done => {
                writer.queue(&Packet::Disconnect);
                let _ = writer.flush().await;
                return;
            }
            Ended::Restart => tokio::time::sleep(RESTART_PAUSE).await,
            Ended::Lost => tokio::time::sleep(RETRY).await,
        }
    }
}

async fn receive(
    plan: &PairPlan,
    stats: &PairStats,
    control: &mut Control,
    reader: &mut Reader,
    writer: &mut Writer,
) -> Ended {
    if writer.flush().await.is_err() {
        return Ended::Lost;
    }
    let mut ping = tokio::time::interval(PING);
    ping.tick().await;
    loop {
        tokio::select! {
            packet = reader.next() => match packet {
                Ok(Packet::Publish(publish)) => {
                    match parse(&publish.payload) {
                        Some((pair, seq)) if pair == plan.index => {
                            let new = stats
                                .delivered
                                .lock()
                                .unwrap_or_else(PoisonError::into_inner)
                                .insert(seq);
                            if !new {
                                stats.duplicates.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        _ => {
                            stats.foreign.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    if publish.qos == QoS::AtLeastOnce {
                        writer.queue(&Packet::PubAck(PubAck::new(publish.pkid)));
                        if writer.flush().await.is_err() {
                            return Ended::Lost;
                        }
                    }
                }
                Ok(_) => {}
                Err(_) => return Ended::Lost,
            },
            _ = ping.tick() => {
                writer.queue(&Packet::PingReq);
                if writer.flush().await.is_err() {
                    return Ended::Lost;
                }
            }
            _ = control.restart.changed() => return Ended::Restart,
            _ = control.stop.changed() => return Ended::Done,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_carry_their_pair_and_sequence() {
        let p = payload(7, 123_456, 256);
        assert_eq!(p.len(), 256);
        assert_eq!(parse(&p), Some((7, 123_456)));
        assert_eq!(parse(b"other"), None);
    }

    #[test]
    fn the_bit_set_counts_and_lists_its_members() {
        let mut bits = SeqBits::default();
        assert!(bits.insert(3));
        assert!(bits.insert(200));
        assert!(!bits.insert(3));
        assert_eq!(bits.len(), 2);
        assert_eq!(bits.iter().collect::<Vec<_>>(), [3, 200]);
        assert!(bits.contains(200) && !bits.contains(199) && !bits.contains(10_000));
    }
}
