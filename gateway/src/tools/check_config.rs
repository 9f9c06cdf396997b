//! `gridgate check-config`: the config's own rules, then every file it names opened and
//! parsed as the daemon will (identity key, certificates, TLS keys, issuer and member keys,
//! page credentials), each problem as `FILE:LINE:COL: key: what is wrong`. The unit's
//! `ExecStartPre` runs it, so a gateway with a missing or garbage key never starts.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use gridgate_config::files::{FileKind, NamedFile};
use gridgate_config::{self as config, ConfigError, Problem};

/// Checks the config at `path`; with `files`, also every file it names.
pub fn run(path: &Path, files: bool, out: &mut impl Write) -> anyhow::Result<ExitCode> {
    let cfg = match config::load(path) {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("{e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    if files {
        // load() read it just now; a config replaced in between is checked as it is now.
        let text = std::fs::read_to_string(path)?;
        let problems: Vec<Problem> = config::named_files(&text, &cfg)
            .iter()
            .filter_map(|f| {
                check_file(f).err().map(|message| Problem {
                    line: f.line,
                    column: f.column,
                    key: f.key.clone(),
                    message,
                })
            })
            .collect();
        if !problems.is_empty() {
            eprintln!(
                "{}",
                ConfigError::Invalid {
                    path: path.to_path_buf(),
                    problems,
                }
            );
            return Ok(ExitCode::FAILURE);
        }
    }
    write!(
        out,
        "{}: OK{}\n{}",
        path.display(),
        if files {
            ""
        } else {
            " (the files it names were not opened)"
        },
        gridgate_config::summary(&cfg)
    )?;
    Ok(ExitCode::SUCCESS)
}

/// Opens and parses one file with the loader the daemon uses for it.
fn check_file(f: &NamedFile) -> Result<(), String> {
    let p = f.path.as_path();
    if p.is_dir() {
        return Err(format!("{} is a directory, not a file", p.display()));
    }
    let result = match f.kind {
        FileKind::IdentityKey => gridgate_core::Identity::load(p)
            .map(drop)
            .map_err(|e| e.to_string()),
        FileKind::PublicKey => gridgate_core::identity::load_public(p)
            .map(drop)
            .map_err(|e| e.to_string()),
        FileKind::Certificates => gridgate_core::tls::cert_chain(p)
            .map(drop)
            .map_err(|e| e.to_string()),
        FileKind::TlsKey => gridgate_core::tls::private_key(p)
            .map(drop)
            .map_err(|e| e.to_string()),
        FileKind::Token => gridgate_web::auth::load_token(p)
            .map(drop)
            .map_err(|e| e.reason),
    };
    result.map_err(|e| {
        // The loaders name the file; the reader should see it once, first.
        let shown = p.display().to_string();
        let reason = e.strip_prefix(&format!("{shown}: ")).unwrap_or(&e);
        format!("{shown}: {reason}")
    })
}
