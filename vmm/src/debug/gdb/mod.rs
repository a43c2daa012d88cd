//! A GDB remote-protocol stub on the VM (QEMU's `-s`/`-S`/`-gdb`), built
//! on the `gdbstub` crate over `KVM_SET_GUEST_DEBUG`. When GDB connects,
//! every vCPU stops; each is a GDB thread. The guest's timeout does not run
//! while the debugger holds it. A detach clears the breakpoints and lets the
//! guest run on; GDB may connect again. The register file matches the
//! guest's symbol file ([`arch`]); a wire in front of `gdbstub` keeps
//! hostile input from ending the session ([`wire`]).
//!
//! While the guest runs, the stub waits for two things at once: a byte
//! from GDB (a packet, or Ctrl-C) and a stop from the vCPU threads (a debug
//! exit, or the end of the run), which [`control::Control`] signals on an
//! eventfd. rust-vmm's `event-manager` waits on both file descriptors, so
//! the stub sleeps until one of them is ready rather than polling.

pub mod arch;
pub mod control;
pub mod int3;
pub mod monitor;
pub mod paging;
pub mod target;
pub mod wire;

use std::marker::PhantomData;
use std::net::TcpListener;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use gdbstub::common::Signal;
use gdbstub::conn::ConnectionExt;
use gdbstub::stub::run_blocking::{BlockingEventLoop, Event, WaitForStopReasonError};
use gdbstub::stub::{DisconnectReason, GdbStub, MultiThreadStopReason};

use arch::RegisterFile;
use control::Control;
use target::GuestTarget;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};
use wire::Wire;

/// What the stub thread needs from the run.
pub struct Session {
    /// Where GDB connects.
    pub listener: TcpListener,
    /// The vCPU threads' parking.
    pub control: Arc<Control>,
    /// Guest RAM.
    pub memory: crate::memory::GuestMemory,
    /// vCPU count.
    pub vcpus: usize,
    /// The guest's exit code once the run is over (for GDB's `W` packet).
    pub exit_code: Arc<Mutex<Option<u8>>>,
    /// The registers GDB is shown, to match the symbol file it loads.
    pub registers: RegisterFile,
}

/// Serves GDB connections until the run is over.
pub fn serve(session: Session) {
    let Session {
        listener,
        control,
        memory,
        vcpus,
        exit_code,
        registers,
    } = session;
    let waker = match EventFd::new(EFD_NONBLOCK) {
        Ok(waker) => Arc::new(waker),
        Err(e) => {
            log::warn!("gdb: cannot create an eventfd: {e}");
            return;
        }
    };
    control.set_waker(waker);
    while !control.finished() {
        let stream = match listener.accept() {
            Ok((stream, peer)) => {
                log::info!("gdb: debugger connected from {peer}");
                stream
            }
            Err(e) => {
                log::warn!("gdb: accept failed: {e}");
                return;
            }
        };
        let _ = stream.set_nodelay(true);
        let physical = Arc::new(AtomicBool::new(false));
        let mut target = GuestTarget::new(
            control.clone(),
            memory.clone(),
            vcpus,
            exit_code.clone(),
            registers,
            physical.clone(),
        );
        if !target.stop_world() {
            return;
        }
        let mut wire = Wire::new(stream, physical);
        loop {
            let stub = GdbStub::builder(&mut wire)
                .packet_buffer_size(wire::PACKET_SIZE)
                .build();
            let stub = match stub {
                Ok(stub) => stub,
                Err(e) => {
                    log::warn!("gdb: cannot start the stub: {e}");
                    break;
                }
            };
            // A bug in the stub must not leave the guest held for ever.
            let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                stub.run_blocking::<StubLoop>(&mut target)
            }));
            let Ok(result) = ran else {
                log::error!("gdb: the stub failed; the session is over and the guest runs on");
                break;
            };
            match result {
                Ok(DisconnectReason::Disconnect) => {
                    log::info!("gdb: detached; the guest runs on");
                }
                Ok(reason) => log::info!("gdb: session over ({reason:?})"),
                Err(e) if e.is_connection_error() => log::info!("gdb: connection gone: {e}"),
                Err(e) => {
                    // A packet gdbstub could not take: it is refused, the
                    // guest stays held, and the session goes on.
                    log::warn!("gdb: refused a packet ({e}); the session goes on");
                    if !target.stop_world() {
                        break;
                    }
                    wire.recover();
                    continue;
                }
            }
            break;
        }
        target.detach();
    }
}

struct StubLoop<'w>(PhantomData<&'w mut Wire>);

impl<'w> BlockingEventLoop for StubLoop<'w> {
    type Target = GuestTarget;
    type Connection = &'w mut Wire;
    type StopReason = MultiThreadStopReason<u64>;

    fn wait_for_stop_reason(
        target: &mut GuestTarget,
        conn: &mut &'w mut Wire,
    ) -> Result<Event<Self::StopReason>, WaitForStopReasonError<&'static str, std::io::Error>> {
        let control = target.control();
        let mut ready =
            Ready::new(conn.as_raw_fd(), &control).map_err(WaitForStopReasonError::Connection)?;
        loop {
            // What GDB already sent first, as gdbstub expects (the wire
            // may hold a whole packet the socket no longer shows); then
            // whatever the vCPUs did; then sleep until either changes.
            if conn
                .peek()
                .map_err(WaitForStopReasonError::Connection)?
                .is_some()
            {
                let byte = conn.read().map_err(WaitForStopReasonError::Connection)?;
                return Ok(Event::IncomingData(byte));
            }
            if let Some((cpu, event)) = control.next_event() {
                // The rest of the world stops too before GDB looks.
                target.stop_world();
                return Ok(Event::TargetStopped(target.stop_reason(cpu, event)));
            }
            if control.finished() {
                return Ok(Event::TargetStopped(MultiThreadStopReason::Exited(
                    target.exit_code(),
                )));
            }
            ready
                .wait(true)
                .map_err(WaitForStopReasonError::Connection)?;
        }
    }

    fn on_interrupt(target: &mut GuestTarget) -> Result<Option<Self::StopReason>, &'static str> {
        target.stop_world();
        Ok(Some(MultiThreadStopReason::SignalWithThread {
            tid: gdbstub::common::Tid::new(1).expect("1 is not 0"),
            signal: Signal::SIGINT,
        }))
    }
}

/// The stub's wait: GDB's socket and the vCPUs' waker in one epoll set.
struct Ready {
    events: EventManager<Watch>,
    id: event_manager::SubscriberId,
}

/// What the wait watches, and what it saw.
struct Watch {
    socket: RawFd,
    waker: Arc<EventFd>,
    readable: bool,
    /// Why a file descriptor could not be watched, if one could not.
    refused: Option<event_manager::Error>,
}

impl MutEventSubscriber for Watch {
    fn init(&mut self, ops: &mut EventOps) {
        let socket = ops.add(Events::new_raw(self.socket, EventSet::IN));
        let waker = ops.add(Events::new(&*self.waker, EventSet::IN));
        self.refused = socket.and(waker).err();
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if events.fd() == self.socket {
            self.readable = true;
        } else {
            // Drained: the vCPUs' news is read from Control itself.
            let _ = self.waker.read();
        }
    }
}

impl Ready {
    fn new(socket: RawFd, control: &Control) -> std::io::Result<Ready> {
        let waker = control
            .waker()
            .ok_or_else(|| std::io::Error::other("no waker for the vCPUs' stops"))?;
        let mut events = EventManager::new().map_err(std::io::Error::other)?;
        let id = events.add_subscriber(Watch {
            socket,
            waker,
            readable: false,
            refused: None,
        });
        let mut ready = Ready { events, id };
        if let Some(e) = ready.watch()?.refused.take() {
            return Err(std::io::Error::other(e));
        }
        Ok(ready)
    }

    fn watch(&mut self) -> std::io::Result<&mut Watch> {
        self.events
            .subscriber_mut(self.id)
            .map_err(std::io::Error::other)
    }

    /// Whether GDB's socket has data (or was closed: reading says which);
    /// with `block`, first sleeps until it has or the vCPUs wake the stub.
    fn wait(&mut self, block: bool) -> std::io::Result<bool> {
        self.events
            .run_with_timeout(if block { -1 } else { 0 })
            .map_err(std::io::Error::other)?;
        Ok(std::mem::take(&mut self.watch()?.readable))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};

    #[test]
    fn the_wait_wakes_for_gdb_and_for_the_vcpus() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut gdb = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (conn, _) = listener.accept().unwrap();
        let control = Control::new(1, false);
        assert!(
            Ready::new(conn.as_raw_fd(), &control).is_err(),
            "no waker, no wait"
        );
        control.set_waker(Arc::new(EventFd::new(EFD_NONBLOCK).unwrap()));
        let mut ready = Ready::new(conn.as_raw_fd(), &control).unwrap();
        assert!(!ready.wait(false).unwrap(), "nothing yet");

        // A stop from a vCPU thread ends a blocking wait (the socket is
        // still quiet), and is drained by it.
        let vcpus = std::thread::spawn({
            let control = Arc::new(control);
            move || {
                std::thread::sleep(std::time::Duration::from_millis(50));
                control.report(
                    0,
                    control::StopEvent::Debug {
                        exception: 3,
                        dr6: 0,
                    },
                );
                control
            }
        });
        assert!(!ready.wait(true).unwrap());
        let control = vcpus.join().unwrap();
        assert!(control.next_event().is_some());
        assert!(!ready.wait(false).unwrap(), "the wake was drained");

        gdb.write_all(b"\x03").unwrap();
        assert!(ready.wait(true).unwrap(), "GDB's byte");
        let mut byte = [0];
        (&conn).read_exact(&mut byte).unwrap();
        assert_eq!(byte, [3]);
        control.finish();
        assert!(!ready.wait(true).unwrap(), "the end of the run wakes it");
    }
}
