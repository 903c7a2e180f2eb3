//! The README's quickstart, run as written: its `sh` blocks go through bash against coupon-api
//! and coupon-consumer started in this process on stores of their own, and every `curl` must
//! answer the HTTP status the README writes under it. An example that stops working (an issue
//! window that has ended, a renamed route, a changed flag of `coupon-api token`) fails here,
//! and so in `make test` and CI.
//!
//! The conventions the README keeps (its HTML comment under "Quickstart" repeats them):
//! - the `sh` blocks of the section `## Quickstart` run in order in one bash, with
//!   `set -euo pipefail`; the block right after `<!-- readme-quickstart: skip -->` does not (it
//!   starts the stack and the services, which this test does itself);
//! - this test sets what that block sets: `API` (its coupon-api) and `JWT_SECRET`; the blocks
//!   run in a directory where `target/release/coupon-api` is this workspace's debug build of
//!   coupon-api (built by `cargo test --workspace`, or by this test when missing or stale);
//! - every `curl` is followed by a comment line starting with the status it answers (`# 202 …`).

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, SystemTime};

mod common;

use common::Stack;
use coupon_core::testing;

/// The heading of the section whose blocks are run.
const SECTION: &str = "## Quickstart";
/// The comment that keeps the next `sh` block from being run.
const SKIP: &str = "<!-- readme-quickstart: skip -->";
/// What the `curl` wrapper writes before each status, on a line of its own on stderr.
const STATUS_MARK: &str = "readme-status ";
/// Defines `curl` for the blocks: the real curl, also writing the answer's status to stderr.
const PRELUDE: &str = r#"set -euo pipefail
curl() { command curl -w '%{stderr}\nreadme-status %{http_code}\n' "$@"; }
"#;

/// The runnable part of the quickstart: its blocks joined into one script, and the statuses
/// its comments promise, in order.
#[derive(Debug)]
struct Quickstart {
    script: String,
    statuses: Vec<u16>,
    skipped_blocks: usize,
}

/// Reads the `sh` blocks of the quickstart section of `readme`.
fn quickstart(readme: &str) -> Quickstart {
    let start = readme
        .lines()
        .position(|line| line.trim_end() == SECTION)
        .unwrap_or_else(|| panic!("README.md has no `{SECTION}` section"));
    let mut lines = readme
        .lines()
        .skip(start + 1)
        .take_while(|line| !line.starts_with("## "));
    let (mut blocks, mut skipped_blocks, mut skip_next) = (Vec::new(), 0, false);
    while let Some(line) = lines.next() {
        if line.trim() == SKIP {
            skip_next = true;
        } else if line.trim_end() == "```sh" {
            let block: Vec<&str> = lines
                .by_ref()
                .take_while(|l| l.trim_end() != "```")
                .collect();
            if std::mem::take(&mut skip_next) {
                skipped_blocks += 1;
            } else {
                blocks.push(block.join("\n"));
            }
        }
    }
    let statuses = blocks
        .iter()
        .flat_map(|block| block.lines())
        .filter_map(|line| {
            let comment = line.trim_start().strip_prefix('#')?.trim_start();
            let code = comment.get(..3)?;
            let ends = comment[3..]
                .chars()
                .next()
                .is_none_or(|c| !c.is_ascii_digit());
            code.parse().ok().filter(|_| ends)
        })
        .collect();
    Quickstart {
        script: blocks.join("\n\n"),
        statuses,
        skipped_blocks,
    }
}

/// What one run of the script did.
struct Run {
    output: Output,
    statuses: Vec<u16>,
}

impl Run {
    fn report(&self) -> String {
        format!(
            "exit: {}\nstatuses: {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.output.status,
            self.statuses,
            String::from_utf8_lossy(&self.output.stdout),
            String::from_utf8_lossy(&self.output.stderr),
        )
    }
}

/// Runs `script` in bash (bounded to a minute) in `dir`, with `API` and `JWT_SECRET` set.
async fn run(script: &str, dir: &Path, api: &str) -> Run {
    let mut command = Command::new("timeout");
    command
        .args(["60", "bash", "-xc"])
        .arg(format!("{PRELUDE}\n{script}"))
        .current_dir(dir)
        .env("API", api)
        .env("JWT_SECRET", testing::JWT_SECRET);
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .expect("running bash");
    let statuses = String::from_utf8_lossy(&output.stderr)
        .lines()
        .filter_map(|line| line.strip_prefix(STATUS_MARK)?.trim().parse().ok())
        .collect();
    Run { output, statuses }
}

/// The workspace root (the README's directory).
fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// The newest modification time of the files under `path` (recursively).
fn newest(path: &Path) -> SystemTime {
    let own = std::fs::metadata(path)
        .and_then(|m| m.modified())
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let children = std::fs::read_dir(path).into_iter().flatten().flatten();
    children
        .map(|entry| newest(&entry.path()))
        .fold(own, SystemTime::max)
}

/// The coupon-api binary of this test's profile, beside this test's own binary
/// (`target/<profile>/deps/…`). `cargo test --workspace` (`make test`) builds it in the same
/// run; when it is missing or older than coupon-api's or coupon-core's sources (this test run
/// alone after a change), it is built with the cargo running this test, as
/// `dashboard_metrics.rs` builds coupon-consumer.
fn coupon_api_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary in target/<profile>/deps");
    let binary = profile_dir.join("coupon-api");
    let root = repo_root();
    let sources = [
        "coupon-api/src",
        "coupon-api/assets",
        "coupon-api/Cargo.toml",
        "coupon-core/src",
        "coupon-core/migrations",
        "coupon-core/Cargo.toml",
    ]
    .iter()
    .map(|path| newest(&root.join(path)))
    .fold(SystemTime::UNIX_EPOCH, SystemTime::max);
    let built = std::fs::metadata(&binary).and_then(|m| m.modified()).ok();
    if built.is_some_and(|built| built >= sources) {
        return binary;
    }
    let profile = match profile_dir.file_name().and_then(|name| name.to_str()) {
        Some("debug") | None => "dev",
        Some(other) => other,
    };
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--locked", "--quiet", "-p", "coupon-api", "--bin"])
        .args(["coupon-api", "--profile", profile])
        .current_dir(&root)
        .status()
        .expect("running cargo build");
    assert!(status.success(), "building coupon-api failed");
    assert!(binary.is_file(), "{} is missing", binary.display());
    binary
}

/// A directory where `target/release/coupon-api` is `binary`, as in a checkout after the
/// quickstart's build.
fn checkout_like_dir(binary: &Path) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "readme-quickstart-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(dir.join("target/release")).unwrap();
    std::os::unix::fs::symlink(binary, dir.join("target/release/coupon-api")).unwrap();
    dir
}

/// `script` with every `"issue_ends_at": "…"` moved to a minute ago.
fn with_issue_window_ended(script: &str) -> String {
    let key = "\"issue_ends_at\": \"";
    let ended = (chrono::Utc::now() - chrono::Duration::minutes(1))
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let mut out = String::new();
    let mut rest = script;
    while let Some(at) = rest.find(key) {
        let value = at + key.len();
        let close = rest[value..].find('"').expect("a closing quote") + value;
        out.push_str(&rest[..value]);
        out.push_str(&ended);
        rest = &rest[close..];
    }
    out.push_str(rest);
    out
}

#[test]
fn the_statuses_are_read_from_the_comments_under_each_curl() {
    let readme =
        "# x\n\n## Quickstart\n\n<!-- readme-quickstart: skip -->\n```sh\nmake up\n```\n\n\
                  ```sh\ncurl -sS \"$API/a\"\n# 202 {\"a\": 1}\n# 2020 is no status\n```\n\n\
                  ## Next\n\n```sh\ncurl x\n# 500\n```\n";
    let quickstart = quickstart(readme);
    assert_eq!(quickstart.statuses, [202]);
    assert_eq!(quickstart.skipped_blocks, 1);
    assert!(!quickstart.script.contains("make up"));
    assert!(!quickstart.script.contains("curl x"));
}

#[test]
fn an_ended_issue_window_replaces_every_end_date() {
    let script =
        r#"-d '{"issue_ends_at": "2099-12-31T23:59:59Z", "x": 1}' "issue_ends_at": "9999""#;
    let ended = with_issue_window_ended(script);
    assert!(
        !ended.contains("2099") && !ended.contains("9999"),
        "{ended}"
    );
    assert_eq!(
        ended.matches("\"issue_ends_at\": \"20").count(),
        2,
        "{ended}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_readme_quickstart_works_as_written_against_the_running_stack() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README.md at the workspace root");
    let quickstart = quickstart(&readme);
    assert_eq!(
        quickstart.skipped_blocks, 1,
        "one skipped block: the stack and the services"
    );
    assert!(
        quickstart.statuses.contains(&202),
        "the quickstart issues a coupon (a `# 202` under a curl): {quickstart:?}"
    );
    let dir = checkout_like_dir(&coupon_api_binary());

    // Arrange: both services, as the skipped block starts them, on stores of this test's own.
    let stack = Stack::start(true, "readme").await;
    let (base, pool) = (stack.base.clone(), stack.state.pool.clone());

    // Act: the quickstart as written.
    let written = run(&quickstart.script, &dir, &base).await;

    // Assert: every command succeeded with the status the README shows, and the issue the
    // quickstart asked for was persisted.
    assert!(
        written.output.status.success(),
        "the quickstart failed\n{}",
        written.report()
    );
    assert_eq!(
        written.statuses,
        quickstart.statuses,
        "statuses differ from the README's\n{}",
        written.report()
    );
    testing::eventually(
        "the quickstart's issue persisted",
        Duration::from_secs(15),
        || {
            let pool = pool.clone();
            async move {
                let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM coupon_issues")
                    .fetch_one(&pool)
                    .await
                    .ok()?;
                (rows == 1).then_some(())
            }
        },
    )
    .await;

    // The check bites: the same commands with an issue window that has ended (the README of
    // issue 14, read after its end date) no longer answer what the README says.
    let ended = run(&with_issue_window_ended(&quickstart.script), &dir, &base).await;
    let first_issue = quickstart.statuses.iter().position(|&s| s == 202).unwrap();
    assert_eq!(
        ended.statuses.get(first_issue),
        Some(&409),
        "an ended issue window went unnoticed (ISSUE_WINDOW_CLOSED expected)\n{}",
        ended.report()
    );

    stack.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}
