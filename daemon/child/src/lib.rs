//! Short-lived helper programs crid runs and waits for: CNI plugins, `crid-pinns`, the OCI
//! runtime's `start`/`kill`/`delete`/`update`/`features`, `apparmor_parser`. One runner, so
//! every such call gets the same guarantees:
//!
//! - every argument and environment value is checked before the spawn (a NUL byte is refused
//!   with the index or name of the offending value; callers check their own syntax, such as
//!   CNI_ARGS's `;` and `=`, before they get here);
//! - standard output and standard error are read at the same time, so a child that fills one
//!   pipe while crid reads the other cannot deadlock, and each has a bound: a child that
//!   writes more is killed and its call is an error;
//! - the call has a timeout: past it, the child and its process group (it gets its own) are
//!   killed with SIGKILL and reaped, and the call is [`ChildError::TimedOut`];
//! - a call abandoned half-way (its caller's future dropped: the client went away) kills the
//!   process group too.
//!
//! Nothing runs between fork and exec but what the standard library does itself (the process
//! group is set through `posix_spawn` attributes, not a `pre_exec` hook).

#![deny(unsafe_code)]

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

/// How long reaping a killed child may take before it is left to tokio's background reaper (a
/// child stuck in uninterruptible sleep dies only when the kernel lets it).
const REAP_TIMEOUT: Duration = Duration::from_secs(5);

/// Bounds of one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// Most bytes kept of standard output; more kills the child.
    pub stdout: usize,
    /// Most bytes kept of standard error; more kills the child.
    pub stderr: usize,
    /// How long the whole call (input, output, exit) may take.
    pub timeout: Duration,
}

/// What a child left when it exited by itself within its bounds.
#[derive(Debug, Clone)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl Finished {
    /// Standard error as text, trimmed (for error messages).
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).trim().to_owned()
    }
}

/// Errors of one call. Callers name the program (a CNI plugin, crid-pinns, the runtime) in
/// their own error around this one.
#[derive(Debug, thiserror::Error)]
pub enum ChildError {
    #[error("the program or an argument holds a NUL byte")]
    NulInArgument,
    #[error("environment variable {name:?} has an invalid name or a NUL byte in its value")]
    BadEnvironment { name: String },
    #[error("failed to start {path}")]
    Spawn {
        path: PathBuf,
        #[source]
        err: std::io::Error,
    },
    #[error("it wrote more than {limit} bytes to {stream}; it was killed with its process group")]
    TooMuchOutput { stream: &'static str, limit: usize },
    #[error("it did not finish within {timeout:?}; it was killed with its process group")]
    TimedOut { timeout: Duration },
    #[error("failed to read its {stream}")]
    Read {
        stream: &'static str,
        #[source]
        err: std::io::Error,
    },
    #[error("failed to wait for it")]
    Wait(#[source] std::io::Error),
}

impl ChildError {
    /// Whether the call ran out of time (callers report DeadlineExceeded).
    pub fn timed_out(&self) -> bool {
        matches!(self, ChildError::TimedOut { .. })
    }
}

/// Refuses what the kernel could not pass on faithfully: environment names that are empty or
/// hold `=` or NUL, and values with NUL. (NUL bytes in the program or an argument are caught
/// by the standard library, which keeps a placeholder instead of the value: see [`run`].)
fn check_environment(cmd: &std::process::Command) -> Result<(), ChildError> {
    let has_nul = |s: &OsStr| s.as_bytes().contains(&0);
    for (name, value) in cmd.get_envs() {
        let bad_name = name.is_empty() || name.as_bytes().iter().any(|&b| b == b'=' || b == 0);
        if bad_name || value.is_some_and(has_nul) {
            return Err(ChildError::BadEnvironment {
                name: name.to_string_lossy().into_owned(),
            });
        }
    }
    Ok(())
}

/// The child's process group, killed on drop unless the child finished by itself.
struct ProcessGroup {
    /// The group id (the child's pid); None once disarmed or if the child had no pid.
    pgid: Option<i32>,
}

impl ProcessGroup {
    fn kill(&mut self) {
        // Never kill(-1) or kill(0): a pgid of 0 or 1 would be every process, or crid's own
        // group (anti-pattern 1.9.5). The leader is not reaped before this runs, so its pgid
        // cannot have been reused.
        if let Some(pgid) = self.pgid.take().filter(|&p| p > 1) {
            let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
        }
    }

    fn disarm(&mut self) {
        self.pgid = None;
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn read_bounded<R: AsyncRead + Unpin>(
    pipe: Option<R>,
    limit: usize,
    stream: &'static str,
) -> Result<Vec<u8>, ChildError> {
    let Some(pipe) = pipe else {
        return Ok(Vec::new());
    };
    let mut kept = Vec::new();
    let most = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    pipe.take(most)
        .read_to_end(&mut kept)
        .await
        .map_err(|err| ChildError::Read { stream, err })?;
    if kept.len() > limit {
        return Err(ChildError::TooMuchOutput { stream, limit });
    }
    Ok(kept)
}

/// Runs `cmd` (program, arguments and environment set by the caller; stdio and the process
/// group are set here) with `input` on its standard input, within `bounds`.
pub async fn run(
    mut cmd: tokio::process::Command,
    input: Option<&[u8]>,
    bounds: Bounds,
) -> Result<Finished, ChildError> {
    check_environment(cmd.as_std())?;
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .process_group(0)
    .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|err| {
        // The standard library refuses a NUL in the program or an argument at spawn time,
        // with InvalidInput ("nul byte found in provided data").
        if err.kind() == std::io::ErrorKind::InvalidInput && err.to_string().contains("nul byte") {
            ChildError::NulInArgument
        } else {
            ChildError::Spawn {
                path: PathBuf::from(cmd.as_std().get_program()),
                err,
            }
        }
    })?;
    // Declared after `child`, so dropped before it: the group dies before tokio kills and
    // queues the leader for reaping.
    let mut group = ProcessGroup {
        pgid: child.id().and_then(|pid| i32::try_from(pid).ok()),
    };
    let stdin = child.stdin.take();
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let call = async {
        let feed = async {
            if let (Some(mut pipe), Some(input)) = (stdin, input) {
                // A child that exits without reading all its input is not an error here: its
                // exit status and output say what happened.
                let _ = pipe.write_all(input).await;
            }
            Ok::<(), ChildError>(())
        };
        let ((), stdout, stderr) = tokio::try_join!(
            feed,
            read_bounded(stdout, bounds.stdout, "stdout"),
            read_bounded(stderr, bounds.stderr, "stderr"),
        )?;
        let status = child.wait().await.map_err(ChildError::Wait)?;
        Ok::<_, ChildError>(Finished {
            status,
            stdout,
            stderr,
        })
    };
    let outcome = tokio::time::timeout(bounds.timeout, call).await;
    let err = match outcome {
        Ok(Ok(finished)) => {
            group.disarm();
            return Ok(finished);
        }
        Ok(Err(err)) => err,
        Err(_) => ChildError::TimedOut {
            timeout: bounds.timeout,
        },
    };
    group.kill();
    let _ = child.start_kill();
    let _ = tokio::time::timeout(REAP_TIMEOUT, child.wait()).await;
    Err(err)
}

/// [`run`] for synchronous callers (a probe memoised in a `OnceLock`): the call runs on a
/// thread of its own with a single-threaded runtime, so it may be used from anywhere,
/// including from inside crid's runtime (where it blocks that worker for the call's length).
pub fn run_blocking(
    cmd: std::process::Command,
    input: Option<Vec<u8>>,
    bounds: Bounds,
) -> Result<Finished, ChildError> {
    let path = PathBuf::from(cmd.get_program());
    let runner = std::thread::Builder::new()
        .name("crid-child".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|err| ChildError::Spawn {
                    path: PathBuf::from(cmd.get_program()),
                    err,
                })?;
            runtime.block_on(run(cmd.into(), input.as_deref(), bounds))
        })
        .map_err(|err| ChildError::Spawn {
            path: path.clone(),
            err,
        })?;
    runner.join().unwrap_or_else(|_| {
        Err(ChildError::Spawn {
            path,
            err: std::io::Error::other("the thread running it panicked"),
        })
    })
}

/// Writes an executable shell script `dir/name` for tests. The file is written under another
/// name and installed by a separate program: a test thread forking while this process holds
/// the file open for writing would hand that descriptor to its child until exec, and running
/// the script meanwhile fails with ETXTBSY.
#[cfg(any(test, feature = "test-util"))]
pub fn test_script(dir: &std::path::Path, name: &str, body: &str) -> PathBuf {
    let source = dir.join(format!("{name}.source"));
    let path = dir.join(name);
    std::fs::write(&source, format!("#!/bin/sh\n{body}\n")).expect("write script");
    let installed = std::process::Command::new("install")
        .arg("-m")
        .arg("0755")
        .arg(&source)
        .arg(&path)
        .status()
        .expect("run install");
    assert!(installed.success(), "install {}", path.display());
    path
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Instant;

    use super::*;

    const SMALL: Bounds = Bounds {
        stdout: 1 << 20,
        stderr: 64 << 10,
        timeout: Duration::from_secs(2),
    };

    use super::test_script as script;

    fn alive(pid: i32) -> bool {
        // A zombie is dead for this purpose: it runs nothing and holds nothing.
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|stat| {
                let state = stat.rsplit_once(") ")?.1.chars().next()?;
                Some(state != 'Z' && state != 'X')
            })
            .unwrap_or(false)
    }

    fn read_pid(path: &Path) -> i32 {
        for _ in 0..100 {
            if let Some(pid) = std::fs::read_to_string(path)
                .ok()
                .and_then(|t| t.trim().parse().ok())
            {
                return pid;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("{} was not written", path.display());
    }

    #[tokio::test]
    async fn output_input_and_status_are_returned() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cat = script(dir.path(), "echo", "cat; echo oops >&2; exit 3");
        let done = run(tokio::process::Command::new(&cat), Some(b"hello"), SMALL)
            .await
            .expect("runs");
        assert_eq!(done.stdout, b"hello");
        assert_eq!(done.stderr_text(), "oops");
        assert_eq!(done.status.code(), Some(3));
    }

    #[tokio::test]
    async fn a_child_that_never_ends_is_killed_with_its_group_and_reaped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pids = dir.path().join("pids");
        let hang = script(
            dir.path(),
            "hang",
            &format!(
                "sleep 1000 & echo $! > {p}.bg; echo $$ > {p}; wait",
                p = pids.display()
            ),
        );
        let started = Instant::now();
        let err = run(
            tokio::process::Command::new(&hang),
            None,
            Bounds {
                timeout: Duration::from_millis(500),
                ..SMALL
            },
        )
        .await
        .expect_err("times out");
        assert!(err.timed_out(), "{err}");
        assert!(
            err.to_string().contains("did not finish within 500ms"),
            "{err}"
        );
        assert!(started.elapsed() < Duration::from_secs(5));
        let (shell, sleeper) = (read_pid(&pids), read_pid(&pids.with_extension("bg")));
        // The shell was our child: reaped, so gone entirely.
        assert!(
            !Path::new(&format!("/proc/{shell}")).exists(),
            "shell reaped"
        );
        for _ in 0..100 {
            if !alive(sleeper) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(!alive(sleeper), "the grandchild in the group was killed");
    }

    #[tokio::test]
    async fn a_stderr_flood_is_cut_off_without_deadlock() {
        let dir = tempfile::tempdir().expect("tempdir");
        // 100 MiB on stderr while stdout stays open and silent: reading stdout first would
        // deadlock, reading without a bound would hold 100 MiB.
        let flood = script(
            dir.path(),
            "flood",
            "head -c 104857600 /dev/zero >&2; echo '{}'",
        );
        let started = Instant::now();
        let err = run(tokio::process::Command::new(&flood), None, SMALL)
            .await
            .expect_err("too much");
        assert!(
            matches!(
                err,
                ChildError::TooMuchOutput {
                    stream: "stderr",
                    limit
                } if limit == SMALL.stderr
            ),
            "{err}"
        );
        assert!(started.elapsed() < Duration::from_secs(2), "cut off early");
    }

    #[tokio::test]
    async fn a_huge_result_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let big = script(dir.path(), "big", "head -c 10485760 /dev/zero | tr '\\0' a");
        let err = run(tokio::process::Command::new(&big), None, SMALL)
            .await
            .expect_err("too much");
        assert!(
            matches!(
                err,
                ChildError::TooMuchOutput {
                    stream: "stdout",
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("more than 1048576 bytes"), "{err}");
    }

    #[tokio::test]
    async fn nul_bytes_and_bad_names_are_refused_before_spawning() {
        let mut cmd = tokio::process::Command::new("/bin/true");
        cmd.arg("ok").arg(OsStr::from_bytes(b"a\0b"));
        let err = run(cmd, None, SMALL).await.expect_err("nul");
        assert!(matches!(err, ChildError::NulInArgument), "{err}");
        let mut cmd = tokio::process::Command::new("/bin/true");
        cmd.env("CNI_ARGS", OsStr::from_bytes(b"K8S_POD_NAME=a\0b"));
        let err = run(cmd, None, SMALL).await.expect_err("nul");
        assert!(
            matches!(&err, ChildError::BadEnvironment { name } if name == "CNI_ARGS"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn an_abandoned_call_kills_the_group() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pid_file = dir.path().join("pid");
        let hang = script(
            dir.path(),
            "hang",
            &format!("echo $$ > {}; exec sleep 1000", pid_file.display()),
        );
        let call = run(tokio::process::Command::new(&hang), None, SMALL);
        let _ = tokio::time::timeout(Duration::from_millis(300), call).await;
        let pid = read_pid(&pid_file);
        for _ in 0..100 {
            if !alive(pid) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!alive(pid), "dropped call killed its child");
    }

    #[test]
    fn the_blocking_runner_works_inside_a_runtime_too() {
        let done =
            run_blocking(std::process::Command::new("/bin/echo"), None, SMALL).expect("runs");
        assert!(done.status.success());
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        let done = runtime
            .block_on(async { run_blocking(std::process::Command::new("/bin/echo"), None, SMALL) });
        assert!(done.expect("runs").status.success());
    }
}
