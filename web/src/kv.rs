//! The state machine each node of the model applies its committed entries to: a handful
//! of keys with the last value written, so the page can show that every node reached the
//! same state. Commands are `key=value` in ASCII; anything else applies as nothing.

use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Keys and their last values.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Kv {
    values: BTreeMap<String, String>,
}

impl Kv {
    /// Applies one command (`key=value`).
    pub fn apply(&mut self, command: &[u8]) {
        let Ok(text) = std::str::from_utf8(command) else {
            return;
        };
        if let Some((key, value)) = text.split_once('=') {
            self.values.insert(key.to_string(), value.to_string());
        }
    }

    /// The whole state as bytes (a snapshot): one `key=value` per line.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = String::new();
        for (key, value) in &self.values {
            let _ = writeln!(out, "{key}={value}");
        }
        out.into_bytes()
    }

    /// The state a snapshot made with [`Kv::encode`] holds.
    pub fn decode(snapshot: &[u8]) -> Kv {
        let mut kv = Kv::default();
        for line in snapshot.split(|&b| b == b'\n') {
            kv.apply(line);
        }
        kv
    }

    /// `x=3 y=1`, for the page.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        for (key, value) in &self.values {
            if !out.is_empty() {
                out.push(' ');
            }
            let _ = write!(out, "{key}={value}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn applies_commands_and_survives_a_snapshot() {
        let mut kv = Kv::default();
        kv.apply(b"x=1");
        kv.apply(b"y=2");
        kv.apply(b"x=3");
        kv.apply(b"no equals sign");
        kv.apply(&[0xff, b'=', 0xfe]);
        assert_eq!(kv.describe(), "x=3 y=2");
        assert_eq!(Kv::decode(&kv.encode()), kv);
        assert_eq!(Kv::decode(b"\n\ngarbage\nz=9"), {
            let mut k = Kv::default();
            k.apply(b"z=9");
            k
        });
    }
}
