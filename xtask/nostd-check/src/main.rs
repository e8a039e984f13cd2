//! Link check for the core on bare-metal targets: a `#![no_std]`, `#![no_main]` program
//! with no global allocator and no runtime crate. It runs a cluster of three real
//! [`coracle::Node`]s with the fixed-capacity [`ArrayLog`]: it ticks them, steps every
//! message one sends into the node it is for (dropping some, to exercise retransmission),
//! reports every write batch durable at once, proposes commands on the leader, takes
//! snapshots (which compact the logs) and sends them to nodes that fall behind, and drains
//! every output.
//!
//! If anything the core reaches needs `std` it fails to compile (these targets have no
//! `std`); if anything needs `alloc` it fails to link ("no global memory allocator
//! found"). Inputs go through [`black_box`] so the optimizer cannot fold the protocol
//! away, and outputs are consumed through it, so the linked ELF holds the code a board
//! would run: `cargo xtask size` measures it.
//!
//! Messages are produced by the nodes themselves rather than written out field by field,
//! so the program keeps compiling when the core adds fields to its messages.
//!
//! Built by `cargo xtask nostd`; not a member of the main workspace.

#![no_std]
#![no_main]

use core::hint::black_box;
use core::panic::PanicInfo;

use coracle::{ArrayLog, Config, InstallSnapshot, LogStorage, Message, Node, NodeId, Output, Role};

/// 64 entries of up to 32 bytes each, and a received snapshot chunk of 8 bytes.
type Log = ArrayLog<64, 32, 8>;
/// Room for up to 5 other members.
type CheckNode = Node<Log, 5>;

/// The cluster.
const MEMBERS: [NodeId; 3] = [1, 2, 3];

/// The command the leader proposes.
static COMMAND: [u8; 8] = *b"x=1;y=22";

/// The bytes of one node value with its log (which lives on the stack here), for
/// `cargo xtask size` to read from the symbol table.
#[no_mangle]
pub static CORACLE_NODE_BYTES: usize = core::mem::size_of::<CheckNode>();

/// The bytes of the log alone (part of [`CORACLE_NODE_BYTES`]).
#[no_mangle]
pub static CORACLE_LOG_BYTES: usize = core::mem::size_of::<Log>();

/// Halts: a board would reset here.
#[panic_handler]
fn panic(_info: &PanicInfo) -> ! {
    loop {
        core::hint::spin_loop();
    }
}

/// Entry point (the linker's `--entry`, set by build.rs).
#[no_mangle]
pub extern "C" fn _start() -> ! {
    black_box((&CORACLE_NODE_BYTES, &CORACLE_LOG_BYTES));
    let members = black_box(&MEMBERS);
    let mut nodes = members.map(|id| {
        let mut config = Config::new(black_box(id), black_box(id.wrapping_mul(0x9e37_79b9)));
        config.keep_entries_behind_snapshot = 16;
        config.max_snapshot_chunk_bytes = 8;
        match CheckNode::new(config, Log::new(), members) {
            Ok(node) => node,
            Err(err) => {
                black_box(&err);
                halt(1)
            }
        }
    });
    let mut sum = 0u64;
    let mut round = 0u64;
    // Run as a board would: tick, then drain every node after every input, forever.
    loop {
        round = round.wrapping_add(1);
        for node in nodes.iter_mut() {
            node.tick();
        }
        for i in 0..nodes.len() {
            sum = sum.wrapping_add(drain(&mut nodes, i, round));
        }
        if let Some(leader) = nodes.iter_mut().find(|n| n.role() == Role::Leader) {
            match leader.propose(black_box(&COMMAND[..])) {
                Ok(proposal) => sum = sum.wrapping_add(proposal.index),
                Err(err) => {
                    black_box(&err);
                }
            }
        }
        for node in nodes.iter_mut() {
            // A snapshot every 16 applied entries, keeping 16 entries behind it: the
            // ring never fills.
            let applied = node.applied_index();
            let kept = node.log().snapshot_meta().map_or(0, |m| m.index);
            if applied >= kept + 16 && node.snapshot_taken(black_box(applied)).is_err() {
                sum = sum.wrapping_add(1);
            }
        }
        black_box(sum);
    }
}

/// Drains every output of `nodes[from]`: batches reported durable at once, messages
/// (and snapshot chunks: the checksum's 8 bytes stand for the state machine) stepped into
/// the node they are for (every seventh one dropped), applied commands folded into a
/// checksum.
fn drain(nodes: &mut [CheckNode], from: usize, round: u64) -> u64 {
    let (before, rest) = nodes.split_at_mut(from);
    let Some((node, after)) = rest.split_first_mut() else {
        return 0;
    };
    let from_id = node.id();
    let mut sum = 0u64;
    let mut sent = 0u64;
    let state = black_box(round).to_le_bytes();
    while let Some(output) = node.poll_output() {
        let (to, message) = match output {
            Output::Persist(batch) => {
                let token = black_box(batch.token);
                node.persisted(token);
                continue;
            }
            Output::Send { to, message } => (to, message),
            // The state fits one chunk: chunks past its end are not sent.
            Output::SendSnapshot {
                to,
                message,
                max_len,
            } if message.offset == 0 => {
                let len = max_len.min(state.len());
                let chunk = InstallSnapshot {
                    data: &state[..len],
                    done: len == state.len(),
                    ..message
                };
                (to, Message::InstallSnapshot(chunk))
            }
            Output::Apply(entry) => {
                sum = sum.wrapping_add(checksum(entry.data));
                continue;
            }
            other => {
                black_box(&other);
                continue;
            }
        };
        sent += 1;
        sum = sum.wrapping_add(message.term());
        if let Message::AppendEntries(append) = &message {
            for entry in append.entries.iter() {
                sum = sum.wrapping_add(checksum(entry.data));
            }
        }
        let dropped = black_box((round + sent) % 7 == 0);
        let peer = before
            .iter_mut()
            .chain(after.iter_mut())
            .find(|n| n.id() == to);
        if let (false, Some(peer)) = (dropped, peer) {
            peer.step(from_id, black_box(message));
        }
    }
    sum
}

fn checksum(data: &[u8]) -> u64 {
    data.iter()
        .fold(0u64, |acc, &b| acc.rotate_left(5) ^ u64::from(b))
}

/// Stops with a code a debugger can read.
fn halt(code: u32) -> ! {
    loop {
        black_box(code);
    }
}
