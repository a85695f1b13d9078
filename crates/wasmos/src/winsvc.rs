//! The agent as a Windows service: `wasmos agent service install|start|stop|status|uninstall`
//! talk to the service control manager, and `wasmos agent --windows-service NAME ...` is the
//! command it starts, which reports to it and stops the agent cleanly when asked.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::{Parser, Subcommand, ValueEnum};

use crate::agent::AgentArgs;

/// The service name when none is given.
pub(crate) const DEFAULT_NAME: &str = "wasmos-agent";

#[derive(Subcommand)]
pub(crate) enum ServiceCmd {
    /// Register the agent as a Windows service, with its flags after `--` (at least --master,
    /// --ca, --cert, --key and --work-dir, as absolute paths: services start in System32). It
    /// runs as its own virtual account, `NT SERVICE\NAME`, unless --account says otherwise,
    /// and logs to --log-file (default: agent.log in the work directory).
    Install {
        #[arg(long, default_value = DEFAULT_NAME)]
        name: String,
        /// Start at boot (auto) or only when asked (demand).
        #[arg(long, value_enum, default_value_t = StartArg::Auto)]
        start: StartArg,
        /// The account the service runs as [default: NT SERVICE\NAME, an account of its own
        /// that only this service uses, to grant its files to]. `LocalSystem` for the system.
        #[arg(long)]
        account: Option<String>,
        /// The agent's flags.
        #[arg(last = true, required = true, value_name = "AGENT FLAGS")]
        agent_args: Vec<String>,
    },
    /// Start the installed service and wait until it runs.
    Start {
        #[arg(long, default_value = DEFAULT_NAME)]
        name: String,
    },
    /// Stop the service (its tasks are stopped and reported first) and wait until it has.
    Stop {
        #[arg(long, default_value = DEFAULT_NAME)]
        name: String,
    },
    /// Whether the service is installed, and its state.
    Status {
        #[arg(long, default_value = DEFAULT_NAME)]
        name: String,
    },
    /// Stop the service if it runs, and remove it.
    Uninstall {
        #[arg(long, default_value = DEFAULT_NAME)]
        name: String,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum StartArg {
    Auto,
    Demand,
}

/// Agent flags checked as `wasmos agent` would parse them.
#[derive(Parser)]
#[command(name = "wasmos agent", no_binary_name = true)]
struct Flags {
    #[command(flatten)]
    agent: AgentArgs,
}

/// The command line the service control manager will start: the agent's flags, checked now
/// (a service that fails at boot tells nobody why), with the log file added if missing.
fn service_args(name: &str, given: &[String]) -> Result<Vec<String>> {
    let flags = match Flags::try_parse_from(given) {
        Ok(f) => f.agent,
        Err(e) => bail!("the agent flags after `--`: {e}"),
    };
    if flags.windows_service.is_some() {
        bail!("--windows-service is set by `service install` itself");
    }
    if flags.master.is_none() {
        bail!("the agent flags after `--` need --master");
    }
    let Some(work_dir) = flags.work_dir.clone() else {
        bail!(
            "the agent flags after `--` need --work-dir: a service's default data dir is its account's"
        );
    };
    let paths = [
        ("--ca", flags.tls.ca.as_deref()),
        ("--cert", flags.tls.cert.as_deref()),
        ("--key", flags.tls.key.as_deref()),
        ("--work-dir", Some(work_dir.as_path())),
        ("--log-file", flags.log_file.as_deref()),
    ];
    for (flag, path) in paths {
        match path {
            None if flag != "--log-file" => bail!("the agent flags after `--` need {flag}"),
            Some(p) if !is_absolute(p) => bail!(
                "{flag} `{}` must be an absolute path: a service starts in C:\\Windows\\System32",
                p.display()
            ),
            _ => {}
        }
    }
    let mut args = vec![
        "agent".to_string(),
        "--windows-service".to_string(),
        name.to_string(),
    ];
    args.extend(given.iter().cloned());
    if flags.log_file.is_none() {
        args.push("--log-file".into());
        args.push(work_dir.join("agent.log").display().to_string());
    }
    Ok(args)
}

/// Absolute in Windows' sense (`C:\x`, `\\server\share`) whatever OS checks it.
fn is_absolute(p: &Path) -> bool {
    let s = p.to_string_lossy();
    let b = s.as_bytes();
    p.is_absolute()
        || (b.len() >= 3
            && b[0].is_ascii_alphabetic()
            && b[1] == b':'
            && matches!(b[2], b'\\' | b'/'))
        || s.starts_with("\\\\")
}

pub(crate) fn run(cmd: ServiceCmd) -> Result<ExitCode> {
    if let ServiceCmd::Install {
        name, agent_args, ..
    } = &cmd
    {
        // Checked before anything else, on every OS, so the mistake is named first.
        service_args(name, agent_args)?;
    }
    imp::manage(cmd)
}

/// `wasmos agent --windows-service NAME`: run under the service control manager.
pub(crate) fn serve(name: String, args: AgentArgs) -> Result<ExitCode> {
    imp::serve(name, args)
}

#[cfg(not(windows))]
mod imp {
    use super::*;

    const ONLY_WINDOWS: &str = "Windows services exist only on Windows; on Linux use deploy/systemd, on macOS deploy/launchd";

    pub(super) fn manage(_cmd: ServiceCmd) -> Result<ExitCode> {
        bail!(ONLY_WINDOWS)
    }

    pub(super) fn serve(_name: String, _args: AgentArgs) -> Result<ExitCode> {
        bail!(ONLY_WINDOWS)
    }
}

#[cfg(windows)]
mod imp {
    use std::ffi::OsString;
    use std::sync::Mutex;
    use std::time::{Duration, Instant};

    use anyhow::Context;
    use windows_service::service::{
        ServiceAccess, ServiceAction, ServiceActionType, ServiceControl, ServiceControlAccept,
        ServiceErrorControl, ServiceExitCode, ServiceFailureActions, ServiceFailureResetPeriod,
        ServiceInfo, ServiceStartType, ServiceState, ServiceStatus, ServiceType,
    };
    use windows_service::service_control_handler::{self, ServiceControlHandlerResult};
    use windows_service::service_manager::{ServiceManager, ServiceManagerAccess};
    use windows_service::{define_windows_service, service_dispatcher};

    use super::*;

    /// Not running as a service: started from a console, say.
    const ERROR_FAILED_SERVICE_CONTROLLER_CONNECT: i32 = 1063;
    const ERROR_SERVICE_DOES_NOT_EXIST: i32 = 1060;

    pub(super) fn manage(cmd: ServiceCmd) -> Result<ExitCode> {
        let manager = ServiceManager::local_computer(
            None::<&str>,
            ServiceManagerAccess::CONNECT | ServiceManagerAccess::CREATE_SERVICE,
        )
        .context("cannot open the service control manager (an administrator's shell is needed)")?;
        match cmd {
            ServiceCmd::Install {
                name,
                start,
                account,
                agent_args,
            } => {
                let account = account.unwrap_or_else(|| format!("NT SERVICE\\{name}"));
                let info = ServiceInfo {
                    name: OsString::from(&name),
                    display_name: OsString::from(format!("Wasmos agent ({name})")),
                    service_type: ServiceType::OWN_PROCESS,
                    start_type: match start {
                        StartArg::Auto => ServiceStartType::AutoStart,
                        StartArg::Demand => ServiceStartType::OnDemand,
                    },
                    error_control: ServiceErrorControl::Normal,
                    executable_path: std::env::current_exe()
                        .context("cannot find this program's path")?,
                    launch_arguments: service_args(&name, &agent_args)?
                        .into_iter()
                        .map(OsString::from)
                        .collect(),
                    dependencies: Vec::new(),
                    account_name: (account != "LocalSystem").then(|| OsString::from(&account)),
                    account_password: None,
                };
                let service = manager
                    .create_service(&info, ServiceAccess::CHANGE_CONFIG | ServiceAccess::START)
                    .with_context(|| format!("cannot create service {name}"))?;
                let _ = service.set_description(
                    "Runs WebAssembly tasks for a Wasmos cluster (https://wasmos.dev)",
                );
                // Restarted after a crash, as systemd's Restart=on-failure does.
                let restart = ServiceFailureActions {
                    reset_period: ServiceFailureResetPeriod::After(Duration::from_secs(3600)),
                    reboot_msg: None,
                    command: None,
                    actions: Some(vec![
                        ServiceAction {
                            action_type: ServiceActionType::Restart,
                            delay: Duration::from_secs(2),
                        };
                        3
                    ]),
                };
                // An agent that ends with an error reports Stopped with a nonzero code: that is
                // a failure to restart after too, not only a crash.
                if let Err(e) = service
                    .update_failure_actions(restart)
                    .and_then(|()| service.set_failure_actions_on_non_crash_failures(true))
                {
                    tracing::warn!("the service will not be restarted after a failure: {e}");
                }
                println!("installed service {name} (running as {account})");
            }
            ServiceCmd::Start { name } => {
                let service = open(
                    &manager,
                    &name,
                    ServiceAccess::START | ServiceAccess::QUERY_STATUS,
                )?;
                service
                    .start::<OsString>(&[])
                    .with_context(|| format!("cannot start service {name}"))?;
                wait_for(&service, ServiceState::Running, &name)?;
                println!("service {name} is running");
            }
            ServiceCmd::Stop { name } => {
                let service = open(
                    &manager,
                    &name,
                    ServiceAccess::STOP | ServiceAccess::QUERY_STATUS,
                )?;
                stop(&service, &name)?;
                println!("service {name} is stopped");
            }
            ServiceCmd::Status { name } => {
                let service = open(&manager, &name, ServiceAccess::QUERY_STATUS)?;
                let status = service.query_status()?;
                println!("service {name}: {:?}", status.current_state);
            }
            ServiceCmd::Uninstall { name } => {
                let service = open(
                    &manager,
                    &name,
                    ServiceAccess::STOP | ServiceAccess::QUERY_STATUS | ServiceAccess::DELETE,
                )?;
                stop(&service, &name)?;
                service
                    .delete()
                    .with_context(|| format!("cannot remove service {name}"))?;
                println!("removed service {name}");
            }
        }
        Ok(ExitCode::SUCCESS)
    }

    fn open(
        manager: &ServiceManager,
        name: &str,
        access: ServiceAccess,
    ) -> Result<windows_service::service::Service> {
        manager.open_service(name, access).map_err(|e| match e {
            windows_service::Error::Winapi(io)
                if io.raw_os_error() == Some(ERROR_SERVICE_DOES_NOT_EXIST) =>
            {
                anyhow::anyhow!("no service {name} is installed (`wasmos agent service install`)")
            }
            e => anyhow::anyhow!("cannot open service {name}: {e}"),
        })
    }

    fn stop(service: &windows_service::service::Service, name: &str) -> Result<()> {
        if service.query_status()?.current_state != ServiceState::Stopped {
            service
                .stop()
                .with_context(|| format!("cannot stop service {name}"))?;
            wait_for(service, ServiceState::Stopped, name)?;
        }
        Ok(())
    }

    /// Waits up to 60 s (an agent stops its tasks before it stops) for `state`.
    fn wait_for(
        service: &windows_service::service::Service,
        state: ServiceState,
        name: &str,
    ) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let now = service.query_status()?.current_state;
            if now == state {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("service {name} is {now:?} after 60 s, not {state:?}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// What the service main takes: set before the dispatcher starts it, taken once.
    static SERVICE: Mutex<Option<(String, AgentArgs)>> = Mutex::new(None);
    static EXIT: Mutex<Option<String>> = Mutex::new(None);

    define_windows_service!(ffi_service_main, service_main);

    pub(super) fn serve(name: String, args: AgentArgs) -> Result<ExitCode> {
        if let Ok(mut slot) = SERVICE.lock() {
            *slot = Some((name.clone(), args));
        }
        match service_dispatcher::start(&name, ffi_service_main) {
            Ok(()) => {}
            Err(windows_service::Error::Winapi(e))
                if e.raw_os_error() == Some(ERROR_FAILED_SERVICE_CONTROLLER_CONNECT) =>
            {
                bail!(
                    "--windows-service is how the service control manager starts the agent; in a console, run `wasmos agent` without it"
                )
            }
            Err(e) => bail!("the service dispatcher failed: {e}"),
        }
        match EXIT.lock().ok().and_then(|mut e| e.take()) {
            Some(why) => bail!("{why}"),
            None => Ok(ExitCode::SUCCESS),
        }
    }

    fn service_main(_arguments: Vec<OsString>) {
        let Some((name, args)) = SERVICE.lock().ok().and_then(|mut s| s.take()) else {
            return;
        };
        if let Err(e) = run_service(&name, args)
            && let Ok(mut exit) = EXIT.lock()
        {
            tracing::error!("service {name}: {e:#}");
            *exit = Some(format!("{e:#}"));
        }
    }

    fn status(state: ServiceState, exit: u32) -> ServiceStatus {
        ServiceStatus {
            service_type: ServiceType::OWN_PROCESS,
            current_state: state,
            controls_accepted: if state == ServiceState::Running {
                ServiceControlAccept::STOP | ServiceControlAccept::SHUTDOWN
            } else {
                ServiceControlAccept::empty()
            },
            exit_code: if exit == 0 {
                ServiceExitCode::Win32(0)
            } else {
                ServiceExitCode::ServiceSpecific(exit)
            },
            checkpoint: 0,
            wait_hint: Duration::from_secs(30),
            process_id: None,
        }
    }

    fn run_service(name: &str, args: AgentArgs) -> Result<()> {
        let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
        let handler = move |control| match control {
            ServiceControl::Stop | ServiceControl::Shutdown => {
                let _ = stop_tx.send(true);
                ServiceControlHandlerResult::NoError
            }
            ServiceControl::Interrogate => ServiceControlHandlerResult::NoError,
            _ => ServiceControlHandlerResult::NotImplemented,
        };
        let handle = service_control_handler::register(name, handler)
            .context("registering the service control handler")?;
        handle.set_service_status(status(ServiceState::Running, 0))?;
        let stopped = async move {
            let _ = stop_rx.wait_for(|stop| *stop).await;
        };
        let result = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("cannot start the async runtime")
            .and_then(|rt| rt.block_on(crate::agent::agent_until(args, stopped)));
        handle.set_service_status(status(ServiceState::Stopped, u32::from(result.is_err())))?;
        result.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn install_checks_the_agent_flags_first() {
        let full = args(&[
            "--master",
            "10.0.0.1:7433",
            "--ca",
            "C:\\wasmos\\ca.pem",
            "--cert",
            "C:\\wasmos\\agent.pem",
            "--key",
            "C:\\wasmos\\agent.key",
            "--work-dir",
            "C:\\wasmos\\agent",
        ]);
        let line = service_args("svc", &full).unwrap_or_default();
        assert_eq!(line[..3], ["agent", "--windows-service", "svc"]);
        assert_eq!(line[line.len() - 2], "--log-file");
        assert!(line[line.len() - 1].ends_with("agent.log"), "{line:?}");

        let err = |v: &[String]| service_args("svc", v).err().map(|e| e.to_string());
        let mut relative = full.clone();
        relative[3] = "ca.pem".into();
        assert!(err(&relative).is_some_and(|e| e.contains("--ca `ca.pem` must be an absolute")));
        let no_work_dir = full[..8].to_vec();
        assert!(err(&no_work_dir).is_some_and(|e| e.contains("--work-dir")));
        let mut typo = full.clone();
        typo.push("--mem=lots".into());
        typo.push("--bogus".into());
        assert!(err(&typo).is_some_and(|e| e.contains("--bogus")));
    }
}
