//! `coracle bench`: closed-loop clients against a cluster, throughput and latency
//! percentiles from HDR histograms, and the latency distribution as an SVG plot.
//!
//! Without `--nodes` it starts its own cluster of `coracle node` processes on 127.0.0.1
//! (the same as `coracle demo`: fsync on, default timeouts) and removes it afterwards.
//! Each of the `--clients` workers sends one request, waits for the answer, and sends the
//! next (a closed loop: the latency of a request includes no queueing before it was sent,
//! so the percentiles are those of the service, not of an open-loop arrival process).
//! Only the requests that complete inside the measured window (after the warm-up) count.

use crate::demo::cluster::{poll, Cluster, Options, CLIENT, ELECTION_TIMEOUT_MS};
use crate::Error;
use clap::{Args, ValueEnum};
use coracle_quic::client::ClientEndpoint;
use coracle_quic::protocol::{Consistency, MAX_CLIENT_FRAME};
use coracle_quic::tls::Credentials;
use hdrhistogram::Histogram;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How fresh the benchmark's reads are.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum ReadConsistency {
    /// ReadIndex through the leader.
    Linearizable,
    /// The leader's lease.
    Lease,
    /// Any node's local state.
    Stale,
}

/// Options of `coracle bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Concurrent clients (each waits for its answer before sending the next request).
    #[arg(long, short = 'c', default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub clients: u32,
    /// QUIC connections the clients share (default: one per client).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub connections: Option<u32>,
    /// Bytes per value written (at most the largest client request, 16 MiB).
    #[arg(long, default_value_t = 256, value_parser = value_size)]
    pub value_size: usize,
    /// Fraction of requests that are reads (0 = only writes, 1 = only reads).
    #[arg(long, default_value_t = 0.0)]
    pub reads: f64,
    /// How fresh the reads are.
    #[arg(long, value_enum, default_value = "linearizable")]
    pub consistency: ReadConsistency,
    /// Number of distinct keys.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub keys: u64,
    /// Seconds measured (after the warm-up, more than 0, at most a day); ignored with
    /// --count.
    #[arg(long, default_value_t = 10.0, value_parser = seconds)]
    pub duration: f64,
    /// Measure this many requests instead of a duration.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,
    /// Seconds of warm-up, not measured (at most a day).
    #[arg(long, default_value_t = 2.0, value_parser = seconds)]
    pub warmup: f64,
    /// Write the latency distribution as an SVG plot to this file.
    #[arg(long)]
    pub svg: Option<PathBuf>,
    /// An existing cluster's node addresses (comma-separated); without it the bench
    /// starts a local cluster of processes.
    #[arg(long, value_delimiter = ',')]
    pub nodes: Vec<SocketAddr>,
    /// With --nodes: directory of ca.pem and the client certificate.
    #[arg(long, default_value = "certs")]
    pub certs: PathBuf,
    /// With --nodes: the client name (client-NAME.pem/.key or admin-NAME.pem/.key).
    #[arg(long, default_value = "admin")]
    pub name: String,
    /// Without --nodes: how many nodes to start.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(1..=7))]
    pub cluster_nodes: u8,
    /// Without --nodes: the nodes' election timeout in milliseconds.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(ELECTION_TIMEOUT_MS))]
    pub election_timeout_ms: u64,
}

/// Parses a number of seconds: finite, not negative, at most a day.
fn seconds(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..=86_400.0).contains(&v) => Ok(v),
        _ => Err("a number of seconds from 0 to 86400 (a day)".into()),
    }
}

/// Parses a value size: at most what one client request carries.
fn value_size(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(v) if v <= MAX_CLIENT_FRAME => Ok(v),
        _ => Err(format!("a number of bytes from 0 to {MAX_CLIENT_FRAME}")),
    }
}

/// How long a client's call may take, retries included.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Latencies in nanoseconds, 1 µs to 60 s, 3 significant digits.
fn histogram() -> Result<Histogram<u64>, Error> {
    Ok(Histogram::new_with_bounds(1_000, 60_000_000_000, 3)?)
}

/// What one worker measured.
struct Measured {
    writes: Histogram<u64>,
    reads: Histogram<u64>,
    errors: u64,
    last_error: Option<String>,
}

fn credentials(args: &BenchArgs, cluster: Option<&Cluster>) -> Result<Credentials, Error> {
    let (dir, stem) = match cluster {
        Some(c) => (c.certs(), format!("client-{CLIENT}")),
        None => {
            let admin = args.certs.join(format!("admin-{}.pem", args.name));
            let stem = if admin.exists() {
                format!("admin-{}", args.name)
            } else {
                format!("client-{}", args.name)
            };
            (args.certs.clone(), stem)
        }
    };
    Ok(Credentials::load(
        &dir.join("ca.pem"),
        &dir.join(format!("{stem}.pem")),
        &dir.join(format!("{stem}.key")),
    )?)
}

/// A small, fast PRNG (xorshift64*) per worker: keys and the read/write mix.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Runs the benchmark.
pub fn run(args: BenchArgs) -> Result<(), Error> {
    if !(0.0..=1.0).contains(&args.reads) {
        return Err("--reads is a fraction between 0 and 1".into());
    }
    if args.duration <= 0.0 {
        return Err("--duration must be more than 0 seconds".into());
    }
    let mut cluster = None;
    let nodes = if args.nodes.is_empty() {
        let mut c = Cluster::create(&Options {
            nodes: usize::from(args.cluster_nodes),
            election_timeout_ms: args.election_timeout_ms,
            heartbeat_ms: (args.election_timeout_ms / 6).max(1),
            keep: false,
        })?;
        for id in 1..=c.len() as u64 {
            c.start(id)?;
        }
        let leader = smol::block_on(poll(Duration::from_secs(30), async || {
            c.agreed_leader().await
        }))
        .ok_or("the cluster elected no leader within 30 s")?;
        eprintln!(
            "started a {}-node cluster in {} (fsync on); leader: node {}",
            c.len(),
            c.dir().display(),
            leader.0
        );
        let addrs = c.addrs().to_vec();
        cluster = Some(c);
        addrs
    } else {
        args.nodes.clone()
    };
    let creds = credentials(&args, cluster.as_ref())?;
    let connections = args
        .connections
        .unwrap_or(args.clients)
        .clamp(1, args.clients);
    // One UDP socket for all the connections, as an application serving many users has.
    let endpoint = ClientEndpoint::for_nodes(&creds, &nodes)?;
    let clients = (0..connections)
        .map(|i| {
            // Spread the first contact; every client follows redirects to the leader.
            let mut list = nodes.clone();
            list.rotate_left(i as usize % nodes.len());
            Ok(Arc::new(endpoint.client(list)?.with_timeout(CALL_TIMEOUT)))
        })
        .collect::<Result<Vec<_>, Error>>()?;
    let consistency = match args.consistency {
        ReadConsistency::Linearizable => Consistency::Linearizable,
        ReadConsistency::Lease => Consistency::Lease,
        ReadConsistency::Stale => Consistency::Stale,
    };
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let measure_from = start + Duration::from_secs_f64(args.warmup);
    let measure_until = Arc::new(AtomicU64::new(u64::MAX)); // nanos after `start`
    let value = Arc::new(
        (0..args.value_size)
            .map(|i| b'a' + (i % 26) as u8)
            .collect::<Vec<u8>>(),
    );
    let mut tasks = Vec::new();
    for w in 0..args.clients {
        let client = clients[w as usize % clients.len()].clone();
        let (stop, done, measure_until, value) = (
            stop.clone(),
            done.clone(),
            measure_until.clone(),
            value.clone(),
        );
        let (reads, keys, count) = (args.reads, args.keys, args.count);
        let mut m = Measured {
            writes: histogram()?,
            reads: histogram()?,
            errors: 0,
            last_error: None,
        };
        tasks.push(smol::spawn(async move {
            let mut rng =
                Rng(0x9e37_79b9_7f4a_7c15 ^ (u64::from(w) + 1).wrapping_mul(0xff51_afd7_ed55_8ccd));
            while !stop.load(Ordering::Relaxed) {
                let key = format!("bench/{:012}", rng.next() % keys);
                let read = reads > 0.0 && rng.unit() < reads;
                let t = Instant::now();
                let result = if read {
                    client.get_with(key, consistency).await.map(|_| ())
                } else {
                    client.put(key, value.as_slice()).await
                };
                let end = Instant::now();
                let nanos = end.duration_since(t).as_nanos().min(u128::from(u64::MAX)) as u64;
                let within = t >= measure_from
                    && (end.duration_since(start).as_nanos() as u64)
                        <= measure_until.load(Ordering::Relaxed);
                match result {
                    Ok(()) if within => {
                        if read {
                            m.reads.saturating_record(nanos);
                        } else {
                            m.writes.saturating_record(nanos);
                        }
                        let n = done.fetch_add(1, Ordering::Relaxed) + 1;
                        if count.is_some_and(|c| n >= c) {
                            stop.store(true, Ordering::Relaxed);
                        }
                    }
                    Ok(()) => {}
                    Err(e) => {
                        m.errors += 1;
                        m.last_error = Some(e.to_string());
                    }
                }
            }
            m
        }));
    }
    eprintln!(
        "{} clients over {} connections, {}-byte values, {:.0}% reads; warm-up {:.1} s, then {}",
        args.clients,
        connections,
        args.value_size,
        args.reads * 100.0,
        args.warmup,
        match args.count {
            Some(c) => format!("{c} requests"),
            None => format!("{:.1} s", args.duration),
        }
    );
    // A plain parker: the executor thread that runs the clients also drives the reactor,
    // so their I/O events are not handed over between threads.
    let (results, window) = smol::future::block_on(async {
        smol::Timer::at(measure_from).await;
        let measured_start = Instant::now();
        match args.count {
            Some(_) => {
                // Until the count is reached, or no request completed for a whole call
                // timeout (the cluster is gone: waiting longer would wait forever).
                let mut progress = (0, Instant::now());
                while !stop.load(Ordering::Relaxed) {
                    smol::Timer::after(Duration::from_millis(5)).await;
                    let n = done.load(Ordering::Relaxed);
                    if n != progress.0 {
                        progress = (n, Instant::now());
                    } else if progress.1.elapsed() > CALL_TIMEOUT {
                        eprintln!(
                            "no request completed for {} s; stopping",
                            CALL_TIMEOUT.as_secs()
                        );
                        stop.store(true, Ordering::Relaxed);
                    }
                }
            }
            None => {
                smol::Timer::after(Duration::from_secs_f64(args.duration)).await;
                let until = start.elapsed().as_nanos() as u64;
                measure_until.store(until, Ordering::Relaxed);
                stop.store(true, Ordering::Relaxed);
            }
        }
        let window = measured_start.elapsed();
        let mut results = Vec::new();
        for t in tasks {
            results.push(t.await);
        }
        (results, window)
    });
    endpoint.close();
    let mut writes = histogram()?;
    let mut reads = histogram()?;
    let mut errors = 0;
    let mut last_error = None;
    for m in results {
        writes.add(&m.writes)?;
        reads.add(&m.reads)?;
        errors += m.errors;
        if m.last_error.is_some() {
            last_error = m.last_error;
        }
    }
    let secs = window.as_secs_f64();
    println!(
        "coracle bench: {} clients, {} connections, {}-byte values, {:.0}% reads ({:?}), {} nodes{}",
        args.clients,
        connections,
        args.value_size,
        args.reads * 100.0,
        args.consistency,
        nodes.len(),
        if cluster.is_some() {
            " started by the bench on 127.0.0.1 (fsync on)"
        } else {
            ""
        }
    );
    println!("measured {secs:.2} s");
    for (name, h) in [("writes", &writes), ("reads", &reads)] {
        if h.is_empty() {
            continue;
        }
        println!(
            "{name:>6}: {:>9} ops  {:>9.0} ops/s   p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
            h.len(),
            h.len() as f64 / secs,
            fmt_ns(h.value_at_quantile(0.5)),
            fmt_ns(h.value_at_quantile(0.9)),
            fmt_ns(h.value_at_quantile(0.99)),
            fmt_ns(h.value_at_quantile(0.999)),
            fmt_ns(h.max()),
        );
    }
    println!(
        "errors: {errors}{}",
        last_error.map_or(String::new(), |e| format!(" (last: {e})"))
    );
    if let Some(path) = &args.svg {
        let title = format!(
            "coracle bench: {} clients, {}-byte values, {:.0}% reads, {} nodes",
            args.clients,
            args.value_size,
            args.reads * 100.0,
            nodes.len()
        );
        std::fs::write(path, svg(&title, &[("writes", &writes), ("reads", &reads)]))?;
        println!("wrote {}", path.display());
    }
    drop(cluster);
    if writes.is_empty() && reads.is_empty() {
        return Err("no request completed".into());
    }
    Ok(())
}

fn fmt_ns(ns: u64) -> String {
    let ms = ns as f64 / 1e6;
    if ms < 1.0 {
        format!("{:.0} µs", ns as f64 / 1e3)
    } else if ms < 100.0 {
        format!("{ms:.2} ms")
    } else {
        format!("{ms:.0} ms")
    }
}

/// The latency percentile spectrum (latency against percentile on the usual
/// 1/(1-q) logarithmic scale) of each non-empty histogram, as a self-contained SVG.
pub fn svg(title: &str, series: &[(&str, &Histogram<u64>)]) -> String {
    const W: f64 = 800.0;
    const H: f64 = 480.0;
    const LEFT: f64 = 70.0;
    const RIGHT: f64 = 20.0;
    const TOP: f64 = 40.0;
    const BOTTOM: f64 = 50.0;
    const DECADES: f64 = 5.0; // up to 99.999%
    const COLORS: [&str; 4] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"];
    let max_ms = series
        .iter()
        .map(|(_, h)| h.max() as f64 / 1e6)
        .fold(0.0f64, f64::max)
        .max(0.001);
    let top_ms = nice_ceiling(max_ms * 1.05);
    let x = |q: f64| {
        let d = (1.0 / (1.0 - q).max(1e-5)).log10().min(DECADES);
        LEFT + d / DECADES * (W - LEFT - RIGHT)
    };
    let y = |ms: f64| H - BOTTOM - ms / top_ms * (H - TOP - BOTTOM);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="14">{}</text>"#,
        W / 2.0,
        escape(title)
    );
    for (i, label) in ["0%", "90%", "99%", "99.9%", "99.99%", "99.999%"]
        .iter()
        .enumerate()
    {
        let px = LEFT + i as f64 / DECADES * (W - LEFT - RIGHT);
        let _ = writeln!(
            s,
            r##"<line x1="{px:.1}" y1="{TOP}" x2="{px:.1}" y2="{:.1}" stroke="#ddd"/><text x="{px:.1}" y="{:.1}" text-anchor="middle">{label}</text>"##,
            H - BOTTOM,
            H - BOTTOM + 16.0
        );
    }
    for i in 0..=5 {
        let ms = top_ms * f64::from(i) / 5.0;
        let py = y(ms);
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{py:.1}" x2="{:.1}" y2="{py:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            W - RIGHT,
            LEFT - 6.0,
            py + 4.0,
            trim(ms)
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">percentile</text>"#,
        (LEFT + W - RIGHT) / 2.0,
        H - 12.0
    );
    let _ = writeln!(
        s,
        r#"<text x="16" y="{}" text-anchor="middle" transform="rotate(-90 16 {})">latency (ms)</text>"#,
        (TOP + H - BOTTOM) / 2.0,
        (TOP + H - BOTTOM) / 2.0
    );
    let _ = writeln!(
        s,
        r#"<rect x="{LEFT}" y="{TOP}" width="{}" height="{}" fill="none" stroke="black"/>"#,
        W - LEFT - RIGHT,
        H - TOP - BOTTOM
    );
    let mut legend = 0;
    for (i, (name, h)) in series.iter().enumerate() {
        if h.is_empty() {
            continue;
        }
        let color = COLORS[i % COLORS.len()];
        let mut points = String::new();
        for v in h.iter_quantiles(8) {
            let q = v.quantile_iterated_to();
            let ms = v.value_iterated_to() as f64 / 1e6;
            let _ = write!(points, "{:.1},{:.1} ", x(q), y(ms));
        }
        let _ = write!(points, "{:.1},{:.1}", x(1.0), y(h.max() as f64 / 1e6));
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{points}"/>"#
        );
        let ly = TOP + 18.0 + 18.0 * f64::from(legend);
        let _ = writeln!(
            s,
            r#"<line x1="{}" y1="{ly}" x2="{}" y2="{ly}" stroke="{color}" stroke-width="2"/><text x="{}" y="{}">{} (n = {}, p50 {}, p99 {}, max {})</text>"#,
            LEFT + 12.0,
            LEFT + 36.0,
            LEFT + 42.0,
            ly + 4.0,
            escape(name),
            h.len(),
            escape(&fmt_ns(h.value_at_quantile(0.5))),
            escape(&fmt_ns(h.value_at_quantile(0.99))),
            escape(&fmt_ns(h.max())),
        );
        legend += 1;
    }
    s.push_str("</svg>\n");
    s
}

/// 1, 2 or 5 times a power of ten, at least `v`.
fn nice_ceiling(v: f64) -> f64 {
    let p = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * p)
        .find(|&c| c >= v)
        .unwrap_or(10.0 * p)
}

fn trim(ms: f64) -> String {
    let s = format!("{ms:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn svg_has_a_line_per_series_and_is_well_formed() {
        let mut h = histogram().unwrap_or_else(|e| panic!("{e}"));
        for i in 1..=10_000u64 {
            h.saturating_record(i * 1_000);
        }
        let empty = histogram().unwrap_or_else(|e| panic!("{e}"));
        let out = svg("a <title>", &[("writes", &h), ("reads", &empty)]);
        assert!(out.starts_with("<svg") && out.ends_with("</svg>\n"));
        assert_eq!(out.matches("<polyline").count(), 1);
        assert!(out.contains("a &lt;title&gt;"));
        assert!(!out.contains("NaN") && !out.contains("inf"));
    }

    #[test]
    fn nice_ceilings() {
        assert_eq!(nice_ceiling(0.7), 1.0);
        assert_eq!(nice_ceiling(1.3), 2.0);
        assert_eq!(nice_ceiling(4.2), 5.0);
        assert_eq!(nice_ceiling(7.0), 10.0);
    }
}
