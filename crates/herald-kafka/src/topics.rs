//! Topic names (prefix-aware) and topic creation with partitions and
//! retention from configuration.

use std::time::Duration;

use herald_core::Tiers;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;
use serde::Deserialize;

use crate::KafkaConfig;

/// Herald's topics. Input topics are the core-banking ones and are not
/// prefixed (Herald does not own them).
#[derive(Debug, Clone)]
pub struct Topics {
    prefix: String,
}

impl Topics {
    pub fn new(config: &KafkaConfig) -> Self {
        Self {
            prefix: config.topic_prefix.clone(),
        }
    }

    pub fn deliveries(&self) -> String {
        format!("{}herald.deliveries", self.prefix)
    }

    /// `herald.retry.<tier>`, e.g. `herald.retry.10s`.
    pub fn retry(&self, tier: &str) -> String {
        format!("{}herald.retry.{tier}", self.prefix)
    }

    pub fn resend(&self) -> String {
        format!("{}herald.resend", self.prefix)
    }

    pub fn dead(&self) -> String {
        format!("{}herald.dead", self.prefix)
    }

    pub fn ingest_dlq(&self) -> String {
        format!("{}herald.ingest.dlq", self.prefix)
    }

    /// Circuit-breaker state changes, compacted (key: webhook id): every
    /// delivery worker reads it from the start and follows the others.
    pub fn circuits(&self) -> String {
        format!("{}herald.circuits", self.prefix)
    }

    /// The tier name of a retry topic, if `topic` is one.
    pub fn tier_of<'t>(&self, topic: &'t str) -> Option<&'t str> {
        topic
            .strip_prefix(&self.prefix)?
            .strip_prefix("herald.retry.")
    }
}

/// Partitions, replication and retention of Herald's topics (`[topics]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicSettings {
    /// Partitions of every Herald topic: the most delivery workers that can share the work.
    #[serde(default = "default_partitions")]
    pub partitions: i32,
    #[serde(default = "default_replication")]
    pub replication_factor: i32,
    /// Retention beyond the longest tier, for downtime (retry topics keep
    /// their tier delay plus this).
    #[serde(default = "default_slack_hours")]
    pub retention_slack_hours: u64,
}

fn default_partitions() -> i32 {
    6
}
fn default_replication() -> i32 {
    1
}
fn default_slack_hours() -> u64 {
    72
}

impl Default for TopicSettings {
    fn default() -> Self {
        Self {
            partitions: default_partitions(),
            replication_factor: default_replication(),
            retention_slack_hours: default_slack_hours(),
        }
    }
}

/// Why topics could not be created.
#[derive(Debug, thiserror::Error)]
pub enum TopicError {
    #[error("kafka admin client: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("creating topic {topic}: {code}")]
    Create {
        topic: String,
        code: RDKafkaErrorCode,
    },
}

/// Create every Herald topic that does not exist yet. Returns the names
/// created. Existing topics are left untouched.
pub async fn create_all(
    config: &KafkaConfig,
    settings: &TopicSettings,
    tiers: &Tiers,
) -> Result<Vec<String>, TopicError> {
    let topics = Topics::new(config);
    let slack = Duration::from_secs(settings.retention_slack_hours * 3600);
    let longest = tiers
        .as_slice()
        .iter()
        .map(|t| t.delay)
        .max()
        .unwrap_or_default();
    let ms = |d: Duration| d.as_millis().to_string();
    let mut wanted: Vec<(String, String)> = vec![
        (topics.deliveries(), ms(slack)),
        (topics.resend(), ms(slack)),
        (
            topics.dead(),
            ms(slack.max(Duration::from_secs(30 * 24 * 3600))),
        ),
        (
            topics.ingest_dlq(),
            ms(slack.max(Duration::from_secs(30 * 24 * 3600))),
        ),
    ];
    let retry_topics: Vec<String> = tiers
        .as_slice()
        .iter()
        .map(|t| topics.retry(&t.name))
        .collect();
    for name in &retry_topics {
        // A message stays in its tier at most the tier's delay, then hops
        // (the cascade); the longest tier plus the slack keeps it there
        // through an outage of the delivery service.
        wanted.push((name.clone(), ms(longest + slack)));
    }
    let admin: AdminClient<DefaultClientContext> = config.admin_config().create()?;
    let new: Vec<NewTopic<'_>> = wanted
        .iter()
        .map(|(name, retention)| {
            let topic = NewTopic::new(
                name,
                settings.partitions,
                TopicReplication::Fixed(settings.replication_factor),
            )
            .set("retention.ms", retention);
            if retry_topics.contains(name) {
                // The broker's append time orders a tier partition: its
                // timestamps never go backwards, whichever worker produced.
                topic.set("message.timestamp.type", "LogAppendTime")
            } else {
                topic
            }
        })
        .collect();
    // One partition: the changes of all webhooks in one order, read whole by
    // every worker. Compaction keeps the latest state per webhook for ever.
    let circuits = topics.circuits();
    let mut new = new;
    new.push(
        NewTopic::new(
            &circuits,
            1,
            TopicReplication::Fixed(settings.replication_factor),
        )
        .set("cleanup.policy", "compact"),
    );
    let results = admin.create_topics(&new, &AdminOptions::new()).await?;
    let mut created = Vec::new();
    for r in results {
        match r {
            Ok(name) => created.push(name),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => return Err(TopicError::Create { topic, code }),
        }
    }
    Ok(created)
}
