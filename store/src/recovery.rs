//! Opening a store: rebuilds the queues from the meta database and the segment summaries.
//!
//! Rules:
//! - a database (meta or epoch) that cannot be opened, or whose summaries do not parse, is moved
//!   to `quarantine/`, logged at ERROR and reported in [`RecoveryReport`]; never deleted; if the
//!   meta database is lost, every epoch is moved aside too (it cannot be attributed);
//! - an entry is live if its endpoint still exists and its sequence number is above the
//!   checkpoint of its queue; expired entries are left to the cleaner and the readers;
//! - sequence numbers continue above everything seen (segments, checkpoints, reservation);
//! - a queue's segments are ordered by sequence number, not by epoch (compaction copies old
//!   entries into newer epochs); of two overlapping copies, the first is kept.
//!
//! Only summaries are read, plus the data of at most one partly acknowledged segment per
//! queue, so opening costs little more than opening the sled databases.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use bytes::Bytes;

use crate::backend::{EpochDb, MetaContents, MetaDb, OpenFailure};
use crate::endpoint::Endpoint;
use crate::epoch::{EpochTable, EpochToken, Layout, Quarantined};
use crate::error::{BackendError, OpenError};
use crate::queue::{Queue, SegRef};
use crate::segment::{FormatError, Segment, Summary};

/// What happened when the store was opened.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Databases moved aside because they could not be opened or read.
    pub quarantined: Vec<Quarantined>,
    /// Epoch databases found.
    pub epochs: usize,
    /// Entries still queued (across endpoints and priorities).
    pub entries: u64,
}

/// The state the writer starts from.
#[derive(Debug)]
pub(crate) struct Recovered {
    pub meta: MetaDb,
    pub endpoints: HashMap<String, Arc<Endpoint>>,
    /// Epochs on disk, oldest first.
    pub epochs: VecDeque<Arc<EpochToken>>,
    pub next_seq: u64,
    pub next_endpoint: u32,
    pub next_epoch: u64,
    pub report: RecoveryReport,
}

#[derive(Debug, thiserror::Error)]
enum EpochReadError {
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error(transparent)]
    Format(#[from] FormatError),
}

fn open_meta(
    layout: &Layout,
    report: &mut RecoveryReport,
    now_ms: u64,
) -> Result<(MetaDb, MetaContents), OpenError> {
    let failure = match MetaDb::open(&layout.meta) {
        Ok(meta) => match meta.load() {
            Ok(contents) => return Ok((meta, contents)),
            Err(e) => e.to_string(),
        },
        Err(OpenFailure::Locked) => {
            return Err(OpenError::Locked {
                path: layout.meta.clone(),
            });
        }
        Err(e) => e.to_string(),
    };
    report
        .quarantined
        .push(layout.quarantine(&layout.meta, failure, now_ms)?);
    let meta = MetaDb::open(&layout.meta).map_err(|e| OpenError::Create {
        path: layout.meta.clone(),
        reason: e.to_string(),
    })?;
    Ok((meta, MetaContents::default()))
}

fn read_summaries(db: &EpochDb) -> Result<Vec<(u64, Summary)>, EpochReadError> {
    db.summaries()
        .map(|item| {
            let (segno, value) = item?;
            Ok((segno, Summary::decode(&value)?))
        })
        .collect()
}

/// Entries of queue (`endpoint`, `priority`) after `checkpoint` in a segment's data.
fn count_after(
    data: Bytes,
    endpoint: u32,
    priority: u32,
    checkpoint: u64,
) -> Result<(u32, u64), FormatError> {
    let segment = Segment::decode(data)?;
    let mut count = 0;
    let mut bytes = 0;
    for record in segment.records_after(checkpoint) {
        if segment.target(record, endpoint, priority).is_some() {
            count += 1;
            bytes += segment.payload(record).len() as u64;
        }
    }
    Ok((count, bytes))
}

/// Rebuilds the store's state; registers the readable epochs in `table`.
pub(crate) fn recover(
    layout: &Layout,
    cache_bytes: u64,
    table: &EpochTable,
    now_ms: u64,
) -> Result<Recovered, OpenError> {
    layout.prepare()?;
    let mut report = RecoveryReport::default();
    let (meta, contents) = open_meta(layout, &mut report, now_ms)?;

    let names: HashMap<u32, String> = contents
        .endpoints
        .iter()
        .map(|(n, num)| (*num, n.clone()))
        .collect();
    let mut checkpoints: HashMap<(u32, u32), u64> = HashMap::new();
    let mut max_seq = contents.seq_reserved;
    for &(endpoint, priority, seq) in &contents.checkpoints {
        max_seq = max_seq.max(seq);
        if names.contains_key(&endpoint) {
            checkpoints.insert((endpoint, priority), seq);
        }
    }
    let mut queues: HashMap<u32, BTreeMap<u32, Queue>> = HashMap::new();
    for (&(endpoint, priority), &seq) in &checkpoints {
        queues
            .entry(endpoint)
            .or_default()
            .insert(priority, Queue::with_checkpoint(seq));
    }

    let mut found: HashMap<(u32, u32), Vec<SegRef>> = HashMap::new();
    let meta_lost = !report.quarantined.is_empty();
    let mut epochs = VecDeque::new();
    let mut next_epoch = 1;
    for id in layout.epoch_ids()? {
        next_epoch = next_epoch.max(id + 1);
        let dir = layout.epoch_dir(id);
        if meta_lost {
            // Without the endpoint table the segments cannot be attributed (endpoint numbers
            // would be reused): keep them aside rather than serve them to the wrong endpoint.
            let reason =
                "the meta database was unreadable; segments cannot be attributed".to_owned();
            report
                .quarantined
                .push(layout.quarantine(&dir, reason, now_ms)?);
            continue;
        }
        let opened = match EpochDb::open(&dir, cache_bytes) {
            Err(OpenFailure::Locked) => return Err(OpenError::Locked { path: dir }),
            other => other,
        };
        let opened = opened.map_err(|e| e.to_string()).and_then(|db| {
            read_summaries(&db)
                .map(|s| (db, s))
                .map_err(|e| e.to_string())
        });
        let (db, summaries) = match opened {
            Ok(ok) => ok,
            Err(reason) => {
                report
                    .quarantined
                    .push(layout.quarantine(&dir, reason, now_ms)?);
                continue;
            }
        };
        let token = Arc::new(EpochToken { id });
        for (segno, summary) in summaries {
            max_seq = max_seq.max(summary.last_seq);
            for group in summary.groups {
                if !names.contains_key(&group.endpoint) {
                    continue;
                }
                let checkpoint = checkpoints
                    .get(&(group.endpoint, group.priority))
                    .copied()
                    .unwrap_or(0);
                if group.last_seq <= checkpoint {
                    continue;
                }
                let (count, bytes) = if group.first_seq <= checkpoint {
                    let counted = db
                        .read(segno)
                        .map_err(|e| e.to_string())
                        .and_then(|data| data.ok_or_else(|| "segment data missing".to_owned()))
                        .and_then(|data| {
                            count_after(data, group.endpoint, group.priority, checkpoint)
                                .map_err(|e| e.to_string())
                        });
                    match counted {
                        Ok(c) => c,
                        Err(reason) => {
                            tracing::error!(epoch = id, segno, %reason, "segment unreadable; its entries are skipped");
                            continue;
                        }
                    }
                } else {
                    (group.count, group.bytes)
                };
                found
                    .entry((group.endpoint, group.priority))
                    .or_default()
                    .push(SegRef {
                        epoch: Arc::clone(&token),
                        segno,
                        first_seq: group.first_seq,
                        last_seq: group.last_seq,
                        enqueued_ms: summary.enqueued_ms,
                        max_expiry_ms: group.max_expiry_ms,
                        count,
                        bytes,
                    });
            }
        }
        // Opened again when a reader needs it: a long backlog must not keep every epoch open.
        drop(db);
        table.insert_closed(id);
        epochs.push_back(token);
    }
    report.epochs = epochs.len();
    // Segments copied forward by compaction hold old sequence numbers in a newer epoch, and a
    // crash between the copy and the deletion of the original leaves both: order by sequence
    // number and keep the first of overlapping copies.
    for ((endpoint, priority), mut segs) in found {
        segs.sort_by_key(|s| s.first_seq);
        let queue = queues
            .entry(endpoint)
            .or_default()
            .entry(priority)
            .or_insert_with(|| {
                Queue::with_checkpoint(checkpoints.get(&(endpoint, priority)).copied().unwrap_or(0))
            });
        let mut last = 0;
        for seg in segs {
            if seg.first_seq <= last {
                continue;
            }
            last = seg.last_seq;
            report.entries += u64::from(seg.count);
            queue.push(seg);
        }
    }

    let endpoints = contents
        .endpoints
        .into_iter()
        .map(|(name, num)| {
            let qs = queues.remove(&num).unwrap_or_default();
            let endpoint = Endpoint::new(name.clone(), num, qs);
            (name, Arc::new(endpoint))
        })
        .collect();
    let next_endpoint = contents
        .next_endpoint
        .max(names.keys().max().map_or(0, |m| m + 1));
    Ok(Recovered {
        meta,
        endpoints,
        epochs,
        next_seq: max_seq + 1,
        next_endpoint,
        next_epoch,
        report,
    })
}
