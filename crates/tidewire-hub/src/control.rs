//! What the server API does to connections and users, on every node of the cluster.
//!
//! An API call reaches one node; the connections it is about may be on any. With a
//! networked engine the node publishes a [`Command`] on the hub's own channel `$control`,
//! which every node (itself included) watches and carries out on its own connections
//! ([`Sessions`](crate::sessions::Sessions)); on the memory engine (one node) it carries it
//! out at once. Asking every node (the `channels` method) is a [`Command::Query`] that each
//! node answers with a [`Command::Answer`] on the same channel.
//!
//! Blocked users and revoked tokens must outlive the call and reach nodes started later:
//! they are events ([`UserEvent`]) on the channel `$users`, kept in its history
//! ([`USERS_KEPT`] events for [`USERS_TTL`]). A node reads that history when it starts (and
//! again whenever it may have missed some of it), then follows it live; the node that
//! records an event applies it at once, so the API's next call on it sees it.
//!
//! The two channels' deliveries are not ordered with respect to each other: a node could
//! close a blocked user's connections (the command) and admit its next upgrade before the
//! block (the event) reached it. So a command that follows an event carries it
//! ([`Recorded`]), with its place in `$users`: the node applies the event first, unless it
//! has read that place already (then it has the event and whatever came after it).

use crate::engine::{Error, Publication, StreamOptions, StreamPosition};
use crate::hub::Hub;
use crate::lock;
use crate::node::{InternalEvents, Order};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::sync::mpsc;

/// The channel of the cluster's commands.
pub(crate) const CONTROL: &str = "$control";
/// The channel of the user events (blocks, revocations).
pub(crate) const USERS: &str = "$users";
/// User events kept in `$users`'s history.
pub(crate) const USERS_KEPT: usize = 100_000;
/// How long a user event is kept.
pub(crate) const USERS_TTL: Duration = Duration::from_secs(366 * 24 * 3600);
/// How long `channels` waits for the other nodes' answers.
const ANSWER_WITHIN: Duration = Duration::from_secs(1);

/// A command to the nodes, carried out by each on its own connections.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub(crate) enum Command {
    /// Close the connections of `user` (only `client`, when given).
    Disconnect {
        user: String,
        client: Option<String>,
        code: u16,
        reason: String,
        /// The event this close follows from (`block_user`), applied first.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        recorded: Option<Recorded>,
    },
    /// Subscribe the connections of `user` to `channel`.
    Subscribe {
        user: String,
        client: Option<String>,
        channel: String,
    },
    /// End the subscriptions of `user`'s connections to `channel`.
    Unsubscribe {
        user: String,
        client: Option<String>,
        channel: String,
    },
    /// The connections of `user` expire at `expire_at` (seconds since the Unix epoch),
    /// or never.
    Refresh {
        user: String,
        client: Option<String>,
        expire_at: Option<u64>,
    },
    /// Close the connections of `user` whose token was issued before `before`.
    Revoke {
        user: String,
        before: u64,
        /// The revocation's event, applied first.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        recorded: Option<Recorded>,
    },
    /// Every node answers with its channels whose names match `pattern`.
    Query {
        id: u64,
        from: String,
        pattern: Option<String>,
    },
    /// A node's answer to query `id` of node `to`.
    Answer {
        id: u64,
        to: String,
        node: String,
        channels: Vec<(String, usize)>,
    },
}

/// An event of a user, kept in `$users`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub(crate) enum UserEvent {
    /// Refused until `until` (seconds since the Unix epoch), or until unblocked.
    Block {
        user: String,
        until: Option<u64>,
    },
    Unblock {
        user: String,
    },
    /// Tokens issued before `before` (seconds since the Unix epoch) are refused.
    Revoke {
        user: String,
        before: u64,
    },
}

/// A user event as recorded in `$users`, carried by the command that acts on it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Recorded {
    pub(crate) event: UserEvent,
    /// Its place in `$users`; none on the memory engine.
    pub(crate) at: Option<StreamPosition>,
}

#[derive(Debug, Default, Clone, Copy)]
struct UserState {
    /// `Some(None)`: blocked until unblocked.
    blocked: Option<Option<u64>>,
    revoked_before: Option<u64>,
}

/// Channel names and their numbers of subscriptions, as a node answers a query.
type ChannelCounts = Vec<(String, usize)>;

/// This node's side of the cluster's commands and user events.
#[derive(Debug)]
pub(crate) struct Control {
    hub: Weak<Hub>,
    /// With a networked engine: commands go through `$control`.
    networked: bool,
    users: Mutex<HashMap<String, UserState>>,
    /// Where `$users` was read up to (epoch, offset).
    users_read: Mutex<Option<(Arc<str>, u64)>>,
    /// A reread of `$users` is running.
    rereading: AtomicBool,
    /// `$users` must be read (again): set by what a running reread may have missed.
    reread_wanted: AtomicBool,
    /// The `channels` queries of this node waiting for answers, by id.
    queries: Mutex<HashMap<u64, mpsc::UnboundedSender<ChannelCounts>>>,
    next_query: AtomicU64,
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Control {
    pub(crate) fn new(hub: Weak<Hub>, networked: bool) -> Arc<Control> {
        Arc::new(Control {
            hub,
            networked,
            users: Mutex::new(HashMap::new()),
            users_read: Mutex::new(None),
            rereading: AtomicBool::new(false),
            reread_wanted: AtomicBool::new(false),
            queries: Mutex::new(HashMap::new()),
            next_query: AtomicU64::new(1),
        })
    }

    /// With a networked engine: watches `$control` and `$users` and reads `$users`,
    /// trying again every second until it can (the engine may be down at start).
    pub(crate) async fn start(self: Arc<Self>) {
        if !self.networked {
            return;
        }
        loop {
            let Some(hub) = self.hub.upgrade() else {
                return;
            };
            let started = async {
                hub.node.watch(CONTROL).await?;
                hub.node.watch(USERS).await?;
                self.reread(&hub).await
            };
            match started.await {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!("server API: cannot follow the cluster's commands yet: {e}")
                }
            }
            drop(hub);
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Has every node carry out `command` (this one at once on the memory engine).
    pub(crate) async fn send(&self, command: Command) -> Result<(), Error> {
        if !self.networked {
            self.apply(command);
            return Ok(());
        }
        let hub = self.hub()?;
        let data = serde_json::to_vec(&command).map_err(|e| Error::backend(e, false))?;
        let stream = StreamOptions {
            history_size: 0,
            history_ttl: Duration::from_secs(60),
        };
        hub.node
            .publish_internal(CONTROL, data.into(), stream)
            .await
            .map(|_| ())
    }

    /// Records `event` for every node, now and later; applied here at once. What it
    /// returns goes with the command that acts on the event.
    pub(crate) async fn record(&self, event: UserEvent) -> Result<Recorded, Error> {
        let mut at = None;
        if self.networked {
            let hub = self.hub()?;
            let data = serde_json::to_vec(&event).map_err(|e| Error::backend(e, false))?;
            let stream = StreamOptions {
                history_size: USERS_KEPT,
                history_ttl: USERS_TTL,
            };
            at = Some(
                hub.node
                    .publish_internal(USERS, data.into(), stream)
                    .await?,
            );
        }
        self.apply_user(&event);
        Ok(Recorded { event, at })
    }

    fn hub(&self) -> Result<Arc<Hub>, Error> {
        self.hub
            .upgrade()
            .ok_or_else(|| Error::backend("the hub has stopped", false))
    }

    /// Why `user` may not connect now, if it may not: blocked, or its token (issued at
    /// `issued`, seconds since the Unix epoch) revoked.
    pub(crate) fn refusal(&self, user: &str, issued: Option<u64>) -> Option<&'static str> {
        let users = lock(&self.users);
        let state = users.get(user)?;
        match state.blocked {
            Some(None) => return Some("blocked"),
            Some(Some(until)) if until > now() => return Some("blocked"),
            _ => {}
        }
        match (state.revoked_before, issued) {
            (Some(before), Some(iat)) if iat < before => Some("token revoked"),
            (Some(_), None) => Some("token revoked"),
            _ => None,
        }
    }

    /// The users blocked now, sorted, each with the end of its block (seconds since the
    /// Unix epoch) or `None` for until unblocked (the admin page lists them).
    pub(crate) fn blocked(&self) -> Vec<(String, Option<u64>)> {
        let now = now();
        let mut out: Vec<(String, Option<u64>)> = lock(&self.users)
            .iter()
            .filter_map(|(user, s)| match s.blocked {
                Some(until) if until.is_none_or(|t| t > now) => Some((user.clone(), until)),
                _ => None,
            })
            .collect();
        out.sort();
        out
    }

    /// The channels of every node whose names match `pattern` (`*` for any run of
    /// characters), with their subscriptions summed over the nodes that answered within
    /// 1 s, sorted by name.
    pub(crate) async fn channels(
        &self,
        pattern: Option<&str>,
    ) -> Result<Vec<(String, usize)>, Error> {
        let hub = self.hub()?;
        if !self.networked {
            let mut all = local_channels(&hub, pattern);
            all.sort();
            return Ok(all);
        }
        let expected = hub
            .node
            .broker()
            .nodes()
            .await
            .map_or(1, |n| n.len().max(1));
        let id = self.next_query.fetch_add(1, Ordering::Relaxed);
        let (tx, mut rx) = mpsc::unbounded_channel();
        lock(&self.queries).insert(id, tx);
        let asked = self
            .send(Command::Query {
                id,
                from: hub.node_name.clone(),
                pattern: pattern.map(str::to_owned),
            })
            .await;
        let mut sums: HashMap<String, usize> = HashMap::new();
        if asked.is_ok() {
            let deadline = tokio::time::Instant::now() + ANSWER_WITHIN;
            let mut answers = 0;
            while answers < expected {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(channels)) => {
                        answers += 1;
                        for (name, n) in channels {
                            *sums.entry(name).or_default() += n;
                        }
                    }
                    _ => break,
                }
            }
        }
        lock(&self.queries).remove(&id);
        asked?;
        let mut all: Vec<(String, usize)> = sums.into_iter().collect();
        all.sort();
        Ok(all)
    }

    /// Carries out `command` on this node's connections.
    fn apply(&self, command: Command) {
        let Some(hub) = self.hub.upgrade() else {
            return;
        };
        let sessions = &hub.sessions;
        match command {
            Command::Disconnect {
                user,
                client,
                code,
                reason,
                recorded,
            } => {
                if let Some(r) = &recorded {
                    self.apply_recorded(r);
                }
                sessions.order(
                    &user,
                    client.as_deref(),
                    &Order::Disconnect { code, reason },
                );
            }
            Command::Subscribe {
                user,
                client,
                channel,
            } => {
                sessions.order(&user, client.as_deref(), &Order::Subscribe(channel.into()));
            }
            Command::Unsubscribe {
                user,
                client,
                channel,
            } => {
                let order = Order::Unsubscribe(channel.into());
                sessions.order(&user, client.as_deref(), &order);
            }
            Command::Refresh {
                user,
                client,
                expire_at,
            } => {
                sessions.order(&user, client.as_deref(), &Order::Refresh(expire_at));
            }
            Command::Revoke {
                user,
                before,
                recorded,
            } => {
                if let Some(r) = &recorded {
                    self.apply_recorded(r);
                }
                sessions.order(&user, None, &Order::Revoke(before));
            }
            Command::Query { id, from, pattern } => {
                let answer = Command::Answer {
                    id,
                    to: from,
                    node: hub.node_name.clone(),
                    channels: local_channels(&hub, pattern.as_deref()),
                };
                let control = hub.control.clone();
                tokio::spawn(async move {
                    if let Err(e) = control.send(answer).await {
                        tracing::debug!("server API: answering a query failed: {e}");
                    }
                });
            }
            Command::Answer {
                id, to, channels, ..
            } => {
                if to == hub.node_name {
                    if let Some(tx) = lock(&self.queries).get(&id) {
                        let _ = tx.send(channels);
                    }
                }
            }
        }
    }

    /// Applies the event a command carries, unless `$users` was read up to its place
    /// already. Right after the place read last, it counts as read (its own delivery is
    /// then skipped); further on, or in another epoch, it is applied now and again in
    /// its turn (blocks and revocations are idempotent; a reread starts afresh anyway).
    fn apply_recorded(&self, recorded: &Recorded) {
        // The memory engine: `record` applied it already, on this only node.
        let Some(at) = &recorded.at else {
            return;
        };
        let mut read = lock(&self.users_read);
        if place(&mut read, &at.epoch, at.offset) == Place::Seen {
            return;
        }
        // Applied with `users_read` held, so that the event after it cannot come first.
        self.apply_user(&recorded.event);
        drop(read);
        self.read_again_if_rereading();
    }

    fn apply_user(&self, event: &UserEvent) {
        let mut users = lock(&self.users);
        match event {
            UserEvent::Block { user, until } => {
                users.entry(user.clone()).or_default().blocked = Some(*until);
            }
            UserEvent::Unblock { user } => {
                if let Some(s) = users.get_mut(user) {
                    s.blocked = None;
                }
            }
            UserEvent::Revoke { user, before } => {
                let s = users.entry(user.clone()).or_default();
                s.revoked_before = Some(s.revoked_before.map_or(*before, |b| b.max(*before)));
            }
        }
    }

    /// Reads `$users` from its history again, from scratch.
    async fn reread(&self, hub: &Hub) -> Result<(), Error> {
        let stream = StreamOptions {
            history_size: USERS_KEPT,
            history_ttl: USERS_TTL,
        };
        let page = hub.node.history_internal(USERS, USERS_KEPT, stream).await?;
        let mut fresh = HashMap::new();
        std::mem::swap(&mut *lock(&self.users), &mut fresh);
        for p in &page.publications {
            if let Ok(event) = serde_json::from_slice::<UserEvent>(&p.data) {
                self.apply_user(&event);
            }
        }
        *lock(&self.users_read) = Some((
            Arc::from(page.position.epoch.as_str()),
            page.position.offset,
        ));
        Ok(())
    }

    /// Reads `$users` again soon: now in the background, or after the reread that is
    /// running (whose snapshot may be older than what asked for it).
    fn reread_later(self: &Arc<Self>) {
        self.reread_wanted.store(true, Ordering::Release);
        if self.rereading.swap(true, Ordering::AcqRel) {
            return;
        }
        let control = self.clone();
        tokio::spawn(async move {
            loop {
                while control.reread_wanted.swap(false, Ordering::AcqRel) {
                    loop {
                        let Some(hub) = control.hub.upgrade() else {
                            control.rereading.store(false, Ordering::Release);
                            return;
                        };
                        match control.reread(&hub).await {
                            Ok(()) => break,
                            Err(e) => {
                                tracing::warn!("server API: rereading blocked users failed: {e}")
                            }
                        }
                        drop(hub);
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
                control.rereading.store(false, Ordering::Release);
                // Asked for between the last check and the store: go on, unless another
                // task has taken it up.
                if !control.reread_wanted.load(Ordering::Acquire)
                    || control.rereading.swap(true, Ordering::AcqRel)
                {
                    break;
                }
            }
        });
    }

    /// An event applied while a reread runs may be dropped when the reread's older
    /// snapshot replaces the users: read once more after it.
    fn read_again_if_rereading(&self) {
        if self.rereading.load(Ordering::Acquire) {
            self.reread_wanted.store(true, Ordering::Release);
        }
    }
}

/// The channels of this node whose names match `pattern`.
fn local_channels(hub: &Hub, pattern: Option<&str>) -> Vec<(String, usize)> {
    hub.node
        .local_channels(|name| pattern.is_none_or(|p| glob(p, name)))
        .into_iter()
        .map(|(name, n)| (name.to_string(), n))
        .collect()
}

/// Whether `name` matches `pattern`, where `*` stands for any run of characters.
pub(crate) fn glob(pattern: &str, name: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = name.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

/// Where a `$users` event stands against the place read up to.
#[derive(Debug, PartialEq, Eq)]
enum Place {
    /// Read already (with whatever came after it).
    Seen,
    /// Right after the place read: now read up to it (`read` advanced).
    Next,
    /// Further on, or in another epoch, or nothing read yet.
    Ahead,
}

/// Where the event at `offset` of `epoch` stands against `read`; a [`Place::Next`]
/// advances `read` to it.
fn place(read: &mut Option<(Arc<str>, u64)>, epoch: &str, offset: u64) -> Place {
    match read {
        Some((e, o)) if **e == *epoch && *o >= offset => Place::Seen,
        Some((e, o)) if **e == *epoch && *o + 1 == offset => {
            *o = offset;
            Place::Next
        }
        _ => Place::Ahead,
    }
}

/// The control sink of a networked hub: `$control` commands and `$users` events.
#[derive(Debug)]
pub(crate) struct Events(pub(crate) Arc<Control>);

impl InternalEvents for Events {
    fn publication(&self, channel: &str, publication: Publication) {
        let control = &self.0;
        match channel {
            CONTROL => match serde_json::from_slice::<Command>(&publication.data) {
                Ok(c) => control.apply(c),
                Err(e) => tracing::debug!("server API: a command not understood: {e}"),
            },
            USERS => {
                let mut read = lock(&control.users_read);
                let place = place(&mut read, &publication.epoch, publication.offset);
                if place == Place::Seen {
                    return;
                }
                if place == Place::Next {
                    if let Ok(event) = serde_json::from_slice::<UserEvent>(&publication.data) {
                        control.apply_user(&event);
                    }
                    drop(read);
                    control.read_again_if_rereading();
                } else {
                    drop(read);
                    control.reread_later();
                }
            }
            _ => {}
        }
    }

    fn lost(&self, channel: Option<&str>) {
        if channel.is_none_or(|c| c == USERS) {
            self.0.reread_later();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob("*", "anything"));
        assert!(glob("chat:*", "chat:a"));
        assert!(!glob("chat:*", "news:a"));
        assert!(glob("*:lobby", "room:lobby"));
        assert!(glob("a*b*c", "a-x-b-y-c"));
        assert!(!glob("a*b*c", "a-x-c"));
        assert!(glob("exact", "exact"));
        assert!(!glob("exact", "exactly"));
        assert!(!glob("ab*ba", "aba"));
    }

    #[test]
    fn commands_and_events_have_stable_wire_forms() {
        let c = Command::Disconnect {
            user: "ann".into(),
            client: None,
            code: 4500,
            reason: "bye".into(),
            recorded: None,
        };
        let text = serde_json::to_string(&c).unwrap();
        assert_eq!(
            text,
            r#"{"op":"disconnect","user":"ann","client":null,"code":4500,"reason":"bye"}"#
        );
        assert_eq!(serde_json::from_str::<Command>(&text).unwrap(), c);
        // A close that follows a block carries it; a node of an earlier version, which
        // does not know the field, still reads the command (serde ignores it).
        let c = Command::Revoke {
            user: "bob".into(),
            before: 9,
            recorded: Some(Recorded {
                event: UserEvent::Revoke {
                    user: "bob".into(),
                    before: 9,
                },
                at: Some(StreamPosition {
                    offset: 3,
                    epoch: "e".into(),
                }),
            }),
        };
        let text = serde_json::to_string(&c).unwrap();
        assert_eq!(
            text,
            r#"{"op":"revoke","user":"bob","before":9,"recorded":{"event":{"op":"revoke","user":"bob","before":9},"at":{"offset":3,"epoch":"e"}}}"#
        );
        assert_eq!(serde_json::from_str::<Command>(&text).unwrap(), c);
        let old = r#"{"op":"revoke","user":"bob","before":9}"#;
        assert!(matches!(
            serde_json::from_str::<Command>(old).unwrap(),
            Command::Revoke { recorded: None, .. }
        ));
        let e = UserEvent::Block {
            user: "bob".into(),
            until: Some(5),
        };
        let text = serde_json::to_string(&e).unwrap();
        assert_eq!(text, r#"{"op":"block","user":"bob","until":5}"#);
        assert_eq!(serde_json::from_str::<UserEvent>(&text).unwrap(), e);
    }

    fn users_publication(offset: u64, event: &UserEvent) -> Publication {
        Publication {
            offset,
            epoch: Arc::from("e"),
            data: serde_json::to_vec(event).unwrap().into(),
        }
    }

    /// The block a close carries is applied before `$users` delivers it, once, and never
    /// over an unblock read after it.
    #[test]
    fn a_carried_event_is_applied_once_and_in_its_place() {
        let control = Control::new(Weak::new(), true);
        let events = Events(control.clone());
        *lock(&control.users_read) = Some((Arc::from("e"), 5));
        let block = UserEvent::Block {
            user: "bob".into(),
            until: None,
        };
        let recorded = |offset| Recorded {
            event: block.clone(),
            at: Some(StreamPosition {
                offset,
                epoch: "e".into(),
            }),
        };
        // The command comes first: bob is blocked at once, and `$users` counts as read.
        control.apply_recorded(&recorded(6));
        assert_eq!(control.refusal("bob", None), Some("blocked"));
        assert_eq!(lock(&control.users_read).as_ref().unwrap().1, 6);
        // Its own delivery is skipped; the unblock after it applies.
        events.publication(USERS, users_publication(6, &block));
        let unblock = UserEvent::Unblock { user: "bob".into() };
        events.publication(USERS, users_publication(7, &unblock));
        assert_eq!(control.refusal("bob", None), None);
        // A command read late does not block bob again.
        control.apply_recorded(&recorded(6));
        assert_eq!(control.refusal("bob", None), None);
        // A command ahead of a gap applies now and leaves the position alone.
        control.apply_recorded(&recorded(9));
        assert_eq!(control.refusal("bob", None), Some("blocked"));
        assert_eq!(lock(&control.users_read).as_ref().unwrap().1, 7);
        // Another epoch (the stream was lost): applied, the reread will settle it.
        control.apply_recorded(&Recorded {
            event: UserEvent::Block {
                user: "cy".into(),
                until: None,
            },
            at: Some(StreamPosition {
                offset: 1,
                epoch: "f".into(),
            }),
        });
        assert_eq!(control.refusal("cy", None), Some("blocked"));
    }

    #[test]
    fn blocks_expire_and_revocations_go_by_issue_time() {
        let control = Control::new(Weak::new(), false);
        control.apply_user(&UserEvent::Block {
            user: "ann".into(),
            until: None,
        });
        assert_eq!(control.refusal("ann", None), Some("blocked"));
        assert_eq!(control.blocked(), [("ann".to_owned(), None)]);
        control.apply_user(&UserEvent::Unblock { user: "ann".into() });
        assert_eq!(control.refusal("ann", None), None);
        assert!(control.blocked().is_empty());
        control.apply_user(&UserEvent::Block {
            user: "ann".into(),
            until: Some(now() - 1),
        });
        assert_eq!(control.refusal("ann", None), None);
        assert!(
            control.blocked().is_empty(),
            "an expired block is not listed"
        );
        control.apply_user(&UserEvent::Revoke {
            user: "bob".into(),
            before: 1000,
        });
        assert_eq!(control.refusal("bob", Some(999)), Some("token revoked"));
        assert_eq!(control.refusal("bob", Some(1000)), None);
        assert_eq!(control.refusal("bob", None), Some("token revoked"));
        assert_eq!(control.refusal("carol", None), None);
    }
}
