//! The Ethernet hub of the QEMU cluster (feature `std`): it forwards the
//! frames of each board to every other board over unix datagram sockets,
//! and can cut a board off, heal it, and drop a share of the frames.
//!
//! Board `i` (1-based) runs QEMU with
//! `-netdev dgram,id=net0,local.type=unix,local.path=DIR/board-i.sock,remote.type=unix,remote.path=DIR/hub-i.sock`:
//! the hub binds `hub-i.sock` and sends to `board-i.sock`. It floods every
//! frame to every other board (the boards' MACs filter what is not theirs),
//! which is what a hub does and is enough for five boards.
//!
//! It is controlled by lines on standard input (see [`Switch::command`]),
//! and answers each with one line on standard output.
//!
//! ```
//! use coracle_embedded::hub::Switch;
//!
//! let mut switch = Switch::new(3, 1);
//! assert_eq!(switch.route(1), vec![2, 3]);
//! switch.command("cut 2").unwrap();
//! assert_eq!(switch.route(1), vec![3]);
//! assert!(switch.route(2).is_empty());
//! switch.command("heal").unwrap();
//! assert_eq!(switch.route(2), vec![1, 3]);
//! ```

use std::fmt;
use std::io::{self, BufRead, Write};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::string::String;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use std::vec::Vec;
use std::{format, thread};

/// Frames counted by the hub.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HubStats {
    /// Frames received from boards.
    pub received: u64,
    /// Copies delivered to boards.
    pub forwarded: u64,
    /// Copies dropped because a board was cut off.
    pub cut: u64,
    /// Copies dropped at random (`drop` command).
    pub dropped: u64,
}

/// A control line the hub did not understand.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadCommand(pub String);

impl fmt::Display for BadCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "bad command `{}` (cut N | heal N | heal | drop PERCENT | stats)",
            self.0
        )
    }
}

impl std::error::Error for BadCommand {}

/// The forwarding decisions of the hub, without sockets.
#[derive(Clone, Debug)]
pub struct Switch {
    cut: Vec<bool>,
    drop_percent: u8,
    rng: u64,
    stats: HubStats,
}

impl Switch {
    /// A hub for `boards` boards (numbered from 1), none cut, no loss;
    /// `seed` drives the random drops.
    #[must_use]
    pub fn new(boards: usize, seed: u64) -> Self {
        Self {
            cut: std::vec![false; boards],
            drop_percent: 0,
            rng: seed | 1,
            stats: HubStats::default(),
        }
    }

    /// Number of boards.
    #[must_use]
    pub fn boards(&self) -> usize {
        self.cut.len()
    }

    /// The counters.
    #[must_use]
    pub const fn stats(&self) -> HubStats {
        self.stats
    }

    fn is_cut(&self, board: usize) -> bool {
        board == 0 || self.cut.get(board - 1).copied().unwrap_or(true)
    }

    fn roll(&mut self) -> u8 {
        // xorshift64
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng % 100) as u8
    }

    /// The boards a frame from board `from` goes to.
    pub fn route(&mut self, from: usize) -> Vec<usize> {
        self.stats.received += 1;
        let mut out = Vec::new();
        for to in 1..=self.boards() {
            if to == from {
                continue;
            }
            if self.is_cut(from) || self.is_cut(to) {
                self.stats.cut += 1;
            } else if self.drop_percent > 0 && self.roll() < self.drop_percent {
                self.stats.dropped += 1;
            } else {
                self.stats.forwarded += 1;
                out.push(to);
            }
        }
        out
    }

    /// Carries out a control line and returns the answer:
    /// - `cut N`: board N neither sends nor receives;
    /// - `heal N`: board N is connected again; `heal`: every board is;
    /// - `drop P`: drop P percent (0 to 100) of the frames, at random;
    /// - `stats`: the counters.
    ///
    /// # Errors
    /// [`BadCommand`] for anything else.
    pub fn command(&mut self, line: &str) -> Result<String, BadCommand> {
        let bad = || BadCommand(line.into());
        let words: Vec<&str> = line.split_whitespace().collect();
        let board = |word: &str| -> Result<usize, BadCommand> {
            word.parse::<usize>()
                .ok()
                .filter(|b| (1..=self.boards()).contains(b))
                .ok_or_else(bad)
        };
        match words.as_slice() {
            ["cut", n] => {
                let n = board(n)?;
                self.cut[n - 1] = true;
                Ok(format!("ok cut {n}"))
            }
            ["heal", n] => {
                let n = board(n)?;
                self.cut[n - 1] = false;
                Ok(format!("ok heal {n}"))
            }
            ["heal"] => {
                self.cut.iter_mut().for_each(|c| *c = false);
                Ok("ok heal".into())
            }
            ["drop", p] => {
                let p = p.parse::<u8>().ok().filter(|p| *p <= 100).ok_or_else(bad)?;
                self.drop_percent = p;
                Ok(format!("ok drop {p}"))
            }
            ["stats"] => {
                let s = self.stats;
                Ok(format!(
                    "ok stats received={} forwarded={} cut={} dropped={}",
                    s.received, s.forwarded, s.cut, s.dropped
                ))
            }
            _ => Err(bad()),
        }
    }
}

/// The socket the hub binds for board `board` in `dir`.
#[must_use]
pub fn hub_socket(dir: &Path, board: usize) -> PathBuf {
    dir.join(format!("hub-{board}.sock"))
}

/// The socket QEMU binds for board `board` in `dir`.
#[must_use]
pub fn board_socket(dir: &Path, board: usize) -> PathBuf {
    dir.join(format!("board-{board}.sock"))
}

/// A running hub: one thread per board forwarding frames.
#[derive(Debug)]
pub struct Hub {
    switch: Arc<Mutex<Switch>>,
    stop: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Hub {
    /// Binds `hub-1.sock` to `hub-{boards}.sock` in `dir` (replacing stale
    /// ones) and starts forwarding.
    ///
    /// # Errors
    /// A socket could not be bound.
    pub fn start(dir: &Path, boards: usize, seed: u64) -> io::Result<Self> {
        let switch = Arc::new(Mutex::new(Switch::new(boards, seed)));
        let stop = Arc::new(AtomicBool::new(false));
        let mut sockets = Vec::new();
        for board in 1..=boards {
            let path = hub_socket(dir, board);
            let _ = std::fs::remove_file(&path);
            let socket = UnixDatagram::bind(&path)?;
            socket.set_read_timeout(Some(Duration::from_millis(100)))?;
            sockets.push(socket);
        }
        let sockets = Arc::new(sockets);
        let mut threads = Vec::new();
        for board in 1..=boards {
            let (switch, stop, sockets) = (switch.clone(), stop.clone(), sockets.clone());
            let targets: Vec<PathBuf> = (1..=boards).map(|b| board_socket(dir, b)).collect();
            threads.push(thread::spawn(move || {
                let mut frame = [0u8; 2048];
                while !stop.load(Ordering::Relaxed) {
                    let Ok(len) = sockets[board - 1].recv(&mut frame) else {
                        continue;
                    };
                    let to = match switch.lock() {
                        Ok(mut s) => s.route(board),
                        Err(_) => return,
                    };
                    for t in to {
                        // A board that is not up yet (or was killed) has no
                        // socket: the frame is lost, as on a cable.
                        let _ = sockets[t - 1].send_to(&frame[..len], &targets[t - 1]);
                    }
                }
            }));
        }
        Ok(Self {
            switch,
            stop,
            threads,
        })
    }

    /// Carries out a control line (see [`Switch::command`]).
    ///
    /// # Errors
    /// [`BadCommand`] for a line it does not understand.
    pub fn command(&self, line: &str) -> Result<String, BadCommand> {
        match self.switch.lock() {
            Ok(mut s) => s.command(line),
            Err(_) => Err(BadCommand(line.into())),
        }
    }

    /// Stops forwarding and waits for the threads.
    pub fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// Runs a hub until `control` ends or says `quit`, answering each line on
/// `answers`.
///
/// # Errors
/// A socket could not be bound, or `answers` failed.
pub fn run(
    dir: &Path,
    boards: usize,
    seed: u64,
    control: impl BufRead,
    mut answers: impl Write,
) -> io::Result<()> {
    let hub = Hub::start(dir, boards, seed)?;
    writeln!(answers, "ok hub boards={boards} dir={}", dir.display())?;
    answers.flush()?;
    for line in control.lines() {
        let line = line?;
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if line == "quit" {
            break;
        }
        match hub.command(line) {
            Ok(answer) => writeln!(answers, "{answer}")?,
            Err(e) => writeln!(answers, "error: {e}")?,
        }
        answers.flush()?;
    }
    hub.stop();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec;

    #[test]
    fn drops_are_near_the_asked_share_and_counted() {
        let mut s = Switch::new(2, 7);
        s.command("drop 30").unwrap();
        let delivered: usize = (0..10_000).map(|_| s.route(1).len()).sum();
        assert!((6_500..7_500).contains(&delivered), "{delivered}");
        let st = s.stats();
        assert_eq!(st.forwarded + st.dropped, 10_000);
        s.command("drop 0").unwrap();
        assert_eq!(s.route(2), vec![1]);
    }

    #[test]
    fn bad_commands_are_refused() {
        let mut s = Switch::new(3, 1);
        for line in ["cut", "cut 0", "cut 4", "drop 101", "drop x", "reboot 1"] {
            assert!(s.command(line).is_err(), "{line}");
        }
        assert!(s.command("stats").unwrap().starts_with("ok stats"));
    }

    #[test]
    fn frames_cross_real_sockets_and_a_cut_board_is_isolated() {
        let dir = std::env::temp_dir().join(format!("coracle-hub-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let hub = Hub::start(&dir, 3, 1).unwrap();
        let boards: Vec<UnixDatagram> = (1..=3)
            .map(|b| {
                let s = UnixDatagram::bind(board_socket(&dir, b)).unwrap();
                s.set_read_timeout(Some(Duration::from_millis(300)))
                    .unwrap();
                s
            })
            .collect();
        let send = |from: usize, frame: &[u8]| {
            boards[from - 1]
                .send_to(frame, hub_socket(&dir, from))
                .unwrap();
        };
        let recv = |at: usize| {
            let mut buf = [0u8; 64];
            boards[at - 1]
                .recv(&mut buf)
                .ok()
                .map(|n| buf[..n].to_vec())
        };
        send(1, b"hello");
        assert_eq!(recv(2).as_deref(), Some(&b"hello"[..]));
        assert_eq!(recv(3).as_deref(), Some(&b"hello"[..]));
        assert_eq!(hub.command("cut 3").unwrap(), "ok cut 3");
        send(1, b"second");
        send(3, b"from the cut board");
        assert_eq!(recv(2).as_deref(), Some(&b"second"[..]));
        assert_eq!(recv(3), None);
        assert_eq!(recv(1), None);
        hub.command("heal 3").unwrap();
        send(3, b"back");
        assert_eq!(recv(1).as_deref(), Some(&b"back"[..]));
        hub.stop();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
