//! Bounds crid and crimon must agree on.

/// Largest gRPC message crid's CRI server sends or accepts: kubelet's CRI client bound
/// (`maxMsgSize`, 16 MiB, in kubelet's remote runtime client; crictl uses the same).
pub const CRI_MAX_MESSAGE_BYTES: usize = 16 << 20;

/// Room left in an ExecSyncResponse for everything but the output: two length-delimited
/// field headers (at most 5 bytes each) and the exit code (at most 11 bytes), with margin.
pub const EXEC_SYNC_RESPONSE_OVERHEAD: usize = 4096;

/// Most bytes of stdout and stderr *together* one ExecSync keeps, so the reply always fits in
/// [`CRI_MAX_MESSAGE_BYTES`]: bytes are kept in the order they arrive, on either stream, and
/// the rest is read and thrown away (the command never blocks) and reported as truncated.
/// CRI-O bounds the same sum (conmon writes both streams to one exec log capped at 16 MiB,
/// CRI-O's fix for CVE-2022-1708); containerd caps each stream (CVE-2022-31030), which lets
/// the two together exceed what a kubelet accepts.
pub const EXEC_SYNC_MAX_OUTPUT: u64 = (CRI_MAX_MESSAGE_BYTES - EXEC_SYNC_RESPONSE_OVERHEAD) as u64;
