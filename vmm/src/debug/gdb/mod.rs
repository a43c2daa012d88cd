//! A GDB remote-protocol stub on the VM (QEMU's `-s`/`-S`/`-gdb`), built
//! on the `gdbstub` crate over `KVM_SET_GUEST_DEBUG`. When GDB connects,
//! every vCPU stops; each is a GDB thread. The guest's timeout does not run
//! while the debugger holds it. A detach clears the breakpoints and lets the
//! guest run on; GDB may connect again. The register file matches the
//! guest's symbol file ([`arch`]); a wire in front of `gdbstub` keeps
//! hostile input from ending the session ([`wire`]).

pub mod arch;
pub mod control;
pub mod int3;
pub mod monitor;
pub mod paging;
pub mod target;
pub mod wire;

use std::marker::PhantomData;
use std::net::TcpListener;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gdbstub::common::Signal;
use gdbstub::conn::ConnectionExt;
use gdbstub::stub::run_blocking::{BlockingEventLoop, Event, WaitForStopReasonError};
use gdbstub::stub::{DisconnectReason, GdbStub, MultiThreadStopReason};

use arch::RegisterFile;
use control::Control;
use target::GuestTarget;
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
        loop {
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
            control.wait_change(Duration::from_millis(10));
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
