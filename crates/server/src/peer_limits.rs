//! Fair limits per source address and per gateway, so that one peer
//! (with or without a certificate) cannot take what an honest gateway
//! needs: connections per address and per gateway, handshakes per second
//! per address, scans per second and batches in flight per gateway.
//! Hitting one gets its own reason on `farestream_connections_refused_total`
//! or `farestream_batch_errors_total`, and slows or closes the offender
//! only.
//!
//! Rates are measured on the server's monotonic time, not the business
//! clock: a limit is about how fast packets come, not about service days.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::Semaphore;

use crate::settings::PeerLimitSettings;
use farestream_core::limits::TokenBucket;
use farestream_core::sync::lock;

pub(super) struct PeerLimits {
    settings: PeerLimitSettings,
    epoch: Instant,
    addresses: Mutex<HashMap<IpAddr, AddressState>>,
    gateways: Mutex<HashMap<String, GatewayState>>,
}

struct AddressState {
    connections: usize,
    /// Of its connections, those still in their handshake.
    handshaking: usize,
    handshakes: TokenBucket,
}

struct GatewayState {
    /// Its live connections, oldest first.
    connections: VecDeque<(u64, quinn::Connection)>,
    scans: TokenBucket,
    batches: Arc<Semaphore>,
}

/// A connection counted against its address, as handshaking until
/// [`AddressSlot::handshake_finished`]; uncounted when dropped.
pub(super) struct AddressSlot {
    limits: Arc<PeerLimits>,
    ip: IpAddr,
    handshaking: bool,
}

/// A connection counted against its gateway; uncounted when dropped.
pub(super) struct GatewaySlot {
    limits: Arc<PeerLimits>,
    gateway_id: String,
    connection_id: u64,
    /// The gateway's batches in flight, across its connections.
    pub(super) batches: Arc<Semaphore>,
}

/// Addresses kept before the idle ones (no connection, a full bucket:
/// nothing to remember) are forgotten.
const ADDRESSES_KEPT_BEFORE_PRUNING: usize = 65_536;

impl PeerLimits {
    pub(super) fn new(settings: PeerLimitSettings) -> Arc<PeerLimits> {
        Arc::new(PeerLimits {
            settings,
            epoch: Instant::now(),
            addresses: Mutex::default(),
            gateways: Mutex::default(),
        })
    }

    fn now_ms(&self) -> i64 {
        i64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(i64::MAX)
    }

    /// Counts a new connection from `ip` before its handshake; the reason
    /// to refuse it when its address is over a limit.
    pub(super) fn admit_address(self: &Arc<PeerLimits>, ip: IpAddr) -> Result<AddressSlot, &'static str> {
        let ip = address_key(ip);
        let now = self.now_ms();
        let s = &self.settings;
        let mut addresses = lock(&self.addresses);
        if addresses.len() >= ADDRESSES_KEPT_BEFORE_PRUNING {
            addresses.retain(|_, a| a.connections > 0 || !a.handshakes.is_full(now));
        }
        let rate = s.handshakes_per_address_per_sec_max;
        let address = addresses.entry(ip).or_insert_with(|| AddressState {
            connections: 0,
            handshaking: 0,
            handshakes: TokenBucket::full(rate, rate, now),
        });
        if address.connections >= s.connections_per_address_max {
            return Err("connections_per_address");
        }
        if address.handshaking >= s.handshakes_per_address_in_flight_max {
            return Err("handshakes_per_address_in_flight");
        }
        if address.handshakes.take(1, now).is_err() {
            return Err("handshakes_per_address");
        }
        address.connections += 1;
        address.handshaking += 1;
        Ok(AddressSlot { limits: Arc::clone(self), ip, handshaking: true })
    }

    /// Counts `connection` against `gateway_id` once its certificate named
    /// it. A gateway over its limit loses its oldest connections, not the
    /// new one: a gateway that restarted is the newest, and its old
    /// connection would otherwise lock it out until QUIC's idle timeout.
    /// (A thief of its key gains nothing by it: the key pushes anyway.)
    /// Returns the connections to close.
    pub(super) fn admit_gateway(
        self: &Arc<PeerLimits>,
        gateway_id: &str,
        connection: &quinn::Connection,
    ) -> (GatewaySlot, Vec<quinn::Connection>) {
        let mut gateways = lock(&self.gateways);
        let gateway = self.gateway_state(&mut gateways, gateway_id);
        let connection_id = connection.stable_id() as u64;
        gateway.connections.push_back((connection_id, connection.clone()));
        let mut evicted = Vec::new();
        while gateway.connections.len() > self.settings.connections_per_gateway_max.max(1) {
            evicted.extend(gateway.connections.pop_front().map(|(_, oldest)| oldest));
        }
        let batches = Arc::clone(&gateway.batches);
        let slot = GatewaySlot { limits: Arc::clone(self), gateway_id: gateway_id.to_string(), connection_id, batches };
        (slot, evicted)
    }

    /// Takes `scans` from the gateway's rate; how many milliseconds to wait
    /// when it is spent.
    pub(super) fn take_scans(&self, gateway_id: &str, scans: usize) -> Result<(), u64> {
        let now = self.now_ms();
        let mut gateways = lock(&self.gateways);
        self.gateway_state(&mut gateways, gateway_id).scans.take(scans as u64, now)
    }

    /// A gateway's entry, made on its first connection. Only gateways with
    /// a certificate from the fleet CA get here, so the map is as large as
    /// the fleet; an entry outlives its connections so that reconnecting
    /// does not refill a spent rate.
    fn gateway_state<'m>(
        &self,
        gateways: &'m mut HashMap<String, GatewayState>,
        gateway_id: &str,
    ) -> &'m mut GatewayState {
        let s = &self.settings;
        let now = self.now_ms();
        gateways.entry(gateway_id.to_string()).or_insert_with(|| GatewayState {
            connections: VecDeque::new(),
            scans: TokenBucket::full(
                s.gateway_scans_per_sec_max,
                s.gateway_scans_per_sec_max.max(s.batch_scans_max as u64),
                now,
            ),
            batches: Arc::new(Semaphore::new(s.gateway_batches_in_flight_max)),
        })
    }
}

/// What a limit per address counts: an IPv4 address, or an IPv6 host's
/// /64 (one host holds a whole /64, and a limit per /128 would be none).
fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(std::net::Ipv6Addr::from(v6.to_bits() & !u128::from(u64::MAX))),
        },
    }
}

impl AddressSlot {
    /// Its handshake is over: it counts as a connection of its address
    /// only.
    pub(super) fn handshake_finished(&mut self) {
        if std::mem::take(&mut self.handshaking)
            && let Some(address) = lock(&self.limits.addresses).get_mut(&self.ip)
        {
            address.handshaking = address.handshaking.saturating_sub(1);
        }
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        self.handshake_finished();
        if let Some(address) = lock(&self.limits.addresses).get_mut(&self.ip) {
            address.connections = address.connections.saturating_sub(1);
        }
    }
}

impl Drop for GatewaySlot {
    fn drop(&mut self) {
        if let Some(gateway) = lock(&self.limits.gateways).get_mut(&self.gateway_id) {
            gateway.connections.retain(|(id, _)| *id != self.connection_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Arc<PeerLimits> {
        PeerLimits::new(PeerLimitSettings {
            connections_per_address_max: 2,
            handshakes_per_address_per_sec_max: 3,
            handshakes_per_address_in_flight_max: 2,
            connections_per_gateway_max: 1,
            gateway_scans_per_sec_max: 10,
            gateway_batches_in_flight_max: 1,
            batch_scans_max: 100,
        })
    }

    #[test]
    fn an_address_gets_its_connections_and_handshakes_and_no_more() {
        let limits = limits();
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().expect("ip"), "10.0.0.2".parse().expect("ip"));
        let first = limits.admit_address(a).expect("first");
        let _second = limits.admit_address(a).expect("second");
        assert_eq!(limits.admit_address(a).err(), Some("connections_per_address"));
        let _other = limits.admit_address(b).expect("another address is not affected");
        drop(first);
        let _third = limits.admit_address(a).expect("a slot came back");
        assert_eq!(limits.admit_address(a).err(), Some("connections_per_address"));
    }

    /// Review of issue 19: an unfinished handshake held a slot of
    /// `connections_max`, so a few addresses stalling handshakes held them
    /// all. Handshakes in flight per address are capped apart.
    #[test]
    fn an_address_has_so_many_handshakes_in_flight_and_finished_ones_free_theirs() {
        let limits =
            PeerLimits::new(PeerLimitSettings { connections_per_address_max: 10, ..limits().settings.clone() });
        let a: IpAddr = "10.0.0.1".parse().expect("ip");
        let mut first = limits.admit_address(a).expect("first");
        let _second = limits.admit_address(a).expect("second");
        assert_eq!(limits.admit_address(a).err(), Some("handshakes_per_address_in_flight"));
        first.handshake_finished();
        first.handshake_finished();
        let _third = limits.admit_address(a).expect("one handshake finished, once");
        assert_eq!(limits.admit_address(a).err(), Some("handshakes_per_address_in_flight"));
    }

    #[test]
    fn handshakes_beyond_the_rate_are_refused() {
        let limits = limits();
        let a: IpAddr = "10.0.0.1".parse().expect("ip");
        for _ in 0..3 {
            drop(limits.admit_address(a).expect("within the rate"));
        }
        assert_eq!(limits.admit_address(a).err(), Some("handshakes_per_address"));
    }

    #[test]
    fn a_gateway_gets_its_scan_rate_and_no_more() {
        let limits = limits();
        assert_eq!(limits.take_scans("depot-1", 100), Ok(()), "a whole batch passes a full bucket");
        assert!(limits.take_scans("depot-1", 1).is_err());
        assert_eq!(limits.take_scans("depot-2", 100), Ok(()), "another gateway's rate is its own");
    }

    #[test]
    fn an_ipv6_host_is_one_address_per_slash_64() {
        let limits = limits();
        let host = |last: &str| -> IpAddr { format!("2001:db8:1:2::{last}").parse().expect("ip") };
        let _first = limits.admit_address(host("1")).expect("first");
        let _second = limits.admit_address(host("2")).expect("second");
        assert_eq!(limits.admit_address(host("3")).err(), Some("connections_per_address"));
        let elsewhere: IpAddr = "2001:db8:1:3::1".parse().expect("ip");
        assert!(limits.admit_address(elsewhere).is_ok(), "another /64");
        let mapped: IpAddr = "::ffff:10.0.0.9".parse().expect("ip");
        let _v4 = limits.admit_address("10.0.0.9".parse().expect("ip")).expect("v4");
        let _v4_again = limits.admit_address(mapped).expect("v4 mapped");
        assert_eq!(limits.admit_address(mapped).err(), Some("connections_per_address"), "one address either way");
    }
}
