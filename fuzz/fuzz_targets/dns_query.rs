//! Any bytes as a DNS query, over UDP (answer cache included) and TCP, through the whole answer
//! path: no panic, and every answer sent is a DNS message with the query's ID.
#![no_main]

use std::net::SocketAddr;
use std::sync::{Mutex, OnceLock};

use clusterd_dns::proto::op::Message;
use clusterd_dns::{RateLimit, Responder, ServeOptions};
use libfuzzer_sys::fuzz_target;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime")
    })
}

fn responder() -> &'static Mutex<Responder> {
    static R: OnceLock<Mutex<Responder>> = OnceLock::new();
    R.get_or_init(|| {
        let options = ServeOptions {
            rate_limit: Some(RateLimit {
                queries_per_second: 1_000_000,
                burst: 2_000_000,
            }),
            ..ServeOptions::default()
        };
        Mutex::new(Responder::new(
            &clusterd_dns::example::example_snapshot(1),
            &options,
        ))
    })
}

fn check(query: &[u8], answer: Option<Vec<u8>>) {
    let Some(answer) = answer else { return };
    let message = Message::from_vec(&answer).expect("an answer that is a DNS message");
    if query.len() >= 2 {
        assert_eq!(
            message.metadata.id,
            u16::from_be_bytes([query[0], query[1]])
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let src: SocketAddr = "198.51.100.7:5300".parse().expect("an address");
    let mut r = responder().lock().unwrap_or_else(|p| p.into_inner());
    let udp = runtime().block_on(r.udp(data, src));
    check(data, udp);
    let tcp = runtime().block_on(r.tcp(data, src));
    check(data, tcp);
});
