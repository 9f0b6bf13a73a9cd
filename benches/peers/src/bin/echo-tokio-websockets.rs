//! tokio-websockets echo server.
use futures_util::{SinkExt, StreamExt};
use tokio_websockets::{Limits, ServerBuilder};

fn main() {
    let addr = tidewire_peers::parse_listen("echo-tokio-websockets", "tokio-websockets echo server");
    tidewire_peers::run(tidewire_peers::serve("echo-tokio-websockets", addr, |s| async move {
        let Ok((_req, mut ws)) = ServerBuilder::new()
            .limits(Limits::default().max_payload_len(Some(tidewire_peers::MAX_MESSAGE)))
            .accept(s)
            .await
        else {
            return;
        };
        // tokio-websockets answers pings and closes itself; we echo data messages.
        while let Some(Ok(msg)) = ws.next().await {
            if msg.is_text() || msg.is_binary() {
                if ws.send(msg).await.is_err() {
                    return;
                }
            }
        }
    }));
}
