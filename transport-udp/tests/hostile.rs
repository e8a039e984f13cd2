//! Forged, replayed, misdirected and garbage datagrams sent to a running
//! node's socket: each kind is counted and dropped, and the cluster keeps
//! committing.

mod common;

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use common::{key, Cluster, Rng, CLUSTER};
use coracle_udp::{ClusterKey, Datagram, Header, Sealer, SendCounter, HEADER_LEN};

const WAIT: Duration = Duration::from_secs(20);

fn sealer(key: &ClusterKey, node: u64) -> Sealer {
    let mut counter = SendCounter::resume(Some(1 << 40), 1 << 20);
    counter.persisted(counter.persist_due().expect("a mark is due"));
    Sealer::new(key, CLUSTER, node, counter)
}

#[test]
fn forged_replayed_and_garbage_datagrams_are_counted_and_dropped() {
    smol::block_on(async {
        let cluster = Cluster::start(3, false);
        let leader = cluster.wait_leader(None, WAIT).await;
        cluster.commit(b"before", WAIT).await;
        let target = cluster.follower_of(leader);
        let target_addr = cluster
            .members
            .iter()
            .find(|m| m.id == target)
            .unwrap()
            .addr;

        // Datagrams the leader already sent to the target, as a sniffer saw them.
        let sniffed: Vec<Vec<u8>> = {
            let tap = cluster
                .members
                .iter()
                .find(|m| m.id == leader)
                .unwrap()
                .tap
                .clone();
            let tap = tap.lock().unwrap();
            tap.iter()
                .filter(|(to, _)| *to == target)
                .map(|(_, d)| d.clone())
                .collect()
        };
        assert!(!sniffed.is_empty());
        let before = cluster.status(target).await.unwrap();
        let attacker = UdpSocket::bind("127.0.0.1:0").unwrap();
        let send = |bytes: &[u8]| {
            attacker.send_to(bytes, target_addr).unwrap();
        };

        // Replays of what was already delivered.
        let replays = sniffed.len().min(10) as u64;
        for d in sniffed.iter().take(10) {
            send(d);
        }
        // Forged: a sniffed datagram with a fresh counter (the header is
        // authenticated), one with a flipped ciphertext bit, and datagrams
        // sealed under another key in the leader's name.
        let mut forged = 0;
        for d in sniffed.iter().take(5) {
            let mut head = [0u8; HEADER_LEN];
            head.copy_from_slice(&d[..HEADER_LEN]);
            let mut header = Header::decode(&head);
            header.counter += 1 << 30;
            let mut fake = d.clone();
            fake[..HEADER_LEN].copy_from_slice(&header.encode());
            send(&fake);
            forged += 1;
        }
        let mut wrong_key = sealer(&ClusterKey::from_bytes([0x13; 32]), leader);
        for i in 0..5u8 {
            let mut out: Datagram = Datagram::new();
            wrong_key.seal(target, &[i; 40], &mut out).unwrap();
            send(&out);
            forged += 1;
        }
        // Authentic-looking headers the target must refuse before the tag.
        let mut unknown = sealer(&key(), 99);
        let mut out: Datagram = Datagram::new();
        unknown.seal(target, b"who am I", &mut out).unwrap();
        send(&out);
        let mut misdirected = sealer(&key(), leader);
        misdirected
            .seal(target + 100, b"not yours", &mut out)
            .unwrap();
        send(&out);
        // Garbage of every length, some starting like a frame.
        let mut rng = Rng(5);
        let mut garbage = 0;
        for len in [0usize, 1, 10, 32, 33, 48, 49, 50, 200, 1199, 1200] {
            let mut bytes: Vec<u8> = (0..len).map(|_| rng.below(256) as u8).collect();
            if len > 0 && rng.below(2) == 0 {
                bytes[0] = coracle_udp::PROTOCOL_VERSION;
            }
            send(&bytes);
            garbage += 1;
        }
        let sent = replays + forged + 2 + garbage;

        // Every one is counted, by its own reason.
        let deadline = Instant::now() + WAIT;
        let status = loop {
            let s = cluster.status(target).await.unwrap();
            if s.drops.total() - before.drops.total() >= sent {
                break s;
            }
            assert!(Instant::now() < deadline, "not all counted: {:?}", s.drops);
            smol::Timer::after(Duration::from_millis(20)).await;
        };
        let d = status.drops;
        let b = before.drops;
        assert_eq!(d.total() - b.total(), sent, "{d:?}");
        assert_eq!(d.replayed + d.too_old - b.replayed - b.too_old, replays);
        assert_eq!(d.forged - b.forged, forged);
        assert_eq!(d.unknown_sender - b.unknown_sender, 1);
        assert!(d.not_for_us - b.not_for_us >= 1);
        assert!(d.truncated - b.truncated >= 6);
        // None reached the core.
        assert_eq!(status.core.unknown_sender, before.core.unknown_sender);
        assert_eq!(status.codec.undecodable + status.codec.mismatched, 0);

        // And the node keeps working.
        cluster.commit(b"after", WAIT).await;
        cluster
            .wait_applied(&[b"before".to_vec(), b"after".to_vec()], WAIT)
            .await;
        cluster.check_same_sequence();
    });
}
