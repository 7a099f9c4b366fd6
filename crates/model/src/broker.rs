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
    /// Parses `mqtt[s]://[user[:password]@]host[:port]` (also `tcp://` and
    /// `ssl://`), with the `url` crate: IPv6 hosts in brackets
    /// (`mqtt://[::1]:1883`), percent-encoded credentials
    /// (`mqtt://jane:p%40ss@host`).
    pub fn parse(url: &str) -> Result<Self, String> {
        let u = url::Url::parse(url).map_err(|e| format!("mqtt url {url:?}: {e}"))?;
        let tls = match u.scheme() {
            "mqtt" | "tcp" => false,
            "mqtts" | "ssl" => true,
            _ => {
                return Err(format!(
                    "mqtt url {url:?} must start with mqtt:// or mqtts://"
                ));
            }
        };
        let host = match u.host() {
            // Without brackets: what a socket address is made of.
            Some(url::Host::Ipv6(a)) => a.to_string(),
            Some(h) => h.to_string(),
            None => String::new(),
        };
        if host.is_empty() {
            return Err(format!("mqtt url {url:?} has no host"));
        }
        if !matches!(u.path(), "" | "/") || u.query().is_some() {
            return Err(format!(
                "mqtt url {url:?}: a broker address has no path nor query"
            ));
        }
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8()
                .map(|c| c.into_owned())
                .map_err(|_| format!("mqtt url {url:?}: credentials are not UTF-8"))
        };
        Ok(Self {
            tls,
            host,
            port: u.port().unwrap_or(if tls { 8883 } else { 1883 }),
            username: match u.username() {
                "" => None,
                name => Some(decode(name)?),
            },
            password: u.password().map(decode).transpose()?,
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
        let v6 = BrokerUrl::parse("mqtt://[::1]:1884/").unwrap();
        assert_eq!((v6.host.as_str(), v6.port), ("::1", 1884));
        let enc = BrokerUrl::parse("mqtt://j%40ne:p%3Ass%2Fw@host").unwrap();
        assert_eq!(
            (enc.username.as_deref(), enc.password.as_deref(), enc.port),
            (Some("j@ne"), Some("p:ss/w"), 1883)
        );
        assert_eq!(
            BrokerUrl::parse("mqtt://h:port").unwrap_err(),
            "mqtt url \"mqtt://h:port\": invalid port number"
        );
        assert!(BrokerUrl::parse("mqtt://h/topic").is_err());
        assert!(BrokerUrl::parse("http://x").is_err());
        assert!(BrokerUrl::parse("mqtt://:1883").is_err());
        assert!(BrokerUrl::parse("mqtt://h:port").is_err());
    }
}
