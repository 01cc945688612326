//! Opening a store: rebuilds the queues from the meta database and the segment summaries.
//!
//! Rules:
//! - a database (meta or epoch) that cannot be opened, or whose summaries do not parse, is moved
//!   to `quarantine/`, logged at ERROR and reported in [`RecoveryReport`]; never deleted; if the
//!   meta database is lost, every epoch is moved aside too (it cannot be attributed);
//! - an entry is live if its endpoint still exists and its sequence number is above the
//!   checkpoint of its queue; expired entries are left to the cleaner and the readers;
//! - sequence numbers continue above everything seen (segments, checkpoints, reservation):
//!   readers see entries before their fsync, so a saved checkpoint may lie above the durable
//!   end of the log, and a number at or below it, reused, would be skipped (`first_free_seq`);
//! - a queue's segments are ordered by sequence number, not by epoch (compaction copies old
//!   entries into newer epochs); of two overlapping copies, the first is kept.
//!
//! Only summaries are read, plus the data of at most one partly acknowledged segment per
//! queue, so opening costs little more than opening the sled databases.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;

use crate::backend::{EpochDb, MetaContents, MetaDb, OpenFailure};
use crate::endpoint::Endpoint;
use crate::epoch::{EpochTable, EpochToken, Layout, Quarantined};
use crate::error::{BackendError, OpenError};
use crate::queue::{Queue, SegRef};
use crate::segment::{FormatError, Group, Segment, Summary};

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
    /// The latest time the store knew of (its saved time, or an enqueue stamp on disk); 0 if
    /// none: the floor of its time for this run (see `StoreTime`).
    pub last_time_ms: u64,
    pub report: RecoveryReport,
}

/// Why an epoch could not be opened and read.
#[derive(Debug, thiserror::Error)]
enum EpochReadError {
    #[error(transparent)]
    Open(#[from] OpenFailure),
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

/// What the meta database says, indexed for the scan of the epochs.
#[derive(Debug)]
struct Known {
    /// Names of the existing endpoints, by number.
    names: HashMap<u32, String>,
    /// Checkpoints of the queues of existing endpoints, by (endpoint, priority).
    checkpoints: HashMap<(u32, u32), u64>,
    /// Highest sequence number the meta database knows of (reservation, any checkpoint, of
    /// existing endpoints or not).
    max_seq: u64,
}

impl Known {
    fn new(contents: &MetaContents) -> Self {
        let names: HashMap<u32, String> = contents
            .endpoints
            .iter()
            .map(|(n, num)| (*num, n.clone()))
            .collect();
        let mut checkpoints = HashMap::new();
        let mut max_seq = contents.seq_reserved;
        for &(endpoint, priority, seq) in &contents.checkpoints {
            max_seq = max_seq.max(seq);
            if names.contains_key(&endpoint) {
                checkpoints.insert((endpoint, priority), seq);
            }
        }
        Self {
            names,
            checkpoints,
            max_seq,
        }
    }

    fn exists(&self, endpoint: u32) -> bool {
        self.names.contains_key(&endpoint)
    }

    /// The checkpoint of a queue; 0 (nothing done) if none was saved.
    fn checkpoint(&self, endpoint: u32, priority: u32) -> u64 {
        self.checkpoints
            .get(&(endpoint, priority))
            .copied()
            .unwrap_or(0)
    }

    /// Above every endpoint number in use or recorded as used.
    fn next_endpoint(&self, recorded: u32) -> u32 {
        recorded.max(self.names.keys().max().map_or(0, |m| m + 1))
    }
}

/// What the scan of the epoch directories found.
#[derive(Debug)]
struct Scanned {
    /// Readable epochs, oldest first.
    epochs: VecDeque<Arc<EpochToken>>,
    /// Segments with entries after their queue's checkpoint, by (endpoint, priority).
    segments: HashMap<(u32, u32), Vec<SegRef>>,
    /// Highest sequence number in a summary.
    max_seq: u64,
    /// Latest enqueue stamp in a summary.
    max_enqueued_ms: u64,
    /// Above every epoch id on disk.
    next_epoch: u64,
}

impl Scanned {
    fn new() -> Self {
        Self {
            epochs: VecDeque::new(),
            segments: HashMap::new(),
            max_seq: 0,
            max_enqueued_ms: 0,
            next_epoch: 1,
        }
    }

    /// Notes the live part of every queue in an epoch's segments.
    fn add_epoch(
        &mut self,
        db: &EpochDb,
        token: &Arc<EpochToken>,
        summaries: Vec<(u64, Summary)>,
        known: &Known,
    ) {
        for (segno, summary) in summaries {
            self.max_seq = self.max_seq.max(summary.last_seq);
            self.max_enqueued_ms = self.max_enqueued_ms.max(summary.enqueued_ms);
            for group in &summary.groups {
                if let Some(seg) = live_part(db, token, segno, &summary, group, known) {
                    self.segments
                        .entry((group.endpoint, group.priority))
                        .or_default()
                        .push(seg);
                }
            }
        }
    }
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
    let meta_lost = !report.quarantined.is_empty();
    let known = Known::new(&contents);
    let scanned = if meta_lost {
        quarantine_epochs(layout, now_ms, &mut report)?
    } else {
        scan_epochs(layout, cache_bytes, table, now_ms, &known, &mut report)?
    };
    report.epochs = scanned.epochs.len();
    let next_seq = first_free_seq(&known, scanned.max_seq);
    let (queues, entries) = rebuild_queues(&known, scanned.segments);
    report.entries = entries;
    Ok(Recovered {
        meta,
        endpoints: endpoints_with_queues(contents.endpoints, queues),
        epochs: scanned.epochs,
        next_seq,
        next_endpoint: known.next_endpoint(contents.next_endpoint),
        next_epoch: scanned.next_epoch,
        last_time_ms: contents.time_ms.max(scanned.max_enqueued_ms),
        report,
    })
}

/// The first sequence number this run may use: above every entry on disk (`max_seq_on_disk`,
/// the highest in a summary) **and** above
/// everything the meta database knows of (the reservation, every saved checkpoint).
///
/// The log alone is not enough. Readers see an entry as soon as it is written, before its
/// fsync, so a reader may acknowledge it and the writer save that checkpoint (the meta
/// database is flushed on its own) before the entry is durable. After a crash the log can then
/// end below a saved checkpoint; a new entry numbered at or below it would be taken for one
/// already consumed and never delivered. (The reservation, flushed before its numbers are
/// used, is above every checkpoint of a store that wrote it; the checkpoints guard on their
/// own too.)
fn first_free_seq(known: &Known, max_seq_on_disk: u64) -> u64 {
    known.max_seq.max(max_seq_on_disk) + 1
}

/// Moves every epoch to `quarantine/`: without the endpoint table the segments cannot be
/// attributed (endpoint numbers would be reused), so they are kept aside rather than served to
/// the wrong endpoint.
fn quarantine_epochs(
    layout: &Layout,
    now_ms: u64,
    report: &mut RecoveryReport,
) -> Result<Scanned, OpenError> {
    let mut scanned = Scanned::new();
    for id in layout.epoch_ids()? {
        scanned.next_epoch = scanned.next_epoch.max(id + 1);
        let reason = "the meta database was unreadable; segments cannot be attributed".to_owned();
        report
            .quarantined
            .push(layout.quarantine(&layout.epoch_dir(id), reason, now_ms)?);
    }
    Ok(scanned)
}

/// Reads the summaries of every epoch and registers the readable ones in `table`, closed;
/// moves the others to `quarantine/`.
fn scan_epochs(
    layout: &Layout,
    cache_bytes: u64,
    table: &EpochTable,
    now_ms: u64,
    known: &Known,
    report: &mut RecoveryReport,
) -> Result<Scanned, OpenError> {
    let mut scanned = Scanned::new();
    for id in layout.epoch_ids()? {
        scanned.next_epoch = scanned.next_epoch.max(id + 1);
        let dir = layout.epoch_dir(id);
        let (db, summaries) = match open_epoch(&dir, cache_bytes) {
            Ok(opened) => opened,
            Err(EpochReadError::Open(OpenFailure::Locked)) => {
                return Err(OpenError::Locked { path: dir });
            }
            Err(e) => {
                report
                    .quarantined
                    .push(layout.quarantine(&dir, e.to_string(), now_ms)?);
                continue;
            }
        };
        let token = Arc::new(EpochToken::new(id));
        scanned.add_epoch(&db, &token, summaries, known);
        // Opened again when a reader needs it: a long backlog must not keep every epoch open.
        drop(db);
        table.insert_closed(id);
        scanned.epochs.push_back(token);
    }
    Ok(scanned)
}

/// Opens an epoch database and reads its segment summaries.
fn open_epoch(
    dir: &Path,
    cache_bytes: u64,
) -> Result<(EpochDb, Vec<(u64, Summary)>), EpochReadError> {
    let db = EpochDb::open(dir, cache_bytes)?;
    let summaries = read_summaries(&db)?;
    Ok((db, summaries))
}

/// The reference to the entries of `group` after its queue's checkpoint, or `None` if its
/// endpoint is gone or they are all done. A segment that straddles the checkpoint and cannot
/// be read now is kept whole (`SegRef::estimated`, logged).
fn live_part(
    db: &EpochDb,
    token: &Arc<EpochToken>,
    segno: u64,
    summary: &Summary,
    group: &Group,
    known: &Known,
) -> Option<SegRef> {
    if !known.exists(group.endpoint) {
        return None;
    }
    let checkpoint = known.checkpoint(group.endpoint, group.priority);
    if group.last_seq <= checkpoint {
        return None;
    }
    let (count, bytes, estimated) = if group.first_seq <= checkpoint {
        match count_straddling(db, segno, group, checkpoint) {
            Ok((count, bytes)) => (count, bytes, false),
            Err(reason) => {
                // Not a reason to drop them: a read may fail for a while (on a full disk sled's
                // reads can fail, as they may write). The reader reads the segment when it gets
                // to it, and drops it only if it is missing or damaged then.
                tracing::error!(epoch = token.id, segno, %reason, "segment unreadable at open; its entries are kept and counted whole until read");
                (group.count, group.bytes, true)
            }
        }
    } else {
        (group.count, group.bytes, false)
    };
    Some(SegRef {
        epoch: Arc::clone(token),
        segno,
        first_seq: group.first_seq,
        last_seq: group.last_seq,
        enqueued_ms: summary.enqueued_ms,
        max_expiry_ms: group.max_expiry_ms,
        count,
        bytes,
        estimated,
    })
}

/// Entries and payload bytes of `group` after `checkpoint`, for a segment that straddles the
/// checkpoint: the only case where a segment's data is read at open.
fn count_straddling(
    db: &EpochDb,
    segno: u64,
    group: &Group,
    checkpoint: u64,
) -> Result<(u32, u64), String> {
    let data = db
        .read(segno)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| "segment data missing".to_owned())?;
    count_after(data, group.endpoint, group.priority, checkpoint).map_err(|e| e.to_string())
}

/// The queues of the existing endpoints, by endpoint number then priority: one per saved
/// checkpoint, holding the segments found; returns them with the number of entries.
fn rebuild_queues(
    known: &Known,
    segments: HashMap<(u32, u32), Vec<SegRef>>,
) -> (HashMap<u32, BTreeMap<u32, Queue>>, u64) {
    let mut queues: HashMap<u32, BTreeMap<u32, Queue>> = HashMap::new();
    for (&(endpoint, priority), &seq) in &known.checkpoints {
        queues
            .entry(endpoint)
            .or_default()
            .insert(priority, Queue::with_checkpoint(seq));
    }
    let mut entries = 0;
    for ((endpoint, priority), segs) in segments {
        let queue = queues
            .entry(endpoint)
            .or_default()
            .entry(priority)
            .or_insert_with(|| Queue::with_checkpoint(known.checkpoint(endpoint, priority)));
        entries += push_in_order(queue, segs);
    }
    (queues, entries)
}

/// Adds a queue's segments ordered by sequence number; returns the number of entries added.
///
/// Segments copied forward by compaction hold old sequence numbers in a newer epoch, and a
/// crash between the copy and the deletion of the original leaves both: of overlapping copies,
/// the first is kept.
fn push_in_order(queue: &mut Queue, mut segs: Vec<SegRef>) -> u64 {
    segs.sort_by_key(|s| s.first_seq);
    let mut entries = 0;
    let mut last = 0;
    for seg in segs {
        if seg.first_seq <= last {
            continue;
        }
        last = seg.last_seq;
        entries += u64::from(seg.count);
        queue.push(seg);
    }
    entries
}

/// The endpoints of the meta database, each with its rebuilt queues.
fn endpoints_with_queues(
    endpoints: Vec<(String, u32)>,
    mut queues: HashMap<u32, BTreeMap<u32, Queue>>,
) -> HashMap<String, Arc<Endpoint>> {
    endpoints
        .into_iter()
        .map(|(name, num)| {
            let qs = queues.remove(&num).unwrap_or_default();
            let endpoint = Endpoint::new(name.clone(), num, qs);
            (name, Arc::new(endpoint))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_straddling_segment_that_cannot_be_read_at_open_is_kept_not_skipped() {
        use crate::backend::SegmentWrite;
        use crate::segment::{Group, Summary};

        let dir = tempfile::tempdir().expect("tempdir");
        let db = EpochDb::open(dir.path(), 1 << 20).expect("open");
        let group = Group {
            endpoint: 0,
            priority: 0,
            count: 10,
            bytes: 1_000,
            first_seq: 1,
            last_seq: 10,
            max_expiry_ms: u64::MAX,
        };
        let summary = Summary {
            first_seq: 1,
            last_seq: 10,
            enqueued_ms: 0,
            data_len: 1_000,
            groups: vec![group.clone()],
        };
        // The summary without its data: the data cannot be read to count what is after the
        // checkpoint.
        db.write(&[SegmentWrite {
            segno: 0,
            data: &[],
            summary: summary.encode(),
        }])
        .expect("write");
        let known = Known::new(&MetaContents {
            endpoints: vec![("e".to_owned(), 0)],
            checkpoints: vec![(0, 0, 4)],
            ..MetaContents::default()
        });
        let token = Arc::new(EpochToken::new(1));
        let seg =
            live_part(&db, &token, 0, &summary, &group, &known).expect("its entries are kept");
        assert!(seg.estimated, "counted whole, and said so");
        assert_eq!((seg.count, seg.bytes), (10, 1_000));
    }

    #[test]
    fn sequence_numbers_continue_above_every_saved_checkpoint() {
        // A crash left checkpoints above the durable end of the log (entries read before their
        // fsync) and, here, above the reservation too.
        let contents = MetaContents {
            endpoints: vec![("e".to_owned(), 0)],
            seq_reserved: 5,
            // Endpoint 7 was removed: its checkpoint still counts.
            checkpoints: vec![(0, 0, 40), (0, 1, 100), (7, 0, 300)],
            ..MetaContents::default()
        };
        let known = Known::new(&contents);
        assert_eq!(first_free_seq(&known, 20), 301);
        // Entries on disk above every checkpoint: above them.
        assert_eq!(first_free_seq(&known, 500), 501);
        // The reservation above both: above it.
        let contents = MetaContents {
            seq_reserved: 1_000,
            ..contents
        };
        assert_eq!(first_free_seq(&Known::new(&contents), 500), 1_001);
    }
}
