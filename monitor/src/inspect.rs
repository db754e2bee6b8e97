//! `crimon inspect SOCKET`: a live monitor's State and Stats as JSON, for operators.

use std::path::Path;

use crid_proto::monitor::sync as proto;
use crid_proto::ttrpc;

use crate::error::{MonitorError, Result};

/// How long inspect waits for an answer.
const TIMEOUT_NS: i64 = 5_000_000_000;

/// Queries the monitor at `socket` and returns the JSON text.
pub fn inspect(socket: &Path) -> Result<String> {
    let addr = format!("unix://{}", socket.display());
    let client = ttrpc::Client::connect(&addr)
        .map_err(|e| MonitorError::Ttrpc(format!("connect to {}: {e}", socket.display())))?;
    let client = proto::MonitorClient::new(client);
    let ctx = || ttrpc::context::with_timeout(TIMEOUT_NS);
    let rpc = |e: ttrpc::Error| MonitorError::Ttrpc(format!("{}: {e}", socket.display()));
    let state = client
        .state(ctx(), &proto::StateRequest::new())
        .map_err(rpc)?;
    let stats = client
        .stats(ctx(), &proto::StatsRequest::new())
        .map_err(rpc)?;
    let exited = state.status.enum_value_or_default() == proto::Status::EXITED;
    let json = serde_json::json!({
        "state": {
            "id": state.id,
            "pid": state.pid,
            "monitor_pid": state.monitor_pid,
            "status": if exited { "exited" } else { "created_or_running" },
            "created_at": state.created_at,
            "finished_at": state.finished_at,
            "exit_code": state.exit_code,
            "oom_killed": state.oom_killed,
        },
        "stats": {
            "log_bytes": stats.log_bytes,
            "log_lines": stats.log_lines,
            "log_dropped_bytes": stats.log_dropped_bytes,
            "log_reopens": stats.log_reopens,
            "attach_clients": stats.attach_clients,
            "attach_dropped_bytes": stats.attach_dropped_bytes,
            "exec_sync_calls": stats.exec_sync_calls,
        }
    });
    serde_json::to_string_pretty(&json).map_err(|e| MonitorError::Ttrpc(e.to_string()))
}
