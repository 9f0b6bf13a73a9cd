//! permessage-deflate against a real `tidewire echo --compression`: negotiation over raw
//! sockets, and a decompression bomb (100 MB of zeros, about 100 KB compressed) closed with
//! 1009 while the server's peak memory stays near the configured message limit.

mod common;

use common::*;
use std::io::Write;
use tidewire_proto::deflate::compress_fresh;

fn vm_hwm_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn deflate_upgrade(addr: std::net::SocketAddr, offer: &str) -> (std::net::TcpStream, String) {
    let mut s = connect(addr);
    s.write_all(request(&format!("Sec-WebSocket-Extensions: {offer}\r\n")).as_bytes())
        .unwrap();
    let (status, head) = read_head(&mut s);
    assert_eq!(status, 101, "{head}");
    (s, head)
}

#[test]
fn negotiates_and_echoes_compressed() {
    let srv = start(&["--compression"]);
    let (mut s, head) = deflate_upgrade(srv.addr, "permessage-deflate; client_max_window_bits");
    assert!(
        head.to_ascii_lowercase()
            .contains("sec-websocket-extensions: permessage-deflate"),
        "{head}"
    );
    // A compressed text frame (RSV1) is inflated and echoed (compressed: it is above the
    // threshold), and an uncompressed one still works.
    let text = "tidewire ".repeat(100);
    let mut f = masked(1, &compress_fresh(text.as_bytes(), 15, 1));
    f[0] |= 0x40;
    s.write_all(&f).unwrap();
    let (op, payload) = read_frame(&mut s).unwrap();
    assert_eq!(op, 1);
    assert!(payload.len() < text.len(), "echo was not compressed");
    s.write_all(&masked(1, b"plain")).unwrap();
    assert_eq!(read_frame(&mut s), Some((1, b"plain".to_vec())));
    // RSV1 on a continuation frame is still a protocol error.
    s.write_all(&frame(false, 1, b"a", Some([1, 2, 3, 4])))
        .unwrap();
    let mut c = frame(true, 0, b"b", Some([1, 2, 3, 4]));
    c[0] |= 0x40;
    s.write_all(&c).unwrap();
    expect_close(&mut s, 1002);
    // An offer with an unknown parameter is declined, not failed.
    let (_s, head) = deflate_upgrade(srv.addr, "permessage-deflate; bogus");
    assert!(
        !head.to_ascii_lowercase().contains("permessage-deflate"),
        "{head}"
    );
}

#[test]
fn decompression_bomb_is_closed_with_1009_within_the_limit() {
    let limit = 1 << 20;
    let srv = start(&["--compression", "--max-message-size", &limit.to_string()]);
    let before = vm_hwm_kb(srv.child.id());
    let zeros = vec![0u8; 100_000_000];
    let bomb = compress_fresh(&zeros, 15, 9);
    drop(zeros);
    assert!(bomb.len() < 200_000, "bomb is {} bytes", bomb.len());
    let (mut s, _) = deflate_upgrade(srv.addr, "permessage-deflate");
    let mut f = frame(true, 2, &bomb, Some([9, 8, 7, 6]));
    f[0] |= 0x40;
    s.write_all(&f).unwrap();
    expect_close(&mut s, 1009);
    let peak = vm_hwm_kb(srv.child.id());
    eprintln!(
        "bomb: {} bytes compressed; server peak RSS {before} KB before, {peak} KB after",
        bomb.len()
    );
    // Peak memory grew by about the limit (plus buffers and zlib state), never toward 100 MB.
    assert!(
        peak < before + 16 * 1024,
        "peak RSS {peak} KB (was {before} KB before the bomb)"
    );
    good_roundtrip(srv.addr, "still serving");
}
