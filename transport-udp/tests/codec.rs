//! The codec: every message the core builds under `mtu_config` fits one
//! datagram after sealing; what does not fit is refused (counted), never
//! truncated; an envelope that disagrees with its authenticated header, and
//! an authentic payload that does not decode, are counted and dropped.

use coracle::wire::{self, Envelope};
use coracle::{
    AppendEntries, AppendEntriesResponse, Config, Entries, Entry, EntryKind, InstallSnapshot,
    Message, Node, Output, ProposeError, ReadIndex, ReadIndexResponse, RequestVote,
    RequestVoteResponse, Role, SnapshotMeta, TimeoutNow, VecLog,
};
use coracle_udp::codec::{
    self, mtu_config, Link, RecvError, SendError, DEFAULT_ENTRIES, MAX_CONFIG_BYTES, SMALLEST_MTU,
};
use coracle_udp::{ClusterKey, Datagram, OpenError, SendCounter, DEFAULT_MTU};

const CLUSTER: u64 = u64::MAX - 5;

fn key() -> ClusterKey {
    ClusterKey::from_bytes([0x42; 32])
}

fn counter() -> SendCounter {
    let mut c = SendCounter::resume(None, 1 << 30);
    c.persisted(0);
    c
}

fn link<const MTU: usize>(me: u64, peers: &[u64]) -> Link<8, MTU> {
    let mut link = Link::new(&key(), CLUSTER, me, counter());
    for &p in peers {
        link.add_peer(p).expect("room");
    }
    link
}

/// A three-node cluster in memory, configured for `MTU`/`E`, whose messages
/// all go through `encode_seal` and `open_decode`. Returns the largest
/// datagram seen and the number of AppendEntries with entries.
fn run_cluster<const MTU: usize, const E: usize>(sizes: &[usize]) -> (usize, usize) {
    let members = [1u64, 2, 3];
    // Node ids are large so their varints are as long as they get.
    let ids = |i: u64| u64::MAX - 10 + i;
    let ids_all: Vec<u64> = members.iter().map(|&m| ids(m)).collect();
    let mut nodes: Vec<Node<VecLog>> = ids_all
        .iter()
        .map(|&id| {
            let config = mtu_config::<MTU, E>(Config::new(id, id));
            Node::new(config, VecLog::new(), &ids_all).expect("config")
        })
        .collect();
    let mut links: Vec<Link<8, MTU>> = ids_all
        .iter()
        .map(|&id| {
            let others: Vec<u64> = ids_all.iter().copied().filter(|&o| o != id).collect();
            link::<MTU>(id, &others)
        })
        .collect();
    let mut largest = 0;
    let mut batches = 0;
    let mut to_propose = sizes.iter().copied();
    let mut datagram: Datagram<MTU> = Datagram::new();
    for _round in 0..2000 {
        let mut mail: Vec<(usize, Vec<u8>)> = Vec::new();
        for (i, node) in nodes.iter_mut().enumerate() {
            node.tick();
            if node.role() == Role::Leader {
                for size in to_propose.by_ref().take(8) {
                    match node.propose(&vec![0xEE; size]) {
                        Ok(_) => {}
                        Err(ProposeError::Busy) => break,
                        Err(e) => panic!("proposal of {size} bytes refused: {e}"),
                    }
                }
            }
            while let Some(out) = node.poll_output() {
                match out {
                    Output::Persist(batch) => {
                        let token = batch.token;
                        node.persisted(token)
                    }
                    Output::Send { to, message } => {
                        if let Message::AppendEntries(a) = &message {
                            if !a.entries.is_empty() {
                                batches += 1;
                            }
                        }
                        links[i]
                            .encode_seal(to, &message, &mut datagram)
                            .unwrap_or_else(|e| panic!("{} does not fit: {e}", message.kind()));
                        assert!(datagram.len() <= MTU);
                        largest = largest.max(datagram.len());
                        let at = ids_all.iter().position(|&id| id == to).expect("member");
                        mail.push((at, datagram.to_vec()));
                    }
                    _ => {}
                }
            }
        }
        for (at, mut bytes) in mail {
            let received = links[at]
                .open_decode::<E>(&mut bytes)
                .expect("authentic and decodable");
            nodes[at].step(received.from(), received.message());
        }
        let done = to_propose.len() == 0;
        if done
            && nodes
                .iter()
                .all(|n| n.applied_index() == nodes[0].last_index())
        {
            break;
        }
    }
    let leader_log = nodes
        .iter()
        .find(|n| n.role() == Role::Leader)
        .expect("a leader")
        .last_index();
    for node in &nodes {
        assert_eq!(node.applied_index(), leader_log, "every entry applied");
    }
    for link in &links {
        assert_eq!(link.drops().total(), 0);
        assert_eq!(link.counters().too_large, 0);
    }
    (largest, batches)
}

#[test]
fn full_size_entries_fit_the_default_mtu_after_sealing() {
    let max = codec::max_entry_bytes(DEFAULT_MTU);
    let sizes = vec![max; 30];
    let (largest, batches) = run_cluster::<DEFAULT_MTU, DEFAULT_ENTRIES>(&sizes);
    assert!(batches > 0);
    // One full entry per datagram: within the slack of the worst-case bound
    // (small terms and indexes take 1-byte varints instead of 10).
    assert!(largest > DEFAULT_MTU - 100, "largest datagram {largest}");
}

#[test]
fn batches_of_small_and_mixed_entries_fit_the_default_mtu() {
    let mut sizes = vec![0usize; 200];
    let mut x = 7u64;
    for s in sizes.iter_mut().skip(100) {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        *s = (x >> 33) as usize % (codec::max_entry_bytes(DEFAULT_MTU) + 1);
    }
    let (largest, batches) = run_cluster::<DEFAULT_MTU, DEFAULT_ENTRIES>(&sizes);
    assert!(batches > 0 && largest <= DEFAULT_MTU);
}

#[test]
fn other_mtus_fit_too() {
    const M: usize = 576;
    const E: usize = codec::max_entries_per_message(M);
    let sizes = vec![codec::max_entry_bytes(M); 10];
    run_cluster::<M, E>(&sizes);
    run_cluster::<SMALLEST_MTU, 1>(&[0, 0, 0, 0]);
}

/// An InstallSnapshot with a chunk of `mtu_config`'s size, the largest
/// configuration and worst-case varints fits a datagram of `MTU`, with no
/// more slack than the bound's length prefixes (5 bytes each, 2 used here).
fn snapshot_chunk_fits<const MTU: usize>() {
    let config = mtu_config::<MTU, 1>(Config::new(1, 1));
    let chunk = config.max_snapshot_chunk_bytes;
    assert!(chunk >= 1, "MTU {MTU}");
    let members = [0x5Au8; MAX_CONFIG_BYTES];
    let data = vec![0xC3u8; chunk];
    let message = |len: usize| {
        Message::InstallSnapshot(InstallSnapshot {
            term: u64::MAX,
            last_included_index: u64::MAX,
            last_included_term: u64::MAX,
            offset: u64::MAX,
            done: true,
            config: &members,
            data: &data[..len],
        })
    };
    let mut alice = Link::<8, MTU>::new(&key(), CLUSTER, u64::MAX, counter());
    let mut bob = Link::<8, MTU>::new(&key(), CLUSTER, u64::MAX - 1, counter());
    bob.add_peer(u64::MAX).expect("room");
    let mut out: Datagram<MTU> = Datagram::new();
    alice
        .encode_seal(u64::MAX - 1, &message(chunk), &mut out)
        .unwrap_or_else(|e| panic!("MTU {MTU}: a full chunk does not fit: {e}"));
    assert!(out.len() + 8 >= MTU, "MTU {MTU}: {} bytes", out.len());
    let mut bytes = out.to_vec();
    let received = bob.open_decode::<1>(&mut bytes).expect("authentic");
    assert_eq!(received.message(), message(chunk));
}

#[test]
fn a_snapshot_chunk_of_the_configured_size_fits_with_the_largest_configuration() {
    snapshot_chunk_fits::<DEFAULT_MTU>();
    snapshot_chunk_fits::<576>();
    snapshot_chunk_fits::<SMALLEST_MTU>();
    // The largest configuration is the core's: a snapshot holds no more.
    assert!(SnapshotMeta::new(1, 1, &[0; MAX_CONFIG_BYTES]).is_some());
    assert!(SnapshotMeta::new(1, 1, &[0; MAX_CONFIG_BYTES + 9]).is_none());
    // Below the smallest MTU no chunk fits: the configuration is refused.
    let config = mtu_config::<{ SMALLEST_MTU - 1 }, 1>(Config::new(1, 1));
    assert!(Node::<VecLog>::new(config, VecLog::new(), &[1]).is_err());
}

#[test]
fn a_command_too_large_for_the_mtu_is_refused_at_proposal() {
    let config = mtu_config::<DEFAULT_MTU, DEFAULT_ENTRIES>(Config::new(1, 1));
    let mut node: Node<VecLog> = Node::new(config, VecLog::new(), &[1]).expect("config");
    for _ in 0..100 {
        node.tick();
        while let Some(out) = node.poll_output() {
            if let Output::Persist(batch) = out {
                let token = batch.token;
                node.persisted(token);
            }
        }
    }
    assert_eq!(node.role(), Role::Leader);
    let max = codec::max_entry_bytes(DEFAULT_MTU);
    assert!(node.propose(&vec![1; max]).is_ok());
    assert_eq!(
        node.propose(&vec![1; max + 1]),
        Err(ProposeError::TooLarge { len: max + 1, max })
    );
}

#[test]
fn a_message_too_large_at_encode_time_is_an_error_not_a_truncation() {
    let mut alice = link::<DEFAULT_MTU>(1, &[2]);
    let data = vec![7u8; 1200];
    let entries = [Entry {
        index: 1,
        term: 1,
        kind: EntryKind::Command,
        data: &data,
    }];
    let message = Message::AppendEntries(AppendEntries {
        term: 1,
        prev_log_index: 0,
        prev_log_term: 0,
        leader_commit: 0,
        round: 1,
        entries: Entries::from_slice(&entries),
    });
    let mut out: Datagram = Datagram::new();
    assert_eq!(
        alice.encode_seal(2, &message, &mut out),
        Err(SendError::TooLarge)
    );
    assert!(out.is_empty());
    assert_eq!(alice.counters().too_large, 1);
    assert_eq!(alice.counters().sent, 0);
    // No counter was spent on it.
    let header = alice
        .encode_seal(2, &message.without_entries(), &mut out)
        .expect("a heartbeat fits");
    assert_eq!(header.counter, 0);
}

fn every_kind_at_its_largest() -> Vec<Message<'static>> {
    const M: u64 = u64::MAX;
    vec![
        Message::RequestVote(RequestVote {
            term: M,
            last_log_index: M,
            last_log_term: M,
            pre_vote: true,
            leadership_transfer: true,
        }),
        Message::RequestVoteResponse(RequestVoteResponse {
            term: M,
            vote_granted: true,
            pre_vote: true,
        }),
        Message::AppendEntries(AppendEntries {
            term: M,
            prev_log_index: M,
            prev_log_term: M,
            leader_commit: M,
            round: M,
            entries: Entries::EMPTY,
        }),
        Message::AppendEntriesResponse(AppendEntriesResponse {
            term: M,
            success: true,
            index: M,
            hint_index: M,
            hint_term: M,
            round: M,
        }),
        Message::TimeoutNow(TimeoutNow { term: M }),
        Message::ReadIndex(ReadIndex { term: M, id: M }),
        Message::ReadIndexResponse(ReadIndexResponse {
            term: M,
            id: M,
            index: M,
            success: true,
        }),
    ]
}

#[test]
fn every_message_kind_fits_the_smallest_mtu_and_round_trips() {
    let mut alice = Link::<8, SMALLEST_MTU>::new(&key(), CLUSTER, u64::MAX, counter());
    let mut bob = Link::<8, SMALLEST_MTU>::new(&key(), CLUSTER, u64::MAX - 1, counter());
    bob.add_peer(u64::MAX).expect("room");
    for message in every_kind_at_its_largest() {
        let mut out: Datagram<SMALLEST_MTU> = Datagram::new();
        alice
            .encode_seal(u64::MAX - 1, &message, &mut out)
            .unwrap_or_else(|e| panic!("{}: {e}", message.kind()));
        let received = bob.open_decode::<1>(&mut out).expect("authentic");
        assert_eq!(received.message(), message);
        assert_eq!(received.from(), u64::MAX);
    }
}

#[test]
fn an_envelope_that_disagrees_with_the_authenticated_header_is_dropped() {
    let mut bob = link::<DEFAULT_MTU>(2, &[1, 3]);
    // Node 1's sealer, used below the codec to seal lying envelopes.
    let mut sealer = coracle_udp::Sealer::new(&key(), CLUSTER, 1, counter());
    let vote = Message::TimeoutNow(TimeoutNow { term: 9 });
    let mut buf = [0u8; 256];
    let mut datagram: Datagram = Datagram::new();
    // Node 1, authenticated, claims to be node 3; then misaddresses; then
    // names another cluster.
    for (from, to, cluster) in [(3, 2, CLUSTER), (1, 3, CLUSTER), (1, 2, CLUSTER - 1)] {
        let payload =
            wire::encode(&Envelope::new(cluster, from, to, vote), &mut buf).expect("fits");
        sealer.seal(2, payload, &mut datagram).expect("fits");
        let result = bob.open_decode::<4>(&mut datagram).map(|r| r.from());
        if cluster == CLUSTER {
            assert_eq!(result.unwrap_err(), RecvError::Mismatch);
        } else {
            assert!(matches!(
                result,
                Err(RecvError::Decode(wire::WireError::WrongCluster { .. }))
            ));
        }
    }
    assert_eq!(bob.counters().mismatched, 2);
    assert_eq!(bob.counters().undecodable, 1);
    assert_eq!(bob.counters().received, 0);
    // The honest one goes through.
    let payload = wire::encode(&Envelope::new(CLUSTER, 1, 2, vote), &mut buf).expect("fits");
    sealer.seal(2, payload, &mut datagram).expect("fits");
    let received = bob.open_decode::<4>(&mut datagram).expect("authentic");
    assert_eq!(received.message(), vote);
    assert_eq!(received.from(), 1);
}

#[test]
fn authentic_garbage_and_too_many_entries_are_counted_as_undecodable() {
    let mut bob = link::<DEFAULT_MTU>(2, &[1]);
    let mut sealer = coracle_udp::Sealer::new(&key(), CLUSTER, 1, counter());
    let mut datagram: Datagram = Datagram::new();
    for payload in [&b""[..], b"\x01", b"\x07garbage", &[0xFF; 100]] {
        sealer.seal(2, payload, &mut datagram).expect("fits");
        assert!(matches!(
            bob.open_decode::<4>(&mut datagram),
            Err(RecvError::Decode(_))
        ));
    }
    // Five entries for a decoder of four.
    let entries = [Entry {
        index: 1,
        term: 1,
        kind: EntryKind::Command,
        data: b"",
    }; 5];
    let message = Message::AppendEntries(AppendEntries {
        term: 1,
        prev_log_index: 0,
        prev_log_term: 0,
        leader_commit: 0,
        round: 0,
        entries: Entries::from_slice(&entries),
    });
    let mut buf = [0u8; 512];
    let payload = wire::encode(&Envelope::new(CLUSTER, 1, 2, message), &mut buf).expect("fits");
    sealer.seal(2, payload, &mut datagram).expect("fits");
    let mut copy = datagram.clone();
    assert!(matches!(
        bob.open_decode::<4>(&mut datagram),
        Err(RecvError::Decode(_))
    ));
    assert_eq!(bob.counters().undecodable, 5);
    // Not a replay of a decodable one: the replay window moved anyway.
    assert_eq!(
        bob.open_decode::<5>(&mut copy).map(|r| r.from()),
        Err(RecvError::Open(OpenError::Replayed))
    );
}
