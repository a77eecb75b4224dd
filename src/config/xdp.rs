//! `[relay] xdp` and `xdp-interfaces`: the XDP fast path for ChannelData (see
//! `net::xdp`).

use serde::{Deserialize, Serialize};

/// Whether turnd relays ChannelData over UDP/IPv4 in an XDP program.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    /// Sockets only.
    #[default]
    Off,
    /// The fast path if this build has it and the interfaces take the program;
    /// otherwise sockets, with one log line saying why.
    Auto,
    /// The fast path, or turnd does not start.
    On,
}

/// Linux's IFNAMSIZ less the terminating NUL.
const MAX_INTERFACE_NAME: usize = 15;

/// The checks beyond the types: `(key, what is wrong)`.
pub fn validate(mode: XdpMode, interfaces: &[String]) -> Result<(), (&'static str, String)> {
    const KEY: &str = "relay.xdp-interfaces";
    for name in interfaces {
        let bad = |c: char| c == '/' || c == ':' || c.is_whitespace() || c.is_control();
        if name.is_empty() || name.len() > MAX_INTERFACE_NAME || name.chars().any(bad) || name == "." || name == ".." {
            return Err((
                KEY,
                format!("{name:?} is not a network interface name (1 to 15 characters, no '/', ':' or spaces)"),
            ));
        }
    }
    if let Some((i, name)) = interfaces.iter().enumerate().find(|(i, n)| interfaces[..*i].contains(n)) {
        return Err((KEY, format!("{name:?} is listed twice (entry {})", i + 1)));
    }
    if mode != XdpMode::Off && interfaces.is_empty() {
        return Err((
            KEY,
            "relay.xdp is on or auto: name the interfaces clients and peers arrive on, e.g. [\"eth0\"]".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::config::tests::parse;
    use crate::config::XdpMode;

    #[test]
    fn xdp_is_off_by_default_and_needs_valid_interfaces_when_on() {
        assert_eq!(parse("").unwrap().relay.xdp, XdpMode::Off);
        let on = parse("[relay]\nxdp = \"on\"\nxdp-interfaces = [\"eth0\", \"veth1\"]\n").unwrap();
        assert_eq!((on.relay.xdp, on.relay.xdp_interfaces.len()), (XdpMode::On, 2));
        assert_eq!(parse("[relay]\nxdp = \"auto\"\nxdp-interfaces = [\"eth0\"]\n").unwrap().relay.xdp, XdpMode::Auto);
        for (text, expected) in [
            ("[relay]\nxdp = \"yes\"\n", "t.toml:2: unknown variant `yes`, expected one of `off`, `auto`, `on`"),
            ("[relay]\nxdp = \"on\"\n", "`relay.xdp-interfaces`: relay.xdp is on or auto"),
            ("[relay]\nxdp-interfaces = [\"a/b\"]\n", "`relay.xdp-interfaces`: \"a/b\" is not"),
            ("[relay]\nxdp-interfaces = [\"\"]\n", "`relay.xdp-interfaces`"),
            ("[relay]\nxdp-interfaces = [\"averylonginterface\"]\n", "`relay.xdp-interfaces`"),
            ("[relay]\nxdp-interfaces = [\"eth0\", \"eth0\"]\n", "listed twice"),
        ] {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.contains(expected), "{text}\n{err}");
        }
    }
}
