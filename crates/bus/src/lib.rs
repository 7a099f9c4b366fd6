//! The link between stages.
//!
//! A stage sends [`Message`]s (a device key, a value, an [`Ack`]) through a
//! [`Sender`] and receives them from a [`Receiver`]. The same stage code runs
//! over the in-process [`channel`] inside `otstream serve` and over Kafka
//! topics when stages are separate processes: keys keep one device's
//! messages in order, and acknowledgements travel with the data.
//!
//! Guarantees:
//! - **Bounded.** Every channel has a capacity. A sender with a deadline
//!   (the ingress) waits at most that long for room and then gets
//!   [`BusError::Overloaded`], which the ingress turns into HTTP 503; a
//!   sender without one (an inner stage) waits, which is how backpressure
//!   travels from the store back to the phone.
//! - **Acknowledged end to end.** Whoever holds an [`Ack`] either marks it
//!   [`Ack::delivered`] once the value (or everything derived from it) is
//!   durable, or drops it, which means "not delivered". Clones of one ack
//!   (one per derived record) resolve its [`AckWaiter`] only when all of them
//!   are settled: `Delivered` if every clone was delivered, `Failed` if any
//!   was not. The ingress answers 200 only on `Delivered`.
//!
//! Layout:
//! - [`ack`]: [`Ack`], [`AckWaiter`], [`AckStatus`].
//! - [`inproc`]: the bounded in-process channel.
//! - `kafka`: topics between processes (rdkafka), feature `kafka`.
//! - [`stage`]: [`Stage`], the one trait every unit of the topology has.

pub mod ack;
pub mod inproc;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod stage;

use std::future::Future;

pub use ack::{Ack, AckStatus, AckWaiter};
pub use inproc::{InProcReceiver, InProcSender, channel};
pub use stage::{NoStep, Stage, Step, StepEnd};

/// One record on the bus.
#[derive(Debug)]
pub struct Message<T> {
    /// The device identity, `user/device`: the partitioning key.
    pub key: String,
    /// The record.
    pub value: T,
    /// Settled once the record is durable downstream.
    pub ack: Ack,
}

impl<T> Message<T> {
    /// A message carrying `ack`.
    pub fn new(key: impl Into<String>, value: T, ack: Ack) -> Self {
        Self {
            key: key.into(),
            value,
            ack,
        }
    }
}

/// Why a send did not happen. The message (and so its ack) is dropped:
/// nothing was delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BusError {
    /// No room within the sender's deadline: the pipeline is behind.
    #[error("the bus is full: downstream is behind")]
    Overloaded,
    /// The receiving side is gone (shutting down).
    #[error("the bus is closed")]
    Closed,
}

impl BusError {
    /// A bounded code for metric labels.
    pub fn code(self) -> &'static str {
        match self {
            BusError::Overloaded => "overloaded",
            BusError::Closed => "closed",
        }
    }
}

/// The sending half of a link between stages.
pub trait Sender<T>: Clone + Send + Sync + 'static {
    /// Hands a message to the bus: returns once the bus has taken it (the
    /// value's durability is reported through its [`Ack`]).
    fn send(&self, msg: Message<T>) -> impl Future<Output = Result<(), BusError>> + Send;

    /// Hands messages to the bus in their order: returns once the bus has
    /// taken them all. On an error the ones not yet taken are dropped (and
    /// so their acks, which then say "not delivered"). A stage that makes
    /// records in batches sends them this way: the in-process bus takes a
    /// batch's room at once instead of a message at a time.
    fn send_all(&self, msgs: Vec<Message<T>>) -> impl Future<Output = Result<(), BusError>> + Send
    where
        T: Send,
    {
        async move {
            for m in msgs {
                self.send(m).await?;
            }
            Ok(())
        }
    }

    /// Messages waiting to be received, for the bus depth gauge.
    fn depth(&self) -> usize;
}

/// The receiving half of a link between stages.
pub trait Receiver<T>: Send + 'static {
    /// Appends up to `limit` waiting messages to `buf`, waiting for at least
    /// one; returns 0 once every sender is gone and nothing is left.
    /// Cancel safe: a future dropped before it is ready has taken nothing
    /// (the sink polls one once to take only what is already waiting).
    fn recv_many(
        &mut self,
        buf: &mut Vec<Message<T>>,
        limit: usize,
    ) -> impl Future<Output = usize> + Send;
}

/// A receiver that gives `first` before anything from `rest`: how a stage
/// is handed what it must know before its input (the geofence stage's
/// stored device state), the same way over every bus. Over Kafka the
/// receiver's assign hook does this per partition.
pub struct Prepended<T, R> {
    first: std::vec::IntoIter<Message<T>>,
    rest: R,
}

impl<T, R> Prepended<T, R> {
    /// `first`, in order, then `rest`.
    pub fn new(first: Vec<Message<T>>, rest: R) -> Self {
        Prepended {
            first: first.into_iter(),
            rest,
        }
    }
}

impl<T: Send + 'static, R: Receiver<T>> Receiver<T> for Prepended<T, R> {
    async fn recv_many(&mut self, buf: &mut Vec<Message<T>>, limit: usize) -> usize {
        if self.first.len() == 0 {
            return self.rest.recv_many(buf, limit).await;
        }
        let before = buf.len();
        buf.extend(self.first.by_ref().take(limit.max(1)));
        buf.len() - before
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn prepended_gives_its_own_first_then_the_rest_until_it_ends() {
        let (tx, rx) = channel::<u32>(4);
        tx.send(Message::new("a/b", 3, Ack::none())).await.unwrap();
        drop(tx);
        let first = [1, 2].map(|v| Message::new("a/b", v, Ack::none())).into();
        let mut rx = Prepended::new(first, rx);
        let mut buf = Vec::new();
        assert_eq!(rx.recv_many(&mut buf, 1).await, 1);
        assert_eq!(rx.recv_many(&mut buf, 8).await, 1);
        assert_eq!(rx.recv_many(&mut buf, 8).await, 1);
        assert_eq!(rx.recv_many(&mut buf, 8).await, 0);
        assert_eq!(buf.iter().map(|m| m.value).collect::<Vec<_>>(), [1, 2, 3]);
    }
}
