use std::process::ExitCode;

use clap::Parser;
use gatehouse::{
    config::{Cli, Command, StoreSpec},
    http::{router, AppState},
    open_store,
};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| EnvFilter::new("info,tower_http=info")),
        )
        .init();

    let cli = Cli::parse();
    let serve = match cli.command {
        Some(Command::Serve(args)) => args,
        None => cli.serve,
    };
    let config = match serve.into_config() {
        Ok(config) => config,
        Err(errors) => {
            for error in errors {
                eprintln!("gatehouse: {error}");
            }
            return ExitCode::from(2);
        }
    };
    let store = match open_store(&config) {
        Ok(store) => store,
        Err(e) => {
            eprintln!("gatehouse: cannot open the store: {e}");
            return ExitCode::from(2);
        }
    };
    let listener = match tokio::net::TcpListener::bind(config.bind).await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("gatehouse: cannot listen on {}: {e}", config.bind);
            return ExitCode::from(2);
        }
    };
    let store_desc = match &config.store {
        StoreSpec::Embedded(path) => format!("embedded:{}", path.display()),
        StoreSpec::Redis(_) => "redis".to_owned(),
    };
    tracing::info!(
        bind = %config.bind,
        public_url = %config.public_url.as_str(),
        store = %store_desc,
        "gatehouse listening; MCP endpoint {}",
        config.public_url.mcp_url()
    );
    let app = router(AppState::new(config, store));
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await
    {
        eprintln!("gatehouse: server error: {e}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
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
