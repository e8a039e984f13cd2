//! A small logging shim: defmt on boards, `log` on hosts, nothing otherwise.
//!
//! Format strings use only `{}` with integer arguments so they are valid for both back ends.

macro_rules! debug {
    ($($arg:tt)*) => {{
        #[cfg(feature = "defmt")]
        defmt::debug!($($arg)*);
        #[cfg(all(feature = "log", not(feature = "defmt")))]
        log::debug!($($arg)*);
        #[cfg(not(any(feature = "log", feature = "defmt")))]
        $crate::log_macros::discard!($($arg)*);
    }};
}

macro_rules! info {
    ($($arg:tt)*) => {{
        #[cfg(feature = "defmt")]
        defmt::info!($($arg)*);
        #[cfg(all(feature = "log", not(feature = "defmt")))]
        log::info!($($arg)*);
        #[cfg(not(any(feature = "log", feature = "defmt")))]
        $crate::log_macros::discard!($($arg)*);
    }};
}

/// Swallows a log call while keeping its arguments "used".
#[allow(unused_macros)]
macro_rules! discard {
    ($fmt:literal $(, $arg:expr)* $(,)?) => {{
        if false {
            $(let _ = &$arg;)*
        }
    }};
}

#[allow(unused_imports)]
pub(crate) use {debug, discard, info};
