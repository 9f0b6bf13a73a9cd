//! Heap bytes a channel with one subscriber costs the node and the memory engine, counted
//! by a global allocator: what `tidewire bench channels` measures as RSS, without the
//! connection's side and the allocator's slack.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::Arc;
use tidewire_hub::engine::{ClientInfo, MemoryBroker, MemoryPresence};
use tidewire_hub::node::Outbox;
use tidewire_hub::{Node, NodeOptions};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[tokio::test(flavor = "current_thread")]
async fn a_channel_with_one_subscriber_costs_little_heap() {
    const N: usize = 10_000;
    let broker = Arc::new(MemoryBroker::new());
    let node = Node::new(
        broker.clone(),
        Arc::new(MemoryPresence::new()),
        tidewire_hub::default_namespaces(),
        NodeOptions::default(),
    );
    let outbox = Outbox::new(16);
    let client = Arc::new(ClientInfo::new("c-1"));
    let names: Vec<String> = (0..N).map(|i| format!("user-{i:08}-inbox")).collect();
    let mut subs = Vec::with_capacity(N);
    let rss_before = rss();
    let before = LIVE.load(Ordering::Relaxed);
    for name in &names {
        let s = node
            .subscribe(name, client.clone(), None, outbox.sender())
            .await
            .unwrap();
        subs.push(s.subscription);
    }
    let subs_vec = std::mem::size_of_val(&subs[0]) * subs.capacity();
    let per_channel = (LIVE.load(Ordering::Relaxed) - before - subs_vec as isize) / N as isize;
    let rss_per_channel = (rss() - rss_before) / N;
    println!("heap per channel: {per_channel} bytes (node registry, broker stream, presence: the default namespace has presence); RSS {rss_per_channel} bytes");
    assert_eq!(node.channel_count(), N);
    assert_eq!(broker.len(), N);
    assert!(per_channel <= 280, "{per_channel} bytes per channel");
}

/// Resident bytes of this process.
fn rss() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}
