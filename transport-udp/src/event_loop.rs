//! The async node loop, written once for every async driver: a [`UdpNode`]
//! over any [`Datagrams`] socket and any [`Clock`], taking commands from a
//! [`Control`].
//!
//! The loop (see [`run`]):
//! 1. advance the core to the clock's time;
//! 2. drain [`UdpNode::poll_transmit`], sending each datagram;
//! 3. give the host a step of its background work ([`Control::maintain`]:
//!    a flash journal's compaction, one erase unit at a time), and drain
//!    again what it released;
//! 4. wait for the first of: a command, the core's next deadline, a
//!    datagram; while background work is pending, only take in what is
//!    ready (the executor gets a turn) and go on with the work;
//! 5. handle it, go to 1.
//!
//! The background work runs between turns, never inside a node input: the
//! node's timers keep running while a board erases its flash, one erase
//! unit per turn, with the datagrams that arrived meanwhile taken in first.
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
use crate::node::{Application, UdpNode};

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

    /// One bounded step of the host's background work (a flash journal's
    /// rewrite, one erase unit), between turns of the loop: after the
    /// outputs are drained, so the durable store has taken every batch, and
    /// never inside a node input. Returns `true` while more is pending: the
    /// loop then takes in what has arrived without sleeping and calls it
    /// again. The default has none.
    fn maintain(&mut self, node: &mut T) -> bool {
        let _ = node;
        false
    }
}

/// Background steps in a row may wait behind at most this many events (a
/// flood of datagrams does not starve them).
const EVENTS_PER_STEP: u32 = 16;

/// One of three.
enum Either3<A, B, C> {
    First(A),
    Second(B),
    Third(C),
}

/// Pending once (waking itself), then ready: lets the executor run other
/// futures (a board's network runner) between two background steps.
struct YieldNow(bool);

impl Future for YieldNow {
    type Output = ();

    fn poll(mut self: core::pin::Pin<&mut Self>, cx: &mut core::task::Context<'_>) -> Poll<()> {
        if self.0 {
            return Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// What woke the loop.
enum Event<C, R> {
    Command(Option<C>),
    Deadline,
    Datagram(R),
    /// Nothing was ready (background work pending).
    Idle,
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
    S: LogStorage,
    C: Control<UdpNode<S, N, MTU, E>>,
    D: Datagrams,
    K: Clock,
{
    let mut out: Datagram<MTU> = Datagram::new();
    let mut buf = [0u8; MTU];
    let mut busy = false;
    let mut since_step = 0u32;
    loop {
        node.advance_to(clock.now());
        drain(node, control, net, &mut out).await;
        if !busy || since_step >= EVENTS_PER_STEP {
            since_step = 0;
            busy = control.maintain(node);
            drain(node, control, net, &mut out).await;
        }
        let event = if busy {
            since_step += 1;
            match select3(control.next_command(), net.recv(&mut buf), YieldNow(false)).await {
                Either3::First(command) => Event::Command(command),
                Either3::Second(received) => Event::Datagram(received),
                Either3::Third(()) => {
                    since_step = EVENTS_PER_STEP;
                    Event::Idle
                }
            }
        } else {
            let deadline = node
                .node()
                .now()
                .saturating_add(node.node().ticks_until_deadline());
            match select3(
                control.next_command(),
                clock.sleep_until(deadline),
                net.recv(&mut buf),
            )
            .await
            {
                Either3::First(command) => Event::Command(command),
                Either3::Second(()) => Event::Deadline,
                Either3::Third(received) => Event::Datagram(received),
            }
        };
        match event {
            Event::Command(Some(command)) => control.command(node, command),
            Event::Command(None) => return,
            Event::Deadline | Event::Idle => {}
            Event::Datagram(Ok(len)) => {
                if let Some(datagram) = buf.get_mut(..len) {
                    // Dropped datagrams are counted by the link.
                    let _ = node.receive(datagram);
                }
            }
            Event::Datagram(Err(_)) => node.count_recv_error(),
        }
    }
}

/// Drains `node`'s outputs, sending each datagram.
async fn drain<S, C, D, const N: usize, const MTU: usize, const E: usize>(
    node: &mut UdpNode<S, N, MTU, E>,
    control: &mut C,
    net: &mut D,
    out: &mut Datagram<MTU>,
) where
    S: LogStorage,
    C: Control<UdpNode<S, N, MTU, E>>,
    D: Datagrams,
{
    while let Some(to) = node.poll_transmit(control, out) {
        if net.send(to, out).await.is_err() {
            node.count_send_error();
        }
    }
}
