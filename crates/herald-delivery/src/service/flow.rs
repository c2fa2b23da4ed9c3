//! Per-partition flow control for the one consumer that reads every topic.
//!
//! A partition is paused for any of three reasons, and resumed when none is
//! left:
//! - **its head is not due** (a retry tier, or any job with a future due
//!   time): pause, seek back to the head's offset, and resume at the due
//!   time. Tier topics hold messages that all wait about the same time, so
//!   only the head ever needs a timer;
//! - **it has `max_per_partition` jobs in flight**;
//! - **the process has `max_total` jobs in flight** (every partition pauses:
//!   the consumer keeps polling, so it stays in its group).
//!
//! Pausing is per partition, so a waiting tier never holds up the other
//! topics. Revoking a partition forgets its state and its timer; each
//! assignment gets a new generation so that jobs of an earlier assignment
//! never count against (or commit for) the current one.
//!
//! Each assignment also remembers when it began, to tell which messages the
//! partition's previous owner may already have done (`maybe_redone`).
//!
//! librdkafka notes: `pause` drops what was already fetched for the
//! partition (a version barrier) and resumes at the position after the last
//! message handed to us, or where a later `seek` points; `resume` keeps
//! that position.

use std::collections::HashMap;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio_util::time::DelayQueue;
use tokio_util::time::delay_queue::Key;

/// (topic, partition).
pub(super) type Tp = (String, i32);

/// The consumer operations flow control needs; the real consumer in
/// production, a recorder in tests.
pub(super) trait Flow {
    fn pause(&self, topic: &str, partition: i32);
    fn resume(&self, topic: &str, partition: i32);
    fn seek(&self, topic: &str, partition: i32, offset: i64);
}

#[derive(Debug)]
struct State {
    generation: u64,
    in_flight: usize,
    /// The head offset we sought back to, and its timer.
    waiting: Option<(i64, Key)>,
    paused: bool,
    /// When this assignment began (ms since the epoch).
    assigned_at_ms: i64,
    /// How many more messages produced before the assignment get a "was
    /// this already done?" check (see `maybe_redone`).
    suspects: usize,
}

/// What the dispatcher should do with a received message.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Admit {
    /// Start it, as part of this assignment generation.
    Start { generation: u64 },
    /// The partition waits on an earlier head: this message was fetched
    /// before the pause took effect and will be fetched again. Drop it.
    Stale,
}

pub(super) struct Partitions {
    states: HashMap<Tp, State>,
    timers: DelayQueue<Tp>,
    next_generation: u64,
    total: usize,
    max_total: usize,
    max_per_partition: usize,
    redo_budget: usize,
}

impl Partitions {
    pub(super) fn new(max_total: usize, max_per_partition: usize) -> Self {
        Self {
            states: HashMap::new(),
            timers: DelayQueue::new(),
            next_generation: 1,
            total: 0,
            max_total,
            max_per_partition,
            // The previous owner's uncommitted tail: its jobs in flight (at
            // most `max_per_partition` if configured alike) plus those
            // finished since its last commit (200 ms of traffic), with room.
            redo_budget: (4 * max_per_partition).max(1024),
        }
    }

    /// A partition was assigned to us. A partition we paused under an earlier
    /// assignment may still carry librdkafka's pause flag: clear it.
    pub(super) fn assign(&mut self, flow: &impl Flow, topic: &str, partition: i32) -> u64 {
        let tp = (topic.to_owned(), partition);
        if let Some(old) = self.states.remove(&tp)
            && let Some((_, key)) = old.waiting
        {
            self.forget_timer(&key);
        }
        let generation = self.next_generation;
        self.next_generation += 1;
        let paused = self.total >= self.max_total;
        if paused {
            flow.pause(topic, partition);
        } else {
            flow.resume(topic, partition);
        }
        self.states.insert(
            tp,
            State {
                generation,
                in_flight: 0,
                waiting: None,
                paused,
                assigned_at_ms: chrono::Utc::now().timestamp_millis(),
                suspects: self.redo_budget,
            },
        );
        generation
    }

    /// A partition was revoked: forget it and its timer.
    pub(super) fn revoke(&mut self, topic: &str, partition: i32) {
        if let Some(old) = self.states.remove(&(topic.to_owned(), partition))
            && let Some((_, key)) = old.waiting
        {
            self.forget_timer(&key);
        }
    }

    pub(super) fn is_assigned(&self, topic: &str, partition: i32) -> bool {
        self.states.contains_key(&(topic.to_owned(), partition))
    }

    /// Decide about a message that arrived.
    pub(super) fn admit(&mut self, flow: &impl Flow, topic: &str, partition: i32) -> Admit {
        let generation = if self.is_assigned(topic, partition) {
            self.states[&(topic.to_owned(), partition)].generation
        } else {
            // Assignments are seen before their messages; be safe anyway.
            self.assign(flow, topic, partition)
        };
        let state = self
            .states
            .get_mut(&(topic.to_owned(), partition))
            .expect("assigned above");
        if let Some((head, _)) = state.waiting {
            // Seek again: consuming the stale message moved the position.
            flow.seek(topic, partition, head);
            return Admit::Stale;
        }
        Admit::Start { generation }
    }

    /// The message at `offset` is not due for `delay`: pause the partition,
    /// seek back to it and resume when it is due.
    pub(super) fn wait(
        &mut self,
        flow: &impl Flow,
        topic: &str,
        partition: i32,
        offset: i64,
        delay: Duration,
    ) {
        let tp = (topic.to_owned(), partition);
        let Some(state) = self.states.get_mut(&tp) else {
            return;
        };
        if !state.paused {
            flow.pause(topic, partition);
            state.paused = true;
        }
        flow.seek(topic, partition, offset);
        let old = state.waiting.take();
        if let Some((_, key)) = old {
            self.forget_timer(&key);
        }
        let key = self.timers.insert(tp.clone(), delay);
        if let Some(state) = self.states.get_mut(&tp) {
            state.waiting = Some((offset, key));
        }
    }

    /// Whether a message about to start may already have been done by this
    /// partition's previous owner, which can have finished it without
    /// committing (a rebalance, a crash). Those are the first messages after
    /// the committed offset that were produced before this assignment; a
    /// message produced later was never fetched by another member. Bounded
    /// per assignment, so a backlog after a restart is not read twice.
    /// Clock skew between producer and consumer only moves the line: a miss
    /// costs a duplicate delivery, an extra hit a store read.
    pub(super) fn maybe_redone(
        &mut self,
        topic: &str,
        partition: i32,
        produced_at_ms: Option<i64>,
    ) -> bool {
        let Some(s) = self.states.get_mut(&(topic.to_owned(), partition)) else {
            return false;
        };
        match produced_at_ms {
            Some(t) if t < s.assigned_at_ms && s.suspects > 0 => {
                s.suspects -= 1;
                true
            }
            // The window ends at the first message newer than the assignment.
            Some(_) => {
                s.suspects = 0;
                false
            }
            None => false,
        }
    }

    /// A job of this partition started.
    pub(super) fn started(&mut self, flow: &impl Flow, topic: &str, partition: i32) {
        self.total += 1;
        if let Some(s) = self.states.get_mut(&(topic.to_owned(), partition)) {
            s.in_flight += 1;
        }
        if self.total == self.max_total {
            self.reconcile_all(flow);
        } else {
            self.reconcile(flow, topic, partition);
        }
    }

    /// A job finished. Its partition may have been revoked (or revoked and
    /// assigned again) meanwhile: only the same generation counts.
    pub(super) fn finished(
        &mut self,
        flow: &impl Flow,
        topic: &str,
        partition: i32,
        generation: u64,
    ) {
        let was_full = self.total >= self.max_total;
        self.total = self.total.saturating_sub(1);
        if let Some(s) = self.states.get_mut(&(topic.to_owned(), partition))
            && s.generation == generation
        {
            s.in_flight = s.in_flight.saturating_sub(1);
        }
        if was_full && self.total < self.max_total {
            self.reconcile_all(flow);
        } else {
            self.reconcile(flow, topic, partition);
        }
    }

    /// The generation of a partition's current assignment.
    pub(super) fn generation(&self, topic: &str, partition: i32) -> Option<u64> {
        self.states
            .get(&(topic.to_owned(), partition))
            .map(|s| s.generation)
    }

    pub(super) fn total_in_flight(&self) -> usize {
        self.total
    }

    /// Partitions waiting for their head to become due.
    pub(super) fn waiting(&self) -> usize {
        self.states.values().filter(|s| s.waiting.is_some()).count()
    }

    /// The next partition whose head became due. Its timer key is spent
    /// here, at once: a revoke or an assignment applied before
    /// [`Partitions::due`] must not remove it again (`DelayQueue::remove`
    /// panics on a spent key).
    pub(super) fn poll_due(&mut self, cx: &mut Context<'_>) -> Poll<Option<Tp>> {
        let polled = self
            .timers
            .poll_expired(cx)
            .map(|e| e.map(|e| e.into_inner()));
        if let Poll::Ready(Some(tp)) = &polled
            && let Some(s) = self.states.get_mut(tp)
        {
            s.waiting = None;
        }
        polled
    }

    /// A head became due: resume the partition unless it is full (or gone).
    pub(super) fn due(&mut self, flow: &impl Flow, tp: &Tp) {
        self.reconcile(flow, &tp.0, tp.1);
    }

    /// Drop a partition's timer, if it still has one.
    fn forget_timer(&mut self, key: &Key) {
        // `try_remove`: a key can only be spent by `poll_due`, which clears
        // it first; this stays safe if that ever changes.
        let _ = self.timers.try_remove(key);
    }

    fn reconcile(&mut self, flow: &impl Flow, topic: &str, partition: i32) {
        let (max_total, max_pp, total) = (self.max_total, self.max_per_partition, self.total);
        if let Some(s) = self.states.get_mut(&(topic.to_owned(), partition)) {
            apply(flow, topic, partition, s, total >= max_total, max_pp);
        }
    }

    fn reconcile_all(&mut self, flow: &impl Flow) {
        let full = self.total >= self.max_total;
        for ((topic, partition), s) in &mut self.states {
            apply(flow, topic, *partition, s, full, self.max_per_partition);
        }
    }
}

fn apply(flow: &impl Flow, topic: &str, partition: i32, s: &mut State, full: bool, max_pp: usize) {
    let pause = s.waiting.is_some() || s.in_flight >= max_pp || full;
    if pause != s.paused {
        if pause {
            flow.pause(topic, partition);
        } else {
            flow.resume(topic, partition);
        }
        s.paused = pause;
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::future::poll_fn;

    use super::*;

    #[derive(Default)]
    struct Recorder(RefCell<Vec<String>>);

    impl Flow for Recorder {
        fn pause(&self, t: &str, p: i32) {
            self.0.borrow_mut().push(format!("pause {t}/{p}"));
        }
        fn resume(&self, t: &str, p: i32) {
            self.0.borrow_mut().push(format!("resume {t}/{p}"));
        }
        fn seek(&self, t: &str, p: i32, o: i64) {
            self.0.borrow_mut().push(format!("seek {t}/{p}@{o}"));
        }
    }

    impl Recorder {
        fn take(&self) -> Vec<String> {
            std::mem::take(&mut self.0.borrow_mut())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_head_that_is_not_due_pauses_only_its_partition_until_due() {
        let f = Recorder::default();
        let mut p = Partitions::new(100, 10);
        p.assign(&f, "retry.1s", 0);
        p.assign(&f, "deliveries", 0);
        f.take();
        p.wait(&f, "retry.1s", 0, 42, Duration::from_secs(5));
        assert_eq!(f.take(), ["pause retry.1s/0", "seek retry.1s/0@42"]);
        assert_eq!(p.waiting(), 1);
        // Another topic is unaffected.
        assert!(matches!(p.admit(&f, "deliveries", 0), Admit::Start { .. }));
        // A message fetched before the pause is dropped and the seek repeated.
        assert_eq!(p.admit(&f, "retry.1s", 0), Admit::Stale);
        assert_eq!(f.take(), ["seek retry.1s/0@42"]);

        let start = tokio::time::Instant::now();
        let tp = poll_fn(|cx| p.poll_due(cx)).await.unwrap();
        assert!(start.elapsed() >= Duration::from_secs(5));
        p.due(&f, &tp);
        assert_eq!(f.take(), ["resume retry.1s/0"]);
        assert_eq!(p.waiting(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn revoke_forgets_the_timer_and_generations_separate_assignments() {
        let f = Recorder::default();
        let mut p = Partitions::new(100, 10);
        let g1 = p.assign(&f, "t", 0);
        p.started(&f, "t", 0);
        p.wait(&f, "t", 0, 7, Duration::from_secs(1));
        p.revoke("t", 0);
        assert_eq!(p.waiting(), 0);
        let g2 = p.assign(&f, "t", 0);
        assert_ne!(g1, g2);
        f.take();
        // The old job finishing does not touch the new assignment's count.
        p.finished(&f, "t", 0, g1);
        assert_eq!(p.total_in_flight(), 0);
        tokio::time::advance(Duration::from_secs(2)).await;
        let polled = poll_fn(|cx| Poll::Ready(p.poll_due(cx))).await;
        assert!(
            !matches!(polled, Poll::Ready(Some(_))),
            "the revoked timer is gone"
        );
        assert!(f.take().is_empty());
    }

    /// A rebalance applied between a timer firing and its handling: the
    /// spent key is never removed again (that panicked in `DelayQueue`).
    #[tokio::test(start_paused = true)]
    async fn a_revoke_or_assign_right_after_a_timer_fired_does_not_panic() {
        let f = Recorder::default();
        let mut p = Partitions::new(100, 10);
        for reassign in [false, true] {
            p.assign(&f, "t", 0);
            p.wait(&f, "t", 0, 7, Duration::from_secs(1));
            let tp = poll_fn(|cx| p.poll_due(cx)).await.unwrap();
            if reassign {
                p.assign(&f, "t", 0);
            } else {
                p.revoke("t", 0);
            }
            p.due(&f, &tp);
            assert_eq!(p.waiting(), 0);
            // The partition can wait again on a new head.
            p.assign(&f, "t", 0);
            p.wait(&f, "t", 0, 8, Duration::from_secs(1));
            assert_eq!(p.waiting(), 1);
            p.revoke("t", 0);
        }
    }

    #[test]
    fn in_flight_bounds_pause_and_resume() {
        let f = Recorder::default();
        let mut p = Partitions::new(3, 2);
        let a = p.assign(&f, "t", 0);
        let b = p.assign(&f, "t", 1);
        f.take();
        p.started(&f, "t", 0);
        p.started(&f, "t", 0);
        assert_eq!(f.take(), ["pause t/0"], "partition bound");
        p.started(&f, "t", 1);
        assert_eq!(f.take(), ["pause t/1"], "total bound pauses the rest");
        p.finished(&f, "t", 1, b);
        assert_eq!(f.take(), ["resume t/1"], "t/0 is still at its own bound");
        p.finished(&f, "t", 0, a);
        assert_eq!(f.take(), ["resume t/0"]);
    }

    #[test]
    fn only_messages_older_than_the_assignment_are_suspected_within_a_budget() {
        let f = Recorder::default();
        let mut p = Partitions::new(100, 1);
        p.assign(&f, "t", 0);
        let at = p.states[&("t".to_owned(), 0)].assigned_at_ms;
        assert!(p.maybe_redone("t", 0, Some(at - 1)));
        assert!(!p.maybe_redone("t", 0, None), "no timestamp: no check");
        for _ in 1..1024 {
            assert!(p.maybe_redone("t", 0, Some(at - 1)));
        }
        assert!(!p.maybe_redone("t", 0, Some(at - 1)), "budget spent");
        // A new assignment opens a new window, closed by the first message
        // produced after it.
        p.assign(&f, "t", 0);
        let at = p.states[&("t".to_owned(), 0)].assigned_at_ms;
        assert!(p.maybe_redone("t", 0, Some(at - 1)));
        assert!(!p.maybe_redone("t", 0, Some(at)));
        assert!(!p.maybe_redone("t", 0, Some(at - 1)), "window closed");
        assert!(!p.maybe_redone("u", 0, Some(0)), "not assigned");
    }
}
