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
//!
//! At `pre-dump`, `<flag>.reached` is written before the flag is looked for: until it
//! exists the shim may kill runc (CRIU has seized nothing, and will give up here), after
//! it never does (see the engine's `cancel` module). If it cannot be written, the dump
//! is given up: going on would let the shim kill a CRIU that holds the task.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

/// The exit status that abandons the dump (any non-zero would; this one is recognisable
/// in CRIU's log: "Post dump script passed with 75").
const CANCELLED: u8 = 75;

/// The marker `suffix` beside `flag`.
fn marker(flag: &OsString, suffix: &str) -> PathBuf {
    let mut p = flag.clone();
    p.push(suffix);
    PathBuf::from(p)
}

/// What to do at `action` with cancel flag `flag`: None to let the dump go on, or the
/// point to give it up at.
fn decide(action: Option<&str>, flag: Option<&OsString>) -> Result<Option<String>, String> {
    let (Some(action), Some(flag)) = (action, flag) else {
        return Ok(None);
    };
    if !matches!(action, "pre-dump" | "post-dump") {
        return Ok(None);
    }
    if action == "pre-dump" {
        let reached = marker(flag, ".reached");
        std::fs::write(&reached, "").map_err(|e| format!("write {}: {e}", reached.display()))?;
    }
    Ok(std::path::Path::new(flag)
        .exists()
        .then(|| action.to_string()))
}

fn main() -> ExitCode {
    let action = std::env::var("CRTOOLS_SCRIPT_ACTION").ok();
    let flag = std::env::var_os("LIGHTWHALE_SLEEP_CANCEL");
    let at = match decide(action.as_deref(), flag.as_ref()) {
        Ok(None) => return ExitCode::SUCCESS,
        Ok(Some(at)) => at,
        Err(e) => {
            eprintln!("lightwhale-criu-action: {e}: the dump is given up");
            return ExitCode::from(CANCELLED);
        }
    };
    if let Some(flag) = &flag {
        let taken = marker(flag, ".taken");
        if let Err(e) = std::fs::write(&taken, &at) {
            // The dump is abandoned all the same; the shim then reports a failed dump.
            eprintln!("lightwhale-criu-action: write {}: {e}", taken.display());
        }
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
                Ok(None),
                "{action}: no flag"
            );
        }
        // pre-dump says it was reached before it looks for the flag.
        assert!(dir.path().join("cancel.reached").exists());
        std::fs::write(dir.path().join("cancel"), "").expect("flag");
        for action in ["pre-dump", "post-dump"] {
            assert_eq!(
                decide(Some(action), Some(&flag)),
                Ok(Some(action.to_string()))
            );
        }
        for action in [
            "network-lock",
            "network-unlock",
            "pre-restore",
            "post-resume",
        ] {
            assert_eq!(decide(Some(action), Some(&flag)), Ok(None), "{action}");
        }
        assert_eq!(decide(None, Some(&flag)), Ok(None));
        assert_eq!(decide(Some("post-dump"), None), Ok(None));
    }

    #[test]
    fn a_pre_dump_that_cannot_say_it_was_reached_gives_the_dump_up() {
        let flag = OsString::from("/nonexistent/lightwhale/cancel");
        assert!(decide(Some("pre-dump"), Some(&flag)).is_err());
        // post-dump writes nothing: no flag, no cancel.
        assert_eq!(decide(Some("post-dump"), Some(&flag)), Ok(None));
    }
}
