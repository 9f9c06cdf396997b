//! Reaching the consortium: the config's `[ledger]` and membership, the validators that
//! answer, and the logs they hold.

use std::io::Write;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use gridgate_proto::v1 as pb;
use gridgate_proto::v1::ledger_client::LedgerClient;

use gridgate_ledger::entry::check_certified;

/// The membership a validator's replica puts in force: the genesis one with the certified
/// membership changes in its operators' and validators' logs (each certificate checked
/// against the genesis membership) applied.
pub(crate) async fn members_held(
    client: &mut LedgerClient<tonic::transport::Channel>,
    genesis: &gridgate_ledger::Members,
) -> Result<gridgate_ledger::Members> {
    let mut entries = Vec::new();
    for m in genesis
        .0
        .values()
        .filter(|m| matches!(m.role, pb::MemberRole::Operator | pb::MemberRole::Validator))
    {
        for c in fetch_log(client, &m.id, 0).await? {
            if let Ok((e, _)) = check_certified(&c, genesis) {
                entries.push(e);
            }
        }
    }
    let changes = gridgate_ledger::membership::changes_in(entries.iter(), genesis);
    Ok(gridgate_ledger::membership::apply(genesis, changes.iter()))
}

/// Every certified entry a validator holds, each certificate checked (against the
/// membership its replica puts in force).
pub(crate) async fn fetch_all(
    client: &mut LedgerClient<tonic::transport::Channel>,
    genesis: &gridgate_ledger::Members,
) -> Result<Vec<gridgate_ledger::settlement::Certified>> {
    let members = &members_held(client, genesis).await?;
    let heads = client.heads(pb::HeadsRequest {}).await?.into_inner().heads;
    let mut out = Vec::new();
    for h in heads {
        for c in fetch_log(client, &h.origin, 0).await? {
            let (entry, _) = check_certified(&c, members)
                .map_err(|e| anyhow::anyhow!("{} entry does not check: {e}", h.origin))?;
            out.push(gridgate_ledger::settlement::Certified { entry });
        }
    }
    Ok(out)
}

/// The config's `[ledger]` and its membership with the keys read.
pub(crate) fn consortium(
    config: &std::path::Path,
) -> Result<(
    gridgate_config::ledger::LedgerConfig,
    gridgate_ledger::Members,
)> {
    let cfg = gridgate_config::load(config)?;
    let Some(ledger) = cfg.ledger else {
        bail!("{} has no [ledger] table", config.display());
    };
    let members = gridgate_ledger_node::load_members(&ledger)?;
    Ok((ledger, members))
}

/// A client of the validator at `endpoint`, with the config's TLS client identity.
pub(crate) async fn validator(
    ledger: &gridgate_config::ledger::LedgerConfig,
    endpoint: &str,
) -> Result<LedgerClient<tonic::transport::Channel>> {
    let channel = crate::tools::pull::connect(
        endpoint,
        ledger.ca_file.as_ref(),
        ledger.cert_file.as_ref(),
        ledger.key_file.as_ref(),
    )
    .await?;
    Ok(LedgerClient::new(channel))
}

/// A client of validator `v`, or `None` after saying on `out` why it cannot be reached
/// (each line starts with `prefix`).
pub(crate) async fn reach(
    ledger: &gridgate_config::ledger::LedgerConfig,
    v: &gridgate_config::ledger::MemberConfig,
    out: &mut dyn Write,
    prefix: &str,
) -> Result<Option<LedgerClient<tonic::transport::Channel>>> {
    let Some(endpoint) = &v.endpoint else {
        writeln!(out, "{prefix}validator {}: no endpoint in the config", v.id)?;
        return Ok(None);
    };
    match validator(ledger, endpoint).await {
        Ok(c) => Ok(Some(c)),
        Err(e) => {
            writeln!(out, "{prefix}validator {}: unreachable ({e:#})", v.id)?;
            Ok(None)
        }
    }
}

/// A validator's heads, or why not (within 10 s).
pub(crate) async fn heads_of(
    client: &mut LedgerClient<tonic::transport::Channel>,
) -> std::result::Result<Vec<pb::Head>, String> {
    match tokio::time::timeout(Duration::from_secs(10), client.heads(pb::HeadsRequest {})).await {
        Ok(Ok(h)) => Ok(h.into_inner().heads),
        Ok(Err(s)) => Err(s.message().to_string()),
        Err(_) => Err("no answer within 10 s".into()),
    }
}

/// A validator that answers with its heads, and the membership its replica puts in force;
/// `None` after saying on `out` why not.
pub(crate) async fn answering(
    ledger: &gridgate_config::ledger::LedgerConfig,
    genesis: &gridgate_ledger::Members,
    v: &gridgate_config::ledger::MemberConfig,
    out: &mut dyn Write,
) -> Result<
    Option<(
        LedgerClient<tonic::transport::Channel>,
        Vec<pb::Head>,
        gridgate_ledger::Members,
    )>,
> {
    let Some(mut client) = reach(ledger, v, out, "").await? else {
        return Ok(None);
    };
    let heads = match heads_of(&mut client).await {
        Ok(h) => h,
        Err(why) => {
            writeln!(out, "validator {}: {why}", v.id)?;
            return Ok(None);
        }
    };
    let members = members_held(&mut client, genesis).await?;
    Ok(Some((client, heads, members)))
}

/// Every certified entry of `origin` a validator holds from `from`, as sent.
pub(crate) async fn fetch_log(
    client: &mut LedgerClient<tonic::transport::Channel>,
    origin: &str,
    from: u64,
) -> Result<Vec<pb::CertifiedEntry>> {
    let mut stream = client
        .fetch(pb::FetchRequest {
            origin: origin.to_string(),
            from_seq: from,
            max: 0,
        })
        .await?
        .into_inner();
    let mut out = Vec::new();
    while let Some(c) = tokio::time::timeout(Duration::from_secs(30), stream.message())
        .await
        .context("no entry within 30 s")??
    {
        out.push(c);
    }
    Ok(out)
}

/// A time as `2026-11-29T05:20:00Z`.
pub(crate) fn utc(ms: i64) -> String {
    let at = std::time::UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_seconds(at).to_string()
}

/// A member's log as one validator holds it, with the membership that validator's replica
/// puts in force.
pub(crate) struct HeldLog {
    /// The validator.
    pub validator: String,
    /// Its membership in force.
    pub members: gridgate_ledger::Members,
    /// The log's certified entries, as sent.
    pub entries: Vec<pb::CertifiedEntry>,
}

/// `origin`'s log from `from` as the validator named by `only` (or the first that answers)
/// holds it; `None` after saying on `out` why each validator could not give it.
pub(crate) async fn log_of(
    ledger: &gridgate_config::ledger::LedgerConfig,
    genesis: &gridgate_ledger::Members,
    origin: &str,
    from: u64,
    only: Option<&str>,
    out: &mut dyn Write,
) -> Result<Option<HeldLog>> {
    for v in ledger
        .members
        .iter()
        .filter(|m| m.role == "validator" && only.is_none_or(|o| o == m.id))
    {
        let Some(mut client) = reach(ledger, v, out, "# ").await? else {
            continue;
        };
        let fetched = match members_held(&mut client, genesis).await {
            Ok(members) => fetch_log(&mut client, origin, from)
                .await
                .map(|e| (members, e)),
            Err(e) => Err(e),
        };
        match fetched {
            Ok((members, entries)) => {
                return Ok(Some(HeldLog {
                    validator: v.id.clone(),
                    members,
                    entries,
                }));
            }
            Err(e) => writeln!(out, "# validator {}: {e:#}", v.id)?,
        }
    }
    Ok(None)
}
