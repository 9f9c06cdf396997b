//! `[openadr]`: the gateway as an OpenADR 3 VEN of a utility's VTN (docs/openadr.md): where
//! the VTN is, the credentials it issued, the programs to follow, and how each OpenADR payload
//! moves the gateway's loads.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::{Checker, valid_name};
use crate::dr::{DrConfig, LoadConfig};

/// `[openadr]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOpenAdr {
    pub vtn: Spanned<String>,
    pub name: Option<Spanned<String>>,
    pub ven_name: Option<Spanned<String>>,
    pub client_id: Spanned<String>,
    pub client_secret_file: Spanned<String>,
    pub token_url: Option<Spanned<String>>,
    pub ca_file: Option<Spanned<String>>,
    pub programs: Spanned<Vec<Spanned<String>>>,
    pub poll: Option<Spanned<String>>,
    pub timeout: Option<Spanned<String>>,
    pub notifications: Option<bool>,
    #[serde(default)]
    pub load: Vec<RawOpenAdrLoad>,
}

/// `[[openadr.load]]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOpenAdrLoad {
    pub name: Spanned<String>,
    pub simple_shed_kw: Option<Spanned<Vec<f64>>>,
    pub simple_setpoint: Option<Spanned<Vec<f64>>>,
    pub import_limit: Option<Spanned<bool>>,
    pub export_limit: Option<Spanned<bool>>,
}

/// What a `SIMPLE` level (0-3) does to a load: its index is the level.
#[derive(Debug, Clone, PartialEq)]
pub enum SimpleLevels {
    /// Shed this many kW at each level (0 at level 0 leaves the load alone).
    ShedKw(Vec<f64>),
    /// Write this setpoint at each level.
    Setpoint(Vec<f64>),
}

/// How OpenADR payloads move one `[[load]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenAdrLoad {
    /// The `[[load]]`; also the resource name the VEN reports it under.
    pub load: String,
    /// `SIMPLE` levels, when the load follows them.
    pub simple: Option<SimpleLevels>,
    /// `IMPORT_CAPACITY_LIMIT` (kW) is written to this load as its setpoint (a site
    /// controller's or inverter's import limit).
    pub import_limit: bool,
    /// `EXPORT_CAPACITY_LIMIT` (kW) is written to this load as its setpoint.
    pub export_limit: bool,
}

/// `[openadr]`, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenAdrConfig {
    /// The VTN's base URL (`http://` only on loopback, for tests).
    pub vtn: String,
    /// Short name of the VTN: events from it are recorded as `openadr:<name>`.
    pub name: String,
    /// The VEN name the gateway registers under (default: the gateway id).
    pub ven_name: String,
    /// OAuth2 client id the utility issued.
    pub client_id: String,
    /// File holding the OAuth2 client secret.
    pub client_secret_file: PathBuf,
    /// OAuth2 token endpoint (default: `<vtn>/auth/token`).
    pub token_url: Option<String>,
    /// CA that signed the VTN's HTTPS certificate (default: the system's roots are not
    /// read; an `https://` VTN needs this file).
    pub ca_file: Option<PathBuf>,
    /// The OpenADR programs (by `programName`) whose events the gateway follows; each is
    /// measured by the `[[dr.program]]` of the same name.
    pub programs: Vec<String>,
    /// How often the VTN is asked for programs and events.
    pub poll: Duration,
    /// Longest wait for one request to the VTN.
    pub timeout: Duration,
    /// Subscribe to the VTN's MQTT notifier, where it offers one, to act on an event as it
    /// is published rather than at the next poll (polling goes on as the safety net).
    pub notifications: bool,
    /// How payloads move the loads.
    pub loads: Vec<OpenAdrLoad>,
}

impl OpenAdrConfig {
    /// The issuer name its events are recorded under.
    pub fn issuer(&self) -> String {
        format!("openadr:{}", self.name)
    }
}

/// How often the VTN is polled unless the config says.
pub const DEFAULT_POLL: Duration = Duration::from_secs(10);
/// One request's timeout unless the config says.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15);

impl Checker<'_> {
    pub(super) fn check_openadr(
        &mut self,
        raw: Option<&RawOpenAdr>,
        gateway_id: &str,
        dr: Option<&DrConfig>,
        loads: &[LoadConfig],
    ) -> Option<OpenAdrConfig> {
        let r = raw?;
        let vtn = r.vtn.get_ref().trim().to_string();
        let host = match url::Url::parse(&vtn) {
            Ok(u) if u.scheme() == "https" || u.scheme() == "http" => {
                if u.scheme() == "http" && !is_loopback(&u) {
                    self.problem(
                        &r.vtn,
                        "openadr.vtn".into(),
                        "plain http carries the VTN's bearer token in clear: use https:// (http only on loopback)".into(),
                    );
                }
                if u.scheme() == "https" && r.ca_file.is_none() {
                    self.problem(
                        &r.vtn,
                        "openadr.vtn".into(),
                        "an https:// VTN needs ca_file, the CA that signed its certificate".into(),
                    );
                }
                u.host_str().unwrap_or("vtn").to_string()
            }
            Ok(u) => {
                self.problem(
                    &r.vtn,
                    "openadr.vtn".into(),
                    format!("scheme {:?}: write https://host[:port]/[path]", u.scheme()),
                );
                String::new()
            }
            Err(e) => {
                self.problem(&r.vtn, "openadr.vtn".into(), format!("not a URL: {e}"));
                String::new()
            }
        };
        let name = match &r.name {
            Some(n) => {
                let name = n.get_ref().trim().to_string();
                if !valid_name(&name) {
                    self.problem(
                        n,
                        "openadr.name".into(),
                        "use letters, digits, '-', '_' or '.'".into(),
                    );
                }
                name
            }
            None => host,
        };
        let ven_name = match &r.ven_name {
            Some(v) => {
                let s = v.get_ref().trim().to_string();
                if s.is_empty() || s.len() > 128 {
                    self.problem(v, "openadr.ven_name".into(), "1 to 128 characters".into());
                }
                s
            }
            None => gateway_id.to_string(),
        };
        if r.client_id.get_ref().trim().is_empty() {
            self.problem(
                &r.client_id,
                "openadr.client_id".into(),
                "the OAuth2 client id the VTN's operator issued".into(),
            );
        }
        let token_url = r.token_url.as_ref().map(|t| {
            if url::Url::parse(t.get_ref()).is_err() {
                self.problem(t, "openadr.token_url".into(), "not a URL".into());
            }
            t.get_ref().clone()
        });
        let mut programs = Vec::new();
        for (i, p) in r.programs.get_ref().iter().enumerate() {
            let name = p.get_ref().trim().to_string();
            if name.is_empty() {
                self.problem(p, format!("openadr.programs[{i}]"), "empty name".into());
                continue;
            }
            match dr {
                None => self.problem(
                    p,
                    format!("openadr.programs[{i}]"),
                    "VTN events are measured by the program of the same name: add [dr] (its [[dr.program]] list)".into(),
                ),
                Some(d) if d.program(&name).is_none() => self.problem(
                    p,
                    format!("openadr.programs[{i}]"),
                    format!("no [[dr.program]] named {name:?} to measure its events"),
                ),
                Some(_) => {}
            }
            programs.push(name);
        }
        if programs.is_empty() {
            self.problem(
                &r.programs,
                "openadr.programs".into(),
                "list the OpenADR programs to follow, e.g. [\"peak-2027\"]".into(),
            );
        }
        let poll = self.duration(&r.poll, "openadr.poll".into(), DEFAULT_POLL);
        let timeout = self.duration(&r.timeout, "openadr.timeout".into(), DEFAULT_TIMEOUT);
        let mut out_loads: Vec<OpenAdrLoad> = Vec::new();
        for (i, l) in r.load.iter().enumerate() {
            if let Some(c) = self.check_openadr_load(i, l, loads) {
                if out_loads.iter().any(|x| x.load == c.load) {
                    self.problem(
                        &l.name,
                        format!("openadr.load[{i}].name"),
                        format!("load {:?} is mapped twice", c.load),
                    );
                }
                out_loads.push(c);
            }
        }
        if r.load.is_empty() {
            self.problem(
                &r.vtn,
                "openadr.load".into(),
                "map at least one [[load]], e.g. [[openadr.load]] name = \"chiller-1\" simple_shed_kw = [0, 10, 20, 30]".into(),
            );
        }
        Some(OpenAdrConfig {
            vtn,
            name,
            ven_name,
            client_id: r.client_id.get_ref().trim().to_string(),
            client_secret_file: r.client_secret_file.get_ref().into(),
            token_url,
            ca_file: r.ca_file.as_ref().map(|c| c.get_ref().into()),
            programs,
            poll,
            timeout,
            notifications: r.notifications.unwrap_or(true),
            loads: out_loads,
        })
    }

    fn check_openadr_load(
        &mut self,
        i: usize,
        l: &RawOpenAdrLoad,
        loads: &[LoadConfig],
    ) -> Option<OpenAdrLoad> {
        let key = |k: &str| format!("openadr.load[{i}].{k}");
        let name = l.name.get_ref().trim().to_string();
        if !loads.iter().any(|x| x.name == name) {
            self.problem(&l.name, key("name"), format!("no [[load]] named {name:?}"));
            return None;
        }
        let levels = |this: &mut Self, v: &Spanned<Vec<f64>>, what: &str| {
            let ok = v.get_ref().len() == 4 && v.get_ref().iter().all(|x| x.is_finite());
            if !ok {
                this.problem(
                    v,
                    key(what),
                    "four finite values, one per SIMPLE level 0 to 3".into(),
                );
            }
            v.get_ref().clone()
        };
        let simple = match (&l.simple_shed_kw, &l.simple_setpoint) {
            (Some(s), None) => Some(SimpleLevels::ShedKw(levels(self, s, "simple_shed_kw"))),
            (None, Some(s)) => Some(SimpleLevels::Setpoint(levels(self, s, "simple_setpoint"))),
            (Some(s), Some(_)) => {
                self.problem(
                    s,
                    key("simple_shed_kw"),
                    "give simple_shed_kw or simple_setpoint, not both".into(),
                );
                None
            }
            (None, None) => None,
        };
        let import_limit = l.import_limit.as_ref().is_some_and(|b| *b.get_ref());
        let export_limit = l.export_limit.as_ref().is_some_and(|b| *b.get_ref());
        if simple.is_none() && !import_limit && !export_limit {
            self.problem(
                &l.name,
                key("name"),
                "map at least one payload: simple_shed_kw, simple_setpoint, import_limit or export_limit".into(),
            );
        }
        Some(OpenAdrLoad {
            load: name,
            simple,
            import_limit,
            export_limit,
        })
    }
}

fn is_loopback(u: &url::Url) -> bool {
    match u.host() {
        Some(url::Host::Ipv4(a)) => a.is_loopback(),
        Some(url::Host::Ipv6(a)) => a.is_loopback(),
        Some(url::Host::Domain(d)) => d == "localhost",
        None => false,
    }
}
