//! The capabilities the runtime needs, checked up front so a missing one is reported by
//! name instead of surfacing later as an EPERM deep inside CRIU.

use caps::{CapSet, Capability};

/// What each capability is needed for.
pub const NEEDED: &[(Capability, &str)] = &[
    (
        Capability::CAP_SYS_ADMIN,
        "network namespaces, mounts, CRIU",
    ),
    (
        Capability::CAP_NET_ADMIN,
        "TCP repair of held connections, CRIU",
    ),
    (
        Capability::CAP_SYS_PTRACE,
        "pidfd_getfd of a task's sockets, CRIU",
    ),
    (Capability::CAP_KILL, "signals to container processes"),
];

/// The needed capabilities this process lacks in its effective set, with why each is needed.
pub fn missing() -> Vec<(Capability, &'static str)> {
    let have = caps::read(None, CapSet::Effective).unwrap_or_default();
    NEEDED
        .iter()
        .filter(|(c, _)| !have.contains(c))
        .copied()
        .collect()
}

/// `missing()` as one line for a log or an error message; None when nothing is missing.
pub fn describe_missing() -> Option<String> {
    let m = missing();
    (!m.is_empty()).then(|| {
        m.iter()
            .map(|(c, why)| format!("{c} ({why})"))
            .collect::<Vec<_>>()
            .join(", ")
    })
}

/// Whether this process (and so the CRIU it starts) has `cap` in its effective set.
pub fn has(cap: Capability) -> bool {
    caps::has_cap(None, CapSet::Effective, cap).unwrap_or(false)
}
