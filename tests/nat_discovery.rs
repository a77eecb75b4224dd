//! RFC 5780 NAT behaviour discovery against real NATs built from network namespaces,
//! classified by coturn's `turnutils_natdiscovery` (and by stuntman's `stunclient
//! --mode full` where it is installed: Debian 12 no longer packages it):
//!
//! ```text
//!   pub: turnd on 100.y.0.1:P (primary) and 100.y.0.3:P+1 (alternate), both on lo
//!    |-- to{i} 100.y.i.1 ---- wan 100.y.i.2 [nat{i}] lan ---- eth0 [h{i}]
//! ```
//!
//! One NAT namespace per behaviour, each with one host behind it:
//!
//! - `open`: routing only, the host has a public address (no NAT at all);
//! - `full-cone`: MASQUERADE keeping the source port (Linux conntrack does when the
//!   port is free: endpoint-independent mapping) and every inbound UDP datagram DNATed
//!   to the host (endpoint-independent filtering);
//! - `restricted`: the same mapping, and inbound datagrams accepted from an IP the
//!   host has sent to (`-m recent`): address-dependent filtering;
//! - `port-restricted`: the same mapping, and only conntrack's replies let back in:
//!   address- and port-dependent filtering;
//! - `symmetric`: MASQUERADE `--random-fully` (a new random port per destination:
//!   address- and port-dependent mapping) and conntrack's replies only.
//!
//! Each tool runs with a timeout; namespaces are removed on drop (tests/netns).
// A test may unwrap (a panic is a failed test) and use unsafe for process plumbing
// (signals, namespaces); the server code denies both (Cargo.toml [lints]).
#![allow(unsafe_code, clippy::unwrap_used, clippy::expect_used)]

mod common;
mod netns;

use common::*;
use netns::Netns;
use std::process::Command;
use std::time::Duration;

/// How long one discovery run may take (each tool retries for a few seconds).
const TOOL_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Behaviour {
    Open,
    FullCone,
    Restricted,
    PortRestricted,
    Symmetric,
}

const ALL: [Behaviour; 5] =
    [Behaviour::Open, Behaviour::FullCone, Behaviour::Restricted, Behaviour::PortRestricted, Behaviour::Symmetric];

impl Behaviour {
    /// (mapping, filtering) as RFC 4787 names them: EI, AD or APD.
    fn expected(self) -> (&'static str, &'static str) {
        match self {
            Behaviour::Open | Behaviour::FullCone => ("EI", "EI"),
            Behaviour::Restricted => ("EI", "AD"),
            Behaviour::PortRestricted => ("EI", "APD"),
            Behaviour::Symmetric => ("APD", "APD"),
        }
    }

    fn iptables(self, host: &str) -> Vec<Vec<String>> {
        let rules: Vec<String> = match self {
            Behaviour::Open => vec![],
            Behaviour::FullCone => vec![
                "-t nat -A POSTROUTING -o wan -j MASQUERADE".into(),
                format!("-t nat -A PREROUTING -i wan -p udp -j DNAT --to-destination {host}"),
                "-P FORWARD ACCEPT".into(),
            ],
            Behaviour::Restricted => vec![
                "-t nat -A POSTROUTING -o wan -j MASQUERADE".into(),
                format!("-t nat -A PREROUTING -i wan -p udp -j DNAT --to-destination {host}"),
                "-P FORWARD DROP".into(),
                "-A FORWARD -i lan -o wan -m recent --name sent --rdest --set -j ACCEPT".into(),
                "-A FORWARD -i wan -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT".into(),
                "-A FORWARD -i wan -m recent --name sent --rsource --rcheck -j ACCEPT".into(),
            ],
            Behaviour::PortRestricted | Behaviour::Symmetric => {
                let random = if self == Behaviour::Symmetric { " --random-fully" } else { "" };
                vec![
                    format!("-t nat -A POSTROUTING -o wan -j MASQUERADE{random}"),
                    "-P FORWARD DROP".into(),
                    "-A FORWARD -i lan -o wan -j ACCEPT".into(),
                    "-A FORWARD -i wan -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT".into(),
                ]
            }
        };
        rules.iter().map(|r| r.split(' ').map(str::to_owned).collect()).collect()
    }
}

/// turnd in `pub` with its two addresses, and one NAT and host per behaviour. Fields
/// drop in order: turnd first, then the namespaces.
struct Topology {
    _turnd: TurndProcess,
    primary: String,
    port: u16,
    /// Each behaviour with its host and its NAT.
    hosts: Vec<(Behaviour, Netns, Netns)>,
    _public: Netns,
}

impl Topology {
    fn new() -> Topology {
        let x = 10 + netns::subnet_tag();
        let y = 64 + netns::subnet_tag();
        let public = Netns::new("rfcpub");
        public.sysctl("net.ipv4.ip_forward=1");
        let (primary, alternate) = (format!("100.{y}.0.1"), format!("100.{y}.0.3"));
        public.ip(&["addr", "add", &format!("{primary}/32"), "dev", "lo"]);
        public.ip(&["addr", "add", &format!("{alternate}/32"), "dev", "lo"]);
        let mut hosts = Vec::new();
        for (i, behaviour) in ALL.into_iter().enumerate() {
            let i = i + 1;
            let nat = Netns::new(&format!("rfcnat{i}"));
            let host = Netns::new(&format!("rfch{i}"));
            netns::link(
                &public,
                &format!("to{i}"),
                &format!("100.{y}.{i}.1/24"),
                &nat,
                "wan",
                &format!("100.{y}.{i}.2/24"),
            );
            // Without a NAT the host has a public address, routed by `pub`.
            let lan = if behaviour == Behaviour::Open { format!("100.{y}.{}", 100 + i) } else { format!("10.{x}.{i}") };
            netns::link(&nat, "lan", &format!("{lan}.1/24"), &host, "eth0", &format!("{lan}.2/24"));
            nat.ip(&["route", "add", "default", "via", &format!("100.{y}.{i}.1")]);
            host.ip(&["route", "add", "default", "via", &format!("{lan}.1")]);
            if behaviour == Behaviour::Open {
                public.ip(&["route", "add", &format!("{lan}.0/24"), "via", &format!("100.{y}.{i}.2")]);
            }
            nat.sysctl("net.ipv4.ip_forward=1");
            for rule in behaviour.iptables(&format!("{lan}.2")) {
                let rule: Vec<&str> = rule.iter().map(String::as_str).collect();
                nat.exec("iptables", &rule);
            }
            hosts.push((behaviour, host, nat));
        }
        // A fixed port (RFC 5780 needs one), picked free inside `pub`.
        let port = public.enter(|| {
            (20000..40000)
                .step_by(7)
                .find(|p| {
                    std::net::UdpSocket::bind((primary.as_str(), *p)).is_ok()
                        && std::net::UdpSocket::bind((primary.as_str(), *p + 1)).is_ok()
                })
                .expect("a free port")
        });
        let config = format!(
            "[[listen]]\ntransport = \"udp\"\naddress = \"{primary}:{port}\"\n\
             [nat-discovery]\nalternate-address = \"{alternate}\"\n"
        );
        let turnd = public.enter(|| TurndProcess::start(&config, &[]));
        Topology { _turnd: turnd, primary, port, hosts, _public: public }
    }
}

/// Runs `program args` inside `host` with [`TOOL_TIMEOUT`]; returns its output.
fn run_in(host: &Netns, program: &str, args: &[&str]) -> String {
    let mut command = Command::new("ip");
    command.args(["netns", "exec", host.name(), program]).args(args);
    let out = run_with_timeout(&mut command, TOOL_TIMEOUT);
    assert!(!out.timed_out(), "{program} {args:?} timed out:\n{}", out.all());
    out.all()
}

/// Clears the address-dependent filter's memory of where the host sent.
fn forget_destinations(behaviour: Behaviour, nat: &Netns) {
    if behaviour == Behaviour::Restricted {
        nat.exec("sh", &["-c", "echo / > /proc/net/xt_recent/sent"]);
    }
}

/// (mapping, filtering) from turnutils_natdiscovery's report, as EI, AD or APD.
fn natdiscovery_verdict(output: &str) -> (Option<&'static str>, Option<&'static str>) {
    let kind = |line: &str| {
        let l = line.to_ascii_lowercase();
        if l.contains("address and port dependent") {
            Some("APD")
        } else if l.contains("address dependent") {
            Some("AD")
        } else if l.contains("endpoint independent") || l.contains("endpoint-independent") {
            Some("EI")
        } else {
            None
        }
    };
    let mut mapping = None;
    let mut filtering = None;
    for line in output.lines().filter(|l| l.starts_with("NAT with ")) {
        let l = line.to_ascii_lowercase();
        if l.contains("mapping") && mapping.is_none() {
            mapping = kind(line);
        } else if l.contains("filtering") && filtering.is_none() {
            filtering = kind(line);
        }
    }
    (mapping, filtering)
}

/// (mapping, filtering) from `stunclient --mode full`'s report.
fn stunclient_verdict(output: &str) -> (Option<&'static str>, Option<&'static str>) {
    let field = |name: &str| {
        output.lines().find(|l| l.starts_with(name)).and_then(|l| {
            let l = l.to_ascii_lowercase();
            if l.contains("address and port dependent") {
                Some("APD")
            } else if l.contains("address dependent") {
                Some("AD")
            } else if l.contains("endpoint independent") {
                Some("EI")
            } else {
                None
            }
        })
    };
    (field("Nat behavior"), field("Nat filtering"))
}

#[test]
fn rfc5780_clients_classify_each_nat() {
    if let Err(why) = netns::available() {
        if !need(false, &format!("network namespaces ({why})")) {
            return;
        }
    }
    if !need_tool("iptables", "iptables") || !need_tool("turnutils_natdiscovery", "coturn") {
        return;
    }
    let stunclient = tool_on_path("stunclient");
    if !stunclient {
        eprintln!("note: stunclient (stuntman-client) is not installed: only turnutils_natdiscovery runs");
    }
    let t = Topology::new();
    let port = t.port.to_string();
    let mut failures = Vec::new();
    for (behaviour, host, nat) in &t.hosts {
        let expected = behaviour.expected();
        // Mapping and filtering in separate runs: the mapping tests send to the
        // alternate IP, which an address-dependent filter remembers; it forgets before
        // the filtering run (a new run also takes a new local port).
        let mapping = run_in(host, "turnutils_natdiscovery", &["-m", "-p", &port, &t.primary]);
        forget_destinations(*behaviour, nat);
        let filtering = run_in(host, "turnutils_natdiscovery", &["-f", "-p", &port, &t.primary]);
        let verdict = (natdiscovery_verdict(&mapping).0, natdiscovery_verdict(&filtering).1);
        eprintln!("turnutils_natdiscovery, {behaviour:?}: {verdict:?}\n{mapping}{filtering}");
        if verdict != (Some(expected.0), Some(expected.1)) {
            failures.push(format!("turnutils_natdiscovery behind {behaviour:?}: {verdict:?}, expected {expected:?}"));
        }
        forget_destinations(*behaviour, nat);
        if stunclient {
            let report = run_in(host, "stunclient", &["--mode", "full", "--protocol", "udp", &t.primary, &port]);
            let verdict = stunclient_verdict(&report);
            eprintln!("stunclient, {behaviour:?}: {verdict:?}\n{report}");
            if verdict != (Some(expected.0), Some(expected.1)) {
                failures.push(format!("stunclient behind {behaviour:?}: {verdict:?}, expected {expected:?}"));
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}
