//! `coupon-harness`: the one place couponrush starts, watches and stops child processes.
//!
//! The demo (coupon-api and coupon-consumer for `make demo`), the benchmark (its services and
//! ceiling server), the fault suite (services and Kafka brokers it kills and starts again) and
//! the test helpers (`redis-server`, `mariadbd` and Redis Cluster nodes of a test's own) all
//! need the same few things, written here once:
//!
//! - [`Program`]: what to run: the executable, its arguments and environment, where its output
//!   goes ([`Output`]) and how it is stopped when its handle is dropped ([`OnDrop`]);
//! - [`Process`]: one supervised child of a [`Program`]: started (and started again), its pid
//!   (for CPU sampling), [`Signal`]s (SIGTERM, SIGKILL, SIGSTOP, SIGCONT), a stop that waits
//!   for the exit within a bound and then kills ([`Stopped`]), the tail of its log, and a kill
//!   (or a graceful stop) when dropped; [`stop_all`] stops a group at once;
//! - [`Wait`]: polls a readiness check until it passes, failing early, with the exit status
//!   and the log tail, when a watched process exits; [`probe`] holds the checks the callers
//!   share (a TCP port that accepts, an HTTP endpoint that answers 2xx, lines of a log).
//!
//! It knows nothing of coupons: coupon-core's `testing` module depends on it, not the reverse.
//! Signals other than SIGKILL go through `kill(1)`, as the code this replaced did: the
//! workspace forbids `unsafe`, and no signal crate is needed for four signals.

mod error;
mod process;
mod program;
mod wait;

pub mod probe;

pub use error::{Error, LogTail};
pub use process::{stop_all, Process, Signal, Stopped};
pub use program::{OnDrop, Output, Program};
pub use wait::{CheckOutcome, Wait};

/// A TCP port of 127.0.0.1 that was free a moment ago (bound to port 0, then released), for a
/// process to listen on.
///
/// # Errors
/// No port could be bound.
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}
