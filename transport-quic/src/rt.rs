//! The async runtime a node, a client or a metrics endpoint runs on: smol (the default)
//! or, with the `tokio` feature, a tokio runtime of the caller's.
//!
//! Everything in this crate that spawns a task, sleeps or hands quinn its runtime goes
//! through a [`Runtime`] value, so the node loop, the transport, forwarding, the handle,
//! the metrics endpoint and the client are written once for both. The caller chooses:
//! [`Runtime::Smol`] (what [`Host::start`](crate::host::Host::start) and
//! [`Client::new`](crate::client::Client::new) use) or `Runtime::Tokio` with a handle
//! on a running tokio runtime, given to [`Host::start_on`](crate::host::Host::start_on)
//! and [`ClientEndpoint::new_on`](crate::client::ClientEndpoint::new_on). With the
//! `tokio` feature both variants exist, so one program (or one test binary) may run nodes
//! on either.
//!
//! On tokio, quinn runs on the given runtime (`runtime-tokio`: its sockets on tokio's
//! reactor, its timers on tokio's clock), every task is spawned there and every timer is a
//! tokio timer: no smol executor thread is started. The runtime needs its I/O and time
//! drivers (`enable_all`). Channels (`async-channel`) and the future combinators
//! (`futures-lite`) work on any executor and are shared by both.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// Which async runtime to run on (see the [module docs](self)).
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub enum Runtime {
    /// smol's global executor and the async-io reactor (started on first use).
    #[default]
    Smol,
    /// The tokio runtime this handle belongs to (it must have I/O and time enabled, and
    /// outlive what runs on it).
    #[cfg(feature = "tokio")]
    Tokio(tokio::runtime::Handle),
}

impl Runtime {
    /// The tokio runtime the calling code runs in.
    ///
    /// # Panics
    ///
    /// When called outside a tokio runtime (as `tokio::runtime::Handle::current` does).
    #[cfg(feature = "tokio")]
    pub fn tokio_current() -> Runtime {
        Runtime::Tokio(tokio::runtime::Handle::current())
    }

    /// The name of the runtime, for logs: `smol` or `tokio`.
    pub fn name(&self) -> &'static str {
        match self {
            Runtime::Smol => "smol",
            #[cfg(feature = "tokio")]
            Runtime::Tokio(_) => "tokio",
        }
    }

    /// Whether a node or client can run here: a tokio runtime needs its I/O and time
    /// drivers (tokio panics on first use without them; this turns that into an error).
    pub(crate) fn check(&self) -> Result<(), RuntimeError> {
        match self {
            Runtime::Smol => Ok(()),
            #[cfg(feature = "tokio")]
            Runtime::Tokio(h) => {
                let _entered = h.enter();
                let timers = std::panic::catch_unwind(|| {
                    drop(tokio::time::sleep(Duration::ZERO));
                });
                timers.map_err(|_| RuntimeError::NoTimers)?;
                let io = std::panic::catch_unwind(|| {
                    let socket = std::net::UdpSocket::bind((std::net::Ipv4Addr::LOCALHOST, 0))?;
                    socket.set_nonblocking(true)?;
                    tokio::net::UdpSocket::from_std(socket).map(drop)
                });
                match io {
                    Ok(_) => Ok(()),
                    Err(_) => Err(RuntimeError::NoIo),
                }
            }
        }
    }

    /// Runs `future` as a task of its own on this runtime (dropping the [`Task`] cancels
    /// it).
    pub fn spawn<T: Send + 'static>(
        &self,
        future: impl Future<Output = T> + Send + 'static,
    ) -> Task<T> {
        Task(Some(match self {
            Runtime::Smol => TaskInner::Smol(smol::spawn(future)),
            #[cfg(feature = "tokio")]
            Runtime::Tokio(h) => TaskInner::Tokio(h.spawn(future)),
        }))
    }

    /// Runs `future` as a task of its own on this runtime, with nobody waiting for it (a
    /// client connection's service, say: [`Handle::runtime`](crate::host::Handle::runtime)
    /// is the node's).
    pub fn spawn_detached(&self, future: impl Future<Output = ()> + Send + 'static) {
        self.spawn(future).detach();
    }

    /// Runs the blocking `f` on a thread pool and waits for it.
    pub(crate) async fn unblock<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> T {
        match self {
            Runtime::Smol => smol::unblock(f).await,
            #[cfg(feature = "tokio")]
            Runtime::Tokio(h) => match h.spawn_blocking(f).await {
                Ok(t) => t,
                Err(e) => std::panic::resume_unwind(e.into_panic()),
            },
        }
    }

    /// A timer that fires at `at`.
    pub(crate) fn timer_at(&self, at: Instant) -> Timer {
        let mut t = self.timer_never();
        t.set_at(at);
        t
    }

    /// A timer that fires after `after`.
    pub(crate) fn timer_after(&self, after: Duration) -> Timer {
        self.timer_at(Instant::now().checked_add(after).unwrap_or_else(far_future))
    }

    /// A timer that never fires until [`set_at`](Timer::set_at).
    pub(crate) fn timer_never(&self) -> Timer {
        match self {
            Runtime::Smol => Timer::Smol(smol::Timer::never()),
            #[cfg(feature = "tokio")]
            Runtime::Tokio(h) => Timer::Tokio(h.clone(), None),
        }
    }

    /// Sleeps for `after`.
    pub(crate) async fn sleep(&self, after: Duration) {
        self.timer_after(after).await
    }

    /// quinn's runtime for an endpoint on this runtime.
    pub(crate) fn quinn(&self) -> Arc<dyn quinn::Runtime> {
        match self {
            Runtime::Smol => Arc::new(quinn::SmolRuntime),
            #[cfg(feature = "tokio")]
            Runtime::Tokio(_) => Arc::new(quinn::TokioRuntime),
        }
    }

    /// Runs `f` with this runtime as the current one (tokio: its context entered, which
    /// quinn's tokio runtime needs when an endpoint is made outside a task).
    pub(crate) fn enter<T>(&self, f: impl FnOnce() -> T) -> T {
        match self {
            Runtime::Smol => f(),
            #[cfg(feature = "tokio")]
            Runtime::Tokio(h) => {
                let _entered = h.enter();
                f()
            }
        }
    }

    /// A UDP socket for a quinn endpoint on this runtime.
    pub(crate) fn wrap_udp_socket(
        &self,
        socket: std::net::UdpSocket,
    ) -> std::io::Result<Arc<dyn quinn::AsyncUdpSocket>> {
        self.enter(|| self.quinn().wrap_udp_socket(socket))
    }

    /// Makes a quinn endpoint on this runtime.
    pub(crate) fn endpoint(
        &self,
        config: quinn::EndpointConfig,
        server: Option<quinn::ServerConfig>,
        socket: Arc<dyn quinn::AsyncUdpSocket>,
    ) -> std::io::Result<quinn::Endpoint> {
        self.enter(|| {
            quinn::Endpoint::new_with_abstract_socket(config, server, socket, self.quinn())
        })
    }
}

/// Why a node cannot run, or be waited for, on the runtime it was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RuntimeError {
    /// The tokio runtime was built without its I/O driver.
    NoIo,
    /// The tokio runtime was built without its time driver.
    NoTimers,
    /// Waiting here, from blocking code, would block the only thread that runs the node (a
    /// current-thread tokio runtime): await [`Host::stop`](crate::host::Host::stop) instead.
    WouldBlock,
    /// The runtime shut down before the node stopped.
    ShutDown,
}

impl std::fmt::Display for RuntimeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RuntimeError::NoIo => {
                "the tokio runtime has no I/O driver: build it with `enable_all()` (or `enable_io()`)"
            }
            RuntimeError::NoTimers => {
                "the tokio runtime has no time driver: build it with `enable_all()` (or `enable_time()`)"
            }
            RuntimeError::WouldBlock => {
                "waiting for the node here would block the current-thread tokio runtime it runs on: use `Host::stop().await`"
            }
            RuntimeError::ShutDown => "the runtime shut down before the node stopped",
        })
    }
}

impl std::error::Error for RuntimeError {}

/// An instant no timer reaches (what a timer set past `Instant`'s range waits for).
fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365 * 30)
}

/// A spawned task: await it for its output; dropping it cancels it (smol's rule, kept on
/// tokio); [`detach`](Self::detach) lets it run on.
pub struct Task<T>(Option<TaskInner<T>>);

impl<T> std::fmt::Debug for Task<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Task")
            .field("finished", &self.is_finished())
            .finish()
    }
}

enum TaskInner<T> {
    Smol(smol::Task<T>),
    #[cfg(feature = "tokio")]
    Tokio(tokio::task::JoinHandle<T>),
}

impl<T> Task<T> {
    /// Lets the task run on with nobody waiting for it.
    pub fn detach(mut self) {
        match self.0.take() {
            Some(TaskInner::Smol(t)) => t.detach(),
            #[cfg(feature = "tokio")]
            Some(TaskInner::Tokio(h)) => drop(h),
            None => {}
        }
    }

    /// True if blocking this thread until the task ends would block the only thread that
    /// can run it (a tokio task, waited for on a current-thread tokio runtime's thread).
    pub(crate) fn would_deadlock(&self) -> bool {
        #[cfg(feature = "tokio")]
        if matches!(self.0, Some(TaskInner::Tokio(_))) {
            return tokio::runtime::Handle::try_current()
                .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::CurrentThread);
        }
        false
    }

    /// Blocks this thread until the task ends (see [`would_deadlock`](Self::would_deadlock)
    /// first); `None` if its runtime cancelled it. On a tokio worker thread, the worker's
    /// other tasks are handed to another thread meanwhile.
    pub(crate) fn wait(self) -> Option<T> {
        let wait = move || {
            let mut task = self;
            smol::future::block_on(std::future::poll_fn(|cx| task.poll_outcome(cx)))
        };
        #[cfg(feature = "tokio")]
        if tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread)
        {
            return tokio::task::block_in_place(wait);
        }
        wait()
    }

    /// The task's output once it ends, `None` if its runtime cancelled it (a tokio runtime
    /// shutting down); a panic in the task is resumed here (as smol does).
    pub(crate) fn poll_outcome(&mut self, cx: &mut Context<'_>) -> Poll<Option<T>> {
        match &mut self.0 {
            Some(TaskInner::Smol(t)) => Pin::new(t).poll(cx).map(Some),
            #[cfg(feature = "tokio")]
            Some(TaskInner::Tokio(h)) => match Pin::new(h).poll(cx) {
                Poll::Ready(Ok(t)) => Poll::Ready(Some(t)),
                Poll::Ready(Err(e)) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Poll::Ready(Err(_)) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            },
            None => Poll::Ready(None),
        }
    }

    /// True once the task has finished.
    pub fn is_finished(&self) -> bool {
        match &self.0 {
            Some(TaskInner::Smol(t)) => t.is_finished(),
            #[cfg(feature = "tokio")]
            Some(TaskInner::Tokio(h)) => h.is_finished(),
            None => true,
        }
    }
}

impl<T> Future for Task<T> {
    type Output = T;

    /// The task's output; a panic in the task is resumed here (as smol does). A task its
    /// runtime cancelled (a tokio runtime shutting down) never ends.
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        match self.poll_outcome(cx) {
            Poll::Ready(Some(t)) => Poll::Ready(t),
            _ => Poll::Pending,
        }
    }
}

impl<T> Drop for Task<T> {
    fn drop(&mut self) {
        #[cfg(feature = "tokio")]
        if let Some(TaskInner::Tokio(h)) = &self.0 {
            h.abort();
        }
    }
}

/// A one-shot timer that can be set again: fires once at the instant it is set for (an
/// await after that waits for the next [`set_at`](Self::set_at)), as smol's `Timer` does.
pub(crate) enum Timer {
    /// smol's timer (async-io's reactor).
    Smol(smol::Timer),
    /// A tokio sleep (`None` while not set, or once fired), and the runtime that makes it.
    #[cfg(feature = "tokio")]
    Tokio(tokio::runtime::Handle, Option<Pin<Box<tokio::time::Sleep>>>),
}

impl Timer {
    /// Sets the timer to fire after `after` from now.
    pub(crate) fn set_after(&mut self, after: Duration) {
        self.set_at(Instant::now().checked_add(after).unwrap_or_else(far_future));
    }

    /// Sets the timer to fire at `at` (instead of when it was set for).
    pub(crate) fn set_at(&mut self, at: Instant) {
        match self {
            Timer::Smol(t) => t.set_at(at),
            #[cfg(feature = "tokio")]
            Timer::Tokio(h, sleep) => match sleep {
                Some(s) => s.as_mut().reset(at.into()),
                None => {
                    let _entered = h.enter();
                    *sleep = Some(Box::pin(tokio::time::sleep_until(at.into())));
                }
            },
        }
    }
}

impl Future for Timer {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        match self.get_mut() {
            Timer::Smol(t) => Pin::new(t).poll(cx).map(|_| ()),
            #[cfg(feature = "tokio")]
            Timer::Tokio(_, sleep) => match sleep {
                Some(s) => {
                    let fired = s.as_mut().poll(cx);
                    if fired.is_ready() {
                        *sleep = None;
                    }
                    fired
                }
                None => Poll::Pending,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both runtimes' timers fire once, then wait for the next `set_at`; a task's output
    /// comes back through its `Task`.
    fn timers_and_tasks(rt: Runtime) {
        let out = futures_lite_block_on(async {
            let mut t = rt.timer_after(Duration::from_millis(1));
            (&mut t).await;
            // Fired: a second await waits (here: loses to a ready future).
            let again = smol::future::or(
                async {
                    (&mut t).await;
                    1
                },
                async {
                    rt.sleep(Duration::from_millis(20)).await;
                    2
                },
            )
            .await;
            assert_eq!(again, 2);
            t.set_at(Instant::now());
            (&mut t).await;
            rt.spawn(async { 7 }).await + rt.unblock(|| 1).await
        });
        assert_eq!(out, 8);
    }

    fn futures_lite_block_on<T>(f: impl Future<Output = T>) -> T {
        smol::future::block_on(f)
    }

    #[test]
    fn smol_timers_fire_once_and_tasks_answer() {
        timers_and_tasks(Runtime::Smol);
    }

    #[cfg(feature = "tokio")]
    #[test]
    fn tokio_timers_fire_once_and_tasks_answer() {
        let tokio = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a tokio runtime");
        timers_and_tasks(Runtime::Tokio(tokio.handle().clone()));
    }

    #[cfg(feature = "tokio")]
    #[test]
    fn a_dropped_tokio_task_is_cancelled() {
        let tokio = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let rt = Runtime::Tokio(tokio.handle().clone());
        let (tx, rx) = smol::channel::bounded::<()>(1);
        let task = rt.spawn(async move {
            let _tx = tx;
            std::future::pending::<()>().await
        });
        drop(task);
        // The task's sender is dropped with it: the channel closes.
        assert!(smol::future::block_on(rx.recv()).is_err());
    }
}
