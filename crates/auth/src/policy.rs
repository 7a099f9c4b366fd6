//! The access model: named device groups, and a role per user.
//!
//! One notion of group serves everything: the friends list the apps get,
//! what a device's user reads beside their own devices, what a viewer
//! reads, and what a token or share link names. A group is a list of
//! device patterns: `user/device`, or `user/*` for every device of a user.
//!
//! Roles, for the users of the htpasswd file:
//! - **admin** (`admins`): reads every device; publishes as itself.
//! - **viewer** (`viewers`, each with the groups it reads): reads those
//!   groups' devices, never publishes (the ingress answers 403).
//! - **device** (everyone else): publishes as itself; reads its own
//!   devices and every device of each group one of them is in.

use std::collections::BTreeMap;
use std::path::PathBuf;

use otstream_model::{ConfigError, Visible};
use serde::Deserialize;

/// `[access]`: groups, roles, tokens and how loopback is trusted.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessConfig {
    /// Device groups by name, each a list of `user/device` or `user/*`.
    #[serde(default)]
    pub groups: BTreeMap<String, Vec<String>>,
    /// Users who read every device.
    #[serde(default)]
    pub admins: Vec<String>,
    /// Users who read only these groups and never publish: user → groups.
    #[serde(default)]
    pub viewers: BTreeMap<String, Vec<String>>,
    /// The key that signs tokens and share links (`otstream token secret`
    /// writes one): 32 bytes or more. Without it, no token is accepted.
    #[serde(default)]
    pub token_secret_file: Option<PathBuf>,
    /// Ids of revoked tokens and share links, one a line (`#` comments);
    /// every process reads it again when it changes.
    #[serde(default)]
    pub revoked_file: Option<PathBuf>,
    /// Without htpasswd, answer reads from loopback clients, when the
    /// request names a loopback host (`Host: localhost`, `127.0.0.1`,
    /// `[::1]`) and came through no proxy (no `Forwarded`,
    /// `X-Forwarded-For` or `X-Real-IP`). On by default: the quick start
    /// reads without a password on the machine itself. A DNS-rebinding page
    /// names its own host, and a reverse proxy forwards headers: neither is
    /// trusted.
    #[serde(default = "yes")]
    pub trust_loopback: bool,
    /// bcrypt checks run at once at most, on threads of their own (never
    /// the pool the store commits on) [default: the cores, at least 1].
    #[serde(default)]
    pub max_concurrent_hashes: Option<usize>,
    /// Failed logins allowed per second from one address (an IPv6 /64),
    /// and per user from addresses that failed before; the next is refused
    /// with 429 before bcrypt runs.
    #[serde(default = "default_failures_per_second")]
    pub failures_per_second: u32,
}

fn yes() -> bool {
    true
}
fn default_failures_per_second() -> u32 {
    10
}

impl Default for AccessConfig {
    fn default() -> Self {
        AccessConfig {
            groups: BTreeMap::new(),
            admins: Vec::new(),
            viewers: BTreeMap::new(),
            token_secret_file: None,
            revoked_file: None,
            trust_loopback: true,
            max_concurrent_hashes: None,
            failures_per_second: default_failures_per_second(),
        }
    }
}

impl AccessConfig {
    /// Checks every pattern and group name.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (name, members) in &self.groups {
            for m in members {
                Pattern::parse(m).ok_or_else(|| {
                    ConfigError::new(
                        "access.groups",
                        format!("access.groups.{name}: {m:?} is not user/device or user/*"),
                    )
                })?;
            }
        }
        for (viewer, groups) in &self.viewers {
            for g in groups {
                if !self.groups.contains_key(g) {
                    return Err(ConfigError::new(
                        "access.viewers",
                        format!(
                            "access.viewers.{viewer} names the group {g:?}, which access.groups does not define"
                        ),
                    ));
                }
            }
            if self.admins.contains(viewer) {
                return Err(ConfigError::new(
                    "access.viewers",
                    format!("{viewer:?} is both an admin and a viewer"),
                ));
            }
        }
        if self.failures_per_second == 0 || self.max_concurrent_hashes == Some(0) {
            return Err(ConfigError::new(
                "access.failures_per_second",
                "access.failures_per_second and access.max_concurrent_hashes must be at least 1",
            ));
        }
        Ok(())
    }
}

/// A device pattern: one device, or every device of a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pattern {
    /// `user/device`.
    Device(String, String),
    /// `user/*`.
    User(String),
}

impl Pattern {
    /// `user/device` or `user/*`; `None` otherwise.
    pub fn parse(s: &str) -> Option<Pattern> {
        let (user, device) = s.split_once('/')?;
        if user.is_empty() || device.is_empty() || device.contains('/') {
            return None;
        }
        Some(if device == "*" {
            Pattern::User(user.to_owned())
        } else {
            Pattern::Device(user.to_owned(), device.to_owned())
        })
    }

    fn user(&self) -> &str {
        match self {
            Pattern::Device(u, _) | Pattern::User(u) => u,
        }
    }
}

/// What a user is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Reads everything, publishes as itself.
    Admin,
    /// Reads some groups, never publishes.
    Viewer,
    /// Publishes as itself, reads its own devices and its groups'.
    Device,
}

/// The groups and roles, resolved once from [`AccessConfig`].
#[derive(Debug, Clone, Default)]
pub struct Policy {
    groups: BTreeMap<String, Vec<Pattern>>,
    admins: Vec<String>,
    viewers: BTreeMap<String, Vec<String>>,
}

impl Policy {
    /// The policy of `config` (checked by [`AccessConfig::validate`]: a
    /// pattern that does not parse is left out).
    pub fn new(config: &AccessConfig) -> Self {
        Policy {
            groups: config
                .groups
                .iter()
                .map(|(name, members)| {
                    (
                        name.clone(),
                        members.iter().filter_map(|m| Pattern::parse(m)).collect(),
                    )
                })
                .collect(),
            admins: config.admins.clone(),
            viewers: config.viewers.clone(),
        }
    }

    /// `user`'s role.
    pub fn role(&self, user: &str) -> Role {
        if self.admins.iter().any(|a| a == user) {
            Role::Admin
        } else if self.viewers.contains_key(user) {
            Role::Viewer
        } else {
            Role::Device
        }
    }

    /// What `user` may read.
    pub fn visible_to(&self, user: &str) -> Visible {
        match self.role(user) {
            Role::Admin => Visible::All,
            Role::Viewer => {
                let names = self
                    .viewers
                    .get(user)
                    .map(Vec::as_slice)
                    .unwrap_or_default();
                self.of_groups(names.iter().map(String::as_str), &[])
            }
            Role::Device => {
                // Its own devices, and every member of a group one of them
                // is in.
                let mine: Vec<&str> = self
                    .groups
                    .iter()
                    .filter(|(_, members)| members.iter().any(|m| m.user() == user))
                    .map(|(name, _)| name.as_str())
                    .collect();
                self.of_groups(mine, &[user.to_owned()])
            }
        }
    }

    /// Every device of the groups `names` (unknown names add nothing),
    /// plus every device of `users`.
    pub fn of_groups<'a>(
        &self,
        names: impl IntoIterator<Item = &'a str>,
        users: &[String],
    ) -> Visible {
        let mut visible = Visible::Some {
            users: users.to_vec(),
            devices: Vec::new(),
        };
        for name in names {
            for p in self.groups.get(name).into_iter().flatten() {
                add(&mut visible, p);
            }
        }
        visible
    }

    /// The devices of `patterns` (`user/device`, `user/*`, or `*` for
    /// every device) and of the groups `groups`.
    pub fn scope(&self, patterns: &[String], groups: &[String]) -> Visible {
        if patterns.iter().any(|p| p == "*") {
            return Visible::All;
        }
        let mut visible = self.of_groups(groups.iter().map(String::as_str), &[]);
        for p in patterns.iter().filter_map(|p| Pattern::parse(p)) {
            add(&mut visible, &p);
        }
        visible
    }

    /// Whether `name` is a group.
    pub fn has_group(&self, name: &str) -> bool {
        self.groups.contains_key(name)
    }

    /// The groups, as their members' `user/device` names (patterns of a
    /// whole user left out): what the friends list is built from.
    pub fn device_groups(&self) -> BTreeMap<String, Vec<String>> {
        self.groups
            .iter()
            .map(|(name, members)| {
                let devices = members
                    .iter()
                    .filter_map(|m| match m {
                        Pattern::Device(u, d) => Some(format!("{u}/{d}")),
                        Pattern::User(_) => None,
                    })
                    .collect();
                (name.clone(), devices)
            })
            .collect()
    }
}

fn add(visible: &mut Visible, p: &Pattern) {
    let Visible::Some { users, devices } = visible else {
        return;
    };
    match p {
        Pattern::User(u) if !users.contains(u) => users.push(u.clone()),
        Pattern::Device(u, d)
            if !users.contains(u) && !devices.iter().any(|(x, y)| x == u && y == d) =>
        {
            devices.push((u.clone(), d.clone()));
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> AccessConfig {
        AccessConfig {
            groups: [
                (
                    "family".to_owned(),
                    vec!["jane/phone".to_owned(), "bob/phone".to_owned()],
                ),
                (
                    "work".to_owned(),
                    vec!["bob/car".to_owned(), "eve/van".to_owned()],
                ),
                (
                    "vans".to_owned(),
                    vec!["fleet/*".to_owned(), "eve/van".to_owned()],
                ),
            ]
            .into(),
            admins: vec!["root".into()],
            viewers: [("dispatch".to_owned(), vec!["vans".to_owned()])].into(),
            ..AccessConfig::default()
        }
    }

    #[test]
    fn roles_and_what_each_reads() {
        let p = Policy::new(&config());
        assert_eq!(p.role("root"), Role::Admin);
        assert_eq!(p.visible_to("root"), Visible::All);
        assert_eq!(p.role("dispatch"), Role::Viewer);
        assert_eq!(
            p.visible_to("dispatch"),
            Visible::Some {
                users: vec!["fleet".into()],
                devices: vec![("eve".into(), "van".into())]
            }
        );
        assert_eq!(p.role("jane"), Role::Device);
        assert_eq!(
            p.visible_to("jane"),
            Visible::Some {
                users: vec!["jane".into()],
                devices: vec![("bob".into(), "phone".into())]
            }
        );
        let bob = p.visible_to("bob");
        assert!(
            bob.allows("eve", "van") && bob.allows("jane", "phone") && !bob.allows("eve", "car")
        );
        assert_eq!(
            p.visible_to("mallory"),
            Visible::Some {
                users: vec!["mallory".into()],
                devices: vec![]
            }
        );
        assert_eq!(p.scope(&["*".into()], &[]), Visible::All);
        assert_eq!(
            p.scope(
                &["jane/phone".into(), "bad".into()],
                &["nope".into(), "family".into()]
            ),
            Visible::Some {
                users: vec![],
                devices: vec![
                    ("jane".into(), "phone".into()),
                    ("bob".into(), "phone".into())
                ]
            }
        );
        assert_eq!(p.device_groups()["vans"], vec!["eve/van".to_owned()]);
    }

    #[test]
    fn validation_names_the_problem() {
        let mut c = config();
        c.groups.insert("x".into(), vec!["nodevice".into()]);
        assert_eq!(
            c.validate().unwrap_err().message,
            "access.groups.x: \"nodevice\" is not user/device or user/*"
        );
        let mut c = config();
        c.viewers.insert("v".into(), vec!["ghosts".into()]);
        assert_eq!(
            c.validate().unwrap_err().message,
            "access.viewers.v names the group \"ghosts\", which access.groups does not define"
        );
        assert!(config().validate().is_ok());
    }
}
