//! When a scheduled send is due: `send_at` as an instant or as a local time in a time zone (with the DST rule
//! below), the allowed window, and quiet hours. Pure functions of their arguments (the caller passes `now`).
//!
//! DST rule (documented in `docs/scheduling.md`): a local time that does not exist because clocks jump forward
//! (a gap) is moved forward by the length of the gap (02:30 on a day the clocks go 02:00 → 03:00 is 03:30); a
//! local time that happens twice because clocks go back (a fold) is the earlier of the two instants. This is
//! RFC 5545's and JavaScript Temporal's "compatible" disambiguation.

use jiff::Timestamp;
use jiff::civil::{DateTime, Time};
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
    let (civil, has_seconds, rest) = split_civil(send_at).ok_or(SendAtError::Malformed)?;
    let parsed = if rest.is_empty() {
        let datetime = civil.parse::<DateTime>().map_err(|_| SendAtError::Malformed)?;
        SendAt::Local { datetime, tz: None }
    } else if has_seconds && is_rfc3339_offset(rest) {
        SendAt::Instant(send_at.parse::<Timestamp>().map_err(|_| SendAtError::Malformed)?)
    } else {
        return Err(SendAtError::Malformed);
    };
    // A bad `timezone` is refused even beside an instant, which does not need it: the client meant something.
    let tz = timezone.map(|name| time_zone(name).ok_or_else(|| SendAtError::UnknownTimeZone(name.to_owned())));
    let tz = tz.transpose()?;
    Ok(match parsed {
        SendAt::Local { datetime, .. } => SendAt::Local { datetime, tz },
        instant => instant,
    })
}

/// The instant of `send_at` for a recipient whose time zone is `user_tz` (an IANA name, if it has one), checked
/// against the window `[now + min_lead_s, now + max_lead_s]`.
///
/// A `user_tz` the tz database does not know counts as none (UTC): the request itself was not at fault.
pub fn resolve_send_at(
    send_at: &SendAt,
    user_tz: Option<&str>,
    now: Timestamp,
    min_lead_s: u64,
    max_lead_s: u64,
) -> Result<Timestamp, SendAtError> {
    let at = match send_at {
        SendAt::Instant(at) => *at,
        SendAt::Local { datetime, tz } => {
            let tz = tz.clone().or_else(|| user_tz.and_then(time_zone)).unwrap_or(TimeZone::UTC);
            // `compatible` is the DST rule above. It fails only for local times at the very end of year 9999,
            // which have no instant and are far past any window anyway.
            tz.to_ambiguous_timestamp(*datetime).compatible().map_err(|_| SendAtError::TooLate { max_lead_s })?
        }
    };
    // Nanoseconds in i128: no overflow for any pair of timestamps or any u64 lead.
    let lead_ns = at.as_nanosecond() - now.as_nanosecond();
    if lead_ns < i128::from(min_lead_s) * NANOS_PER_SECOND {
        return Err(SendAtError::TooSoon { min_lead_s });
    }
    if lead_ns > i128::from(max_lead_s) * NANOS_PER_SECOND {
        return Err(SendAtError::TooLate { max_lead_s });
    }
    Ok(at)
}

/// If `at` falls inside the daily quiet window `quiet` in the time zone `tz` (an IANA name; UTC when `None` or
/// unknown), the instant that window ends; otherwise `None`. Windows may wrap midnight (`22:00`–`08:00`); a window
/// whose start equals its end is empty. The start is inclusive and the end exclusive. A window end that falls in
/// a DST gap or fold follows the DST rule above.
///
/// Membership is decided on the wall clock, so during a fold a window can be entered twice; the second time the
/// earlier instant of the end has already passed and the window ends at the later one. A window that does not
/// parse as `HH:MM` (the API refuses those) is treated as no window.
pub fn quiet_hours_end(quiet: &QuietHours, tz: Option<&str>, at: Timestamp) -> Option<Timestamp> {
    let start = Time::strptime("%H:%M", &quiet.start).ok()?;
    let end = Time::strptime("%H:%M", &quiet.end).ok()?;
    let tz = tz.and_then(time_zone).unwrap_or(TimeZone::UTC);
    let local = tz.to_datetime(at);
    let time = local.time();
    let end_date = if start < end {
        if !(start <= time && time < end) {
            return None;
        }
        local.date()
    } else if end < start {
        if time < end {
            local.date()
        } else if start <= time {
            local.date().tomorrow().ok()?
        } else {
            return None;
        }
    } else {
        return None;
    };
    let end_at = tz.to_ambiguous_timestamp(end_date.to_datetime(end));
    match end_at.compatible().ok()? {
        first if first > at => Some(first),
        _ => end_at.later().ok().filter(|second| *second > at),
    }
}

const NANOS_PER_SECOND: i128 = 1_000_000_000;

/// An IANA time zone from the system tz database (names match case-insensitively); `Etc/Unknown`, which jiff
/// hands out for "no idea", is not one.
fn time_zone(name: &str) -> Option<TimeZone> {
    TimeZone::get(name).ok().filter(|tz| !tz.is_unknown())
}

/// Splits `YYYY-MM-DDTHH:MM[:SS[.f]]` (1 to 9 fraction digits; `T` or `t`, as RFC 3339 allows) off the front of
/// `s`: that part, whether it had seconds, and the rest. Only the shape is checked here; jiff checks the ranges.
/// jiff's own parsers alone would be too lenient (date only, hour only, basic format, bracketed annotations).
fn split_civil(s: &str) -> Option<(&str, bool, &str)> {
    let b = s.as_bytes();
    let digits = |from: usize, to: usize| b.get(from..to).is_some_and(|d| d.iter().all(u8::is_ascii_digit));
    let byte = |at: usize, expected: &[u8]| b.get(at).is_some_and(|c| expected.contains(c));
    let date_and_minutes = digits(0, 4)
        && byte(4, b"-")
        && digits(5, 7)
        && byte(7, b"-")
        && digits(8, 10)
        && byte(10, b"Tt")
        && digits(11, 13)
        && byte(13, b":")
        && digits(14, 16);
    if !date_and_minutes {
        return None;
    }
    if !(byte(16, b":") && digits(17, 19)) {
        return Some((&s[..16], false, &s[16..]));
    }
    let mut end = 19;
    if byte(19, b".") {
        let fraction = b[20..].iter().take_while(|c| c.is_ascii_digit()).count();
        if !(1..=9).contains(&fraction) {
            return None;
        }
        end = 20 + fraction;
    }
    // Everything before `end` is ASCII, so `end` is a char boundary.
    Some((&s[..end], true, &s[end..]))
}

/// `Z`, `z` or `±HH:MM`, the offsets RFC 3339 allows.
fn is_rfc3339_offset(s: &str) -> bool {
    match s.as_bytes() {
        [b'Z' | b'z'] => true,
        [b'+' | b'-', h1, h2, b':', m1, m2] => [h1, h2, m1, m2].iter().all(|d| d.is_ascii_digit()),
        _ => false,
    }
}

#[cfg(test)]
mod tests;
