//! Herald's domain: pure types and rules shared by every service. No I/O.

pub mod model;

pub use model::{
    Attempt, DeliveryJob, HeaderValue, Method, Notification, NotificationContent, NotificationId,
    NotificationState, Outcome, RenderedHeader, RenderedRequest, Status, Trigger,
};
