//! Waiting for a condition with a deadline: tests poll what they can
//! observe instead of sleeping for a guessed time.

use std::time::{Duration, Instant};

/// Poll `f` every 100 ms until it returns `Some`, or panic after `timeout`.
pub async fn eventually<T>(what: &str, timeout: Duration, f: impl AsyncFnMut() -> Option<T>) -> T {
    eventually_every(what, timeout, Duration::from_millis(100), f).await
}

/// Poll `f` every `every` until it returns `Some`, or panic after `timeout`.
pub async fn eventually_every<T>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut f: impl AsyncFnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?}: {what}"
        );
        tokio::time::sleep(every).await;
    }
}
