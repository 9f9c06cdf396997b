//! A DR site for end-to-end tests: a simulated plant (two Modbus devices), the gateway's
//! site PKI, an operator key, and the `gridgate dr` commands run against it.

use std::path::Path;
use std::time::Duration;

use crate::{free_port, grpc_section, run_to_end, sims};

/// How long a test waits for one thing to happen.
pub const WAIT: Duration = Duration::from_secs(30);

/// A DR site: its directory (PKI, operator key, config) and its gRPC port.
pub struct Site {
    /// The site's directory.
    pub dir: tempfile::TempDir,
    /// The gateway's gRPC port.
    pub port: u16,
}

impl Site {
    pub fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    /// Writes an event file and signs it with `key`; returns the signed file.
    pub async fn sign(&self, name: &str, key: &str, toml: &str) -> String {
        let file = self.path(&format!("{name}.toml"));
        std::fs::write(&file, toml).expect("event file");
        let signed = self.path(&format!("{name}.signed"));
        let (code, out, err) =
            run_to_end(&["dr", "sign", "--key", key, &file, "--out", &signed], WAIT).await;
        assert_eq!(code, 0, "{out}{err}");
        assert!(out.contains("signed event"), "{out}");
        signed
    }

    /// Signs an event file with `key` and dispatches it as the operator.
    pub async fn send(&self, name: &str, key: &str, toml: &str) -> (i32, String) {
        let signed = self.sign(name, key, toml).await;
        self.dispatch("operator", &signed).await
    }

    /// A new site directory with the gateway's site PKI and an operator key, for a gateway
    /// on gRPC port `port` (a free one).
    pub fn create() -> Site {
        let site = Site {
            dir: tempfile::tempdir().expect("dir"),
            port: free_port(),
        };
        let d = site.dir.path();
        gridgate_api::pki::make_site_pki(&d.join("pki"), "dr", &[]).expect("pki");
        std::fs::create_dir_all(d.join("operator")).expect("dir");
        keygen(&d.join("operator"));
        site
    }

    /// What a config appends for this site: `[grpc]` on its port with its PKI, and `[dr]`
    /// trusting its operator. `[[load]]`s follow.
    pub fn grpc_and_dr(&self) -> String {
        format!(
            "{}\n[dr]\nissuers = [{{ name = \"operator\", public_key = \"{}\" }}]\n",
            grpc_section(self.port, &self.dir.path().join("pki")),
            self.path("operator/identity.pub")
        )
    }

    /// `--endpoint`, `--ca`, `--cert` and `--key` for the client certificate of `role`.
    fn gateway_args(&self, role: &str) -> Vec<String> {
        vec![
            "--endpoint".into(),
            format!("https://localhost:{}", self.port),
            "--ca".into(),
            self.path("pki/ca.pem"),
            "--cert".into(),
            self.path(&format!("pki/client-{role}.pem")),
            "--key".into(),
            self.path(&format!("pki/client-{role}.key")),
        ]
    }

    /// Runs `gridgate dr ARGS` against the gateway with the client certificate of `role`.
    pub async fn dr(&self, role: &str, args: &[&str]) -> (i32, String) {
        self.dr_within(role, args, WAIT).await
    }

    /// [`Site::dr`] for a command that may take up to `limit`.
    pub async fn dr_within(&self, role: &str, args: &[&str], limit: Duration) -> (i32, String) {
        let tls = self.gateway_args(role);
        let mut all = vec!["dr"];
        all.extend_from_slice(args);
        all.extend(tls.iter().map(String::as_str));
        let (code, out, err) = run_to_end(&all, limit).await;
        (code, format!("{out}{err}"))
    }

    /// Starts `gridgate dr watch --until-reported ID` (operator) in the background, so that
    /// it sees every change from now on; the handle gives its exit code, stdout and stderr.
    pub fn watch_until_reported(&self, id: &str) -> tokio::task::JoinHandle<(i32, String, String)> {
        let mut args: Vec<String> = ["dr", "watch", "--until-reported", id]
            .iter()
            .map(|a| a.to_string())
            .collect();
        args.extend(self.gateway_args("operator"));
        tokio::spawn(async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            run_to_end(&args, Duration::from_secs(120)).await
        })
    }

    /// Dispatches a signed file with the client certificate of `role`.
    pub async fn dispatch(&self, role: &str, signed: &str) -> (i32, String) {
        self.dr(role, &["dispatch", signed]).await
    }
}

pub fn event(id: &str, issuer: &str, target: &str) -> String {
    format!(
        "id = \"{id}\"\nissuer = \"{issuer}\"\nprogram = \"peak-shave\"\nstart = \"now\"\nduration = \"15m\"\nexpires = \"10m\"\n\n[[target]]\n{target}\n"
    )
}

pub async fn wait_for_port(port: u16) {
    for _ in 0..300 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the gateway's gRPC port {port} never opened");
}

/// A reading of `point` with the number `want` (to 0.01).
pub fn reads(point: &'static str, want: f64) -> impl Fn(&serde_json::Value) -> bool {
    move |v| v["point"] == point && v["value"].as_f64().is_some_and(|x| (x - want).abs() < 0.01)
}

/// A reading of the bit `point` being `on`.
pub fn switched(point: &'static str, on: bool) -> impl Fn(&serde_json::Value) -> bool {
    move |v| v["point"] == point && v["value"] == on
}

pub fn keygen(dir: &Path) {
    gridgate_core::Identity::generate()
        .expect("key")
        .save(&dir.join("identity.key"), &dir.join("identity.pub"))
        .expect("save");
}

/// `config` with the plant's unit 1 (`pcs`) written by function 23, write and read-back in
/// one call.
pub fn pcs_with_read_write_multiple(config: &str) -> String {
    let unit1 = "protocol = \"modbus\"\nunit = 1\n";
    assert!(config.contains(unit1), "{config}");
    config.replacen(unit1, &format!("{unit1}read_write_multiple = true\n"), 1)
}

/// A plant: two simulated Modbus devices (55 kW and 20 kW) on one TCP line, the gateway's
/// site PKI, an operator key, and a config with two loads: `pcs` on a setpoint register
/// (shed_kw up to 30 kW) and `pump` on a switch coil.
pub async fn plant() -> (gridgate::tools::sim::RunningSims, Site, String) {
    let s = sims(
        r#"
[[line]]
name = "plant"
protocol = "modbus-tcp"
listen = "127.0.0.1:0"
devices = [{ unit = 1, rated_kw = 55.0 }, { unit = 2, rated_kw = 20.0 }]
"#,
    )
    .await;
    let site = Site::create();
    let mut config = s.gateway_config("plant", "100ms").replace(
        "  { name = \"running\", table = \"discrete\", address = 0 },\n",
        "  { name = \"running\", table = \"discrete\", address = 0 },\n  { name = \"switch\", table = \"coil\", address = 0 },\n",
    );
    config.push_str(&site.grpc_and_dr());
    config.push_str(
        r#"
[[load]]
name = "pcs"
meter = "plant-unit1/active_power"
control = "plant-unit1/setpoint"
rated_kw = 55.0
max_shed_kw = 30.0
min_setpoint = 20.0
max_setpoint = 100.0

[[load]]
name = "pump"
meter = "plant-unit2/active_power"
control = "plant-unit2/switch"
"#,
    );
    (s, site, config)
}
