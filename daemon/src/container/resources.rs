//! CRI resources as OCI cgroup settings: CPU shares, quota, period and cpuset; memory limit
//! and swap; hugepages; the pids limit (from crid's configuration, as kubelet sends none per
//! container); unified cgroup v2 keys. Also oom_score_adj, clamped where crid may not lower
//! it. Used at create and by UpdateContainerResources (`runc update`).

use crid_proto::cri;
use oci_spec::runtime::{
    LinuxCpuBuilder, LinuxDeviceCgroup, LinuxHugepageLimitBuilder, LinuxMemoryBuilder,
    LinuxPidsBuilder, LinuxResources, LinuxResourcesBuilder,
};

use crate::spec_error::SpecError;

/// The capability number of CAP_SYS_RESOURCE.
const CAP_SYS_RESOURCE: u32 = 24;

fn invalid(message: String) -> SpecError {
    SpecError::Invalid(message)
}

/// Whether the host runs the unified (v2) cgroup hierarchy.
pub fn cgroup_v2() -> bool {
    std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
}

/// The OCI resources for `requested`, with `devices` rules and the configured pids limit.
pub fn linux_resources(
    requested: Option<&cri::LinuxContainerResources>,
    devices: Vec<LinuxDeviceCgroup>,
    pids_limit: i64,
) -> Result<LinuxResources, SpecError> {
    let mut builder = LinuxResourcesBuilder::default().devices(devices);
    if pids_limit > 0 {
        builder = builder.pids(LinuxPidsBuilder::default().limit(pids_limit).build()?);
    }
    let Some(r) = requested else {
        return Ok(builder.build()?);
    };
    let field = |name: &str| format!("config.linux.resources.{name}");
    for (name, value) in [
        ("cpu_period", r.cpu_period),
        ("cpu_quota", r.cpu_quota),
        ("cpu_shares", r.cpu_shares),
        ("memory_limit_in_bytes", r.memory_limit_in_bytes),
        ("memory_swap_limit_in_bytes", r.memory_swap_limit_in_bytes),
    ] {
        // -1 means "unlimited" for quota and swap; anything else negative is nonsense.
        if value < -1 {
            return Err(invalid(format!("{}: {value} is negative", field(name))));
        }
    }
    let mut cpu = LinuxCpuBuilder::default();
    let mut any_cpu = false;
    if r.cpu_shares > 0 {
        cpu = cpu.shares(r.cpu_shares as u64);
        any_cpu = true;
    }
    if r.cpu_quota != 0 {
        cpu = cpu.quota(r.cpu_quota);
        any_cpu = true;
    }
    if r.cpu_period > 0 {
        cpu = cpu.period(r.cpu_period as u64);
        any_cpu = true;
    }
    if !r.cpuset_cpus.is_empty() {
        cpu = cpu.cpus(r.cpuset_cpus.clone());
        any_cpu = true;
    }
    if !r.cpuset_mems.is_empty() {
        cpu = cpu.mems(r.cpuset_mems.clone());
        any_cpu = true;
    }
    if any_cpu {
        builder = builder.cpu(cpu.build()?);
    }
    if r.memory_limit_in_bytes > 0 || r.memory_swap_limit_in_bytes != 0 {
        let mut memory = LinuxMemoryBuilder::default();
        if r.memory_limit_in_bytes > 0 {
            memory = memory.limit(r.memory_limit_in_bytes);
        }
        if r.memory_swap_limit_in_bytes != 0 {
            if r.memory_swap_limit_in_bytes > 0
                && r.memory_limit_in_bytes > 0
                && r.memory_swap_limit_in_bytes < r.memory_limit_in_bytes
            {
                return Err(invalid(format!(
                    "{}: {} is below the memory limit {} (it counts memory plus swap)",
                    field("memory_swap_limit_in_bytes"),
                    r.memory_swap_limit_in_bytes,
                    r.memory_limit_in_bytes
                )));
            }
            memory = memory.swap(r.memory_swap_limit_in_bytes);
        }
        builder = builder.memory(memory.build()?);
    }
    if !r.hugepage_limits.is_empty() {
        let mut limits = Vec::new();
        for limit in &r.hugepage_limits {
            limits.push(
                LinuxHugepageLimitBuilder::default()
                    .page_size(limit.page_size.clone())
                    .limit(limit.limit as i64)
                    .build()?,
            );
        }
        builder = builder.hugepage_limits(limits);
    }
    if !r.unified.is_empty() {
        if !cgroup_v2() {
            return Err(invalid(format!(
                "{}: unified keys need cgroup v2; this host runs cgroup v1",
                field("unified")
            )));
        }
        builder = builder.unified(r.unified.clone());
    }
    Ok(builder.build()?)
}

/// The oom_score_adj a container gets: the requested value, but never below crid's own when
/// the kernel would refuse the lowering (without CAP_SYS_RESOURCE), as containerd's
/// `restrict_oom_score_adj` does.
pub fn oom_score_adj(requested: i64) -> Result<i32, SpecError> {
    if !(-1000..=1000).contains(&requested) {
        return Err(invalid(format!(
            "config.linux.resources.oom_score_adj: {requested} is outside -1000..=1000"
        )));
    }
    let own = std::fs::read_to_string("/proc/self/oom_score_adj")
        .ok()
        .and_then(|v| v.trim().parse::<i64>().ok())
        .unwrap_or(0);
    let may_lower = super::security::own_capabilities("CapEff")
        .is_some_and(|caps| caps & (1 << CAP_SYS_RESOURCE) != 0);
    let value = if may_lower {
        requested
    } else {
        requested.max(own)
    };
    Ok(value as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_and_memory_map_and_bad_values_are_refused() {
        let r = cri::LinuxContainerResources {
            cpu_shares: 512,
            cpu_quota: 50_000,
            cpu_period: 100_000,
            memory_limit_in_bytes: 64 << 20,
            memory_swap_limit_in_bytes: 64 << 20,
            ..Default::default()
        };
        let json = serde_json::to_value(linux_resources(Some(&r), Vec::new(), 100).expect("ok"))
            .expect("json");
        assert_eq!(json["cpu"]["shares"], 512);
        assert_eq!(json["cpu"]["quota"], 50_000);
        assert_eq!(json["memory"]["limit"], 64 << 20);
        assert_eq!(json["pids"]["limit"], 100);
        let low_swap = cri::LinuxContainerResources {
            memory_limit_in_bytes: 64 << 20,
            memory_swap_limit_in_bytes: 32 << 20,
            ..Default::default()
        };
        assert!(linux_resources(Some(&low_swap), Vec::new(), 0).is_err());
        assert!(oom_score_adj(1001).is_err());
        assert!(oom_score_adj(500).expect("valid") >= 500);
    }
}
