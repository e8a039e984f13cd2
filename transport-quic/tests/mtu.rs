//! Path MTU discovery with the settings of nodes and clients (`tls::MAX_UDP_PAYLOAD`):
//! above Ethernet's on loopback, and what the path carries on a 1500-byte one. In a test
//! binary of their own: the second one starts a process, and a process started while a
//! test of the library holds a data directory's lock holds it too until it execs.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns: a panic is the report

use coracle_quic::certs::{node_server_name, Ca, Identity};
use coracle_quic::tls::{self, Credentials, QuicSettings, MAX_UDP_PAYLOAD};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn node_creds(ca: &Ca, id: u64) -> Credentials {
    let issued = ca.issue(&Identity::Node(id), 1).unwrap();
    Credentials::from_pem(ca.cert_pem(), &issued.cert_pem, &issued.key_pem).unwrap()
}

fn endpoint(server: Option<quinn::ServerConfig>) -> quinn::Endpoint {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let runtime = Arc::new(quinn::SmolRuntime);
    quinn::Endpoint::new(tls::endpoint_config(), server, socket, runtime).unwrap()
}

/// Sends data over a stream from a client to a server on loopback, both with the settings
/// of nodes: 8 KiB at a time with pauses until `enough` says so (at most 10 s; quinn probes
/// the path only when a connection has nothing else to send), then 16 MiB at once; returns
/// the client's connection statistics once all of it arrived (a stall of 30 s fails).
fn transfer(enough: impl Fn(&quinn::ConnectionStats) -> bool) -> quinn::ConnectionStats {
    let ca = Ca::generate("mtu-test", 1).unwrap();
    let settings = QuicSettings::default();
    let server = tls::server_config(&node_creds(&ca, 1), &settings).unwrap();
    let client = tls::client_config(&node_creds(&ca, 2), &settings).unwrap();
    let server = endpoint(Some(server));
    let addr = server.local_addr().unwrap();
    let run = async {
        let receiver = smol::spawn(async move {
            let conn = server.accept().await.unwrap().await.unwrap();
            let (_, mut recv) = conn.accept_bi().await.unwrap();
            let mut total = 0;
            while let Some(chunk) = recv.read_chunk(usize::MAX, true).await.unwrap() {
                total += chunk.bytes.len();
            }
            total
        });
        let conn = endpoint(None)
            .connect_with(client, addr, &node_server_name(1))
            .unwrap()
            .await
            .unwrap();
        let (mut send, _) = conn.open_bi().await.unwrap();
        let block = vec![7u8; 1 << 20];
        let (mut sent, start) = (0, Instant::now());
        while !enough(&conn.stats()) {
            let waited = start.elapsed();
            assert!(waited < Duration::from_secs(10), "{:?}", conn.stats());
            send.write_all(&block[..8 << 10]).await.unwrap();
            sent += 8 << 10;
            smol::Timer::after(Duration::from_millis(1)).await;
        }
        for _ in 0..16 {
            send.write_all(&block).await.unwrap();
            sent += block.len();
        }
        send.finish().unwrap();
        assert_eq!(receiver.await, sent);
        Some(conn.stats())
    };
    let timeout = async {
        smol::Timer::after(Duration::from_secs(30)).await;
        None
    };
    smol::block_on(smol::future::or(run, timeout)).expect("the transfer stalled")
}

/// On loopback, MTU discovery finds datagrams larger than Ethernet's, up to the cap.
#[test]
fn mtu_discovery_finds_more_than_ethernet_on_loopback() {
    let stats = transfer(|s| s.path.current_mtu > 1452);
    assert!(stats.path.current_mtu <= MAX_UDP_PAYLOAD, "{stats:?}");
}

/// On a path of 1500 bytes (loopback with that MTU, in a network namespace of the test's
/// own), the probes above it are lost and discovery settles on what the path carries.
/// Skipped (with a message) where unprivileged namespaces are not allowed.
#[test]
fn on_an_ethernet_sized_path_discovery_settles_on_what_it_carries() {
    const INSIDE: &str = "CORACLE_TEST_IN_NETNS";
    if std::env::var_os(INSIDE).is_none() {
        let exe = std::env::current_exe().unwrap();
        let test = "on_an_ethernet_sized_path_discovery_settles_on_what_it_carries";
        let script = format!("ip link set lo mtu 1500 up && exec \"$0\" --exact {test}");
        let status = std::process::Command::new("unshare")
            .args(["--user", "--map-root-user", "--net", "sh", "-c", &script])
            .arg(exe)
            .env(INSIDE, "1")
            .status();
        match status {
            Ok(s) if s.code() == Some(0) => {}
            Ok(s) if s.code() == Some(101) => panic!("the test failed in the namespace"),
            other => eprintln!("skipped: no network namespace ({other:?})"),
        }
        return;
    }
    let stats = transfer(|s| s.path.current_mtu > 1200);
    assert!(stats.path.current_mtu <= 1472, "{stats:?}");
    assert!(stats.path.lost_plpmtud_probes > 0, "{stats:?}");
}
