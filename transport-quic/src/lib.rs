//! Coracle over QUIC (issue 6): not built yet. This crate is a placeholder member of the workspace.
