//! RFC 3339 timestamps with nanoseconds, formatted without allocation.
//!
//! The CRI log format and the exit record both carry `YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ`. We
//! always print UTC and all nine fractional digits: fixed width makes every record the same
//! shape, and both kubelet's parser (Go `time.RFC3339Nano`) and ours accept it.

use std::time::{SystemTime, UNIX_EPOCH};

/// Length of a formatted timestamp: `2006-01-02T15:04:05.000000000Z`.
pub const TIMESTAMP_LEN: usize = 30;

/// Formats `time` into `out` and returns the bytes written (always [`TIMESTAMP_LEN`]).
pub fn format_into(time: SystemTime, out: &mut [u8; TIMESTAMP_LEN]) {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let nanos = since.subsec_nanos();
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    let (hour, minute, second) = (rem / 3600, (rem % 3600) / 60, rem % 60);
    write_digits(&mut out[0..4], year as u64);
    out[4] = b'-';
    write_digits(&mut out[5..7], month as u64);
    out[7] = b'-';
    write_digits(&mut out[8..10], day as u64);
    out[10] = b'T';
    write_digits(&mut out[11..13], hour);
    out[13] = b':';
    write_digits(&mut out[14..16], minute);
    out[16] = b':';
    write_digits(&mut out[17..19], second);
    out[19] = b'.';
    write_digits(&mut out[20..29], nanos as u64);
    out[29] = b'Z';
}

/// The timestamp of `time` as a `String` (for JSON records; not for hot paths).
pub fn format(time: SystemTime) -> String {
    let mut buf = [0u8; TIMESTAMP_LEN];
    format_into(time, &mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

/// Parses a timestamp written by [`format`] (UTC, nine fractional digits) back.
pub fn parse(text: &str) -> Option<SystemTime> {
    let b = text.as_bytes();
    if b.len() != TIMESTAMP_LEN || b[29] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        std::str::from_utf8(&b[r]).ok()?.parse::<i64>().ok()
    };
    let days = days_from_civil(num(0..4)?, num(5..7)?, num(8..10)?);
    let secs = days * 86_400 + num(11..13)? * 3600 + num(14..16)? * 60 + num(17..19)?;
    let nanos = num(20..29)?;
    let secs = u64::try_from(secs).ok()?;
    Some(UNIX_EPOCH + std::time::Duration::new(secs, u32::try_from(nanos).ok()?))
}

fn write_digits(out: &mut [u8], mut value: u64) {
    for slot in out.iter_mut().rev() {
        *slot = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

// Howard Hinnant's days <-> civil date algorithms (proleptic Gregorian, UTC).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn formats_known_instants() {
        let t = UNIX_EPOCH + Duration::new(1_136_214_245, 5);
        assert_eq!(format(t), "2006-01-02T15:04:05.000000005Z");
        assert_eq!(format(UNIX_EPOCH), "1970-01-01T00:00:00.000000000Z");
        let leap = UNIX_EPOCH + Duration::new(951_782_400, 999_999_999);
        assert_eq!(format(leap), "2000-02-29T00:00:00.999999999Z");
    }

    #[test]
    fn round_trips() {
        for secs in [0u64, 86_399, 951_782_400, 1_700_000_000, 4_102_444_800] {
            let t = UNIX_EPOCH + Duration::new(secs, 123_456_789);
            assert_eq!(parse(&format(t)), Some(t));
        }
        assert_eq!(parse("2006-01-02T15:04:05Z"), None);
    }
}
