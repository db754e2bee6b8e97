//! Starting a container: detach from the caller, run `<runtime> create`, report the result.
//!
//! The caller runs `crimon …` and reads one JSON line from the sync fd (or standard output):
//! `{"pid":N}` or `{"pid":-1,"message":"…"}`. The process the caller started (the launcher)
//! forks the monitor into its own session and exits only after the monitor has reported, so
//! the caller's wait returns with the monitor detached: killing the caller touches neither
//! the monitor nor the container.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::SystemTime;

use crid_common::exit_record::{exit_code_from_wait_status, ExitRecord};
use crid_common::monitor_paths;

use crate::attach::AttachServer;
use crate::cli::MonitorArgs;
use crate::error::{MonitorError, Result};
use crate::event_loop::{ContainerIo, EventLoop, TOKEN_CLIENT_BASE};
use crate::log_writer::LogWriter;
use crate::oom::OomWatcher;
use crate::runtime::Runtime;
use crate::shared::Shared;
use crate::sys;

/// Most bytes of the runtime's error output passed on to the caller.
const MAX_RUNTIME_ERROR: u64 = 8 * 1024;
/// Pipe buffer for container output: fewer wake-ups under heavy logging.
const OUTPUT_PIPE_BYTES: libc::c_int = 1 << 20;
/// How long an exiting monitor lingers for blocked Wait calls to be answered.
const WAITER_GRACE: std::time::Duration = std::time::Duration::from_millis(500);

/// Where the start result goes.
struct Reporter {
    out: Option<File>,
}

impl Reporter {
    fn report(&mut self, pid: libc::pid_t, message: Option<&str>) {
        let line = match message {
            None => serde_json::json!({ "pid": pid }),
            Some(message) => serde_json::json!({ "pid": pid, "message": message }),
        };
        if let Some(out) = self.out.as_mut() {
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
        }
        self.out = None;
    }
}

fn check_args(args: &MonitorArgs) -> Result<()> {
    crid_common::id::validate(&args.id)
        .map_err(|e| MonitorError::InvalidArgument(e.to_string()))?;
    for (name, path) in [
        ("--bundle", &args.bundle),
        ("--runtime", &args.runtime),
        ("--log-path", &args.log_path),
        ("--exit-dir", &args.exit_dir),
        ("--socket-dir", &args.socket_dir),
    ] {
        if !path.is_absolute() {
            return Err(MonitorError::InvalidArgument(format!(
                "{name} {} is not an absolute path",
                path.display()
            )));
        }
    }
    if args.stdin_once && !args.stdin {
        return Err(MonitorError::InvalidArgument(
            "--stdin-once needs --stdin".into(),
        ));
    }
    for dir in [&args.exit_dir, &args.socket_dir, &args.bundle] {
        if !dir.is_dir() {
            return Err(MonitorError::InvalidArgument(format!(
                "{} is not a directory",
                dir.display()
            )));
        }
    }
    Ok(())
}

/// Entry point of monitor mode. Returns the launcher's exit code.
pub fn launch(args: MonitorArgs) -> i32 {
    let sync = match args.sync_fd {
        // SAFETY: `--sync-fd` names an fd the launcher's parent passed to crimon alone, and
        // it is taken here once, before anything else could use it.
        #[allow(unsafe_code)]
        Some(fd) => unsafe { sys::take_inherited_fd(fd) }.map(File::from),
        None => std::io::stdout()
            .as_fd()
            .try_clone_to_owned()
            .map(File::from),
    };
    let mut reporter = Reporter { out: sync.ok() };
    if let Err(e) = check_args(&args).and_then(|()| {
        sys::setup_monitor_signals().map_err(|e| MonitorError::sys("set up signals", e))
    }) {
        reporter.report(-1, Some(&e.chain()));
        return 1;
    }
    sys::set_umask(0o077);
    sys::single_malloc_arena();

    let (release_r, release_w) = match sys::pipe() {
        Ok(p) => p,
        Err(e) => {
            reporter.report(-1, Some(&MonitorError::sys("create pipe", e).chain()));
            return 1;
        }
    };
    // SAFETY: crimon starts no thread before this fork (the control server's threads start in
    // the monitor, after it).
    #[allow(unsafe_code)]
    let forked = unsafe { sys::fork_single_threaded() };
    match forked {
        Err(e) => {
            reporter.report(-1, Some(&MonitorError::sys("fork monitor", e).chain()));
            1
        }
        Ok(sys::Forked::Parent) => {
            // The launcher: wait until the monitor reported, then leave.
            drop(release_w);
            let mut verdict = [0u8; 1];
            let mut release = File::from(release_r);
            match release.read(&mut verdict) {
                Ok(1) if verdict[0] == b'0' => 0,
                Ok(1) => 1,
                _ => {
                    reporter.report(-1, Some("monitor died before reporting"));
                    1
                }
            }
        }
        Ok(sys::Forked::Child) => {
            drop(release_r);
            monitor(args, reporter, release_w)
        }
    }
}

/// The monitor process, from its fork to the container's exit.
fn monitor(args: MonitorArgs, mut reporter: Reporter, release: OwnedFd) -> i32 {
    let mut release = File::from(release);
    let paths = SocketPaths::new(&args);
    // Another monitor may own these paths: refuse before creating (and later removing) any.
    if let Err(e) = [&paths.control, &paths.attach, &paths.console]
        .into_iter()
        .try_for_each(|path| refuse_existing(path))
    {
        reporter.report(-1, Some(&e.chain()));
        let _ = release.write_all(b"1");
        return 1;
    }
    let started = start_container(&args, &paths);
    let (pid, running) = match started {
        Ok(ok) => ok,
        Err(e) => {
            paths.remove_all();
            reporter.report(-1, Some(&e.chain()));
            let _ = release.write_all(b"1");
            return 1;
        }
    };
    reporter.report(pid, None);
    let _ = sys::stdio_to_dev_null();
    let _ = release.write_all(b"0");
    drop(release);

    let Running {
        event_loop,
        shared,
        server,
    } = running;
    sys::release_startup_memory();
    let (outcome, log, mut attach) = event_loop.run();
    log.sync();
    let record = ExitRecord {
        exit_code: exit_code_from_wait_status(outcome.wait_status),
        finished_at: crid_common::timestamp::format(SystemTime::now()),
        oom_killed: outcome.oom_killed,
    };
    let exit_path = monitor_paths::exit_record(&args.exit_dir, &args.id);
    // If the record cannot be written, waiters still learn the exit over the socket.
    let _ = record.write_durably(&exit_path);
    shared.publish_exit(record);
    attach.close_all();
    if args.delete_after_exit {
        Runtime {
            path: args.runtime.clone(),
            root: args.runtime_root.clone(),
            systemd_cgroup: args.systemd_cgroup,
        }
        .delete_force(&args.id);
    }
    // Let blocked Wait calls send their answers before the process (and its threads) ends.
    let deadline = std::time::Instant::now() + WAITER_GRACE;
    while shared
        .active_waiters
        .load(std::sync::atomic::Ordering::SeqCst)
        > 0
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    std::thread::sleep(std::time::Duration::from_millis(20));
    paths.remove_all();
    drop(server);
    0
}

/// The files a monitor creates in its socket directory.
struct SocketPaths {
    control: std::path::PathBuf,
    attach: std::path::PathBuf,
    console: std::path::PathBuf,
    pid_file: std::path::PathBuf,
}

impl SocketPaths {
    fn new(args: &MonitorArgs) -> Self {
        SocketPaths {
            control: monitor_paths::control_socket(&args.socket_dir, &args.id),
            attach: monitor_paths::attach_socket(&args.socket_dir, &args.id),
            console: monitor_paths::console_socket(&args.socket_dir, &args.id),
            pid_file: monitor_paths::pid_file(&args.socket_dir, &args.id),
        }
    }

    fn remove_all(&self) {
        for path in [&self.control, &self.attach, &self.console, &self.pid_file] {
            let _ = std::fs::remove_file(path);
        }
    }
}

struct Running {
    event_loop: EventLoop,
    shared: Arc<Shared>,
    server: crid_proto::ttrpc::Server,
}

fn refuse_existing(path: &Path) -> Result<()> {
    if path.symlink_metadata().is_ok() {
        return Err(MonitorError::FailedPrecondition(format!(
            "{} already exists: is another monitor running for this id?",
            path.display()
        )));
    }
    Ok(())
}

fn start_container(args: &MonitorArgs, paths: &SocketPaths) -> Result<(libc::pid_t, Running)> {
    sys::new_session().map_err(|e| MonitorError::sys("start a new session", e))?;
    sys::set_child_subreaper().map_err(|e| MonitorError::sys("become child subreaper", e))?;
    // Best effort: hosts without CAP_SYS_RESOURCE refuse to lower it.
    let _ = sys::set_oom_score_adj(-1000);
    let log = LogWriter::open(&args.log_path, args.log_size_max)?;
    let attach = AttachServer::bind(&paths.attach, TOKEN_CLIENT_BASE)
        .map_err(|e| MonitorError::path("bind attach socket", &paths.attach, e))?;
    let runtime = Runtime {
        path: args.runtime.clone(),
        root: args.runtime_root.clone(),
        systemd_cgroup: args.systemd_cgroup,
    };

    // The container's stdio, and a pipe for the runtime's own error text.
    let mut io = ContainerIo {
        stdout: None,
        stderr: None,
        stdin: None,
        pty: None,
    };
    let pipe = || sys::pipe().map_err(|e| MonitorError::sys("create pipe", e));
    let (child_stdin, child_stdout, child_stderr, runtime_err);
    let console_listener;
    if args.terminal {
        let listener = std::os::unix::net::UnixListener::bind(&paths.console)
            .map_err(|e| MonitorError::path("bind console socket", &paths.console, e))?;
        console_listener = Some(listener);
        let (err_r, err_w) = pipe()?;
        child_stdin = Stdio::null();
        child_stdout = Stdio::null();
        child_stderr = Stdio::from(err_w);
        runtime_err = err_r;
    } else {
        console_listener = None;
        let (out_r, out_w) = pipe()?;
        let (err_r, err_w) = pipe()?;
        sys::grow_pipe(out_r.as_fd(), OUTPUT_PIPE_BYTES);
        sys::grow_pipe(err_r.as_fd(), OUTPUT_PIPE_BYTES);
        child_stdin = if args.stdin {
            let (in_r, in_w) = pipe()?;
            io.stdin = Some(in_w);
            Stdio::from(in_r)
        } else {
            Stdio::null()
        };
        child_stdout = Stdio::from(out_w);
        child_stderr = Stdio::from(err_w);
        // Without a terminal the runtime's errors arrive on the container's stderr pipe.
        runtime_err = err_r
            .try_clone()
            .map_err(|e| MonitorError::sys("dup pipe", e))?;
        io.stdout = Some(out_r);
        io.stderr = Some(err_r);
    }

    let console = args.terminal.then_some(paths.console.as_path());
    let mut cmd = runtime.create(&args.id, &args.bundle, &paths.pid_file, console);
    cmd.stdin(child_stdin)
        .stdout(child_stdout)
        .stderr(child_stderr);
    let status = cmd
        .spawn()
        .and_then(|mut child| child.wait())
        .map_err(|e| MonitorError::path("run runtime", &args.runtime, e))?;
    drop(cmd);

    if !status.success() {
        sys::set_nonblocking(runtime_err.as_fd())
            .map_err(|e| MonitorError::sys("set O_NONBLOCK", e))?;
        let mut text = Vec::new();
        let _ = File::from(runtime_err)
            .take(MAX_RUNTIME_ERROR)
            .read_to_end(&mut text);
        let text = String::from_utf8_lossy(&text).trim().to_owned();
        let text = if text.is_empty() {
            format!("{} create exited with {status}", args.runtime.display())
        } else {
            text
        };
        return Err(MonitorError::Runtime(text));
    }
    drop(runtime_err);
    let created = finish_start(
        args,
        paths,
        io,
        console_listener,
        log,
        attach,
        runtime.clone(),
    );
    if created.is_err() {
        runtime.delete_force(&args.id);
    }
    created
}

/// After a successful create: take the terminal, read the pid, start the control server.
fn finish_start(
    args: &MonitorArgs,
    paths: &SocketPaths,
    mut io: ContainerIo,
    console_listener: Option<std::os::unix::net::UnixListener>,
    log: LogWriter,
    attach: AttachServer,
    runtime: Runtime,
) -> Result<(libc::pid_t, Running)> {
    if let Some(listener) = console_listener {
        listener
            .set_nonblocking(true)
            .map_err(|e| MonitorError::sys("set O_NONBLOCK", e))?;
        let (conn, _) = listener
            .accept()
            .map_err(|e| MonitorError::path("accept on console socket", &paths.console, e))?;
        let master = sys::recv_fd(conn.as_fd())
            .map_err(|e| MonitorError::path("receive terminal", &paths.console, e))?;
        let _ = std::fs::remove_file(&paths.console);
        io.stdin = if args.stdin {
            Some(
                master
                    .try_clone()
                    .map_err(|e| MonitorError::sys("dup terminal", e))?,
            )
        } else {
            None
        };
        io.pty = Some(
            master
                .try_clone()
                .map_err(|e| MonitorError::sys("dup terminal", e))?,
        );
        io.stdout = Some(master);
    }

    let pid_text = std::fs::read_to_string(&paths.pid_file)
        .map_err(|e| MonitorError::path("read runtime pid file", &paths.pid_file, e))?;
    let _ = std::fs::remove_file(&paths.pid_file);
    let pid: libc::pid_t = pid_text.trim().parse().map_err(|_| {
        MonitorError::Runtime(format!("runtime pid file holds {pid_text:?}, not a pid"))
    })?;

    let oom = OomWatcher::new(pid);
    let signals = sys::sigchld_fd().map_err(|e| MonitorError::sys("create signalfd", e))?;
    let wake = sys::eventfd().map_err(|e| MonitorError::sys("create eventfd", e))?;
    let wake_loop = wake
        .try_clone()
        .map_err(|e| MonitorError::sys("dup eventfd", e))?;
    let (shared, commands) = Shared::new(
        args.id.clone(),
        pid,
        crid_common::timestamp::format(SystemTime::now()),
        runtime,
        args.socket_dir.clone(),
        wake,
    );
    let shared = Arc::new(shared);
    let event_loop = EventLoop::new(
        signals,
        wake_loop,
        io,
        log,
        attach,
        oom,
        shared.clone(),
        commands,
        args.stdin_once,
    )?;
    let server = crate::control::serve(&paths.control, shared.clone())?;
    Ok((
        pid,
        Running {
            event_loop,
            shared,
            server,
        },
    ))
}
