//! The `tidewire.v1` request parser on any text a client can send: it never panics, every
//! answer is one JSON value, and the request's `id` comes back byte for byte.
//!
//! "JSON" is JSON's grammar (RFC 8259), which puts no bound on numbers: an id such as
//! `88e8888` is echoed as sent, though `serde_json::Value` cannot hold it (found by this
//! target; a client that chose such an id gets it back as it wrote it).
#![no_main]
use tidewire_hub_proto::{encode_ok, parse_request, Empty};

/// One JSON value by the grammar, numbers of any size.
fn is_json(text: &str) -> serde_json::Result<serde::de::IgnoredAny> {
    serde_json::from_str(text)
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    // Requests arrive in text messages, which the WebSocket layer has checked to be UTF-8.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match parse_request(text) {
        Ok((id, request)) => {
            let reply = encode_ok(&id, &Empty {});
            is_json(&reply).expect("a reply is JSON");
            assert!(reply.contains(id.get()), "the id is echoed as sent");
            // What the server understood, written again, reads the same.
            let again = request.encode(&id);
            let (id2, request2) = parse_request(&again).expect("an encoded request parses");
            assert_eq!(id2.get(), id.get());
            assert_eq!(request2.op(), request.op());
            assert_eq!(request2.channel(), request.channel());
        }
        Err(e) => {
            let reply = e.reply();
            is_json(&reply).expect("an error reply is JSON");
            assert!(reply.contains(e.id().get()), "the id is echoed as sent");
        }
    }
});
