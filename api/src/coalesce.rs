//! Concurrent requests of one kind, served together: group commit for HTTP calls.
//!
//! Under load the cost of a factory call is mostly per statement and per round trip
//! (portal start-up, protocol, commit), not per row (docs/performance.md). A
//! [`Coalescer`] queues each request; a few runners each take everything queued (up
//! to a bound) and serve it with one set-based call — one statement for many token
//! lookups, one statement for many reports. An idle runner serves a lone request at
//! once, so a quiet server adds no wait; under load a batch forms while the previous
//! one runs, the way PostgreSQL's group commit shares one WAL flush.
//!
//! Each caller gets its own output; a batch's failure is each member's failure. The
//! runners hold nothing of the caller's state between batches (inputs carry what
//! they need), so they end when the coalescer is dropped.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, Mutex};

struct Pending<I, O> {
    input: I,
    reply: oneshot::Sender<O>,
}

/// Serves requests `I` in batches with one function `Vec<I> → Vec<O>` (an output
/// per input, in order).
pub struct Coalescer<I, O> {
    queue: mpsc::UnboundedSender<Pending<I, O>>,
    /// Batches served so far.
    batches: Arc<AtomicU64>,
}

/// Why a coalesced call has no output.
#[derive(Debug, thiserror::Error)]
pub enum CoalesceError {
    /// The batch's function panicked or answered fewer outputs than inputs.
    #[error("the batch this request ran in failed")]
    BatchFailed,
    /// The runners are gone (the runtime is shutting down).
    #[error("the coalescer's runners are gone")]
    Stopped,
}

impl<I: Send + 'static, O: Send + 'static> Coalescer<I, O> {
    /// Starts `runners` tasks (batches run at most that many at once), each serving
    /// up to `max_batch` queued requests per call of `serve`. Needs a Tokio runtime.
    pub fn start<F, Fut>(name: &'static str, runners: usize, max_batch: usize, serve: F) -> Self
    where
        F: Fn(Vec<I>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Vec<O>> + Send + 'static,
    {
        let (queue, rx) = mpsc::unbounded_channel::<Pending<I, O>>();
        let rx = Arc::new(Mutex::new(rx));
        let serve = Arc::new(serve);
        let batches = Arc::new(AtomicU64::new(0));
        for _ in 0..runners.max(1) {
            let rx = rx.clone();
            let serve = serve.clone();
            let served_batches = batches.clone();
            tokio::spawn(async move {
                loop {
                    // One runner at a time waits for the queue and takes what it holds.
                    let batch = {
                        let mut rx = rx.lock().await;
                        let Some(first) = rx.recv().await else {
                            return;
                        };
                        // Let the tasks that are ready run first (requests being
                        // parsed and authenticated): what they queue joins this batch.
                        // A yield, not a wait: alone, a call costs microseconds more.
                        // (Measured: one yield took the drain from 4.7 to 5.6-5.9
                        // claims per transaction and 0.38-0.43x to 0.51-0.52x
                        // graphile-worker; yielding up to 4 times while calls kept
                        // coming made larger batches but no faster drain.)
                        tokio::task::yield_now().await;
                        let mut batch = vec![first];
                        while batch.len() < max_batch {
                            match rx.try_recv() {
                                Ok(p) => batch.push(p),
                                Err(_) => break,
                            }
                        }
                        batch
                    };
                    // A caller gone before its batch began (its client disconnected)
                    // is not served: as a request cancelled before it reached the
                    // database. (A claim served for no one would hold a lease until
                    // it expired.)
                    let batch: Vec<Pending<I, O>> =
                        batch.into_iter().filter(|p| !p.reply.is_closed()).collect();
                    if batch.is_empty() {
                        continue;
                    }
                    metrics::histogram!("gigafactory_coalesced_batch_size", "kind" => name)
                        .record(batch.len() as f64);
                    served_batches.fetch_add(1, Ordering::Relaxed);
                    let (inputs, replies): (Vec<I>, Vec<oneshot::Sender<O>>) =
                        batch.into_iter().map(|p| (p.input, p.reply)).unzip();
                    // Its own task: a panic fails this batch (its callers see
                    // `BatchFailed`), not the runner.
                    let served = tokio::spawn(serve(inputs)).await;
                    match served {
                        Ok(outputs) => {
                            for (reply, output) in replies.into_iter().zip(outputs) {
                                // The caller may have gone (client disconnected).
                                let _ = reply.send(output);
                            }
                        }
                        Err(e) => {
                            tracing::error!(kind = name, error = %e, "a coalesced batch failed")
                        }
                    }
                }
            });
        }
        Self { queue, batches }
    }

    /// How many batches have been served (begun) so far: what the requests cost in
    /// set-based calls, for tests and diagnostics.
    pub fn batches(&self) -> u64 {
        self.batches.load(Ordering::Relaxed)
    }

    /// Queues `input` and waits for its output.
    pub async fn call(&self, input: I) -> Result<O, CoalesceError> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Pending { input, reply })
            .map_err(|_| CoalesceError::Stopped)?;
        answer.await.map_err(|_| CoalesceError::BatchFailed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    #[tokio::test]
    async fn concurrent_calls_share_batches_and_each_gets_its_own_output() {
        let batches = Arc::new(AtomicUsize::new(0));
        let counted = batches.clone();
        let doubler = Arc::new(Coalescer::start("test", 1, 100, move |xs: Vec<u32>| {
            counted.fetch_add(1, Ordering::SeqCst);
            async move {
                // Slow enough that the other callers queue behind the first batch.
                tokio::time::sleep(Duration::from_millis(20)).await;
                xs.into_iter().map(|x| x * 2).collect()
            }
        }));
        let calls: Vec<_> = (0..50u32)
            .map(|x| {
                let c = doubler.clone();
                tokio::spawn(async move { (x, c.call(x).await.unwrap()) })
            })
            .collect();
        for call in calls {
            let (x, doubled) = call.await.unwrap();
            assert_eq!(doubled, 2 * x);
        }
        let n = batches.load(Ordering::SeqCst);
        assert!(n < 50 && n >= 1, "50 concurrent calls ran in {n} batches");
        assert_eq!(
            doubler.batches(),
            n as u64,
            "the coalescer counts what it served"
        );
    }

    #[tokio::test]
    async fn a_batch_holds_at_most_its_bound() {
        let biggest = Arc::new(AtomicUsize::new(0));
        let seen = biggest.clone();
        let c = Arc::new(Coalescer::start("test", 2, 3, move |xs: Vec<u32>| {
            seen.fetch_max(xs.len(), Ordering::SeqCst);
            async move { xs }
        }));
        let calls: Vec<_> = (0..20u32)
            .map(|x| {
                let c = c.clone();
                tokio::spawn(async move { c.call(x).await.unwrap() })
            })
            .collect();
        for (x, call) in calls.into_iter().enumerate() {
            assert_eq!(call.await.unwrap(), x as u32);
        }
        assert!(biggest.load(Ordering::SeqCst) <= 3);
    }

    #[tokio::test]
    async fn a_caller_gone_before_its_batch_began_is_not_served() {
        let served = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = served.clone();
        let c = Arc::new(Coalescer::start("test", 1, 10, move |xs: Vec<u32>| {
            seen.lock().unwrap().extend(xs.iter().copied());
            async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                xs
            }
        }));
        let first = tokio::spawn({
            let c = c.clone();
            async move { c.call(1).await.unwrap() }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        // Queued behind the first batch, then abandoned.
        let gone = tokio::spawn({
            let c = c.clone();
            async move { c.call(2).await.unwrap() }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        gone.abort();
        let third = tokio::spawn({
            let c = c.clone();
            async move { c.call(3).await.unwrap() }
        });
        assert_eq!(first.await.unwrap(), 1);
        assert_eq!(third.await.unwrap(), 3);
        assert_eq!(*served.lock().unwrap(), vec![1, 3]);
    }

    #[tokio::test]
    async fn a_panicking_batch_fails_its_callers_and_the_next_batch_runs() {
        let c = Coalescer::start("test", 1, 10, |xs: Vec<u32>| async move {
            assert!(xs[0] != 0, "zero");
            xs
        });
        assert!(matches!(c.call(0).await, Err(CoalesceError::BatchFailed)));
        assert_eq!(c.call(7).await.unwrap(), 7);
    }

    #[tokio::test]
    async fn runners_end_when_the_coalescer_is_dropped() {
        let alive = Arc::new(());
        let held = alive.clone();
        let c = Coalescer::start("test", 3, 10, move |xs: Vec<u32>| {
            let _held = &held;
            async move { xs }
        });
        assert_eq!(c.call(1).await.unwrap(), 1);
        drop(c);
        for _ in 0..100 {
            if Arc::strong_count(&alive) == 1 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("the runners still hold the serving function");
    }
}
