//! Reading a daemon's metrics back (for `xdp-quic stats --daemon`): a plain HTTP GET and a
//! parser of the text exposition's sample lines.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{bail, Context};

/// One sample line: `name{label="value",...} value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    /// The value of label `key`.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// The most a scrape reads: an exposition of thousands of series is far below it.
const MAX_ANSWER: u64 = 16 << 20;
/// The whole exchange's deadline: an endpoint that trickles its answer is given up on.
const SCRAPE_DEADLINE: Duration = Duration::from_secs(10);

/// GETs `http://addr/metrics` and returns the body: at most 16 MiB within 10 s, whatever
/// the endpoint does.
pub fn scrape(addr: SocketAddr) -> anyhow::Result<String> {
    let deadline = std::time::Instant::now() + SCRAPE_DEADLINE;
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .with_context(|| format!("connecting to the metrics endpoint {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 << 10];
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            bail!("{addr}: no complete answer within {SCRAPE_DEADLINE:?}");
        }
        s.set_read_timeout(Some(left.min(Duration::from_secs(5))))?;
        let n = s
            .read(&mut buf)
            .with_context(|| format!("reading the answer of {addr}"))?;
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
        if raw.len() as u64 > MAX_ANSWER {
            bail!("{addr}: an answer larger than {} MiB", MAX_ANSWER >> 20);
        }
    }
    let resp = String::from_utf8_lossy(&raw);
    let (head, body) = resp
        .split_once("\r\n\r\n")
        .context("malformed HTTP answer")?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!("{addr}: {}", head.lines().next().unwrap_or_default());
    }
    Ok(body.to_string())
}

/// The samples of a text exposition (comments and malformed lines are skipped).
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(parse_line)
        .collect()
}

fn parse_line(line: &str) -> Option<Sample> {
    let (series, value) = line.rsplit_once(' ')?;
    let value = value.parse().ok()?;
    let (name, labels) = match series.split_once('{') {
        None => (series.to_string(), Vec::new()),
        Some((name, rest)) => {
            let inner = rest.strip_suffix('}')?;
            let mut labels = Vec::new();
            for pair in inner.split("\",").filter(|p| !p.is_empty()) {
                let (k, v) = pair.split_once("=\"")?;
                labels.push((k.to_string(), v.trim_end_matches('"').to_string()));
            }
            (name.to_string(), labels)
        }
    };
    Some(Sample {
        name,
        labels,
        value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_samples() {
        let t = "# HELP x y\nxdpquic_worker_rx_packets_total{worker=\"0\",queue=\"1\"} 42\nplain 1.5\nbad line\n";
        let s = parse(t);
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].name, "xdpquic_worker_rx_packets_total");
        assert_eq!(s[0].label("queue"), Some("1"));
        assert_eq!(s[0].value, 42.0);
        assert_eq!(s[1].name, "plain");
        assert!(s[1].labels.is_empty());
    }
}
