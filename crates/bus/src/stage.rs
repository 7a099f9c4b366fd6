//! The one shape of every unit of the topology: a value built from its
//! configuration, run with an input, an output and a shutdown signal.
//!
//! A stage reads a [`Receiver`](crate::Receiver) and writes a
//! [`Sender`](crate::Sender); the ingress has no input (the world is its
//! input) and the sink no output (the store is). A side job (retention,
//! street addresses, event delivery, the buffer's shipper) has neither and
//! takes `()` for both. A stage that reads several topics takes them as
//! one merged input: a Kafka consumer of all of them, or in one process the
//! link its upstream stage forwards everything onto.
//!
//! `shutdown` means "stop now": a stage with an input also ends by itself,
//! once it has drained, when its input closes (how the in-process links
//! stop in order); a side job ends only on it. Either way a stage leaves
//! nothing it acknowledged undone: what it did not finish stays
//! unacknowledged and comes again.

use std::future::Future;

use tokio_util::sync::CancellationToken;

/// A unit of the topology, run once.
pub trait Stage<I, O>: Send + Sized + 'static {
    /// Why it ended early (its own typed error).
    type Error: std::error::Error + Send + Sync + 'static;

    /// Runs until its input closes (stages) or until `shutdown` (side
    /// jobs, and any stage told to stop where it is).
    fn run(
        self,
        input: I,
        output: O,
        shutdown: CancellationToken,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;
}

/// What a stage does to its batches before its own work, defined by
/// another crate: the sink runs the outgoing step (places, events queued
/// for delivery) this way, in its own task, so that a step costs no link
/// of its own.
pub trait Step<T>: Send + Sync + 'static {
    /// As records arrive, beside the stage's previous batch: CPU work only.
    fn arrived(&self, batch: &mut [crate::Message<T>]);

    /// Whether [`Step::before`] may wait on I/O (the stage then settles
    /// what it finished before, rather than make it wait too).
    fn waits(&self) -> bool;

    /// Just before the batch's own work: may add records (carrying the
    /// acks of those they come from) and makes durable what it promises,
    /// retrying until it is done or until `shutdown`.
    fn before(
        &self,
        batch: &mut Vec<crate::Message<T>>,
        shutdown: &CancellationToken,
    ) -> impl Future<Output = Result<(), StepEnd>> + Send;
}

/// Why a [`Step`] did not finish; either way the batch stays
/// unacknowledged, so its senders retry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepEnd {
    /// `shutdown` was cancelled.
    Stopped,
    /// It failed for good (a thread panicked: a bug).
    Failed(String),
}

/// No step.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoStep;

impl<T: Send + 'static> Step<T> for NoStep {
    fn arrived(&self, _: &mut [crate::Message<T>]) {}

    fn waits(&self) -> bool {
        false
    }

    async fn before(
        &self,
        _: &mut Vec<crate::Message<T>>,
        _: &CancellationToken,
    ) -> Result<(), StepEnd> {
        Ok(())
    }
}
