//! Codec benchmarks: parsing (zero-copy view and owned) and encoding of a typical request and
//! a typical response.

// `criterion_group!` defines an undocumented public function.
#![allow(missing_docs)]

use core::hint::black_box;

use bytes::Bytes;
use coap_proto::msg::{Code, ContentFormat, Message, MessageType, MessageView, Token};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

/// CON GET coap://example.net/sensors/temp/1?unit=c, Accept: application/json.
fn request() -> Message {
    let mut m = Message::new(MessageType::Con, Code::GET, 0x7d34);
    m.token = Token::new(&[0xde, 0xad, 0xbe, 0xef]);
    m.options.set_uri_host("example.net");
    for segment in ["sensors", "temp", "1"] {
        m.options.push_uri_path(segment);
    }
    m.options.push_uri_query("unit=c");
    m.options.set_accept(ContentFormat::JSON);
    m
}

/// ACK 2.05 with ETag, Content-Format application/json, Max-Age and a 64-byte payload.
fn response() -> Message {
    let mut m = Message::new(MessageType::Ack, Code::CONTENT, 0x7d34);
    m.token = Token::new(&[0xde, 0xad, 0xbe, 0xef]);
    m.options.set_etag(&[0x12, 0x34, 0x56, 0x78]);
    m.options.set_content_format(ContentFormat::JSON);
    m.options.set_max_age(60);
    m.payload = Bytes::from(
        br#"{"sensor":"temp-1","value":22.375,"unit":"C","ts":1700000000}   "#.to_vec(),
    );
    assert_eq!(m.payload.len(), 64);
    m
}

fn bench_message(c: &mut Criterion, name: &str, m: &Message) {
    let mut bytes = vec![0u8; m.encoded_len()];
    m.encode(&mut bytes).expect("encodes");
    let shared = Bytes::from(bytes.clone());
    let mut out = [0u8; 1152];

    let mut group = c.benchmark_group(name);
    group.throughput(Throughput::Bytes(bytes.len() as u64));
    group.bench_function("parse_view", |b| {
        b.iter(|| MessageView::parse(black_box(&bytes)).expect("parses"))
    });
    group.bench_function("parse_view_walk_options", |b| {
        b.iter(|| {
            let view = MessageView::parse(black_box(&bytes)).expect("parses");
            view.options()
                .fold(0usize, |acc, (n, v)| acc + usize::from(n.0) + v.len())
        })
    });
    group.bench_function("parse_owned", |b| {
        b.iter(|| Message::parse(black_box(&bytes)).expect("parses"))
    });
    group.bench_function("parse_owned_shared_payload", |b| {
        b.iter(|| Message::parse_bytes(black_box(&shared)).expect("parses"))
    });
    group.bench_function("encode", |b| {
        b.iter(|| black_box(m).encode(black_box(&mut out)).expect("encodes"))
    });
    group.finish();
}

fn codec(c: &mut Criterion) {
    bench_message(c, "request_get", &request());
    bench_message(c, "response_content_64b", &response());
}

criterion_group!(benches, codec);
criterion_main!(benches);
