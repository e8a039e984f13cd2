//! The decode half of the receive path: arbitrary bytes sealed by a genuine peer (so they
//! pass authentication, as a buggy or compromised member's would) go through
//! `Link::open_decode`. It must answer with a message or a counted error, never panic; a
//! decoded message must survive being stepped into a node.
#![no_main]

use coracle::{ArrayLog, Config, Node};
use coracle_udp::codec::Link;
use coracle_udp::{ClusterKey, Datagram, SendCounter, DEFAULT_MTU};
use libfuzzer_sys::fuzz_target;

const CLUSTER: u64 = 7;

fuzz_target!(|payload: &[u8]| {
    let key = ClusterKey::from_bytes([9; 32]);
    let mut peer = SendCounter::resume(None, 1 << 20);
    peer.persisted(0);
    let mut sealer = coracle_udp::Sealer::new(&key, CLUSTER, 1, peer);
    let mut out: Datagram<DEFAULT_MTU> = Datagram::new();
    if sealer.seal(2, payload, &mut out).is_err() {
        return; // larger than the MTU: refused before sealing
    }
    let mut me = SendCounter::resume(None, 1 << 20);
    me.persisted(0);
    let mut link: Link<4> = Link::new(&key, CLUSTER, 2, me);
    link.add_peer(1).expect("room");
    let mut bytes = out.to_vec();
    if let Ok(received) = link.open_decode::<40>(&mut bytes) {
        let mut node: Node<ArrayLog<16, 64>> =
            Node::new(Config::new(2, 2), ArrayLog::new(), &[1, 2, 3]).expect("node");
        node.step(1, received.message());
        while node.poll_output().is_some() {}
    };
});
