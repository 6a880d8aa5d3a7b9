//! The `berth` command. Thin: parses arguments and calls the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use berth::telemetry::{self, LogFormat};

#[derive(Parser)]
#[command(
    name = "berth",
    version,
    about = "Game-server instances on Kubernetes behind a Skyport-compatible REST API"
)]
struct Cli {
    /// Log format: human on a terminal, JSON otherwise, unless set.
    #[arg(long, value_enum, default_value_t = LogFormat::Auto, env = "BERTH_LOG_FORMAT", global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the REST API and the controllers.
    Serve {
        /// Address to listen on.
        #[arg(long, default_value = "0.0.0.0:8080", env = "BERTH_LISTEN")]
        listen: SocketAddr,
        /// Namespace holding Berth's objects (default: the kubeconfig's or the pod's namespace).
        #[arg(long, short = 'n', env = "BERTH_NAMESPACE")]
        namespace: Option<String>,
    },
    /// Manage API keys (Secrets holding only each key's SHA-256).
    Apikey {
        /// Namespace holding Berth's objects (default: the kubeconfig's namespace).
        #[arg(long, short = 'n', env = "BERTH_NAMESPACE", global = true)]
        namespace: Option<String>,
        #[command(subcommand)]
        action: ApikeyAction,
    },
    /// Print the CustomResourceDefinitions as one multi-document YAML stream.
    Crd {
        /// Write one file per CRD into this folder instead of printing.
        #[arg(long, conflicts_with = "apply")]
        out_dir: Option<PathBuf>,
        /// Install them into the cluster (server-side apply) and wait until Established.
        #[arg(long)]
        apply: bool,
    },
}

#[derive(Subcommand)]
enum ApikeyAction {
    /// Make a key and print it (it is shown this once only).
    Create {
        /// Name of the key (1-40 lowercase letters, digits, '-'); random when absent.
        #[arg(long)]
        name: Option<String>,
    },
    /// List the keys' names and creation times.
    List,
    /// Delete a key; requests using it fail within seconds.
    Revoke {
        /// Name of the key.
        name: String,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init(cli.log_format);
    let result = match cli.command {
        Command::Serve { listen, namespace } => {
            berth::serve::run(berth::serve::Config { listen, namespace }).await
        }
        Command::Crd { out_dir, apply } => crd(out_dir, apply).await,
        Command::Apikey { namespace, action } => apikey(namespace, action).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn crd(out_dir: Option<PathBuf>, apply: bool) -> anyhow::Result<()> {
    let crds = berth::crd::all();
    if apply {
        let client = kube::Client::try_default().await?;
        berth::crd::apply(&client, Duration::from_secs(30)).await?;
        tracing::info!(count = crds.len(), "CRDs applied and Established");
    } else if let Some(dir) = out_dir {
        for crd in &crds {
            let path = dir.join(berth::crd::file_name(crd));
            std::fs::write(&path, berth::crd::to_yaml(std::slice::from_ref(crd))?)?;
        }
    } else {
        print!("{}", berth::crd::to_yaml(&crds)?);
    }
    Ok(())
}

async fn apikey(namespace: Option<String>, action: ApikeyAction) -> anyhow::Result<()> {
    use berth::store::apikeys;
    let client = kube::Client::try_default().await?;
    let ns = namespace.unwrap_or_else(|| client.default_namespace().to_owned());
    let api: kube::Api<k8s_openapi::api::core::v1::Secret> = kube::Api::namespaced(client, &ns);
    match action {
        ApikeyAction::Create { name } => {
            let (name, key) = apikeys::create(&api, name).await?;
            eprintln!("API key {name:?} created in namespace {ns}; it is shown only this once:");
            println!("{key}");
        }
        ApikeyAction::List => {
            println!("{:<40} CREATED", "NAME");
            for k in apikeys::list(&api).await? {
                println!("{:<40} {}", k.name, k.created);
            }
        }
        ApikeyAction::Revoke { name } => {
            apikeys::revoke(&api, &name).await?;
            eprintln!("API key {name:?} revoked");
        }
    }
    Ok(())
}
