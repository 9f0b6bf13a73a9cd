//! Channel streams in JetStream: the compare-and-set publish, history reads by walking a
//! channel's messages back through their `Tw-Prev` links, position markers.

use super::codec::{
    bad, check_channel, history_subject, live_subject, new_epoch, temporary, token, Stored,
    H_EPOCH, H_EXPECTED_LAST_SUBJECT_SEQ, H_KIND, H_MSG_ID, H_OFFSET, H_PREV, KIND_MARKER,
    KIND_PUBLICATION,
};
use super::Inner;
use crate::engine::{Error, HistoryPage, HistoryQuery, Publication, StreamOptions, StreamPosition};
use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy, PullConsumer};
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::stream::LastRawMessageErrorKind;
use async_nats::jetstream::ErrorCode;
use async_nats::HeaderMap;
use bytes::Bytes;
use futures_util::StreamExt;
use std::time::Duration;

/// Compare-and-set attempts of one publish before it gives up (a temporary error): each
/// failed attempt means another writer appended to the channel meanwhile.
const MAX_CAS_ATTEMPTS: u32 = 64;

/// Most publications one gap repair or resume reads back.
pub(super) const MAX_REPAIR: u64 = 10_000;

/// Up to this many publications are read by walking back, one request each; more by a
/// binary search for the first one (`next_by_subj` gets) and a consumer that sends them
/// all in one batch.
const WALK_MAX: u64 = 64;

/// What a compare-and-set store did.
enum Stored2 {
    /// Stored.
    Ok,
    /// A publication with the same `Nats-Msg-Id` was stored before, at this sequence.
    Duplicate(u64),
    /// The channel's last message is no longer the one expected.
    Conflict,
}

/// What [`Inner::read_since`] found.
pub(super) enum Since {
    /// Every publication after the position asked for (maybe none).
    Complete(Vec<Publication>),
    /// Some are gone (or the epoch differs, or the stream is gone): the position now, if
    /// the channel has one.
    Incomplete(Option<StreamPosition>),
}

impl Inner {
    /// The channel's last stored message, if any.
    pub(super) async fn last(&self, subject: &str) -> Result<Option<Stored>, Error> {
        for attempt in 0..2 {
            match self.history.get_last_raw_message_by_subject(subject).await {
                Ok(m) => return Stored::parse(m).map(Some),
                Err(e) => match e.kind() {
                    LastRawMessageErrorKind::NoMessageFound => return Ok(None),
                    LastRawMessageErrorKind::JetStream(j)
                        if j.error_code() == ErrorCode::STREAM_NOT_FOUND && attempt == 0 =>
                    {
                        self.ensure().await?;
                    }
                    LastRawMessageErrorKind::InvalidSubject => return Err(bad("invalid subject")),
                    _ => return Err(temporary(e)),
                },
            }
        }
        Err(temporary("history stream not found"))
    }

    /// The stored message at stream sequence `seq`, if it is still there.
    async fn at(&self, seq: u64) -> Result<Option<Stored>, Error> {
        match self.history.get_raw_message(seq).await {
            Ok(m) => Stored::parse(m).map(Some),
            Err(e) => match e.kind() {
                LastRawMessageErrorKind::NoMessageFound => Ok(None),
                _ => Err(temporary(e)),
            },
        }
    }

    /// The first message of `subject` at or after stream sequence `seq`, if any.
    async fn next_at(&self, subject: &str, seq: u64) -> Result<Option<Stored>, Error> {
        let r = self
            .history
            .raw_message_builder()
            .sequence(seq)
            .next_by_subject(subject)
            .send()
            .await;
        match r {
            Ok(m) => Stored::parse(m).map(Some),
            Err(e) => match e.kind() {
                LastRawMessageErrorKind::NoMessageFound => Ok(None),
                _ => Err(temporary(e)),
            },
        }
    }

    /// The stream sequence of `subject`'s first message with an offset of `target` or more
    /// (`last` has one), by binary search.
    async fn seek(&self, subject: &str, last: &Stored, target: u64) -> Result<u64, Error> {
        let (mut lo, mut hi, mut found) = (1, last.seq, last.seq);
        while lo <= hi {
            let mid = lo + (hi - lo) / 2;
            match self.next_at(subject, mid).await? {
                Some(m) if m.seq <= last.seq && m.offset >= target => {
                    found = m.seq;
                    hi = mid - 1;
                }
                Some(m) if m.seq <= last.seq => lo = m.seq + 1,
                _ => break,
            }
        }
        Ok(found)
    }

    /// `subject`'s messages from stream sequence `start` to `end`, through a short-lived
    /// consumer.
    async fn read_forward(
        &self,
        subject: &str,
        start: u64,
        end: u64,
    ) -> Result<Vec<Stored>, Error> {
        let consumer: PullConsumer = self
            .history
            .create_consumer(pull::Config {
                filter_subject: subject.to_owned(),
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: start,
                },
                ack_policy: AckPolicy::None,
                inactive_threshold: Duration::from_secs(10),
                memory_storage: true,
                ..Default::default()
            })
            .await
            .map_err(temporary)?;
        let name = consumer.cached_info().name.clone();
        let n = consumer.cached_info().num_pending.min(end + 1 - start) as usize;
        let read = async {
            let mut out = Vec::with_capacity(n);
            if n == 0 {
                return Ok(out);
            }
            let mut batch = consumer
                .fetch()
                .max_messages(n)
                .expires(Duration::from_secs(2))
                .messages()
                .await
                .map_err(temporary)?;
            while let Some(m) = batch.next().await {
                let m = m.map_err(temporary)?;
                let seq = m.info().map_err(temporary)?.stream_sequence;
                if seq > end {
                    break;
                }
                let time_ns = m
                    .info()
                    .map_err(temporary)?
                    .published
                    .unix_timestamp_nanos();
                out.push(Stored::from_parts(
                    seq,
                    m.headers.as_ref(),
                    m.payload.clone(),
                    time_ns,
                )?);
                if seq == end {
                    break;
                }
            }
            Ok(out)
        };
        let r: Result<Vec<Stored>, Error> = read.await;
        // Else it goes after `inactive_threshold`.
        let _ = self.history.delete_consumer(&name).await;
        r
    }

    /// Up to `want` consecutive publications ending at `last`, oldest first (see
    /// [`Inner::walk`]): by walking back for a few, by [`Inner::seek`] and
    /// [`Inner::read_forward`] for many.
    async fn range(
        &self,
        subject: &str,
        last: &Stored,
        want: u64,
        cutoff_ns: Option<i128>,
    ) -> Result<Vec<Publication>, Error> {
        if want <= WALK_MAX || !last.publication {
            return self.walk(last, want, cutoff_ns).await;
        }
        let target = last.offset.saturating_sub(want - 1).max(1);
        let start = self.seek(subject, last, target).await?;
        let mut kept: Vec<Stored> = Vec::new();
        for m in self.read_forward(subject, start, last.seq).await? {
            let follows = kept.last().is_none_or(|p| p.offset + 1 == m.offset);
            if !m.publication || *m.epoch != *last.epoch || !follows {
                // History starts again after a marker (or a break).
                kept.clear();
                if !m.publication || *m.epoch != *last.epoch {
                    continue;
                }
            }
            kept.push(m);
        }
        if kept.last().map(|m| m.seq) != Some(last.seq) {
            // Not what `last` said (purged meanwhile): nothing rather than a guess.
            return Ok(Vec::new());
        }
        let old = kept
            .iter()
            .take_while(|m| cutoff_ns.is_some_and(|c| m.time_ns < c))
            .count();
        let extra = (kept.len() - old).saturating_sub(want as usize);
        Ok(kept[old + extra..]
            .iter()
            .map(Stored::to_publication)
            .collect())
    }

    /// Stores `data` on `subject` if the subject's last message is still `prev` (0: none).
    async fn store(
        &self,
        subject: &str,
        mut headers: HeaderMap,
        prev: u64,
        data: Bytes,
    ) -> Result<Stored2, Error> {
        headers.insert(H_PREV, prev.to_string().as_str());
        headers.insert(H_EXPECTED_LAST_SUBJECT_SEQ, prev.to_string().as_str());
        for attempt in 0..2 {
            let sent = self
                .js
                .publish_with_headers(subject.to_owned(), headers.clone(), data.clone())
                .await;
            let ack = match sent {
                Ok(ack) => ack.await,
                Err(e) => Err(e),
            };
            match ack {
                Ok(ack) if ack.duplicate => return Ok(Stored2::Duplicate(ack.sequence)),
                Ok(_) => return Ok(Stored2::Ok),
                Err(e) => match e.kind() {
                    PublishErrorKind::WrongLastSequence => return Ok(Stored2::Conflict),
                    PublishErrorKind::StreamNotFound if attempt == 0 => self.ensure().await?,
                    _ => return Err(temporary(e)),
                },
            }
        }
        Err(temporary("history stream not found"))
    }

    /// Stores `data` on `subject` if it has no message yet; false when it has one.
    pub(super) async fn store_first(&self, subject: &str, data: Bytes) -> Result<bool, Error> {
        Ok(matches!(
            self.store(subject, HeaderMap::new(), 0, data).await?,
            Stored2::Ok
        ))
    }

    /// Appends `data` to `channel`'s stream (see the module's documentation).
    pub(super) async fn publish(
        &self,
        channel: &str,
        data: Bytes,
        idempotency_key: Option<&str>,
    ) -> Result<StreamPosition, Error> {
        check_channel(channel)?;
        let subject = history_subject(channel);
        for attempt in 0..MAX_CAS_ATTEMPTS {
            let last = self.last(&subject).await?;
            let (offset, epoch, prev) = match &last {
                Some(m) => (m.offset + 1, m.epoch.to_string(), m.seq),
                None => (1, new_epoch(), 0),
            };
            let mut h = HeaderMap::new();
            h.insert(H_KIND, KIND_PUBLICATION);
            h.insert(H_OFFSET, offset.to_string().as_str());
            h.insert(H_EPOCH, epoch.as_str());
            if let Some(key) = idempotency_key {
                // Per channel; any characters (the key is encoded).
                h.insert(
                    H_MSG_ID,
                    format!("{}:{}", token(channel), token(key)).as_str(),
                );
            }
            match self.store(&subject, h, prev, data.clone()).await? {
                Stored2::Ok => {
                    self.send_live_publication(channel, offset, &epoch, data)
                        .await;
                    return Ok(StreamPosition { offset, epoch });
                }
                Stored2::Duplicate(seq) => {
                    return match self.at(seq).await? {
                        Some(m) => Ok(m.position()),
                        None => Err(bad(
                            "the publication with this idempotency key is no longer in history",
                        )),
                    };
                }
                Stored2::Conflict => {
                    // Another writer won: read its message and try again, after a short,
                    // growing, jittered pause when the contention goes on.
                    if attempt >= 2 {
                        let jitter = u64::from(new_epoch().as_bytes()[0] % 8);
                        let ms = (u64::from(attempt) * 2).min(20) + jitter;
                        tokio::time::sleep(Duration::from_millis(ms)).await;
                    }
                }
            }
        }
        Err(Error::backend(
            "publish: the channel's last message kept changing (too many concurrent writers)",
            true,
        ))
    }

    /// Publishes the stored publication on the channel's live subject (core NATS).
    async fn send_live_publication(&self, channel: &str, offset: u64, epoch: &str, data: Bytes) {
        let mut h = HeaderMap::new();
        h.insert(H_KIND, KIND_PUBLICATION);
        h.insert(H_OFFSET, offset.to_string().as_str());
        h.insert(H_EPOCH, epoch);
        // Queued to the connection (`publish` only waits for room in the client's command
        // queue), in this node's order of publishing. A failure here is a lost link: the
        // subscribers repair from history when it comes back, or at the next publication.
        let _ = self
            .client
            .publish_with_headers(live_subject(channel), h, data)
            .await;
    }

    /// Writes a marker (no publication) at `offset` with `epoch` after `prev`.
    async fn mark(
        &self,
        subject: &str,
        offset: u64,
        epoch: &str,
        prev: u64,
    ) -> Result<bool, Error> {
        let mut h = HeaderMap::new();
        h.insert(H_KIND, KIND_MARKER);
        h.insert(H_OFFSET, offset.to_string().as_str());
        h.insert(H_EPOCH, epoch);
        Ok(matches!(
            self.store(subject, h, prev, Bytes::new()).await?,
            Stored2::Ok | Stored2::Duplicate(_)
        ))
    }

    /// The channel's last message, creating the stream (a marker at offset 0 with a new
    /// epoch) when it has none.
    async fn last_or_create(&self, subject: &str) -> Result<Stored, Error> {
        for _ in 0..MAX_CAS_ATTEMPTS {
            if let Some(m) = self.last(subject).await? {
                return Ok(m);
            }
            self.mark(subject, 0, &new_epoch(), 0).await?;
        }
        Err(Error::backend("history: the channel kept changing", true))
    }

    /// Up to `want` consecutive publications ending at `last` (which they include when it
    /// is one), oldest first; stops at a marker, at a message missing from the stream, at
    /// one stored before `cutoff_ns` and at another epoch.
    async fn walk(
        &self,
        last: &Stored,
        want: u64,
        cutoff_ns: Option<i128>,
    ) -> Result<Vec<Publication>, Error> {
        let mut out = Vec::new();
        let mut cur = Some(last.clone());
        while let Some(m) = cur {
            if out.len() as u64 >= want
                || !m.publication
                || *m.epoch != *last.epoch
                || cutoff_ns.is_some_and(|c| m.time_ns < c)
                || m.offset + out.len() as u64 != last.offset
            {
                break;
            }
            out.push(m.to_publication());
            cur = if m.prev == 0 || m.offset == 1 {
                None
            } else {
                self.at(m.prev).await?
            };
        }
        out.reverse();
        Ok(out)
    }

    pub(super) async fn history(
        &self,
        channel: &str,
        query: HistoryQuery,
        options: StreamOptions,
    ) -> Result<HistoryPage, Error> {
        check_channel(channel)?;
        let subject = history_subject(channel);
        let last = match query {
            HistoryQuery::Newest(_) => match self.last(&subject).await? {
                Some(m) => m,
                None => {
                    return Ok(HistoryPage {
                        publications: Vec::new(),
                        position: StreamPosition {
                            offset: 0,
                            epoch: String::new(),
                        },
                        complete: true,
                    })
                }
            },
            _ => self.last_or_create(&subject).await?,
        };
        let position = last.position();
        let cutoff = cutoff_ns(options.history_ttl);
        let size = options.history_size as u64;
        let (publications, complete) = match query {
            HistoryQuery::Position => (Vec::new(), true),
            HistoryQuery::Newest(n) => {
                let want = (n as u64).min(size);
                (self.range(&subject, &last, want, cutoff).await?, true)
            }
            HistoryQuery::Since(since) => {
                if since.epoch != *last.epoch || since.offset > last.offset {
                    (Vec::new(), false)
                } else {
                    let missed = last.offset - since.offset;
                    if missed == 0 {
                        (Vec::new(), true)
                    } else if missed > size {
                        (Vec::new(), false)
                    } else {
                        let p = self.range(&subject, &last, missed, cutoff).await?;
                        let complete = p.len() as u64 == missed;
                        (if complete { p } else { Vec::new() }, complete)
                    }
                }
            }
        };
        Ok(HistoryPage {
            publications,
            position,
            complete,
        })
    }

    /// Everything stored after (`epoch`, `offset`) on `channel`, for a gap repair or a
    /// resume after a lost link (no history size or TTL applied: what the stream has).
    /// `epoch` None: the channel had no stream when this node looked; any epoch is taken.
    pub(super) async fn read_since(
        &self,
        channel: &str,
        epoch: Option<&str>,
        offset: u64,
    ) -> Result<Since, Error> {
        let subject = history_subject(channel);
        let Some(last) = self.last(&subject).await? else {
            return Ok(match epoch {
                // Still nothing: nothing missed.
                None => Since::Complete(Vec::new()),
                // The stream is gone (the store was lost or the stream aged out).
                Some(_) => Since::Incomplete(None),
            });
        };
        let position = last.position();
        let offset = if epoch.is_none() { 0 } else { offset };
        if epoch.is_some_and(|e| e != &*last.epoch) || offset > last.offset {
            return Ok(Since::Incomplete(Some(position)));
        }
        let missed = last.offset - offset;
        if missed == 0 {
            return Ok(Since::Complete(Vec::new()));
        }
        if missed > MAX_REPAIR {
            return Ok(Since::Incomplete(Some(position)));
        }
        let p = self.range(&subject, &last, missed, None).await?;
        Ok(if p.len() as u64 == missed {
            Since::Complete(p)
        } else {
            Since::Incomplete(Some(position))
        })
    }

    /// Forgets the channel's publications, keeping its position: a marker at the last
    /// offset, then the subject purged down to its last message.
    pub(super) async fn remove_history(&self, channel: &str) -> Result<(), Error> {
        check_channel(channel)?;
        let subject = history_subject(channel);
        for _ in 0..MAX_CAS_ATTEMPTS {
            let Some(last) = self.last(&subject).await? else {
                return Ok(());
            };
            if !last.publication {
                return Ok(());
            }
            if self
                .mark(&subject, last.offset, &last.epoch, last.seq)
                .await?
            {
                self.history
                    .purge()
                    .filter(subject.as_str())
                    .keep(1)
                    .await
                    .map_err(temporary)?;
                return Ok(());
            }
        }
        Err(Error::backend(
            "remove_history: the channel kept changing",
            true,
        ))
    }
}

/// Messages stored before this (nanoseconds since the Unix epoch) are past `ttl`.
fn cutoff_ns(ttl: Duration) -> Option<i128> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_nanos() as i128;
    Some(now - ttl.as_nanos() as i128)
}
