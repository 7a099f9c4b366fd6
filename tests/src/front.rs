//! A same-origin front for a web client, as the OwnTracks frontend's own
//! nginx template is: its files from a directory (some paths overridden,
//! such as its `config/config.js`, or all under a prefix ending in `/`),
//! and `/api/` and `/ws/` passed through
//! to otstream byte for byte (WebSocket upgrades included). Plain threads
//! and sockets: one thread a connection, each request on a connection of
//! its own (`Connection: close` towards otstream).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Result;

/// The front, serving until the test process ends.
pub struct Front {
    /// Its address, `http://127.0.0.1:PORT`.
    pub url: String,
}

impl Front {
    /// Serves `root`'s files (with `overrides` by path) and passes `/api/`
    /// and `/ws/` to `upstream`.
    pub fn start(
        root: PathBuf,
        overrides: HashMap<String, Vec<u8>>,
        upstream: SocketAddr,
    ) -> Result<Front> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let url = format!("http://{}", listener.local_addr()?);
        let site = Arc::new((root, overrides));
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let site = site.clone();
                std::thread::spawn(move || {
                    let _ = serve(conn, &site.0, &site.1, upstream);
                });
            }
        });
        Ok(Front { url })
    }
}

fn serve(
    client: TcpStream,
    root: &std::path::Path,
    overrides: &HashMap<String, Vec<u8>>,
    upstream: SocketAddr,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(client.try_clone()?);
    let mut head = Vec::new();
    loop {
        let n = reader.read_until(b'\n', &mut head)?;
        if n == 0 || head.ends_with(b"\r\n\r\n") {
            break;
        }
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let path = text
        .split(' ')
        .nth(1)
        .unwrap_or("/")
        .split('?')
        .next()
        .unwrap_or("/")
        .to_owned();
    let mut client = client;
    if path.starts_with("/api/") || path.starts_with("/ws/") {
        let upgrade = text.to_ascii_lowercase().contains("\nupgrade: websocket");
        let mut out = TcpStream::connect(upstream)?;
        let mut lines: Vec<&str> = text.trim_end().split("\r\n").collect();
        if !upgrade {
            lines.retain(|l| !l.to_ascii_lowercase().starts_with("connection:"));
            lines.push("Connection: close");
        }
        out.write_all(format!("{}\r\n\r\n", lines.join("\r\n")).as_bytes())?;
        // Bytes the reader took past the head (a body) go first.
        out.write_all(reader.buffer())?;
        let mut to_upstream = out.try_clone()?;
        let mut from_client = client.try_clone()?;
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut from_client, &mut to_upstream);
            let _ = to_upstream.shutdown(Shutdown::Write);
        });
        std::io::copy(&mut out, &mut client)?;
        return client.shutdown(Shutdown::Both);
    }
    let file = if path == "/" {
        "/index.html"
    } else {
        path.as_str()
    };
    // An override for a path, or for a prefix ending in `/`.
    let over = overrides.get(file).or_else(|| {
        overrides
            .iter()
            .find(|(k, _)| k.ends_with('/') && file.starts_with(k.as_str()))
            .map(|(_, v)| v)
    });
    let body = match over {
        Some(b) => Some(b.clone()),
        None if !file.contains("..") => std::fs::read(root.join(file.trim_start_matches('/'))).ok(),
        None => None,
    };
    let (status, body) = match body {
        Some(b) => ("200 OK", b),
        None => ("404 Not Found", b"not found".to_vec()),
    };
    let kind = match file.rsplit('.').next() {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript",
        Some("css") => "text/css",
        Some("json") => "application/json",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("ico") => "image/x-icon",
        _ => "application/octet-stream",
    };
    client.write_all(
        format!(
            "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    )?;
    client.write_all(&body)?;
    let mut rest = [0u8; 1];
    let _ = client.shutdown(Shutdown::Write);
    let _ = client.read(&mut rest);
    Ok(())
}
