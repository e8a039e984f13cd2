//! Deterministic simulator, safety oracles and linearizability checker for Coracle.
pub mod linearizability;
pub mod oracle;
pub mod sim;
pub mod xtask;
