//! Calendar time in UTC from Unix seconds, for directory names and report
//! timestamps, on `chrono` (which quick-junit brings in anyway).

use chrono::{DateTime, Datelike, Timelike};

/// A UTC calendar time, to the second.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Utc(DateTime<chrono::Utc>);

impl Utc {
    /// The calendar time `secs` seconds after the Unix epoch (clamped to
    /// the end of year 9999, far beyond any clock's reading).
    pub fn from_unix(secs: u64) -> Utc {
        const LAST: u64 = 253_402_300_799; // 9999-12-31T23:59:59
        let secs = secs.min(LAST) as i64;
        Utc(DateTime::from_timestamp(secs, 0).unwrap_or(DateTime::UNIX_EPOCH))
    }

    fn parts(self) -> (i32, u8, u8, u8, u8, u8) {
        let t = self.0;
        (
            t.year(),
            t.month() as u8,
            t.day() as u8,
            t.hour() as u8,
            t.minute() as u8,
            t.second() as u8,
        )
    }

    /// `2026-11-23T01-02-03`: ISO 8601 with the colons a file name on some
    /// filesystems (and `scp host:path`) would choke on replaced by dashes.
    pub fn file_name(self) -> String {
        let (y, mo, d, h, mi, s) = self.parts();
        format!("{y:04}-{mo:02}-{d:02}T{h:02}-{mi:02}-{s:02}")
    }

    /// `2026-11-23T01:02:03`, the form JUnit's `timestamp` takes (no zone).
    pub fn iso8601(self) -> String {
        let (y, mo, d, h, mi, s) = self.parts();
        format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_instants() {
        assert_eq!(Utc::from_unix(0).iso8601(), "1970-01-01T00:00:00");
        // date -u -d @951782400: the leap day of a year divisible by 400.
        assert_eq!(Utc::from_unix(951_782_400).iso8601(), "2000-02-29T00:00:00");
        // date -u -d @1795395723
        assert_eq!(
            Utc::from_unix(1_795_395_723).file_name(),
            "2026-11-23T01-02-03"
        );
        assert_eq!(
            Utc::from_unix(4_107_542_399).iso8601(),
            "2100-02-28T23:59:59"
        );
        // A nonsense clock reading clamps rather than panicking.
        assert_eq!(Utc::from_unix(u64::MAX).iso8601(), "9999-12-31T23:59:59");
    }
}
