//! A run's network: a namespace of its own, connected to the outside by `slirp4netns`.
//!
//! Every sandbox gets a network namespace (`bwrap --unshare-net`). With the network on, Gantry
//! attaches `slirp4netns` to it: user-mode networking, so a step's connections leave from
//! Gantry's host as ordinary sockets, and the namespace sees only a tap device (10.0.2.100,
//! gateway 10.0.2.2, DNS 10.0.2.3). What a step must not reach is kept out three ways:
//! - the host's loopback: `--disable-host-loopback` (the gateway does not lead to 127.0.0.1),
//!   and the namespace's own 127.0.0.1 is a different loopback;
//! - link-local addresses (169.254.0.0/16: cloud metadata endpoints) and the host's own
//!   addresses: `prohibit` routes in the namespace, added over netlink by a child of Gantry that
//!   entered it (through the sandbox's user namespace when Gantry is not root);
//! - the host's ports an operator names (`[executor.local] host_ports`) are the exception: the
//!   spawner listens on them on the namespace's 127.0.0.1 and hands each connection to Gantry,
//!   which connects it to the same port on the host's 127.0.0.1 (`proxy`).
//!
//! `slirp4netns` gets the write end of no pipe but the read end of the "exit" pipe, whose write
//! end the run's `Jail` holds: it ends with the run, or with Gantry (kill -9 included).

use std::fs::File;
use std::io::{self, Read};
use std::net::{IpAddr, Ipv4Addr, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// The package that connects a run's namespace, and how to get it.
pub const MISSING: &str = "steps with the network on need slirp4netns, which gives each run a network of its own away from the host's loopback (Debian/Ubuntu: `apt-get install slirp4netns`; Fedora: `dnf install slirp4netns`); install it, or turn the network off for this pipeline with `sandbox: {network: false}`";

/// The resolver steps use: slirp4netns's DNS forwarder, which asks the host's own resolvers.
pub const RESOLV_CONF: &str = "nameserver 10.0.2.3\n";

/// A run's connection to the outside; dropping it ends `slirp4netns`.
pub(super) struct RunNet {
    _exit: OwnedFd,
}

/// Reads bubblewrap's `--info-fd` answer (`{"child-pid": N, …}`) and returns the pid.
pub(super) fn child_pid(info: OwnedFd) -> Result<u32, String> {
    let mut text = Vec::new();
    let mut f = File::from(info);
    let mut buf = [0u8; 512];
    // bubblewrap writes the object once the namespaces exist, then closes its end.
    while !text.contains(&b'}') && text.len() < 4096 {
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => text.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("cannot read the sandbox's pid: {e}")),
        }
    }
    let end = text
        .iter()
        .position(|&b| b == b'}')
        .map_or(text.len(), |i| i + 1);
    serde_json::from_slice::<serde_json::Value>(&text[..end])
        .ok()
        .and_then(|v| v.get("child-pid")?.as_u64())
        .and_then(|p| u32::try_from(p).ok())
        .ok_or_else(|| "the sandbox did not say its pid (it may have failed to start)".to_string())
}

/// Connects the network namespace of the sandbox process `pid` to the outside and closes what
/// steps must not reach.
pub(super) fn connect(slirp: &Path, pid: u32) -> Result<RunNet, String> {
    let netns = File::open(format!("/proc/{pid}/ns/net"))
        .map_err(|e| format!("cannot open the sandbox's network namespace: {e}"))?;
    let root = super::sandbox::running_as_root();
    // The namespace belongs to the sandbox's outer user namespace (bubblewrap nests a second one
    // for the steps); a slirp4netns that is not root joins that one first, and so does the
    // process that closes the routes.
    let owner = if root {
        None
    } else {
        // SAFETY: NS_GET_USERNS returns a new descriptor or -1.
        let fd = unsafe { libc::ioctl(netns.as_raw_fd(), NS_GET_USERNS) };
        if fd < 0 {
            return Err(format!(
                "cannot find the sandbox's user namespace: {}",
                io::Error::last_os_error()
            ));
        }
        // SAFETY: a new descriptor of ours.
        Some(unsafe { OwnedFd::from_raw_fd(fd) })
    };
    let mut closed: Vec<(IpAddr, u8)> = vec![(IpAddr::V4(Ipv4Addr::new(169, 254, 0, 0)), 16)];
    closed.extend(host_addresses().into_iter().map(|a| (a, 32)));
    block_routes(&netns, owner.as_ref(), &closed)
        .map_err(|e| format!("cannot close the host's addresses to steps: {e}"))?;
    let (ready_r, ready_w) =
        super::process::pipe().map_err(|e| format!("cannot make a pipe: {e}"))?;
    let (exit_r, exit_w) =
        super::process::pipe().map_err(|e| format!("cannot make a pipe: {e}"))?;
    let mut cmd = Command::new(slirp);
    cmd.args([
        "--configure",
        "--mtu=65520",
        "--disable-host-loopback",
        "--enable-sandbox",
        "--netns-type=path",
    ]);
    cmd.arg(format!("--ready-fd={}", ready_w.as_raw_fd()))
        .arg(format!("--exit-fd={}", exit_r.as_raw_fd()));
    let mut inherit: Vec<RawFd> = vec![ready_w.as_raw_fd(), exit_r.as_raw_fd(), netns.as_raw_fd()];
    if let Some(owner) = &owner {
        cmd.arg(format!("--userns-path=/proc/self/fd/{}", owner.as_raw_fd()));
        inherit.push(owner.as_raw_fd());
    }
    cmd.arg(format!("/proc/self/fd/{}", netns.as_raw_fd()))
        .arg("tap0")
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    super::sandbox::inherit(&mut cmd, inherit);
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", slirp.display()))?;
    drop((ready_w, exit_r, owner));
    let stderr = child.stderr.take();
    let ready = wait_ready(&ready_r, Duration::from_secs(10));
    // It ends when the exit pipe closes; reap it then.
    let _ = std::thread::Builder::new()
        .name("slirp4netns".into())
        .spawn(move || child.wait());
    match ready {
        Ok(()) => Ok(RunNet { _exit: exit_w }),
        Err(e) => {
            drop(exit_w);
            let mut said = String::new();
            if let Some(mut s) = stderr {
                let _ = s.read_to_string(&mut said);
            }
            let said = said
                .lines()
                .filter(|l| !l.starts_with("WARNING"))
                .collect::<Vec<_>>()
                .join("; ");
            Err(format!(
                "slirp4netns did not connect the run's network: {e}: {said}"
            ))
        }
    }
}

/// `NS_GET_USERNS` from `linux/nsfs.h`: `_IO(0xb7, 0x1)`.
const NS_GET_USERNS: libc::c_ulong = 0xb701;

/// Waits until slirp4netns writes to its ready pipe.
fn wait_ready(ready: &OwnedFd, within: Duration) -> io::Result<()> {
    let mut poll = libc::pollfd {
        fd: ready.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = i32::try_from(within.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&mut poll, 1, ms) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    if n == 0 {
        return Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "no answer within 10s",
        ));
    }
    let mut byte = [0u8; 1];
    // SAFETY: reading one byte into a local buffer.
    let got = unsafe { libc::read(ready.as_raw_fd(), byte.as_mut_ptr().cast(), 1) };
    if got == 1 {
        Ok(())
    } else {
        Err(io::Error::other("it exited before it was ready"))
    }
}

/// The host's own IPv4 addresses, loopback aside (the namespace has a loopback of its own).
fn host_addresses() -> Vec<IpAddr> {
    let mut out = Vec::new();
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs allocates a list that freeifaddrs releases; each entry is read only
    // while the list lives, and only when its address family says what it points at.
    unsafe {
        if libc::getifaddrs(&mut list) != 0 {
            return out;
        }
        let mut at = list;
        while !at.is_null() {
            let addr = (*at).ifa_addr;
            if !addr.is_null() && i32::from((*addr).sa_family) == libc::AF_INET {
                let v4 = &*(addr as *const libc::sockaddr_in);
                let ip = Ipv4Addr::from(u32::from_be(v4.sin_addr.s_addr));
                if !ip.is_loopback() && !out.contains(&IpAddr::V4(ip)) {
                    out.push(IpAddr::V4(ip));
                }
            }
            at = (*at).ifa_next;
        }
        libc::freeifaddrs(list);
    }
    out
}

/// Adds a `prohibit` route for each of `targets` in the network namespace `netns`, from a
/// child process that enters it. A Gantry that is not root may enter the namespace only from
/// inside the user namespace that owns it (`owner`, which it owns: bubblewrap made it as
/// Gantry's user), and a process can join a user namespace only while it has one thread: hence
/// a child, forked for this and doing nothing but system calls, not a thread.
fn block_routes(netns: &File, owner: Option<&OwnedFd>, targets: &[(IpAddr, u8)]) -> io::Result<()> {
    // Every message is made before the fork: the child of a threaded process may not allocate.
    let messages: Vec<Vec<u8>> = targets
        .iter()
        .enumerate()
        .map(|(seq, (addr, len))| prohibit_message(seq as u32 + 1, *addr, *len))
        .collect();
    let owner = owner.map_or(-1, AsRawFd::as_raw_fd);
    let netns = netns.as_raw_fd();
    // SAFETY: the child makes only async-signal-safe system calls on memory made before the
    // fork, and leaves with `_exit`.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        // SAFETY: (the child) raw system calls; the exit status is the errno of what failed.
        unsafe {
            let errno = || *libc::__errno_location();
            if owner >= 0 && libc::setns(owner, libc::CLONE_NEWUSER) != 0 {
                libc::_exit(errno().clamp(1, 255));
            }
            if libc::setns(netns, libc::CLONE_NEWNET) != 0 {
                libc::_exit(errno().clamp(1, 255));
            }
            let sock = libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            );
            if sock < 0 {
                libc::_exit(errno().clamp(1, 255));
            }
            for msg in &messages {
                if let Err(code) = send_and_ack(sock, msg) {
                    libc::_exit(code.clamp(1, 255));
                }
            }
            libc::_exit(0);
        }
    }
    let mut status = 0;
    loop {
        // SAFETY: waiting for the child forked above.
        let got = unsafe { libc::waitpid(pid, &mut status, 0) };
        if got == pid {
            break;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    match (libc::WIFEXITED(status), libc::WEXITSTATUS(status)) {
        (true, 0) => Ok(()),
        (true, code) => Err(io::Error::from_raw_os_error(code)),
        _ => Err(io::Error::other("the route process was killed")),
    }
}

/// Sends one netlink request on `sock` and reads its ack: `Err(errno)` when the kernel refused
/// it (an existing route is no refusal). System calls only, for the child of `block_routes`.
fn send_and_ack(sock: RawFd, msg: &[u8]) -> Result<(), i32> {
    // SAFETY: sending a buffer of its stated length, receiving into a local one.
    unsafe {
        if libc::send(sock, msg.as_ptr().cast(), msg.len(), 0) < 0 {
            return Err(*libc::__errno_location());
        }
        let mut answer = [0u8; 1024];
        let got = libc::recv(sock, answer.as_mut_ptr().cast(), answer.len(), 0);
        if got < 0 {
            return Err(*libc::__errno_location());
        }
        // An NLMSG_ERROR message: header (16), then the error code (0 for an ack).
        let got = got as usize;
        if got >= 20 && u16::from_ne_bytes([answer[4], answer[5]]) == libc::NLMSG_ERROR as u16 {
            let code = i32::from_ne_bytes([answer[16], answer[17], answer[18], answer[19]]);
            if code != 0 && code != -libc::EEXIST {
                return Err(-code);
            }
        }
    }
    Ok(())
}

/// One `RTM_NEWROUTE` of type `RTN_PROHIBIT` for `addr/len` in the main table.
fn prohibit_message(seq: u32, addr: IpAddr, len: u8) -> Vec<u8> {
    let (family, bytes): (u8, Vec<u8>) = match addr {
        IpAddr::V4(a) => (libc::AF_INET as u8, a.octets().to_vec()),
        IpAddr::V6(a) => (libc::AF_INET6 as u8, a.octets().to_vec()),
    };
    // nlmsghdr (16) + rtmsg (12) + rtattr RTA_DST (4 + address, padded to 4).
    let attr_len = 4 + bytes.len();
    let total = 16 + 12 + attr_len.next_multiple_of(4);
    let mut msg = Vec::with_capacity(total);
    msg.extend_from_slice(&(total as u32).to_ne_bytes());
    msg.extend_from_slice(&libc::RTM_NEWROUTE.to_ne_bytes());
    let flags =
        (libc::NLM_F_REQUEST | libc::NLM_F_ACK | libc::NLM_F_CREATE | libc::NLM_F_EXCL) as u16;
    msg.extend_from_slice(&flags.to_ne_bytes());
    msg.extend_from_slice(&seq.to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes());
    // rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags (u32).
    msg.extend_from_slice(&[
        family,
        len,
        0,
        0,
        libc::RT_TABLE_MAIN,
        libc::RTPROT_STATIC,
        libc::RT_SCOPE_UNIVERSE,
        libc::RTN_PROHIBIT,
    ]);
    msg.extend_from_slice(&0u32.to_ne_bytes());
    msg.extend_from_slice(&(attr_len as u16).to_ne_bytes());
    msg.extend_from_slice(&libc::RTA_DST.to_ne_bytes());
    msg.extend_from_slice(&bytes);
    msg.resize(total, 0);
    msg
}

/// Carries one connection a step opened to an allowed host port (`inside`, handed over by the
/// spawner) to that port on the host's loopback, both ways, until either side ends.
pub(super) fn proxy(port: u16, inside: OwnedFd) {
    let _ = std::thread::Builder::new()
        .name("host-port".into())
        .spawn(move || {
            let inside = TcpStream::from(inside);
            let to = std::net::SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            let Ok(outside) = TcpStream::connect_timeout(&to, Duration::from_secs(5)) else {
                return;
            };
            let (Ok(mut in_read), Ok(mut out_write)) = (inside.try_clone(), outside.try_clone())
            else {
                return;
            };
            let upstream = std::thread::Builder::new()
                .name("host-port-up".into())
                .spawn(move || {
                    let _ = io::copy(&mut in_read, &mut out_write);
                    let _ = out_write.shutdown(std::net::Shutdown::Write);
                });
            let (mut out_read, mut in_write) = (outside, inside);
            let _ = io::copy(&mut out_read, &mut in_write);
            let _ = in_write.shutdown(std::net::Shutdown::Write);
            if let Ok(up) = upstream {
                let _ = up.join();
            }
        });
}
