//! UTC calendar times as vaultik writes and reads them: the compact form in
//! snapshot ids and deletion marks (`2026-11-23T083015Z`), RFC 3339 in JSON
//! reports (`2026-11-23T08:30:15Z`), the display form
//! (`2026-11-23 08:30:15 UTC`), and S3's `LastModified`
//! (`2026-11-23T08:30:15.000Z`). Seconds since the Unix epoch throughout.

/// Seconds since the Unix epoch, now (0 if the clock is before 1970).
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `2026-11-23T083015Z`
pub fn compact(unix: u64) -> String {
    let (y, mo, d, h, mi, s) = civil(unix);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}{mi:02}{s:02}Z")
}

/// `2026-11-23T08:30:15Z` (RFC 3339, UTC): the `time` of JSON reports.
pub fn rfc3339(unix: u64) -> String {
    let (y, mo, d, h, mi, s) = civil(unix);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
}

/// `20261123T083015Z`: the date of a signed request (SigV4's
/// `x-amz-date`).
pub fn amz_date(unix: u64) -> String {
    let (y, mo, d, h, mi, s) = civil(unix);
    format!("{y:04}{mo:02}{d:02}T{h:02}{mi:02}{s:02}Z")
}

/// `2026-11-23 08:30:15 UTC`
pub fn display(unix: u64) -> String {
    let (y, mo, d, h, mi, s) = civil(unix);
    format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02} UTC")
}

/// `2026-11-23 08:30`, for a time that may be before 1970 (a file's
/// mtime): listings show minutes, in UTC.
pub fn minute(unix: i64) -> String {
    let (y, mo, d, h, mi, _) = civil_days(unix.div_euclid(86_400), unix.rem_euclid(86_400) as u64);
    format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}")
}

/// `2026-11-23 08:30:15`, or with the nanoseconds (`08:30:15.000000042`)
/// when `precise`: a file's mtime, to tell two apart.
pub fn nanos(ns: i64, precise: bool) -> String {
    let secs = ns.div_euclid(1_000_000_000);
    let (y, mo, d, h, mi, s) = civil_days(secs.div_euclid(86_400), secs.rem_euclid(86_400) as u64);
    let mut out = format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}");
    if precise {
        out.push_str(&format!(".{:09}", ns.rem_euclid(1_000_000_000)));
    }
    out
}

/// The time zone `name` (an IANA zone of the system's zoneinfo, such as
/// `Europe/Berlin`), UTC when None: where retention's calendar periods
/// are taken.
pub fn zone(name: Option<&str>) -> crate::error::Result<jiff::tz::TimeZone> {
    match name {
        None | Some("UTC") => Ok(jiff::tz::TimeZone::UTC),
        Some(name) => jiff::tz::TimeZone::get(name).map_err(|e| {
            crate::error::Error::Setup(format!(
                "retention_timezone `{name}`: {e} (a zone of the system's zoneinfo, \
                 such as Europe/Berlin; or UTC)"
            ))
        }),
    }
}

/// A day or a time of day given by a user, in UTC: `2026-11-20` (its
/// midnight), `2026-11-20T08:00` or `2026-11-20T08:00:30` (a space for
/// the `T` too). Days that do not exist (`2026-02-30`) are refused.
pub fn parse_day_or_time(s: &str) -> Option<u64> {
    let full = match s.len() {
        10 => format!("{s}T00:00:00"),
        16 => format!("{s}:00"),
        19 => s.to_string(),
        _ => return None,
    };
    let b = full.as_bytes();
    if b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let t = from_fields(&full, [0..4, 5..7, 8..10, 11..13, 14..16, 17..19])?;
    // The day must be one the calendar has: it comes back as written.
    (compact(t)[..10] == full[..10]).then_some(t)
}

/// The inverse of `compact`, exactly (no other spelling is accepted, so a
/// time read back from a key names one key).
pub fn parse_compact(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() != 18 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[17] != b'Z' {
        return None;
    }
    let t = from_fields(s, [0..4, 5..7, 8..10, 11..13, 13..15, 15..17])?;
    (compact(t) == s).then_some(t)
}

/// S3's `2026-11-23T18:53:00.000Z` (fractions ignored).
pub fn parse_s3(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() < 19 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' {
        return None;
    }
    from_fields(s, [0..4, 5..7, 8..10, 11..13, 14..16, 17..19])
}

/// An HTTP date (`Sun, 06 Nov 1994 08:49:37 GMT`, the only form RFC 9110
/// asks senders to use): a `Date` or a `Retry-After` header.
pub fn parse_http_date(s: &str) -> Option<u64> {
    let b = s.trim().as_bytes();
    if b.len() != 29 || &b[25..] != b" GMT" || b[3] != b',' {
        return None;
    }
    let s = std::str::from_utf8(b).ok()?;
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = MONTHS.iter().position(|m| *m == &s[8..11])? + 1;
    let iso = format!("{}-{month:02}-{}T{}", &s[12..16], &s[5..7], &s[17..25]);
    parse_s3(&iso)
}

/// Seconds since the epoch from the year, month, day, hour, minute and
/// second found at these byte ranges of `s` (all digits, in range).
fn from_fields(s: &str, at: [std::ops::Range<usize>; 6]) -> Option<u64> {
    let mut v = [0i64; 6];
    for (slot, r) in v.iter_mut().zip(at) {
        let field = s.get(r)?;
        if !field.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        *slot = field.parse().ok()?;
    }
    let [y, m, d, hh, mm, ss] = v;
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    u64::try_from(days_from_civil(y, m, d) * 86_400 + hh * 3600 + mm * 60 + ss).ok()
}

/// Howard Hinnant's days-from-civil.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Howard Hinnant's days-to-civil, with the time of day.
fn civil(unix: u64) -> (i64, u32, u32, u32, u32, u32) {
    civil_days((unix / 86_400) as i64, unix % 86_400)
}

/// The civil date of `days` since the epoch (negative before it) and the
/// time of day of `secs` into it.
fn civil_days(days: i64, secs: u64) -> (i64, u32, u32, u32, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (
        y,
        m,
        d,
        (secs / 3600) as u32,
        (secs / 60 % 60) as u32,
        (secs % 60) as u32,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(compact(0), "1970-01-01T000000Z");
        assert_eq!(compact(1_795_422_615), "2026-11-23T083015Z");
        assert_eq!(rfc3339(1_795_422_615), "2026-11-23T08:30:15Z");
        assert_eq!(display(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(minute(1_795_422_615), "2026-11-23 08:30");
        assert_eq!(minute(0), "1970-01-01 00:00");
        assert_eq!(minute(-1), "1969-12-31 23:59");
        assert_eq!(minute(-86_400 * 365), "1969-01-01 00:00");
        // The extremes of a nanosecond mtime never overflow.
        assert_eq!(minute(i64::MAX / 1_000_000_000), "2262-04-11 23:47");
        assert_eq!(minute(i64::MIN / 1_000_000_000), "1677-09-21 00:12");
        assert_eq!(
            nanos(1_795_422_615_000_000_042, false),
            "2026-11-23 08:30:15"
        );
        assert_eq!(
            nanos(1_795_422_615_000_000_042, true),
            "2026-11-23 08:30:15.000000042"
        );
        assert_eq!(nanos(-1, true), "1969-12-31 23:59:59.999999999");
        assert_eq!(nanos(i64::MIN, false), "1677-09-21 00:12:43");
    }

    #[test]
    fn days_and_times_given_by_users() {
        assert_eq!(parse_day_or_time("2026-11-23"), Some(1_795_392_000));
        assert_eq!(parse_day_or_time("2026-11-23T08:30"), Some(1_795_422_600));
        assert_eq!(parse_day_or_time("2026-11-23 08:30"), Some(1_795_422_600));
        assert_eq!(
            parse_day_or_time("2026-11-23T08:30:15"),
            Some(1_795_422_615)
        );
        assert_eq!(parse_day_or_time("2000-02-29"), Some(951_782_400));
        for bad in [
            "2026-02-30",
            "2026-11-23T24:00",
            "2026-11-23X08:30",
            "2026/11/23",
            "26-11-23",
            "2026-11-23T08",
            "",
            "7d",
            "2026-11-2a",
        ] {
            assert_eq!(parse_day_or_time(bad), None, "{bad}");
        }
    }

    #[test]
    fn parses() {
        assert_eq!(parse_s3("1970-01-01T00:00:00.000Z"), Some(0));
        assert_eq!(parse_s3("2026-11-23T08:30:15.000Z"), Some(1_795_422_615));
        assert_eq!(parse_s3("2000-02-29T00:00:00Z"), Some(951_782_400));
        assert_eq!(parse_s3("garbage"), None);
        assert_eq!(parse_s3("2000-0a-29T00:00:00Z"), None);
        for t in [0, 951_782_400, 1_795_422_615, 4_102_444_800] {
            assert_eq!(parse_compact(&compact(t)), Some(t));
        }
        for bad in [
            "2026-11-23T083015",
            "2026-13-23T083015Z",
            "2026-02-30T083015Z",
            "2026-11-23T246015Z",
            "+026-11-23T083015Z",
            "2026-11-23t083015Z",
        ] {
            assert_eq!(parse_compact(bad), None, "{bad}");
        }
    }

    #[test]
    fn signing_and_http_dates() {
        assert_eq!(amz_date(1_369_353_600), "20130524T000000Z");
        assert_eq!(
            parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"),
            parse_s3("1994-11-06T08:49:37Z")
        );
        for bad in [
            "Sun, 06 Nov 1994 08:49:37",
            "Sun, 06 Foo 1994 08:49:37 GMT",
            "120",
            "",
        ] {
            assert_eq!(parse_http_date(bad), None, "{bad}");
        }
    }
}
