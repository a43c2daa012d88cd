//! Calendar time in UTC from Unix seconds, for directory names and report
//! timestamps (the crate has no date library, and this is all it needs).

/// A UTC calendar time, to the second.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Utc {
    pub year: i64,
    pub month: u32,
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
}

impl Utc {
    /// The calendar time `secs` seconds after the Unix epoch.
    pub fn from_unix(secs: u64) -> Utc {
        let days = (secs / 86_400) as i64;
        let rem = (secs % 86_400) as u32;
        // Howard Hinnant's days-to-civil: eras of 400 years (146097 days)
        // starting on 0000-03-01, so the leap day falls at the end of a year.
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        let year = yoe + era * 400 + i64::from(month <= 2);
        Utc {
            year,
            month,
            day,
            hour: rem / 3600,
            minute: rem / 60 % 60,
            second: rem % 60,
        }
    }

    /// `2026-11-23T01-02-03`: ISO 8601 with the colons a file name on some
    /// filesystems (and `scp host:path`) would choke on replaced by dashes.
    pub fn file_name(self) -> String {
        format!(
            "{:04}-{:02}-{:02}T{:02}-{:02}-{:02}",
            self.year, self.month, self.day, self.hour, self.minute, self.second
        )
    }

    /// `2026-11-23T01:02:03`, the form JUnit's `timestamp` takes (no zone).
    pub fn iso8601(self) -> String {
        format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
            self.year, self.month, self.day, self.hour, self.minute, self.second
        )
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
    }
}
