//! An idle connection is mostly its `WebSocketStream`: these bounds keep it from growing
//! back by accident (an inline deflate state, a copy of the options, an unboxed rare field
//! each added hundreds of bytes to every connection before they were taken out).

use std::mem::size_of;

#[test]
fn idle_connection_state_stays_small() {
    let stream = size_of::<tidewire::WebSocketStream<tokio::net::TcpStream>>();
    let core = size_of::<tidewire_proto::Connection>();
    assert!(
        core <= 192,
        "tidewire_proto::Connection is {core} bytes (bound 192)"
    );
    assert!(
        stream <= 320,
        "WebSocketStream<TcpStream> is {stream} bytes (bound 320)"
    );
}
