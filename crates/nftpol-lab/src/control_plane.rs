//! A real Kubernetes control plane for the lab: etcd and kube-apiserver,
//! built from their published Go modules by `crates/nftpol-lab/k8s/build`
//! (cached by content under `target/k8s/`), started on loopback with their
//! own certificates and the authorization a cluster has (`Node,RBAC`).
//!
//! What it generates, in a folder of its own: a CA; the API server's
//! serving certificate (127.0.0.1, localhost); an admin client certificate
//! (`O=system:masters`); the service account signing key. It waits for
//! `/readyz`, writes an admin kubeconfig, and on drop stops both processes
//! and removes the folder.

use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};

/// Where `k8s/build` is, from this crate.
const BUILD_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/k8s/build");

/// The folder with `kube-apiserver`, `etcd` and `kube-proxy`:
/// `NFTPOL_K8S_BIN` when set, else what `k8s/build` gives (it builds them
/// the first time, which takes minutes, and answers at once after).
/// `Ok(None)` when there is no Go toolchain to build them with.
pub fn binaries() -> anyhow::Result<Option<PathBuf>> {
    if let Some(dir) = std::env::var_os("NFTPOL_K8S_BIN") {
        return Ok(Some(PathBuf::from(dir)));
    }
    let out = Command::new(BUILD_SCRIPT)
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {BUILD_SCRIPT}"))?;
    match out.status.code() {
        Some(0) => Ok(Some(PathBuf::from(
            String::from_utf8_lossy(&out.stdout).trim(),
        ))),
        // No Go toolchain: the script says so.
        Some(3) => Ok(None),
        _ => bail!("{BUILD_SCRIPT} failed ({})", out.status),
    }
}

/// etcd and kube-apiserver, running.
pub struct ControlPlane {
    dir: PathBuf,
    etcd: Child,
    apiserver: Child,
    /// `https://127.0.0.1:PORT`.
    pub url: String,
    kubeconfig: PathBuf,
}

impl ControlPlane {
    /// Starts etcd and kube-apiserver from `bin` and waits until the API
    /// server is ready (at most `timeout`).
    pub fn start(bin: &Path, timeout: Duration) -> anyhow::Result<Self> {
        static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "nftpol-control-plane-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let pki = Pki::write(&dir)?;
        let [etcd_client, etcd_peer, api_port] = free_ports()?;

        let log = |name: &str| -> anyhow::Result<std::fs::File> {
            let path = dir.join(name);
            std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))
        };
        let etcd_url = format!("http://127.0.0.1:{etcd_client}");
        let peer_url = format!("http://127.0.0.1:{etcd_peer}");
        let etcd = Command::new(bin.join("etcd"))
            .arg("--name=lab")
            .arg(format!("--data-dir={}", dir.join("etcd").display()))
            .arg(format!("--listen-client-urls={etcd_url}"))
            .arg(format!("--advertise-client-urls={etcd_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=lab={peer_url}"))
            .stdin(Stdio::null())
            .stdout(log("etcd.log")?)
            .stderr(log("etcd.log")?)
            .spawn()
            .context("starting etcd")?;
        let apiserver = Command::new(bin.join("kube-apiserver"))
            .arg(format!("--etcd-servers={etcd_url}"))
            .arg("--bind-address=127.0.0.1")
            .arg("--advertise-address=127.0.0.1")
            // No kubernetes Service endpoints for a loopback address (the
            // reconciler refuses one); the lab reaches the server directly.
            .arg("--endpoint-reconciler-type=none")
            .arg(format!("--secure-port={api_port}"))
            .arg(format!("--tls-cert-file={}", pki.server_cert.display()))
            .arg(format!(
                "--tls-private-key-file={}",
                pki.server_key.display()
            ))
            .arg(format!("--client-ca-file={}", pki.ca_cert.display()))
            .arg("--service-account-issuer=https://kubernetes.default.svc.cluster.local")
            .arg(format!(
                "--service-account-key-file={}",
                pki.sa_pub.display()
            ))
            .arg(format!(
                "--service-account-signing-key-file={}",
                pki.sa_key.display()
            ))
            .arg("--service-cluster-ip-range=10.96.0.0/16")
            .arg("--authorization-mode=Node,RBAC")
            .stdin(Stdio::null())
            .stdout(log("kube-apiserver.log")?)
            .stderr(log("kube-apiserver.log")?)
            .spawn()
            .context("starting kube-apiserver")?;
        let url = format!("https://127.0.0.1:{api_port}");
        let kubeconfig = dir.join("admin.kubeconfig");
        std::fs::write(&kubeconfig, pki.kubeconfig(&url)?)
            .with_context(|| format!("writing {}", kubeconfig.display()))?;
        let mut plane = Self {
            dir,
            etcd,
            apiserver,
            url,
            kubeconfig,
        };
        plane.wait_ready(timeout)?;
        Ok(plane)
    }

    /// The admin kubeconfig (`system:masters`).
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// A client with the admin's rights.
    pub async fn client(&self) -> anyhow::Result<kube::Client> {
        let config = kube::config::Kubeconfig::read_from(&self.kubeconfig)?;
        let config = kube::Config::from_custom_kubeconfig(config, &Default::default()).await?;
        Ok(kube::Client::try_from(config)?)
    }

    /// The last lines of a component's log (`etcd`, `kube-apiserver`).
    pub fn log_tail(&self, component: &str) -> String {
        let text =
            std::fs::read_to_string(self.dir.join(format!("{component}.log"))).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let deadline = Instant::now() + timeout;
        loop {
            let exited = match (self.etcd.try_wait()?, self.apiserver.try_wait()?) {
                (Some(status), _) => Some(("etcd", status)),
                (None, Some(status)) => Some(("kube-apiserver", status)),
                (None, None) => None,
            };
            if let Some((name, status)) = exited {
                bail!("{name} exited ({status}):\n{}", self.log_tail(name));
            }
            let ready = runtime.block_on(async {
                let client = self.client().await?;
                let request = http::Request::get("/readyz").body(Vec::new())?;
                anyhow::Ok(client.request_text(request).await?)
            });
            let last = match ready {
                Ok(text) if text.trim() == "ok" => return Ok(()),
                Ok(text) => text,
                Err(e) => format!("{e:#}"),
            };
            if Instant::now() > deadline {
                bail!(
                    "kube-apiserver not ready after {timeout:?}: {last}\n{}",
                    self.log_tail("kube-apiserver")
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        for child in [&mut self.apiserver, &mut self.etcd] {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Three free loopback ports (taken by binding, then let go).
fn free_ports() -> anyhow::Result<[u16; 3]> {
    let listeners = [
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?,
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?,
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?,
    ];
    let mut ports = [0; 3];
    for (port, listener) in ports.iter_mut().zip(&listeners) {
        *port = listener.local_addr()?.port();
    }
    Ok(ports)
}

/// The certificates and keys, as files.
struct Pki {
    ca_cert: PathBuf,
    ca_pem: String,
    server_cert: PathBuf,
    server_key: PathBuf,
    admin_cert_pem: String,
    admin_key_pem: String,
    sa_key: PathBuf,
    sa_pub: PathBuf,
}

impl Pki {
    fn write(dir: &Path) -> anyhow::Result<Self> {
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "nftpol-lab-ca");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;

        let mut server = CertificateParams::new(vec!["localhost".to_string()])?;
        server
            .distinguished_name
            .push(DnType::CommonName, "kube-apiserver");
        server.subject_alt_names.extend([
            SanType::IpAddress(Ipv4Addr::LOCALHOST.into()),
            SanType::IpAddress(Ipv4Addr::new(10, 96, 0, 1).into()),
            SanType::DnsName("kubernetes.default.svc".try_into()?),
        ]);
        server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let server_key = KeyPair::generate()?;
        let server_cert = server.signed_by(&server_key, &ca)?;

        let mut admin = CertificateParams::new(Vec::<String>::new())?;
        admin.distinguished_name.push(DnType::CommonName, "admin");
        admin
            .distinguished_name
            .push(DnType::OrganizationName, "system:masters");
        admin.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let admin_key = KeyPair::generate()?;
        let admin_cert = admin.signed_by(&admin_key, &ca)?;

        let sa = KeyPair::generate()?;

        let write = |name: &str, text: &str| -> anyhow::Result<PathBuf> {
            let path = dir.join(name);
            std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
            Ok(path)
        };
        Ok(Self {
            ca_cert: write("ca.crt", &ca.pem())?,
            ca_pem: ca.pem(),
            server_cert: write("apiserver.crt", &server_cert.pem())?,
            server_key: write("apiserver.key", &server_key.serialize_pem())?,
            admin_cert_pem: admin_cert.pem(),
            admin_key_pem: admin_key.serialize_pem(),
            sa_key: write("sa.key", &sa.serialize_pem())?,
            sa_pub: write("sa.pub", &sa.public_key_pem())?,
        })
    }

    /// An admin kubeconfig for `url`, certificates inline.
    fn kubeconfig(&self, url: &str) -> anyhow::Result<String> {
        use base64::Engine;
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let config = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "lab", "cluster": {
                "server": url,
                "certificate-authority-data": b64(&self.ca_pem),
            }}],
            "users": [{"name": "admin", "user": {
                "client-certificate-data": b64(&self.admin_cert_pem),
                "client-key-data": b64(&self.admin_key_pem),
            }}],
            "contexts": [{"name": "lab", "context": {"cluster": "lab", "user": "admin"}}],
            "current-context": "lab",
        });
        Ok(serde_json::to_string_pretty(&config)?)
    }
}
