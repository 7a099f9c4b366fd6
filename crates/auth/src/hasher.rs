//! bcrypt on threads of its own, a bounded number at once, at the lowest
//! CPU priority.
//!
//! A bcrypt check is tens to hundreds of milliseconds of CPU by design. On
//! tokio's blocking pool it would queue beside the store's commits (a
//! guessing burst would delay every phone's 200), and nothing would bound
//! how many run at once. Here a fixed set of threads runs them from a
//! bounded queue: a check that finds the queue full is refused at once
//! ([`Busy`], a 503), never waited for. The threads run under Linux's
//! `SCHED_IDLE` policy: any thread of the pipeline that wakes takes the
//! CPU from them at once. Measured on a 2-core machine, ten checks at cost
//! 10 arriving with a guessing burst raised the phones' p99 about fivefold
//! at normal priority and by well under twice at `SCHED_IDLE`
//! (tests/tests/hostile.rs).
//! A first login waits longer on a machine the pipeline saturates; a
//! phone's later requests are a lookup of its verified header.

use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

/// The pool is at its bound: answer 503 and let the client retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Busy;

type Job = Box<dyn FnOnce() + Send>;

/// The bcrypt threads and their queue; the threads end when it is dropped.
pub struct Hasher {
    jobs: SyncSender<Job>,
    threads: usize,
}

/// Checks waiting per thread before more are refused: at bcrypt's usual
/// cost (10, ~70 ms) about a second's worth, and more than one source's
/// burst of attempts (the limiter's 10).
const QUEUED_PER_THREAD: usize = 16;

impl Hasher {
    /// `threads` bcrypt threads (at least one).
    pub fn new(threads: usize) -> Self {
        let threads = threads.max(1);
        let (jobs, rx) = sync_channel::<Job>(threads * QUEUED_PER_THREAD);
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("otstream-bcrypt-{i}"))
                .spawn(move || {
                    lowest_priority();
                    work(&rx);
                });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start a bcrypt thread");
            }
        }
        Hasher { jobs, threads }
    }

    /// How many checks run at once at most.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Whether `password` matches the bcrypt `hash` (an unusable hash
    /// matches nothing), checked on the pool.
    pub async fn verify(&self, password: String, hash: Arc<str>) -> Result<bool, Busy> {
        self.submit(password, hash)?.await.map_err(|_| Busy)
    }

    /// Queues a check now (or refuses it now: the queue is full); the
    /// answer comes on the receiver.
    pub fn submit(
        &self,
        password: String,
        hash: Arc<str>,
    ) -> Result<oneshot::Receiver<bool>, Busy> {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = tx.send(bcrypt::verify(password, &hash).unwrap_or(false));
        });
        match self.jobs.try_send(job) {
            Ok(()) => Ok(rx),
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => Err(Busy),
        }
    }
}

/// Lowers the calling thread to `SCHED_IDLE` (needs no privilege).
fn lowest_priority() {
    use thread_priority::{
        NormalThreadSchedulePolicy, ThreadPriority, ThreadSchedulePolicy,
        set_thread_priority_and_policy, thread_native_id,
    };
    let lowered = set_thread_priority_and_policy(
        thread_native_id(),
        ThreadPriority::Min,
        ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle),
    );
    if let Err(e) = lowered {
        tracing::warn!(error = ?e, "cannot lower the bcrypt threads' priority; they compete with the pipeline");
    }
}

fn work(rx: &Mutex<Receiver<Job>>) {
    loop {
        // The lock is held only to take a job, not while it runs.
        let job = match rx.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        match job {
            Ok(job) => job(),
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn checks_run_on_the_pool_and_a_full_queue_is_busy() {
        let h = Hasher::new(1);
        let hash: Arc<str> = Arc::from(bcrypt::hash("s3cret", 4).unwrap());
        assert_eq!(h.verify("s3cret".into(), hash.clone()).await, Ok(true));
        assert_eq!(h.verify("nope".into(), hash.clone()).await, Ok(false));
        assert_eq!(
            h.verify("x".into(), Arc::from("not a hash")).await,
            Ok(false)
        );
        // One thread, sixteen queued: of 40 slow checks asked at once, the
        // ones beyond the bound are refused without waiting.
        let slow: Arc<str> = Arc::from(bcrypt::hash("s3cret", 8).unwrap());
        let answers = futures_join(&h, &slow, 40).await;
        let busy = answers.iter().filter(|a| **a == Err(Busy)).count();
        assert!(
            (40 - 1 - QUEUED_PER_THREAD..=40 - QUEUED_PER_THREAD).contains(&busy),
            "{answers:?}"
        );
        assert!(answers.iter().all(|a| *a == Err(Busy) || *a == Ok(true)));
    }

    async fn futures_join(h: &Hasher, hash: &Arc<str>, n: usize) -> Vec<Result<bool, Busy>> {
        // Queued in order before any answer is awaited.
        let pending: Vec<_> = (0..n)
            .map(|_| h.submit("s3cret".into(), hash.clone()))
            .collect();
        let mut out = Vec::new();
        for p in pending {
            out.push(match p {
                Ok(rx) => rx.await.map_err(|_| Busy),
                Err(b) => Err(b),
            });
        }
        out
    }
}
