//! The state the page draws, as one JSON text a frame: the nodes (role, term, vote,
//! election timer, log, commit and applied, the leader's progress per follower), the cut
//! links, every message in flight, the messages just lost, the event log and the
//! scenario's narration. Times are microseconds of simulated time.

use crate::host::NodeView;
use crate::json::Json;
use crate::scenarios;
use crate::sim::{Sim, HEARTBEAT_TICKS, LATENCY, TICK};
use crate::timeline::Timeline;

/// Log entries sent per node: the last ones of the longest log.
pub const LOG_WINDOW: u64 = 28;

/// The page's state of `timeline`.
pub fn render(timeline: &Timeline) -> String {
    let sim = timeline.sim();
    let nodes = sim.nodes();
    let mut j = Json::new();
    j.begin_object();
    j.key("t").number(sim.now());
    j.key("end").number(timeline.furthest());
    j.key("events").number(sim.events());
    j.key("seed").string(&timeline.setup().seed().to_string());
    j.key("n").number(nodes.len() as u64);
    j.key("tick").number(TICK);
    j.key("heartbeat").number(TICK * HEARTBEAT_TICKS as u64);
    j.key("latency").number(LATENCY.1);
    j.key("preVote").boolean(sim.options().node.pre_vote);
    j.key("checkQuorum")
        .boolean(sim.options().node.check_quorum);
    write_nodes(&mut j, sim, &nodes);
    write_links(&mut j, sim);
    write_messages(&mut j, sim);
    write_scenario(&mut j, timeline);
    j.key("notes").begin_array();
    for note in sim.notes() {
        j.begin_array()
            .number(note.at)
            .string(&note.text)
            .end_array();
    }
    j.end_array();
    j.key("sent").begin_array();
    for (kind, count) in sim.sent_by_kind() {
        j.begin_array().string(kind).number(*count).end_array();
    }
    j.end_array();
    j.end_object();
    j.finish()
}

fn write_nodes(j: &mut Json, sim: &Sim, nodes: &[NodeView]) {
    let longest = nodes
        .iter()
        .map(|v| v.first + v.log.len() as u64 - 1)
        .max()
        .unwrap_or(0);
    let window_start = longest.saturating_sub(LOG_WINDOW - 1).max(1);
    j.key("from").number(window_start);
    j.key("window").number(LOG_WINDOW);
    j.key("nodes").begin_array();
    for (i, v) in nodes.iter().enumerate() {
        let id = i as u64 + 1;
        j.begin_object();
        j.key("id").number(id);
        j.key("up").boolean(v.up);
        j.key("role")
            .string(if v.up { v.role.name() } else { "down" });
        j.key("term").number(v.term);
        j.key("vote").optional(v.voted_for);
        j.key("leader").optional(v.leader);
        j.key("commit").number(v.commit);
        j.key("applied").number(v.applied);
        j.key("snapshot").number(v.snapshot);
        j.key("first").number(v.first);
        j.key("last").number(v.first + v.log.len() as u64 - 1);
        j.key("member").string(v.membership.name());
        j.key("state").string(&v.state);
        j.key("timer");
        match sim.election_timer(id) {
            Some((set, fires)) => {
                j.begin_array().number(set).number(fires).end_array();
            }
            None => {
                j.null();
            }
        }
        // Entries from the window's start: [term, kind] each.
        j.key("log").begin_array();
        let skip = window_start.saturating_sub(v.first) as usize;
        for e in v.log.iter().skip(skip) {
            j.begin_array()
                .number(e.term)
                .string(e.kind.encode_utf8(&mut [0; 4]))
                .end_array();
        }
        j.end_array();
        j.key("logFrom").number(v.first.max(window_start));
        j.key("progress").begin_array();
        for p in &v.progress {
            j.begin_array()
                .number(p.peer)
                .number(p.next)
                .number(p.matched)
                .string(p.state)
                .end_array();
        }
        j.end_array();
        j.end_object();
    }
    j.end_array();
}

fn write_links(j: &mut Json, sim: &Sim) {
    let n = sim.len() as u64;
    j.key("cut").begin_array();
    for from in 1..=n {
        for to in 1..=n {
            if from != to && !sim.link_up(from, to) {
                j.begin_array().number(from).number(to).end_array();
            }
        }
    }
    j.end_array();
}

fn write_messages(j: &mut Json, sim: &Sim) {
    j.key("msgs").begin_array();
    for f in sim.flights() {
        j.begin_object();
        j.key("id").number(f.id);
        j.key("from").number(f.from);
        j.key("to").number(f.to);
        j.key("kind").string(f.info.kind);
        j.key("term").number(f.info.term);
        j.key("sent").number(f.sent);
        j.key("arrive").number(f.arrive);
        j.key("ok");
        match f.info.ok {
            Some(ok) => j.boolean(ok),
            None => j.null(),
        };
        j.key("entries").begin_array();
        for &t in &f.info.entries {
            j.number(t);
        }
        j.end_array();
        j.key("text").string(&f.text());
        j.end_object();
    }
    j.end_array();
    j.key("lost").begin_array();
    for l in sim.lost() {
        j.begin_object();
        j.key("id").number(l.id);
        j.key("from").number(l.from);
        j.key("to").number(l.to);
        j.key("kind").string(l.kind);
        j.key("at").fraction(l.at);
        j.end_object();
    }
    j.end_array();
}

fn write_scenario(j: &mut Json, timeline: &Timeline) {
    j.key("scenario");
    let (Some(id), Some(script)) = (timeline.setup().scenario(), timeline.sim().script()) else {
        j.null();
        return;
    };
    j.begin_object();
    j.key("id").string(id);
    if let Some(s) = scenarios::find(id) {
        j.key("title").string(s.title);
    }
    j.key("lines").begin_array();
    for (at, line) in script.lines() {
        j.begin_array().number(*at).string(line).end_array();
    }
    j.end_array();
    j.key("done").boolean(script.outcome().is_some());
    j.key("ok");
    match script.outcome() {
        Some(Ok(())) => j.boolean(true),
        Some(Err(_)) => j.boolean(false),
        None => j.null(),
    };
    if let Some(Err(e)) = script.outcome() {
        j.key("error").string(e);
    }
    j.end_object();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::timeline::{Action, Setup};

    #[test]
    fn the_state_is_json_with_what_the_page_draws() {
        let mut t = Timeline::new(Setup::Free { seed: 3, nodes: 5 }).unwrap();
        t.advance(800_000);
        t.act(Action::Write);
        t.act(Action::ToggleLink(1, 2));
        t.advance(5_000);
        let state: serde_json::Value = serde_json::from_str(&render(&t)).unwrap();
        assert_eq!(state["n"], 5);
        assert_eq!(state["seed"], "3");
        assert_eq!(state["nodes"].as_array().unwrap().len(), 5);
        let leaders: Vec<&serde_json::Value> = state["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|n| n["role"] == "leader")
            .collect();
        assert_eq!(leaders.len(), 1);
        assert_eq!(leaders[0]["progress"].as_array().unwrap().len(), 4);
        assert!(!state["msgs"].as_array().unwrap().is_empty());
        assert_eq!(state["cut"], serde_json::json!([[1, 2]]));
        assert!(state["scenario"].is_null());
    }

    #[test]
    fn a_scenario_brings_its_narration() {
        let mut t = Timeline::new(Setup::Scenario {
            id: "leader-crash",
            seed: 1,
        })
        .unwrap();
        t.advance(6_000_000);
        let state: serde_json::Value = serde_json::from_str(&render(&t)).unwrap();
        assert_eq!(state["scenario"]["id"], "leader-crash");
        assert_eq!(state["scenario"]["done"], true);
        assert_eq!(state["scenario"]["ok"], true);
        assert!(state["scenario"]["lines"].as_array().unwrap().len() >= 5);
    }
}
