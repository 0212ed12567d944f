//! A uid of its own for every run, leased from a configured range (`[executor.local] run_uids`).
//!
//! Steps of one run share a uid (they share the run's workspace); no two runs running at the
//! same time do, and none is a uid of this machine's users or daemons (`nobody` is one: on a real
//! host it owns files and processes of its own). So what a kernel decides by uid (signals, ptrace,
//! `/proc/<pid>` of a process, the process-count rlimit, files a leftover could reach) separates
//! runs as well as the namespaces do. The uid's group is the gid of the same number.
//!
//! Leases rotate through the range (from a random start) instead of taking the lowest free uid,
//! so a uid comes back only after every other one was used: nothing of a run that ended (a file
//! in a shared cache of the host, say) meets the next run under the same uid.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::{Arc, Mutex};

use super::sandbox::StepUser;

/// The default range when Gantry runs as root: 65,536 uids from 0x70000000, above the ranges
/// that useradd, systemd's dynamic users and container managers hand out on a usual host (checked
/// against `/etc/passwd` when the server starts).
pub const DEFAULT_RANGE: UidRange = UidRange {
    first: 0x7000_0000,
    last: 0x7000_ffff,
};

/// Inclusive range of uids (and gids of the same numbers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UidRange {
    pub first: u32,
    pub last: u32,
}

impl fmt::Display for UidRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UidRangeError {
    #[error("the range {0} is empty: its first uid is above its last")]
    Empty(UidRange),
    #[error(
        "the range {0} holds uid {1}, which is {2}: steps never run as root or as a shared user"
    )]
    Reserved(UidRange, u32, &'static str),
    #[error(
        "the range {0} holds uid {1}, user `{2}` of /etc/passwd: pick uids no user or daemon of this machine has"
    )]
    Taken(UidRange, u32, String),
    #[error(
        "the range {0} holds gid {1}, group `{2}` of /etc/group: each run's group has the number of its uid, so pick numbers no group of this machine has"
    )]
    GroupTaken(UidRange, u32, String),
}

impl UidRange {
    /// The uids from `first` to `last`, both included; never 0, `nobody` (65534) or -1
    /// (4294967295).
    pub fn new(first: u32, last: u32) -> Result<UidRange, UidRangeError> {
        let range = UidRange { first, last };
        if first > last {
            return Err(UidRangeError::Empty(range));
        }
        for (uid, what) in [
            (0, "root"),
            (65534, "nobody"),
            (u32::MAX, "the kernel's \"no uid\""),
        ] {
            if range.holds(uid) {
                return Err(UidRangeError::Reserved(range, uid, what));
            }
        }
        Ok(range)
    }

    pub fn holds(&self, uid: u32) -> bool {
        (self.first..=self.last).contains(&uid)
    }

    /// The first user of `passwd` (the text of `/etc/passwd`) whose uid or gid is in the range.
    pub fn check_against(&self, passwd: &str) -> Result<(), UidRangeError> {
        for line in passwd.lines() {
            let mut f = line.split(':');
            let (Some(name), Some(_), Some(uid), Some(gid)) =
                (f.next(), f.next(), f.next(), f.next())
            else {
                continue;
            };
            for id in [uid, gid].iter().filter_map(|n| n.parse::<u32>().ok()) {
                if self.holds(id) {
                    return Err(UidRangeError::Taken(*self, id, name.to_string()));
                }
            }
        }
        Ok(())
    }
}

impl UidRange {
    /// The first group of `group` (the text of `/etc/group`) whose gid is in the range.
    pub fn check_against_groups(&self, group: &str) -> Result<(), UidRangeError> {
        for line in group.lines() {
            let mut f = line.split(':');
            let (Some(name), Some(_), Some(gid)) = (f.next(), f.next(), f.next()) else {
                continue;
            };
            if let Ok(gid) = gid.parse::<u32>()
                && self.holds(gid)
            {
                return Err(UidRangeError::GroupTaken(*self, gid, name.to_string()));
            }
        }
        Ok(())
    }
}

/// The uids of a range, handed to runs one at a time.
pub struct UidPool {
    range: UidRange,
    state: Mutex<PoolState>,
}

struct PoolState {
    in_use: BTreeSet<u32>,
    /// Where the next lease starts looking.
    next: u32,
}

impl fmt::Debug for UidPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let leased = self.state.lock().map(|s| s.in_use.len()).unwrap_or(0);
        f.debug_struct("UidPool")
            .field("range", &self.range)
            .field("leased", &leased)
            .finish()
    }
}

/// A uid held by one run; it goes back to the pool when dropped.
pub struct Lease {
    pool: Arc<UidPool>,
    uid: u32,
}

impl fmt::Debug for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Lease({})", self.uid)
    }
}

impl Lease {
    /// The run's user: the leased uid, and the gid of the same number.
    pub fn user(&self) -> StepUser {
        StepUser {
            uid: self.uid,
            gid: self.uid,
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Ok(mut state) = self.pool.state.lock() {
            state.in_use.remove(&self.uid);
        }
    }
}

impl UidPool {
    /// A pool that starts at a random uid of the range: two Gantry processes on one machine
    /// (a server and a `gantry run`, say), which do not share a pool, seldom hand out the same
    /// uid at the same time.
    pub fn new(range: UidRange) -> Arc<UidPool> {
        let mut bytes = [0u8; 4];
        let _ = getrandom::getrandom(&mut bytes);
        let size = u64::from(range.last - range.first) + 1;
        let offset = u64::from(u32::from_le_bytes(bytes)) % size;
        UidPool::starting_at(range, range.first + offset as u32)
    }

    /// A pool whose first lease is `first` (or the range's first uid, when `first` is outside).
    pub fn starting_at(range: UidRange, first: u32) -> Arc<UidPool> {
        Arc::new(UidPool {
            range,
            state: Mutex::new(PoolState {
                in_use: BTreeSet::new(),
                next: if range.holds(first) {
                    first
                } else {
                    range.first
                },
            }),
        })
    }

    pub fn range(&self) -> UidRange {
        self.range
    }

    /// A uid no other run holds, or an error that says the range is used up.
    pub fn lease(self: &Arc<Self>) -> Result<Lease, String> {
        let mut state = self
            .state
            .lock()
            .map_err(|_| "the run uid pool's lock is poisoned".to_string())?;
        let size = u64::from(self.range.last - self.range.first) + 1;
        if state.in_use.len() as u64 >= size {
            return Err(format!(
                "every uid of run_uids ({}) is held by a running run; widen the range under [executor.local]",
                self.range
            ));
        }
        let mut uid = state.next;
        while state.in_use.contains(&uid) {
            uid = if uid == self.range.last {
                self.range.first
            } else {
                uid + 1
            };
        }
        state.in_use.insert(uid);
        state.next = if uid == self.range.last {
            self.range.first
        } else {
            uid + 1
        };
        Ok(Lease {
            pool: self.clone(),
            uid,
        })
    }
}

/// The user database a step sees: the host's, and a line for the run's user (tools such as git
/// and ssh look up the current uid, and fail when it has no entry).
pub fn passwd_with(host: &str, user: StepUser) -> String {
    let mut text = host.to_string();
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(&format!(
        "gantry-run:x:{}:{}:Gantry run:/tmp:/bin/sh\n",
        user.uid, user.gid
    ));
    text
}

/// The group database a step sees: the host's, and the run's own group.
pub fn group_with(host: &str, user: StepUser) -> String {
    let mut text = host.to_string();
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(&format!("gantry-run:x:{}:\n", user.gid));
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_range_never_holds_root_or_nobody() {
        assert_eq!(
            UidRange::new(100000, 100009),
            Ok(UidRange {
                first: 100000,
                last: 100009
            })
        );
        assert!(matches!(UidRange::new(9, 5), Err(UidRangeError::Empty(_))));
        assert!(matches!(
            UidRange::new(0, 10),
            Err(UidRangeError::Reserved(_, 0, "root"))
        ));
        assert!(matches!(
            UidRange::new(60000, 70000),
            Err(UidRangeError::Reserved(_, 65534, "nobody"))
        ));
        let default = UidRange::new(DEFAULT_RANGE.first, DEFAULT_RANGE.last);
        assert_eq!(default, Ok(DEFAULT_RANGE));
        DEFAULT_RANGE
            .check_against("")
            .expect("the default is valid");
    }

    #[test]
    fn a_range_that_holds_a_user_of_the_machine_is_refused() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\nsvc:x:200005:200005::/:/usr/sbin/nologin\n";
        let range = UidRange::new(200000, 200009).expect("range");
        match range.check_against(passwd) {
            Err(UidRangeError::Taken(_, 200005, name)) => assert_eq!(name, "svc"),
            other => panic!("{other:?}"),
        }
        UidRange::new(300000, 300009)
            .expect("range")
            .check_against(passwd)
            .expect("no user there");
        match range.check_against_groups("wheel:x:10:\ndocker:x:200001:alice\n") {
            Err(UidRangeError::GroupTaken(_, 200001, name)) => assert_eq!(name, "docker"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn leases_rotate_and_are_never_held_twice() {
        let range = UidRange::new(1000, 1002).expect("range");
        let random = UidPool::new(range).lease().expect("random start");
        assert!(range.holds(random.user().uid));
        drop(random);
        let pool = UidPool::starting_at(range, 1000);
        let a = pool.lease().expect("a");
        let b = pool.lease().expect("b");
        assert_eq!((a.user().uid, b.user().uid), (1000, 1001));
        assert_eq!(a.user().gid, 1000, "the group of the same number");
        drop(a);
        // 1000 is free again, but the next lease goes on to 1002 first.
        let c = pool.lease().expect("c");
        assert_eq!(c.user().uid, 1002);
        let d = pool.lease().expect("d");
        assert_eq!(d.user().uid, 1000, "around the range, past the held 1001");
        let full = pool.lease().expect_err("all three are held");
        assert!(full.contains("1000-1002"), "{full}");
        drop(b);
        assert_eq!(pool.lease().expect("e").user().uid, 1001);
    }

    #[test]
    fn the_run_user_has_an_entry_beside_the_hosts() {
        let user = StepUser { uid: 7, gid: 7 };
        let passwd = passwd_with("root:x:0:0:root:/root:/bin/bash", user);
        assert_eq!(
            passwd,
            "root:x:0:0:root:/root:/bin/bash\ngantry-run:x:7:7:Gantry run:/tmp:/bin/sh\n"
        );
        assert_eq!(group_with("", user), "gantry-run:x:7:\n");
    }
}
