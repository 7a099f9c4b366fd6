//! Who may publish, and who may read what.
//!
//! In: the facts of a request ([`Facts`]: its peer address, its
//! `Authorization` header or `access_token`, its `Host`, whether a proxy
//! forwarded it) and the configuration ([`AccessConfig`], the htpasswd
//! file, the token key). Out: for a read, a [`Grant`] (the devices it may
//! see, whether it may see their history, whether it is a share link);
//! for a publication, the user it publishes as; or a [`Refusal`] that says
//! which status to answer (401, 403, 429, 503).
//!
//! Guarantees: the same answer in every process of a deployment, from the
//! configuration alone (tokens and share links carry their signed claims;
//! there is no session store); a password check never runs before its
//! attempt is counted ([`limiter`]), never on the pool the store commits
//! on, and never more at once than [`AccessConfig::max_concurrent_hashes`]
//! ([`hasher`]); an unknown user costs one bcrypt check like a known one,
//! so the answer's time does not tell which users exist; memory is bounded
//! whatever the attempts (verified headers, sources, revoked ids).
//!
//! Layout:
//! - [`policy`]: device groups and roles (admin, viewer, device).
//! - [`htpasswd`]: the users' bcrypt hashes.
//! - [`limiter`]: failed-login buckets, taken before bcrypt.
//! - [`hasher`]: the bcrypt threads.
//! - [`token`]: signed scoped tokens and share links.
//! - [`revoked`]: the revocation list every process rereads.

pub mod hasher;
pub mod htpasswd;
pub mod limiter;
pub mod policy;
pub mod revoked;
pub mod token;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use metrics::Counter;
use otstream_model::Visible;

pub use hasher::{Busy, Hasher};
pub use htpasswd::{Htpasswd, HtpasswdError};
pub use limiter::Limiter;
pub use policy::{AccessConfig, Pattern, Policy, Role};
pub use revoked::Revoked;
pub use token::{Claims, Secret, TokenError};

/// What a request says about who sent it.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    /// The peer's address.
    pub remote: SocketAddr,
    /// The `Authorization` header: `Basic ...` or `Bearer <token>`.
    pub authorization: Option<&'a str>,
    /// A token given as the `access_token` query parameter (a GET: an
    /// `EventSource` cannot set headers).
    pub query_token: Option<&'a str>,
    /// The `Host` header.
    pub host: Option<&'a str>,
    /// Whether a proxy says it forwarded the request (`Forwarded`,
    /// `X-Forwarded-For`, `X-Real-IP`).
    pub forwarded: bool,
}

/// What a reader may read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// Who it is, for logs: a user, `token:<id>`, `share:<id>`,
    /// `loopback` or `public`.
    pub who: String,
    /// The devices.
    pub visible: Visible,
    /// History (positions, trips, stops, ...) readable from this time on
    /// (UNIX s; `i64::MIN` for all of it); `None`: last positions only.
    pub history_since: Option<i64>,
    /// A share link: the map's share mode and its reads only.
    pub share: bool,
}

impl Grant {
    /// Everything, for `who`.
    pub fn all(who: &str) -> Grant {
        Grant {
            who: who.to_owned(),
            visible: Visible::All,
            history_since: Some(i64::MIN),
            share: false,
        }
    }
}

/// Why a request is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No, wrong, expired or revoked credentials: 401, with the reason.
    Unauthorized(&'static str),
    /// Valid, but not for this: 403, with the reason.
    Forbidden(&'static str),
    /// Too many failed logins just now: 429, retry in a second.
    Limited,
    /// Password checks are at their bound: 503, retry in a second.
    Busy,
}

impl Refusal {
    /// The HTTP status to answer.
    pub fn status(&self) -> u16 {
        match self {
            Refusal::Unauthorized(_) => 401,
            Refusal::Forbidden(_) => 403,
            Refusal::Limited => 429,
            Refusal::Busy => 503,
        }
    }

    /// The error `kind` of the answer's body.
    pub fn kind(&self) -> &'static str {
        match self {
            Refusal::Unauthorized(_) => "unauthorized",
            Refusal::Forbidden(_) => "forbidden",
            Refusal::Limited => "too_many_attempts",
            Refusal::Busy => "busy",
        }
    }

    /// The answer's sentence.
    pub fn message(&self) -> &'static str {
        match self {
            Refusal::Unauthorized(why) | Refusal::Forbidden(why) => why,
            Refusal::Limited => {
                "too many failed logins from this address or for this user; retry in a second"
            }
            Refusal::Busy => "too many password checks at once; retry in a second",
        }
    }

    /// `Retry-After` seconds, for a refusal that passes.
    pub fn retry_after_s(&self) -> Option<u64> {
        matches!(self, Refusal::Limited | Refusal::Busy).then_some(1)
    }
}

/// Why the access rules cannot be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// The token key file cannot be read or is too short.
    #[error("access.token_secret_file {path}: {why}")]
    Secret {
        /// The file.
        path: String,
        /// Why.
        why: String,
    },
    /// The configuration is inconsistent.
    #[error(transparent)]
    Config(#[from] otstream_model::ConfigError),
}

/// Verified `Authorization` headers kept; past this the cache starts over
/// (only valid credentials are kept, so this bounds a client sending its
/// own valid password spelt many ways).
const VERIFIED_LIMIT: usize = 10_000;

/// Longest Basic `Authorization` header read, bytes; a longer one is a
/// 401 without a look at it.
const MAX_BASIC_BYTES: usize = 1024;

struct Meters {
    ok: Counter,
    failed: Counter,
    limited: Counter,
    busy: Counter,
}

/// The access rules of one process.
pub struct Authenticator {
    htpasswd: Option<Htpasswd>,
    policy: Policy,
    limiter: Limiter,
    hasher: Hasher,
    secret: Option<Secret>,
    revoked: Revoked,
    trust_loopback: bool,
    public: bool,
    verified: Mutex<HashMap<String, String>>,
    /// What an unknown user's password is checked against, at the
    /// file's highest cost, so that it takes as long as a known user's.
    decoy: Arc<str>,
    meters: Meters,
}

impl Authenticator {
    /// The rules of `config`, with the users of `htpasswd` (none: no
    /// authentication; publishing is open and reads follow
    /// `trust_loopback` and `public`). `public`: without htpasswd, reads
    /// are answered to anyone (`api.public`).
    pub fn new(
        config: &AccessConfig,
        htpasswd: Option<Htpasswd>,
        public: bool,
    ) -> Result<Self, AuthError> {
        config.validate()?;
        let secret = match &config.token_secret_file {
            None => None,
            Some(path) => {
                let shown = path.display().to_string();
                let bytes = std::fs::read(path).map_err(|e| AuthError::Secret {
                    path: shown.clone(),
                    why: e.to_string(),
                })?;
                Some(Secret::new(&bytes).ok_or(AuthError::Secret {
                    path: shown,
                    why: format!(
                        "a key must have at least {} bytes (otstream token secret writes one)",
                        token::MIN_SECRET_BYTES
                    ),
                })?)
            }
        };
        let cost = htpasswd.as_ref().map_or(4, Htpasswd::max_cost);
        // Hashed once at start: a few hundred ms at the highest costs.
        let decoy = bcrypt::hash("otstream decoy password", cost)
            .map_or_else(|_| Arc::from("$2b$04$invalid"), Arc::from);
        let threads = config.max_concurrent_hashes.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
        });
        let outcome =
            |o: &'static str| metrics::counter!("otstream_auth_checks_total", "outcome" => o);
        Ok(Authenticator {
            htpasswd,
            policy: Policy::new(config),
            limiter: Limiter::new(config.failures_per_second),
            hasher: Hasher::new(threads),
            secret,
            revoked: Revoked::new(config.revoked_file.clone()),
            trust_loopback: config.trust_loopback,
            public,
            verified: Mutex::new(HashMap::new()),
            decoy,
            meters: Meters {
                ok: outcome("ok"),
                failed: outcome("failed"),
                limited: outcome("limited"),
                busy: outcome("busy"),
            },
        })
    }

    /// Whether users must authenticate (an htpasswd file is in use).
    pub fn required(&self) -> bool {
        self.htpasswd.is_some()
    }

    /// The groups and roles.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// What a read with these facts may see.
    pub async fn reader(&self, facts: &Facts<'_>) -> Result<Grant, Refusal> {
        if let Some(token) = bearer(facts) {
            let c = self.token(token)?;
            if !c.read {
                return Err(Refusal::Forbidden("this token does not read"));
            }
            return Ok(Grant {
                who: format!("{}:{}", if c.share { "share" } else { "token" }, c.id),
                visible: self.policy.scope(&c.devices, &c.groups),
                history_since: (!c.last_only).then_some(c.since.unwrap_or(i64::MIN)),
                share: c.share,
            });
        }
        if self.htpasswd.is_some() {
            let user = self.basic(facts).await?;
            return Ok(Grant {
                visible: self.policy.visible_to(&user),
                who: user,
                history_since: Some(i64::MIN),
                share: false,
            });
        }
        if self.public {
            return Ok(Grant::all("public"));
        }
        if self.trust_loopback && facts.remote.ip().is_loopback() && !facts.forwarded {
            if facts.host.is_some_and(loopback_host) {
                return Ok(Grant::all("loopback"));
            }
            return Err(Refusal::Forbidden(
                "reads from loopback are trusted only when they name a loopback host (Host: localhost, 127.0.0.1 or [::1]); behind a proxy, use htpasswd or tokens",
            ));
        }
        Err(Refusal::Forbidden(
            "reads are answered to loopback clients only while authentication is off; set http.htpasswd (or api.public = true) to serve them to the network",
        ))
    }

    /// The user a publication with these facts is made as (the decoder
    /// then refuses any other identity); `None` when authentication is off.
    pub async fn publisher(&self, facts: &Facts<'_>) -> Result<Option<String>, Refusal> {
        if self.htpasswd.is_none() {
            return Ok(None);
        }
        if let Some(token) = bearer(facts) {
            let c = self.token(token)?;
            return c
                .publish
                .map(Some)
                .ok_or(Refusal::Forbidden("this token does not publish"));
        }
        let user = self.basic(facts).await?;
        if self.policy.role(&user) == Role::Viewer {
            return Err(Refusal::Forbidden("viewers read; they do not publish"));
        }
        Ok(Some(user))
    }

    /// The claims of a token that is valid now and not revoked.
    fn token(&self, token: &str) -> Result<Claims, Refusal> {
        let Some(secret) = &self.secret else {
            return Err(Refusal::Unauthorized(
                "tokens are not accepted here (no access.token_secret_file)",
            ));
        };
        let claims = secret.verify(token, now_s()).map_err(|e| match e {
            TokenError::Expired => Refusal::Unauthorized("the token expired"),
            _ => Refusal::Unauthorized("the token is malformed or not signed by this server"),
        })?;
        if self.revoked.contains(&claims.id) {
            return Err(Refusal::Unauthorized("the token was revoked"));
        }
        Ok(claims)
    }

    /// The user of valid Basic credentials: a header verified before is a
    /// lookup; otherwise the attempt is counted, then checked on the pool.
    async fn basic(&self, facts: &Facts<'_>) -> Result<String, Refusal> {
        const REQUIRED: Refusal =
            Refusal::Unauthorized("valid HTTP Basic credentials (or a token) are required");
        let Some(htpasswd) = &self.htpasswd else {
            return Err(REQUIRED);
        };
        let header = facts
            .authorization
            .filter(|h| h.len() <= MAX_BASIC_BYTES)
            .ok_or(REQUIRED)?;
        if let Some(user) = self.cached(header) {
            return Ok(user);
        }
        let (user, password) =
            otstream_model::identity::basic_credentials(header).ok_or(REQUIRED)?;
        let ip = facts.remote.ip();
        let hash = htpasswd.hash(&user);
        if self.limiter.admit(ip, &user, hash.is_some()).is_err() {
            self.meters.limited.increment(1);
            return Err(Refusal::Limited);
        }
        let checked = self
            .hasher
            .verify(password, hash.unwrap_or(&self.decoy).clone())
            .await;
        match checked {
            Err(Busy) => {
                self.meters.busy.increment(1);
                Err(Refusal::Busy)
            }
            Ok(true) if hash.is_some() => {
                self.meters.ok.increment(1);
                let mut cache = self
                    .verified
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if cache.len() >= VERIFIED_LIMIT {
                    cache.clear();
                }
                cache.insert(header.to_owned(), user.clone());
                Ok(user)
            }
            Ok(_) => {
                self.meters.failed.increment(1);
                self.limiter.failed(ip);
                Err(REQUIRED)
            }
        }
    }

    fn cached(&self, header: &str) -> Option<String> {
        self.verified.lock().ok()?.get(header).cloned()
    }

    /// A token for `claims`, signed with this process's key.
    pub fn sign(&self, claims: &Claims) -> Option<String> {
        self.secret.as_ref().map(|s| s.sign(claims))
    }
}

/// The token of a request: `Authorization: Bearer`, else `access_token`.
fn bearer<'a>(facts: &Facts<'a>) -> Option<&'a str> {
    facts
        .authorization
        .and_then(|h| {
            h.strip_prefix("Bearer ")
                .or_else(|| h.strip_prefix("bearer "))
        })
        .or(facts.query_token)
        .map(str::trim)
}

/// Whether a `Host` header names this machine's loopback: `localhost`,
/// an address in 127.0.0.0/8, or `[::1]`, with any port.
pub fn loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    name.eq_ignore_ascii_case("localhost")
        || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn now_s() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use base64::Engine as _;

    fn basic(cred: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(cred)
        )
    }

    fn facts<'a>(ip: [u8; 4], authorization: Option<&'a str>, host: Option<&'a str>) -> Facts<'a> {
        Facts {
            remote: SocketAddr::from((ip, 40_000)),
            authorization,
            query_token: None,
            host,
            forwarded: false,
        }
    }

    fn config(dir: &std::path::Path) -> AccessConfig {
        let key = dir.join("token.key");
        std::fs::write(&key, Secret::generate().unwrap()).unwrap();
        AccessConfig {
            groups: [("vans".to_owned(), vec!["fleet/*".to_owned()])].into(),
            admins: vec!["ops".into()],
            viewers: [("dispatch".to_owned(), vec!["vans".to_owned()])].into(),
            token_secret_file: Some(key),
            revoked_file: Some(dir.join("revoked.txt")),
            ..AccessConfig::default()
        }
    }

    fn users() -> Htpasswd {
        let hash = bcrypt::hash("s3cret", 4).unwrap();
        Htpasswd::parse(&format!("jane:{hash}\nops:{hash}\ndispatch:{hash}\n")).unwrap()
    }

    #[test]
    fn loopback_hosts() {
        for h in [
            "localhost",
            "localhost:5144",
            "127.0.0.1:5144",
            "127.1.2.3",
            "[::1]:5144",
            "[::1]",
        ] {
            assert!(loopback_host(h), "{h}");
        }
        for h in [
            "evil.example",
            "evil.example:5144",
            "10.0.0.1",
            "[2001:db8::1]:80",
            "",
            "localhost.evil.example",
        ] {
            assert!(!loopback_host(h), "{h}");
        }
    }

    #[tokio::test]
    async fn without_authentication_loopback_is_trusted_only_by_name_and_without_a_proxy() {
        let a = Authenticator::new(&AccessConfig::default(), None, false).unwrap();
        let lo = facts([127, 0, 0, 1], None, Some("127.0.0.1:5144"));
        assert_eq!(a.reader(&lo).await, Ok(Grant::all("loopback")));
        // DNS rebinding: the browser names the attacker's host.
        let rebound = facts([127, 0, 0, 1], None, Some("evil.example:5144"));
        assert!(matches!(
            a.reader(&rebound).await,
            Err(Refusal::Forbidden(_))
        ));
        let proxied = Facts {
            forwarded: true,
            ..lo
        };
        assert!(matches!(
            a.reader(&proxied).await,
            Err(Refusal::Forbidden(_))
        ));
        let lan = facts([192, 0, 2, 7], None, Some("127.0.0.1"));
        assert!(matches!(a.reader(&lan).await, Err(Refusal::Forbidden(_))));
        let off = AccessConfig {
            trust_loopback: false,
            ..AccessConfig::default()
        };
        let a = Authenticator::new(&off, None, false).unwrap();
        assert!(matches!(a.reader(&lo).await, Err(Refusal::Forbidden(_))));
        let public = Authenticator::new(&off, None, true).unwrap();
        assert_eq!(public.reader(&lan).await, Ok(Grant::all("public")));
        // Without authentication, publishing is open.
        assert_eq!(public.publisher(&lan).await, Ok(None));
    }

    #[tokio::test]
    async fn roles_read_and_publish_as_configured() {
        let dir = tempfile::tempdir().unwrap();
        let a = Authenticator::new(&config(dir.path()), Some(users()), false).unwrap();
        let (jane, ops, dispatch) = (
            basic("jane:s3cret"),
            basic("ops:s3cret"),
            basic("dispatch:s3cret"),
        );
        let lan = |h| facts([192, 0, 2, 7], Some(h), None);
        assert_eq!(a.reader(&lan(&ops)).await.unwrap().visible, Visible::All);
        let v = a.reader(&lan(&dispatch)).await.unwrap();
        assert_eq!(
            v.visible,
            Visible::Some {
                users: vec!["fleet".into()],
                devices: vec![]
            }
        );
        assert_eq!(a.publisher(&lan(&jane)).await, Ok(Some("jane".into())));
        assert_eq!(
            a.publisher(&lan(&dispatch)).await,
            Err(Refusal::Forbidden("viewers read; they do not publish"))
        );
        let none = facts([127, 0, 0, 1], None, Some("localhost"));
        assert!(matches!(
            a.reader(&none).await,
            Err(Refusal::Unauthorized(_))
        ));
        assert!(matches!(
            a.reader(&lan(&basic("jane:wrong"))).await,
            Err(Refusal::Unauthorized(_))
        ));
    }

    #[tokio::test]
    async fn tokens_are_scoped_expire_and_are_revoked() {
        let dir = tempfile::tempdir().unwrap();
        let a = Authenticator::new(&config(dir.path()), Some(users()), false).unwrap();
        let claims = Claims {
            id: "ha".into(),
            devices: vec!["jane/phone".into()],
            groups: vec!["vans".into()],
            read: true,
            publish: Some("jane".into()),
            last_only: false,
            since: None,
            share: false,
            exp: now_s() + 60,
        };
        let t = a.sign(&claims).unwrap();
        let header = format!("Bearer {t}");
        let f = facts([192, 0, 2, 7], Some(&header), None);
        let g = a.reader(&f).await.unwrap();
        assert_eq!(g.who, "token:ha");
        assert_eq!(
            g.visible,
            Visible::Some {
                users: vec!["fleet".into()],
                devices: vec![("jane".into(), "phone".into())]
            }
        );
        assert_eq!(g.history_since, Some(i64::MIN));
        assert_eq!(a.publisher(&f).await, Ok(Some("jane".into())));
        // In the query, as an EventSource sends it.
        let q = Facts {
            query_token: Some(&t),
            ..facts([192, 0, 2, 7], None, None)
        };
        assert_eq!(a.reader(&q).await.unwrap().who, "token:ha");
        // A share link of the last position only.
        let share = a
            .sign(&Claims {
                id: "k1".into(),
                publish: None,
                last_only: true,
                share: true,
                ..claims.clone()
            })
            .unwrap();
        let header = format!("Bearer {share}");
        let g = a
            .reader(&facts([192, 0, 2, 7], Some(&header), None))
            .await
            .unwrap();
        assert_eq!(
            (g.who.as_str(), g.history_since, g.share),
            ("share:k1", None, true)
        );
        assert_eq!(
            a.publisher(&facts([192, 0, 2, 7], Some(&header), None))
                .await,
            Err(Refusal::Forbidden("this token does not publish"))
        );
        let expired = a
            .sign(&Claims {
                exp: now_s() - 1,
                ..claims.clone()
            })
            .unwrap();
        let header = format!("Bearer {expired}");
        assert_eq!(
            a.reader(&facts([192, 0, 2, 7], Some(&header), None)).await,
            Err(Refusal::Unauthorized("the token expired"))
        );
        std::fs::write(dir.path().join("revoked.txt"), "ha\n").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(1_100));
        let header = format!("Bearer {t}");
        assert_eq!(
            a.reader(&facts([192, 0, 2, 7], Some(&header), None)).await,
            Err(Refusal::Unauthorized("the token was revoked"))
        );
    }

    #[tokio::test]
    async fn concurrent_guesses_are_counted_before_bcrypt_and_the_owner_still_gets_in() {
        let dir = tempfile::tempdir().unwrap();
        let a = Arc::new(Authenticator::new(&config(dir.path()), Some(users()), false).unwrap());
        let wrong = basic("jane:wrong");
        let guesses: Vec<_> = (0..400)
            .map(|_| {
                let (a, wrong) = (a.clone(), wrong.clone());
                tokio::spawn(
                    async move { a.reader(&facts([10, 0, 0, 1], Some(&wrong), None)).await },
                )
            })
            .collect();
        let mut limited = 0;
        let mut unauthorized = 0;
        for g in guesses {
            match g.await.unwrap() {
                Err(Refusal::Limited) => limited += 1,
                Err(Refusal::Unauthorized(_)) => unauthorized += 1,
                other => panic!("{other:?}"),
            }
        }
        // Ten checks (and a few more as the bucket refills during the
        // burst), the rest refused unchecked.
        assert!((10..=15).contains(&unauthorized), "{unauthorized} checked");
        assert_eq!(limited + unauthorized, 400);
        // The owner, elsewhere, right after.
        let owner = basic("jane:s3cret");
        assert_eq!(
            a.reader(&facts([10, 0, 0, 2], Some(&owner), None))
                .await
                .unwrap()
                .who,
            "jane"
        );
    }
}
