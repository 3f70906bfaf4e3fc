//! Tests of `send_at` parsing and resolution, the window, the DST rule and quiet hours. Every `now` is fixed, and
//! every DST fixture first checks with jiff that its local time really is in a gap or fold of that zone.

use jiff::civil::{DateTime, date};
use jiff::tz::{AmbiguousOffset, Offset, TimeZone, offset};

use super::*;

const MIN_LEAD_S: u64 = 10;
const MAX_LEAD_S: u64 = 31_622_400;

fn ts(s: &str) -> Timestamp {
    s.parse().unwrap()
}

fn zone(name: &str) -> TimeZone {
    TimeZone::get(name).unwrap()
}

fn local(s: &str) -> DateTime {
    s.parse().unwrap()
}

/// `send_at` read as a local time in `tz`, resolved with a `now` far from the window's edges.
fn resolve_in(send_at: &str, tz: &str) -> Timestamp {
    let parsed = parse_send_at(send_at, Some(tz)).unwrap();
    resolve_send_at(&parsed, None, ts("2026-01-01T00:00:00Z"), MIN_LEAD_S, MAX_LEAD_S).unwrap()
}

/// How `tz` reads the local time `dt`: unambiguous, in a gap or in a fold (with the offsets on either side).
fn ambiguity(tz: &str, dt: DateTime) -> AmbiguousOffset {
    zone(tz).to_ambiguous_timestamp(dt).offset()
}

fn quiet(start: &str, end: &str) -> QuietHours {
    QuietHours { start: start.into(), end: end.into() }
}

// ---- parsing ----

#[test]
fn rfc3339_instants_with_z_and_offsets() {
    let cases = [
        ("2026-05-01T09:00:00Z", "2026-05-01T09:00:00Z"),
        ("2026-05-01t09:00:00z", "2026-05-01T09:00:00Z"),
        ("2026-05-01T18:00:00+09:00", "2026-05-01T09:00:00Z"),
        ("2026-05-01T03:30:00-05:30", "2026-05-01T09:00:00Z"),
        ("2026-05-01T09:00:00-00:00", "2026-05-01T09:00:00Z"),
        ("2026-05-01T09:00:00.25Z", "2026-05-01T09:00:00.25Z"),
        ("2026-05-01T18:00:00.123456789+09:00", "2026-05-01T09:00:00.123456789Z"),
    ];
    for (input, want) in cases {
        assert_eq!(parse_send_at(input, None), Ok(SendAt::Instant(ts(want))), "{input}");
    }
}

#[test]
fn an_instant_ignores_a_valid_timezone() {
    let got = parse_send_at("2026-05-01T09:00:00Z", Some("Asia/Seoul"));
    assert_eq!(got, Ok(SendAt::Instant(ts("2026-05-01T09:00:00Z"))));
}

#[test]
fn local_date_times_with_and_without_seconds_and_fractions() {
    let cases = [
        ("2026-05-01T09:00", date(2026, 5, 1).at(9, 0, 0, 0)),
        ("2026-05-01t09:00", date(2026, 5, 1).at(9, 0, 0, 0)),
        ("2026-05-01T09:00:30", date(2026, 5, 1).at(9, 0, 30, 0)),
        ("2026-05-01T09:00:30.5", date(2026, 5, 1).at(9, 0, 30, 500_000_000)),
        ("2026-05-01T09:00:30.123456789", date(2026, 5, 1).at(9, 0, 30, 123_456_789)),
    ];
    for (input, datetime) in cases {
        assert_eq!(parse_send_at(input, None), Ok(SendAt::Local { datetime, tz: None }), "{input}");
    }
}

#[test]
fn a_local_date_time_carries_the_requests_timezone() {
    let Ok(SendAt::Local { datetime, tz: Some(tz) }) = parse_send_at("2026-05-01T09:00", Some("Asia/Seoul")) else {
        panic!("expected a local time with a time zone");
    };
    assert_eq!(datetime, date(2026, 5, 1).at(9, 0, 0, 0));
    assert_eq!(tz.iana_name(), Some("Asia/Seoul"));
}

#[test]
fn malformed_send_at_is_refused() {
    let cases = [
        "",
        "2026-05-01",
        "garbage",
        "2026-13-01T09:00",
        "2026-00-01T09:00",
        "2026-02-30T09:00",
        "2026-05-01T24:00",
        "2026-05-01T09:60",
        "2026-05-01T09",
        "2026-05-01T9:00",
        "2026-05-01 09:00",
        " 2026-05-01T09:00",
        "2026-05-01T09:00 ",
        "20260501T090000",
        "2026-05-01T09:00:",
        "2026-05-01T09:00:00.",
        "2026-05-01T09:00:00.1234567890",
        // RFC 3339 needs seconds with an offset.
        "2026-05-01T09:00Z",
        "2026-05-01T09:00+09:00",
        "2026-05-01T09:00:00+0900",
        "2026-05-01T09:00:00+09",
        "2026-05-01T09:00:00+09:60",
        "2026-05-01T09:00:00 Z",
        "2026-05-01T09:00:00[Asia/Seoul]",
        "2026-05-01T09:00:00+09:00[Asia/Seoul]",
        "２０２６-05-01T09:00",
    ];
    for input in cases {
        assert_eq!(parse_send_at(input, None), Err(SendAtError::Malformed), "{input:?}");
        assert_eq!(parse_send_at(input, Some("Asia/Seoul")), Err(SendAtError::Malformed), "{input:?}");
    }
}

#[test]
fn unknown_time_zones_are_refused_for_local_times_and_instants() {
    for name in ["Mars/Olympus", "", "Etc/Unknown", "../../etc/passwd", "+09:00"] {
        let want = Err(SendAtError::UnknownTimeZone(name.to_owned()));
        assert_eq!(parse_send_at("2026-05-01T09:00", Some(name)), want, "{name:?}");
        assert_eq!(parse_send_at("2026-05-01T09:00:00Z", Some(name)), want, "{name:?}");
    }
    // The malformed `send_at` is reported first.
    assert_eq!(parse_send_at("soon", Some("Mars/Olympus")), Err(SendAtError::Malformed));
}

#[test]
fn errors_name_their_request_field() {
    assert_eq!(SendAtError::UnknownTimeZone("X".into()).field(), "timezone");
    for e in [SendAtError::Malformed, SendAtError::TooSoon { min_lead_s: 1 }, SendAtError::TooLate { max_lead_s: 1 }] {
        assert_eq!(e.field(), "send_at");
    }
}

// ---- which time zone a local time is read in ----

#[test]
fn a_local_time_is_read_in_the_requests_zone_then_the_users_then_utc() {
    let now = ts("2026-05-01T00:00:00Z");
    let resolve = |request_tz: Option<&str>, user_tz: Option<&str>| {
        let parsed = parse_send_at("2026-05-02T09:00", request_tz).unwrap();
        resolve_send_at(&parsed, user_tz, now, MIN_LEAD_S, MAX_LEAD_S).unwrap()
    };
    assert_eq!(resolve(Some("Asia/Seoul"), Some("Europe/Berlin")), ts("2026-05-02T00:00:00Z"));
    assert_eq!(resolve(None, Some("Europe/Berlin")), ts("2026-05-02T07:00:00Z"));
    assert_eq!(resolve(None, None), ts("2026-05-02T09:00:00Z"));
    // A user time zone the database does not know counts as none.
    assert_eq!(resolve(None, Some("Mars/Olympus")), ts("2026-05-02T09:00:00Z"));
}

#[test]
fn an_instant_needs_no_time_zone() {
    let parsed = parse_send_at("2026-05-02T09:00:00+02:00", None).unwrap();
    let got = resolve_send_at(&parsed, Some("Asia/Seoul"), ts("2026-05-01T00:00:00Z"), MIN_LEAD_S, MAX_LEAD_S);
    assert_eq!(got, Ok(ts("2026-05-02T07:00:00Z")));
}

// ---- the window ----

#[test]
fn the_window_includes_both_ends() {
    let now = ts("2026-01-15T12:00:00Z");
    let at = |s: &str| resolve_send_at(&SendAt::Instant(ts(s)), None, now, MIN_LEAD_S, MAX_LEAD_S);
    let too_soon = Err(SendAtError::TooSoon { min_lead_s: MIN_LEAD_S });
    let too_late = Err(SendAtError::TooLate { max_lead_s: MAX_LEAD_S });

    assert_eq!(at("2026-01-15T12:00:10Z"), Ok(ts("2026-01-15T12:00:10Z")));
    assert_eq!(at("2026-01-15T12:00:09Z"), too_soon);
    assert_eq!(at("2026-01-15T12:00:09.999999999Z"), too_soon);
    assert_eq!(at("2026-01-15T12:00:00Z"), too_soon);
    assert_eq!(at("2025-01-15T12:00:00Z"), too_soon);

    // 366 days after 2026-01-15 is 2027-01-16.
    assert_eq!(at("2027-01-16T12:00:00Z"), Ok(ts("2027-01-16T12:00:00Z")));
    assert_eq!(at("2027-01-16T12:00:01Z"), too_late);
    assert_eq!(at("2027-01-16T12:00:00.000000001Z"), too_late);
}

#[test]
fn the_window_applies_to_local_times_after_resolution() {
    let now = ts("2026-01-15T12:00:00Z");
    // 21:00:10 in Seoul is 12:00:10Z, exactly the minimum lead; 21:00:09 is a second short.
    let resolve = |s: &str| {
        let parsed = parse_send_at(s, Some("Asia/Seoul")).unwrap();
        resolve_send_at(&parsed, None, now, MIN_LEAD_S, MAX_LEAD_S)
    };
    assert_eq!(resolve("2026-01-15T21:00:10"), Ok(ts("2026-01-15T12:00:10Z")));
    assert_eq!(resolve("2026-01-15T21:00:09"), Err(SendAtError::TooSoon { min_lead_s: MIN_LEAD_S }));
}

#[test]
fn a_send_at_a_year_ahead_resolves() {
    let now = ts("2026-01-15T12:00:00Z");
    let parsed = parse_send_at("2027-01-15T09:00", Some("America/New_York")).unwrap();
    let got = resolve_send_at(&parsed, None, now, MIN_LEAD_S, MAX_LEAD_S);
    assert_eq!(got, Ok(ts("2027-01-15T14:00:00Z")));
}

#[test]
fn a_local_time_without_an_instant_is_too_late_not_a_panic() {
    // jiff's instants end during 9999-12-31 (UTC); this local time is past them.
    let parsed = parse_send_at("9999-12-31T23:59:59", Some("America/New_York")).unwrap();
    let got = resolve_send_at(&parsed, None, ts("2026-01-15T12:00:00Z"), MIN_LEAD_S, u64::MAX);
    assert_eq!(got, Err(SendAtError::TooLate { max_lead_s: u64::MAX }));
}

#[test]
fn extreme_leads_do_not_overflow() {
    let at = SendAt::Instant(ts("2026-01-15T12:00:00Z"));
    assert_eq!(resolve_send_at(&at, None, Timestamp::MIN, 0, u64::MAX), Ok(ts("2026-01-15T12:00:00Z")));
    assert_eq!(
        resolve_send_at(&at, None, Timestamp::MIN, u64::MAX, u64::MAX),
        Err(SendAtError::TooSoon { min_lead_s: u64::MAX })
    );
}

// ---- the DST rule ----

#[test]
fn new_york_spring_gap_moves_forward_by_the_gap() {
    // 2026-03-08 (second Sunday of March): 02:00 EST becomes 03:00 EDT.
    let dt = local("2026-03-08T02:30");
    assert_eq!(ambiguity("America/New_York", dt), AmbiguousOffset::Gap { before: offset(-5), after: offset(-4) });
    let at = resolve_in("2026-03-08T02:30", "America/New_York");
    assert_eq!(at, ts("2026-03-08T07:30:00Z"));
    assert_eq!(at.to_zoned(zone("America/New_York")).datetime(), local("2026-03-08T03:30"));
}

#[test]
fn new_york_autumn_fold_takes_the_earlier_instant() {
    // 2026-11-01 (first Sunday of November): 02:00 EDT becomes 01:00 EST, so 01:30 happens twice.
    let dt = local("2026-11-01T01:30");
    assert_eq!(ambiguity("America/New_York", dt), AmbiguousOffset::Fold { before: offset(-4), after: offset(-5) });
    assert_eq!(resolve_in("2026-11-01T01:30", "America/New_York"), ts("2026-11-01T05:30:00Z"));
}

#[test]
fn berlin_spring_gap_and_autumn_fold() {
    // 2026-03-29 and 2026-10-25 are the last Sundays of March and October.
    let gap = local("2026-03-29T02:30");
    assert_eq!(ambiguity("Europe/Berlin", gap), AmbiguousOffset::Gap { before: offset(1), after: offset(2) });
    assert_eq!(resolve_in("2026-03-29T02:30", "Europe/Berlin"), ts("2026-03-29T01:30:00Z"));

    let fold = local("2026-10-25T02:30");
    assert_eq!(ambiguity("Europe/Berlin", fold), AmbiguousOffset::Fold { before: offset(2), after: offset(1) });
    assert_eq!(resolve_in("2026-10-25T02:30", "Europe/Berlin"), ts("2026-10-25T00:30:00Z"));
}

#[test]
fn lord_howe_half_hour_gap_and_fold() {
    // Lord Howe Island moves between +10:30 and +11:00 on the first Sundays of October and April.
    let half_past_ten = Offset::from_seconds(10 * 3600 + 1800).unwrap();
    let gap = local("2026-10-04T02:15");
    assert_eq!(
        ambiguity("Australia/Lord_Howe", gap),
        AmbiguousOffset::Gap { before: half_past_ten, after: offset(11) }
    );
    let at = resolve_in("2026-10-04T02:15", "Australia/Lord_Howe");
    assert_eq!(at, ts("2026-10-03T15:45:00Z"));
    assert_eq!(at.to_zoned(zone("Australia/Lord_Howe")).datetime(), local("2026-10-04T02:45"));

    let fold = local("2026-04-05T01:45");
    assert_eq!(
        ambiguity("Australia/Lord_Howe", fold),
        AmbiguousOffset::Fold { before: offset(11), after: half_past_ten }
    );
    assert_eq!(resolve_in("2026-04-05T01:45", "Australia/Lord_Howe"), ts("2026-04-04T14:45:00Z"));
}

#[test]
fn seoul_has_no_dst() {
    let seoul = zone("Asia/Seoul");
    // No transition since 1988, so none in or after 2026.
    assert!(seoul.following(ts("2026-01-01T00:00:00Z")).next().is_none());
    for (send_at, want) in [
        ("2026-03-08T02:30", "2026-03-07T17:30:00Z"),
        ("2026-10-25T02:30", "2026-10-24T17:30:00Z"),
        ("2026-07-01T09:00", "2026-07-01T00:00:00Z"),
    ] {
        assert_eq!(ambiguity("Asia/Seoul", local(send_at)), AmbiguousOffset::Unambiguous { offset: offset(9) });
        assert_eq!(resolve_in(send_at, "Asia/Seoul"), ts(want), "{send_at}");
    }
}

// ---- quiet hours ----

#[test]
fn a_non_wrapping_window_ends_the_same_day() {
    let q = quiet("13:00", "14:00");
    let end = |at: &str| quiet_hours_end(&q, None, ts(at));
    assert_eq!(end("2026-05-01T13:00:00Z"), Some(ts("2026-05-01T14:00:00Z")));
    assert_eq!(end("2026-05-01T13:30:00Z"), Some(ts("2026-05-01T14:00:00Z")));
    assert_eq!(end("2026-05-01T13:59:59.999Z"), Some(ts("2026-05-01T14:00:00Z")));
    assert_eq!(end("2026-05-01T14:00:00Z"), None);
    assert_eq!(end("2026-05-01T12:59:59Z"), None);
    assert_eq!(end("2026-05-01T20:00:00Z"), None);
    assert_eq!(end("2026-05-01T00:00:00Z"), None);
}

#[test]
fn a_wrapping_window_ends_the_next_morning_or_this_morning() {
    let q = quiet("22:00", "08:00");
    let end = |at: &str| quiet_hours_end(&q, None, ts(at));
    assert_eq!(end("2026-05-01T22:00:00Z"), Some(ts("2026-05-02T08:00:00Z")));
    assert_eq!(end("2026-05-01T23:30:00Z"), Some(ts("2026-05-02T08:00:00Z")));
    assert_eq!(end("2026-05-02T00:00:00Z"), Some(ts("2026-05-02T08:00:00Z")));
    assert_eq!(end("2026-05-02T03:00:00Z"), Some(ts("2026-05-02T08:00:00Z")));
    assert_eq!(end("2026-05-02T07:59:59Z"), Some(ts("2026-05-02T08:00:00Z")));
    assert_eq!(end("2026-05-02T08:00:00Z"), None);
    assert_eq!(end("2026-05-02T12:00:00Z"), None);
    assert_eq!(end("2026-05-02T21:59:59Z"), None);
    // Across a month and a year end.
    assert_eq!(end("2026-12-31T23:00:00Z"), Some(ts("2027-01-01T08:00:00Z")));
}

#[test]
fn a_window_whose_start_equals_its_end_is_empty() {
    let q = quiet("08:00", "08:00");
    for at in ["2026-05-01T08:00:00Z", "2026-05-01T07:59:00Z", "2026-05-01T20:00:00Z"] {
        assert_eq!(quiet_hours_end(&q, None, ts(at)), None, "{at}");
    }
}

#[test]
fn a_window_is_read_in_the_users_time_zone() {
    let q = quiet("22:00", "08:00");
    let seoul = |at: &str| quiet_hours_end(&q, Some("Asia/Seoul"), ts(at));
    // 12:59Z is 21:59 in Seoul: outside; 13:00Z is 22:00: inside until 08:00 KST the next day (23:00Z).
    assert_eq!(seoul("2026-05-01T12:59:00Z"), None);
    assert_eq!(seoul("2026-05-01T13:00:00Z"), Some(ts("2026-05-01T23:00:00Z")));
    assert_eq!(seoul("2026-05-01T14:30:00Z"), Some(ts("2026-05-01T23:00:00Z")));
    // 20:00Z is 05:00 the next day in Seoul, so it ends that same Seoul morning.
    assert_eq!(seoul("2026-05-01T20:00:00Z"), Some(ts("2026-05-01T23:00:00Z")));
    assert_eq!(seoul("2026-05-01T23:00:00Z"), None);
    // 03:00Z is inside the window in UTC, but midday in Seoul.
    assert_eq!(quiet_hours_end(&q, None, ts("2026-05-01T03:00:00Z")), Some(ts("2026-05-01T08:00:00Z")));
    assert_eq!(seoul("2026-05-01T03:00:00Z"), None);
}

#[test]
fn an_unknown_or_missing_time_zone_means_utc() {
    let q = quiet("22:00", "08:00");
    for tz in [None, Some("Mars/Olympus"), Some("")] {
        assert_eq!(quiet_hours_end(&q, tz, ts("2026-05-01T23:00:00Z")), Some(ts("2026-05-02T08:00:00Z")));
        assert_eq!(quiet_hours_end(&q, tz, ts("2026-05-01T12:00:00Z")), None);
    }
}

#[test]
fn a_window_ending_in_a_dst_gap_follows_the_rule() {
    // New York 2026-03-08: 02:30 does not exist; the window ends at 03:30 EDT (07:30Z).
    assert!(matches!(ambiguity("America/New_York", local("2026-03-08T02:30")), AmbiguousOffset::Gap { .. }));
    let q = quiet("22:00", "02:30");
    let end = |at: &str| quiet_hours_end(&q, Some("America/New_York"), ts(at));
    assert_eq!(end("2026-03-08T04:00:00Z"), Some(ts("2026-03-08T07:30:00Z"))); // 23:00 EST the evening before
    assert_eq!(end("2026-03-08T06:59:59Z"), Some(ts("2026-03-08T07:30:00Z"))); // 01:59:59 EST
    assert_eq!(end("2026-03-08T07:00:00Z"), None); // 03:00 EDT: the wall clock is past 02:30
}

#[test]
fn a_window_ending_in_a_fold_ends_at_the_earlier_instant_or_the_later_one_if_entered_again() {
    // New York 2026-11-01: 01:00–02:00 happens twice, first in EDT (05:00Z–06:00Z), then in EST (06:00Z–07:00Z).
    assert!(matches!(ambiguity("America/New_York", local("2026-11-01T01:30")), AmbiguousOffset::Fold { .. }));
    let q = quiet("22:00", "01:30");
    let end = |at: &str| quiet_hours_end(&q, Some("America/New_York"), ts(at));
    assert_eq!(end("2026-11-01T04:00:00Z"), Some(ts("2026-11-01T05:30:00Z"))); // 00:00 EDT
    assert_eq!(end("2026-11-01T05:29:59Z"), Some(ts("2026-11-01T05:30:00Z"))); // 01:29:59 EDT
    assert_eq!(end("2026-11-01T05:30:00Z"), None); // 01:30 EDT
    assert_eq!(end("2026-11-01T06:10:00Z"), Some(ts("2026-11-01T06:30:00Z"))); // 01:10 EST, the second pass
    assert_eq!(end("2026-11-01T06:30:00Z"), None); // 01:30 EST
}

#[test]
fn a_window_ending_in_lord_howes_half_hour_gap() {
    // 2026-10-04 on Lord Howe Island: 02:00 +10:30 becomes 02:30 +11:00; 02:15 moves to 02:45 +11:00.
    assert!(matches!(ambiguity("Australia/Lord_Howe", local("2026-10-04T02:15")), AmbiguousOffset::Gap { .. }));
    let q = quiet("23:00", "02:15");
    let got = quiet_hours_end(&q, Some("Australia/Lord_Howe"), ts("2026-10-03T14:00:00Z")); // 00:30 +10:30
    assert_eq!(got, Some(ts("2026-10-03T15:45:00Z")));
}

#[test]
fn a_window_that_does_not_parse_is_no_window() {
    for (start, end) in [("", "08:00"), ("22:00", "24:00"), ("late", "early")] {
        assert_eq!(quiet_hours_end(&quiet(start, end), None, ts("2026-05-01T23:00:00Z")), None, "{start}-{end}");
    }
}
