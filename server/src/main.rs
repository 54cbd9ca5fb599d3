use std::{io::BufRead, process::ExitCode};

use clap::Parser;
use gatehouse::{
    config::{
        Cli, Command, DoctorArgs, LogFormat, OwnerCommand, ServeArgs, StoreArgs, StoreCommand,
        StoreSpec,
    },
    doctor,
    http::{
        listener::{self, Limits},
        router, AppState,
    },
    oauth::owner::Owner,
    open_store,
};
use tracing_subscriber::EnvFilter;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// What is logged: `RUST_LOG`'s directives (`info` without it), with rmcp's own
/// logging off unless they name it. rmcp logs every message it receives in full at
/// `info` and errors at `warn`/`error`, clients' and upstreams' alike: unbounded, at
/// the rate anyone with a token or any upstream chooses, and without the masking of
/// configured credentials Gatehouse gives an upstream's own output. rmcp is kept out
/// by a filter of the log's own, not by a directive: a span directive
/// (`[request]=trace`) turns on everything inside the span, rmcp's events too,
/// before any directive for a target is looked at.
fn logging<W>(
    rust_log: Option<&str>,
    json: bool,
    writer: W,
) -> impl tracing::Subscriber + Send + Sync
where
    W: for<'a> tracing_subscriber::fmt::MakeWriter<'a> + Send + Sync + 'static,
{
    use tracing_subscriber::{filter::filter_fn, layer::SubscriberExt, Layer};
    let directives = rust_log.filter(|d| !d.trim().is_empty()).unwrap_or("info");
    // Not a filter: the default, whatever it named.
    let (filter, names_rmcp) = match EnvFilter::try_new(directives) {
        Ok(filter) => (filter, directives.contains("rmcp")),
        Err(_) => (EnvFilter::new("info"), false),
    };
    let rmcp = filter_fn(move |meta| names_rmcp || !meta.target().starts_with("rmcp"));
    let layer = tracing_subscriber::fmt::layer().with_writer(writer);
    let layer = if json {
        layer.json().boxed()
    } else {
        layer.boxed()
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(layer.with_filter(rmcp))
}

#[tokio::main]
async fn main() -> ExitCode {
    // TLS for the gateway's HTTP upstreams (rmcp's client is built on reqwest with
    // rustls and no default provider).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    let json = matches!(cli.log_format, LogFormat::Json);
    let subscriber = logging(
        std::env::var("RUST_LOG").ok().as_deref(),
        json,
        std::io::stdout,
    );
    // Also takes the `log` crate's records, as `fmt().init()` did.
    tracing_subscriber::util::SubscriberInitExt::init(subscriber);

    match cli.command {
        Some(Command::Serve(args)) => serve(*args).await,
        Some(Command::Owner {
            command: OwnerCommand::SetPassword(store),
        }) => set_password(store).await,
        Some(Command::Store { command }) => migrate(command).await,
        Some(Command::Doctor(args)) => run_doctor(args).await,
        None => serve(cli.serve).await,
    }
}

fn report(errors: Vec<String>) -> ExitCode {
    for error in errors {
        eprintln!("gatehouse: {error}");
    }
    ExitCode::from(2)
}

async fn serve(args: ServeArgs) -> ExitCode {
    // Not dumpable: a process of the same user (a stdio upstream Gatehouse starts,
    // say) cannot read this one's memory or environment (/proc/PID/environ, mem) or
    // attach to it; only a process with CAP_SYS_PTRACE (root) still can.
    #[cfg(target_os = "linux")]
    if let Err(e) = nix::sys::prctl::set_dumpable(false) {
        tracing::warn!(error = %e, "cannot make the process non-dumpable");
    }
    let config = match args.into_config() {
        Ok(config) => config,
        Err(errors) => return report(errors),
    };
    let store = match open_store(&config.store).await {
        Ok(store) => store,
        Err(e) => return report(vec![format!("cannot open the store: {e}")]),
    };
    let tcp = match tokio::net::TcpListener::bind(config.bind).await {
        Ok(tcp) => tcp,
        Err(e) => return report(vec![format!("cannot listen on {}: {e}", config.bind)]),
    };
    let store_desc = match &config.store {
        StoreSpec::Embedded(path) => format!("embedded:{}", path.display()),
        StoreSpec::Redis { prefix, .. } => format!("redis (key prefix {prefix:?})"),
    };
    tracing::info!(
        bind = %config.bind,
        public_url = %config.public_url.as_str(),
        store = %store_desc,
        "gatehouse listening; MCP endpoint {}",
        config.public_url.mcp_url()
    );
    let limits = Limits {
        header_read_timeout: config.limits.header_read_timeout,
        request_body_timeout: config.limits.request_body_timeout,
        max_connections: config.limits.max_connections,
        max_per_address: config.limits.max_connections_per_address,
        body_memory: config.limits.max_body_memory,
        trusted_proxies: config.trusted_proxies.clone(),
        forwarded_header: config.forwarded_header,
    };
    let state = match AppState::new(config, store) {
        Ok(state) => state,
        Err(e) => return report(vec![e]),
    };
    announce_setup_link(&state).await;
    tokio::spawn(gatehouse::telemetry::upkeep());
    // Learn each upstream's tools (their hints decide the scope each needs) without
    // holding up start-up.
    for upstream in &state.upstreams {
        let shared = upstream.shared().clone();
        tokio::spawn(async move { shared.probe().await });
    }
    tokio::spawn(gatehouse::http::mcp::gateway::sweep(state.clone()));
    let shutdown = state.shutdown.clone();
    if let Some(bind) = state.config.metrics.bind {
        match tokio::net::TcpListener::bind(bind).await {
            Ok(tcp) => {
                let metrics = gatehouse::http::metrics::router(state.clone());
                let stop = shutdown.clone();
                let limits = limits.clone();
                tokio::spawn(async move {
                    listener::serve(tcp, metrics, limits, async move { stop.cancelled().await })
                        .await
                });
                tracing::info!(%bind, "metrics at /metrics");
            }
            Err(e) => return report(vec![format!("cannot listen on {bind} for metrics: {e}")]),
        }
    }
    let upstreams: Vec<_> = state.upstreams.iter().map(|u| u.shared().clone()).collect();
    let app = router(state);
    listener::serve(tcp, app, limits, async move {
        shutdown_signal().await;
        shutdown.cancel();
    })
    .await;
    // Stdio servers do not outlive Gatehouse (nor does what they started).
    gatehouse::gateway::upstream::end_processes(&upstreams).await;
    ExitCode::SUCCESS
}

/// First start without an owner password: log a one-time link to choose one. The
/// link is the only way in until a password is set, so it must reach the operator.
async fn announce_setup_link(state: &AppState) {
    match state.owner.create_setup_token().await {
        // The link goes to standard error only, never through the log (which may be
        // collected elsewhere): it is a secret until it is used.
        Ok(Some(token)) => {
            tracing::warn!(
                "no owner password is set; the one-time setup link is on standard error"
            );
            eprintln!(
                "gatehouse: no owner password is set. Open {}/setup?token={token} within an \
                 hour to choose one (or run `gatehouse owner set-password`)",
                state.config.public_url.as_str()
            );
        }
        Ok(None) => {}
        Err(e) => tracing::error!(error = %e, "cannot create the setup link"),
    }
}

/// The store a maintenance command names, with words for it, or the exit code after
/// reporting why not.
async fn store_for(args: StoreArgs) -> Result<(gatehouse::store::SharedStore, String), ExitCode> {
    let spec = args.into_spec().map_err(report)?;
    // Named in the command's last line: run without the service's flags or
    // environment, a command works on another store (a new, empty one) and would
    // say only that it succeeded.
    let words = match &spec {
        StoreSpec::Embedded(path) if path.exists() => format!("the store {}", path.display()),
        StoreSpec::Embedded(path) => format!(
            "the store {}, new and empty until now (a server uses it only when started \
             with the same --data-dir or --store)",
            path.display()
        ),
        // Never the URL: it may carry a password.
        StoreSpec::Redis { prefix, .. } => format!("the Redis store (key prefix {prefix:?})"),
    };
    let store = open_store(&spec)
        .await
        .map_err(|e| report(vec![format!("cannot open the store: {e}")]))?;
    Ok((store, words))
}

/// `gatehouse owner set-password`: reads one line from standard input (without
/// showing it, at a terminal).
async fn set_password(args: StoreArgs) -> ExitCode {
    let (store, words) = match store_for(args).await {
        Ok(found) => found,
        Err(code) => return code,
    };
    eprintln!("New owner password (one line on standard input):");
    let line = match read_unshown_line().await {
        Ok(line) => line,
        Err(e) => return report(vec![format!("cannot read the password: {e}")]),
    };
    let password = line.trim_end_matches(['\r', '\n']);
    match Owner::new(store, None).set_password(password).await {
        Ok(()) => {
            eprintln!("gatehouse: the owner password is set in {words}");
            if std::env::var_os("GATEHOUSE_OWNER_PASSWORD_HASH").is_some() {
                eprintln!(
                    "gatehouse: GATEHOUSE_OWNER_PASSWORD_HASH is set here: a server started \
                     with it (or --owner-password-hash) ignores the stored password"
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => report(vec![e.to_string()]),
    }
}

/// One line of standard input; at a terminal, typed without being shown (it would
/// stay in the scrollback and in recordings of the session), and shown again
/// however the command ends, Ctrl-C included.
async fn read_unshown_line() -> std::io::Result<String> {
    use nix::sys::termios::{tcgetattr, tcsetattr, LocalFlags, SetArg};
    use std::io::IsTerminal;

    let stdin = std::io::stdin();
    let shown = stdin
        .is_terminal()
        .then(|| tcgetattr(&stdin).ok())
        .flatten();
    let show_again = |shown: &Option<nix::sys::termios::Termios>| {
        if let Some(shown) = shown {
            let _ = tcsetattr(std::io::stdin(), SetArg::TCSANOW, shown);
            eprintln!();
        }
    };
    if let Some(shown) = &shown {
        let mut hidden = shown.clone();
        hidden.local_flags.remove(LocalFlags::ECHO);
        tcsetattr(&stdin, SetArg::TCSANOW, &hidden).map_err(std::io::Error::from)?;
    }
    let reading = tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line).map(|_| line)
    });
    tokio::select! {
        read = reading => {
            show_again(&shown);
            read.map_err(std::io::Error::other)?
        }
        _ = tokio::signal::ctrl_c() => {
            show_again(&shown);
            std::process::exit(130);
        }
    }
}

/// `gatehouse store export|import`.
async fn migrate(command: StoreCommand) -> ExitCode {
    let (args, export_to, replace) = match command {
        StoreCommand::Export { store, output } => (store, Some(output), false),
        StoreCommand::Import { store, replace } => (store, None, replace),
    };
    let (store, words) = match store_for(args).await {
        Ok(found) => found,
        Err(code) => return code,
    };
    let exporting = export_to.is_some();
    let outcome = match export_to {
        Some(Some(path)) => match private_file(&path) {
            Ok(mut file) => {
                let written = gatehouse::migrate::export(store.as_ref(), &mut file).await;
                // On disk before it says so; and no part of an export left behind
                // to be imported later as if it were whole.
                let written = written.and_then(|count| {
                    let file = file
                        .into_inner()
                        .map_err(|e| gatehouse::migrate::MigrateError::Write(e.into_error()))?;
                    file.sync_all()
                        .map_err(gatehouse::migrate::MigrateError::Write)?;
                    Ok(count)
                });
                if written.is_err() {
                    let _ = std::fs::remove_file(&path);
                }
                written
            }
            Err(e) => return report(vec![format!("cannot create {}: {e}", path.display())]),
        },
        Some(None) => {
            gatehouse::migrate::export(store.as_ref(), &mut std::io::stdout().lock()).await
        }
        None => gatehouse::migrate::import(store.as_ref(), std::io::stdin().lock(), replace).await,
    };
    match outcome {
        Ok(count) => {
            let verb = if exporting {
                "exported from"
            } else {
                "imported into"
            };
            eprintln!("gatehouse: {count} records {verb} {words}");
            ExitCode::SUCCESS
        }
        Err(e) => report(vec![e.to_string()]),
    }
}

/// `gatehouse doctor URL`: the checklist (or JSON) on standard output; exit status 1
/// when a check fails, 2 when the URL is unusable.
async fn run_doctor(args: DoctorArgs) -> ExitCode {
    let target = match doctor::Target::parse(&args.url, args.mcp_path.as_deref()) {
        Ok(target) => target,
        Err(e) => return report(vec![e]),
    };
    let options = doctor::Options {
        register: !args.no_register,
        ..doctor::Options::default()
    };
    let result = doctor::run_target(&target, &options).await;
    let text = if args.json {
        match serde_json::to_string_pretty(&result) {
            Ok(json) => format!("{json}\n"),
            Err(e) => return report(vec![format!("cannot write the report: {e}")]),
        }
    } else {
        format!(
            "Gatehouse doctor: {} (MCP URL {})\n\n{}",
            target.base(),
            target.mcp_url(),
            result.render()
        )
    };
    // Not print!: a closed pipe (`| head`) must not panic.
    let _ = std::io::Write::write_all(&mut std::io::stdout().lock(), text.as_bytes());
    if result.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// A new file only its owner can read: an export holds every grant and the owner's
/// password hash. An existing file is never overwritten.
fn private_file(path: &std::path::Path) -> std::io::Result<std::io::BufWriter<std::fs::File>> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path).map(std::io::BufWriter::new)
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::logging;

    /// What one line of rmcp's, one of its errors and one of Gatehouse's leave in the
    /// log under `rust_log`.
    fn logged(rust_log: Option<&str>) -> String {
        #[derive(Clone, Default)]
        struct Captured(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Captured {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.lock().expect("lock").extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = logging(rust_log, false, move || writer.clone());
        tracing::subscriber::with_default(subscriber, || {
            // Inside a request's span, as rmcp's events are.
            let span = tracing::info_span!("request");
            let _entered = span.enter();
            tracing::info!(target: "rmcp::service", "received notification: configured-secret");
            tracing::error!(target: "rmcp::transport::worker", "worker quit: an error page");
            tracing::info!(target: "gatehouse::gateway", "a line of Gatehouse's");
        });
        let logged = captured.0.lock().expect("lock").clone();
        String::from_utf8(logged).expect("utf-8")
    }

    #[test]
    fn rmcp_logs_nothing_unless_rust_log_names_it() {
        for rust_log in [
            None,
            Some(""),
            Some("info"),
            Some("trace"),
            Some("warn,gatehouse=info"),
            Some("info,rmcp=loudly"),
            Some("info,[request]=trace"),
        ] {
            let logged = logged(rust_log);
            assert!(
                logged.contains("a line of Gatehouse's"),
                "{rust_log:?}: {logged}"
            );
            assert!(
                !logged.contains("configured-secret"),
                "{rust_log:?}: {logged}"
            );
            assert!(!logged.contains("an error page"), "{rust_log:?}: {logged}");
        }
        let logged = logged(Some("info,rmcp=info"));
        assert!(logged.contains("configured-secret"), "{logged}");
        assert!(logged.contains("an error page"), "{logged}");
    }
}
