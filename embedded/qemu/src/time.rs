//! The time source: SysTick at 1 kHz, counted in an atomic, as the
//! embassy-time driver (`tick-hz-1_000`), and a minimal executor that polls
//! the firmware's one future at every tick.
//!
//! Why no embassy-executor: the firmware has exactly one future (the
//! embassy-net runner joined with the node loop) and a polled NIC that has
//! to be looked at every tick anyway, so "poll everything at every SysTick,
//! sleep in WFI in between" is the whole scheduler. It needs no timer queue
//! (`schedule_wake` has nothing to do: the next tick re-polls), no task
//! arena, no `static` futures, and no unsafe.

use core::future::Future;
use core::pin::pin;
use core::sync::atomic::{AtomicU32, Ordering};
use core::task::{Context, Poll, Waker};

use cortex_m::peripheral::syst::SystClkSource;
use cortex_m::peripheral::SYST;
use cortex_m_rt::exception;

/// The core clock of the MPS2 FPGA images (AN385/AN386): 25 MHz.
pub const SYSCLK_HZ: u32 = 25_000_000;

/// Milliseconds since boot (wraps after 49 days: see [`now_ms`]).
static MILLIS: AtomicU32 = AtomicU32::new(0);

#[exception]
fn SysTick() {
    MILLIS.fetch_add(1, Ordering::Relaxed);
}

/// Starts SysTick at 1 kHz.
pub fn start(mut syst: SYST) {
    syst.set_clock_source(SystClkSource::Core);
    syst.set_reload(SYSCLK_HZ / 1000 - 1);
    syst.clear_current();
    syst.enable_interrupt();
    syst.enable_counter();
}

/// Milliseconds since boot. A board of this demo does not run for 49 days;
/// one that does needs a 64-bit count (a wrap counter under a critical
/// section).
pub fn now_ms() -> u64 {
    u64::from(MILLIS.load(Ordering::Relaxed))
}

struct SysTickDriver;

impl embassy_time_driver::Driver for SysTickDriver {
    fn now(&self) -> u64 {
        now_ms()
    }

    fn schedule_wake(&self, _at: u64, _waker: &Waker) {
        // `block_on` polls at every tick: a timer that is due is seen
        // within a millisecond without being woken.
    }
}

embassy_time_driver::time_driver_impl!(static DRIVER: SysTickDriver = SysTickDriver);

/// Runs `future` to completion, polling it whenever an interrupt (the
/// SysTick) ends a WFI.
pub fn block_on<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(out) = future.as_mut().poll(&mut cx) {
            return out;
        }
        cortex_m::asm::wfi();
    }
}
