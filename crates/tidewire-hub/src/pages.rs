//! The demo pages, embedded in the binary (no CDN), and the demo's live data: a price tick
//! on `live:ticks` every 100 ms.

use crate::hub::Hub;
use crate::node::Json;
use axum::http::header;
use axum::routing::get;
use axum::Router;
use std::sync::Arc;
use std::time::Duration;

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";

/// The demo pages, embedded: (path, content type, body).
#[rustfmt::skip]
const PAGES: &[(&str, &str, &str)] = &[
    ("/", HTML, include_str!("../web/index.html")),
    ("/chat", HTML, include_str!("../web/chat.html")),
    ("/live", HTML, include_str!("../web/live.html")),
    ("/board", HTML, include_str!("../web/board.html")),
    ("/bare", HTML, include_str!("../web/bare.html")),
    ("/style.css", "text/css; charset=utf-8", include_str!("../web/style.css")),
    ("/demo.js", JS, include_str!("../web/demo.js")),
    // Browsers ask for /favicon.ico whatever the pages link; an SVG is fine under that name.
    ("/favicon.ico", "image/svg+xml", include_str!("../web/favicon.svg")),
    ("/favicon.svg", "image/svg+xml", include_str!("../web/favicon.svg")),
    // The browser library (clients/js compiled; `npm run web` there refreshes web/lib).
    ("/lib/index.js", JS, include_str!("../web/lib/index.js")),
    ("/lib/client.js", JS, include_str!("../web/lib/client.js")),
    ("/lib/subscription.js", JS, include_str!("../web/lib/subscription.js")),
    ("/lib/errors.js", JS, include_str!("../web/lib/errors.js")),
    ("/lib/backoff.js", JS, include_str!("../web/lib/backoff.js")),
    ("/lib/types.js", JS, include_str!("../web/lib/types.js")),
];

/// Adds a route per demo page to `router`.
pub(crate) fn routes(mut router: Router<Arc<Hub>>) -> Router<Arc<Hub>> {
    for &(path, content_type, body) in PAGES {
        router = router.route(
            path,
            get(move || async move {
                (
                    [
                        (header::CONTENT_TYPE, content_type),
                        (header::CACHE_CONTROL, "no-cache"),
                    ],
                    body,
                )
            }),
        );
    }
    router
}

/// The demo's live data: a random-walk price on `live:ticks` every 100 ms, stopped by
/// shutdown.
pub(crate) async fn demo_ticker(hub: Arc<Hub>) {
    let mut shutdown = hub.shutdown.clone();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut price = 100.0f64;
    // A small xorshift generator: the demo needs movement, not cryptography.
    let mut state = 0x2545_f491_4f6c_dd1du64
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let step = (state % 2001) as f64 / 1000.0 - 1.0; // -1.0 ..= 1.0
        price = (price * (1.0 + step * 0.004)).clamp(1.0, 10_000.0);
        let ts = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let data = format!("{{\"symbol\":\"TWD\",\"price\":{price:.2},\"ts\":{ts}}}");
        let data = Json::parse(data).expect("the ticker writes JSON");
        if let Err(e) = hub.node.publish("live:ticks", data).await {
            tracing::warn!("demo ticker stopped: {e}");
            return;
        }
    }
}
