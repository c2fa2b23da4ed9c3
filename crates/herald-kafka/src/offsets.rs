//! Commit only what is durable. Jobs of one partition may finish out of
//! order (bounded concurrency); the committable offset is one past the end
//! of the contiguous prefix of finished offsets.

use std::collections::{BTreeSet, HashMap};

/// Tracks started and finished offsets per (topic, partition).
#[derive(Debug, Default)]
pub struct OffsetTracker {
    partitions: HashMap<(String, i32), Partition>,
}

#[derive(Debug, Default)]
struct Partition {
    /// Started and not yet finished.
    in_flight: BTreeSet<i64>,
    /// Finished, but an earlier offset is still in flight.
    finished: BTreeSet<i64>,
    /// The next offset to commit (one past the last contiguous finished one).
    committable: Option<i64>,
}

impl OffsetTracker {
    pub fn new() -> Self {
        Self::default()
    }

    /// An offset's work started. Offsets of a partition start in order.
    pub fn start(&mut self, topic: &str, partition: i32, offset: i64) {
        self.partitions
            .entry((topic.to_owned(), partition))
            .or_default()
            .in_flight
            .insert(offset);
    }

    /// An offset's work is durable. Returns the new committable offset of
    /// the partition when it advanced.
    pub fn finish(&mut self, topic: &str, partition: i32, offset: i64) -> Option<i64> {
        let p = self.partitions.get_mut(&(topic.to_owned(), partition))?;
        if !p.in_flight.remove(&offset) {
            return None;
        }
        p.finished.insert(offset);
        let lowest_in_flight = p.in_flight.first().copied();
        let mut advanced = None;
        while let Some(&first) = p.finished.first() {
            if lowest_in_flight.is_some_and(|l| l < first) {
                break;
            }
            p.finished.remove(&first);
            advanced = Some(first + 1);
        }
        if let Some(next) = advanced {
            p.committable = Some(next);
        }
        advanced
    }

    /// Jobs in flight in one partition.
    pub fn in_flight(&self, topic: &str, partition: i32) -> usize {
        self.partitions
            .get(&(topic.to_owned(), partition))
            .map_or(0, |p| p.in_flight.len())
    }

    /// Jobs in flight in total.
    pub fn total_in_flight(&self) -> usize {
        self.partitions.values().map(|p| p.in_flight.len()).sum()
    }

    /// Forget a revoked partition: its unfinished work will be redone by
    /// the next owner from the last commit.
    pub fn revoke(&mut self, topic: &str, partition: i32) {
        self.partitions.remove(&(topic.to_owned(), partition));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_only_the_contiguous_prefix() {
        let mut t = OffsetTracker::new();
        for o in 10..15 {
            t.start("d", 0, o);
        }
        assert_eq!(t.finish("d", 0, 12), None, "10 and 11 still in flight");
        assert_eq!(t.finish("d", 0, 11), None);
        assert_eq!(t.finish("d", 0, 10), Some(13), "10..=12 done: commit 13");
        assert_eq!(t.finish("d", 0, 14), None, "13 still in flight");
        assert_eq!(t.in_flight("d", 0), 1);
        assert_eq!(t.finish("d", 0, 13), Some(15));
        assert_eq!(t.total_in_flight(), 0);
    }

    #[test]
    fn partitions_are_independent_and_revoke_forgets() {
        let mut t = OffsetTracker::new();
        t.start("d", 0, 5);
        t.start("d", 1, 7);
        assert_eq!(t.finish("d", 1, 7), Some(8));
        t.revoke("d", 0);
        assert_eq!(
            t.finish("d", 0, 5),
            None,
            "a revoked partition commits nothing"
        );
        assert_eq!(t.finish("d", 2, 1), None, "unknown partition");
        assert_eq!(t.finish("d", 1, 7), None, "finishing twice changes nothing");
    }
}
