//! One console socket's life in Wings' protocol: nothing but `auth` until a token
//! is accepted (within [`AUTH_TIMEOUT`]); then the server's state, its recent
//! output and its live output, commands typed into it, power changes and stats, as
//! far as the token allows; `token expiring` a minute before the token ends and
//! `token expired` when it does (nothing more until a fresh `auth`, which may come
//! at any time to renew; a socket not renewed within [`RENEW_GRACE`] is closed, so
//! an abandoned one holds no log stream). Bad frames get a `daemon error` frame;
//! floods, oversized frames and repeated bad tokens close the socket. Nothing here
//! can take Berth down: every failure ends this socket only.

use std::sync::Arc;
use std::time::Duration;

use futures::{Sink, SinkExt, Stream, StreamExt};
use kube::ResourceExt;
use tokio::sync::broadcast::{self, error::RecvError};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use super::protocol::{self, Frame, Request};
use super::{Console, Consoles};
use crate::crd::Instance;
use crate::store::Store;
use crate::store::instances::{self, Action};
use crate::store::tokens::{Claims, Perm, TokenError, now_secs};

/// How long a socket may stay without a valid `auth`.
pub const AUTH_TIMEOUT: Duration = Duration::from_secs(10);
/// How long before expiry `token expiring` is sent.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(60);
/// Commands a socket may send per second; more get an error frame.
pub const MAX_COMMANDS_PER_SECOND: u32 = 100;
/// Commands per second past which the socket is closed.
const CLOSE_COMMANDS_PER_SECOND: u32 = 2 * MAX_COMMANDS_PER_SECOND;
/// Refused tokens after which the socket is closed.
const MAX_BAD_TOKENS: u32 = 3;
/// How long a socket whose token expired stays open for a fresh `auth`.
pub const RENEW_GRACE: Duration = Duration::from_secs(60);
/// How long a closing socket waits for the client's close.
const CLOSE_WAIT: Duration = Duration::from_secs(2);
/// How often stats are sent while the server is not offline.
pub const STATS_EVERY: Duration = Duration::from_secs(2);

/// What sessions work with.
#[derive(Clone)]
pub struct Context {
    /// Instances, tokens, power.
    pub store: Store,
    /// The open consoles.
    pub consoles: Consoles,
}

/// Counts commands per one-second window.
struct Window {
    started: Instant,
    count: u32,
}

impl Window {
    /// Counts one command; how many this window has seen.
    fn count(&mut self) -> u32 {
        let now = Instant::now();
        if now.duration_since(self.started) >= Duration::from_secs(1) {
            self.started = now;
            self.count = 0;
        }
        self.count += 1;
        self.count
    }
}

/// Why a session ends early.
enum End {
    /// The client left or the socket broke.
    Gone,
    /// Berth closes it, saying why.
    Close(CloseCode, &'static str),
}

/// What a socket has been granted.
struct Granted {
    claims: Claims,
    console: Arc<Console>,
    expiring: Instant,
    expires: Instant,
    warned: bool,
    expired: bool,
}

impl Granted {
    fn may(&self, inst: &Instance, perm: Perm) -> bool {
        !self.expired
            && self
                .claims
                .allows(&inst.name_any(), &inst.spec.user_id, perm)
    }
}

/// One socket of the console of instance `id`.
pub struct Session<W> {
    ctx: Context,
    id: String,
    tx: W,
    granted: Option<Granted>,
    lines: Option<broadcast::Receiver<Arc<str>>>,
    state: Option<tokio::sync::watch::Receiver<&'static str>>,
    commands: Window,
    bad_tokens: u32,
}

/// Serves one socket (split into its two halves) until it ends.
pub async fn run<R, W>(ctx: Context, id: String, rx: R, tx: W)
where
    R: Stream<Item = Result<Message, WsError>> + Unpin,
    W: Sink<Message, Error = WsError> + Unpin,
{
    let mut session = Session {
        ctx,
        id,
        tx,
        granted: None,
        lines: None,
        state: None,
        commands: Window {
            started: Instant::now(),
            count: 0,
        },
        bad_tokens: 0,
    };
    let mut rx = rx;
    let end = session.serve(&mut rx).await;
    if let End::Close(code, why) = end {
        let frame = CloseFrame {
            code,
            reason: why.into(),
        };
        if session.tx.send(Message::Close(Some(frame))).await.is_ok() {
            // The closing handshake: read on (and drop) what the client still
            // sends until its close arrives. Hanging up at once would reset the
            // connection over unread frames, and the client would never see why.
            // Where the stream cannot be read on (a frame over the limit was left
            // unread), give the client a moment to read the close first.
            let drain = async {
                loop {
                    match rx.next().await {
                        Some(Ok(msg)) if msg.is_close() => break,
                        Some(Ok(_)) => {}
                        _ => {
                            tokio::time::sleep(CLOSE_WAIT / 2).await;
                            break;
                        }
                    }
                }
            };
            let _ = tokio::time::timeout(CLOSE_WAIT, drain).await;
        }
    }
    let _ = session.tx.close().await;
}

impl<W> Session<W>
where
    W: Sink<Message, Error = WsError> + Unpin,
{
    async fn serve<R>(&mut self, rx: &mut R) -> End
    where
        R: Stream<Item = Result<Message, WsError>> + Unpin,
    {
        let auth_deadline = Instant::now() + AUTH_TIMEOUT;
        let mut stats_tick = tokio::time::interval(STATS_EVERY);
        stats_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let authed = self.granted.is_some();
            let streaming = self.granted.as_ref().is_some_and(|g| !g.expired);
            let expiring = self
                .granted
                .as_ref()
                .filter(|g| !g.warned)
                .map(|g| g.expiring);
            let expires = self
                .granted
                .as_ref()
                .filter(|g| !g.expired)
                .map(|g| g.expires);
            let renew_by = self
                .granted
                .as_ref()
                .filter(|g| g.expired)
                .map(|g| g.expires + RENEW_GRACE);
            let step = tokio::select! {
                msg = rx.next() => match msg {
                    Some(Ok(Message::Text(text))) => self.frame(text.as_str()).await,
                    Some(Ok(Message::Binary(_))) => self.say(Frame::daemon_error("binary frames are not part of the protocol")).await,
                    Some(Ok(Message::Close(_))) | None => Err(End::Gone),
                    Some(Ok(_)) => Ok(()), // pings are answered by the socket itself
                    Some(Err(WsError::Capacity(_))) => Err(End::Close(CloseCode::Size, "frame over 64 KiB")),
                    Some(Err(_)) => Err(End::Gone),
                },
                line = recv(&mut self.lines), if streaming && self.lines.is_some() => match line {
                    Ok(line) => self.say(Frame::output(&line)).await,
                    Err(RecvError::Lagged(n)) => self.say(Frame::daemon_error(&format!("{n} lines of output skipped: this socket reads too slowly"))).await,
                    Err(RecvError::Closed) => { self.lines = None; Ok(()) }
                },
                changed = changed(&mut self.state), if streaming && self.state.is_some() => match changed {
                    Some(state) => self.say(Frame::status(state)).await,
                    None => { self.state = None; Ok(()) }
                },
                () = tokio::time::sleep_until(auth_deadline), if !authed => {
                    let _ = self.say(Frame::jwt_error("no valid auth within 10 s")).await;
                    Err(End::Close(CloseCode::Policy, "authentication timed out"))
                },
                () = sleep_until(expiring), if expiring.is_some() => {
                    if let Some(g) = self.granted.as_mut() { g.warned = true; }
                    self.say(Frame::token_expiring()).await
                },
                () = sleep_until(expires), if expires.is_some() => {
                    if let Some(g) = self.granted.as_mut() { g.expired = true; }
                    self.lines = None;
                    self.say(Frame::token_expired()).await
                },
                () = sleep_until(renew_by), if renew_by.is_some() => {
                    Err(End::Close(CloseCode::Policy, "the token expired and was not renewed"))
                },
                _ = stats_tick.tick(), if streaming => self.periodic_stats().await,
            };
            if let Err(end) = step {
                return end;
            }
        }
    }

    /// Sends one frame.
    async fn say(&mut self, frame: Frame) -> Result<(), End> {
        self.tx
            .send(Message::Text(frame.text().into()))
            .await
            .map_err(|_| End::Gone)
    }

    async fn frame(&mut self, text: &str) -> Result<(), End> {
        let request = match protocol::parse(text) {
            Ok(r) => r,
            Err(e) => return self.say(Frame::daemon_error(&e.to_string())).await,
        };
        let Some(inst) = self.ctx.store.instances.get(&self.id) else {
            let _ = self
                .say(Frame::daemon_error("the instance no longer exists"))
                .await;
            return Err(End::Close(CloseCode::Normal, "instance deleted"));
        };
        match request {
            Request::Auth(token) => self.auth(&inst, &token).await,
            _ if self.granted.is_none() => {
                self.say(Frame::jwt_error(
                    "authenticate first: {\"event\":\"auth\",\"args\":[token]}",
                ))
                .await
            }
            _ if self.granted.as_ref().is_some_and(|g| g.expired) => {
                self.say(Frame::token_expired()).await
            }
            Request::Command(line) => self.command(&inst, &line).await,
            Request::SetState(action) => self.set_state(&inst, &action).await,
            Request::Logs => self.logs(&inst).await,
            Request::Stats => self.stats(&inst).await,
        }
    }

    /// Checks a token for this socket: its claims, or why it is refused.
    fn check(&self, inst: &Instance, token: &str) -> Result<Claims, &'static str> {
        let claims = self.ctx.store.tokens.verify(token).map_err(|e| match e {
            TokenError::Expired => "the token has expired",
            TokenError::Invalid => "the token is not valid",
            TokenError::NoKey => "no token signing key yet; try again",
        })?;
        if self.ctx.store.users.by_id(&claims.sub).is_none() {
            return Err("the token's user no longer exists");
        }
        let id = inst.name_any();
        if !Perm::ALL
            .iter()
            .any(|p| claims.allows(&id, &inst.spec.user_id, *p))
        {
            return Err("this token is not for this instance");
        }
        Ok(claims)
    }

    async fn auth(&mut self, inst: &Instance, token: &str) -> Result<(), End> {
        let claims = match self.check(inst, token) {
            Ok(c) => c,
            Err(why) => {
                self.bad_tokens += 1;
                self.say(Frame::jwt_error(why)).await?;
                return if self.bad_tokens >= MAX_BAD_TOKENS {
                    Err(End::Close(CloseCode::Policy, "too many invalid tokens"))
                } else {
                    Ok(())
                };
            }
        };
        let left = Duration::from_secs(claims.exp.saturating_sub(now_secs()));
        let expires = Instant::now() + left;
        let was_streaming = self.granted.as_ref().is_some_and(|g| !g.expired);
        let console = match self.granted.take() {
            Some(g) => g.console,
            None => self.ctx.consoles.open(inst),
        };
        let now = Instant::now();
        let granted = Granted {
            // A token with less than the warning's time left is warned at once.
            expiring: expires.checked_sub(EXPIRY_WARNING).unwrap_or(now).max(now),
            expires,
            warned: false,
            expired: false,
            console: console.clone(),
            claims,
        };
        let may_read = granted.may(inst, Perm::Console);
        self.granted = Some(granted);
        self.say(Frame::auth_success()).await?;
        if was_streaming {
            return Ok(()); // a renewal: everything goes on
        }
        let state = console.state();
        let now = *state.borrow();
        self.state = Some(state);
        self.say(Frame::status(now)).await?;
        self.lines = None;
        if may_read {
            let (history, live) = console.output.subscribe();
            self.lines = Some(live);
            for line in history {
                self.say(Frame::output(&line)).await?;
            }
        }
        Ok(())
    }

    /// The console, if the token allows `perm` on `inst` and its user still exists
    /// (a deleted user's tokens stop working at once, not when they expire).
    fn granted(&self, inst: &Instance, perm: Perm) -> Option<Arc<Console>> {
        self.granted
            .as_ref()
            .filter(|g| g.may(inst, perm))
            .filter(|g| self.ctx.store.users.by_id(&g.claims.sub).is_some())
            .map(|g| g.console.clone())
    }

    async fn command(&mut self, inst: &Instance, line: &str) -> Result<(), End> {
        let Some(console) = self.granted(inst, Perm::Console) else {
            return self
                .say(Frame::daemon_error("this token does not allow the console"))
                .await;
        };
        let n = self.commands.count();
        if n > CLOSE_COMMANDS_PER_SECOND {
            return Err(End::Close(CloseCode::Policy, "command flood"));
        }
        if n > MAX_COMMANDS_PER_SECOND {
            return self
                .say(Frame::daemon_error(
                    "too many commands (over 100 a second): this one was dropped",
                ))
                .await;
        }
        match console.input.send(line).await {
            Ok(()) => Ok(()),
            Err(e) => self.say(Frame::daemon_error(&e.to_string())).await,
        }
    }

    async fn set_state(&mut self, inst: &Instance, action: &str) -> Result<(), End> {
        if self.granted(inst, Perm::Power).is_none() {
            return self
                .say(Frame::daemon_error(
                    "this token does not allow power actions",
                ))
                .await;
        }
        let Ok(action) = action.parse::<Action>() else {
            return self
                .say(Frame::daemon_error(
                    "set state takes start, stop, restart or kill",
                ))
                .await;
        };
        match instances::power(&self.ctx.store, &self.id, action).await {
            Ok(_) => Ok(()),
            Err(e) => self.say(Frame::daemon_error(&e.to_string())).await,
        }
    }

    async fn logs(&mut self, inst: &Instance) -> Result<(), End> {
        let Some(console) = self.granted(inst, Perm::Console) else {
            return self
                .say(Frame::daemon_error("this token does not allow the console"))
                .await;
        };
        for line in console.output.recent() {
            self.say(Frame::output(&line)).await?;
        }
        Ok(())
    }

    async fn stats(&mut self, inst: &Instance) -> Result<(), End> {
        let Some(console) = self.granted(inst, Perm::Stats) else {
            return self
                .say(Frame::daemon_error("this token does not allow stats"))
                .await;
        };
        let now = console.stats(&self.ctx.store.client, inst).await;
        self.say(Frame::stats(&now)).await
    }

    /// Stats now and then, while the server is not offline and the token allows.
    async fn periodic_stats(&mut self) -> Result<(), End> {
        let Some(inst) = self.ctx.store.instances.get(&self.id) else {
            return Ok(());
        };
        if super::wings_state(&inst) == "offline" || self.granted(&inst, Perm::Stats).is_none() {
            return Ok(());
        }
        self.stats(&inst).await
    }
}

async fn recv(lines: &mut Option<broadcast::Receiver<Arc<str>>>) -> Result<Arc<str>, RecvError> {
    match lines {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn changed(
    state: &mut Option<tokio::sync::watch::Receiver<&'static str>>,
) -> Option<&'static str> {
    let rx = state.as_mut()?;
    rx.changed().await.ok()?;
    Some(*rx.borrow_and_update())
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
