//! The embassy-net driver for boards (feature `embassy`, no_std): the shared
//! [`event_loop::run`](crate::event_loop::run) over an embassy-net
//! [`UdpSocket`] and embassy-time.
//!
//! A board's node task, with its own [`Control`](crate::event_loop::Control)
//! (commands from an `embassy_sync` channel, for instance):
//!
//! ```ignore
//! #[embassy_executor::task]
//! async fn raft(stack: embassy_net::Stack<'static>, mut udp: UdpNode<ArrayLog<64, 32>>, mut control: MyControl) {
//!     let (mut rx_meta, mut rx, mut tx_meta, mut tx) = ([PacketMetadata::EMPTY; 8], [0; 4096], [PacketMetadata::EMPTY; 8], [0; 4096]);
//!     let mut socket = UdpSocket::new(stack, &mut rx_meta, &mut rx, &mut tx_meta, &mut tx);
//!     socket.bind(7000).unwrap();
//!     let peers = [(2, IpEndpoint::new(ip2, 7000)), (3, IpEndpoint::new(ip3, 7000))];
//!     coracle_udp::embassy::run_node(&mut udp, &mut control, socket, &peers, Duration::from_millis(10)).await;
//! }
//! ```
//!
//! Give the socket's transmit buffer room for a burst of full datagrams (the
//! loop waits for room when it is full) and its receive buffer room for a
//! few: a datagram the stack cannot queue is lost, and Raft retries it.

use core::fmt;

use coracle::NodeId;
use embassy_net::udp::{RecvError, SendError, UdpSocket};
use embassy_net::IpEndpoint;
use embassy_time::{Duration, Instant, Timer};

use coracle::LogStorage;

use crate::event_loop::{self, Clock, Control, Datagrams};
use crate::node::UdpNode;

/// Runs `udp` over the bound `socket`, with the peers at `peers` and ticks
/// of `tick`, until `control` has no more commands: the shared
/// [`event_loop::run`] over [`EmbassyDatagrams`] and [`EmbassyClock`].
pub async fn run_node<S, C, const N: usize, const MTU: usize, const E: usize>(
    udp: &mut UdpNode<S, N, MTU, E>,
    control: &mut C,
    socket: UdpSocket<'_>,
    peers: &[(NodeId, IpEndpoint)],
    tick: Duration,
) where
    S: LogStorage,
    C: Control<UdpNode<S, N, MTU, E>>,
{
    let mut net = EmbassyDatagrams::new(socket, peers);
    let mut clock = EmbassyClock::new(tick);
    event_loop::run(udp, control, &mut net, &mut clock).await;
}

/// An embassy-net UDP socket and the endpoints of the peers.
pub struct EmbassyDatagrams<'s, 'p> {
    socket: UdpSocket<'s>,
    peers: &'p [(NodeId, IpEndpoint)],
}

impl fmt::Debug for EmbassyDatagrams<'_, '_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmbassyDatagrams")
            .field("peers", &self.peers)
            .finish_non_exhaustive()
    }
}

impl<'s, 'p> EmbassyDatagrams<'s, 'p> {
    /// A bound `socket` and the peers' endpoints.
    #[must_use]
    pub fn new(socket: UdpSocket<'s>, peers: &'p [(NodeId, IpEndpoint)]) -> Self {
        Self { socket, peers }
    }

    /// The socket back.
    pub fn into_socket(self) -> UdpSocket<'s> {
        self.socket
    }
}

/// Why the embassy-net socket did not send or receive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EmbassyError {
    /// No endpoint for this peer.
    UnknownPeer(NodeId),
    /// The socket did not send.
    Send(SendError),
    /// The socket did not receive.
    Recv(RecvError),
}

impl Datagrams for EmbassyDatagrams<'_, '_> {
    type Error = EmbassyError;

    async fn send(&mut self, to: NodeId, datagram: &[u8]) -> Result<(), EmbassyError> {
        let endpoint = self
            .peers
            .iter()
            .find(|(id, _)| *id == to)
            .map(|&(_, endpoint)| endpoint)
            .ok_or(EmbassyError::UnknownPeer(to))?;
        self.socket
            .send_to(datagram, endpoint)
            .await
            .map_err(EmbassyError::Send)
    }

    async fn recv(&mut self, buf: &mut [u8]) -> Result<usize, EmbassyError> {
        self.socket
            .recv_from(buf)
            .await
            .map(|(len, _)| len)
            .map_err(EmbassyError::Recv)
    }
}

/// Ticks of a fixed [`Duration`] since the clock was made, on embassy-time.
#[derive(Clone, Copy, Debug)]
pub struct EmbassyClock {
    start: Instant,
    tick: Duration,
}

impl EmbassyClock {
    /// A clock starting now, with ticks of `tick` (at least one
    /// embassy-time tick).
    #[must_use]
    pub fn new(tick: Duration) -> Self {
        Self {
            start: Instant::now(),
            tick: if tick.as_ticks() == 0 {
                Duration::from_ticks(1)
            } else {
                tick
            },
        }
    }
}

impl Clock for EmbassyClock {
    fn now(&self) -> u64 {
        self.start.elapsed().as_ticks() / self.tick.as_ticks()
    }

    async fn sleep_until(&mut self, tick: u64) {
        let at = self
            .tick
            .as_ticks()
            .checked_mul(tick)
            .and_then(|t| self.start.checked_add(Duration::from_ticks(t)));
        match at {
            Some(at) => Timer::at(at).await,
            None => core::future::pending().await,
        }
    }
}
