//! `nftpol-lab sandbox`: up prints the open matrix, a policy written through
//! its API server shows up in `sandbox probe`, `down` removes every
//! namespace and process. Needs root; prints why and passes elsewhere.

use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, PostParams};
use nftpol_lab::lab;
use nftpol_lab::sandbox::State;

fn nftpol_lab(args: &[&str], dir: &Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_nftpol-lab"))
        .args(args)
        .arg("--state-dir")
        .arg(dir)
        .output()
        .expect("run nftpol-lab");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "nftpol-lab {args:?} failed: {text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// `up`'s matrix rows as (pod, cells), e.g. ("shop/db", "-..X").
fn rows(matrix: &str) -> Vec<(String, String)> {
    matrix
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            let _n: usize = words.next()?.parse().ok()?;
            let key = words.next().filter(|k| k.contains('/'))?.to_string();
            let cells: String = words.skip(2).collect();
            Some((key, cells))
        })
        .collect()
}

/// Removes the sandbox even when an assertion failed.
struct Down(PathBuf);

impl Drop for Down {
    fn drop(&mut self) {
        let _ = Command::new(env!("CARGO_BIN_EXE_nftpol-lab"))
            .args(["sandbox", "down", "--state-dir"])
            .arg(&self.0)
            .output();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn sandbox_up_probe_and_down() {
    if let Some(why) = lab::unavailable() {
        eprintln!("skipped: the sandbox needs root, ip and nft ({why})");
        return;
    }
    let dir = std::env::temp_dir().join(format!("nftpol-sandbox-test-{}", std::process::id()));
    let guard = Down(dir.clone());

    let up = nftpol_lab(&["sandbox"], &dir);
    let open = rows(&up);
    assert!(open.len() >= 6, "{up}");
    assert!(
        open.iter().all(|(_, cells)| !cells.contains('X')),
        "nothing is blocked before any policy:\n{up}"
    );
    assert!(up.contains("export KUBECONFIG="), "{up}");

    // A default-deny-ingress in `shop`, written through the sandbox's API.
    let state: State =
        serde_json::from_slice(&std::fs::read(dir.join("state.json")).unwrap()).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let client = kube::Client::try_from(kube::Config::new(state.api_url.parse().unwrap()))
            .expect("a client");
        let deny: NetworkPolicy = serde_json::from_value(serde_json::json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "deny", "namespace": "shop"},
            "spec": {"podSelector": {}, "policyTypes": ["Ingress"]},
        }))
        .unwrap();
        Api::<NetworkPolicy>::namespaced(client, "shop")
            .create(&PostParams::default(), &deny)
            .await
            .expect("create the policy");
    });
    // Every pod of `shop` refuses everyone; the rest stays open.
    let want: Vec<(String, String)> = open
        .iter()
        .enumerate()
        .map(|(i, (from, _))| {
            let cells = open
                .iter()
                .enumerate()
                .map(|(j, (to, _))| match (i == j, to.starts_with("shop/")) {
                    (true, _) => '-',
                    (false, true) => 'X',
                    (false, false) => '.',
                })
                .collect();
            (from.clone(), cells)
        })
        .collect();
    // Enforcement takes milliseconds; look a few times before failing.
    let mut matrix = String::new();
    for _ in 0..20 {
        matrix = nftpol_lab(&["sandbox", "probe"], &dir);
        if rows(&matrix) == want {
            break;
        }
    }
    assert_eq!(rows(&matrix), want, "{matrix}");

    let namespaces = |pid: u32| {
        std::fs::read_dir("/run/netns")
            .map(|d| {
                d.flatten()
                    .filter(|e| {
                        e.file_name()
                            .to_string_lossy()
                            .starts_with(&format!("nftpol-lab-{pid}-"))
                    })
                    .count()
            })
            .unwrap_or(0)
    };
    assert!(namespaces(state.pid) > 0);
    let down = nftpol_lab(&["sandbox", "down"], &dir);
    assert!(down.contains("stopped"), "{down}");
    assert_eq!(namespaces(state.pid), 0, "namespaces left behind");
    for pid in state.controller_pids.iter().chain([&state.pid]) {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "process {pid} still runs"
        );
    }
    drop(guard);
}
