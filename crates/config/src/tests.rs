use super::*;

const GOOD: &str = r#"
[gateway]
id = "site-042"
data_dir = "/tmp/gg"

[[bus]]
name = "rs485-1"
link = "serial:///dev/ttyS1?baud=2400&parity=even"

[[bus]]
name = "plant"
link = "tcp://10.0.0.6:502"
timeout = "300ms"

[[device]]
name = "meter-1"
bus = "rs485-1"
protocol = "dlt645"
address = "000000000001"
poll = "15s"
points = [
  { name = "energy_import", di = "00010000" },
  { name = "active_power", di = "02030000" },
]

[[device]]
name = "pcs"
bus = "plant"
protocol = "modbus"
unit = 3
poll = "1s"
points = [
  { name = "power", table = "holding", address = 0, type = "f32", unit = "kW" },
  { name = "setpoint", address = 10, type = "u16", scale = 0.1, unit = "%" },
  { name = "running", table = "discrete", address = 0 },
]
"#;

fn problems(text: &str) -> Vec<Problem> {
    match parse(text, Path::new("site.toml")) {
        Err(ConfigError::Invalid { problems, .. }) => problems,
        Ok(_) => panic!("config was accepted"),
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn a_good_config_is_resolved() {
    let cfg = parse(GOOD, Path::new("site.toml")).unwrap();
    assert_eq!(cfg.id, "site-042");
    assert_eq!(cfg.buses.len(), 2);
    assert_eq!(cfg.buses[0].protocol, Protocol::Dlt645);
    assert_eq!(cfg.buses[1].protocol, Protocol::Modbus);
    assert_eq!(cfg.buses[1].timing.timeout, Duration::from_millis(300));
    assert_eq!(cfg.point_count(), 5);
    let meter = &cfg.buses[0].devices[0];
    assert_eq!(meter.points[0].unit, "kWh", "unit comes from the DI table");
    match &cfg.buses[1].devices[0].kind {
        DeviceKind::Modbus {
            unit,
            plan,
            read_write_multiple,
        } => {
            assert_eq!(*unit, 3);
            assert!(!read_write_multiple, "function 23 only when asked for");
            // holding 0..2 and 10 merge (gap 8), discrete input apart.
            assert_eq!(plan.len(), 2);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn function_23_is_for_modbus_devices_that_ask_for_it() {
    let on = GOOD.replace("unit = 3\n", "unit = 3\nread_write_multiple = true\n");
    let cfg = parse(&on, Path::new("site.toml")).unwrap();
    assert!(matches!(
        cfg.buses[1].devices[0].kind,
        DeviceKind::Modbus {
            read_write_multiple: true,
            ..
        }
    ));
    let meter = GOOD.replace(
        "address = \"000000000001\"\n",
        "address = \"000000000001\"\nread_write_multiple = true\n",
    );
    let p = problems(&meter);
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(p[0].key.ends_with("read_write_multiple"), "{:?}", p[0]);
}

#[test]
fn unknown_key_names_line_and_key() {
    let text = GOOD.replace("poll = \"15s\"", "poll = \"15s\"\npoll_rate = 3");
    let p = problems(&text);
    assert_eq!(p.len(), 1);
    assert!(
        p[0].message.contains("unknown field `poll_rate`"),
        "{:?}",
        p[0]
    );
    assert_eq!(p[0].line, 21);
    assert_eq!(p[0].key, "poll_rate");
}

#[test]
fn checking_goes_on_after_unknown_keys() {
    // Two misspelt keys and a device on a bus that does not exist: all three are reported,
    // each with its line.
    let text = GOOD
        .replace("poll = \"15s\"", "poll = \"15s\"\npoll_rate = 3")
        .replace(
            "timeout = \"300ms\"",
            "timeout = \"300ms\"\ntimout = \"1s\"",
        )
        .replace("bus = \"plant\"", "bus = \"plnat\"");
    let p = problems(&text);
    let keys: Vec<(&str, usize)> = p.iter().map(|p| (p.key.as_str(), p.line)).collect();
    assert!(keys.contains(&("timout", 14)), "{p:?}");
    assert!(keys.contains(&("poll_rate", 22)), "{p:?}");
    assert!(
        p.iter().any(|p| p.message.contains("plnat")),
        "the checker ran after the unknown keys: {p:?}"
    );
    assert_eq!(p.len(), 3, "{p:?}");
}

#[test]
fn every_semantic_problem_is_reported_with_its_line() {
    let text = GOOD
        .replace("bus = \"plant\"", "bus = \"plant-9\"")
        .replace("address = \"000000000001\"", "address = \"00000000001X\"")
        .replace(
            "{ name = \"active_power\", di = \"02030000\" }",
            "{ name = \"energy_import\", di = \"02030000\" }",
        )
        .replace("timeout = \"300ms\"", "timeout = \"soon\"");
    let p = problems(&text);
    let keys: Vec<&str> = p.iter().map(|p| p.key.as_str()).collect();
    assert!(keys.contains(&"bus[1].timeout"), "{p:?}");
    assert!(keys.contains(&"device[0].address"), "{p:?}");
    assert!(keys.contains(&"device[0].points[1].name"), "{p:?}");
    assert!(keys.contains(&"device[1].bus"), "{p:?}");
    let bus = p.iter().find(|p| p.key == "device[1].bus").unwrap();
    assert_eq!(bus.line, 28);
    assert!(
        bus.message.contains("defined buses: plant, rs485-1"),
        "{}",
        bus.message
    );
    let rendered = ConfigError::Invalid {
        path: "site.toml".into(),
        problems: p.clone(),
    }
    .to_string();
    assert!(rendered.starts_with("site.toml:"), "{rendered}");
}

#[test]
fn protocol_mismatches_are_refused() {
    let text = GOOD.replace(
        "link = \"tcp://10.0.0.6:502\"",
        "link = \"rtu-tcp://10.0.0.6:502\"",
    );
    assert!(parse(&text, Path::new("x")).is_ok());
    let text = GOOD.replace("bus = \"plant\"", "bus = \"rs485-1\"");
    let p = problems(&text);
    assert!(p[0].message.contains("already carries dlt645"), "{p:?}");
    let text = GOOD.replace(
        "{ name = \"running\", table = \"discrete\", address = 0 }",
        "{ name = \"running\", di = \"00010000\" }",
    );
    let p = problems(&text);
    assert!(p.iter().any(|p| p.key.ends_with("points[2].di")), "{p:?}");
}

#[test]
fn the_site_examples_are_valid() {
    let room = parse(
        include_str!("../../../deploy/meter-room.toml"),
        Path::new("deploy/meter-room.toml"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(room.buses.len(), 2);
    assert!(room.devices().all(|(b, _)| b.protocol == Protocol::Dlt645));
    assert!(room.uplink.is_some() && room.grpc.is_some());
    let plant = parse(
        include_str!("../../../deploy/plant.toml"),
        Path::new("deploy/plant.toml"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(plant.devices().all(|(b, _)| b.protocol == Protocol::Modbus));
    let ingest = plant.ingest.as_ref().expect("MQTT sensors");
    assert!(ingest.listen.is_some() && ingest.broker.is_none());
    assert_eq!(ingest.devices.len(), 2);
    assert!(plant.uplink.is_none() && plant.grpc.is_some());
    let validator = parse(
        include_str!("../../../deploy/validator.toml"),
        Path::new("deploy/validator.toml"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let l = validator.ledger.expect("ledger");
    assert_eq!(l.role, ledger::LedgerRole::Validator);
    assert_eq!(
        l.members.iter().filter(|m| m.role == "validator").count(),
        4
    );
    assert!(validator.buses.is_empty() && validator.grpc.is_some());
    let c = l.consensus.as_ref().expect("[ledger.consensus]");
    assert_eq!(c.listen.port(), 7450);
    assert!(
        l.members
            .iter()
            .filter(|m| m.role == "validator")
            .all(|m| m.consensus.is_some())
    );
    let operator = parse(
        include_str!("../../../deploy/operator.toml"),
        Path::new("deploy/operator.toml"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let ol = operator.ledger.expect("ledger");
    assert_eq!(ol.role, ledger::LedgerRole::Operator);
    assert_eq!(ol.members, l.members);
    assert!(operator.buses.is_empty() && operator.grpc.is_none());
}

#[test]
fn the_shipped_example_config_is_valid() {
    let text = include_str!("../../../deploy/example.toml");
    let cfg = parse(text, Path::new("deploy/example.toml")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cfg.market.as_ref().map(|m| m.resources.len()), Some(4));
    assert_eq!(cfg.buses.len(), 3);
    assert_eq!(cfg.devices().count(), 3);
    assert!(cfg.broker.is_some() && cfg.ingest.is_some());
    let up = cfg.uplink.as_ref().expect("uplink");
    assert_eq!(up.broker.port, 8883);
    assert!(up.broker.tls.as_ref().is_some_and(|t| t.cert.is_some()));
    assert_eq!(
        cfg.store.required_consumers,
        vec!["mqtt-uplink".to_string()]
    );
    // Every section a gateway may have is shown.
    assert!(cfg.grpc.is_some() && cfg.web.is_some());
    let dr = cfg.dr.as_ref().expect("[dr]");
    assert_eq!(dr.programs.len(), 2);
    assert_eq!(cfg.loads.len(), 2);
    let l = cfg.ledger.as_ref().expect("[ledger]");
    assert_eq!(l.members.len(), 6);
    let o = cfg.openadr.as_ref().expect("[openadr]");
    assert_eq!((o.issuer().as_str(), o.loads.len()), ("openadr:utility", 1));
    let summary = crate::summary(&cfg);
    for said in [
        "gRPC API with mutual TLS on 0.0.0.0:50051",
        "commissioning page on http://127.0.0.1:8080",
        "DR: 1 trusted issuer(s), 2 program(s), events over MQTT on ops/site-042/dr",
        "load pcs metered by pcs/active_power: up to 50 kW off, moved by pcs/setpoint",
        "load tenant-1 metered by meter-1/active_power",
        "ledger: gateway of a consortium of 6 member(s); 4 validator(s)",
        "OpenADR: VEN site-042 of https://vtn.utility.example/openadr3/3.1.0/ (events as openadr:utility), following peak-shave; 1 load(s) mapped",
    ] {
        assert!(summary.contains(said), "{said:?} not in:\n{summary}");
    }
}

#[test]
fn loads_are_bound_to_writable_controls_with_their_credentials() {
    let dr = "\n[dr]\nissuers = [{ name = \"operator\", public_key = \"/etc/gridgate/operator.pub\" }]\n";
    let good = format!(
        "{GOOD}{dr}\n[[load]]\nname = \"tenant\"\nmeter = \"meter-1/active_power\"\ncontrol = \"meter-1/relay\"\npassword = \"02123456\"\noperator = \"00000007\"\n"
    );
    let cfg = parse(&good, Path::new("g.toml")).unwrap_or_else(|e| panic!("{e}"));
    let Some(Control::Point(control)) = cfg.loads[0].control.clone() else {
        panic!("a point control")
    };
    // A meter's relay is a switch: only `on` moves it.
    assert_eq!(cfg.loads[0].accepts, crate::Accepts::Switch);
    assert_eq!(
        (control.device.as_str(), control.point.as_str()),
        ("meter-1", "relay")
    );
    assert_eq!(
        control.auth,
        Some(RemoteAuth {
            password: [0x02, 0x12, 0x34, 0x56],
            operator: [0, 0, 0, 7],
        })
    );

    for (load, key, says) in [
        (
            "control = \"meter-1/relay\"",
            "load[0].control",
            "needs the remote-control password",
        ),
        (
            "control = \"meter-1/active_power\"",
            "load[0].control",
            "not a writable point",
        ),
        (
            "control = \"meter-1/relay\"\npassword = \"xyz\"",
            "load[0].password",
            "8 hex digits",
        ),
        (
            "meter = \"nowhere/p\"",
            "load[0].meter",
            "not a point of this gateway",
        ),
        (
            "control = \"meter-1/relay\"\npassword = \"02123456\"\nrated_kw = 55.0\nmax_shed_kw = 80.0",
            "load[0].max_shed_kw",
            "more than the load's rated_kw",
        ),
    ] {
        let meter = if load.starts_with("meter") {
            ""
        } else {
            "meter = \"meter-1/active_power\"\n"
        };
        let text = format!("{GOOD}{dr}\n[[load]]\nname = \"tenant\"\n{meter}{load}\n");
        let p = problems(&text);
        assert!(
            p.iter().any(|p| p.key == key && p.message.contains(says)),
            "{load}: {p:?}"
        );
    }
}

#[test]
fn programs_name_their_baseline_and_intervals() {
    let dr = "\n[dr]\nissuers = [{ name = \"operator\", public_key = \"/etc/gridgate/operator.pub\" }]\n";
    let none = parse(&format!("{GOOD}{dr}"), Path::new("g.toml")).unwrap_or_else(|e| panic!("{e}"));
    let d = none.dr.expect("dr");
    assert_eq!(
        d.program("anything"),
        Some(ProgramConfig::default_for("anything")),
        "without [[dr.program]] every program gets the defaults"
    );
    let two = format!(
        "{GOOD}{dr}\n[[dr.program]]\nname = \"peak\"\nbaseline = \"meter-before\"\nbefore = \"5m\"\n\n[[dr.program]]\nname = \"day-ahead\"\nbaseline = \"high-x-of-y\"\nhigh_x = 4\nhigh_y = 10\nadjust_window = \"2h\"\nadjust_cap = 0.3\nintervals = [\"15m\"]\n"
    );
    let cfg = parse(&two, Path::new("g.toml")).unwrap_or_else(|e| panic!("{e}"));
    let d = cfg.dr.expect("dr");
    assert_eq!(d.program("other"), None, "listed programs only");
    let peak = d.program("peak").expect("peak");
    assert_eq!(
        peak.baseline,
        BaselineConfig::MeterBefore {
            before: Duration::from_secs(300)
        }
    );
    assert_eq!(peak.intervals, dr::DEFAULT_INTERVALS.to_vec());
    let day = d.program("day-ahead").expect("day-ahead");
    assert_eq!(
        day.baseline,
        BaselineConfig::HighXOfY {
            x: 4,
            y: 10,
            before: dr::DEFAULT_BEFORE,
            adjust: Some((Duration::from_secs(7200), 0.3)),
        }
    );
    assert_eq!(day.intervals, vec![Duration::from_secs(900)]);

    for (program, key, says) in [
        (
            "baseline = \"guess\"",
            "dr.program[0].baseline",
            "not a baseline method",
        ),
        (
            "baseline = \"high-x-of-y\"\nhigh_x = 6\nhigh_y = 5",
            "dr.program[0].high_x",
            "high_x <= high_y",
        ),
        (
            "baseline = \"meter-before\"\nintervals = []",
            "dr.program[0].intervals",
            "at least one interval",
        ),
        (
            "baseline = \"meter-before\"\nintervals = [\"1500ms\"]",
            "dr.program[0].intervals[0]",
            "whole number of seconds",
        ),
    ] {
        let text = format!("{GOOD}{dr}\n[[dr.program]]\nname = \"p\"\n{program}\n");
        let p = problems(&text);
        assert!(
            p.iter().any(|p| p.key == key && p.message.contains(says)),
            "{program}: {p:?}"
        );
    }
}

#[test]
fn an_mqtt_load_needs_the_ingest_broker_and_both_topics() {
    let dr = "\n[dr]\nissuers = [{ name = \"operator\", public_key = \"/etc/gridgate/operator.pub\" }]\n";
    let ingest = "\n[ingest]\nbroker = \"mqtt://127.0.0.1:1883\"\n\n[[ingest.device]]\nname = \"ev\"\ntopic = \"field/ev/data\"\npoints = [{ name = \"power\", unit = \"kW\" }]\n";
    let load = "\n[[load]]\nname = \"ev\"\nmeter = \"ev/power\"\ncontrol = \"mqtt\"\ncommand_topic = \"field/ev/cmd\"\nack_topic = \"field/ev/ack\"\n";
    let cfg = parse(&format!("{GOOD}{ingest}{dr}{load}"), Path::new("g.toml"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        cfg.loads[0].control,
        Some(Control::Mqtt(MqttControl {
            load: "ev".into(),
            command_topic: "field/ev/cmd".into(),
            ack_topic: "field/ev/ack".into(),
            ack_timeout: dr::DEFAULT_ACK_TIMEOUT,
        }))
    );
    let no_ack = format!(
        "{GOOD}{ingest}{dr}{}",
        load.replace("ack_topic = \"field/ev/ack\"\n", "")
    );
    assert!(
        problems(&no_ack)
            .iter()
            .any(|p| p.key == "load[0].ack_topic" && p.message.contains("needs ack_topic")),
    );
    let wildcard = format!(
        "{GOOD}{ingest}{dr}{}",
        load.replace("field/ev/ack", "field/+/ack")
    );
    assert!(
        problems(&wildcard)
            .iter()
            .any(|p| p.key == "load[0].ack_topic")
    );
    // Without an [ingest] broker there is nowhere to publish commands (and no ev/power).
    let lonely = format!(
        "{GOOD}{dr}{}",
        load.replace("ev/power", "meter-1/active_power")
    );
    assert!(
        problems(&lonely)
            .iter()
            .any(|p| p.key == "load[0].control" && p.message.contains("[ingest] broker"))
    );
}

#[test]
fn the_ledger_lists_this_node_and_reachable_validators() {
    let members = |extra: &str| {
        format!(
            "\n[ledger]\nrole = \"gateway\"\nmembers = [\n  {{ id = \"v0\", role = \"validator\", public_key = \"/k/v0.pub\"{extra} }},\n  {{ id = \"site-042\", role = \"gateway\", public_key = \"/k/gw.pub\" }},\n]\n"
        )
    };
    let good = format!("{GOOD}{}", members(", endpoint = \"https://v0:7000\""));
    let cfg = parse(&good, Path::new("g.toml")).unwrap_or_else(|e| panic!("{e}"));
    let l = cfg.ledger.expect("ledger");
    assert_eq!(l.role, ledger::LedgerRole::Gateway);
    assert_eq!(l.members.len(), 2);
    let p = problems(&format!("{GOOD}{}", members("")));
    assert!(
        p.iter().any(|p| p.key == "ledger.members[0].endpoint"),
        "{p:?}"
    );
    let stranger = good.replace("{ id = \"site-042\"", "{ id = \"elsewhere\"");
    let p = problems(&stranger);
    assert!(
        p.iter()
            .any(|p| p.key == "ledger.members" && p.message.contains("must be a member")),
        "{p:?}"
    );
    let p = problems(&good.replace("role = \"gateway\"\nmembers", "role = \"miner\"\nmembers"));
    assert!(p.iter().any(|p| p.key == "ledger.role"), "{p:?}");
}

#[test]
fn the_page_is_https_off_loopback_and_someone_must_be_able_to_open_it() {
    let ok = format!(
        "{GOOD}\n[web]\nlisten = \"0.0.0.0:8443\"\ncert_file = \"s.pem\"\nkey_file = \"s.key\"\nadmin_token_file = \"a.token\"\n"
    );
    let cfg = parse(&ok, Path::new("g.toml")).unwrap_or_else(|e| panic!("{e}"));
    let w = cfg.web.expect("web");
    assert!(w.tls.is_some() && !w.anonymous_read);
    // Defaults: loopback, plain HTTP.
    let cfg = parse(
        &format!("{GOOD}\n[web]\nanonymous_read = true\n"),
        Path::new("g.toml"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        cfg.web.expect("web").listen.to_string(),
        crate::web::DEFAULT_LISTEN
    );

    let plain_lan = problems(&format!(
        "{GOOD}\n[web]\nlisten = \"0.0.0.0:8080\"\nadmin_token_file = \"a\"\n"
    ));
    assert!(
        plain_lan
            .iter()
            .any(|p| p.key == "web.listen" && p.message.contains("HTTPS only")),
        "{plain_lan:?}"
    );
    let half_tls = problems(&format!(
        "{GOOD}\n[web]\ncert_file = \"s.pem\"\nadmin_token_file = \"a\"\n"
    ));
    assert!(
        half_tls.iter().any(|p| p.message.contains("go together")),
        "{half_tls:?}"
    );
    let nobody = problems(&format!("{GOOD}\n[web]\n"));
    assert!(
        nobody
            .iter()
            .any(|p| p.message.contains("nobody could open")),
        "{nobody:?}"
    );
}

#[test]
fn consensus_is_a_validators_and_needs_every_validators_address() {
    let ledger = |role: &str, v1: &str, consensus: &str| {
        format!(
            "[gateway]\nid = \"n\"\n\n[ledger]\nrole = \"{role}\"\nmembers = [\n  {{ id = \"n\", role = \"{role}\", public_key = \"n.pub\", endpoint = \"https://n:1\", consensus = \"127.0.0.1:7450\" }},\n  {{ id = \"v1\", role = \"validator\", public_key = \"v1.pub\", endpoint = \"https://v1:1\"{v1} }},\n]\n{consensus}"
        )
    };
    let section = "\n[ledger.consensus]\nlisten = \"0.0.0.0:7450\"\ncut_interval = \"200ms\"\n";
    let good = parse(
        &ledger("validator", ", consensus = \"127.0.0.1:7451\"", section),
        Path::new("x"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let c = good.ledger.and_then(|l| l.consensus).expect("consensus");
    assert_eq!(c.cut_interval, std::time::Duration::from_millis(200));
    assert_eq!(c.max_clock_skew, ledger::DEFAULT_MAX_CLOCK_SKEW);
    // A validator without its consensus address, a gateway with [ledger.consensus], an
    // address that is not one: each said where.
    let p = problems(&ledger("validator", "", section));
    assert!(
        p.iter().any(|p| p.message.contains("missing for v1")),
        "{p:?}"
    );
    let p = problems(&ledger(
        "gateway",
        ", consensus = \"127.0.0.1:7451\"",
        section,
    ));
    assert!(p.iter().any(|p| p.key == "ledger.consensus"), "{p:?}");
    let p = problems(&ledger(
        "validator",
        ", consensus = \"v1.example\"",
        section,
    ));
    assert!(
        p.iter().any(|p| p.key == "ledger.members[1].consensus"),
        "{p:?}"
    );
}

#[test]
fn market_resources_are_checked_against_the_loads_and_points() {
    let loads = "\n[[load]]\nname = \"pcs-load\"\nmeter = \"pcs/power\"\ncontrol = \"pcs/setpoint\"\nrated_kw = 100.0\nmax_shed_kw = 30.0\n";
    let with = |market: &str| format!("{GOOD}{loads}\n[market]\narea = \"feeder-7\"\n{market}");
    let good = parse(
        &with("interval = \"5m\"\n[[market.resource]]\nkind = \"shed\"\nload = \"pcs-load\"\nsteps = [{ kw = 10.0, from = 700 }, { kw = 30.0, from = 900 }]\n[[market.resource]]\nkind = \"storage\"\nname = \"battery\"\nsoc_point = \"pcs/power\"\ncharge_below = 600\ndischarge_above = 800\nmax_charge_kw = 4.0\nmax_discharge_kw = 12.0\nmin_soc_wh = 1000\nmax_soc_wh = 10000\n[[market.resource]]\nkind = \"pv\"\nmeter = \"meter-1/active_power\"\n"),
        Path::new("x"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let m = good.market.expect("market");
    assert_eq!(
        (m.area.as_str(), m.interval),
        ("feeder-7", std::time::Duration::from_secs(300))
    );
    assert_eq!(m.resources.len(), 3);
    // The shed carries the load's safety limit, whatever its steps add up to.
    assert!(
        matches!(&m.resources[0], market::ResourceConfig::Shed { max_shed_kw, .. } if *max_shed_kw == 30.0)
    );
    // A load that does not exist, a storage that would buy where it sells, an unknown kind,
    // a deferrable pile above its load's limit: each said where.
    let p = problems(&with(
        "[[market.resource]]\nkind = \"shed\"\nload = \"nope\"\nsteps = [{ kw = 1.0, from = 1 }]\n",
    ));
    assert!(
        p.iter().any(|p| p.key == "market.resource[0].load"),
        "{p:?}"
    );
    let p = problems(&with(
        "[[market.resource]]\nkind = \"storage\"\nname = \"b\"\nsoc_point = \"pcs/power\"\ncharge_below = 900\ndischarge_above = 800\nmax_charge_kw = 1.0\nmax_discharge_kw = 1.0\nmin_soc_wh = 0\nmax_soc_wh = 10\n",
    ));
    assert!(
        p.iter().any(|p| p.key == "market.resource[0].charge_below"),
        "{p:?}"
    );
    let p = problems(&with(
        "meter = \"nowhere/p\"\nforecast = \"high-11-of-10\"\n",
    ));
    assert!(p.iter().any(|p| p.key == "market.meter"), "{p:?}");
    assert!(p.iter().any(|p| p.key == "market.forecast"), "{p:?}");
    assert_eq!(
        market::parse_forecast("recent"),
        Some(market::Forecast::Recent)
    );
    assert_eq!(
        market::parse_forecast("high-5-of-10"),
        Some(market::Forecast::HighXOfY { x: 5, y: 10 })
    );
    let p = problems(&with("[[market.resource]]\nkind = \"wind\"\n"));
    assert!(
        p.iter()
            .any(|p| p.key == "market.resource[0].kind" && p.message.contains("\"shed\"")),
        "{p:?}"
    );
    let p = problems(&with(
        "[[market.resource]]\nkind = \"deferrable\"\nload = \"pcs-load\"\nkw = 50.0\nabove = 800\n",
    ));
    assert!(p.iter().any(|p| p.key == "market.resource[0].kw"), "{p:?}");
}

#[test]
fn an_openadr_ven_names_a_safe_vtn_measured_programs_and_mapped_loads() {
    let load = "\n[[load]]\nname = \"pcs\"\nmeter = \"pcs/power\"\ncontrol = \"pcs/setpoint\"\nrated_kw = 100.0\n";
    let dr = "\n[dr]\nissuers = []\n[[dr.program]]\nname = \"peak\"\nbaseline = \"meter-before\"\n";
    let ven = |vtn: &str, programs: &str, map: &str| {
        format!(
            "{GOOD}{dr}{load}\n[openadr]\nvtn = \"{vtn}\"\nclient_id = \"ven-1\"\nclient_secret_file = \"/etc/gridgate/openadr.secret\"\nprograms = [{programs}]\n{map}"
        )
    };
    let good = ven(
        "http://127.0.0.1:3000/",
        "\"peak\"",
        "[[openadr.load]]\nname = \"pcs\"\nsimple_shed_kw = [0, 10, 20, 30]\n",
    );
    let cfg = parse(&good, Path::new("g.toml")).unwrap_or_else(|e| panic!("{e}"));
    let o = cfg.openadr.expect("[openadr]");
    // Defaults: the VEN is the gateway, the VTN named by its host.
    assert_eq!(
        (o.ven_name.as_str(), o.name.as_str()),
        ("site-042", "127.0.0.1")
    );
    assert_eq!(o.poll, crate::openadr::DEFAULT_POLL);

    for (text, key, says) in [
        (
            ven(
                "http://vtn.example/",
                "\"peak\"",
                "[[openadr.load]]\nname = \"pcs\"\nimport_limit = true\n",
            ),
            "openadr.vtn",
            "use https://",
        ),
        (
            ven(
                "https://vtn.example/",
                "\"peak\"",
                "[[openadr.load]]\nname = \"pcs\"\nimport_limit = true\n",
            ),
            "openadr.vtn",
            "needs ca_file",
        ),
        (
            ven(
                "http://[::1]:3000/",
                "\"eco\"",
                "[[openadr.load]]\nname = \"pcs\"\nimport_limit = true\n",
            ),
            "openadr.programs[0]",
            "no [[dr.program]] named \"eco\"",
        ),
        (
            ven(
                "http://localhost:3000/",
                "\"peak\"",
                "[[openadr.load]]\nname = \"boiler\"\nimport_limit = true\n",
            ),
            "openadr.load[0].name",
            "no [[load]] named \"boiler\"",
        ),
        (
            ven(
                "http://localhost:3000/",
                "\"peak\"",
                "[[openadr.load]]\nname = \"pcs\"\nsimple_shed_kw = [0, 10, 20]\n",
            ),
            "openadr.load[0].simple_shed_kw",
            "four finite values",
        ),
        (
            ven(
                "http://localhost:3000/",
                "\"peak\"",
                "[[openadr.load]]\nname = \"pcs\"\n",
            ),
            "openadr.load[0].name",
            "map at least one payload",
        ),
        (
            ven(
                "http://localhost:3000/",
                "",
                "[[openadr.load]]\nname = \"pcs\"\nimport_limit = true\n",
            ),
            "openadr.programs",
            "list the OpenADR programs",
        ),
    ] {
        let p = problems(&text);
        assert!(
            p.iter().any(|p| p.key == key && p.message.contains(says)),
            "{key}: {says:?} not in {p:?}"
        );
    }
    // Without [openadr], [dr] still needs an issuer.
    let alone = format!("{GOOD}{dr}{load}");
    assert!(problems(&alone).iter().any(|p| p.key == "dr.issuers"));
}
