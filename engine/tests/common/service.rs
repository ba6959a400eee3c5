//! The counter service (examples/counter.py) under the engine alone: runc in a network
//! namespace the engine made, no containerd. Shared by the sleep/wake and doze tests.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lightwhale_engine::config::{sleep_config, NodeConfig, SleepConfig};
use lightwhale_engine::runc::Runc;
use lightwhale_engine::stdio::StdioPaths;
use lightwhale_engine::{reaper, Container, CreateRequest, Dirs, MemorySink};

pub const PORT: u16 = 8080;

pub struct Service {
    pub c: Arc<Container>,
    /// The node's template directory as this service's engine sees it.
    pub templates: PathBuf,
    pub sink: Arc<MemorySink>,
    pub netns: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Service {
    fn drop(&mut self) {
        // A failed assertion must not leave a container or a pinned namespace behind.
        let c = self.c.clone();
        let _ = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Runtime::new() {
                rt.block_on(async {
                    let _ = c.kill("", libc::SIGKILL as u32, true).await;
                    let _ = tokio::time::timeout(Duration::from_secs(10), c.delete()).await;
                });
            }
        })
        .join();
    }
}

fn counter_script() -> String {
    std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/counter.py"
    ))
    .expect("examples/counter.py")
}

fn profile(dir: &Path, body: &str) -> PathBuf {
    let p = dir.join("profile.conf");
    std::fs::write(&p, body).expect("profile");
    // The built-in defaults resolve the profile named "default": give them one.
    std::fs::write(dir.join("default.conf"), body).expect("default profile");
    p
}

/// Starts the counter service with `memory_mib` of touched memory under the engine;
/// `config` adjusts its sleep configuration (slept by hand unless it says otherwise),
/// `env` adds to the service's environment (`KEEPALIVE=1`).
pub async fn start_with(
    name: &str,
    memory_mib: u32,
    config: impl FnOnce(&mut SleepConfig),
    criu_profile: &str,
    env: &[&str],
) -> Service {
    start_in(name, memory_mib, config, criu_profile, env, None).await
}

/// As [`start_with`]; `templates`: the node's template directory (another service's, so
/// that a clone finds its template), else its own.
pub async fn start_in(
    name: &str,
    memory_mib: u32,
    config: impl FnOnce(&mut SleepConfig),
    criu_profile: &str,
    env: &[&str],
    templates: Option<&Path>,
) -> Service {
    super::require_privileges(name);
    reaper::set_subreaper().expect("subreaper");
    reaper::install().expect("reaper");
    let dir = tempfile::tempdir().expect("tempdir");
    let script = counter_script();
    let mem = format!("MEMORY_MIB={memory_mib}");
    let mut envs = vec![mem.as_str(), "PORT=8080"];
    envs.extend_from_slice(env);
    let bundle = super::host_usr_bundle(dir.path(), &["python3", "-c", &script], &envs);
    let id = format!("lw-engine-{name}-{}", std::process::id());
    let runc = Runc::new(
        Runc::find_binary("runc").expect("runc"),
        dir.path().join("runc-root"),
        false,
    );
    let sink = Arc::new(MemorySink::default());
    let mut sleep = SleepConfig {
        // Slept by hand in these tests: the monitor must stay out of the way.
        idle_timeout: Duration::from_secs(3600),
        criu_profile: "test".into(),
        criu_profile_path: profile(dir.path(), criu_profile),
        ..sleep_config(&[], &NodeConfig::default(), &[dir.path().to_path_buf()]).expect("config")
    };
    config(&mut sleep);
    let c = Container::create(CreateRequest {
        id: id.clone(),
        namespace: "engine-test".into(),
        bundle,
        stdio: StdioPaths {
            id,
            namespace: "engine-test".into(),
            ..Default::default()
        },
        config: sleep,
        runtime: Arc::new(runc),
        sink: sink.clone(),
        dirs: Dirs {
            templates: templates
                .map(Path::to_path_buf)
                .unwrap_or_else(|| Dirs::under(dir.path()).templates),
            ..Dirs::under(dir.path())
        },
        bundle_state: Default::default(),
        no_pivot: false,
        no_new_keyring: false,
        pod: Default::default(),
    })
    .await
    .expect("create");
    c.start("").await.expect("start");
    let netns = dir
        .path()
        .join("state/netns")
        .join(format!("engine-test-{}", c.id));
    assert!(netns.exists(), "the engine pins the container's namespace");
    let s = Service {
        templates: templates
            .map(Path::to_path_buf)
            .unwrap_or_else(|| Dirs::under(dir.path()).templates),
        c,
        sink,
        netns,
        _dir: dir,
    };
    // The service needs a moment to start (and to touch its memory).
    let deadline = Instant::now() + Duration::from_secs(30);
    while get(&s, "/digest").is_none() {
        assert!(Instant::now() < deadline, "the service did not come up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    s
}

pub fn get(s: &Service, path: &str) -> Option<String> {
    let (status, body) = super::get_in(&s.netns, PORT, path, Duration::from_secs(20))?;
    status.contains(" 200 ").then(|| body.trim().to_string())
}

pub fn count(s: &Service) -> u64 {
    get(s, "/")
        .and_then(|b| b.parse().ok())
        .expect("a count from the service")
}
