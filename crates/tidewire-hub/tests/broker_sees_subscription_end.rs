//! Through a real `/ws` connection: the broker is told to subscribe when a channel gets its
//! first subscriber and to unsubscribe when it loses its last, whether the client sends
//! `unsubscribe` or just goes away. A hub that ended subscriptions without telling the
//! broker (as the old engine did, by dropping a stream) fails here.

use bytes::Bytes;
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tidewire::Message;
use tidewire_hub::engine::{
    BrokerEvents, EngineFuture, HistoryPage, HistoryQuery, MemoryBroker, MemoryPresence,
    StreamOptions, StreamPosition,
};
use tidewire_hub::{Broker, Hub, HubConfig};

/// The memory broker, with the node's current subscriptions written down.
#[derive(Debug, Default)]
struct Recording {
    inner: MemoryBroker,
    subscribed: Mutex<BTreeSet<String>>,
}

impl Broker for Recording {
    fn start(&self, events: Arc<dyn BrokerEvents>) {
        self.inner.start(events)
    }
    fn publish<'a>(
        &'a self,
        channel: &'a str,
        data: Bytes,
        options: StreamOptions,
        key: Option<&'a str>,
    ) -> EngineFuture<'a, StreamPosition> {
        self.inner.publish(channel, data, options, key)
    }
    fn publish_join<'a>(
        &'a self,
        channel: &'a str,
        c: &'a tidewire_hub::engine::ClientInfo,
    ) -> EngineFuture<'a, ()> {
        self.inner.publish_join(channel, c)
    }
    fn publish_leave<'a>(
        &'a self,
        channel: &'a str,
        c: &'a tidewire_hub::engine::ClientInfo,
    ) -> EngineFuture<'a, ()> {
        self.inner.publish_leave(channel, c)
    }
    fn subscribe<'a>(&'a self, channel: &'a Arc<str>) -> EngineFuture<'a, ()> {
        self.subscribed.lock().unwrap().insert(channel.to_string());
        self.inner.subscribe(channel)
    }
    fn unsubscribe<'a>(&'a self, channel: &'a str) -> EngineFuture<'a, ()> {
        self.subscribed.lock().unwrap().remove(channel);
        self.inner.unsubscribe(channel)
    }
    fn history<'a>(
        &'a self,
        channel: &'a str,
        query: HistoryQuery,
        options: StreamOptions,
    ) -> EngineFuture<'a, HistoryPage> {
        self.inner.history(channel, query, options)
    }
    fn remove_history<'a>(&'a self, channel: &'a str) -> EngineFuture<'a, ()> {
        self.inner.remove_history(channel)
    }
    fn sweep(&self) -> EngineFuture<'_, ()> {
        self.inner.sweep()
    }
    fn stream_count(&self) -> Option<usize> {
        self.inner.stream_count()
    }
}

impl Recording {
    fn subscribed(&self) -> BTreeSet<String> {
        self.subscribed.lock().unwrap().clone()
    }

    /// Waits (bounded) until the broker's subscriptions are `want`.
    async fn wait_for(&self, want: &[&str]) {
        let want: BTreeSet<String> = want.iter().map(|s| s.to_string()).collect();
        for _ in 0..200 {
            if self.subscribed() == want {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(self.subscribed(), want, "the broker's subscriptions");
    }
}

type Ws = tidewire::WebSocketStream<tidewire::MaybeTlsStream<tokio::net::TcpStream>>;

async fn request(ws: &mut Ws, text: &str) -> String {
    ws.send(Message::text(text.to_owned())).await.unwrap();
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(5), ws.recv())
            .await
            .expect("a reply within 5 s")
            .expect("the connection is open")
            .unwrap();
        if let Message::Text(t) = msg {
            if t.contains("\"id\"") {
                return t.to_string();
            }
        }
    }
}

async fn subscribe(ws: &mut Ws, channel: &str) {
    let reply = request(
        ws,
        &format!(r#"{{"id":1,"op":"subscribe","channel":"{channel}"}}"#),
    )
    .await;
    assert!(reply.contains("\"ok\":true"), "{reply}");
}

#[tokio::test]
async fn the_broker_learns_when_subscriptions_end() {
    let broker = Arc::new(Recording::default());
    let (_stop, shutdown) = tokio::sync::watch::channel(false);
    let hub = Hub::with_engine(
        HubConfig::default(),
        shutdown,
        broker.clone(),
        Arc::new(MemoryPresence::new()),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, tidewire_hub::router(hub)).await;
    });
    let url = format!("ws://{addr}/ws");
    let client = tidewire::ClientBuilder::new(url).protocols(["tidewire.v1"]);

    let (mut a, _) = client.connect().await.unwrap();
    let (mut b, _) = client.connect().await.unwrap();
    subscribe(&mut a, "news").await;
    subscribe(&mut a, "chat:x").await;
    subscribe(&mut b, "news").await;
    broker.wait_for(&["chat:x", "news"]).await;

    // An explicit unsubscribe of a channel's only subscriber.
    let reply = request(&mut a, r#"{"id":2,"op":"unsubscribe","channel":"chat:x"}"#).await;
    assert!(reply.contains("\"ok\":true"), "{reply}");
    broker.wait_for(&["news"]).await;

    // a goes away without a word: b still holds news.
    drop(a);
    tokio::time::sleep(Duration::from_millis(100)).await;
    broker.wait_for(&["news"]).await;

    // b goes away too: the last subscription's end reaches the broker.
    drop(b);
    broker.wait_for(&[]).await;
}
