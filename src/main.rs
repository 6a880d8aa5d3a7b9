//! The `berth` command. Thin: parses arguments and calls the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use berth::telemetry::{self, LogFormat};

// mimalloc returns freed memory to the system far better than glibc's malloc
// under this workload (many threads, 19 MiB password-hashing buffers, large
// watch lists): measured with `make bench` (see README).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_arena_eager_commit` (mimalloc.h, `mi_option_e`, v3).
const MI_OPTION_ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;
/// mimalloc's `mi_option_purge_delay` (mimalloc.h, `mi_option_e`, v3).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Makes mimalloc give freed memory back at once and commit arena memory as it
/// is used. By default a purge waits 10 ms, and only a later allocation by the
/// same thread performs it: a password hash's 19 MiB, freed by a blocking thread
/// that then idles, stayed resident for good. Eager commit is decided when an
/// arena is reserved, i.e. at the first allocation, which Rust's runtime makes
/// before `main`: so this runs from the ELF initializers, before any Rust code
/// (an idle `berth serve`: 49 MiB peak / 28 MiB resident when set in `main`,
/// 37 / 18.5 MiB with `MIMALLOC_ARENA_EAGER_COMMIT=0` in the environment, which
/// this matches without one).
extern "C" fn tune_allocator() {
    // SAFETY: plain setters of mimalloc's global options; they run before any
    // thread or allocation of Rust's exists.
    unsafe {
        libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0);
        libmimalloc_sys::mi_option_set(MI_OPTION_ARENA_EAGER_COMMIT, 0);
    }
}

/// [`tune_allocator`] as an ELF initializer: the dynamic loader calls it before
/// `main` and before Rust's runtime allocates (std keeps only `argv` this early).
#[cfg(target_os = "linux")]
#[used]
#[unsafe(link_section = ".init_array")]
static TUNE_ALLOCATOR: extern "C" fn() = tune_allocator;

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
    Serve(Box<ServeArgs>),
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

#[derive(clap::Args)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0:8080", env = "BERTH_LISTEN")]
    listen: SocketAddr,
    /// Namespace holding Berth's objects (default: the kubeconfig's or the pod's namespace).
    #[arg(long, short = 'n', env = "BERTH_NAMESPACE")]
    namespace: Option<String>,
    /// Run only the REST API (no controllers).
    #[arg(long, conflicts_with = "controller_only")]
    api_only: bool,
    /// Run only the controllers (with /healthz, /readyz, /metrics); implies --leader-elect.
    #[arg(long)]
    controller_only: bool,
    /// Elect a leader with a Lease before reconciling (for several replicas).
    #[arg(long, env = "BERTH_LEADER_ELECT")]
    leader_elect: bool,
    /// Seconds a leader's Lease lasts without renewal (as candidates judge it, by their own clocks).
    #[arg(long, default_value_t = 15, env = "BERTH_LEASE_DURATION")]
    lease_duration: u64,
    /// Seconds a leader keeps trying to renew its Lease before it stops reconciling (< lease duration).
    #[arg(long, default_value_t = 10, env = "BERTH_RENEW_DEADLINE")]
    renew_deadline: u64,
    /// Seconds between tries to take or renew the Lease (renew deadline > 1.2 × this).
    #[arg(long, default_value_t = 2, env = "BERTH_RETRY_PERIOD")]
    retry_period: u64,
    /// Seconds a watch may fail before /readyz fails (its informer may be stale).
    #[arg(long, default_value_t = 10, env = "BERTH_WATCH_GRACE")]
    watch_grace: u64,
    /// Seconds a game server may take to stop by itself after its StopCommand
    /// (a catalog entry's StopTimeout wins), before its Pod is deleted.
    #[arg(long, default_value_t = 30, env = "BERTH_STOP_TIMEOUT")]
    stop_timeout: u64,
    /// Seconds between SIGTERM and SIGKILL when a game server's Pod is deleted
    /// (after a stop timed out, or for an image without a StopCommand).
    #[arg(long, default_value_t = 30, env = "BERTH_TERMINATION_GRACE_PERIOD")]
    termination_grace_period: u32,
    /// Hand the data folder to the run-as user in a root init container with only
    /// CAP_CHOWN and CAP_FOWNER, for storage that ignores fsGroup (hostPath, NFS).
    #[arg(long, env = "BERTH_CHOWN_DATA")]
    chown_data: bool,
    /// Who may embed the console page in a frame: CSP `frame-ancestors` sources,
    /// e.g. `https://panel.example.com` (the page does nothing without a token).
    #[arg(long, default_value = "*", env = "BERTH_CONSOLE_FRAME_ANCESTORS")]
    console_frame_ancestors: String,
    /// Seconds a client may take to send its request headers (against slowloris).
    #[arg(long, default_value_t = 10, env = "BERTH_HEADER_READ_TIMEOUT")]
    header_read_timeout: u64,
    /// Instances reconciled at once.
    #[arg(long, default_value_t = 16, env = "BERTH_CONCURRENCY")]
    concurrency: u16,
    /// Seconds to keep serving, unready, after SIGTERM before closing connections.
    #[arg(long, default_value_t = 2, env = "BERTH_SHUTDOWN_DELAY")]
    shutdown_delay: u64,
    /// Image of the init container that fetches install files (needs sh, and curl or wget).
    #[arg(long, env = "BERTH_INIT_IMAGE", default_value_t = berth::controller::PodSettings::default().init_image)]
    init_image: String,
    /// Storage class of per-instance volume claims; unset: an emptyDir (data lost when the Pod goes).
    #[arg(long, env = "BERTH_STORAGE_CLASS")]
    storage_class: Option<String>,
    /// Disk of an instance that asks for none, in MiB.
    #[arg(long, default_value_t = 10240, env = "BERTH_DEFAULT_DISK")]
    default_disk: i64,
    /// uid and gid game servers run as; 0 keeps the image's own user.
    #[arg(long, default_value_t = 1000, env = "BERTH_RUN_AS_USER")]
    run_as_user: i64,
    /// Capabilities added back to game servers after dropping all (repeatable, comma-separated).
    #[arg(long, env = "BERTH_ADD_CAPABILITIES", value_delimiter = ',')]
    add_capability: Vec<String>,
    /// Node selector for instance Pods, as key=value pairs (comma-separated).
    #[arg(long, env = "BERTH_INSTANCE_NODE_SELECTOR", value_delimiter = ',')]
    instance_node_selector: Vec<String>,
    /// Tolerations for instance Pods, as a JSON list of Kubernetes tolerations.
    #[arg(long, env = "BERTH_INSTANCE_TOLERATIONS")]
    instance_tolerations: Option<String>,
}

impl ServeArgs {
    fn into_config(self) -> anyhow::Result<berth::serve::Config> {
        use berth::serve::Mode;
        let mut node_selector = std::collections::BTreeMap::new();
        for pair in self.instance_node_selector.iter().filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').ok_or_else(|| {
                anyhow::anyhow!("--instance-node-selector takes key=value pairs, got {pair:?}")
            })?;
            node_selector.insert(k.to_owned(), v.to_owned());
        }
        let tolerations = match self.instance_tolerations.as_deref().map(str::trim) {
            None | Some("") => Vec::new(),
            Some(json) => serde_json::from_str(json).map_err(|e| {
                anyhow::anyhow!("--instance-tolerations is not a JSON list of tolerations: {e}")
            })?,
        };
        if !berth::api::page::valid_frame_ancestors(&self.console_frame_ancestors) {
            anyhow::bail!(
                "--console-frame-ancestors takes CSP sources separated by spaces, got {:?}",
                self.console_frame_ancestors
            );
        }
        let election = berth::controller::leader::Timing::new(
            Duration::from_secs(self.lease_duration),
            Duration::from_secs(self.renew_deadline),
            Duration::from_secs(self.retry_period),
        )
        .map_err(|e| anyhow::anyhow!("--lease-duration, --renew-deadline, --retry-period: {e}"))?;
        Ok(berth::serve::Config {
            listen: self.listen,
            namespace: self.namespace,
            mode: if self.api_only {
                Mode::ApiOnly
            } else if self.controller_only {
                Mode::ControllerOnly
            } else {
                Mode::All
            },
            leader_elect: self.leader_elect,
            election,
            watch_grace: Duration::from_secs(self.watch_grace),
            console_frame_ancestors: self.console_frame_ancestors,
            header_read_timeout: Duration::from_secs(self.header_read_timeout.max(1)),
            stop_timeout: Duration::from_secs(self.stop_timeout),
            concurrency: self.concurrency.max(1),
            shutdown_delay: Duration::from_secs(self.shutdown_delay),
            pods: berth::controller::PodSettings {
                init_image: self.init_image,
                storage_class: self.storage_class.filter(|s| !s.is_empty()),
                default_disk_mib: self.default_disk.max(1),
                run_as_user: (self.run_as_user > 0).then_some(self.run_as_user),
                add_capabilities: self
                    .add_capability
                    .into_iter()
                    .filter(|c| !c.is_empty())
                    .collect(),
                node_selector,
                tolerations,
                chown_data: self.chown_data,
                termination_grace_seconds: self.termination_grace_period,
            },
        })
    }
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

fn main() -> ExitCode {
    // Elsewhere than Linux, as early as Rust code can.
    #[cfg(not(target_os = "linux"))]
    tune_allocator();
    run()
}

#[tokio::main]
async fn run() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init(cli.log_format);
    let result = match cli.command {
        Command::Serve(args) => match args.into_config() {
            Ok(config) => berth::serve::run(config).await,
            Err(e) => Err(e),
        },
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
