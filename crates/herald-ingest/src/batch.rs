//! What one batch of input messages becomes, decided without I/O: the
//! notifications to store, the delivery jobs and dead letters to produce.

use std::ops::Range;

use chrono::{DateTime, Utc};
use herald_core::{Accepted, CloudEvent, DeliveryJob, Notification, NotificationContent, Webhooks};
use herald_kafka::headers;
use herald_store::StoreLimits;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders, OwnedMessage};

use crate::metrics::DeadLetterReason;

/// What happens to one input message.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Disposition {
    /// Its notifications are `Batch::notifications[range]` (never empty).
    Notify(Range<usize>),
    /// No webhook fires on it.
    Unmatched { event_type: String },
    /// It goes to the dead-letter topic, unprocessed.
    DeadLetter {
        reason: DeadLetterReason,
        error: String,
    },
}

/// One input message and its fate.
#[derive(Debug)]
pub(crate) struct Planned {
    pub(crate) message: OwnedMessage,
    pub(crate) disposition: Disposition,
}

/// A batch of input messages, in consumption order, with every
/// notification they cause.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    pub(crate) planned: Vec<Planned>,
    pub(crate) notifications: Vec<Notification>,
    /// What the store found for each of `notifications` (same index): all
    /// `New` until the append answers.
    pub(crate) accepted: Vec<Accepted>,
}

/// Limits applied while planning.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Of an input message, value and headers.
    pub(crate) max_event_bytes: usize,
    pub(crate) store: StoreLimits,
    /// The producer's `message.max.bytes`: a delivery job must fit it.
    pub(crate) max_message_bytes: usize,
}

/// The bytes of an oversized event's value its dead letter keeps: enough
/// to tell which event it was.
pub(crate) const OVERSIZED_VALUE_BYTES: usize = 1024;

/// An oversized event's dead letter keeps the original headers only when
/// they are this small.
const OVERSIZED_HEADERS_BYTES: usize = 8 * 1024;

impl Batch {
    /// Decode, match and render every message. `now` is the creation time
    /// of the notifications (and the event time of events without one).
    pub(crate) fn plan(
        messages: Vec<OwnedMessage>,
        webhooks: &Webhooks,
        limits: Limits,
        now: DateTime<Utc>,
    ) -> Self {
        let mut batch = Batch::default();
        for message in messages {
            let disposition = batch.plan_one(&message, webhooks, limits, now);
            batch.planned.push(Planned {
                message,
                disposition,
            });
        }
        batch
    }

    fn plan_one(
        &mut self,
        message: &OwnedMessage,
        webhooks: &Webhooks,
        limits: Limits,
        now: DateTime<Utc>,
    ) -> Disposition {
        let size = message_size(message);
        if size > limits.max_event_bytes {
            return Disposition::DeadLetter {
                reason: DeadLetterReason::Oversized,
                error: format!(
                    "event is {size} bytes (value and headers), above the limit of {} bytes",
                    limits.max_event_bytes
                ),
            };
        }
        let owned_headers: Vec<(&str, &[u8])> = message
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| (h.key, h.value.unwrap_or_default()))
                    .collect()
            })
            .unwrap_or_default();
        let event = match CloudEvent::from_kafka(&owned_headers, message.payload()) {
            Ok(event) => event,
            Err(e) => {
                return Disposition::DeadLetter {
                    reason: DeadLetterReason::Undecodable,
                    error: e.to_string(),
                };
            }
        };
        let start = self.notifications.len();
        for mut n in webhooks.notifications(&event, now) {
            // A body the store would refuse can never be sent as recorded:
            // record why instead, like any other render failure.
            limits.store.settle(&mut n);
            // Nor can one whose delivery job Kafka would refuse: the job
            // carries the body, JSON-escaped.
            if let Some(job) = DeliveryJob::first(&n) {
                let bytes = job_size(&job);
                let max = limits.max_message_bytes;
                if bytes > max {
                    n.content = NotificationContent::RenderFailed {
                        error: format!(
                            "its delivery job would be {bytes} bytes, above the producer's message.max.bytes of {max}"
                        ),
                    };
                }
            }
            self.notifications.push(n);
            self.accepted.push(Accepted::New);
        }
        if self.notifications.len() == start {
            Disposition::Unmatched {
                event_type: event.ty,
            }
        } else {
            Disposition::Notify(start..self.notifications.len())
        }
    }

    /// Record what the store found for `notifications[range]`.
    pub(crate) fn accepted(&mut self, range: Range<usize>, found: Vec<Accepted>) {
        debug_assert_eq!(range.len(), found.len());
        for (slot, a) in self.accepted[range].iter_mut().zip(found) {
            *slot = a;
        }
    }

    /// The first delivery job owed for each notification of `range`: one
    /// for every new rendered notification, and for a known one only if it
    /// was never attempted, carrying the stored request
    /// ([`Accepted::owed`]).
    pub(crate) fn jobs(&self, range: Range<usize>) -> impl Iterator<Item = DeliveryJob> + '_ {
        self.notifications[range.clone()]
            .iter()
            .zip(&self.accepted[range])
            .filter_map(|(n, a)| a.owed(n).map(|owed| owed.job()))
    }
}

/// An input message's size: its value and its headers.
fn message_size(message: &OwnedMessage) -> usize {
    let headers = message.headers().map_or(0, |h| {
        h.iter()
            .map(|h| h.key.len() + h.value.map_or(0, <[u8]>::len))
            .sum()
    });
    message.payload().map_or(0, <[u8]>::len) + headers
}

/// The bytes a delivery job takes on the deliveries topic: its JSON value,
/// its key, and the headers ingest and delivery put on it (counted with
/// [`herald_kafka::HEADROOM_BYTES`]).
fn job_size(job: &DeliveryJob) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    serde_json::to_writer(&mut count, job).expect("a delivery job serializes");
    count.0 + job.key().len() + herald_kafka::HEADROOM_BYTES
}

/// The dead letter of an input message: its value and headers, then why
/// and where from. An oversized one keeps only the first
/// [`OVERSIZED_VALUE_BYTES`] of its value, says how large it was
/// (`herald-original-size`), and keeps its headers only when they are
/// small: whatever the input, the dead letter fits the producer's limit.
pub(crate) fn dead_letter(
    message: &OwnedMessage,
    reason: DeadLetterReason,
    error: &str,
) -> (Option<Vec<u8>>, OwnedHeaders) {
    let value = message.payload();
    let (topic, partition, offset) = (message.topic(), message.partition(), message.offset());
    if reason != DeadLetterReason::Oversized {
        let hdrs = headers::dead_letter(message.headers(), error, topic, partition, offset);
        return (value.map(<[u8]>::to_vec), hdrs);
    }
    let size = message_size(message);
    let kept = message
        .headers()
        .filter(|_| size - value.map_or(0, <[u8]>::len) <= OVERSIZED_HEADERS_BYTES);
    let hdrs = headers::dead_letter(kept, error, topic, partition, offset).insert(Header {
        key: headers::ORIGINAL_SIZE,
        value: Some(&size.to_string()),
    });
    let cut = value.map(|v| v[..v.len().min(OVERSIZED_VALUE_BYTES)].to_vec());
    (cut, hdrs)
}

#[cfg(test)]
mod tests {
    use herald_core::Status;
    use rdkafka::Timestamp;

    use super::*;

    const WEBHOOKS: &str = r#"
[[webhooks]]
id = "crm"
events = ["bank.loan.*"]
url = "https://crm.example.com/loans/{{subject}}"
body = '{"id": {{json id}}, "amount": {{json data.amount}}}'

[[webhooks]]
id = "audit"
events = ["bank.loan.disbursed"]
body_format = "text"
url = "https://audit.example.com/"
body = "loan {{subject}} {{data.missing}}"
"#;

    fn message(offset: i64, headers: Option<OwnedHeaders>, value: &str) -> OwnedMessage {
        OwnedMessage::new(
            Some(value.as_bytes().to_vec()),
            Some(b"LN-1".to_vec()),
            "in".into(),
            Timestamp::NotAvailable,
            3,
            offset,
            headers,
        )
    }

    fn limits() -> Limits {
        Limits {
            max_event_bytes: 2048,
            store: StoreLimits::default(),
            max_message_bytes: herald_kafka::DEFAULT_MAX_MESSAGE_BYTES,
        }
    }

    fn structured(id: &str, ty: &str) -> String {
        format!(
            r#"{{"specversion":"1.0","id":"{id}","source":"/core","type":"{ty}","subject":"LN-1","data":{{"amount":5}}}}"#
        )
    }

    #[test]
    fn every_message_gets_a_disposition_in_order() {
        let webhooks = Webhooks::from_toml(WEBHOOKS).unwrap();
        let binary = OwnedHeaders::new()
            .insert(Header {
                key: "ce_specversion",
                value: Some("1.0"),
            })
            .insert(Header {
                key: "ce_id",
                value: Some("e3"),
            })
            .insert(Header {
                key: "ce_source",
                value: Some("/core"),
            })
            .insert(Header {
                key: "ce_type",
                value: Some("bank.loan.repaid"),
            })
            .insert(Header {
                key: "ce_subject",
                value: Some("LN-2"),
            });
        let messages = vec![
            message(0, None, &structured("e1", "bank.loan.disbursed")),
            message(1, None, "not json"),
            message(2, None, &structured("e2", "bank.client.created")),
            message(3, Some(binary), r#"{"amount": 7}"#),
            message(4, None, &"x".repeat(2049)),
        ];
        let batch = Batch::plan(messages, &webhooks, limits(), Utc::now());
        let d: Vec<_> = batch.planned.iter().map(|p| &p.disposition).collect();
        assert_eq!(d[0], &Disposition::Notify(0..2));
        assert!(matches!(
            d[1],
            Disposition::DeadLetter {
                reason: DeadLetterReason::Undecodable,
                ..
            }
        ));
        assert_eq!(
            d[2],
            &Disposition::Unmatched {
                event_type: "bank.client.created".into()
            }
        );
        assert_eq!(d[3], &Disposition::Notify(2..3));
        assert!(matches!(
            d[4],
            Disposition::DeadLetter {
                reason: DeadLetterReason::Oversized,
                ..
            }
        ));

        // The audit template refers to a missing field: render_failed, no job.
        let n = &batch.notifications;
        assert_eq!(n[1].webhook_id, "audit");
        assert!(n[1].request().is_none());
        let jobs: Vec<_> = batch.jobs(0..2).collect();
        assert_eq!(jobs.len(), 1);
        assert_eq!(jobs[0].key(), "crm/LN-1");
        assert_eq!(jobs[0].request.body, r#"{"id": "e1", "amount": 5}"#);
        assert_eq!(
            batch.jobs(2..3).next().unwrap().request.body,
            r#"{"id": "e3", "amount": 7}"#
        );
        assert_eq!(
            herald_core::NotificationState::initial(&n[1].content).status,
            Status::RenderFailed
        );
    }

    /// Plan one event for the `crm` webhook under `limits`: the render
    /// failure its notification was recorded with, having asserted that no
    /// job is owed for it.
    fn render_failure(limits: Limits) -> String {
        let webhooks = Webhooks::from_toml(WEBHOOKS).unwrap();
        let batch = Batch::plan(
            vec![message(0, None, &structured("e1", "bank.loan.repaid"))],
            &webhooks,
            limits,
            Utc::now(),
        );
        assert_eq!(batch.jobs(0..1).count(), 0);
        match &batch.notifications[0].content {
            NotificationContent::RenderFailed { error } => error.clone(),
            other => panic!("expected render_failed, got {other:?}"),
        }
    }

    #[test]
    fn a_body_the_store_refuses_is_recorded_as_render_failed() {
        let error = render_failure(Limits {
            store: StoreLimits {
                max_request_body_bytes: 10,
                ..StoreLimits::default()
            },
            ..limits()
        });
        assert!(error.contains("above the limit"), "{error}");
    }

    #[test]
    fn dead_letters_keep_the_original_headers_and_say_where_from() {
        let original = OwnedHeaders::new().insert(Header {
            key: "ce_id",
            value: Some("e1"),
        });
        let m = message(42, Some(original), "junk");
        let (value, h) = dead_letter(&m, DeadLetterReason::Undecodable, "bad\nthing");
        assert_eq!(value.as_deref(), Some(&b"junk"[..]), "the value as it came");
        let get = |name| headers::get(Some(&h), name);
        assert_eq!(get("ce_id"), Some("e1"));
        assert_eq!(get(headers::ERROR), Some("bad thing"));
        assert_eq!(get(headers::ORIGIN_TOPIC), Some("in"));
        assert_eq!(get(headers::ORIGIN_PARTITION), Some("3"));
        assert_eq!(get(headers::ORIGIN_OFFSET), Some("42"));
        assert_eq!(get(headers::ORIGINAL_SIZE), None);
    }

    /// Found by reading the code (issue 18): `max_event_bytes` (1 MiB) was
    /// above the producer's 1,000,000 bytes, and an oversized event's dead
    /// letter carried the whole event, so it could never be produced: the
    /// event was dropped and its offset committed. Now the dead letter
    /// keeps the first KiB and the size, and headers count towards the
    /// limit.
    #[test]
    fn an_oversized_event_is_dead_lettered_cut_with_its_size() {
        let webhooks = Webhooks::from_toml(WEBHOOKS).unwrap();
        let big = format!(r#"{{"id": "{}"}}"#, "x".repeat(5000));
        // The value fits; with its headers it does not.
        let fat = OwnedHeaders::new().insert(Header {
            key: "trace",
            value: Some(&"t".repeat(2000)),
        });
        let messages = vec![
            message(0, None, &big),
            message(1, Some(fat), &structured("e1", "bank.loan.disbursed")),
        ];
        let batch = Batch::plan(messages, &webhooks, limits(), Utc::now());
        for (p, size) in batch.planned.iter().zip([big.len(), 0]) {
            let Disposition::DeadLetter { reason, error } = &p.disposition else {
                panic!("{:?}", p.disposition);
            };
            assert_eq!(*reason, DeadLetterReason::Oversized);
            assert!(error.contains("above the limit of 2048 bytes"), "{error}");
            let (value, h) = dead_letter(&p.message, *reason, error);
            let value = value.unwrap();
            assert!(value.len() <= OVERSIZED_VALUE_BYTES);
            assert!(p.message.payload().unwrap().starts_with(&value));
            let original: usize = headers::get(Some(&h), headers::ORIGINAL_SIZE)
                .unwrap()
                .parse()
                .unwrap();
            if size > 0 {
                assert_eq!(original, size);
            }
            assert!(original > 2048);
            let header_bytes: usize = h
                .iter()
                .map(|h| h.key.len() + h.value.map_or(0, <[u8]>::len))
                .sum();
            assert!(
                value.len() + header_bytes < OVERSIZED_VALUE_BYTES + 8 * 1024 + 2048,
                "bounded whatever the input: {header_bytes} bytes of headers"
            );
        }
    }

    #[test]
    fn a_job_kafka_would_refuse_is_recorded_as_render_failed() {
        let error = render_failure(Limits {
            max_message_bytes: herald_kafka::HEADROOM_BYTES + 100,
            ..limits()
        });
        assert!(
            error.contains("above the producer's message.max.bytes"),
            "{error}"
        );
    }
}
