//! The commands, each as crictl does it: the same calls, the same output.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use k8s_cri::v1 as cri;
use regex::Regex;
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use crate::client::{call, request, Error, Runtime};
use crate::output::{self, StateKind, Times};
use crate::{Cli, Command, ContainerState, Format, PodState};

/// `println!` that returns a closed stdout (`| head`) as an error instead of panicking.
macro_rules! say {
    ($($arg:tt)*) => {
        write_text(&format!("{}\n", format_args!($($arg)*)))?
    };
}

fn write_text(text: &str) -> Result<(), Error> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(Error::Output)
}

pub async fn run(cli: Cli) -> Result<ExitCode, Error> {
    let mut rt = Runtime::connect(&cli.runtime_endpoint, cli.timeout).await?;
    let t = rt.timeout;
    let c = &mut rt.client;
    match cli.command {
        Command::Version => {
            let msg = cri::VersionRequest {
                version: "v1".into(),
            };
            let v = call("version", t, c.version(request(msg, t))).await?;
            say!("Version:  0.1.0");
            say!("RuntimeName:  {}", v.runtime_name);
            say!("RuntimeVersion:  {}", v.runtime_version);
            say!("RuntimeApiVersion:  {}", v.runtime_api_version);
        }
        Command::Runp {
            runtime,
            pod_config,
        } => {
            let config: cri::PodSandboxConfig = read_config("pod config", &pod_config)?;
            let msg = cri::RunPodSandboxRequest {
                config: Some(config),
                runtime_handler: runtime.unwrap_or_default(),
            };
            let reply = call("run pod sandbox", t, c.run_pod_sandbox(request(msg, t))).await?;
            say!("{}", reply.pod_sandbox_id);
        }
        Command::Create {
            pod_id,
            container_config,
            pod_config,
        } => {
            let config: cri::ContainerConfig = read_config("container config", &container_config)?;
            let sandbox: cri::PodSandboxConfig = read_config("pod config", &pod_config)?;
            let msg = cri::CreateContainerRequest {
                pod_sandbox_id: pod_id,
                config: Some(config),
                sandbox_config: Some(sandbox),
            };
            let reply = call("create container", t, c.create_container(request(msg, t))).await?;
            say!("{}", reply.container_id);
        }
        Command::Start { ids } => {
            for id in ids {
                let msg = cri::StartContainerRequest {
                    container_id: id.clone(),
                };
                let what = format!("start container {id}");
                call(&what, t, c.start_container(request(msg, t))).await?;
                say!("{id}");
            }
        }
        Command::Pods {
            name,
            namespace,
            state,
            id,
            quiet,
            output,
            no_trunc,
        } => {
            let name = regex("--name", name.as_deref())?;
            let namespace = regex("--namespace", namespace.as_deref())?;
            let state = state.map(|s| cri::PodSandboxStateValue {
                state: match s {
                    PodState::Ready => cri::PodSandboxState::SandboxReady,
                    PodState::Notready => cri::PodSandboxState::SandboxNotready,
                } as i32,
            });
            let msg = cri::ListPodSandboxRequest {
                filter: Some(cri::PodSandboxFilter {
                    id: id.unwrap_or_default(),
                    state,
                    ..Default::default()
                }),
            };
            let reply = call("list pod sandboxes", t, c.list_pod_sandbox(request(msg, t))).await?;
            let mut pods: Vec<cri::PodSandbox> = reply
                .items
                .into_iter()
                .filter(|p| {
                    let meta = p.metadata.clone().unwrap_or_default();
                    matches(&name, &meta.name) && matches(&namespace, &meta.namespace)
                })
                .collect();
            pods.sort_by_key(|p| std::cmp::Reverse(p.created_at));
            print_pods(&pods, quiet, output, no_trunc)?;
        }
        Command::Ps {
            all,
            pod,
            name,
            state,
            id,
            quiet,
            output,
            no_trunc,
        } => {
            let name = regex("--name", name.as_deref())?;
            let state = match (state, all) {
                (Some(s), _) => Some(match s {
                    ContainerState::Created => cri::ContainerState::ContainerCreated,
                    ContainerState::Running => cri::ContainerState::ContainerRunning,
                    ContainerState::Exited => cri::ContainerState::ContainerExited,
                    ContainerState::Unknown => cri::ContainerState::ContainerUnknown,
                }),
                (None, true) => None,
                (None, false) => Some(cri::ContainerState::ContainerRunning),
            };
            let msg = cri::ListContainersRequest {
                filter: Some(cri::ContainerFilter {
                    id: id.unwrap_or_default(),
                    pod_sandbox_id: pod.unwrap_or_default(),
                    state: state.map(|s| cri::ContainerStateValue { state: s as i32 }),
                    ..Default::default()
                }),
            };
            let reply = call("list containers", t, c.list_containers(request(msg, t))).await?;
            let mut containers: Vec<cri::Container> = reply
                .containers
                .into_iter()
                .filter(|c| matches(&name, &c.metadata.clone().unwrap_or_default().name))
                .collect();
            containers.sort_by_key(|c| std::cmp::Reverse(c.created_at));
            print_containers(&containers, quiet, output, no_trunc)?;
        }
        Command::Inspectp { pods } => {
            for pod in pods {
                let msg = cri::PodSandboxStatusRequest {
                    pod_sandbox_id: pod.clone(),
                    verbose: true,
                };
                let what = format!("status of pod {pod}");
                let reply = call(&what, t, c.pod_sandbox_status(request(msg, t))).await?;
                let status = reply.status.unwrap_or_default();
                let status = output::to_json(&status, StateKind::Pod, Times::Rfc3339);
                say!("{}", output::inspect(status, &reply.info));
            }
        }
        Command::Inspect { ids } => {
            for id in ids {
                let msg = cri::ContainerStatusRequest {
                    container_id: id.clone(),
                    verbose: true,
                };
                let what = format!("status of container {id}");
                let reply = call(&what, t, c.container_status(request(msg, t))).await?;
                let status = reply.status.unwrap_or_default();
                let status = output::to_json(&status, StateKind::Container, Times::Rfc3339);
                say!("{}", output::inspect(status, &reply.info));
            }
        }
        Command::Exec {
            sync: _,
            timeout,
            id,
            cmd,
        } => {
            let msg = cri::ExecSyncRequest {
                container_id: id.clone(),
                cmd,
                timeout: i64::from(timeout),
            };
            // The command's own limit, plus time for the runtime to start and reap it.
            let deadline = t.max(Duration::from_secs(u64::from(timeout) + 10));
            let what = format!("exec in container {id}");
            let reply = call(&what, deadline, c.exec_sync(request(msg, deadline))).await?;
            write_out(std::io::stdout(), &reply.stdout);
            write_out(std::io::stderr(), &reply.stderr);
            return Ok(exit_code(reply.exit_code));
        }
        Command::Stop { timeout, ids } => {
            // The runtime waits up to `timeout` for the container to stop: give it that long.
            let deadline = t.max(Duration::from_secs(u64::from(timeout) + 10));
            for id in ids {
                stop_container(&mut rt, &id, timeout, deadline).await?;
                say!("{id}");
            }
        }
        Command::Stopp { pods } => {
            for pod in pods {
                let msg = cri::StopPodSandboxRequest {
                    pod_sandbox_id: pod.clone(),
                };
                let what = format!("stop pod {pod}");
                call(&what, t, c.stop_pod_sandbox(request(msg, t))).await?;
                say!("Stopped sandbox {pod}");
            }
        }
        Command::Rm { force, ids } => {
            for id in ids {
                let state = container_state(&mut rt, &id).await?;
                if state == cri::ContainerState::ContainerRunning as i32 {
                    if !force {
                        return Err(Error::other(format!(
                            "container {id} is running, stop it first or use rm -f"
                        )));
                    }
                    stop_container(&mut rt, &id, 0, t).await?;
                }
                let msg = cri::RemoveContainerRequest {
                    container_id: id.clone(),
                };
                let what = format!("remove container {id}");
                call(&what, t, rt.client.remove_container(request(msg, t))).await?;
                say!("{id}");
            }
        }
        Command::Rmp { force, pods } => {
            for pod in pods {
                let msg = cri::PodSandboxStatusRequest {
                    pod_sandbox_id: pod.clone(),
                    verbose: false,
                };
                let what = format!("status of pod {pod}");
                let status = call(&what, t, c.pod_sandbox_status(request(msg, t)))
                    .await?
                    .status
                    .unwrap_or_default();
                if status.state == cri::PodSandboxState::SandboxReady as i32 {
                    if !force {
                        return Err(Error::other(format!(
                            "pod {pod} is ready, stop it first (stopp) or use rmp -f"
                        )));
                    }
                    let msg = cri::StopPodSandboxRequest {
                        pod_sandbox_id: pod.clone(),
                    };
                    let what = format!("stop pod {pod}");
                    call(&what, t, c.stop_pod_sandbox(request(msg, t))).await?;
                }
                let msg = cri::RemovePodSandboxRequest {
                    pod_sandbox_id: pod.clone(),
                };
                let what = format!("remove pod {pod}");
                call(&what, t, c.remove_pod_sandbox(request(msg, t))).await?;
                say!("Removed sandbox {pod}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Reads and parses one of crictl's JSON config files, naming the file in any error.
fn read_config<T: DeserializeOwned>(what: &str, path: &Path) -> Result<T, Error> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::other(format!("read {what} {}: {e}", path.display())))?;
    crate::config::from_json(&text)
        .map_err(|e| Error::other(format!("{what} {}: {e}", path.display())))
}

fn regex(flag: &str, pattern: Option<&str>) -> Result<Option<Regex>, Error> {
    pattern
        .map(|p| Regex::new(p).map_err(|e| Error::other(format!("{flag} {p:?}: bad pattern: {e}"))))
        .transpose()
}

fn matches(filter: &Option<Regex>, text: &str) -> bool {
    filter.as_ref().is_none_or(|r| r.is_match(text))
}

async fn container_state(rt: &mut Runtime, id: &str) -> Result<i32, Error> {
    let msg = cri::ContainerStatusRequest {
        container_id: id.to_string(),
        verbose: false,
    };
    let what = format!("status of container {id}");
    let t = rt.timeout;
    let reply = call(&what, t, rt.client.container_status(request(msg, t))).await?;
    Ok(reply.status.map_or(-1, |s| s.state))
}

async fn stop_container(
    rt: &mut Runtime,
    id: &str,
    timeout: u32,
    deadline: Duration,
) -> Result<(), Error> {
    let msg = cri::StopContainerRequest {
        container_id: id.to_string(),
        timeout: i64::from(timeout),
    };
    let what = format!("stop container {id}");
    call(
        &what,
        deadline,
        rt.client.stop_container(request(msg, deadline)),
    )
    .await?;
    Ok(())
}

fn print_pods(
    pods: &[cri::PodSandbox],
    quiet: bool,
    format: Format,
    no_trunc: bool,
) -> Result<(), Error> {
    if quiet {
        for p in pods {
            say!("{}", p.id);
        }
        return Ok(());
    }
    match format {
        Format::Json => {
            let items: Vec<Value> = pods
                .iter()
                .map(|p| output::to_json(p, StateKind::Pod, Times::Nanos))
                .collect();
            say!("{}", output::pretty(&json!({ "items": items })));
        }
        Format::Table => {
            let rows: Vec<Vec<String>> = pods
                .iter()
                .map(|p| {
                    let meta = p.metadata.clone().unwrap_or_default();
                    let handler = if p.runtime_handler.is_empty() {
                        "(default)".to_string()
                    } else {
                        p.runtime_handler.clone()
                    };
                    vec![
                        id_cell(&p.id, no_trunc),
                        output::ago(p.created_at),
                        output::state_word(StateKind::Pod, p.state).to_string(),
                        meta.name,
                        meta.namespace,
                        meta.attempt.to_string(),
                        handler,
                    ]
                })
                .collect();
            let header = [
                "POD ID",
                "CREATED",
                "STATE",
                "NAME",
                "NAMESPACE",
                "ATTEMPT",
                "RUNTIME",
            ];
            write_text(&output::table(&header, &rows))?;
        }
    }
    Ok(())
}

fn print_containers(
    containers: &[cri::Container],
    quiet: bool,
    format: Format,
    no_trunc: bool,
) -> Result<(), Error> {
    if quiet {
        for c in containers {
            say!("{}", c.id);
        }
        return Ok(());
    }
    match format {
        Format::Json => {
            let items: Vec<Value> = containers
                .iter()
                .map(|c| output::to_json(c, StateKind::Container, Times::Nanos))
                .collect();
            say!("{}", output::pretty(&json!({ "containers": items })));
        }
        Format::Table => {
            let rows: Vec<Vec<String>> = containers
                .iter()
                .map(|c| {
                    let meta = c.metadata.clone().unwrap_or_default();
                    let image = c.image.clone().unwrap_or_default().image;
                    let pod_name = c
                        .labels
                        .get("io.kubernetes.pod.name")
                        .cloned()
                        .unwrap_or_default();
                    vec![
                        id_cell(&c.id, no_trunc),
                        id_cell(&image, no_trunc),
                        output::ago(c.created_at),
                        output::state_word(StateKind::Container, c.state).to_string(),
                        meta.name,
                        meta.attempt.to_string(),
                        id_cell(&c.pod_sandbox_id, no_trunc),
                        pod_name,
                    ]
                })
                .collect();
            let header = [
                "CONTAINER",
                "IMAGE",
                "CREATED",
                "STATE",
                "NAME",
                "ATTEMPT",
                "POD ID",
                "POD",
            ];
            write_text(&output::table(&header, &rows))?;
        }
    }
    Ok(())
}

/// An id cell: truncated like crictl's (an image digest too), unless --no-trunc.
fn id_cell(id: &str, no_trunc: bool) -> String {
    if no_trunc || !(id.starts_with("sha256:") || id.chars().all(|c| c.is_ascii_hexdigit())) {
        id.to_string()
    } else {
        output::short_id(id).to_string()
    }
}

fn write_out(mut to: impl Write, bytes: &[u8]) {
    // A closed pipe (`| head`) is not an error worth a panic.
    let _ = to.write_all(bytes);
    let _ = to.flush();
}

/// The command's exit status as ours: 0..=255 as is, anything else as 1.
fn exit_code(code: i32) -> ExitCode {
    match u8::try_from(code) {
        Ok(c) => ExitCode::from(c),
        Err(_) => ExitCode::FAILURE,
    }
}
