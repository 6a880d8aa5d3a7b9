//! Typing into a game server's console: one attach to the server's stdin per
//! instance (per replica), shared by every socket, opened when a line is typed and
//! closed after [`IDLE`] without one. A line is answered once it was written into
//! the attach; an attach that broke, or belongs to a container that has since
//! been restarted or a Pod since replaced, is opened again for the next line.
//! (A real runtime does not always end an attach when its process exits: a line
//! written into it would be accepted and lost.)

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{AttachParams, AttachedProcess};
use tokio::io::{AsyncWriteExt, SimplexStream, WriteHalf};
use tokio::sync::{mpsc, oneshot};

use crate::controller::pod::SERVER_CONTAINER;

/// How long an unused attach stays open.
pub const IDLE: Duration = Duration::from_secs(60);
/// How long opening an attach may take.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a line was not typed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InputError {
    /// The server's console could not be reached (not running, or the API
    /// server refused).
    #[error("the server's console is not reachable: {0}")]
    Unreachable(String),
    /// The input task is gone (the console closed).
    #[error("the console is closing")]
    Closed,
}

type Job = (String, oneshot::Sender<Result<(), InputError>>);

/// Which run of the server is current: the Pod's uid and the container's restart
/// count, as the Pod cache last saw them (`None` without a Pod).
pub type Incarnation = Box<dyn Fn() -> Option<(String, i32)> + Send + Sync>;

/// The shared input of one server.
pub struct Input {
    jobs: mpsc::Sender<Job>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Input {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Input {
    /// Input into Pod `name`'s server container through `pods`; `current` tells
    /// which run of it an attach must belong to.
    pub fn new(pods: Api<Pod>, name: &str, current: Incarnation) -> Self {
        let (jobs, rx) = mpsc::channel(64);
        let task = tokio::spawn(serve(pods, name.to_owned(), current, rx));
        Self { jobs, task }
    }

    /// Types `line` (a newline added) into the console.
    pub async fn send(&self, line: &str) -> Result<(), InputError> {
        let (tx, rx) = oneshot::channel();
        self.jobs
            .send((format!("{line}\n"), tx))
            .await
            .map_err(|_| InputError::Closed)?;
        rx.await.map_err(|_| InputError::Closed)?
    }
}

/// An open attach and its stdin.
struct Attached {
    process: AttachedProcess,
    stdin: WriteHalf<SimplexStream>,
    /// The run it was opened on.
    run: Option<(String, i32)>,
}

impl Attached {
    fn close(self) {
        self.process.abort();
    }
}

/// Writes the lines that come, through an attach opened on demand.
async fn serve(pods: Api<Pod>, name: String, current: Incarnation, mut jobs: mpsc::Receiver<Job>) {
    let mut attached: Option<Attached> = None;
    loop {
        let job = if attached.is_some() {
            match tokio::time::timeout(IDLE, jobs.recv()).await {
                Ok(job) => job,
                Err(_) => {
                    // Idle: let the attach go until the next line.
                    if let Some(a) = attached.take() {
                        a.close();
                    }
                    continue;
                }
            }
        } else {
            jobs.recv().await
        };
        let Some((line, reply)) = job else { return };
        let run = current();
        if attached.as_ref().is_some_and(|a| a.run != run)
            && let Some(a) = attached.take()
        {
            a.close();
        }
        // Once again with a fresh attach when the open one broke.
        let mut result = Err(InputError::Closed);
        for _ in 0..2 {
            if attached.is_none() {
                match open(&pods, &name, run.clone()).await {
                    Ok(a) => attached = Some(a),
                    Err(e) => {
                        result = Err(e);
                        break;
                    }
                }
            }
            let Some(a) = attached.as_mut() else { break };
            match write(a, &line).await {
                Ok(()) => {
                    result = Ok(());
                    break;
                }
                Err(e) => {
                    result = Err(e);
                    if let Some(a) = attached.take() {
                        a.close();
                    }
                }
            }
        }
        let _ = reply.send(result);
    }
}

async fn open(
    pods: &Api<Pod>,
    name: &str,
    run: Option<(String, i32)>,
) -> Result<Attached, InputError> {
    // stdin only: the output comes from the log stream, and an attach whose
    // output nobody read would stall.
    let params = AttachParams::interactive_tty()
        .container(SERVER_CONTAINER)
        .stdout(false);
    match tokio::time::timeout(OPEN_TIMEOUT, pods.attach(name, &params)).await {
        Ok(Ok(mut process)) => match process.stdin() {
            Some(stdin) => Ok(Attached {
                process,
                stdin,
                run,
            }),
            None => Err(InputError::Unreachable("the console has no stdin".into())),
        },
        Ok(Err(e)) => Err(InputError::Unreachable(match e {
            kube::Error::Api(s) => s.message,
            other => other.to_string(),
        })),
        Err(_) => Err(InputError::Unreachable("attaching timed out".into())),
    }
}

async fn write(attached: &mut Attached, line: &str) -> Result<(), InputError> {
    let stdin = &mut attached.stdin;
    let written = async {
        stdin.write_all(line.as_bytes()).await?;
        stdin.flush().await
    };
    match tokio::time::timeout(OPEN_TIMEOUT, written).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(InputError::Unreachable(e.to_string())),
        Err(_) => Err(InputError::Unreachable("typing timed out".into())),
    }
}
