//! fastwebsockets echo server (hyper upgrade, FragmentCollector, auto-close/auto-pong on).
use fastwebsockets::{upgrade, FragmentCollector, OpCode, WebSocketError};
use http_body_util::Empty;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};

async fn handle_ws(fut: upgrade::UpgradeFut) -> Result<(), WebSocketError> {
    let mut ws = fut.await?;
    ws.set_auto_close(true);
    ws.set_auto_pong(true);
    ws.set_max_message_size(tidewire_peers::MAX_MESSAGE);
    // FragmentCollector reassembles fragmented messages (the raw WebSocket does not).
    let mut ws = FragmentCollector::new(ws);
    loop {
        let frame = ws.read_frame().await?;
        match frame.opcode {
            OpCode::Close => return Ok(()),
            OpCode::Text | OpCode::Binary => ws.write_frame(frame).await?,
            _ => {}
        }
    }
}

async fn upgrade_req(mut req: Request<Incoming>) -> Result<Response<Empty<Bytes>>, WebSocketError> {
    let (response, fut) = upgrade::upgrade(&mut req)?;
    tokio::spawn(async move {
        let _ = handle_ws(fut).await;
    });
    Ok(response)
}

fn main() {
    let addr = tidewire_peers::parse_listen("echo-fastwebsockets", "fastwebsockets echo server (hyper 1 upgrade)");
    tidewire_peers::run(tidewire_peers::serve("echo-fastwebsockets", addr, |s| async move {
        let io = hyper_util::rt::TokioIo::new(s);
        let _ = http1::Builder::new()
            .serve_connection(io, service_fn(upgrade_req))
            .with_upgrades()
            .await;
    }));
}
