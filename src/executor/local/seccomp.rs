//! The seccomp filter every sandboxed step runs under: the system calls a provisioning script
//! never needs, and that would widen what an untrusted step can reach, fail with `EPERM`.
//!
//! Denied: new user namespaces (`unshare` or `clone` with `CLONE_NEWUSER`: inside one a step
//! would hold every capability again, and with them the kernel's less-trodden paths), `clone3`
//! (its flags sit behind a pointer a filter cannot read; it fails with `ENOSYS`, and the C
//! library falls back to `clone`), the kernel keyring (`keyctl`, `add_key`, `request_key`),
//! `ptrace`, unmounting, entering another namespace or mounting with the new mount API
//! (`umount2`, `pivot_root`, `open_tree` and the rest, `setns`), and `bpf`, `userfaultfd`,
//! `perf_event_open`. System calls of another architecture than Gantry's own (a 32-bit program
//! on a 64-bit kernel) end the process.
//!
//! The spawner installs the filter on itself once, with `no_new_privs` set, before it starts a
//! thread or a step (`spawner::serve`), so every step's init and program inherit it and a step
//! pays for no filter of its own: installing one (a BPF program allocated and compiled, freed at
//! the step's exit) was more than half of what the sandbox added to a step. The one call left to
//! the kernel's own check is `mount(2)`, which each step's init needs for its `/proc` and outputs
//! (`step_ns`): a step's program holds no capability (its bounding set is empty too, and
//! `no_new_privs` keeps an exec from granting any), and it cannot make a user namespace where it
//! would hold some, so its `mount` fails with `EPERM` as it would here.

/// `offsetof(struct seccomp_data, nr)`, `.arch`, and the low half of `.args[0]`.
const NR: u32 = 0;
const ARCH: u32 = 4;
const ARG0_LOW: u32 = 16;

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xc000_003e;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xc000_00b7;

/// On x86-64, system calls with this bit are the x32 ABI's: denied as a whole.
#[cfg(target_arch = "x86_64")]
const X32_BIT: u32 = 0x4000_0000;

const SECCOMP_SET_MODE_FILTER: libc::c_long = 1;

/// System calls of the new mount API and `clone3`, numbered alike on every architecture.
const SYS_OPEN_TREE: i64 = 428;
const SYS_MOVE_MOUNT: i64 = 429;
const SYS_FSOPEN: i64 = 430;
const SYS_FSCONFIG: i64 = 431;
const SYS_FSMOUNT: i64 = 432;
const SYS_FSPICK: i64 = 433;
const SYS_CLONE3: i64 = 435;
const SYS_MOUNT_SETATTR: i64 = 442;

/// System calls that fail with `EPERM`, whatever their arguments.
fn denied() -> Vec<i64> {
    vec![
        libc::SYS_keyctl,
        libc::SYS_add_key,
        libc::SYS_request_key,
        libc::SYS_ptrace,
        libc::SYS_umount2,
        libc::SYS_pivot_root,
        libc::SYS_setns,
        libc::SYS_bpf,
        libc::SYS_userfaultfd,
        libc::SYS_perf_event_open,
        SYS_OPEN_TREE,
        SYS_MOVE_MOUNT,
        SYS_FSOPEN,
        SYS_FSCONFIG,
        SYS_FSMOUNT,
        SYS_FSPICK,
        SYS_MOUNT_SETATTR,
    ]
}

/// A compiled filter.
pub(super) struct Filter {
    program: Vec<libc::sock_filter>,
}

fn stmt(code: u32, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u32, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    }
}

impl Filter {
    /// The filter, compiled once per process.
    pub(super) fn shared() -> &'static Filter {
        static FILTER: std::sync::OnceLock<Filter> = std::sync::OnceLock::new();
        FILTER.get_or_init(Filter::new)
    }

    fn new() -> Filter {
        let ld = libc::BPF_LD | libc::BPF_W | libc::BPF_ABS;
        let jeq = libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K;
        let ret = libc::BPF_RET | libc::BPF_K;
        let allow = libc::SECCOMP_RET_ALLOW;
        let eperm = libc::SECCOMP_RET_ERRNO | libc::EPERM as u32;
        let enosys = libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32;
        let kill = libc::SECCOMP_RET_KILL_PROCESS;

        let denied = denied();
        let mut p = vec![
            stmt(ld, ARCH),
            jump(jeq, AUDIT_ARCH, 1, 0),
            stmt(ret, kill),
            stmt(ld, NR),
        ];
        #[cfg(target_arch = "x86_64")]
        {
            p.push(jump(
                libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K,
                X32_BIT,
                0,
                1,
            ));
            p.push(stmt(ret, eperm));
        }
        // After the tests come, in order: ALLOW (0), EPERM (1), the flags check of unshare and
        // clone (2: load the flags; with CLONE_NEWUSER fall to EPERM, else jump to ALLOW; 4
        // instructions), and ENOSYS for clone3 (6). A test jumps, on a match, from the
        // instruction after it to its target.
        const DENY: usize = 1;
        const FLAGS: usize = 2;
        const NO_CLONE3: usize = 6;
        let tests: Vec<(i64, usize)> = denied
            .iter()
            .map(|&nr| (nr, DENY))
            .chain([
                (libc::SYS_unshare, FLAGS),
                (libc::SYS_clone, FLAGS),
                (SYS_CLONE3, NO_CLONE3),
            ])
            .collect();
        let count = tests.len();
        for (i, (nr, target)) in tests.iter().enumerate() {
            let offset = count - i - 1 + target;
            p.push(jump(jeq, *nr as u32, offset as u8, 0));
        }
        p.push(stmt(ret, allow));
        p.push(stmt(ret, eperm));
        p.push(stmt(ld, ARG0_LOW));
        p.push(jump(
            libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K,
            libc::CLONE_NEWUSER as u32,
            0,
            1,
        ));
        p.push(stmt(ret, eperm));
        p.push(stmt(ret, allow));
        p.push(stmt(ret, enosys));
        Filter { program: p }
    }

    /// Installs the filter in the calling thread (and everything it starts afterwards), with
    /// `no_new_privs` set; the errno of what failed otherwise. Only system calls (`rawsys`):
    /// no allocation, and `errno` left alone.
    pub(super) fn install(&self) -> Result<(), i32> {
        let prog = libc::sock_fprog {
            len: self.program.len() as u16,
            filter: self.program.as_ptr() as *mut libc::sock_filter,
        };
        // SAFETY: prctl takes integers; seccomp reads only the program above, which outlives
        // the call.
        unsafe {
            super::rawsys::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0)?;
            super::rawsys::call(
                libc::SYS_seccomp,
                [
                    SECCOMP_SET_MODE_FILTER as usize,
                    0,
                    &prog as *const libc::sock_fprog as usize,
                    0,
                    0,
                    0,
                ],
            )?;
        }
        Ok(())
    }
}
