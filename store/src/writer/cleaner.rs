//! The cleaner, run by the writer between batches with bounded work: drops expired entries,
//! deletes consumed epochs, and enforces the disk quota (decision D10).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::Writer;
use crate::config::QuotaPolicy;
use crate::queue::Dropped;
use crate::quota;
use crate::stats::Counters;

/// Most epochs evicted or deleted at a time (each deletion costs a few milliseconds).
const EPOCHS_PER_CLEANUP: usize = 16;

impl Writer {
    /// Expiry, deletion of consumed epochs, quota: bounded work.
    pub(super) fn cleanup(&mut self) {
        let now_ms = self.store.time.now_ms();
        let mut budget = self.store.config.cleanup_budget;
        let mut expired = Dropped::default();
        for endpoint in self.endpoints() {
            let mut state = endpoint.lock();
            let mut dropped = Dropped::default();
            for q in state.queues.values_mut() {
                dropped += q.expire(now_ms, &mut budget);
            }
            if dropped.count > 0 {
                state.checkpoints_dirty = true;
            }
            expired += dropped;
        }
        Counters::add(&self.store.counters.expired, expired.count);
        if expired.count > 0 {
            tracing::debug!(
                count = expired.count,
                bytes = expired.bytes,
                "expired entries dropped"
            );
        }
        self.maybe_compact();
        self.delete_consumed_epochs();
        self.enforce_quota();
    }

    pub(super) fn delete_consumed_epochs(&mut self) {
        let mut deleted = 0;
        let mut i = 0;
        let current = self.current_id();
        while i < self.epochs.len() && deleted < EPOCHS_PER_CLEANUP {
            let id = self.epochs[i].id;
            if Arc::strong_count(&self.epochs[i]) > 1 || Some(id) == current {
                i += 1;
                continue;
            }
            // Remember the checkpoints that released it before its data goes.
            self.save_checkpoints();
            self.store.epochs.remove(id);
            self.to_close.retain(|&r| r != id);
            match self.layout.delete_epoch(id) {
                Ok(()) => tracing::debug!(epoch = id, "consumed epoch deleted"),
                Err(e) => {
                    tracing::warn!(epoch = id, error = %e, "cannot delete a consumed epoch; will be retried at next open");
                }
            }
            self.epochs.remove(i);
            deleted += 1;
        }
        self.store
            .counters
            .epochs
            .store(self.epochs.len() as u64, Ordering::Relaxed);
    }

    fn measure_disk(&mut self) -> Option<u64> {
        let root = &self.store.config.dir;
        // The reserve file is space kept for emergencies, not the store's data.
        let reserve = quota::disk_usage(&self.reserve_path()).unwrap_or(0);
        match quota::disk_usage(root) {
            Ok(bytes) => {
                let bytes = bytes.saturating_sub(reserve);
                self.disk_estimate = bytes;
                self.store
                    .counters
                    .disk_bytes
                    .store(bytes, Ordering::Relaxed);
            }
            Err(e) => tracing::warn!(error = %e, "cannot measure the store's size"),
        }
        quota::free_space(root).ok()
    }

    pub(super) fn update_quota_flag(&self) {
        let quota = &self.store.config.quota;
        if quota
            .max_store_bytes
            .is_some_and(|max| self.disk_estimate > max)
        {
            self.set_over_quota(true);
        }
    }

    fn set_over_quota(&self, over: bool) {
        let was = self.store.over_quota.swap(over, Ordering::Relaxed);
        if over && !was {
            tracing::warn!(disk_bytes = self.disk_estimate, policy = ?self.store.config.quota.policy, "store quota exhausted");
        } else if was && !over {
            tracing::info!(disk_bytes = self.disk_estimate, "store back under quota");
        }
    }

    fn enforce_quota(&mut self) {
        let quota = self.store.config.quota;
        let mut free = self.measure_disk();
        let mut over = quota::exceeded(&quota, self.disk_estimate, free);
        if over && quota.policy == QuotaPolicy::DropOldest {
            for _ in 0..EPOCHS_PER_CLEANUP {
                if !over {
                    break;
                }
                self.evict_oldest_epoch();
                free = self.measure_disk();
                over = quota::exceeded(&quota, self.disk_estimate, free);
            }
        }
        self.set_over_quota(over);
    }

    /// Drops every entry of the oldest epoch (rotating first if it is the one being written).
    fn evict_oldest_epoch(&mut self) {
        if self.epochs.len() == 1 {
            self.rotate();
        }
        let current = self.current_id();
        let Some(id) = self
            .epochs
            .front()
            .map(|t| t.id)
            .filter(|&id| Some(id) != current)
        else {
            return;
        };
        let mut evicted = Dropped::default();
        for endpoint in self.endpoints() {
            let mut state = endpoint.lock();
            let mut dropped = Dropped::default();
            for q in state.queues.values_mut() {
                dropped += q.evict_epoch(id);
            }
            if dropped.count > 0 {
                state.checkpoints_dirty = true;
            }
            evicted += dropped;
        }
        Counters::add(&self.store.counters.evicted, evicted.count);
        tracing::warn!(
            epoch = id,
            count = evicted.count,
            bytes = evicted.bytes,
            "quota: oldest entries dropped"
        );
        self.delete_consumed_epochs();
    }
}
