//! One manual re-send at a time per notification, within a process. A
//! re-send numbers its attempt from the attempts on record when it starts
//! (after three, it is attempt 4), so two re-sends of one notification that
//! ran side by side would both be attempt 4. Holding this lock from reading
//! the record to recording the attempt makes them 4 and 5.
//!
//! Kafka mode keys re-send commands by notification id, so all re-sends of a
//! notification reach the one worker that owns that partition; standalone
//! has a single process.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use herald_core::NotificationId;
use tokio::sync::OwnedMutexGuard;

type Slot = Arc<tokio::sync::Mutex<()>>;

/// Per-notification locks; entries exist only while someone holds or awaits
/// one.
#[derive(Default)]
pub struct ResendLocks {
    slots: Mutex<HashMap<NotificationId, Slot>>,
}

impl ResendLocks {
    /// Wait for the notification's previous re-send to finish.
    pub async fn lock(&self, id: NotificationId) -> ResendGuard<'_> {
        let slot = self
            .slots
            .lock()
            .expect("resend locks poisoned")
            .entry(id)
            .or_default()
            .clone();
        let guard = slot.lock_owned().await;
        ResendGuard {
            locks: self,
            id,
            guard: Some(guard),
        }
    }

    /// Notifications with a re-send running or waiting.
    #[cfg(test)]
    fn held(&self) -> usize {
        self.slots.lock().expect("resend locks poisoned").len()
    }
}

/// Held while one re-send reads the record, sends and records its attempt.
pub struct ResendGuard<'a> {
    locks: &'a ResendLocks,
    id: NotificationId,
    guard: Option<OwnedMutexGuard<()>>,
}

impl Drop for ResendGuard<'_> {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut slots = self.locks.slots.lock().expect("resend locks poisoned");
        // Only the map holds it now: nobody is waiting, forget the entry.
        if slots
            .get(&self.id)
            .is_some_and(|s| Arc::strong_count(s) == 1)
        {
            slots.remove(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn resends_of_one_notification_take_turns_and_leave_nothing_behind() {
        let locks = ResendLocks::default();
        let (a, b) = (
            NotificationId(uuid::Uuid::from_u128(1)),
            NotificationId(uuid::Uuid::from_u128(2)),
        );
        let first = locks.lock(a).await;
        // Another notification is not held up.
        let other = locks.lock(b).await;
        drop(other);
        // The same one waits until the first is done.
        let second = locks.lock(a);
        tokio::pin!(second);
        assert!(futures::poll!(second.as_mut()).is_pending());
        drop(first);
        let second = second.await;
        assert_eq!(locks.held(), 1);
        drop(second);
        assert_eq!(locks.held(), 0);
    }
}
