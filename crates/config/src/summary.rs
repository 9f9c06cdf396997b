//! What `check-config` prints of a config that passed: buses, devices, services, store.

use crate::GatewayConfig;

/// A one-paragraph summary of a config, as `check-config` prints it.
pub fn summary(cfg: &GatewayConfig) -> String {
    let mut s = format!(
        "gateway {}: {} bus(es), {} device(s), {} point(s)\n",
        cfg.id,
        cfg.buses.len(),
        cfg.devices().count() + cfg.ingest.as_ref().map_or(0, |i| i.devices.len()),
        cfg.point_count()
    );
    for b in &cfg.buses {
        s.push_str(&format!(
            "  bus {} ({}) on {}: {} device(s)\n",
            b.name,
            b.protocol,
            b.link,
            b.devices.len()
        ));
        for d in &b.devices {
            s.push_str(&format!(
                "    {} every {}: {} point(s)\n",
                d.name,
                humantime::format_duration(d.poll),
                d.points.len()
            ));
        }
    }
    if let Some(i) = &cfg.ingest {
        if let Some(b) = &i.broker {
            s.push_str(&format!(
                "  MQTT ingest from {b} ({} device(s))\n",
                i.devices.len()
            ));
        }
        if let Some(l) = i.listen {
            s.push_str(&format!(
                "  durable MQTT field listener on {l} ({} device(s))\n",
                i.devices.len()
            ));
        }
    }
    if let Some(b) = &cfg.broker {
        s.push_str(&format!("  embedded MQTT broker on {}\n", b.listen));
    }
    match &cfg.uplink {
        Some(u) => s.push_str(&format!("  uplink to {} topic {}\n", u.broker, u.topic)),
        None => s.push_str("  no uplink: batches stay in the store for gRPC pullers\n"),
    }
    if let Some(g) = &cfg.grpc {
        s.push_str(&format!(
            "  gRPC API with mutual TLS on {}{}\n",
            g.listen,
            g.plaintext_listen
                .map(|p| format!(", plaintext on {p} (loopback)"))
                .unwrap_or_default()
        ));
    }
    if let Some(w) = &cfg.web {
        let at = match w.listen.port() {
            0 => format!("{} (a free port)", w.listen.ip()),
            _ => w.listen.to_string(),
        };
        s.push_str(&format!(
            "  commissioning page on {}://{at}{}\n",
            if w.tls.is_some() { "https" } else { "http" },
            if w.admin_token_file.is_some() {
                ""
            } else {
                " (read-only: no admin credential)"
            }
        ));
    }
    if let Some(d) = &cfg.dr {
        s.push_str(&format!(
            "  DR: {} trusted issuer(s), {} program(s){}\n",
            d.issuers.len(),
            d.programs.len(),
            d.command_topic
                .as_ref()
                .map(|t| format!(", events over MQTT on {t}"))
                .unwrap_or_default()
        ));
    }
    for l in &cfg.loads {
        s.push_str(&format!(
            "    load {} metered by {}: {}, {}\n",
            l.name,
            l.meter,
            // An on/off load without a rated power has no limit of its own in kW.
            if l.max_shed_kw < 1e9 {
                format!("up to {} kW off", l.max_shed_kw)
            } else {
                "switched off whole".to_string()
            },
            match &l.control {
                Some(crate::Control::Point(p)) => format!("moved by {}/{}", p.device, p.point),
                Some(crate::Control::Mqtt(m)) => format!("moved over MQTT on {}", m.command_topic),
                None => "measured only".to_string(),
            }
        ));
    }
    if let Some(o) = &cfg.openadr {
        s.push_str(&format!(
            "  OpenADR: VEN {} of {} (events as {}), following {}; {} load(s) mapped, polled every {}{}\n",
            o.ven_name,
            o.vtn,
            o.issuer(),
            o.programs.join(", "),
            o.loads.len(),
            humantime::format_duration(o.poll),
            if o.notifications {
                " and notified where the VTN offers MQTT"
            } else {
                ", no notifications"
            },
        ));
    }
    if let Some(m) = &cfg.market {
        let forecast = match m.forecast {
            crate::market::Forecast::Recent => "the recent mean".to_string(),
            crate::market::Forecast::HighXOfY { x, y } => format!("high {x} of {y} days"),
        };
        s.push_str(&format!(
            "  market: area {}, {} delivery intervals, {} flexible resource(s), consumption {}, forecast by {forecast}\n",
            m.area,
            humantime::format_duration(m.interval),
            m.resources.len(),
            m.meter.as_deref().unwrap_or("none (sells only)"),
        ));
    }
    if let Some(l) = &cfg.ledger {
        let validators = l.members.iter().filter(|m| m.role == "validator").count();
        let f = validators.saturating_sub(1) / 3;
        s.push_str(&format!(
            "  ledger: {} of a consortium of {} member(s); {validators} validator(s), {} votes certify (tolerates {f} faulty)\n",
            l.role.as_str(),
            l.members.len(),
            validators - f,
        ));
    }
    s.push_str(&format!(
        "  store in {}: batches of {} readings or {}, budget {} MiB\n",
        cfg.data_dir.display(),
        cfg.store.batch_readings,
        humantime::format_duration(cfg.store.batch_interval),
        cfg.store.budget >> 20
    ));
    s
}
