//! The in-process bus: one bounded FIFO channel per link, so one device's
//! records stay in order (there is one partition).

use std::time::Duration;

use tokio::sync::mpsc;

use crate::{BusError, Message, Receiver, Sender};

/// A bounded in-process link of `capacity` messages.
pub fn channel<T: Send + 'static>(capacity: usize) -> (InProcSender<T>, InProcReceiver<T>) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    (
        InProcSender {
            tx,
            send_timeout: None,
        },
        InProcReceiver { rx },
    )
}

/// Sending half of an in-process link.
pub struct InProcSender<T> {
    tx: mpsc::Sender<Message<T>>,
    send_timeout: Option<Duration>,
}

impl<T> Clone for InProcSender<T> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
            send_timeout: self.send_timeout,
        }
    }
}

impl<T> InProcSender<T> {
    /// Waits at most `timeout` for room, then fails with
    /// [`BusError::Overloaded`]. Without it, a send waits for room.
    pub fn with_send_timeout(mut self, timeout: Duration) -> Self {
        self.send_timeout = Some(timeout);
        self
    }

    /// Sends from a thread outside the runtime (a file reader), waiting
    /// for room. Panics if called from within an async context.
    pub fn blocking_send(&self, msg: Message<T>) -> Result<(), BusError> {
        self.tx.blocking_send(msg).map_err(|_| BusError::Closed)
    }
}

impl<T: Send + 'static> Sender<T> for InProcSender<T> {
    async fn send(&self, msg: Message<T>) -> Result<(), BusError> {
        match self.send_timeout {
            Some(t) => self.tx.send_timeout(msg, t).await.map_err(|e| match e {
                mpsc::error::SendTimeoutError::Timeout(_) => BusError::Overloaded,
                mpsc::error::SendTimeoutError::Closed(_) => BusError::Closed,
            }),
            None => self.tx.send(msg).await.map_err(|_| BusError::Closed),
        }
    }

    async fn send_all(&self, msgs: Vec<Message<T>>) -> Result<(), BusError> {
        let mut msgs = msgs.into_iter();
        while msgs.len() > 0 {
            // Room for as much of the rest as the link can ever hold, taken
            // in one acquisition of the channel's semaphore.
            let want = msgs.len().min(self.tx.max_capacity());
            let reserved = match self.send_timeout {
                Some(t) => tokio::time::timeout(t, self.tx.reserve_many(want))
                    .await
                    .map_err(|_| BusError::Overloaded)?,
                None => self.tx.reserve_many(want).await,
            };
            let permits = reserved.map_err(|_| BusError::Closed)?;
            for (permit, m) in permits.zip(&mut msgs) {
                permit.send(m);
            }
        }
        Ok(())
    }

    fn depth(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }
}

/// Receiving half of an in-process link.
pub struct InProcReceiver<T> {
    rx: mpsc::Receiver<Message<T>>,
}

impl<T: Send + 'static> Receiver<T> for InProcReceiver<T> {
    async fn recv_many(&mut self, buf: &mut Vec<Message<T>>, limit: usize) -> usize {
        self.rx.recv_many(buf, limit.max(1)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Ack, AckStatus};

    #[tokio::test(start_paused = true)]
    async fn full_channel_overloads_after_the_deadline_and_fails_the_ack() {
        let (tx, mut rx) = channel::<u32>(1);
        let tx = tx.with_send_timeout(Duration::from_millis(200));
        tx.send(Message::new("a/b", 1, Ack::none())).await.unwrap();
        assert_eq!(tx.depth(), 1);
        let (ack, waiter) = Ack::new();
        let started = tokio::time::Instant::now();
        assert_eq!(
            tx.send(Message::new("a/b", 2, ack)).await,
            Err(BusError::Overloaded)
        );
        assert_eq!(started.elapsed(), Duration::from_millis(200));
        assert_eq!(waiter.await, AckStatus::Failed);
        let mut buf = Vec::new();
        assert_eq!(rx.recv_many(&mut buf, 10).await, 1);
        assert_eq!(buf[0].value, 1);
    }

    #[tokio::test]
    async fn order_is_kept_and_close_is_seen() {
        let (tx, mut rx) = channel::<u32>(8);
        for i in 0..5 {
            tx.send(Message::new("k", i, Ack::none())).await.unwrap();
        }
        drop(tx);
        let mut buf = Vec::new();
        while rx.recv_many(&mut buf, 2).await > 0 {}
        assert_eq!(
            buf.iter().map(|m| m.value).collect::<Vec<_>>(),
            [0, 1, 2, 3, 4]
        );
        assert_eq!(rx.recv_many(&mut buf, 2).await, 0);
    }

    #[tokio::test]
    async fn send_all_keeps_the_order_across_more_than_the_capacity() {
        let (tx, mut rx) = channel::<u32>(3);
        let sending = tokio::spawn(async move {
            let msgs = (0..8).map(|i| Message::new("k", i, Ack::none())).collect();
            tx.send_all(msgs).await
        });
        let mut buf = Vec::new();
        while rx.recv_many(&mut buf, 2).await > 0 {}
        assert_eq!(sending.await.unwrap(), Ok(()));
        assert_eq!(
            buf.iter().map(|m| m.value).collect::<Vec<_>>(),
            [0, 1, 2, 3, 4, 5, 6, 7]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn send_all_overloads_after_the_deadline_and_fails_the_acks_not_taken() {
        let (tx, _rx) = channel::<u32>(2);
        let tx = tx.with_send_timeout(Duration::from_millis(200));
        let mut waiters = Vec::new();
        let msgs = (0..3)
            .map(|i| {
                let (ack, w) = Ack::new();
                waiters.push(w);
                Message::new("k", i, ack)
            })
            .collect();
        assert_eq!(tx.send_all(msgs).await, Err(BusError::Overloaded));
        // Two were taken (their acks wait on the receiver); the third was
        // dropped with its ack.
        assert_eq!(tx.depth(), 2);
        assert_eq!(waiters.pop().unwrap().await, AckStatus::Failed);
    }

    #[tokio::test]
    async fn sending_to_a_closed_link_fails() {
        let (tx, rx) = channel::<u32>(1);
        drop(rx);
        assert_eq!(
            tx.send(Message::new("k", 1, Ack::none())).await,
            Err(BusError::Closed)
        );
    }
}
