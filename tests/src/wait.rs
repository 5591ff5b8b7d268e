//! Waiting on conditions with deadlines.

use std::fmt::Debug;
use std::future::Future;
use std::time::{Duration, Instant};

/// How often a condition is checked.
pub const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Poll `check` until it returns `Ok`, or panic after `timeout` with `what`
/// and the last `Err` it returned (what was seen instead).
pub async fn until<T, E, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    E: Debug,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let last = match check().await {
            Ok(value) => return value,
            Err(last) => last,
        };
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}; last seen: {last:?}"
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}
