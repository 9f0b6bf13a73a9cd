//! Hostile input against a real `tidewire echo` process: while bad clients send garbage,
//! stall their handshake, claim huge frames, skip the mask or send invalid UTF-8, a good
//! client keeps being served; each bad client gets the right HTTP status or close code.

mod common;

use common::*;
use std::io::Write;
use std::time::{Duration, Instant};

#[test]
fn bad_handshakes_get_http_errors() {
    let srv = start(&[]);
    let cases: &[(&[u8], u16)] = &[
        (b"garbage garbage\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: x\r\n\r\n", 405),
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET / HTTP/1.0\r\nHost: x\r\n\r\n", 400),
    ];
    for (bytes, status) in cases {
        let mut s = connect(srv.addr);
        s.write_all(bytes).unwrap();
        let (got, head) = read_head(&mut s);
        assert_eq!(got, *status, "{head}");
    }
    // Wrong version: 426 naming the version we speak.
    let mut s = connect(srv.addr);
    let req = request("").replace("Version: 13", "Version: 8");
    s.write_all(req.as_bytes()).unwrap();
    let (got, head) = read_head(&mut s);
    assert_eq!(got, 426);
    assert!(
        head.to_ascii_lowercase()
            .contains("sec-websocket-version: 13"),
        "{head}"
    );
    // A head over the size limit: 431.
    let mut s = connect(srv.addr);
    let big = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    let _ = s.write_all(big.as_bytes());
    assert_eq!(read_head(&mut s).0, 431);
    good_roundtrip(srv.addr, "still serving");
}

#[test]
fn protocol_violations_get_the_right_close_codes() {
    let srv = start(&["--max-message-size", "1048576"]);
    // Unmasked client frame: 1002.
    let mut s = upgraded(srv.addr);
    s.write_all(&frame(true, 1, b"hi", None)).unwrap();
    expect_close(&mut s, 1002);
    // Invalid UTF-8 in text: 1007, even before the frame is complete (fail fast).
    let mut s = upgraded(srv.addr);
    let f = masked(
        1,
        &[b'a'; 100]
            .iter()
            .copied()
            .chain([0xff])
            .chain([b'b'; 100])
            .collect::<Vec<_>>(),
    );
    s.write_all(&f[..f.len() - 50]).unwrap();
    expect_close(&mut s, 1007);
    // A claimed 2^63-byte frame (top bit set): 1002, without waiting for any payload.
    let mut s = upgraded(srv.addr);
    s.write_all(&[0x82, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4])
        .unwrap();
    expect_close(&mut s, 1002);
    // A claimed 2^62-byte frame: over the limit, 1009 from the header alone.
    let mut s = upgraded(srv.addr);
    s.write_all(&[0x82, 0xff, 0x40, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4])
        .unwrap();
    expect_close(&mut s, 1009);
    // A fragmented message growing past --max-message-size: 1009.
    let mut s = upgraded(srv.addr);
    let chunk = vec![7u8; 600_000];
    s.write_all(&frame(false, 2, &chunk, Some([1, 2, 3, 4])))
        .unwrap();
    let _ = s.write_all(&frame(true, 0, &chunk, Some([1, 2, 3, 4])));
    expect_close(&mut s, 1009);
    // Reserved opcode and RSV bits: 1002.
    let mut s = upgraded(srv.addr);
    s.write_all(&masked(3, b"")).unwrap();
    expect_close(&mut s, 1002);
    let mut s = upgraded(srv.addr);
    let mut f = masked(1, b"x");
    f[0] |= 0x40;
    s.write_all(&f).unwrap();
    expect_close(&mut s, 1002);
    // Invalid close code: 1002.
    let mut s = upgraded(srv.addr);
    s.write_all(&masked(8, &999u16.to_be_bytes())).unwrap();
    expect_close(&mut s, 1002);
    good_roundtrip(srv.addr, "still serving");
}

#[test]
fn stalled_and_garbage_clients_do_not_block_good_ones() {
    let srv = start(&["--handshake-timeout", "2"]);
    // One client trickles its handshake byte by byte and stops halfway.
    let mut staller = connect(srv.addr);
    let req = request("");
    for b in req.as_bytes()[..req.len() / 2].iter() {
        staller.write_all(&[*b]).unwrap();
    }
    // Another one floods garbage after a valid handshake.
    let mut flooder = upgraded(srv.addr);
    let garbage: Vec<u8> = (0..200_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let _ = flooder.write_all(&garbage);
    // Good clients are served meanwhile, promptly.
    let t = Instant::now();
    for i in 0..20 {
        good_roundtrip(srv.addr, &format!("hello {i}"));
    }
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "good clients slowed: {:?}",
        t.elapsed()
    );
    // The staller gets 408 once the handshake timeout passes.
    let (status, head) = read_head(&mut staller);
    assert_eq!(status, 408, "{head}");
}

#[test]
fn stays_up_and_keeps_serving_after_many_bad_clients() {
    let srv = start(&[]);
    for i in 0..50u32 {
        let mut s = connect(srv.addr);
        if i % 2 == 0 {
            let _ = s.write_all(&i.to_le_bytes().repeat(64));
        } else {
            let mut s = upgraded(srv.addr);
            let _ = s.write_all(&[0x81, 0x85]);
        }
    }
    good_roundtrip(srv.addr, "alive");
}

/// A burst of clients at the open-file limit: all of them get a 503 at once (answered
/// one after the other with the one reserve descriptor), none waits for a timeout, and
/// the held connections keep echoing.
#[test]
fn burst_at_the_open_file_limit_is_refused_not_left_hanging() {
    let (child, addr) = spawn_with_open_files("echo", 48, &[]);
    let _srv = Server { child, addr };
    let mut held = Vec::new();
    loop {
        let mut s = connect(addr);
        s.write_all(request("").as_bytes()).unwrap();
        let (status, head) = read_head(&mut s);
        if status == 503 {
            break;
        }
        assert_eq!(status, 101, "{head}");
        held.push(s);
        assert!(held.len() < 100, "no refusal under 48 descriptors");
    }
    let started = Instant::now();
    let burst: Vec<_> = (0..100)
        .map(|_| {
            std::thread::spawn(move || {
                let mut s = connect(addr);
                s.write_all(request("").as_bytes()).unwrap();
                read_head(&mut s).0
            })
        })
        .collect();
    let statuses: Vec<u16> = burst.into_iter().map(|t| t.join().unwrap()).collect();
    assert!(statuses.iter().all(|&s| s == 503), "{statuses:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    for s in &mut held {
        s.write_all(&masked(0x2, b"ping")).unwrap();
        assert_eq!(read_frame(s), Some((0x2, b"ping".to_vec())));
    }
}
