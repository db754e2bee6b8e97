//! Registry configuration in the containers-registries.conf(5) v2 format, as CRI-O users
//! already have it: `[[registry]]` with `prefix`, `location`, `insecure`, `blocked`, and
//! `[[registry.mirror]]` with `location` and `insecure`. The file, then every `*.conf` of the
//! drop-in directory in name order; a later entry with the same prefix replaces an earlier one.

use std::path::Path;

use serde::Deserialize;

/// Largest registries.conf we read.
const MAX_CONF_BYTES: u64 = 1 << 20;

#[derive(Debug, Clone, Default, Deserialize)]
struct ConfFile {
    #[serde(default)]
    registry: Vec<RegistryEntry>,
}

/// One `[[registry]]` table.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct RegistryEntry {
    #[serde(default)]
    pub prefix: String,
    #[serde(default)]
    pub location: String,
    #[serde(default)]
    pub insecure: bool,
    #[serde(default)]
    pub blocked: bool,
    #[serde(default)]
    pub mirror: Vec<MirrorEntry>,
}

/// One `[[registry.mirror]]` table.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct MirrorEntry {
    pub location: String,
    #[serde(default)]
    pub insecure: bool,
}

/// Where to fetch a repository from: `host[:port]` and the repository path there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub repository: String,
    pub insecure: bool,
}

/// Errors reading registry configuration.
#[derive(Debug, thiserror::Error)]
pub enum RegistriesError {
    #[error("failed to read registries config {path}")]
    Read {
        path: String,
        #[source]
        err: std::io::Error,
    },
    #[error("registries config {path} is invalid")]
    Parse {
        path: String,
        #[source]
        err: toml::de::Error,
    },
}

/// The merged registry configuration.
#[derive(Debug, Clone, Default)]
pub struct Registries {
    entries: Vec<RegistryEntry>,
}

fn read(path: &Path) -> Result<Option<ConfFile>, RegistriesError> {
    use std::io::Read;
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => {
            return Err(RegistriesError::Read {
                path: path.display().to_string(),
                err,
            })
        }
    };
    let mut text = String::new();
    file.take(MAX_CONF_BYTES)
        .read_to_string(&mut text)
        .map_err(|err| RegistriesError::Read {
            path: path.display().to_string(),
            err,
        })?;
    toml::from_str(&text)
        .map(Some)
        .map_err(|err| RegistriesError::Parse {
            path: path.display().to_string(),
            err,
        })
}

impl Registries {
    /// Loads `file` and the drop-ins of `dir` (both may be absent).
    pub fn load(file: &Path, dir: &Path) -> Result<Self, RegistriesError> {
        let mut paths = vec![file.to_owned()];
        if let Ok(entries) = std::fs::read_dir(dir) {
            let mut dropins: Vec<_> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "conf"))
                .collect();
            dropins.sort();
            paths.extend(dropins);
        }
        let mut merged = Registries::default();
        for path in paths {
            for mut entry in read(&path)?.unwrap_or_default().registry {
                if entry.prefix.is_empty() {
                    entry.prefix = entry.location.clone();
                }
                merged.entries.retain(|e| e.prefix != entry.prefix);
                merged.entries.push(entry);
            }
        }
        Ok(merged)
    }

    /// The entry whose prefix matches `name` (`host/repo/path`) longest.
    fn entry_for(&self, name: &str) -> Option<&RegistryEntry> {
        self.entries
            .iter()
            .filter(|e| {
                name == e.prefix
                    || name
                        .strip_prefix(&e.prefix)
                        .is_some_and(|rest| rest.starts_with('/') || rest.starts_with(':'))
            })
            .max_by_key(|e| e.prefix.len())
    }

    /// Where to pull `registry/repository` from, in order: the mirrors, then the registry (or
    /// its `location`). `Err` with the prefix when the registry is blocked.
    pub fn endpoints(&self, registry: &str, repository: &str) -> Result<Vec<Endpoint>, String> {
        let name = format!("{registry}/{repository}");
        let Some(entry) = self.entry_for(&name) else {
            return Ok(vec![split_endpoint(&name, false)]);
        };
        if entry.blocked {
            return Err(entry.prefix.clone());
        }
        let rest = &name[entry.prefix.len()..];
        let mut out: Vec<Endpoint> = entry
            .mirror
            .iter()
            .map(|m| split_endpoint(&format!("{}{rest}", m.location), m.insecure))
            .collect();
        let location = if entry.location.is_empty() {
            &entry.prefix
        } else {
            &entry.location
        };
        out.push(split_endpoint(&format!("{location}{rest}"), entry.insecure));
        Ok(out)
    }

    /// Whether `host` is configured insecure (plain HTTP allowed) anywhere (the tests' view of
    /// the parsed file; pulls ask [`Registries`] per endpoint).
    #[cfg(test)]
    pub fn insecure_hosts(&self) -> Vec<String> {
        let mut hosts = Vec::new();
        for e in &self.entries {
            if e.insecure {
                hosts.push(host_of(if e.location.is_empty() {
                    &e.prefix
                } else {
                    &e.location
                }));
            }
            for m in e.mirror.iter().filter(|m| m.insecure) {
                hosts.push(host_of(&m.location));
            }
        }
        hosts
    }
}

#[cfg(test)]
fn host_of(location: &str) -> String {
    location.split('/').next().unwrap_or_default().to_owned()
}

fn split_endpoint(location: &str, insecure: bool) -> Endpoint {
    let (host, repository) = location.split_once('/').unwrap_or((location, ""));
    Endpoint {
        host: host.to_owned(),
        repository: repository.to_owned(),
        insecure,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Registries {
        let file: ConfFile = toml::from_str(text).expect("parse");
        let mut r = Registries::default();
        for mut e in file.registry {
            if e.prefix.is_empty() {
                e.prefix = e.location.clone();
            }
            r.entries.push(e);
        }
        r
    }

    #[test]
    fn mirrors_then_registry_with_prefix_rewriting() {
        let r = parse(
            r#"
[[registry]]
prefix = "docker.io"
location = "registry-1.docker.io"
[[registry.mirror]]
location = "127.0.0.1:5000/hub"
insecure = true

[[registry]]
prefix = "docker.io/library/blocked"
blocked = true
"#,
        );
        let eps = r
            .endpoints("docker.io", "library/busybox")
            .expect("endpoints");
        assert_eq!(
            eps,
            vec![
                Endpoint {
                    host: "127.0.0.1:5000".into(),
                    repository: "hub/library/busybox".into(),
                    insecure: true
                },
                Endpoint {
                    host: "registry-1.docker.io".into(),
                    repository: "library/busybox".into(),
                    insecure: false
                },
            ]
        );
        assert_eq!(
            r.endpoints("docker.io", "library/blocked"),
            Err("docker.io/library/blocked".into())
        );
        assert_eq!(
            r.endpoints("quay.io", "a/b").expect("plain"),
            vec![Endpoint {
                host: "quay.io".into(),
                repository: "a/b".into(),
                insecure: false
            }]
        );
        assert_eq!(r.insecure_hosts(), vec!["127.0.0.1:5000".to_owned()]);
        // A prefix matches whole path components only.
        assert_eq!(
            r.endpoints("docker.io", "library/blockedx")
                .expect("not blocked")
                .len(),
            2
        );
    }
}
