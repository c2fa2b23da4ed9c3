//! Bounds on what the store accepts and keeps: request bodies are rejected
//! above a maximum (never truncated), response excerpts and error texts are
//! cut to a maximum and visibly marked as cut.

use herald_core::{Attempt, Notification, NotificationContent};
use serde::Deserialize;

use crate::{Result, StoreError};

/// Size limits enforced by every adapter before anything is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreLimits {
    /// Largest rendered request body accepted, in bytes. A larger body makes
    /// the append fail with [`StoreError::TooLarge`]: an audit record must
    /// hold exactly what was (or would be) sent.
    pub max_request_body_bytes: usize,
    /// Bytes of a response excerpt (and of an attempt's error text) that are
    /// kept. Longer text is cut on a char boundary and marked with a
    /// `…[truncated N bytes]` suffix, which comes on top of this budget.
    pub max_response_excerpt_bytes: usize,
}

impl StoreLimits {
    /// 1 MiB of body plus 64 KiB of slack for templates that wrap a 1 MiB
    /// payload.
    pub const DEFAULT_MAX_REQUEST_BODY_BYTES: usize = 1024 * 1024 + 64 * 1024;
    pub const DEFAULT_MAX_RESPONSE_EXCERPT_BYTES: usize = 4 * 1024;

    /// Plan a notification the store would refuse as what it is: a
    /// `render_failed` record that says why, since its body can never be
    /// sent as recorded. Ingest and standalone both plan with it, so a body
    /// over the limit is a record, never a refused batch.
    pub fn settle(&self, n: &mut Notification) {
        if let Err(e) = self.check_notification(n) {
            n.content = NotificationContent::RenderFailed {
                error: e.to_string(),
            };
        }
    }

    /// Reject a notification whose body is above the limit.
    pub fn check_notification(&self, n: &Notification) -> Result<()> {
        if n.webhook_id.is_empty() {
            return Err(StoreError::Invalid(format!(
                "notification {} has an empty webhook id",
                n.id
            )));
        }
        if let NotificationContent::Rendered(req) = &n.content
            && req.body.len() > self.max_request_body_bytes
        {
            return Err(StoreError::TooLarge {
                id: n.id,
                size: req.body.len(),
                max: self.max_request_body_bytes,
            });
        }
        Ok(())
    }

    /// The attempt as it will be stored: excerpt and error bounded.
    pub fn bound_attempt(&self, a: &Attempt) -> Attempt {
        let mut a = a.clone();
        let max = self.max_response_excerpt_bytes;
        a.response_excerpt = a.response_excerpt.map(|s| truncate_marked(s, max));
        a.error = a.error.map(|s| truncate_marked(s, max));
        a
    }
}

impl Default for StoreLimits {
    fn default() -> Self {
        Self {
            max_request_body_bytes: Self::DEFAULT_MAX_REQUEST_BODY_BYTES,
            max_response_excerpt_bytes: Self::DEFAULT_MAX_RESPONSE_EXCERPT_BYTES,
        }
    }
}

pub use herald_core::text::truncate_marked;
