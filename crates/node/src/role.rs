//! The roles a node holds. Parsed once from config; gossip carries them as
//! names in each member's metadata, and the router reads the worker role
//! from there to build its table.

use std::fmt;
use std::str::FromStr;

/// One role of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Terminates client connections and routes their messages.
    Gateway,
    /// Consumes messages injected through the event log and routes them.
    Forward,
    /// Owns a share of the ring and processes the messages of its conversations.
    Worker,
}

impl Role {
    /// Every role, in the order they are listed.
    pub const ALL: [Role; 3] = [Role::Gateway, Role::Forward, Role::Worker];

    /// The role's name in config files and gossip metadata.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Gateway => "gateway",
            Role::Forward => "forward",
            Role::Worker => "worker",
        }
    }

    fn bit(self) -> u8 {
        1 << self as u8
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is not a role.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown role {0:?}; known: gateway, forward, worker")]
pub struct UnknownRole(pub String);

impl FromStr for Role {
    type Err = UnknownRole;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s.trim())
            .ok_or_else(|| UnknownRole(s.to_owned()))
    }
}

/// The set of roles one node holds.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Roles(u8);

impl Roles {
    /// No role.
    pub const NONE: Roles = Roles(0);

    /// The set of `roles`.
    pub fn of(roles: &[Role]) -> Roles {
        Roles(roles.iter().fold(0, |bits, r| bits | r.bit()))
    }

    /// True when `role` is in the set.
    pub fn has(self, role: Role) -> bool {
        self.0 & role.bit() != 0
    }

    /// The set with `role` added.
    pub fn with(self, role: Role) -> Roles {
        Roles(self.0 | role.bit())
    }

    /// True when the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The roles in the set, in [`Role::ALL`] order.
    pub fn iter(self) -> impl Iterator<Item = Role> {
        Role::ALL.into_iter().filter(move |r| self.has(*r))
    }

    /// The names, as gossip metadata carries them.
    pub fn names(self) -> Vec<String> {
        self.iter().map(|r| r.as_str().to_owned()).collect()
    }
}

impl fmt::Debug for Roles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

impl fmt::Display for Roles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.iter().map(Role::as_str).collect();
        f.write_str(&names.join(","))
    }
}

impl FromStr for Roles {
    type Err = UnknownRole;

    /// Comma-separated role names; blanks between commas are ignored.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.split(',')
            .filter(|r| !r.trim().is_empty())
            .map(str::parse::<Role>)
            .try_fold(Roles::NONE, |set, r| Ok(set.with(r?)))
    }
}

impl FromIterator<Role> for Roles {
    fn from_iter<I: IntoIterator<Item = Role>>(iter: I) -> Self {
        iter.into_iter().fold(Roles::NONE, Roles::with)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_parse_from_comma_separated_names_and_print_back() {
        let r: Roles = "worker, gateway,".parse().unwrap();
        assert!(r.has(Role::Worker) && r.has(Role::Gateway) && !r.has(Role::Forward));
        assert_eq!(r.to_string(), "gateway,worker");
        assert_eq!(r.names(), ["gateway", "worker"]);
        assert_eq!("boss".parse::<Roles>(), Err(UnknownRole("boss".into())));
        assert!("".parse::<Roles>().unwrap().is_empty());
    }
}
