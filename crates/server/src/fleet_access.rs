//! Who may push: each connection's gateway, read from the certificate
//! the fleet CA issued it, and the live reload of the fleet's revocation
//! list. rustls refuses a connection with no certificate, one from another
//! CA or a revoked one during the handshake; this module reads who an
//! accepted connection is, refuses a certificate revoked since the
//! verifier was built, and closes the connections of a gateway revoked
//! while it was connected.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use crate::Shared;
use farestream_core::sync::{lock, read, write};
use farestream_gateway::wire::close_code;
use farestream_ingest::fleet_ca::{PeerGateway, RevocationList};
use farestream_ingest::telemetry;
use farestream_ingest::tls_identity::ServerIdentity;

/// The fleet's trust as the server holds it now, and the live connections
/// it must close when a revocation arrives.
pub(super) struct FleetAccess {
    list: RwLock<RevocationList>,
    live: Mutex<HashMap<u64, (Vec<u8>, quinn::Connection)>>,
}

/// A live connection's entry; removed when dropped.
pub(super) struct Registered {
    access: Arc<FleetAccess>,
    id: u64,
}

impl FleetAccess {
    pub(super) fn new(list: RevocationList) -> Arc<FleetAccess> {
        Arc::new(FleetAccess { list: RwLock::new(list), live: Mutex::default() })
    }

    /// Who `connection` is, and its entry among the live connections; `None`
    /// when it is closed instead (a certificate that names no gateway, or
    /// one revoked since the handshake's verifier was built).
    pub(super) fn admit(self: &Arc<FleetAccess>, connection: &quinn::Connection) -> Option<(PeerGateway, Registered)> {
        let peer = match PeerGateway::of_connection(connection) {
            Ok(peer) => peer,
            Err(error) => {
                let reason = error.to_string();
                telemetry::connection_refused("not_a_gateway");
                connection.close(close_code::NOT_A_GATEWAY.into(), reason.as_bytes());
                return None;
            }
        };
        // Under the live map's lock, so a reload that swaps the list
        // between this check and the insert still finds this connection.
        let mut live = lock(&self.live);
        if read(&self.list).is_revoked(&peer.serial) {
            telemetry::connection_refused("revoked");
            connection.close(close_code::REVOKED.into(), b"this gateway's certificate is revoked");
            return None;
        }
        let id = connection.stable_id() as u64;
        live.insert(id, (peer.serial.clone(), connection.clone()));
        Some((peer, Registered { access: Arc::clone(self), id }))
    }

    /// Whether the list in force revokes the certificate with `serial`.
    pub(super) fn is_revoked(&self, serial: &[u8]) -> bool {
        read(&self.list).is_revoked(serial)
    }

    /// Swaps in `list` if it differs from the one held (then returns it,
    /// for the handshakes' verifier) and closes every live connection
    /// whose certificate it revokes.
    fn replace(&self, list: RevocationList) -> Option<RevocationList> {
        let live = lock(&self.live);
        if read(&self.list).same_as(&list) {
            return None;
        }
        // A new CA: every connection was verified against the old one.
        let new_ca = read(&self.list).ca_cert() != list.ca_cert();
        let mut closed = 0;
        for (serial, connection) in live.values() {
            if new_ca || list.is_revoked(serial) {
                connection.close(close_code::REVOKED.into(), b"this gateway's certificate was revoked");
                closed += 1;
            }
        }
        telemetry::gateways_revoked_while_connected(closed);
        *write(&self.list) = list.clone();
        Some(list)
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        lock(&self.access.live).remove(&self.id);
    }
}

/// Rereads the revocation list every `revocation_check_interval`; when it
/// changed, new handshakes are verified against it and revoked gateways'
/// connections are closed. A list that cannot be read is logged and
/// counted, and the one held stays in force: a half-copied file must not
/// open the door, nor close it on every gateway.
pub(super) async fn reload_revocations(
    shared: Arc<Shared>,
    endpoint: quinn::Endpoint,
    (identity, serving): (ServerIdentity, quinn::ServerConfig),
) {
    let mut every = tokio::time::interval(shared.settings.revocation_check_interval);
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            _ = every.tick() => {}
        }
        let list = match RevocationList::read(&shared.settings.data_dir) {
            Ok(list) => list,
            Err(error) => {
                tracing::warn!(%error, "cannot read the fleet's revocation list; keeping the one in force");
                telemetry::revocation_list_unreadable();
                continue;
            }
        };
        let Some(list) = shared.fleet.replace(list) else { continue };
        match identity.quic_crypto(&list) {
            Ok(crypto) => {
                let mut config = serving.clone();
                config.crypto = crypto;
                endpoint.set_server_config(Some(config));
                tracing::info!(revoked = list.revoked(), "fleet revocation list reloaded");
            }
            Err(error) => {
                tracing::error!(%error, "cannot build a TLS configuration from the new revocation list");
                telemetry::revocation_list_unreadable();
            }
        }
    }
}
