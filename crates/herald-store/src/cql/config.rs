//! Connecting and migrating: the adapter's configuration, the schema in
//! `schemas/cql/` and the session.

use super::*;
/// `schemas/cql/001_keyspace.cql`.
pub const KEYSPACE_CQL: &str = include_str!("../../../../schemas/cql/001_keyspace.cql");
/// `schemas/cql/002_tables.cql`.
pub const TABLES_CQL: &str = include_str!("../../../../schemas/cql/002_tables.cql");
/// `schemas/cql/optional_compaction.cql`: not part of [`migrate`].
pub const OPTIONAL_COMPACTION_CQL: &str =
    include_str!("../../../../schemas/cql/optional_compaction.cql");

/// A CQL consistency level, as written in configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConsistencyLevel {
    One,
    Two,
    Three,
    Quorum,
    All,
    LocalQuorum,
    EachQuorum,
    LocalOne,
}

impl From<ConsistencyLevel> for Consistency {
    fn from(c: ConsistencyLevel) -> Self {
        match c {
            ConsistencyLevel::One => Consistency::One,
            ConsistencyLevel::Two => Consistency::Two,
            ConsistencyLevel::Three => Consistency::Three,
            ConsistencyLevel::Quorum => Consistency::Quorum,
            ConsistencyLevel::All => Consistency::All,
            ConsistencyLevel::LocalQuorum => Consistency::LocalQuorum,
            ConsistencyLevel::EachQuorum => Consistency::EachQuorum,
            ConsistencyLevel::LocalOne => Consistency::LocalOne,
        }
    }
}

/// Username and password authentication.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CqlAuth {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for CqlAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CqlAuth")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// How to reach the cluster. TLS is not supported yet (TODO: the driver's
/// `rustls-023` feature and a `tls` section here).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CqlConfig {
    /// `host:port` of one or more nodes; the driver discovers the rest.
    pub contact_points: Vec<String>,
    /// Keyspace holding Herald's tables.
    pub keyspace: String,
    /// Datacenter to route requests to; `None` lets the driver use any.
    #[serde(default)]
    pub local_dc: Option<String>,
    /// Consistency of reads.
    #[serde(default = "local_quorum")]
    pub read_consistency: ConsistencyLevel,
    /// Consistency of writes. An append returns once this level acknowledged.
    #[serde(default = "local_quorum")]
    pub write_consistency: ConsistencyLevel,
    /// Credentials, when the cluster requires authentication.
    #[serde(default)]
    pub auth: Option<CqlAuth>,
    /// Client-side timeout of one request.
    #[serde(
        default = "default_request_timeout",
        with = "herald_core::duration::text"
    )]
    pub request_timeout: Duration,
    /// Timeout of establishing a connection.
    #[serde(
        default = "default_connect_timeout",
        with = "herald_core::duration::text"
    )]
    pub connect_timeout: Duration,
    /// Deprecated spellings, in milliseconds, of the two timeouts; still
    /// read, with a warning at start ([`CqlConfig::deprecations`]).
    #[doc(hidden)]
    #[serde(default)]
    pub request_timeout_ms: Option<u64>,
    #[doc(hidden)]
    #[serde(default)]
    pub connect_timeout_ms: Option<u64>,
}

fn local_quorum() -> ConsistencyLevel {
    ConsistencyLevel::LocalQuorum
}
fn default_request_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}

impl CqlConfig {
    /// Defaults (LOCAL_QUORUM, no auth, any DC) for `contact_points` and `keyspace`.
    pub fn new(contact_points: Vec<String>, keyspace: impl Into<String>) -> Self {
        Self {
            contact_points,
            keyspace: keyspace.into(),
            local_dc: None,
            read_consistency: local_quorum(),
            write_consistency: local_quorum(),
            auth: None,
            request_timeout: default_request_timeout(),
            connect_timeout: default_connect_timeout(),
            request_timeout_ms: None,
            connect_timeout_ms: None,
        }
    }

    /// Fold the deprecated millisecond keys into the timeouts; one warning
    /// per key used. `section` names where this configuration sits
    /// (`delivery.cql`).
    pub fn deprecations(&mut self, section: &str) -> Vec<String> {
        let fold = herald_core::duration::fold_deprecated_ms;
        [
            fold(
                section,
                "request_timeout",
                &mut self.request_timeout,
                &mut self.request_timeout_ms,
            ),
            fold(
                section,
                "connect_timeout",
                &mut self.connect_timeout,
                &mut self.connect_timeout_ms,
            ),
        ]
        .into_iter()
        .flatten()
        .collect()
    }
}

/// Replication of the keyspace, rendered into the CQL replication map.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "class", rename_all = "snake_case", deny_unknown_fields)]
pub enum Replication {
    /// `SimpleStrategy`: development and single-DC test clusters only.
    Simple { replication_factor: u32 },
    /// `NetworkTopologyStrategy`: replicas per datacenter, for production.
    NetworkTopology { datacenters: BTreeMap<String, u32> },
}

impl Replication {
    /// The CQL map literal, e.g. `{'class': 'SimpleStrategy', 'replication_factor': 1}`.
    pub fn to_cql(&self) -> Result<String> {
        match self {
            Replication::Simple { replication_factor } => Ok(format!(
                "{{'class': 'SimpleStrategy', 'replication_factor': {replication_factor}}}"
            )),
            Replication::NetworkTopology { datacenters } => {
                if datacenters.is_empty() {
                    return Err(StoreError::Invalid(
                        "network topology replication needs at least one datacenter".into(),
                    ));
                }
                let mut out = String::from("{'class': 'NetworkTopologyStrategy'");
                for (dc, rf) in datacenters {
                    if dc.is_empty() || dc.contains(['\'', '\n', ';']) {
                        return Err(StoreError::Invalid(format!("bad datacenter name {dc:?}")));
                    }
                    out.push_str(&format!(", '{dc}': {rf}"));
                }
                out.push('}');
                Ok(out)
            }
        }
    }
}

pub(super) fn check_keyspace(keyspace: &str) -> Result<()> {
    let ok = (1..=48).contains(&keyspace.len())
        && keyspace.starts_with(|c: char| c.is_ascii_alphabetic())
        && keyspace
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!(
            "keyspace {keyspace:?} must be 1 to 48 of [a-z0-9_], starting with a letter"
        )))
    }
}

/// Split a schema file into statements: drop `--` comments, split on `;`,
/// then substitute `${keyspace}` and `${replication}`. Comments go first so
/// that substituted values can never be taken for comments or separators.
pub(super) fn statements(file: &str, keyspace: &str, replication: &str) -> Vec<String> {
    let stripped: String = file
        .lines()
        .map(|l| l.split_once("--").map_or(l, |(code, _)| code))
        .collect::<Vec<_>>()
        .join("\n");
    stripped
        .split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.replace("${keyspace}", keyspace)
                .replace("${replication}", replication)
        })
        .collect()
}

/// The statements [`migrate`] runs, in order: the keyspace, then the tables.
pub fn schema_statements(keyspace: &str, replication: &Replication) -> Result<Vec<String>> {
    check_keyspace(keyspace)?;
    let replication = replication.to_cql()?;
    let mut out = statements(KEYSPACE_CQL, keyspace, &replication);
    out.extend(statements(TABLES_CQL, keyspace, &replication));
    Ok(out)
}

/// Create the keyspace and tables if they do not exist (idempotent). The
/// driver waits for schema agreement after each statement.
pub async fn migrate(session: &Session, keyspace: &str, replication: &Replication) -> Result<()> {
    for stmt in schema_statements(keyspace, replication)? {
        session.query_unpaged(stmt, ()).await?;
    }
    Ok(())
}

/// Apply `schemas/cql/optional_compaction.cql` (LeveledCompactionStrategy on
/// the overwritten tables). Not part of [`migrate`]: clusters differ.
pub async fn apply_optional_compaction(session: &Session, keyspace: &str) -> Result<()> {
    check_keyspace(keyspace)?;
    for stmt in statements(OPTIONAL_COMPACTION_CQL, keyspace, "") {
        session.query_unpaged(stmt, ()).await?;
    }
    Ok(())
}

/// Open a driver session to the cluster described by `config` (the keyspace
/// need not exist yet: statements name it explicitly).
pub async fn connect_session(config: &CqlConfig) -> Result<Session> {
    let mut policy = DefaultPolicy::builder().token_aware(true);
    if let Some(dc) = &config.local_dc {
        policy = policy
            .prefer_datacenter(dc.clone())
            .permit_dc_failover(false);
    }
    let profile = ExecutionProfile::builder()
        .consistency(config.read_consistency.into())
        .request_timeout(Some(config.request_timeout))
        .load_balancing_policy(policy.build())
        .build();
    let mut builder = SessionBuilder::new()
        .known_nodes(&config.contact_points)
        .connection_timeout(config.connect_timeout)
        .default_execution_profile_handle(profile.into_handle());
    if let Some(auth) = &config.auth {
        builder = builder.user(&auth.username, &auth.password);
    }
    Ok(builder.build().await?)
}
