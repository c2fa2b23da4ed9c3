//! One message's work: a delivery job or a resend command through the
//! [`Pipeline`], with Kafka as its next hops ([`KafkaHops`]); a tier hop; a
//! dead letter. A job returns only when its outcome is durable: the attempt
//! recorded, and the retry or dead-letter message acknowledged by Kafka.
//! Only then may its offset be committed.

use std::sync::Arc;

use async_trait::async_trait;
use herald_core::text::one_line;
use herald_core::{CircuitChange, DeliveryJob, ResendCommand, Tier, Tiers};
use herald_kafka::client::ProducerContext;
use herald_kafka::produce::send_until_acked;
use herald_kafka::{Topics, headers};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureProducer;
use tracing::warn;

use super::circuit;
use crate::Metrics;
use crate::pipeline::{NextHops, Pipeline};

/// What every job needs. Shared by all jobs.
pub(super) struct Shared {
    pub(super) pipeline: Pipeline,
    pub(super) hops: Arc<KafkaHops>,
    /// How far ahead a due time can believably be: the longest wait any
    /// definition may set ([`herald_core::retry::LONGEST_WAIT`]) plus an
    /// hour for clocks, whatever today's definitions say, so shortening a
    /// delay never dead-letters the retries already scheduled with the old
    /// one. A message due later is dead-lettered.
    pub(super) longest_wait: chrono::Duration,
}

impl Shared {
    pub(super) fn new(pipeline: Pipeline, hops: Arc<KafkaHops>) -> Self {
        Self {
            pipeline,
            hops,
            longest_wait: chrono::Duration::from_std(herald_core::retry::LONGEST_WAIT)
                .expect("30 days fit")
                + chrono::Duration::hours(1),
        }
    }

    pub(super) fn metrics(&self) -> &Metrics {
        self.pipeline.metrics()
    }

    pub(super) fn topics(&self) -> &Topics {
        &self.hops.topics
    }

    pub(super) fn tiers(&self) -> &Tiers {
        self.pipeline.tiers()
    }
}

/// Kafka mode's next hops: retries and parked jobs to the delayed-retry
/// tier that fits, exhausted jobs to the dead-letter topic, circuit changes
/// to the compacted circuits topic. Each returns once Kafka acknowledged.
pub(super) struct KafkaHops {
    pub(super) producer: FutureProducer<ProducerContext>,
    pub(super) topics: Topics,
    metrics: Metrics,
}

impl KafkaHops {
    pub(super) fn new(
        producer: FutureProducer<ProducerContext>,
        topics: Topics,
        metrics: Metrics,
    ) -> Self {
        Self {
            producer,
            topics,
            metrics,
        }
    }
}

#[async_trait]
impl NextHops for KafkaHops {
    async fn schedule(&self, job: DeliveryJob, tier: &Tier) {
        publish_job(self, &self.topics.retry(&tier.name), &job, None).await;
    }

    async fn exhausted(&self, job: DeliveryJob, reason: &str) {
        publish_job(self, &self.topics.dead(), &job, Some(reason)).await;
    }

    async fn share_circuits(&self, changes: Vec<CircuitChange>) {
        let topic = self.topics.circuits();
        for change in &changes {
            circuit::publish(&self.producer, &topic, change).await;
        }
    }
}

/// A decoded message.
#[derive(Debug)]
pub(super) enum Work {
    Deliver {
        job: Box<DeliveryJob>,
        /// The partition's previous owner may have done it already: check the
        /// store before sending.
        maybe_done: bool,
    },
    Resend(ResendCommand),
    /// A retry-tier message whose time in its tier is over: republished
    /// unchanged (payload, key and headers) to `topic`.
    Hop {
        from_tier: String,
        topic: String,
        key: Option<Vec<u8>>,
        payload: Vec<u8>,
        headers: OwnedHeaders,
    },
    /// Undecodable: dead-lettered as is, with the reason.
    Invalid {
        topic: String,
        partition: i32,
        offset: i64,
        key: Option<Vec<u8>>,
        payload: Vec<u8>,
        headers: Option<OwnedHeaders>,
        error: String,
    },
}

/// Do the work; returns once its outcome is durable.
pub(super) async fn execute(shared: Arc<Shared>, work: Work) {
    match work {
        Work::Deliver { job, maybe_done } => shared.pipeline.deliver(&job, maybe_done).await,
        Work::Resend(cmd) => shared.pipeline.resend(&cmd, None).await,
        Work::Hop {
            from_tier,
            topic,
            key,
            payload,
            headers,
        } => {
            publish(&shared.hops, &topic, key.as_deref(), &payload, headers).await;
            shared
                .metrics()
                .tier_hops
                .with_label_values(&[&from_tier])
                .inc();
        }
        Work::Invalid {
            topic,
            partition,
            offset,
            key,
            payload,
            headers: original,
            error,
        } => {
            shared.metrics().invalid.with_label_values(&[&topic]).inc();
            warn!(%topic, partition, offset, %error, "undecodable message dead-lettered");
            let hdrs = headers::dead_letter(original.as_ref(), &error, &topic, partition, offset);
            let dead = shared.topics().dead();
            publish(&shared.hops, &dead, key.as_deref(), &payload, hdrs).await;
        }
    }
}

/// Publish a job with its scheduling headers (and `herald-error` for the
/// dead-letter topic).
async fn publish_job(hops: &KafkaHops, topic: &str, job: &DeliveryJob, reason: Option<&str>) {
    let payload = serde_json::to_vec(job).expect("a delivery job always encodes");
    let mut hdrs = OwnedHeaders::new()
        .insert(header(
            headers::DUE_AT,
            &job.due_at.timestamp_millis().to_string(),
        ))
        .insert(header(headers::ATTEMPT, &job.attempt.to_string()));
    if let Some(first) = job.first_failure_at {
        hdrs = hdrs.insert(header(
            headers::FIRST_FAILURE_AT,
            &first.timestamp_millis().to_string(),
        ));
    }
    if let Some(e) = &job.last_error {
        let e = one_line(e, headers::MAX_ERROR_BYTES);
        hdrs = hdrs.insert(header(headers::LAST_ERROR, &e));
    }
    if let Some(r) = reason {
        hdrs = hdrs.insert(header(
            headers::ERROR,
            &one_line(r, headers::MAX_ERROR_BYTES),
        ));
    }
    publish(hops, topic, Some(job.key().as_bytes()), &payload, hdrs).await;
}

/// Publish and wait for Kafka's acknowledgement, retrying until it comes.
async fn publish(
    hops: &KafkaHops,
    topic: &str,
    key: Option<&[u8]>,
    payload: &[u8],
    headers: OwnedHeaders,
) {
    send_until_acked(&hops.producer, topic, key, payload, Some(headers), |e| {
        hops.metrics
            .retried_ops
            .with_label_values(&["publish"])
            .inc();
        warn!(error = %e, %topic, "publish failed; retrying");
    })
    .await;
}

fn header<'a>(key: &'a str, value: &'a str) -> Header<'a, &'a str> {
    Header {
        key,
        value: Some(value),
    }
}
