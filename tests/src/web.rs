//! Talking to the gateway's commissioning page and `/metrics` as a browser or Prometheus
//! would: plain HTTP/1.1 on loopback, a bearer credential, and the Prometheus project's own
//! OpenMetrics parser (Python) for the exposition.

use std::path::Path;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// One HTTP exchange: `(status, body)`.
pub async fn request(
    port: u16,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, String) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(format!("http://127.0.0.1:{port}{path}"));
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    if body.is_some() {
        req = req.header("content-type", "application/json");
    }
    let req = req
        .body(Full::new(Bytes::from(body.unwrap_or("").to_string())))
        .expect("request");
    let res = tokio::time::timeout(Duration::from_secs(30), client.request(req))
        .await
        .expect("the page answers within 30 s")
        .expect("HTTP exchange");
    let status = res.status().as_u16();
    let bytes = res.into_body().collect().await.expect("body").to_bytes();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

/// GET as JSON, asserting 200.
pub async fn get_json(port: u16, path: &str, token: Option<&str>) -> Value {
    let (status, body) = request(port, "GET", path, token, None).await;
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_str(&body).expect("JSON")
}

/// One sample of the exposition.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Sample name (`gridgate_polls_total`).
    pub name: String,
    /// Labels.
    pub labels: serde_json::Map<String, Value>,
    /// Value.
    pub value: f64,
}

/// Scrapes `/metrics` and parses it with the Prometheus client library's strict
/// OpenMetrics parser; panics with the parser's complaint when it does not parse.
pub async fn scrape(port: u16, token: Option<&str>) -> Vec<Sample> {
    let (status, text) = request(port, "GET", "/metrics", token, None).await;
    assert_eq!(status, 200, "{text}");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/parse_metrics.py");
    let mut child = tokio::process::Command::new("python3")
        .arg(script)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 with prometheus-client (scripts/test.sh puts it in target/pyenv: `. target/pyenv/bin/activate`)");
    {
        use tokio::io::AsyncWriteExt;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(text.as_bytes()).await.expect("write");
    }
    let out = child.wait_with_output().await.expect("parser ran");
    assert!(
        out.status.success(),
        "{}\n--- exposition ---\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).expect("parser line");
            Sample {
                name: v["name"].as_str().unwrap_or_default().to_string(),
                labels: v["labels"].as_object().cloned().unwrap_or_default(),
                value: v["value"].as_f64().unwrap_or(f64::NAN),
            }
        })
        .collect()
}

/// The value of `name` whose labels include every pair of `labels` (0 when absent: a
/// labelled counter appears at its first event).
pub fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .find(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).and_then(Value::as_str) == Some(*v))
        })
        .map_or(0.0, |s| s.value)
}

/// Makes a credential with `gridgate web-token` in `dir/name` and returns it.
pub async fn web_token(dir: &Path, name: &str) -> (String, String) {
    let path = dir.join(name);
    let p = path.display().to_string();
    let (code, out, err) =
        crate::run_to_end(&["web-token", "--out", &p], Duration::from_secs(10)).await;
    assert_eq!(code, 0, "{out}{err}");
    let token = std::fs::read_to_string(&path)
        .expect("token")
        .trim()
        .to_string();
    (p, token)
}

/// Debian's chromedriver.
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// Debian's Chromium.
pub const CHROMIUM: &str = "/usr/bin/chromium";

/// A chromedriver on a free loopback port, stopped when dropped.
pub struct Browser {
    child: tokio::process::Child,
    port: u16,
    profile: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver and waits for it to listen.
    pub async fn start() -> Browser {
        let port = crate::free_port();
        let child = tokio::process::Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("chromedriver");
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Browser {
            child,
            port,
            profile: tempfile::tempdir().expect("profile dir"),
        }
    }

    /// Its WebDriver address.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Headless Chromium with a fresh profile and no background traffic (the machine has
    /// no network; Chromium's own services would only fail), a phone-to-laptop sized window.
    pub fn capabilities(&self) -> serde_json::Map<String, Value> {
        let caps = serde_json::json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-quic", "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--window-size=1280,900",
                    format!("--user-data-dir={}", self.profile.path().display()),
                ]
            }
        });
        caps.as_object().cloned().unwrap_or_default()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// Where tests leave artifacts (screenshots): `target/test-artifacts`.
pub fn artifacts_dir() -> std::path::PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or(Path::new("."))
        .join("target/test-artifacts");
    std::fs::create_dir_all(&dir).expect("artifacts dir");
    dir
}

/// One plain-HTTP GET that may fail (for a port that does not speak plain HTTP).
pub async fn try_request(port: u16, path: &str) -> Result<u16, String> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let req = hyper::Request::get(format!("http://127.0.0.1:{port}{path}"))
        .body(Full::new(Bytes::new()))
        .map_err(|e| e.to_string())?;
    client
        .request(req)
        .await
        .map(|r| r.status().as_u16())
        .map_err(|e| e.to_string())
}
