//! Segments: the unit of storage. A segment packs the messages of one group commit (up to
//! `segment_bytes`) into one byte string, and comes with a small summary that says, per queue,
//! how many of its entries are in it.
//!
//! Data format, all integers big-endian; records are in increasing `seq` order:
//!
//! ```text
//! record  := seq u64 | enqueued_ms u64 | n u16 | target{n} | len u32 | payload[len]
//! target  := endpoint u32 | priority u32 | expiry_ms u64      (u64::MAX = never)
//! summary := version u8 | first_seq u64 | last_seq u64 | enqueued_ms u64 | data_len u32
//!            | n u16 | group{n}
//! group   := endpoint u32 | priority u32 | count u32 | bytes u64 | first_seq u64
//!            | last_seq u64 | max_expiry_ms u64
//! ```
//!
//! A message is written once whatever its number of targets; each target is a queue
//! (endpoint number, priority) with its own expiry.

use std::collections::BTreeMap;
use std::ops::Range;

use bytes::Bytes;

const SUMMARY_VERSION: u8 = 1;

/// A segment or summary that does not parse: the bytes on disk are not what we wrote.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed segment: {0}")]
pub(crate) struct FormatError(&'static str);

/// One destination of a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RecordTarget {
    pub endpoint: u32,
    pub priority: u32,
    pub expiry_ms: u64,
}

/// The entries of one queue in one segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Group {
    pub endpoint: u32,
    pub priority: u32,
    pub count: u32,
    /// Payload bytes of the entries.
    pub bytes: u64,
    pub first_seq: u64,
    pub last_seq: u64,
    pub max_expiry_ms: u64,
}

/// What recovery needs to know about a segment without reading its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Summary {
    pub first_seq: u64,
    pub last_seq: u64,
    /// Enqueue time of the oldest record.
    pub enqueued_ms: u64,
    pub data_len: u32,
    pub groups: Vec<Group>,
}

/// Accumulates records into one segment.
#[derive(Debug, Default)]
pub(crate) struct SegmentBuilder {
    data: Vec<u8>,
    first_seq: u64,
    last_seq: u64,
    enqueued_ms: u64,
    groups: BTreeMap<(u32, u32), Group>,
}

impl SegmentBuilder {
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// Appends a record; `seq` must be greater than that of every record already in.
    pub fn push(&mut self, seq: u64, enqueued_ms: u64, targets: &[RecordTarget], payload: &[u8]) {
        if self.data.is_empty() {
            self.first_seq = seq;
            self.enqueued_ms = enqueued_ms;
        }
        self.last_seq = seq;
        self.enqueued_ms = self.enqueued_ms.min(enqueued_ms);
        let n = u16::try_from(targets.len())
            .expect("targets are de-duplicated endpoints, far fewer than 65,536");
        let len =
            u32::try_from(payload.len()).expect("payloads are bounded far below 4 GiB by the hub");
        self.data.extend_from_slice(&seq.to_be_bytes());
        self.data.extend_from_slice(&enqueued_ms.to_be_bytes());
        self.data.extend_from_slice(&n.to_be_bytes());
        for t in targets {
            self.data.extend_from_slice(&t.endpoint.to_be_bytes());
            self.data.extend_from_slice(&t.priority.to_be_bytes());
            self.data.extend_from_slice(&t.expiry_ms.to_be_bytes());
            let group = self
                .groups
                .entry((t.endpoint, t.priority))
                .or_insert_with(|| Group {
                    endpoint: t.endpoint,
                    priority: t.priority,
                    count: 0,
                    bytes: 0,
                    first_seq: seq,
                    last_seq: seq,
                    max_expiry_ms: 0,
                });
            group.count += 1;
            group.bytes += u64::from(len);
            group.last_seq = seq;
            group.max_expiry_ms = group.max_expiry_ms.max(t.expiry_ms);
        }
        self.data.extend_from_slice(&len.to_be_bytes());
        self.data.extend_from_slice(payload);
    }

    /// The segment's data and summary; the builder is left empty.
    pub fn take(&mut self) -> (Vec<u8>, Summary) {
        let data = std::mem::take(&mut self.data);
        let summary = Summary {
            first_seq: self.first_seq,
            last_seq: self.last_seq,
            enqueued_ms: self.enqueued_ms,
            data_len: u32::try_from(data.len()).expect("segments are kept far below 4 GiB"),
            groups: std::mem::take(&mut self.groups).into_values().collect(),
        };
        (data, summary)
    }
}

impl Summary {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(31 + self.groups.len() * 44);
        out.push(SUMMARY_VERSION);
        out.extend_from_slice(&self.first_seq.to_be_bytes());
        out.extend_from_slice(&self.last_seq.to_be_bytes());
        out.extend_from_slice(&self.enqueued_ms.to_be_bytes());
        out.extend_from_slice(&self.data_len.to_be_bytes());
        let n =
            u16::try_from(self.groups.len()).expect("groups are bounded by targets per message");
        out.extend_from_slice(&n.to_be_bytes());
        for g in &self.groups {
            out.extend_from_slice(&g.endpoint.to_be_bytes());
            out.extend_from_slice(&g.priority.to_be_bytes());
            out.extend_from_slice(&g.count.to_be_bytes());
            out.extend_from_slice(&g.bytes.to_be_bytes());
            out.extend_from_slice(&g.first_seq.to_be_bytes());
            out.extend_from_slice(&g.last_seq.to_be_bytes());
            out.extend_from_slice(&g.max_expiry_ms.to_be_bytes());
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, FormatError> {
        let mut r = Cursor(bytes);
        if r.u8()? != SUMMARY_VERSION {
            return Err(FormatError("unknown summary version"));
        }
        let first_seq = r.u64()?;
        let last_seq = r.u64()?;
        let enqueued_ms = r.u64()?;
        let data_len = r.u32()?;
        let n = r.u16()?;
        let groups = (0..n)
            .map(|_| {
                Ok(Group {
                    endpoint: r.u32()?,
                    priority: r.u32()?,
                    count: r.u32()?,
                    bytes: r.u64()?,
                    first_seq: r.u64()?,
                    last_seq: r.u64()?,
                    max_expiry_ms: r.u64()?,
                })
            })
            .collect::<Result<Vec<_>, FormatError>>()?;
        r.end()?;
        Ok(Self {
            first_seq,
            last_seq,
            enqueued_ms,
            data_len,
            groups,
        })
    }
}

/// One message inside a decoded segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Record {
    pub seq: u64,
    pub enqueued_ms: u64,
    targets: Range<usize>,
    payload: Range<usize>,
}

/// A decoded segment: the data plus an index of its records.
#[derive(Debug)]
pub(crate) struct Segment {
    data: Bytes,
    records: Vec<Record>,
    targets: Vec<RecordTarget>,
}

impl Segment {
    pub fn decode(data: Bytes) -> Result<Self, FormatError> {
        let mut records = Vec::new();
        let mut targets = Vec::new();
        let mut r = Cursor(&data);
        let mut last_seq = 0;
        while !r.0.is_empty() {
            let seq = r.u64()?;
            if seq <= last_seq {
                return Err(FormatError("records out of order"));
            }
            last_seq = seq;
            let enqueued_ms = r.u64()?;
            let n = usize::from(r.u16()?);
            let first_target = targets.len();
            for _ in 0..n {
                targets.push(RecordTarget {
                    endpoint: r.u32()?,
                    priority: r.u32()?,
                    expiry_ms: r.u64()?,
                });
            }
            let len = usize::try_from(r.u32()?).map_err(|_| FormatError("payload too long"))?;
            let start = data.len() - r.0.len();
            r.skip(len)?;
            records.push(Record {
                seq,
                enqueued_ms,
                targets: first_target..targets.len(),
                payload: start..start + len,
            });
        }
        Ok(Self {
            data,
            records,
            targets,
        })
    }

    /// Records with a sequence number above `seq`, in order.
    pub fn records_after(&self, seq: u64) -> &[Record] {
        let start = self.records.partition_point(|r| r.seq <= seq);
        &self.records[start..]
    }

    /// The target of `record` for queue (`endpoint`, `priority`), if it has one.
    pub fn target(&self, record: &Record, endpoint: u32, priority: u32) -> Option<RecordTarget> {
        self.targets[record.targets.clone()]
            .iter()
            .find(|t| t.endpoint == endpoint && t.priority == priority)
            .copied()
    }

    /// Every target of `record`.
    pub fn targets(&self, record: &Record) -> &[RecordTarget] {
        &self.targets[record.targets.clone()]
    }

    /// Appends the records that still have a target among `live` queues (endpoint, priority)
    /// to `builder`, each with only those targets: how a mostly consumed epoch is copied
    /// forward.
    pub fn copy_live(&self, live: &[(u32, u32)], builder: &mut SegmentBuilder) {
        let mut kept = Vec::new();
        for record in &self.records {
            kept.clear();
            kept.extend(
                self.targets(record)
                    .iter()
                    .filter(|t| live.contains(&(t.endpoint, t.priority))),
            );
            if !kept.is_empty() {
                builder.push(
                    record.seq,
                    record.enqueued_ms,
                    &kept,
                    &self.data[record.payload.clone()],
                );
            }
        }
    }

    /// The payload of `record`, sharing the segment's memory.
    pub fn payload(&self, record: &Record) -> Bytes {
        self.data.slice(record.payload.clone())
    }
}

/// Reads big-endian integers from a byte slice, failing instead of panicking on short input.
struct Cursor<'a>(&'a [u8]);

impl Cursor<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], FormatError> {
        let (head, rest) = self
            .0
            .split_first_chunk::<N>()
            .ok_or(FormatError("truncated"))?;
        self.0 = rest;
        Ok(*head)
    }

    fn skip(&mut self, n: usize) -> Result<(), FormatError> {
        if self.0.len() < n {
            return Err(FormatError("truncated payload"));
        }
        self.0 = &self.0[n..];
        Ok(())
    }

    fn end(&self) -> Result<(), FormatError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(FormatError("trailing bytes"))
        }
    }

    fn u8(&mut self) -> Result<u8, FormatError> {
        self.take::<1>().map(|[b]| b)
    }

    fn u16(&mut self) -> Result<u16, FormatError> {
        self.take().map(u16::from_be_bytes)
    }

    fn u32(&mut self) -> Result<u32, FormatError> {
        self.take().map(u32::from_be_bytes)
    }

    fn u64(&mut self) -> Result<u64, FormatError> {
        self.take().map(u64::from_be_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(endpoint: u32, priority: u32, expiry_ms: u64) -> RecordTarget {
        RecordTarget {
            endpoint,
            priority,
            expiry_ms,
        }
    }

    #[test]
    fn records_round_trip_with_shared_payload_and_per_queue_groups() {
        let mut b = SegmentBuilder::default();
        b.push(5, 100, &[target(1, 0, 900), target(2, 7, 800)], b"hello");
        b.push(6, 101, &[target(1, 0, 950)], b"world!");
        let (data, summary) = b.take();
        assert!(b.is_empty());

        let seg = Segment::decode(Bytes::from(data)).expect("decodes");
        let recs = seg.records_after(0);
        assert_eq!(recs.len(), 2);
        assert_eq!(seg.payload(&recs[0]), Bytes::from_static(b"hello"));
        assert_eq!(seg.target(&recs[0], 2, 7), Some(target(2, 7, 800)));
        assert_eq!(seg.target(&recs[1], 2, 7), None);
        assert_eq!(seg.records_after(5).len(), 1);

        let back = Summary::decode(&summary.encode()).expect("decodes");
        assert_eq!(back, summary);
        assert_eq!(
            (back.first_seq, back.last_seq, back.enqueued_ms),
            (5, 6, 100)
        );
        let g1 = &back.groups[0];
        assert_eq!(
            (
                g1.endpoint,
                g1.count,
                g1.bytes,
                g1.last_seq,
                g1.max_expiry_ms
            ),
            (1, 2, 11, 6, 950)
        );
        assert_eq!((back.groups[1].endpoint, back.groups[1].count), (2, 1));
    }

    #[test]
    fn copying_keeps_only_live_targets_in_order() {
        let mut b = SegmentBuilder::default();
        b.push(1, 10, &[target(1, 0, 9), target(2, 0, 9)], b"both");
        b.push(2, 11, &[target(2, 0, 9)], b"dead");
        b.push(3, 12, &[target(1, 0, 9)], b"live");
        let (data, _) = b.take();
        let seg = Segment::decode(Bytes::from(data)).expect("decodes");
        let mut copy = SegmentBuilder::default();
        seg.copy_live(&[(1, 0)], &mut copy);
        let (data, summary) = copy.take();
        let copied = Segment::decode(Bytes::from(data)).expect("decodes");
        let recs = copied.records_after(0);
        assert_eq!(recs.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 3]);
        assert_eq!(copied.targets(&recs[0]), [target(1, 0, 9)]);
        assert_eq!(copied.payload(&recs[1]), Bytes::from_static(b"live"));
        assert_eq!(summary.groups.len(), 1);
        assert_eq!((summary.groups[0].count, summary.enqueued_ms), (2, 10));
    }

    #[test]
    fn truncated_data_is_an_error_not_a_panic() {
        let mut b = SegmentBuilder::default();
        b.push(1, 1, &[target(1, 0, 9)], b"payload");
        let (data, summary) = b.take();
        for cut in 0..data.len() - 1 {
            let part = Bytes::copy_from_slice(&data[..cut]);
            if cut > 0 {
                assert!(Segment::decode(part).is_err(), "cut at {cut}");
            }
        }
        let encoded = summary.encode();
        assert!(Summary::decode(&encoded[..encoded.len() - 1]).is_err());
        assert!(Summary::decode(b"garbage").is_err());
    }
}
