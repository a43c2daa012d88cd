//! A spinlock that also masks interrupts on the CPU holding it.
//!
//! Masking interrupts while the lock is held means an interrupt handler on
//! the same CPU can take the same lock (to print, for example) without
//! deadlocking against the code it interrupted.

use core::cell::UnsafeCell;
use core::ops::{Deref, DerefMut};
use core::sync::atomic::{AtomicBool, Ordering};

use crate::x86;

/// A mutual-exclusion lock for data shared between CPUs.
pub struct Spinlock<T> {
    locked: AtomicBool,
    value: UnsafeCell<T>,
}

// SAFETY: the lock hands out at most one reference to the value at a time,
// so sharing the lock between CPUs only ever moves `T` between them.
unsafe impl<T: Send> Sync for Spinlock<T> {}

impl<T> Spinlock<T> {
    /// A new, unlocked lock around `value`.
    pub const fn new(value: T) -> Self {
        Self {
            locked: AtomicBool::new(false),
            value: UnsafeCell::new(value),
        }
    }

    /// Takes the lock, spinning while another CPU holds it.
    pub fn lock(&self) -> SpinlockGuard<'_, T> {
        let interrupts_were_enabled = x86::interrupts_enabled();
        x86::disable_interrupts();
        while self
            .locked
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            while self.locked.load(Ordering::Relaxed) {
                x86::pause();
            }
        }
        SpinlockGuard {
            lock: self,
            interrupts_were_enabled,
        }
    }

    /// Takes the lock if it is free.
    pub fn try_lock(&self) -> Option<SpinlockGuard<'_, T>> {
        let interrupts_were_enabled = x86::interrupts_enabled();
        x86::disable_interrupts();
        if self
            .locked
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
        {
            Some(SpinlockGuard {
                lock: self,
                interrupts_were_enabled,
            })
        } else {
            if interrupts_were_enabled {
                x86::enable_interrupts();
            }
            None
        }
    }

    /// Takes the lock, or gives up after about `spins` attempts and returns
    /// a guard anyway. Only for the last words of a dying guest, where
    /// garbled output beats a deadlock against a holder that faulted.
    pub(crate) fn lock_or_steal(&self, spins: u32) -> SpinlockGuard<'_, T> {
        for _ in 0..spins {
            if let Some(guard) = self.try_lock() {
                return guard;
            }
            x86::pause();
        }
        x86::disable_interrupts();
        self.locked.swap(true, Ordering::Acquire);
        SpinlockGuard {
            lock: self,
            interrupts_were_enabled: false,
        }
    }
}

/// Access to the value of a locked [`Spinlock`]; unlocks when dropped.
pub struct SpinlockGuard<'a, T> {
    lock: &'a Spinlock<T>,
    interrupts_were_enabled: bool,
}

impl<T> Deref for SpinlockGuard<'_, T> {
    type Target = T;

    fn deref(&self) -> &T {
        // SAFETY: the guard proves this CPU holds the lock.
        unsafe { &*self.lock.value.get() }
    }
}

impl<T> DerefMut for SpinlockGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: the guard proves this CPU holds the lock, and `&mut self`
        // that this is the only reference derived from it.
        unsafe { &mut *self.lock.value.get() }
    }
}

impl<T> Drop for SpinlockGuard<'_, T> {
    fn drop(&mut self) {
        self.lock.locked.store(false, Ordering::Release);
        if self.interrupts_were_enabled {
            x86::enable_interrupts();
        }
    }
}
