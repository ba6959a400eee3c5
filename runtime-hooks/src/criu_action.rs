//! CRIU's action script during a sleep's dump (installed as `action` in lightwhale's
//! helper directory; the shim names it to CRIU only for `runc checkpoint`).
//!
//! A sleep can be called off once it has begun: a connection may arrive while CRIU dumps
//! the frozen task. Killing CRIU mid-dump would leave its parasite code inside the task,
//! so the shim instead drops a flag file (`LIGHTWHALE_SLEEP_CANCEL`) and CRIU is asked at
//! the two points where giving up is clean: `pre-dump` (nothing seized yet) and
//! `post-dump` (images written, the task not yet killed; CRIU cures it and leaves it as
//! it found it). A non-zero exit there makes CRIU abandon the dump. The point taken is
//! written next to the flag (`<flag>.taken`), so the shim can tell a cancel from a
//! failure. Every other action, and a dump without the variable, passes.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

/// The exit status that abandons the dump (any non-zero would; this one is recognisable
/// in CRIU's log: "Post dump script passed with 75").
const CANCELLED: u8 = 75;

/// The marker beside `flag` that says where the dump was abandoned.
fn taken_path(flag: &OsString) -> PathBuf {
    let mut p = flag.clone();
    p.push(".taken");
    PathBuf::from(p)
}

fn decide(action: Option<&str>, flag: Option<&OsString>) -> Option<(String, PathBuf)> {
    let action = action?;
    let flag = flag?;
    if !matches!(action, "pre-dump" | "post-dump") {
        return None;
    }
    std::path::Path::new(flag)
        .exists()
        .then(|| (action.to_string(), taken_path(flag)))
}

fn main() -> ExitCode {
    let action = std::env::var("CRTOOLS_SCRIPT_ACTION").ok();
    let flag = std::env::var_os("LIGHTWHALE_SLEEP_CANCEL");
    let Some((at, taken)) = decide(action.as_deref(), flag.as_ref()) else {
        return ExitCode::SUCCESS;
    };
    if let Err(e) = std::fs::write(&taken, &at) {
        // The dump is abandoned all the same; the shim then reports a failed dump.
        eprintln!("lightwhale-criu-action: write {}: {e}", taken.display());
    }
    eprintln!("lightwhale: a connection arrived; the sleep is cancelled at {at}");
    ExitCode::from(CANCELLED)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_two_clean_points_with_the_flag_present_cancel() {
        let dir = tempfile::tempdir().expect("tempdir");
        let flag = OsString::from(dir.path().join("cancel"));
        for action in ["pre-dump", "post-dump", "network-lock", "pre-restore"] {
            assert_eq!(
                decide(Some(action), Some(&flag)),
                None,
                "{action}: no flag yet"
            );
        }
        std::fs::write(dir.path().join("cancel"), "").expect("flag");
        let taken = dir.path().join("cancel.taken");
        for action in ["pre-dump", "post-dump"] {
            assert_eq!(
                decide(Some(action), Some(&flag)),
                Some((action.to_string(), taken.clone()))
            );
        }
        for action in [
            "network-lock",
            "network-unlock",
            "pre-restore",
            "post-resume",
        ] {
            assert_eq!(decide(Some(action), Some(&flag)), None, "{action}");
        }
        assert_eq!(decide(None, Some(&flag)), None);
        assert_eq!(decide(Some("post-dump"), None), None);
    }
}
