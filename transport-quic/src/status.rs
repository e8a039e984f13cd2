//! `coracle admin status`: a table of every node's status, once or refreshed
//! (`--watch`).
//!
//! With `--watch`, the table is redrawn every `--interval` milliseconds: on a terminal in
//! place (ANSI: cursor home, clear screen), otherwise one table after the other, each
//! headed by the time it was taken (for a file or a pipe). It ends cleanly (exit 0) on
//! Ctrl-C or SIGTERM, and when its reader goes away (a broken pipe, e.g. `| head`).

use coracle_quic::client::{Client, ClientError};
use coracle_quic::protocol::NodeStatus;
use std::fmt::Write as _;
use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// The table of `statuses` (one line per node, then the transport counters of those that
/// answered).
pub fn table(statuses: &[Result<NodeStatus, ClientError>]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:>4} {:>12} {:>6} {:>6} {:>8} {:>8} {:>8}  members",
        "node", "role", "term", "leader", "commit", "applied", "last"
    );
    let mut answered = Vec::new();
    for status in statuses {
        match status {
            Ok(s) => {
                let members: Vec<String> = s
                    .members
                    .iter()
                    .map(|m| {
                        format!(
                            "{}{}{}",
                            m.id,
                            if m.voter { "" } else { "(learner)" },
                            if m.connected { "" } else { "(down)" }
                        )
                    })
                    .collect();
                let _ = writeln!(
                    out,
                    "{:>4} {:>12} {:>6} {:>6} {:>8} {:>8} {:>8}  {}",
                    s.id,
                    s.role,
                    s.term,
                    s.leader.map_or("-".into(), |l| l.to_string()),
                    s.commit,
                    s.applied,
                    s.last_index,
                    members.join(" ")
                );
                answered.push(s);
            }
            // The error names the node.
            Err(e) => {
                let _ = writeln!(out, "unreachable: {e}");
            }
        }
    }
    if !answered.is_empty() {
        let _ = writeln!(
            out,
            "\n{:>4} {:>8} {:>20} {:>15} {:>16} {:>14}  (transport counters)",
            "node",
            "refused",
            "handshakes abandoned",
            "stray datagrams",
            "malformed frames",
            "dropped frames"
        );
        for s in &answered {
            let _ = writeln!(
                out,
                "{:>4} {:>8} {:>20} {:>15} {:>16} {:>14}",
                s.id,
                s.refused_connections,
                s.handshakes_abandoned,
                s.stray_datagrams,
                s.malformed_frames,
                s.dropped_frames
            );
        }
    }
    out
}

/// Prints the table once.
pub async fn once(client: &Client, nodes: &[SocketAddr]) -> std::io::Result<()> {
    // All at once: a node that is down or paused holds up only its own line.
    let text = table(&client.statuses(nodes).await);
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        // The reader is gone (`| head`): not a failure.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        done => done,
    }
}

/// ANSI: cursor to the top left, clear the screen.
const CLEAR: &str = "\x1b[H\x1b[2J";

/// Redraws the table every `interval` until a signal or a broken pipe.
pub async fn watch(
    client: &Client,
    nodes: &[SocketAddr],
    interval: Duration,
) -> Result<(), String> {
    use smol::stream::StreamExt;
    let terminal = std::io::stdout().is_terminal();
    let mut signals =
        async_signal::Signals::new([async_signal::Signal::Int, async_signal::Signal::Term])
            .map_err(|e| format!("cannot watch for Ctrl-C: {e}"))?;
    let refresh = async {
        loop {
            let next = Instant::now() + interval;
            let text = table(&client.statuses(nodes).await);
            let mut frame = String::new();
            if terminal {
                frame.push_str(CLEAR);
            }
            let _ = writeln!(
                frame,
                "{} (every {} ms; Ctrl-C to stop)\n",
                now_utc(),
                interval.as_millis()
            );
            frame.push_str(&text);
            if !terminal {
                frame.push('\n');
            }
            let mut stdout = std::io::stdout().lock();
            match stdout
                .write_all(frame.as_bytes())
                .and_then(|()| stdout.flush())
            {
                Ok(()) => {}
                // The reader is gone (`| head`): nothing more to show, not a failure.
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
                Err(e) => return Err(format!("cannot write the table: {e}")),
            }
            drop(stdout);
            smol::Timer::at(next).await;
        }
    };
    let stopped = async {
        signals.next().await;
        Ok(())
    };
    smol::future::or(stopped, refresh).await
}

/// The time now, UTC, to the second (`2026-12-06 15:04:05 UTC`).
fn now_utc() -> String {
    let t = time::OffsetDateTime::now_utc();
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}
