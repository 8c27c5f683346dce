//! The `ufaas` binary: parses the command line and runs the chosen subcommand.

use clap::Parser;
use tracing_subscriber::EnvFilter;

use ufaas::config::{Cli, Command};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(cfg) => {
            let listeners = ufaas::Listeners::bind(&cfg).await?;
            // One plain line on stdout with the real address (useful with `--listen …:0`).
            println!("ufaas listening on http://{}", listeners.http.local_addr()?);
            ufaas::serve_all(*cfg, listeners, shutdown_signal()).await
        }
        Command::Watch(args) => std::process::exit(ufaas::cli::watch(args).await?),
        Command::Run(args) => std::process::exit(ufaas::cli::run(args).await?),
        command => std::process::exit(client_command(command).await),
    }
}

/// The exit code of a client subcommand that reports its own errors (`ufaas: …`, exit 1).
async fn client_command(command: Command) -> i32 {
    use ufaas::cli::{functions, tasks};
    let result = match command {
        Command::Ls(a) => tasks::list(a).await,
        Command::Get(a) => tasks::get(a).await,
        Command::Cancel(a) => tasks::cancel(a).await,
        Command::Logs(a) => tasks::logs(a).await,
        Command::Fn(a) => functions::run_fn(*a).await,
        Command::Pipeline(a) => functions::pipeline(a).await,
        Command::Secret(a) => functions::secret(a).await,
        Command::Serve(_) | Command::Watch(_) | Command::Run(_) => {
            Err(anyhow::anyhow!("not a client command"))
        }
    };
    ufaas::cli::exit_code(result)
}

/// Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
    tracing::info!("shutting down");
}
