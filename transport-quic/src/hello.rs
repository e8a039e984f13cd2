//! The node hello: when a node-to-node connection is set up, before any Raft message, each
//! node announces the **versions** it speaks and the **incarnation** of its data directory
//! ([`DirIdentity`](crate::storage::DirIdentity)), and says whether it takes the other.
//!
//! # Versions (rolling upgrades)
//!
//! Each node announces two ranges ([`Versions`]): the node-to-node **protocol** versions it
//! speaks and the data directory **storage** formats ([`format`](mod@crate::storage::format))
//! it reads, each `min..=current`. Two nodes may work together when both ranges overlap
//! ([`Versions::agree`]): they then speak the lower of the two current versions. The rule
//! each release keeps is that its `min` is at most the previous release's `current`, so a
//! cluster is upgraded one node at a time, the old and the new release side by side. A peer
//! with no version in common is refused: the connection is closed before any Raft message,
//! so the node is neither counted nor given a vote and the others keep their quorum; both
//! ends log an error naming both nodes' versions ([`Incompatible`]) and count it in
//! [`TransportStats::refused`].
//!
//! This build speaks protocol [`PROTOCOL`] only (it is the first to announce versions; the
//! core's wire format decodes only its own version), and reads storage formats 2 and 3 (the
//! previous release's format 1 holds entries in the format before the host's). Tests play nodes of other releases by
//! setting [`TEST_VERSIONS_ENV`] (for tests only).
//!
//! # Incarnations (a node that lost its disk)
//!
//! A node that lost its disk and starts on an empty data directory has forgotten its
//! vote and the entries it acknowledged. Coming back as the voter it was, it could vote
//! twice in a term or help elect a leader without committed entries. It cannot tell by
//! itself (a founding member starting for the first time looks the same), but its peers
//! can: each remembers, durably, the incarnation of every member it has talked to
//! ([`Incarnations`]), and refuses a known member that comes back with another one. The
//! connection is closed, so the node is neither counted nor given a vote, and both ends log
//! an error that names the node and the repair: remove it from the cluster, add it back as
//! a learner, promote it once it has caught up (README, "Replacing a node that lost its
//! disk"). Removing it makes its record forgotten (a configuration without it is applied),
//! so the new incarnation is taken when it is added again. A peer of incompatible versions
//! is not recorded.
//!
//! # On the wire
//!
//! One bidirectional stream, the first the dialing node opens:
//!
//! ```text
//! dialer   -> acceptor  hello:   "CORAHELO" | format u32 | cluster u64 | node u64 | incarnation u64
//!                                | protocol min u32 | protocol current u32 | storage min u32 | storage current u32
//! acceptor -> dialer    hello, then verdict on the dialer: code u8 | known incarnation u64
//! dialer   -> acceptor  verdict on the acceptor; then both ends finish the stream
//! ```
//!
//! Little-endian; the hello's `format` is 2 (format 1, of earlier builds, had no versions:
//! such a peer is told apart and refused with a message). Verdict codes: 1 taken, 0 its
//! incarnation refused (the known one follows), 2 its versions refused. The node id in a
//! hello must be the one in the peer's certificate: anything else is a malformed hello
//! (counted in [`TransportStats::malformed`], the connection closed with
//! [`ERR_MALFORMED`](crate::transport::ERR_MALFORMED)). A peer that does not answer within
//! [`HELLO_TIMEOUT`] is dropped like a failed dial.

use crate::storage::record::le_u64;
use crate::storage::{format, Incarnations, Verdict};
use crate::transport::TransportStats;
use coracle::NodeId;
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tracing::{debug, error, info, warn};

/// Application error code of a connection closed because a node refused the other's
/// incarnation or versions.
pub const ERR_INCARNATION: u32 = 0x4e;
/// How long a hello may take before the connection is dropped.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// The node-to-node protocol version of this build: the core's wire format
/// ([`coracle::wire::PROTOCOL_VERSION`]) with this crate's hello and frames, forwarded
/// proposals included (version 1 of their frames,
/// [`FORWARD_VERSION`](crate::host::FORWARD_VERSION)). Raised when either changes.
pub const PROTOCOL: u32 = 2;
/// The oldest protocol version this build speaks (see the [module docs](self)).
pub const MIN_PROTOCOL: u32 = 2;
/// Environment variable, **for tests only**: the versions this node announces instead of
/// this build's, as `protocol=MIN..CURRENT,storage=MIN..CURRENT` (either part may be left
/// out; `protocol=3` means `3..3`). It changes what the node claims and accepts, not what
/// it speaks: a process test uses it to play a node of another release. `coracle node`
/// refuses to start on a value that is not one.
pub const TEST_VERSIONS_ENV: &str = "CORACLE_TEST_VERSIONS";
const MAGIC: &[u8; 8] = b"CORAHELO";
/// The hello's own layout (format 1, of earlier builds, had no versions).
const HELLO_FORMAT: u32 = 2;
const HEAD: usize = 12;
const HELLO: usize = 52;
const VERDICT: usize = 9;
const TAKEN: u8 = 1;
const REFUSED_INCARNATION: u8 = 0;
const REFUSED_VERSIONS: u8 = 2;

/// A range of versions: the oldest a node still handles and the one it uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VersionRange {
    /// The oldest version handled.
    pub min: u32,
    /// The newest, the one used with a peer that has it too.
    pub current: u32,
}

impl fmt::Display for VersionRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.min == self.current {
            write!(f, "{} (only)", self.current)
        } else {
            write!(f, "{} (and down to {})", self.current, self.min)
        }
    }
}

impl VersionRange {
    fn common(&self, other: &VersionRange) -> Option<u32> {
        let v = self.current.min(other.current);
        (v >= self.min.max(other.min)).then_some(v)
    }
}

/// What a node announces in its hello: the protocol versions it speaks and the data
/// directory formats it reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Versions {
    /// Node-to-node protocol versions.
    pub protocol: VersionRange,
    /// Data directory formats ([`format`](mod@format)).
    pub storage: VersionRange,
}

/// The versions two nodes use together ([`Versions::agree`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Agreed {
    /// The protocol version both speak.
    pub protocol: u32,
    /// The storage format both read.
    pub storage: u32,
}

/// Two nodes have no protocol version or no storage format in common. Its message names
/// both nodes' versions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Incompatible {
    /// This node's versions.
    pub ours: Versions,
    /// The peer's versions.
    pub theirs: Versions,
}

impl fmt::Display for Incompatible {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (o, t) = (&self.ours, &self.theirs);
        let what = match (o.protocol.common(&t.protocol), o.storage.common(&t.storage)) {
            (None, None) => "no protocol version and no storage format",
            (None, Some(_)) => "no protocol version",
            _ => "no storage format",
        };
        let newer =
            t.protocol.current > o.protocol.current || t.storage.current > o.storage.current;
        write!(
            f,
            "{what} in common: this node speaks protocol {} and reads storage format {}; the peer speaks protocol {} and reads storage format {}. {}",
            o.protocol,
            o.storage,
            t.protocol,
            t.storage,
            if newer {
                "The peer is of a release more than one ahead: upgrade through the releases between, one at a time"
            } else {
                "The peer is of a release too old for this one: upgrade it through the releases between, one at a time"
            }
        )
    }
}

impl std::error::Error for Incompatible {}

impl Versions {
    /// This build's versions: protocol [`MIN_PROTOCOL`]`..=`[`PROTOCOL`], storage
    /// [`format::OLDEST`]`..=`[`format::CURRENT`].
    pub const fn this_build() -> Versions {
        Versions {
            protocol: VersionRange {
                min: MIN_PROTOCOL,
                current: PROTOCOL,
            },
            storage: VersionRange {
                min: format::OLDEST,
                current: format::CURRENT,
            },
        }
    }

    /// The versions this process announces: this build's, or those of
    /// [`TEST_VERSIONS_ENV`] if it is set (an error if its value is not one).
    pub fn announced() -> Result<Versions, String> {
        static ANNOUNCED: OnceLock<Result<Versions, String>> = OnceLock::new();
        ANNOUNCED
            .get_or_init(|| match std::env::var(TEST_VERSIONS_ENV) {
                Err(std::env::VarError::NotPresent) => Ok(Versions::this_build()),
                Err(std::env::VarError::NotUnicode(_)) => {
                    Err(format!("{TEST_VERSIONS_ENV} is not UTF-8"))
                }
                Ok(v) => Versions::parse(&v).map_err(|e| format!("{TEST_VERSIONS_ENV}={v:?}: {e}")),
            })
            .clone()
    }

    /// Parses `protocol=MIN..CURRENT,storage=MIN..CURRENT` (either part may be left out and
    /// takes this build's range; a single number is a range of one).
    pub fn parse(s: &str) -> Result<Versions, String> {
        const FORM: &str = "expected protocol=MIN..CURRENT,storage=MIN..CURRENT";
        let mut v = Versions::this_build();
        let mut seen = [false; 2];
        for part in s.split(',') {
            let (key, range) = part
                .trim()
                .split_once('=')
                .ok_or_else(|| format!("{part:?} is not KEY=RANGE; {FORM}"))?;
            let (slot, seen) = match key.trim() {
                "protocol" => (&mut v.protocol, &mut seen[0]),
                "storage" => (&mut v.storage, &mut seen[1]),
                other => return Err(format!("unknown key {other:?}; {FORM}")),
            };
            if std::mem::replace(seen, true) {
                return Err(format!("{key} given twice"));
            }
            let number = |n: &str| {
                n.trim()
                    .parse::<u32>()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or_else(|| format!("{n:?} is not a version (1 to {})", u32::MAX))
            };
            let (min, current) = match range.split_once("..") {
                Some((a, b)) => (number(a)?, number(b)?),
                None => (number(range)?, number(range)?),
            };
            if min > current {
                return Err(format!("{key}: {min} is above {current}"));
            }
            *slot = VersionRange { min, current };
        }
        Ok(v)
    }

    /// The versions this node and a peer announcing `theirs` use together, or why they
    /// cannot work together.
    pub fn agree(&self, theirs: &Versions) -> Result<Agreed, Incompatible> {
        match (
            self.protocol.common(&theirs.protocol),
            self.storage.common(&theirs.storage),
        ) {
            (Some(protocol), Some(storage)) => Ok(Agreed { protocol, storage }),
            _ => Err(Incompatible {
                ours: *self,
                theirs: *theirs,
            }),
        }
    }
}

/// What a node announces and how it judges its peers' announcements.
#[derive(Debug)]
pub struct Greeting {
    cluster: u64,
    me: NodeId,
    incarnation: u64,
    versions: Versions,
    book: Arc<Incarnations>,
    /// Refusals per peer (errors are logged the first time and then every
    /// [`LOG_EVERY`]th, about once a minute at the longest redial delay).
    refusals: Mutex<HashMap<NodeId, u64>>,
    /// What the hello's timers and its durable write run on (the transport's runtime,
    /// set by [`Transport::start`](crate::transport::Transport::start); smol until then).
    pub(crate) runtime: crate::rt::Runtime,
}

const LOG_EVERY: u64 = 30;

impl Greeting {
    /// The greeting of node `me` of `cluster`, whose data directory's incarnation is
    /// `incarnation`, judging its peers by `book`. It announces [`Versions::announced`]
    /// (this build's if [`TEST_VERSIONS_ENV`] is not a valid value; an error is logged).
    pub fn new(cluster: u64, me: NodeId, incarnation: u64, book: Arc<Incarnations>) -> Self {
        let versions = Versions::announced().unwrap_or_else(|e| {
            error!(node = me, "{e}; announcing this build's versions");
            Versions::this_build()
        });
        Greeting {
            cluster,
            me,
            incarnation,
            versions,
            book,
            refusals: Mutex::new(HashMap::new()),
            runtime: crate::rt::Runtime::Smol,
        }
    }

    /// The same greeting announcing `versions` instead.
    pub fn with_versions(mut self, versions: Versions) -> Self {
        self.versions = versions;
        self
    }

    fn encode_hello(&self) -> [u8; HELLO] {
        let mut b = [0u8; HELLO];
        b[..8].copy_from_slice(MAGIC);
        b[8..12].copy_from_slice(&HELLO_FORMAT.to_le_bytes());
        b[12..20].copy_from_slice(&self.cluster.to_le_bytes());
        b[20..28].copy_from_slice(&self.me.to_le_bytes());
        b[28..36].copy_from_slice(&self.incarnation.to_le_bytes());
        let v = &self.versions;
        for (i, n) in [
            v.protocol.min,
            v.protocol.current,
            v.storage.min,
            v.storage.current,
        ]
        .into_iter()
        .enumerate()
        {
            b[36 + 4 * i..40 + 4 * i].copy_from_slice(&n.to_le_bytes());
        }
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
    /// One end refused the other's incarnation or versions.
    Refused,
}

/// What a peer announced in its hello.
#[derive(Debug, PartialEq, Eq)]
struct Hello {
    incarnation: u64,
    versions: Versions,
}

fn le_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

/// Checks the first [`HEAD`] bytes of a hello: magic and hello format.
fn decode_head(b: &[u8]) -> Result<(), HelloError> {
    if &b[..8] != MAGIC {
        return Err(HelloError::Malformed("not a hello".into()));
    }
    match le_u32(&b[8..12]) {
        HELLO_FORMAT => Ok(()),
        1 => Err(HelloError::Malformed(
            "a hello of an earlier build, which announces no versions (before rolling upgrades \
             were supported): upgrade that node to this release"
                .into(),
        )),
        v => Err(HelloError::Malformed(format!("unknown hello format {v}"))),
    }
}

/// The peer's hello, checked against the cluster and its certificate.
fn decode_hello(b: &[u8], cluster: u64, peer: NodeId) -> Result<Hello, HelloError> {
    decode_head(&b[..HEAD])?;
    let bad = |m: &str| Err(HelloError::Malformed(m.to_string()));
    if le_u64(&b[12..20]) != cluster {
        return bad("hello of another cluster");
    }
    if le_u64(&b[20..28]) != peer {
        return bad("hello names another node than its certificate");
    }
    let n = |i: usize| le_u32(&b[36 + 4 * i..]);
    let versions = Versions {
        protocol: VersionRange {
            min: n(0),
            current: n(1),
        },
        storage: VersionRange {
            min: n(2),
            current: n(3),
        },
    };
    if [versions.protocol, versions.storage]
        .iter()
        .any(|r| r.min == 0 || r.min > r.current)
    {
        return bad("hello with a version range that is none");
    }
    Ok(Hello {
        incarnation: le_u64(&b[28..36]),
        versions,
    })
}

/// A verdict on a peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Judged {
    Taken,
    /// Another incarnation of the peer is known.
    RefusedIncarnation(u64),
    /// No version in common.
    RefusedVersions,
}

fn encode_verdict(v: Judged) -> [u8; VERDICT] {
    let mut b = [0u8; VERDICT];
    match v {
        Judged::Taken => b[0] = TAKEN,
        Judged::RefusedIncarnation(known) => {
            b[0] = REFUSED_INCARNATION;
            b[1..].copy_from_slice(&known.to_le_bytes());
        }
        Judged::RefusedVersions => b[0] = REFUSED_VERSIONS,
    }
    b
}

fn decode_verdict(b: &[u8]) -> Result<Judged, HelloError> {
    match b[0] {
        TAKEN => Ok(Judged::Taken),
        REFUSED_INCARNATION => Ok(Judged::RefusedIncarnation(le_u64(&b[1..9]))),
        REFUSED_VERSIONS => Ok(Judged::RefusedVersions),
        _ => Err(HelloError::Malformed("bad verdict".into())),
    }
}

/// Judges what `peer` announced: its versions, then its incarnation (recording it if
/// `peer` is new, durably, on a helper thread).
async fn judge(g: &Greeting, peer: NodeId, hello: &Hello) -> Result<Judged, HelloError> {
    match g.versions.agree(&hello.versions) {
        Ok(agreed) => debug!(
            node = g.me,
            peer,
            protocol = agreed.protocol,
            storage = agreed.storage,
            "versions in common with node {peer}"
        ),
        Err(e) => {
            if g.log_refusal(peer) {
                error!(node = g.me, peer, "refusing node {peer}: {e}");
            }
            return Ok(Judged::RefusedVersions);
        }
    }
    let incarnation = hello.incarnation;
    let book = g.book.clone();
    let verdict = g
        .runtime
        .unblock(move || book.check(peer, incarnation))
        .await
        .map_err(|e| HelloError::Protocol(format!("cannot record its incarnation: {e}")))?;
    match verdict {
        Verdict::Known => Ok(Judged::Taken),
        Verdict::New => {
            info!(node = g.me, peer, incarnation = %format_args!("{incarnation:016x}"), "recorded the data directory incarnation of node {peer}");
            Ok(Judged::Taken)
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
            Ok(Judged::RefusedIncarnation(known))
        }
    }
}

/// Logs that `peer`, which announced `theirs`, refused this node (`verdict`).
fn refused_by(g: &Greeting, peer: NodeId, verdict: Judged, theirs: &Versions) {
    let me = g.me;
    if verdict == Judged::Taken || !g.log_refusal(peer) {
        return;
    }
    match verdict {
        Judged::RefusedIncarnation(known) => error!(
            node = me,
            peer,
            "node {peer} refuses this node: it knew node {me} with another data directory (incarnation {known:016x}; \
             this one is {:016x}). A node that lost its disk must rejoin as a new member: on the cluster, run \
             coracle admin remove {me}; coracle admin add-learner {me} ADDR; then coracle admin promote {me} once \
             it has caught up (README: \"Replacing a node that lost its disk\"). If this is not this node's own \
             data directory, stop it and point data_dir at the right one",
            g.incarnation
        ),
        _ => {
            let why = match g.versions.agree(theirs) {
                Err(e) => e.to_string(),
                // Its policy, not ours: say what each announced.
                Ok(_) => format!(
                    "this node speaks protocol {} and reads storage format {}; the peer speaks protocol {} and reads storage format {}",
                    g.versions.protocol, g.versions.storage, theirs.protocol, theirs.storage
                ),
            };
            error!(node = me, peer, "node {peer} refuses this node's versions: {why}");
        }
    }
}

/// The dialer's first half: sends this node's hello on a new stream, reads the peer's
/// hello (of this node's cluster, from the node its certificate names) and its verdict on
/// this node.
async fn hello_and_answer(
    g: &Greeting,
    peer: NodeId,
    conn: &quinn::Connection,
) -> Result<(quinn::SendStream, quinn::RecvStream, Hello, Judged), HelloError> {
    let io = |e: &dyn std::fmt::Display| HelloError::Protocol(e.to_string());
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| io(&e))?;
    send.write_all(&g.encode_hello())
        .await
        .map_err(|e| io(&e))?;
    let mut answer = [0u8; HELLO + VERDICT];
    recv.read_exact(&mut answer[..HEAD])
        .await
        .map_err(|e| io(&e))?;
    decode_head(&answer[..HEAD])?;
    recv.read_exact(&mut answer[HEAD..])
        .await
        .map_err(|e| io(&e))?;
    let theirs = decode_hello(&answer[..HELLO], g.cluster, peer)?;
    let on_me = decode_verdict(&answer[HELLO..])?;
    Ok((send, recv, theirs, on_me))
}

/// Asks `peer`, over a new connection this node dialed, whether it is a live node of
/// `g`'s cluster: true once it answers this node's hello with its own (whatever its
/// verdict on this node). Nothing is recorded (the peer's incarnation is not judged) and
/// the connection is closed after: this is how a node about to be recovered as a new
/// cluster ([`crate::recover`]) tells whether its old cluster still has a quorum. The
/// peer logs a failed hello.
pub async fn probe(g: &Greeting, peer: NodeId, conn: &quinn::Connection) -> bool {
    let answered = hello_and_answer(g, peer, conn).await.is_ok();
    conn.close(quinn::VarInt::from_u32(0), b"probe done");
    answered
}

async fn dial_side(g: &Greeting, peer: NodeId, conn: &quinn::Connection) -> Result<(), HelloError> {
    let io = |e: &dyn std::fmt::Display| HelloError::Protocol(e.to_string());
    let (mut send, mut recv, theirs, on_me) = hello_and_answer(g, peer, conn).await?;
    refused_by(g, peer, on_me, &theirs.versions);
    let on_them = judge(g, peer, &theirs).await?;
    let sent = send.write_all(&encode_verdict(on_them)).await;
    let _ = send.finish();
    // The acceptor finishes once it has read this verdict: then both ends know both. (If
    // it refused this node, it may close first: the verdicts are known all the same.)
    let finished = recv.read_to_end(0).await;
    if on_me != Judged::Taken || on_them != Judged::Taken {
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
    // The head first: a hello of an earlier build is shorter, and is told apart at once.
    recv.read_exact(&mut hello[..HEAD])
        .await
        .map_err(|e| io(&e))?;
    decode_head(&hello[..HEAD])?;
    recv.read_exact(&mut hello[HEAD..])
        .await
        .map_err(|e| io(&e))?;
    let theirs = decode_hello(&hello, g.cluster, peer)?;
    let on_them = judge(g, peer, &theirs).await?;
    let mut answer = [0u8; HELLO + VERDICT];
    answer[..HELLO].copy_from_slice(&g.encode_hello());
    answer[HELLO..].copy_from_slice(&encode_verdict(on_them));
    send.write_all(&answer).await.map_err(|e| io(&e))?;
    let mut verdict = [0u8; VERDICT];
    let read = recv.read_exact(&mut verdict).await;
    let _ = send.finish();
    let on_me = match read {
        Ok(()) => decode_verdict(&verdict)?,
        // Refused: the dialer may be gone already.
        Err(_) if on_them != Judged::Taken => Judged::Taken,
        Err(e) => return Err(io(&e)),
    };
    refused_by(g, peer, on_me, &theirs.versions);
    if on_me != Judged::Taken || on_them != Judged::Taken {
        // Give the finish a moment to reach the dialer before the connection closes.
        g.runtime.sleep(Duration::from_millis(50)).await;
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
        g.runtime.sleep(HELLO_TIMEOUT).await;
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

    fn range(min: u32, current: u32) -> VersionRange {
        VersionRange { min, current }
    }

    fn versions(p: (u32, u32), s: (u32, u32)) -> Versions {
        Versions {
            protocol: range(p.0, p.1),
            storage: range(s.0, s.1),
        }
    }

    #[test]
    fn hellos_and_verdicts_roundtrip_and_strangers_are_refused() {
        let dir = std::env::temp_dir().join(format!("coracle-hello-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let book = Arc::new(Incarnations::open(&dir).unwrap());
        let ours = versions((2, 3), (1, 2));
        let g = Greeting::new(7, 2, 0xfeed, book).with_versions(ours);
        let h = g.encode_hello();
        assert_eq!(
            decode_hello(&h, 7, 2).unwrap(),
            Hello {
                incarnation: 0xfeed,
                versions: ours
            }
        );
        assert!(decode_hello(&h, 8, 2).is_err(), "another cluster");
        assert!(decode_hello(&h, 7, 3).is_err(), "not its certificate's id");
        // Every byte of the head, the cluster and the node is checked.
        for i in 0..28 {
            let mut bad = h;
            bad[i] ^= 1;
            assert!(decode_hello(&bad, 7, 2).is_err(), "flip at {i}");
        }
        // A version range that is none: 0, or min above current.
        for (at, value) in [(36, 0u32), (40, 0), (44, 0), (48, 0), (36, 4), (44, 3)] {
            let mut bad = h;
            bad[at..at + 4].copy_from_slice(&value.to_le_bytes());
            assert!(decode_hello(&bad, 7, 2).is_err(), "{value} at {at}");
        }
        // An earlier build's hello is told apart, with what to do.
        let mut old = h;
        old[8..12].copy_from_slice(&1u32.to_le_bytes());
        match decode_head(&old[..HEAD]) {
            Err(HelloError::Malformed(m)) => assert!(m.contains("earlier build"), "{m}"),
            other => panic!("{other:?}"),
        }
        for v in [
            Judged::Taken,
            Judged::RefusedIncarnation(9),
            Judged::RefusedVersions,
        ] {
            assert_eq!(decode_verdict(&encode_verdict(v)).unwrap(), v);
        }
        for code in 3..=255u8 {
            assert!(decode_verdict(&[code; VERDICT]).is_err());
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The policy: two nodes work together when their ranges overlap, and then speak the
    /// lower current version; this release talks to the next one (if it keeps the rule),
    /// not to one that reads only the previous release's storage format 1 (its entries
    /// predate the host's format).
    #[test]
    fn versions_agree_when_their_ranges_overlap() {
        let this = Versions::this_build();
        assert_eq!(this.protocol, range(MIN_PROTOCOL, PROTOCOL));
        assert_eq!(this.storage, range(format::OLDEST, format::CURRENT));
        assert_eq!(
            this.agree(&this),
            Ok(Agreed {
                protocol: PROTOCOL,
                storage: format::CURRENT
            })
        );
        // A node reading the previous release's storage format only; the next release
        // (which keeps the rule: its min is at most this release's current).
        let previous = versions((PROTOCOL, PROTOCOL), (1, 1));
        let next = versions(
            (PROTOCOL, PROTOCOL + 1),
            (format::CURRENT, format::CURRENT + 1),
        );
        assert!(this.agree(&previous).is_err(), "format 1 is not read here");
        assert_eq!(this.agree(&next).map(|a| a.protocol), Ok(PROTOCOL));
        assert_eq!(next.agree(&this).map(|a| a.protocol), Ok(PROTOCOL));
        // Two releases ahead, or one that dropped what this one speaks: refused, both
        // nodes' versions named.
        let too_new = versions((PROTOCOL + 1, PROTOCOL + 2), (2, 3));
        let e = this.agree(&too_new).unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("no protocol version in common")
                && text.contains(&format!("this node speaks protocol {PROTOCOL} (only)"))
                && text.contains(&format!(
                    "the peer speaks protocol {} (and down to {})",
                    PROTOCOL + 2,
                    PROTOCOL + 1
                ))
                && text.contains("upgrade through the releases between"),
            "{text}"
        );
        assert!(too_new.agree(&this).is_err(), "symmetric");
        let e = this
            .agree(&versions(
                (PROTOCOL, PROTOCOL),
                (format::CURRENT + 1, format::CURRENT + 1),
            ))
            .unwrap_err();
        assert!(e.to_string().contains("no storage format in common"), "{e}");
        let e = this.agree(&versions((1, 1), (1, 1))).unwrap_err();
        assert!(e.to_string().contains("too old"), "{e}");
    }

    #[test]
    fn test_versions_are_parsed_and_garbage_is_refused() {
        let this = Versions::this_build();
        assert_eq!(
            Versions::parse("protocol=3..4,storage=2..3"),
            Ok(versions((3, 4), (2, 3)))
        );
        assert_eq!(
            Versions::parse(" storage = 1 "),
            Ok(Versions {
                storage: range(1, 1),
                ..this
            })
        );
        assert_eq!(
            Versions::parse("protocol=5"),
            Ok(Versions {
                protocol: range(5, 5),
                ..this
            })
        );
        for (bad, why) in [
            ("", "not KEY=RANGE"),
            ("protocol", "not KEY=RANGE"),
            ("proto=2", "unknown key"),
            ("protocol=2,protocol=3", "twice"),
            ("protocol=0", "not a version"),
            ("protocol=x", "not a version"),
            ("protocol=-1", "not a version"),
            ("protocol=4294967296", "not a version"),
            ("protocol=3..2", "above"),
            ("protocol=2..", "not a version"),
            ("protocol=2,", "not KEY=RANGE"),
        ] {
            let e = Versions::parse(bad).unwrap_err();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
    }
}
