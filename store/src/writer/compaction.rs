//! Compaction: a few slow entries must not pin whole epochs. A sealed epoch whose live entries
//! fell under an eighth of an epoch and stopped shrinking is copied forward: its records that
//! still have a live target go, with only those targets and their sequence numbers, into new
//! segments of the current epoch; the queues then point at the copies and the old epoch is
//! deleted like any consumed one.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use super::Writer;
use crate::segment::{Segment, SegmentBuilder};
use crate::stats::Counters;

impl Writer {
    /// Copies the oldest sealed epoch whose live payload fell under an eighth of an epoch
    /// forward into the current epoch, so that a few slow entries do not pin a whole directory
    /// (disk then follows the live backlog even when consumers run at different speeds).
    pub(super) fn maybe_compact(&mut self) {
        if self.current.is_none() || self.is_degraded() {
            return;
        }
        let mut live = HashMap::new();
        for endpoint in self.endpoints() {
            for q in endpoint.lock().queues.values() {
                q.add_live_bytes(&mut live);
            }
        }
        let threshold = self.store.config.epoch_bytes / 8;
        let delay = self.store.config.compaction_delay;
        let now = Instant::now();
        let sealed = self.epochs.len().saturating_sub(1);
        // Epochs under the threshold, with the live bytes they had when last seen shrinking: an
        // epoch that a reader is still consuming shrinks and is left to it.
        let stalled = &mut self.stalled;
        stalled.retain(|id, _| live.contains_key(id));
        let candidate = self.epochs.iter().take(sealed).map(|t| t.id).find(|id| {
            let Some(&bytes) = live.get(id).filter(|&&b| b <= threshold) else {
                return false;
            };
            let since = match stalled.get(id) {
                Some(&(seen, since)) if seen == bytes => since,
                _ => {
                    stalled.insert(*id, (bytes, now));
                    now
                }
            };
            now.duration_since(since) >= delay
        });
        if let Some(id) = candidate {
            self.compact(id);
        }
    }

    fn compact(&mut self, id: u64) {
        let endpoints = self.endpoints();
        // Which queues still need each segment of the epoch.
        let mut users: BTreeMap<u64, Vec<(u32, u32)>> = BTreeMap::new();
        for endpoint in &endpoints {
            let state = endpoint.lock();
            for (&priority, q) in &state.queues {
                for seg in q.segs_in(id) {
                    users
                        .entry(seg.segno)
                        .or_default()
                        .push((endpoint.num, priority));
                }
            }
        }
        let mut builder = SegmentBuilder::default();
        let mut copies = Vec::new();
        let mut moves = HashMap::new();
        for (&segno, live) in &users {
            let segment = self
                .store
                .epochs
                .with_blocking(id, |db| db.read(segno))
                .and_then(Result::ok)
                .flatten()
                .and_then(|data| Segment::decode(data).ok());
            let Some(segment) = segment else {
                tracing::warn!(
                    epoch = id,
                    segno,
                    "cannot read a segment to compact; the epoch stays"
                );
                continue;
            };
            segment.copy_live(live, &mut builder);
            if builder.is_empty() {
                continue;
            }
            let Some(current) = self.current.as_mut() else {
                return;
            };
            let new = current.next_segno;
            current.next_segno += 1;
            let (data, summary) = builder.take();
            copies.push((new, data, summary));
            moves.insert(segno, new);
        }
        // The copies must be durable before the old epoch can go.
        let written = self.write_segments(&copies).and_then(|bytes| {
            let current = self.current.as_ref().ok_or_else(super::not_writable)?;
            current.db.flush().map(|()| bytes)
        });
        let bytes = match written {
            Ok(bytes) => bytes,
            Err(e) => {
                tracing::error!(epoch = id, error = %e, "compaction write failed; the epoch stays");
                if let Some(current) = self.current_id() {
                    self.write_failed(current, &e);
                }
                return;
            }
        };
        let token = self.current_token();
        for endpoint in &endpoints {
            let mut state = endpoint.lock();
            for q in state.queues.values_mut() {
                q.relocate(id, &moves, &token);
            }
        }
        Counters::add(&self.store.counters.compacted, 1);
        tracing::debug!(
            epoch = id,
            segments = copies.len(),
            bytes,
            "epoch compacted into the current one"
        );
    }
}
