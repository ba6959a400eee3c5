//! Under memory pressure (the node's `memory-floor` above what is available), idle
//! containers sleep before their idle timeout, the longest idle first, and give their
//! memory back; a busy container is not touched. The floor here is set above the host's
//! memory, so that the node is under pressure for the whole test without starving it.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

const NS: &str = "moby";
const NODE_CONFIG: &str = "/etc/lightwhale/config.toml";

/// Sets the node config for the shims started meanwhile; puts the old one back on drop.
struct NodeConfig(Option<Vec<u8>>);

impl NodeConfig {
    fn set(text: &str) -> NodeConfig {
        let old = std::fs::read(NODE_CONFIG).ok();
        let mut body = old
            .as_deref()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .unwrap_or_default();
        body.push_str(text);
        std::fs::create_dir_all(Path::new(NODE_CONFIG).parent().expect("dir")).expect("mkdir");
        std::fs::write(NODE_CONFIG, body).expect("write the node config");
        NodeConfig(old)
    }
}

impl Drop for NodeConfig {
    fn drop(&mut self) {
        match &self.0 {
            Some(old) => std::fs::write(NODE_CONFIG, old).expect("restore the node config"),
            None => std::fs::remove_file(NODE_CONFIG).expect("remove the node config"),
        }
    }
}

fn asleep_within(id: &str, timeout: Duration) -> serde_json::Value {
    wait_state(NS, id, "asleep", timeout)
}

#[test]
#[ignore = "needs the real stack (root, runc, CRIU, containerd, dockerd): make test runs it"]
fn under_memory_pressure_the_longest_idle_sleep_first_and_busy_ones_stay_awake() {
    require_stack("memory pressure");
    let _config = NodeConfig::set("\nmemory-floor = \"1000Gi\"\n");
    let args = python_counter_args(&[], 32);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (_a, pa, a) = run_published("lwt-pressa", "1h", &[], &args);
    wait_get(pa, Duration::from_secs(30));
    // The busy one: a request every 250 ms from now to the end.
    let (_c, pc, c) = run_published("lwt-pressc", "1h", &[], &args);
    wait_get(pc, Duration::from_secs(30));
    let stop = Arc::new(AtomicBool::new(false));
    let failed = Arc::new(AtomicU64::new(0));
    let client = {
        let (stop, failed) = (stop.clone(), failed.clone());
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(60);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                if try_get(pc, Duration::from_secs(5)).is_none() {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(250));
            }
        })
    };
    std::thread::sleep(Duration::from_secs(2));
    let (_b, pb, b) = run_published("lwt-pressb", "1h", &[], &args);
    wait_get(pb, Duration::from_secs(30));

    // An hour's idle timeout, yet both sleep within seconds: the longer idle first.
    let sa = asleep_within(&a, Duration::from_secs(30));
    let sb = asleep_within(&b, Duration::from_secs(30));
    assert!(
        sa["since_unix_ms"].as_u64() < sb["since_unix_ms"].as_u64(),
        "the longest idle goes first: {sa} {sb}"
    );
    for s in [&sa, &sb] {
        assert_eq!(s["counters"]["pressure_sleeps"], 1, "{s}");
        assert!(
            s["memory_freed_bytes"].as_u64() >= Some(32 << 20),
            "its memory went back: {s}"
        );
    }
    stop.store(true, Ordering::Relaxed);
    client.join().expect("client");
    let sc = lw_status(NS, &c);
    assert_eq!(sc["state"], "awake", "the busy one is not touched: {sc}");
    assert_eq!(sc["sleeps"], 0, "{sc}");
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "its requests all answered"
    );
    // They wake with their state.
    assert_eq!(wait_get(pa, Duration::from_secs(30)).trim(), "2");
    assert_eq!(wait_get(pb, Duration::from_secs(30)).trim(), "2");
}
