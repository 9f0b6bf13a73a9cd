//! Criterion benchmarks of the codec: masking, UTF-8 validation, frame parsing and the
//! full receive path (parse + unmask + validate + split), encoding, and permessage-deflate
//! (compress on send, inflate on receive, with and without context takeover).
//! Run with: cargo bench -p tidewire-proto --bench codec

use bytes::{Bytes, BytesMut};
use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tidewire_proto::mask::{apply_mask, apply_mask_bytewise};
use tidewire_proto::utf8::Utf8Validator;
use tidewire_proto::{Config, Connection, DeflateConfig, DeflateParams, FrameHeader, Opcode};

const SIZES: [usize; 4] = [20, 1024, 16 * 1024, 1 << 20];

fn masking(c: &mut Criterion) {
    let mut g = c.benchmark_group("mask");
    for size in SIZES {
        let mut buf = vec![0x5au8; size];
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_with_input(BenchmarkId::new("word", size), &size, |b, _| {
            b.iter(|| apply_mask(black_box(&mut buf), [1, 2, 3, 4], 0))
        });
        g.bench_with_input(BenchmarkId::new("bytewise", size), &size, |b, _| {
            b.iter(|| apply_mask_bytewise(black_box(&mut buf), [1, 2, 3, 4], 0))
        });
    }
    g.finish();
}

fn utf8(c: &mut Criterion) {
    let mut g = c.benchmark_group("utf8");
    for size in SIZES {
        let text: String = "héllo wörld €𝄞 ".chars().cycle().take(size).collect();
        let bytes = text.as_bytes();
        g.throughput(Throughput::Bytes(bytes.len() as u64));
        g.bench_with_input(BenchmarkId::new("validator", size), &size, |b, _| {
            b.iter(|| Utf8Validator::new().feed(black_box(bytes), true).is_ok())
        });
        g.bench_with_input(BenchmarkId::new("std", size), &size, |b, _| {
            b.iter(|| std::str::from_utf8(black_box(bytes)).is_ok())
        });
    }
    g.finish();
}

/// A stream of masked client frames, as a server receives it.
fn client_stream(opcode: Opcode, size: usize, count: usize) -> Vec<u8> {
    let payload: Vec<u8> = (0..size).map(|i| b'a' + (i % 26) as u8).collect();
    let mut out = Vec::new();
    for _ in 0..count {
        let h = FrameHeader::new(opcode, size as u64, Some([9, 8, 7, 6]));
        let mut hb = [0u8; 14];
        let n = h.encode(&mut hb);
        out.extend_from_slice(&hb[..n]);
        let start = out.len();
        out.extend_from_slice(&payload);
        apply_mask(&mut out[start..], [9, 8, 7, 6], 0);
    }
    out
}

fn decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("receive");
    for size in SIZES {
        let count = (1 << 20) / size.max(1);
        for (name, op) in [("binary", Opcode::Binary), ("text", Opcode::Text)] {
            let stream = client_stream(op, size, count.max(1));
            g.throughput(Throughput::Bytes(stream.len() as u64));
            g.bench_with_input(BenchmarkId::new(name, size), &size, |b, _| {
                b.iter(|| {
                    let mut conn = Connection::server(Config::default());
                    let mut buf = BytesMut::from(&stream[..]);
                    let mut n = 0;
                    while let Ok(Some(m)) = conn.receive(&mut buf) {
                        n += m.len();
                    }
                    black_box(n)
                })
            });
        }
    }
    g.finish();
}

fn encode(c: &mut Criterion) {
    let mut g = c.benchmark_group("send");
    for size in SIZES {
        let payload = Bytes::from(vec![b'x'; size]);
        let count = ((1 << 20) / size).max(1);
        g.throughput(Throughput::Bytes((size * count) as u64));
        g.bench_with_input(BenchmarkId::new("server", size), &size, |b, _| {
            let mut conn = Connection::server(Config::default());
            b.iter(|| {
                for _ in 0..count {
                    let _ = conn.send_binary(payload.clone());
                }
                let n = conn.pending_transmit();
                conn.advance_transmit(n);
            })
        });
        g.bench_with_input(BenchmarkId::new("client", size), &size, |b, _| {
            let mut conn = Connection::client(Config::default(), Box::new(|| [1, 2, 3, 4]));
            b.iter(|| {
                for _ in 0..count {
                    let _ = conn.send_binary(payload.clone());
                }
                let n = conn.pending_transmit();
                conn.advance_transmit(n);
            })
        });
    }
    g.finish();
}

/// JSON-like text, the kind of payload deflate is used for (chat, quotes, state updates).
fn json_like(size: usize) -> String {
    let mut s = String::with_capacity(size + 96);
    let mut i = 0u64;
    while s.len() < size {
        i += 1;
        s.push_str(&format!(
            r#"{{"id":{i},"user":"user-{}","price":{}.{:02},"text":"message number {i}"}},"#,
            i % 97,
            1000 + (i * 7919) % 5000,
            i % 100
        ));
    }
    s.truncate(size);
    s
}

/// Drains everything a connection has queued into one buffer.
fn take_output(conn: &mut Connection) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let chunk = conn.transmit_chunk();
        if chunk.is_empty() {
            return out;
        }
        let n = chunk.len();
        out.extend_from_slice(chunk);
        conn.advance_transmit(n);
    }
}

fn deflate(c: &mut Criterion) {
    let mut g = c.benchmark_group("deflate");
    let config = DeflateConfig::default();
    for size in [1024, 16 * 1024, 64 * 1024] {
        // Distinct messages (one MiB of JSON cut into `size` pieces): with context takeover a
        // message repeated verbatim would compress to one back-reference.
        let count = ((1 << 20) / size).max(1);
        let all = json_like(size * count);
        let texts: Vec<String> = (0..count)
            .map(|k| all[k * size..(k + 1) * size].to_owned())
            .collect();
        for takeover in [true, false] {
            let tag = if takeover { "takeover" } else { "no-takeover" };
            let params = DeflateParams {
                server_no_context_takeover: !takeover,
                client_no_context_takeover: !takeover,
                server_max_window_bits: 15,
                client_max_window_bits: 15,
            };
            g.throughput(Throughput::Bytes((size * count) as u64));
            // A server compressing `count` messages (level 1, the default).
            g.bench_with_input(
                BenchmarkId::new(format!("compress/{tag}"), size),
                &size,
                |b, _| {
                    let mut conn =
                        Connection::server(Config::default()).with_deflate(params, &config);
                    b.iter(|| {
                        for text in &texts {
                            let _ = conn.send_text(text.clone());
                        }
                        let n = conn.pending_transmit();
                        conn.advance_transmit(n);
                    })
                },
            );
            // A server inflating (and validating) `count` compressed client messages.
            let mut client = Connection::client(Config::default(), Box::new(|| [1, 2, 3, 4]))
                .with_deflate(params, &config);
            for text in &texts {
                let _ = client.send_text(text.clone());
            }
            let stream = take_output(&mut client);
            g.bench_with_input(
                BenchmarkId::new(format!("inflate/{tag}"), size),
                &size,
                |b, _| {
                    b.iter(|| {
                        let mut conn =
                            Connection::server(Config::default()).with_deflate(params, &config);
                        let mut buf = BytesMut::from(&stream[..]);
                        let mut n = 0;
                        while let Ok(Some(m)) = conn.receive(&mut buf) {
                            n += m.len();
                        }
                        assert_eq!(n, size * count, "every message inflated");
                        black_box(n)
                    })
                },
            );
        }
    }
    g.finish();
}

criterion_group!(benches, masking, utf8, decode, encode, deflate);
criterion_main!(benches);
