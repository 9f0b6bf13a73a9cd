//! Presence, join and leave events, the node registry and the reaping of dead nodes'
//! presence.

use super::codec::{
    check_channel, live_subject, presence_subject, temporary, token, CLAIM_PREFIX, H_KIND,
    KIND_JOIN, KIND_LEAVE, PRESENCE_PREFIX, REGISTRY_PREFIX,
};
use super::Inner;
use crate::engine::{ClientInfo, Error, NodeStatus, PresenceStats};
use async_nats::jetstream::stream::LastRawMessageErrorKind;
use async_nats::HeaderMap;
use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::time::Instant;

/// How often a node refreshes its registry entry.
pub(super) const HEARTBEAT: Duration = Duration::from_secs(2);
/// How long a registry entry lives without a heartbeat, at least (`nodes`).
const REGISTRY_TTL: Duration = Duration::from_secs(6);
/// A node whose registry entry has not changed for this long (as this node saw it) is dead:
/// its presence is reaped.
pub(super) const DEAD_AFTER: Duration = Duration::from_secs(5);
/// How often a node looks for dead ones.
pub(super) const REAP_EVERY: Duration = Duration::from_secs(1);

/// A presence entry as stored (`tw.p.<channel>.<instance>.<client>`).
#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    channel: String,
    node: String,
    client: ClientInfo,
    /// Unix milliseconds after which it is no longer listed.
    expires_ms: u64,
}

/// A registry entry (`tw_nodes`, key: the instance token).
#[derive(Debug, Serialize, Deserialize)]
struct Announcement {
    node: String,
    status: Option<NodeStatus>,
    expires_ms: u64,
}

pub(super) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What the reaper saw of each other node: its entry's revision and when it last changed.
#[derive(Debug, Default)]
pub(super) struct Seen(HashMap<String, (u64, Instant)>);

impl Inner {
    pub(super) async fn send_presence_event(
        &self,
        channel: &str,
        client: &ClientInfo,
        join: bool,
    ) -> Result<(), Error> {
        check_channel(channel)?;
        let mut h = HeaderMap::new();
        h.insert(H_KIND, if join { KIND_JOIN } else { KIND_LEAVE });
        let payload = serde_json::to_vec(client).map_err(|e| Error::backend(e, false))?;
        self.client
            .publish_with_headers(live_subject(channel), h, payload.into())
            .await
            .map_err(temporary)
    }

    pub(super) async fn presence_add(
        &self,
        channel: &str,
        client: &ClientInfo,
        ttl: Duration,
    ) -> Result<(), Error> {
        check_channel(channel)?;
        let entry = Entry {
            channel: channel.to_owned(),
            node: self.node.clone(),
            client: client.clone(),
            expires_ms: now_ms().saturating_add(ttl.as_millis() as u64),
        };
        let payload = serde_json::to_vec(&entry).map_err(|e| Error::backend(e, false))?;
        let subject = presence_subject(channel, &self.instance, &client.client_id);
        for attempt in 0..2 {
            let r = match self
                .js
                .publish(subject.clone(), payload.clone().into())
                .await
            {
                Ok(ack) => ack.await,
                Err(e) => Err(e),
            };
            match r {
                Ok(_) => return Ok(()),
                Err(e) if attempt == 0 => {
                    tracing::debug!("nats: presence add failed ({e}); checking the streams");
                    self.ensure().await?;
                }
                Err(e) => return Err(temporary(e)),
            }
        }
        Ok(())
    }

    pub(super) async fn presence_remove(
        &self,
        channel: &str,
        client_id: &str,
    ) -> Result<(), Error> {
        check_channel(channel)?;
        let subject = presence_subject(channel, &self.instance, client_id);
        self.presence
            .purge()
            .filter(subject.as_str())
            .await
            .map_err(temporary)?;
        Ok(())
    }

    /// Subjects of the presence stream matching `filter`.
    async fn presence_subjects(&self, filter: &str) -> Result<Vec<String>, Error> {
        let info = self
            .presence
            .info_with_subjects(filter)
            .await
            .map_err(temporary)?;
        let subjects: Vec<(String, usize)> = info.try_collect().await.map_err(temporary)?;
        Ok(subjects.into_iter().map(|(s, _)| s).collect())
    }

    /// The entries stored on `subjects` (read concurrently), skipping those gone since.
    async fn entries<'s>(&self, subjects: &'s [String]) -> Result<Vec<(&'s str, Entry)>, Error> {
        // At most 64 requests in flight.
        let presence = &self.presence;
        let reads: Vec<_> = futures_util::stream::iter(subjects.iter().cloned())
            .map(|s| async move { presence.get_last_raw_message_by_subject(&s).await })
            .buffered(64)
            .collect()
            .await;
        let mut out = Vec::with_capacity(subjects.len());
        for (subject, r) in subjects.iter().zip(reads) {
            match r {
                Ok(m) => match serde_json::from_slice::<Entry>(&m.payload) {
                    Ok(e) => out.push((subject.as_str(), e)),
                    Err(e) => tracing::warn!("nats: bad presence entry: {e}"),
                },
                Err(e) if matches!(e.kind(), LastRawMessageErrorKind::NoMessageFound) => {}
                Err(e) => return Err(temporary(e)),
            }
        }
        Ok(out)
    }

    pub(super) async fn presence_list(&self, channel: &str) -> Result<Vec<ClientInfo>, Error> {
        check_channel(channel)?;
        let filter = format!("{PRESENCE_PREFIX}{}.*.*", token(channel));
        let subjects = self.presence_subjects(&filter).await?;
        let now = now_ms();
        // One entry per (node instance, client): client ids are unique per node, and two
        // nodes' clients are two clients even if their ids are the same.
        let mut list: Vec<ClientInfo> = self
            .entries(&subjects)
            .await?
            .into_iter()
            .filter(|(_, e)| e.expires_ms > now && e.channel == channel)
            .map(|(_, e)| e.client)
            .collect();
        list.sort_by(|a, b| a.client_id.cmp(&b.client_id));
        Ok(list)
    }

    pub(super) async fn presence_stats(&self, channel: &str) -> Result<PresenceStats, Error> {
        let list = self.presence_list(channel).await?;
        let users: HashSet<&str> = list.iter().filter_map(|c| c.user_id.as_deref()).collect();
        Ok(PresenceStats {
            clients: list.len(),
            users: users.len(),
        })
    }

    /// Writes this node's registry entry (the heartbeat, and `announce`).
    pub(super) async fn heartbeat(&self) -> Result<(), Error> {
        let (status, ttl) = {
            let s = self.status.lock().unwrap_or_else(|e| e.into_inner());
            (s.0.clone(), s.1.max(REGISTRY_TTL))
        };
        let a = Announcement {
            node: self.node.clone(),
            status,
            expires_ms: now_ms().saturating_add(ttl.as_millis() as u64),
        };
        let value = serde_json::to_vec(&a).map_err(|e| Error::backend(e, false))?;
        let subject = format!("{REGISTRY_PREFIX}{}", self.instance);
        for attempt in 0..2 {
            let r = match self.js.publish(subject.clone(), value.clone().into()).await {
                Ok(ack) => ack.await,
                Err(e) => Err(e),
            };
            match r {
                Ok(_) => return Ok(()),
                Err(e) if attempt == 0 => {
                    tracing::debug!("nats: heartbeat failed ({e}); checking the streams");
                    self.ensure().await?;
                }
                Err(e) => return Err(temporary(e)),
            }
        }
        Ok(())
    }

    /// The registry's entries: (instance, stream sequence, announcement).
    async fn registry(&self) -> Result<Vec<(String, u64, Announcement)>, Error> {
        let info = self
            .nodes
            .info_with_subjects(format!("{REGISTRY_PREFIX}*"))
            .await
            .map_err(temporary)?;
        let subjects: Vec<(String, usize)> = info.try_collect().await.map_err(temporary)?;
        let reads = subjects
            .iter()
            .map(|(s, _)| self.nodes.get_last_raw_message_by_subject(s));
        let mut out = Vec::new();
        for ((subject, _), r) in subjects
            .iter()
            .zip(futures_util::future::join_all(reads).await)
        {
            let Some(instance) = subject.strip_prefix(REGISTRY_PREFIX) else {
                continue;
            };
            let m = match r {
                Ok(m) => m,
                Err(e) if matches!(e.kind(), LastRawMessageErrorKind::NoMessageFound) => continue,
                Err(e) => return Err(temporary(e)),
            };
            match serde_json::from_slice::<Announcement>(&m.payload) {
                Ok(a) => out.push((instance.to_owned(), m.sequence, a)),
                Err(e) => tracing::warn!("nats: bad registry entry {instance}: {e}"),
            }
        }
        Ok(out)
    }

    pub(super) async fn nodes_list(&self) -> Result<Vec<NodeStatus>, Error> {
        let now = now_ms();
        let mut out: Vec<NodeStatus> = self
            .registry()
            .await?
            .into_iter()
            .filter(|(_, _, a)| a.expires_ms >= now)
            .map(|(_, _, a)| {
                a.status.unwrap_or_else(|| NodeStatus {
                    name: a.node.clone(),
                    ..NodeStatus::default()
                })
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// One round of the reaper: notes which nodes' entries changed, and reaps those that
    /// stopped for [`DEAD_AFTER`].
    pub(super) async fn reap_round(&self, seen: &mut Seen) -> Result<(), Error> {
        let now = Instant::now();
        let registry = self.registry().await?;
        let present: HashSet<&str> = registry.iter().map(|(k, _, _)| k.as_str()).collect();
        seen.0.retain(|k, _| present.contains(k.as_str()));
        for (instance, revision, a) in &registry {
            if *instance == self.instance {
                continue;
            }
            let changed = match seen.0.get(instance) {
                Some((r, at)) if r == revision => *at,
                _ => {
                    seen.0.insert(instance.clone(), (*revision, now));
                    now
                }
            };
            if now.duration_since(changed) >= DEAD_AFTER {
                self.reap(instance, &a.node).await?;
                seen.0.remove(instance);
            }
        }
        Ok(())
    }

    /// Removes a dead node's presence entries, with a leave event for each, and its
    /// registry entry: only if this node is the first to claim it.
    async fn reap(&self, instance: &str, node: &str) -> Result<(), Error> {
        // The claim: the first message on the dead instance's claim subject (a
        // compare-and-set on "no message yet"); it ages out of the stream with `max_age`.
        let claim = format!("{CLAIM_PREFIX}{instance}");
        if !self
            .store_first(&claim, Bytes::from(self.node.clone()))
            .await?
        {
            return Ok(());
        }
        let subjects = self
            .presence_subjects(&format!("{PRESENCE_PREFIX}*.{instance}.*"))
            .await?;
        tracing::info!(
            "nats: node {node} stopped announcing itself; reaping its {} presence entries",
            subjects.len()
        );
        for (subject, entry) in self.entries(&subjects).await? {
            let _ = self
                .send_presence_event(&entry.channel, &entry.client, false)
                .await;
            self.counters
                .reaped
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.presence
                .purge()
                .filter(subject)
                .await
                .map_err(temporary)?;
        }
        self.nodes
            .purge()
            .filter(format!("{REGISTRY_PREFIX}{instance}"))
            .await
            .map_err(temporary)?;
        Ok(())
    }
}
