//! A connection's queue of channel events: one per connection, whatever the number of its
//! subscriptions, bounded in events.
//!
//! The node pushes each event of a channel into the outbox of every subscriber (an
//! `Arc` each: the event itself is shared, and framed once for all). A channel therefore
//! costs one map entry per subscriber, not a preallocated ring: memory follows the events
//! actually waiting, and a quiet channel costs almost nothing.
//!
//! An outbox that is full when an event arrives is a slow consumer: the event is dropped,
//! the outbox says so on its next [`Outbox::try_recv`] (as [`Error::is_lagged`]), and the
//! connection layer closes the connection so that the client resubscribes from its last
//! position. One slow consumer never holds up the others: pushing never waits.
//!
//! Each event is queued with the id of the subscription it was delivered for, so that the
//! connection can tell events of a subscription that has ended (still queued after an
//! `unsubscribe`) from those of a new subscription to the same channel.
//!
//! The receiving side ([`Outbox`]) belongs to the connection; the node keeps
//! [`OutboxSender`]s. Dropping the [`Outbox`] closes it: the node no longer queues
//! anything into it, and the connection ends its subscriptions on its way out.

use super::Event;
use crate::engine::{Error, ErrorKind};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::Notify;

/// The receiving side of a connection's event queue.
#[derive(Debug)]
pub struct Outbox {
    shared: Arc<Shared>,
}

/// The side the node delivers into; cheap to clone.
#[derive(Debug, Clone)]
pub struct OutboxSender {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    queue: Mutex<Queue>,
    /// Woken when the queue goes from empty to not empty, or overflows.
    ready: Notify,
    closed: AtomicBool,
    capacity: usize,
}

#[derive(Debug, Default)]
struct Queue {
    /// (subscription id, event), oldest first.
    events: VecDeque<(u64, Arc<Event>)>,
    /// Events dropped because the queue was full.
    dropped: u64,
}

impl Outbox {
    /// An empty outbox holding at most `capacity` events (at least 1).
    pub fn new(capacity: usize) -> Self {
        Outbox {
            shared: Arc::new(Shared {
                queue: Mutex::new(Queue::default()),
                ready: Notify::new(),
                closed: AtomicBool::new(false),
                capacity: capacity.max(1),
            }),
        }
    }

    /// A sender for the node to deliver into.
    pub fn sender(&self) -> OutboxSender {
        OutboxSender {
            shared: self.shared.clone(),
        }
    }

    /// The next event if one is waiting, with the id of the subscription it came for.
    /// Fails with [`Error::is_lagged`] (and the number of events dropped) once the queue
    /// has overflowed: the consumer fell behind.
    pub fn try_recv(&self) -> Result<Option<(u64, Arc<Event>)>, Error> {
        let mut q = self.shared.lock();
        if q.dropped > 0 {
            return Err(Error::new(ErrorKind::Lagged(q.dropped)));
        }
        Ok(q.events.pop_front())
    }

    /// The next event, waiting for one. Cancellation safe: an event is taken only when
    /// it is returned.
    pub async fn recv(&self) -> Result<(u64, Arc<Event>), Error> {
        loop {
            if let Some(event) = self.try_recv()? {
                return Ok(event);
            }
            // A push between `try_recv` and here leaves a permit: no wake-up is lost.
            self.shared.ready.notified().await;
        }
    }

    /// Events waiting.
    pub fn len(&self) -> usize {
        self.shared.lock().events.len()
    }

    /// True when no event is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Relaxed);
        // Free the queued events now rather than when the last sender goes.
        self.shared.lock().events.clear();
    }
}

impl OutboxSender {
    /// Queues `event`, delivered for subscription `id`; never waits. A full queue drops
    /// it and marks the outbox lagged. Returns false when the outbox is closed (its
    /// connection has gone): forget it.
    pub fn push(&self, id: u64, event: Arc<Event>) -> bool {
        if self.is_closed() {
            return false;
        }
        let mut q = self.shared.lock();
        if q.dropped > 0 {
            q.dropped += 1;
            return true;
        }
        if q.events.len() >= self.shared.capacity {
            q.dropped = 1;
            drop(q);
            self.shared.ready.notify_one();
            return true;
        }
        let was_empty = q.events.is_empty();
        q.events.push_back((id, event));
        drop(q);
        // The consumer drains everything it finds once woken: one wake-up per batch.
        if was_empty {
            self.shared.ready.notify_one();
        }
        true
    }

    /// Marks the outbox lagged, as an overflow does: the connection closes and its client
    /// resumes from history (after the broker's link was lost and restored).
    pub fn mark_lagged(&self) {
        let mut q = self.shared.lock();
        q.dropped = q.dropped.max(1);
        drop(q);
        self.shared.ready.notify_one();
    }

    /// Whether the receiving [`Outbox`] has been dropped.
    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Relaxed)
    }

    /// Whether `self` and `other` deliver into the same outbox.
    pub fn same_outbox(&self, other: &OutboxSender) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::EventKind;
    use bytes::Bytes;
    use std::time::Duration;

    fn event(offset: u64) -> Arc<Event> {
        Arc::new(Event::new(
            Arc::from("c"),
            EventKind::Publication {
                offset,
                epoch: Arc::from("e"),
                data: Bytes::from_static(b"1"),
            },
        ))
    }

    #[test]
    fn in_order_then_lagged_when_full() {
        let outbox = Outbox::new(2);
        let tx = outbox.sender();
        assert!(tx.push(7, event(1)) && tx.push(7, event(2)));
        assert_eq!(outbox.try_recv().unwrap().unwrap().1.offset(), Some(1));
        assert!(tx.push(7, event(3)));
        assert!(tx.push(7, event(4)), "dropped, not refused");
        assert!(tx.push(7, event(5)));
        let err = outbox.try_recv().unwrap_err();
        assert!(err.is_lagged(), "{err}");
        assert!(err.to_string().contains('2'), "{err}");
    }

    #[test]
    fn a_dropped_outbox_is_closed_for_its_senders() {
        let outbox = Outbox::new(4);
        let tx = outbox.sender();
        assert!(tx.push(7, event(1)));
        drop(outbox);
        assert!(tx.is_closed());
        assert!(!tx.push(7, event(2)));
    }

    #[tokio::test]
    async fn recv_waits_for_a_push_and_no_wake_up_is_lost() {
        let outbox = Arc::new(Outbox::new(1000));
        let tx = outbox.sender();
        let reader = {
            let outbox = outbox.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                while got.len() < 500 {
                    got.push(outbox.recv().await.unwrap().1.offset().unwrap());
                }
                got
            })
        };
        for i in 1..=500 {
            tx.push(7, event(i));
            if i % 50 == 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        let got = tokio::time::timeout(Duration::from_secs(5), reader)
            .await
            .expect("a wake-up was lost")
            .unwrap();
        assert_eq!(got, (1..=500).collect::<Vec<_>>());
    }
}
