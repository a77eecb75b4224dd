//! `[[tenant]]`: a realm besides the top-level one, with its own users, REST secrets,
//! limits and peer policy; `[[listen]] realm` and a tenant's `server-names` say which
//! clients belong to it. The top-level `realm`, `[auth]`, `[limits]` and `[relay]`
//! peer keys stay the default tenant, so a file without `[[tenant]]` means what it
//! always meant.

use super::auth::{parse_hex_key, User};
use super::{Config, ListenTransport, Quotas};
use crate::turn::auth::Credentials;
use crate::turn::policy::PeerPolicy;
use crate::turn::tenant::{Tenant, TenantId};
use ipnet::IpNet;
use serde::Deserialize;
use std::sync::Mutex;

/// The most `[[tenant]]` tables a file may have: metrics carry a `realm` label per
/// tenant, so the set stays small.
pub const MAX_TENANTS: usize = 64;

/// `[[tenant]]`.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct TenantConfig {
    /// The realm (RFC 8489 §14.9) its users authenticate in; unique in the file.
    pub realm: String,
    /// TLS server names (SNI) that choose this tenant on any `tls` listener, whatever
    /// the listener's own `realm`. The `[tls]` certificate must be valid for them (one
    /// certificate with several names).
    #[serde(default)]
    pub server_names: Vec<String>,
    /// Static users, as `[[auth.user]]`.
    #[serde(default)]
    pub user: Vec<User>,
    /// TURN REST API shared secrets, as `[auth] secrets`.
    #[serde(default, skip_serializing)]
    pub secrets: Vec<String>,
    /// Limits that differ from the top-level `[limits]`.
    #[serde(default)]
    pub limits: TenantLimits,
    /// Replaces `[relay] allowed-peers` for this tenant.
    #[serde(default)]
    pub allowed_peers: Option<Vec<IpNet>>,
    /// Replaces `[relay] denied-peers` for this tenant.
    #[serde(default)]
    pub denied_peers: Option<Vec<IpNet>>,
    /// Replaces `[relay] allow-host-peers` for this tenant.
    #[serde(default)]
    pub allow_host_peers: Option<bool>,
}

/// `[tenant.limits]`: each key unset takes the top-level `[limits]` value. Limits
/// that are about the server or a client source rather than a customer (the 401
/// limiter, reservations, source prefixes) stay server-wide.
#[derive(Debug, Clone, Copy, Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct TenantLimits {
    /// The tenant's allocations in all (508 past it), within the server's total.
    pub total_allocations: Option<usize>,
    /// Allocations per user of the tenant.
    pub allocations_per_user: Option<usize>,
    /// Allocations per client source, for this tenant's clients.
    pub allocations_per_ip: Option<usize>,
    /// Permissions per allocation.
    pub permissions_per_allocation: Option<usize>,
    /// Channels per allocation.
    pub channels_per_allocation: Option<usize>,
    /// Relayed bytes per second per allocation; 0: no cap.
    pub bandwidth_per_allocation: Option<u64>,
    /// Relayed bytes per second per user; 0: no cap.
    pub bandwidth_per_user: Option<u64>,
}

impl TenantLimits {
    /// `defaults` with these overrides.
    pub fn over(&self, defaults: &Quotas) -> Quotas {
        Quotas {
            total_allocations: self.total_allocations.unwrap_or(defaults.total_allocations),
            allocations_per_user: self.allocations_per_user.unwrap_or(defaults.allocations_per_user),
            allocations_per_ip: self.allocations_per_ip.unwrap_or(defaults.allocations_per_ip),
            permissions_per_allocation: self.permissions_per_allocation.unwrap_or(defaults.permissions_per_allocation),
            channels_per_allocation: self.channels_per_allocation.unwrap_or(defaults.channels_per_allocation),
            bandwidth_per_allocation: self.bandwidth_per_allocation.unwrap_or(defaults.bandwidth_per_allocation),
            bandwidth_per_user: self.bandwidth_per_user.unwrap_or(defaults.bandwidth_per_user),
            ..*defaults
        }
    }
}

/// Realm names to tenant ids, for the life of the process: a realm keeps its id
/// across reloads (an allocation's tenant, a connection's, still mean the same), and
/// a realm removed and added back gets its old id. It grows only with realm names an
/// operator configures, never with anything a client sends.
static REALM_IDS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// The id of `[[tenant]]` realm `realm` (1 and up; 0 is the default tenant), or
/// `None` once 65,535 distinct realms have been configured since start.
fn intern(realm: &str) -> Option<TenantId> {
    let mut ids = REALM_IDS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let index = match ids.iter().position(|r| r == realm) {
        Some(index) => index,
        None => {
            ids.push(realm.to_owned());
            ids.len() - 1
        }
    };
    u16::try_from(index + 1).ok().filter(|&id| id != u16::MAX).map(TenantId)
}

/// Credentials for `realm` from static users and REST secrets.
pub(super) fn credentials(realm: &str, users: &[User], secrets: &[String]) -> Credentials {
    let mut credentials = Credentials::new(realm);
    for user in users {
        match (&user.password, user.key.as_deref().and_then(parse_hex_key)) {
            (Some(password), _) => credentials.add_user(&user.name, password),
            (None, Some(key)) => credentials.add_user_key(&user.name, key),
            (None, None) => {}
        }
    }
    for secret in secrets {
        credentials.add_secret(secret.as_bytes());
    }
    credentials
}

/// A tenant check that failed: which `[[tenant]]` (or `[[listen]]`) table by index,
/// the key, and why.
pub type TenantError = (&'static str, usize, &'static str, String);

impl Config {
    /// The tenant `realm` names: the default one for the top-level realm, the
    /// `[[tenant]]` with that realm, or `None`.
    pub fn tenant_id(&self, realm: &str) -> Option<TenantId> {
        if realm == self.realm {
            return Some(TenantId::DEFAULT);
        }
        self.tenant.iter().find(|t| t.realm == realm).and_then(|t| intern(&t.realm))
    }

    /// The tenant each TLS server name chooses (lower case, no trailing dot).
    pub fn tenant_server_names(&self) -> Vec<(String, TenantId)> {
        self.tenant
            .iter()
            .filter_map(|t| Some((t, intern(&t.realm)?)))
            .flat_map(|(t, id)| t.server_names.iter().map(move |n| (normalize_name(n), id)))
            .collect()
    }

    /// Every tenant's realm, the default one first.
    pub fn realms(&self) -> Vec<String> {
        std::iter::once(self.realm.clone()).chain(self.tenant.iter().map(|t| t.realm.clone())).collect()
    }

    /// The core's `[[tenant]]`s, resolved against the top-level limits and policy.
    pub(super) fn core_tenants(&self) -> Vec<Tenant> {
        self.tenant
            .iter()
            .filter_map(|t| {
                let id = intern(&t.realm)?;
                let mut policy = PeerPolicy::new(
                    t.allowed_peers.clone().unwrap_or_else(|| self.relay.allowed_peers.clone()),
                    t.denied_peers.clone().unwrap_or_else(|| self.relay.denied_peers.clone()),
                );
                policy.allow_host_services(t.allow_host_peers.unwrap_or(self.relay.allow_host_peers));
                Some(Tenant {
                    id,
                    credentials: credentials(&t.realm, &t.user, &t.secrets),
                    quotas: t.limits.over(&self.limits),
                    policy,
                })
            })
            .collect()
    }

    /// The checks of `[[tenant]]` and `[[listen]] realm`.
    pub fn validate_tenants(&self) -> Result<(), TenantError> {
        const TENANT: &str = "[[tenant]]";
        if self.tenant.len() > MAX_TENANTS {
            return Err((TENANT, MAX_TENANTS, "realm", format!("at most {MAX_TENANTS} tenants")));
        }
        let mut names: Vec<(String, usize)> = Vec::new();
        for (i, t) in self.tenant.iter().enumerate() {
            if t.realm.is_empty() || t.realm.len() > 127 {
                return Err((TENANT, i, "realm", "must be 1 to 127 characters (RFC 8489 §14.9)".into()));
            }
            if t.realm == self.realm || self.tenant[..i].iter().any(|o| o.realm == t.realm) {
                return Err((TENANT, i, "realm", format!("{:?} is already a realm of this file", t.realm)));
            }
            for user in &t.user {
                match (&user.password, &user.key) {
                    (Some(_), None) => {}
                    (None, Some(key)) if parse_hex_key(key).is_some() => {}
                    (None, Some(_)) => {
                        return Err((TENANT, i, "key", format!("user {:?}: key must be 32 hex digits", user.name)))
                    }
                    _ => {
                        return Err((
                            TENANT,
                            i,
                            "name",
                            format!("user {:?}: give exactly one of password or key", user.name),
                        ))
                    }
                }
                if user.name.is_empty() || user.name.len() > 512 {
                    return Err((TENANT, i, "name", "must be 1 to 512 bytes (RFC 8489 §14.3)".into()));
                }
            }
            if t.secrets.iter().any(String::is_empty) {
                return Err((TENANT, i, "secrets", "a shared secret cannot be empty".into()));
            }
            let l = &t.limits;
            let counts = [
                l.total_allocations,
                l.allocations_per_user,
                l.allocations_per_ip,
                l.permissions_per_allocation,
                l.channels_per_allocation,
            ];
            if counts.contains(&Some(0)) {
                return Err((TENANT, i, "limits", "limits must be at least 1".into()));
            }
            for name in &t.server_names {
                let name = normalize_name(name);
                if name.is_empty() || name.len() > 253 {
                    return Err((TENANT, i, "server-names", "a server name is 1 to 253 characters".into()));
                }
                if let Some((_, other)) = names.iter().find(|(n, _)| *n == name) {
                    return Err((
                        TENANT,
                        i,
                        "server-names",
                        format!("{name:?} already chooses realm {:?}", self.tenant[*other].realm),
                    ));
                }
                names.push((name, i));
            }
            if !t.server_names.is_empty() && !self.listen.iter().any(|l| l.transport == ListenTransport::Tls) {
                return Err((TENANT, i, "server-names", "server names choose a tenant on tls listeners only".into()));
            }
        }
        for (i, listen) in self.listen.iter().enumerate() {
            if let Some(realm) = &listen.realm {
                if realm != &self.realm && !self.tenant.iter().any(|t| &t.realm == realm) {
                    return Err(("[[listen]]", i, "realm", format!("{realm:?} is neither `realm` nor a [[tenant]]")));
                }
            }
        }
        Ok(())
    }
}

/// A server name as TLS ClientHellos are compared with it.
pub fn normalize_name(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use crate::config::tests::parse;
    use crate::turn::TenantId;

    const TWO: &str = r#"
realm = "a.example"

[[auth.user]]
name = "alice"
password = "a-pass"

[[listen]]
transport = "udp"
address = "127.0.0.1:3478"

[[listen]]
transport = "udp"
address = "127.0.0.1:3479"
realm = "b.example"

[[tenant]]
realm = "b.example"
secrets = ["b-secret"]
allowed-peers = ["10.0.0.0/8"]

[[tenant.user]]
name = "alice"
password = "b-pass"

[tenant.limits]
allocations-per-user = 2
"#;

    #[test]
    fn a_tenant_has_its_own_users_limits_and_policy_over_the_defaults() {
        let config = parse(TWO).unwrap();
        let b = config.tenant_id("b.example").unwrap();
        assert_ne!(b, TenantId::DEFAULT);
        assert_eq!(config.tenant_id("a.example"), Some(TenantId::DEFAULT));
        assert_eq!(config.tenant_id("c.example"), None);
        let core = config.core();
        let tenant = core.tenant(b).unwrap();
        assert_eq!(tenant.credentials.realm(), "b.example");
        assert_eq!(tenant.credentials.user_count(), 1);
        assert_eq!(tenant.quotas.allocations_per_user, 2);
        assert_eq!(tenant.quotas.allocations_per_ip, core.quotas.allocations_per_ip, "unset: the default");
        assert!(tenant.policy.check_ip("10.1.2.3".parse().unwrap()).is_ok());
        assert!(core.policy.check_ip("10.1.2.3".parse().unwrap()).is_err());
        // The same realm keeps its id in a reloaded config.
        assert_eq!(parse(TWO).unwrap().tenant_id("b.example"), Some(b));
    }

    #[test]
    fn tenant_mistakes_name_the_table_line_and_key() {
        let dup = TWO.replace("realm = \"b.example\"\nsecrets", "realm = \"a.example\"\nsecrets");
        let err = parse(&dup).unwrap_err().to_string();
        assert!(err.starts_with("t.toml:18: `tenant.realm`:") && err.contains("already a realm"), "{err}");
        let unknown = TWO.replace("realm = \"b.example\"\n\n[[tenant]]", "realm = \"c.example\"\n\n[[tenant]]");
        let err = parse(&unknown).unwrap_err().to_string();
        assert!(err.starts_with("t.toml:15: `listen.realm`:") && err.contains("c.example"), "{err}");
        let err = parse(&TWO.replace("allowed-peers", "server-names = [\"b.example\"]\nallowed-peers")).unwrap_err();
        let err = err.to_string();
        assert!(err.contains("tls listeners only"), "{err}");
        let err = parse(&TWO.replace("allocations-per-user = 2", "allocations-per-user = 0")).unwrap_err();
        assert!(err.to_string().starts_with("t.toml:26: `tenant.limits`"), "{err}");
        let err = parse(&format!("{TWO}\n[[tenant]]\nrealm = \"c\"\nsurname = 1\n")).unwrap_err().to_string();
        assert!(err.contains("surname"), "{err}");
    }
}

#[cfg(test)]
mod readme {
    use crate::config::tests::parse;

    /// The README's "Tenants" example is a whole config: it must parse and mean what the
    /// text around it says.
    #[test]
    fn the_readme_tenants_example_parses() {
        let readme = include_str!("../../README.md");
        let section = &readme[readme.find("### Tenants").unwrap()..];
        let start = section.find("```toml\n").unwrap() + "```toml\n".len();
        let example = &section[start..start + section[start..].find("```").unwrap()];
        let config = parse(example).unwrap();
        let b = config.tenant_id("turn.b.example").unwrap();
        assert_eq!(config.tenant_server_names(), vec![("turn.b.example".to_owned(), b)]);
        let core = config.core();
        let tenant = core.tenant(b).unwrap();
        assert_eq!((tenant.quotas.total_allocations, tenant.quotas.allocations_per_user), (500, 10));
        assert_eq!(tenant.quotas.allocations_per_ip, core.quotas.allocations_per_ip);
    }
}
