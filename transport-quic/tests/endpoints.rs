//! Real QUIC endpoints in one test process: refused handshakes (no certificate, another
//! CA), garbage to the UDP port and to open streams, envelopes that lie about their
//! sender, and exactly-once writes on retry.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns: a panic is the report

mod common;

use common::{join_all, wait_for, Setup};
use coracle::wire::Envelope;
use coracle::{Message, RequestVote};
use coracle_quic::certs::{Ca, Identity, ANY_NODE_NAME};
use coracle_quic::client::{ClientEndpoint, ClientError};
use coracle_quic::protocol::{
    append_frame, ErrorKind, Request, RequestFrame, Response, ResponseFrame, WriteOutcome,
};
use coracle_quic::server::RunningNode;
use coracle_quic::tls::{self, Credentials, QuicSettings};
use coracle_quic::transport::{encode_frame, TransportStats};
use rustls::pki_types::{pem::PemObject, CertificateDer};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

fn single_node(tag: &str) -> (Setup, RunningNode) {
    let setup = Setup::new(tag, 1);
    let node = RunningNode::start(&setup.config(1)).unwrap();
    // Wait until it leads (a one-node cluster elects itself).
    let client = setup.client("client-alice");
    let ready = wait_for(Duration::from_secs(20), || {
        smol::block_on(client.put("ready", "1")).ok()
    });
    assert!(ready.is_some(), "single node did not take a write");
    client.close();
    (setup, node)
}

fn endpoint() -> quinn::Endpoint {
    quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap()
}

/// A client TLS config that trusts `ca_pem` and presents no certificate.
fn no_cert_config(ca_pem: &str) -> quinn::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![tls::ALPN.to_vec()];
    quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap(),
    ))
}

/// Tries a Status request over `config`; true if an answer came.
async fn request_answered(config: quinn::ClientConfig, addr: SocketAddr) -> bool {
    let ep = endpoint();
    let attempt = async {
        let conn = ep
            .connect_with(config, addr, ANY_NODE_NAME)
            .ok()?
            .await
            .ok()?;
        let (mut send, mut recv) = conn.open_bi().await.ok()?;
        let mut frame = Vec::new();
        let request = RequestFrame {
            id: 1,
            request: Request::Status,
        };
        append_frame(&mut frame, &request).ok()?;
        send.write_all(&frame).await.ok()?;
        send.finish().ok()?;
        let answer = recv.read_to_end(1 << 20).await.ok()?;
        Some(!answer.is_empty())
    };
    let answered = smol::future::or(attempt, async {
        smol::Timer::after(Duration::from_secs(5)).await;
        None
    })
    .await
    .unwrap_or(false);
    ep.close(0u32.into(), b"");
    answered
}

#[test]
fn connections_without_a_certificate_or_from_another_ca_are_refused() {
    let (setup, node) = single_node("refuse");
    let addr = node.local_addr();
    let refused = || TransportStats::get(&node.stats().refused);

    // Our own client certificate works (the control), and nothing was refused so far (a
    // start-up probe that its client gave up on is no refusal).
    let good = tls::client_config(&setup.creds("client-alice"), &QuicSettings::default()).unwrap();
    assert!(smol::block_on(request_answered(good, addr)));
    assert_eq!(refused(), 0);

    // No certificate at all.
    let before = refused();
    assert!(!smol::block_on(request_answered(
        no_cert_config(setup.ca.cert_pem()),
        addr
    )));
    assert!(wait_for(Duration::from_secs(5), || (refused() > before)
        .then_some(()))
    .is_some());

    // A certificate from another CA (which even claims to be node 2): refused too.
    let other = Ca::generate("other", 1).unwrap();
    let forged = other.issue(&Identity::Node(2), 1).unwrap();
    let creds =
        Credentials::from_pem(setup.ca.cert_pem(), &forged.cert_pem, &forged.key_pem).unwrap();
    let before = refused();
    let config = tls::client_config(&creds, &QuicSettings::default()).unwrap();
    assert!(!smol::block_on(request_answered(config, addr)));
    assert!(wait_for(Duration::from_secs(5), || (refused() > before)
        .then_some(()))
    .is_some());

    // Nothing of them reached the node as a Raft message.
    assert_eq!(TransportStats::get(&node.stats().received), 0);
    node.shutdown().unwrap();
}

/// Clients that give up during the handshake are counted apart from the connections the
/// node refused (they were counted as refused): one that goes silent after its first
/// packet, and one that refuses the node's certificate (it trusts another CA).
#[test]
fn handshakes_given_up_by_the_client_are_not_counted_as_refusals() {
    let (setup, node) = single_node("abandon");
    let addr = node.local_addr();
    let refused = || TransportStats::get(&node.stats().refused);
    let abandoned = || TransportStats::get(&node.stats().handshakes_abandoned);
    let (refused_before, abandoned_before) = (refused(), abandoned());

    // 1. A client that sends its Initial packet and is never heard of again: its first
    // datagram is caught on a socket of ours, then sent to the node from another socket
    // that never answers. The node's handshake times out (its idle timeout, 1 s here).
    let catcher = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    catcher
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let good = tls::client_config(&setup.creds("client-alice"), &QuicSettings::default()).unwrap();
    let ep = endpoint();
    let _connecting = ep
        .connect_with(good, catcher.local_addr().unwrap(), ANY_NODE_NAME)
        .unwrap();
    let mut initial = vec![0u8; 65536];
    let (n, _) = catcher.recv_from(&mut initial).unwrap();
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    silent.send_to(&initial[..n], addr).unwrap();
    ep.close(0u32.into(), b"");

    // 2. A client that does not trust the node's certificate (another CA) and so aborts
    // the handshake with a TLS alert.
    let other = Ca::generate("other", 1).unwrap();
    let mine = setup
        .ca
        .issue(
            &Identity::Client {
                name: "bob".into(),
                admin: false,
            },
            1,
        )
        .unwrap();
    let distrustful =
        Credentials::from_pem(other.cert_pem(), &mine.cert_pem, &mine.key_pem).unwrap();
    let config = tls::client_config(&distrustful, &QuicSettings::default()).unwrap();
    assert!(!smol::block_on(request_answered(config, addr)));

    // Liveness bound: the node's idle timeout is 1 s; 20 s is generous on a loaded machine.
    let both = wait_for(Duration::from_secs(20), || {
        (abandoned() >= abandoned_before + 2).then_some(())
    });
    assert!(
        both.is_some(),
        "{} abandoned handshakes counted",
        abandoned() - abandoned_before
    );
    assert_eq!(
        refused(),
        refused_before,
        "a client's giving up is no refusal"
    );
    node.shutdown().unwrap();
}

#[test]
fn garbage_on_the_udp_port_and_on_open_streams_is_counted_and_survived() {
    let (setup, node) = single_node("garbage");
    let addr = node.local_addr();
    let malformed = || TransportStats::get(&node.stats().malformed);

    // 1. Random datagrams of every size to the UDP port: quinn drops them (they are no
    // QUIC), and every one is counted as a stray datagram (nothing counted them before).
    let stray = || TransportStats::get(&node.stats().stray_datagrams);
    let stray_before = stray();
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for len in 0..1500usize {
        let bytes: Vec<u8> = (0..len % 1400)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let _ = udp.send_to(&bytes, addr);
        if len % 50 == 49 {
            // Paced, so the kernel's receive buffer never overflows.
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    let counted = wait_for(Duration::from_secs(10), || {
        (stray() >= stray_before + 1500).then_some(())
    });
    assert!(
        counted.is_some(),
        "{} of 1500 garbage datagrams counted",
        stray() - stray_before
    );
    assert_eq!(
        malformed(),
        0,
        "garbage without a connection is no malformed frame"
    );

    // 2. A peer with a valid node certificate (node 2) that sends garbage: first instead
    // of its hello (the connection is closed, counted), then after it.
    let issued = setup.ca.issue(&Identity::Node(2), 1).unwrap();
    let creds =
        Credentials::from_pem(setup.ca.cert_pem(), &issued.cert_pem, &issued.key_pem).unwrap();
    let config = tls::client_config(&creds, &QuicSettings::default()).unwrap();
    let ep = endpoint();
    smol::block_on(async {
        // The connection is closed as malformed (within a generous 10 s), and counted.
        let first_stream_closes_as_malformed = |bytes: &[u8]| {
            let bytes = bytes.to_vec();
            let (ep, config) = (&ep, config.clone());
            async move {
                let before = malformed();
                let conn = ep
                    .connect_with(config, addr, "node-1.coracle")
                    .unwrap()
                    .await
                    .unwrap();
                let (mut s, _r) = conn.open_bi().await.unwrap();
                s.write_all(&bytes).await.unwrap();
                let closed = smol::future::or(async { Some(conn.closed().await) }, async {
                    smol::Timer::after(Duration::from_secs(10)).await;
                    None
                })
                .await;
                assert!(
                    matches!(&closed, Some(quinn::ConnectionError::ApplicationClosed(c))
                        if c.error_code == coracle_quic::transport::ERR_MALFORMED.into()),
                    "{closed:?}"
                );
                assert!(malformed() > before);
            }
        };
        first_stream_closes_as_malformed(&[0x5a; 64]).await;

        // An earlier build's hello (format 1: no versions, 36 bytes) is told apart from its
        // head and refused as malformed at once (not left to the hello's timeout, which
        // would close with another code).
        let mut old = b"CORAHELO".to_vec();
        old.extend_from_slice(&1u32.to_le_bytes());
        for n in [7u64, 2, 0x2222] {
            old.extend_from_slice(&n.to_le_bytes());
        }
        first_stream_closes_as_malformed(&old).await;

        // A peer with no version in common (the library's `with_versions`): both ends
        // refuse, both count it.
        let refused = || TransportStats::get(&node.stats().refused);
        let before = refused();
        let conn = ep
            .connect_with(config.clone(), addr, "node-1.coracle")
            .unwrap()
            .await
            .unwrap();
        let book_dir = setup.path().join("fake-node-2-newer");
        std::fs::create_dir_all(&book_dir).unwrap();
        let book = Arc::new(coracle_quic::storage::Incarnations::open(&book_dir).unwrap());
        let newer = coracle_quic::hello::Versions::parse("protocol=9..10").unwrap();
        let greeting = coracle_quic::hello::Greeting::new(7, 2, 0x2222, book).with_versions(newer);
        let stats = TransportStats::default();
        assert!(!coracle_quic::hello::exchange(&greeting, 1, &conn, true, &stats).await);
        assert_eq!(TransportStats::get(&stats.refused), 1);
        let mut waited = 0;
        while refused() == before && waited < 100 {
            // Liveness bound: 10 s, generous on a loaded machine.
            smol::Timer::after(Duration::from_millis(100)).await;
            waited += 1;
        }
        assert!(refused() > before, "the node counted its refusal");

        let conn = ep
            .connect_with(config, addr, "node-1.coracle")
            .unwrap()
            .await
            .unwrap();
        let book_dir = setup.path().join("fake-node-2");
        std::fs::create_dir_all(&book_dir).unwrap();
        let book = Arc::new(coracle_quic::storage::Incarnations::open(&book_dir).unwrap());
        let greeting = coracle_quic::hello::Greeting::new(7, 2, 0x2222, book);
        let stats = TransportStats::default();
        assert!(coracle_quic::hello::exchange(&greeting, 1, &conn, true, &stats).await);
        let mut expected = malformed();
        // a) bytes that are no frame, b) a length prefix past the limit, c) a valid
        // envelope that claims to come from node 3, d) one for another cluster.
        let vote = Message::RequestVote(RequestVote {
            term: 1,
            last_log_index: 0,
            last_log_term: 0,
            pre_vote: true,
            leadership_transfer: false,
        });
        let lying = encode_frame(&Envelope::new(7, 3, 1, vote)).unwrap();
        let other_cluster = encode_frame(&Envelope::new(8, 2, 1, vote)).unwrap();
        let cases: Vec<Vec<u8>> = vec![
            b"\x05\x00\x00\x00hello garbage".to_vec(),
            u32::MAX.to_le_bytes().to_vec(),
            lying.to_vec(),
            other_cluster.to_vec(),
        ];
        for case in cases {
            let mut s = conn.open_uni().await.unwrap();
            s.write_all(&case).await.unwrap();
            // (Not finished: the stream stays open, as a live peer's would.)
            // The node stops the stream with an error code.
            let stopped = smol::future::or(async { s.stopped().await.ok().flatten() }, async {
                smol::Timer::after(Duration::from_secs(5)).await;
                None
            })
            .await;
            assert_eq!(
                stopped,
                Some(coracle_quic::transport::ERR_MALFORMED.into()),
                "stream not stopped"
            );
            expected += 1;
            assert!(
                wait_for(Duration::from_secs(5), || (malformed() >= expected)
                    .then_some(()))
                .is_some()
            );
        }
        // e) Malformed and lying datagrams are counted and dropped.
        conn.send_datagram(bytes::Bytes::from_static(b"\x01\x07garbage"))
            .unwrap();
        conn.send_datagram(lying.slice(4..)).unwrap();
        expected += 2;
        assert!(
            wait_for(Duration::from_secs(5), || (malformed() >= expected)
                .then_some(()))
            .is_some()
        );
        // The connection itself is still usable: a good frame gets through.
        let good = encode_frame(&Envelope::new(7, 2, 1, vote)).unwrap();
        let mut s = conn.open_uni().await.unwrap();
        s.write_all(&good).await.unwrap();
        let _ = s.finish();
        assert!(wait_for(Duration::from_secs(5), || {
            (TransportStats::get(&node.stats().received) >= 1).then_some(())
        })
        .is_some());
        // f) Nothing after a malformed frame on a stream is stepped, even what arrived
        // with it: a lying frame and a good one in one write stop the stream and count one
        // malformed frame, and the good one is not received. (The node takes frames in
        // order: once a lying frame sent afterwards on another stream is counted, the good
        // one was taken, if it ever was.)
        let received = || TransportStats::get(&node.stats().received);
        let before = received();
        let mut s = conn.open_uni().await.unwrap();
        s.write_all(&[&lying[..], &good[..]].concat())
            .await
            .unwrap();
        let stopped = smol::future::or(async { s.stopped().await.ok().flatten() }, async {
            smol::Timer::after(Duration::from_secs(5)).await;
            None
        })
        .await;
        assert_eq!(stopped, Some(coracle_quic::transport::ERR_MALFORMED.into()));
        let mut s = conn.open_uni().await.unwrap();
        s.write_all(&lying).await.unwrap();
        expected += 2;
        assert!(
            wait_for(Duration::from_secs(5), || (malformed() >= expected)
                .then_some(()))
            .is_some()
        );
        assert_eq!(
            received(),
            before,
            "a frame after a malformed one was stepped"
        );

        // 3. Garbage on a client's request stream: a malformed-request answer under the
        // request's id, counted, and the stream goes on (a good request after it is
        // answered); a length past the limit stops the stream.
        let client_cfg =
            tls::client_config(&setup.creds("client-alice"), &QuicSettings::default()).unwrap();
        let c = ep
            .connect_with(client_cfg, addr, ANY_NODE_NAME)
            .unwrap()
            .await
            .unwrap();
        let before = malformed();
        let (mut send, mut recv) = c.open_bi().await.unwrap();
        let mut frames = Vec::new();
        // id 9 (one varint byte), then a request that does not decode.
        frames.extend_from_slice(b"\x04\x00\x00\x00\x09\xff\xff\xff");
        // Bytes that are not even an id.
        frames.extend_from_slice(b"\x03\x00\x00\x00\xff\xff\xff");
        append_frame(
            &mut frames,
            &RequestFrame {
                id: 10,
                request: Request::Status,
            },
        )
        .unwrap();
        send.write_all(&frames).await.unwrap();
        let _ = send.finish();
        let answer = recv.read_to_end(1 << 16).await.unwrap();
        let mut answers = Vec::new();
        let mut rest = &answer[..];
        while rest.len() >= 4 {
            let len = u32::from_le_bytes(rest[..4].try_into().unwrap()) as usize;
            let frame: ResponseFrame = postcard::from_bytes(&rest[4..4 + len]).unwrap();
            answers.push(frame);
            rest = &rest[4 + len..];
        }
        assert!(rest.is_empty());
        answers.sort_by_key(|f| f.id);
        let ids: Vec<u64> = answers.iter().map(|f| f.id).collect();
        assert_eq!(ids, [0, 9, 10], "{answers:?}");
        for f in &answers[..2] {
            assert!(
                matches!(
                    &f.response,
                    Response::Error {
                        kind: ErrorKind::BadRequest,
                        ..
                    }
                ),
                "{f:?}"
            );
        }
        assert!(
            matches!(answers[2].response, Response::Status(_)),
            "{answers:?}"
        );
        assert!(malformed() >= before + 2);

        let before = malformed();
        let (mut send, _recv) = c.open_bi().await.unwrap();
        send.write_all(&u32::MAX.to_le_bytes()).await.unwrap();
        let stopped = smol::future::or(async { send.stopped().await.ok().flatten() }, async {
            smol::Timer::after(Duration::from_secs(5)).await;
            None
        })
        .await;
        assert_eq!(stopped, Some(coracle_quic::transport::ERR_MALFORMED.into()));
        assert!(malformed() > before);

        // A request, then a length prefix past the limit, read together: the request is
        // answered, the stream stopped and counted.
        let before = malformed();
        let (mut send, mut recv) = c.open_bi().await.unwrap();
        let mut bytes = Vec::new();
        append_frame(
            &mut bytes,
            &RequestFrame {
                id: 11,
                request: Request::Status,
            },
        )
        .unwrap();
        bytes.extend_from_slice(&u32::MAX.to_le_bytes());
        send.write_all(&bytes).await.unwrap();
        let _ = send.finish();
        let answer = recv.read_to_end(1 << 16).await.unwrap();
        let len = u32::from_le_bytes(answer[..4].try_into().unwrap()) as usize;
        assert_eq!(answer.len(), 4 + len, "one answer");
        let frame: ResponseFrame = postcard::from_bytes(&answer[4..]).unwrap();
        assert_eq!(frame.id, 11);
        assert!(matches!(frame.response, Response::Status(_)), "{frame:?}");
        assert!(malformed() > before);
    });
    ep.close(0u32.into(), b"");

    // The node is alive and well.
    let client = setup.client("client-alice");
    smol::block_on(async {
        client.put("after", "garbage").await.unwrap();
        assert_eq!(
            client.get("after").await.unwrap(),
            Some(b"garbage".to_vec())
        );
    });
    node.shutdown().unwrap();
}

#[test]
fn a_retried_write_is_applied_once() {
    let (setup, node) = single_node("once");
    let client = setup.client("client-alice");
    // Asks for the value replaced: a retry answered `None` shows it was not applied again.
    let write = |seq: u64, value: &str| common::session_put(4242, seq, "k", value);
    smol::block_on(async {
        let first = client.call(&write(1, "one")).await.unwrap();
        let Response::Written { outcome, index } = first else {
            panic!("{first:?}")
        };
        assert_eq!(outcome, WriteOutcome::Done { previous: None });
        client.call(&write(2, "two")).await.unwrap();
        // The retry of seq 1 (say its answer was lost): same outcome and index, not applied.
        // (The retry is a new log entry, deduplicated when applied.)
        let retry = client.call(&write(1, "one")).await.unwrap();
        let Response::Written {
            outcome,
            index: again,
        } = retry
        else {
            panic!("{retry:?}")
        };
        assert_eq!(outcome, WriteOutcome::Done { previous: None });
        assert!(again > index);
        assert_eq!(client.get("k").await.unwrap(), Some(b"two".to_vec()));
    });
    node.shutdown().unwrap();
}

#[test]
fn concurrent_calls_on_one_client_are_pipelined_and_get_their_own_answers() {
    let (setup, node) = single_node("pipelined");
    let client = setup.client("client-alice");
    let connections = || TransportStats::get(&node.stats().client_connections);
    let before = connections();
    smol::block_on(async {
        // 200 writes in flight at once on one connection and stream, then 200 reads: every
        // call must get the answer to its own request, whatever order they come in.
        let writes = (0..200).map(|i| client.put(format!("p{i}"), format!("v{i}")));
        for r in join_all(writes).await {
            r.unwrap();
        }
        // They shared the one connection the first of them made (200 handshakes at once
        // could each miss the connect timeout on a busy machine, round after round).
        assert_eq!(connections(), before + 1);
        // Overwrites that return the value replaced: each answer names its own key's.
        let writes =
            (0..200).map(|i| client.put_returning_previous(format!("p{i}"), format!("w{i}")));
        for (i, r) in join_all(writes).await.into_iter().enumerate() {
            assert_eq!(r.unwrap(), Some(format!("v{i}").into_bytes()));
        }
        let reads = (0..200).map(|i| client.get(format!("p{i}")));
        for (i, r) in join_all(reads).await.into_iter().enumerate() {
            assert_eq!(r.unwrap(), Some(format!("w{i}").into_bytes()));
        }
    });
    client.close();
    node.shutdown().unwrap();
}

/// Clients made by one `ClientEndpoint` share its socket, but each has a connection and an
/// exactly-once session of its own: the second client's first write is applied, not taken
/// for a retry of the first client's. Closing one client leaves the other working; closing
/// the endpoint ends both.
#[test]
fn clients_on_one_endpoint_have_their_own_connections_and_sessions() {
    let (setup, node) = single_node("shared-endpoint");
    let bind = "127.0.0.1:0".parse().unwrap();
    let endpoint = ClientEndpoint::new(&setup.creds("client-alice"), bind).unwrap();
    let a = endpoint.client(vec![node.local_addr()]).unwrap();
    let b = endpoint.client(vec![node.local_addr()]).unwrap();
    let connections = || TransportStats::get(&node.stats().client_connections);
    let before = connections();
    smol::block_on(async {
        a.put("k", "from a").await.unwrap();
        b.put("k", "from b").await.unwrap();
        assert_eq!(a.get("k").await.unwrap(), Some(b"from b".to_vec()));
        assert_eq!(connections(), before + 2);
        a.close();
        assert_eq!(b.get("k").await.unwrap(), Some(b"from b".to_vec()));
        endpoint.close();
        assert!(matches!(b.get("k").await, Err(ClientError::Closed)));
    });
    node.shutdown().unwrap();
}

#[test]
fn more_requests_than_may_be_in_flight_on_one_stream_are_all_answered() {
    let (setup, node) = single_node("in-flight");
    let ep = endpoint();
    let config =
        tls::client_config(&setup.creds("client-alice"), &QuicSettings::default()).unwrap();
    let requests = 3 * coracle_quic::server::REQUESTS_IN_FLIGHT as u64;
    let answered = smol::block_on(async {
        let conn = ep
            .connect_with(config, node.local_addr(), ANY_NODE_NAME)
            .unwrap()
            .await
            .unwrap();
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        let mut frames = Vec::new();
        for id in 1..=requests {
            let request = RequestFrame {
                id,
                request: Request::Status,
            };
            append_frame(&mut frames, &request).unwrap();
        }
        // All written before any answer is read: the node reads on as answers leave.
        send.write_all(&frames).await.unwrap();
        let _ = send.finish();
        let answer = smol::future::or(async { recv.read_to_end(64 << 20).await.ok() }, async {
            smol::Timer::after(Duration::from_secs(30)).await;
            None
        })
        .await
        .expect("every answer within 30 s");
        let mut ids = Vec::new();
        let mut rest = &answer[..];
        while rest.len() >= 4 {
            let len = u32::from_le_bytes(rest[..4].try_into().unwrap()) as usize;
            let frame: ResponseFrame = postcard::from_bytes(&rest[4..4 + len]).unwrap();
            assert!(matches!(frame.response, Response::Status(_)), "{frame:?}");
            ids.push(frame.id);
            rest = &rest[4 + len..];
        }
        ids.sort_unstable();
        ids
    });
    assert_eq!(answered, (1..=requests).collect::<Vec<_>>());
    ep.close(0u32.into(), b"");
    node.shutdown().unwrap();
}

#[test]
fn startup_errors_are_clear() {
    let setup = Setup::new("startup", 1);
    let cfg = setup.config(1);
    let node = RunningNode::start(&cfg).unwrap();
    // The same data directory twice: locked.
    let mut other = cfg.clone();
    other.listen = "127.0.0.1:0".parse().unwrap();
    let err = RunningNode::start(&other).unwrap_err().to_string();
    assert!(err.contains("in use") || err.contains("lock"), "{err}");
    node.shutdown().unwrap();
    // A certificate of another node.
    let mut wrong = setup.config(1);
    wrong.tls.cert = setup.certs().join("client-alice.pem");
    wrong.tls.key = setup.certs().join("client-alice.key");
    let err = RunningNode::start(&wrong).unwrap_err().to_string();
    assert!(err.contains("client alice"), "{err}");
    // A missing key.
    let mut missing = setup.config(1);
    missing.tls.key = setup.certs().join("nope.key");
    let err = RunningNode::start(&missing).unwrap_err().to_string();
    assert!(err.contains("nope.key"), "{err}");
}

/// Calls that wait for a connection being made share its outcome: when it fails they fail
/// with it at once (and may try another node) rather than each trying the same dead
/// address in turn. A node that never answers counts the datagrams of the attempts.
#[test]
fn calls_waiting_for_a_failed_connection_fail_with_it() {
    let setup = Setup::new("black-hole", 1);
    let hole = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    hole.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let addr = hole.local_addr().unwrap();
    let request = Request::Read {
        op: coracle_quic::protocol::ReadOp::Get { key: b"k".to_vec() },
        consistency: coracle_quic::protocol::Consistency::Linearizable,
    };
    // The datagrams `calls` concurrent attempts on one new client send to the hole.
    let datagrams = |calls: usize| {
        let client = coracle_quic::client::Client::new(&setup.creds("client-alice"), vec![addr])
            .unwrap()
            .with_connect_timeout(Duration::from_millis(300))
            .with_attempt_timeout(Duration::from_secs(5));
        let results = smol::block_on(join_all((0..calls).map(|_| client.attempt(addr, &request))));
        assert!(results.iter().all(|r| r.is_err()));
        client.close();
        let mut buf = [0u8; 2048];
        let mut n = 0;
        while hole.recv(&mut buf).is_ok() {
            n += 1;
        }
        n
    };
    let one = datagrams(1);
    assert!(one > 0);
    assert_eq!(datagrams(20), one, "one connection attempt for 20 calls");
}

/// A failed call says once what happened, which nodes it tried and the last cause (it
/// used to nest: "no answer in time (last: ...: no answer in time (last: ...))").
#[test]
fn a_failed_call_says_once_what_happened_where_and_why() {
    let setup = Setup::new("errors", 3);
    // Two addresses where nothing answers: the handshake never completes.
    let holes: Vec<std::net::UdpSocket> = (0..2)
        .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").unwrap())
        .collect();
    let addrs: Vec<SocketAddr> = holes.iter().map(|h| h.local_addr().unwrap()).collect();
    let client = coracle_quic::client::Client::new(&setup.creds("client-alice"), addrs.clone())
        .unwrap()
        .with_timeout(Duration::from_millis(1500))
        .with_connect_timeout(Duration::from_millis(200));
    let err = smol::block_on(client.get("k")).unwrap_err();
    let text = err.to_string();
    println!("{text}");
    for a in &addrs {
        assert!(text.contains(&a.to_string()), "{a} is named: {text}");
    }
    assert_eq!(text.matches("in time").count(), 1, "said once: {text}");
    assert_eq!(text.matches("(last").count(), 0, "not nested: {text}");
    assert!(
        text.contains("no handshake within 200 ms"),
        "the cause: {text}"
    );
    assert!(text.contains("gave up after 1."), "how long: {text}");
    client.close();

    // One node of three, alone: it answers that it knows no leader.
    let node = RunningNode::start(&setup.config(1)).unwrap();
    let client =
        coracle_quic::client::Client::new(&setup.creds("client-alice"), vec![setup.addrs[0]])
            .unwrap()
            .with_timeout(Duration::from_millis(1000));
    let err = smol::block_on(client.put("k", "v")).unwrap_err();
    let text = err.to_string();
    println!("{text}");
    assert!(text.contains(&setup.addrs[0].to_string()), "{text}");
    assert!(text.contains("no leader known"), "the cause: {text}");
    assert_eq!(text.matches("retry").count(), 1, "said once: {text}");
    // The single-attempt call says which node and why too.
    let err = smol::block_on(client.attempt(addrs[0], &coracle_quic::protocol::Request::Status))
        .unwrap_err()
        .to_string();
    println!("{err}");
    assert!(
        err.contains(&addrs[0].to_string()) && err.contains("no handshake"),
        "{err}"
    );
    client.close();
    node.shutdown().unwrap();
}
