//! Just enough of a JSON writer for the state the page reads once a frame: objects,
//! arrays, strings, whole numbers, booleans and null, with commas placed for the caller.
//! (A few dozen lines instead of serde_json in the wasm module.)

use std::fmt::Write as _;

/// Writes one JSON value into a string.
#[derive(Default)]
pub struct Json {
    out: String,
    /// Per open object or array: whether a value was written in it yet.
    open: Vec<bool>,
    /// A key was just written: the value follows without a comma.
    after_key: bool,
}

impl Json {
    /// An empty writer.
    pub fn new() -> Json {
        Json::default()
    }

    /// The text written.
    pub fn finish(self) -> String {
        self.out
    }

    fn separate(&mut self) {
        if self.after_key {
            self.after_key = false;
            return;
        }
        if let Some(started) = self.open.last_mut() {
            if *started {
                self.out.push(',');
            }
            *started = true;
        }
    }

    /// Opens an object.
    pub fn begin_object(&mut self) -> &mut Self {
        self.separate();
        self.out.push('{');
        self.open.push(false);
        self
    }

    /// Closes the innermost object.
    pub fn end_object(&mut self) -> &mut Self {
        self.open.pop();
        self.out.push('}');
        self
    }

    /// Opens an array.
    pub fn begin_array(&mut self) -> &mut Self {
        self.separate();
        self.out.push('[');
        self.open.push(false);
        self
    }

    /// Closes the innermost array.
    pub fn end_array(&mut self) -> &mut Self {
        self.open.pop();
        self.out.push(']');
        self
    }

    /// A key of the current object; its value comes next.
    pub fn key(&mut self, key: &str) -> &mut Self {
        self.separate();
        self.write_string(key);
        self.out.push(':');
        self.after_key = true;
        self
    }

    /// A whole number. Numbers above 2^53 lose precision in JavaScript: write those as
    /// strings.
    pub fn number(&mut self, n: u64) -> &mut Self {
        self.separate();
        let _ = write!(self.out, "{n}");
        self
    }

    /// A fraction from 0 to 1, with three decimals (written without the float formatting
    /// of `core::fmt`, which would double the module's formatting code).
    pub fn fraction(&mut self, x: f64) -> &mut Self {
        self.separate();
        let thousandths = if x.is_finite() {
            (x.clamp(0.0, 1.0) * 1000.0).round() as u32
        } else {
            0
        };
        let _ = write!(self.out, "{}.{:03}", thousandths / 1000, thousandths % 1000);
        self
    }

    /// A string.
    pub fn string(&mut self, s: &str) -> &mut Self {
        self.separate();
        self.write_string(s);
        self
    }

    /// A boolean.
    pub fn boolean(&mut self, b: bool) -> &mut Self {
        self.separate();
        self.out.push_str(if b { "true" } else { "false" });
        self
    }

    /// null.
    pub fn null(&mut self) -> &mut Self {
        self.separate();
        self.out.push_str("null");
        self
    }

    /// A number, or null.
    pub fn optional(&mut self, n: Option<u64>) -> &mut Self {
        match n {
            Some(n) => self.number(n),
            None => self.null(),
        }
    }

    fn write_string(&mut self, s: &str) {
        self.out.push('"');
        for c in s.chars() {
            match c {
                '"' => self.out.push_str("\\\""),
                '\\' => self.out.push_str("\\\\"),
                '\n' => self.out.push_str("\\n"),
                c if (c as u32) < 0x20 => {
                    let _ = write!(self.out, "\\u{:04x}", c as u32);
                }
                c => self.out.push(c),
            }
        }
        self.out.push('"');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_nested_values_that_parse() {
        let mut j = Json::new();
        j.begin_object();
        j.key("a").number(1);
        j.key("b")
            .begin_array()
            .string("x\"\\\n\u{1}é")
            .null()
            .boolean(true)
            .end_array();
        j.key("c").begin_object().end_object();
        j.key("d")
            .begin_array()
            .begin_array()
            .number(2)
            .end_array()
            .end_array();
        j.key("e").fraction(0.5).key("f").fraction(f64::NAN);
        j.key("i").fraction(1.0).key("k").fraction(0.0004);
        j.key("g").optional(None).key("h").optional(Some(3));
        j.end_object();
        let text = j.finish();
        let parsed: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            parsed,
            serde_json::json!({"a":1,"b":["x\"\\\n\u{1}é",null,true],"c":{},"d":[[2]],
                "e":0.5,"f":0.0,"g":null,"h":3,"i":1.0,"k":0.0})
        );
    }
}
