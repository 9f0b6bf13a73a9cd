//! A connection's outbound queue: one per connection, whatever the number of its
//! subscriptions (or rooms), bounded in messages and in bytes, and the one place where
//! deliveries meet the connection's socket.
//!
//! The node pushes each event of a channel into the outbox of every subscriber (an `Arc`
//! each: the event itself is shared, and framed once for all); a room pushes each message
//! into the outbox of every other member. A channel or a room therefore costs one entry per
//! member, not a preallocated ring: memory follows the messages actually waiting.
//!
//! # Delivery
//!
//! An outbox may hold its connection's socket (anything [`Transmit`]), behind a lock that
//! the connection's task takes only while it polls or answers a request. A push never
//! writes and never waits: it queues the message and, the first time, puts the outbox on
//! its [`Deliverer`]'s list, waking the deliverer if the list was empty. The deliverer, one
//! task per runtime worker, then goes through the list in one tight loop: for each outbox
//! whose lock is free it moves the queued frames into the socket and writes them without
//! waiting. So a publication to 10,000 subscribers is one wake-up, not 10,000, and
//! publications that arrive while a pass is running leave together in the next one (one
//! write per socket for several messages). Only what a socket cannot take now, an outbox
//! whose task holds the lock, and a slow consumer wake the connection's task, which drains
//! the outbox itself under the lock. Both drain in queue order and under the same lock, so
//! events never overtake each other, and a reply and an event never share a frame.
//!
//! # Slow consumers
//!
//! An outbox that would exceed its messages or bytes is a slow consumer: the message is
//! dropped, the outbox says so on its next [`Outbox::try_recv`] (as [`Error::is_lagged`])
//! or [`Outbox::poll_socket`] (as [`Slow`]), and the connection layer closes the
//! connection so that the client resumes from its last position. A socket with more than
//! the byte bound waiting is one too. Pushing never waits, so one slow consumer never holds
//! up the others.
//!
//! Each event is queued with the id of the subscription it was delivered for, so that the
//! connection can tell events of a subscription that has ended (still queued after an
//! `unsubscribe`) from those of a new subscription to the same channel. The deliverer does
//! not look at it: the connection's task holds the lock while it changes its
//! subscriptions, and drains the outbox through that filter before letting go.
//!
//! # Queued bytes
//!
//! A deliverer keeps the sum, over its outboxes, of the payload bytes queued and the bytes
//! their sockets had waiting when last seen ([`Deliverer::queued`], the metric
//! `tidewire_queued_bytes`): each outbox adds what changed when its queue changes and when
//! its socket is written (by the deliverer or by the task's poll), and takes everything
//! back when it goes.
//!
//! The receiving side ([`Outbox`]) belongs to the connection; the engine keeps
//! [`OutboxSender`]s. Dropping the [`Outbox`] closes it, and engines forget closed senders
//! the next time they deliver, so a connection that ends without unsubscribing leaves
//! nothing behind for long.

use super::Event;
use crate::engine::{Error, ErrorKind};
use std::any::Any;
use std::cell::UnsafeCell;
use std::collections::VecDeque;
use std::fmt;
use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tidewire::PreparedMessage;

/// A connection's socket as the outbox sees it: frames go in, and are written without
/// waiting.
pub trait Transmit: Send + 'static {
    /// Queues `msg` on the connection without writing it. False when the connection is
    /// closed.
    fn queue_prepared(&mut self, msg: &PreparedMessage) -> bool;
    /// Writes what is queued as far as the socket takes it now, never waiting. Returns the
    /// bytes still waiting, or `None` when the connection has failed.
    fn write_now(&mut self) -> Option<usize>;
    /// Bytes queued and not yet written.
    fn pending(&self) -> usize;
    /// Queues a ping (the heartbeat). False when the connection is closed.
    fn queue_ping(&mut self) -> bool;
}

/// Why an outbox's connection is a slow consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slow {
    /// The queue was full: this many messages were dropped.
    Queue(u64),
    /// The socket had more bytes waiting than the outbox's byte bound.
    Socket,
}

impl fmt::Display for Slow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Slow::Queue(n) => write!(f, "its queue overflowed ({n} messages dropped)"),
            Slow::Socket => f.write_str("send buffer full"),
        }
    }
}

/// Why [`Outbox::poll_socket`] stopped waiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// The connection is a slow consumer.
    Slow(Slow),
    /// The server is shutting down ([`Deliverer::shut_down`]).
    Shutdown,
    /// The server is draining: this connection is to move to another node and resume
    /// there ([`Deliverer::restart_some`]).
    Restart,
    /// Nothing arrived from the peer for the heartbeat's timeout.
    Silent,
    /// The server has orders for the connection ([`OutboxSender::notify_orders`]): the
    /// connection takes them where they are kept, then calls [`Outbox::orders_taken`].
    Ordered,
}

/// What the server asks of a connection from outside its task (the server API): the
/// connection's task carries it out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Order {
    /// Close with `code` and `reason`.
    Disconnect {
        /// The close code (4000–4999).
        code: u16,
        /// The close reason.
        reason: String,
    },
    /// Subscribe to the channel (a server-side subscription).
    Subscribe(Arc<str>),
    /// End the subscription to the channel.
    Unsubscribe(Arc<str>),
    /// The connection expires at this time (seconds since the Unix epoch), or never.
    Refresh(Option<u64>),
    /// Close the connection if its token was issued before this time (seconds since the
    /// Unix epoch).
    Revoke(u64),
}

/// Whether a connection is to end because of the server, or has orders to take (a byte:
/// the outbox's state is counted in every idle connection).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Halt {
    #[default]
    No,
    /// The server is stopping (1001).
    Stop,
    /// The server is draining: move to another node (1012).
    Move,
    /// Not an end: the server API has orders for the connection.
    Orders,
}

/// A queued delivery: a channel event for a subscription, or a frame (a room's message).
enum Item {
    Event(u64, Arc<Event>),
    Frame(Arc<PreparedMessage>),
}

impl Item {
    fn prepared(&self) -> Option<&PreparedMessage> {
        match self {
            Item::Event(_, e) => e.prepared(),
            Item::Frame(m) => Some(m),
        }
    }
}

/// The socket slot: `Option<T>` for the connection's socket type, erased.
trait Slot: Send {
    fn transmit(&mut self) -> Option<&mut dyn Transmit>;
    fn as_any(&mut self) -> &mut dyn Any;
    fn clear(&mut self);
}

impl<T: Transmit> Slot for Option<T> {
    fn transmit(&mut self) -> Option<&mut dyn Transmit> {
        self.as_mut().map(|t| t as &mut dyn Transmit)
    }
    fn as_any(&mut self) -> &mut dyn Any {
        self
    }
    fn clear(&mut self) {
        *self = None;
    }
}

/// The socket type of an outbox that never holds one.
enum Detached {}

impl Transmit for Detached {
    fn queue_prepared(&mut self, _: &PreparedMessage) -> bool {
        match *self {}
    }
    fn write_now(&mut self) -> Option<usize> {
        match *self {}
    }
    fn pending(&self) -> usize {
        match *self {}
    }
    fn queue_ping(&mut self) -> bool {
        match *self {}
    }
}

/// One allocation per connection: the queue's state, then the socket (its type erased).
struct Shared<S: ?Sized> {
    state: Mutex<State>,
    closed: AtomicBool,
    /// The lock of `socket`: held by the connection's task while it polls or answers a
    /// request, by the deliverer while it writes. Only ever tried, never waited for.
    busy: AtomicBool,
    capacity: u32,
    max_bytes: usize,
    deliverer: Option<Arc<Deliverer>>,
    /// Where the deliverer keeps it in its registry.
    index: u32,
    /// When something last arrived from the peer (the deliverer's clock, ms).
    seen: std::sync::atomic::AtomicU32,
    /// Bytes the socket had waiting when last seen (by the holder of `busy`), counted in
    /// the deliverer's [`Deliverer::queued`].
    waiting: AtomicUsize,
    socket: UnsafeCell<S>,
}

// SAFETY: `socket` is only reached through `busy` (acquire/release, one holder at a time),
// and `S: Send`; everything else is `Sync`.
unsafe impl<S: ?Sized + Send> Sync for Shared<S> {}

type Link = Shared<dyn Slot>;

#[derive(Default)]
struct State {
    items: VecDeque<Item>,
    /// Payload bytes of `items`.
    bytes: usize,
    /// Messages dropped because the queue was full.
    dropped: u64,
    /// The socket had more than `max_bytes` waiting after a write by the deliverer.
    overflowed: bool,
    /// On the deliverer's list.
    scheduled: bool,
    /// The server is shutting down (or draining).
    shutdown: Halt,
    /// The peer has been silent for the heartbeat's timeout.
    silent: bool,
    /// When the deliverer last pinged it (its clock, ms).
    pinged: u32,
    /// The connection's task, to wake when it has to take over.
    waker: Option<Waker>,
}

/// The receiving side of a connection's queue; holds the connection's socket once
/// attached.
pub struct Outbox {
    shared: Arc<Link>,
}

/// The side the engine (or a room) delivers into; cheap to clone.
#[derive(Clone)]
pub struct OutboxSender {
    shared: Arc<Link>,
}

impl fmt::Debug for Outbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Outbox").finish_non_exhaustive()
    }
}

impl fmt::Debug for OutboxSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutboxSender").finish_non_exhaustive()
    }
}

impl Outbox {
    /// An empty outbox holding at most `capacity` events (at least 1), without a socket:
    /// read it with [`Outbox::recv`] and [`Outbox::try_recv`].
    pub fn new(capacity: usize) -> Self {
        Outbox::build::<Detached>(capacity, usize::MAX, None)
    }

    /// An outbox for a connection whose socket is a `T` (attached later with
    /// [`Outbox::attach`]): at most `capacity` messages and `max_bytes` payload bytes
    /// queued, `max_bytes` waiting in the socket. With a `deliverer`, the deliverer writes
    /// to the socket; without one, the connection's task does.
    pub fn for_socket<T: Transmit>(
        capacity: usize,
        max_bytes: usize,
        deliverer: Option<Arc<Deliverer>>,
    ) -> Self {
        Outbox::build::<T>(capacity, max_bytes, deliverer)
    }

    fn build<T: Transmit>(
        capacity: usize,
        max_bytes: usize,
        deliverer: Option<Arc<Deliverer>>,
    ) -> Self {
        let index = deliverer.as_ref().map_or(0, |d| d.reserve());
        let now = deliverer.as_ref().map_or(0, |d| d.now_ms());
        let shared: Arc<Shared<Option<T>>> = Arc::new(Shared {
            state: Mutex::new(State::default()),
            closed: AtomicBool::new(false),
            busy: AtomicBool::new(false),
            capacity: capacity.clamp(1, u32::MAX as usize) as u32,
            max_bytes: max_bytes.max(1),
            deliverer,
            index,
            seen: std::sync::atomic::AtomicU32::new(now),
            waiting: AtomicUsize::new(0),
            socket: UnsafeCell::new(None),
        });
        let shared: Arc<Link> = shared;
        if let Some(d) = &shared.deliverer {
            d.register(&shared);
        }
        Outbox { shared }
    }

    /// A sender for the engine to deliver into.
    pub fn sender(&self) -> OutboxSender {
        OutboxSender {
            shared: self.shared.clone(),
        }
    }

    /// The next event if one is waiting, with the id of the subscription it came for
    /// (frames, which only rooms push, are skipped). Fails with [`Error::is_lagged`] (and
    /// the number of messages dropped) once the queue has overflowed: the consumer fell
    /// behind.
    pub fn try_recv(&self) -> Result<Option<(u64, Arc<Event>)>, Error> {
        let mut st = self.shared.lock();
        if st.dropped > 0 {
            return Err(Error::new(ErrorKind::Lagged(st.dropped)));
        }
        while let Some(item) = st.items.pop_front() {
            if let Item::Event(id, event) = item {
                return Ok(Some((id, event)));
            }
        }
        self.shared.set_bytes(&mut st, 0);
        Ok(None)
    }

    /// The next event, waiting for one. Cancellation safe: an event is taken only when
    /// it is returned.
    pub async fn recv(&self) -> Result<(u64, Arc<Event>), Error> {
        poll_fn(|cx| {
            if let Some(event) = self.try_recv()? {
                return Poll::Ready(Ok(event));
            }
            let mut st = self.shared.lock();
            // Checked again under the lock that a push takes: no wake-up is lost.
            if st.items.is_empty() && st.dropped == 0 {
                register(&mut st.waker, cx);
                return Poll::Pending;
            }
            drop(st);
            cx.waker().wake_by_ref();
            Poll::Pending
        })
        .await
    }

    /// The connection has taken its orders: [`Outbox::poll_socket`] waits again (until
    /// the next [`OutboxSender::notify_orders`]).
    pub fn orders_taken(&self) {
        let mut st = self.shared.lock();
        if st.shutdown == Halt::Orders {
            st.shutdown = Halt::No;
        }
    }

    /// Notes that something arrived from the peer (for the deliverer's heartbeat).
    pub fn seen(&self) {
        if let Some(d) = &self.shared.deliverer {
            self.shared.seen.store(d.now_ms(), Ordering::Relaxed);
        }
    }

    /// Messages waiting.
    pub fn len(&self) -> usize {
        self.shared.lock().items.len()
    }

    /// True when no message is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Puts the connection's socket in the outbox; what was queued before leaves on the
    /// next [`Outbox::poll_socket`]. Does nothing unless `T` is the type the outbox was
    /// made for.
    pub fn attach<T: Transmit>(&self, socket: T) {
        let mut guard = self.spin_lock();
        if let Some(slot) = guard.slot::<T>() {
            *slot = Some(socket);
        }
    }

    /// The socket lock, spinning while the deliverer holds it (a few non-blocking writes).
    fn spin_lock(&self) -> OutboxGuard {
        loop {
            if let Some(g) = self.try_lock() {
                return g;
            }
            std::hint::spin_loop();
        }
    }

    /// The socket lock, for the connection's task; `None` while the deliverer holds it
    /// (for the time of a few non-blocking writes).
    pub fn try_lock(&self) -> Option<OutboxGuard> {
        self.shared.try_busy().then(|| OutboxGuard {
            shared: self.shared.clone(),
        })
    }

    /// The socket lock, waiting (by yielding) while the deliverer holds it. Hold it while
    /// answering a request: deliveries then queue up behind the reply.
    pub async fn lock(&self) -> OutboxGuard {
        loop {
            if let Some(g) = self.try_lock() {
                return g;
            }
            tokio::task::yield_now().await;
        }
    }

    /// For the connection's task: under the socket lock, moves the queued messages that
    /// `keep` accepts (given the subscription id and the event; frames are always kept)
    /// into the socket, then polls `f` with it. Ready with [`Slow`] when the connection is
    /// a slow consumer. The task is woken when the deliverer needs it: the lock was held,
    /// the socket is full, or the queue overflowed.
    pub fn poll_socket<T: Transmit, R>(
        &self,
        cx: &mut Context<'_>,
        keep: impl FnMut(u64, &Event) -> bool,
        f: impl FnOnce(&mut T, &mut Context<'_>) -> Poll<R>,
    ) -> Poll<Result<R, Stop>> {
        let Some(mut guard) = self.try_lock() else {
            // The deliverer is writing; it is done within microseconds.
            cx.waker().wake_by_ref();
            return Poll::Pending;
        };
        {
            let mut st = self.shared.lock();
            match st.shutdown {
                Halt::No => {}
                Halt::Stop => return Poll::Ready(Err(Stop::Shutdown)),
                Halt::Move => return Poll::Ready(Err(Stop::Restart)),
                Halt::Orders => return Poll::Ready(Err(Stop::Ordered)),
            }
            if st.silent {
                return Poll::Ready(Err(Stop::Silent));
            }
            register(&mut st.waker, cx);
        }
        if let Err(slow) = guard.drain::<T>(keep) {
            return Poll::Ready(Err(Stop::Slow(slow)));
        }
        match guard.slot::<T>().and_then(|s| s.as_mut()) {
            Some(socket) => {
                let r = f(socket, cx);
                self.shared.set_waiting(socket.pending());
                r.map(Ok)
            }
            None => Poll::Pending,
        }
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
        // The socket and the queued messages go now, not when the engine forgets the
        // last sender: the connection ends here.
        let guard = self.spin_lock();
        // SAFETY: the guard holds `busy`.
        unsafe { (*guard.shared.socket.get()).clear() };
        self.shared.set_waiting(0);
        drop(guard);
        let mut st = self.shared.lock();
        st.items = VecDeque::new();
        self.shared.set_bytes(&mut st, 0);
        drop(st);
        if let Some(d) = &self.shared.deliverer {
            d.unregister(self.shared.index);
        }
    }
}

/// The socket lock of an outbox, held by the connection's task.
pub struct OutboxGuard {
    shared: Arc<Link>,
}

impl OutboxGuard {
    fn slot<T: Transmit>(&mut self) -> Option<&mut Option<T>> {
        // SAFETY: the guard holds `busy`, so nothing else reaches the socket.
        let slot = unsafe { &mut *self.shared.socket.get() };
        slot.as_any().downcast_mut::<Option<T>>()
    }

    /// The socket, if attached and of type `T`.
    pub fn socket<T: Transmit>(&mut self) -> Option<&mut T> {
        self.slot::<T>().and_then(|s| s.as_mut())
    }

    /// Takes the socket out, to close it: the outbox is closed from now on (pushes are
    /// refused, so engines forget it).
    pub fn take<T: Transmit>(&mut self) -> Option<T> {
        self.shared.closed.store(true, Ordering::Release);
        let socket = self.slot::<T>().and_then(Option::take);
        self.shared.set_waiting(0);
        let mut st = self.shared.lock();
        st.items = VecDeque::new();
        self.shared.set_bytes(&mut st, 0);
        socket
    }

    /// Moves the queued messages that `keep` accepts into the socket (no I/O: they leave
    /// with the socket's next write). Fails when the connection is a slow consumer.
    pub fn drain<T: Transmit>(
        &mut self,
        mut keep: impl FnMut(u64, &Event) -> bool,
    ) -> Result<(), Slow> {
        let shared = self.shared.clone();
        let mut st = shared.lock();
        if st.dropped > 0 {
            return Err(Slow::Queue(st.dropped));
        }
        if st.overflowed {
            return Err(Slow::Socket);
        }
        let Some(socket) = self.socket::<T>() else {
            return Ok(());
        };
        let (mut n, mut bytes) = (0, 0);
        while let Some(item) = st.items.pop_front() {
            let wanted = match &item {
                Item::Event(id, event) => keep(*id, event),
                Item::Frame(_) => true,
            };
            if wanted {
                if let Some(p) = item.prepared() {
                    socket.queue_prepared(p);
                    n += 1;
                    bytes += p.payload().len() as u64;
                }
            }
        }
        shared.set_bytes(&mut st, 0);
        drop(st);
        if let Some(d) = &shared.deliverer {
            d.count(n, bytes);
        }
        let waiting = socket.pending();
        shared.set_waiting(waiting);
        if waiting > shared.max_bytes {
            return Err(Slow::Socket);
        }
        Ok(())
    }
}

impl Drop for OutboxGuard {
    fn drop(&mut self) {
        self.shared.busy.store(false, Ordering::Release);
    }
}

impl OutboxSender {
    /// Queues `event`, delivered for subscription `id`; never waits. A full queue drops
    /// it and marks the outbox lagged. Returns false when the outbox is closed (its
    /// connection has gone): forget it.
    pub fn push(&self, id: u64, event: Arc<Event>) -> bool {
        self.enqueue(Item::Event(id, event))
    }

    /// Tells the connection's task that it has orders (kept by whoever gave them): its
    /// [`Outbox::poll_socket`] returns [`Stop::Ordered`]. False when the outbox is closed.
    /// A connection told to stop or move stays so.
    pub fn notify_orders(&self) -> bool {
        if self.shared.closed.load(Ordering::Acquire) {
            return false;
        }
        let mut st = self.shared.lock();
        if st.shutdown == Halt::No {
            st.shutdown = Halt::Orders;
        }
        wake(st);
        true
    }

    /// Queues a prepared frame (a room's message), as [`OutboxSender::push`].
    pub fn push_frame(&self, frame: Arc<PreparedMessage>) -> bool {
        self.enqueue(Item::Frame(frame))
    }

    fn enqueue(&self, item: Item) -> bool {
        let shared = &self.shared;
        if shared.closed.load(Ordering::Acquire) {
            return false;
        }
        // Serialized and framed once per event, by whichever subscriber comes first.
        let size = item.prepared().map_or(0, |p| p.payload().len());
        let mut st = shared.lock();
        if st.dropped > 0 {
            st.dropped += 1;
            return true;
        }
        let full = st.items.len() >= shared.capacity as usize
            || (!st.items.is_empty() && st.bytes + size > shared.max_bytes);
        if full {
            st.dropped = 1;
            wake(st);
            return true;
        }
        let was_empty = st.items.is_empty();
        st.items.push_back(item);
        let bytes = st.bytes + size;
        shared.set_bytes(&mut st, bytes);
        match &shared.deliverer {
            Some(d) if !st.scheduled => {
                st.scheduled = true;
                drop(st);
                d.schedule(shared.clone());
            }
            Some(_) => {}
            // The consumer drains everything it finds once woken: one wake-up per batch.
            None if was_empty => wake(st),
            None => {}
        }
        true
    }

    /// Marks the outbox lagged, as an overflow does: the connection closes and its client
    /// resumes from history (after the broker's link was lost and restored).
    pub fn mark_lagged(&self) {
        let mut st = self.shared.lock();
        st.dropped = st.dropped.max(1);
        wake(st);
    }

    /// Whether the receiving [`Outbox`] has been dropped.
    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire)
    }

    /// Whether `self` and `other` deliver into the same outbox.
    pub fn same_outbox(&self, other: &OutboxSender) -> bool {
        std::ptr::addr_eq(Arc::as_ptr(&self.shared), Arc::as_ptr(&other.shared))
    }
}

impl<S: ?Sized> Shared<S> {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets the queue's payload bytes, telling the deliverer's count the difference.
    fn set_bytes(&self, st: &mut State, bytes: usize) {
        if let Some(d) = &self.deliverer {
            d.requeued(st.bytes, bytes);
        }
        st.bytes = bytes;
    }

    /// Notes the bytes the socket has waiting; only by the holder of `busy`, so a load and
    /// a store do (no read-modify-write on every delivery, where it is almost always 0).
    fn set_waiting(&self, waiting: usize) {
        let before = self.waiting.load(Ordering::Relaxed);
        if before == waiting {
            return;
        }
        self.waiting.store(waiting, Ordering::Relaxed);
        if let Some(d) = &self.deliverer {
            d.requeued(before, waiting);
        }
    }

    fn try_busy(&self) -> bool {
        self.busy
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
    }
}

impl Link {
    /// The deliverer's turn: writes what is queued if the socket is free. Returns the
    /// messages and payload bytes written.
    fn deliver(&self) -> (u64, u64) {
        let mut st = self.lock();
        st.scheduled = false;
        if st.items.is_empty() {
            return (0, 0);
        }
        if st.dropped > 0 || st.overflowed || !self.try_busy() {
            // A slow consumer, or the task holds the socket: the task takes over.
            wake(st);
            return (0, 0);
        }
        // SAFETY: `busy` is held (released below), so nothing else reaches the socket.
        let slot = unsafe { &mut *self.socket.get() };
        let Some(socket) = slot.transmit() else {
            self.busy.store(false, Ordering::Release);
            wake(st);
            return (0, 0);
        };
        let (mut n, bytes) = (0, st.bytes as u64);
        while let Some(item) = st.items.pop_front() {
            if let Some(p) = item.prepared() {
                socket.queue_prepared(p);
                n += 1;
            }
        }
        self.set_bytes(&mut st, 0);
        drop(st);
        let left = socket.write_now();
        self.set_waiting(left.unwrap_or(0));
        self.busy.store(false, Ordering::Release);
        match left {
            Some(0) => {}
            Some(waiting) => {
                // The task writes the rest when the socket has room (its poll registers
                // for that; ours did not).
                let mut st = self.lock();
                st.overflowed |= waiting > self.max_bytes;
                wake(st);
            }
            None => wake(self.lock()),
        }
        (n, bytes)
    }
}

/// The size of an outbox for sockets of type `T` (one allocation per connection).
#[cfg(test)]
pub(crate) fn outbox_size<T: Transmit>() -> usize {
    std::mem::size_of::<Shared<Option<T>>>()
}

fn register(slot: &mut Option<Waker>, cx: &Context<'_>) {
    match slot {
        Some(w) if w.will_wake(cx.waker()) => {}
        _ => *slot = Some(cx.waker().clone()),
    }
}

fn wake(mut st: MutexGuard<'_, State>) {
    let waker = st.waker.take();
    drop(st);
    if let Some(w) = waker {
        w.wake();
    }
}

/// Writes the frames queued in outboxes to their sockets, from one task: one wake-up per
/// batch of deliveries instead of one per connection. See the module documentation.
pub struct Deliverer {
    dirty: Mutex<Vec<Arc<Link>>>,
    /// Every outbox of this deliverer, for [`Deliverer::shut_down`]: a connection's task
    /// then waits for nothing else (no watch receiver, no future of its own for it).
    registry: Mutex<Registry>,
    /// Ping interval and silence timeout, if the deliverer runs the heartbeat.
    heartbeat: Option<(Duration, Duration)>,
    /// The clock of `seen` and `pinged`.
    epoch: tokio::time::Instant,
    ready: tokio::sync::Notify,
    /// Messages and payload bytes written by this deliverer so far.
    sent: AtomicU64,
    sent_bytes: AtomicU64,
    /// Bytes queued in its outboxes and waiting in their sockets (see the module's
    /// documentation, "Queued bytes").
    queued: AtomicU64,
}

impl fmt::Debug for Deliverer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Deliverer").finish_non_exhaustive()
    }
}

/// The outboxes of a deliverer: a slot each, reused.
#[derive(Default)]
struct Registry {
    links: Vec<Option<std::sync::Weak<Link>>>,
    free: Vec<u32>,
}

/// Outboxes handled per turn of the deliverer before it lets other tasks run.
const PASS: usize = 1024;

impl Deliverer {
    /// A deliverer and its task, on the current tokio runtime (panics outside one).
    pub fn start() -> Arc<Deliverer> {
        Deliverer::with_heartbeat(None)
    }

    /// A deliverer that also runs the heartbeat of its connections, in place of a timer
    /// per connection: every quarter of the shorter of `interval` and `timeout` it pings
    /// each connection that has been quiet for `interval` (at most once per `interval`),
    /// and tells the task of one silent for `timeout` ([`Stop::Silent`]).
    pub fn with_heartbeat(heartbeat: Option<(Duration, Duration)>) -> Arc<Deliverer> {
        let d = Arc::new(Deliverer {
            dirty: Mutex::new(Vec::new()),
            registry: Mutex::new(Registry::default()),
            heartbeat,
            epoch: tokio::time::Instant::now(),
            ready: tokio::sync::Notify::new(),
            sent: AtomicU64::new(0),
            sent_bytes: AtomicU64::new(0),
            queued: AtomicU64::new(0),
        });
        tokio::spawn(run(d.clone()));
        d
    }

    /// Messages and payload bytes this deliverer has written.
    pub fn sent(&self) -> (u64, u64) {
        (
            self.sent.load(Ordering::Relaxed),
            self.sent_bytes.load(Ordering::Relaxed),
        )
    }

    /// Bytes queued in this deliverer's outboxes and waiting in their sockets, as last
    /// seen.
    pub fn queued(&self) -> u64 {
        self.queued.load(Ordering::Relaxed)
    }

    /// One of its outboxes went from `before` to `after` bytes queued (or waiting).
    fn requeued(&self, before: usize, after: usize) {
        if after > before {
            self.queued
                .fetch_add((after - before) as u64, Ordering::Relaxed);
        } else if before > after {
            self.queued
                .fetch_sub((before - after) as u64, Ordering::Relaxed);
        }
    }

    /// Tells the task of every outbox that the server is shutting down: its
    /// [`Outbox::poll_socket`] returns [`Stop::Shutdown`].
    pub fn shut_down(&self) {
        for link in self.links() {
            let mut st = link.lock();
            st.shutdown = Halt::Stop;
            wake(st);
        }
    }

    /// Tells the tasks of at most `n` outboxes not told yet that they are to move to
    /// another node (a drain): their [`Outbox::poll_socket`] returns [`Stop::Restart`].
    /// Returns how many were told.
    pub fn restart_some(&self, n: usize) -> usize {
        let mut told = 0;
        for link in self.links() {
            if told == n {
                break;
            }
            let mut st = link.lock();
            if matches!(st.shutdown, Halt::Stop | Halt::Move) {
                continue;
            }
            st.shutdown = Halt::Move;
            wake(st);
            told += 1;
        }
        told
    }

    /// The outboxes still open, taken out of the registry's lock.
    fn links(&self) -> Vec<Arc<Link>> {
        let r = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        r.links
            .iter()
            .flatten()
            .filter_map(|w| w.upgrade())
            .collect()
    }

    fn now_ms(&self) -> u32 {
        self.epoch.elapsed().as_millis() as u32
    }

    /// One heartbeat tick over every outbox.
    fn heartbeat(&self, interval: Duration, timeout: Duration) {
        let (interval, timeout) = (interval.as_millis() as u32, timeout.as_millis() as u32);
        let now = self.now_ms();
        for link in self.links() {
            let quiet = now.wrapping_sub(link.seen.load(Ordering::Relaxed));
            let mut st = link.lock();
            if quiet >= timeout {
                st.silent = true;
                wake(st);
                continue;
            }
            if quiet < interval || now.wrapping_sub(st.pinged) < interval {
                continue;
            }
            if !link.try_busy() {
                continue; // the task is busy with it; next tick
            }
            // SAFETY: `busy` is held (released below).
            let slot = unsafe { &mut *link.socket.get() };
            let mut waiting = 0;
            if let Some(socket) = slot.transmit() {
                if socket.queue_ping() {
                    st.pinged = now;
                }
                let left = socket.write_now();
                link.set_waiting(left.unwrap_or(0));
                waiting = left.unwrap_or(1);
            }
            link.busy.store(false, Ordering::Release);
            if waiting > 0 {
                wake(st);
            }
        }
    }

    fn reserve(&self) -> u32 {
        let mut r = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        match r.free.pop() {
            Some(i) => i,
            None => {
                r.links.push(None);
                (r.links.len() - 1) as u32
            }
        }
    }

    fn register(&self, link: &Arc<Link>) {
        let mut r = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(slot) = r.links.get_mut(link.index as usize) {
            *slot = Some(Arc::downgrade(link));
        }
    }

    fn unregister(&self, index: u32) {
        let mut r = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(slot) = r.links.get_mut(index as usize) {
            *slot = None;
            r.free.push(index);
        }
    }

    fn count(&self, n: u64, bytes: u64) {
        if n > 0 {
            self.sent.fetch_add(n, Ordering::Relaxed);
            self.sent_bytes.fetch_add(bytes, Ordering::Relaxed);
        }
    }

    fn schedule(&self, link: Arc<Link>) {
        let mut dirty = self.dirty.lock().unwrap_or_else(|e| e.into_inner());
        dirty.push(link);
        if dirty.len() == 1 {
            drop(dirty);
            self.ready.notify_one();
        }
    }
}

async fn run(d: Arc<Deliverer>) {
    let mut batch: Vec<Arc<Link>> = Vec::new();
    let period = d.heartbeat.map_or(Duration::from_secs(3600), |(i, t)| {
        (i.min(t) / 4).max(Duration::from_millis(10))
    });
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = d.ready.notified() => {}
            _ = tick.tick() => {
                if let Some((interval, timeout)) = d.heartbeat {
                    d.heartbeat(interval, timeout);
                }
                continue;
            }
        }
        loop {
            std::mem::swap(
                &mut batch,
                &mut *d.dirty.lock().unwrap_or_else(|e| e.into_inner()),
            );
            if batch.is_empty() {
                break;
            }
            let (mut n, mut bytes) = (0, 0);
            let mut done = 0;
            while done < batch.len() {
                let end = (done + PASS).min(batch.len());
                for link in &batch[done..end] {
                    let (k, b) = link.deliver();
                    n += k;
                    bytes += b;
                }
                done = end;
                if done < batch.len() {
                    tokio::task::yield_now().await;
                }
            }
            batch.clear();
            d.count(n, bytes);
        }
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
    fn bounded_in_bytes_too() {
        let outbox = Outbox::build::<Detached>(100, 100, None);
        let tx = outbox.sender();
        // Each event's frame is about 50 bytes of JSON: the third passes 100.
        assert!(tx.push(7, event(1)) && tx.push(7, event(2)));
        assert!(outbox.try_recv().is_ok());
        assert!(tx.push(7, event(3)) && tx.push(7, event(4)));
        assert!(outbox.try_recv().unwrap_err().is_lagged());
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

    /// A socket that takes `room` bytes, then nothing.
    #[derive(Default)]
    struct Fake {
        queued: Vec<u8>,
        written: Vec<u8>,
        room: usize,
    }

    impl Transmit for Fake {
        fn queue_prepared(&mut self, msg: &PreparedMessage) -> bool {
            self.queued.extend_from_slice(msg.payload());
            self.queued.push(b'\n');
            true
        }
        fn write_now(&mut self) -> Option<usize> {
            let n = self.queued.len().min(self.room);
            self.written.extend(self.queued.drain(..n));
            self.room -= n;
            Some(self.queued.len())
        }
        fn pending(&self) -> usize {
            self.queued.len()
        }
        fn queue_ping(&mut self) -> bool {
            self.queued.extend_from_slice(b"ping\n");
            true
        }
    }

    fn frame(text: &str) -> Arc<PreparedMessage> {
        Arc::new(PreparedMessage::new(tidewire::Message::text(text.to_owned())).unwrap())
    }

    /// An outbox whose socket takes 6 bytes, after the deliverer has written "one" and
    /// "two" to it ("o\n" left waiting).
    async fn two_frames_in_a_socket_with_room_for_6() -> (Arc<Deliverer>, Outbox) {
        let d = Deliverer::start();
        let outbox = Outbox::for_socket::<Fake>(100, 1 << 20, Some(d.clone()));
        outbox.attach(Fake {
            room: 6,
            ..Fake::default()
        });
        let tx = outbox.sender();
        assert!(tx.push_frame(frame("one")) && tx.push_frame(frame("two")));
        while d.sent().0 < 2 {
            tokio::task::yield_now().await;
        }
        (d, outbox)
    }

    /// The deliverer writes without waking the connection's task; what the socket cannot
    /// take is left to the task, in order.
    #[tokio::test]
    async fn the_deliverer_writes_and_leaves_the_rest_to_the_task() {
        let (_deliverer, outbox) = two_frames_in_a_socket_with_room_for_6().await;
        let tx = outbox.sender();
        let mut g = outbox.try_lock().unwrap();
        let socket = g.socket::<Fake>().unwrap();
        assert_eq!(socket.written, b"one\ntw");
        assert_eq!(socket.queued, b"o\n");
        drop(g);
        // The task drains what came while it held the lock, after what was there.
        let g = outbox.try_lock().unwrap();
        assert!(tx.push_frame(frame("three")));
        tokio::task::yield_now().await;
        drop(g);
        let polled = poll_fn(|cx| {
            outbox.poll_socket::<Fake, _>(cx, |_, _| true, |s, _| Poll::Ready(s.queued.clone()))
        })
        .await;
        assert_eq!(polled.unwrap(), b"o\nthree\n");
    }

    #[tokio::test]
    async fn queued_bytes_follow_the_queue_and_the_socket() {
        let (d, outbox) = two_frames_in_a_socket_with_room_for_6().await;
        let tx = outbox.sender();
        assert_eq!(d.queued(), 2, "\"o\\n\" still waiting in the socket");
        // The task holds the socket: the deliverer leaves the queue alone.
        let g = outbox.try_lock().unwrap();
        assert!(tx.push_frame(frame("three")));
        assert_eq!(d.queued(), 2 + 5);
        tokio::task::yield_now().await;
        drop(g);
        let polled = poll_fn(|cx| {
            outbox.poll_socket::<Fake, _>(cx, |_, _| true, |s, _| Poll::Ready(s.queued.len()))
        })
        .await;
        assert_eq!(polled.unwrap(), 8);
        assert_eq!(d.queued(), 8, "moved from the queue to the socket");
        drop(outbox);
        assert_eq!(d.queued(), 0, "a closed connection holds nothing");
    }

    #[tokio::test]
    async fn a_full_socket_is_a_slow_consumer() {
        let d = Deliverer::start();
        let outbox = Outbox::for_socket::<Fake>(100, 8, Some(d.clone()));
        outbox.attach(Fake::default());
        assert!(outbox.sender().push_frame(frame("0123456789")));
        let r = poll_fn(|cx| outbox.poll_socket::<Fake, ()>(cx, |_, _| true, |_, _| Poll::Pending))
            .await;
        assert_eq!(r, Err(Stop::Slow(Slow::Socket)));
    }

    #[tokio::test(start_paused = true)]
    async fn the_heartbeat_pings_quiet_connections_and_stops_silent_ones() {
        let d =
            Deliverer::with_heartbeat(Some((Duration::from_millis(300), Duration::from_secs(1))));
        let (quiet, talking) = (
            Outbox::for_socket::<Fake>(10, 1 << 20, Some(d.clone())),
            Outbox::for_socket::<Fake>(10, 1 << 20, Some(d.clone())),
        );
        quiet.attach(Fake {
            room: 1 << 20,
            ..Fake::default()
        });
        talking.attach(Fake {
            room: 1 << 20,
            ..Fake::default()
        });
        for _ in 0..12 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            talking.seen();
        }
        let written = |o: &Outbox| {
            o.try_lock()
                .unwrap()
                .socket::<Fake>()
                .unwrap()
                .written
                .clone()
        };
        assert!(written(&quiet).starts_with(b"ping\n"), "pinged");
        assert!(
            written(&talking).is_empty(),
            "a connection that talks is not pinged"
        );
        let r = poll_fn(|cx| quiet.poll_socket::<Fake, ()>(cx, |_, _| true, |_, _| Poll::Pending))
            .await;
        assert_eq!(r, Err(Stop::Silent));
    }

    #[tokio::test]
    async fn shutdown_reaches_every_task_and_slots_are_reused() {
        let d = Deliverer::start();
        let outboxes: Vec<Outbox> = (0..3)
            .map(|_| Outbox::for_socket::<Fake>(10, 1 << 20, Some(d.clone())))
            .collect();
        drop(Outbox::for_socket::<Fake>(10, 1 << 20, Some(d.clone())));
        let again = Outbox::for_socket::<Fake>(10, 1 << 20, Some(d.clone()));
        assert_eq!(again.shared.index, 3, "the freed slot is taken again");
        d.shut_down();
        for o in outboxes.iter().chain([&again]) {
            o.attach(Fake::default());
            let r = poll_fn(|cx| o.poll_socket::<Fake, ()>(cx, |_, _| true, |_, _| Poll::Pending))
                .await;
            assert_eq!(r, Err(Stop::Shutdown));
        }
    }
}
