//! The ttrpc control service on `<socket-dir>/<id>.sock`.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crid_proto::monitor::sync as proto;
use crid_proto::ttrpc;

use crate::error::{MonitorError, Result};
use crate::shared::{Counters, LoopCommand, Shared};

/// Worker threads of the control server: the fewest ttrpc allows idle (it wants the default
/// above the minimum), more under concurrent calls (Wait and ExecSync block a worker for as
/// long as they run).
const WORKERS_MIN: usize = 1;
const WORKERS_DEFAULT: usize = 2;
const WORKERS_MAX: usize = 16;

struct ControlService {
    shared: Arc<Shared>,
}

impl proto::Monitor for ControlService {
    fn state(
        &self,
        _: &ttrpc::TtrpcContext,
        _: proto::StateRequest,
    ) -> ttrpc::Result<proto::StateResponse> {
        let shared = &self.shared;
        let mut resp = proto::StateResponse {
            id: shared.id.clone(),
            pid: shared.pid,
            created_at: shared.created_at.clone(),
            monitor_pid: std::process::id() as i32,
            ..Default::default()
        };
        if let Some(exit) = shared.exit() {
            resp.status = proto::Status::EXITED.into();
            resp.exit_code = exit.exit_code;
            resp.finished_at = exit.finished_at;
            resp.oom_killed = exit.oom_killed;
        }
        Ok(resp)
    }

    fn wait(
        &self,
        _: &ttrpc::TtrpcContext,
        _: proto::WaitRequest,
    ) -> ttrpc::Result<proto::WaitResponse> {
        self.shared.active_waiters.fetch_add(1, Ordering::SeqCst);
        let exit = self.shared.wait_exit();
        let resp = proto::WaitResponse {
            exit_code: exit.exit_code,
            finished_at: exit.finished_at,
            oom_killed: exit.oom_killed,
            ..Default::default()
        };
        self.shared.active_waiters.fetch_sub(1, Ordering::SeqCst);
        Ok(resp)
    }

    fn resize(
        &self,
        _: &ttrpc::TtrpcContext,
        req: proto::ResizeRequest,
    ) -> ttrpc::Result<proto::Empty> {
        let (Ok(width), Ok(height)) = (u16::try_from(req.width), u16::try_from(req.height)) else {
            return Err(MonitorError::InvalidArgument(format!(
                "terminal size {}x{} is out of range",
                req.width, req.height
            ))
            .into());
        };
        self.shared
            .ask_loop(|reply| LoopCommand::Resize {
                width,
                height,
                reply,
            })
            .map(|()| proto::Empty::default())
            .map_err(Into::into)
    }

    fn reopen_log(
        &self,
        _: &ttrpc::TtrpcContext,
        _: proto::ReopenLogRequest,
    ) -> ttrpc::Result<proto::Empty> {
        self.shared
            .ask_loop(LoopCommand::ReopenLog)
            .map(|()| proto::Empty::default())
            .map_err(Into::into)
    }

    fn close_stdin(
        &self,
        _: &ttrpc::TtrpcContext,
        _: proto::CloseStdinRequest,
    ) -> ttrpc::Result<proto::Empty> {
        self.shared
            .ask_loop(LoopCommand::CloseStdin)
            .map(|()| proto::Empty::default())
            .map_err(Into::into)
    }

    fn exec_sync(
        &self,
        _: &ttrpc::TtrpcContext,
        req: proto::ExecSyncRequest,
    ) -> ttrpc::Result<proto::ExecSyncResponse> {
        crate::exec_sync::run(&self.shared, &req).map_err(Into::into)
    }

    fn stats(
        &self,
        _: &ttrpc::TtrpcContext,
        _: proto::StatsRequest,
    ) -> ttrpc::Result<proto::StatsResponse> {
        let c = &self.shared.counters;
        Ok(proto::StatsResponse {
            log_bytes: Counters::get(&c.log_bytes),
            log_lines: Counters::get(&c.log_lines),
            log_dropped_bytes: Counters::get(&c.log_dropped_bytes),
            attach_dropped_bytes: Counters::get(&c.attach_dropped_bytes),
            attach_clients: Counters::get(&c.attach_clients) as u32,
            log_reopens: Counters::get(&c.log_reopens),
            exec_sync_calls: Counters::get(&c.exec_sync_calls),
            ..Default::default()
        })
    }
}

/// Starts the control server on `path` (mode 0600). It runs on its own threads until the
/// process exits.
pub fn serve(path: &Path, shared: Arc<Shared>) -> Result<ttrpc::Server> {
    let addr = format!("unix://{}", path.display());
    let service = proto::create_monitor(Arc::new(ControlService { shared }));
    let mut server = ttrpc::Server::new()
        .bind(&addr)
        .map_err(|e| MonitorError::Ttrpc(format!("bind {}: {e}", path.display())))?
        .register_service(service)
        .set_thread_count_default(WORKERS_DEFAULT)
        .set_thread_count_min(WORKERS_MIN)
        .set_thread_count_max(WORKERS_MAX);
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .map_err(|e| MonitorError::path("chmod control socket", path, e))?;
    server
        .start()
        .map_err(|e| MonitorError::Ttrpc(format!("start on {}: {e}", path.display())))?;
    Ok(server)
}
