//! `wasmos sim`: the real allocator in virtual time against simulated agents and frameworks.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Result, bail};
use clap::{Args, ValueEnum};

use crate::output::{Format, OutputArg, print_json};

#[derive(Args)]
pub(crate) struct SimArgs {
    #[arg(long, value_enum, default_value_t = SimScenario::ThreeTenants)]
    pub(crate) scenario: SimScenario,
    /// Seed of the simulation's random numbers: the same seed gives the same output.
    #[arg(long, default_value_t = 1)]
    pub(crate) seed: u64,
    /// Number of simulated agents (8 cores, 32 GiB each).
    #[arg(long, default_value_t = 1000)]
    pub(crate) agents: usize,
    /// Virtual time to simulate [default: the scenario's, 10m].
    #[arg(long)]
    pub(crate) duration: Option<humantime::Duration>,
    #[command(flatten)]
    pub(crate) out: OutputArg,
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum SimScenario {
    /// Tenants a, b, c with weights 1:1:2, all backlogged; 10 % of the agents leave at 300 s.
    ThreeTenants,
    /// Two tenants keep the cluster full; a third with a 40 % CPU guarantee arrives at 120 s.
    QuotaArrival,
}

pub(crate) fn sim_cmd(args: &SimArgs) -> Result<ExitCode> {
    if args.agents == 0 || args.agents > 100_000 {
        bail!("--agents must be between 1 and 100000");
    }
    let mut scenario = match args.scenario {
        SimScenario::ThreeTenants => wasmos_sim::Scenario::three_tenants(args.agents),
        SimScenario::QuotaArrival => wasmos_sim::Scenario::quota_arrival(args.agents),
    };
    if let Some(d) = args.duration {
        scenario.duration_s = Duration::from(d).as_secs().max(1);
    }
    let report = wasmos_sim::run(&scenario, args.seed);
    match args.out.format {
        Format::Json => print_json(&report)?,
        Format::Table => print!("{}", report.render()),
    }
    Ok(ExitCode::SUCCESS)
}
