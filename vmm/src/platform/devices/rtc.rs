//! The CMOS real-time clock (an MC146818, ports 0x70/0x71), modelled as
//! QEMU's `hw/rtc/mc146818rtc.c` behaves for a guest that polls it: the
//! date and time in BCD or binary, 24- or 12-hour, counting from the
//! host's UTC clock; the update-in-progress bit; the alarm (with its "don't care" values) and the update and
//! alarm flags of register C, cleared by reading it; CMOS RAM for the rest.
//!
//! The flags are computed when the guest looks, not by a timer: nothing
//! raises IRQ 8 and the periodic flag never sets (no ktvmm guest needs
//! them). What an ACPI sleep needs is [`Rtc::next_alarm`]: when the alarm,
//! with its interrupt enabled, next fires and wakes the machine.

use std::time::{Duration, SystemTime};

use ktvmm_testdevs::bus_device::{Action, BusDevice};

/// The index and data ports.
pub const LEN: u64 = 2;

const SECONDS: usize = 0x00;
const SECONDS_ALARM: usize = 0x01;
const MINUTES: usize = 0x02;
const MINUTES_ALARM: usize = 0x03;
const HOURS: usize = 0x04;
const HOURS_ALARM: usize = 0x05;
const DAY_OF_WEEK: usize = 0x06;
const DAY_OF_MONTH: usize = 0x07;
const MONTH: usize = 0x08;
const YEAR: usize = 0x09;
const REG_A: usize = 0x0a;
const REG_B: usize = 0x0b;
const REG_C: usize = 0x0c;
const REG_D: usize = 0x0d;
/// Where QEMU (and SeaBIOS) keep the century.
const CENTURY: usize = 0x32;

const REG_A_UIP: u8 = 0x80;
/// The divider bits that let the clock run (32.768 kHz time base).
const REG_A_DIVIDER_MASK: u8 = 0x60;
const REG_A_DIVIDER_RUNNING: u8 = 0x20;
const REG_B_SET: u8 = 0x80;
const REG_B_AIE: u8 = 0x20;
const REG_B_UIE: u8 = 0x10;
const REG_B_DM_BINARY: u8 = 0x04;
const REG_B_24H: u8 = 0x02;
const REG_C_IRQF: u8 = 0x80;
const REG_C_AF: u8 = 0x20;
const REG_C_UF: u8 = 0x10;
const REG_D_VRT: u8 = 0x80;
const ALARM_DONT_CARE: u8 = 0xc0;

/// UIP is set this long before each update (the data sheet's t_BUC, QEMU's
/// UIP_HOLD_LENGTH: 8 cycles of the 32.768 kHz base)...
const UIP_BEFORE_NS: i128 = 8 * 1_000_000_000 / 32_768;
/// ... and stays set through the update cycle (t_UC, 1984 µs). QEMU keeps
/// it latched until its update timer has run, after the second began; the
/// data sheet's length makes the window one a guest polling from a loaded
/// host still sees (kvm-unit-tests' `s3` waits for it to rise and fall).
const UIP_AFTER_NS: i128 = 1_984_000;
const NS: i128 = 1_000_000_000;
const DAY_S: i64 = 86_400;

/// Where the guest's clock reads its time from (the host's clock, or a
/// test's).
pub trait Clock: Send {
    /// Nanoseconds since the Unix epoch.
    fn now_ns(&self) -> i128;
}

/// The host's UTC clock (QEMU's `-rtc base=utc`, its default).
#[derive(Debug, Default)]
pub struct HostClock;

impl Clock for HostClock {
    fn now_ns(&self) -> i128 {
        match SystemTime::now().duration_since(SystemTime::UNIX_EPOCH) {
            Ok(since) => since.as_nanos() as i128,
            Err(before) => -(before.duration().as_nanos() as i128),
        }
    }
}

/// The clock chip.
pub struct Rtc {
    clock: Box<dyn Clock>,
    /// Guest time minus host time.
    offset_ns: i128,
    /// The time held while register B's SET bit stops the clock.
    held: Option<i64>,
    index: usize,
    cmos: [u8; 128],
    /// The last whole second whose update set the flags of register C.
    flags_up_to: i64,
}

impl Rtc {
    /// A clock reading the host's UTC time, in BCD, 24-hour mode, as
    /// QEMU's starts (registers A 0x26, B 0x02, D 0x80).
    pub fn new() -> Self {
        Self::with_clock(Box::new(HostClock))
    }

    /// A clock reading `clock`.
    pub fn with_clock(clock: Box<dyn Clock>) -> Self {
        let mut cmos = [0u8; 128];
        cmos[REG_A] = 0x26;
        cmos[REG_B] = REG_B_24H;
        cmos[REG_D] = REG_D_VRT;
        let mut rtc = Self {
            clock,
            offset_ns: 0,
            held: None,
            index: 0,
            cmos,
            flags_up_to: 0,
        };
        rtc.flags_up_to = rtc.second();
        rtc
    }

    fn guest_ns(&self) -> i128 {
        match self.held {
            Some(second) => i128::from(second) * NS,
            None => self.clock.now_ns() + self.offset_ns,
        }
    }

    fn second(&self) -> i64 {
        self.guest_ns().div_euclid(NS) as i64
    }

    fn binary(&self) -> bool {
        self.cmos[REG_B] & REG_B_DM_BINARY != 0
    }

    fn encode(&self, value: u8) -> u8 {
        if self.binary() {
            value
        } else {
            ((value / 10) << 4) | (value % 10)
        }
    }

    fn decode(&self, value: u8) -> u8 {
        if self.binary() {
            value
        } else {
            (value >> 4) * 10 + (value & 0x0f)
        }
    }

    fn encode_hour(&self, hour: u8) -> u8 {
        if self.cmos[REG_B] & REG_B_24H != 0 {
            return self.encode(hour);
        }
        // 12-hour mode: 12, 1..11 with bit 7 for PM.
        let twelve = match hour % 12 {
            0 => 12,
            h => h,
        };
        self.encode(twelve) | if hour >= 12 { 0x80 } else { 0 }
    }

    fn decode_hour(&self, value: u8) -> u8 {
        if self.cmos[REG_B] & REG_B_24H != 0 {
            return self.decode(value);
        }
        let twelve = self.decode(value & 0x7f) % 12;
        twelve + if value & 0x80 != 0 { 12 } else { 0 }
    }

    /// A time register as the guest reads it at Unix second `second`.
    fn field(&self, index: usize, second: i64) -> u8 {
        let t = Civil::from_unix(second);
        match index {
            SECONDS => self.encode(t.second),
            MINUTES => self.encode(t.minute),
            HOURS => self.encode_hour(t.hour),
            DAY_OF_WEEK => self.encode(t.weekday),
            DAY_OF_MONTH => self.encode(t.day),
            MONTH => self.encode(t.month),
            YEAR => self.encode((t.year.rem_euclid(100)) as u8),
            CENTURY => self.encode((t.year.div_euclid(100)).clamp(0, 99) as u8),
            _ => self.cmos[index],
        }
    }

    /// Whether the alarm matches the time at `second`.
    fn alarm_matches(&self, second: i64) -> bool {
        [
            (SECONDS_ALARM, SECONDS),
            (MINUTES_ALARM, MINUTES),
            (HOURS_ALARM, HOURS),
        ]
        .iter()
        .all(|&(alarm, field)| {
            let wanted = self.cmos[alarm];
            wanted & ALARM_DONT_CARE == ALARM_DONT_CARE || wanted == self.field(field, second)
        })
    }

    /// Sets the update and alarm flags for the seconds that began since
    /// the guest last looked.
    fn catch_up(&mut self) {
        if self.held.is_some() {
            return;
        }
        let now = self.second();
        if now <= self.flags_up_to {
            return;
        }
        let mut flags = REG_C_UF;
        // The alarm matches at least once a day if at all.
        let from = (self.flags_up_to + 1).max(now - DAY_S);
        if (from..=now).any(|second| self.alarm_matches(second)) {
            flags |= REG_C_AF;
        }
        self.flags_up_to = now;
        let new = flags & !self.cmos[REG_C];
        self.cmos[REG_C] |= flags;
        // PIE, AIE and UIE sit where PF, AF and UF do.
        if new & self.cmos[REG_B] != 0 {
            self.cmos[REG_C] |= REG_C_IRQF;
        }
    }

    fn update_in_progress(&self) -> bool {
        self.held.is_none() && self.cmos[REG_A] & REG_A_DIVIDER_MASK == REG_A_DIVIDER_RUNNING && {
            let into = self.guest_ns().rem_euclid(NS);
            !(UIP_AFTER_NS..NS - UIP_BEFORE_NS).contains(&into)
        }
    }

    /// How long until the alarm next fires with its interrupt enabled
    /// (the event that wakes a sleeping machine); `None` if it cannot.
    pub fn next_alarm(&self) -> Option<Duration> {
        if self.cmos[REG_B] & REG_B_AIE == 0 || self.held.is_some() {
            return None;
        }
        let now_ns = self.guest_ns();
        let now = now_ns.div_euclid(NS) as i64;
        let second = (now + 1..=now + DAY_S + 1).find(|&s| self.alarm_matches(s))?;
        let wait = i128::from(second) * NS - now_ns;
        Some(Duration::from_nanos(
            wait.clamp(0, i128::from(u64::MAX)) as u64
        ))
    }

    /// Starts the clock at Unix second `second` now.
    fn set_time(&mut self, second: i64) {
        self.offset_ns = i128::from(second) * NS - self.clock.now_ns();
        self.flags_up_to = second;
    }

    /// A write of a date or time register: applied at once, or when SET
    /// is cleared if it is set (QEMU's order).
    fn write_time(&mut self, index: usize, value: u8) {
        let second = self.held.unwrap_or_else(|| self.second());
        let mut t = Civil::from_unix(second);
        let decoded = self.decode(value);
        match index {
            SECONDS => t.second = decoded.min(59),
            MINUTES => t.minute = decoded.min(59),
            HOURS => t.hour = self.decode_hour(value).min(23),
            DAY_OF_MONTH => t.day = decoded.clamp(1, 31),
            MONTH => t.month = decoded.clamp(1, 12),
            YEAR => t.year = t.year.div_euclid(100) * 100 + i64::from(decoded.min(99)),
            CENTURY => t.year = i64::from(decoded.min(99)) * 100 + t.year.rem_euclid(100),
            // The day of the week follows from the date.
            _ => return,
        }
        let second = t.to_unix();
        match &mut self.held {
            Some(held) => *held = second,
            None => self.set_time(second),
        }
    }

    fn read_data(&mut self) -> u8 {
        let index = self.index;
        match index {
            SECONDS | MINUTES | HOURS | DAY_OF_WEEK | DAY_OF_MONTH | MONTH | YEAR | CENTURY => {
                self.field(index, self.second())
            }
            REG_A => {
                let uip = if self.update_in_progress() {
                    REG_A_UIP
                } else {
                    0
                };
                (self.cmos[REG_A] & !REG_A_UIP) | uip
            }
            REG_C => {
                self.catch_up();
                std::mem::take(&mut self.cmos[REG_C])
            }
            _ => self.cmos[index],
        }
    }

    fn write_data(&mut self, value: u8) {
        let index = self.index;
        match index {
            SECONDS | MINUTES | HOURS | DAY_OF_WEEK | DAY_OF_MONTH | MONTH | YEAR | CENTURY => {
                self.write_time(index, value)
            }
            REG_A => self.cmos[REG_A] = value & !REG_A_UIP,
            REG_B => {
                self.catch_up();
                let mut value = value;
                if value & REG_B_SET != 0 {
                    if self.held.is_none() {
                        self.held = Some(self.second());
                    }
                    // QEMU: no update interrupts while the clock is set.
                    value &= !REG_B_UIE;
                } else if let Some(second) = self.held.take() {
                    self.set_time(second);
                }
                self.cmos[REG_B] = value;
            }
            // Read-only.
            REG_C | REG_D => {}
            _ => self.cmos[index] = value,
        }
    }
}

impl Default for Rtc {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Rtc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rtc")
            .field("index", &self.index)
            .field("offset_ns", &self.offset_ns)
            .finish_non_exhaustive()
    }
}

impl BusDevice for Rtc {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let Some(first) = data.first_mut() else {
            return;
        };
        // The index port reads back as QEMU's does: 0xff.
        *first = if offset == 0 { 0xff } else { self.read_data() };
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Action {
        if let Some(&value) = data.first() {
            if offset == 0 {
                // Bit 7 masks NMIs on real hardware; the index is the rest.
                self.index = usize::from(value & 0x7f);
            } else {
                self.write_data(value);
            }
        }
        Action::Continue
    }
}

/// A UTC date and time broken down as the clock's registers hold it.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Civil {
    year: i64,
    month: u8,
    day: u8,
    hour: u8,
    minute: u8,
    second: u8,
    /// 1 (Sunday) to 7.
    weekday: u8,
}

impl Civil {
    /// Howard Hinnant's `civil_from_days`, the proleptic Gregorian
    /// calendar.
    fn from_unix(second: i64) -> Self {
        let days = second.div_euclid(DAY_S);
        let of_day = second.rem_euclid(DAY_S);
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u8;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
        let year = yoe + era * 400 + i64::from(month <= 2);
        Civil {
            year,
            month,
            day,
            hour: (of_day / 3600) as u8,
            minute: (of_day / 60 % 60) as u8,
            second: (of_day % 60) as u8,
            // 1970-01-01 was a Thursday.
            weekday: ((days + 4).rem_euclid(7) + 1) as u8,
        }
    }

    /// Hinnant's `days_from_civil`.
    fn to_unix(self) -> i64 {
        let (month, day) = (i64::from(self.month), i64::from(self.day));
        let year = self.year - i64::from(month <= 2);
        let era = year.div_euclid(400);
        let yoe = year.rem_euclid(400);
        let mp = (month + 9) % 12;
        let doy = (153 * mp + 2) / 5 + day - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        let days = era * 146_097 + doe - 719_468;
        days * DAY_S
            + i64::from(self.hour) * 3600
            + i64::from(self.minute) * 60
            + i64::from(self.second)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicI64, Ordering};

    /// A clock a test moves by hand (nanoseconds).
    #[derive(Clone, Default)]
    struct Manual(Arc<AtomicI64>);

    impl Clock for Manual {
        fn now_ns(&self) -> i128 {
            i128::from(self.0.load(Ordering::SeqCst))
        }
    }

    impl Manual {
        fn at(&self, ns: i64) {
            self.0.store(ns, Ordering::SeqCst);
        }
    }

    /// 2026-12-03 11:58:07 UTC, a Thursday.
    const WHEN: i64 = 1_796_299_087;

    fn rtc_at(ns: i64) -> (Rtc, Manual) {
        let clock = Manual::default();
        clock.at(ns);
        (Rtc::with_clock(Box::new(clock.clone())), clock)
    }

    fn get(rtc: &mut Rtc, index: u8) -> u8 {
        assert!(matches!(rtc.write(0, &[index]), Action::Continue));
        let mut b = [0u8];
        rtc.read(1, &mut b);
        b[0]
    }

    fn set(rtc: &mut Rtc, index: u8, value: u8) {
        assert!(matches!(rtc.write(0, &[index]), Action::Continue));
        assert!(matches!(rtc.write(1, &[value]), Action::Continue));
    }

    #[test]
    fn the_calendar_round_trips() {
        let t = Civil::from_unix(WHEN);
        assert_eq!(
            (
                t.year, t.month, t.day, t.hour, t.minute, t.second, t.weekday
            ),
            (2026, 12, 3, 11, 58, 7, 5)
        );
        for second in [
            0,
            WHEN,
            951_782_400, /* 2000-02-29 */
            -86_400,
            4_102_444_800,
        ] {
            assert_eq!(Civil::from_unix(second).to_unix(), second);
        }
        assert_eq!(Civil::from_unix(951_782_400).day, 29);
    }

    #[test]
    fn time_reads_in_bcd_then_binary_and_twelve_hour() {
        // Half a second in: no update in progress.
        let (mut rtc, _) = rtc_at(WHEN * 1_000_000_000 + 500_000_000);
        assert_eq!(get(&mut rtc, 0x00), 0x07);
        assert_eq!(get(&mut rtc, 0x02), 0x58);
        assert_eq!(get(&mut rtc, 0x04), 0x11);
        assert_eq!(get(&mut rtc, 0x07), 0x03);
        assert_eq!(get(&mut rtc, 0x08), 0x12);
        assert_eq!(get(&mut rtc, 0x09), 0x26);
        assert_eq!(get(&mut rtc, 0x32), 0x20);
        assert_eq!(get(&mut rtc, 0x0a), 0x26);
        assert_eq!(get(&mut rtc, 0x0d), 0x80);
        set(&mut rtc, 0x0b, REG_B_DM_BINARY);
        assert_eq!(get(&mut rtc, 0x02), 58);
        assert_eq!(get(&mut rtc, 0x04), 11, "11 AM in 12-hour mode");
        // Writing the hour moves the clock: 1 PM is 0x81 in 12-hour mode.
        set(&mut rtc, 0x04, 0x81);
        set(&mut rtc, 0x0b, REG_B_DM_BINARY | REG_B_24H);
        assert_eq!(get(&mut rtc, 0x04), 13);
        assert_eq!(get(&mut rtc, 0x02), 58, "the minutes stay");
    }

    #[test]
    fn uip_is_set_from_244_us_before_the_update_to_its_end() {
        let (mut rtc, clock) = rtc_at(WHEN * 1_000_000_000 + 500_000_000);
        assert_eq!(get(&mut rtc, 0x0a) & REG_A_UIP, 0);
        clock.at(WHEN * 1_000_000_000 + 999_700_000);
        assert_eq!(get(&mut rtc, 0x0a) & REG_A_UIP, 0);
        clock.at(WHEN * 1_000_000_000 + 999_800_000);
        assert_ne!(get(&mut rtc, 0x0a) & REG_A_UIP, 0);
        clock.at((WHEN + 1) * 1_000_000_000 + 1_900_000);
        assert_ne!(get(&mut rtc, 0x0a) & REG_A_UIP, 0);
        clock.at((WHEN + 1) * 1_000_000_000 + 2_000_000);
        assert_eq!(get(&mut rtc, 0x0a) & REG_A_UIP, 0);
        // Dividers held in reset: the clock does not update.
        set(&mut rtc, 0x0a, 0x66);
        clock.at(WHEN * 1_000_000_000 + 999_800_000);
        assert_eq!(get(&mut rtc, 0x0a), 0x66);
    }

    #[test]
    fn register_c_flags_the_update_and_the_alarm_and_clears_on_read() {
        let (mut rtc, clock) = rtc_at(WHEN * 1_000_000_000 + 100);
        assert_eq!(get(&mut rtc, 0x0c), 0, "no second has passed");
        // An alarm at 11:58:09 (BCD), interrupts for it enabled.
        set(&mut rtc, 0x01, 0x09);
        set(&mut rtc, 0x03, 0x58);
        set(&mut rtc, 0x05, 0x11);
        set(&mut rtc, 0x0b, REG_B_24H | REG_B_AIE);
        clock.at((WHEN + 1) * 1_000_000_000);
        assert_eq!(get(&mut rtc, 0x0c), REG_C_UF, "an update, no alarm");
        assert_eq!(get(&mut rtc, 0x0c), 0, "cleared by the read");
        clock.at((WHEN + 3) * 1_000_000_000);
        assert_eq!(get(&mut rtc, 0x0c), REG_C_IRQF | REG_C_AF | REG_C_UF);
    }

    #[test]
    fn the_next_alarm_is_when_the_time_matches() {
        let (mut rtc, clock) = rtc_at(WHEN * 1_000_000_000 + 250_000_000);
        for alarm in [0x01, 0x03, 0x05] {
            set(&mut rtc, alarm, ALARM_DONT_CARE);
        }
        assert_eq!(rtc.next_alarm(), None, "AIE is clear");
        set(&mut rtc, 0x0b, REG_B_24H | REG_B_AIE);
        // Every second: the next update, 750 ms away (KUT's s3 test).
        assert_eq!(rtc.next_alarm(), Some(Duration::from_millis(750)));
        // 11:59:00: 52.75 s away.
        set(&mut rtc, 0x01, 0x00);
        set(&mut rtc, 0x03, 0x59);
        assert_eq!(rtc.next_alarm(), Some(Duration::from_millis(52_750)));
        // 11:58:00 has passed today: tomorrow.
        set(&mut rtc, 0x03, 0x58);
        set(&mut rtc, 0x05, 0x11);
        clock.at(WHEN * 1_000_000_000);
        assert_eq!(
            rtc.next_alarm(),
            Some(Duration::from_secs(86_400 - 7)),
            "a day less the 7 s since"
        );
        // A time that never comes (BCD 0x99 seconds): no wake.
        set(&mut rtc, 0x01, 0x99);
        assert_eq!(rtc.next_alarm(), None);
    }

    #[test]
    fn set_holds_the_clock_until_cleared() {
        let (mut rtc, clock) = rtc_at(WHEN * 1_000_000_000);
        set(&mut rtc, 0x0b, REG_B_SET | REG_B_24H);
        set(&mut rtc, 0x00, 0x30);
        clock.at((WHEN + 5) * 1_000_000_000);
        assert_eq!(get(&mut rtc, 0x00), 0x30, "held");
        assert_eq!(get(&mut rtc, 0x0a) & REG_A_UIP, 0);
        set(&mut rtc, 0x0b, REG_B_24H);
        clock.at((WHEN + 7) * 1_000_000_000);
        assert_eq!(get(&mut rtc, 0x00), 0x32, "running from :30");
    }
}
