//! MQTT broker addresses, as every tool that talks to a broker takes them.

/// A parsed broker URL: `mqtt[s]://[user[:password]@]host[:port]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    /// TLS (`mqtts://`).
    pub tls: bool,
    /// Host name or address.
    pub host: String,
    /// Port (1883, or 8883 with TLS, when absent).
    pub port: u16,
    /// Credentials in the URL.
    pub username: Option<String>,
    /// Password in the URL.
    pub password: Option<String>,
}

impl BrokerUrl {
    /// Parses `mqtt[s]://[user[:password]@]host[:port]`.
    pub fn parse(url: &str) -> Result<Self, String> {
        let (tls, rest) = if let Some(r) = url
            .strip_prefix("mqtt://")
            .or_else(|| url.strip_prefix("tcp://"))
        {
            (false, r)
        } else if let Some(r) = url
            .strip_prefix("mqtts://")
            .or_else(|| url.strip_prefix("ssl://"))
        {
            (true, r)
        } else {
            return Err(format!(
                "mqtt url {url:?} must start with mqtt:// or mqtts://"
            ));
        };
        let rest = rest.trim_end_matches('/');
        let (creds, hostport) = match rest.rsplit_once('@') {
            Some((c, h)) => (Some(c), h),
            None => (None, rest),
        };
        let (username, password) = match creds.map(|c| c.split_once(':').unwrap_or((c, ""))) {
            Some((u, p)) => (Some(u.to_owned()), (!p.is_empty()).then(|| p.to_owned())),
            None => (None, None),
        };
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) => (
                h,
                p.parse::<u16>()
                    .map_err(|_| format!("mqtt url {url:?}: bad port {p:?}"))?,
            ),
            None => (hostport, if tls { 8883 } else { 1883 }),
        };
        if host.is_empty() {
            return Err(format!("mqtt url {url:?} has no host"));
        }
        Ok(Self {
            tls,
            host: host.to_owned(),
            port,
            username,
            password,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_urls() {
        assert_eq!(
            BrokerUrl::parse("mqtt://127.0.0.1:1884").unwrap(),
            BrokerUrl {
                tls: false,
                host: "127.0.0.1".into(),
                port: 1884,
                username: None,
                password: None
            }
        );
        assert_eq!(
            BrokerUrl::parse("mqtts://jane:s3cret@broker.example.org").unwrap(),
            BrokerUrl {
                tls: true,
                host: "broker.example.org".into(),
                port: 8883,
                username: Some("jane".into()),
                password: Some("s3cret".into())
            }
        );
        assert!(BrokerUrl::parse("http://x").is_err());
        assert!(BrokerUrl::parse("mqtt://:1883").is_err());
        assert!(BrokerUrl::parse("mqtt://h:port").is_err());
    }
}
