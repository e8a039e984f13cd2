//! The async node loop, written once for every async driver: a [`UdpNode`]
//! over any [`Datagrams`] socket and any [`Clock`], taking commands from a
//! [`Control`].
//!
//! The loop (see [`run`]):
//! 1. advance the core to the clock's time;
//! 2. drain [`UdpNode::poll_transmit`], sending each datagram;
//! 3. wait for the first of: a command, the core's next deadline, a datagram;
//! 4. handle it, go to 1.
//!
//! Time is read from the clock after every wake-up, so a flood of datagrams
//! does not stop the timers; commands are polled first, so a flood does not
//! starve them either. Socket errors are counted and the loop goes on: a lost
//! datagram is one the protocol retries. It needs neither `std` nor an
//! allocator, and no particular executor: the smol driver
//! ([`crate::smol`], feature `smol`) and the embassy-net one
//! (`coracle_udp::embassy`, feature `embassy`) are thin shells around it.

use core::future::{poll_fn, Future};
use core::pin::pin;
use core::task::Poll;

use coracle::{LogStorage, NodeId};

use crate::frame::Datagram;
use crate::node::{Application, Durable, UdpNode};

/// A datagram socket bound to this node, with an address book of its peers.
pub trait Datagrams {
    /// The socket's error.
    type Error: core::fmt::Debug;

    /// Sends `datagram` to node `to`. A peer without an address is an
    /// error (counted by the loop).
    fn send(
        &mut self,
        to: NodeId,
        datagram: &[u8],
    ) -> impl Future<Output = Result<(), Self::Error>>;

    /// Receives the next datagram into `buf`, returning its length. Where it
    /// came from does not matter: the sender is what the datagram
    /// authenticates. Must be cancel-safe (the loop drops it when another
    /// event comes first).
    fn recv(&mut self, buf: &mut [u8]) -> impl Future<Output = Result<usize, Self::Error>>;
}

/// The host's clock, in the core's ticks.
pub trait Clock {
    /// Ticks since the node started.
    fn now(&self) -> u64;

    /// Completes at tick `tick` (at once if it passed). Must be cancel-safe.
    fn sleep_until(&mut self, tick: u64) -> impl Future<Output = ()>;
}

/// Where the loop's commands come from (propose, read, status, ...), and
/// where its outputs go (as an [`Application`]).
///
/// `T` is the node type the commands act on ([`UdpNode`]).
pub trait Control<T>: Application {
    /// A command for the node.
    type Command;

    /// The next command; `None` stops the loop. Must be cancel-safe. A host
    /// without commands returns [`core::future::pending`].
    fn next_command(&mut self) -> impl Future<Output = Option<Self::Command>>;

    /// Carries out `command` on `node`.
    fn command(&mut self, node: &mut T, command: Self::Command);
}

/// One of three.
enum Either3<A, B, C> {
    First(A),
    Second(B),
    Third(C),
}

/// Polls the three futures in order until one completes.
async fn select3<A: Future, B: Future, C: Future>(
    a: A,
    b: B,
    c: C,
) -> Either3<A::Output, B::Output, C::Output> {
    let mut a = pin!(a);
    let mut b = pin!(b);
    let mut c = pin!(c);
    poll_fn(|cx| {
        if let Poll::Ready(x) = a.as_mut().poll(cx) {
            return Poll::Ready(Either3::First(x));
        }
        if let Poll::Ready(x) = b.as_mut().poll(cx) {
            return Poll::Ready(Either3::Second(x));
        }
        if let Poll::Ready(x) = c.as_mut().poll(cx) {
            return Poll::Ready(Either3::Third(x));
        }
        Poll::Pending
    })
    .await
}

/// Runs `node` until `control` has no more commands (its
/// [`Control::next_command`] returns `None`); drop the future to stop it
/// at any other point. Buffers of `2 * MTU` bytes live in the future.
pub async fn run<S, C, D, K, const N: usize, const MTU: usize, const E: usize>(
    node: &mut UdpNode<S, N, MTU, E>,
    control: &mut C,
    net: &mut D,
    clock: &mut K,
) where
    S: LogStorage + Durable,
    C: Control<UdpNode<S, N, MTU, E>>,
    D: Datagrams,
    K: Clock,
{
    let mut out: Datagram<MTU> = Datagram::new();
    let mut buf = [0u8; MTU];
    loop {
        node.advance_to(clock.now());
        while let Some(to) = node.poll_transmit(control, &mut out) {
            if net.send(to, &out).await.is_err() {
                node.count_send_error();
            }
        }
        let deadline = node
            .node()
            .now()
            .saturating_add(node.node().ticks_until_deadline());
        let event = select3(
            control.next_command(),
            clock.sleep_until(deadline),
            net.recv(&mut buf),
        )
        .await;
        match event {
            Either3::First(Some(command)) => control.command(node, command),
            Either3::First(None) => return,
            Either3::Second(()) => {}
            Either3::Third(Ok(len)) => {
                if let Some(datagram) = buf.get_mut(..len) {
                    // Dropped datagrams are counted by the link.
                    let _ = node.receive(datagram);
                }
            }
            Either3::Third(Err(_)) => node.count_recv_error(),
        }
    }
}
