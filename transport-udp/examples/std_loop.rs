//! A custom event loop over a blocking `std::net::UdpSocket`: three nodes
//! (one thread each) on 127.0.0.1 elect a leader, which commits "hello".
//! Each loop sleeps in `recv_from` until a datagram comes or the core's
//! next deadline (`ticks_until_deadline` ticks) passes.
//! Run with `cargo run -p coracle-udp --example std_loop`.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};
use std::{fs, io, path::PathBuf, thread};

use coracle::{Batch, Config, EntryKind, Node, Output, Role, VecLog};
use coracle_udp::codec::{mtu_config, Link, DEFAULT_ENTRIES};
use coracle_udp::node::{Application, Completion, UdpNode};
use coracle_udp::{ClusterKey, Datagram, SendCounter, DEFAULT_MTU};

const TICK: Duration = Duration::from_millis(10);
const MEMBERS: [u64; 3] = [1, 2, 3];
type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// The state machine (counts what it applies) and the send counter's store.
struct App(usize, PathBuf);

impl Application for App {
    fn persist(&mut self, _batch: &Batch<'_>) -> Completion {
        Completion::Now // the log lives in memory only; a durable host writes the batch
    }
    fn output(&mut self, output: Output<'_>) {
        if let Output::Apply(e) = output {
            self.0 += usize::from(e.kind == EntryKind::Command);
        }
    }
    fn persist_counter(&mut self, mark: u64) -> bool {
        fs::write(&self.1, mark.to_string()).is_ok() // a real host also fsyncs
    }
}

fn run(id: u64, socket: UdpSocket, addrs: Vec<SocketAddr>) -> Result<usize> {
    let file = std::env::temp_dir().join(format!("coracle-std-loop-{id}.counter"));
    let stored = fs::read_to_string(&file).ok().and_then(|s| s.parse().ok());
    let key = ClusterKey::from_bytes([0x5A; 32]);
    let config = mtu_config::<DEFAULT_MTU, DEFAULT_ENTRIES>(Config::new(id, id));
    let node = Node::new(config, VecLog::new(), &MEMBERS)?;
    let link = Link::new(&key, 7, id, SendCounter::resume(stored, 1024));
    let mut udp: UdpNode<VecLog> = UdpNode::new(node, link)?;
    let mut app = App(0, file);
    let (mut out, mut buf) = (Datagram::<DEFAULT_MTU>::new(), [0u8; DEFAULT_MTU + 1]);
    let (start, mut proposed) = (Instant::now(), false);
    while start.elapsed() < Duration::from_secs(2) {
        // 1. Time, in ticks; commands.
        udp.advance_to((start.elapsed().as_nanos() / TICK.as_nanos()) as u64);
        if udp.node().role() == Role::Leader && !proposed {
            proposed = udp.node_mut().propose(b"hello").is_ok();
        }
        // 2. Drain the outputs: datagrams to send; writes and the rest go to `app`.
        while let Some(to) = udp.poll_transmit(&mut app, &mut out) {
            if let Some(addr) = addrs.get((to - 1) as usize) {
                let _ = socket.send_to(&out, addr); // Raft retries what is lost
            }
        }
        // 3. Sleep until a datagram arrives or the next deadline.
        let ticks = udp.node().ticks_until_deadline().clamp(1, 1000) as u32;
        socket.set_read_timeout(Some(TICK * ticks))?;
        match socket.recv_from(&mut buf) {
            Ok((len, _)) => {
                let _ = udp.receive(&mut buf[..len]); // drops are counted
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let drops = udp.link().drops().total();
    println!(
        "node {id}: {:?}, applied {}, drops {drops}",
        udp.node().role(),
        app.0
    );
    Ok(app.0)
}

fn main() -> Result<()> {
    let bind = |_| UdpSocket::bind("127.0.0.1:0");
    let sockets: Vec<UdpSocket> = MEMBERS.iter().map(bind).collect::<io::Result<_>>()?;
    let addrs: Vec<SocketAddr> = sockets
        .iter()
        .map(|s| s.local_addr())
        .collect::<io::Result<_>>()?;
    let threads: Vec<_> = (MEMBERS.iter().zip(sockets))
        .map(|(&id, socket)| {
            let addrs = addrs.clone();
            thread::spawn(move || run(id, socket, addrs))
        })
        .collect();
    for t in threads {
        let applied = t.join().map_err(|_| "node thread panicked")??;
        assert_eq!(applied, 1, "every node applies the command once");
    }
    Ok(())
}
