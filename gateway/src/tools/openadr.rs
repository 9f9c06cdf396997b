//! `gridgate openadr status`: the gateway's OpenADR VEN as its page API shows it
//! (docs/openadr.md): the VTN, the registration, the programs followed, the last poll and
//! error, the reports waiting, and each VTN event with what became of its intervals.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Result;
use gridgate_openadr::tables::{Seen, SeenState};
use gridgate_web::views::OpenAdrView;

use super::status::{PageArgs, ago, get, target};

/// `gridgate openadr ...`
#[derive(Debug, Clone, clap::Subcommand)]
pub enum OpenAdrCommand {
    /// The VEN: registration, programs, last poll and error, reports waiting, VTN events.
    /// Exit 1 when the last poll failed or the VEN never reached the VTN.
    ///
    /// Example: gridgate openadr status -c /etc/gridgate/gridgate.toml
    Status {
        #[command(flatten)]
        page: PageArgs,
        /// Print the view as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Runs an `openadr` command.
pub async fn run(cmd: OpenAdrCommand, out: &mut dyn Write) -> Result<ExitCode> {
    let OpenAdrCommand::Status { page, json } = cmd;
    let t = target(&page)?;
    let v: OpenAdrView = get(&t, "/api/openadr").await?;
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
    } else {
        for line in lines(&v, gridgate_core::now_ms()) {
            writeln!(out, "{line}")?;
        }
    }
    let healthy = v
        .status
        .as_ref()
        .is_some_and(|s| s.last_ok_ms > 0 && s.last_ok_ms >= s.last_poll_ms);
    Ok(if healthy || !v.configured {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn since(now: i64, ms: i64) -> String {
    if ms <= 0 {
        "never".into()
    } else {
        ago(Some(now - ms))
    }
}

fn state(e: &Seen) -> &'static str {
    match e.state {
        SeenState::Active => "active",
        SeenState::Refused => "refused",
        SeenState::Cancelled => "withdrawn",
        SeenState::Done => "done",
    }
}

/// The VTN's MQTT notifier: whether events arrive as published or at the next poll.
fn notifier_line(n: &gridgate_openadr::notify::NotifierStatus) -> String {
    let mut line = format!(
        "notified   {}",
        if n.state.is_empty() {
            "not yet asked"
        } else {
            &n.state
        }
    );
    if let Some(b) = &n.broker {
        line.push_str(&format!(" via {b} ({})", n.topics.join(", ")));
    }
    if n.received > 0 {
        line.push_str(&format!(", {} notification(s)", n.received));
    }
    if let Some(e) = n.last_error.as_ref().filter(|_| n.state != "subscribed") {
        line.push_str(&format!("; {e}"));
    }
    line
}

/// The view as text.
fn lines(v: &OpenAdrView, now: i64) -> Vec<String> {
    if !v.configured {
        return vec!["OpenADR: not configured (no [openadr] in the gateway's config)".into()];
    }
    let Some(s) = &v.status else {
        return vec!["OpenADR: configured; the VEN has not run yet".into()];
    };
    let mut out = vec![
        format!("VTN        {}", s.vtn),
        format!(
            "VEN        {} ({}){}",
            s.ven_name,
            s.ven_id
                .as_deref()
                .map_or("not registered yet".to_string(), |id| format!("id {id}")),
            if s.ven_targets.is_empty() {
                String::new()
            } else {
                format!(", targets {}", s.ven_targets.join(", "))
            }
        ),
        format!(
            "programs   {}",
            s.programs
                .iter()
                .map(|(n, id)| match id {
                    Some(id) => format!("{n} (id {id})"),
                    None => format!("{n} (not on the VTN)"),
                })
                .collect::<Vec<_>>()
                .join(", ")
        ),
        format!(
            "polled     {}; last answer {}",
            since(now, s.last_poll_ms),
            since(now, s.last_ok_ms)
        ),
    ];
    out.push(notifier_line(&s.notifier));
    if let Some((at, e)) = &s.last_error {
        out.push(format!("last error {} ({})", e, since(now, *at)));
    }
    out.push(format!(
        "reports    {} posted, {} report(s) waiting",
        s.reports_posted, v.waiting
    ));
    if !s.refused.is_empty() {
        let r: Vec<String> = s.refused.iter().map(|(k, n)| format!("{k} {n}")).collect();
        out.push(format!("refused    {}", r.join(", ")));
    }
    if !s.unmapped.is_empty() {
        let r: Vec<String> = s.unmapped.iter().map(|(k, n)| format!("{k} {n}")).collect();
        out.push(format!(
            "unmapped   {} (payload types no [[openadr.load]] follows, reports not measured)",
            r.join(", ")
        ));
    }
    if v.events.is_empty() {
        out.push("events     none yet".into());
    }
    for (id, e) in &v.events {
        let accepted = e.intervals.iter().filter(|i| i.accepted).count();
        let reported = e.intervals.iter().filter(|i| i.reported).count();
        let mut line = format!(
            "event {id} {}({}) {}: {accepted} interval(s) scheduled, {reported} reported",
            e.name
                .as_deref()
                .map(|n| format!("{n:?} "))
                .unwrap_or_default(),
            e.program,
            state(e),
        );
        let asked: usize = e.telemetry.iter().map(|r| r.reports.len()).sum();
        if asked > 0 {
            let queued: usize = e.telemetry.iter().map(|r| r.queued).sum();
            line.push_str(&format!(", telemetry {queued} of {asked} report(s) made"));
        }
        if e.generation > 0 {
            line.push_str(&format!(", modified {} time(s)", e.generation));
        }
        if let Some(r) = &e.refusal {
            line.push_str(&format!("; {r}"));
        }
        out.push(line);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use gridgate_openadr::tables::{Scheduled, Status};

    #[test]
    fn the_lines_say_what_an_engineer_checks_first() {
        let now = 1_800_000_000_000;
        let v = OpenAdrView {
            configured: true,
            status: Some(Status {
                vtn: "https://vtn.example/".into(),
                ven_name: "site-042".into(),
                ven_id: Some("ven-7".into()),
                programs: vec![("peak".into(), Some("p-1".into())), ("eco".into(), None)],
                last_poll_ms: now - 2_000,
                last_ok_ms: now - 62_000,
                last_error: Some((now - 2_000, "VTN: connection refused".into())),
                reports_posted: 3,
                refused: [("absurd_value".to_string(), 1)].into(),
                ..Default::default()
            }),
            waiting: 2,
            events: vec![(
                "ev-1".into(),
                Seen {
                    generation: 1,
                    intervals: vec![Scheduled {
                        interval_id: 0,
                        dr_id: "ev-1/1/0".into(),
                        start_ms: now,
                        end_ms: now + 1,
                        accepted: true,
                        refusal: None,
                        reported: false,
                        cancelled: false,
                    }],
                    ..Seen::first("peak", Some("evening".into()), now)
                },
            )],
        };
        let text = lines(&v, now).join("\n");
        assert!(text.contains("site-042 (id ven-7)"), "{text}");
        assert!(text.contains("eco (not on the VTN)"), "{text}");
        assert!(text.contains("last answer 1m 2s ago"), "{text}");
        assert!(text.contains("connection refused"), "{text}");
        assert!(text.contains("3 posted, 2 report(s) waiting"), "{text}");
        assert!(text.contains("absurd_value 1"), "{text}");
        assert!(
            text.contains("event ev-1 \"evening\" (peak) active: 1 interval(s) scheduled, 0 reported, modified 1 time(s)"),
            "{text}"
        );
    }
}
