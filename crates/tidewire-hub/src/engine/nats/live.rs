//! Live delivery: one core NATS subscription and one task per subscribed channel, which
//! hands the node the channel's publications in offset order, once each, repairing gaps
//! from JetStream.

use super::codec::{
    header, history_subject, live_subject, temporary, H_EPOCH, H_KIND, H_OFFSET, KIND_JOIN,
    KIND_LEAVE, KIND_PUBLICATION,
};
use super::history::{Since, MAX_REPAIR};
use super::Inner;
use crate::engine::{BrokerEvents, ClientInfo, Error, Publication};
use async_nats::{Message, Subscriber};
use futures_util::StreamExt;
use std::collections::BTreeMap;
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// How long a publication that arrived ahead of a missing one waits for it (publications
/// of different nodes may cross on the way) before the gap is repaired from history.
const GAP_WAIT: Duration = Duration::from_millis(250);

/// A subscribed channel: its task, and how to ask it to resync from history.
#[derive(Debug)]
pub(super) struct ChannelTask {
    resync: mpsc::UnboundedSender<()>,
    task: tokio::task::AbortHandle,
}

impl ChannelTask {
    pub fn resync(&self) {
        let _ = self.resync.send(());
    }
}

impl Drop for ChannelTask {
    fn drop(&mut self) {
        // Dropping its subscriber unsubscribes.
        self.task.abort();
    }
}

/// The last publication of a channel handed to the node, and those held ahead of a gap.
#[derive(Debug, Default)]
struct Cursor {
    /// None while the channel has no stream as far as this node knows.
    epoch: Option<Arc<str>>,
    offset: u64,
    pending: BTreeMap<u64, Publication>,
    /// When the oldest held publication must be repaired.
    repair_at: Option<Instant>,
}

impl Inner {
    /// Subscribes to `channel`'s live subject and starts its task. The subscription is in
    /// effect on the server when this returns: the position read after it is a request on
    /// the same connection, which the server handles after the SUBSCRIBE.
    pub(super) async fn subscribe_live(self: &Arc<Self>, channel: &Arc<str>) -> Result<(), Error> {
        if self.channels().contains_key(channel) {
            return Ok(());
        }
        let subscriber = self
            .client
            .subscribe(live_subject(channel))
            .await
            .map_err(temporary)?;
        self.client.flush().await.map_err(temporary)?;
        let last = self.last(&history_subject(channel)).await?;
        let cursor = Cursor {
            epoch: last.as_ref().map(|m| m.epoch.clone()),
            offset: last.as_ref().map_or(0, |m| m.offset),
            ..Cursor::default()
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(run(
            Arc::downgrade(self),
            channel.clone(),
            subscriber,
            rx,
            cursor,
        ));
        let old = self.channels().insert(
            channel.clone(),
            ChannelTask {
                resync: tx,
                task: task.abort_handle(),
            },
        );
        drop(old);
        Ok(())
    }

    pub(super) fn unsubscribe_live(&self, channel: &str) {
        let task = self.channels().remove(channel);
        drop(task);
    }
}

async fn run(
    inner: Weak<Inner>,
    channel: Arc<str>,
    mut subscriber: Subscriber,
    mut resync: mpsc::UnboundedReceiver<()>,
    mut cursor: Cursor,
) {
    loop {
        let repair_at = cursor.repair_at;
        let repair = tokio::select! {
            message = subscriber.next() => match message {
                Some(m) => {
                    let Some(inner) = inner.upgrade() else { return };
                    let Some(events) = inner.events.get().cloned() else { continue };
                    cursor.on_message(&channel, m, &*events)
                }
                None => return,
            },
            r = resync.recv() => match r {
                Some(()) => true,
                None => return,
            },
            () = sleep_until(repair_at), if repair_at.is_some() => true,
        };
        if repair {
            let Some(inner) = inner.upgrade() else { return };
            let Some(events) = inner.events.get().cloned() else {
                continue;
            };
            cursor.repair(&inner, &channel, &*events).await;
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

impl Cursor {
    /// Handles one live message; true when a gap must be repaired now.
    fn on_message(&mut self, channel: &str, m: Message, events: &dyn BrokerEvents) -> bool {
        let Some(headers) = m.headers.as_ref() else {
            return false;
        };
        match header(headers, H_KIND) {
            Some(KIND_PUBLICATION) => {
                let offset = header(headers, H_OFFSET).and_then(|v| v.parse::<u64>().ok());
                let (Some(offset), Some(epoch)) = (offset, header(headers, H_EPOCH)) else {
                    tracing::warn!(channel, "nats: live publication without offset or epoch");
                    return false;
                };
                self.on_publication(channel, offset, epoch, m.payload, events)
            }
            Some(kind @ (KIND_JOIN | KIND_LEAVE)) => {
                match serde_json::from_slice::<ClientInfo>(&m.payload) {
                    Ok(client) if kind == KIND_JOIN => events.join(channel, &client),
                    Ok(client) => events.leave(channel, &client),
                    Err(e) => tracing::warn!(channel, "nats: bad presence event: {e}"),
                }
                false
            }
            _ => false,
        }
    }

    fn on_publication(
        &mut self,
        channel: &str,
        offset: u64,
        epoch: &str,
        data: bytes::Bytes,
        events: &dyn BrokerEvents,
    ) -> bool {
        let epoch = match &self.epoch {
            Some(e) if **e == *epoch => e.clone(),
            Some(_) => {
                // A new generation of the channel's stream: the node's subscribers
                // resume from history.
                events.channel_lost(channel);
                self.reset(Arc::from(epoch), offset);
                return false;
            }
            None => {
                let e: Arc<str> = Arc::from(epoch);
                self.epoch = Some(e.clone());
                self.offset = 0;
                e
            }
        };
        if offset <= self.offset {
            return false;
        }
        let publication = Publication {
            offset,
            epoch,
            data,
        };
        if offset == self.offset + 1 {
            self.deliver(channel, publication, events);
            self.drain(channel, events);
            return false;
        }
        self.pending.insert(offset, publication);
        if self.repair_at.is_none() {
            self.repair_at = Some(Instant::now() + GAP_WAIT);
        }
        self.pending.len() as u64 > MAX_REPAIR
    }

    fn deliver(&mut self, channel: &str, publication: Publication, events: &dyn BrokerEvents) {
        self.offset = publication.offset;
        events.publication(channel, publication);
    }

    /// Delivers the held publications that follow in order.
    fn drain(&mut self, channel: &str, events: &dyn BrokerEvents) {
        while let Some(entry) = self.pending.first_entry() {
            let offset = *entry.key();
            if offset <= self.offset {
                entry.remove();
            } else if offset == self.offset + 1 {
                let p = entry.remove();
                self.deliver(channel, p, events);
            } else {
                break;
            }
        }
        self.repair_at = if self.pending.is_empty() {
            None
        } else {
            // Still a gap: wait again for what is missing.
            self.repair_at.or_else(|| Some(Instant::now() + GAP_WAIT))
        };
    }

    fn reset(&mut self, epoch: Arc<str>, offset: u64) {
        self.epoch = Some(epoch);
        self.offset = offset;
        self.pending.clear();
        self.repair_at = None;
    }

    /// Fills the gap before the held publications (or, after a lost link, whatever was
    /// published meanwhile) from history; tells the node the channel is lost when history
    /// cannot.
    async fn repair(&mut self, inner: &Inner, channel: &str, events: &dyn BrokerEvents) {
        let read = inner
            .read_since(channel, self.epoch.as_deref(), self.offset)
            .await;
        match read {
            Ok(Since::Complete(publications)) => {
                let before = self.offset;
                for p in publications {
                    if self.epoch.as_deref() != Some(&*p.epoch) {
                        self.epoch = Some(p.epoch.clone());
                    }
                    if p.offset == self.offset + 1 {
                        self.deliver(channel, p, events);
                    }
                }
                if self.offset > before {
                    inner
                        .counters
                        .repairs
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                // Held publications newer than what was read (published since) follow.
                self.repair_at = None;
                self.drain(channel, events);
            }
            Ok(Since::Incomplete(position)) => {
                tracing::debug!(channel, "nats: gap not in history; channel lost");
                events.channel_lost(channel);
                // What was held is older than the position just read.
                match position {
                    Some(p) => self.reset(Arc::from(p.epoch), p.offset),
                    None => {
                        self.epoch = None;
                        self.offset = 0;
                        self.pending.clear();
                        self.repair_at = None;
                    }
                }
            }
            Err(e) => {
                tracing::warn!(channel, "nats: gap repair failed: {e}; channel lost");
                events.channel_lost(channel);
                let newest = self.pending.keys().next_back().copied();
                if let Some(newest) = newest {
                    self.offset = newest;
                }
                self.pending.clear();
                self.repair_at = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Recorder(Mutex<Vec<String>>);

    impl BrokerEvents for Recorder {
        fn publication(&self, _: &str, p: Publication) {
            self.0.lock().unwrap().push(format!("p{}", p.offset));
        }
        fn join(&self, _: &str, c: &ClientInfo) {
            self.0.lock().unwrap().push(format!("j{}", c.client_id));
        }
        fn leave(&self, _: &str, c: &ClientInfo) {
            self.0.lock().unwrap().push(format!("l{}", c.client_id));
        }
        fn link_restored(&self) {}
        fn channel_lost(&self, _: &str) {
            self.0.lock().unwrap().push("lost".into());
        }
    }

    #[tokio::test]
    async fn in_order_duplicates_gaps_and_epochs() {
        let r = Recorder::default();
        let mut c = Cursor::default();
        let d = bytes::Bytes::new;
        assert!(!c.on_publication("c", 1, "e", d(), &r));
        assert!(!c.on_publication("c", 1, "e", d(), &r)); // duplicate: dropped
        assert!(!c.on_publication("c", 3, "e", d(), &r)); // held
        assert!(c.repair_at.is_some());
        assert!(!c.on_publication("c", 2, "e", d(), &r)); // fills the gap
        assert!(c.repair_at.is_none());
        assert!(!c.on_publication("c", 4, "f", d(), &r)); // new epoch
        assert!(!c.on_publication("c", 5, "f", d(), &r));
        assert_eq!(*r.0.lock().unwrap(), ["p1", "p2", "p3", "lost", "p5"]);
    }
}
