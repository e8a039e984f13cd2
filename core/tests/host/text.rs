//! The canonical text form of what nodes exchange and ask of their host, as transcripts
//! print it, and the parser that reads a message back (a transcript can inject one).
//!
//! `11@8` is index 11 of term 8. An entry is `11@8 noop`, `12@8 "x=1"` (a command; its
//! data as a string, or `0x..` when not printable; nothing when empty) or
//! `13@8 config(v=1,2,3 l=4)` (a configuration: `v` voters, `old` the outgoing voters of a
//! joint configuration, `l` learners).

use coracle::{
    AppendEntries, AppendEntriesResponse, Batch, Entries, Entry, EntryKind, HardState, Index,
    InstallSnapshot, InstallSnapshotResponse, Message, OwnedEntry, OwnedMessage, ReadIndex,
    ReadIndexResponse, RequestVote, RequestVoteResponse, SnapshotMeta, SnapshotWrite, Term,
    TimeoutNow,
};
use std::fmt::Write;

/// `index@term`.
pub fn at(index: Index, term: Term) -> String {
    format!("{index}@{term}")
}

/// Bytes as a quoted string when printable, else as hex.
pub fn bytes(data: &[u8]) -> String {
    let printable = data
        .iter()
        .all(|&b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\');
    if printable {
        format!("\"{}\"", String::from_utf8_lossy(data))
    } else {
        let mut s = String::from("0x");
        for b in data {
            let _ = write!(s, "{b:02x}");
        }
        s
    }
}

/// A configuration entry's data (or a snapshot's): `(v=1,2,3 old=1,2 l=4)`, ids in order;
/// `()` for the bootstrap members; hex when it does not decode.
pub fn config(data: &[u8]) -> String {
    let Some(mut members) = decode_config(data) else {
        return format!("({})", bytes(data));
    };
    members.sort();
    let list = |f: fn(&(u64, u8)) -> bool| {
        members
            .iter()
            .filter(|m| f(m))
            .map(|m| m.0.to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    let mut parts = Vec::new();
    for (name, flag) in [("v", 1u8), ("old", 2), ("l", 4)] {
        let ids = match flag {
            1 => list(|m| m.1 & 1 != 0),
            2 => list(|m| m.1 & 2 != 0),
            _ => list(|m| m.1 & 4 != 0),
        };
        if !ids.is_empty() {
            parts.push(format!("{name}={ids}"));
        }
    }
    format!("({})", parts.join(" "))
}

/// The members of an encoded configuration (the membership module's format: per member its
/// id, u64 little-endian, and a flag byte: 1 voter, 2 outgoing voter, 4 learner).
fn decode_config(data: &[u8]) -> Option<Vec<(u64, u8)>> {
    if !data.len().is_multiple_of(9) {
        return None;
    }
    data.chunks_exact(9)
        .map(|r| {
            let id = u64::from_le_bytes(r[..8].try_into().ok()?);
            (r[8] != 0 && r[8] & !7 == 0).then_some((id, r[8]))
        })
        .collect()
}

/// Encodes a configuration written as [`config`] prints it.
fn encode_config(text: &str) -> Result<Vec<u8>, String> {
    let inner = text
        .strip_prefix('(')
        .and_then(|t| t.strip_suffix(')'))
        .ok_or_else(|| format!("a configuration is (v=.. old=.. l=..), not {text}"))?;
    if let Some(hex) = inner.strip_prefix("0x") {
        return parse_hex(hex);
    }
    let mut members: Vec<(u64, u8)> = Vec::new();
    for part in inner.split_whitespace() {
        let (name, ids) = part
            .split_once('=')
            .ok_or_else(|| format!("bad configuration part {part}"))?;
        let flag = match name {
            "v" => 1,
            "old" => 2,
            "l" => 4,
            _ => return Err(format!("bad configuration part {part}")),
        };
        for id in ids.split(',') {
            let id: u64 = id.parse().map_err(|_| format!("bad node id {id}"))?;
            match members.iter_mut().find(|m| m.0 == id) {
                Some(m) => m.1 |= flag,
                None => members.push((id, flag)),
            }
        }
    }
    let mut out = Vec::new();
    for (id, flags) in members {
        out.extend_from_slice(&id.to_le_bytes());
        out.push(flags);
    }
    Ok(out)
}

/// The voters, outgoing voters and learners of a node's configuration, as [`config`] prints
/// them.
pub fn members(members: impl Iterator<Item = coracle::Member>) -> String {
    let mut m: Vec<_> = members.collect();
    m.sort_by_key(|m| m.id);
    let mut data = Vec::new();
    for m in m {
        data.extend_from_slice(&m.id.to_le_bytes());
        data.push(m.voter as u8 | (m.voter_outgoing as u8) << 1 | (m.learner as u8) << 2);
    }
    config(&data)
}

pub fn entry(e: &Entry<'_>) -> String {
    let id = at(e.index, e.term);
    match e.kind {
        EntryKind::Noop => format!("{id} noop"),
        EntryKind::Membership => format!("{id} config{}", config(e.data)),
        EntryKind::Command if e.data.is_empty() => id,
        EntryKind::Command => format!("{id} {}", bytes(e.data)),
    }
}

/// Entries as a list: `[11@8 noop, 12@8 "x"]`.
pub fn entries<'a>(entries: impl Iterator<Item = Entry<'a>>) -> String {
    let list: Vec<String> = entries.map(|e| entry(&e)).collect();
    format!("[{}]", list.join(", "))
}

pub fn snapshot_meta(meta: &SnapshotMeta) -> String {
    format!(
        "{} config{}",
        at(meta.index, meta.term),
        config(meta.config())
    )
}

pub fn hard_state(hs: &HardState) -> String {
    match hs.voted_for {
        Some(v) => format!("(term={} vote={v})", hs.current_term),
        None => format!("(term={} vote=none)", hs.current_term),
    }
}

/// A message, as sent: its kind and every field.
pub fn message(m: &Message<'_>) -> String {
    let kind = m.kind();
    match m {
        Message::RequestVote(r) => {
            let transfer = if r.leadership_transfer {
                " transfer"
            } else {
                ""
            };
            format!(
                "{kind} term={} last={}{transfer}",
                r.term,
                at(r.last_log_index, r.last_log_term)
            )
        }
        Message::RequestVoteResponse(r) => {
            let answer = if r.vote_granted {
                "granted"
            } else {
                "rejected"
            };
            format!("{kind} term={} {answer}", r.term)
        }
        Message::AppendEntries(a) => {
            let mut s = format!(
                "{kind} term={} prev={} commit={} round={}",
                a.term,
                at(a.prev_log_index, a.prev_log_term),
                a.leader_commit,
                a.round
            );
            if !a.entries.is_empty() {
                let _ = write!(s, " entries={}", entries(a.entries.iter()));
            }
            s
        }
        Message::AppendEntriesResponse(r) if r.success => format!(
            "{kind} term={} accept index={} round={}",
            r.term, r.index, r.round
        ),
        Message::AppendEntriesResponse(r) => format!(
            "{kind} term={} reject index={} hint-term={} hint-index={} round={}",
            r.term, r.index, r.hint_term, r.hint_index, r.round
        ),
        Message::TimeoutNow(t) => format!("{kind} term={}", t.term),
        Message::ReadIndex(r) => format!("{kind} term={} id={}", r.term, r.id),
        Message::ReadIndexResponse(r) => {
            let answer = if r.success { "ok" } else { "refused" };
            format!(
                "{kind} term={} id={} index={} {answer}",
                r.term, r.id, r.index
            )
        }
        Message::InstallSnapshot(i) => {
            let done = if i.done { " done" } else { "" };
            format!(
                "{kind} term={} snap={} offset={} config{} data={}{done}",
                i.term,
                at(i.last_included_index, i.last_included_term),
                i.offset,
                config(i.config),
                bytes(i.data)
            )
        }
        Message::InstallSnapshotResponse(r) => {
            let done = if r.done { " done" } else { "" };
            format!(
                "{kind} term={} snap={} next={}{done}",
                r.term, r.last_included_index, r.next_offset
            )
        }
        other => format!("{other:?}"),
    }
}

/// What a Persist batch writes, in the contract's order.
pub fn persist(batch: &Batch<'_>) -> String {
    let mut s = format!("persist #{}", batch.token.0);
    if let Some(hs) = &batch.hard_state {
        let _ = write!(s, " hard-state={}", hard_state(hs));
    }
    if let Some(c) = &batch.snapshot_chunk {
        let _ = write!(
            s,
            " chunk=(snap={} offset={} data={})",
            at(c.meta.index, c.meta.term),
            c.offset,
            bytes(c.data)
        );
    }
    match &batch.snapshot {
        Some(SnapshotWrite::Installed(m)) => {
            let _ = write!(s, " snapshot=installed({})", snapshot_meta(m));
        }
        Some(SnapshotWrite::Taken(m)) => {
            let _ = write!(s, " snapshot=taken({})", snapshot_meta(m));
        }
        None => {}
    }
    if let Some((index, term)) = batch.reset {
        let _ = write!(s, " reset-after={}", at(index, term));
    }
    if let Some(from) = batch.truncate_from {
        let _ = write!(s, " truncate-from={from}");
    }
    if !batch.entries.is_empty() {
        let _ = write!(s, " entries={}", entries(batch.entries.iter()));
    }
    if let Some(through) = batch.compact_through {
        let _ = write!(s, " compact-through={through}");
    }
    s
}

// ----- reading a message back ---------------------------------------------------------

/// Splits a line into tokens: words, `key=value` pairs, quoted strings (which may hold
/// spaces) and bracketed or parenthesised groups (which may hold spaces and commas).
pub fn tokens(line: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut depth = 0i32;
    let mut quoted = false;
    for c in line.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                cur.push(c);
            }
            '[' | '(' if !quoted => {
                depth += 1;
                cur.push(c);
            }
            ']' | ')' if !quoted => {
                depth -= 1;
                cur.push(c);
            }
            c if c.is_whitespace() && !quoted && depth == 0 => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if quoted || depth != 0 {
        return Err(format!("unbalanced quotes or brackets in {line:?}"));
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    Ok(out)
}

fn parse_hex(hex: &str) -> Result<Vec<u8>, String> {
    if !hex.len().is_multiple_of(2) {
        return Err(format!("odd hex length: {hex}"));
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).map_err(|_| format!("bad hex {hex}")))
        .collect()
}

/// Bytes written as [`bytes`] prints them.
pub fn parse_bytes(text: &str) -> Result<Vec<u8>, String> {
    if let Some(s) = text.strip_prefix('"').and_then(|t| t.strip_suffix('"')) {
        return Ok(s.as_bytes().to_vec());
    }
    match text.strip_prefix("0x") {
        Some(hex) => parse_hex(hex),
        None => Err(format!("bytes are \"text\" or 0xhex, not {text}")),
    }
}

/// `index@term`.
pub fn parse_at(text: &str) -> Result<(Index, Term), String> {
    let (i, t) = text
        .split_once('@')
        .ok_or_else(|| format!("expected index@term, not {text}"))?;
    let n = |s: &str| s.parse().map_err(|_| format!("bad number in {text}"));
    Ok((n(i)?, n(t)?))
}

fn parse_entry(text: &str) -> Result<OwnedEntry, String> {
    let (id, rest) = text.split_once(' ').unwrap_or((text, ""));
    let (index, term) = parse_at(id)?;
    let (kind, data) = match rest {
        "" => (EntryKind::Command, Vec::new()),
        "noop" => (EntryKind::Noop, Vec::new()),
        r if r.starts_with("config") => (EntryKind::Membership, encode_config(&r[6..])?),
        r => (EntryKind::Command, parse_bytes(r)?),
    };
    Ok(OwnedEntry {
        index,
        term,
        kind,
        data,
    })
}

/// Splits `[a, b]` at the commas outside quotes and brackets.
fn parse_entries(text: &str) -> Result<Vec<OwnedEntry>, String> {
    let inner = text
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .ok_or_else(|| format!("entries are [..], not {text}"))?;
    let mut out = Vec::new();
    let (mut depth, mut quoted, mut start) = (0, false, 0);
    for (i, c) in inner.char_indices() {
        match c {
            '"' => quoted = !quoted,
            '(' if !quoted => depth += 1,
            ')' if !quoted => depth -= 1,
            ',' if !quoted && depth == 0 => {
                out.push(parse_entry(inner[start..i].trim())?);
                start = i + 1;
            }
            _ => {}
        }
    }
    if !inner.trim().is_empty() {
        out.push(parse_entry(inner[start..].trim())?);
    }
    Ok(out)
}

/// A message written as [`message`] prints it.
pub fn parse_message(text: &str) -> Result<OwnedMessage, String> {
    let tokens = tokens(text)?;
    let (kind, fields) = tokens.split_first().ok_or("an empty message")?;
    let field = |name: &str| -> Result<&str, String> {
        fields
            .iter()
            .find_map(|t| t.strip_prefix(name)?.strip_prefix('='))
            .ok_or_else(|| format!("{kind} needs {name}="))
    };
    let flag = |name: &str| fields.iter().any(|t| t == name);
    let num = |name: &str| -> Result<u64, String> {
        field(name)?
            .parse()
            .map_err(|_| format!("{name} is a number"))
    };
    let config_field = || -> Result<Vec<u8>, String> {
        match fields.iter().find_map(|t| t.strip_prefix("config")) {
            Some(c) => encode_config(c),
            None => Ok(Vec::new()),
        }
    };
    let term = num("term")?;
    let (pre_vote, kind) = match kind.as_str() {
        "PreVote" => (true, "RequestVote"),
        "PreVoteResponse" => (true, "RequestVoteResponse"),
        "Heartbeat" => (false, "AppendEntries"),
        k => (false, k),
    };
    let owned = |m: Message<'_>| OwnedMessage::from(&m);
    Ok(match kind {
        "RequestVote" => {
            let (last_log_index, last_log_term) = parse_at(field("last")?)?;
            owned(Message::RequestVote(RequestVote {
                term,
                last_log_index,
                last_log_term,
                pre_vote,
                leadership_transfer: flag("transfer"),
            }))
        }
        "RequestVoteResponse" => owned(Message::RequestVoteResponse(RequestVoteResponse {
            term,
            vote_granted: flag("granted"),
            pre_vote,
        })),
        "AppendEntries" => {
            let (prev_log_index, prev_log_term) = parse_at(field("prev")?)?;
            let list = match field("entries") {
                Ok(e) => parse_entries(e)?,
                Err(_) => Vec::new(),
            };
            let borrowed: Vec<Entry<'_>> = list.iter().map(|e| e.as_entry()).collect();
            owned(Message::AppendEntries(AppendEntries {
                term,
                prev_log_index,
                prev_log_term,
                leader_commit: num("commit")?,
                round: num("round")?,
                entries: Entries::from_slice(&borrowed),
            }))
        }
        "AppendEntriesResponse" => {
            let success = flag("accept");
            let hint = |name| if success { Ok(0) } else { num(name) };
            owned(Message::AppendEntriesResponse(AppendEntriesResponse {
                term,
                success,
                index: num("index")?,
                hint_term: hint("hint-term")?,
                hint_index: hint("hint-index")?,
                round: num("round")?,
            }))
        }
        "TimeoutNow" => owned(Message::TimeoutNow(TimeoutNow { term })),
        "ReadIndex" => owned(Message::ReadIndex(ReadIndex {
            term,
            id: num("id")?,
        })),
        "ReadIndexResponse" => owned(Message::ReadIndexResponse(ReadIndexResponse {
            term,
            id: num("id")?,
            index: num("index")?,
            success: flag("ok"),
        })),
        "InstallSnapshot" => {
            let (last_included_index, last_included_term) = parse_at(field("snap")?)?;
            let config = config_field()?;
            let data = parse_bytes(field("data")?)?;
            owned(Message::InstallSnapshot(InstallSnapshot {
                term,
                last_included_index,
                last_included_term,
                offset: num("offset")?,
                done: flag("done"),
                config: &config,
                data: &data,
            }))
        }
        "InstallSnapshotResponse" => {
            owned(Message::InstallSnapshotResponse(InstallSnapshotResponse {
                term,
                last_included_index: num("snap")?,
                next_offset: num("next")?,
                done: flag("done"),
            }))
        }
        other => return Err(format!("unknown message kind {other}")),
    })
}
