//! What `runc exec` builds a process from, read before anything forks: runc's record of the
//! container (`<root>/<id>/state.json`: the init's pid and start time, the cgroups it joins,
//! the session keyring) and the process of the bundle's `config.json`, with the rules of the
//! Go code runc 1.1 applies to them reproduced exactly: the environment (`os.Setenv` order and
//! the `HOME` default), the user and groups (runc's `libcontainer/user` parsing of the
//! container's /etc/passwd and /etc/group) and the `PATH` lookup (`exec.LookPath`).
//!
//! Anything this module does not reproduce (a user namespace, an SELinux label, rlimits, a
//! seccomp listener, a spec field it does not know) is [`Unsupported`](crate::EnterError):
//! the caller runs `runc exec` instead.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::CString;
use std::path::PathBuf;

use serde::de::IgnoredAny;
use serde::Deserialize;

use crate::EnterError;
use crid_common::capabilities::ALL_CAPABILITIES;

/// Longest line Go's `bufio.Scanner` reads (its 64 KiB buffer, newline included): runc fails
/// on a longer line of /etc/passwd or /etc/group, so the direct path leaves such files to it.
const GO_SCANNER_MAX_LINE: usize = 64 * 1024 - 1;
/// runc's range for a uid or gid given as a number (`libcontainer/user`: 0..=2^31-1).
const MAX_ID: i64 = (1 << 31) - 1;

/// The part of runc's `state.json` the direct path needs.
#[derive(Debug, Deserialize)]
pub struct RuncState {
    pub init_process_pid: i32,
    /// The init's start time in clock ticks since boot (field 22 of /proc/<pid>/stat).
    pub init_process_start: u64,
    #[serde(default)]
    pub rootless: bool,
    /// Every cgroup directory runc placed the init in, by controller (`""`: the unified
    /// hierarchy of a hybrid host); `runc exec` writes its process into each `cgroup.procs`.
    #[serde(default)]
    pub cgroup_paths: BTreeMap<String, PathBuf>,
    #[serde(default)]
    pub intel_rdt_path: Option<String>,
    pub config: RuncConfig,
}

/// The part of runc's container configuration (`state.json`'s `config`) the direct path needs.
#[derive(Debug, Deserialize)]
pub struct RuncConfig {
    #[serde(default)]
    pub no_new_keyring: bool,
    #[serde(default)]
    pub umask: Option<u32>,
    #[serde(default)]
    pub rootless_euid: bool,
    #[serde(default)]
    pub rootless_cgroups: bool,
    #[serde(default)]
    pub uid_mappings: Option<Vec<IgnoredAny>>,
    #[serde(default)]
    pub gid_mappings: Option<Vec<IgnoredAny>>,
    #[serde(default)]
    pub process_label: String,
    /// Present when runc installed a seccomp filter in the init (and so would in an exec).
    #[serde(default)]
    pub seccomp: Option<IgnoredAny>,
    #[serde(default)]
    pub personality: Option<IgnoredAny>,
}

impl RuncState {
    pub fn parse(json: &[u8]) -> Result<RuncState, EnterError> {
        let state: RuncState = serde_json::from_slice(json)
            .map_err(|e| EnterError::Invalid(format!("runc state: {e}")))?;
        let unsupported = |what: &str| Err(EnterError::Unsupported(what.to_owned()));
        let config = &state.config;
        if state.rootless || config.rootless_euid || config.rootless_cgroups {
            return unsupported("a rootless container");
        }
        if config.uid_mappings.as_ref().is_some_and(|m| !m.is_empty())
            || config.gid_mappings.as_ref().is_some_and(|m| !m.is_empty())
        {
            return unsupported("a user namespace");
        }
        if !config.process_label.is_empty() {
            return unsupported("an SELinux process label");
        }
        if config.umask.is_some() {
            return unsupported("a process umask");
        }
        if config.personality.is_some() {
            return unsupported("a personality");
        }
        if state
            .intel_rdt_path
            .as_deref()
            .is_some_and(|p| !p.is_empty())
        {
            return unsupported("an Intel RDT group");
        }
        if state.init_process_pid <= 0 {
            return Err(EnterError::Invalid("runc state: no init pid".into()));
        }
        Ok(state)
    }
}

/// The five capability sets as bit masks (bit n: capability n).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CapSets {
    pub bounding: u64,
    pub effective: u64,
    pub permitted: u64,
    pub inheritable: u64,
    pub ambient: u64,
}

/// The process section of the bundle's config.json, as `runc exec` uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessSpec {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    pub env: Vec<String>,
    pub cwd: String,
    pub caps: CapSets,
    pub no_new_privileges: bool,
    pub apparmor_profile: String,
    pub oom_score_adj: Option<i32>,
    /// `linux.seccomp` is present: runc loads the container's filter (with flags 0: the
    /// spec names none the direct path would have to reproduce).
    pub seccomp: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SpecUser {
    uid: u32,
    gid: u32,
    #[serde(default)]
    additional_gids: Vec<u32>,
}

#[derive(Deserialize, Default)]
struct SpecCaps {
    #[serde(default)]
    bounding: Vec<String>,
    #[serde(default)]
    effective: Vec<String>,
    #[serde(default)]
    permitted: Vec<String>,
    #[serde(default)]
    inheritable: Vec<String>,
    #[serde(default)]
    ambient: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SpecSeccomp {
    #[serde(default)]
    flags: Vec<String>,
    #[serde(default)]
    listener_path: String,
    #[serde(default)]
    syscalls: Vec<SpecSyscall>,
}

#[derive(Deserialize)]
struct SpecSyscall {
    #[serde(default)]
    action: String,
}

/// Keys of `process` the direct path reproduces (or that do not reach an exec); any other key
/// means something it would not apply, so it declines.
const PROCESS_KEYS: &[&str] = &[
    "terminal",
    "user",
    "args",
    "env",
    "cwd",
    "capabilities",
    "noNewPrivileges",
    "apparmorProfile",
    "oomScoreAdj",
    "selinuxLabel",
    "rlimits",
];
const USER_KEYS: &[&str] = &["uid", "gid", "additionalGids"];

/// The bit of each capability name the kernel knows (`cap_last`: /proc/sys/kernel/cap_last_cap);
/// other names are ignored, as runc ignores "unknown or unavailable capabilities".
fn cap_mask(names: &[String], cap_last: u32) -> u64 {
    names
        .iter()
        .filter_map(|n| ALL_CAPABILITIES.iter().position(|c| c == n))
        .filter(|bit| *bit as u32 <= cap_last)
        .fold(0, |mask, bit| mask | (1 << bit))
}

impl ProcessSpec {
    /// Reads the bundle's config.json.
    pub fn parse(json: &[u8], cap_last: u32) -> Result<ProcessSpec, EnterError> {
        let invalid = |e: String| EnterError::Invalid(format!("config.json: {e}"));
        let unsupported = |what: String| Err(EnterError::Unsupported(what));
        let spec: serde_json::Value =
            serde_json::from_slice(json).map_err(|e| invalid(e.to_string()))?;
        let process = spec
            .get("process")
            .and_then(|p| p.as_object())
            .ok_or_else(|| invalid("no process".into()))?;
        if let Some(key) = process.keys().find(|k| !PROCESS_KEYS.contains(&k.as_str())) {
            return unsupported(format!("process.{key}"));
        }
        let empty = |v: Option<&serde_json::Value>| match v {
            None | Some(serde_json::Value::Null) => true,
            Some(serde_json::Value::String(s)) => s.is_empty(),
            Some(serde_json::Value::Array(a)) => a.is_empty(),
            Some(_) => false,
        };
        if !empty(process.get("selinuxLabel")) {
            return unsupported("an SELinux label".into());
        }
        if !empty(process.get("rlimits")) {
            return unsupported("rlimits".into());
        }
        let user = process
            .get("user")
            .and_then(|u| u.as_object())
            .ok_or_else(|| invalid("no process.user".into()))?;
        if let Some(key) = user.keys().find(|k| !USER_KEYS.contains(&k.as_str())) {
            return unsupported(format!("process.user.{key}"));
        }
        let user: SpecUser = serde_json::from_value(serde_json::Value::Object(user.clone()))
            .map_err(|e| invalid(format!("process.user: {e}")))?;
        // runc rejects an id past 2^31-1 that /etc/passwd does not name: its error, not ours.
        if i64::from(user.uid) > MAX_ID || i64::from(user.gid) > MAX_ID {
            return unsupported("a uid or gid past 2^31-1".into());
        }
        let field = |key: &str| process.get(key).cloned().unwrap_or_default();
        let env: Vec<String> = serde_json::from_value(match field("env") {
            serde_json::Value::Null => serde_json::Value::Array(Vec::new()),
            v => v,
        })
        .map_err(|e| invalid(format!("process.env: {e}")))?;
        let cwd = field("cwd").as_str().unwrap_or_default().to_owned();
        // runc's validateProcessSpec refuses a relative cwd.
        if !cwd.starts_with('/') {
            return unsupported(format!("cwd {cwd:?}"));
        }
        let caps: SpecCaps = match field("capabilities") {
            serde_json::Value::Null => SpecCaps::default(),
            v => serde_json::from_value(v).map_err(|e| invalid(format!("capabilities: {e}")))?,
        };
        let flag = |key: &str| field(key).as_bool().unwrap_or(false);
        let oom_score_adj = match field("oomScoreAdj") {
            serde_json::Value::Null => None,
            v => Some(serde_json::from_value(v).map_err(|e| invalid(format!("oomScoreAdj: {e}")))?),
        };
        let linux = spec.get("linux").cloned().unwrap_or_default();
        for key in ["personality", "intelRdt", "timeOffsets"] {
            if !empty(linux.get(key)) {
                return unsupported(format!("linux.{key}"));
            }
        }
        for key in ["uidMappings", "gidMappings"] {
            if !empty(linux.get(key)) {
                return unsupported("a user namespace".into());
            }
        }
        let seccomp = match linux.get("seccomp") {
            None | Some(serde_json::Value::Null) => false,
            Some(v) => {
                let seccomp: SpecSeccomp = serde_json::from_value(v.clone())
                    .map_err(|e| invalid(format!("linux.seccomp: {e}")))?;
                // TSYNC changes nothing for a single-threaded process; the others are
                // filter flags the installed filter does not show.
                if let Some(f) = seccomp
                    .flags
                    .iter()
                    .find(|f| *f != "SECCOMP_FILTER_FLAG_TSYNC")
                {
                    return unsupported(format!("seccomp flag {f}"));
                }
                if !seccomp.listener_path.is_empty()
                    || seccomp
                        .syscalls
                        .iter()
                        .any(|s| s.action == "SCMP_ACT_NOTIFY")
                {
                    return unsupported("a seccomp listener".into());
                }
                true
            }
        };
        Ok(ProcessSpec {
            uid: user.uid,
            gid: user.gid,
            additional_gids: user.additional_gids,
            env,
            cwd,
            caps: CapSets {
                bounding: cap_mask(&caps.bounding, cap_last),
                effective: cap_mask(&caps.effective, cap_last),
                permitted: cap_mask(&caps.permitted, cap_last),
                inheritable: cap_mask(&caps.inheritable, cap_last),
                ambient: cap_mask(&caps.ambient, cap_last),
            },
            no_new_privileges: flag("noNewPrivileges"),
            apparmor_profile: field("apparmorProfile")
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            oom_score_adj,
            seccomp,
        })
    }
}

/// Go's `strconv.Atoi` as runc's parser uses it (errors ignored): a decimal with an optional
/// sign; anything else is 0; out of range saturates.
pub fn go_atoi(text: &str) -> i64 {
    let (negative, digits) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return 0;
    }
    let mut value: i64 = 0;
    for b in digits.bytes() {
        let digit = i64::from(b - b'0');
        value = match value.checked_mul(10).and_then(|v| {
            if negative {
                v.checked_sub(digit)
            } else {
                v.checked_add(digit)
            }
        }) {
            Some(v) => v,
            None => return if negative { i64::MIN } else { i64::MAX },
        };
    }
    value
}

/// The lines `bufio.Scanner` yields (a trailing `\r` dropped); `None` when one is longer than
/// it reads (runc then fails, so the direct path declines).
fn scanner_lines(text: &str) -> Option<Vec<&str>> {
    let mut lines = Vec::new();
    for line in text.split_inclusive('\n') {
        let line = line.strip_suffix('\n').unwrap_or(line);
        if line.len() > GO_SCANNER_MAX_LINE {
            return None;
        }
        lines.push(line.strip_suffix('\r').unwrap_or(line));
    }
    Some(lines)
}

/// One line of /etc/passwd or /etc/group split as runc's `parseLine` does.
fn fields(line: &str) -> Vec<&str> {
    line.split(':').collect()
}

/// What the container's /etc/passwd and /etc/group give an exec as `uid:gid` with
/// `additional_gids` (runc's `GetExecUserPath` and `GetAdditionalGroupsPath`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecUser {
    /// `HOME` when the environment has none (the user's passwd entry, else `/`).
    pub home: String,
    /// The supplementary groups (sorted, distinct).
    pub groups: Vec<u32>,
}

/// Resolves the exec user from the files' contents (`None`: the file does not exist, as runc
/// treats any file it cannot open).
pub fn exec_user(
    uid: u32,
    additional_gids: &[u32],
    passwd: Option<&str>,
    group: Option<&str>,
) -> Result<ExecUser, EnterError> {
    let too_long = |file: &str| EnterError::Unsupported(format!("a line of {file} past 64 KiB"));
    let mut home = "/".to_owned();
    if let Some(passwd) = passwd {
        let lines = scanner_lines(passwd).ok_or_else(|| too_long("/etc/passwd"))?;
        // First match wins; lines are trimmed (`bytes.TrimSpace`), blank ones skipped.
        let matched = lines
            .iter()
            .map(|l| l.trim())
            .filter(|l| !l.is_empty())
            .map(fields)
            .find(|f| go_atoi(f.get(2).copied().unwrap_or_default()) == i64::from(uid));
        if let Some(entry) = matched {
            home = entry.get(5).copied().unwrap_or_default().to_owned();
        }
    }
    let groups_file = match group {
        Some(text) => Some(scanner_lines(text).ok_or_else(|| too_long("/etc/group"))?),
        None => None,
    };
    // The primary group is the spec's gid as given: runc's lookup of a numeric group only
    // confirms it.
    let mut chosen: Vec<i64> = Vec::new();
    if !additional_gids.is_empty() {
        let wanted: Vec<String> = additional_gids.iter().map(u32::to_string).collect();
        // Group lines are not trimmed; empty ones are skipped; a group matches by name or by
        // its gid's decimal form.
        let entries: Vec<(String, i64)> = groups_file
            .iter()
            .flatten()
            .filter(|l| !l.is_empty())
            .map(|l| {
                let f = fields(l);
                (
                    f.first().copied().unwrap_or_default().to_owned(),
                    go_atoi(f.get(2).copied().unwrap_or_default()),
                )
            })
            .filter(|(name, gid)| wanted.iter().any(|w| w == name || *w == gid.to_string()))
            .collect();
        let mut taken: HashSet<i64> = HashSet::new();
        for ag in &wanted {
            // The first matching group whose gid is not taken yet; else the number itself.
            let found = entries
                .iter()
                .find(|(name, gid)| (name == ag || gid.to_string() == *ag) && !taken.contains(gid));
            let gid = match found {
                Some((_, gid)) => *gid,
                None => go_atoi(ag),
            };
            taken.insert(gid);
        }
        chosen = taken.into_iter().collect();
    }
    let mut groups = Vec::with_capacity(chosen.len());
    for gid in chosen {
        match u32::try_from(gid) {
            Ok(g) if g != u32::MAX => groups.push(g),
            _ => return Err(EnterError::Unsupported(format!("group id {gid}"))),
        }
    }
    groups.sort_unstable();
    Ok(ExecUser { home, groups })
}

/// The environment runc's init execs with: `env` applied in order with `os.Setenv` (a
/// repeated name keeps its first place, with the last value), then `HOME` when empty or
/// absent.
pub fn go_environment(env: &[String], home: &str) -> Result<Vec<String>, EnterError> {
    let mut out: Vec<String> = Vec::with_capacity(env.len() + 1);
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut set = |out: &mut Vec<String>, name: &str, pair: String| match index.get(name) {
        Some(i) => out[*i] = pair,
        None => {
            index.insert(name.to_owned(), out.len());
            out.push(pair);
        }
    };
    for pair in env {
        let Some((name, value)) = pair.split_once('=') else {
            return Err(EnterError::Unsupported(format!(
                "environment entry {pair:?}"
            )));
        };
        if name.is_empty() || name.contains('\0') || value.contains('\0') {
            return Err(EnterError::Unsupported(format!(
                "environment entry {pair:?}"
            )));
        }
        set(&mut out, name, pair.clone());
    }
    let home_set = out.iter().any(|p| {
        p.split_once('=')
            .is_some_and(|(n, v)| n == "HOME" && !v.is_empty())
    });
    if !home_set {
        set(&mut out, "HOME", format!("HOME={home}"));
    }
    Ok(out)
}

/// Go's `filepath.Clean` of a path (lexical: `.` and `..` resolved, slashes collapsed).
fn go_clean(path: &str) -> String {
    let rooted = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|p| *p != "..") {
                    parts.pop();
                } else if !rooted {
                    parts.push("..");
                }
            }
            p => parts.push(p),
        }
    }
    let joined = parts.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".to_owned(),
        (false, false) => joined,
    }
}

/// A path `exec.LookPath` tries, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub path: CString,
    /// Found through a relative `PATH` entry: Go refuses it (`ErrDot`), so runc fails.
    pub refused: bool,
}

/// The paths `exec.LookPath(program)` tries with `PATH` from `env` (Go 1.19, as in runc
/// 1.1): the program itself when it holds a `/`, else each `PATH` entry joined with it.
pub fn lookup_candidates(program: &str, env: &[String]) -> Result<Vec<Candidate>, EnterError> {
    let cstring = |s: String| {
        CString::new(s).map_err(|_| EnterError::Unsupported("a NUL in the command".into()))
    };
    if program.contains('/') {
        return Ok(vec![Candidate {
            path: cstring(program.to_owned())?,
            refused: false,
        }]);
    }
    let path = env
        .iter()
        .rev()
        .find_map(|p| p.strip_prefix("PATH="))
        .unwrap_or_default();
    if path.is_empty() {
        return Ok(Vec::new());
    }
    path.split(':')
        .map(|dir| {
            let dir = if dir.is_empty() { "." } else { dir };
            let joined = go_clean(&format!("{dir}/{program}"));
            Ok(Candidate {
                refused: !joined.starts_with('/'),
                path: cstring(joined)?,
            })
        })
        .collect()
}

/// The clock-tick start time of a process (field 22 of /proc/<pid>/stat).
pub fn start_time(stat: &str) -> Option<u64> {
    // The command (field 2) is in parentheses and may hold anything: start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// The soft and hard "Max open files" of a /proc/<pid>/limits text (`u64::MAX`: unlimited).
pub fn nofile_limits(limits: &str) -> Option<(u64, u64)> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let mut values = line["Max open files".len()..].split_whitespace().map(|v| {
        if v == "unlimited" {
            Some(u64::MAX)
        } else {
            v.parse().ok()
        }
    });
    Some((values.next()??, values.next()??))
}

/// Signals the Go runtime leaves alone (`_SigDefault`/`_SigSetStack`, and SIGHUP/SIGINT when
/// ignored): an ignored one stays ignored through runc's Go processes into the exec'd one;
/// every other signal reaches it with its default action.
pub const GO_KEEPS_IGNORED: u64 = (1 << (libc::SIGHUP - 1))
    | (1 << (libc::SIGINT - 1))
    | (1 << (libc::SIGCONT - 1))
    | (1 << (libc::SIGTSTP - 1))
    | (1 << (libc::SIGTTIN - 1))
    | (1 << (libc::SIGTTOU - 1))
    | (1 << (32 - 1))
    | (1 << (33 - 1));

/// The `SigIgn` mask of a /proc/<pid>/status text.
pub fn ignored_signals(status: &str) -> Option<u64> {
    let hex = status.lines().find_map(|l| l.strip_prefix("SigIgn:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

/// A field of a /proc/<pid>/status text, trimmed.
fn status_field<'a>(status: &'a str, name: &str) -> Option<&'a str> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .map(str::trim)
}

/// The `Seccomp_filters` count of a /proc/<pid>/status text.
pub fn seccomp_filters(status: &str) -> Option<usize> {
    status_field(status, "Seccomp_filters")?.parse().ok()
}

/// The `PPid` of a /proc/<pid>/status text.
pub fn parent_pid(status: &str) -> Option<i32> {
    status_field(status, "PPid")?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn atoi_follows_go() {
        assert_eq!(go_atoi("1000"), 1000);
        assert_eq!(go_atoi("+7"), 7);
        assert_eq!(go_atoi("-5"), -5);
        assert_eq!(go_atoi(""), 0);
        assert_eq!(go_atoi("x"), 0);
        assert_eq!(go_atoi("12a"), 0);
        assert_eq!(go_atoi("99999999999999999999"), i64::MAX);
        assert_eq!(go_atoi("-99999999999999999999"), i64::MIN);
    }

    #[test]
    fn environment_keeps_first_place_and_last_value_and_adds_home() {
        let env = strings(&["PATH=/bin", "A=1", "B=2", "A=3"]);
        assert_eq!(
            go_environment(&env, "/root").expect("environment"),
            strings(&["PATH=/bin", "A=3", "B=2", "HOME=/root"])
        );
        // A set HOME stays; an empty one is replaced in place.
        let env = strings(&["HOME=/h", "X=y"]);
        assert_eq!(go_environment(&env, "/root").expect("environment"), env);
        let env = strings(&["HOME=", "X=y"]);
        assert_eq!(
            go_environment(&env, "/root").expect("environment"),
            strings(&["HOME=/root", "X=y"])
        );
        assert!(go_environment(&strings(&["NOEQUALS"]), "/").is_err());
        assert!(go_environment(&strings(&["=x"]), "/").is_err());
    }

    #[test]
    fn home_comes_from_the_first_passwd_entry_of_the_uid() {
        let passwd = "root:x:0:0:root:/root:/bin/sh\n\n  tester:x:1000:1000::/home/t:/bin/sh  \n\
                      again:x:1000:1000::/other:/bin/sh\nshort:x:1001\n";
        let user = |uid| {
            exec_user(uid, &[], Some(passwd), None)
                .expect("resolved")
                .home
        };
        assert_eq!(user(0), "/root");
        assert_eq!(user(1000), "/home/t");
        assert_eq!(user(1001), "", "a matched entry without a home field");
        assert_eq!(user(2000), "/", "no entry: runc's default");
        assert_eq!(exec_user(5, &[], None, None).expect("resolved").home, "/");
        // A comment line parses as uid 0 (Go's ignored Atoi error) and comes first.
        let commented = "# uid 0 by accident\nroot:x:0:0:root:/root:/bin/sh\n";
        assert_eq!(
            exec_user(0, &[], Some(commented), None)
                .expect("resolved")
                .home,
            ""
        );
    }

    #[test]
    fn additional_groups_follow_runc() {
        let group = "root:x:0:\nwheel:x:10:root\n3000:x:42:\nstaff:x:50:\n";
        let groups = |gids: &[u32]| {
            exec_user(0, gids, None, Some(group))
                .expect("resolved")
                .groups
        };
        assert_eq!(groups(&[0, 10]), vec![0, 10]);
        assert_eq!(
            groups(&[3000]),
            vec![42],
            "a group named 3000 wins over the number"
        );
        assert_eq!(groups(&[50, 50, 7]), vec![7, 50], "distinct, sorted");
        assert_eq!(groups(&[]), Vec::<u32>::new());
        assert_eq!(
            exec_user(0, &[9], None, None).expect("resolved").groups,
            vec![9],
            "no /etc/group: the numbers"
        );
        let long = format!("big:x:1:{}\n", "u,".repeat(40_000));
        assert!(exec_user(0, &[1], None, Some(&long)).is_err());
    }

    #[test]
    fn lookup_follows_go_1_19() {
        let env = strings(&["PATH=/usr/local/bin:/usr/bin/:/a/../bin:rel:", "X=1"]);
        let paths: Vec<(String, bool)> = lookup_candidates("ls", &env)
            .expect("candidates")
            .into_iter()
            .map(|c| (c.path.into_string().expect("utf-8"), c.refused))
            .collect();
        assert_eq!(
            paths,
            vec![
                ("/usr/local/bin/ls".into(), false),
                ("/usr/bin/ls".into(), false),
                ("/bin/ls".into(), false),
                ("rel/ls".into(), true),
                ("ls".into(), true),
            ]
        );
        let direct = lookup_candidates("./x", &env).expect("candidates");
        assert_eq!(direct.len(), 1);
        assert_eq!(direct[0].path.to_str().expect("utf-8"), "./x");
        let no_path = lookup_candidates("ls", &strings(&["A=1"])).expect("candidates");
        assert!(no_path.is_empty());
        // The last PATH wins, as with os.Setenv.
        let twice = strings(&["PATH=/a", "PATH=/b"]);
        assert_eq!(
            lookup_candidates("ls", &twice).expect("candidates")[0]
                .path
                .to_str()
                .expect("utf-8"),
            "/b/ls"
        );
    }

    #[test]
    fn proc_fields() {
        let stat = "42 (a (weird) name) S 1 42 42 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 \
                    1208850 1000 100";
        assert_eq!(start_time(stat), Some(1_208_850));
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            10000                20000                files\n";
        assert_eq!(nofile_limits(limits), Some((10_000, 20_000)));
        let status = "Name:\tcrimon\nPPid:\t77\nSigIgn:\t0000000080001000\n\
                      CapBnd:\t000001ffffffffff\nSeccomp:\t2\nSeccomp_filters:\t2\n";
        assert_eq!(ignored_signals(status), Some(0x8000_1000));
        assert_eq!(seccomp_filters(status), Some(2));
        assert_eq!(parent_pid(status), Some(77));
    }

    #[test]
    fn config_json_process() {
        let json = serde_json::json!({
            "process": {
                "terminal": false,
                "user": {"uid": 1000, "gid": 1000, "additionalGids": [1000, 3000]},
                "args": ["sleep", "1"],
                "env": ["PATH=/bin"],
                "cwd": "/",
                "capabilities": {
                    "bounding": ["CAP_CHOWN", "CAP_KILL", "CAP_NO_SUCH"],
                    "effective": ["CAP_CHOWN"],
                    "permitted": ["CAP_CHOWN", "CAP_CHECKPOINT_RESTORE"],
                    "ambient": []
                },
                "noNewPrivileges": true,
                "oomScoreAdj": 5
            },
            "linux": {"seccomp": {"defaultAction": "SCMP_ACT_ERRNO", "syscalls": []}}
        });
        let spec = ProcessSpec::parse(json.to_string().as_bytes(), 39).expect("spec");
        assert_eq!((spec.uid, spec.gid), (1000, 1000));
        assert_eq!(spec.additional_gids, vec![1000, 3000]);
        assert_eq!(spec.caps.bounding, 1 | (1 << 5));
        assert_eq!(spec.caps.effective, 1);
        assert_eq!(spec.caps.permitted, 1, "capability 40 is past cap_last_cap");
        assert_eq!(spec.caps.inheritable, 0);
        assert!(spec.no_new_privileges && spec.seccomp);
        assert_eq!(spec.oom_score_adj, Some(5));

        let declined = |mut json: serde_json::Value, pointer: &str, value: serde_json::Value| {
            *json.pointer_mut(pointer).expect("pointer") = value;
            matches!(
                ProcessSpec::parse(json.to_string().as_bytes(), 40),
                Err(EnterError::Unsupported(_))
            )
        };
        let base = json.clone();
        let mut with_label = base.clone();
        with_label["process"]["selinuxLabel"] = "system_u:system_r:container_t:s0".into();
        assert!(matches!(
            ProcessSpec::parse(with_label.to_string().as_bytes(), 40),
            Err(EnterError::Unsupported(_))
        ));
        let mut unknown = base.clone();
        unknown["process"]["scheduler"] = serde_json::json!({"policy": "SCHED_OTHER"});
        assert!(matches!(
            ProcessSpec::parse(unknown.to_string().as_bytes(), 40),
            Err(EnterError::Unsupported(_))
        ));
        assert!(declined(
            base.clone(),
            "/linux/seccomp",
            serde_json::json!({"flags": ["SECCOMP_FILTER_FLAG_LOG"]})
        ));
        assert!(declined(
            base.clone(),
            "/linux/seccomp",
            serde_json::json!({"listenerPath": "/run/l.sock"})
        ));
        assert!(declined(base.clone(), "/process/cwd", "relative".into()));
        assert!(declined(base, "/process/user/uid", (1u64 << 31).into()));
    }

    #[test]
    fn runc_state() {
        let json = serde_json::json!({
            "init_process_pid": 42,
            "init_process_start": 1208850,
            "rootless": false,
            "cgroup_paths": {"": "/sys/fs/cgroup/unified/x", "pids": "/sys/fs/cgroup/pids/x"},
            "config": {"no_new_keyring": false, "umask": null, "seccomp": {"big": [1, 2]},
                       "uid_mappings": null, "labels": ["bundle=/b"]}
        });
        let state = RuncState::parse(json.to_string().as_bytes()).expect("state");
        assert_eq!(state.init_process_pid, 42);
        assert_eq!(state.cgroup_paths.len(), 2);
        assert!(state.config.seccomp.is_some());
        let mut userns = json.clone();
        userns["config"]["uid_mappings"] =
            serde_json::json!([{"container_id": 0, "host_id": 1000, "size": 1}]);
        assert!(matches!(
            RuncState::parse(userns.to_string().as_bytes()),
            Err(EnterError::Unsupported(_))
        ));
    }

    #[test]
    fn clean_is_lexical() {
        assert_eq!(go_clean("/usr//bin/./ls"), "/usr/bin/ls");
        assert_eq!(go_clean("/../x"), "/x");
        assert_eq!(go_clean("a/../../b"), "../b");
        assert_eq!(go_clean("./ls"), "ls");
    }
}
