//! Wings' websocket framing, which Pterodactyl-style front ends speak: every frame
//! is `{"event": "...", "args": [...]}`. What clients send is parsed here into
//! [`Request`]s; what Berth sends is built here as [`Frame`]s (pure functions).

use serde_json::{Value, json};

/// What a client asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// `auth` [token]: authenticate, or renew before expiry.
    Auth(String),
    /// `send command` [line]: type a line into the server's console.
    Command(String),
    /// `set state` [start|stop|restart|kill].
    SetState(String),
    /// `send logs`: the recent output again.
    Logs,
    /// `send stats`: usage now.
    Stats,
}

/// Why a client frame is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Not a JSON object with a string `event`.
    #[error("a frame is a JSON object {{\"event\": ..., \"args\": [...]}}")]
    Malformed,
    /// An event Berth does not know.
    #[error("unknown event {0:?}")]
    Unknown(String),
    /// A known event without the argument it needs.
    #[error("{0} needs a string argument")]
    MissingArgument(&'static str),
}

/// Longest command line accepted (a console line; servers' own limits are lower).
pub const MAX_COMMAND: usize = 4096;

/// Parses a client frame.
pub fn parse(text: &str) -> Result<Request, FrameError> {
    let value: Value = serde_json::from_str(text).map_err(|_| FrameError::Malformed)?;
    let event = value
        .get("event")
        .and_then(Value::as_str)
        .ok_or(FrameError::Malformed)?;
    let first = value
        .get("args")
        .and_then(Value::as_array)
        .and_then(|a| a.first())
        .and_then(Value::as_str);
    let arg = |name: &'static str| {
        first
            .map(str::to_owned)
            .ok_or(FrameError::MissingArgument(name))
    };
    match event {
        "auth" => arg("auth").map(Request::Auth),
        "send command" => {
            let line = arg("send command")?;
            if line.len() > MAX_COMMAND || line.contains(['\n', '\r']) {
                return Err(FrameError::MissingArgument("send command"));
            }
            Ok(Request::Command(line))
        }
        "set state" => arg("set state").map(Request::SetState),
        "send logs" => Ok(Request::Logs),
        "send stats" => Ok(Request::Stats),
        other => Err(FrameError::Unknown(other.chars().take(64).collect())),
    }
}

/// A frame Berth sends.
#[derive(Clone, Debug, PartialEq)]
pub struct Frame(Value);

impl Frame {
    fn new(event: &str, args: &[Value]) -> Self {
        if args.is_empty() {
            Self(json!({ "event": event }))
        } else {
            Self(json!({ "event": event, "args": args }))
        }
    }

    /// `auth success`.
    pub fn auth_success() -> Self {
        Self::new("auth success", &[])
    }

    /// `status` [starting|running|stopping|offline].
    pub fn status(state: &str) -> Self {
        Self::new("status", &[json!(state)])
    }

    /// `console output` [line].
    pub fn output(line: &str) -> Self {
        Self::new("console output", &[json!(line)])
    }

    /// `stats` [JSON text], as Wings sends it (the stats object serialized).
    pub fn stats(stats: &Value) -> Self {
        Self::new("stats", &[json!(stats.to_string())])
    }

    /// `token expiring`: renew within the minute.
    pub fn token_expiring() -> Self {
        Self::new("token expiring", &[])
    }

    /// `token expired`: nothing more until a new `auth`.
    pub fn token_expired() -> Self {
        Self::new("token expired", &[])
    }

    /// `jwt error` [why]: the token was refused.
    pub fn jwt_error(why: &str) -> Self {
        Self::new("jwt error", &[json!(why)])
    }

    /// `daemon error` [why]: a request could not be carried out.
    pub fn daemon_error(why: &str) -> Self {
        Self::new("daemon error", &[json!(why)])
    }

    /// The frame as sent.
    pub fn text(&self) -> String {
        self.0.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wings_frames_are_understood() {
        assert_eq!(
            parse(r#"{"event":"auth","args":["t"]}"#),
            Ok(Request::Auth("t".into()))
        );
        assert_eq!(
            parse(r#"{"event":"send command","args":["say hi"]}"#),
            Ok(Request::Command("say hi".into()))
        );
        assert_eq!(
            parse(r#"{"event":"set state","args":["stop"]}"#),
            Ok(Request::SetState("stop".into()))
        );
        assert_eq!(
            parse(r#"{"event":"send logs","args":[null]}"#),
            Ok(Request::Logs)
        );
        assert_eq!(parse(r#"{"event":"send stats"}"#), Ok(Request::Stats));
    }

    #[test]
    fn bad_frames_say_what_is_wrong() {
        assert_eq!(parse("not json"), Err(FrameError::Malformed));
        assert_eq!(parse(r#"{"args":[]}"#), Err(FrameError::Malformed));
        assert_eq!(parse(r#"["auth"]"#), Err(FrameError::Malformed));
        assert_eq!(
            parse(r#"{"event":"format disk"}"#),
            Err(FrameError::Unknown("format disk".into()))
        );
        assert_eq!(
            parse(r#"{"event":"auth","args":[1]}"#),
            Err(FrameError::MissingArgument("auth"))
        );
        assert!(
            parse(r#"{"event":"send command","args":["a\nb"]}"#).is_err(),
            "one line per command"
        );
    }

    #[test]
    fn frames_are_sent_as_wings_sends_them() {
        assert_eq!(
            Frame::output("Done!").text(),
            r#"{"args":["Done!"],"event":"console output"}"#
        );
        assert_eq!(Frame::auth_success().text(), r#"{"event":"auth success"}"#);
        let stats = Frame::stats(&json!({ "memory_bytes": 1 })).text();
        assert_eq!(
            stats,
            r#"{"args":["{\"memory_bytes\":1}"],"event":"stats"}"#
        );
    }
}
