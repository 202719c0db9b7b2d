//! Waiting for the cluster: the conformance groups that drive API objects, and the perf suite's Service,
//! poll until a condition holds.

use std::future::Future;
use std::time::{Duration, Instant};

use super::runner::CheckError;

const POLL: Duration = Duration::from_millis(if cfg!(test) { 50 } else { 250 });

/// Polls `probe` until it yields a value; a Fail naming `what` after `deadline`.
pub(super) async fn until<T, F, Fut>(what: &str, deadline: Duration, mut probe: F) -> Result<T, CheckError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>, CheckError>>,
{
    let started = Instant::now();
    loop {
        if let Some(v) = probe().await? {
            return Ok(v);
        }
        if started.elapsed() > deadline {
            return Err(CheckError::Fail(format!("{what}: not within {} s", deadline.as_secs())));
        }
        tokio::time::sleep(POLL).await;
    }
}
