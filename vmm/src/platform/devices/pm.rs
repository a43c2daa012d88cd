//! The ACPI PM1a event and control registers of the PIIX4 power management
//! block (ports 0x600-0x605, as in QEMU's `hw/acpi/core.c`): status bits
//! cleared by writing ones, enable bits, and the control register whose
//! SLP_EN bit puts the machine into the sleep state SLP_TYP names.
//!
//! The SLP_TYP values are those of the DSDT's `\_S3`, `\_S4` and `\_S5`
//! packages (QEMU's): 1 is S3 (suspend to RAM), 2 is S4 and 0 is S5 (both
//! power the machine off, as QEMU does); others are ignored. The device
//! only records the request: the vCPU that wrote it carries it out (see
//! `run::sleep`).

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ktvmm_testdevs::bus_device::{Action, BusDevice};

use super::rtc::Rtc;
use crate::platform::bus::lock;

/// The event block (status, enable) and the control register.
pub const LEN: u64 = 6;

/// PM1 status: the RTC alarm fired (a wake event).
pub const RTC_STS: u16 = 1 << 10;
/// PM1 status: the machine woke from a sleep state.
pub const WAK_STS: u16 = 1 << 15;
/// PM1 enable: the RTC alarm may wake the machine.
pub const RTC_EN: u16 = 1 << 10;
/// PM1 control: SCI_EN. With no SMI command port in the FADT, the machine
/// is always in ACPI mode and it reads as one.
const SCI_EN: u16 = 1;
/// PM1 control: write-only, starts the sleep.
pub const SLP_EN: u16 = 1 << 13;
const SLP_TYP_SHIFT: u16 = 10;
const SLP_TYP_MASK: u16 = 7 << SLP_TYP_SHIFT;

/// The SLP_TYP values of the DSDT's sleep packages.
pub mod slp_typ {
    /// `\_S5`: soft off.
    pub const S5: u8 = 0;
    /// `\_S3`: suspend to RAM.
    pub const S3: u8 = 1;
    /// `\_S4`: suspend to disk (to the machine, a power-off).
    pub const S4: u8 = 2;
}

/// A sleep state the guest asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SleepState {
    /// S3: the CPUs lose their state, RAM keeps it.
    SuspendToRam,
    /// S4 or S5: the machine powers off.
    Off(u8),
}

/// The request the control register leaves for the vCPUs: shared between
/// the device and the vCPU threads, read on every exit (one atomic load).
#[derive(Debug, Default)]
pub struct SleepRequest(AtomicU8);

const NO_REQUEST: u8 = 0xff;

impl SleepRequest {
    /// No request pending.
    pub fn new() -> Self {
        Self(AtomicU8::new(NO_REQUEST))
    }

    fn set(&self, typ: u8) {
        self.0.store(typ, Ordering::Release);
    }

    /// Whether a request is pending.
    pub fn pending(&self) -> bool {
        self.0.load(Ordering::Acquire) != NO_REQUEST
    }

    /// The pending request, taken by the one thread that carries it out.
    pub fn take(&self) -> Option<SleepState> {
        match self.0.swap(NO_REQUEST, Ordering::AcqRel) {
            NO_REQUEST => None,
            slp_typ::S3 => Some(SleepState::SuspendToRam),
            other => Some(SleepState::Off(other)),
        }
    }
}

/// PM1a status, enable and control.
#[derive(Debug)]
pub struct Pm1 {
    status: u16,
    enable: u16,
    control: u16,
    request: Arc<SleepRequest>,
}

impl Pm1 {
    /// The registers as at power-on; sleep requests go to `request`.
    pub fn new(request: Arc<SleepRequest>) -> Self {
        Self {
            status: 0,
            enable: 0,
            control: SCI_EN,
            request,
        }
    }

    /// Whether the RTC alarm may wake the machine (RTC_EN).
    pub fn rtc_wake_enabled(&self) -> bool {
        self.enable & RTC_EN != 0
    }

    /// The machine woke up because of the RTC alarm: WAK_STS and RTC_STS,
    /// as QEMU's `acpi_notify_wakeup` sets them.
    pub fn woke_by_rtc(&mut self) {
        self.status |= WAK_STS | RTC_STS;
    }

    fn registers(&self) -> [u8; 6] {
        let mut bytes = [0u8; 6];
        bytes[0..2].copy_from_slice(&self.status.to_le_bytes());
        bytes[2..4].copy_from_slice(&self.enable.to_le_bytes());
        bytes[4..6].copy_from_slice(&self.control.to_le_bytes());
        bytes
    }

    fn write_control(&mut self, value: u16) {
        self.control = (value & !SLP_EN) | SCI_EN;
        if value & SLP_EN == 0 {
            return;
        }
        let typ = ((value & SLP_TYP_MASK) >> SLP_TYP_SHIFT) as u8;
        match typ {
            slp_typ::S3 | slp_typ::S4 | slp_typ::S5 => self.request.set(typ),
            other => log::debug!("PM1 control: SLP_EN with SLP_TYP {other}, no such state"),
        }
    }
}

impl BusDevice for Pm1 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let registers = self.registers();
        let from = (offset as usize).min(registers.len());
        for (d, r) in data.iter_mut().zip(&registers[from..]) {
            *d = *r;
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Action {
        // Each 16-bit register a write touches gets the bytes written and
        // keeps the others.
        let mut bytes = self.registers();
        let from = (offset as usize).min(bytes.len());
        let written: Vec<usize> = (from..bytes.len()).take(data.len()).collect();
        for (&at, &value) in written.iter().zip(data) {
            bytes[at] = value;
        }
        let word = |at: usize| u16::from_le_bytes([bytes[at], bytes[at + 1]]);
        let touched = |register: usize| written.iter().any(|&at| at / 2 == register);
        if touched(0) {
            // Write-one-to-clear, only the bytes written.
            let mut mask = [0u8; 2];
            for &at in written.iter().filter(|&&at| at < 2) {
                mask[at] = bytes[at];
            }
            self.status &= !u16::from_le_bytes(mask);
        }
        if touched(1) {
            self.enable = word(2);
        }
        if touched(2) {
            self.write_control(word(4));
        }
        Action::Continue
    }
}

/// What sleeps and what wakes the machine: the sleep request, and the
/// wake events (the RTC alarm, if PM1 enables it).
#[derive(Debug)]
pub struct Power {
    /// The guest's request, from the control register.
    pub request: Arc<SleepRequest>,
    pm1: Arc<Mutex<Pm1>>,
    rtc: Arc<Mutex<Rtc>>,
}

impl Power {
    /// The sleep and wake logic of these two devices.
    pub fn new(request: Arc<SleepRequest>, pm1: Arc<Mutex<Pm1>>, rtc: Arc<Mutex<Rtc>>) -> Self {
        Self { request, pm1, rtc }
    }

    /// How long until a wake event arrives, for a machine going to sleep
    /// now; `None` when none is armed (the RTC alarm needs its interrupt
    /// enabled in register B and RTC_EN in PM1, as QEMU's wake-up does).
    pub fn wake_delay(&self) -> Option<Duration> {
        if !lock(&self.pm1).rtc_wake_enabled() {
            return None;
        }
        lock(&self.rtc).next_alarm()
    }

    /// The wake event arrived: PM1 status says so.
    pub fn woke(&self) {
        lock(&self.pm1).woke_by_rtc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pm() -> (Pm1, Arc<SleepRequest>) {
        let request = Arc::new(SleepRequest::new());
        (Pm1::new(request.clone()), request)
    }

    fn put(pm: &mut Pm1, offset: u64, data: &[u8]) {
        assert!(matches!(pm.write(offset, data), Action::Continue));
    }

    fn read16(pm: &mut Pm1, offset: u64) -> u16 {
        let mut b = [0u8; 2];
        pm.read(offset, &mut b);
        u16::from_le_bytes(b)
    }

    #[test]
    fn status_bits_clear_by_writing_ones_and_enable_bits_stick() {
        let (mut pm, _) = pm();
        pm.woke_by_rtc();
        assert_eq!(read16(&mut pm, 0), WAK_STS | RTC_STS);
        put(&mut pm, 0, &RTC_STS.to_le_bytes());
        assert_eq!(read16(&mut pm, 0), WAK_STS);
        // A byte write to the enable register (KUT writes the word).
        put(&mut pm, 3, &[0x04]);
        assert!(pm.rtc_wake_enabled());
        assert_eq!(read16(&mut pm, 2), RTC_EN);
        // A 32-bit write covers status and enable at once.
        put(&mut pm, 0, &[0, 0x80, 0, 0]);
        assert_eq!(read16(&mut pm, 0), 0);
        assert!(!pm.rtc_wake_enabled());
    }

    #[test]
    fn slp_en_requests_the_state_slp_typ_names() {
        let (mut pm, request) = pm();
        assert_eq!(read16(&mut pm, 4), SCI_EN);
        put(&mut pm, 4, &(1u16 << SLP_TYP_SHIFT).to_le_bytes());
        assert!(!request.pending(), "no SLP_EN, no sleep");
        // KUT's s3 test: outw 0x2400.
        put(&mut pm, 4, &0x2400u16.to_le_bytes());
        assert_eq!(request.take(), Some(SleepState::SuspendToRam));
        assert_eq!(request.take(), None, "taken once");
        assert_eq!(read16(&mut pm, 4) & SLP_EN, 0, "SLP_EN reads as zero");
        put(&mut pm, 4, &0x2000u16.to_le_bytes());
        assert_eq!(request.take(), Some(SleepState::Off(slp_typ::S5)));
        put(&mut pm, 5, &[0x28]);
        assert_eq!(request.take(), Some(SleepState::Off(slp_typ::S4)));
        put(&mut pm, 4, &0x3c00u16.to_le_bytes());
        assert_eq!(request.take(), None, "SLP_TYP 7 is no state");
    }
}
