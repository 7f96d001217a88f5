//! Which local address each terminal connects from.
//!
//! Linux gives one (source address, destination) pair at most the ephemeral port range
//! (32768–60999 by default: ~28,000 ports), so a campus-sized fleet against one gateway
//! address needs several source addresses. Every address in 127.0.0.0/8 is local, so
//! against a loopback gateway the load test can bind 127.0.0.2, 127.0.0.3, ... without
//! any set-up.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Extra loopback source addresses tried automatically after the default one runs out of
/// ports: 127.0.0.2 ..= 127.0.0.(1 + this). Sixteen addresses are ~450,000 ports, far
/// beyond the file descriptors one process gets.
pub const AUTO_SOURCE_ADDRS_MAX: u8 = 16;

/// Picks source addresses.
#[derive(Debug)]
pub struct SourceAddrs {
    /// `None` lets the kernel choose (127.0.0.1 for a loopback target).
    addrs: Vec<Option<IpAddr>>,
    /// Explicit lists are used round-robin; the automatic list is filled in order.
    round_robin: bool,
    /// Index of the address in use (automatic list).
    current: AtomicUsize,
}

impl SourceAddrs {
    /// Round-robin over exactly these addresses.
    pub fn explicit(addrs: Vec<IpAddr>) -> SourceAddrs {
        assert!(!addrs.is_empty(), "an explicit list needs at least one address");
        SourceAddrs {
            addrs: addrs.into_iter().map(Some).collect(),
            round_robin: true,
            current: AtomicUsize::new(0),
        }
    }

    /// The kernel's choice first; for a loopback target, 127.0.0.2, 127.0.0.3, ... as
    /// each runs out of ports.
    pub fn automatic(target_is_loopback_v4: bool) -> SourceAddrs {
        let mut addrs = vec![None];
        if target_is_loopback_v4 {
            addrs.extend((2..=1 + AUTO_SOURCE_ADDRS_MAX).map(|i| Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, i)))));
        }
        SourceAddrs {
            addrs,
            round_robin: false,
            current: AtomicUsize::new(0),
        }
    }

    pub fn len(&self) -> usize {
        self.addrs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.addrs.is_empty()
    }

    /// The address terminal number `index` (0-based within the run) tries first, and
    /// the position of that address for `next_after`.
    pub fn first(&self, index: u64) -> (usize, Option<IpAddr>) {
        let at = if self.round_robin {
            (index % self.addrs.len() as u64) as usize
        } else {
            self.current.load(Ordering::Relaxed).min(self.addrs.len() - 1)
        };
        (at, self.addrs[at])
    }

    /// The address to try after the one at `at` ran out of ports, or `None` when every
    /// address has been tried (`tries` counts the ones tried so far). In the automatic
    /// list this also moves every later connection on to the next address.
    pub fn next_after(&self, at: usize, tries: usize) -> Option<(usize, Option<IpAddr>)> {
        if tries >= self.addrs.len() {
            return None;
        }
        let next = (at + 1) % self.addrs.len();
        if !self.round_robin {
            if next == 0 {
                return None;
            }
            let _ = self
                .current
                .compare_exchange(at, next, Ordering::Relaxed, Ordering::Relaxed);
        }
        Some((next, self.addrs[next]))
    }

    /// How many addresses were put to use (for the report).
    pub fn in_use(&self) -> usize {
        if self.round_robin {
            self.addrs.len()
        } else {
            self.current.load(Ordering::Relaxed) + 1
        }
    }
}

/// Parses `127.0.0.2,127.0.0.3` or a range `127.0.0.2-127.0.0.9` (last octet only).
pub fn parse_source_addrs(s: &str) -> Result<Vec<IpAddr>, String> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let a: Ipv4Addr = a.trim().parse().map_err(|_| format!("{a:?} is not an IPv4 address"))?;
                let b: Ipv4Addr = b.trim().parse().map_err(|_| format!("{b:?} is not an IPv4 address"))?;
                let (oa, ob) = (a.octets(), b.octets());
                if oa[..3] != ob[..3] || oa[3] > ob[3] {
                    return Err(format!("{part:?}: a range differs in the last octet only, low to high"));
                }
                out.extend((oa[3]..=ob[3]).map(|o| IpAddr::V4(Ipv4Addr::new(oa[0], oa[1], oa[2], o))));
            }
            None => out.push(part.parse().map_err(|_| format!("{part:?} is not an IP address"))?),
        }
    }
    if out.is_empty() {
        return Err("no source address given".into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_and_ranges_parse() {
        let v = parse_source_addrs("127.0.0.2-127.0.0.4, 127.0.0.9").unwrap();
        let s: Vec<String> = v.iter().map(|a| a.to_string()).collect();
        assert_eq!(s, ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.9"]);
        assert!(parse_source_addrs("127.0.0.4-127.0.0.2").is_err());
        assert!(parse_source_addrs("127.0.0.2-127.0.1.4").is_err());
        assert!(parse_source_addrs("").is_err());
        assert!(parse_source_addrs("localhost").is_err());
    }

    #[test]
    fn explicit_addresses_are_used_round_robin_and_each_tried_once() {
        let s = SourceAddrs::explicit(parse_source_addrs("127.0.0.2-127.0.0.4").unwrap());
        assert_eq!(s.first(0).1.unwrap().to_string(), "127.0.0.2");
        assert_eq!(s.first(4).1.unwrap().to_string(), "127.0.0.3");
        let (at, _) = s.first(2);
        let (at, a) = s.next_after(at, 1).unwrap();
        assert_eq!(a.unwrap().to_string(), "127.0.0.2");
        let (at, _) = s.next_after(at, 2).unwrap();
        assert!(s.next_after(at, 3).is_none());
    }

    #[test]
    fn the_automatic_list_fills_one_address_then_moves_everyone_on() {
        let s = SourceAddrs::automatic(true);
        assert_eq!(s.len(), 1 + usize::from(AUTO_SOURCE_ADDRS_MAX));
        assert_eq!(s.first(5), (0, None));
        let (at, a) = s.next_after(0, 1).unwrap();
        assert_eq!(a.unwrap().to_string(), "127.0.0.2");
        // Later terminals start from the new address.
        assert_eq!(s.first(6), (at, a));
        assert_eq!(s.in_use(), 2);
        // Without a loopback target there is nowhere else to go.
        let s = SourceAddrs::automatic(false);
        assert!(s.next_after(0, 1).is_none());
    }
}
