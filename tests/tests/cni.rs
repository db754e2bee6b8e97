//! CNI calls from crid (`crid_cni`) with Debian's plugins into a namespace
//! pinned by crid-pinns: ADD assigns an address, DEL releases the lease, DEL again is fine.

use std::path::{Path, PathBuf};
use std::process::Command;

use crid_cni::{ips, Attachment, CniError, NetworkList};
use crid_tests::harness::{require, workspace_binary};

fn ip(args: &[&str]) -> String {
    let out = Command::new(require::tool("ip"))
        .args(args)
        .output()
        .expect("run ip");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

struct Cleanup {
    netns: PathBuf,
    bridge: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.netns).status();
        let _ = std::fs::remove_file(&self.netns);
        let _ = Command::new(require::tool("ip"))
            .args(["link", "del", &self.bridge])
            .status();
    }
}

fn leases(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.contains('.') && !n.starts_with("last_reserved"))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn add_assigns_an_address_and_del_releases_it() {
    require::root();
    let dir = tempfile::tempdir().expect("tempdir");
    let id = format!("cnitest{}", std::process::id());
    let out = Command::new(workspace_binary("crid-pinns"))
        .arg("--dir")
        .arg(dir.path())
        .args(["--id", &id, "--net"])
        .output()
        .expect("crid-pinns");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let netns = dir.path().join("net").join(&id);
    let bridge = format!("cridt{}", std::process::id() % 100_000);
    let _cleanup = Cleanup {
        netns: netns.clone(),
        bridge: bridge.clone(),
    };
    let subnet_octet = 100 + std::process::id() % 100;
    let ipam_dir = dir.path().join("ipam");
    let net_d = dir.path().join("net.d");
    std::fs::create_dir_all(&net_d).expect("mkdir");
    std::fs::write(
        net_d.join("10-test.conflist"),
        serde_json::json!({
            "cniVersion": "1.0.0",
            "name": "crid-test",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": bridge,
                    "isGateway": true,
                    "ipMasq": false,
                    "ipam": {
                        "type": "host-local",
                        "dataDir": ipam_dir,
                        "ranges": [[{ "subnet": format!("10.233.{subnet_octet}.0/24") }]]
                    }
                },
                { "type": "loopback" }
            ]
        })
        .to_string(),
    )
    .expect("write conflist");
    let list = NetworkList::load(&net_d).expect("load");
    assert_eq!(list.name, "crid-test");
    let dirs = vec![PathBuf::from("/usr/lib/cni")];
    let pod = Attachment {
        container_id: &id,
        netns: &netns,
        args: vec![
            ("K8S_POD_NAMESPACE", "default".into()),
            ("K8S_POD_NAME", "test".into()),
        ],
        runtime_config: serde_json::json!({}),
    };
    let result = list.add(&dirs, &pod).await.expect("ADD");
    let addr = ips(&result).into_iter().next().expect("pod ip");
    assert!(
        addr.starts_with(&format!("10.233.{subnet_octet}.")),
        "{addr}"
    );
    let inside = Command::new(require::tool("nsenter"))
        .arg(format!("--net={}", netns.display()))
        .args(["ip", "-4", "addr", "show", "eth0"])
        .output()
        .expect("nsenter");
    assert!(String::from_utf8_lossy(&inside.stdout).contains(&addr));
    assert!(
        ip(&["link", "show", &bridge]).contains(&bridge),
        "bridge made on the host"
    );
    let lease_dir = ipam_dir.join("crid-test");
    assert_eq!(leases(&lease_dir), vec![addr.clone()]);

    list.del(&dirs, &pod, Some(&result)).await.expect("DEL");
    assert!(leases(&lease_dir).is_empty(), "lease released");
    list.del(&dirs, &pod, Some(&result))
        .await
        .expect("DEL again is fine");

    // A plugin that is not installed is named.
    std::fs::write(
        net_d.join("00-broken.conflist"),
        r#"{"cniVersion":"1.0.0","name":"broken","plugins":[{"type":"no-such-plugin"}]}"#,
    )
    .expect("write");
    let broken = NetworkList::load(&net_d).expect("load first by name");
    match broken.add(&dirs, &pod).await {
        Err(CniError::PluginMissing { plugin, .. }) => assert_eq!(plugin, "no-such-plugin"),
        other => panic!("expected PluginMissing, got {other:?}"),
    }
}

#[test]
fn the_packaged_conflist_loads() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/cni");
    let list = NetworkList::load(&dir).expect("packaging/cni holds a valid conflist");
    let kinds: Vec<&str> = list
        .plugins
        .iter()
        .filter_map(|p| p["type"].as_str())
        .collect();
    assert_eq!(kinds, vec!["bridge", "portmap"]);
    assert_eq!(list.name, "crid");
}
