//! Forwarding: a proposal made on a follower is sent to the leader over the node-to-node
//! connection, proposed there, and the leader's answer comes back to the follower's caller
//! (no client round trip to find the leader).
//!
//! # On the wire
//!
//! One bidirectional stream per forwarded proposal, opened by the follower on its
//! connection to the leader (after the [hello](crate::hello), whose stream is the first).
//! Each side sends one frame, a 4-byte little-endian length and a body, then finishes:
//!
//! ```text
//! follower -> leader   request: version u8 (1) | kind u8 (1: propose) | command
//! leader -> follower   answer:  version u8 (1) | code u8 | payload
//! ```
//!
//! A node's requests about itself ([`Handle::join`](super::Handle::join), leave, priority) travel the same way, the node named by
//! its certificate: kind 2 join (then its address, UTF-8), 3 promote, 4 leave, 5 priority
//! (then one byte). Their answers: code 0 with no payload (done), 1 not leader, 2 retry, 5
//! refused, 4 and 7 as below.
//!
//! Codes: 0 applied (the response, as [`ResponseCodec::encode`] wrote it); 1 not leader
//! (u64: the leader it knows, 0 for none; then where it listens, UTF-8); 2 busy, 3 outcome unknown, 4 stopped, 5 refused
//! (a UTF-8 message each); 6 too large (u64 length, u64 limit); 7 shutting down. A leader
//! refuses (code 5, with a message naming both) a request of a version or kind it does not
//! know, a malformed one, or one for a state machine with no [`ResponseCodec`]; a future
//! version raises the version byte. The leader never forwards in turn: a node that is no
//! longer the leader answers "not leader", so a proposal travels one hop at most.
//!
//! # Outcomes
//!
//! A forwarded proposal is proposed once, by the leader; the follower never resends it. If
//! the connection to the leader fails, or the leader loses leadership, stops or shuts down before it answers,
//! or the follower learns of another leader (or loses sight of this one: a leader that died
//! or went silent, whose connection is not yet timed out) before the answer comes,
//! the caller gets [`ProposeError::OutcomeUnknown`]: the command may be applied, and a retry
//! is a new command (deduplicate it in the state machine, as the KV store's client
//! sessions do: the session and sequence number are in the command's bytes).

use super::handle::{Done, MembershipError, ProposeError};
use super::StateMachine;
use crate::transport::FrameReader;
use bytes::Bytes;
use coracle::NodeId;

/// The version of the forwarding frames this build speaks.
pub const FORWARD_VERSION: u8 = 1;
/// The request's kind: a proposal.
const KIND_PROPOSE: u8 = 1;
/// The request's kind: add the sender as a learner, at the address that follows.
const KIND_JOIN: u8 = 2;
/// The request's kind: make the sender (a caught-up learner) a voter.
const KIND_PROMOTE: u8 = 3;
/// The request's kind: remove the sender from the configuration.
const KIND_LEAVE: u8 = 4;
/// The request's kind: set the sender's election priority (one byte follows).
const KIND_PRIORITY: u8 = 5;
/// The largest answer a follower reads (a response larger than this is refused).
const MAX_ANSWER: usize = 16 << 20;

const APPLIED: u8 = 0;
const NOT_LEADER: u8 = 1;
const BUSY: u8 = 2;
const UNKNOWN: u8 = 3;
const STOPPED: u8 = 4;
const REFUSED: u8 = 5;
const TOO_LARGE: u8 = 6;
const SHUTTING_DOWN: u8 = 7;

/// How a state machine's responses cross the network, so that a follower can forward a
/// proposal to the leader and hand the leader's response to its caller
/// ([`StateMachine::response_codec`]).
pub struct ResponseCodec<R> {
    /// Writes a response as bytes (on the leader).
    pub encode: fn(&R) -> Vec<u8>,
    /// Reads them back (on the follower); `None` if they are no response.
    pub decode: fn(&[u8]) -> Option<R>,
}

impl<R: serde::Serialize + serde::de::DeserializeOwned> ResponseCodec<R> {
    /// Responses as postcard, the wire format of the core: the codec of a response type
    /// that derives `Serialize` and `Deserialize`. A response postcard cannot write (a
    /// serializer error) reaches the follower's caller as
    /// [`ProposeError::OutcomeUnknown`] (applied, but the response does not decode).
    pub fn postcard() -> Self {
        ResponseCodec {
            encode: |r| postcard::to_allocvec(r).unwrap_or_default(),
            decode: |b| postcard::from_bytes(b).ok(),
        }
    }
}

impl<R> Clone for ResponseCodec<R> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<R> Copy for ResponseCodec<R> {}

impl<R> std::fmt::Debug for ResponseCodec<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ResponseCodec")
    }
}

/// A forwarded request as the leader reads it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Request {
    /// Propose these command bytes.
    Propose(Bytes),
    /// A change the sender asks for itself (its id comes from its certificate).
    Member(MemberRequest),
}

/// What a node asks the leader to do about its own membership ([`super::join`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum MemberRequest {
    /// Add it as a learner, reachable at this address (`ip:port`).
    Join(String),
    /// Make it (a caught-up learner) a voter.
    Promote,
    /// Remove it from the configuration.
    Leave,
    /// Set its election priority, for every node.
    Priority(u8),
}

/// Why a request is refused before it is proposed (answered with code 5).
pub(crate) fn decode_request(body: &Bytes) -> Result<Request, String> {
    let (version, kind) = match body.get(..2) {
        Some(&[v, k]) => (v, k),
        _ => return Err("a forwarded request of fewer than 2 bytes".into()),
    };
    match (version, kind) {
        (FORWARD_VERSION, KIND_PROPOSE) => Ok(Request::Propose(body.slice(2..))),
        (FORWARD_VERSION, KIND_JOIN) => match std::str::from_utf8(&body[2..]) {
            Ok(addr) => Ok(Request::Member(MemberRequest::Join(addr.to_owned()))),
            Err(_) => Err("a join request whose address is not UTF-8".into()),
        },
        (FORWARD_VERSION, KIND_PROMOTE) if body.len() == 2 => {
            Ok(Request::Member(MemberRequest::Promote))
        }
        (FORWARD_VERSION, KIND_LEAVE) if body.len() == 2 => {
            Ok(Request::Member(MemberRequest::Leave))
        }
        (FORWARD_VERSION, KIND_PRIORITY) => match body[2..] {
            [p] => Ok(Request::Member(MemberRequest::Priority(p))),
            _ => Err("a priority request without exactly one byte of priority".into()),
        },
        (FORWARD_VERSION, KIND_PROMOTE | KIND_LEAVE) => {
            Err(format!("a request of kind {kind} with bytes after it"))
        }
        (FORWARD_VERSION, kind) => Err(format!("unknown forwarded request kind {kind}")),
        (v, _) => Err(format!(
            "forwarding version {v} is not spoken here (this node speaks version {FORWARD_VERSION})"
        )),
    }
}

fn frame(body: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(4 + body.len());
    b.extend_from_slice(&(body.len() as u32).to_le_bytes());
    b.extend_from_slice(body);
    b
}

fn encode_request(command: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(2 + command.len());
    body.extend_from_slice(&[FORWARD_VERSION, KIND_PROPOSE]);
    body.extend_from_slice(command);
    frame(&body)
}

/// The request frame of a node's `request` about itself.
pub(crate) fn encode_member_request(request: &MemberRequest) -> Vec<u8> {
    let mut body = vec![FORWARD_VERSION];
    match request {
        MemberRequest::Join(addr) => {
            body.push(KIND_JOIN);
            body.extend_from_slice(addr.as_bytes());
        }
        MemberRequest::Promote => body.push(KIND_PROMOTE),
        MemberRequest::Leave => body.push(KIND_LEAVE),
        MemberRequest::Priority(p) => body.extend_from_slice(&[KIND_PRIORITY, *p]),
    }
    frame(&body)
}

/// The answer frame to a node's request about itself: done (code 0, no payload), or why
/// not.
pub(crate) fn encode_member_answer(result: Result<(), MembershipError>) -> Bytes {
    let mut body = vec![FORWARD_VERSION];
    let text = |body: &mut Vec<u8>, code: u8, m: &str| {
        body.push(code);
        body.extend_from_slice(m.as_bytes());
    };
    match result {
        Ok(()) => body.push(APPLIED),
        Err(MembershipError::NotLeader { leader, address }) => {
            push_not_leader(&mut body, leader, address)
        }
        Err(MembershipError::Retry(m)) => text(&mut body, BUSY, &m),
        Err(MembershipError::Timeout) => text(&mut body, BUSY, "no answer in time"),
        Err(MembershipError::Refused(m)) => text(&mut body, REFUSED, &m),
        Err(MembershipError::Stopped(m)) => text(&mut body, STOPPED, &m),
        Err(MembershipError::ShuttingDown) => body.push(SHUTTING_DOWN),
    }
    Bytes::from(frame(&body))
}

/// What a node's request about itself came to, from `peer`'s answer `body`. An answer that
/// is none (garbage, another version) is a [`MembershipError::Retry`] naming it.
pub(crate) fn decode_member_answer(body: &[u8], peer: NodeId) -> Result<(), MembershipError> {
    let retry = |m: String| Err(MembershipError::Retry(m));
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let (code, rest) = match split_answer(body, peer) {
        Ok(split) => split,
        Err(why) => return retry(why),
    };
    match code {
        APPLIED if rest.is_empty() => Ok(()),
        NOT_LEADER => match parse_not_leader(rest) {
            Some((leader, address)) => Err(MembershipError::NotLeader { leader, address }),
            None => retry(format!("node {peer} sent a truncated forwarding answer")),
        },
        BUSY => retry(text(rest)),
        REFUSED => Err(MembershipError::Refused(format!(
            "node {peer} refused: {}",
            text(rest)
        ))),
        STOPPED => retry(format!("node {peer} stopped: {}", text(rest))),
        SHUTTING_DOWN => retry(format!("node {peer} is shutting down")),
        c => retry(format!("node {peer} sent unknown answer code {c}")),
    }
}

/// Sends a node's `request` about itself to `peer` on `connection`, and reads the answer.
pub(crate) async fn ask_member(
    peer: NodeId,
    connection: &quinn::Connection,
    request: &MemberRequest,
) -> Result<(), MembershipError> {
    let lost = |e: &dyn std::fmt::Display| {
        MembershipError::Retry(format!(
            "the connection to node {peer} failed before it answered ({e})"
        ))
    };
    let (mut send, recv) = connection.open_bi().await.map_err(|e| lost(&e))?;
    send.write_all(&encode_member_request(request))
        .await
        .map_err(|e| lost(&e))?;
    let _ = send.finish();
    let mut reader = FrameReader::new(recv);
    match reader.next(MAX_ANSWER).await {
        Ok(Some(body)) => decode_member_answer(&body, peer),
        Ok(None) => Err(lost(&"no answer")),
        Err(e) => Err(lost(&e)),
    }
}

/// The answer frame to a forwarded proposal.
pub(crate) fn encode_answer<R>(
    result: Result<R, ProposeError>,
    codec: Option<ResponseCodec<R>>,
) -> Bytes {
    let mut body = vec![FORWARD_VERSION];
    let text = |body: &mut Vec<u8>, code: u8, m: &str| {
        body.push(code);
        body.extend_from_slice(m.as_bytes());
    };
    match result {
        Ok(r) => match codec {
            Some(c) => {
                body.push(APPLIED);
                body.extend_from_slice(&(c.encode)(&r));
            }
            None => text(
                &mut body,
                UNKNOWN,
                "applied, but the response cannot be sent",
            ),
        },
        Err(ProposeError::NotLeader { leader, address }) => {
            push_not_leader(&mut body, leader, address)
        }
        Err(ProposeError::Busy(m)) => text(&mut body, BUSY, &m),
        Err(ProposeError::OutcomeUnknown(m)) => text(&mut body, UNKNOWN, &m),
        Err(ProposeError::Timeout) => text(&mut body, UNKNOWN, "no answer in time"),
        Err(ProposeError::Stopped(m)) => text(&mut body, STOPPED, &m),
        Err(ProposeError::TooLarge { len, max }) => {
            body.push(TOO_LARGE);
            body.extend_from_slice(&(len as u64).to_le_bytes());
            body.extend_from_slice(&(max as u64).to_le_bytes());
        }
        Err(ProposeError::ShuttingDown) => body.push(SHUTTING_DOWN),
    }
    Bytes::from(frame(&body))
}

/// The refusal frame of a request the leader cannot take (`why`).
pub(crate) fn encode_refusal(why: &str) -> Bytes {
    let mut body = vec![FORWARD_VERSION, REFUSED];
    body.extend_from_slice(why.as_bytes());
    Bytes::from(frame(&body))
}

fn le_u64(b: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(..8)?.try_into().ok()?))
}

/// The code and payload of the answer `body` from `peer`, or why it is none (truncated,
/// another version).
fn split_answer(body: &[u8], peer: NodeId) -> Result<(u8, &[u8]), String> {
    match body {
        [FORWARD_VERSION, code, rest @ ..] => Ok((*code, rest)),
        [version, _, ..] => Err(format!(
            "node {peer} answered in forwarding version {version} (this node speaks {FORWARD_VERSION})"
        )),
        _ => Err(format!("node {peer} sent a truncated forwarding answer")),
    }
}

/// Appends a "not leader" answer: the leader known (0 for none), then where it listens.
fn push_not_leader(body: &mut Vec<u8>, leader: Option<NodeId>, address: Option<String>) {
    body.push(NOT_LEADER);
    body.extend_from_slice(&leader.unwrap_or(0).to_le_bytes());
    body.extend_from_slice(address.unwrap_or_default().as_bytes());
}

/// The leader and its address of a "not leader" answer's payload.
fn parse_not_leader(rest: &[u8]) -> Option<(Option<NodeId>, Option<String>)> {
    let leader = le_u64(rest)?;
    let address = String::from_utf8_lossy(&rest[8..]).into_owned();
    Some((
        (leader != 0).then_some(leader),
        Some(address).filter(|a| !a.is_empty()),
    ))
}

/// What the follower's caller gets for the answer `body` from `leader`. Anything that is
/// not a valid answer leaves the outcome unknown.
pub(crate) fn decode_answer<R>(
    body: &[u8],
    leader: NodeId,
    codec: ResponseCodec<R>,
) -> Result<R, ProposeError> {
    let unknown = |m: String| Err(ProposeError::OutcomeUnknown(m));
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let (code, rest) = match split_answer(body, leader) {
        Ok(split) => split,
        Err(why) => return unknown(why),
    };
    match code {
        APPLIED => (codec.decode)(rest).map_or_else(
            || {
                unknown(format!(
                    "node {leader} sent a response that does not decode"
                ))
            },
            Ok,
        ),
        NOT_LEADER => match parse_not_leader(rest) {
            Some((leader, address)) => Err(ProposeError::NotLeader { leader, address }),
            None => unknown(format!("node {leader} sent a truncated forwarding answer")),
        },
        BUSY => Err(ProposeError::Busy(text(rest))),
        UNKNOWN => unknown(text(rest)),
        // The leader's end, not this node's: the command may have been appended.
        STOPPED => unknown(format!(
            "leader {leader} stopped before it answered ({}); retry",
            text(rest)
        )),
        // Refused before it was proposed: nothing was appended.
        REFUSED => Err(ProposeError::Busy(format!(
            "leader {leader} refused the forwarded proposal: {}",
            text(rest)
        ))),
        TOO_LARGE => match (le_u64(rest), rest.get(8..).and_then(le_u64)) {
            (Some(len), Some(max)) => Err(ProposeError::TooLarge {
                len: len as usize,
                max: max as usize,
            }),
            _ => unknown(format!("node {leader} sent a truncated forwarding answer")),
        },
        SHUTTING_DOWN => unknown(format!(
            "leader {leader} shut down before it answered; retry"
        )),
        c => unknown(format!("node {leader} sent unknown forwarding code {c}")),
    }
}

/// Sends `command` to `leader` and calls `done` with its answer (on a task of its own), or
/// with [`ProposeError::OutcomeUnknown`] once `replaced` closes (this node knows another
/// leader, or none) before the answer came.
pub(crate) fn spawn<S: StateMachine>(
    leader: NodeId,
    connection: quinn::Connection,
    command: Bytes,
    codec: ResponseCodec<S::Response>,
    replaced: smol::channel::Receiver<()>,
    done: Done<Result<S::Response, ProposeError>>,
    runtime: &crate::rt::Runtime,
) {
    runtime.spawn_detached(async move {
        let lost = |e: &dyn std::fmt::Display| {
            ProposeError::OutcomeUnknown(format!(
                "the connection to leader {leader} failed before it answered ({e}); retry"
            ))
        };
        let result = async {
            let (mut send, recv) = connection.open_bi().await.map_err(|e| lost(&e))?;
            send.write_all(&encode_request(&command))
                .await
                .map_err(|e| lost(&e))?;
            let _ = send.finish();
            let mut reader = FrameReader::new(recv);
            match reader.next(MAX_ANSWER).await {
                Ok(Some(body)) => decode_answer(&body, leader, codec),
                Ok(None) => Err(lost(&"no answer")),
                Err(e) => Err(lost(&e)),
            }
        };
        let replaced = async {
            let _ = replaced.recv().await; // never sent to: ends when closed
            Err(ProposeError::OutcomeUnknown(format!(
                "leader {leader} was replaced (or went silent) before it answered; retry"
            )))
        };
        done(smol::future::or(result, replaced).await);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codec() -> ResponseCodec<u64> {
        ResponseCodec {
            encode: |r| r.to_le_bytes().to_vec(),
            decode: |b| Some(u64::from_le_bytes(b.try_into().ok()?)),
        }
    }

    fn body(frame: &[u8]) -> &[u8] {
        let len = u32::from_le_bytes(frame[..4].try_into().unwrap()) as usize;
        assert_eq!(frame.len(), 4 + len);
        &frame[4..]
    }

    #[test]
    fn every_answer_round_trips() {
        let answers = [
            Ok(7),
            Err(ProposeError::NotLeader {
                leader: Some(3),
                address: Some("127.0.0.1:7003".into()),
            }),
            Err(ProposeError::NotLeader {
                leader: None,
                address: None,
            }),
            Err(ProposeError::Busy("full".into())),
            Err(ProposeError::OutcomeUnknown("lost".into())),
            Err(ProposeError::TooLarge { len: 9, max: 8 }),
        ];
        for a in answers {
            let f = encode_answer(a.clone(), Some(codec()));
            assert_eq!(decode_answer(body(&f), 2, codec()), a);
        }
        assert!(matches!(
            decode_answer(body(&encode_answer(Err(ProposeError::ShuttingDown), Some(codec()))), 2, codec()),
            Err(ProposeError::OutcomeUnknown(m)) if m.contains("shut down")
        ));
        assert!(matches!(
            decode_answer(body(&encode_answer(Err(ProposeError::Stopped("disk".into())), Some(codec()))), 2, codec()),
            Err(ProposeError::OutcomeUnknown(m)) if m.contains("stopped") && m.contains("disk")
        ));
        assert!(matches!(
            decode_answer(body(&encode_refusal("no codec")), 2, codec()),
            Err(ProposeError::Busy(m)) if m.contains("no codec")
        ));
    }

    #[test]
    fn member_requests_and_answers_round_trip_and_garbage_is_a_retry() {
        for r in [
            MemberRequest::Join("127.0.0.1:7004".into()),
            MemberRequest::Promote,
            MemberRequest::Leave,
            MemberRequest::Priority(200),
        ] {
            let f = encode_member_request(&r);
            assert_eq!(
                decode_request(&Bytes::copy_from_slice(body(&f))),
                Ok(Request::Member(r))
            );
        }
        for a in [
            Ok(()),
            Err(MembershipError::NotLeader {
                leader: Some(3),
                address: Some("127.0.0.1:7003".into()),
            }),
            Err(MembershipError::NotLeader {
                leader: None,
                address: None,
            }),
            Err(MembershipError::Retry("busy".into())),
        ] {
            let f = encode_member_answer(a.clone());
            assert_eq!(decode_member_answer(body(&f), 2), a);
        }
        let refused = encode_member_answer(Err(MembershipError::Refused("no".into())));
        assert!(matches!(
            decode_member_answer(body(&refused), 2),
            Err(MembershipError::Refused(m)) if m.contains("node 2") && m.contains("no")
        ));
        let good = encode_member_answer(Ok(()));
        let good = body(&good);
        for cut in 0..good.len() {
            assert!(matches!(
                decode_member_answer(&good[..cut], 2),
                Err(MembershipError::Retry(_))
            ));
        }
        for b in 0..=255u8 {
            let _ = decode_member_answer(&[FORWARD_VERSION, b, 1, 2, 3], 2);
            let _ = decode_request(&Bytes::copy_from_slice(&[FORWARD_VERSION, b, 1, 2, 3]));
        }
        assert!(decode_member_answer(&[FORWARD_VERSION, APPLIED, 1], 2).is_err());
    }

    #[test]
    fn the_postcard_codec_round_trips_and_refuses_garbage() {
        let codec = ResponseCodec::<Option<(u64, String)>>::postcard();
        for r in [
            None,
            Some((7, "n1".to_string())),
            Some((u64::MAX, String::new())),
        ] {
            let f = encode_answer(Ok(r.clone()), Some(codec));
            assert_eq!(decode_answer(body(&f), 2, codec), Ok(r));
        }
        let good = encode_answer(Ok(Some((7, "n1".to_string()))), Some(codec));
        let good = body(&good);
        for cut in 0..good.len() {
            let r = decode_answer(&good[..cut], 2, codec);
            assert!(
                matches!(r, Err(ProposeError::OutcomeUnknown(_))),
                "{cut}: {r:?}"
            );
        }
        let r = decode_answer(&[FORWARD_VERSION, APPLIED, 1, 7, 200, 200], 2, codec);
        assert!(matches!(r, Err(ProposeError::OutcomeUnknown(m)) if m.contains("does not decode")));
    }

    #[test]
    fn garbage_answers_leave_the_outcome_unknown_and_never_panic() {
        let good = encode_answer(Ok(7u64), Some(codec()));
        let good = body(&good);
        for cut in 0..good.len() {
            let r = decode_answer(&good[..cut], 2, codec());
            assert!(
                matches!(r, Err(ProposeError::OutcomeUnknown(_))),
                "{cut}: {r:?}"
            );
        }
        let mut newer = good.to_vec();
        newer[0] = FORWARD_VERSION + 1;
        assert!(matches!(
            decode_answer(&newer, 2, codec()),
            Err(ProposeError::OutcomeUnknown(m)) if m.contains("version 2")
        ));
        for b in 0..=255u8 {
            let _ = decode_answer(&[FORWARD_VERSION, b, 1, 2, 3], 2, codec());
        }
    }

    #[test]
    fn requests_of_another_version_or_kind_are_refused_clearly() {
        let f = encode_request(b"cmd");
        let ok = Bytes::copy_from_slice(body(&f));
        assert_eq!(
            decode_request(&ok),
            Ok(Request::Propose(Bytes::from_static(b"cmd")))
        );
        let err = |b: &[u8]| decode_request(&Bytes::copy_from_slice(b)).unwrap_err();
        assert!(err(&[2, 1, 0]).contains("version 2 is not spoken here"));
        assert!(err(&[1, KIND_PROMOTE, 0]).contains("bytes after it"));
        assert!(err(&[1, KIND_LEAVE, 0]).contains("bytes after it"));
        assert!(err(&[1, KIND_PRIORITY]).contains("one byte"));
        assert!(err(&[1, KIND_PRIORITY, 1, 2]).contains("one byte"));
        assert!(err(&[1, KIND_JOIN, 0xff]).contains("UTF-8"));
        assert!(err(&[1, 9]).contains("kind 9"));
        assert!(err(&[1]).contains("fewer than 2"));
        assert!(err(&[]).contains("fewer than 2"));
    }
}
