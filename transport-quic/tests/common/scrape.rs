//! Scrapes of a node's metrics endpoint over a plain TCP GET, and a strict parser of the
//! OpenMetrics text it answers.

use super::Setup;
use coracle_quic::config::NodeConfig;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Node `id`'s configuration with metrics on a free port (plus `extra` TOML).
pub fn with_metrics(setup: &Setup, id: u64, extra: &str) -> NodeConfig {
    let text = setup.config_text(id) + extra + "[metrics]\nlisten = \"127.0.0.1:0\"\n";
    NodeConfig::parse(&text, setup.path()).unwrap()
}

/// One sample: metric name with its labels (sorted, as `name{a="x",b="y"}`), and value.
pub type Samples = BTreeMap<String, f64>;

/// Sends `request` and returns everything the server sent back before closing (or
/// stalling for 5 s).
pub fn exchange(addr: SocketAddr, request: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // The server may close before reading it all (a head too large): fine.
    let _ = s.write_all(request);
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// `GET /metrics` with `Connection: close`: the status code, headers and body (`None`: the
/// connection was closed without an answer).
pub fn scrape_raw(addr: SocketAddr) -> Option<(u16, String, String)> {
    let raw = exchange(
        addr,
        b"GET /metrics HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n",
    );
    if raw.is_empty() {
        return None;
    }
    let text = String::from_utf8(raw).expect("the answer is UTF-8");
    let (head, body) = text.split_once("\r\n\r\n").expect("a head and a body");
    let code = head[9..12].parse().unwrap();
    Some((code, head.to_string(), body.to_string()))
}

/// Parses OpenMetrics text strictly: every line a `# TYPE`/`# HELP`/`# UNIT` comment, a
/// sample `name{labels} value`, or the final `# EOF`; every sample's family declared by a
/// `# TYPE` before it; nothing after `# EOF`.
pub fn parse(body: &str) -> Result<Samples, String> {
    let mut samples = Samples::new();
    let mut families: Vec<(String, String)> = Vec::new();
    let mut eof = false;
    for (n, line) in body.lines().enumerate() {
        let bad = |why: &str| format!("line {}: {why}: {line:?}", n + 1);
        if eof {
            return Err(bad("after # EOF"));
        }
        if line == "# EOF" {
            eof = true;
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (kind, name) = (parts.next().unwrap(), parts.next().ok_or(bad("no name"))?);
            match kind {
                "TYPE" => {
                    let t = parts.next().ok_or(bad("no type"))?;
                    let known = ["counter", "gauge", "histogram", "info", "unknown"];
                    if !known.contains(&t) {
                        return Err(bad("unknown type"));
                    }
                    families.push((name.to_string(), t.to_string()));
                }
                "HELP" | "UNIT" => {}
                _ => return Err(bad("unknown comment")),
            }
            continue;
        }
        let (series, value) = line.rsplit_once(' ').ok_or(bad("no value"))?;
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            v => v.parse().map_err(|_| bad("value is no number"))?,
        };
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => {
                let inner = rest.strip_suffix('}').ok_or(bad("labels not closed"))?;
                let mut labels: Vec<&str> = inner.split(',').collect();
                for l in &labels {
                    let (k, v) = l.split_once('=').ok_or(bad("label without ="))?;
                    let ok_key =
                        !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                    if !(ok_key && v.len() >= 2 && v.starts_with('"') && v.ends_with('"')) {
                        return Err(bad("bad label"));
                    }
                }
                labels.sort_unstable();
                (name, format!("{{{}}}", labels.join(",")))
            }
            None => (series, String::new()),
        };
        if !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
        {
            return Err(bad("bad metric name"));
        }
        let declared = families.iter().any(|(f, t)| {
            name == f
                || match t.as_str() {
                    "counter" => name == format!("{f}_total") || name == format!("{f}_created"),
                    "histogram" => ["_bucket", "_sum", "_count", "_created"]
                        .iter()
                        .any(|s| name == format!("{f}{s}")),
                    "info" => name == format!("{f}_info"),
                    _ => false,
                }
        });
        if !declared {
            return Err(bad("sample of an undeclared family"));
        }
        if samples.insert(format!("{name}{labels}"), value).is_some() {
            return Err(bad("the same series twice"));
        }
    }
    if !eof {
        return Err("no # EOF at the end".into());
    }
    Ok(samples)
}

pub fn scrape(addr: SocketAddr) -> Samples {
    let (code, head, body) = scrape_raw(addr).expect("an answer");
    assert_eq!(code, 200, "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/openmetrics-text"),
        "{head}"
    );
    parse(&body).unwrap_or_else(|e| panic!("{e}\n{body}"))
}

/// The value of `series` (`name{labels}` with the node label included).
pub fn get(s: &Samples, series: &str) -> f64 {
    *s.get(series)
        .unwrap_or_else(|| panic!("no {series} in {:#?}", s.keys().collect::<Vec<_>>()))
}
