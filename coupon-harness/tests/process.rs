//! The harness on real processes: `python3 -m http.server` as a service that gets ready,
//! `sh` and `sleep` as processes that exit, ignore SIGTERM, freeze and are dropped.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::net::SocketAddr;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use coupon_harness::{free_port, probe, Error, OnDrop, Output, Process, Program, Signal, Wait};

/// A fresh directory of the test's own.
fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("coupon-harness-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `sh -c script`, its output to `log`.
fn shell(name: &str, script: &str, log: &Path) -> Program {
    let mut program = Program::new(name, "sh");
    program
        .args(["-c", script])
        .output(Output::File(log.to_owned()));
    program
}

/// The state letter of `/proc/<pid>/stat` (`S` sleeping, `T` stopped, …).
fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?.1.chars().next()
}

#[tokio::test]
async fn a_service_is_ready_once_it_answers_http_and_exits_on_sigterm() {
    // Arrange: python's http.server answers 200 for /ready when the file `ready` exists.
    let dir = scratch("http");
    std::fs::write(dir.join("ready"), "ok").unwrap();
    let port = free_port().unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut program = Program::new("http-server", "python3");
    program
        .args([
            "-m",
            "http.server",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
        ])
        .current_dir(&dir)
        .output(Output::File(dir.join("http-server.log")))
        .on_drop(OnDrop::Terminate {
            grace: Duration::from_secs(5),
        });

    // Act
    let mut server = Process::spawn(program).unwrap();
    let wait = Wait::new("http.server /ready", Duration::from_secs(20));
    server
        .wait_ready(&wait, || probe::http_ok(addr, "/ready"))
        .await
        .unwrap();

    // Assert
    assert!(server.is_running());
    let pid = server.pid().unwrap();
    assert!(proc_state(pid).is_some());
    assert_eq!(probe::http_status(addr, "/missing").await.unwrap(), 404);
    assert!(probe::tcp(addr).await);
    let stopped = server
        .stop(Signal::Term, Duration::from_secs(10))
        .await
        .unwrap();
    assert!(!stopped.forced, "{stopped}");
    assert_eq!(stopped.status.unwrap().signal(), Some(15));
    assert!(!server.is_running());
    assert_eq!(server.pid(), None);
    assert!(matches!(
        server.signal(Signal::Term),
        Err(Error::NotRunning { .. })
    ));
    assert!(!probe::tcp(addr).await);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_process_that_ignores_sigterm_is_killed_after_the_grace() {
    let dir = scratch("ignores-term");
    let log = dir.join("stubborn.log");
    // An ignored signal stays ignored across exec.
    let mut stubborn = Process::spawn(shell(
        "stubborn",
        "trap '' TERM; echo started; exec sleep 30",
        &log,
    ))
    .unwrap();
    let wait = Wait::new("stubborn started", Duration::from_secs(10));
    stubborn
        .wait_ready(&wait, || async { probe::log_contains(&log, "started") })
        .await
        .unwrap();

    let stopped = stubborn
        .stop_blocking(Signal::Term, Duration::from_millis(300))
        .unwrap();

    assert!(stopped.forced);
    assert!(stopped.took >= Duration::from_millis(300));
    assert_eq!(stopped.status.unwrap().signal(), Some(9));
    assert!(stopped
        .to_string()
        .ends_with("killed (SIGKILL) after the grace"));
    assert!(stubborn
        .stop_blocking(Signal::Term, Duration::ZERO)
        .is_none());
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_process_that_exits_while_awaited_fails_the_wait_with_its_status_and_log() {
    let dir = scratch("exits");
    let log = dir.join("broken.log");
    let mut broken = Process::spawn(shell(
        "broken",
        "echo 'config: DATABASE_URL is not set' >&2; exit 3",
        &log,
    ))
    .unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port().unwrap()));

    let err = broken
        .wait_ready(
            &Wait::new("broken listening", Duration::from_secs(30)),
            || probe::tcp(addr),
        )
        .await
        .unwrap_err();

    let Error::Exited {
        name, status, log, ..
    } = &err
    else {
        panic!("not an exit: {err}");
    };
    assert_eq!(name, "broken");
    assert_eq!(status.code(), Some(3));
    assert_eq!(
        log.as_ref().unwrap().lines,
        "config: DATABASE_URL is not set"
    );
    let message = err.to_string();
    assert!(
        message.starts_with("broken exited (exit status: 3) while waiting for broken listening"),
        "{message}"
    );
    assert!(message.contains("DATABASE_URL is not set"), "{message}");
    assert_eq!(broken.exited().unwrap().code(), Some(3));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_wait_that_times_out_shows_every_watched_log() {
    let dir = scratch("times-out");
    let log = dir.join("quiet.log");
    let mut quiet =
        vec![Process::spawn(shell("quiet", "echo warming up; exec sleep 30", &log)).unwrap()];

    let err = Wait::new("quiet ready", Duration::from_millis(300))
        .every(Duration::from_millis(20))
        .until(quiet.as_mut_slice(), || async { Err::<(), _>("not yet") })
        .await
        .unwrap_err();

    let message = err.to_string();
    assert!(
        message.starts_with("timed out after 300ms waiting for quiet ready (last check: not yet)"),
        "{message}"
    );
    assert!(message.contains("warming up"), "{message}");
    assert!(quiet[0].is_running());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn sigstop_freezes_a_process_and_sigcont_thaws_it() {
    let mut sleeper = Process::spawn({
        let mut program = Program::new("sleeper", "sleep");
        program.arg("30");
        program
    })
    .unwrap();
    let pid = sleeper.pid().unwrap();
    let state_becomes = |wanted: char| {
        (0..100).any(|_| {
            std::thread::sleep(Duration::from_millis(20));
            proc_state(pid) == Some(wanted)
        })
    };

    sleeper.signal(Signal::Stop).unwrap();
    assert!(state_becomes('T'), "not stopped: {:?}", proc_state(pid));
    sleeper.signal(Signal::Cont).unwrap();
    assert!(state_becomes('S'), "not thawed: {:?}", proc_state(pid));

    let status = sleeper.kill().unwrap();
    assert_eq!(status.signal(), Some(9));
    assert!(!sleeper.is_running());
    assert!(sleeper.kill().is_none());
    assert_eq!(
        sleeper.exited(),
        None,
        "stopped here, not exited on its own"
    );
}

#[test]
fn a_dropped_process_is_stopped_and_collected() {
    for on_drop in [
        OnDrop::Kill,
        OnDrop::Terminate {
            grace: Duration::from_secs(5),
        },
    ] {
        let mut program = Program::new("sleeper", "sleep");
        program.arg("30").on_drop(on_drop);
        let sleeper = Process::spawn(program).unwrap();
        let pid = sleeper.pid().unwrap();
        assert!(proc_state(pid).is_some());

        drop(sleeper);

        assert_eq!(proc_state(pid), None, "{on_drop:?} left pid {pid}");
    }
}

#[tokio::test]
async fn a_process_starts_again_appending_to_its_log() {
    let dir = scratch("again");
    let log = dir.join("twice.log");
    let mut program = shell("twice", "echo run; exec sleep 30", &log);
    program.output(Output::AppendFile(log.clone()));
    let mut twice = Process::spawn(program).unwrap();
    assert!(matches!(twice.start(), Err(Error::AlreadyRunning { .. })));
    let wait = Wait::new("a run logged", Duration::from_secs(10));
    twice
        .wait_ready(&wait, || async { probe::log_contains(&log, "run") })
        .await
        .unwrap();

    twice.kill().unwrap();
    let pid = twice.start().unwrap();

    assert_eq!(twice.pid(), Some(pid));
    let wait = Wait::new("a second run logged", Duration::from_secs(10));
    twice
        .wait_ready(&wait, || async {
            probe::log_lines(&log, |line| line == "run") == 2
        })
        .await
        .unwrap();
    drop(twice);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_missing_executable_fails_to_start_with_its_path() {
    let err = Process::spawn(Program::new("ghost", "/nonexistent/ghost")).unwrap_err();

    assert!(matches!(err, Error::Spawn { .. }));
    assert_eq!(
        err.to_string(),
        "starting ghost (/nonexistent/ghost) failed"
    );
}

#[test]
fn a_group_stops_within_one_grace_and_its_stubborn_member_is_killed() {
    let dir = scratch("group");
    let mut group: Vec<Process> = ["trap '' TERM; echo armed; exec sleep 30", "exec sleep 30"]
        .iter()
        .enumerate()
        .map(|(i, script)| {
            Process::spawn(shell(
                &format!("member-{i}"),
                script,
                &dir.join(format!("{i}.log")),
            ))
            .unwrap()
        })
        .collect();
    group.push(Process::new(Program::new("never-started", "sleep")));
    // The stubborn member ignores SIGTERM only once sh has run `trap`.
    let armed = (0..500).any(|_| {
        std::thread::sleep(Duration::from_millis(10));
        probe::log_contains(&dir.join("0.log"), "armed")
    });
    assert!(armed);

    let started = std::time::Instant::now();
    let stopped = coupon_harness::stop_all(&mut group, Signal::Term, Duration::from_millis(500));

    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let stubborn = stopped[0].unwrap();
    assert!(stubborn.forced);
    assert_eq!(stubborn.status.unwrap().signal(), Some(9));
    let willing = stopped[1].unwrap();
    assert!(!willing.forced);
    assert_eq!(willing.status.unwrap().signal(), Some(15));
    assert!(stopped[2].is_none());
    assert!(group.iter_mut().all(|p| !p.is_running()));
    let _ = std::fs::remove_dir_all(&dir);
}
