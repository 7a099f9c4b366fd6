//! HTTP/1.1 requests from a chosen source address: Linux routes all of
//! 127.0.0.0/8 to loopback, so a test can be an attacker at 127.0.0.2 and
//! a phone at 127.0.0.3 and check that one's limits never reach the other.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The status of one request (0 when the connection failed) and how long
/// its answer took. A `Host` among `headers` replaces the server's address.
pub async fn request_from(
    source: IpAddr,
    server: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, Duration) {
    let started = Instant::now();
    let status = async {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(SocketAddr::new(source, 0))?;
        let mut stream = socket.connect(server).await?;
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.len()
        );
        // The server's own address, unless the test names another host.
        if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
            req.push_str(&format!("Host: {server}\r\n"));
        }
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        stream.write_all(req.as_bytes()).await?;
        stream.write_all(body).await?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await?;
        let line = String::from_utf8_lossy(&answer);
        Ok::<u16, std::io::Error>(
            line.split(' ')
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0),
        )
    }
    .await
    .unwrap_or(0);
    (status, started.elapsed())
}

/// The `q` quantile (0..=1) of `samples`.
pub fn quantile(samples: &[Duration], q: f64) -> Duration {
    let mut s = samples.to_vec();
    s.sort();
    if s.is_empty() {
        return Duration::ZERO;
    }
    let i = ((s.len() as f64 - 1.0) * q).round() as usize;
    s[i.min(s.len() - 1)]
}
