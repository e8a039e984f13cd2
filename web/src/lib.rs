//! # The interactive model
//!
//! Raft you can watch and break in a browser: 3 to 7 real [`coracle`] nodes (the workspace's
//! core, compiled to wasm) on a deterministic simulated network, drawn like RaftScope by the
//! page in `web/www/`. Build and serve it with `cargo xtask web`.
//!
//! The parts, from the core outwards:
//! - [`host`]: the one module that uses the core's API: a node, its in-memory log, its
//!   outputs turned into plain types;
//! - [`kv`]: the state machine the nodes apply;
//! - [`sim`]: the nodes, the network (`coracle-tests`' links) and simulated time; one seed
//!   decides everything;
//! - [`script`] and [`scenarios`]: the scenario buttons, with their narration and the check
//!   that each run ends as narrated;
//! - [`timeline`]: the run with the user's actions, replayed to go back in time;
//! - [`view`] and [`json`]: the state the page draws, once a frame;
//! - [`bindings`]: what the page's JavaScript calls (wasm-bindgen).

pub mod bindings;
pub mod host;
pub mod json;
pub mod kv;
pub mod scenarios;
pub mod script;
pub mod sim;
pub mod timeline;
pub mod view;
