//! AppArmor: the profile a container runs under. Where the kernel has AppArmor, crid loads its
//! own default profile, `crid-default` (the text is [`default_profile_text`]), at startup
//! unless it is loaded already, and RuntimeDefault uses it, as CRI-O does with `crio-default`
//! and containerd with `cri-containerd.apparmor.d`. Localhost profiles must be loaded (a clear
//! error otherwise). Where the kernel has no AppArmor, asking for a Localhost profile is an
//! error (never a silent success); RuntimeDefault and Unconfined mean no profile, which is all
//! such a host can give (RuntimeDefault says so in the log).
//!
//! The kernel facts behind these decisions come through [`Host`], so the decisions are tested
//! on hosts without AppArmor.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crid_proto::cri;

use crate::spec_error::SpecError;
use crid_child::{self as child, ChildError};

/// The profile RuntimeDefault means when it is loaded.
pub const DEFAULT_PROFILE: &str = "crid-default";

/// Bounds of one `apparmor_parser` run: it compiles one small profile (well under a second)
/// and prints at most a few warnings.
const PARSER_BOUNDS: child::Bounds = child::Bounds {
    stdout: 64 << 10,
    stderr: 64 << 10,
    timeout: Duration::from_secs(60),
};

/// Where `apparmor_parser` is looked for (it lives in sbin, often outside crid's `$PATH`).
const PARSER_PATHS: [&str; 2] = ["/sbin/apparmor_parser", "/usr/sbin/apparmor_parser"];

/// The kernel and host facts AppArmor decisions depend on.
pub trait Host {
    /// The kernel has AppArmor on (`/sys/module/apparmor/parameters/enabled` is `Y`).
    fn enabled(&self) -> bool;
    /// A profile of that name is loaded (`/sys/kernel/security/apparmor/profiles`).
    fn loaded(&self, name: &str) -> bool;
    /// The `apparmor_parser` program, if installed.
    fn parser(&self) -> Option<PathBuf>;
}

/// The running kernel.
#[derive(Debug, Clone, Copy, Default)]
pub struct Kernel;

impl Host for Kernel {
    fn enabled(&self) -> bool {
        std::fs::read_to_string("/sys/module/apparmor/parameters/enabled")
            .is_ok_and(|v| v.trim() == "Y")
    }

    fn loaded(&self, name: &str) -> bool {
        std::fs::read_to_string("/sys/kernel/security/apparmor/profiles").is_ok_and(|list| {
            list.lines()
                .any(|l| l.rsplit_once(" (").map_or(l, |(n, _)| n) == name)
        })
    }

    fn parser(&self) -> Option<PathBuf> {
        PARSER_PATHS.iter().map(PathBuf::from).find(|p| p.is_file())
    }
}

/// crid's default profile for containers. Written for crid (not copied), to the same effect
/// as the profiles CRI-O and containerd generate: everything the container's capabilities,
/// seccomp filter and mounts allow, less what would reach the host through procfs and sysfs,
/// mount-table changes, and signals or ptrace across the profile's boundary. The text does
/// not depend on the host (no includes, no tunables), so it loads wherever
/// `apparmor_parser` does and a test pins it.
pub fn default_profile_text() -> String {
    format!(
        r#"# {name}: crid's AppArmor profile for containers that ask for RuntimeDefault.
# crid loads it at startup (apparmor_parser -Kr) when no profile of this name is loaded.
profile {name} flags=(attach_disconnected,mediate_deleted) {{
  # The container's capabilities, seccomp filter and mounts already bound these.
  file,
  network,
  capability,

  # Signals and ptrace stay among processes under this profile; the runtime, crimon and crid
  # (unconfined) may signal them.
  signal (send,receive) peer={name},
  signal (receive) peer=unconfined,
  ptrace (trace,read,tracedby,readby) peer={name},

  # The mount table stays as the runtime made it: unmounting would uncover a masked path.
  deny mount,
  deny umount,
  deny pivot_root,

  # /proc: a process's own directory (/proc/<pid>/...) stays writable; the files at the top
  # (sysrq-trigger, kcore...) and the host-wide directories (/proc/bus, /proc/fs, /proc/irq,
  # /proc/sysvipc...) do not. (/proc/self resolves to /proc/<pid> before this is matched.)
  deny /proc/* w,
  deny /proc/[^0-9s]*/** w,
  deny /proc/s[^y]*/** w,
  deny /proc/sy[^s]*/** w,
  deny /proc/sys?*/** w,
  deny /proc/{{kcore,kmsg,sysrq-trigger}} rwklx,

  # /proc/sys: the runtime sets a pod's sysctls before this profile applies; the container
  # itself may write none but its IPC namespace's shared-memory limits (kernel/shm*).
  deny /proc/sys/[^k]*/** w,
  deny /proc/sys/{{k[^e],ke[^r],ker[^n],kern[^e],kerne[^l],kernel?}}*/** w,
  deny /proc/sys/kernel/{{[^s],s[^h],sh[^m]}}* w,
  deny /proc/sys/kernel/*/** w,

  # /sys: nothing writable but the cgroup tree (mounted read-only by the runtime unless the
  # pod asks otherwise); firmware tables and the LSM interfaces are not even readable.
  deny /sys/{{[^f],f[^s],fs?}}*/** wklx,
  deny /sys/fs/{{[^c],c[^g],cg[^r],cgr[^o],cgro[^u],cgrou[^p],cgroup?}}*/** wklx,
  deny /sys/firmware/** rwklx,
  deny /sys/kernel/security/** rwklx,
}}
"#,
        name = DEFAULT_PROFILE
    )
}

/// What crid does about its default profile at startup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Startup {
    /// The kernel has no AppArmor: RuntimeDefault means no profile (warned per container).
    Disabled,
    /// A profile named crid-default is loaded already (an earlier crid, or the operator's).
    Loaded,
    /// It must be loaded with this `apparmor_parser`.
    Load(PathBuf),
    /// AppArmor is on but `apparmor_parser` is not installed: crid cannot load its profile.
    NoParser,
}

/// The startup decision for `host`.
pub fn startup(host: &dyn Host) -> Startup {
    if !host.enabled() {
        Startup::Disabled
    } else if host.loaded(DEFAULT_PROFILE) {
        Startup::Loaded
    } else {
        host.parser().map_or(Startup::NoParser, Startup::Load)
    }
}

/// Errors loading the default profile.
#[derive(Debug, thiserror::Error)]
pub enum AppArmorError {
    #[error("AppArmor is enabled but apparmor_parser is not installed (looked in {PARSER_PATHS:?}): cannot load {DEFAULT_PROFILE}")]
    NoParser,
    #[error("loading AppArmor profile {DEFAULT_PROFILE} with {parser}")]
    Run {
        parser: PathBuf,
        #[source]
        err: ChildError,
    },
    #[error("loading AppArmor profile {DEFAULT_PROFILE} with {parser} failed: {message}")]
    Failed { parser: PathBuf, message: String },
}

/// Loads `text` with `apparmor_parser -Kr` (replace, skip the cache) from standard input.
pub async fn load(parser: &Path, text: &str) -> Result<(), AppArmorError> {
    let mut cmd = tokio::process::Command::new(parser);
    cmd.arg("-Kr");
    let finished = child::run(cmd, Some(text.as_bytes()), PARSER_BOUNDS)
        .await
        .map_err(|err| AppArmorError::Run {
            parser: parser.to_owned(),
            err,
        })?;
    if finished.status.success() {
        return Ok(());
    }
    Err(AppArmorError::Failed {
        parser: parser.to_owned(),
        message: finished.stderr_text(),
    })
}

/// At startup: loads crid-default where the kernel has AppArmor and it is not loaded yet.
/// Never fatal: where it cannot be loaded, crid says so once here, and RuntimeDefault
/// containers run without a profile, with a warning each (as on a host without AppArmor).
pub async fn load_default_profile(host: &dyn Host) -> Result<Startup, AppArmorError> {
    let decision = startup(host);
    match &decision {
        Startup::Disabled => {
            tracing::info!("the kernel has no AppArmor: RuntimeDefault containers run without an AppArmor profile");
        }
        Startup::Loaded => {
            tracing::info!(profile = DEFAULT_PROFILE, "AppArmor profile already loaded");
        }
        Startup::NoParser => return Err(AppArmorError::NoParser),
        Startup::Load(parser) => {
            load(parser, &default_profile_text()).await?;
            tracing::info!(profile = DEFAULT_PROFILE, "AppArmor profile loaded");
        }
    }
    Ok(decision)
}

/// The profile to put in the spec (None: unconfined).
pub fn profile(
    sc: Option<&cri::LinuxContainerSecurityContext>,
    privileged: bool,
) -> Result<Option<String>, SpecError> {
    profile_on(&Kernel, sc, privileged)
}

/// [`profile`] on `host`.
pub fn profile_on(
    host: &dyn Host,
    sc: Option<&cri::LinuxContainerSecurityContext>,
    privileged: bool,
) -> Result<Option<String>, SpecError> {
    // Left empty, the field means the runtime's default for a container that is not
    // privileged (containerd and CRI-O, after kubernetes#51746), without the warning an
    // explicit RuntimeDefault gets where it cannot be had.
    let implicit_default = || {
        let on = !privileged && host.enabled() && host.loaded(DEFAULT_PROFILE);
        Ok(on.then(|| DEFAULT_PROFILE.to_owned()))
    };
    let Some(sc) = sc else {
        return implicit_default();
    };
    use cri::security_profile::ProfileType;
    // The structured field, else the deprecated string kubelet may still send.
    #[allow(deprecated)]
    let legacy = sc.apparmor_profile.as_str();
    let (kind, name) = match &sc.apparmor {
        Some(p) => (
            ProfileType::try_from(p.profile_type).ok(),
            p.localhost_ref.clone(),
        ),
        None => match legacy {
            "" => return implicit_default(),
            "unconfined" => (Some(ProfileType::Unconfined), String::new()),
            "runtime/default" => (Some(ProfileType::RuntimeDefault), String::new()),
            other => match other.strip_prefix("localhost/") {
                Some(name) => (Some(ProfileType::Localhost), name.to_owned()),
                None => {
                    return Err(SpecError::Invalid(format!(
                        "config.linux.security_context.apparmor_profile: unknown profile {other:?}"
                    )))
                }
            },
        },
    };
    if privileged {
        return Ok(None);
    }
    match kind {
        Some(ProfileType::Unconfined) => Ok(None),
        Some(ProfileType::RuntimeDefault) => {
            if host.enabled() && host.loaded(DEFAULT_PROFILE) {
                Ok(Some(DEFAULT_PROFILE.to_owned()))
            } else {
                tracing::warn!("AppArmor RuntimeDefault asked for, but this host has no {DEFAULT_PROFILE} profile loaded (or no AppArmor): the container runs without an AppArmor profile");
                Ok(None)
            }
        }
        Some(ProfileType::Localhost) => {
            if !host.enabled() {
                return Err(SpecError::Invalid(format!(
                    "config.linux.security_context.apparmor: AppArmor is not enabled on this host; cannot apply profile {name:?}"
                )));
            }
            if !host.loaded(&name) {
                return Err(SpecError::Invalid(format!(
                    "config.linux.security_context.apparmor: profile {name:?} is not loaded"
                )));
            }
            Ok(Some(name))
        }
        None => Err(SpecError::Invalid(
            "config.linux.security_context.apparmor: unknown profile type".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A host whose AppArmor facts the test chooses.
    struct FakeHost {
        enabled: bool,
        loaded: Vec<&'static str>,
        parser: Option<PathBuf>,
    }

    impl Host for FakeHost {
        fn enabled(&self) -> bool {
            self.enabled
        }
        fn loaded(&self, name: &str) -> bool {
            self.loaded.contains(&name)
        }
        fn parser(&self) -> Option<PathBuf> {
            self.parser.clone()
        }
    }

    fn host(enabled: bool, loaded: &[&'static str]) -> FakeHost {
        FakeHost {
            enabled,
            loaded: loaded.to_vec(),
            parser: Some(PathBuf::from("/usr/sbin/apparmor_parser")),
        }
    }

    fn security(
        kind: cri::security_profile::ProfileType,
        name: &str,
    ) -> cri::LinuxContainerSecurityContext {
        cri::LinuxContainerSecurityContext {
            apparmor: Some(cri::SecurityProfile {
                profile_type: kind as i32,
                localhost_ref: name.to_owned(),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn the_default_profile_names_itself_and_holds_the_denies() {
        let text = default_profile_text();
        assert_eq!(text, default_profile_text(), "stable");
        assert!(text.contains("profile crid-default flags=(attach_disconnected,mediate_deleted) {"));
        for rule in [
            "deny mount,",
            "deny umount,",
            "deny pivot_root,",
            "signal (send,receive) peer=crid-default,",
            "ptrace (trace,read,tracedby,readby) peer=crid-default,",
            "deny /proc/* w,",
            "deny /proc/{kcore,kmsg,sysrq-trigger} rwklx,",
            "deny /proc/sys/[^k]*/** w,",
            "deny /proc/sys/kernel/{[^s],s[^h],sh[^m]}* w,",
            "deny /sys/firmware/** rwklx,",
            "deny /sys/kernel/security/** rwklx,",
        ] {
            assert!(text.lines().any(|l| l.trim() == rule), "missing {rule:?}");
        }
        // No allow rule that a deny cannot override: every path rule is a deny.
        for line in text.lines().map(str::trim) {
            if line.starts_with('/') {
                panic!("an allow path rule: {line}");
            }
        }
        // The shape apparmor_parser needs: one block, every rule ends with a comma.
        assert_eq!(text.matches('{').count(), text.matches('}').count());
        let body: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .collect();
        assert!(body[0].starts_with("profile crid-default "));
        assert_eq!(*body.last().expect("lines"), "}");
        for rule in &body[1..body.len() - 1] {
            assert!(rule.ends_with(','), "rule without a comma: {rule}");
        }
    }

    /// apparmor_parser compiles the profile without loading it (-Q: this host's kernel has no
    /// AppArmor; the parser checks syntax and semantics all the same).
    #[test]
    fn apparmor_parser_compiles_the_default_profile() {
        let parser = Kernel.parser().unwrap_or_else(|| {
            panic!("missing: apparmor_parser (Debian package apparmor) in {PARSER_PATHS:?}")
        });
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let mut cmd = tokio::process::Command::new(&parser);
        cmd.args(["-Q", "-K"]);
        let done = runtime
            .block_on(child::run(
                cmd,
                Some(default_profile_text().as_bytes()),
                PARSER_BOUNDS,
            ))
            .expect("apparmor_parser runs");
        assert!(
            done.status.success(),
            "apparmor_parser refused the profile: {}",
            done.stderr_text()
        );
    }

    #[test]
    fn startup_loads_only_where_apparmor_is_on_and_the_profile_is_missing() {
        assert_eq!(startup(&host(false, &[])), Startup::Disabled);
        assert_eq!(startup(&host(false, &[DEFAULT_PROFILE])), Startup::Disabled);
        assert_eq!(startup(&host(true, &[DEFAULT_PROFILE])), Startup::Loaded);
        assert_eq!(
            startup(&host(true, &["other"])),
            Startup::Load(PathBuf::from("/usr/sbin/apparmor_parser"))
        );
        let no_parser = FakeHost {
            parser: None,
            ..host(true, &[])
        };
        assert_eq!(startup(&no_parser), Startup::NoParser);
    }

    #[tokio::test]
    async fn loading_feeds_the_profile_to_apparmor_parser_replace_without_cache() {
        let dir = tempfile::tempdir().expect("tempdir");
        let seen = dir.path().join("seen");
        let parser = child::test_script(
            dir.path(),
            "apparmor_parser",
            &format!(
                "echo \"$@\" > {s}.args; cat > {s}.stdin",
                s = seen.display()
            ),
        );
        let fake = FakeHost {
            parser: Some(parser.clone()),
            ..host(true, &[])
        };
        let done = load_default_profile(&fake).await.expect("loads");
        assert_eq!(done, Startup::Load(parser));
        assert_eq!(
            std::fs::read_to_string(seen.with_extension("args")).expect("args"),
            "-Kr\n"
        );
        assert_eq!(
            std::fs::read_to_string(seen.with_extension("stdin")).expect("stdin"),
            default_profile_text()
        );

        let failing = child::test_script(
            dir.path(),
            "failing_parser",
            "echo 'AppArmor parser error: syntax' >&2; exit 1",
        );
        let err = load(&failing, "profile x {}").await.expect_err("fails");
        assert!(
            err.to_string().contains("AppArmor parser error: syntax"),
            "{err}"
        );
        // Nothing runs where AppArmor is off or the profile is there.
        assert_eq!(
            load_default_profile(&FakeHost {
                parser: None,
                ..host(false, &[])
            })
            .await
            .expect("off"),
            Startup::Disabled
        );
        assert_eq!(
            load_default_profile(&FakeHost {
                parser: None,
                ..host(true, &[DEFAULT_PROFILE])
            })
            .await
            .expect("there"),
            Startup::Loaded
        );
        assert!(matches!(
            load_default_profile(&FakeHost {
                parser: None,
                ..host(true, &[])
            })
            .await,
            Err(AppArmorError::NoParser)
        ));
    }

    #[test]
    fn runtime_default_uses_crid_default_where_it_is_loaded() {
        use cri::security_profile::ProfileType;
        let on = host(true, &[DEFAULT_PROFILE, "mine"]);
        let off = host(false, &[]);
        let missing = host(true, &[]);
        let default = security(ProfileType::RuntimeDefault, "");
        assert_eq!(
            profile_on(&on, Some(&default), false).expect("ok"),
            Some(DEFAULT_PROFILE.to_owned())
        );
        // No AppArmor, or the profile failed to load: no profile (and a warning).
        assert_eq!(profile_on(&off, Some(&default), false).expect("ok"), None);
        assert_eq!(
            profile_on(&missing, Some(&default), false).expect("ok"),
            None
        );
        // Privileged containers get none.
        assert_eq!(profile_on(&on, Some(&default), true).expect("ok"), None);
        // Left empty: the default where there is one.
        assert_eq!(
            profile_on(&on, None, false).expect("ok"),
            Some(DEFAULT_PROFILE.to_owned())
        );
        assert_eq!(
            profile_on(&on, Some(&Default::default()), false).expect("ok"),
            Some(DEFAULT_PROFILE.to_owned())
        );
        assert_eq!(profile_on(&on, None, true).expect("ok"), None);
        assert_eq!(profile_on(&off, None, false).expect("ok"), None);
        // Unconfined means none.
        let unconfined = security(ProfileType::Unconfined, "");
        assert_eq!(profile_on(&on, Some(&unconfined), false).expect("ok"), None);
        // Localhost: loaded or an error.
        let mine = security(ProfileType::Localhost, "mine");
        assert_eq!(
            profile_on(&on, Some(&mine), false).expect("ok"),
            Some("mine".to_owned())
        );
        let absent = security(ProfileType::Localhost, "absent");
        assert!(profile_on(&on, Some(&absent), false).is_err());
        assert!(profile_on(&off, Some(&mine), false).is_err());
        // The deprecated string field.
        #[allow(deprecated)]
        let legacy = cri::LinuxContainerSecurityContext {
            apparmor_profile: "runtime/default".into(),
            ..Default::default()
        };
        assert_eq!(
            profile_on(&on, Some(&legacy), false).expect("ok"),
            Some(DEFAULT_PROFILE.to_owned())
        );
    }
}
