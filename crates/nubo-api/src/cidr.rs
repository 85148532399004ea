//! Security-group rule sources as typed IPv4 networks. Every edge that
//! takes a rule's CIDR (REST, EC2, the CLI) parses it here, the control
//! plane stores the canonical text of the result, and the agent parses
//! again before rendering nftables rules, so text a tenant typed never
//! reaches `nft -f` as typed.
//!
//! The accepted form is `A.B.C.D/LEN`: four decimal octets without
//! leading zeros, a prefix length 0-32 in plain digits (no sign, no
//! leading zero), and no host bits set. A bare address is its `/32`, and
//! blanks around the whole are dropped; anything else is refused with an
//! error that names the form. IPv6 is refused: private networks and their
//! firewall are IPv4 only.
//!
//! `ipnet::Ipv4Net` is the typed value; its own parser is not used for
//! input because it is more lenient than the rules above (it keeps host
//! bits, for one), and each refusal here says what to write instead.

pub use ipnet::Ipv4Net;
use std::net::{Ipv4Addr, Ipv6Addr};

/// How the accepted form is shown in every refusal.
pub const CIDR_FORM: &str = "an IPv4 CIDR such as 10.20.0.0/24, 203.0.113.7/32 or 0.0.0.0/0";

/// Longest input quoted back in an error.
const QUOTE_CHARS: usize = 48;

/// Why a rule's CIDR was refused. Each message says what to write.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("the rule has an empty CIDR: give {CIDR_FORM}")]
    Empty,
    #[error("'{0}' is not {CIDR_FORM}")]
    Syntax(String),
    #[error("'{0}' is an IPv6 range: rules take IPv4 only (private networks are IPv4): give {CIDR_FORM}")]
    Ipv6(String),
    #[error("'{input}' has a prefix length that is not a plain number 0-32: write it like {CIDR_FORM}")]
    Prefix { input: String },
    #[error("'{input}' is not an IPv4 address (four numbers 0-255 without leading zeros): give {CIDR_FORM}")]
    Address { input: String },
    #[error("'{input}' has host bits set: write the network {network} (or {address}/32 for the one address)")]
    HostBits { input: String, network: Ipv4Net, address: Ipv4Addr },
}

fn quote(s: &str) -> String {
    let mut q: String = s.chars().take(QUOTE_CHARS).collect();
    if s.chars().count() > QUOTE_CHARS {
        q.push_str("...");
    }
    // Control characters would garble the message (and a log line).
    q.chars().map(|c| if c.is_control() { '?' } else { c }).collect()
}

/// Parses a rule's source CIDR (see the module's doc for the form).
pub fn parse_rule_cidr(input: &str) -> Result<Ipv4Net, CidrError> {
    let s = input.trim();
    if s.is_empty() {
        return Err(CidrError::Empty);
    }
    let (addr, len) = match s.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (s, None),
    };
    if addr.contains(':') {
        return Err(if addr.parse::<Ipv6Addr>().is_ok() {
            CidrError::Ipv6(quote(s))
        } else {
            CidrError::Syntax(quote(s))
        });
    }
    // std's parser takes exactly four decimal octets and refuses leading
    // zeros (which inet_aton would read as octal).
    let address: Ipv4Addr = addr.parse().map_err(|_| CidrError::Address { input: quote(s) })?;
    let len = match len {
        None => 32,
        Some(l) => {
            // u8::from_str takes a leading '+', and "08" would be 8: only
            // plain digits, and no leading zero, are one spelling per value.
            let plain = !l.is_empty() && l.len() <= 2 && l.bytes().all(|b| b.is_ascii_digit());
            if !plain || (l.len() > 1 && l.starts_with('0')) {
                return Err(CidrError::Prefix { input: quote(s) });
            }
            l.parse::<u8>().ok().filter(|n| *n <= 32).ok_or_else(|| CidrError::Prefix { input: quote(s) })?
        }
    };
    let net = Ipv4Net::new(address, len).map_err(|_| CidrError::Prefix { input: quote(s) })?;
    if net.network() != address {
        return Err(CidrError::HostBits { input: quote(s), network: net.trunc(), address });
    }
    Ok(net)
}

/// The canonical text of a rule's CIDR, as stored and shown (`10.0.0.0/8`).
pub fn canonical(net: &Ipv4Net) -> String {
    net.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> String {
        canonical(&parse_rule_cidr(s).unwrap_or_else(|e| panic!("{s:?}: {e}")))
    }

    #[test]
    fn accepts_the_one_form_and_gives_its_canonical_text() {
        assert_eq!(ok("0.0.0.0/0"), "0.0.0.0/0");
        assert_eq!(ok("10.20.0.0/24"), "10.20.0.0/24");
        assert_eq!(ok("203.0.113.7/32"), "203.0.113.7/32");
        assert_eq!(ok("203.0.113.7"), "203.0.113.7/32");
        assert_eq!(ok(" 10.1.0.0/16\n"), "10.1.0.0/16");
        assert_eq!(ok("255.255.255.255/32"), "255.255.255.255/32");
    }

    #[test]
    fn refuses_every_other_spelling_with_the_form_in_the_message() {
        for bad in [
            "0.0.0.0/+0",
            "10.0.0.0/-0",
            "10.0.0.0/08",
            "10.0.0.0/00",
            "10.0.0.0/33",
            "10.0.0.0/256",
            "10.0.0.0/",
            "10.0.0.0/ 8",
            "10.0.0.0 /8",
            "010.0.0.0/8",
            "10.0.0/8",
            "10.0.0.0.0/8",
            "1e1.0.0.0/8",
            "0x0a.0.0.0/8",
            "10.0.0.0/8/8",
            "10.0.0.0/8 } accept; flush ruleset",
            "0.0.0.0/0,1.2.3.4/32",
            "::/0",
            "2001:db8::/32",
            "::ffff:10.0.0.0/104",
            "",
            "  ",
        ] {
            let e = parse_rule_cidr(bad).expect_err(bad).to_string();
            assert!(e.contains("10.20.0.0/24") || e.contains("/32"), "{bad:?}: {e}");
        }
        assert!(matches!(parse_rule_cidr("::/0"), Err(CidrError::Ipv6(_))));
    }

    #[test]
    fn host_bits_name_both_meanings() {
        let e = parse_rule_cidr("10.0.0.5/8").unwrap_err().to_string();
        assert!(e.contains("10.0.0.0/8") && e.contains("10.0.0.5/32"), "{e}");
    }

    #[test]
    fn quotes_are_short_and_printable() {
        let e = parse_rule_cidr(&format!("1.2.3.4/{}\n\x1b[31m", "9".repeat(500))).unwrap_err().to_string();
        assert!(e.len() < 200 && !e.contains('\x1b'), "{e}");
    }
}
