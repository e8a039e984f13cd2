//! What the page calls: a [`Model`] wrapping the [`Timeline`], its inputs as the page's
//! buttons and fields give them, and its state as JSON ([`crate::view`]).

use crate::json::Json;
use crate::scenarios::{self, SCENARIOS};
use crate::sim::{SetupError, Time};
use crate::timeline::{parse_nodes, parse_seed, Action, InputError, Setup, Timeline};
use crate::view;
use wasm_bindgen::prelude::*;

/// The model the page drives.
#[wasm_bindgen]
pub struct Model {
    timeline: Timeline,
}

fn js_error(e: InputError) -> JsError {
    JsError::new(&e.to_string())
}

/// Milliseconds from the page to microseconds, refusing what is not a time.
fn micros(ms: f64) -> Time {
    if ms.is_finite() && ms > 0.0 {
        (ms * 1_000.0).min(u64::MAX as f64 / 2.0) as Time
    } else {
        0
    }
}

#[wasm_bindgen]
impl Model {
    /// A free run: `nodes` voters from `seed` (the page's fields, as typed).
    #[wasm_bindgen(constructor)]
    pub fn new(seed: &str, nodes: &str) -> Result<Model, JsError> {
        let seed = parse_seed(seed).map_err(js_error)?;
        let nodes = parse_nodes(nodes).map_err(js_error)?;
        let timeline = Timeline::new(Setup::Free { seed, nodes }).map_err(js_error)?;
        Ok(Model { timeline })
    }

    /// The scenario `id` from `seed`.
    pub fn scenario(id: &str, seed: &str) -> Result<Model, JsError> {
        let seed = parse_seed(seed).map_err(js_error)?;
        let scenario = scenarios::find(id).ok_or_else(|| {
            js_error(InputError::Setup(SetupError::UnknownScenario(
                id.to_string(),
            )))
        })?;
        let timeline = Timeline::new(Setup::Scenario {
            id: scenario.id,
            seed,
        })
        .map_err(js_error)?;
        Ok(Model { timeline })
    }

    /// The scenarios, as JSON: `[{"id", "title", "summary"}]`.
    pub fn scenarios() -> String {
        let mut j = Json::new();
        j.begin_array();
        for s in &SCENARIOS {
            j.begin_object();
            j.key("id").string(s.id);
            j.key("title").string(s.title);
            j.key("summary").string(s.summary);
            j.end_object();
        }
        j.end_array();
        j.finish()
    }

    /// Moves simulated time on by `ms` milliseconds.
    pub fn advance(&mut self, ms: f64) {
        self.timeline.advance(micros(ms));
    }

    /// One message delivery or timer; false if nothing is left to happen.
    pub fn step(&mut self) -> bool {
        self.timeline.step()
    }

    /// Goes to simulated time `ms` (milliseconds), back or forward.
    pub fn seek(&mut self, ms: f64) {
        self.timeline.seek(micros(ms));
    }

    /// Crashes or restarts node `id`; says what happened.
    pub fn toggle_node(&mut self, id: u32) -> String {
        self.timeline.act(Action::ToggleNode(id.into()))
    }

    /// Cuts or heals the one-way link `from -> to`; says what happened.
    pub fn toggle_link(&mut self, from: u32, to: u32) -> String {
        self.timeline
            .act(Action::ToggleLink(from.into(), to.into()))
    }

    /// Heals every link.
    pub fn heal(&mut self) -> String {
        self.timeline.act(Action::HealAll)
    }

    /// A client write to the leader; says where it went.
    pub fn write(&mut self) -> String {
        self.timeline.act(Action::Write)
    }

    /// The state to draw, as JSON (see [`crate::view`]).
    pub fn state(&self) -> String {
        view::render(&self.timeline)
    }
}
