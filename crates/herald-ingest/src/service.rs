//! The running service: start-up, the batch loop, store writes with
//! backoff, produce with acknowledgements, commits and graceful shutdown.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use futures::StreamExt;
use futures::stream::FuturesOrdered;
use herald_core::{Accepted, NotificationContent, NotificationState, Webhooks};
use herald_kafka::{Topics, headers};
use herald_ops::{Backoff, Health};
use herald_store::cql::CqlStore;
use herald_store::{NotificationStore, StoreError};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;
use rdkafka::{Offset, TopicPartitionList};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::AbortOnDropHandle;
use tracing::{debug, error, info, warn};

use crate::batch::{Batch, Disposition, Limits, dead_letter};
use crate::kafka::IngestConsumerContext;
use crate::metrics::{DeadLetterReason, Metrics};
use crate::{IngestConfig, IngestError, Result};
use herald_kafka::client::ProducerContext;

/// How long to wait before polling again after a consumer error.
const CONSUMER_ERROR_PAUSE: Duration = Duration::from_millis(100);
/// How long to wait for room when librdkafka's producer queue is full.
const QUEUE_FULL_PAUSE: Duration = Duration::from_millis(10);

/// Run the ingest service until `shutdown` fires: then stop consuming,
/// finish the batches in flight, commit, flush the producer and return.
///
/// `webhooks` are the parsed definitions of `config.webhooks`.
pub async fn run(
    config: IngestConfig,
    webhooks: Webhooks,
    shutdown: CancellationToken,
) -> Result<()> {
    start(config, webhooks, shutdown).await?.wait().await
}

/// Connect everything and start the HTTP endpoints, without consuming yet:
/// [`IngestService::wait`] runs the pipeline. Retries the store connection while
/// its errors are retriable (until `shutdown`).
pub async fn start(
    mut config: IngestConfig,
    webhooks: Webhooks,
    shutdown: CancellationToken,
) -> Result<IngestService> {
    for warning in config.deprecations() {
        warn!("{warning}");
    }
    config.validate()?;
    let config = Arc::new(config);
    let metrics = Metrics::new();
    let health = Arc::new(Health::default());

    let listener =
        TcpListener::bind(config.listen)
            .await
            .map_err(|source| IngestError::Listen {
                addr: config.listen,
                source,
            })?;
    let addr = listener
        .local_addr()
        .map_err(|source| IngestError::Listen {
            addr: config.listen,
            source,
        })?;
    // The endpoints stop with the service, also when its future is dropped
    // (the guard lives in `IngestService`).
    let server_stop = shutdown.child_token();
    let render = metrics.clone();
    let server = tokio::spawn(herald_ops::serve(
        listener,
        herald_ops::Limits::default(),
        herald_ops::endpoints(move || render.render(), health.clone()),
        server_stop.clone(),
    ));
    let server_guard = server_stop.drop_guard();
    info!(%addr, "ingest endpoints listening");

    let store = connect_store(&config, &shutdown, &metrics).await?;
    metrics.watch_store(store.clone());

    let producer: FutureProducer<ProducerContext> = config
        .kafka
        .producer_config()
        .create_with_context(ProducerContext)?;
    let mut consumer_config = config.kafka.consumer_config(&config.group_id);
    if !config.stats_interval.is_zero() {
        consumer_config.set(
            "statistics.interval.ms",
            config.stats_interval.as_millis().to_string(),
        );
    }
    let consumer: StreamConsumer<IngestConsumerContext> =
        consumer_config.create_with_context(IngestConsumerContext {
            metrics: metrics.clone(),
        })?;
    let topics: Vec<&str> = config.input_topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics)?;
    info!(topics = ?config.input_topics, group = %config.group_id, "ingest subscribed");

    let kafka_topics = Topics::new(&config.kafka);
    Ok(IngestService {
        addr,
        metrics: metrics.clone(),
        shutdown,
        server,
        _server_guard: server_guard,
        pipeline: Pipeline {
            limits: Limits {
                max_event_bytes: config.max_event_bytes,
                store: config.store_limits,
                max_message_bytes: config.kafka.max_message_bytes(),
            },
            deliveries: kafka_topics.deliveries(),
            dead_letters: kafka_topics.ingest_dlq(),
            config,
            webhooks: Arc::new(webhooks),
            store,
            consumer: Arc::new(consumer),
            producer,
            metrics,
            health,
        },
    })
}

async fn connect_store(
    config: &IngestConfig,
    shutdown: &CancellationToken,
    metrics: &Metrics,
) -> Result<Arc<dyn NotificationStore>> {
    let mut backoff = Backoff::new(config.retry_initial, config.retry_max);
    loop {
        match CqlStore::connect(&config.cql, config.store_limits).await {
            Ok(store) => return Ok(Arc::new(store)),
            Err(e) if e.is_retriable() => {
                let delay = backoff.next_delay();
                metrics.store_failed(true, Some(delay), &e.to_string());
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => return Err(e.into()),
                    _ = tokio::time::sleep(delay) => {}
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// A started ingest service.
pub struct IngestService {
    addr: SocketAddr,
    metrics: Metrics,
    shutdown: CancellationToken,
    server: JoinHandle<()>,
    _server_guard: DropGuard,
    pipeline: Pipeline,
}

impl IngestService {
    /// Where the endpoints listen (the real port when configured with port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Consume until the shutdown token fires, then shut down gracefully.
    /// Dropping this future instead stops at once, committing nothing more:
    /// what was not committed is consumed again by the next owner.
    pub async fn wait(self) -> Result<()> {
        let IngestService {
            shutdown,
            server,
            _server_guard,
            pipeline,
            ..
        } = self;
        let result = Arc::new(pipeline).run(&shutdown).await;
        drop(_server_guard);
        let _ = server.await;
        result
    }
}

/// Whether a batch was finished or given up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BatchEnd {
    Done,
    /// The shutdown grace period ran out: nothing more of it is committed.
    Abandoned,
}

/// A store append that did not succeed.
enum AppendError {
    Abandoned,
    /// The store refuses these notifications for good: the input, not the
    /// store, is at fault.
    Rejected(StoreError),
}

/// One message to produce, kept so it can be produced again.
struct Outgoing {
    topic: String,
    key: Option<Vec<u8>>,
    payload: Option<Vec<u8>>,
    headers: Option<OwnedHeaders>,
    kind: &'static str,
}

struct Pipeline {
    config: Arc<IngestConfig>,
    webhooks: Arc<Webhooks>,
    limits: Limits,
    deliveries: String,
    dead_letters: String,
    store: Arc<dyn NotificationStore>,
    consumer: Arc<StreamConsumer<IngestConsumerContext>>,
    producer: FutureProducer<ProducerContext>,
    metrics: Metrics,
    health: Arc<Health>,
}

impl Pipeline {
    /// Three stages, so that a batch is rendered and stored while the one
    /// before it is produced and committed:
    /// - the batcher reads the next batch from the consumer;
    /// - up to `batches_in_flight` batches are planned and appended to the
    ///   store at once, each in its own task;
    /// - in input order, each stored batch's jobs and dead letters are
    ///   produced and acknowledged, and its offsets committed. A batch is
    ///   never committed before the ones read ahead of it.
    async fn run(self: Arc<Self>, shutdown: &CancellationToken) -> Result<()> {
        // Fires `shutdown_grace` after `shutdown`: the batches in flight
        // then stop waiting for the store or the broker.
        let abandon = CancellationToken::new();
        let _grace = AbortOnDropHandle::new(tokio::spawn({
            let (shutdown, abandon) = (shutdown.clone(), abandon.clone());
            let grace = self.config.drain_timeout;
            async move {
                shutdown.cancelled().await;
                tokio::time::sleep(grace).await;
                abandon.cancel();
            }
        }));
        self.health.set_ready(true);
        let (batches, mut read) = mpsc::channel::<Vec<OwnedMessage>>(1);
        let batcher = async {
            let batches = batches;
            while !shutdown.is_cancelled() {
                let messages = self.next_batch(shutdown).await;
                if !messages.is_empty() && batches.send(messages).await.is_err() {
                    break;
                }
            }
        };
        let committer = async {
            // Dropping a handle aborts its task: when this stage stops, no
            // later batch goes on being stored.
            let mut stored = FuturesOrdered::new();
            let mut reading = true;
            let end = loop {
                tokio::select! {
                    biased;
                    Some(done) = stored.next(), if !stored.is_empty() => {
                        let batch = match done {
                            Ok(Some(batch)) => batch,
                            Ok(None) => break BatchEnd::Abandoned,
                            Err(e) => {
                                let e: tokio::task::JoinError = e;
                                match e.try_into_panic() {
                                    Ok(panic) => std::panic::resume_unwind(panic),
                                    Err(_) => break BatchEnd::Abandoned,
                                }
                            }
                        };
                        if self.finish(batch, &abandon).await == BatchEnd::Abandoned {
                            break BatchEnd::Abandoned;
                        }
                    }
                    messages = read.recv(), if reading && stored.len() < self.config.batches_in_flight => {
                        match messages {
                            Some(messages) => stored.push_back(AbortOnDropHandle::new(
                                tokio::spawn(self.clone().store(messages, abandon.clone())),
                            )),
                            None => reading = false,
                        }
                    }
                    else => break BatchEnd::Done,
                }
            };
            // The batcher may wait to hand over a batch: let it go.
            read.close();
            end
        };
        let ((), end) = tokio::join!(batcher, committer);
        if end == BatchEnd::Abandoned {
            warn!("shutdown grace elapsed: the batches in flight are left uncommitted");
        }
        self.health.set_ready(false);
        info!("ingest stopping: committing and flushing");
        self.final_commit().await;
        self.flush().await;
        info!("ingest stopped");
        Ok(())
    }

    /// Up to `batch_max_events` messages: waits for the first, then at most
    /// `batch_max_wait` for more. Empty on shutdown or a consumer error.
    async fn next_batch(&self, shutdown: &CancellationToken) -> Vec<OwnedMessage> {
        let mut batch = Vec::new();
        let first = tokio::select! {
            biased;
            _ = shutdown.cancelled() => return batch,
            m = self.consumer.recv() => m,
        };
        match first {
            Ok(m) => batch.push(m.detach()),
            Err(e) => {
                warn!(error = %e, "consumer error");
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => {}
                    _ = tokio::time::sleep(CONSUMER_ERROR_PAUSE) => {}
                }
                return batch;
            }
        }
        let deadline = tokio::time::Instant::now() + self.config.batch_max_wait;
        while batch.len() < self.config.batch_max_events {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep_until(deadline) => break,
                m = self.consumer.recv() => match m {
                    Ok(m) => batch.push(m.detach()),
                    Err(e) => {
                        warn!(error = %e, "consumer error");
                        break;
                    }
                },
            }
        }
        batch
    }

    /// Plan a batch and append its notifications; `None` when abandoned.
    async fn store(
        self: Arc<Self>,
        messages: Vec<OwnedMessage>,
        abandon: CancellationToken,
    ) -> Option<Batch> {
        let mut batch = Batch::plan(messages, &self.webhooks, self.limits, Utc::now());
        if !batch.notifications.is_empty() {
            match self.append(&batch.notifications, &abandon).await {
                Ok(found) => batch.accepted(0..batch.notifications.len(), found),
                Err(AppendError::Abandoned) => return None,
                Err(AppendError::Rejected(e)) => {
                    debug!(error = %e, "store rejected the batch: appending event by event");
                    if self.append_each(&mut batch, &abandon).await == BatchEnd::Abandoned {
                        return None;
                    }
                }
            }
        }
        Some(batch)
    }

    /// Produce a stored batch's jobs and dead letters, then commit it.
    async fn finish(&self, batch: Batch, abandon: &CancellationToken) -> BatchEnd {
        let outgoing = self.outgoing(&batch);
        if self.produce_all(outgoing, abandon).await == BatchEnd::Abandoned {
            return BatchEnd::Abandoned;
        }
        self.commit(&batch);
        self.count(&batch);
        self.metrics.batch_done(batch.planned.len());
        self.health.set_ready(true);
        BatchEnd::Done
    }

    /// Append, retrying every failure that is not the input's fault:
    /// transient ones and also permanent store faults (schema, auth), which
    /// an operator fixes while the partition waits rather than having every
    /// event dead-lettered.
    async fn append(
        &self,
        notifications: &[herald_core::Notification],
        abandon: &CancellationToken,
    ) -> std::result::Result<Vec<Accepted>, AppendError> {
        let mut backoff = self.backoff();
        loop {
            let started = Instant::now();
            let result = tokio::select! {
                biased;
                _ = abandon.cancelled() => return Err(AppendError::Abandoned),
                r = self.append_once(notifications) => r,
            };
            match result {
                Ok(found) => {
                    self.metrics.store_written(started.elapsed());
                    return Ok(found);
                }
                Err(e) if e.is_input_fault() => return Err(AppendError::Rejected(e)),
                Err(e) => {
                    let delay = backoff.next_delay();
                    self.metrics
                        .store_failed(e.is_retriable(), Some(delay), &e.to_string());
                    if !e.is_retriable() {
                        error!(error = %e, "store refuses writes: an operator must act");
                    }
                    self.health.set_ready(false);
                    tokio::select! {
                        biased;
                        _ = abandon.cancelled() => return Err(AppendError::Abandoned),
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    /// One attempt: the notifications split into `store_write_parallelism`
    /// concurrent appends.
    async fn append_once(
        &self,
        notifications: &[herald_core::Notification],
    ) -> std::result::Result<Vec<Accepted>, StoreError> {
        let chunk = notifications
            .len()
            .div_ceil(self.config.store_write_parallelism)
            .max(1);
        let parts = futures::future::try_join_all(
            notifications
                .chunks(chunk)
                .map(|c| self.store.append_notifications(c)),
        )
        .await?;
        Ok(parts.into_iter().flatten().collect())
    }

    /// After the store rejected a batch: append each event's notifications
    /// on its own, and dead-letter the events the store rejects.
    async fn append_each(&self, batch: &mut Batch, abandon: &CancellationToken) -> BatchEnd {
        for i in 0..batch.planned.len() {
            let Disposition::Notify(range) = &batch.planned[i].disposition else {
                continue;
            };
            let range = range.clone();
            let p = &mut batch.planned[i];
            match self
                .append(&batch.notifications[range.clone()], abandon)
                .await
            {
                Ok(found) => batch.accepted(range, found),
                Err(AppendError::Abandoned) => return BatchEnd::Abandoned,
                Err(AppendError::Rejected(e)) => {
                    p.disposition = Disposition::DeadLetter {
                        reason: DeadLetterReason::StoreRejected,
                        error: format!("store rejected the notifications: {e}"),
                    };
                }
            }
        }
        BatchEnd::Done
    }

    /// Jobs and dead letters, in input order.
    fn outgoing(&self, batch: &Batch) -> Vec<Outgoing> {
        let mut out = Vec::with_capacity(batch.notifications.len());
        for p in &batch.planned {
            match &p.disposition {
                Disposition::Notify(range) => {
                    for job in batch.jobs(range.clone()) {
                        let due = job.due_at.timestamp_millis().to_string();
                        let headers = OwnedHeaders::new()
                            .insert(Header {
                                key: headers::ATTEMPT,
                                value: Some("1"),
                            })
                            .insert(Header {
                                key: headers::DUE_AT,
                                value: Some(&due),
                            });
                        out.push(Outgoing {
                            topic: self.deliveries.clone(),
                            key: Some(job.key().into_bytes()),
                            payload: Some(
                                serde_json::to_vec(&job).expect("a delivery job serializes"),
                            ),
                            headers: Some(headers),
                            kind: "job",
                        });
                    }
                }
                Disposition::DeadLetter { reason, error } => {
                    let (payload, headers) = dead_letter(&p.message, *reason, error);
                    out.push(Outgoing {
                        topic: self.dead_letters.clone(),
                        key: p.message.key().map(<[u8]>::to_vec),
                        payload,
                        headers: Some(headers),
                        kind: "dead_letter",
                    });
                }
                Disposition::Unmatched { .. } => {}
            }
        }
        out
    }

    /// Produce everything and wait for every acknowledgement. What
    /// librdkafka gives up on (after `message.timeout.ms`) is produced again
    /// with backoff; a message the broker can never take is dropped loudly.
    async fn produce_all(
        &self,
        mut pending: Vec<Outgoing>,
        abandon: &CancellationToken,
    ) -> BatchEnd {
        let mut backoff = self.backoff();
        loop {
            let failed = tokio::select! {
                biased;
                _ = abandon.cancelled() => return BatchEnd::Abandoned,
                failed = self.produce_round(pending) => failed,
            };
            if failed.is_empty() {
                return BatchEnd::Done;
            }
            self.health.set_ready(false);
            tokio::select! {
                biased;
                _ = abandon.cancelled() => return BatchEnd::Abandoned,
                _ = tokio::time::sleep(backoff.next_delay()) => {}
            }
            pending = failed;
        }
    }

    /// One round: enqueue in order (keeps per-key order), then await every
    /// acknowledgement. Returns what must be produced again.
    async fn produce_round(&self, records: Vec<Outgoing>) -> Vec<Outgoing> {
        let mut acks = Vec::with_capacity(records.len());
        let mut retry = Vec::new();
        for (i, r) in records.iter().enumerate() {
            loop {
                let mut record = FutureRecord::<[u8], [u8]>::to(&r.topic);
                if let Some(key) = &r.key {
                    record = record.key(key.as_slice());
                }
                if let Some(payload) = &r.payload {
                    record = record.payload(payload.as_slice());
                }
                if let Some(headers) = &r.headers {
                    record = record.headers(headers.clone());
                }
                match self.producer.send_result(record) {
                    Ok(ack) => {
                        let started = Instant::now();
                        acks.push(async move { (i, started, ack.await) });
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                        tokio::time::sleep(QUEUE_FULL_PAUSE).await;
                    }
                    Err((e, _)) => {
                        self.produce_error(r, &e, &mut retry, i);
                        break;
                    }
                }
            }
        }
        for (i, started, ack) in futures::future::join_all(acks).await {
            match ack {
                Ok(Ok(_)) => self.metrics.produced(records[i].kind, started.elapsed()),
                Ok(Err((e, _))) => self.produce_error(&records[i], &e, &mut retry, i),
                Err(_canceled) => retry.push(i),
            }
        }
        retry.sort_unstable();
        let mut records: Vec<Option<Outgoing>> = records.into_iter().map(Some).collect();
        retry
            .into_iter()
            .filter_map(|i| records[i].take())
            .collect()
    }

    fn produce_error(&self, r: &Outgoing, e: &KafkaError, retry: &mut Vec<usize>, i: usize) {
        let permanent = matches!(
            e.rdkafka_error_code(),
            Some(RDKafkaErrorCode::MessageSizeTooLarge | RDKafkaErrorCode::InvalidMessageSize)
        );
        if permanent {
            // Never retried: it would stall the partition for good. The
            // notification is stored; an operator can resend it.
            error!(
                kind = r.kind,
                topic = %r.topic,
                error = %e,
                "message can never be produced: dropped"
            );
            return;
        }
        self.metrics
            .produce_failed(r.kind, &r.topic, &e.to_string());
        retry.push(i);
    }

    /// Store the next offset of every partition of the batch and commit
    /// asynchronously (the next batch's commit covers a lost one; the final
    /// commit on shutdown is synchronous).
    fn commit(&self, batch: &Batch) {
        let mut next: HashMap<(&str, i32), i64> = HashMap::new();
        for p in &batch.planned {
            let m = &p.message;
            let entry = next.entry((m.topic(), m.partition())).or_insert(0);
            *entry = (*entry).max(m.offset() + 1);
        }
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), offset) in next {
            // `rd_kafka_offsets_store` stores the offsets as given (the
            // single-offset `store_offset` would add one).
            if let Err(e) = tpl.add_partition_offset(topic, partition, Offset::Offset(offset)) {
                warn!(topic, partition, offset, error = %e, "bad offset");
            }
        }
        if let Err(e) = self.consumer.store_offsets(&tpl) {
            // A partition was revoked meanwhile: its new owner consumes again
            // from the last commit (at least once).
            debug!(error = %e, "offsets not stored");
        }
        match self.consumer.commit_consumer_state(CommitMode::Async) {
            Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(e) => warn!(error = %e, "commit failed; the next one covers it"),
        }
    }

    async fn final_commit(&self) {
        let consumer = self.consumer.clone();
        let result =
            tokio::task::spawn_blocking(move || consumer.commit_consumer_state(CommitMode::Sync))
                .await;
        match result {
            Ok(Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset))) => {}
            Ok(Err(e)) => warn!(error = %e, "final commit failed"),
            Err(e) => warn!(error = %e, "final commit panicked"),
        }
    }

    async fn flush(&self) {
        let producer = self.producer.clone();
        let grace = self.config.drain_timeout;
        let result =
            tokio::task::spawn_blocking(move || producer.flush(Timeout::After(grace))).await;
        if let Ok(Err(e)) = result {
            warn!(error = %e, "producer flush incomplete");
        }
    }

    /// Metrics and logs for a durable batch.
    fn count(&self, batch: &Batch) {
        for p in &batch.planned {
            match &p.disposition {
                Disposition::Notify(range) => {
                    self.metrics.event_matched(range.len());
                    let found = &batch.accepted[range.clone()];
                    for (n, a) in batch.notifications[range.clone()].iter().zip(found) {
                        if matches!(a, Accepted::Existing { .. }) {
                            self.metrics.notification_stored(&n.webhook_id, "known");
                            continue;
                        }
                        let status = NotificationState::initial(&n.content).status;
                        self.metrics
                            .notification_stored(&n.webhook_id, status.as_str());
                        if let NotificationContent::RenderFailed { error } = &n.content {
                            self.metrics
                                .render_failed(&n.webhook_id, &n.event_id, error);
                        }
                    }
                }
                Disposition::Unmatched { event_type } => self.metrics.event_unmatched(event_type),
                Disposition::DeadLetter { reason, error } => self.metrics.event_dead_lettered(
                    *reason,
                    p.message.topic(),
                    p.message.partition(),
                    p.message.offset(),
                    error,
                ),
            }
        }
    }

    fn backoff(&self) -> Backoff {
        Backoff::new(self.config.retry_initial, self.config.retry_max)
    }
}
