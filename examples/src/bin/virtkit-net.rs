//! `virtkit-net`: set up a VM's host networking in a network namespace,
//! print what was made, and tear it all down when stdin closes.
//!
//! ```text
//! ip netns add pod1
//! # masquerade from a VM spec's pod interface (ports, CIDRs, MAC) ...
//! virtkit-net masquerade --netns pod1 --tag vm1 --vm examples/vms/demo.yaml
//! # ... or from flags
//! virtkit-net masquerade --netns pod1 --tag vm1 --mac 02:00:00:00:00:01 --port tcp:80
//! # a tap on an existing bridge, as a NetworkAttachmentDefinition says
//! virtkit-net bridge --netns pod1 --tag vm1 --mac 02:00:00:00:00:02 --nad red.yaml
//! # what a crashed run left behind
//! virtkit-net clean --netns pod1 --tag vm1
//! ```
//!
//! Exit codes: 0 after a clean teardown; 1 when setup or teardown failed
//! (the reason is printed); 2 bad usage or a bad spec.

use std::io::Read;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use virtkit_core::document::{parse_one, Mode, Object};
use virtkit_core::spec::network::{CniConfig, CniPlugin};
use virtkit_examples::load_vm;
use virtkit_net::{
    netns, plan_nics, BridgeBinding, BridgeBindingConfig, MacAddr, Masquerade, MasqueradeConfig,
    NicBinding, PortForward, Protocol,
};

#[derive(Parser)]
#[command(
    version,
    about = "Set up and tear down a VM's masquerade or bridge binding in a network namespace"
)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// NAT behind the namespace's address: bridge, tap, nftables, DHCP.
    Masquerade {
        /// The named network namespace (`ip netns`).
        #[arg(long)]
        netns: String,
        /// 1–10 characters [a-z0-9]; names the bridge, tap and table.
        #[arg(long)]
        tag: String,
        /// Take MAC, ports and CIDRs from this VM spec's pod interface.
        #[arg(long)]
        vm: Option<PathBuf>,
        /// The guest's MAC (overrides the spec's).
        #[arg(long)]
        mac: Option<String>,
        /// A forwarded port, `tcp:80` or `udp:53` (repeatable; none
        /// forwards every port).
        #[arg(long = "port")]
        ports: Vec<String>,
        /// A DNS server for the guest (repeatable).
        #[arg(long = "dns")]
        dns: Vec<Ipv4Addr>,
    },
    /// The guest's tap on an existing Linux bridge.
    Bridge {
        /// The named network namespace (`ip netns`).
        #[arg(long)]
        netns: String,
        /// 1–10 characters [a-z0-9]; names the tap and table.
        #[arg(long)]
        tag: String,
        /// The guest's MAC.
        #[arg(long)]
        mac: String,
        /// A NetworkAttachmentDefinition (YAML) with a bridge config.
        #[arg(long)]
        nad: PathBuf,
    },
    /// Remove what a masquerade binding with this tag left behind.
    Clean {
        /// The named network namespace (`ip netns`).
        #[arg(long)]
        netns: String,
        /// The binding's tag.
        #[arg(long)]
        tag: String,
    },
}

/// A failure and its exit code.
struct Failure(u8, String);

fn usage(message: String) -> Failure {
    Failure(2, message)
}

fn mac(text: &str) -> Result<MacAddr, Failure> {
    text.parse()
        .map_err(|e| usage(format!("--mac {text:?}: {e}")))
}

fn port(text: &str) -> Result<PortForward, Failure> {
    let (proto, number) = text
        .split_once(':')
        .ok_or_else(|| usage(format!("--port {text:?}: expected tcp:PORT or udp:PORT")))?;
    let protocol = match proto {
        "tcp" => Protocol::Tcp,
        "udp" => Protocol::Udp,
        _ => {
            return Err(usage(format!(
                "--port {text:?}: {proto:?} is not tcp or udp"
            )))
        }
    };
    let port = number
        .parse()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| usage(format!("--port {text:?}: {number:?} is not 1–65535")))?;
    Ok(PortForward { protocol, port })
}

/// The masquerade config from the VM spec's pod interface and flags.
fn masquerade_config(
    tag: &str,
    vm: Option<&Path>,
    mac_flag: Option<&str>,
    ports: &[String],
    dns: &[Ipv4Addr],
) -> Result<MasqueradeConfig, Failure> {
    let mut cfg = match vm {
        Some(path) => {
            let (_, spec) =
                load_vm(Some(path), Mode::Strict, None).map_err(|m| usage(m.join("\n")))?;
            let plans = plan_nics(&spec).map_err(|e| usage(format!("{}: {e}", path.display())))?;
            let pod = plans
                .iter()
                .find(|p| matches!(p.binding, NicBinding::Masquerade { .. }))
                .ok_or_else(|| usage(format!("{}: no masquerade interface", path.display())))?;
            pod.masquerade_config(tag)
                .map_err(|e| usage(format!("{}: {e}", path.display())))?
        }
        None => {
            let text = mac_flag.ok_or_else(|| usage("give --mac or --vm".into()))?;
            MasqueradeConfig::new(tag, mac(text)?)
        }
    };
    if let Some(text) = mac_flag {
        cfg.guest_mac = mac(text)?;
    }
    if !ports.is_empty() {
        cfg.ports = ports.iter().map(|p| port(p)).collect::<Result<_, _>>()?;
    }
    cfg.dns = dns.to_vec();
    Ok(cfg)
}

/// The bridge config of the NetworkAttachmentDefinition at `path`.
fn bridge_config(tag: &str, mac_text: &str, path: &Path) -> Result<BridgeBindingConfig, Failure> {
    let text =
        std::fs::read_to_string(path).map_err(|e| usage(format!("{}: {e}", path.display())))?;
    let doc = parse_one(&text, Mode::Strict)
        .map_err(|e| usage(format!("{}: {}: {}", path.display(), e.path, e.message)))?;
    let Object::NetworkAttachmentDefinition(nad) = doc.object else {
        return Err(usage(format!(
            "{}: a NetworkAttachmentDefinition is needed, not a {}",
            path.display(),
            doc.object.kind()
        )));
    };
    let config = CniConfig::parse(&nad.spec.config).map_err(|e| {
        usage(format!(
            "{}: spec.config: {}: {}",
            path.display(),
            e.path,
            e.message
        ))
    })?;
    let bridge = config
        .plugins
        .iter()
        .find_map(|p| match p {
            CniPlugin::Bridge(b) => Some(b),
            _ => None,
        })
        .ok_or_else(|| {
            usage(format!(
                "{}: spec.config has no bridge plugin",
                path.display()
            ))
        })?;
    BridgeBindingConfig::from_nad(tag, bridge, mac(mac_text)?)
        .map_err(|e| usage(format!("{}: spec.config: {e}", path.display())))
}

fn wait_for_stdin_to_close() {
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
}

fn run(args: Args) -> Result<(), Failure> {
    match args.command {
        Command::Masquerade {
            netns: name,
            tag,
            vm,
            mac,
            ports,
            dns,
        } => {
            let cfg = masquerade_config(&tag, vm.as_deref(), mac.as_deref(), &ports, &dns)?;
            let summary = format!(
                "gateway {}, guest {} (MAC {}), ports {}",
                cfg.gateway(),
                cfg.guest(),
                cfg.guest_mac,
                if cfg.ports.is_empty() {
                    "all but the reserved".to_string()
                } else {
                    cfg.ports
                        .iter()
                        .map(|p| format!("{}:{}", p.protocol.as_str(), p.port))
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            );
            let binding = Masquerade::setup(Some(netns::named(&name)), cfg)
                .map_err(|e| Failure(1, format!("masquerade setup failed: {e}")))?;
            let names = binding.names();
            println!(
                "masquerade up in {name}: bridge {}, tap {}, table inet {}; {summary}",
                names.bridge, names.tap, names.table
            );
            println!("close stdin (Ctrl-D) to tear it down");
            wait_for_stdin_to_close();
            binding
                .teardown()
                .map_err(|e| Failure(1, format!("teardown failed: {e}")))?;
        }
        Command::Bridge {
            netns: name,
            tag,
            mac,
            nad,
        } => {
            let cfg = bridge_config(&tag, &mac, &nad)?;
            let bridge = cfg.bridge.clone();
            let binding = BridgeBinding::attach(Some(netns::named(&name)), cfg)
                .map_err(|e| Failure(1, format!("bridge setup failed: {e}")))?;
            println!(
                "bridge binding up in {name}: tap {} on {bridge}",
                binding.tap()
            );
            println!("close stdin (Ctrl-D) to tear it down");
            wait_for_stdin_to_close();
            binding
                .teardown()
                .map_err(|e| Failure(1, format!("teardown failed: {e}")))?;
        }
        Command::Clean { netns: name, tag } => {
            let found = Masquerade::clean_stale(Some(&netns::named(&name)), &tag)
                .map_err(|e| Failure(1, format!("cleanup failed: {e}")))?;
            println!(
                "{}",
                if found {
                    "removed what the binding left behind"
                } else {
                    "nothing to remove"
                }
            );
            return Ok(());
        }
    }
    println!("torn down");
    Ok(())
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(code, message)) => {
            eprintln!("virtkit-net: {message}");
            ExitCode::from(code)
        }
    }
}
