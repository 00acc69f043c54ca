//! The real server on loopback, queried with `dig` and with hickory's client over UDP and TCP.

mod common;

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use clusterd_dns::example::example_snapshot;
use clusterd_dns::proto::op::{Message, ResponseCode};
use clusterd_dns::proto::rr::{RData, RecordType};
use clusterd_dns::{Address, RateLimit, ServeOptions, Snapshot};
use common::{
    DEADLINE, TestServer, Transport, client, dig, dig_flags, dig_section, dig_status, query,
};

const ZONE: &str = "mail.example.com.";

fn fqdn(label: &str) -> String {
    format!("{label}.{ZONE}")
}

fn a_ips(m: &Message) -> Vec<IpAddr> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        })
        .collect()
}

fn soa_serial(records: &[clusterd_dns::proto::rr::Record]) -> Option<u32> {
    records.iter().find_map(|r| match &r.data {
        RData::SOA(s) => Some(s.serial),
        _ => None,
    })
}

/// `example_snapshot` with `n` extra IPv4 addresses offering imap, for big answers.
fn snapshot_with_many_imap_addresses(n: u8) -> Snapshot {
    let mut s = example_snapshot(1);
    for i in 0..n {
        s.zones[0].addresses.push(Address {
            ip: IpAddr::from([198, 51, 100, i]),
            services: vec!["imap".into()],
            passing: BTreeSet::from(["imap".to_string()]),
        });
    }
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dig_gets_every_record_type_over_udp_and_tcp() {
    let server = TestServer::start(example_snapshot(5)).await;
    for transport in ["+notcp", "+tcp"] {
        let out = dig(server.addr, &[transport, &fqdn("imap"), "A"]).await;
        assert_eq!(dig_status(&out), "NOERROR", "{out}");
        let flags = dig_flags(&out);
        assert!(flags.contains(&"aa".to_string()), "{out}");
        assert!(!flags.contains(&"ra".to_string()), "{out}");
        let answers: BTreeSet<String> = dig_section(&out, "ANSWER")
            .into_iter()
            .map(|f| f[4].clone())
            .collect();
        assert_eq!(
            answers,
            BTreeSet::from(["192.0.2.101".into(), "192.0.2.102".into()]),
            "{out}"
        );
        assert_eq!(
            dig_section(&out, "ANSWER")[0][1],
            "30",
            "TTL from the snapshot"
        );

        let out = dig(server.addr, &[transport, ZONE, "AAAA"]).await;
        assert_eq!(dig_section(&out, "ANSWER")[0][4], "2001:db8::101", "{out}");

        let out = dig(server.addr, &[transport, ZONE, "MX"]).await;
        let mx = &dig_section(&out, "ANSWER")[0];
        assert_eq!(
            (mx[3].as_str(), mx[4].as_str(), mx[5].as_str()),
            ("MX", "10", "smtp.mail.example.com."),
            "{out}"
        );
        assert_eq!(
            dig_section(&out, "ADDITIONAL")
                .iter()
                .filter(|f| f[3] == "A" || f[3] == "AAAA")
                .count(),
            3,
            "{out}"
        );

        let out = dig(server.addr, &[transport, ZONE, "NS"]).await;
        let ns: BTreeSet<String> = dig_section(&out, "ANSWER")
            .into_iter()
            .map(|f| f[4].clone())
            .collect();
        assert_eq!(
            ns,
            BTreeSet::from([
                "mx1.ns.mail.example.com.".into(),
                "mx2.ns.mail.example.com.".into()
            ]),
            "{out}"
        );
        let glue: BTreeSet<String> = dig_section(&out, "ADDITIONAL")
            .into_iter()
            .filter(|f| f[3] == "A" || f[3] == "AAAA")
            .map(|f| format!("{} {}", f[0], f[4]))
            .collect();
        assert_eq!(
            glue,
            BTreeSet::from([
                "mx1.ns.mail.example.com. 192.0.2.11".into(),
                "mx1.ns.mail.example.com. 2001:db8::11".into(),
                "mx2.ns.mail.example.com. 192.0.2.12".into(),
            ]),
            "{out}"
        );

        let out = dig(server.addr, &[transport, &fqdn("_submissions._tcp"), "SRV"]).await;
        let srv = &dig_section(&out, "ANSWER")[0];
        assert_eq!(
            srv[4..].join(" "),
            "0 1 465 submission.mail.example.com.",
            "{out}"
        );

        let out = dig(server.addr, &[transport, ZONE, "SOA"]).await;
        let soa = &dig_section(&out, "ANSWER")[0];
        assert_eq!(soa[3], "SOA", "{out}");
        assert_eq!(soa[6], "5", "serial from the snapshot: {out}");
        assert_eq!(soa[10], "5", "small SOA minimum: {out}");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hickory_client_gets_every_record_type_over_udp_and_tcp() {
    let server = TestServer::start(example_snapshot(9)).await;
    for transport in [Transport::Udp, Transport::Tcp] {
        let mut c = client(server.addr, transport).await;
        let m = query(&mut c, &fqdn("mail"), RecordType::A).await;
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(m.metadata.authoritative && !m.metadata.recursion_available);
        assert_eq!(a_ips(&m).len(), 2);
        let m = query(&mut c, &fqdn("pop3"), RecordType::AAAA).await;
        assert_eq!(a_ips(&m), vec!["2001:db8::101".parse::<IpAddr>().unwrap()]);
        let m = query(&mut c, ZONE, RecordType::MX).await;
        assert!(
            matches!(&m.answers[0].data, RData::MX(mx) if mx.exchange.to_ascii() == "smtp.mail.example.com.")
        );
        let m = query(&mut c, ZONE, RecordType::NS).await;
        assert_eq!(m.answers.len(), 2);
        assert_eq!(
            m.additionals
                .iter()
                .filter(|r| matches!(r.data, RData::A(_) | RData::AAAA(_)))
                .count(),
            3
        );
        let m = query(&mut c, &fqdn("_imap._tcp"), RecordType::SRV).await;
        assert!(
            matches!(&m.answers[0].data, RData::SRV(s) if s.port == 143 && s.target.to_ascii() == "imap.mail.example.com.")
        );
        let m = query(&mut c, ZONE, RecordType::SOA).await;
        assert_eq!(soa_serial(&m.answers), Some(9), "{transport:?}");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nxdomain_and_nodata_both_carry_the_soa() {
    let server = TestServer::start(example_snapshot(11)).await;
    for transport in ["+notcp", "+tcp"] {
        let out = dig(server.addr, &[transport, &fqdn("nosuchname"), "A"]).await;
        assert_eq!(dig_status(&out), "NXDOMAIN", "{out}");
        assert!(dig_flags(&out).contains(&"aa".to_string()), "{out}");
        assert!(dig_section(&out, "ANSWER").is_empty(), "{out}");
        assert_eq!(dig_section(&out, "AUTHORITY")[0][3], "SOA", "{out}");

        let out = dig(server.addr, &[transport, &fqdn("imap"), "MX"]).await;
        assert_eq!(dig_status(&out), "NOERROR", "{out}");
        assert!(dig_section(&out, "ANSWER").is_empty(), "{out}");
        assert_eq!(dig_section(&out, "AUTHORITY")[0][3], "SOA", "{out}");
    }
    for transport in [Transport::Udp, Transport::Tcp] {
        let mut c = client(server.addr, transport).await;
        let m = query(&mut c, &fqdn("nosuchname"), RecordType::A).await;
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        assert!(m.answers.is_empty());
        assert_eq!(soa_serial(&m.authorities), Some(11));
        let m = query(&mut c, &fqdn("_tcp"), RecordType::SRV).await;
        assert_eq!(
            m.metadata.response_code,
            ResponseCode::NoError,
            "empty non-terminal is NODATA"
        );
        assert!(m.answers.is_empty());
        assert_eq!(soa_serial(&m.authorities), Some(11));
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_outside_our_zones_are_refused() {
    let server = TestServer::start(example_snapshot(1)).await;
    for transport in ["+notcp", "+tcp"] {
        let out = dig(server.addr, &[transport, "www.example.org.", "A"]).await;
        assert_eq!(dig_status(&out), "REFUSED", "{out}");
        assert!(!dig_flags(&out).contains(&"aa".to_string()), "{out}");
        let out = dig(server.addr, &[transport, "+recurse", "example.com.", "A"]).await;
        assert_eq!(dig_status(&out), "REFUSED", "{out}");
        assert!(
            !dig_flags(&out).contains(&"ra".to_string()),
            "no recursion: {out}"
        );
    }
    let mut c = client(server.addr, Transport::Udp).await;
    let m = query(&mut c, "example.net.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_udp_answers_are_truncated_and_tcp_gets_them_whole() {
    // 2 + 100 addresses: about 1.7 kB of A records, more than the 1232-byte EDNS limit.
    let server = TestServer::start(snapshot_with_many_imap_addresses(100)).await;
    let out = dig(
        server.addr,
        &["+notcp", "+ignore", "+bufsize=4096", &fqdn("imap"), "A"],
    )
    .await;
    assert!(dig_flags(&out).contains(&"tc".to_string()), "{out}");
    assert!(
        out.contains("udp: 1232"),
        "EDNS echoed with our limit: {out}"
    );
    let out = dig(server.addr, &["+tcp", &fqdn("imap"), "A"]).await;
    assert!(!dig_flags(&out).contains(&"tc".to_string()), "{out}");
    assert_eq!(dig_section(&out, "ANSWER").len(), 102, "{out}");
    // dig retries over TCP by itself after TC.
    let out = dig(server.addr, &[&fqdn("imap"), "A"]).await;
    assert_eq!(dig_section(&out, "ANSWER").len(), 102, "{out}");

    let mut c = client(server.addr, Transport::Tcp).await;
    assert_eq!(
        a_ips(&query(&mut c, &fqdn("imap"), RecordType::A).await).len(),
        102
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_limit_is_512_without_edns_and_the_clients_size_with_it() {
    // 2 + 40 addresses: about 700 bytes. Fits 1232 (EDNS) but not 512.
    let server = TestServer::start(snapshot_with_many_imap_addresses(40)).await;
    let out = dig(
        server.addr,
        &["+notcp", "+ignore", "+noedns", &fqdn("imap"), "A"],
    )
    .await;
    assert!(dig_flags(&out).contains(&"tc".to_string()), "{out}");
    assert!(
        !out.contains("OPT PSEUDOSECTION"),
        "no EDNS in, none out: {out}"
    );
    let out = dig(
        server.addr,
        &["+notcp", "+ignore", "+bufsize=1232", &fqdn("imap"), "A"],
    )
    .await;
    assert!(!dig_flags(&out).contains(&"tc".to_string()), "{out}");
    assert_eq!(dig_section(&out, "ANSWER").len(), 42, "{out}");
    let out = dig(
        server.addr,
        &["+notcp", "+ignore", "+bufsize=600", &fqdn("imap"), "A"],
    )
    .await;
    assert!(
        dig_flags(&out).contains(&"tc".to_string()),
        "client's smaller size respected: {out}"
    );
    assert!(out.contains("udp: 600"), "{out}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edns_is_echoed_and_unknown_versions_get_badvers() {
    let server = TestServer::start(example_snapshot(1)).await;
    let out = dig(server.addr, &["+notcp", &fqdn("imap"), "A"]).await;
    assert!(out.contains("; EDNS: version: 0"), "{out}");
    let out = dig(
        server.addr,
        &[
            "+notcp",
            "+edns=1",
            "+noednsnegotiation",
            &fqdn("imap"),
            "A",
        ],
    )
    .await;
    assert_eq!(dig_status(&out), "BADVERS", "{out}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consecutive_queries_rotate_the_addresses() {
    let server = TestServer::start(snapshot_with_many_imap_addresses(1)).await;
    let mut firsts = Vec::new();
    let mut c = client(server.addr, Transport::Udp).await;
    for _ in 0..3 {
        firsts.push(a_ips(&query(&mut c, &fqdn("imap"), RecordType::A).await)[0]);
    }
    let unique: BTreeSet<IpAddr> = firsts.iter().copied().collect();
    assert_eq!(
        unique.len(),
        3,
        "each of 3 queries leads with another address: {firsts:?}"
    );
    let mut dig_firsts = BTreeSet::new();
    for _ in 0..3 {
        let out = dig(server.addr, &["+tcp", &fqdn("imap"), "A"]).await;
        dig_firsts.insert(dig_section(&out, "ANSWER")[0][4].clone());
    }
    assert_eq!(dig_firsts.len(), 3, "{dig_firsts:?}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_snapshot_changes_serial_and_answers_within_a_second() {
    let server = TestServer::start(example_snapshot(100)).await;
    let mut c = client(server.addr, Transport::Udp).await;
    assert_eq!(
        soa_serial(&query(&mut c, ZONE, RecordType::SOA).await.answers),
        Some(100)
    );
    // Answered (and so cached) before the change: the new snapshot must replace it.
    for _ in 0..3 {
        let m = query(&mut c, &fqdn("imap"), RecordType::A).await;
        assert_eq!(a_ips(&m).len(), 2, "{m:?}");
    }

    // The owner of 192.0.2.101 fails imap: the next serial drops it from imap.
    let mut next = example_snapshot(101);
    next.zones[0].addresses[0].passing.remove("imap");
    let sent = Instant::now();
    server.send(next);
    loop {
        let m = query(&mut c, &fqdn("imap"), RecordType::A).await;
        if a_ips(&m) == vec!["192.0.2.102".parse::<IpAddr>().unwrap()] {
            break;
        }
        assert!(
            sent.elapsed() < Duration::from_secs(1),
            "answers did not follow within 1 s: {:?}",
            a_ips(&m)
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(sent.elapsed() < Duration::from_secs(1));
    assert_eq!(
        soa_serial(&query(&mut c, ZONE, RecordType::SOA).await.answers),
        Some(101)
    );
    let out = dig(server.addr, &[ZONE, "SOA"]).await;
    assert_eq!(dig_section(&out, "ANSWER")[0][6], "101", "{out}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_snapshot_is_ignored_and_the_previous_one_served() {
    let server = TestServer::start(example_snapshot(3)).await;
    let mut c = client(server.addr, Transport::Udp).await;
    assert_eq!(
        soa_serial(&query(&mut c, ZONE, RecordType::SOA).await.answers),
        Some(3)
    );
    let mut bad = example_snapshot(4);
    bad.zones[0].mx = vec!["nosuchlabel".into()];
    server.send(bad);
    // Give the server time to see (and reject) it; then it still answers serial 3.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        soa_serial(&query(&mut c, ZONE, RecordType::SOA).await.answers),
        Some(3)
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_udp_queries_get_their_own_id_and_name_case_back() {
    use clusterd_dns::proto::op::{Edns, Query};
    use clusterd_dns::proto::rr::Name;
    let server = TestServer::start(snapshot_with_many_imap_addresses(1)).await;
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let ask = async |id: u16, name: &str, edns: bool| -> (Vec<u8>, Vec<u8>) {
        let mut m = Message::query();
        m.metadata.id = id;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
        if edns {
            m.edns = Some(Edns::new());
        }
        let bytes = m.to_vec().unwrap();
        sock.send_to(&bytes, server.addr).await.unwrap();
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(DEADLINE, sock.recv(&mut buf))
            .await
            .expect("an answer in time")
            .unwrap();
        (bytes, buf[..n].to_vec())
    };
    let names = [
        "imap.mail.example.com.",
        "IMAP.MAIL.EXAMPLE.COM.",
        "iMaP.mAiL.eXaMpLe.CoM.",
    ];
    let mut leaders = Vec::new();
    for (i, name) in names.iter().cycle().take(6).enumerate() {
        let id = 0x1000 + i as u16 * 0x0101;
        let (q, wire) = ask(id, name, false).await;
        let question = 12..12 + name.len() + 1 + 4;
        assert_eq!(&wire[..2], &id.to_be_bytes(), "query {i}: the ID echoed");
        assert_eq!(
            &wire[question.clone()],
            &q[question],
            "query {i}: the question as the client wrote it"
        );
        let m = Message::from_vec(&wire).unwrap();
        assert!(m.edns.is_none(), "query {i}: no EDNS asked, none answered");
        let ips = a_ips(&m);
        assert_eq!(ips.len(), 3, "query {i}: {m:?}");
        leaders.push(ips[0]);
    }
    // The three addresses take turns leading, as uncached answers do.
    assert_eq!(
        leaders[..3].iter().collect::<BTreeSet<_>>().len(),
        3,
        "{leaders:?}"
    );
    assert_eq!(leaders[..3], leaders[3..], "{leaders:?}");
    // The same name with EDNS is another query: its answer carries an OPT record.
    let (_, wire) = ask(9, names[0], true).await;
    assert!(Message::from_vec(&wire).unwrap().edns.is_some());
    let (_, wire) = ask(10, names[0], false).await;
    assert!(Message::from_vec(&wire).unwrap().edns.is_none());
    server.stop().await;
}

/// Sends raw bytes over UDP; the response within `wait`, if any.
async fn raw_udp(server: std::net::SocketAddr, bytes: &[u8], wait: Duration) -> Option<Vec<u8>> {
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    sock.send_to(bytes, server).await.expect("send");
    let mut buf = vec![0u8; 4096];
    match tokio::time::timeout(wait, sock.recv(&mut buf)).await {
        Ok(Ok(n)) => Some(buf[..n].to_vec()),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_packets_get_formerr_or_silence_and_the_server_keeps_answering() {
    let server = TestServer::start(example_snapshot(1)).await;
    let wait = Duration::from_millis(300);
    // QDCOUNT 0: a well-formed header without a question.
    let no_question = [0x12, 0x34, 0x00, 0x00, 0, 0, 0, 0, 0, 0, 0, 0];
    let reply = raw_udp(server.addr, &no_question, wait)
        .await
        .expect("a reply to QDCOUNT 0");
    let m = Message::from_vec(&reply).expect("reply parses");
    assert_eq!(m.metadata.id, 0x1234);
    assert_eq!(m.metadata.response_code, ResponseCode::FormErr);

    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("truncated header", vec![0x12, 0x34, 0x01]),
        ("empty datagram", vec![]),
        (
            "garbage",
            (0..64u8)
                .map(|i| i.wrapping_mul(37).wrapping_add(11))
                .collect(),
        ),
        (
            "question cut short",
            vec![
                0xab, 0xcd, 0x00, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 4, b'm', b'a',
            ],
        ),
        (
            "two questions, one missing",
            vec![
                0xab, 0xce, 0x00, 0x00, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 1,
            ],
        ),
        (
            "label pointer loop",
            vec![
                0xab, 0xcf, 0x00, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 12, 0, 1, 0, 1,
            ],
        ),
        ("all ones", vec![0xff; 40]),
    ];
    for (what, bytes) in &cases {
        if let Some(reply) = raw_udp(server.addr, bytes, wait).await {
            let m = Message::from_vec(&reply)
                .unwrap_or_else(|e| panic!("{what}: unparseable reply: {e}"));
            assert!(
                matches!(
                    m.metadata.response_code,
                    ResponseCode::FormErr | ResponseCode::NotImp
                ),
                "{what}: {:?}",
                m.metadata.response_code
            );
        }
    }
    // Garbage over TCP too: a length prefix announcing more than is sent, then close.
    {
        use tokio::io::AsyncWriteExt;
        let mut tcp = tokio::net::TcpStream::connect(server.addr)
            .await
            .expect("connect");
        tcp.write_all(&[0x00, 0x20, 0xde, 0xad])
            .await
            .expect("write");
    }
    for transport in [Transport::Udp, Transport::Tcp] {
        let mut c = client(server.addr, transport).await;
        let m = query(&mut c, &fqdn("imap"), RecordType::A).await;
        assert_eq!(a_ips(&m).len(), 2, "still answering over {transport:?}");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_drops_udp_queries_over_the_limit() {
    let options = ServeOptions {
        rate_limit: Some(RateLimit {
            queries_per_second: 1,
            burst: 3,
        }),
        ..ServeOptions::default()
    };
    let server = TestServer::start_with(example_snapshot(1), options).await;
    let mut soa_query = Message::query();
    soa_query.add_query(clusterd_dns::proto::op::Query::query(
        clusterd_dns::proto::rr::Name::from_ascii(ZONE).unwrap(),
        RecordType::SOA,
    ));
    let bytes = soa_query.to_vec().expect("encode");
    // Six queries from one source within a few milliseconds: the burst of 3 passes, the rest
    // is dropped (a refill of one token takes a whole second).
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let sent = Instant::now();
    for _ in 0..6 {
        sock.send_to(&bytes, server.addr).await.expect("send");
    }
    let burst_took = sent.elapsed();
    let mut answered = 0;
    let mut buf = vec![0u8; 4096];
    while let Ok(Ok(_)) =
        tokio::time::timeout(Duration::from_millis(500), sock.recv(&mut buf)).await
    {
        answered += 1;
    }
    if burst_took < Duration::from_millis(900) {
        assert_eq!(answered, 3, "burst of 3 answered, the rest dropped");
    } else {
        assert!(
            (3..=4).contains(&answered),
            "burst of 3 (+1 refilled), got {answered}"
        );
    }
    // TCP is not limited.
    let mut c = client(server.addr, Transport::Tcp).await;
    for _ in 0..5 {
        assert_eq!(query_soa(&mut c).await, Some(1));
    }
    server.stop().await;
}

async fn query_soa(
    c: &mut hickory_net::client::Client<hickory_net::runtime::TokioRuntimeProvider>,
) -> Option<u32> {
    soa_serial(&query(c, ZONE, RecordType::SOA).await.answers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_stops_on_shutdown_within_the_deadline() {
    let server = TestServer::start(example_snapshot(1)).await;
    let started = Instant::now();
    server.stop().await;
    assert!(started.elapsed() < DEADLINE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_random_and_mutated_packets_never_stop_the_server() {
    let server = TestServer::start(example_snapshot(1)).await;
    let sender = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let mut valid = Message::query();
    valid.add_query(clusterd_dns::proto::op::Query::query(
        clusterd_dns::proto::rr::Name::from_ascii("imap.mail.example.com.").unwrap(),
        RecordType::A,
    ));
    let valid = valid.to_vec().expect("encode");
    // xorshift64: deterministic, so a failure reproduces.
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for i in 0..3000 {
        let datagram: Vec<u8> = if i % 2 == 0 {
            let len = (next() % 600) as usize;
            (0..len).map(|_| next() as u8).collect()
        } else {
            let mut d = valid.clone();
            for _ in 0..1 + next() % 4 {
                let at = (next() as usize) % d.len();
                d[at] ^= 1 << (next() % 8);
            }
            d.truncate(d.len() - (next() % 3) as usize);
            d
        };
        sender.send_to(&datagram, server.addr).await.expect("send");
        if i % 200 == 0 {
            // Let the server drain so its receive buffer does not overflow.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    for transport in [Transport::Udp, Transport::Tcp] {
        let mut c = client(server.addr, transport).await;
        assert_eq!(
            a_ips(&query(&mut c, &fqdn("imap"), RecordType::A).await).len(),
            2,
            "{transport:?}"
        );
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_opcodes_get_notimp_and_other_classes_are_refused() {
    let server = TestServer::start(example_snapshot(1)).await;
    let out = dig(server.addr, &["+notcp", "+opcode=notify", ZONE, "SOA"]).await;
    assert_eq!(dig_status(&out), "NOTIMP", "{out}");
    let out = dig(server.addr, &["+notcp", "+opcode=update", ZONE, "SOA"]).await;
    assert_eq!(dig_status(&out), "NOTIMP", "{out}");
    let out = dig(server.addr, &["+notcp", "version.bind.", "CH", "TXT"]).await;
    assert_eq!(dig_status(&out), "REFUSED", "{out}");
    let out = dig(server.addr, &["+tcp", ZONE, "AXFR"]).await;
    assert!(
        out.contains("Transfer failed") || out.contains("REFUSED"),
        "{out}"
    );
    server.stop().await;
}

fn framed_query(id: u16, name: &str, rtype: RecordType) -> Vec<u8> {
    let mut m = Message::query();
    m.metadata.id = id;
    m.add_query(clusterd_dns::proto::op::Query::query(
        clusterd_dns::proto::rr::Name::from_ascii(name).unwrap(),
        rtype,
    ));
    let wire = m.to_vec().expect("encode");
    let mut frame = (wire.len() as u16).to_be_bytes().to_vec();
    frame.extend(wire);
    frame
}

async fn read_framed(stream: &mut tokio::net::TcpStream) -> Message {
    try_read_framed(stream, DEADLINE)
        .await
        .expect("a framed response within the deadline")
}

/// One length-prefixed response, or `None` if the connection closes or `within` passes.
async fn try_read_framed(stream: &mut tokio::net::TcpStream, within: Duration) -> Option<Message> {
    use tokio::io::AsyncReadExt;
    tokio::time::timeout(within, async {
        let len = stream.read_u16().await.ok()?;
        let mut buf = vec![0u8; usize::from(len)];
        stream.read_exact(&mut buf).await.ok()?;
        Message::from_vec(&buf).ok()
    })
    .await
    .ok()
    .flatten()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_tcp_queries_are_answered_in_order() {
    use tokio::io::AsyncWriteExt;
    let server = TestServer::start(example_snapshot(8)).await;
    let mut stream = tokio::net::TcpStream::connect(server.addr)
        .await
        .expect("connect");
    let mut frames = framed_query(1, &fqdn("imap"), RecordType::A);
    frames.extend(framed_query(2, ZONE, RecordType::SOA));
    frames.extend(framed_query(3, &fqdn("nosuchname"), RecordType::A));
    stream.write_all(&frames).await.expect("write");
    let first = read_framed(&mut stream).await;
    let second = read_framed(&mut stream).await;
    let third = read_framed(&mut stream).await;
    assert_eq!((first.metadata.id, a_ips(&first).len()), (1, 2));
    assert_eq!(
        (second.metadata.id, soa_serial(&second.answers)),
        (2, Some(8))
    );
    assert_eq!(
        (third.metadata.id, third.metadata.response_code),
        (3, ResponseCode::NXDomain)
    );
    server.stop().await;
}

/// Whether the server closes `stream` (EOF or reset) within `within`.
async fn closed_within(stream: &mut tokio::net::TcpStream, within: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut byte = [0u8; 1];
    matches!(
        tokio::time::timeout(within, stream.read(&mut byte)).await,
        Ok(Ok(0) | Err(_))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_tcp_connections_are_closed_after_the_idle_timeout() {
    let options = ServeOptions {
        tcp_idle_timeout: Duration::from_millis(200),
        ..ServeOptions::default()
    };
    let server = TestServer::start_with(example_snapshot(1), options).await;
    let mut stream = tokio::net::TcpStream::connect(server.addr)
        .await
        .expect("connect");
    let started = Instant::now();
    assert!(
        closed_within(&mut stream, DEADLINE).await,
        "idle connection stays open"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(150),
        "closed before the idle timeout"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_connections_over_the_cap_are_closed_and_slots_come_back() {
    let options = ServeOptions {
        max_tcp_connections: 2,
        ..ServeOptions::default()
    };
    let server = TestServer::start_with(example_snapshot(1), options).await;
    let mut c1 = client(server.addr, Transport::Tcp).await;
    let mut c2 = client(server.addr, Transport::Tcp).await;
    // Both are established and served before the third arrives.
    assert_eq!(query_soa(&mut c1).await, Some(1));
    assert_eq!(query_soa(&mut c2).await, Some(1));
    let mut third = tokio::net::TcpStream::connect(server.addr)
        .await
        .expect("connect");
    assert!(
        closed_within(&mut third, DEADLINE).await,
        "third connection was not closed"
    );
    drop(c1);
    // The freed slot is usable again, within the deadline.
    let deadline = Instant::now() + DEADLINE;
    loop {
        use tokio::io::AsyncWriteExt;
        let mut s = tokio::net::TcpStream::connect(server.addr)
            .await
            .expect("connect");
        if s.write_all(&framed_query(7, ZONE, RecordType::SOA))
            .await
            .is_ok()
            && let Some(m) = try_read_framed(&mut s, Duration::from_millis(200)).await
        {
            assert_eq!(soa_serial(&m.answers), Some(1));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no slot came back after a client left"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.stop().await;
}

/// A served TCP connection to `to` from the loopback address `from`.
async fn tcp_from(from: [u8; 4], to: std::net::SocketAddr) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
    socket
        .bind(std::net::SocketAddr::from((from, 0)))
        .expect("bind a loopback source");
    socket.connect(to).await.expect("connect")
}

/// Whether a SOA query on `s` is answered.
async fn soa_answered(s: &mut tokio::net::TcpStream) -> bool {
    use tokio::io::AsyncWriteExt;
    s.write_all(&framed_query(9, ZONE, RecordType::SOA))
        .await
        .is_ok()
        && try_read_framed(s, DEADLINE).await.is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_source_cannot_take_every_tcp_slot() {
    let options = ServeOptions {
        max_tcp_per_source: 2,
        ..ServeOptions::default()
    };
    let server = TestServer::start_with(example_snapshot(1), options).await;
    let mut first = tcp_from([127, 0, 0, 1], server.addr).await;
    let mut second = tcp_from([127, 0, 0, 1], server.addr).await;
    assert!(soa_answered(&mut first).await && soa_answered(&mut second).await);
    let mut third = tcp_from([127, 0, 0, 1], server.addr).await;
    assert!(
        closed_within(&mut third, DEADLINE).await,
        "a third connection from the same source was not closed"
    );
    // Another source is served while the first holds its share.
    let mut other = tcp_from([127, 0, 0, 2], server.addr).await;
    assert!(
        soa_answered(&mut other).await,
        "another source was locked out"
    );
    // The share comes back when a connection ends.
    drop(first);
    let deadline = Instant::now() + DEADLINE;
    loop {
        let mut again = tcp_from([127, 0, 0, 1], server.addr).await;
        if soa_answered(&mut again).await {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the source's share never came back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_at_the_apex_gets_one_rrset_not_every_record() {
    let server = TestServer::start(example_snapshot(1)).await;
    for transport in ["+notcp", "+tcp"] {
        let out = dig(server.addr, &[transport, ZONE, "ANY"]).await;
        assert_eq!(dig_status(&out), "NOERROR", "{out}");
        let answers = dig_section(&out, "ANSWER");
        assert!(!answers.is_empty(), "{out}");
        let types: BTreeSet<&str> = answers.iter().map(|f| f[3].as_str()).collect();
        assert_eq!(types.len(), 1, "one RRset (RFC 8482): {out}");
        let mx = dig(server.addr, &[transport, ZONE, "MX"]).await;
        let soa = dig(server.addr, &[transport, ZONE, "SOA"]).await;
        assert!(
            !dig_section(&mx, "ANSWER").is_empty() && !dig_section(&soa, "ANSWER").is_empty(),
            "the apex holds several RRsets: {mx}{soa}"
        );
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_question_with_a_compressed_name_gets_formerr_not_a_broken_echo() {
    // Found by fuzzing: the name is a pointer into the header. Echoed as received, it would
    // point into the response's own header, whose flags differ: an undecodable answer.
    let server = TestServer::start(example_snapshot(1)).await;
    let query = [
        0x42, 0x42, 0x01, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // header
        0xc0, 0x02, // the question's name: a pointer to offset 2
        0x00, 0x01, 0x00, 0x01, // A, IN
    ];
    let answer = raw_udp(server.addr, &query, DEADLINE)
        .await
        .expect("an answer");
    let m = Message::from_vec(&answer).expect("an answer that is a DNS message");
    assert_eq!(m.metadata.id, 0x4242);
    assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
    // The server still answers normally.
    let out = dig(server.addr, &[&fqdn("imap"), "A"]).await;
    assert_eq!(dig_status(&out), "NOERROR", "{out}");
    server.stop().await;
}
