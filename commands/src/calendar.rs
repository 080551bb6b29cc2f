//! Dates from day counts (the proleptic Gregorian calendar, UTC), for the clocks commands and
//! reports show.

/// (year, month, day) of a day count since 1970-01-01.
pub fn civil(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// A FILETIME (100 ns since 1601, UTC) as (unix seconds, milliseconds).
pub fn unix_of(filetime: i128) -> (i64, u32) {
    let t = filetime - 116_444_736_000_000_000;
    (
        t.div_euclid(10_000_000) as i64,
        (t.rem_euclid(10_000_000) / 10_000) as u32,
    )
}

/// A FILETIME's date and time: (year, month, day, hour, minute, second, millisecond).
pub fn parts(filetime: i128) -> (i64, i64, i64, i64, i64, i64, u32) {
    let (secs, ms) = unix_of(filetime);
    let (y, mo, d) = civil(secs.div_euclid(86_400));
    let r = secs.rem_euclid(86_400);
    (y, mo, d, r / 3600, r / 60 % 60, r % 60, ms)
}

/// A FILETIME as ISO 8601, `2026-12-02T05:05:17.123Z`.
pub fn iso(filetime: i128) -> String {
    let (y, mo, d, h, mi, s, ms) = parts(filetime);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{ms:03}Z")
}

#[cfg(test)]
#[test]
fn filetimes_to_dates() {
    // 2021-01-01T00:00:00Z as a FILETIME.
    assert_eq!(unix_of(132_539_328_000_000_000), (1_609_459_200, 0));
    assert_eq!(iso(132_539_328_000_000_000), "2021-01-01T00:00:00.000Z");
}

#[cfg(test)]
#[test]
fn days_to_dates() {
    assert_eq!(civil(0), (1970, 1, 1));
    assert_eq!(civil(-1), (1969, 12, 31));
    assert_eq!(civil(11_016), (2000, 2, 29));
    assert_eq!(civil(20_422), (2025, 11, 30));
}
