//! A tiny static file server for the interactive model: GET and HEAD of the files of one
//! folder on 127.0.0.1, with the content types a browser needs (`application/wasm` for the
//! module), nothing outside the folder, and no caching (a rebuilt page shows at once).

use std::fs;
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Component, Path, PathBuf};
use std::thread;
use std::time::Duration;

/// The most bytes of a request head read.
const MAX_HEAD: usize = 8 * 1024;

/// Serves `root` on `listener` until the process ends, a thread per connection.
pub fn serve(root: PathBuf, listener: TcpListener) {
    for stream in listener.incoming().flatten() {
        let root = root.clone();
        thread::spawn(move || {
            let _ = handle(&root, stream);
        });
    }
}

/// Answers one request on `stream` from the files of `root`.
fn handle(root: &Path, mut stream: TcpStream) -> io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let head = read_head(&mut stream)?;
    let response = respond(root, &head);
    stream.write_all(&response)?;
    stream.flush()
}

fn read_head(stream: &mut TcpStream) -> io::Result<Vec<u8>> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_HEAD {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    Ok(head)
}

/// The whole response to a request whose head is `head`.
pub fn respond(root: &Path, head: &[u8]) -> Vec<u8> {
    let line = head
        .split(|&b| b == b'\r' || b == b'\n')
        .next()
        .and_then(|l| std::str::from_utf8(l).ok())
        .unwrap_or("");
    let mut words = line.split(' ');
    let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    if !words.next().is_some_and(|v| v.starts_with("HTTP/")) {
        return status(400, "Bad Request");
    }
    if method != "GET" && method != "HEAD" {
        return status(405, "Method Not Allowed");
    }
    let Some(path) = resolve(root, target) else {
        return status(404, "Not Found");
    };
    let Ok(body) = fs::read(&path) else {
        return status(404, "Not Found");
    };
    let mut out = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: {}\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\nConnection: close\r\n\r\n",
        content_type(&path),
        body.len()
    )
    .into_bytes();
    if method == "GET" {
        out.extend_from_slice(&body);
    }
    out
}

fn status(code: u16, reason: &str) -> Vec<u8> {
    let body = format!("{code} {reason}\n");
    format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// The file of `root` a request target names (`/` is `index.html`), or `None` for anything
/// outside the folder, hidden, or not a plain file.
pub fn resolve(root: &Path, target: &str) -> Option<PathBuf> {
    let path = target.split(['?', '#']).next()?;
    let rel = path.strip_prefix('/')?;
    let rel = if rel.is_empty() { "index.html" } else { rel };
    if rel.contains(['\\', '\0', '%']) {
        return None;
    }
    let rel = Path::new(rel);
    let plain = rel.components().all(|c| match c {
        Component::Normal(name) => !name.to_string_lossy().starts_with('.'),
        _ => false,
    });
    if !plain {
        return None;
    }
    let file = root.join(rel);
    file.is_file().then_some(file)
}

fn content_type(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()) {
        Some("html") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("wasm") => "application/wasm",
        Some("json") => "application/json",
        Some("png") => "image/png",
        Some("svg") => "image/svg+xml",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Shutdown;

    fn folder() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("xtask-serve-{}", std::process::id()));
        fs::create_dir_all(dir.join("pkg")).unwrap();
        fs::write(dir.join("index.html"), "<!doctype html>hi").unwrap();
        fs::write(dir.join("pkg/m.wasm"), b"\0asm").unwrap();
        fs::write(dir.join(".secret"), "no").unwrap();
        dir
    }

    #[test]
    fn serves_the_files_of_the_folder_and_nothing_else() {
        let root = folder();
        assert_eq!(resolve(&root, "/"), Some(root.join("index.html")));
        assert_eq!(
            resolve(&root, "/index.html?seed=3#x"),
            Some(root.join("index.html"))
        );
        assert_eq!(resolve(&root, "/pkg/m.wasm"), Some(root.join("pkg/m.wasm")));
        for bad in [
            "/../Cargo.toml",
            "/pkg/../../x",
            "//etc/passwd",
            "/.secret",
            "/pkg",
            "/missing.js",
            "/%2e%2e/x",
            "relative",
            "",
        ] {
            assert_eq!(resolve(&root, bad), None, "{bad}");
        }
    }

    #[test]
    fn answers_over_loopback_with_the_right_types_and_refuses_garbage() {
        let root = folder();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        thread::spawn(move || serve(root, listener));
        let ask = |request: &[u8]| {
            let mut s = TcpStream::connect(addr).unwrap();
            s.write_all(request).unwrap();
            s.shutdown(Shutdown::Write).unwrap();
            let mut out = Vec::new();
            s.read_to_end(&mut out).unwrap();
            String::from_utf8_lossy(&out).into_owned()
        };
        let page = ask(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(page.starts_with("HTTP/1.1 200 OK"), "{page}");
        assert!(page.contains("text/html") && page.ends_with("<!doctype html>hi"));
        let wasm = ask(b"GET /pkg/m.wasm HTTP/1.1\r\n\r\n");
        assert!(wasm.contains("Content-Type: application/wasm"), "{wasm}");
        let head = ask(b"HEAD /pkg/m.wasm HTTP/1.1\r\n\r\n");
        assert!(head.contains("Content-Length: 4") && head.ends_with("\r\n\r\n"));
        assert!(ask(b"GET /../x HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404"));
        assert!(ask(b"POST / HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 405"));
        for garbage in [
            &b""[..],
            b"\xff\xfe\r\n\r\n",
            b"GET\r\n\r\n",
            &[b'A'; MAX_HEAD],
        ] {
            assert!(ask(garbage).starts_with("HTTP/1.1 400"), "{garbage:?}");
        }
    }
}
