//! System calls that leave `errno` alone, for code that runs in the spawner's memory but not as
//! one of its threads.
//!
//! A step's init and its program share the spawner's address space until the program executes
//! (`step_ns`: `CLONE_VM`, so starting a step copies no page table). They also share the TLS of
//! the spawner thread that cloned them, and with it that thread's `errno`: a C library call that
//! failed there would write the spawner's `errno` under its feet, and reading `errno` there
//! could read the spawner's. So they make their system calls through [`call`], which returns
//! the kernel's answer as it is (`-errno` on failure) and touches no memory but its arguments.

use std::ffi::CStr;

/// A system call's result: the value, or the errno the kernel answered.
pub(super) type SysResult = Result<usize, i32>;

/// The raw system call `nr` with up to six arguments.
///
/// # Safety
/// As the system call itself: pointers among `args` must be valid for what the kernel does with
/// them.
#[cfg(target_arch = "x86_64")]
pub(super) unsafe fn call(nr: libc::c_long, args: [usize; 6]) -> SysResult {
    let ret: isize;
    // SAFETY: the `syscall` instruction with the kernel's x86-64 convention; it clobbers rcx
    // and r11 and nothing else, and uses no stack.
    unsafe {
        std::arch::asm!(
            "syscall",
            inlateout("rax") nr as isize => ret,
            in("rdi") args[0],
            in("rsi") args[1],
            in("rdx") args[2],
            in("r10") args[3],
            in("r8") args[4],
            in("r9") args[5],
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    result(ret)
}

/// The raw system call `nr` with up to six arguments.
///
/// # Safety
/// As the system call itself: pointers among `args` must be valid for what the kernel does with
/// them.
#[cfg(target_arch = "aarch64")]
pub(super) unsafe fn call(nr: libc::c_long, args: [usize; 6]) -> SysResult {
    let ret: isize;
    // SAFETY: `svc 0` with the kernel's arm64 convention (number in x8, result in x0); it uses
    // no stack.
    unsafe {
        std::arch::asm!(
            "svc 0",
            in("x8") nr as isize,
            inlateout("x0") args[0] as isize => ret,
            in("x1") args[1],
            in("x2") args[2],
            in("x3") args[3],
            in("x4") args[4],
            in("x5") args[5],
            options(nostack),
        );
    }
    result(ret)
}

fn result(ret: isize) -> SysResult {
    // The kernel answers errors as -4095..=-1.
    if (-4095..0).contains(&ret) {
        Err(-ret as i32)
    } else {
        Ok(ret as usize)
    }
}

/// Pointer arguments as the kernel takes them.
fn ptr<T>(p: *const T) -> usize {
    p as usize
}

fn c(s: &CStr) -> usize {
    ptr(s.as_ptr())
}

/// `mount(2)`; `None` for a null source, file system type or data.
///
/// # Safety
/// As `mount(2)`.
pub(super) unsafe fn mount(
    source: Option<&CStr>,
    target: &CStr,
    fstype: Option<&CStr>,
    flags: libc::c_ulong,
) -> SysResult {
    let opt = |s: Option<&CStr>| s.map_or(0, c);
    // SAFETY: every pointer is a C string that outlives the call, or null.
    unsafe {
        call(
            libc::SYS_mount,
            [opt(source), c(target), opt(fstype), flags as usize, 0, 0],
        )
    }
}

/// An integer argument as the kernel reads it, negative ones included (a pid of -1, a file
/// descriptor of `AT_FDCWD`).
fn int(v: i64) -> usize {
    v as isize as usize
}

/// # Safety
/// As `setpgid(2)`.
pub(super) unsafe fn setpgid(pid: libc::pid_t, pgid: libc::pid_t) -> SysResult {
    // SAFETY: no pointers.
    unsafe {
        call(
            libc::SYS_setpgid,
            [int(pid.into()), int(pgid.into()), 0, 0, 0, 0],
        )
    }
}

/// `unshare(2)`.
///
/// # Safety
/// As `unshare(2)`.
pub(super) unsafe fn unshare(flags: libc::c_int) -> SysResult {
    // SAFETY: no pointers.
    unsafe { call(libc::SYS_unshare, [int(flags.into()), 0, 0, 0, 0, 0]) }
}

/// Waits while `word` holds `expected` (`FUTEX_WAIT`, private: the word is in memory only this
/// process's tasks share), or until woken or interrupted; every outcome is the caller's to
/// check by reading `word` again.
///
/// # Safety
/// No precondition beyond the reference's: the kernel only reads the word.
pub(super) unsafe fn futex_wait(word: &std::sync::atomic::AtomicU32, expected: u32) -> SysResult {
    // SAFETY: a valid, aligned 32-bit word that outlives the call; no timeout.
    unsafe {
        call(
            libc::SYS_futex,
            [
                ptr(word.as_ptr()),
                int((libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG).into()),
                expected as usize,
                0,
                0,
                0,
            ],
        )
    }
}

/// Wakes the tasks waiting on `word` (`FUTEX_WAKE`, private).
///
/// # Safety
/// No precondition beyond the reference's.
pub(super) unsafe fn futex_wake(word: &std::sync::atomic::AtomicU32) -> SysResult {
    // SAFETY: a valid, aligned 32-bit word that outlives the call.
    unsafe {
        call(
            libc::SYS_futex,
            [
                ptr(word.as_ptr()),
                int((libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG).into()),
                int(libc::c_int::MAX.into()),
                0,
                0,
                0,
            ],
        )
    }
}

/// # Safety
/// As `close(2)`.
pub(super) unsafe fn close(fd: libc::c_int) -> SysResult {
    // SAFETY: no pointers.
    unsafe { call(libc::SYS_close, [int(fd.into()), 0, 0, 0, 0, 0]) }
}

/// `wait4(2)` without resource usage.
///
/// # Safety
/// `status` is null or points at a writable int.
pub(super) unsafe fn wait4(
    pid: libc::pid_t,
    status: *mut libc::c_int,
    options: libc::c_int,
) -> SysResult {
    // SAFETY: as the caller promised.
    unsafe {
        call(
            libc::SYS_wait4,
            [int(pid.into()), ptr(status), int(options.into()), 0, 0, 0],
        )
    }
}

/// # Safety
/// As `kill(2)`.
pub(super) unsafe fn kill(pid: libc::pid_t, signal: libc::c_int) -> SysResult {
    // SAFETY: no pointers.
    unsafe {
        call(
            libc::SYS_kill,
            [int(pid.into()), int(signal.into()), 0, 0, 0, 0],
        )
    }
}

/// # Safety
/// As `write(2)`.
pub(super) unsafe fn write(fd: libc::c_int, bytes: &[u8]) -> SysResult {
    // SAFETY: the slice is readable for its length.
    unsafe {
        call(
            libc::SYS_write,
            [int(fd.into()), ptr(bytes.as_ptr()), bytes.len(), 0, 0, 0],
        )
    }
}

/// Ends the calling task only (`exit(2)`, not `exit_group`: it is a process of its own, but
/// the C library's atexit handlers and buffers are the spawner's and must not run).
///
/// # Safety
/// As `_exit(2)`.
pub(super) unsafe fn exit(code: libc::c_int) -> ! {
    loop {
        // SAFETY: no pointers; the call does not return.
        let _ = unsafe { call(libc::SYS_exit, [int(code.into()), 0, 0, 0, 0, 0]) };
    }
}

/// `open(2)`, as `openat` from the working directory (arm64 has no `open`).
///
/// # Safety
/// As `openat(2)`.
pub(super) unsafe fn open(path: &CStr, flags: libc::c_int) -> SysResult {
    // SAFETY: a C string that outlives the call.
    unsafe {
        call(
            libc::SYS_openat,
            [
                int(libc::AT_FDCWD.into()),
                c(path),
                int(flags.into()),
                0,
                0,
                0,
            ],
        )
    }
}

/// `dup2(2)` (as `dup3`, which arm64 has): `old` on `new`, which the program inherits (no
/// close-on-exec), also when they are the same descriptor.
///
/// # Safety
/// As `dup3(2)`.
pub(super) unsafe fn dup2(old: libc::c_int, new: libc::c_int) -> SysResult {
    // SAFETY: no pointers.
    unsafe {
        if old == new {
            return call(
                libc::SYS_fcntl,
                [int(new.into()), int(libc::F_SETFD.into()), 0, 0, 0, 0],
            );
        }
        call(
            libc::SYS_dup3,
            [int(old.into()), int(new.into()), 0, 0, 0, 0],
        )
    }
}

/// # Safety
/// As `chdir(2)`.
pub(super) unsafe fn chdir(path: &CStr) -> SysResult {
    // SAFETY: a C string that outlives the call.
    unsafe { call(libc::SYS_chdir, [c(path), 0, 0, 0, 0, 0]) }
}

/// `prctl(2)` with integer arguments.
///
/// # Safety
/// As `prctl(2)` with the given option.
pub(super) unsafe fn prctl(option: libc::c_int, a: usize, b: usize) -> SysResult {
    // SAFETY: as the caller promised.
    unsafe { call(libc::SYS_prctl, [int(option.into()), a, b, 0, 0, 0]) }
}

/// Drops every capability of the calling task (`capset` with version 3's empty sets).
///
/// # Safety
/// As `capset(2)`.
pub(super) unsafe fn drop_capabilities() -> SysResult {
    /// The capability header version that takes two 32-bit data words.
    const CAPABILITY_VERSION_3: u32 = 0x2008_0522;
    let header = [CAPABILITY_VERSION_3, 0];
    let data = [0u32; 6];
    // SAFETY: both arrays outlive the call and have the sizes version 3 reads.
    unsafe {
        call(
            libc::SYS_capset,
            [ptr(header.as_ptr()), ptr(data.as_ptr()), 0, 0, 0, 0],
        )
    }
}

/// Gives `signal` its default action and unblocks every signal, as a new program expects.
///
/// # Safety
/// As `rt_sigaction(2)` and `rt_sigprocmask(2)`.
pub(super) unsafe fn default_signals(signal: libc::c_int) -> SysResult {
    // The kernel's `struct sigaction`: handler, flags, restorer, mask (64 bits on both
    // architectures).
    let action: [usize; 4] = [libc::SIG_DFL, 0, 0, 0];
    let none: u64 = 0;
    const SIGSET_BYTES: usize = 8;
    // SAFETY: both point at locals of the sizes given.
    unsafe {
        call(
            libc::SYS_rt_sigaction,
            [
                int(signal.into()),
                ptr(action.as_ptr()),
                0,
                SIGSET_BYTES,
                0,
                0,
            ],
        )?;
        call(
            libc::SYS_rt_sigprocmask,
            [
                int(libc::SIG_SETMASK.into()),
                ptr(&none),
                0,
                SIGSET_BYTES,
                0,
                0,
            ],
        )
    }
}

/// `execve(2)`; returns only on failure.
///
/// # Safety
/// `argv` and `envp` are null-terminated arrays of C strings that outlive the call.
pub(super) unsafe fn execve(
    program: &CStr,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
) -> i32 {
    // SAFETY: as the caller promised.
    match unsafe {
        call(
            libc::SYS_execve,
            [c(program), ptr(argv), ptr(envp), 0, 0, 0],
        )
    } {
        Err(errno) => errno,
        Ok(_) => libc::EIO,
    }
}
