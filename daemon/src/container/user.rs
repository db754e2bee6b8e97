//! The user a container runs as: the CRI security context (run_as_user, run_as_group,
//! run_as_username, supplemental groups) over the image's `User`, resolved against the
//! container's own /etc/passwd and /etc/group. Those files belong to the image, so they are
//! located with `RESOLVE_IN_ROOT` (a symlink cannot lead out of the root filesystem), opened
//! only once known to be regular files, and read only up to a bound
//! ([`crid_common::regular_file`]). Missing, they are empty; anything else but a regular file
//! there is an error naming it.

use std::os::fd::AsFd;
use std::path::Path;

use crid_common::regular_file::{self, RegularFileError};
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

use crate::state::container::ProcessUser;

/// Most bytes of the image's /etc/passwd or /etc/group crid reads (as crid-enter does: an
/// image with a large directory dump still starts; more is an error, never a silent cut).
const MAX_ID_FILE_BYTES: u64 = 16 << 20;

/// Why a user could not be resolved.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UserError {
    #[error("user {0:?} not found in the container's /etc/passwd")]
    NoSuchUser(String),
    #[error("group {0:?} not found in the container's /etc/group")]
    NoSuchGroup(String),
    #[error("run_as_group is set without run_as_user or run_as_username")]
    GroupWithoutUser,
    #[error("invalid id {0}: ids are 0..=4294967294")]
    BadId(i64),
    #[error("the container's /{path}: {why}")]
    Unreadable { path: &'static str, why: String },
}

/// Who the CRI config and the image say the process runs as.
#[derive(Debug, Default, Clone)]
pub struct UserRequest<'a> {
    pub run_as_user: Option<i64>,
    pub run_as_group: Option<i64>,
    pub run_as_username: &'a str,
    pub image_user: &'a str,
    pub supplemental_groups: &'a [i64],
    /// Add the groups the image's /etc/group lists the user in (policy Merge); off for
    /// policy Strict.
    pub image_groups: bool,
}

/// A parsed `/etc/passwd` or `/etc/group` line: name, id, and (passwd) gid or (group) members.
struct Entry<'a> {
    name: &'a str,
    id: u32,
    fourth: &'a str,
}

fn entries(text: &str) -> impl Iterator<Item = Entry<'_>> {
    text.lines().filter_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        let _password = fields.next()?;
        let id = fields.next()?.parse().ok()?;
        let fourth = fields.next().unwrap_or_default();
        Some(Entry { name, id, fourth })
    })
}

fn id(value: i64) -> Result<u32, UserError> {
    u32::try_from(value)
        .ok()
        .filter(|v| *v != u32::MAX)
        .ok_or(UserError::BadId(value))
}

/// Reads `/{relative}` of the root filesystem at `rootfs` (missing: empty). It is located with
/// `O_PATH` and opened for reading only once known to be a regular file: the image decides
/// what is there, and a device node (`c 10 130`, the host's watchdog) or a FIFO must never be
/// opened by crid, which runs as the host's root outside any device cgroup.
fn read_in_root(rootfs: &Path, relative: &'static str) -> Result<String, UserError> {
    let unreadable = |why: RegularFileError| UserError::Unreadable {
        path: relative,
        why: why.to_string(),
    };
    let root = nix::fcntl::open(
        rootfs,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| unreadable(RegularFileError::Open(e)))?;
    let bytes = regular_file::read_in_root(root.as_fd(), relative, MAX_ID_FILE_BYTES)
        .map_err(unreadable)?;
    // Only names and numbers are taken from the lines; a GECOS field in Latin-1 must not
    // make the whole file unreadable.
    Ok(bytes
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default())
}

/// Resolves the process user in the root filesystem at `rootfs`.
pub fn resolve(rootfs: &Path, request: &UserRequest<'_>) -> Result<ProcessUser, UserError> {
    if request.run_as_group.is_some()
        && request.run_as_user.is_none()
        && request.run_as_username.is_empty()
    {
        return Err(UserError::GroupWithoutUser);
    }
    let passwd = read_in_root(rootfs, "etc/passwd")?;
    let groups = read_in_root(rootfs, "etc/group")?;
    let (image_user, image_group) = match request.image_user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (request.image_user, None),
    };
    // A numeric uid need not be in /etc/passwd; when it is, it brings a name and a group.
    let by_uid = |uid: i64| -> Result<(u32, Option<String>, Option<u32>), UserError> {
        let uid = id(uid)?;
        let entry = entries(&passwd).find(|e| e.id == uid);
        Ok((
            uid,
            entry.as_ref().map(|e| e.name.to_owned()),
            entry.and_then(|e| e.fourth.parse().ok()),
        ))
    };
    // The user: run_as_user, else run_as_username, else the image's.
    let (uid, name, passwd_gid) = if let Some(uid) = request.run_as_user {
        by_uid(uid)?
    } else {
        let wanted = if request.run_as_username.is_empty() {
            image_user
        } else {
            request.run_as_username
        };
        if wanted.is_empty() {
            (0, Some("root".to_owned()), Some(0))
        } else if let Ok(uid) = wanted.parse::<i64>() {
            by_uid(uid)?
        } else {
            let entry = entries(&passwd)
                .find(|e| e.name == wanted)
                .ok_or_else(|| UserError::NoSuchUser(wanted.to_owned()))?;
            (
                entry.id,
                Some(entry.name.to_owned()),
                entry.fourth.parse().ok(),
            )
        }
    };
    // The group: run_as_group, else the image's group part, else the user's passwd group.
    let gid = match (
        request.run_as_group,
        image_group.filter(|_| request.run_as_user.is_none()),
    ) {
        (Some(gid), _) => id(gid)?,
        (None, Some(group)) if !group.is_empty() => match group.parse::<i64>() {
            Ok(gid) => id(gid)?,
            Err(_) => {
                entries(&groups)
                    .find(|e| e.name == group)
                    .ok_or_else(|| UserError::NoSuchGroup(group.to_owned()))?
                    .id
            }
        },
        _ => passwd_gid.unwrap_or(0),
    };
    let mut additional_gids = vec![gid];
    if let Some(name) = name.as_ref().filter(|_| request.image_groups) {
        for entry in entries(&groups) {
            if entry.fourth.split(',').any(|member| member == name) {
                additional_gids.push(entry.id);
            }
        }
    }
    for group in request.supplemental_groups {
        additional_gids.push(id(*group)?);
    }
    let mut seen = std::collections::HashSet::new();
    additional_gids.retain(|g| seen.insert(*g));
    Ok(ProcessUser {
        uid,
        gid,
        additional_gids,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rootfs() -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("etc")).expect("mkdir");
        std::fs::write(
            dir.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nwww:x:33:34:www:/var/www:/bin/false\n",
        )
        .expect("passwd");
        std::fs::write(
            dir.path().join("etc/group"),
            "root:x:0:\nwww:x:34:\nlogs:x:40:www,other\n",
        )
        .expect("group");
        dir
    }

    #[test]
    fn image_user_names_and_ids() {
        let root = rootfs();
        let by_name = UserRequest {
            image_user: "www",
            image_groups: true,
            ..Default::default()
        };
        let user = resolve(root.path(), &by_name).expect("www");
        assert_eq!((user.uid, user.gid), (33, 34));
        assert_eq!(user.additional_gids, vec![34, 40]);
        let numeric = UserRequest {
            image_user: "1000:logs",
            ..Default::default()
        };
        let user = resolve(root.path(), &numeric).expect("1000");
        assert_eq!((user.uid, user.gid), (1000, 40));
        let missing = UserRequest {
            image_user: "nobody",
            ..Default::default()
        };
        assert_eq!(
            resolve(root.path(), &missing),
            Err(UserError::NoSuchUser("nobody".into()))
        );
    }

    #[test]
    fn security_context_wins_and_symlinks_stay_inside() {
        let root = rootfs();
        let request = UserRequest {
            run_as_user: Some(33),
            run_as_group: Some(7),
            image_user: "root",
            supplemental_groups: &[9],
            image_groups: true,
            ..Default::default()
        };
        let user = resolve(root.path(), &request).expect("33");
        assert_eq!((user.uid, user.gid), (33, 7));
        assert_eq!(user.additional_gids, vec![7, 40, 9]);
        // /etc/passwd pointing at the host's file resolves inside the root: no entry found.
        std::fs::remove_file(root.path().join("etc/passwd")).expect("rm");
        std::os::unix::fs::symlink("/etc/passwd", root.path().join("etc/passwd")).expect("ln");
        std::fs::write(root.path().join("passwd-decoy"), "").expect("write");
        let request = UserRequest {
            image_user: "daemon",
            ..Default::default()
        };
        assert!(resolve(root.path(), &request).is_err());
    }

    /// Anchor A8: an image's /etc/passwd that is a FIFO or a device node is refused with an
    /// error naming it, and never opened for reading: a writer waiting on the FIFO is not woken
    /// (the kernel wakes a waiting writer on any reader's open, even one closed at once).
    #[test]
    fn an_etc_passwd_fifo_or_device_is_refused_without_being_opened() {
        let root = rootfs();
        let passwd = root.path().join("etc/passwd");
        std::fs::remove_file(&passwd).expect("rm");
        let probe = crid_common::test_util::FifoProbe::new(&passwd);
        let request = UserRequest {
            run_as_username: "www",
            ..Default::default()
        };
        assert_eq!(
            resolve(root.path(), &request),
            Err(UserError::Unreadable {
                path: "etc/passwd",
                why: "not a regular file (a fifo)".into()
            })
        );
        assert!(
            !probe.was_opened(std::time::Duration::from_millis(300)),
            "crid opened the fifo for reading"
        );

        // /dev/full as /etc/group: refused by its type, even for a numeric user.
        let group = root.path().join("etc/group");
        std::fs::remove_file(&group).expect("rm");
        nix::sys::stat::mknod(
            &group,
            nix::sys::stat::SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o644),
            nix::sys::stat::makedev(1, 7),
        )
        .expect("mknod");
        std::fs::remove_file(&passwd).expect("rm");
        let numeric = UserRequest {
            run_as_user: Some(1000),
            ..Default::default()
        };
        let err = resolve(root.path(), &numeric).expect_err("a device");
        assert_eq!(
            err.to_string(),
            "the container's /etc/group: not a regular file (a character device)"
        );
    }
}
