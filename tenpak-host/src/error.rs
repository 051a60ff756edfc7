//! The host's typed error at the plan/run boundary: a kind that front ends map to an outcome (the
//! CLI to an exit code, the server to an HTTP status), and the full message chain for people.
//!
//! Inside the host, code uses `anyhow` and adds context as it goes; whoever *knows* what kind of
//! failure an error is (a missing model file is "not found", a refused architecture is
//! "unsupported") tags it with [`Kind::tag`] or [`ResultExt::kind`]; the tag is invisible in the
//! message. At the boundary, [`HostError::classify`] takes the outermost tag in the chain, or the
//! boundary's default (bad request while planning, internal while running).

use std::fmt;

/// What kind of failure an error is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Kind {
    /// The request is wrong: a bad preset, a text too short, an output that exists.
    BadRequest,
    /// Something the request names does not exist: a model, a text, a preset, a job.
    NotFound,
    /// Well-formed, but this build cannot do it: an architecture, a tensor type, a calibrator
    /// that needs gradients.
    Unsupported,
    /// The caller cancelled the work; nothing was left behind.
    Cancelled,
    /// A failure that is not the request's fault: I/O, a bug.
    Internal,
}

impl Kind {
    /// The stable name (`bad_request`, …) the server puts in `{"error": {"code"}}`.
    pub fn code(self) -> &'static str {
        match self {
            Kind::BadRequest => "bad_request",
            Kind::NotFound => "not_found",
            Kind::Unsupported => "unsupported",
            Kind::Cancelled => "cancelled",
            Kind::Internal => "internal",
        }
    }

    /// The HTTP status for this kind.
    pub fn http_status(self) -> u16 {
        match self {
            Kind::BadRequest => 400,
            Kind::NotFound => 404,
            Kind::Unsupported => 422,
            Kind::Cancelled => 409,
            Kind::Internal => 500,
        }
    }

    /// The `tenpak` exit code: 2 for a request the user must change (as clap does for usage
    /// errors), 130 for a cancellation (as for Ctrl-C), 1 for everything else.
    pub fn exit_code(self) -> u8 {
        match self {
            Kind::BadRequest => 2,
            Kind::Cancelled => 130,
            Kind::NotFound | Kind::Unsupported | Kind::Internal => 1,
        }
    }

    /// `error` tagged with this kind, keeping its message and context chain.
    pub fn tag(self, error: impl Into<anyhow::Error>) -> anyhow::Error {
        anyhow::Error::new(Tagged { kind: self, error: error.into() })
    }

    /// A new error of this kind with `message`.
    pub fn error(self, message: impl fmt::Display) -> anyhow::Error {
        self.tag(anyhow::anyhow!("{message}"))
    }
}

/// An error with a [`Kind`]. `Display` prints the whole chain on one line (`a: b: c`).
pub struct HostError {
    kind: Kind,
    error: anyhow::Error,
}

impl HostError {
    /// A new error of `kind`.
    pub fn new(kind: Kind, error: impl Into<anyhow::Error>) -> Self {
        Self { kind, error: error.into() }
    }

    /// `error` as a host error: the kind of the outermost tagged error in its chain, else
    /// `default`. The message is the whole chain, untouched.
    pub fn classify(error: anyhow::Error, default: Kind) -> Self {
        let kind = error
            .chain()
            .find_map(|e| {
                e.downcast_ref::<Tagged>().map(|t| t.kind).or_else(|| e.downcast_ref::<HostError>().map(|h| h.kind))
            })
            .unwrap_or(default);
        Self { kind, error }
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The underlying error chain.
    pub fn error(&self) -> &anyhow::Error {
        &self.error
    }
}

impl fmt::Display for HostError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#}", self.error)
    }
}

impl fmt::Debug for HostError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} error: {:#}", self.kind, self.error)
    }
}

// `Display` already prints the whole chain, so there is no separate source to report.
impl std::error::Error for HostError {}

/// A kind riding inside an anyhow chain. It is transparent: it shows as the error it wraps, and
/// its source is that error's source, so the chain prints each message once.
struct Tagged {
    kind: Kind,
    error: anyhow::Error,
}

impl fmt::Display for Tagged {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.error, f)
    }
}

impl fmt::Debug for Tagged {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {:?}", self.kind, self.error)
    }
}

impl std::error::Error for Tagged {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.error.source()
    }
}

/// Tag the error of a `Result` with a [`Kind`].
pub trait ResultExt<T> {
    /// The error, if any, tagged with `kind`.
    fn kind(self, kind: Kind) -> anyhow::Result<T>;
}

impl<T, E: Into<anyhow::Error>> ResultExt<T> for Result<T, E> {
    fn kind(self, kind: Kind) -> anyhow::Result<T> {
        self.map_err(|e| kind.tag(e))
    }
}
