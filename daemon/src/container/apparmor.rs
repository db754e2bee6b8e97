//! AppArmor: the profile a container runs under. Where the kernel has AppArmor, Localhost
//! profiles must be loaded (a clear error otherwise) and RuntimeDefault uses `crid-default`
//! when an operator has loaded it. Where the kernel has no AppArmor, asking for a Localhost
//! profile is an error (never a silent success); RuntimeDefault and Unconfined mean no
//! profile, which is all such a host can give.

use crid_proto::cri;

use super::spec::SpecError;

/// The profile RuntimeDefault means when it is loaded.
pub const DEFAULT_PROFILE: &str = "crid-default";

fn enabled() -> bool {
    std::fs::read_to_string("/sys/module/apparmor/parameters/enabled")
        .is_ok_and(|v| v.trim() == "Y")
}

fn loaded(name: &str) -> bool {
    std::fs::read_to_string("/sys/kernel/security/apparmor/profiles").is_ok_and(|list| {
        list.lines()
            .any(|l| l.rsplit_once(" (").map_or(l, |(n, _)| n) == name)
    })
}

/// The profile to put in the spec (None: unconfined).
pub fn profile(
    sc: Option<&cri::LinuxContainerSecurityContext>,
    privileged: bool,
) -> Result<Option<String>, SpecError> {
    let Some(sc) = sc else {
        return Ok(None);
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
            "" => return Ok(None),
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
            if enabled() && loaded(DEFAULT_PROFILE) {
                Ok(Some(DEFAULT_PROFILE.to_owned()))
            } else {
                tracing::warn!("AppArmor RuntimeDefault asked for, but this host has no {DEFAULT_PROFILE} profile loaded (or no AppArmor): the container runs without an AppArmor profile");
                Ok(None)
            }
        }
        Some(ProfileType::Localhost) => {
            if !enabled() {
                return Err(SpecError::Invalid(format!(
                    "config.linux.security_context.apparmor: AppArmor is not enabled on this host; cannot apply profile {name:?}"
                )));
            }
            if !loaded(&name) {
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
