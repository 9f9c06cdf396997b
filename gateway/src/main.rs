//! The `gridgate` command. Parses the command line and calls into the library.
// No unwrap()/expect() outside tests: bad input gets an error, never a panic (clippy
// enforces it; test code may still use them).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[cfg(feature = "demo")]
use anyhow::Context;
use anyhow::Result;
use clap::{Args, Parser, Subcommand, ValueEnum};
#[cfg(feature = "demo")]
use gridgate::demo;
use gridgate::tools;
use gridgate_acquire::{JsonLinesSink, ReadingSink, TextSink};
use gridgate_drivers::dlt645::{Address, DataId};
use gridgate_drivers::link::Link;
use gridgate_drivers::modbus::{DataType, Order, Table};

/// Demand-response edge gateway: reads DL/T 645 meters and Modbus devices.
#[derive(Debug, Parser)]
#[command(name = "gridgate", version, propagate_version = true)]
struct Cli {
    /// Log filter (error, warn, info, debug, trace, or per module: gridgate=debug); default
    /// info (for `demo`, info without the in-process consortium's routine ledger messages).
    #[arg(long, global = true, env = "GRIDGATE_LOG")]
    log: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start simulated meters and devices and the gateway on them, and print readings.
    ///
    /// Needs no config: three DL/T 645 meters on a simulated 2400-baud RS-485 line (a
    /// pseudo-terminal) and two Modbus TCP devices on loopback.
    #[cfg(feature = "demo")]
    Demo {
        /// Stop after this long (e.g. 30s); default: until Ctrl-C.
        #[arg(long, value_parser = humantime::parse_duration)]
        duration: Option<Duration>,
        /// Print readings as JSON lines instead of a table.
        #[arg(long)]
        json: bool,
        /// When to send the demo's signed DR event (it sheds half of the simulated plant's
        /// first unit for 20 s, then restores it).
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        dr_after: Duration,
        /// How long the demo's DR event lasts; its signed performance report follows about
        /// ten seconds after its end, and is certified on the demo's ledger.
        #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
        dr_for: Duration,
        /// Port of the commissioning page on 127.0.0.1 (0: any free one; a taken port also
        /// falls back to a free one, and the first lines say which).
        #[arg(long, default_value_t = 8080)]
        web_port: u16,
        /// Print only the status lines, not every reading.
        #[arg(long, conflicts_with = "json")]
        status_only: bool,
        /// Keep the demo's store, keys and certificates in DIR (new or empty) after it stops,
        /// to try `gridgate verify` or `gridgate pull` on them.
        #[arg(long, value_name = "DIR")]
        keep: Option<PathBuf>,
        /// Stop once the DR event's claim and a market interval are settled (two to three
        /// minutes with the default --dr-after; --duration still bounds it).
        #[arg(long)]
        until_settled: bool,
    },
    /// Run the gateway daemon with a config file.
    ///
    /// Polls the buses, takes MQTT field devices, stores every reading in signed,
    /// hash-chained batches, and sends them upstream. Stops cleanly on SIGTERM or Ctrl-C,
    /// closing a last batch.
    Run {
        /// Config file (TOML).
        #[arg(long, short)]
        config: PathBuf,
        /// Also print every polled reading on stdout, as JSON lines or text.
        #[arg(long, value_enum)]
        echo: Option<Format>,
    },
    /// Make the gateway's Ed25519 identity key (identity.key, identity.pub) in a directory,
    /// and with --pki a small site PKI for the gRPC API (CA, server and client certificates).
    Keygen {
        /// Directory to write to (created if missing). An existing key is never overwritten.
        #[arg(long, default_value = "/etc/gridgate")]
        out: PathBuf,
        /// Also write DIR/pki: ca.pem, server.pem/.key and client-<role>.pem/.key for the
        /// roles master, validator, operator and viewer (the role is the certificate's OU).
        #[arg(long)]
        pki: bool,
        /// Host names or addresses the server certificate is valid for (besides localhost
        /// and 127.0.0.1); repeatable.
        #[arg(long = "host")]
        hosts: Vec<String>,
        /// Gateway id written into the certificates.
        #[arg(long, default_value = "gateway")]
        id: String,
    },
    /// Pull signed batches from a gateway over gRPC, verifying each signature and the chain.
    ///
    /// Example: gridgate pull --endpoint https://gw.example:50051 --ca pki/ca.pem
    /// --cert pki/client-master.pem --key pki/client-master.key --consumer master-1 --ack
    Pull(tools::pull::PullArgs),
    /// Demand response by hand: sign an event, dispatch it to a gateway.
    #[command(subcommand)]
    Dr(tools::dr::DrCommand),
    /// The consortium ledger: what the validators hold, checked.
    #[command(subcommand)]
    Ledger(tools::ledger::LedgerCommand),
    /// The flexibility market: rounds, clearings, this gateway's position.
    #[command(subcommand)]
    Market(tools::market::MarketCommand),
    /// The gateway as an OpenADR 3 VEN of a utility's VTN: its status.
    #[command(subcommand)]
    Openadr(tools::openadr::OpenAdrCommand),
    /// The running gateway on one screen: devices, buses, store, uplink, DR, ledger, market.
    ///
    /// Asks the gateway's commissioning page ([web]) with the credential its config names;
    /// exit 2 when a device is offline. Example: gridgate status -c /etc/gridgate/gridgate.toml
    Status(tools::status::StatusArgs),
    /// Make a credential for the commissioning page (32 random bytes as hex, owner-only).
    ///
    /// Example: gridgate web-token --out /etc/gridgate/web-admin.token
    WebToken {
        /// File to write (never overwritten).
        #[arg(long)]
        out: PathBuf,
    },
    /// Check a gateway's whole chain of signed batches offline.
    ///
    /// Prints the count of batches and readings and the first fault found; exit 1 on a fault.
    Verify {
        /// The gateway's data directory (holds gridgate.redb).
        #[arg(long)]
        data_dir: PathBuf,
        /// The gateway's public key (identity.pub).
        #[arg(long)]
        pubkey: PathBuf,
        /// Also print every batch's sequence, time and reading count.
        #[arg(long)]
        list: bool,
    },
    /// Check a config file and every file it names (keys, certificates, credentials): exit
    /// 0 with a summary, or list every problem as FILE:LINE:COL: key: what is wrong.
    CheckConfig {
        /// Config file (TOML).
        #[arg(long, short)]
        config: PathBuf,
        /// Check the config alone, without opening the files it names (for an example, or
        /// a config written before its keys exist).
        #[arg(long)]
        no_files: bool,
    },
    /// Read values once, for commissioning.
    #[command(subcommand)]
    Read(ReadCommand),
    /// Find the meters or Modbus units that answer on a line, and print a config snippet.
    #[command(subcommand)]
    Scan(ScanCommand),
    /// Run simulated lines of meters and devices (for bench work) until Ctrl-C.
    ///
    /// Example: gridgate sim --config deploy/sim.toml --print-config > sim-gateway.toml
    #[cfg(feature = "demo")]
    Sim {
        /// Simulator file (TOML, [[line]] tables; deploy/sim.toml is an example with every
        /// kind of line); default: the demo's set.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Also print a gateway config that polls the simulated devices.
        #[arg(long)]
        print_config: bool,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Format {
    /// One JSON object per reading per line.
    Json,
    /// Aligned text for people.
    Text,
}

#[derive(Debug, Subcommand)]
enum ReadCommand {
    /// Read DL/T 645-2007 data identifiers from one meter.
    ///
    /// Example: gridgate read dlt645 --link 'serial:///dev/ttyS1?baud=2400&parity=even'
    /// --addr 000000000001 --di 00010000 --di 02030000
    Dlt645(Dlt645ReadArgs),
    /// Read Modbus registers or bits from one unit.
    ///
    /// Example: gridgate read modbus --link tcp://10.0.0.6:502 --unit 1 --table holding
    /// --address 0 --type f32
    Modbus(ModbusReadArgs),
}

#[derive(Debug, Args)]
struct Dlt645ReadArgs {
    /// Line: serial:///dev/ttyX?baud=2400&parity=even or tcp://HOST:PORT (converter).
    #[arg(long)]
    link: Link,
    /// Meter address, 12 digits as on its nameplate.
    #[arg(long)]
    addr: Address,
    /// Data identifier DI3DI2DI1DI0, e.g. 00010000 (forward active energy); repeatable.
    #[arg(long, required = true)]
    di: Vec<DataId>,
    /// Reply timeout.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// FE wake-up bytes before each request.
    #[arg(long, default_value_t = 4)]
    wakeup: usize,
    /// One JSON object per value.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct ModbusReadArgs {
    /// Line: tcp://HOST:PORT, rtu-serial:///dev/ttyX?baud=9600 or rtu-tcp://HOST:PORT.
    #[arg(long)]
    link: Link,
    /// Unit (slave) id.
    #[arg(long, default_value_t = 1)]
    unit: u8,
    /// Table: coil, discrete, input, holding.
    #[arg(long, default_value = "holding")]
    table: Table,
    /// First address (0-based).
    #[arg(long)]
    address: u16,
    /// Type: bool, u16, i16, u32, i32, u64, i64, f32, f64.
    #[arg(long = "type", default_value = "u16")]
    data_type: DataType,
    /// How many consecutive values of that type.
    #[arg(long, default_value_t = 1)]
    count: u16,
    /// Byte order within a register: big or little.
    #[arg(long, default_value = "big")]
    byte_order: Order,
    /// Register order within a value: big or little.
    #[arg(long, default_value = "big")]
    word_order: Order,
    /// Multiply the raw value by this.
    #[arg(long, default_value_t = 1.0)]
    scale: f64,
    /// Then add this.
    #[arg(long, default_value_t = 0.0)]
    offset: f64,
    /// Unit label to print with each value (kW, V...).
    #[arg(long = "unit-label", default_value = "")]
    unit_label: String,
    /// Reply timeout.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// One JSON object per value.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum ScanCommand {
    /// Find DL/T 645 meters: wildcard read-address, then a search where several answer.
    Dlt645 {
        /// Line: serial:///dev/ttyX?baud=2400&parity=even or tcp://HOST:PORT.
        #[arg(long)]
        link: Link,
        /// How long to wait for each probe.
        #[arg(long, default_value = "500ms", value_parser = humantime::parse_duration)]
        timeout: Duration,
        /// How many meters share the line, if you know: the search stops once it has found
        /// them (each silent probe costs the timeout) instead of probing every address left.
        #[arg(long, value_name = "N")]
        meters: Option<usize>,
    },
    /// Find Modbus unit ids that answer.
    Modbus {
        /// Line: tcp://HOST:PORT, rtu-serial:///dev/ttyX?baud=9600 or rtu-tcp://HOST:PORT.
        #[arg(long)]
        link: Link,
        /// First unit id to try.
        #[arg(long, default_value_t = 1)]
        from: u8,
        /// Last unit id to try.
        #[arg(long, default_value_t = 247)]
        to: u8,
        /// Table of the register each probe reads.
        #[arg(long, default_value = "holding")]
        table: Table,
        /// Address each probe reads.
        #[arg(long, default_value_t = 0)]
        address: u16,
        /// How long to wait for each probe.
        #[arg(long, default_value = "300ms", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
}

/// The log filter when none is given.
fn default_log(command: &Command) -> &'static str {
    match command {
        // Eight nodes in one process (validators, prosumers) log every certificate, cut and
        // answer at info, hundreds of lines a minute: the status lines say where they stand.
        // The engine's resolver logs its mailbox closing as an error when it is stopped.
        #[cfg(feature = "demo")]
        Command::Demo { .. } => {
            "info,gridgate_ledger_node=warn,gridgate_node=warn,gridgate_dr::market=warn,commonware_resolver=off"
        }
        _ => "info",
    }
}

fn init_logging(filter: &str) {
    // The embedded broker logs every connection at info: keep it to warnings unless asked.
    let filter = if filter.contains("rumqttd") {
        filter.to_string()
    } else {
        format!("{filter},rumqttd=warn")
    };
    let filter = tracing_subscriber::EnvFilter::try_new(&filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}

fn sink(format: Format) -> Box<dyn ReadingSink> {
    match format {
        Format::Json => Box::new(JsonLinesSink::new(std::io::stdout())),
        Format::Text => Box::new(TextSink::new(std::io::stdout())),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log.as_deref().unwrap_or(default_log(&cli.command)));
    // Any library that builds its TLS with rustls's process default gets ring, as the
    // gateway's own configs do (docs/dev/architecture.md, core).
    gridgate_core::tls::use_ring_provider();
    // Fault injection for the tests (FAILPOINTS=...): a no-op unless built with the
    // `failpoints` feature.
    #[cfg(feature = "failpoints")]
    let _failpoints = fail::FailScenario::setup();
    #[cfg(not(feature = "failpoints"))]
    if std::env::var_os("FAILPOINTS").is_some() {
        tracing::warn!(
            "FAILPOINTS is set, but this binary was built without the failpoints feature: ignored"
        );
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        // Store commits and reads run on blocking threads; a few are enough (there is one
        // writer), and every extra thread is another malloc arena on a small box.
        .max_blocking_threads(4)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("gridgate: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = match runtime.block_on(dispatch(cli.command)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("gridgate: {}", gridgate::tools::advice::explain(&e));
            ExitCode::FAILURE
        }
    };
    // Never hang on exit behind a blocking task (a write to a pipe nobody reads).
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    code
}

async fn dispatch(command: Command) -> Result<ExitCode> {
    let mut stdout = std::io::stdout();
    match command {
        #[cfg(feature = "demo")]
        Command::Demo {
            duration,
            json,
            dr_after,
            dr_for,
            web_port,
            status_only,
            keep,
            until_settled,
        } => {
            let readings = match (status_only, json) {
                (true, _) => None,
                (false, true) => Some((sink(Format::Json), sink(Format::Json))),
                (false, false) => Some((sink(Format::Text), sink(Format::Text))),
            };
            demo::demo(
                demo::DemoOptions {
                    duration,
                    dr_after,
                    dr_for,
                    web_port,
                    keep,
                    until_settled,
                    readings,
                },
                Box::new(std::io::stderr()),
            )
            .await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Run { config, echo } => {
            gridgate_app::run(&config, echo.map(sink)).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Pull(args) => tools::pull::run(args, &mut stdout).await,
        Command::Dr(cmd) => tools::dr::run(cmd, &mut stdout).await,
        Command::Ledger(cmd) => tools::ledger::run(cmd, &mut stdout).await,
        Command::Market(cmd) => tools::market::run(cmd, &mut stdout).await,
        Command::Openadr(cmd) => tools::openadr::run(cmd, &mut stdout).await,
        Command::Status(args) => tools::status::run(args, &mut stdout).await,
        Command::WebToken { out } => tools::status::make_token(&out, &mut stdout),
        Command::Keygen {
            out,
            pki,
            hosts,
            id,
        } => {
            if pki {
                let dir = out.join("pki");
                let written = gridgate_api::pki::make_site_pki(&dir, &id, &hosts)?;
                for f in &written.files {
                    writeln!(stdout, "wrote {}", f.display())?;
                }
            }
            let (private, public) = (out.join("identity.key"), out.join("identity.pub"));
            if pki && private.exists() {
                writeln!(stdout, "{} exists; kept it", private.display())?;
                return Ok(ExitCode::SUCCESS);
            }
            let id = gridgate_core::Identity::generate()?;
            id.save(&private, &public)?;
            writeln!(
                stdout,
                "wrote {} (keep it secret; mode 0600) and {}
public key: {}
for a gateway or a validator, in its config: [gateway] identity = \"{}\"
for a DR operator: give {} to the gateways' [dr] issuers, and sign with `gridgate dr sign --key {} EVENT.toml`",
                private.display(),
                public.display(),
                hex::encode(id.public().to_bytes()),
                private.display(),
                public.display(),
                private.display()
            )?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify {
            data_dir,
            pubkey,
            list,
        } => tools::verify::run(&data_dir, &pubkey, list, &mut stdout),
        Command::CheckConfig { config, no_files } => {
            tools::check_config::run(&config, !no_files, &mut stdout)
        }
        Command::Read(ReadCommand::Dlt645(a)) => {
            tools::read::dlt645(
                tools::read::Dlt645Read {
                    link: a.link,
                    address: a.addr,
                    dis: a.di,
                    timeout: a.timeout,
                    wakeup_bytes: a.wakeup,
                    json: a.json,
                },
                &mut stdout,
            )
            .await
        }
        Command::Read(ReadCommand::Modbus(a)) => {
            tools::read::modbus(
                tools::read::ModbusRead {
                    link: a.link,
                    unit: a.unit,
                    table: a.table,
                    address: a.address,
                    count: a.count,
                    data_type: a.data_type,
                    byte_order: a.byte_order,
                    word_order: a.word_order,
                    scale: a.scale,
                    offset: a.offset,
                    unit_label: a.unit_label,
                    timeout: a.timeout,
                    json: a.json,
                },
                &mut stdout,
            )
            .await
        }
        Command::Scan(ScanCommand::Dlt645 {
            link,
            timeout,
            meters,
        }) => {
            let found = tools::scan::dlt645(&link, timeout, meters, &mut stdout).await?;
            Ok(if found.is_empty() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Scan(ScanCommand::Modbus {
            link,
            from,
            to,
            table,
            address,
            timeout,
        }) => {
            anyhow::ensure!(from <= to, "--from {from} is above --to {to}");
            let found =
                tools::scan::modbus(&link, from..=to, table, address, timeout, &mut stdout).await?;
            Ok(if found.is_empty() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
        #[cfg(feature = "demo")]
        Command::Sim {
            config,
            print_config,
        } => {
            let spec = match &config {
                Some(p) => tools::sim::load_spec(p)?,
                None => tools::sim::default_spec(None),
            };
            let sims = tools::sim::start(&spec)
                .await
                .context("cannot start simulators")?;
            for l in &sims.lines {
                writeln!(stdout, "line {} ({}): {}", l.name, l.protocol, l.link)?;
            }
            if print_config {
                writeln!(
                    stdout,
                    "\n# gateway config for these simulators\n{}",
                    sims.gateway_config("sim-site", "5s")
                )?;
            }
            writeln!(stdout, "simulators running; Ctrl-C stops")?;
            stdout.flush()?;
            gridgate_app::stop_signal().await;
            Ok(ExitCode::SUCCESS)
        }
    }
}
