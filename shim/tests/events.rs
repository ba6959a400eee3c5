//! lightwhale's own events on containerd's event bus: a subscriber (`ctr events`) sees a
//! real sleep and wake of a container, and a doze and its thaw, with their figures.

mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

#[test]
#[ignore = "needs the real stack (root, runc, CRIU, containerd, dockerd): make test runs it"]
fn a_subscriber_sees_sleep_wake_doze_and_thaw() {
    require_stack("events on containerd's bus");
    let mut sub = Command::new("ctr")
        .args(["events"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("ctr events");
    let (_c, port, id) = run_published("events", "1h", &[], &HTTPD);
    assert!(http_get(port).contains("hello"));
    sleep_now(&id);
    assert!(try_get(port, Duration::from_secs(20)).is_some(), "woken");
    wait_state("moby", &id, "awake", Duration::from_secs(10));
    // Then a doze (asked for), and a request that thaws it.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !run("lightwhale", &["doze", &id]).stdout.contains("dozing") {
        assert!(std::time::Instant::now() < deadline, "{id} would not doze");
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(try_get(port, Duration::from_secs(20)).is_some(), "thawed");
    // The publisher sends in order, right after each transition.
    std::thread::sleep(Duration::from_secs(1));
    let _ = sub.kill();
    let mut out = String::new();
    if let Some(mut o) = sub.stdout.take() {
        let _ = o.read_to_string(&mut out);
    }
    let _ = sub.wait();
    let mine: Vec<&str> = out.lines().filter(|l| l.contains(&id)).collect();
    let asleep = mine
        .iter()
        .find(|l| l.contains("/lightwhale/container/asleep"))
        .unwrap_or_else(|| panic!("no asleep event for {id}: {mine:#?}"));
    assert!(asleep.contains("lightwhale.io/took-ms"), "{asleep}");
    let awake = mine
        .iter()
        .find(|l| l.contains("/lightwhale/container/awake"))
        .unwrap_or_else(|| panic!("no awake event for {id}: {mine:#?}"));
    assert!(
        awake.contains("\"lightwhale.io/trigger\":\"connection\""),
        "{awake}"
    );
    let at = |needle: &str| mine.iter().position(|l| l.contains(needle));
    assert!(
        at("/lightwhale/container/asleep") < at("/lightwhale/container/awake"),
        "in order: {mine:#?}"
    );
    let dozing = at("/lightwhale/container/dozing")
        .unwrap_or_else(|| panic!("no dozing event for {id}: {mine:#?}"));
    assert!(
        mine[dozing].contains("lightwhale.io/rss-before-bytes"),
        "{}",
        mine[dozing]
    );
    let thawed = at("/lightwhale/container/thawed")
        .unwrap_or_else(|| panic!("no thawed event for {id}: {mine:#?}"));
    assert!(
        mine[thawed].contains("\"lightwhale.io/trigger\":\"connection\""),
        "{}",
        mine[thawed]
    );
    assert!(
        at("/lightwhale/container/awake") < Some(dozing) && dozing < thawed,
        "in order: {mine:#?}"
    );
}
