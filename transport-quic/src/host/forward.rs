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
//! the caller gets [`ProposeError::OutcomeUnknown`]: the command may be applied, and a retry
//! is a new command (deduplicate it in the state machine, as the KV store's client
//! sessions do: the session and sequence number are in the command's bytes).

use super::handle::{Done, ProposeError};
use super::StateMachine;
use crate::transport::FrameReader;
use bytes::Bytes;
use coracle::NodeId;

/// The version of the forwarding frames this build speaks.
pub const FORWARD_VERSION: u8 = 1;
/// The request's kind: a proposal.
const KIND_PROPOSE: u8 = 1;
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
}

/// Why a request is refused before it is proposed (answered with code 5).
pub(crate) fn decode_request(body: &Bytes) -> Result<Request, String> {
    let (version, kind) = match body.get(..2) {
        Some(&[v, k]) => (v, k),
        _ => return Err("a forwarded request of fewer than 2 bytes".into()),
    };
    match (version, kind) {
        (FORWARD_VERSION, KIND_PROPOSE) => Ok(Request::Propose(body.slice(2..))),
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
            body.push(NOT_LEADER);
            body.extend_from_slice(&leader.unwrap_or(0).to_le_bytes());
            body.extend_from_slice(address.unwrap_or_default().as_bytes());
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

/// What the follower's caller gets for the answer `body` from `leader`. Anything that is
/// not a valid answer leaves the outcome unknown.
pub(crate) fn decode_answer<R>(
    body: &[u8],
    leader: NodeId,
    codec: ResponseCodec<R>,
) -> Result<R, ProposeError> {
    let unknown = |m: String| Err(ProposeError::OutcomeUnknown(m));
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let (version, code, rest) = match body {
        [v, c, rest @ ..] => (*v, *c, rest),
        _ => return unknown(format!("node {leader} sent a truncated forwarding answer")),
    };
    if version != FORWARD_VERSION {
        return unknown(format!(
            "node {leader} answered in forwarding version {version} (this node speaks {FORWARD_VERSION})"
        ));
    }
    match code {
        APPLIED => (codec.decode)(rest).map_or_else(
            || {
                unknown(format!(
                    "node {leader} sent a response that does not decode"
                ))
            },
            Ok,
        ),
        NOT_LEADER => match le_u64(rest) {
            Some(l) => Err(ProposeError::NotLeader {
                leader: (l != 0).then_some(l),
                address: Some(text(&rest[8..])).filter(|a| !a.is_empty()),
            }),
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

/// Sends `command` to `leader` and calls `done` with its answer (on a task of its own).
pub(crate) fn spawn<S: StateMachine>(
    leader: NodeId,
    connection: quinn::Connection,
    command: Bytes,
    codec: ResponseCodec<S::Response>,
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
        }
        .await;
        done(result);
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
        assert!(err(&[1, 9]).contains("kind 9"));
        assert!(err(&[1]).contains("fewer than 2"));
        assert!(err(&[]).contains("fewer than 2"));
    }
}
