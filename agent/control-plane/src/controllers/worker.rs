//! What every queue-driven loop shares: workers taking keys from the queue, and the periodic resync that
//! queues every object again (a reconcile a lost event or a failed write left undone happens then).

use std::future::Future;
use std::time::Duration;

use super::cache::key_of;
use super::queue::Queue;
use crate::client::Object;

/// How often every object is reconciled even without a change (client-go's resync period).
const RESYNC: Duration = Duration::from_secs(30);

/// Keys reconciled at once by one loop (distinct keys; one key is never reconciled twice at once).
const WORKERS: usize = 2;

/// Queues every object `all` answers, every [`RESYNC`], for good.
pub async fn resync<T: Object>(queue: &Queue, all: impl Fn() -> Vec<T>) {
    loop {
        tokio::time::sleep(RESYNC).await;
        for object in all() {
            queue.add(&key_of(&object));
        }
    }
}

/// Reconciles the keys of `queue` with `sync` for good; a failed key comes back after its retry delay.
pub async fn work<F, Fut, E>(queue: &Queue, sync: F)
where
    F: Fn(String) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let worker = || async {
        loop {
            let key = queue.next().await;
            match sync(key.clone()).await {
                Ok(()) => queue.forget(&key),
                Err(e) => {
                    tracing::warn!(key, error = %e, "reconcile failed; retrying");
                    queue.retry(&key);
                }
            }
            queue.done(&key);
        }
    };
    futures::future::join_all((0..WORKERS).map(|_| worker())).await;
}
