//! The node hello: when a node-to-node connection is set up, before any Raft message, each
//! node announces the **incarnation** of its data directory
//! ([`DirIdentity`](crate::storage::DirIdentity)) and says whether it takes the other's.
//!
//! Why: a node that lost its disk and starts on an empty data directory has forgotten its
//! vote and the entries it acknowledged. Coming back as the voter it was, it could vote
//! twice in a term or help elect a leader without committed entries. It cannot tell by
//! itself (a founding member starting for the first time looks the same), but its peers
//! can: each remembers, durably, the incarnation of every member it has talked to
//! ([`Incarnations`]), and refuses a known member that comes back with another one. The
//! connection is closed, so the node is neither counted nor given a vote, and both ends log
//! an error that names the node and the repair: remove it from the cluster, add it back as
//! a learner, promote it once it has caught up (README, "Replacing a node that lost its
//! disk"). Removing it makes its record forgotten (a configuration without it is applied),
//! so the new incarnation is taken when it is added again.
//!
//! On the wire, one bidirectional stream, the first the dialing node opens:
//!
//! ```text
//! dialer   -> acceptor  hello:   "CORAHELO" | version u32 | cluster u64 | node u64 | incarnation u64
//! acceptor -> dialer    hello, then verdict on the dialer: taken u8 (1 yes, 0 no) | known incarnation u64
//! dialer   -> acceptor  verdict on the acceptor; then both ends finish the stream
//! ```
//!
//! Little-endian. The node id in a hello must be the one in the peer's certificate:
//! anything else is a malformed hello (counted in
//! [`TransportStats::malformed`], the connection closed with
//! [`ERR_MALFORMED`](crate::transport::ERR_MALFORMED)). A peer that does not answer
//! within [`HELLO_TIMEOUT`] is dropped like a failed dial.

use crate::storage::record::le_u64;
use crate::storage::{Incarnations, Verdict};
use crate::transport::TransportStats;
use coracle::NodeId;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing::{error, info, warn};

/// Application error code of a connection closed because a node refused the other's
/// incarnation.
pub const ERR_INCARNATION: u32 = 0x4e;
/// How long a hello may take before the connection is dropped.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
const MAGIC: &[u8; 8] = b"CORAHELO";
const VERSION: u32 = 1;
const HELLO: usize = 36;
const VERDICT: usize = 9;

/// What a node announces and how it judges its peers' announcements.
#[derive(Debug)]
pub struct Greeting {
    cluster: u64,
    me: NodeId,
    incarnation: u64,
    book: Arc<Incarnations>,
    /// Refusals per peer (errors are logged the first time and then every
    /// [`LOG_EVERY`]th, about once a minute at the longest redial delay).
    refusals: Mutex<HashMap<NodeId, u64>>,
}

const LOG_EVERY: u64 = 30;

impl Greeting {
    /// The greeting of node `me` of `cluster`, whose data directory's incarnation is
    /// `incarnation`, judging its peers by `book`.
    pub fn new(cluster: u64, me: NodeId, incarnation: u64, book: Arc<Incarnations>) -> Self {
        Greeting {
            cluster,
            me,
            incarnation,
            book,
            refusals: Mutex::new(HashMap::new()),
        }
    }

    fn encode_hello(&self) -> [u8; HELLO] {
        let mut b = [0u8; HELLO];
        b[..8].copy_from_slice(MAGIC);
        b[8..12].copy_from_slice(&VERSION.to_le_bytes());
        b[12..20].copy_from_slice(&self.cluster.to_le_bytes());
        b[20..28].copy_from_slice(&self.me.to_le_bytes());
        b[28..36].copy_from_slice(&self.incarnation.to_le_bytes());
        b
    }

    /// True if this refusal of (or by) `peer` is to be logged.
    fn log_refusal(&self, peer: NodeId) -> bool {
        let mut r = self.refusals.lock().unwrap_or_else(|e| e.into_inner());
        let n = r.entry(peer).or_insert(0);
        *n += 1;
        *n == 1 || n.is_multiple_of(LOG_EVERY)
    }
}

/// Why a hello failed.
#[derive(Debug)]
enum HelloError {
    /// The stream failed or took too long.
    Protocol(String),
    /// The peer sent something else than a hello (counted as malformed).
    Malformed(String),
    /// One end refused the other's incarnation.
    Refused,
}

/// The peer's incarnation from its hello, checked against the cluster and its certificate.
fn decode_hello(b: &[u8], cluster: u64, peer: NodeId) -> Result<u64, HelloError> {
    let bad = |m: &str| Err(HelloError::Malformed(m.to_string()));
    if &b[..8] != MAGIC {
        return bad("not a hello");
    }
    if b[8..12] != VERSION.to_le_bytes() {
        return bad("unknown hello version");
    }
    if le_u64(&b[12..20]) != cluster {
        return bad("hello of another cluster");
    }
    if le_u64(&b[20..28]) != peer {
        return bad("hello names another node than its certificate");
    }
    Ok(le_u64(&b[28..36]))
}

/// A verdict: `None` taken, `Some(known)` refused (this incarnation is known instead).
fn encode_verdict(refused: Option<u64>) -> [u8; VERDICT] {
    let mut b = [0u8; VERDICT];
    b[0] = u8::from(refused.is_none());
    b[1..].copy_from_slice(&refused.unwrap_or(0).to_le_bytes());
    b
}

fn decode_verdict(b: &[u8]) -> Result<Option<u64>, HelloError> {
    match b[0] {
        1 => Ok(None),
        0 => Ok(Some(le_u64(&b[1..9]))),
        _ => Err(HelloError::Malformed("bad verdict".into())),
    }
}

/// Judges the incarnation `peer` announced (recording it if `peer` is new, durably, on a
/// helper thread): `Some(known)` if it is refused.
async fn judge(g: &Greeting, peer: NodeId, incarnation: u64) -> Result<Option<u64>, HelloError> {
    let book = g.book.clone();
    let verdict = smol::unblock(move || book.check(peer, incarnation))
        .await
        .map_err(|e| HelloError::Protocol(format!("cannot record its incarnation: {e}")))?;
    match verdict {
        Verdict::Known => Ok(None),
        Verdict::New => {
            info!(node = g.me, peer, incarnation = %format_args!("{incarnation:016x}"), "recorded the data directory incarnation of node {peer}");
            Ok(None)
        }
        Verdict::Replaced { known } => {
            if g.log_refusal(peer) {
                error!(
                    node = g.me,
                    peer,
                    "refusing node {peer}: it comes back with another data directory (incarnation {incarnation:016x}; \
                     this node knew it as {known:016x}), so it may have lost its vote and its log, and must not act as \
                     the voter it was. If its disk was lost, repair: coracle admin remove {peer}; coracle admin \
                     add-learner {peer} ADDR; coracle admin promote {peer} once it has caught up (README: \"Replacing \
                     a node that lost its disk\")"
                );
            }
            Ok(Some(known))
        }
    }
}

/// Logs that `peer` refused this node's incarnation.
fn refused_by(g: &Greeting, peer: NodeId, known: u64) {
    let me = g.me;
    if g.log_refusal(peer) {
        error!(
            node = me,
            peer,
            "node {peer} refuses this node: it knew node {me} with another data directory (incarnation {known:016x}; \
             this one is {:016x}). A node that lost its disk must rejoin as a new member: on the cluster, run \
             coracle admin remove {me}; coracle admin add-learner {me} ADDR; then coracle admin promote {me} once \
             it has caught up (README: \"Replacing a node that lost its disk\"). If this is not this node's own \
             data directory, stop it and point data_dir at the right one",
            g.incarnation
        );
    }
}

async fn dial_side(g: &Greeting, peer: NodeId, conn: &quinn::Connection) -> Result<(), HelloError> {
    let io = |e: &dyn std::fmt::Display| HelloError::Protocol(e.to_string());
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| io(&e))?;
    send.write_all(&g.encode_hello())
        .await
        .map_err(|e| io(&e))?;
    let mut answer = [0u8; HELLO + VERDICT];
    recv.read_exact(&mut answer).await.map_err(|e| io(&e))?;
    let theirs = decode_hello(&answer[..HELLO], g.cluster, peer)?;
    let on_me = decode_verdict(&answer[HELLO..])?;
    if let Some(known) = on_me {
        refused_by(g, peer, known);
    }
    let on_them = judge(g, peer, theirs).await?;
    let sent = send.write_all(&encode_verdict(on_them)).await;
    let _ = send.finish();
    // The acceptor finishes once it has read this verdict: then both ends know both. (If
    // it refused this node, it may close first: the verdicts are known all the same.)
    let finished = recv.read_to_end(0).await;
    if on_me.is_some() || on_them.is_some() {
        return Err(HelloError::Refused);
    }
    sent.map_err(|e| io(&e))?;
    finished.map_err(|e| io(&e))?;
    Ok(())
}

async fn accept_side(
    g: &Greeting,
    peer: NodeId,
    conn: &quinn::Connection,
) -> Result<(), HelloError> {
    let io = |e: &dyn std::fmt::Display| HelloError::Protocol(e.to_string());
    let (mut send, mut recv) = conn.accept_bi().await.map_err(|e| io(&e))?;
    let mut hello = [0u8; HELLO];
    recv.read_exact(&mut hello).await.map_err(|e| io(&e))?;
    let theirs = decode_hello(&hello, g.cluster, peer)?;
    let on_them = judge(g, peer, theirs).await?;
    let mut answer = [0u8; HELLO + VERDICT];
    answer[..HELLO].copy_from_slice(&g.encode_hello());
    answer[HELLO..].copy_from_slice(&encode_verdict(on_them));
    send.write_all(&answer).await.map_err(|e| io(&e))?;
    let mut verdict = [0u8; VERDICT];
    let read = recv.read_exact(&mut verdict).await;
    let _ = send.finish();
    let on_me = match read {
        Ok(()) => decode_verdict(&verdict)?,
        Err(_) if on_them.is_some() => None, // refused: the dialer may be gone already
        Err(e) => return Err(io(&e)),
    };
    if let Some(known) = on_me {
        refused_by(g, peer, known);
    }
    if on_me.is_some() || on_them.is_some() {
        // Give the finish a moment to reach the dialer before the connection closes.
        smol::Timer::after(Duration::from_millis(50)).await;
        return Err(HelloError::Refused);
    }
    Ok(())
}

/// Runs the hello on a new connection to `peer` (this node dialed it if `dialer`). True if
/// both ends take each other; otherwise the connection is closed (refusals are counted in
/// [`TransportStats::refused`] and logged as errors at both ends).
pub async fn exchange(
    g: &Greeting,
    peer: NodeId,
    conn: &quinn::Connection,
    dialer: bool,
    stats: &TransportStats,
) -> bool {
    let run = async {
        if dialer {
            dial_side(g, peer, conn).await
        } else {
            accept_side(g, peer, conn).await
        }
    };
    let timeout = async {
        smol::Timer::after(HELLO_TIMEOUT).await;
        Err(HelloError::Protocol("no hello in time".into()))
    };
    match smol::future::or(run, timeout).await {
        Ok(()) => true,
        Err(HelloError::Refused) => {
            stats.refuse(crate::transport::Refusal::Incarnation);
            conn.close(quinn::VarInt::from_u32(ERR_INCARNATION), b"incarnation");
            false
        }
        Err(HelloError::Malformed(e)) => {
            stats
                .malformed
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            warn!(node = g.me, peer, error = %e, "malformed hello; connection closed");
            conn.close(
                quinn::VarInt::from_u32(crate::transport::ERR_MALFORMED),
                b"hello",
            );
            false
        }
        Err(HelloError::Protocol(e)) => {
            warn!(node = g.me, peer, error = %e, "hello failed; connection dropped");
            conn.close(quinn::VarInt::from_u32(ERR_INCARNATION), b"hello");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hellos_and_verdicts_roundtrip_and_strangers_are_refused() {
        let dir = std::env::temp_dir().join(format!("coracle-hello-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let book = Arc::new(Incarnations::open(&dir).unwrap());
        let g = Greeting::new(7, 2, 0xfeed, book);
        let h = g.encode_hello();
        assert_eq!(decode_hello(&h, 7, 2).unwrap(), 0xfeed);
        assert!(decode_hello(&h, 8, 2).is_err(), "another cluster");
        assert!(decode_hello(&h, 7, 3).is_err(), "not its certificate's id");
        let mut bad = h;
        bad[0] ^= 1;
        assert!(decode_hello(&bad, 7, 2).is_err());
        assert_eq!(decode_verdict(&encode_verdict(None)).unwrap(), None);
        assert_eq!(decode_verdict(&encode_verdict(Some(9))).unwrap(), Some(9));
        assert!(decode_verdict(&[2; VERDICT]).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
