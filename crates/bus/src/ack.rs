//! Acknowledgements that travel with the data.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use tokio::sync::oneshot;

/// How a message ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckStatus {
    /// Durable downstream: the sender may tell its client so.
    Delivered,
    /// Not delivered (dropped, refused or failed): the client must retry.
    Failed,
}

/// Who hears how a message ended.
enum Notify {
    /// A sender awaiting the [`AckWaiter`].
    Waiter(oneshot::Sender<AckStatus>),
    /// A function called where the last clone settles (see
    /// [`Ack::on_settle`]).
    Call(Box<dyn FnOnce(AckStatus) + Send + Sync>),
}

struct Shared {
    failed: AtomicBool,
    notify: Option<Notify>,
    /// The acks this one settles (see [`Ack::join`]).
    parts: Vec<Ack>,
}

impl Drop for Shared {
    // The last clone is gone: every holder has settled.
    fn drop(&mut self) {
        let failed = *self.failed.get_mut();
        for part in self.parts.drain(..) {
            if failed {
                part.fail();
            } else {
                part.delivered();
            }
        }
        let status = if failed {
            AckStatus::Failed
        } else {
            AckStatus::Delivered
        };
        match self.notify.take() {
            // Nobody waiting (the client gave up) is fine.
            Some(Notify::Waiter(tx)) => drop(tx.send(status)),
            Some(Notify::Call(f)) => f(status),
            None => {}
        }
    }
}

/// A handle on one message's delivery. Clone it into every record derived
/// from the message; settle each clone with [`Ack::delivered`] once that
/// record is durable. Dropping a clone unsettled marks the message failed.
pub struct Ack {
    shared: Option<Arc<Shared>>,
    settled: bool,
}

impl Ack {
    /// A new ack and the waiter its sender awaits.
    pub fn new() -> (Ack, AckWaiter) {
        let (tx, rx) = oneshot::channel();
        let shared = Arc::new(Shared {
            failed: AtomicBool::new(false),
            notify: Some(Notify::Waiter(tx)),
            parts: Vec::new(),
        });
        (
            Ack {
                shared: Some(shared),
                settled: false,
            },
            AckWaiter(rx),
        )
    }

    /// An ack that calls `settled` with the outcome, on the thread where
    /// its last clone settles, instead of waking a waiter: for a consumer
    /// that books each message it hands out (a Kafka receiver), one call
    /// rather than a oneshot channel and a task per message. `settled`
    /// should be quick and must not block on the stages downstream.
    pub fn on_settle(settled: impl FnOnce(AckStatus) + Send + Sync + 'static) -> Ack {
        Ack {
            shared: Some(Arc::new(Shared {
                failed: AtomicBool::new(false),
                notify: Some(Notify::Call(Box::new(settled))),
                parts: Vec::new(),
            })),
            settled: false,
        }
    }

    /// One ack standing for several: settling it settles every part the
    /// same way (delivered, or failed). A record that accounts for several
    /// inputs (one state snapshot after a device's many fixes) carries it,
    /// so that none of them is acknowledged before the record is durable.
    pub fn join(parts: Vec<Ack>) -> Ack {
        Ack {
            shared: Some(Arc::new(Shared {
                failed: AtomicBool::new(false),
                notify: None,
                parts,
            })),
            settled: false,
        }
    }

    /// An ack nobody waits for (replays, tools).
    pub fn none() -> Ack {
        Ack {
            shared: None,
            settled: false,
        }
    }

    /// This part of the message is durable.
    pub fn delivered(mut self) {
        self.settled = true;
    }

    /// This part of the message could not be delivered.
    pub fn fail(self) {
        // Dropping unsettled marks the failure.
        drop(self);
    }
}

impl Clone for Ack {
    fn clone(&self) -> Self {
        Ack {
            shared: self.shared.clone(),
            settled: false,
        }
    }
}

impl Drop for Ack {
    fn drop(&mut self) {
        if !self.settled {
            if let Some(s) = &self.shared {
                s.failed.store(true, Ordering::Release);
            }
        }
    }
}

impl std::fmt::Debug for Ack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ack")
            .field("waited_on", &self.shared.is_some())
            .finish()
    }
}

/// Resolves once every clone of its [`Ack`] has settled.
pub struct AckWaiter(oneshot::Receiver<AckStatus>);

impl Future for AckWaiter {
    type Output = AckStatus;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<AckStatus> {
        Pin::new(&mut self.0)
            .poll(cx)
            .map(|r| r.unwrap_or(AckStatus::Failed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn delivered_only_when_every_clone_is_delivered() {
        let (ack, waiter) = Ack::new();
        let parts = [ack.clone(), ack.clone()];
        ack.delivered();
        let [a, b] = parts;
        a.delivered();
        b.delivered();
        assert_eq!(waiter.await, AckStatus::Delivered);
    }

    #[tokio::test]
    async fn one_dropped_clone_fails_the_message() {
        let (ack, waiter) = Ack::new();
        let part = ack.clone();
        ack.delivered();
        drop(part);
        assert_eq!(waiter.await, AckStatus::Failed);
    }

    #[test]
    fn on_settle_is_called_once_with_the_outcome_when_the_last_clone_settles() {
        use std::sync::Mutex;
        let heard = Arc::new(Mutex::new(Vec::new()));
        for fail_one in [false, true] {
            let h = heard.clone();
            let ack = Ack::on_settle(move |s| h.lock().unwrap().push(s));
            let part = ack.clone();
            ack.delivered();
            assert!(
                heard.lock().unwrap().len() == usize::from(fail_one),
                "a clone is unsettled"
            );
            if fail_one {
                part.fail();
            } else {
                part.delivered();
            }
        }
        assert_eq!(
            *heard.lock().unwrap(),
            [AckStatus::Delivered, AckStatus::Failed]
        );
    }

    #[tokio::test]
    async fn a_joined_ack_settles_every_part_its_way() {
        let (a, wa) = Ack::new();
        let (b, wb) = Ack::new();
        let joined = Ack::join(vec![a, b.clone()]);
        let held = joined.clone();
        joined.delivered();
        let mut wb = wb;
        assert!(
            futures_poll_once(&mut wb).is_none(),
            "a clone of the join is unsettled"
        );
        held.delivered();
        b.delivered();
        assert_eq!(
            (wa.await, wb.await),
            (AckStatus::Delivered, AckStatus::Delivered)
        );

        let (a, wa) = Ack::new();
        let (b, wb) = Ack::new();
        Ack::join(vec![a, b]).fail();
        assert_eq!((wa.await, wb.await), (AckStatus::Failed, AckStatus::Failed));
    }

    #[tokio::test]
    async fn explicit_failure_and_plain_drop_fail() {
        let (ack, waiter) = Ack::new();
        ack.fail();
        assert_eq!(waiter.await, AckStatus::Failed);
        let (ack, waiter) = Ack::new();
        drop(ack);
        assert_eq!(waiter.await, AckStatus::Failed);
    }

    #[tokio::test]
    async fn waiter_is_pending_while_a_clone_is_held() {
        let (ack, mut waiter) = Ack::new();
        let held = ack.clone();
        ack.delivered();
        let pending = futures_poll_once(&mut waiter);
        assert!(pending.is_none());
        held.delivered();
        assert_eq!(waiter.await, AckStatus::Delivered);
    }

    fn futures_poll_once(w: &mut AckWaiter) -> Option<AckStatus> {
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        match Pin::new(w).poll(&mut cx) {
            Poll::Ready(s) => Some(s),
            Poll::Pending => None,
        }
    }
}
