//! Who may read what.
//!
//! With authentication on (an htpasswd file), every read needs valid
//! Basic credentials (401 otherwise); a user reads their own devices and
//! every device of a friends group that one of their devices is in; the
//! users in `http.admins` read everything. With authentication off, reads
//! are answered to loopback clients only, unless `api.public` is set:
//! `serve` listens on every interface for the phones, and a fresh install
//! must not show everyone's locations to the network.

use std::net::SocketAddr;
use std::sync::Arc;

use otstream_ingress::auth::{AuthFailure, Htpasswd, authenticate};
use otstream_ingress::config::FriendsConfig;
use otstream_query::Visible;

/// Why a read is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No or wrong credentials: 401.
    Unauthorized,
    /// Not for this client: 403, with the reason.
    Forbidden(&'static str),
    /// Too many failed logins just now from this address or for this
    /// user: 429.
    TooManyAttempts,
}

/// The access rules.
pub struct Access {
    auth: Option<Arc<Htpasswd>>,
    admins: Vec<String>,
    /// Each group's members as `(user, device)`.
    groups: Vec<Vec<(String, String)>>,
    public: bool,
}

impl Access {
    /// Rules from the htpasswd file (if any), the admins, the friends
    /// groups and `api.public`.
    pub fn new(
        auth: Option<Arc<Htpasswd>>,
        admins: Vec<String>,
        friends: &FriendsConfig,
        public: bool,
    ) -> Self {
        let groups = friends
            .groups
            .values()
            .map(|members| {
                members
                    .iter()
                    .filter_map(|m| m.split_once('/'))
                    .map(|(u, d)| (u.to_owned(), d.to_owned()))
                    .collect()
            })
            .collect();
        Self {
            auth,
            admins,
            groups,
            public,
        }
    }

    /// What `user` may read.
    pub fn visible_to(&self, user: &str) -> Visible {
        if self.admins.iter().any(|a| a == user) {
            return Visible::All;
        }
        let mut devices = Vec::new();
        for g in &self.groups {
            if g.iter().any(|(u, _)| u == user) {
                for (u, d) in g {
                    if u != user && !devices.iter().any(|(x, y)| x == u && y == d) {
                        devices.push((u.clone(), d.clone()));
                    }
                }
            }
        }
        Visible::Some {
            users: vec![user.to_owned()],
            devices,
        }
    }

    /// What the client at `remote` with this `Authorization` header may
    /// read. bcrypt runs on the blocking pool the first time a header is
    /// seen; later requests with it are a lookup.
    pub async fn check(
        &self,
        remote: SocketAddr,
        authorization: Option<&str>,
    ) -> Result<Visible, Refusal> {
        let Some(auth) = &self.auth else {
            if self.public || remote.ip().is_loopback() {
                return Ok(Visible::All);
            }
            return Err(Refusal::Forbidden(
                "reads are answered to loopback clients only while authentication is off; set api.public = true (or http.htpasswd) to serve them to the network",
            ));
        };
        let user = authenticate(auth, authorization, remote.ip())
            .await
            .map_err(|e| match e {
                AuthFailure::Invalid => Refusal::Unauthorized,
                AuthFailure::Limited => Refusal::TooManyAttempts,
            })?;
        Ok(self.visible_to(&user))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_and_admins() {
        let friends = FriendsConfig {
            enabled: false,
            groups: [
                (
                    "family".to_owned(),
                    vec!["jane/phone".to_owned(), "bob/phone".to_owned()],
                ),
                (
                    "work".to_owned(),
                    vec!["bob/car".to_owned(), "eve/van".to_owned()],
                ),
            ]
            .into(),
        };
        let a = Access::new(None, vec!["root".into()], &friends, false);
        assert_eq!(a.visible_to("root"), Visible::All);
        assert_eq!(
            a.visible_to("jane"),
            Visible::Some {
                users: vec!["jane".into()],
                devices: vec![("bob".into(), "phone".into())]
            }
        );
        let bob = a.visible_to("bob");
        assert!(
            bob.allows("eve", "van") && bob.allows("jane", "phone") && !bob.allows("eve", "car")
        );
        assert_eq!(
            a.visible_to("mallory"),
            Visible::Some {
                users: vec!["mallory".into()],
                devices: vec![]
            }
        );
    }

    #[tokio::test]
    async fn without_authentication_only_loopback_unless_public() {
        let private = Access::new(None, vec![], &FriendsConfig::default(), false);
        let lan: SocketAddr = "192.0.2.7:5000".parse().unwrap();
        let lo: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        assert_eq!(private.check(lo, None).await, Ok(Visible::All));
        assert!(matches!(
            private.check(lan, None).await,
            Err(Refusal::Forbidden(_))
        ));
        let public = Access::new(None, vec![], &FriendsConfig::default(), true);
        assert_eq!(public.check(lan, None).await, Ok(Visible::All));
    }
}
