//! Tells the linker where the program starts.
//!
//! There is no runtime crate (no cortex-m-rt, no riscv-rt) and no linker script: the
//! targets' default linker, rust-lld, lays the sections out itself. `--entry` makes
//! `_start` the root of `--gc-sections`, so everything the program reaches from there is
//! kept and linked, and any undefined symbol (such as `__rust_alloc`) is an error.
//! A build script (rather than RUSTFLAGS) keeps this working whatever RUSTFLAGS the
//! caller has set and whatever directory cargo is run from.

fn main() {
    println!("cargo:rustc-link-arg-bins=--entry=_start");
    println!("cargo:rerun-if-changed=build.rs");
}
