//! Resumes that arrive together share their history reads: a reconnect storm (every client
//! of a node that died coming back at once, all on the same channels) must not become a
//! history storm on the engine.
//!
//! The reads of one channel's resumes take turns. A resume that waits for its turn puts its
//! position on the channel's list first; the read that takes the turn asks for everything
//! after the lowest position on the list (of the same epoch as its own), and leaves its page
//! for the others. A resume may use a page only if the read behind it started after the
//! resume had registered its subscription (so that its buffered live events and the page
//! leave no gap between them: see the node's recovery) and if the page covers its position.
//! Otherwise it reads for itself. 10,000 resumes at once cost a handful of reads.

use crate::engine::{Error, HistoryPage, Publication, StreamPosition};
use crate::lock;
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

/// The resumes of every channel that has some in progress.
#[derive(Debug, Default)]
pub(crate) struct Resumes {
    channels: Mutex<HashMap<Arc<str>, Arc<Channel>>>,
}

/// One channel's resumes in progress.
#[derive(Debug, Default)]
struct Channel {
    /// Held by the read in progress.
    turn: tokio::sync::Mutex<()>,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Reads started so far.
    started: u64,
    /// Positions of the resumes waiting, by a number of their own.
    waiting: HashMap<u64, StreamPosition>,
    next_waiter: u64,
    /// The last page read: the number of its read, what it was read after, the page.
    last: Option<(u64, StreamPosition, Arc<HistoryPage>)>,
    /// A position history was found not to reach back to: no read is made for one at or
    /// below it (history only loses its oldest publications).
    trimmed: Option<StreamPosition>,
}

impl Resumes {
    /// The page `since` would get from `read(since)`, from a read shared with the other
    /// resumes of `channel` when that is exact. Call it after the subscription is
    /// registered.
    pub(crate) async fn read<F, Fut>(
        &self,
        channel: &Arc<str>,
        since: &StreamPosition,
        read: F,
    ) -> Result<HistoryPage, Error>
    where
        F: Fn(StreamPosition) -> Fut,
        Fut: Future<Output = Result<HistoryPage, Error>>,
    {
        let ch = lock(&self.channels)
            .entry(channel.clone())
            .or_default()
            .clone();
        let (me, arrived) = {
            let mut st = lock(&ch.state);
            let me = st.next_waiter;
            st.next_waiter += 1;
            st.waiting.insert(me, since.clone());
            (me, st.started)
        };
        let r = async {
            let _turn = ch.turn.lock().await;
            let query = {
                let mut st = lock(&ch.state);
                if let Some((n, after, page)) = &st.last {
                    if *n > arrived {
                        if let Some(mine) = serve(after, page, since, st.trimmed.as_ref()) {
                            return Ok(mine);
                        }
                    }
                }
                st.started += 1;
                // Everything after the lowest position of my epoch that is waiting and that
                // history may still reach.
                let floor = st
                    .trimmed
                    .as_ref()
                    .filter(|t| t.epoch == since.epoch)
                    .map(|t| t.offset);
                let lowest = st
                    .waiting
                    .values()
                    .filter(|p| p.epoch == since.epoch && floor.is_none_or(|f| p.offset > f))
                    .map(|p| p.offset)
                    .min()
                    .unwrap_or(since.offset);
                (
                    st.started,
                    StreamPosition {
                        offset: lowest,
                        epoch: since.epoch.clone(),
                    },
                )
            };
            let (n, after) = query;
            let page = Arc::new(read(after.clone()).await?);
            let mine = {
                let mut st = lock(&ch.state);
                if !page.complete && page.position.epoch == after.epoch {
                    st.trimmed = Some(after.clone());
                }
                let mine = serve(&after, &page, since, st.trimmed.as_ref());
                st.last = Some((n, after.clone(), page));
                mine
            };
            match mine {
                Some(mine) => Ok(mine),
                // History does not reach back to the lowest position waiting, but may reach
                // back to mine.
                None => read(since.clone()).await,
            }
        }
        .await;
        lock(&ch.state).waiting.remove(&me);
        let mut channels = lock(&self.channels);
        // The map's and this one: nobody else is on this channel.
        if Arc::strong_count(&ch) == 2 {
            channels.remove(channel);
        }
        r
    }

    /// Channels with resumes in progress (for tests).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        lock(&self.channels).len()
    }
}

/// What a resume from `since` gets out of `page`, read after `after`; `None` when the page
/// cannot tell (it was read for a later position, or of another epoch while `since` may be
/// of the stream's). `trimmed`: a position history is known not to reach back to.
fn serve(
    after: &StreamPosition,
    page: &HistoryPage,
    since: &StreamPosition,
    trimmed: Option<&StreamPosition>,
) -> Option<HistoryPage> {
    let position = page.position.clone();
    let too_old = trimmed.is_some_and(|t| t.epoch == since.epoch && since.offset <= t.offset);
    if since.epoch != position.epoch || since.offset > position.offset || too_old {
        // Its own read would find the epoch different (or a position never reached).
        return Some(HistoryPage {
            publications: Vec::new(),
            position,
            complete: false,
        });
    }
    if since.epoch != after.epoch {
        return None;
    }
    if !page.complete {
        // History does not reach back past `after`: nor past any older position.
        return (since.offset <= after.offset).then(|| HistoryPage {
            publications: Vec::new(),
            position,
            complete: false,
        });
    }
    if since.offset < after.offset {
        return None;
    }
    let publications: Vec<Publication> = page
        .publications
        .iter()
        .filter(|p| p.offset > since.offset)
        .cloned()
        .collect();
    Some(HistoryPage {
        publications,
        position,
        complete: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    fn pos(offset: u64, epoch: &str) -> StreamPosition {
        StreamPosition {
            offset,
            epoch: epoch.into(),
        }
    }

    /// A stream at offset 100 of epoch `e` keeping everything from 51.
    fn page_after(after: &StreamPosition) -> HistoryPage {
        let epoch: Arc<str> = Arc::from("e");
        if after.epoch != "e" || after.offset < 50 {
            return HistoryPage {
                publications: Vec::new(),
                position: pos(100, "e"),
                complete: false,
            };
        }
        HistoryPage {
            publications: (after.offset + 1..=100)
                .map(|offset| Publication {
                    offset,
                    epoch: epoch.clone(),
                    data: Bytes::from_static(b"1"),
                })
                .collect(),
            position: pos(100, "e"),
            complete: true,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_burst_of_resumes_shares_a_few_reads_and_each_gets_its_own_page() {
        let resumes = Arc::new(Resumes::default());
        let reads = Arc::new(AtomicUsize::new(0));
        let channel: Arc<str> = Arc::from("c");
        let mut tasks = Vec::new();
        for i in 0..1000u64 {
            let (resumes, reads, channel) = (resumes.clone(), reads.clone(), channel.clone());
            // Mostly the live epoch at various offsets; some of another epoch, some too old.
            let since = match i % 10 {
                0 => pos(10, "e"),
                1 => pos(60, "old"),
                _ => pos(50 + i % 50, "e"),
            };
            tasks.push(tokio::spawn(async move {
                let page = resumes
                    .read(&channel, &since, |after| {
                        let reads = reads.clone();
                        async move {
                            reads.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            Ok(page_after(&after))
                        }
                    })
                    .await
                    .unwrap();
                (since, page)
            }));
        }
        for t in tasks {
            let (since, page) = t.await.unwrap();
            let want = page_after(&since);
            assert_eq!(page.complete, want.complete, "{since:?}");
            assert_eq!(page.position, want.position);
            let offsets =
                |p: &HistoryPage| p.publications.iter().map(|p| p.offset).collect::<Vec<_>>();
            assert_eq!(offsets(&page), offsets(&want), "{since:?}");
        }
        let reads = reads.load(Ordering::SeqCst);
        eprintln!("{reads} history reads for 1,000 resumes");
        assert!(reads <= 20, "{reads} reads for 1,000 resumes");
        assert_eq!(resumes.len(), 0, "nothing is kept once they are done");
    }

    #[tokio::test]
    async fn a_page_read_before_a_resume_arrived_is_not_used() {
        let resumes = Resumes::default();
        let channel: Arc<str> = Arc::from("c");
        let reads = AtomicUsize::new(0);
        for _ in 0..3 {
            resumes
                .read(&channel, &pos(60, "e"), |after| {
                    reads.fetch_add(1, Ordering::SeqCst);
                    std::future::ready(Ok(page_after(&after)))
                })
                .await
                .unwrap();
        }
        // One after the other: each read for itself (a page read earlier may miss what was
        // published since).
        assert_eq!(reads.load(Ordering::SeqCst), 3);
    }
}
