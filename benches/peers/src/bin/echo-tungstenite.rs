//! tokio-tungstenite echo server.
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

fn main() {
    let addr = tidewire_peers::parse_listen("echo-tungstenite", "tokio-tungstenite echo server");
    tidewire_peers::run(tidewire_peers::serve("echo-tungstenite", addr, |s| async move {
        let cfg = WebSocketConfig::default()
            .max_message_size(Some(tidewire_peers::MAX_MESSAGE))
            .max_frame_size(Some(tidewire_peers::MAX_MESSAGE));
        let Ok(mut ws) = tokio_tungstenite::accept_async_with_config(s, Some(cfg)).await else {
            return;
        };
        // Pings are answered and closes are replied to by tungstenite itself (queued,
        // flushed on the next read/write); we only echo data messages.
        while let Some(Ok(msg)) = ws.next().await {
            match msg {
                Message::Text(_) | Message::Binary(_) => {
                    if ws.send(msg).await.is_err() {
                        return;
                    }
                }
                Message::Close(_) => {
                    // tungstenite has queued the close reply; drive it out.
                    let _ = ws.flush().await;
                }
                _ => {}
            }
        }
    }));
}
