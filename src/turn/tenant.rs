//! Tenants: several realms served by one turnd, each with its own credentials,
//! quotas and peer policy.
//!
//! The shell decides which tenant a client belongs to (by the listener it arrived on,
//! or the TLS server name it asked for) and hands the core a [`TenantId`] inside the
//! [`FiveTuple`](super::FiveTuple): a small number, never a string per packet. The
//! core looks the tenant up in [`CoreConfig`] on the request path; the relay hot path
//! looks up only the tenant's bandwidth caps and policy, and only for a tenant other
//! than the default one.
//!
//! Ids are stable for the life of the process (the config layer gives each realm name
//! one id the first time it sees it), so an allocation's tenant still means the same
//! tenant after a reload, and a reload that removes a tenant leaves ids that no
//! longer resolve: [`CoreConfig::tenant`] says `None` for them.

use super::auth::Credentials;
use super::config::{CoreConfig, Quotas};
use super::policy::PeerPolicy;

/// Which tenant (realm) a client belongs to: the default one (the top-level `realm`,
/// `[auth]`, `[limits]` and `[relay]` peer keys), or a `[[tenant]]` table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct TenantId(pub u16);

impl TenantId {
    /// The default tenant: the top-level configuration, as turnd had before tenants.
    pub const DEFAULT: TenantId = TenantId(0);
}

/// A `[[tenant]]`: its realm and what it overrides, resolved against the defaults.
#[derive(Debug, Clone)]
pub struct Tenant {
    /// Its id (stable across reloads).
    pub id: TenantId,
    /// Users and REST secrets; the realm is [`Credentials::realm`].
    pub credentials: Credentials,
    /// Its limits: the top-level `[limits]` with the tenant's overrides applied.
    /// `total_allocations` is the tenant's own cap, within the server's.
    pub quotas: Quotas,
    /// Its peer policy: the top-level one, or the tenant's own.
    pub policy: PeerPolicy,
}

/// What the core uses of one tenant, borrowed from the config.
#[derive(Debug, Clone, Copy)]
pub struct TenantView<'a> {
    /// Users, secrets and realm.
    pub credentials: &'a Credentials,
    /// Limits.
    pub quotas: &'a Quotas,
    /// Peer policy.
    pub policy: &'a PeerPolicy,
}

impl CoreConfig {
    /// The tenant `id` names; `None` for one a reload removed.
    pub fn tenant(&self, id: TenantId) -> Option<TenantView<'_>> {
        if id == TenantId::DEFAULT {
            return Some(TenantView { credentials: &self.credentials, quotas: &self.quotas, policy: &self.policy });
        }
        // A handful of tenants: a scan beats a map.
        self.tenants.iter().find(|t| t.id == id).map(|t| TenantView {
            credentials: &t.credentials,
            quotas: &t.quotas,
            policy: &t.policy,
        })
    }

    /// The quotas for `id`, falling back to the defaults for a removed tenant (whose
    /// allocations a reload ends anyway).
    pub fn quotas_of(&self, id: TenantId) -> &Quotas {
        self.tenant(id).map_or(&self.quotas, |t| t.quotas)
    }

    /// The peer policy for `id`, with the same fallback.
    pub fn policy_of(&self, id: TenantId) -> &PeerPolicy {
        self.tenant(id).map_or(&self.policy, |t| t.policy)
    }

    /// The realm of `id`, if it is configured.
    pub fn realm_of(&self, id: TenantId) -> Option<&str> {
        self.tenant(id).map(|t| t.credentials.realm())
    }

    /// Every configured tenant's id and realm, the default one first.
    pub fn realms(&self) -> impl Iterator<Item = (TenantId, &str)> {
        std::iter::once((TenantId::DEFAULT, self.credentials.realm()))
            .chain(self.tenants.iter().map(|t| (t.id, t.credentials.realm())))
    }

    /// Every peer policy (the default one and each tenant's), to give them all the
    /// host addresses and relay ports they keep peers away from.
    pub(crate) fn policies_mut(&mut self) -> impl Iterator<Item = &mut PeerPolicy> {
        std::iter::once(&mut self.policy).chain(self.tenants.iter_mut().map(|t| &mut t.policy))
    }
}

/// A user as the quotas count it: the same name in two tenants is two users.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UserKey {
    /// The tenant.
    pub tenant: TenantId,
    /// The username (a REST username with its expiry, as the client sent it).
    pub name: Box<str>,
}

impl UserKey {
    /// `name` in `tenant`.
    pub fn new(tenant: TenantId, name: &str) -> Self {
        UserKey { tenant, name: name.into() }
    }
}

/// A user of the default tenant (what a name meant before tenants).
impl From<&str> for UserKey {
    fn from(name: &str) -> Self {
        UserKey::new(TenantId::DEFAULT, name)
    }
}
