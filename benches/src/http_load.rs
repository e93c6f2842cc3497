//! HTTP against a running squall: one-shot GETs, a keep-alive client for probes, a load generator
//! of attribute queries, and Prometheus metric sums.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand_distr::{Distribution, Zipf};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One blocking HTTP/1.1 GET (connection closed after): status and body.
pub fn http_get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let status = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    Ok((status, body))
}

/// The sum of every sample of the Prometheus metric `name` in `text`.
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A blocking HTTP/1.1 client on one keep-alive connection, reconnecting after an error. The
/// prober polls thousands of times a second: a connection per request ran the machine out of
/// ephemeral ports (sockets in TIME_WAIT) within a minute.
pub struct KeepAlive {
    addr: String,
    conn: Option<TcpStream>,
    buf: Vec<u8>,
}

impl KeepAlive {
    /// A client of `addr` (`host:port`); it connects on the first request.
    pub fn new(addr: &str) -> Self {
        KeepAlive { addr: addr.to_owned(), conn: None, buf: Vec::with_capacity(4096) }
    }

    /// The status of `GET path`.
    pub fn get(&mut self, path: &str) -> std::io::Result<u16> {
        self.get_body(path).map(|(status, _)| status)
    }

    /// The status and body of `GET path`.
    pub fn get_body(&mut self, path: &str) -> std::io::Result<(u16, &[u8])> {
        match self.exchange(path) {
            Ok((status, body)) => Ok((status, &self.buf[body])),
            Err(e) => {
                self.conn = None;
                Err(e)
            }
        }
    }

    fn exchange(&mut self, path: &str) -> std::io::Result<(u16, std::ops::Range<usize>)> {
        let s = match &mut self.conn {
            Some(s) => s,
            None => {
                let s = TcpStream::connect(&self.addr)?;
                s.set_nodelay(true)?;
                s.set_read_timeout(Some(Duration::from_secs(5)))?;
                self.conn.insert(s)
            }
        };
        write!(s, "GET {path} HTTP/1.1\r\nHost: {}\r\n\r\n", self.addr)?;
        self.buf.clear();
        let mut chunk = [0u8; 4096];
        let mut fill = |s: &mut TcpStream, buf: &mut Vec<u8>| -> std::io::Result<()> {
            match s.read(&mut chunk)? {
                0 => Err(std::io::ErrorKind::UnexpectedEof.into()),
                n => {
                    buf.extend_from_slice(&chunk[..n]);
                    Ok(())
                }
            }
        };
        loop {
            fill(s, &mut self.buf)?;
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let (status, len) = response_head(&self.buf[..end]);
                while self.buf.len() < end + 4 + len {
                    fill(s, &mut self.buf)?;
                }
                return Ok((status, end + 4..end + 4 + len));
            }
        }
    }
}

/// The `q` quantile of sorted `v`.
pub fn quantile(v: &[u64], q: f64) -> u64 {
    if v.is_empty() {
        return 0;
    }
    v[((v.len() - 1) as f64 * q).round() as usize]
}

/// What the HTTP load generator measured.
#[derive(Debug, Default)]
pub struct HttpLoad {
    /// Requests completed.
    pub requests: u64,
    /// Of which 200.
    pub ok: u64,
    /// Of which 404 (a user with no events yet).
    pub not_found: u64,
    /// Other statuses or errors.
    pub errors: u64,
    /// Seconds.
    pub seconds: f64,
    /// Latencies, microseconds, sorted.
    pub latencies_us: Vec<u64>,
}

/// The status and `Content-Length` (0 if absent) of an HTTP/1.1 response head.
fn response_head(head: &[u8]) -> (u16, usize) {
    let number = |b: &[u8]| b.iter().filter(|c| c.is_ascii_digit()).fold(0usize, |n, c| n * 10 + usize::from(c - b'0'));
    let status = head.get(9..12).map_or(0, |b| number(b) as u16);
    let len = head
        .split(|&c| c == b'\n')
        .find(|l| l.len() > 15 && l[..15].eq_ignore_ascii_case(b"content-length:"))
        .map_or(0, |l| number(&l[15..]));
    (status, len)
}

/// `connections` keep-alive connections each sending `GET /v1/users/u<n>/attributes` (n Zipf over
/// `users`) back to back for `duration`, on a tokio runtime of `threads` threads (the load
/// generator shares the machine with squall; one thread keeps its share fixed).
pub fn http_load(addr: &str, users: u64, connections: usize, threads: usize, duration: Duration) -> HttpLoad {
    let rt = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(threads).enable_all().build()
    }
    .expect("runtime");
    rt.block_on(async {
        let started = Instant::now();
        let tasks: Vec<_> = (0..connections)
            .map(|c| {
                let addr = addr.to_owned();
                tokio::spawn(async move {
                    let mut r = HttpLoad::default();
                    let mut rng = StdRng::seed_from_u64(c as u64);
                    let zipf = Zipf::new(users as f64, 1.0).expect("zipf");
                    let mut s = tokio::net::TcpStream::connect(&addr).await.expect("connect");
                    s.set_nodelay(true).ok();
                    let mut buf = vec![0u8; 64 * 1024];
                    let mut have = 0usize;
                    let mut req = Vec::with_capacity(128);
                    while started.elapsed() < duration {
                        let u = zipf.sample(&mut rng) as u64;
                        req.clear();
                        write!(req, "GET /v1/users/u{u}/attributes HTTP/1.1\r\nHost: {addr}\r\n\r\n")
                            .expect("to a Vec");
                        let sent = Instant::now();
                        if s.write_all(&req).await.is_err() {
                            r.errors += 1;
                            break;
                        }
                        // Read one response: headers, then Content-Length bytes of body. Parsed in
                        // place, without copies: the generator shares the cores with squall.
                        let mut scanned = 0usize;
                        let status = loop {
                            let from = scanned.saturating_sub(3);
                            if let Some(end) =
                                buf[from..have].windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + from)
                            {
                                let (status, len) = response_head(&buf[..end]);
                                while have < end + 4 + len {
                                    match s.read(&mut buf[have..]).await {
                                        Ok(0) | Err(_) => break,
                                        Ok(n) => have += n,
                                    }
                                }
                                let used = (end + 4 + len).min(have);
                                buf.copy_within(used..have, 0);
                                have -= used;
                                break Some(status);
                            }
                            scanned = have;
                            match s.read(&mut buf[have..]).await {
                                Ok(0) | Err(_) => break None,
                                Ok(n) => have += n,
                            }
                        };
                        r.requests += 1;
                        r.latencies_us.push(sent.elapsed().as_micros() as u64);
                        match status {
                            Some(200) => r.ok += 1,
                            Some(404) => r.not_found += 1,
                            Some(_) => r.errors += 1,
                            None => {
                                r.errors += 1;
                                break;
                            }
                        }
                    }
                    r
                })
            })
            .collect();
        let mut total = HttpLoad::default();
        for t in tasks {
            let r = t.await.expect("load task");
            total.requests += r.requests;
            total.ok += r.ok;
            total.not_found += r.not_found;
            total.errors += r.errors;
            total.latencies_us.extend(r.latencies_us);
        }
        total.seconds = started.elapsed().as_secs_f64();
        total.latencies_us.sort_unstable();
        total
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_heads_are_read_in_place() {
        assert_eq!(
            response_head(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 123"),
            (200, 123)
        );
        assert_eq!(response_head(b"HTTP/1.1 404 Not Found\r\nContent-Length:7\r\nx: y"), (404, 7));
        assert_eq!(response_head(b"HTTP/1.1 503 Service Unavailable"), (503, 0));
    }
}
