//! RFC 3339 instants by hand, as Unix time: formatting the `send_at` the tool posts (UTC, millisecond
//! precision) and parsing the `received_at` the sandbox records (any fraction, `Z` or an offset). The crate has
//! no date library; this is the small part of one the benchmark needs, for years 0000–9999.

use std::time::{SystemTime, UNIX_EPOCH};

const NANOS_PER_SECOND: i64 = 1_000_000_000;
const SECONDS_PER_DAY: i64 = 86_400;

/// Milliseconds since the Unix epoch by this machine's wall clock (the clock the sandbox stamps with).
pub fn now_unix_ms() -> i64 {
    let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).expect("the clock is after 1970");
    i64::try_from(since_epoch.as_millis()).expect("milliseconds since 1970 fit in i64")
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` for a Unix time in milliseconds.
pub fn format_unix_ms(unix_ms: i64) -> String {
    let seconds = unix_ms.div_euclid(1000);
    let millis = unix_ms.rem_euclid(1000);
    let (year, month, day) = civil_from_days(seconds.div_euclid(SECONDS_PER_DAY));
    let second_of_day = seconds.rem_euclid(SECONDS_PER_DAY);
    let (hour, minute, second) = (second_of_day / 3600, second_of_day / 60 % 60, second_of_day % 60);
    format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}.{millis:03}Z")
}

/// Nanoseconds since the Unix epoch for an RFC 3339 date-time (`T`, `t` or a space between date and time; a
/// fraction of 1 to 9 digits; `Z`, `z` or `±HH:MM`), or `None` if it is not one or is past 2262 (where i64
/// nanoseconds end).
pub fn parse_unix_ns(text: &str) -> Option<i64> {
    let bytes = text.as_bytes();
    let mut cursor = Cursor { bytes, at: 0 };
    let year = cursor.digits(4)?;
    cursor.expect(b'-')?;
    let month = cursor.digits(2)?;
    cursor.expect(b'-')?;
    let day = cursor.digits(2)?;
    cursor.expect_any(b"Tt ")?;
    let hour = cursor.digits(2)?;
    cursor.expect(b':')?;
    let minute = cursor.digits(2)?;
    cursor.expect(b':')?;
    let second = cursor.digits(2)?;
    let valid_date = (1..=12).contains(&month) && day >= 1 && day <= days_in_month(year, month);
    if !valid_date || hour > 23 || minute > 59 || second > 59 {
        return None;
    }

    let mut nanos = 0;
    if cursor.peek() == Some(b'.') {
        cursor.at += 1;
        let start = cursor.at;
        while cursor.peek().is_some_and(|b| b.is_ascii_digit()) {
            cursor.at += 1;
        }
        let fraction = &bytes[start..cursor.at];
        if fraction.is_empty() || fraction.len() > 9 {
            return None;
        }
        let value: i64 = std::str::from_utf8(fraction).ok()?.parse().ok()?;
        nanos = value * 10_i64.pow(9 - fraction.len() as u32);
    }

    let offset_seconds = match cursor.next()? {
        b'Z' | b'z' => 0,
        sign @ (b'+' | b'-') => {
            let offset_hour = cursor.digits(2)?;
            cursor.expect(b':')?;
            let offset_minute = cursor.digits(2)?;
            if offset_hour > 23 || offset_minute > 59 {
                return None;
            }
            let magnitude = offset_hour * 3600 + offset_minute * 60;
            if sign == b'+' { magnitude } else { -magnitude }
        }
        _ => return None,
    };
    if cursor.at != bytes.len() {
        return None;
    }

    let local_seconds = days_from_civil(year, month, day) * SECONDS_PER_DAY + hour * 3600 + minute * 60 + second;
    (local_seconds - offset_seconds).checked_mul(NANOS_PER_SECOND)?.checked_add(nanos)
}

/// A read position in the text being parsed.
struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Cursor<'_> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let byte = self.peek()?;
        self.at += 1;
        Some(byte)
    }

    fn expect(&mut self, wanted: u8) -> Option<()> {
        self.expect_any(&[wanted])
    }

    fn expect_any(&mut self, wanted: &[u8]) -> Option<()> {
        wanted.contains(&self.next()?).then_some(())
    }

    /// Exactly `count` ASCII digits as a number.
    fn digits(&mut self, count: usize) -> Option<i64> {
        let mut value = 0;
        for _ in 0..count {
            let byte = self.next()?;
            if !byte.is_ascii_digit() {
                return None;
            }
            value = value * 10 + i64::from(byte - b'0');
        }
        Some(value)
    }
}

fn is_leap_year(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap_year(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

// Both conversions count in 400-year Gregorian cycles (146,097 days each) of years that start on 1 March, so the
// leap day is the last day of its year and month lengths from March on follow the 153-days-per-5-months pattern.
const DAYS_PER_CYCLE: i64 = 146_097;
/// Days from 0000-03-01 (the first day of a cycle) to 1970-01-01.
const EPOCH_DAY_IN_CYCLES: i64 = 719_468;

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let march_year = if month <= 2 { year - 1 } else { year };
    let cycle = march_year.div_euclid(400);
    let year_of_cycle = march_year.rem_euclid(400);
    let month_from_march = (month + 9) % 12;
    let day_of_year = (153 * month_from_march + 2) / 5 + day - 1;
    let day_of_cycle = year_of_cycle * 365 + year_of_cycle / 4 - year_of_cycle / 100 + day_of_year;
    cycle * DAYS_PER_CYCLE + day_of_cycle - EPOCH_DAY_IN_CYCLES
}

/// The proleptic Gregorian date `days` after 1970-01-01.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let shifted = days + EPOCH_DAY_IN_CYCLES;
    let cycle = shifted.div_euclid(DAYS_PER_CYCLE);
    let day_of_cycle = shifted.rem_euclid(DAYS_PER_CYCLE);
    // Undo the leap days: one every 4 years, none every 100, one every 400 (the cycle's last day).
    let year_of_cycle =
        (day_of_cycle - day_of_cycle / 1460 + day_of_cycle / 36_524 - day_of_cycle / (DAYS_PER_CYCLE - 1)) / 365;
    let day_of_year = day_of_cycle - (year_of_cycle * 365 + year_of_cycle / 4 - year_of_cycle / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 { month_from_march + 3 } else { month_from_march - 9 };
    let year = cycle * 400 + year_of_cycle + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(format_unix_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_unix_ms(-1), "1969-12-31T23:59:59.999Z");
        assert_eq!(format_unix_ms(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(format_unix_ms(1_709_251_199_999), "2024-02-29T23:59:59.999Z");
        assert_eq!(format_unix_ms(1_798_761_600_123), "2027-01-01T00:00:00.123Z");
        assert_eq!(format_unix_ms(4_107_542_400_000), "2100-03-01T00:00:00.000Z");
        assert_eq!(format_unix_ms(253_402_300_799_999), "9999-12-31T23:59:59.999Z");
    }

    #[test]
    fn day_conversions_round_trip_over_four_centuries() {
        let mut expected = (1900, 1, 1);
        for days in days_from_civil(1900, 1, 1)..days_from_civil(2300, 1, 1) {
            assert_eq!(civil_from_days(days), expected, "day {days}");
            assert_eq!(days_from_civil(expected.0, expected.1, expected.2), days);
            let (year, month, day) = expected;
            expected = if day < days_in_month(year, month) {
                (year, month, day + 1)
            } else if month < 12 {
                (year, month + 1, 1)
            } else {
                (year + 1, 1, 1)
            };
        }
    }

    #[test]
    fn parses_what_it_formats() {
        for unix_ms in [0, 1_700_000_000_000, 1_709_164_800_000, 1_798_761_599_999, 9_000_000_000_000] {
            assert_eq!(parse_unix_ns(&format_unix_ms(unix_ms)), Some(unix_ms * 1_000_000));
        }
    }

    #[test]
    fn parses_fractions_and_offsets() {
        let base = 1_767_225_600 * NANOS_PER_SECOND; // 2026-01-01T00:00:00Z
        assert_eq!(parse_unix_ns("2026-01-01T00:00:00Z"), Some(base));
        assert_eq!(parse_unix_ns("2026-01-01t00:00:00z"), Some(base));
        assert_eq!(parse_unix_ns("2026-01-01 00:00:00.5Z"), Some(base + 500_000_000));
        assert_eq!(parse_unix_ns("2026-01-01T00:00:00.123456789Z"), Some(base + 123_456_789));
        assert_eq!(parse_unix_ns("2026-01-01T00:00:00.000001Z"), Some(base + 1_000));
        assert_eq!(parse_unix_ns("2026-01-01T09:00:00+09:00"), Some(base));
        assert_eq!(parse_unix_ns("2025-12-31T19:30:00-04:30"), Some(base));
    }

    #[test]
    fn rejects_what_is_not_rfc_3339() {
        for text in [
            "",
            "2026-01-01",
            "2026-01-01T00:00:00",
            "2026-01-01T00:00Z",
            "2026-1-01T00:00:00Z",
            "2026-13-01T00:00:00Z",
            "2025-02-29T00:00:00Z",
            "2026-01-01T24:00:00Z",
            "2026-01-01T00:00:60Z",
            "2026-01-01T00:00:00.Z",
            "2026-01-01T00:00:00.1234567890Z",
            "2026-01-01T00:00:00+0900",
            "2026-01-01T00:00:00Zjunk",
            "2026-01-01X00:00:00Z",
        ] {
            assert_eq!(parse_unix_ns(text), None, "{text:?}");
        }
        assert!(parse_unix_ns("2024-02-29T00:00:00Z").is_some());
        assert_eq!(parse_unix_ns("2263-01-01T00:00:00Z"), None);
    }
}
