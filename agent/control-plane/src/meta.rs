//! Server-set metadata values: object UIDs and timestamps.

use std::time::{SystemTime, UNIX_EPOCH};

/// A random (version 4) UUID, as Kubernetes gives every object.
pub fn new_uid() -> String {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
}

/// Now as RFC 3339 in UTC with whole seconds (`2026-11-29T08:00:00Z`), Kubernetes' `Time`.
pub fn now_rfc3339() -> String {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    rfc3339(secs)
}

/// `secs` seconds since the epoch as a Kubernetes `Time` (a pod's `deletionTimestamp`, now plus its grace).
pub fn rfc3339_at(secs: u64) -> String {
    rfc3339(secs)
}

/// Now as RFC 3339 in UTC with microseconds (`2026-11-29T08:00:00.123456Z`), Kubernetes' `MicroTime`
/// (a Lease's `renewTime`).
pub fn now_rfc3339_micro() -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let whole = rfc3339(now.as_secs());
    format!("{}.{:06}Z", whole.trim_end_matches('Z'), now.subsec_micros())
}

fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's `civil_from_days`): no date crate
/// for one formatting function.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Days since 1970-01-01 of a proleptic Gregorian date: the inverse of [`civil_from_days`].
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = i64::from(if m > 2 { m - 3 } else { m + 9 });
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The time of a Kubernetes `Time` or `MicroTime` in UTC (`2026-11-29T08:00:00Z`, `...00.123456Z`), as
/// seconds since the epoch with the fraction; `None` for anything else. Controllers compare these with now:
/// how long a pod has been Ready, when a Lease was last renewed.
pub fn parse_rfc3339(s: &str) -> Option<f64> {
    let s = s.strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let mut date = date.splitn(3, '-').map(str::parse::<u32>);
    let (y, m, d) = (date.next()?.ok()?, date.next()?.ok()?, date.next()?.ok()?);
    let (time, fraction) = time.split_once('.').unwrap_or((time, ""));
    let mut time = time.splitn(3, ':').map(str::parse::<u32>);
    let (h, min, sec) = (time.next()?.ok()?, time.next()?.ok()?, time.next()?.ok()?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || h > 23 || min > 59 || sec > 60 {
        return None;
    }
    let fraction = if fraction.is_empty() { 0.0 } else { format!("0.{fraction}").parse::<f64>().ok()? };
    let days = days_from_civil(i64::from(y), m, d);
    Some((days * 86_400 + i64::from(h * 3600 + min * 60 + sec)) as f64 + fraction)
}

/// Seconds since the epoch now, to compare with [`parse_rfc3339`].
pub fn now_seconds() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn formats() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::rfc3339(951_782_400 + 3_661), "2000-02-29T01:01:01Z");
        assert_eq!(super::rfc3339(1_798_761_599), "2026-12-31T23:59:59Z");
        assert_eq!(super::parse_rfc3339("2000-02-29T01:01:01Z"), Some(951_782_400.0 + 3_661.0));
        assert_eq!(super::parse_rfc3339("2026-12-31T23:59:59.5Z"), Some(1_798_761_599.5));
        assert_eq!(super::parse_rfc3339(&super::rfc3339(1_798_761_599)), Some(1_798_761_599.0));
        assert_eq!(super::parse_rfc3339("2026-13-01T00:00:00Z"), None);
        assert_eq!(super::parse_rfc3339("yesterday"), None);
        let uid = super::new_uid();
        assert_eq!((uid.len(), &uid[14..15]), (36, "4"));
    }
}
