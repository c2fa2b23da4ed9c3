//! Herald's domain: pure types and rules shared by every service. No I/O:
//! callers pass in file contents, secrets (through [`SecretSource`]), the
//! current time and randomness.

pub mod circuit;
pub mod duration;
pub mod event;
pub mod model;
pub mod pipeline;
pub mod render;
pub mod retry;
pub mod secret;
pub mod signing;
pub mod text;
pub mod webhook;

pub use circuit::{Admission, CircuitChange, CircuitConfig, CircuitState, Circuits};
pub use event::{CloudEvent, EventData, EventError};
pub use model::{
    Attempt, DeliveryJob, HeaderValue, Method, Notification, NotificationContent, NotificationId,
    NotificationState, Outcome, RenderedHeader, RenderedRequest, ResendCommand, Status, Trigger,
};
pub use pipeline::{Accepted, History, Owed, SkipReason, Verdict};
pub use render::{BodyFormat, RenderError};
pub use retry::{AttemptReport, Decision, ExhaustedReason, RetryPolicy, Tier, TierStep, Tiers};
pub use secret::{SecretError, SecretRef, SecretSource, SecretValue};
pub use signing::{SignatureHeaders, SigningError, SigningSecret};
pub use webhook::{DefinitionError, DefinitionErrors, TlsMaterial, Webhook, Webhooks};
