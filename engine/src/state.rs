//! Every transition of a container's life, in one table.
//!
//! ```text
//!             start              pause
//!  Created ─────────► Awake ◄──────────► Paused
//!                     │ ▲ ▲   resume
//!                doze │ │ thaw
//!                     ▼ │
//!                    Dozing  (frozen, memory paged out, sockets in place)
//!                     │ ▲ (a sleep thaws a dozing task first: Dozing ─thaw─► Awake)
//!                     │ │
//!          begin-sleep│ │ └────────────────────┐        (from Awake)
//!                     ▼ │ sleep-aborted        │ wake-done
//!                  Sleeping ──sleep-done──► Asleep ──begin-wake──► Waking
//!
//!  exit: from any state but Exited ──► Exited (a real exit, SIGKILL while asleep,
//!        a task that died during its dump, a restore that failed)
//! ```
//!
//! [`next`] is pure: it says whether a transition is legal from a state and where it
//! leads. `Container::transition` is the only caller that applies one; it checks with
//! [`next`], sets the state and persists it in one step. Dozing is the cheap tier
//! between Awake and Sleeping: leaving it is a thaw (a write to the freezer), never a
//! restore, so everything that needs the task (a connection, an exec, a signal, a sleep)
//! thaws first and goes on from Awake.

pub use lightwhale_status::State;

/// A step from one [`State`] to another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// The entrypoint runs (`runc start`).
    Start,
    /// The user freezes the task (`docker pause`).
    Pause,
    /// The user thaws it (`docker unpause`).
    Resume,
    /// Idle (or asked): the sleep begins; from here the task is frozen and dumped.
    BeginSleep,
    /// The dump succeeded: no process remains, the sockets are held.
    SleepDone,
    /// The sleep was refused or the dump failed: the task runs on as before.
    SleepAborted,
    /// A connection, an exec, a signal or a request needs the task: restore begins.
    BeginWake,
    /// The restored task runs and has its sockets back.
    WakeDone,
    /// Idle for `doze-after`: frozen in place, memory paged out.
    Doze,
    /// A connection, data, an exec, a signal or a sleep needs the dozing task: thawed.
    Thaw,
    /// The task ended for good.
    Exit,
}

impl Transition {
    pub fn as_str(self) -> &'static str {
        match self {
            Transition::Start => "start",
            Transition::Pause => "pause",
            Transition::Resume => "resume",
            Transition::BeginSleep => "begin a sleep of",
            Transition::SleepDone => "finish a sleep of",
            Transition::SleepAborted => "abort a sleep of",
            Transition::BeginWake => "wake",
            Transition::WakeDone => "finish a wake of",
            Transition::Doze => "doze",
            Transition::Thaw => "thaw",
            Transition::Exit => "exit",
        }
    }
}

impl std::fmt::Display for Transition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("cannot {transition} a container that is {from}")]
pub struct TransitionError {
    pub from: State,
    pub transition: Transition,
}

/// Where `transition` leads from `from`, or why it cannot be taken.
pub fn next(from: State, transition: Transition) -> Result<State, TransitionError> {
    use State::*;
    use Transition::*;
    let to = match (from, transition) {
        (Created, Start) => Awake,
        (Awake, Pause) => Paused,
        (Paused, Resume) => Awake,
        (Awake, BeginSleep) => Sleeping,
        (Sleeping, SleepDone) => Asleep,
        (Sleeping, SleepAborted) => Awake,
        (Asleep, BeginWake) => Waking,
        (Waking, WakeDone) => Awake,
        (Awake, Doze) => Dozing,
        (Dozing, Thaw) => Awake,
        (Exited, Exit) => return Err(TransitionError { from, transition }),
        (_, Exit) => Exited,
        _ => return Err(TransitionError { from, transition }),
    };
    Ok(to)
}

#[cfg(test)]
mod tests {
    use super::*;
    use State::*;
    use Transition::*;

    const STATES: [State; 8] = [
        Created, Awake, Dozing, Paused, Sleeping, Asleep, Waking, Exited,
    ];
    const TRANSITIONS: [Transition; 11] = [
        Start,
        Pause,
        Resume,
        BeginSleep,
        SleepDone,
        SleepAborted,
        BeginWake,
        WakeDone,
        Doze,
        Thaw,
        Exit,
    ];

    #[test]
    fn the_sleep_wake_cycle() {
        let mut s = Created;
        for (t, want) in [
            (Start, Awake),
            (BeginSleep, Sleeping),
            (SleepDone, Asleep),
            (BeginWake, Waking),
            (WakeDone, Awake),
            (BeginSleep, Sleeping),
            (SleepAborted, Awake),
            (Pause, Paused),
            (Resume, Awake),
            (Doze, Dozing),
            (Thaw, Awake),
            (Exit, Exited),
        ] {
            s = next(s, t).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(s, want, "after {t:?}");
        }
    }

    #[test]
    fn exactly_these_transitions_are_legal() {
        let legal = [
            (Created, Start),
            (Awake, Pause),
            (Paused, Resume),
            (Awake, BeginSleep),
            (Sleeping, SleepDone),
            (Sleeping, SleepAborted),
            (Asleep, BeginWake),
            (Waking, WakeDone),
            (Awake, Doze),
            (Dozing, Thaw),
        ];
        for from in STATES {
            for t in TRANSITIONS {
                let ok = next(from, t).is_ok();
                let expected = legal.contains(&(from, t)) || (t == Exit && from != Exited);
                assert_eq!(ok, expected, "{from:?} --{t:?}-->");
            }
        }
    }

    #[test]
    fn illegal_transitions_say_what_and_from_where() {
        let e = next(Paused, BeginSleep).expect_err("a paused task does not sleep");
        assert_eq!(
            e,
            TransitionError {
                from: Paused,
                transition: BeginSleep
            }
        );
        assert_eq!(
            e.to_string(),
            "cannot begin a sleep of a container that is paused"
        );
        assert_eq!(
            next(Exited, Exit).expect_err("exits once").to_string(),
            "cannot exit a container that is exited"
        );
        assert!(
            next(Asleep, Pause).is_err(),
            "pause wakes first, never pauses a checkpoint"
        );
        assert!(next(Waking, BeginSleep).is_err());
        assert!(
            next(Dozing, BeginSleep).is_err() && next(Dozing, Pause).is_err(),
            "a dozing task is thawed first, then goes on from Awake"
        );
        assert!(next(Asleep, Doze).is_err(), "only an awake task dozes");
        assert!(
            next(Sleeping, BeginWake).is_err(),
            "a wake waits for the sleep to end"
        );
    }
}
