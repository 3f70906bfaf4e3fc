//! When a scheduled send is due: `send_at` as an instant or as a local time in a time zone (with the DST rule
//! below), the allowed window, and quiet hours. Pure functions of their arguments (the caller passes `now`).
//!
//! DST rule (documented in `docs/scheduling.md`): a local time that does not exist because clocks jump forward
//! (a gap) is moved forward by the length of the gap (02:30 on a day the clocks go 02:00 → 03:00 is 03:30); a
//! local time that happens twice because clocks go back (a fold) is the earlier of the two instants. This is
//! RFC 5545's and JavaScript Temporal's "compatible" disambiguation.

use jiff::Timestamp;
use jiff::civil::DateTime;
use jiff::tz::TimeZone;

use super::QuietHours;

/// A parsed `send_at`, before the recipient's time zone is known.
#[derive(Clone, Debug, PartialEq)]
pub enum SendAt {
    /// RFC 3339 with `Z` or an offset.
    Instant(Timestamp),
    /// `YYYY-MM-DDTHH:MM[:SS[.fff]]` without an offset, read in `tz` (the request's `timezone`), or, when `tz`
    /// is `None`, in the recipient's time zone, or UTC if the recipient has none.
    Local { datetime: DateTime, tz: Option<TimeZone> },
}

/// Why a `send_at` was refused; the API answers 422 with field `send_at` (or `timezone`) and this message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SendAtError {
    #[error("expected an RFC 3339 instant or a local date-time YYYY-MM-DDTHH:MM:SS")]
    Malformed,
    #[error("unknown IANA time zone `{0}`")]
    UnknownTimeZone(String),
    #[error("must be at least {min_lead_s} s in the future")]
    TooSoon { min_lead_s: u64 },
    #[error("must be at most {max_lead_s} s in the future")]
    TooLate { max_lead_s: u64 },
}

impl SendAtError {
    /// The request field the error is about.
    pub fn field(&self) -> &'static str {
        match self {
            Self::UnknownTimeZone(_) => "timezone",
            _ => "send_at",
        }
    }
}

/// Parses the request's `send_at` and optional `timezone` (an IANA name).
pub fn parse_send_at(send_at: &str, timezone: Option<&str>) -> Result<SendAt, SendAtError> {
    let _ = (send_at, timezone);
    todo!()
}

/// The instant of `send_at` for a recipient whose time zone is `user_tz` (an IANA name, if it has one), checked
/// against the window `[now + min_lead_s, now + max_lead_s]`.
pub fn resolve_send_at(
    send_at: &SendAt,
    user_tz: Option<&str>,
    now: Timestamp,
    min_lead_s: u64,
    max_lead_s: u64,
) -> Result<Timestamp, SendAtError> {
    let _ = (send_at, user_tz, now, min_lead_s, max_lead_s);
    todo!()
}

/// If `at` falls inside the daily quiet window `quiet` in the time zone `tz` (an IANA name; UTC when `None` or
/// unknown), the instant that window ends; otherwise `None`. Windows may wrap midnight (`22:00`–`08:00`); a window
/// whose start equals its end is empty. The start is inclusive and the end exclusive. A window end that falls in
/// a DST gap or fold follows the DST rule above.
pub fn quiet_hours_end(quiet: &QuietHours, tz: Option<&str>, at: Timestamp) -> Option<Timestamp> {
    let _ = (quiet, tz, at);
    todo!()
}
