//! Publishing resend commands for the API and the CLI: one notification, or
//! in bulk by webhook, time range and status (enumerated from the store, one
//! command each). The delivery service carries them out.

use std::time::Duration;

use herald_core::{ResendCommand, Status};
use herald_kafka::Topics;
use herald_store::{ListQuery, MAX_PAGE_SIZE, NotificationStore, TimeRange};
use rdkafka::producer::{FutureProducer, FutureRecord};

use super::Result;

/// Publish one resend command to the resend topic and wait for Kafka's
/// acknowledgement.
pub async fn publish_resend(
    producer: &FutureProducer,
    topics: &Topics,
    cmd: &ResendCommand,
) -> Result<()> {
    let payload = serde_json::to_vec(cmd)?;
    let key = cmd.key();
    let topic = topics.resend();
    producer
        .send(
            FutureRecord::to(&topic).key(&key).payload(&payload),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)?;
    Ok(())
}

/// A bulk re-send: every notification of one webhook created in a time
/// range, optionally only those with one status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BulkResend {
    pub webhook_id: String,
    /// `created_at` in `[from, to)`.
    pub range: TimeRange,
    /// Only notifications with this status. `Failed` reads the index of
    /// exhausted notifications; `None` means all.
    pub status: Option<Status>,
    pub reason: String,
    pub requested_by: String,
}

/// Enumerate the notifications `request` selects from the store and publish
/// one resend command each. Returns how many were published. Notifications
/// that were never rendered are skipped (there is nothing to send).
pub async fn publish_bulk_resend(
    store: &dyn NotificationStore,
    producer: &FutureProducer,
    topics: &Topics,
    request: &BulkResend,
) -> Result<usize> {
    let mut query = ListQuery::new(request.webhook_id.clone(), request.range, MAX_PAGE_SIZE);
    query.status = request.status;
    let mut published = 0;
    loop {
        let page = if request.status == Some(Status::Failed) {
            store.list_exhausted(&query).await?
        } else {
            store.list(&query).await?
        };
        let commands: Vec<ResendCommand> = page
            .items
            .iter()
            .filter(|item| item.notification.request().is_some())
            .map(|item| ResendCommand {
                notification_id: item.notification.id,
                reason: request.reason.clone(),
                requested_by: request.requested_by.clone(),
            })
            .collect();
        let sends = commands
            .iter()
            .map(|cmd| publish_resend(producer, topics, cmd));
        for sent in futures::future::join_all(sends).await {
            sent?;
            published += 1;
        }
        match page.next_cursor {
            Some(cursor) => query.cursor = Some(cursor),
            None => return Ok(published),
        }
    }
}
