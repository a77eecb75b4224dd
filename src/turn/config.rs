//! The core's configuration (what a reload can change without touching sockets) and
//! the limits a client is held to. `crate::config` builds it from the TOML file.

use super::auth::Credentials;
use super::lookup::LookupSettings;
use super::nat_discovery::NatDiscovery;
use super::policy::PeerPolicy;
use super::source::SourcePrefix;
use super::{ClientAddr, FiveTuple};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::ops::RangeInclusive;
use std::time::Duration;

/// Where relay sockets bind and what address they advertise.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RelayAddresses {
    /// Bind IPv4 relays here; `None`: the local address the request arrived on.
    pub bind_v4: Option<Ipv4Addr>,
    /// Advertise this IPv4 address in XOR-RELAYED-ADDRESS (a server behind NAT).
    pub external_v4: Option<Ipv4Addr>,
    /// Bind IPv6 relays here; `None`: the local address the request arrived on.
    pub bind_v6: Option<Ipv6Addr>,
    /// Advertise this IPv6 address.
    pub external_v6: Option<Ipv6Addr>,
    /// The host's IPv4 address for an IPv4 relay requested over IPv6 with no
    /// `bind_v4` (RFC 8656 §7.2: IPv4 unless the client asks otherwise); the shell
    /// picks it from the interfaces. A request to `::1` gets `127.0.0.1` instead.
    pub host_v4: Option<Ipv4Addr>,
    /// The same for an IPv6 relay requested over IPv4.
    pub host_v6: Option<Ipv6Addr>,
}

/// Limits on what clients may hold: the `[limits]` table of the configuration file,
/// read straight into this type (one name per limit, from the file to the core).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct Quotas {
    /// Allocations on this server in all (508 past it).
    pub total_allocations: usize,
    /// Allocations per username (486 past it).
    pub allocations_per_user: usize,
    /// Allocations per client source (see `ipv4_prefix`; 486 past it).
    pub allocations_per_ip: usize,
    /// Permissions per allocation (486 past it).
    pub permissions_per_allocation: usize,
    /// Channels per allocation (486 past it).
    pub channels_per_allocation: usize,
    /// Unauthenticated requests answered with 401, per source per second; more are
    /// dropped unanswered so turnd cannot be used as a reflector.
    pub unauthenticated_per_second: u32,
    /// Burst allowance for the above.
    pub unauthenticated_burst: u32,
    /// Relayed payload bytes per second per allocation, both directions; 0: no cap.
    pub bandwidth_per_allocation: u64,
    /// Relayed payload bytes per second per user over all its allocations; 0: no cap.
    pub bandwidth_per_user: u64,
    /// RESERVATION-TOKENs (EVEN-PORT reservations) held at once over the server (508
    /// past it; 0 refuses them). Each also counts as an allocation of its user and
    /// source until it is redeemed or expires.
    pub total_reservations: usize,
    /// Leading bits of an IPv4 client address that name its source for every
    /// per-source limit (allocations-per-ip, the 401 limiter, TCP and admin caps).
    pub ipv4_prefix: u8,
    /// The same for IPv6 (64: one subnet, usually one host, counts once).
    pub ipv6_prefix: u8,
}

impl Quotas {
    /// How client addresses are grouped into sources.
    pub fn sources(&self) -> SourcePrefix {
        SourcePrefix { v4: self.ipv4_prefix, v6: self.ipv6_prefix }
    }
}

impl Default for Quotas {
    fn default() -> Self {
        let sources = SourcePrefix::default();
        Quotas {
            total_allocations: 10_000,
            allocations_per_user: 100,
            allocations_per_ip: 100,
            permissions_per_allocation: 64,
            channels_per_allocation: 64,
            unauthenticated_per_second: 20,
            unauthenticated_burst: 40,
            bandwidth_per_allocation: 0,
            bandwidth_per_user: 0,
            total_reservations: 1000,
            ipv4_prefix: sources.v4,
            ipv6_prefix: sources.v6,
        }
    }
}

/// The core's configuration: what can change on reload without touching sockets.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// SOFTWARE attribute on responses to authenticated and Binding requests.
    pub software: Option<String>,
    /// Accepted users and secrets, with the realm.
    pub credentials: Credentials,
    /// How long a nonce is valid.
    pub nonce_lifetime: Duration,
    /// The longest lifetime an allocation may be given.
    pub max_lifetime: Duration,
    /// Relay port range.
    pub port_range: RangeInclusive<u16>,
    /// Relay ports held at once at most: every relay socket holds a port of its own
    /// (a reservation holds one without a socket), so this bounds the descriptors relay
    /// sockets take to the open-file budget's share; past it, 508.
    pub relay_sockets: usize,
    /// Relay bind and advertised addresses.
    pub relay: RelayAddresses,
    /// Which peers may be reached.
    pub policy: PeerPolicy,
    /// Limits.
    pub quotas: Quotas,
    /// Clients whose packets are dropped before anything else looks at them (and whose
    /// allocations a reload that adds them closes).
    pub denied_clients: Vec<ipnet::IpNet>,
    /// Whether an allocation made with a TURN REST credential ends when the credential
    /// expires (its lifetime is capped there), not only at its next refresh.
    pub end_at_credential_expiry: bool,
    /// RFC 5780 NAT behaviour discovery on Binding (see `nat_discovery`); `None`: off.
    pub nat_discovery: Option<NatDiscovery>,
    /// RFC 8016 mobility: UDP clients that ask get a MOBILITY-TICKET and may move
    /// their allocation to a new 5-tuple; off, asking gets 405.
    pub mobility: bool,
    /// Users no local source knows are looked up (the authentication webhook) with
    /// these bounds; `None`: no webhook, such users get 401 at once.
    pub lookup: Option<LookupSettings>,
    /// The `[[tenant]]` realms besides the default one (`credentials`, `quotas` and
    /// `policy` above); see [`super::tenant`].
    pub tenants: Vec<super::tenant::Tenant>,
    /// When new Allocates go to another node of the fleet (`[cluster]`); the default
    /// sends none away.
    pub redirect: super::fleet::RedirectPolicy,
}

impl Default for CoreConfig {
    fn default() -> Self {
        CoreConfig {
            software: Some(concat!("turnd/", env!("CARGO_PKG_VERSION")).to_owned()),
            credentials: Credentials::new("turnd"),
            nonce_lifetime: Duration::from_secs(600),
            max_lifetime: Duration::from_secs(3600),
            port_range: 49152..=65535,
            relay_sockets: usize::MAX,
            relay: RelayAddresses::default(),
            policy: PeerPolicy::default(),
            quotas: Quotas::default(),
            denied_clients: Vec::new(),
            end_at_credential_expiry: false,
            nat_discovery: None,
            mobility: true,
            lookup: None,
            tenants: Vec::new(),
            redirect: super::fleet::RedirectPolicy::default(),
        }
    }
}

impl CoreConfig {
    /// Whether `client` is in `denied_clients`.
    pub(crate) fn is_denied_client(&self, client: ClientAddr) -> bool {
        let ip = super::policy::canonical(client.ip());
        self.denied_clients.iter().any(|net| net.contains(&ip))
    }

    /// The discovery addresses when a request from `from` is answered by RFC 5780
    /// rules: discovery is on and `from` arrived on one of its four addresses.
    pub(crate) fn nat_discovery_for(&self, from: FiveTuple) -> Option<NatDiscovery> {
        self.nat_discovery.filter(|d| d.locate(from.server).is_some())
    }

    /// Takes the host's interface addresses: the relay address of a family a request
    /// did not come over, and (with the configured relay addresses) the host the peer
    /// policy keeps peers away from.
    pub(crate) fn set_host_addresses(&mut self, interfaces: &[IpAddr]) {
        let relay = &mut self.relay;
        relay.host_v4 = super::host::primary_v4(interfaces);
        relay.host_v6 = super::host::primary_v6(interfaces);
        let configured = [relay.bind_v4.map(IpAddr::V4), relay.external_v4.map(IpAddr::V4)]
            .into_iter()
            .chain([relay.bind_v6.map(IpAddr::V6), relay.external_v6.map(IpAddr::V6)])
            .flatten();
        let all: Vec<IpAddr> = interfaces.iter().copied().chain(configured).collect();
        for policy in self.policies_mut() {
            policy.set_host_addresses(all.iter().copied());
        }
    }
}
