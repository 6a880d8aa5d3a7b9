//! A game server's console output: one log stream of its Pod per instance (per
//! replica), however many sockets watch, fanned out to them with the last
//! [`HISTORY`] lines kept for newcomers. The log stream is opened with timestamps
//! and reopened from the last line's time when it ends (the container restarted,
//! the Pod was replaced, the API server went away), so a socket follows its server
//! across restarts and sees no line twice.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{AsyncBufReadExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::LogParams;
use tokio::sync::broadcast;

use crate::controller::pod::SERVER_CONTAINER;

/// Lines a newcomer gets first.
pub const HISTORY: usize = 100;
/// Lines a slow socket may fall behind before it misses some.
const FANOUT: usize = 1024;
/// Longest line passed on (a runaway line is cut).
const MAX_LINE: usize = 16 * 1024;

/// The output of one server, as its sockets receive it.
pub struct Output {
    lines: broadcast::Sender<Arc<str>>,
    history: Arc<Mutex<VecDeque<Arc<str>>>>,
    follower: tokio::task::JoinHandle<()>,
}

impl Drop for Output {
    fn drop(&mut self) {
        self.follower.abort();
    }
}

impl Output {
    /// Follows the logs of Pod `name` through `pods` until dropped.
    pub fn follow(pods: Api<Pod>, name: &str) -> Self {
        let (lines, _) = broadcast::channel(FANOUT);
        let history = Arc::new(Mutex::new(VecDeque::with_capacity(HISTORY)));
        let follower = tokio::spawn(follow(
            pods,
            name.to_owned(),
            lines.clone(),
            history.clone(),
        ));
        Self {
            lines,
            history,
            follower,
        }
    }

    /// The recent lines and the live ones after them (no line lost between).
    pub fn subscribe(&self) -> (Vec<Arc<str>>, broadcast::Receiver<Arc<str>>) {
        let history = self.history.lock().unwrap_or_else(|e| e.into_inner());
        (history.iter().cloned().collect(), self.lines.subscribe())
    }

    /// The recent lines.
    pub fn recent(&self) -> Vec<Arc<str>> {
        let history = self.history.lock().unwrap_or_else(|e| e.into_inner());
        history.iter().cloned().collect()
    }
}

/// The last `n` lines of Pod `name`'s server (none while it has no Pod, or its
/// server has not started).
pub async fn tail(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    n: i64,
) -> Result<Vec<String>, kube::Error> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let params = LogParams {
        container: Some(SERVER_CONTAINER.to_owned()),
        tail_lines: Some(n),
        ..LogParams::default()
    };
    match pods.logs(name, &params).await {
        Ok(text) => Ok(text
            .lines()
            .map(|l| l.strip_suffix('\r').unwrap_or(l).to_owned())
            .collect()),
        // No Pod, or a server not started yet (400 "waiting to start").
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 400 => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// A log line's time and text (`timestamps=true` puts the time first).
pub fn split_line(raw: &str) -> (Option<Timestamp>, &str) {
    let raw = raw.strip_suffix('\r').unwrap_or(raw);
    match raw.split_once(' ') {
        Some((time, text)) => match time.parse::<Timestamp>() {
            Ok(t) => (Some(t), text.strip_suffix('\r').unwrap_or(text)),
            Err(_) => (None, raw),
        },
        None => match raw.parse::<Timestamp>() {
            Ok(t) => (Some(t), ""),
            Err(_) => (None, raw),
        },
    }
}

/// How far the output was read: the last line's time, and how many lines had that
/// very time (servers and kwok print several lines in one instant).
#[derive(Clone, Copy, Debug, Default)]
struct Position {
    at: Option<Timestamp>,
    same: usize,
}

impl Position {
    /// What a reopened stream replays: lines up to the last time (a reopen asks
    /// from that whole second), and `same` lines at that very time.
    fn replay(&self) -> usize {
        self.same
    }

    /// Whether a line at `at` is new, counting it when it is. `replay` is how many
    /// lines at the last time the stream still repeats.
    fn is_new(&mut self, at: Option<Timestamp>, replay: &mut usize) -> bool {
        match (at, self.at) {
            (None, _) => true,
            (Some(t), Some(last)) if t < last => false,
            (Some(t), Some(last)) if t == last => {
                if *replay > 0 {
                    *replay -= 1;
                    false
                } else {
                    self.same += 1;
                    true
                }
            }
            (Some(t), _) => {
                *replay = 0;
                self.at = Some(t);
                self.same = 1;
                true
            }
        }
    }
}

/// How a follow is (re)opened: the first time with the recent lines; after that
/// from the whole second of the last line seen (its lines come again and are
/// skipped). The second is floored here because kube rounds `sinceTime` to the
/// nearest one: a last line at x.6 s would reopen from x+1 s and lose what the
/// server printed in the rest of that second, such as a restarted server's first
/// lines.
fn follow_params(last: Option<Timestamp>) -> LogParams {
    LogParams {
        container: Some(SERVER_CONTAINER.to_owned()),
        follow: true,
        timestamps: true,
        tail_lines: last.is_none().then_some(HISTORY as i64),
        since_time: last.map(whole_second),
        ..LogParams::default()
    }
}

/// `at` without its fraction of a second (towards the past, also before 1970).
fn whole_second(at: Timestamp) -> Timestamp {
    let second = at.as_second() - i64::from(at.subsec_nanosecond() < 0);
    Timestamp::from_second(second).unwrap_or(at)
}

/// Reads the Pod's logs forever, reopening after every end.
async fn follow(
    pods: Api<Pod>,
    name: String,
    lines: broadcast::Sender<Arc<str>>,
    history: Arc<Mutex<VecDeque<Arc<str>>>>,
) {
    let mut seen = Position::default();
    let mut wait = Duration::from_millis(250);
    loop {
        match pods.log_stream(&name, &follow_params(seen.at)).await {
            Ok(stream) => {
                let mut stream = std::pin::pin!(stream.lines());
                let mut replay = seen.replay();
                while let Ok(Some(raw)) = stream.try_next().await {
                    let (at, text) = split_line(&raw);
                    if !seen.is_new(at, &mut replay) {
                        continue;
                    }
                    let text: Arc<str> = if text.len() > MAX_LINE {
                        let mut cut = MAX_LINE;
                        while !text.is_char_boundary(cut) {
                            cut -= 1;
                        }
                        Arc::from(&text[..cut])
                    } else {
                        Arc::from(text)
                    };
                    {
                        let mut h = history.lock().unwrap_or_else(|e| e.into_inner());
                        if h.len() == HISTORY {
                            h.pop_front();
                        }
                        h.push_back(text.clone());
                    }
                    let _ = lines.send(text);
                    wait = Duration::from_millis(250);
                }
            }
            Err(e) => {
                // Not running (yet, or any more): try again soon, for a start shows
                // its first lines at once.
                tracing::debug!(instance = %name, error = %e, "console output unavailable");
            }
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(2));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reopened_stream_repeats_nothing_and_loses_nothing() {
        let t = |s: &str| Some(s.parse::<Timestamp>().expect("time"));
        let mut pos = Position::default();
        let mut replay = pos.replay();
        // Two lines in one instant, then a later one.
        assert!(pos.is_new(t("2026-11-29T23:00:00.5Z"), &mut replay));
        assert!(pos.is_new(t("2026-11-29T23:00:00.5Z"), &mut replay));
        assert!(pos.is_new(t("2026-11-29T23:00:01.5Z"), &mut replay));
        assert!(pos.is_new(t("2026-11-29T23:00:01.5Z"), &mut replay));
        // Reopened from 23:00:01: the two lines of 01.5 come again, then new ones.
        let mut replay = pos.replay();
        assert!(!pos.is_new(t("2026-11-29T23:00:01.5Z"), &mut replay));
        assert!(!pos.is_new(t("2026-11-29T23:00:01.5Z"), &mut replay));
        assert!(
            pos.is_new(t("2026-11-29T23:00:01.5Z"), &mut replay),
            "a third line of that instant is new"
        );
        assert!(pos.is_new(t("2026-11-29T23:00:02Z"), &mut replay));
        assert!(!pos.is_new(t("2026-11-29T23:00:00Z"), &mut replay), "older");
    }

    #[test]
    fn a_reopen_asks_from_the_start_of_the_last_lines_second() {
        let since = |last: &str| {
            let params = follow_params(Some(last.parse().expect("time")));
            let request = kube::core::Request::new("/api/v1/namespaces/ns/pods")
                .logs("p", &params)
                .expect("request");
            let query = request.uri().query().expect("query").to_owned();
            query
                .split('&')
                .find_map(|p| p.strip_prefix("sinceTime="))
                .expect("sinceTime")
                .replace("%3A", ":")
        };
        // Past the half second: kube's own rounding would ask from 23:00:01.
        assert_eq!(since("2026-11-29T23:00:00.6Z"), "2026-11-29T23:00:00Z");
        assert_eq!(since("2026-11-29T23:00:00.2Z"), "2026-11-29T23:00:00Z");
        assert_eq!(since("2026-11-29T23:00:00Z"), "2026-11-29T23:00:00Z");
        assert_eq!(since("1969-12-31T23:59:59.5Z"), "1969-12-31T23:59:59Z");
        let first = follow_params(None);
        assert_eq!((first.since_time, first.tail_lines), (None, Some(100)));
    }

    #[test]
    fn log_lines_are_split_into_their_time_and_text() {
        let (at, text) = split_line("2026-11-29T23:00:00.123456789Z [Server] hello\r");
        assert_eq!(text, "[Server] hello");
        assert_eq!(
            at,
            Some("2026-11-29T23:00:00.123456789Z".parse().expect("time"))
        );
        assert_eq!(split_line("no time here"), (None, "no time here"));
        let (at, text) = split_line("2026-11-29T23:00:00Z");
        assert!(at.is_some());
        assert_eq!(text, "");
    }
}
