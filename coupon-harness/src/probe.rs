//! Readiness checks the callers share, for [`crate::Wait::until`]: a port that accepts, an
//! HTTP endpoint that answers 2xx, and lines of a log.
//!
//! Each network check is bounded by [`TIMEOUT`], so a frozen server (SIGSTOP) fails the check
//! instead of hanging the wait.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Longest a network check waits for its answer.
pub const TIMEOUT: Duration = Duration::from_secs(2);

/// Whether something accepts connections on `addr`.
pub async fn tcp(addr: SocketAddr) -> bool {
    matches!(
        tokio::time::timeout(TIMEOUT, TcpStream::connect(addr)).await,
        Ok(Ok(_))
    )
}

/// The status code of `GET path` on `addr` (HTTP/1.0, `Host: localhost`), read from the
/// answer's status line: the same request `scripts/services.sh` sends over bash's
/// `/dev/tcp`, without an HTTP client.
///
/// # Errors
/// No connection, no answer within [`TIMEOUT`], or no status line.
pub async fn http_status(addr: SocketAddr, path: &str) -> std::io::Result<u16> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await?;
        stream
            .write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
            .await?;
        // "HTTP/1.1 200 OK": the code is the second word of the first line.
        let (mut head, mut chunk) = (Vec::new(), [0_u8; 64]);
        loop {
            let n = stream.read(&mut chunk).await?;
            head.extend_from_slice(&chunk[..n]);
            if n == 0 || head.contains(&b'\n') || head.len() >= chunk.len() {
                break;
            }
        }
        let line = String::from_utf8_lossy(&head);
        line.split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("no HTTP status line in {line:?}"),
                )
            })
    };
    tokio::time::timeout(TIMEOUT, exchange)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer in time"))?
}

/// `Ok` when `GET path` on `addr` answers 2xx; else why not.
///
/// # Errors
/// As [`http_status`], or the status it answered.
pub async fn http_ok(addr: SocketAddr, path: &str) -> Result<(), String> {
    match http_status(addr, path).await {
        Ok(status) if (200..300).contains(&status) => Ok(()),
        Ok(status) => Err(format!("GET {path} answered {status}")),
        Err(err) => Err(format!("GET {path}: {err}")),
    }
}

/// Lines of the log at `path` for which `matches` holds (0 while the file does not exist).
pub fn log_lines(path: &Path, matches: impl Fn(&str) -> bool) -> usize {
    std::fs::read_to_string(path)
        .map(|log| log.lines().filter(|line| matches(line)).count())
        .unwrap_or(0)
}

/// Whether a line of the log at `path` contains `needle`.
pub fn log_contains(path: &Path, needle: &str) -> bool {
    log_lines(path, |line| line.contains(needle)) > 0
}
