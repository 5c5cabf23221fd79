//! The fork server: a small single-threaded process, forked by [`init`] while the application
//! is still single-threaded, that forks every worker on request over one `SOCK_SEQPACKET` link,
//! one reply per request under a lock that every pool shares: `Spawn` (the worker's socket
//! attached as `SCM_RIGHTS`) forks a worker, `Reap` waits for one that is exiting and says how
//! it ended. When the application dies, the server sees its link end (and gets `SIGKILL` from
//! `PR_SET_PDEATHSIG`), kills its workers and exits.

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use nix::sys::socket::{
    AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, recvmsg,
    sendmsg, socketpair,
};
use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;

use crate::error::{BuildError, BuildErrorKind, WorkerExit};
use crate::process_pool::wire::{ServerReply, ServerRequest};
use crate::process_pool::worker;
use crate::process_pool::worker::Claims;
use crate::sys::{self, ChildGuard, Forked};

/// The parent's link to the fork server, once started.
static SERVER: OnceLock<ServerLink> = OnceLock::new();

/// Starts the fork server that process pools fork their workers from. Call it first thing in
/// `main`, before anything starts a thread.
///
/// Forking a process that runs several threads is unsafe: the child inherits locks (stdout,
/// the allocator, loggers) held by threads that do not exist in it, and may hang on them
/// forever. So every worker is forked from a small server process that `init` forks while the
/// program still has one thread. Calling `init` again does nothing. If the process already runs
/// other threads, `init` does nothing either, and [`ProcessPool::new`](crate::ProcessPool::new)
/// will say so.
///
/// Test binaries do not own `main`: start the server before the test harness starts its
/// threads with one line at the top level of the test file, which runs `init` from a
/// constructor function (see [`init_for_tests!`](crate::init_for_tests)):
///
/// ```ignore
/// smol_offload::init_for_tests!();
/// ```
///
/// # Examples
///
/// ```no_run
/// use smol_offload::{Executor, ProcessPool};
///
/// fn main() -> Result<(), Box<dyn std::error::Error>> {
///     smol_offload::init();
///     let pool = ProcessPool::new(2)?;
///     let pid = smol::block_on(pool.run(|()| std::process::id(), ()))?;
///     assert_ne!(pid, std::process::id());
///     Ok(())
/// }
/// ```
pub fn init() {
    let _ = link_or_start();
}

/// The link to the server, started now if the process is still single-threaded.
pub(crate) fn link_or_start() -> Result<&'static ServerLink, BuildError> {
    if let Some(link) = SERVER.get() {
        return Ok(link);
    }
    let threads = sys::thread_count().map_err(|source| {
        BuildError::new(BuildErrorKind::Io {
            doing: "count the threads of this process",
            source,
        })
    })?;
    if threads != 1 {
        return Err(BuildError::new(BuildErrorKind::NeedsInit { threads }));
    }
    // One thread: nothing can race with this start.
    let link = ServerLink::start().map_err(|source| {
        BuildError::new(BuildErrorKind::Io {
            doing: "start the fork server",
            source,
        })
    })?;
    Ok(SERVER.get_or_init(|| link))
}

/// The parent's end of the link to the fork server.
#[derive(Debug)]
pub(crate) struct ServerLink {
    socket: Mutex<OwnedFd>,
    /// Set once the server is known to be gone: every later request fails at once.
    gone: AtomicBool,
    /// The socket's descriptor, to shut it down at exit without taking the lock.
    raw: std::os::fd::RawFd,
    pid: u32,
}

/// At a normal exit, ends the link so the server kills and reaps its workers and exits, then
/// reaps the server: the application leaves no process behind, not even a zombie for init.
extern "C" fn stop_server_at_exit() {
    if let Some(link) = SERVER.get() {
        // Other threads may still hold the lock: shut the socket down under them instead.
        let _ = nix::sys::socket::shutdown(link.raw, nix::sys::socket::Shutdown::Both);
        let _ = nix::sys::wait::waitpid(Pid::from_raw(link.pid as i32), None);
    }
}

impl ServerLink {
    fn start() -> io::Result<ServerLink> {
        let (parent_end, server_end) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )?;
        let application = std::process::id();
        // What the server has, every worker has: a call into code loaded later is refused.
        sys::remember_code_of_workers();
        match sys::fork()? {
            Forked::Parent(pid) => {
                drop(server_end);
                // Best effort: without it, the server is reaped by init instead.
                let _ = sys::at_exit(stop_server_at_exit);
                let raw = parent_end.as_raw_fd();
                Ok(ServerLink {
                    socket: Mutex::new(parent_end),
                    gone: AtomicBool::new(false),
                    raw,
                    pid,
                })
            }
            Forked::Child => {
                let _guard = ChildGuard;
                drop(parent_end);
                serve(server_end, application)
            }
        }
    }

    /// Waits for worker `pid` and says how it ended. The server waits in `waitpid`, holding the
    /// link that every pool shares: ask only for a worker known to have exited (its pidfd is
    /// readable) or that was just killed.
    pub(crate) fn reap(&self, pid: u32) -> io::Result<WorkerExit> {
        match self.request(&ServerRequest::Reap { pid }, &[])? {
            ServerReply::Exited { pid: reaped, code } if reaped == pid => {
                Ok(WorkerExit::Code(code))
            }
            ServerReply::Killed {
                pid: reaped,
                signal,
            } if reaped == pid => Ok(WorkerExit::Signal(signal)),
            ServerReply::Failed { errno } => Err(io::Error::from_raw_os_error(errno)),
            other => Err(unexpected(&other)),
        }
    }

    fn request(&self, request: &ServerRequest, fds: &[BorrowedFd<'_>]) -> io::Result<ServerReply> {
        let socket = self.socket.lock().unwrap_or_else(PoisonError::into_inner);
        if self.gone.load(Ordering::Relaxed) {
            return Err(server_gone());
        }
        let sent = send_message(socket.as_fd(), request, fds);
        let reply = sent.and_then(|()| receive_message(socket.as_fd()));
        match reply {
            Ok(Some((reply, _))) => Ok(reply),
            // The end of the link, or a link the other end reset: the server died.
            Ok(None) => Err(self.mark_gone()),
            Err(err) => match err.raw_os_error() {
                Some(libc::EPIPE | libc::ECONNRESET | libc::ENOTCONN) => Err(self.mark_gone()),
                _ => Err(err),
            },
        }
    }

    fn mark_gone(&self) -> io::Error {
        self.gone.store(true, Ordering::Relaxed);
        server_gone()
    }
}

/// The error of every request once the fork server is gone. The server cannot be started
/// again: the application runs threads by now, and only a single-threaded process may fork.
fn server_gone() -> io::Error {
    io::Error::new(
        io::ErrorKind::BrokenPipe,
        "the fork server is gone (it was killed or exited), so no process pool of this \
         program can fork workers any more; restart the program",
    )
}

fn unexpected(reply: &ServerReply) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("unexpected fork server reply {reply:?}"),
    )
}

fn send_message<T: serde::Serialize>(
    socket: BorrowedFd<'_>,
    message: &T,
    fds: &[BorrowedFd<'_>],
) -> io::Result<()> {
    let bytes = postcard::to_allocvec(message).map_err(io::Error::other)?;
    let raw_fds: Vec<_> = fds.iter().map(|fd| fd.as_raw_fd()).collect();
    let rights = [ControlMessage::ScmRights(&raw_fds)];
    let cmsgs: &[ControlMessage<'_>] = if raw_fds.is_empty() { &[] } else { &rights };
    sendmsg::<()>(
        socket.as_raw_fd(),
        &[IoSlice::new(&bytes)],
        cmsgs,
        MsgFlags::MSG_NOSIGNAL,
        None,
    )?;
    Ok(())
}

/// Receives one message and the descriptors attached to it (at most two); `None` at end of
/// stream.
fn receive_message<T: serde::de::DeserializeOwned>(
    socket: BorrowedFd<'_>,
) -> io::Result<Option<(T, Vec<OwnedFd>)>> {
    let mut bytes = [0u8; 64];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 2]);
    let (len, fds) = loop {
        let mut iov = [IoSliceMut::new(&mut bytes)];
        match recvmsg::<()>(
            socket.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(message) => {
                let mut fds = Vec::new();
                // Truncated control data (this process is out of descriptors, say) brings no
                // descriptor: the request is answered with an error, and the link stays.
                for cmsg in message.cmsgs().into_iter().flatten() {
                    if let ControlMessageOwned::ScmRights(raw_fds) = cmsg {
                        fds.extend(raw_fds.into_iter().map(sys::own_received_fd));
                    }
                }
                break (message.bytes, fds);
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(err) => return Err(err.into()),
        }
    };
    if len == 0 {
        return Ok(None);
    }
    let message = postcard::from_bytes(&bytes[..len])
        .map_err(|err| io::Error::new(io::ErrorKind::InvalidData, err))?;
    Ok(Some((message, fds)))
}

/// The server's loop, in the forked server process; never returns.
fn serve(socket: OwnedFd, application: u32) -> ! {
    if sys::die_with_parent(application).is_err() || sys::ignore_interrupts().is_err() {
        sys::exit_child(1);
    }
    sys::set_process_name(c"smol-offload-fs");
    let server = std::process::id();
    let mut workers: Vec<u32> = Vec::new();
    loop {
        let (request, fds) = match receive_message::<ServerRequest>(socket.as_fd()) {
            Ok(Some(message)) => message,
            // The application closed the link or died.
            Ok(None) | Err(_) => break,
        };
        // A spawn brings the worker's socket and its claim word, in that order.
        let reply = match (request, <[OwnedFd; 2]>::try_from(fds)) {
            (ServerRequest::Spawn, Ok([worker_socket, claims])) => match sys::fork() {
                Ok(Forked::Parent(pid)) => {
                    // The worker does it too: whichever runs first, the group exists before
                    // the parent learns the pid.
                    let _ = sys::lead_own_group(pid);
                    workers.push(pid);
                    ServerReply::Spawned { pid }
                }
                Ok(Forked::Child) => {
                    drop(socket);
                    worker::serve(worker_socket, claims, server)
                }
                Err(err) => ServerReply::Failed {
                    errno: err.raw_os_error().unwrap_or(libc::EIO),
                },
            },
            // The parent always attaches both: the server could not take them (it is out of
            // descriptors).
            (ServerRequest::Spawn, Err(_)) => ServerReply::Failed {
                errno: libc::EMFILE,
            },
            (ServerRequest::Reap { pid }, _) => {
                workers.retain(|&worker| worker != pid);
                reap(pid)
            }
        };
        if send_message(socket.as_fd(), &reply, &[]).is_err() {
            break;
        }
    }
    for pid in workers {
        // Not reaped yet, so the pid and its group are still this worker's.
        sys::kill_worker_group(pid);
        let _ = reap(pid);
    }
    sys::exit_child(0)
}

/// Waits for child `pid` to exit and says how it did.
fn reap(pid: u32) -> ServerReply {
    loop {
        match nix::sys::wait::waitpid(Pid::from_raw(pid as i32), None) {
            Ok(WaitStatus::Exited(_, code)) => return ServerReply::Exited { pid, code },
            Ok(WaitStatus::Signaled(_, signal, _)) => {
                return ServerReply::Killed {
                    pid,
                    signal: signal as i32,
                };
            }
            Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
            Err(errno) => {
                return ServerReply::Failed {
                    errno: errno as i32,
                };
            }
        }
    }
}

/// A worker just forked: its pid, the parent's end of its socket, its claim word, and its
/// pidfd.
#[derive(Debug)]
pub(crate) struct Spawned {
    pub(crate) pid: u32,
    pub(crate) stream: UnixStream,
    pub(crate) claims: Claims,
    /// Readable once the worker has exited (see [`sys::pidfd_open`]).
    pub(crate) pidfd: Arc<OwnedFd>,
}

/// Creates a new worker's socket pair and claim word, forks the worker on the server with the
/// worker's ends, and opens its pidfd.
pub(crate) fn spawn_worker(link: &ServerLink) -> io::Result<Spawned> {
    let (parent_end, worker_end) = socketpair(
        AddressFamily::Unix,
        SockType::Stream,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?;
    let (claims, claims_fd) = Claims::create()?;
    let fds = [worker_end.as_fd(), claims_fd.as_fd()];
    let pid = match link.request(&ServerRequest::Spawn, &fds)? {
        ServerReply::Spawned { pid } => pid,
        ServerReply::Failed { errno } => return Err(io::Error::from_raw_os_error(errno)),
        other => return Err(unexpected(&other)),
    };
    drop(worker_end);
    drop(claims_fd);
    // The server reaps a worker only when asked to, so `pid` is still this worker.
    match sys::pidfd_open(pid) {
        Ok(pidfd) => Ok(Spawned {
            pid,
            stream: UnixStream::from(parent_end),
            claims,
            pidfd: Arc::new(pidfd),
        }),
        Err(err) => {
            // Killed first, so the reap does not wait.
            sys::kill_worker_group(pid);
            let _ = link.reap(pid);
            Err(err)
        }
    }
}
